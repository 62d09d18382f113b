//! `FaultProxy`: a TCP proxy that cuts, stalls or slows a dependency on demand.

use super::*;

/// A TCP proxy in front of a real dependency (PostgreSQL, S3, Redis) that injects faults: it
/// can cut every open connection and stop listening, so new connections are refused (a restart
/// or an outage); stall, so bytes stop flowing both ways on every connection, old and new,
/// while connections stay open (a hung server); or answer every new HTTP request with
/// `503 SlowDown` as S3 does under load. Needs a multi-threaded test runtime.
pub struct FaultProxy {
    /// The local port to point Lectern at.
    pub port: u16,
    target: String,
    state: std::sync::Arc<std::sync::Mutex<ProxyState>>,
    mode: tokio::sync::watch::Sender<Mode>,
}

/// What the proxy does with the bytes it is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Pass,
    Stall,
    Http503,
}

#[derive(Default)]
struct ProxyState {
    accept: Option<tokio::task::JoinHandle<()>>,
    conns: Vec<tokio::task::AbortHandle>,
}

/// Copies `from` to `to`, holding every byte while the mode is `Stall`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: tokio::sync::watch::Receiver<Mode>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if mode.wait_for(|m| *m != Mode::Stall).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if mode.wait_for(|m| *m != Mode::Stall).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Reads one request's headers and answers S3's `503 SlowDown`, then closes.
async fn slow_down(mut inbound: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") && seen.len() < 65536 {
        match inbound.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = inbound.write_all(resp.as_bytes()).await;
    let _ = inbound.shutdown().await;
}

impl FaultProxy {
    /// Starts a proxy to `target` (`host:port`).
    pub async fn start(target: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let p = FaultProxy {
            port,
            target: target.to_string(),
            state: Default::default(),
            mode: tokio::sync::watch::channel(Mode::Pass).0,
        };
        p.serve(listener);
        p
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let (target, state, mode) = (self.target.clone(), self.state.clone(), self.mode.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let target = target.clone();
                let mode = mode.subscribe();
                let h = tokio::spawn(async move {
                    if *mode.borrow() == Mode::Http503 {
                        return slow_down(inbound).await;
                    }
                    if let Ok(out) = tokio::net::TcpStream::connect(&target).await {
                        let (ri, wi) = inbound.into_split();
                        let (ro, wo) = out.into_split();
                        tokio::join!(pump(ri, wo, mode.clone()), pump(ro, wi, mode));
                    }
                });
                state.lock().unwrap().conns.push(h.abort_handle());
            }
        });
        self.state.lock().unwrap().accept = Some(accept);
    }

    fn drop_conns(&self) {
        for h in self.state.lock().unwrap().conns.drain(..) {
            h.abort();
        }
    }

    /// Cuts every open connection and stops listening.
    pub fn cut(&self) {
        if let Some(a) = self.state.lock().unwrap().accept.take() {
            a.abort();
        }
        self.drop_conns();
    }

    /// Stops every byte on every connection, open or new, until [`FaultProxy::restore`].
    pub fn stall(&self) {
        self.mode.send_replace(Mode::Stall);
    }

    /// Answers every new request `503 SlowDown` (open connections are cut, so the client
    /// reconnects) until [`FaultProxy::restore`].
    pub fn slow_down(&self) {
        self.mode.send_replace(Mode::Http503);
        self.drop_conns();
    }

    /// Passes bytes again, listening again on the same port if it was cut.
    pub async fn restore(&self) {
        self.mode.send_replace(Mode::Pass);
        if self.state.lock().unwrap().accept.is_some() {
            return;
        }
        for _ in 0..50 {
            if let Ok(l) = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                self.serve(l);
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("cannot listen on port {} again", self.port);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cut();
    }
}
