//! The playback connection loop, in front of hyper. Players and CDNs open keep-alive
//! connections that carry nothing but `GET`s of playlists and segments; for those this loop
//! parses each request head itself (httparse, as hyper does), asks [`FastOrigin`] for the
//! answer and writes it with a pre-rendered head: one `writev` of head and body for a
//! playlist or a cached segment, and `sendfile` for a segment read from the disk store, so
//! its bytes never pass through user space (nginx's `sendfile on`).
//!
//! Anything else (another method, HTTP/1.0, a body, `Connection: close`, `Expect`, an
//! oversized or unparsable head, a path the origin declines) hands the connection to hyper
//! with the bytes read so far replayed first, and hyper serves it from then on. So hyper keeps
//! every framing and error rule, and the loop only ever answers what the origin answers
//! directly. The answers are hyper's to the byte (status line, headers, the `content-length`
//! and `date` hyper would add); `tests/origin.rs` compares both paths.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, HttpBody};
use axum::http::uri::PathAndQuery;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use lectern_core::object_http::FileRange;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::fastorigin::FastOrigin;

/// Longest request head the loop parses itself; hyper enforces the real limits on longer ones.
const HEAD_MAX: usize = 8 * 1024;
/// Most header lines the loop parses itself (hyper takes up to 100).
const MAX_HEADERS: usize = 32;

/// How the loop let go of its connection.
pub enum End {
    /// Closed: the peer left, the head timed out, or the server is shutting down.
    Closed,
    /// A request the loop does not answer: hyper serves the connection from here, starting
    /// with these bytes (that request, and any pipelined after it).
    Handoff(Bytes),
}

/// A request head the loop answers.
struct Head {
    method: Method,
    target: PathAndQuery,
    headers: HeaderMap,
    len: usize,
}

enum Parsed {
    Complete(Head),
    Partial,
    /// Not for this loop: hyper's.
    Other,
}

fn parse(buf: &[u8]) -> Parsed {
    let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut lines);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    if req.version != Some(1) {
        return Parsed::Other;
    }
    let method = match req.method {
        Some("GET") => Method::GET,
        Some("HEAD") => Method::HEAD,
        _ => return Parsed::Other,
    };
    // Percent-escapes (in the path or the query) are the router's to decode or refuse.
    let Some(target) = req
        .path
        .filter(|p| p.starts_with("/v/") && !p.contains('%'))
    else {
        return Parsed::Other;
    };
    let Ok(target) = PathAndQuery::try_from(target) else {
        return Parsed::Other;
    };
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            return Parsed::Other;
        };
        // Framing and connection management stay hyper's.
        let framing = (name == header::CONTENT_LENGTH && h.value != b"0")
            || name == header::TRANSFER_ENCODING
            || name == header::EXPECT
            || name == header::UPGRADE
            || (name == header::CONNECTION && !h.value.eq_ignore_ascii_case(b"keep-alive"));
        if framing {
            return Parsed::Other;
        }
        let Ok(value) = HeaderValue::from_bytes(h.value) else {
            return Parsed::Other;
        };
        headers.append(name, value);
    }
    Parsed::Complete(Head {
        method,
        target,
        headers,
        len,
    })
}

/// Serves playback requests on `stream` until the peer leaves, a request is not the loop's
/// (then hyper takes over), or `stop` turns true while the connection is idle. Each head must
/// arrive within `header_timeout` of the previous answer, as hyper's `header_read_timeout`.
pub async fn serve(
    stream: &mut TcpStream,
    fast: &FastOrigin,
    header_timeout: Duration,
    stop: &mut watch::Receiver<bool>,
) -> io::Result<End> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let deadline = tokio::time::Instant::now() + header_timeout;
        let head = loop {
            if !buf.is_empty() {
                match parse(&buf) {
                    Parsed::Complete(h) => break h,
                    Parsed::Partial if buf.len() < HEAD_MAX => {}
                    _ => return Ok(End::Handoff(buf.freeze())),
                }
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            let idle = buf.is_empty();
            let read = tokio::select! {
                r = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)) => r,
                _ = stop.wait_for(|s| *s), if idle => return Ok(End::Closed),
            };
            match read {
                Err(_) | Ok(Ok(0)) => return Ok(End::Closed),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
            }
        };
        let answer = fast.respond_parts(
            &head.method,
            head.target.path(),
            head.target.query(),
            &head.headers,
        );
        let Some(res) = on_runtime(fast.runtime(), answer).await else {
            return Ok(End::Handoff(buf.freeze()));
        };
        buf.advance(head.len);
        write_response(stream, fast.runtime(), head.method == Method::HEAD, res).await?;
        if *stop.borrow() {
            return Ok(End::Closed);
        }
    }
}

/// Writes `res` as hyper's HTTP/1.1 server would: the handler's headers, then the
/// `content-length` (or chunked framing) hyper derives from the body, then `date`.
async fn write_response(
    stream: &mut TcpStream,
    runtime: &Handle,
    head_req: bool,
    res: Response<Body>,
) -> io::Result<()> {
    let (parts, body) = res.into_parts();
    let status = parts.status;
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let can_have_body = !head_req && !bodiless;
    let mut head = Vec::with_capacity(160 + parts.headers.len() * 48);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in parts.headers.iter() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    let declared = parts.headers.get(header::CONTENT_LENGTH);
    let mut chunked = false;
    if declared.is_none() {
        match body.size_hint().exact() {
            Some(0) if !bodiless && !head_req => head.extend_from_slice(b"content-length: 0\r\n"),
            Some(0) => {}
            Some(n) if !bodiless => {
                head.extend_from_slice(b"content-length: ");
                head.extend_from_slice(n.to_string().as_bytes());
                head.extend_from_slice(b"\r\n");
            }
            Some(_) => {}
            None if can_have_body => {
                head.extend_from_slice(b"transfer-encoding: chunked\r\n");
                chunked = true;
            }
            None => {}
        }
    }
    let declared = declared
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if !parts.headers.contains_key(header::DATE) {
        head.extend_from_slice(b"date: ");
        with_date(|d| head.extend_from_slice(d));
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    if !can_have_body {
        return stream.write_all(&head).await;
    }
    if let Some(f) = parts.extensions.get::<FileRange>() {
        if declared == Some(f.len) {
            send_more(stream, &head).await?;
            return send_file(stream, f).await;
        }
    }
    // An in-memory body is one frame: head and bytes leave in one `writev`.
    let mut pending = Some(head);
    let mut sent = 0u64;
    let mut frames = body.into_data_stream();
    while let Some(data) = on_runtime(runtime, frames.next()).await {
        let data = data.map_err(io::Error::other)?;
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        let mut first = pending.take().unwrap_or_default();
        if chunked {
            first.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            write_two(stream, &first, &data).await?;
            stream.write_all(b"\r\n").await?;
        } else {
            write_two(stream, &first, &data).await?;
        }
    }
    let mut rest = pending.unwrap_or_default();
    if chunked {
        rest.extend_from_slice(b"0\r\n\r\n");
    }
    if !rest.is_empty() {
        stream.write_all(&rest).await?;
    }
    match declared {
        // A body that ended short of its length: closing is the only honest end.
        Some(n) if n != sent => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the body ended after {sent} of {n} bytes"),
        )),
        _ => Ok(()),
    }
}

/// Polls `fut` with `runtime` as the current runtime, so that whatever it opens or starts
/// (pooled database and object-store connections, spawned and blocking tasks) belongs to
/// `runtime` while the caller, a playback lane, only waits for it.
async fn on_runtime<F: std::future::Future>(runtime: &Handle, fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        let _current = runtime.enter();
        fut.as_mut().poll(cx)
    })
    .await
}

/// `a` then `b`, gathered into as few writes as the socket allows.
async fn write_two(stream: &mut TcpStream, mut a: &[u8], mut b: &[u8]) -> io::Result<()> {
    while !a.is_empty() {
        let n = stream
            .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if n >= a.len() {
            b = &b[n - a.len()..];
            a = &[];
        } else {
            a = &a[n..];
        }
    }
    stream.write_all(b).await
}

/// Runs `call` (a raw write syscall returning bytes sent or -1) once the socket is writable,
/// again after each `EWOULDBLOCK`, and returns what one successful call sent.
async fn raw_write(stream: &TcpStream, mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        stream.writable().await?;
        let sent = stream.try_io(Interest::WRITABLE, || match call() {
            n if n < 0 => Err(io::Error::last_os_error()),
            n => Ok(n as usize),
        });
        match sent {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            other => return other,
        }
    }
}

/// Sends `bytes` with `MSG_MORE`, so the kernel holds them for the `sendfile` that follows
/// instead of sending the head in a packet of its own (`TCP_NODELAY` is on).
async fn send_more(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    let fd = stream.as_raw_fd();
    while !bytes.is_empty() {
        // SAFETY: a live socket and a valid buffer of `bytes.len()` bytes.
        let n = raw_write(stream, || unsafe {
            libc::send(
                fd,
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_MORE | libc::MSG_NOSIGNAL,
            )
        })
        .await?;
        bytes = &bytes[n..];
    }
    Ok(())
}

/// Sends the file range with `sendfile`: page cache to socket, no copy through user space.
/// Like nginx's `sendfile on` without `aio`, a page not in the page cache is read from disk
/// inside the call.
async fn send_file(stream: &TcpStream, f: &FileRange) -> io::Result<()> {
    let out = stream.as_raw_fd();
    let src = f.file.as_raw_fd();
    let end = f.start + f.len;
    let mut offset = f.start as libc::off_t;
    while (offset as u64) < end {
        let want = (end - offset as u64).min(1 << 30) as usize;
        // SAFETY: two live descriptors and a valid offset; sendfile moves only `offset`.
        let n = raw_write(stream, || unsafe {
            libc::sendfile(out, src, &mut offset, want)
        })
        .await?;
        if n == 0 {
            // The file is shorter than its range (truncated under us): close, don't pad.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file ended before its range",
            ));
        }
    }
    Ok(())
}

/// The `date` header's value, rendered once per second per thread (as hyper caches it).
fn with_date(f: impl FnOnce(&[u8])) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            *d = (secs, httpdate::fmt_http_date(now));
        }
        f(d.1.as_bytes());
    });
}

/// A connection handed to hyper: the bytes the loop already read come first.
pub struct Rewind {
    prefix: Bytes,
    io: TcpStream,
}

impl Rewind {
    /// `io`, whose next bytes are `prefix`.
    pub fn new(prefix: Bytes, io: TcpStream) -> Self {
        Self { prefix, io }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(raw: &str) -> &'static str {
        match parse(raw.as_bytes()) {
            Parsed::Complete(_) => "loop",
            Parsed::Partial => "partial",
            Parsed::Other => "hyper",
        }
    }

    #[test]
    fn the_loop_takes_only_plain_playback_gets() {
        let get = "GET /v/abc/master.m3u8?exp=1&sig=x HTTP/1.1\r\nhost: a\r\n\r\n";
        assert_eq!(kind(get), "loop");
        assert_eq!(
            kind("HEAD /v/a/b/c/d HTTP/1.1\r\nconnection: Keep-Alive\r\n\r\n"),
            "loop"
        );
        assert_eq!(
            kind("GET /v/a/b/c/d HTTP/1.1\r\ncontent-length: 0\r\n\r\n"),
            "loop"
        );
        assert_eq!(kind("GET /v/abc/master.m3u8 HTTP/1.1\r\nhost:"), "partial");
        for other in [
            "POST /v/a/master.m3u8 HTTP/1.1\r\n\r\n",
            "GET /v/a/master.m3u8 HTTP/1.0\r\n\r\n",
            "GET /api/v1/videos HTTP/1.1\r\n\r\n",
            "GET /v/%61/master.m3u8 HTTP/1.1\r\n\r\n",
            "GET /v/a/master.m3u8?sig=%zz HTTP/1.1\r\n\r\n",
            "GET /v/a/b/c/d HTTP/1.1\r\nconnection: close\r\n\r\n",
            "GET /v/a/b/c/d HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello",
            "GET /v/a/b/c/d HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            "GET /v/a/b/c/d HTTP/1.1\r\nexpect: 100-continue\r\n\r\n",
            "GET /v/a/b/c/d HTTP/1.1\r\nupgrade: websocket\r\n\r\n",
            "GET /v/a b HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(kind(other), "hyper", "{other:?}");
        }
        let many = format!(
            "GET /v/a/b/c/d HTTP/1.1\r\n{}\r\n",
            "x-h: 1\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(kind(&many), "hyper");
    }
}
