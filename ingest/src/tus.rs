//! The tus HTTP surface: the router, the protocol headers, and the handlers for creation,
//! HEAD, PATCH, termination and download. Bodies go to `body`, finished uploads to `handoff`.

use super::*;
use lectern_core::error::Code;

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
pub(crate) fn effective_method(req: &Request) -> Method {
    if req.method() != Method::POST {
        return req.method().clone();
    }
    req.headers()
        .get("x-http-method-override")
        .and_then(|v| Method::from_bytes(v.as_bytes()).ok())
        .unwrap_or(Method::POST)
}

pub(crate) async fn collection(State(st): State<IngestState>, req: Request) -> Response {
    let res = match effective_method(&req) {
        Method::OPTIONS => Ok(options()),
        Method::POST => create(st, req).await,
        _ => Err(method_not_allowed()),
    };
    res.unwrap_or_else(IntoResponse::into_response)
}

pub(crate) async fn item(
    State(st): State<IngestState>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
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

pub(crate) fn method_not_allowed() -> ApiError {
    ApiError::new(
        Code::MethodNotAllowed,
        "tus supports OPTIONS, POST, HEAD, PATCH, DELETE and GET here",
    )
}

pub(crate) fn options() -> Response {
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

pub(crate) fn check_tus_resumable(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get("tus-resumable").and_then(|v| v.to_str().ok()) {
        Some(TUS_VERSION) => Ok(()),
        _ => Err(ApiError::new(
            Code::UnsupportedTusVersion,
            "send `Tus-Resumable: 1.0.0`; this server speaks tus 1.0.0",
        )
        .with_header("tus-version", TUS_VERSION)),
    }
}

pub(crate) async fn authorize(
    st: &IngestState,
    req: Request,
) -> Result<(Claims, Request), ApiError> {
    let (mut parts, body) = req.into_parts();
    let Auth(claims) =
        <Auth as axum::extract::FromRequestParts<IngestState>>::from_request_parts(&mut parts, st)
            .await?;
    claims.require_manager()?;
    Ok((claims, Request::from_parts(parts, body)))
}

pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub(crate) fn header_u64(
    headers: &HeaderMap,
    name: &str,
    code: Code,
) -> Result<Option<u64>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(lectern_wire::tus::number)
            .map(Some)
            .ok_or_else(|| ApiError::new(code, format!("`{name}` must be a non-negative integer"))),
    }
}

pub(crate) fn is_octet_stream(headers: &HeaderMap) -> bool {
    header_str(headers, header::CONTENT_TYPE.as_str()).is_some_and(|v| {
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case(OCTET_STREAM)
    })
}

pub(crate) fn too_large() -> ApiError {
    ApiError::new(
        Code::UploadTooLarge,
        format!("uploads are limited to {MAX_SIZE} bytes (2 GiB); trim or re-encode the recording"),
    )
}

pub(crate) fn gone() -> ApiError {
    ApiError::new(
        Code::UploadGone,
        "this upload was terminated or expired; start a new upload",
    )
}

pub(crate) fn http_date(ms: i64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

pub(crate) async fn create(st: IngestState, req: Request) -> Result<Response, ApiError> {
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
            return Err(ApiError::new(
                Code::InvalidMetadata,
                "filename must be at most 255 characters without control characters",
            ));
        }
    }
    if let Some(l) = meta.get("lesson").filter(|l| !l.is_empty()) {
        if !lectern_core::text::is_id(l) {
            return Err(ApiError::new(
                Code::UnknownLesson,
                "the `lesson` metadata is not a lesson id",
            ));
        }
    }
    let mut prio = match meta.get("priority").map(String::as_str) {
        None | Some("") => priority::NORMAL,
        Some("bulk") => priority::BULK,
        Some(other) => {
            return Err(ApiError::new(
                Code::InvalidMetadata,
                format!("unknown priority '{other}'; the only value accepted is `bulk`"),
            ))
        }
    };
    if let Some(lesson) = meta.get("lesson").filter(|l| !l.is_empty()) {
        // Checked before a byte is stored; replacing a published lesson's video jumps the queue.
        match lectern_core::lesson_links::has_ready_video(&st.db, &claims.org, lesson).await? {
            None => {
                return Err(ApiError::new(
                    Code::UnknownLesson,
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
                    return Err(ApiError::new(
                        Code::InvalidConcat,
                        format!("{pid} is not a partial upload of yours"),
                    ))
                }
            };
            if p.state != uploads::UploadState::Complete {
                return Err(ApiError::new(Code::PartialIncomplete,
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
            header_u64(&headers, "upload-length", Code::InvalidUploadLength)?,
            header_str(&headers, "upload-defer-length"),
        ) {
            (Some(len), None) if len > MAX_SIZE => return Err(too_large()),
            (Some(len), None) => len as i64,
            (None, Some("1")) => uploads::DEFERRED,
            (None, Some(_)) => {
                return Err(ApiError::new(
                    Code::InvalidDeferLength,
                    "Upload-Defer-Length must be 1",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(ApiError::new(
                    Code::InvalidUploadLength,
                    "send either Upload-Length or Upload-Defer-Length, not both",
                ))
            }
            (None, None) => {
                return Err(ApiError::new(
                    Code::MissingUploadLength,
                    "send `Upload-Length` with the file size in bytes, or `Upload-Defer-Length: 1`",
                ))
            }
        }
    };

    st.check_quotas(&claims.org, length.max(0) as u64, concat != "partial")
        .await?;

    let id = lectern_core::new_id();
    let object_key = lectern_core::keys::source(&id);
    let multipart_id = st.engines.native().create(&object_key).await?;
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
            let _ = uploads::delete(&st.db.pool, &id).await;
            let _ = st.engines.native().discard(&upload).await;
            return Err(e.into());
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
        let has_body = header_u64(&headers, "content-length", Code::InvalidContentLength)?
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
                        let buffer = reserved_bytes(&permit);
                        let w = write_request(&st, upload, &headers, req.into_body(), buffer).await;
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

pub(crate) async fn load(st: &IngestState, id: &str, org: &str) -> Result<Upload, ApiError> {
    match uploads::get(&st.db, id).await? {
        Some(u) if u.org == org && u.state == uploads::UploadState::Terminated => Err(gone()),
        Some(u) if u.org == org => Ok(u),
        _ => Err(ApiError::not_found("upload")),
    }
}

pub(crate) fn concat_header(u: &Upload, base: &str) -> Option<String> {
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

pub(crate) async fn head(st: IngestState, id: &str, req: Request) -> Result<Response, ApiError> {
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

pub(crate) async fn patch(st: IngestState, id: &str, req: Request) -> Result<Response, ApiError> {
    check_tus_resumable(req.headers())?;
    let (claims, req) = authorize(&st, req).await?;
    if !is_octet_stream(req.headers()) {
        return Err(ApiError::new(
            Code::InvalidContentType,
            "PATCH bodies must be sent as `Content-Type: application/offset+octet-stream`",
        ));
    }
    let client_offset = header_u64(req.headers(), "upload-offset", Code::InvalidUploadOffset)?
        .ok_or_else(|| {
            ApiError::new(
                Code::MissingUploadOffset,
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
pub(crate) async fn patch_locked(
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
        return Err(refuse(req, ApiError::new(Code::OffsetMismatch,
            format!(
                "Upload-Offset {client_offset} does not match the stored offset {}; send HEAD and resume from there",
                u.offset_bytes
            ),
        )
        .with_header("upload-offset", u.offset_bytes.to_string())).await);
    }
    if let Some(len) = header_u64(req.headers(), "upload-length", Code::InvalidUploadLength)? {
        match u.known_length() {
            None if len > MAX_SIZE => return Err(too_large()),
            None if len < u.offset_bytes as u64 => {
                return Err(ApiError::new(
                    Code::InvalidUploadLength,
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
                return Err(ApiError::new(
                    Code::InvalidUploadLength,
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
    let content_length = header_u64(req.headers(), "content-length", Code::InvalidContentLength)?;
    if let Some(len) = content_length {
        if len > remaining {
            return Err(refuse(req, exceeds(remaining)).await);
        }
    }
    let headers = req.headers().clone();
    let permit = match st.reserve(&u, &headers).await {
        Ok(p) => p,
        Err(e) => return Err(refuse(req, e).await),
    };
    let buffer = reserved_bytes(&permit);
    let written = write_request(&st, u, &headers, req.into_body(), buffer).await?;
    drop(permit);
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

pub(crate) fn exceeds(remaining: u64) -> ApiError {
    ApiError::new(
        Code::ExceedsUploadLength,
        format!("the body runs past Upload-Length; only {remaining} more bytes fit in this upload"),
    )
}

pub(crate) struct Written {
    pub(crate) offset: u64,
    pub(crate) expires: Option<i64>,
    pub(crate) error: Option<ApiError>,
}

/// Runs `work` (a write to the upload) in a task of its own that holds the upload's lock, so
/// a request future that is dropped (client gone, server shutting down) cannot leave a write
/// half-done while another request takes the lock: the task ends when the body ends or fails,
/// keeps what arrived, and only then releases the lock, before the answer goes out.
pub(crate) async fn under_lock<T: Send + 'static>(
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

pub(crate) async fn terminate(
    st: IngestState,
    id: &str,
    req: Request,
) -> Result<Response, ApiError> {
    check_tus_resumable(req.headers())?;
    let (claims, _) = authorize(&st, req).await?;
    load(&st, id, &claims.org).await?;
    let _guard = st.locks.acquire(id).await?;
    let u = load(&st, id, &claims.org).await?;
    if u.state == uploads::UploadState::Complete && u.is_video() {
        return Err(ApiError::new(Code::UploadComplete,
            "this upload is complete and its video is being processed; it can no longer be terminated",
        ));
    }
    if u.state == uploads::UploadState::Uploading {
        st.engines.of(&u).discard(&u).await?;
    } else {
        st.store.delete(&u.object_key).await?;
    }
    uploads::terminate(&st.db, &u).await?;
    tracing::info!(upload = %id, "upload terminated");
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn download(
    st: IngestState,
    id: &str,
    req: Request,
) -> Result<Response, ApiError> {
    let (claims, req) = authorize(&st, req).await?;
    let u = load(&st, id, &claims.org).await?;
    if u.state != uploads::UploadState::Complete {
        return Err(ApiError::new(
            Code::UploadIncomplete,
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
