//! The HLS origin: the only code that signs and checks playback URLs.
//!
//! URL layout, all under `/v/{video}/`:
//! - `master.m3u8?exp&kid&vw&sig`: signed; resolved through the database to the published
//!   attempt (or, while the video is still encoding, to the running attempt once it is
//!   playable);
//! - `{token}/{rendition}/index.m3u8?exp&kid&vw&sig`: signed media playlists (`EVENT` while
//!   encoding, `VOD` once ready, at the same URI);
//! - `{token}/{rendition}/init.mp4` and `seg00001.m4s`: unsigned, immutable and unguessable
//!   (the token is 128 random bits per attempt), identical for every viewer so a CDN keeps one
//!   copy.
//!
//! Immutable objects (VOD playlists, init and media segments up to `max_object` bytes) are
//! served from a bounded in-memory cache; bigger objects and ranged misses stream from the
//! store without being buffered.

pub mod cache;
mod sign;

use lectern_core::error::Code;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures::TryStreamExt;
use lectern_core::db::Db;
use lectern_core::error::ApiError;
use lectern_core::keys::{self, LIVE_MASTER_PLAYLIST, MASTER_PLAYLIST};
use lectern_core::object_http::{object_response, request_range};
use lectern_core::storage::{ByteRange, ObjectMeta, ObjectStore, StoreError};
use lectern_core::videos::{self, VideoState};

pub use cache::ObjectCache;
pub use sign::{QueryParams, SignedQuery, Signer};

/// What the origin routes need.
#[derive(Clone)]
pub struct OriginState {
    /// Database, to resolve a video to its published output.
    pub db: Db,
    /// Where renditions live.
    pub store: Arc<dyn ObjectStore>,
    /// Signs and checks playlist URLs.
    pub signer: Signer,
    /// Hot immutable objects.
    pub cache: Arc<ObjectCache>,
}

/// The `/v/` routes.
pub fn router(state: OriginState) -> Router {
    Router::new()
        .route(Route::Master.template(), get(master))
        .route(Route::File.template(), get(rendition_file))
        // Merged routers keep their own 405 handler: without this, POST on a playlist gets an
        // empty 405 instead of the contract's JSON.
        .method_not_allowed_fallback(lectern_core::error::method_not_allowed_fallback)
        .with_state(state)
}

/// Which of the origin's two routes a direct request matched (for per-route metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/v/{video}/master.m3u8`.
    Master,
    /// `/v/{video}/{token}/{rendition}/{file}`.
    File,
}

impl Route {
    /// The route template, as the router names it.
    pub fn template(self) -> &'static str {
        match self {
            Route::Master => "/v/{video}/master.m3u8",
            Route::File => "/v/{video}/{token}/{rendition}/{file}",
        }
    }
}

/// Answers a GET or HEAD of an origin path without the router: the player's hot path, where
/// routing and middleware cost more than the work. `None` when the request is not one it
/// answers the same as the router would (another method, another path, a percent-escape to
/// decode, an empty segment): the caller passes those to [`router`].
pub async fn respond_direct(
    st: &OriginState,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Option<(Route, Response)> {
    let (route, parts) = direct_route(method, path)?;
    let r = match route {
        Route::Master => finish(master_inner(st, parts[0], query, method, headers).await),
        Route::File => finish(
            file_inner(
                st,
                [parts[0], parts[1], parts[2], parts[3]],
                query,
                method,
                headers,
            )
            .await,
        ),
    };
    Some((route, r))
}

/// The route and its path segments, when [`respond_direct`] may answer `path`.
fn direct_route<'p>(method: &Method, path: &'p str) -> Option<(Route, [&'p str; 4])> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    let rest = path.strip_prefix("/v/")?;
    if rest.contains('%') {
        return None;
    }
    let mut parts = [""; 4];
    let mut n = 0;
    for seg in rest.split('/') {
        if seg.is_empty() || n == 4 {
            return None;
        }
        parts[n] = seg;
        n += 1;
    }
    match n {
        2 if parts[1] == "master.m3u8" => Some((Route::Master, parts)),
        4 => Some((Route::File, parts)),
        _ => None,
    }
}

const PLAYLIST_TYPE: &str = "application/vnd.apple.mpegurl";
/// Segments never change under their unguessable per-attempt paths.
const SEGMENT_CACHE: &str = "public, max-age=31536000, immutable";
/// A playlist that still grows: caches must revalidate (cheap, with the ETag) every time.
const GROWING_CACHE: &str = "no-cache";
/// Signed VOD playlists may be cached (keyed by their full URL, signature included) for at
/// most this long, and never past the signature's expiry.
const PLAYLIST_MAX_AGE_S: i64 = 60;

fn valid_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A rendition folder (`720p`, `audio`, `subs-en`, `poster`): no dots, so no file name or
/// traversal can pose as one.
fn valid_folder(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
}

fn valid_file(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Error responses must never be kept by a CDN: a 403 for one viewer is not another's answer.
fn finish(r: Result<Response, ApiError>) -> Response {
    match r {
        Ok(r) => r,
        Err(e) => {
            let mut r = e.into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
    }
}

fn signed<'q>(
    st: &OriginState,
    video: &str,
    raw: Option<&'q str>,
) -> Result<(QueryParams<'q>, i64), ApiError> {
    let q = QueryParams::parse(raw).ok_or_else(|| {
        let mut e = ApiError::forbidden(
            "this playlist URL repeats a signature parameter; ask the playback endpoint for a fresh URL",
        );
        e.code = Code::InvalidSignature;
        e
    })?;
    let exp = st.signer.verify(video, &q)?;
    Ok((q, exp))
}

/// `public, max-age=N` for a signed VOD playlist: a shared cache may keep it for a minute but
/// must not serve it after the signature expires.
fn vod_playlist_cache(exp: i64) -> HeaderValue {
    static VALUES: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    let values = VALUES.get_or_init(|| {
        (0..=PLAYLIST_MAX_AGE_S)
            .map(|n| HeaderValue::from_str(&format!("public, max-age={n}")).expect("ascii"))
            .collect()
    });
    let left = (exp - chrono::Utc::now().timestamp()).clamp(0, PLAYLIST_MAX_AGE_S);
    values[left as usize].clone()
}

/// A path segment that does not decode (`%FF`) is the client's mistake: 400 JSON.
fn bad_path(e: PathRejection) -> ApiError {
    ApiError::new(
        Code::InvalidPath,
        format!("{}; check the URL", e.body_text()),
    )
}

async fn master(
    State(st): State<OriginState>,
    video: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let Path(video) = match video {
        Ok(v) => v,
        Err(e) => return finish(Err(bad_path(e))),
    };
    finish(master_inner(&st, &video, raw.as_deref(), &method, &headers).await)
}

async fn master_inner(
    st: &OriginState,
    video: &str,
    raw: Option<&str>,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    if !valid_id(video) {
        return Err(ApiError::not_found("video"));
    }
    let (q, exp) = signed(st, video, raw)?;
    let v = videos::get(&st.db, video)
        .await?
        .ok_or_else(|| ApiError::not_found("video"))?;
    let prefix = v
        .playable_prefix()
        .ok_or_else(|| ApiError::not_found("playable video"))?;
    let growing = v.state != VideoState::Ready;
    let file = if growing {
        LIVE_MASTER_PLAYLIST
    } else {
        MASTER_PLAYLIST
    };
    // Both master files are written once, so they are cacheable whatever the state.
    let raw_master = load(st, &format!("{prefix}{file}"), true).await?.0;
    let token = prefix
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    let subs = videos::captions::list(&st.db, video).await?;
    let body = rewrite_master(&raw_master.body, token, &q.to_query_string(), &subs)?;
    count(Counted::Master);
    let cc = if growing {
        HeaderValue::from_static(GROWING_CACHE)
    } else {
        vod_playlist_cache(exp)
    };
    let etag = content_etag(&body);
    Ok(bytes_response(
        &cache::Entry::new(body.into(), etag, None),
        None,
        PLAYLIST_TYPE,
        method,
        headers,
        cc,
    ))
}

/// Points every URI of the stored master at the attempt's folder and carries the signature, so
/// a plain HLS client can follow it with no header.
fn rewrite_master(
    raw: &[u8],
    token: &str,
    query: &str,
    subs: &[videos::Caption],
) -> Result<Vec<u8>, ApiError> {
    let subs: Vec<lectern_wire::playlist::Subtitles<'_>> = subs
        .iter()
        .map(|c| lectern_wire::playlist::Subtitles {
            token: &c.token,
            lang: &c.lang,
            label: &c.label,
        })
        .collect();
    lectern_wire::playlist::rewrite_master(raw, token, query, &subs).map_err(ApiError::internal)
}

/// A quoted validator from the bytes themselves, the same on every origin node.
fn content_etag(body: &[u8]) -> HeaderValue {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(body);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex is a valid header")
}

fn http_date(ms: i64) -> Option<HeaderValue> {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    HeaderValue::from_str(&httpdate::fmt_http_date(t)).ok()
}

/// True when `If-None-Match` names `etag` (or `*`), or, without it, `If-Modified-Since` is not
/// older than `last_modified`: the answer is then 304.
fn not_modified(
    headers: &HeaderMap,
    etag: &HeaderValue,
    last_modified: Option<&HeaderValue>,
) -> bool {
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_string();
    let etag = etag.to_str().unwrap_or_default();
    let mut inm = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .peekable();
    if inm.peek().is_some() {
        return inm
            .flat_map(|v| v.split(','))
            .any(|t| t.trim() == "*" || strip(t) == strip(etag));
    }
    let Some(since) = headers.get(header::IF_MODIFIED_SINCE) else {
        return false;
    };
    let parse = |v: &HeaderValue| httpdate::parse_http_date(v.to_str().ok()?).ok();
    match (parse(since), last_modified.and_then(parse)) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// Serves an object held in memory: 200, 206 for a satisfiable single range, 304 for a
/// matching validator, and headers alone for HEAD.
fn bytes_response(
    e: &cache::Entry,
    range: Option<ByteRange>,
    content_type: &'static str,
    method: &Method,
    headers: &HeaderMap,
    cache_control: HeaderValue,
) -> Response {
    let mut r = Response::new(Body::empty());
    let h = r.headers_mut();
    h.insert(header::ETAG, e.etag.clone());
    h.insert(header::CACHE_CONTROL, cache_control);
    if let Some(lm) = &e.last_modified {
        h.insert(header::LAST_MODIFIED, lm.clone());
    }
    if not_modified(headers, &e.etag, e.last_modified.as_ref()) {
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        return r;
    }
    let size = e.body.len() as u64;
    let span = match range.map(|r| r.resolve(size)) {
        Some(Ok(span)) => {
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            let v = format!("bytes {}-{}/{size}", span.start, span.end - 1);
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&v).expect("ascii"),
            );
            span
        }
        Some(Err(_)) => return finish(Err(unsatisfiable(size))),
        None => 0..size,
    };
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(span.end - span.start),
    );
    if method != Method::HEAD {
        *r.body_mut() = Body::from(e.body.slice(span.start as usize..span.end as usize));
    }
    r
}

/// A whole object from the cache, or from the store (then cached when `cacheable` says so and
/// it is small enough). The flag says whether the cache answered.
async fn load(
    st: &OriginState,
    key: &str,
    cacheable: bool,
) -> Result<(cache::Entry, bool), ApiError> {
    if let Some(e) = st.cache.get(key) {
        count(Counted::CacheHit);
        return Ok((e, true));
    }
    count(Counted::CacheMiss);
    let got = st.store.get(key, None).await?;
    let meta: ObjectMeta = got.meta.clone();
    let chunks: Vec<Bytes> = got
        .stream
        .try_collect()
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let body: Bytes = if chunks.len() == 1 {
        chunks.into_iter().next().expect("one chunk")
    } else {
        chunks.concat().into()
    };
    let etag = if key.ends_with(".m3u8") {
        content_etag(&body)
    } else {
        HeaderValue::from_str(&meta.etag).map_err(ApiError::internal)?
    };
    let e = cache::Entry::new(body, etag, http_date(meta.modified_ms));
    if cacheable {
        st.cache.insert(key, e.clone());
    }
    Ok((e, false))
}

async fn rendition_file(
    State(st): State<OriginState>,
    path: Result<Path<(String, String, String, String)>, PathRejection>,
    RawQuery(raw): RawQuery,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let Path((video, token, rendition, file)) = match path {
        Ok(p) => p,
        Err(e) => return finish(Err(bad_path(e))),
    };
    finish(
        file_inner(
            &st,
            [&video, &token, &rendition, &file],
            raw.as_deref(),
            &method,
            &headers,
        )
        .await,
    )
}

async fn file_inner(
    st: &OriginState,
    [video, token, rendition, file]: [&str; 4],
    raw: Option<&str>,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    if !valid_id(video) || !valid_id(token) || !valid_folder(rendition) || !valid_file(file) {
        return Err(ApiError::not_found("object"));
    }
    let key = keys::track_file(video, token, rendition, file);
    if file.ends_with(".m3u8") {
        let (_, exp) = signed(st, video, raw)?;
        let (e, hit) = load(st, &key, false).await?;
        let growing = !hit && !has_endlist(&e.body);
        if !hit && !growing {
            // A VOD playlist never changes again.
            st.cache.insert(&key, e.clone());
        }
        count(Counted::MediaPlaylist);
        let cc = if growing {
            HeaderValue::from_static(GROWING_CACHE)
        } else {
            vod_playlist_cache(exp)
        };
        return Ok(bytes_response(&e, None, PLAYLIST_TYPE, method, headers, cc));
    }
    let ctype = if file.ends_with(".m4s") || file.ends_with(".mp4") {
        "video/mp4"
    } else if file.ends_with(".vtt") {
        "text/vtt; charset=utf-8"
    } else if file.ends_with(".jpg") {
        "image/jpeg"
    } else {
        return Err(ApiError::not_found("object"));
    };
    count(Counted::Segment);
    let range = request_range(headers)?;
    let immutable = HeaderValue::from_static(SEGMENT_CACHE);
    if let Some(e) = st.cache.get(&key) {
        count(Counted::CacheHit);
        return Ok(bytes_response(&e, range, ctype, method, headers, immutable));
    }
    // A ranged miss passes the range through to the store (S3 reads only those bytes).
    if range.is_none() && method == Method::GET && st.cache.is_enabled() {
        if let Ok(meta) = st.store.head(&key).await {
            if st.cache.admits(meta.size) {
                let (e, _) = load(st, &key, true).await?;
                return Ok(bytes_response(&e, None, ctype, method, headers, immutable));
            }
        }
    }
    count(Counted::CacheMiss);
    let got = match st.store.get(&key, range).await {
        Err(StoreError::InvalidRange) => {
            let size = st.store.head(&key).await?.size;
            return Err(unsatisfiable(size));
        }
        other => other?,
    };
    let etag = HeaderValue::from_str(&got.meta.etag).map_err(ApiError::internal)?;
    let lm = http_date(got.meta.modified_ms);
    if not_modified(headers, &etag, lm.as_ref()) {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r.headers_mut().insert(header::ETAG, etag);
        r.headers_mut().insert(header::CACHE_CONTROL, immutable);
        if let Some(lm) = lm {
            r.headers_mut().insert(header::LAST_MODIFIED, lm);
        }
        return Ok(r);
    }
    let mut r = object_response(got, range.is_some(), ctype, method == Method::HEAD)?;
    r.headers_mut().insert(header::CACHE_CONTROL, immutable);
    Ok(r)
}

/// 416 naming the object's size, as RFC 9110 asks.
fn unsatisfiable(size: u64) -> ApiError {
    ApiError::new(
        Code::RangeNotSatisfiable,
        format!("the object has {size} bytes; ask for a range inside it"),
    )
    .with_header("content-range", format!("bytes */{size}"))
}

/// What the origin counts, one metric series each.
#[derive(Clone, Copy)]
enum Counted {
    Master,
    MediaPlaylist,
    Segment,
    CacheHit,
    CacheMiss,
}

/// Increments a counter through a handle registered once: the hot path skips the registry
/// lookup (hashing name and labels) that `counter!` does on every call.
fn count(what: Counted) {
    static HANDLES: std::sync::OnceLock<[metrics::Counter; 5]> = std::sync::OnceLock::new();
    let h = HANDLES.get_or_init(|| {
        [
            metrics::counter!("lectern_origin_requests_total", "kind" => "master"),
            metrics::counter!("lectern_origin_requests_total", "kind" => "media_playlist"),
            metrics::counter!("lectern_origin_requests_total", "kind" => "segment"),
            metrics::counter!("lectern_cache_requests_total", "cache" => "origin", "result" => "hit"),
            metrics::counter!("lectern_cache_requests_total", "cache" => "origin", "result" => "miss"),
        ]
    });
    h[what as usize].increment(1);
}

/// Whether a media playlist is complete (`#EXT-X-ENDLIST`).
fn has_endlist(body: &[u8]) -> bool {
    body.windows(14).rev().any(|w| w == b"#EXT-X-ENDLIST")
}

/// The playback answer for a playable video: a signed master URL, valid for the video's
/// duration plus `grace_s`, shared by the video API and the LMS's lesson playback.
pub fn playback_json(
    signer: &Signer,
    public_url: Option<&str>,
    headers: &HeaderMap,
    video: &lectern_core::videos::Video,
    grace_s: i64,
    viewer: &lectern_core::auth::Claims,
) -> Result<serde_json::Value, ApiError> {
    if video.playable_prefix().is_none() {
        let when = if video.state == VideoState::Processing {
            "it can be watched as soon as its first segments are encoded (a few seconds)"
        } else {
            "it can be watched once it is processing or ready"
        };
        return Err(ApiError::new(
            Code::NotReady,
            format!("the video is {}; {when}", video.state),
        ));
    }
    let duration = video.duration_s.unwrap_or(0.0).ceil() as i64;
    let exp = chrono::Utc::now().timestamp() + duration + grace_s;
    let base = lectern_core::base_url(public_url, headers);
    let tag = signer.viewer_tag(&viewer.org, &viewer.sub);
    // The poster sits beside the segments: unguessable, immutable, no signature needed.
    let poster_url = video
        .poster_key
        .as_deref()
        .and_then(lectern_core::keys::under_videos)
        .map(|rest| format!("{base}/v/{rest}"));
    Ok(serde_json::json!({
        "url": signer.master_url(&base, &video.id, &tag, exp),
        "expires_at": lectern_core::rfc3339(exp * 1000),
        "state": video.state,
        "poster_url": poster_url,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_rewrite_carries_token_and_signature() {
        let raw = b"#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aac\",NAME=\"audio\",DEFAULT=YES,AUTOSELECT=YES,URI=\"audio/index.m3u8\"\n#EXT-X-STREAM-INF:BANDWIDTH=1500000,AVERAGE-BANDWIDTH=1400000,CODECS=\"avc1.64001f,mp4a.40.2\",RESOLUTION=854x480,FRAME-RATE=30.000,AUDIO=\"aac\"\n480p/index.m3u8\n";
        let out =
            String::from_utf8(rewrite_master(raw, "abc", "exp=1&kid=k&vw=v&sig=s", &[]).unwrap())
                .unwrap();
        assert!(
            out.contains("abc/480p/index.m3u8?exp=1&kid=k&vw=v&sig=s"),
            "{out}"
        );
        assert!(
            out.contains("URI=\"abc/audio/index.m3u8?exp=1&kid=k&vw=v&sig=s\""),
            "{out}"
        );
        assert!(out.contains("AVERAGE-BANDWIDTH=1400000"), "{out}");
    }

    #[test]
    fn conditional_requests() {
        let etag = HeaderValue::from_static("\"a\"");
        let other = HeaderValue::from_static("\"b\"");
        let mut h = HeaderMap::new();
        assert!(!not_modified(&h, &etag, None));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", W/\"a\""),
        );
        assert!(not_modified(&h, &etag, None));
        assert!(!not_modified(&h, &other, None));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(not_modified(&h, &other, None));
        let lm = http_date(1_700_000_000_000);
        let mut h = HeaderMap::new();
        h.insert(header::IF_MODIFIED_SINCE, lm.clone().unwrap());
        assert!(not_modified(&h, &etag, lm.as_ref()));
        assert!(!not_modified(
            &h,
            &etag,
            http_date(1_700_000_100_000).as_ref()
        ));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"z\""));
        assert!(
            !not_modified(&h, &etag, lm.as_ref()),
            "If-None-Match wins over If-Modified-Since"
        );
    }

    #[test]
    fn direct_routes_match_the_router_or_decline() {
        let get = Method::GET;
        assert_eq!(
            direct_route(&get, "/v/abc/master.m3u8").map(|r| r.0),
            Some(Route::Master)
        );
        assert_eq!(
            direct_route(&Method::HEAD, "/v/a/b/c/seg1.m4s"),
            Some((Route::File, ["a", "b", "c", "seg1.m4s"]))
        );
        for declined in [
            "/v/abc/other.m3u8",
            "/v/a/b/c",
            "/v/a/b/c/d/e",
            "/v//master.m3u8",
            "/v/a/b/c/",
            "/v/a/b/c/seg%31.m4s",
            "/api/v1/videos",
        ] {
            assert_eq!(direct_route(&get, declined), None, "{declined}");
        }
        assert_eq!(direct_route(&Method::POST, "/v/abc/master.m3u8"), None);
    }

    #[test]
    fn path_checks() {
        assert!(valid_id("0123456789abcdef0123456789abcdef"));
        assert!(!valid_id("../../../../etc/passwd0123456789a"));
        assert!(!valid_file(".."));
        assert!(valid_file("seg00001.m4s"));
        assert!(valid_folder("subs-en") && valid_folder("720p"));
        assert!(
            !valid_folder("master.m3u8"),
            "a file cannot pose as a folder"
        );
        assert!(has_endlist(b"#EXTINF:6,\nseg1.m4s\n#EXT-X-ENDLIST\n"));
        assert!(!has_endlist(b"#EXT-X-PLAYLIST-TYPE:EVENT\n"));
    }
}
