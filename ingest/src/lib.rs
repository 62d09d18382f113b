//! tus 1.0.0 upload server at `/files/`: core protocol, creation, creation-with-upload and
//! termination. Each PATCH becomes one durable multipart part in the object store; the offset in
//! the database only moves after the part is durable, so a crash never overstates it.

mod metadata;
mod uploads;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, MethodRouter};
use axum::Router;
use bytes::Bytes;
use futures::StreamExt;
use lectern_core::auth::{Auth, HasKeys, Keys};
use lectern_core::db::Db;
use lectern_core::error::ApiError;
use lectern_core::queue::Queue;
use lectern_core::storage::{object_response, request_range, ByteStream, ObjectStore};
use lectern_core::videos::{self, priority, NewVideo};
use tower_http::set_header::SetResponseHeaderLayer;

pub use metadata::parse_metadata;
pub use uploads::Upload;

/// The tus protocol version served.
pub const TUS_VERSION: &str = "1.0.0";
/// Extensions implemented (and advertised).
pub const TUS_EXTENSIONS: &str = "creation,creation-with-upload,termination";
/// Largest upload accepted, bytes (2 GiB).
pub const MAX_SIZE: u64 = 2 * 1024 * 1024 * 1024;
const OCTET_STREAM: &str = "application/offset+octet-stream";
/// Refused bodies up to this size are read and discarded before answering.
const DRAIN_LIMIT: u64 = 4 * 1024 * 1024;

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
    /// Seconds before an unfinished upload may be swept.
    pub expiry_s: i64,
    locks: Arc<Mutex<HashSet<String>>>,
}

impl HasKeys for IngestState {
    fn keys(&self) -> &Keys {
        &self.keys
    }
}

impl IngestState {
    /// Builds the ingest state.
    pub fn new(
        db: Db,
        store: Arc<dyn ObjectStore>,
        keys: Keys,
        queue: Queue,
        public_url: Option<String>,
        expiry_s: i64,
    ) -> Self {
        Self {
            db,
            store,
            keys,
            queue,
            public_url,
            expiry_s,
            locks: Default::default(),
        }
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
}

/// A guard for the in-process upload lock; a second PATCH on the same upload gets 423.
struct UploadLock {
    set: Arc<Mutex<HashSet<String>>>,
    id: String,
}

impl UploadLock {
    fn acquire(state: &IngestState, id: &str) -> Result<Self, ApiError> {
        let mut set = state.locks.lock().expect("lock set poisoned");
        if !set.insert(id.to_string()) {
            return Err(ApiError::new(
                StatusCode::LOCKED,
                "upload-locked",
                "another request is writing to this upload; wait for it, then resume from HEAD's offset",
            ));
        }
        Ok(Self {
            set: state.locks.clone(),
            id: id.to_string(),
        })
    }
}

impl Drop for UploadLock {
    fn drop(&mut self) {
        self.set.lock().expect("lock set poisoned").remove(&self.id);
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

/// Honours `X-HTTP-Method-Override`, which clients behind restrictive proxies use.
fn effective_method(req: &Request) -> Method {
    req.headers()
        .get("x-http-method-override")
        .and_then(|v| Method::from_bytes(v.as_bytes()).ok())
        .unwrap_or_else(|| req.method().clone())
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

async fn authorize(
    st: &IngestState,
    req: Request,
) -> Result<(lectern_core::auth::Claims, Request), ApiError> {
    let (mut parts, body) = req.into_parts();
    let Auth(claims) =
        <Auth as axum::extract::FromRequestParts<IngestState>>::from_request_parts(&mut parts, st)
            .await?;
    claims.require_manager()?;
    Ok((claims, Request::from_parts(parts, body)))
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
            .and_then(|s| s.parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_request(code, format!("`{name}` must be a non-negative integer"))
            }),
    }
}

fn is_octet_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case(OCTET_STREAM)
        })
}

async fn create(st: IngestState, req: Request) -> Result<Response, ApiError> {
    check_tus_resumable(req.headers())?;
    let (claims, req) = authorize(&st, req).await?;
    let headers = req.headers().clone();
    if headers.contains_key("upload-concat") {
        return Err(ApiError::bad_request("concatenation-unsupported", "this server does not support the concatenation extension yet; upload the file as one upload"));
    }
    let length = header_u64(&headers, "upload-length", "invalid-upload-length")?.ok_or_else(|| {
        ApiError::bad_request("missing-upload-length", "send `Upload-Length` with the file size in bytes; deferred lengths are not supported yet")
    })?;
    if length > MAX_SIZE {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "upload-too-large",
            format!(
                "uploads are limited to {MAX_SIZE} bytes (2 GiB); trim or re-encode the recording"
            ),
        ));
    }
    let raw_meta = headers
        .get("upload-metadata")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let meta = parse_metadata(&raw_meta)?;
    let prio = match meta.get("priority").map(String::as_str) {
        None | Some("") => priority::NORMAL,
        Some("bulk") => priority::BULK,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid-metadata",
                format!("unknown priority '{other}'; the only value accepted is `bulk`"),
            ))
        }
    };
    let id = lectern_core::new_id();
    let object_key = format!("sources/{id}");
    let multipart_id = st.store.create_multipart(&object_key).await?;
    let upload = uploads::insert(
        &st.db,
        &id,
        &claims,
        length,
        &raw_meta,
        &object_key,
        &multipart_id,
        st.expiry_s,
    )
    .await?;
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
        let _ = st.store.abort_multipart(&object_key, &multipart_id).await;
        return Err(e);
    }
    metrics::counter!("lectern_uploads_created_total").increment(1);
    tracing::info!(upload = %id, org = %claims.org, length, "upload created");

    let location = format!(
        "{}/files/{id}",
        lectern_core::base_url(st.public_url.as_deref(), &headers)
    );
    let mut offset = 0;
    let has_body = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v != "0")
        || headers.contains_key(header::TRANSFER_ENCODING);
    if has_body && is_octet_stream(&headers) {
        let _lock = UploadLock::acquire(&st, &id)?;
        offset = write_chunk(&st, &upload, req.into_body()).await?.offset;
    } else if length == 0 {
        finish(&st, &upload).await?;
    }
    let mut r = StatusCode::CREATED.into_response();
    r.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&location).map_err(ApiError::internal)?,
    );
    r.headers_mut()
        .insert("upload-offset", HeaderValue::from(offset));
    Ok(r)
}

async fn load(st: &IngestState, id: &str, org: &str) -> Result<Upload, ApiError> {
    match uploads::get(&st.db, id).await? {
        Some(u) if u.org == org => Ok(u),
        _ => Err(ApiError::not_found("upload")),
    }
}

async fn head(st: IngestState, id: &str, req: Request) -> Result<Response, ApiError> {
    check_tus_resumable(req.headers())?;
    let (claims, _) = authorize(&st, req).await?;
    let u = load(&st, id, &claims.org).await?;
    let mut r = StatusCode::OK.into_response();
    let h = r.headers_mut();
    h.insert("upload-offset", HeaderValue::from(u.offset_bytes));
    h.insert("upload-length", HeaderValue::from(u.length));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if !u.metadata.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&u.metadata) {
            h.insert("upload-metadata", v);
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
    load(&st, id, &claims.org).await?;
    let _lock = UploadLock::acquire(&st, id)?;
    // Re-read under the lock: another request may have moved the offset meanwhile.
    let u = load(&st, id, &claims.org).await?;
    if client_offset != u.offset_bytes as u64 {
        return Err(ApiError::conflict(
            "offset-mismatch",
            format!("Upload-Offset {client_offset} does not match the stored offset {}; send HEAD and resume from there", u.offset_bytes),
        )
        .with_header("upload-offset", u.offset_bytes.to_string()));
    }
    let remaining = (u.length - u.offset_bytes) as u64;
    if let Some(len) = header_u64(req.headers(), "content-length", "invalid-content-length")? {
        if len > remaining {
            // Read a small body to its end so the client can see the answer instead of a reset.
            if len <= DRAIN_LIMIT {
                let _ = axum::body::to_bytes(req.into_body(), DRAIN_LIMIT as usize).await;
            }
            return Err(exceeds(remaining));
        }
    }
    let written = write_chunk(&st, &u, req.into_body()).await?;
    if let Some(e) = written.error {
        return Err(e);
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut()
        .insert("upload-offset", HeaderValue::from(written.offset));
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
    error: Option<ApiError>,
}

/// Streams one request body into a new part and commits it. A body that runs past the upload's
/// length is refused whole; a body cut off by the client keeps what arrived, as tus expects.
async fn write_chunk(st: &IngestState, u: &Upload, body: Body) -> Result<Written, ApiError> {
    if u.state != uploads::UPLOADING {
        return Err(ApiError::conflict(
            "upload-complete",
            "this upload is already complete",
        ));
    }
    let remaining = (u.length - u.offset_bytes) as u64;
    let cut = Arc::new(Mutex::new(None::<String>));
    let cut2 = cut.clone();
    let mut seen = 0u64;
    let over = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let over2 = over.clone();
    let stream = body
        .into_data_stream()
        .map(move |chunk| -> std::io::Result<Bytes> {
            match chunk {
                Ok(b) => {
                    seen += b.len() as u64;
                    if seen > remaining {
                        over2.store(true, std::sync::atomic::Ordering::SeqCst);
                        return Err(std::io::Error::other("body exceeds Upload-Length"));
                    }
                    Ok(b)
                }
                Err(e) => {
                    *cut2.lock().expect("poisoned") = Some(e.to_string());
                    Ok(Bytes::new())
                }
            }
        });
    // Stop at the first transport error: what came before it is kept.
    let cut3 = cut.clone();
    let stream: ByteStream = Box::pin(stream.take_while(move |_| {
        let stop = cut3.lock().expect("poisoned").is_some();
        futures::future::ready(!stop)
    }));
    let number = u.part_list().len() as u32 + 1;
    let part = match st
        .store
        .put_part(&u.object_key, &u.multipart_id, number, stream)
        .await
    {
        Ok(p) => p,
        Err(_) if over.load(std::sync::atomic::Ordering::SeqCst) => return Err(exceeds(remaining)),
        Err(e) => return Err(e.into()),
    };
    let cut_error = cut.lock().expect("poisoned").take();
    let mut offset = u.offset_bytes as u64;
    if part.size > 0 {
        offset = uploads::commit_part(&st.db, u, part).await?;
        metrics::counter!("lectern_upload_bytes_total").increment(offset - u.offset_bytes as u64);
        let _ = videos::set_upload_progress(&st.db, &u.id, offset as f64 / u.length.max(1) as f64)
            .await;
    }
    if offset == u.length as u64 {
        let fresh = uploads::get(&st.db, &u.id)
            .await?
            .ok_or_else(|| ApiError::not_found("upload"))?;
        finish(st, &fresh).await?;
    }
    let error = cut_error.map(|e| {
        tracing::info!(upload = %u.id, offset, error = %e, "PATCH body cut off; kept what arrived");
        ApiError::bad_request("body-interrupted", format!("the request body was cut off ({e}); send HEAD and resume from Upload-Offset {offset}"))
    });
    Ok(Written { offset, error })
}

/// Assembles the object, marks the upload complete and queues the video. Idempotent.
async fn finish(st: &IngestState, u: &Upload) -> Result<(), ApiError> {
    if u.state == uploads::UPLOADING {
        st.store
            .complete_multipart(&u.object_key, &u.multipart_id, &u.part_list())
            .await?;
        uploads::mark_complete(&st.db, &u.id).await?;
    }
    let Some(v) = videos::get(&st.db, &u.id).await? else {
        return Ok(());
    };
    if v.state == videos::state::UPLOADING {
        // Enqueue first: a crash in between leaves the video `uploading` with a full upload,
        // which `recover` finishes again; the worker accepts it in either state.
        st.queue
            .enqueue(&u.id, v.priority)
            .await
            .map_err(ApiError::unavailable)?;
        videos::mark_queued(&st.db, &u.id).await?;
        metrics::counter!("lectern_uploads_completed_total").increment(1);
        tracing::info!(upload = %u.id, "upload complete; queued for transcoding");
    }
    Ok(())
}

async fn terminate(st: IngestState, id: &str, req: Request) -> Result<Response, ApiError> {
    check_tus_resumable(req.headers())?;
    let (claims, _) = authorize(&st, req).await?;
    load(&st, id, &claims.org).await?;
    let _lock = UploadLock::acquire(&st, id)?;
    let u = load(&st, id, &claims.org).await?;
    if u.state != uploads::UPLOADING {
        return Err(ApiError::conflict("upload-complete", "this upload is complete and its video is being processed; it can no longer be terminated"));
    }
    st.store
        .abort_multipart(&u.object_key, &u.multipart_id)
        .await?;
    videos::delete(&st.db, id).await?;
    uploads::delete(&st.db, id).await?;
    tracing::info!(upload = %id, "upload terminated");
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn download(st: IngestState, id: &str, req: Request) -> Result<Response, ApiError> {
    let (claims, req) = authorize(&st, req).await?;
    let u = load(&st, id, &claims.org).await?;
    if u.state != uploads::COMPLETE {
        return Err(ApiError::conflict(
            "upload-incomplete",
            "the upload is not complete yet; finish it, then download",
        ));
    }
    let range = request_range(req.headers())?;
    let got = st.store.get(&u.object_key, range).await?;
    let meta = parse_metadata(&u.metadata).unwrap_or_default();
    let ctype = meta
        .get("filetype")
        .filter(|t| t.contains('/') && HeaderValue::from_str(t).is_ok())
        .map(String::as_str)
        .unwrap_or("application/octet-stream");
    let mut r = object_response(got, range.is_some(), ctype, false)?;
    if let Some(name) = meta.get("filename") {
        let safe: String = name
            .chars()
            .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\' || *c == ' ')
            .collect();
        if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")) {
            r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
        }
    }
    Ok(r)
}
