//! The upload-store seam: how a tus upload's bytes reach the object store, in the style of
//! tusd's `DataStore`. The protocol side (`tus`, `body`) hands an engine a request body; the
//! engine stores it and moves the upload's offset, and it alone decides when that is safe:
//! never before the bytes it counts are durable.
//!
//! Two engines exist, chosen by what the store can do:
//! - [`InPlace`] (the file store): bytes go to disk where they belong as they arrive, so a
//!   request of any size ends in whole parts and nothing is held in memory;
//! - [`PartsAndTails`] (S3): bytes are cut into parts of `part_size`, and what is left over at
//!   the end of a request is kept as a tail object, so any node can continue the upload.
//!
//! Adding a store with another way of writing means one more engine here, nothing in `tus`.

mod disk;
mod parts;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lectern_core::db::{Db, DbError};
use lectern_core::error::{ApiError, Code};
use lectern_core::storage::{MultipartStore, ObjectStore, PartList, StoreError};

use crate::body::BodyReader;
use crate::uploads::{self, Upload};

pub(crate) use disk::InPlace;
pub(crate) use parts::PartsAndTails;

/// What every engine works with: the store, the database its offset commits go to, and the
/// upload lifetime each commit extends.
#[derive(Clone)]
pub(crate) struct Ctx {
    /// The database holding the uploads table.
    pub db: Db,
    /// Where the bytes go.
    pub store: Arc<dyn ObjectStore>,
    /// Bytes per stored part.
    pub part_size: usize,
    /// Lifetime of an unfinished upload since its last write.
    pub expiry: Duration,
    /// Tests only: commits left before the process "dies" between storing and committing.
    #[cfg(test)]
    pub crash_after: Option<Arc<std::sync::atomic::AtomicUsize>>,
}

impl Ctx {
    /// The store's multipart capability, which tus uploads are built on.
    pub fn parts(&self) -> Result<&dyn MultipartStore, StoreError> {
        parts_of(&*self.store)
    }

    /// When an upload written now may be swept.
    pub fn expires_at(&self) -> i64 {
        lectern_core::now_ms() + self.expiry.as_millis() as i64
    }

    /// Moves the offset to what `parts` and `tail` hold (see [`uploads::commit`]).
    pub async fn commit(
        &self,
        cur: &Upload,
        parts: PartList,
        tail: Option<(String, u64)>,
    ) -> Result<Upload, ApiError> {
        #[cfg(test)]
        if let Some(left) = &self.crash_after {
            use std::sync::atomic::Ordering::SeqCst;
            if left
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .is_err()
            {
                return Err(ApiError::unavailable("injected crash before a commit"));
            }
        }
        uploads::commit(&self.db, cur, parts, tail, self.expires_at())
            .await
            .map_err(|e| match e {
                DbError::Moved(_) => ApiError::new(
                    Code::OffsetMismatch,
                    "the upload moved while this chunk was written; send HEAD and resume from its offset",
                ),
                other => other.into(),
            })
    }
}

/// The store's multipart capability, or why uploads cannot be stored there.
pub(crate) fn parts_of(store: &dyn ObjectStore) -> Result<&dyn MultipartStore, StoreError> {
    store.multipart().ok_or_else(|| {
        StoreError::Backend("this object store cannot assemble uploads from parts".into())
    })
}

/// One way of storing an upload's bytes. Writes run under the upload's lease, one at a time.
#[async_trait]
pub(crate) trait UploadEngine: Send + Sync {
    /// The store and database this engine writes to.
    fn ctx(&self) -> &Ctx;

    /// Whether a write holds request bytes in memory (then the node's buffer budget applies).
    fn buffers(&self) -> bool;

    /// Stores one request body after `cur`'s committed offset and commits what it stored:
    /// part by part when `progressive`, else once at the end. Returns the committed upload and,
    /// when the client cut the body off, why (what arrived before is kept).
    async fn write(
        &self,
        cur: Upload,
        input: BodyReader,
        progressive: bool,
    ) -> Result<(Upload, Option<String>), ApiError>;

    /// Opens storage for a new upload whose object will be `key`; returns the store's id.
    async fn create(&self, key: &str) -> Result<String, ApiError> {
        Ok(self.ctx().parts()?.create_multipart(key).await?)
    }

    /// Assembles the object from the committed parts once the last byte is in.
    async fn assemble(&self, u: &Upload) -> Result<(), ApiError> {
        Ok(self
            .ctx()
            .parts()?
            .complete_multipart(&u.object_key, &u.multipart_id, &u.part_list())
            .await?)
    }

    /// Throws away an unfinished upload's stored bytes.
    async fn discard(&self, u: &Upload) -> Result<(), ApiError> {
        self.ctx()
            .parts()?
            .abort_multipart(&u.object_key, &u.multipart_id)
            .await?;
        if let Some(t) = &u.tail_key {
            self.ctx().store.delete(t).await?;
        }
        Ok(())
    }
}

/// The engines of one store: its own, and parts + tails for an upload begun with a tail.
#[derive(Clone)]
pub(crate) struct Engines {
    native: Arc<dyn UploadEngine>,
    tails: Arc<PartsAndTails>,
}

impl Engines {
    /// The engines for `ctx.store`: in place where the store writes parts in place.
    pub fn new(ctx: Ctx) -> Self {
        let in_place = ctx
            .store
            .multipart()
            .is_some_and(|m| m.in_place().is_some());
        let tails = Arc::new(PartsAndTails::new(ctx.clone()));
        let native: Arc<dyn UploadEngine> = if in_place {
            Arc::new(InPlace::new(ctx))
        } else {
            tails.clone()
        };
        Self { native, tails }
    }

    /// The engine that continues `u`: an upload that has a tail object keeps to the engine
    /// that wrote it, since only that one knows to fold the tail in.
    pub fn of(&self, u: &Upload) -> &dyn UploadEngine {
        if u.tail_key.is_some() {
            &*self.tails
        } else {
            &*self.native
        }
    }

    /// The engine new uploads start with.
    pub fn native(&self) -> &dyn UploadEngine {
        &*self.native
    }
}

#[cfg(test)]
mod tests;
