//! HTTP responses for stored objects, shared by the tus `GET` of an upload and the origin:
//! the `Range` request header and a streamed 200/206 with its validators. Kept out of the
//! store seam, so `storage` knows nothing of HTTP or of `ApiError`.

use crate::storage::{ByteRange, GetResult, StoreError};

/// The `Range` header of a request as a [`ByteRange`]: `None` when absent (or multi-range),
/// 416 when malformed.
pub fn request_range(
    headers: &axum::http::HeaderMap,
) -> Result<Option<ByteRange>, crate::error::ApiError> {
    match headers
        .get(axum::http::header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(ByteRange::parse_header)
    {
        Some(r) => Ok(Some(r.map_err(StoreError::from)?)),
        None => Ok(None),
    }
}

/// A `200`/`206` body that is a byte range of a file on local disk, carried in the response's
/// extensions beside the streamed body: a sender that owns its socket may `sendfile` this
/// range instead of reading the body (hyper, which ignores extensions, streams the body).
#[derive(Clone, Debug)]
pub struct FileRange {
    /// The open file.
    pub file: std::sync::Arc<std::fs::File>,
    /// First byte of the range.
    pub start: u64,
    /// Bytes in the range, equal to the response's `Content-Length`.
    pub len: u64,
}

/// Streams a stored object as an HTTP response: 200 or 206 with `Content-Range`, plus
/// `Content-Type`, `Content-Length`, `Accept-Ranges`, `ETag` and `Last-Modified`. `head`
/// sends the headers without the body.
pub fn object_response(
    got: GetResult,
    ranged: bool,
    content_type: &str,
    head: bool,
) -> Result<axum::response::Response, crate::error::ApiError> {
    use axum::http::{header, HeaderValue, StatusCode};
    let bad = crate::error::ApiError::internal;
    let len = got.range.end - got.range.start;
    let body = if head {
        axum::body::Body::empty()
    } else {
        axum::body::Body::from_stream(got.stream)
    };
    let mut r = axum::response::Response::new(body);
    if let (Some(file), false) = (got.local, head) {
        r.extensions_mut().insert(FileRange {
            file,
            start: got.range.start,
            len,
        });
    }
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).map_err(bad)?,
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&got.meta.etag).map_err(bad)?,
    );
    if let Some(t) = chrono::DateTime::from_timestamp_millis(got.meta.modified_ms) {
        let v = t.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        h.insert(
            header::LAST_MODIFIED,
            HeaderValue::from_str(&v).map_err(bad)?,
        );
    }
    if ranged {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        let v = format!(
            "bytes {}-{}/{}",
            got.range.start,
            got.range.end - 1,
            got.meta.size
        );
        r.headers_mut().insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&v).map_err(bad)?,
        );
    }
    Ok(r)
}
