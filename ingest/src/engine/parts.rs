//! The parts + tails engine (S3): bytes are cut into parts of `part_size` and uploaded as
//! multipart parts; what is left over at the end of a request (less than a part) is kept as a
//! tail object, like tusd's S3 store, so any node can continue the upload with any client
//! chunk size. The next request reads the tail back and folds it into its first part.

use async_trait::async_trait;
use bytes::BytesMut;
use lectern_core::error::ApiError;
use lectern_core::storage::{Part, StoreError};

use super::{parts_of, Ctx, UploadEngine};
use crate::body::BodyReader;
use crate::uploads::Upload;

/// Writes whole parts and a tail object, on any multipart store.
pub(crate) struct PartsAndTails {
    ctx: Ctx,
}

impl PartsAndTails {
    /// The engine over `ctx.store`, with parts of `ctx.part_size`.
    pub fn new(ctx: Ctx) -> Self {
        Self { ctx }
    }
}

#[async_trait]
impl UploadEngine for PartsAndTails {
    fn ctx(&self) -> &Ctx {
        &self.ctx
    }

    fn buffers(&self) -> bool {
        true
    }

    async fn write(
        &self,
        mut cur: Upload,
        mut input: BodyReader,
        progressive: bool,
    ) -> Result<(Upload, Option<String>), ApiError> {
        let st = &self.ctx;
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
        // Committed parts followed by those stored during this request; `committed` counts
        // the first.
        let mut parts = cur.part_list();
        let mut committed = parts.len();
        // One part uploads while the next one is received (two part buffers at most): parts
        // land, and are committed, in order.
        let mut inflight: Option<tokio::task::JoinHandle<Result<Part, StoreError>>> = None;
        macro_rules! land {
            ($joined:expr) => {
                parts.push(
                    $joined.map_err(|e| ApiError::internal(format!("part upload task: {e}")))??,
                );
                if progressive {
                    cur = st.commit(&cur, parts.clone(), None).await?;
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
                // A part that finishes uploading is committed at once, even while the client
                // is slow to send more.
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
                    // Each part owns a buffer of exactly one part: sliced out of a growing
                    // buffer, it would keep twice its size alive.
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
            // A part still uploading finishes before the lock goes, so no later request's
            // part of the same number can be overtaken by it; not committed, it is simply
            // replaced.
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
            cur = st.commit(&cur, parts, tail).await?;
            if let Some(t) = &old_tail {
                // A tail already folded into a committed part was deleted then.
                if !tail_consumed && new_tail.as_ref() != Some(t) {
                    let _ = st.store.delete(t).await;
                }
            }
        }
        Ok((cur, interrupted))
    }
}
