//! Cross-cutting HTTP layers: request ids, RED metrics per route, rate limits, and the gauges
//! refreshed in the background (jobs by state, queue age, DB pool).

use lectern_core::error::Code;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use lectern_core::auth::Keys;
use lectern_core::db::{Db, DbError};
use lectern_core::error::ApiError;
use lectern_core::videos::{state, VideoState};

/// The header carrying a request's id, accepted from the client or generated.
pub const REQUEST_ID: &str = "x-request-id";

/// Gives every request an id (the client's `X-Request-Id` when it sends a sane one), puts it
/// in the tracing span and echoes it on the response.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(lectern_core::new_id);
    let value = HeaderValue::from_str(&id).expect("checked ASCII");
    req.headers_mut().insert(REQUEST_ID, value.clone());
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(REQUEST_ID, value);
    resp
}

/// Turns any error the framework answers in plain text (a `Path` or `Query` it cannot parse, a
/// body over a limit) into the contract's JSON `{code, message}`; Lectern's own errors already
/// are JSON and pass untouched.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .unwrap_or_default();
    let (code, advice) = match status {
        StatusCode::BAD_REQUEST => (Code::BadRequest, "check the path and query parameters"),
        StatusCode::NOT_FOUND => (Code::NotFound, "check the URL"),
        StatusCode::METHOD_NOT_ALLOWED => (Code::MethodNotAllowed, "use a supported method"),
        StatusCode::PAYLOAD_TOO_LARGE => (Code::TooLarge, "send a smaller body"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            Code::UnsupportedMediaType,
            "send the documented Content-Type",
        ),
        StatusCode::UNPROCESSABLE_ENTITY => (Code::InvalidBody, "fix the request body"),
        s if s.is_server_error() => (Code::Internal, "retry later"),
        _ => (Code::BadRequest, "check the request"),
    };
    let message = match text.trim() {
        "" => format!("{}; {advice}", status.canonical_reason().unwrap_or("error")),
        t => format!("{t}; {advice}"),
    };
    let mut e = ApiError::new(code, message)
        .with_status(status)
        .into_response();
    for (k, v) in parts.headers.iter() {
        if k != axum::http::header::CONTENT_TYPE && k != axum::http::header::CONTENT_LENGTH {
            e.headers_mut().append(k.clone(), v.clone());
        }
    }
    e
}

/// Longest URI answered normally (path and query); hyper itself refuses past 64 KiB.
const MAX_URI: usize = 8 * 1024;
/// Largest header block answered normally, bytes.
const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Refuses, as JSON and before any routing or query, a request whose URI holds an encoded
/// control character (`%00` reaches PostgreSQL as a NUL it refuses in text, a 500), whose URI is
/// over 8 KiB, or whose headers are over 32 KiB.
pub fn reject_malformed<B>(req: &axum::http::Request<B>) -> Option<Response> {
    let uri = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("");
    if uri.len() > MAX_URI {
        return Some(
            ApiError::new(
                Code::UriTooLong,
                format!(
                    "the URL is {} bytes; at most {MAX_URI} are accepted",
                    uri.len()
                ),
            )
            .into_response(),
        );
    }
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Some(
            ApiError::new(Code::HeadersTooLarge,
                format!("the request headers are {header_bytes} bytes; at most {MAX_HEADER_BYTES} are accepted"),
            )
            .into_response(),
        );
    }
    let b = uri.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                let v = h * 16 + l;
                if v < 0x20 || v == 0x7f {
                    return Some(
                        // The request's own URL, not a URL in its body: malformed, so 400.
                        ApiError::new(
                            Code::InvalidUrl,
                            "the URL holds an encoded control character (such as %00); remove it",
                        )
                        .with_status(StatusCode::BAD_REQUEST)
                        .into_response(),
                    );
                }
            }
        }
        i += 1;
    }
    None
}

/// Retires the read cache ([`lectern_core::readcache`]) after every write this node serves:
/// the next course or lesson list reads the database again. Progress heartbeats are the
/// exception: they change no cached answer, and at a thousand a second they would keep the
/// cache empty.
pub async fn retire_reads_on_write(req: Request, next: Next) -> Response {
    use axum::http::Method;
    let read = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let heartbeat = req.method() == Method::POST && req.uri().path().ends_with("/progress");
    let write = !read && !heartbeat;
    let res = next.run(req).await;
    if write {
        lectern_core::readcache::changed();
    }
    res
}

/// Rate, errors and duration per route template (e.g. `/api/v1/videos/{id}`), so dashboards
/// and the p95 alert see each endpoint without one series per id.
pub async fn red_metrics(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| intern(p.as_str()))
        .unwrap_or("unmatched");
    let method = match *req.method() {
        axum::http::Method::GET => "GET",
        axum::http::Method::HEAD => "HEAD",
        axum::http::Method::POST => "POST",
        axum::http::Method::PUT => "PUT",
        axum::http::Method::PATCH => "PATCH",
        axum::http::Method::DELETE => "DELETE",
        axum::http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    };
    let started = Instant::now();
    let resp = next.run(req).await;
    let class = match resp.status().as_u16() / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    };
    metrics::counter!("lectern_http_requests_total", "method" => method, "route" => route, "status" => class)
        .increment(1);
    metrics::histogram!("lectern_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// Route templates as `'static` labels: there are a few dozen, so each is leaked once and the
/// metrics path allocates nothing per request.
fn intern(route: &str) -> &'static str {
    static ROUTES: std::sync::OnceLock<Mutex<HashMap<String, &'static str>>> =
        std::sync::OnceLock::new();
    let mut map = ROUTES
        .get_or_init(Default::default)
        .lock()
        .expect("route names");
    if let Some(r) = map.get(route) {
        return r;
    }
    let leaked: &'static str = Box::leak(route.to_string().into_boxed_str());
    map.insert(route.to_string(), leaked);
    leaked
}

/// Token buckets per user and per client IP.
pub struct RateLimiter {
    keys: Keys,
    user_rps: f64,
    ip_rps: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// Limits of `user_rps` per token subject and `ip_rps` per client address (bursts of 2 s
    /// worth); 0 turns a limit off.
    pub fn new(keys: Keys, user_rps: f64, ip_rps: f64) -> Self {
        Self {
            keys,
            user_rps,
            ip_rps,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token from `key`'s bucket; `Err(wait)` when it is empty.
    fn take(&self, key: String, rps: f64) -> Result<(), Duration> {
        if rps <= 0.0 {
            return Ok(());
        }
        let burst = (2.0 * rps).max(1.0);
        let now = Instant::now();
        let mut map = self.buckets.lock().expect("rate limiter");
        if map.len() > 200_000 {
            // Idle buckets are full anyway; forgetting them changes nothing.
            map.retain(|_, (_, at)| now.duration_since(*at) < Duration::from_secs(10));
        }
        let (tokens, at) = map.entry(key).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rps).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / rps))
        }
    }
}

/// Applies the per-IP and per-user limits to `/api/` requests; 429 with `Retry-After`.
pub async fn rate_limit(
    State(rl): State<Arc<RateLimiter>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    if !req.uri().path().starts_with("/api/") {
        return next.run(req).await;
    }
    let ip: IpAddr = peer.ip();
    let mut verdict = rl.take(format!("ip:{ip}"), rl.ip_rps);
    if verdict.is_ok() {
        let user = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(lectern_core::auth::bearer_token)
            .and_then(|t| rl.keys.verify(t).ok());
        if let Some(c) = user {
            verdict = rl.take(format!("user:{}/{}", c.org, c.sub), rl.user_rps);
        }
    }
    match verdict {
        Ok(()) => next.run(req).await,
        Err(wait) => {
            metrics::counter!("lectern_rate_limited_total").increment(1);
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            ApiError::new(
                Code::RateLimited,
                format!("too many requests; retry in {secs} s"),
            )
            .with_header("retry-after", secs.to_string())
            .into_response()
        }
    }
}

/// Refreshes the queue and pool gauges every few seconds until `stop`.
pub async fn gauges(db: Db, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        if let Err(e) = refresh(&db).await {
            tracing::debug!(error = %e, "gauge refresh failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.wait_for(|v| *v) => return,
        }
    }
}

async fn refresh(db: &Db) -> Result<(), DbError> {
    let rows = lectern_core::videos::state_counts(db).await?;
    let now = lectern_core::now_ms();
    let mut oldest = None;
    for st in VideoState::ALL.iter().map(|s| s.as_str()) {
        let n = rows.iter().find(|r| r.0 == st).map_or(0, |r| r.1);
        metrics::gauge!("lectern_jobs", "state" => st).set(n as f64);
    }
    for r in &rows {
        if let Some(q) = r.2 {
            oldest = Some(q);
        }
    }
    metrics::gauge!("lectern_queue_depth").set(
        rows.iter()
            .find(|r| r.0 == state::QUEUED)
            .map_or(0, |r| r.1) as f64,
    );
    metrics::gauge!("lectern_queue_oldest_age_seconds")
        .set(oldest.map_or(0.0, |q| (now - q).max(0) as f64 / 1000.0));
    let size = db.pool.size() as f64;
    let idle = db.pool.num_idle() as f64;
    metrics::gauge!("lectern_db_pool_connections", "state" => "idle").set(idle);
    metrics::gauge!("lectern_db_pool_connections", "state" => "busy").set(size - idle);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill() {
        let rl = RateLimiter::new(Keys::from_secret("0123456789abcdef0123"), 1.0, 0.0);
        assert!(rl.take("u".into(), 1.0).is_ok());
        assert!(rl.take("u".into(), 1.0).is_ok(), "burst of two");
        let wait = rl.take("u".into(), 1.0).unwrap_err();
        assert!(wait <= Duration::from_secs(1));
        assert!(rl.take("v".into(), 1.0).is_ok(), "buckets are per key");
        assert!(rl.take("w".into(), 0.0).is_ok(), "0 means unlimited");
    }
}
