//! Shared seams of Lectern. Nothing here depends on GStreamer, so the API, ingest and origin
//! crates can use it without pulling in the media stack.

pub mod access;
pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod keys;
pub mod ladder;
pub mod lesson_links;
pub mod nodes;
pub mod object_http;
pub mod page;
pub mod queue;
pub mod readcache;
pub mod statuscache;
pub mod storage;
pub mod text;
pub mod text_enum;
pub mod videos;
pub mod webhooks;

/// What `text_enum!` expands to needs, reachable from other crates.
#[doc(hidden)]
pub mod __private {
    pub use serde;
    pub use sqlx;
}

/// Milliseconds since the Unix epoch, the one time unit stored in the database.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A fresh random identifier: 32 lowercase hex characters (128 bits), safe in paths and URLs.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Formats epoch milliseconds as RFC 3339 (UTC), the contract's timestamp format.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The external base URL (scheme and authority, no trailing slash) for URLs handed to clients:
/// the configured public URL, else the request's `X-Forwarded-Proto`/`Host`.
pub fn base_url(public_url: Option<&str>, headers: &axum::http::HeaderMap) -> String {
    if let Some(u) = public_url {
        return u.trim_end_matches('/').to_string();
    }
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("localhost");
    let proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .filter(|p| *p == "https" || *p == "http")
        .unwrap_or("http");
    format!("{proto}://{host}")
}
