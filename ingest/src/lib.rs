//! tus 1.0.0 upload server at `/files/`: core protocol plus creation, creation-with-upload,
//! creation-defer-length, termination, expiration, checksum and concatenation.
//!
//! Bytes are cut into parts of `part_size` and stored as multipart parts of the upload's
//! object. What is left over at the end of a request (less than a part) is kept as a *tail
//! object* in the store, like tusd's S3 store, so any node can continue the upload and any
//! client chunk size works. The offset in the database moves only after the bytes it counts
//! are durable, so a crash never overstates it.
//!
//! Following a PATCH: `tus` (headers, auth, the upload's lock) → `body` (checks and the body
//! reader) → `engine` (stores the bytes, commits the offset through `uploads`) → `handoff`
//! once the last byte is in (assemble, mark complete, queue the video). `uploads` owns the
//! table, `lock` the leases, `checksum` the digests.

mod body;
mod checksum;
mod engine;
mod handoff;
mod lock;
mod tus;
pub mod uploads;

use lectern_core::error::Code;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, MethodRouter};
use axum::Router;
use bytes::BytesMut;
use futures::StreamExt;
use lectern_core::auth::{Auth, Claims, HasKeys, Keys};
use lectern_core::db::Db;
use lectern_core::error::ApiError;
use lectern_core::object_http::{object_response, request_range};
use lectern_core::queue::Queue;
use lectern_core::storage::{MultipartStore, ObjectStore, PartList, StoreError};
use lectern_core::videos::{self, priority, NewVideo};
use lectern_wire::tus::Concat;
use tower_http::set_header::SetResponseHeaderLayer;

pub use checksum::ALGORITHMS as CHECKSUM_ALGORITHMS;
pub use lock::Locks;
pub use tus::{decorate_options, router};
pub use uploads::Upload;

/// Most partial uploads one final upload may concatenate.
pub use lectern_wire::tus::MAX_PARTIALS;

use body::*;
use handoff::*;
use tus::*;

/// The fraction of an upload received so far (for the status API), if the length is known.
pub async fn upload_progress(db: &Db, id: &str) -> Result<Option<f64>, ApiError> {
    Ok(uploads::get(db, id).await?.and_then(|u| {
        u.known_length().map(|len| {
            if len == 0 {
                1.0
            } else {
                u.offset_bytes as f64 / len as f64
            }
        })
    }))
}

/// The tus protocol version served.
pub const TUS_VERSION: &str = "1.0.0";
/// Extensions implemented (and advertised).
pub const TUS_EXTENSIONS: &str =
    "creation,creation-with-upload,creation-defer-length,termination,expiration,checksum,concatenation";
/// Largest upload accepted, bytes (2 GiB).
pub const MAX_SIZE: u64 = 2 * 1024 * 1024 * 1024;
/// S3's smallest part (all but the last); smaller partials are re-read when concatenated.
pub const MIN_PART: u64 = 5 * 1024 * 1024;
/// Allowed part sizes.
pub const PART_SIZE_RANGE: std::ops::RangeInclusive<usize> = (8 << 20)..=(64 << 20);
const OCTET_STREAM: &str = "application/offset+octet-stream";
/// Refused bodies up to this size are read and discarded before answering, so the client
/// reads the status instead of a reset (a part's worth: clients send up to that per PATCH).
const DRAIN_LIMIT: u64 = 64 * 1024 * 1024;
/// How long a refused body may take to be discarded.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(15);

/// Reads and discards a refused request's body (up to [`DRAIN_LIMIT`] and [`DRAIN_TIME`]),
/// then hands back the refusal. Nothing of the body is stored.
async fn refuse(req: Request, err: ApiError) -> ApiError {
    drain(req).await;
    err
}

/// Reads and discards a request's body, up to [`DRAIN_LIMIT`] and [`DRAIN_TIME`].
async fn drain(req: Request) {
    let declared = header_u64(req.headers(), "content-length", Code::InvalidContentLength)
        .ok()
        .flatten();
    if declared.is_none_or(|n| n <= DRAIN_LIMIT) {
        let mut body = req.into_body().into_data_stream();
        let _ = tokio::time::timeout(DRAIN_TIME, async {
            let mut seen = 0u64;
            while let Some(Ok(chunk)) = futures::StreamExt::next(&mut body).await {
                seen += chunk.len() as u64;
                if seen > DRAIN_LIMIT {
                    break;
                }
            }
        })
        .await;
    }
}

/// What the ingest routes need.
#[derive(Clone)]
pub struct IngestState {
    /// Database.
    pub db: Db,
    /// Where upload bytes go.
    pub store: Arc<dyn ObjectStore>,
    /// Token verification keys.
    pub keys: Keys,
    /// Transcode queue, fed when an upload completes.
    pub queue: Queue,
    /// Configured external base URL.
    pub public_url: Option<String>,
    /// Lifetime of an unfinished upload since its last write.
    pub expiry: Duration,
    /// Bytes per stored part.
    pub part_size: usize,
    locks: Locks,
    engines: engine::Engines,
    /// Memory for request bodies buffered on their way to a multipart store, in
    /// [`BUFFER_UNIT`]s; bounds a node's memory however many uploads arrive at once.
    buffers: Arc<tokio::sync::Semaphore>,
    buffer_units: u32,
    quotas: Quotas,
}

/// Per-organisation limits checked when an upload is created (0 = none).
#[derive(Clone, Copy, Debug, Default)]
pub struct Quotas {
    /// Source bytes an org may store.
    pub storage_bytes: u64,
    /// Videos an org may have uploading, queued or transcoding.
    pub pending_videos: u64,
}

/// Granularity of the upload buffer budget.
const BUFFER_UNIT: u64 = 64 * 1024;

/// Parts of one request body that may upload at once while the next fills: enough to keep an
/// S3 server busy while the client sends (boto3's transfer manager runs 10), few enough that a
/// node's buffer serves many uploads.
pub(crate) const PARTS_IN_FLIGHT: usize = 3;

/// The bytes a reservation from [`IngestState::reserve`] grants (unbounded without one: the
/// store writes in place and buffers nothing).
pub(crate) fn reserved_bytes(permit: &Option<tokio::sync::OwnedSemaphorePermit>) -> u64 {
    permit
        .as_ref()
        .map_or(u64::MAX, |p| p.num_permits() as u64 * BUFFER_UNIT)
}
/// How long a write may wait for buffer memory before it is refused with 503.
const BUFFER_WAIT: Duration = Duration::from_secs(20);
/// The upload buffer budget unless [`IngestState::with_buffer_limit`] sets one.
const DEFAULT_BUFFER: u64 = 1 << 30;

impl HasKeys for IngestState {
    fn keys(&self) -> &Keys {
        &self.keys
    }
}

impl IngestState {
    /// The store's multipart capability (concatenation copies parts with it).
    fn parts(&self) -> Result<&dyn MultipartStore, StoreError> {
        engine::parts_of(&*self.store)
    }

    /// Builds the ingest state; `part_size` is clamped to 8–64 MiB.
    pub fn new(
        db: Db,
        store: Arc<dyn ObjectStore>,
        keys: Keys,
        queue: Queue,
        public_url: Option<String>,
        expiry: Duration,
        part_size: usize,
    ) -> Self {
        let part_size = part_size.clamp(*PART_SIZE_RANGE.start(), *PART_SIZE_RANGE.end());
        let locks = Locks::new(db.clone());
        let engines = engine::Engines::new(engine::Ctx {
            db: db.clone(),
            store: store.clone(),
            part_size,
            expiry,
            #[cfg(test)]
            crash_after: None,
        });
        Self {
            db,
            store,
            keys,
            queue,
            public_url,
            expiry,
            part_size,
            locks,
            engines,
            buffers: Arc::new(tokio::sync::Semaphore::new(0)),
            buffer_units: 0,
            quotas: Quotas::default(),
        }
        .with_buffer_limit(DEFAULT_BUFFER)
    }

    /// Sets how many bytes of request bodies this node may buffer at once (at least two parts).
    pub fn with_buffer_limit(mut self, bytes: u64) -> Self {
        let bytes = bytes.max(2 * self.part_size as u64);
        self.buffer_units = bytes.div_ceil(BUFFER_UNIT).min(u32::MAX as u64) as u32;
        self.buffers = Arc::new(tokio::sync::Semaphore::new(self.buffer_units as usize));
        self
    }

    /// Sets the per-organisation quotas.
    pub fn with_quotas(mut self, quotas: Quotas) -> Self {
        self.quotas = quotas;
        self
    }

    /// Refuses a new upload of `adding` bytes (a video unless `partial`) that would take `org`
    /// past a quota. Checked before anything is stored; concurrent creations may overshoot by
    /// their own sizes.
    async fn check_quotas(&self, org: &str, adding: u64, video: bool) -> Result<(), ApiError> {
        let q = self.quotas;
        if q.pending_videos > 0 && video {
            let pending = videos::org_pending(&self.db, org).await?;
            if pending >= q.pending_videos {
                return Err(ApiError::new(Code::QueueQuotaExceeded,
                    format!(
                        "your organisation has {pending} videos uploading or waiting to be transcoded, its quota is {}; retry once some are ready",
                        q.pending_videos
                    ),
                )
                .with_header("retry-after", "60"));
            }
        }
        if q.storage_bytes > 0 {
            let used = uploads::org_bytes(&self.db, org).await?;
            if used.saturating_add(adding) > q.storage_bytes {
                return Err(ApiError::new(Code::StorageQuotaExceeded,
                    format!(
                        "your organisation stores {used} bytes of its {}-byte quota and this upload needs {adding} more; delete videos it no longer needs, or ask the operator to raise org_storage_quota_mb",
                        q.storage_bytes
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Reserves the memory a write to `u` may buffer: none where the store writes in place,
    /// else the tail plus the body, and never more than [`PARTS_IN_FLIGHT`] parts sending and
    /// one filling.
    /// Past [`BUFFER_WAIT`] the write is refused rather than queued without bound.
    async fn reserve(
        &self,
        u: &Upload,
        headers: &HeaderMap,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, ApiError> {
        if !self.engines.of(u).buffers() {
            return Ok(None);
        }
        let most = (PARTS_IN_FLIGHT as u64 + 1) * self.part_size as u64;
        let body =
            header_u64(headers, "content-length", Code::InvalidContentLength)?.unwrap_or(most);
        let need = (u.tail_size.max(0) as u64 + body).clamp(1, most);
        let units = (need.div_ceil(BUFFER_UNIT) as u32).min(self.buffer_units);
        match tokio::time::timeout(BUFFER_WAIT, self.buffers.clone().acquire_many_owned(units))
            .await
        {
            Ok(Ok(permit)) => Ok(Some(permit)),
            _ => {
                metrics::counter!("lectern_upload_buffer_refusals_total").increment(1);
                Err(ApiError::new(Code::OverCapacity,
                    "this node is buffering as many upload bytes as it may; retry after the pause Retry-After gives (HEAD tells where to resume)",
                )
                .with_header("retry-after", "2"))
            }
        }
    }

    fn expires_at(&self) -> i64 {
        self.engines.native().ctx().expires_at()
    }

    /// Finishes uploads whose last byte was stored but whose completion was interrupted
    /// (a crash between the last part and the queue), so none is stranded.
    pub async fn recover(&self) -> anyhow::Result<usize> {
        let stuck = uploads::list_full_unfinished(&self.db).await?;
        for u in &stuck {
            tracing::info!(upload = %u.id, "finishing an upload interrupted after its last byte");
            finish(self, u).await?;
        }
        Ok(stuck.len())
    }

    /// Removes expired unfinished uploads (aborting their multipart uploads) and expired
    /// partial uploads; returns how many it removed.
    pub async fn sweep(&self) -> anyhow::Result<usize> {
        let mut n = 0;
        for u in uploads::list_expired(&self.db, lectern_core::now_ms()).await? {
            let Ok(_guard) = self.locks.acquire(&u.id).await else {
                continue;
            };
            if u.state == uploads::UploadState::Uploading {
                self.engines.of(&u).discard(&u).await?;
            } else {
                self.store.delete(&u.object_key).await?;
            }
            uploads::terminate(&self.db, &u).await?;
            tracing::info!(upload = %u.id, "expired upload removed");
            n += 1;
        }
        Ok(n)
    }

    /// Sweeps expired uploads every `every` until the process ends.
    pub fn spawn_sweeper(self, every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if let Err(e) = self.sweep().await {
                    tracing::warn!(error = %e, "sweeping expired uploads failed; will retry");
                }
            }
        })
    }
}
