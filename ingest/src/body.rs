//! Writing a request body into the store: the body reader (limits, checksums, progress) and
//! the two engines, in place on a store that writes parts where they belong (the file store)
//! and parts plus a tail object elsewhere (S3). Each commits the offset only after the bytes
//! it counts are durable.

use super::*;

/// Writes one request body (PATCH, or POST with creation-with-upload), honouring
/// `Upload-Checksum`, and finishes the upload when its last byte arrived.
pub(crate) async fn write_request(
    st: &IngestState,
    u: Upload,
    headers: &HeaderMap,
    body: Body,
) -> Result<Written, ApiError> {
    if u.state != uploads::UploadState::Uploading {
        return Err(ApiError::conflict(
            "upload-complete",
            "this upload is already complete",
        ));
    }
    let checksum = header_str(headers, "upload-checksum")
        .map(checksum::Checksum::parse)
        .transpose()?;
    let limit = match u.known_length() {
        Some(len) => len - u.offset_bytes as u64,
        None => MAX_SIZE - u.offset_bytes as u64,
    };
    // Without a checksum to verify and with a declared body length (so the body cannot run
    // past the upload), each part is committed as soon as it is stored: a crash in the middle
    // of a long PATCH keeps everything up to the last part.
    let progressive = checksum.is_none() && headers.contains_key(header::CONTENT_LENGTH);
    let before = u.offset_bytes as u64;
    // A store that writes parts in place takes the bytes as they arrive and needs no tails.
    let (u, error) = if st.in_place() && u.tail_key.is_none() {
        write_body_in_place(st, u, body, limit, progressive, checksum).await?
    } else {
        write_body(st, u, body, limit, progressive, checksum).await?
    };
    let offset = u.offset_bytes as u64;
    if offset > before {
        metrics::counter!("lectern_upload_bytes_total").increment(offset - before);
    }
    let mut expires = Some(u.expires_at);
    if u.known_length() == Some(offset) {
        finish(st, &u).await?;
        expires = None;
    }
    Ok(Written {
        offset,
        expires,
        error,
    })
}

/// How long a request body may send nothing before it counts as cut off.
pub(crate) const BODY_IDLE: Duration = Duration::from_secs(60);

/// Bytes per part (and per flush) of a long body written in place on disk.
pub(crate) const DISK_PART: u64 = 64 << 20;

/// A request body read chunk by chunk, held to the bytes the upload has left and fed to the
/// checksum when there is one.
pub(crate) struct BodyReader {
    stream: axum::body::BodyDataStream,
    received: u64,
    limit: u64,
    checksum: Option<checksum::Checksum>,
    interrupted: Option<String>,
}

impl BodyReader {
    fn new(body: Body, limit: u64, checksum: Option<checksum::Checksum>) -> Self {
        Self {
            stream: body.into_data_stream(),
            received: 0,
            limit,
            checksum,
            interrupted: None,
        }
    }

    /// The next chunk; `None` at the end or when the client cut the body off (then noted).
    async fn next(&mut self) -> Result<Option<bytes::Bytes>, ApiError> {
        let raw = self.next_raw().await;
        self.accept(raw).await
    }

    /// The next frame as the connection gives it. Cancel-safe, so it can race other work in
    /// a `select!`; pass what it returns to [`BodyReader::accept`].
    async fn next_raw(&mut self) -> Option<Result<bytes::Bytes, axum::Error>> {
        // A half-open connection would otherwise keep the upload locked for good (tusd's
        // network timeout is the same 60 s).
        match tokio::time::timeout(BODY_IDLE, self.stream.next()).await {
            Ok(frame) => frame,
            Err(_) => Some(Err(axum::Error::new(format!(
                "no data for {} s",
                BODY_IDLE.as_secs()
            )))),
        }
    }

    /// Accounts for a frame from [`BodyReader::next_raw`]: the upload's limit, the checksum.
    async fn accept(
        &mut self,
        raw: Option<Result<bytes::Bytes, axum::Error>>,
    ) -> Result<Option<bytes::Bytes>, ApiError> {
        match raw {
            None => Ok(None),
            Some(Err(e)) => {
                self.interrupted = Some(e.to_string());
                Ok(None)
            }
            Some(Ok(chunk)) => {
                self.received += chunk.len() as u64;
                if self.received > self.limit {
                    return Err(exceeds(self.limit));
                }
                if let Some(c) = self.checksum.as_mut() {
                    c.update(chunk.clone()).await;
                }
                Ok(Some(chunk))
            }
        }
    }

    /// After the last chunk: 460 for a checksum mismatch, 400 for a checksummed body that
    /// was cut off (it cannot be verified); otherwise why the body ended early, if it did.
    async fn end(self) -> Result<Option<String>, ApiError> {
        if let Some(e) = &self.interrupted {
            if self.checksum.is_some() {
                return Err(ApiError::bad_request(
                    "body-interrupted",
                    format!("the request body was cut off ({e}); its checksum cannot be verified, so nothing was stored"),
                ));
            }
        }
        if let Some(c) = self.checksum {
            if !c.matches().await {
                return Err(checksum::mismatch());
            }
        }
        Ok(self.interrupted)
    }
}

/// The answer to a body cut off mid-way: what arrived is kept, resume from the offset.
pub(crate) fn cut_off(cur: &Upload, e: &str) -> ApiError {
    tracing::info!(upload = %cur.id, offset = cur.offset_bytes, error = %e, "body cut off; kept what arrived");
    ApiError::bad_request(
        "body-interrupted",
        format!(
            "the request body was cut off ({e}); send HEAD and resume from Upload-Offset {}",
            cur.offset_bytes
        ),
    )
}

/// Streams a body straight into parts written in place (the file store): each chunk goes to
/// disk as it arrives, a part closes (fdatasync) every `part_size` bytes and at the end of
/// the body, whatever its size, so no tail object is needed. Commits follow the same rules
/// as [`write_body`].
pub(crate) async fn write_body_in_place(
    st: &IngestState,
    mut cur: Upload,
    body: Body,
    limit: u64,
    progressive: bool,
    checksum: Option<checksum::Checksum>,
) -> Result<(Upload, Option<ApiError>), ApiError> {
    // Parts on disk have no size limits; a larger one means fewer flushes of a long body
    // (each costs a device cache flush), at the price of re-sending up to 64 MiB after a crash.
    let p = (st.part_size as u64).max(DISK_PART);
    let mut parts = cur.part_list();
    let mut offset: u64 = parts.total();
    // A short last part (the end of an earlier request) is continued rather than followed by
    // a new one, so small client chunks do not pile up parts: `carried` of its bytes are
    // already stored and committed.
    let mut carried = match parts.last() {
        Some(last) if last.size < p => parts.pop().map_or(0, |l| l.size),
        _ => 0,
    };
    let mut changed = false;
    let mut writer: Option<Box<dyn lectern_core::storage::PartWriter>> = None;
    let mut input = BodyReader::new(body, limit, checksum);
    while let Some(mut chunk) = input.next().await? {
        while !chunk.is_empty() {
            let w = match writer.as_mut() {
                Some(w) => w,
                None => {
                    // A continued part keeps its number and starts where its bytes end.
                    let number = parts.next_number();
                    let w = st
                        .parts()?
                        .in_place()
                        .ok_or_else(|| ApiError::internal("the store writes no parts in place"))?
                        .part_writer(&cur.multipart_id, number, offset)
                        .await?;
                    writer.insert(w)
                }
            };
            let take = ((p - carried - w.written()) as usize).min(chunk.len());
            w.write(chunk.split_to(take)).await?;
            changed = true;
            if carried + w.written() == p {
                let mut part = writer.take().expect("open writer").finish().await?;
                offset += part.size;
                part.size += std::mem::take(&mut carried);
                parts.push(part);
                if progressive {
                    cur =
                        uploads::commit(&st.db, &cur, parts.clone(), None, st.expires_at()).await?;
                    changed = false;
                }
            }
        }
    }
    let interrupted = input.end().await?;
    if let Some(w) = writer.take() {
        if w.written() > 0 {
            let mut part = w.finish().await?;
            part.size += carried;
            parts.push(part);
        }
    }
    if changed {
        cur = uploads::commit(&st.db, &cur, parts, None, st.expires_at()).await?;
    }
    let error = interrupted.map(|e| cut_off(&cur, &e));
    Ok((cur, error))
}

/// Streams a body into parts of `part_size` and a tail object. Returns the committed upload
/// and, when the client cut the body off, the error to answer with (what arrived is kept).
pub(crate) async fn write_body(
    st: &IngestState,
    mut cur: Upload,
    body: Body,
    limit: u64,
    progressive: bool,
    checksum: Option<checksum::Checksum>,
) -> Result<(Upload, Option<ApiError>), ApiError> {
    let p = st.part_size;
    let mut buf = BytesMut::with_capacity(p);
    let old_tail = cur.tail_key.clone();
    if let Some(t) = &old_tail {
        buf.extend_from_slice(&st.store.get_bytes(t).await?);
        if buf.len() as i64 != cur.tail_size {
            return Err(ApiError::internal(format!(
                "tail object {t} has {} bytes, expected {}",
                buf.len(),
                cur.tail_size
            )));
        }
    }
    let mut tail_consumed = false;
    // Committed parts followed by those stored during this request; `committed` counts the first.
    let mut parts = cur.part_list();
    let mut committed = parts.len();
    let mut input = BodyReader::new(body, limit, checksum);
    // One part uploads while the next one is received (two part buffers at most): parts land,
    // and are committed, in order.
    let mut inflight: Option<tokio::task::JoinHandle<Result<Part, StoreError>>> = None;
    macro_rules! land {
        ($joined:expr) => {
            parts.push($joined.map_err(|e| ApiError::internal(format!("part upload task: {e}")))??);
            if progressive {
                cur = uploads::commit(&st.db, &cur, parts.clone(), None, st.expires_at()).await?;
                committed = parts.len();
                if !tail_consumed {
                    tail_consumed = true;
                    if let Some(t) = &old_tail {
                        let _ = st.store.delete(t).await;
                    }
                }
            }
        };
    }
    let received: Result<(), ApiError> = async {
        loop {
            // A part that finishes uploading is committed at once, even while the client is
            // slow to send more.
            let raw = match inflight.as_mut() {
                Some(h) => tokio::select! {
                    joined = h => {
                        inflight = None;
                        land!(joined);
                        continue;
                    }
                    raw = input.next_raw() => raw,
                },
                None => input.next_raw().await,
            };
            let Some(mut chunk) = input.accept(raw).await? else {
                break;
            };
            while !chunk.is_empty() {
                let take = (p - buf.len()).min(chunk.len());
                buf.extend_from_slice(&chunk.split_to(take));
                if buf.len() < p {
                    continue;
                }
                // Each part owns a buffer of exactly one part: sliced out of a growing buffer,
                // it would keep twice its size alive.
                let data = std::mem::replace(&mut buf, BytesMut::with_capacity(p)).freeze();
                if let Some(h) = inflight.take() {
                    land!(h.await);
                }
                let number = parts.next_number();
                let at = parts.total();
                let (store, key, id) = (
                    st.store.clone(),
                    cur.object_key.clone(),
                    cur.multipart_id.clone(),
                );
                inflight = Some(tokio::spawn(async move {
                    parts_of(&*store)?
                        .put_part(&key, &id, number, at, data)
                        .await
                }));
            }
        }
        if let Some(h) = inflight.take() {
            land!(h.await);
        }
        Ok(())
    }
    .await;
    if let Err(e) = received {
        // A part still uploading finishes before the lock goes, so no later request's part of
        // the same number can be overtaken by it; not committed, it is simply replaced.
        if let Some(h) = inflight.take() {
            let _ = h.await;
        }
        return Err(e);
    }
    let interrupted = input.end().await?;
    let stored: u64 = parts.total() + buf.len() as u64;
    let unchanged = stored == cur.offset_bytes as u64 && parts.len() == committed;
    if !unchanged {
        let tail = if cur.known_length() == Some(stored) {
            // The last part may be smaller than S3's minimum.
            if !buf.is_empty() {
                let number = parts.next_number();
                let at = parts.total();
                parts.push(
                    st.parts()?
                        .put_part(
                            &cur.object_key,
                            &cur.multipart_id,
                            number,
                            at,
                            buf.split().freeze(),
                        )
                        .await?,
                );
            }
            None
        } else if buf.is_empty() {
            None
        } else {
            let key = format!("tails/{}/{stored}", cur.id);
            let len = buf.len() as u64;
            st.store.put_bytes(&key, buf.split().freeze()).await?;
            Some((key, len))
        };
        let new_tail = tail.as_ref().map(|t| t.0.clone());
        cur = uploads::commit(&st.db, &cur, parts, tail, st.expires_at()).await?;
        if let Some(t) = &old_tail {
            // A tail already folded into a committed part was deleted then.
            if !tail_consumed && new_tail.as_ref() != Some(t) {
                let _ = st.store.delete(t).await;
            }
        }
    }
    let error = interrupted.map(|e| cut_off(&cur, &e));
    Ok((cur, error))
}
