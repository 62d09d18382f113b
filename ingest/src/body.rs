//! One request body on its way to the store: the checks before it (state, checksum, how many
//! bytes the upload has left), the reader that holds it to them, and the finish once the last
//! byte is in. Where the bytes go, and when the offset moves, is the upload's engine's
//! business (`engine`).

use super::*;
use lectern_core::error::Code;

/// Writes one request body (PATCH, or POST with creation-with-upload), honouring
/// `Upload-Checksum`, and finishes the upload when its last byte arrived.
pub(crate) async fn write_request(
    st: &IngestState,
    u: Upload,
    headers: &HeaderMap,
    body: Body,
    buffer: u64,
) -> Result<Written, ApiError> {
    if u.state != uploads::UploadState::Uploading {
        return Err(ApiError::new(
            Code::UploadComplete,
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
    let input = BodyReader::new(body, limit, checksum).with_buffer(buffer);
    let (u, interrupted) = st.engines.of(&u).write(u, input, progressive).await?;
    let error = interrupted.map(|e| cut_off(&u, &e));
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

/// A request body read chunk by chunk, held to the bytes the upload has left and fed to the
/// checksum when there is one.
pub(crate) struct BodyReader {
    stream: axum::body::BodyDataStream,
    received: u64,
    limit: u64,
    checksum: Option<checksum::Checksum>,
    interrupted: Option<String>,
    /// Bytes this request may hold in memory (its share of the node's upload buffer).
    buffer: u64,
}

impl BodyReader {
    pub(crate) fn new(body: Body, limit: u64, checksum: Option<checksum::Checksum>) -> Self {
        Self {
            stream: body.into_data_stream(),
            received: 0,
            limit,
            checksum,
            interrupted: None,
            buffer: u64::MAX,
        }
    }

    /// Holds the request to `bytes` of memory (what [`IngestState`]'s reservation granted).
    pub(crate) fn with_buffer(mut self, bytes: u64) -> Self {
        self.buffer = bytes;
        self
    }

    /// How many parts of `part` bytes may upload while the next one fills: one at least,
    /// [`PARTS_IN_FLIGHT`] at most, within the request's buffer.
    pub(crate) fn parts_in_flight(&self, part: u64) -> usize {
        let parts = (self.buffer / part.max(1)).saturating_sub(1);
        parts.clamp(1, PARTS_IN_FLIGHT as u64) as usize
    }

    /// The next chunk; `None` at the end or when the client cut the body off (then noted).
    pub(crate) async fn next(&mut self) -> Result<Option<bytes::Bytes>, ApiError> {
        let raw = self.next_raw().await;
        self.accept(raw).await
    }

    /// The next frame as the connection gives it. Cancel-safe, so it can race other work in
    /// a `select!`; pass what it returns to [`BodyReader::accept`].
    pub(crate) async fn next_raw(&mut self) -> Option<Result<bytes::Bytes, axum::Error>> {
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
    pub(crate) async fn accept(
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
    pub(crate) async fn end(self) -> Result<Option<String>, ApiError> {
        if let Some(e) = &self.interrupted {
            if self.checksum.is_some() {
                return Err(ApiError::new(Code::BodyInterrupted,
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
    ApiError::new(
        Code::BodyInterrupted,
        format!(
            "the request body was cut off ({e}); send HEAD and resume from Upload-Offset {}",
            cur.offset_bytes
        ),
    )
}
