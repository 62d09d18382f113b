//! tus 1.0.0 upload server at `/files/`: core protocol plus creation, creation-with-upload,
//! creation-defer-length, termination, expiration, checksum and concatenation.
//!
//! Bytes are cut into parts of `part_size` and stored as multipart parts of the upload's
//! object. What is left over at the end of a request (less than a part) is kept as a *tail
//! object* in the store, like tusd's S3 store, so any node can continue the upload and any
//! client chunk size works. The offset in the database moves only after the bytes it counts
//! are durable, so a crash never overstates it.

mod checksum;
mod lock;
mod uploads;

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
use lectern_core::storage::{MultipartStore, ObjectStore, Part, PartList, StoreError};
use lectern_core::videos::{self, priority, NewVideo};
use lectern_wire::tus::Concat;
use tower_http::set_header::SetResponseHeaderLayer;

pub use checksum::ALGORITHMS as CHECKSUM_ALGORITHMS;
pub use lock::Locks;
pub use uploads::Upload;

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
    let declared = header_u64(req.headers(), "content-length", "invalid-content-length")
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
/// How long a write may wait for buffer memory before it is refused with 503.
const BUFFER_WAIT: Duration = Duration::from_secs(20);
/// The upload buffer budget unless [`IngestState::with_buffer_limit`] sets one.
const DEFAULT_BUFFER: u64 = 1 << 30;

impl HasKeys for IngestState {
    fn keys(&self) -> &Keys {
        &self.keys
    }
}

/// The store's multipart capability, which tus uploads are built on.
fn parts_of(store: &dyn ObjectStore) -> Result<&dyn MultipartStore, StoreError> {
    store.multipart().ok_or_else(|| {
        StoreError::Backend("this object store cannot assemble uploads from parts".into())
    })
}

impl IngestState {
    /// The store's multipart capability (see [`parts_of`]).
    fn parts(&self) -> Result<&dyn MultipartStore, StoreError> {
        parts_of(&*self.store)
    }

    /// Whether the store writes parts in place as bytes arrive (then no tail objects exist).
    fn in_place(&self) -> bool {
        self.store
            .multipart()
            .is_some_and(|m| m.in_place().is_some())
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
        Self {
            db,
            store,
            keys,
            queue,
            public_url,
            expiry,
            part_size,
            locks,
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
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "queue-quota-exceeded",
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
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "storage-quota-exceeded",
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
    /// else the tail plus the body, and never more than two parts (one sending, one filling).
    /// Past [`BUFFER_WAIT`] the write is refused rather than queued without bound.
    async fn reserve(
        &self,
        u: &Upload,
        headers: &HeaderMap,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, ApiError> {
        if self.in_place() && u.tail_key.is_none() {
            return Ok(None);
        }
        let two_parts = 2 * self.part_size as u64;
        let body =
            header_u64(headers, "content-length", "invalid-content-length")?.unwrap_or(two_parts);
        let need = (u.tail_size.max(0) as u64 + body).clamp(1, two_parts);
        let units = (need.div_ceil(BUFFER_UNIT) as u32).min(self.buffer_units);
        match tokio::time::timeout(BUFFER_WAIT, self.buffers.clone().acquire_many_owned(units))
            .await
        {
            Ok(Ok(permit)) => Ok(Some(permit)),
            _ => {
                metrics::counter!("lectern_upload_buffer_refusals_total").increment(1);
                Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "over-capacity",
                    "this node is buffering as many upload bytes as it may; retry after the pause Retry-After gives (HEAD tells where to resume)",
                )
                .with_header("retry-after", "2"))
            }
        }
    }

    fn expires_at(&self) -> i64 {
        lectern_core::now_ms() + self.expiry.as_millis() as i64
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
                self.parts()?
                    .abort_multipart(&u.object_key, &u.multipart_id)
                    .await?;
                if let Some(t) = &u.tail_key {
                    self.store.delete(t).await?;
                }
                if u.is_video() {
                    videos::delete(&self.db, &u.id).await?;
                }
            } else {
                self.store.delete(&u.object_key).await?;
            }
            uploads::mark_terminated(&self.db, &u.id).await?;
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

/// The `/files/` routes.
pub fn router(state: IngestState) -> Router {
    let collection: MethodRouter<IngestState> = any(collection);
    let item: MethodRouter<IngestState> = any(item);
    Router::new()
        .route("/files", collection.clone())
        .route("/files/", collection)
        .route("/files/{id}", item)
        .layer(SetResponseHeaderLayer::if_not_present(
            header::HeaderName::from_static("tus-resumable"),
            HeaderValue::from_static(TUS_VERSION),
        ))
        .with_state(state)
}

/// Honours `X-HTTP-Method-Override` on POST, which clients behind restrictive proxies send
/// (tus-js-client's `overridePatchMethod`). Other methods are taken as they are, as tusd does,
/// so no GET can turn into a DELETE.
fn effective_method(req: &Request) -> Method {
    if req.method() != Method::POST {
        return req.method().clone();
    }
    req.headers()
        .get("x-http-method-override")
        .and_then(|v| Method::from_bytes(v.as_bytes()).ok())
        .unwrap_or(Method::POST)
}

async fn collection(State(st): State<IngestState>, req: Request) -> Response {
    let res = match effective_method(&req) {
        Method::OPTIONS => Ok(options()),
        Method::POST => create(st, req).await,
        _ => Err(method_not_allowed()),
    };
    res.unwrap_or_else(IntoResponse::into_response)
}

async fn item(State(st): State<IngestState>, Path(id): Path<String>, req: Request) -> Response {
    // Ids are checked for shape before any query: PostgreSQL refuses NUL in text (a 500), and
    // both databases should answer a malformed id the same way.
    if !lectern_core::text::is_id(&id) && effective_method(&req) != Method::OPTIONS {
        return ApiError::not_found("upload").into_response();
    }
    let res = match effective_method(&req) {
        Method::OPTIONS => Ok(options()),
        Method::HEAD => head(st, &id, req).await,
        Method::PATCH => patch(st, &id, req).await,
        Method::DELETE => terminate(st, &id, req).await,
        Method::GET => download(st, &id, req).await,
        _ => Err(method_not_allowed()),
    };
    res.unwrap_or_else(IntoResponse::into_response)
}

fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "tus supports OPTIONS, POST, HEAD, PATCH, DELETE and GET here",
    )
}

fn options() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    decorate_options(&mut r);
    r
}

/// Adds the tus discovery headers to an OPTIONS response. The server's CORS layer answers
/// every OPTIONS itself (as a preflight), so it calls this for `/files` paths too.
pub fn decorate_options(r: &mut Response) {
    if r.status().is_success() {
        *r.status_mut() = StatusCode::NO_CONTENT;
    }
    let h = r.headers_mut();
    h.insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    h.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    h.insert("tus-extension", HeaderValue::from_static(TUS_EXTENSIONS));
    h.insert("tus-max-size", HeaderValue::from(MAX_SIZE));
    h.insert(
        "tus-checksum-algorithm",
        HeaderValue::from_static(checksum::ALGORITHMS),
    );
}

fn check_tus_resumable(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get("tus-resumable").and_then(|v| v.to_str().ok()) {
        Some(TUS_VERSION) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "unsupported-tus-version",
            "send `Tus-Resumable: 1.0.0`; this server speaks tus 1.0.0",
        )
        .with_header("tus-version", TUS_VERSION)),
    }
}

async fn authorize(st: &IngestState, req: Request) -> Result<(Claims, Request), ApiError> {
    let (mut parts, body) = req.into_parts();
    let Auth(claims) =
        <Auth as axum::extract::FromRequestParts<IngestState>>::from_request_parts(&mut parts, st)
            .await?;
    claims.require_manager()?;
    Ok((claims, Request::from_parts(parts, body)))
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn header_u64(
    headers: &HeaderMap,
    name: &str,
    code: &'static str,
) -> Result<Option<u64>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(lectern_wire::tus::number)
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_request(code, format!("`{name}` must be a non-negative integer"))
            }),
    }
}

fn is_octet_stream(headers: &HeaderMap) -> bool {
    header_str(headers, header::CONTENT_TYPE.as_str()).is_some_and(|v| {
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case(OCTET_STREAM)
    })
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "upload-too-large",
        format!("uploads are limited to {MAX_SIZE} bytes (2 GiB); trim or re-encode the recording"),
    )
}

fn gone() -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "upload-gone",
        "this upload was terminated or expired; start a new upload",
    )
}

fn http_date(ms: i64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

/// Most partial uploads one final upload may concatenate.
pub use lectern_wire::tus::MAX_PARTIALS;

async fn create(st: IngestState, req: Request) -> Result<Response, ApiError> {
    check_tus_resumable(req.headers())?;
    let (claims, req) = authorize(&st, req).await?;
    let headers = req.headers().clone();
    let (concat, partial_ids) =
        match lectern_wire::tus::concat(header_str(&headers, "upload-concat").unwrap_or(""))? {
            Concat::None => ("", Vec::new()),
            Concat::Partial => ("partial", Vec::new()),
            Concat::Final(ids) => ("final", ids),
        };
    let raw_meta = header_str(&headers, "upload-metadata")
        .unwrap_or("")
        .to_string();
    let meta = lectern_wire::tus::metadata(&raw_meta)?;
    if let Some(t) = meta.get("title").filter(|t| !t.is_empty()) {
        lectern_core::text::title(t)?;
    }
    if let Some(f) = meta.get("filename") {
        if f.chars().count() > 255 || lectern_core::text::has_controls(f) {
            return Err(ApiError::bad_request(
                "invalid-metadata",
                "filename must be at most 255 characters without control characters",
            ));
        }
    }
    if let Some(l) = meta.get("lesson").filter(|l| !l.is_empty()) {
        if !lectern_core::text::is_id(l) {
            return Err(lectern_core::error::unprocessable(
                "unknown-lesson",
                "the `lesson` metadata is not a lesson id",
            ));
        }
    }
    let mut prio = match meta.get("priority").map(String::as_str) {
        None | Some("") => priority::NORMAL,
        Some("bulk") => priority::BULK,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid-metadata",
                format!("unknown priority '{other}'; the only value accepted is `bulk`"),
            ))
        }
    };
    if let Some(lesson) = meta.get("lesson").filter(|l| !l.is_empty()) {
        // Checked before a byte is stored; replacing a published lesson's video jumps the queue.
        match videos::lesson_has_ready_video(&st.db, &claims.org, lesson).await? {
            None => {
                return Err(lectern_core::error::unprocessable(
                    "unknown-lesson",
                    format!(
                    "no lesson {lesson} in your org; create it first or drop the `lesson` metadata"
                ),
                ))
            }
            Some(true) if prio != priority::BULK => prio = priority::REPLACEMENT,
            Some(_) => {}
        }
    }

    // Length: declared, deferred, or (final) the sum of the partials.
    let mut partials = Vec::new();
    let length: i64 = if !partial_ids.is_empty() {
        for pid in &partial_ids {
            let p = match uploads::get(&st.db, pid).await? {
                Some(p) if p.org == claims.org && p.concat == "partial" => p,
                _ => {
                    return Err(ApiError::bad_request(
                        "invalid-concat",
                        format!("{pid} is not a partial upload of yours"),
                    ))
                }
            };
            if p.state != uploads::UploadState::Complete {
                return Err(ApiError::bad_request(
                    "partial-incomplete",
                    format!("partial upload {pid} is not complete; finish every partial before the final upload"),
                ));
            }
            partials.push(p);
        }
        let sum: i64 = partials.iter().map(|p| p.length).sum();
        if sum as u64 > MAX_SIZE {
            return Err(too_large());
        }
        sum
    } else {
        match (
            header_u64(&headers, "upload-length", "invalid-upload-length")?,
            header_str(&headers, "upload-defer-length"),
        ) {
            (Some(len), None) if len > MAX_SIZE => return Err(too_large()),
            (Some(len), None) => len as i64,
            (None, Some("1")) => uploads::DEFERRED,
            (None, Some(_)) => {
                return Err(ApiError::bad_request(
                    "invalid-defer-length",
                    "Upload-Defer-Length must be 1",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "invalid-upload-length",
                    "send either Upload-Length or Upload-Defer-Length, not both",
                ))
            }
            (None, None) => {
                return Err(ApiError::bad_request(
                    "missing-upload-length",
                    "send `Upload-Length` with the file size in bytes, or `Upload-Defer-Length: 1`",
                ))
            }
        }
    };

    st.check_quotas(&claims.org, length.max(0) as u64, concat != "partial")
        .await?;

    let id = lectern_core::new_id();
    let object_key = lectern_core::keys::source(&id);
    let multipart_id = st.parts()?.create_multipart(&object_key).await?;
    let upload = uploads::insert(
        &st.db,
        uploads::NewUpload {
            id: &id,
            claims: &claims,
            length,
            metadata: &raw_meta,
            object_key: &object_key,
            multipart_id: &multipart_id,
            concat,
            partials: &partial_ids,
            expires_at: st.expires_at(),
        },
    )
    .await?;
    if upload.is_video() {
        let video = NewVideo {
            id: &id,
            org: &claims.org,
            owner: &claims.sub,
            title: meta.get("title").map(String::as_str),
            lesson: meta.get("lesson").map(String::as_str),
            filename: meta.get("filename").map(String::as_str),
            priority: prio,
            source_key: &object_key,
        };
        if let Err(e) = videos::insert(&st.db, video).await {
            let _ = uploads::delete(&st.db, &id).await;
            if let Ok(m) = st.parts() {
                let _ = m.abort_multipart(&object_key, &multipart_id).await;
            }
            return Err(e);
        }
    }
    metrics::counter!("lectern_uploads_created_total").increment(1);
    tracing::info!(upload = %id, org = %claims.org, length, concat, "upload created");

    let location = format!(
        "{}/files/{id}",
        lectern_core::base_url(st.public_url.as_deref(), &headers)
    );
    let mut offset = 0;
    let mut expires = Some(upload.expires_at);
    if !partials.is_empty() {
        let guard = st.locks.acquire(&id).await?;
        let upload = uploads::Upload {
            lease_token: guard.token(),
            ..upload
        };
        compose(&st, &upload, &partials).await?;
        guard.release().await;
        offset = length as u64;
        expires = None;
    } else {
        let has_body = header_u64(&headers, "content-length", "invalid-content-length")?
            .is_some_and(|n| n > 0)
            || headers.contains_key(header::TRANSFER_ENCODING);
        if has_body && is_octet_stream(&headers) {
            // A new upload has no tail, so its buffer share is known before the lease: wait for
            // memory first, holding nothing another request of this upload would need.
            match st.reserve(&upload, &headers).await {
                Ok(permit) => {
                    let guard = st.locks.acquire(&id).await?;
                    let upload = uploads::Upload {
                        lease_token: guard.token(),
                        ..upload
                    };
                    let st = st.clone();
                    let w = under_lock(guard, async move {
                        let w = write_request(&st, upload, &headers, req.into_body()).await;
                        drop(permit);
                        w
                    })
                    .await?;
                    offset = w.offset;
                    expires = w.expires;
                }
                // A busy node still creates the upload but stores none of this body: the
                // client reads `Upload-Offset: 0` and sends it again with PATCH (tus allows a
                // server to keep less than it was sent).
                Err(_) => drain(req).await,
            }
        } else if length == 0 {
            finish(&st, &upload).await?;
            expires = None;
        }
    }
    let mut r = StatusCode::CREATED.into_response();
    let h = r.headers_mut();
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(&location).map_err(ApiError::internal)?,
    );
    h.insert("upload-offset", HeaderValue::from(offset));
    if let Some(e) = expires {
        h.insert(
            "upload-expires",
            HeaderValue::from_str(&http_date(e)).map_err(ApiError::internal)?,
        );
    }
    Ok(r)
}

async fn load(st: &IngestState, id: &str, org: &str) -> Result<Upload, ApiError> {
    match uploads::get(&st.db, id).await? {
        Some(u) if u.org == org && u.state == uploads::UploadState::Terminated => Err(gone()),
        Some(u) if u.org == org => Ok(u),
        _ => Err(ApiError::not_found("upload")),
    }
}

fn concat_header(u: &Upload, base: &str) -> Option<String> {
    match u.concat.as_str() {
        "partial" => Some("partial".into()),
        "final" => {
            let ids: Vec<String> = serde_json::from_str(&u.partials).unwrap_or_default();
            Some(format!(
                "final;{}",
                ids.iter()
                    .map(|i| format!("{base}/files/{i}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ))
        }
        _ => None,
    }
}

async fn head(st: IngestState, id: &str, req: Request) -> Result<Response, ApiError> {
    check_tus_resumable(req.headers())?;
    let (claims, req) = authorize(&st, req).await?;
    let u = load(&st, id, &claims.org).await?;
    let mut r = StatusCode::OK.into_response();
    let base = lectern_core::base_url(st.public_url.as_deref(), req.headers());
    let h = r.headers_mut();
    h.insert("upload-offset", HeaderValue::from(u.offset_bytes));
    match u.known_length() {
        Some(len) => h.insert("upload-length", HeaderValue::from(len)),
        None => h.insert("upload-defer-length", HeaderValue::from_static("1")),
    };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if !u.metadata.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&u.metadata) {
            h.insert("upload-metadata", v);
        }
    }
    if let Some(c) = concat_header(&u, &base).and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert("upload-concat", c);
    }
    if u.state == uploads::UploadState::Uploading {
        if let Ok(v) = HeaderValue::from_str(&http_date(u.expires_at)) {
            h.insert("upload-expires", v);
        }
    }
    Ok(r)
}

async fn patch(st: IngestState, id: &str, req: Request) -> Result<Response, ApiError> {
    check_tus_resumable(req.headers())?;
    let (claims, req) = authorize(&st, req).await?;
    if !is_octet_stream(req.headers()) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid-content-type",
            "PATCH bodies must be sent as `Content-Type: application/offset+octet-stream`",
        ));
    }
    let client_offset = header_u64(req.headers(), "upload-offset", "invalid-upload-offset")?
        .ok_or_else(|| {
            ApiError::bad_request(
                "missing-upload-offset",
                "send `Upload-Offset` with the offset HEAD reported",
            )
        })?;
    // Lock first, then read once: the row read under the lock is current. A busy lock is only
    // reported (423) for an upload the caller may see; anyone else gets the 404 first.
    let guard = match st.locks.acquire(id).await {
        Ok(g) => g,
        Err(busy) => {
            let err = match load(&st, id, &claims.org).await {
                Ok(_) => busy,
                Err(e) => e,
            };
            return Err(refuse(req, err).await);
        }
    };
    let id = id.to_string();
    under_lock(guard, async move {
        patch_locked(&st, &id, &claims, client_offset, req).await
    })
    .await
}

/// The PATCH itself, under the upload's lock.
async fn patch_locked(
    st: &IngestState,
    id: &str,
    claims: &lectern_core::auth::Claims,
    client_offset: u64,
    req: Request,
) -> Result<Response, ApiError> {
    let st = st.clone();
    let mut u = match load(&st, id, &claims.org).await {
        Ok(u) => u,
        Err(e) => return Err(refuse(req, e).await),
    };
    if u.concat == "final" {
        return Err(refuse(
            req,
            ApiError::forbidden("a final concatenated upload cannot be patched")
                .with_header("upload-offset", u.offset_bytes.to_string()),
        )
        .await);
    }
    if client_offset != u.offset_bytes as u64 {
        return Err(refuse(req, ApiError::conflict(
            "offset-mismatch",
            format!(
                "Upload-Offset {client_offset} does not match the stored offset {}; send HEAD and resume from there",
                u.offset_bytes
            ),
        )
        .with_header("upload-offset", u.offset_bytes.to_string())).await);
    }
    if let Some(len) = header_u64(req.headers(), "upload-length", "invalid-upload-length")? {
        match u.known_length() {
            None if len > MAX_SIZE => return Err(too_large()),
            None if len < u.offset_bytes as u64 => {
                return Err(ApiError::bad_request(
                    "invalid-upload-length",
                    "Upload-Length is smaller than the bytes already stored",
                ))
            }
            None => {
                // The deferred length was counted as the bytes stored so far.
                let adding = len - u.offset_bytes as u64;
                if let Err(e) = st.check_quotas(&claims.org, adding, false).await {
                    return Err(refuse(req, e).await);
                }
                uploads::set_length(&st.db, id, len).await?;
                u.length = len as i64;
            }
            Some(known) if known != len => {
                return Err(ApiError::bad_request(
                    "invalid-upload-length",
                    format!("the upload's length is already {known}"),
                ))
            }
            Some(_) => {}
        }
    }
    let remaining = match u.known_length() {
        Some(len) => len - u.offset_bytes as u64,
        None => MAX_SIZE - u.offset_bytes as u64,
    };
    let content_length = header_u64(req.headers(), "content-length", "invalid-content-length")?;
    if let Some(len) = content_length {
        if len > remaining {
            return Err(refuse(req, exceeds(remaining)).await);
        }
    }
    let headers = req.headers().clone();
    let _permit = match st.reserve(&u, &headers).await {
        Ok(p) => p,
        Err(e) => return Err(refuse(req, e).await),
    };
    let written = write_request(&st, u, &headers, req.into_body()).await?;
    if let Some(e) = written.error {
        return Err(e);
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut()
        .insert("upload-offset", HeaderValue::from(written.offset));
    if let Some(e) = written.expires {
        if let Ok(v) = HeaderValue::from_str(&http_date(e)) {
            r.headers_mut().insert("upload-expires", v);
        }
    }
    Ok(r)
}

fn exceeds(remaining: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "exceeds-upload-length",
        format!("the body runs past Upload-Length; only {remaining} more bytes fit in this upload"),
    )
}

struct Written {
    offset: u64,
    expires: Option<i64>,
    error: Option<ApiError>,
}

/// Runs `work` (a write to the upload) in a task of its own that holds the upload's lock, so
/// a request future that is dropped (client gone, server shutting down) cannot leave a write
/// half-done while another request takes the lock: the task ends when the body ends or fails,
/// keeps what arrived, and only then releases the lock, before the answer goes out.
async fn under_lock<T: Send + 'static>(
    guard: lock::Guard,
    work: impl std::future::Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    let lost = guard.lost_flag();
    tokio::spawn(async move {
        let mut work = tokio::spawn(work);
        // A writer whose lease may be gone stops writing before another can take it over.
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
        let r = loop {
            tokio::select! {
                r = &mut work => break r.unwrap_or_else(|e| Err(ApiError::internal(format!("upload write task: {e}")))),
                _ = tick.tick() => {
                    if lost.load(std::sync::atomic::Ordering::Acquire) {
                        work.abort();
                        break Err(ApiError::unavailable("the upload's lease could not be renewed (is the database reachable?)"));
                    }
                }
            }
        };
        guard.release().await;
        r
    })
    .await
    .map_err(|e| ApiError::internal(format!("upload write task: {e}")))?
}

/// Writes one request body (PATCH, or POST with creation-with-upload), honouring
/// `Upload-Checksum`, and finishes the upload when its last byte arrived.
async fn write_request(
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
const BODY_IDLE: Duration = Duration::from_secs(60);

/// Bytes per part (and per flush) of a long body written in place on disk.
const DISK_PART: u64 = 64 << 20;

/// A request body read chunk by chunk, held to the bytes the upload has left and fed to the
/// checksum when there is one.
struct BodyReader {
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
fn cut_off(cur: &Upload, e: &str) -> ApiError {
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
async fn write_body_in_place(
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
async fn write_body(
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

/// Builds a final upload's object from its partials: server-side part copies where the store
/// allows them (every part but the last must be at least 5 MiB on S3), re-reading small ones.
async fn compose(st: &IngestState, u: &Upload, partials: &[Upload]) -> Result<(), ApiError> {
    let p = st.part_size;
    let mut parts = PartList::default();
    let mut buf = BytesMut::new();
    for (i, part) in partials.iter().enumerate() {
        let last = i + 1 == partials.len();
        let size = part.length as u64;
        if size == 0 {
            continue;
        }
        if buf.is_empty() && (size >= MIN_PART.min(st.parts()?.min_part_size()) || last) {
            let n = parts.next_number();
            let at = parts.total();
            parts.push(
                st.parts()?
                    .copy_part(&u.object_key, &u.multipart_id, n, at, &part.object_key)
                    .await?,
            );
            continue;
        }
        let mut got = st.store.get(&part.object_key, None).await?.stream;
        while let Some(chunk) = got.next().await {
            buf.extend_from_slice(&chunk.map_err(ApiError::unavailable)?);
            while buf.len() >= p {
                let n = parts.next_number();
                let at = parts.total();
                let data = buf.split_to(p).freeze();
                parts.push(
                    st.parts()?
                        .put_part(&u.object_key, &u.multipart_id, n, at, data)
                        .await?,
                );
            }
        }
    }
    if !buf.is_empty() {
        let n = parts.next_number();
        let at = parts.total();
        parts.push(
            st.parts()?
                .put_part(&u.object_key, &u.multipart_id, n, at, buf.freeze())
                .await?,
        );
    }
    let u = uploads::commit(&st.db, u, parts, None, st.expires_at()).await?;
    finish(st, &u).await
}

/// Assembles the object, marks the upload complete and queues its video. Idempotent.
async fn finish(st: &IngestState, u: &Upload) -> Result<(), ApiError> {
    if u.state == uploads::UploadState::Uploading {
        st.parts()?
            .complete_multipart(&u.object_key, &u.multipart_id, &u.part_list())
            .await?;
        uploads::mark_complete(&st.db, &u.id).await?;
    }
    if !u.is_video() {
        return Ok(());
    }
    let Some(v) = videos::get(&st.db, &u.id).await? else {
        return Ok(());
    };
    if v.state == videos::VideoState::Uploading {
        // Enqueue first: a crash in between leaves the video `uploading` with a full upload,
        // which `recover` finishes again; the worker accepts it in either state.
        let qp = lectern_core::queue::placement(&st.db, &v.org, v.priority).await?;
        let task = st
            .queue
            .enqueue(&u.id, qp)
            .await
            .map_err(ApiError::unavailable)?;
        videos::mark_queued(&st.db, &u.id, &task, qp).await?;
        metrics::counter!("lectern_uploads_completed_total").increment(1);
        tracing::info!(upload = %u.id, "upload complete; queued for transcoding");
    }
    Ok(())
}

async fn terminate(st: IngestState, id: &str, req: Request) -> Result<Response, ApiError> {
    check_tus_resumable(req.headers())?;
    let (claims, _) = authorize(&st, req).await?;
    load(&st, id, &claims.org).await?;
    let _guard = st.locks.acquire(id).await?;
    let u = load(&st, id, &claims.org).await?;
    if u.state == uploads::UploadState::Complete && u.is_video() {
        return Err(ApiError::conflict(
            "upload-complete",
            "this upload is complete and its video is being processed; it can no longer be terminated",
        ));
    }
    if u.state == uploads::UploadState::Uploading {
        st.parts()?
            .abort_multipart(&u.object_key, &u.multipart_id)
            .await?;
        if let Some(t) = &u.tail_key {
            st.store.delete(t).await?;
        }
    } else {
        st.store.delete(&u.object_key).await?;
    }
    if u.is_video() {
        videos::delete(&st.db, id).await?;
    }
    uploads::mark_terminated(&st.db, id).await?;
    tracing::info!(upload = %id, "upload terminated");
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn download(st: IngestState, id: &str, req: Request) -> Result<Response, ApiError> {
    let (claims, req) = authorize(&st, req).await?;
    let u = load(&st, id, &claims.org).await?;
    if u.state != uploads::UploadState::Complete {
        return Err(ApiError::conflict(
            "upload-incomplete",
            "the upload is not complete yet; finish it, then download",
        ));
    }
    let range = request_range(req.headers())?;
    let got = st.store.get(&u.object_key, range).await?;
    let meta = lectern_wire::tus::metadata(&u.metadata).unwrap_or_default();
    let ctype = meta
        .get("filetype")
        .filter(|t| t.contains('/') && HeaderValue::from_str(t).is_ok())
        .map(String::as_str)
        .unwrap_or("application/octet-stream");
    let mut r = object_response(got, range.is_some(), ctype, false)?;
    // The type is the uploader's word: never let a browser render it (text/html from an
    // upload would run as this origin's page), only save it.
    let safe: String = meta
        .get("filename")
        .map(|n| {
            n.chars()
                .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\' || *c == ' ')
                .collect()
        })
        .unwrap_or_default();
    let disposition = if safe.trim().is_empty() {
        HeaderValue::from_static("attachment")
    } else {
        HeaderValue::from_str(&format!("attachment; filename=\"{safe}\""))
            .unwrap_or(HeaderValue::from_static("attachment"))
    };
    let h = r.headers_mut();
    h.insert(header::CONTENT_DISPOSITION, disposition);
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    Ok(r)
}
