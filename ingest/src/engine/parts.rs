//! The parts + tails engine (S3): bytes are cut into parts of `part_size` and uploaded as
//! multipart parts; what is left over at the end of a request (less than a part) is kept as a
//! tail object, like tusd's S3 store, so any node can continue the upload with any client
//! chunk size. The next request reads the tail back and folds it into its first part.

use std::collections::VecDeque;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use lectern_core::error::ApiError;
use lectern_core::storage::{Part, StoreError};

use super::{parts_of, Ctx, UploadEngine};
use crate::body::BodyReader;
use crate::uploads::Upload;

/// Idle part buffers kept for the next parts, up to [`POOL_BYTES`]: a fresh 8 MiB buffer per
/// part costs the kernel 2,048 page faults and a zeroed mapping (about a second of CPU per
/// 4 GiB uploaded), where a reused one costs nothing.
static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Bytes of idle part buffers the pool keeps (at least one buffer).
const POOL_BYTES: usize = 32 << 20;

/// An empty buffer of `part` bytes' capacity, from the pool when it holds one that size.
fn part_buffer(part: usize) -> Vec<u8> {
    let mut pool = POOL.lock().expect("part pool");
    match pool.iter().position(|b| b.capacity() == part) {
        Some(i) => pool.swap_remove(i),
        None => Vec::with_capacity(part),
    }
}

/// A part's bytes, whose buffer returns to the pool when the last reader lets go.
struct Pooled(Vec<u8>);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        let cap = buf.capacity();
        if cap == 0 {
            return;
        }
        buf.clear();
        let mut pool = POOL.lock().expect("part pool");
        let idle: usize = pool.iter().map(Vec::capacity).sum();
        if pool.is_empty() || idle + cap <= POOL_BYTES {
            pool.push(buf);
        }
    }
}

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
        let mut buf = part_buffer(p);
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
        // Up to `depth` parts upload while the next one is received (the request's buffer
        // reservation decides how many, where the store takes parts out of order): parts
        // land, and are committed, in order.
        let depth = if st.parts()?.concurrent_parts() {
            input.parts_in_flight(p as u64)
        } else {
            1
        };
        let mut inflight: VecDeque<tokio::task::JoinHandle<Result<Part, StoreError>>> =
            VecDeque::with_capacity(depth);
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
                // The oldest part that finishes uploading is committed at once, even while
                // the client is slow to send more.
                let raw = match inflight.front_mut() {
                    Some(h) => tokio::select! {
                        joined = h => {
                            inflight.pop_front();
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
                    // Each part owns a buffer of exactly one part (sliced out of a growing
                    // buffer, it would keep twice its size alive), back in the pool once sent.
                    let data =
                        Bytes::from_owner(Pooled(std::mem::replace(&mut buf, part_buffer(p))));
                    if inflight.len() == depth {
                        let h = inflight.pop_front().expect("a part in flight");
                        land!(h.await);
                    }
                    // Numbered by what is stored or on its way, so parts in flight follow
                    // one another.
                    let number = parts.next_number() + inflight.len() as u32;
                    let at = parts.total() + (inflight.len() * p) as u64;
                    let (store, key, id) = (
                        st.store.clone(),
                        cur.object_key.clone(),
                        cur.multipart_id.clone(),
                    );
                    inflight.push_back(tokio::spawn(async move {
                        parts_of(&*store)?
                            .put_part(&key, &id, number, at, data)
                            .await
                    }));
                }
            }
            while let Some(h) = inflight.pop_front() {
                land!(h.await);
            }
            Ok(())
        }
        .await;
        if let Err(e) = received {
            // Parts still uploading finish before the lock goes, so no later request's part
            // of the same number can be overtaken by one; not committed, they are simply
            // replaced.
            while let Some(h) = inflight.pop_front() {
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
                                Bytes::from_owner(Pooled(std::mem::take(&mut buf))),
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
                st.store
                    .put_bytes(&key, Bytes::from_owner(Pooled(std::mem::take(&mut buf))))
                    .await?;
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
