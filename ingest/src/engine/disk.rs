//! The in-place engine (the file store): each chunk goes to disk where it belongs as it
//! arrives, and a part closes (fdatasync) every `part` bytes and at the end of the body,
//! whatever its size, so no tail object is needed and nothing is held in memory.

use async_trait::async_trait;
use lectern_core::error::ApiError;
use lectern_core::storage::PartWriter;

use super::{Ctx, UploadEngine};
use crate::body::BodyReader;
use crate::uploads::Upload;

/// Bytes per part (and per flush) of a long body written in place on disk.
pub(crate) const DISK_PART: u64 = 64 << 20;

/// Writes parts in place, on a store that can ([`lectern_core::storage::InPlaceParts`]).
pub(crate) struct InPlace {
    ctx: Ctx,
    /// Bytes per part: a larger one means fewer flushes of a long body (each costs a device
    /// cache flush), at the price of re-sending up to that much after a crash.
    part: u64,
}

impl InPlace {
    /// The engine over `ctx.store`, with parts of at least [`DISK_PART`].
    pub fn new(ctx: Ctx) -> Self {
        let part = (ctx.part_size as u64).max(DISK_PART);
        Self { ctx, part }
    }

    /// The same engine with parts of `bytes` (small ones let tests cross part boundaries).
    #[cfg(test)]
    pub fn with_part(mut self, bytes: u64) -> Self {
        self.part = bytes.max(1);
        self
    }
}

#[async_trait]
impl UploadEngine for InPlace {
    fn ctx(&self) -> &Ctx {
        &self.ctx
    }

    fn buffers(&self) -> bool {
        false
    }

    async fn write(
        &self,
        mut cur: Upload,
        mut input: BodyReader,
        progressive: bool,
    ) -> Result<(Upload, Option<String>), ApiError> {
        let p = self.part;
        let mut parts = cur.part_list();
        let mut offset: u64 = parts.total();
        // A short last part (the end of an earlier request) is continued rather than followed
        // by a new one, so small client chunks do not pile up parts: `carried` of its bytes are
        // already stored and committed.
        let mut carried = match parts.last() {
            Some(last) if last.size < p => parts.pop().map_or(0, |l| l.size),
            _ => 0,
        };
        let mut changed = false;
        let mut writer: Option<Box<dyn PartWriter>> = None;
        while let Some(mut chunk) = input.next().await? {
            while !chunk.is_empty() {
                let w = match writer.as_mut() {
                    Some(w) => w,
                    None => {
                        // A continued part keeps its number and starts where its bytes end.
                        let number = parts.next_number();
                        let w = self
                            .ctx
                            .parts()?
                            .in_place()
                            .ok_or_else(|| {
                                ApiError::internal("the store writes no parts in place")
                            })?
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
                        cur = self.ctx.commit(&cur, parts.clone(), None).await?;
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
            cur = self.ctx.commit(&cur, parts, None).await?;
        }
        Ok((cur, interrupted))
    }
}
