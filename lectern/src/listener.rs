//! The HTTP listener. `axum::serve` sets no limits, and Lectern's default setup listens with no
//! proxy in front, so this serves each connection with hyper's HTTP/1 API and the limits a
//! server facing the internet needs:
//! - a header-read timeout, which hyper also applies to a keep-alive connection waiting for its
//!   next request, so idle and half-sent connections are closed;
//! - a cap on open connections: past it a new connection gets an immediate `503` JSON answer
//!   with `Retry-After` and is closed, instead of waiting unseen in the kernel's backlog;
//! - accept errors (out of file descriptors) back off instead of spinning;
//! - graceful shutdown: the listener closes, in-flight requests get a bounded time to finish.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::fastconn::{End, Rewind};
use crate::fastorigin::FastOrigin;

/// Connection limits of the listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Time to receive a request's headers, and the longest a keep-alive connection may idle.
    pub header_timeout: Duration,
    /// How long in-flight requests may run on after shutdown begins.
    pub drain: Duration,
    /// Peers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Arc<Vec<lectern_core::config::Cidr>>,
}

/// The client behind `peer`: when `peer` is a trusted proxy, the last `X-Forwarded-For` entry
/// that is not itself a trusted proxy (entries left of it are the client's own claims and can
/// be forged); otherwise `peer`.
pub fn client_addr(
    peer: SocketAddr,
    headers: &axum::http::HeaderMap,
    trusted: &[lectern_core::config::Cidr],
) -> SocketAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if trusted.is_empty() || !is_trusted(peer.ip()) {
        return peer;
    }
    let mut client = peer.ip();
    let entries = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for e in entries.iter().rev() {
        match e.parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(ip) {
                    break;
                }
            }
            // A malformed hop: stop at the last address we could trust.
            Err(_) => break,
        }
    }
    SocketAddr::new(client, if client == peer.ip() { peer.port() } else { 0 })
}

/// Raises this process's open-file limit to its hard limit (as nginx's
/// `worker_rlimit_nofile` does) and returns the connection cap that leaves room for the
/// database, the object store, logs and encoder pipes.
pub fn connection_budget(wanted: usize) -> usize {
    const RESERVE: u64 = 256;
    // SAFETY: getrlimit/setrlimit on our own process with a valid struct.
    let soft = unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return wanted;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        lim.rlim_cur
    };
    let fit = soft.saturating_sub(RESERVE).max(16) as usize;
    if fit < wanted {
        tracing::warn!(
            wanted,
            fit,
            "max_connections is above what the open-file limit allows; using {fit}"
        );
    }
    wanted.min(fit)
}

/// Serves `app` on `listener` until `shutdown` resolves. When `fast` is given, each connection
/// starts in the playback loop (`fastconn`), which hands it to hyper at the first request the
/// origin does not answer directly; hyper's requests still go to `fast` first.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    fast: Option<Arc<FastOrigin>>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Playback loops are not hyper's: they learn of shutdown from this, between requests.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            acc = listener.accept() => match acc {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: other connections must close first; don't spin.
                    tracing::warn!(error = %e, "accept failed; backing off");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("lectern_connections_refused_total").increment(1);
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let fast = fast.clone();
        let trusted = limits.trusted_proxies.clone();
        let playback = fast.clone();
        let svc =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                let app = app.clone();
                let fast = fast.clone();
                let trusted = trusted.clone();
                async move {
                    if let Some(refused) = crate::http::reject_malformed(&req) {
                        return Ok(refused);
                    }
                    if let Some(f) = &fast {
                        if let Some(res) = f.respond(&req).await {
                            return Ok(res);
                        }
                    }
                    let client = client_addr(peer, req.headers(), &trusted);
                    req.extensions_mut().insert(ConnectInfo(client));
                    app.oneshot(req).await
                }
            });
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let mut stop = stop_rx.clone();
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            let mut stream = stream;
            let prefix = match &playback {
                Some(f) => {
                    match crate::fastconn::serve(&mut stream, f, header_timeout, &mut stop).await {
                        Ok(End::Handoff(prefix)) => prefix,
                        Ok(End::Closed) => return,
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                            return;
                        }
                    }
                }
                None => bytes::Bytes::new(),
            };
            let io = TokioIo::new(Rewind::new(prefix, stream));
            if let Err(e) = watcher.watch(builder.serve_connection(io, svc)).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a slot until it ends, whichever loop serves it.
    let all_closed = async {
        graceful.shutdown().await;
        let _ = slots.acquire_many(limits.max_connections as u32).await;
    };
    if tokio::time::timeout(limits.drain, all_closed)
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still running {} s after shutdown began; closing them",
            limits.drain.as_secs()
        );
    }
    Ok(())
}

/// Answers a connection over the cap with a 503 the client can act on, then closes it.
async fn refuse(mut stream: TcpStream) {
    const BODY: &str = r#"{"code":"over-capacity","message":"the server has too many open connections; retry in a second"}"#;
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.shutdown().await;
        // Read what the client already sent before closing: unread bytes at close make the
        // kernel send a reset, which can destroy the answer before the client reads it.
        let mut sink = [0u8; 16 * 1024];
        let mut left = 256 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left -= n.min(left),
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use lectern_core::config::Cidr;

    #[test]
    fn forwarded_for_only_from_trusted_peers() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let mut h = axum::http::HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "6.6.6.6, 203.0.113.7, 10.1.1.1".parse().unwrap(),
        );
        let proxy: SocketAddr = "10.2.2.2:5000".parse().unwrap();
        // The proxy chain is trusted down to 203.0.113.7; 6.6.6.6 is the client's own claim.
        assert_eq!(
            client_addr(proxy, &h, &trusted).ip().to_string(),
            "203.0.113.7"
        );
        let stranger: SocketAddr = "198.51.100.1:5000".parse().unwrap();
        assert_eq!(client_addr(stranger, &h, &trusted), stranger);
        assert_eq!(client_addr(proxy, &h, &[]), proxy);
        h.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(client_addr(proxy, &h, &trusted).ip(), proxy.ip());
    }
}
