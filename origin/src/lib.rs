//! The HLS origin: the only code that signs and checks playback URLs.
//!
//! URL layout, all under `/v/{video}/`:
//! - `master.m3u8?exp&kid&sig`: signed; resolved through the database to the published attempt;
//! - `{token}/{rendition}/index.m3u8?exp&kid&sig`: signed media playlists;
//! - `{token}/{rendition}/init.mp4` and `seg00001.m4s`: unsigned, immutable and unguessable
//!   (the token is 128 random bits per attempt), identical for every viewer so a CDN keeps one copy.

mod sign;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use lectern_core::db::Db;
use lectern_core::error::ApiError;
use lectern_core::storage::{object_response, request_range, ObjectStore};
use lectern_core::videos::{self, state};
use serde::Deserialize;

pub use sign::{SignedQuery, Signer};

/// What the origin routes need.
#[derive(Clone)]
pub struct OriginState {
    /// Database, to resolve a video to its published output.
    pub db: Db,
    /// Where renditions live.
    pub store: Arc<dyn ObjectStore>,
    /// Signs and checks playlist URLs.
    pub signer: Signer,
}

/// The `/v/` routes.
pub fn router(state: OriginState) -> Router {
    Router::new()
        .route("/v/{video}/master.m3u8", get(master))
        .route("/v/{video}/{token}/{rendition}/{file}", get(rendition_file))
        .with_state(state)
}

const PLAYLIST_TYPE: &str = "application/vnd.apple.mpegurl";

fn valid_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Loads a video that has published output, or 404.
async fn published(st: &OriginState, id: &str) -> Result<(videos::Video, String), ApiError> {
    let v = videos::get(&st.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("video"))?;
    match (&v.state[..], v.output_prefix.clone()) {
        (state::READY, Some(prefix)) => Ok((v, prefix)),
        _ => Err(ApiError::not_found("playable video")),
    }
}

async fn master(
    State(st): State<OriginState>,
    Path(video): Path<String>,
    Query(q): Query<SignedQuery>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !valid_id(&video) {
        return Err(ApiError::not_found("video"));
    }
    st.signer.verify(&video, &q)?;
    let (_, prefix) = published(&st, &video).await?;
    let raw = st.store.get_bytes(&format!("{prefix}master.m3u8")).await?;
    let token = prefix
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let subs = videos::captions(&st.db, &video).await?;
    let body = rewrite_master(&raw, &token, &q.to_query_string(), &subs)?;
    metrics::counter!("lectern_origin_requests_total", "kind" => "master").increment(1);
    Ok(playlist_response(body, &method, &headers))
}

/// Points every URI of the stored master at the attempt's folder and carries the signature, so
/// a plain HLS client can follow it with no header.
/// Caption tracks become one `SUBTITLES` group that every variant names.
fn rewrite_master(
    raw: &[u8],
    token: &str,
    query: &str,
    subs: &[videos::Caption],
) -> Result<Vec<u8>, ApiError> {
    let mut pl = m3u8_rs::parse_master_playlist_res(raw)
        .map_err(|_| ApiError::internal("stored master playlist does not parse"))?;
    let fix = |uri: &str| format!("{token}/{uri}?{query}");
    for v in &mut pl.variants {
        v.uri = fix(&v.uri);
        if !subs.is_empty() {
            v.subtitles = Some("subs".into());
        }
    }
    for m in &mut pl.alternatives {
        if let Some(u) = &m.uri {
            m.uri = Some(fix(u));
        }
    }
    for c in subs {
        pl.alternatives.push(m3u8_rs::AlternativeMedia {
            media_type: m3u8_rs::AlternativeMediaType::Subtitles,
            uri: Some(format!("{}/subs-{}/index.m3u8?{query}", c.token, c.lang)),
            group_id: "subs".into(),
            language: Some(c.lang.clone()),
            name: c.label.clone(),
            default: false,
            autoselect: true,
            ..Default::default()
        });
    }
    let mut out = Vec::new();
    pl.write_to(&mut out).map_err(ApiError::internal)?;
    Ok(out)
}

/// True when `If-None-Match` names `etag` (or `*`), so the answer is 304.
fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_string();
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == "*" || strip(t) == strip(etag))
}

fn not_modified_response(etag: &str, cache_control: &'static str) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = axum::http::StatusCode::NOT_MODIFIED;
    if let Ok(v) = HeaderValue::from_str(etag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    r
}

/// Playlists are signed per viewer, so shared caches must not serve one viewer's copy to
/// another; players may reuse theirs for a minute.
const PLAYLIST_CACHE: &str = "private, max-age=60";
/// Segments never change under their unguessable per-attempt paths.
const SEGMENT_CACHE: &str = "public, max-age=31536000, immutable";

fn playlist_response(body: Vec<u8>, method: &Method, headers: &HeaderMap) -> Response {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(&body);
    let etag = format!(
        "\"{}\"",
        digest[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    if not_modified(headers, &etag) {
        return not_modified_response(&etag, PLAYLIST_CACHE);
    }
    let len = body.len();
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(body)
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PLAYLIST_TYPE),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(PLAYLIST_CACHE),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    r
}

#[derive(Deserialize)]
struct FilePath {
    video: String,
    token: String,
    rendition: String,
    file: String,
}

async fn rendition_file(
    State(st): State<OriginState>,
    Path(p): Path<FilePath>,
    Query(q): Query<SignedQuery>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !valid_id(&p.video)
        || !valid_id(&p.token)
        || !valid_name(&p.rendition)
        || !valid_name(&p.file)
    {
        return Err(ApiError::not_found("object"));
    }
    let key = format!("videos/{}/{}/{}/{}", p.video, p.token, p.rendition, p.file);
    if p.file.ends_with(".m3u8") {
        st.signer.verify(&p.video, &q)?;
        let body = st.store.get_bytes(&key).await?;
        metrics::counter!("lectern_origin_requests_total", "kind" => "media_playlist").increment(1);
        return Ok(playlist_response(body.to_vec(), &method, &headers));
    }
    let ctype = if p.file.ends_with(".m4s") || p.file.ends_with(".mp4") {
        "video/mp4"
    } else if p.file.ends_with(".vtt") {
        "text/vtt; charset=utf-8"
    } else if p.file.ends_with(".jpg") {
        "image/jpeg"
    } else {
        return Err(ApiError::not_found("object"));
    };
    let range = request_range(&headers)?;
    let got = st.store.get(&key, range).await?;
    metrics::counter!("lectern_origin_requests_total", "kind" => "segment").increment(1);
    if not_modified(&headers, &got.meta.etag) {
        return Ok(not_modified_response(&got.meta.etag, SEGMENT_CACHE));
    }
    let mut r = object_response(got, range.is_some(), ctype, method == Method::HEAD)?;
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(SEGMENT_CACHE),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_rewrite_carries_token_and_signature() {
        let raw = b"#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aac\",NAME=\"audio\",DEFAULT=YES,AUTOSELECT=YES,URI=\"audio/index.m3u8\"\n#EXT-X-STREAM-INF:BANDWIDTH=1500000,AVERAGE-BANDWIDTH=1400000,CODECS=\"avc1.64001f,mp4a.40.2\",RESOLUTION=854x480,FRAME-RATE=30.000,AUDIO=\"aac\"\n480p/index.m3u8\n";
        let out = String::from_utf8(rewrite_master(raw, "abc", "exp=1&kid=k&sig=s", &[]).unwrap())
            .unwrap();
        assert!(
            out.contains("abc/480p/index.m3u8?exp=1&kid=k&sig=s"),
            "{out}"
        );
        assert!(
            out.contains("URI=\"abc/audio/index.m3u8?exp=1&kid=k&sig=s\""),
            "{out}"
        );
        assert!(out.contains("AVERAGE-BANDWIDTH=1400000"), "{out}");
    }

    #[test]
    fn conditional_requests() {
        let mut h = HeaderMap::new();
        assert!(!not_modified(&h, "\"a\""));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", W/\"a\""),
        );
        assert!(not_modified(&h, "\"a\""));
        assert!(!not_modified(&h, "\"b\""));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(not_modified(&h, "\"b\""));
    }

    #[test]
    fn path_checks() {
        assert!(valid_id("0123456789abcdef0123456789abcdef"));
        assert!(!valid_id("../../../../etc/passwd0123456789a"));
        assert!(!valid_name(".."));
        assert!(valid_name("seg00001.m4s"));
    }
}
