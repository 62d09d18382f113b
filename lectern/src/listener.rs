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
/// starts in the playback loop (`fastconn`) on a per-core lane ([`Lanes`]), which hands it to
/// hyper on this runtime at the first request the origin does not answer directly; hyper's
/// requests still go to `fast` first.
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
    // Playback connections run on per-core lanes; a machine that cannot start a few threads
    // cannot serve either, so that fails the start like a port that cannot be bound.
    let lanes = match &fast {
        Some(_) => Some(Lanes::start()?),
        None => None,
    };
    let main = tokio::runtime::Handle::current();
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
        // hyper's half of a connection: all of it, or the rest after the playback loop.
        let draining = stop_rx.clone();
        let to_hyper = move |stream: TcpStream, prefix: bytes::Bytes| async move {
            let _slot = slot;
            let io = TokioIo::new(Rewind::new(prefix, stream));
            let served = if *draining.borrow() {
                // Handed off after shutdown began: the graceful watcher would close the
                // connection before its first request, which the playback loop has already
                // read, so the client would get no answer. It gets this one, then the
                // connection closes (the drain still waits for its slot).
                let mut last = builder;
                last.keep_alive(false);
                last.serve_connection(io, svc).await
            } else {
                watcher.watch(builder.serve_connection(io, svc)).await
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        };
        let (Some(f), Some(lanes)) = (playback, &lanes) else {
            tokio::spawn(to_hyper(stream, bytes::Bytes::new()));
            continue;
        };
        let main = main.clone();
        let handoff = Box::new(move |stream: std::net::TcpStream, prefix: bytes::Bytes| {
            main.spawn(async move {
                match TcpStream::from_std(stream) {
                    Ok(stream) => to_hyper(stream, prefix).await,
                    Err(e) => tracing::debug!(%peer, error = %e, "handoff to hyper failed"),
                }
            });
        });
        let stop = stop_rx.clone();
        lanes.dispatch(stream, peer, f, limits.header_timeout, stop, handoff);
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

/// Hands a connection, with the bytes the playback loop read, back to the main runtime.
type Handoff = Box<dyn FnOnce(std::net::TcpStream, bytes::Bytes) + Send>;

/// A playback connection on its way to a lane.
struct LaneConn {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    fast: Arc<FastOrigin>,
    header_timeout: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
    /// Holds the connection's slot until the loop closes it or hyper's task takes it over.
    handoff: Handoff,
}

/// One thread per core, each with a single-threaded runtime, for the playback loop: a
/// connection lives on one thread from its first request to its last, as in nginx's worker
/// processes, and the connections of a lane take their turns in order. On the multi-threaded
/// runtime some connections waited behind many others' 4 MB segments (hot-segment p99 up to
/// 750 ms under saturation; 110–180 ms in most runs on lanes, BENCHMARKS.md). Connections
/// are dealt in turn, which splits a player fleet's keep-alive connections evenly
/// (`SO_REUSEPORT`'s hash did not). A connection the loop hands off goes back to the main
/// runtime, where hyper and the router run, so uploads and API calls never occupy a lane;
/// and the origin's handlers
/// run their own I/O on the main runtime (`fastconn::on_runtime`), so database and
/// object-store connections pooled for the whole process never depend on a lane.
struct Lanes {
    lanes: Vec<tokio::sync::mpsc::UnboundedSender<LaneConn>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Lanes {
    /// Starts one lane per core this process may use (cgroup quotas included).
    fn start() -> std::io::Result<Self> {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut lanes = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<LaneConn>();
            // Built on its own thread: a runtime must not be dropped (were the thread not to
            // start) inside the async context that starts the lanes.
            let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
            std::thread::Builder::new()
                .name(format!("lectern-lane-{i}"))
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    rt.block_on(async move {
                        let mut conns = tokio::task::JoinSet::new();
                        loop {
                            tokio::select! {
                                c = rx.recv() => match c {
                                    Some(c) => {
                                        conns.spawn(c.run());
                                    }
                                    None => break,
                                },
                                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                            }
                        }
                        // The listener closed: open connections finish first (the listener's
                        // drain bounds how long the server waits for them).
                        while conns.join_next().await.is_some() {}
                    })
                })?;
            ready_rx
                .recv()
                .unwrap_or_else(|_| Err(std::io::Error::other("a playback lane did not start")))?;
            lanes.push(tx);
        }
        Ok(Self {
            lanes,
            next: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Gives `stream` to the next lane; the connection is closed if it cannot move.
    fn dispatch(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        fast: Arc<FastOrigin>,
        header_timeout: Duration,
        stop: tokio::sync::watch::Receiver<bool>,
        handoff: Handoff,
    ) {
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "connection could not move to a lane");
                return;
            }
        };
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.lanes.len();
        let _ = self.lanes[i].send(LaneConn {
            stream,
            peer,
            fast,
            header_timeout,
            stop,
            handoff,
        });
    }
}

impl LaneConn {
    /// Runs the playback loop on this lane, then hands the connection back if it must.
    async fn run(self) {
        let LaneConn {
            stream,
            peer,
            fast,
            header_timeout,
            mut stop,
            handoff,
        } = self;
        let mut stream = match TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "connection could not join its lane");
                return;
            }
        };
        match crate::fastconn::serve(&mut stream, &fast, header_timeout, &mut stop).await {
            Ok(End::Handoff(prefix)) => match stream.into_std() {
                Ok(s) => handoff(s, prefix),
                Err(e) => tracing::debug!(%peer, error = %e, "handoff to hyper failed"),
            },
            Ok(End::Closed) => {}
            Err(e) => tracing::debug!(%peer, error = %e, "connection ended with an error"),
        }
    }
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
