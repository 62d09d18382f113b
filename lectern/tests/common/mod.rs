//! Test harness: runs the real `lectern` binary on port 0 with a fresh data folder and a fresh
//! database (SQLite file, or a new PostgreSQL database per test), like zero2prod's `spawn_app`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer_pbutils as gst_pbutils;
use lectern_core::auth::{Keys, Role};
use serde_json::Value;

/// The signing secret every test server uses.
pub const SECRET: &str = "test-secret-0123456789abcdef";

/// Which database the server under test runs on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Db {
    /// Embedded SQLite in the data folder.
    Sqlite,
    /// A fresh database on the machine's PostgreSQL.
    Postgres,
}

/// A running server.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Its data folder.
    pub data: tempfile::TempDir,
    /// HTTP client.
    pub http: reqwest::Client,
    child: Option<Child>,
    pg_db: Option<String>,
    opts: Opts,
}

/// Path of a generated test clip, generating the clips on first use.
pub fn clip(name: &str) -> PathBuf {
    static GEN: Once = Once::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/videos");
    GEN.call_once(|| {
        let st = Command::new("bash")
            .arg(dir.join("generate.sh"))
            .status()
            .expect("run generate.sh");
        assert!(st.success(), "testdata/videos/generate.sh failed");
    });
    let p = dir.join(name);
    assert!(p.exists(), "missing clip {}", p.display());
    p
}

/// Generates a `secs`-second `size` (e.g. `1280x720`) H.264 test pattern in `dir` with ffmpeg:
/// long enough for a transcode to be caught in the middle.
pub fn long_clip(dir: &Path, name: &str, secs: u32, size: &str) -> PathBuf {
    let out = dir.join(name);
    let o = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=duration={secs}:size={size}:rate=30"))
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ])
        .arg(&out)
        .output()
        .expect("ffmpeg is installed by scripts/test.sh");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// Generates a `secs`-second `size` test pattern at `fps` with a stereo AAC tone, like a
/// screen-recorded lecture, in `dir` (kept between runs, since long ones take a while).
pub fn lecture_clip(dir: &Path, name: &str, secs: u32, size: &str, fps: u32) -> PathBuf {
    let out = dir.join(name);
    if out.exists() {
        return out;
    }
    let part = dir.join(format!("{}.part.mp4", lectern_core::new_id()));
    let o = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=duration={secs}:size={size}:rate={fps}"))
        .args(["-f", "lavfi", "-i"])
        .arg(format!(
            "sine=frequency=440:duration={secs}:sample_rate=48000"
        ))
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            &(fps * 2).to_string(),
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-ac",
            "2",
            "-b:a",
            "96k",
            "-movflags",
            "+faststart",
        ])
        .arg(&part)
        .output()
        .expect("ffmpeg is installed by scripts/test.sh");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::rename(&part, &out).unwrap();
    out
}

/// Where generated media that outlives one test run is kept (under `target/`).
pub fn media_cache() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-media");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The PostgreSQL server tests create their databases on.
pub fn pg_admin_url() -> String {
    std::env::var("LECTERN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

/// `url` with its authority's port replaced by `port` on 127.0.0.1.
fn via_port(url: &str, port: u16) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (auth, path) = rest.split_once('/').unwrap_or((rest, ""));
    let creds = auth
        .rsplit_once('@')
        .map(|(c, _)| format!("{c}@"))
        .unwrap_or_default();
    format!("{scheme}://{creds}127.0.0.1:{port}/{path}")
}

/// The host:port a URL points at.
pub fn authority(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let auth = rest.split('/').next().unwrap_or(rest);
    auth.rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(auth)
        .to_string()
}

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

/// The URL of database `db` on the test PostgreSQL server.
pub fn pg_url_for(db: &str) -> String {
    let admin = pg_admin_url();
    let cut = admin.rfind('/').expect("database URL has a path");
    format!("{}/{db}", &admin[..cut])
}

/// Runs `sql` on the test PostgreSQL server as its admin (from any thread).
pub fn pg_exec(sql: String) {
    // Tests run inside a tokio runtime; a runtime of our own needs its own thread.
    std::thread::spawn(move || pg_exec_here(sql))
        .join()
        .expect("pg_exec thread");
}

fn pg_exec_here(sql: String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&pg_admin_url())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL at {} is required for this test: {e}",
                    pg_admin_url()
                )
            });
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut c)
            .await
            .unwrap();
    });
}

/// How to start a server under test.
#[derive(Clone, Default)]
pub struct Opts {
    /// Database.
    pub db: Option<Db>,
    /// Use a fresh bucket on the test S3 server instead of the local store.
    pub s3: bool,
    /// `--roles`, when not all.
    pub roles: Option<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Reach PostgreSQL through this local port (a [`FaultProxy`]).
    pub pg_port: Option<u16>,
    /// Reach S3 through this local port (a [`FaultProxy`]).
    pub s3_port: Option<u16>,
    /// Extra arguments after `serve`.
    pub args: Vec<String>,
}

impl Opts {
    /// Options for `db`.
    pub fn new(db: Db) -> Self {
        Opts {
            db: Some(db),
            ..Default::default()
        }
    }

    /// Stores objects in a fresh bucket on the test S3 server.
    pub fn s3(mut self) -> Self {
        self.s3 = true;
        self
    }

    /// Runs only these roles.
    pub fn roles(mut self, roles: &str) -> Self {
        self.roles = Some(roles.into());
        self
    }

    /// Reaches PostgreSQL through `port` on loopback.
    pub fn pg_via(mut self, port: u16) -> Self {
        self.pg_port = Some(port);
        self
    }

    /// Reaches the S3 server through `port` on loopback.
    pub fn s3_via(mut self, port: u16) -> Self {
        self.s3_port = Some(port);
        self
    }

    /// Adds an argument to `serve`.
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.into());
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Starts the server.
    pub fn spawn(self) -> TestApp {
        TestApp::spawn_opts(self)
    }
}

/// The S3-compatible server the test command starts (moto).
pub fn s3_endpoint() -> String {
    std::env::var("LECTERN_TEST_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5055".into())
}

impl TestApp {
    /// Starts `lectern serve` with every role.
    pub fn spawn(db: Db) -> Self {
        Opts::new(db).spawn()
    }

    /// Starts `lectern serve` with extra environment variables.
    pub fn spawn_with(db: Db, env: &[(&str, &str)]) -> Self {
        let mut o = Opts::new(db);
        for (k, v) in env {
            o = o.env(k, v);
        }
        o.spawn()
    }

    /// Starts a server as `opts` says.
    pub fn spawn_opts(mut opts: Opts) -> Self {
        let data = tempfile::tempdir().unwrap();
        let mut pg_db = None;
        if opts.db == Some(Db::Postgres) {
            let name = format!("lectern_t_{}", lectern_core::new_id());
            pg_exec(format!("CREATE DATABASE {name}"));
            let mut url = pg_url_for(&name);
            if let Some(port) = opts.pg_port {
                url = via_port(&url, port);
            }
            opts.env.push(("LECTERN_DATABASE_URL".into(), url));
            pg_db = Some(name);
        }
        if opts.s3 {
            let bucket = format!("lectern-t-{}", &lectern_core::new_id()[..20]);
            opts.env
                .push(("LECTERN_STORAGE".into(), format!("s3://{bucket}")));
            let endpoint = match opts.s3_port {
                Some(port) => via_port(&s3_endpoint(), port),
                None => s3_endpoint(),
            };
            opts.env.push(("LECTERN_S3_ENDPOINT".into(), endpoint));
            for (k, v) in [
                ("AWS_ACCESS_KEY_ID", "test"),
                ("AWS_SECRET_ACCESS_KEY", "test"),
                ("AWS_REGION", "us-east-1"),
            ] {
                if std::env::var(k).is_err() {
                    opts.env.push((k.into(), v.into()));
                }
            }
        }
        let mut app = TestApp {
            base: String::new(),
            data,
            http: reqwest::Client::new(),
            child: None,
            pg_db,
            opts,
        };
        app.start();
        app
    }

    /// Starts another process of the same deployment: same database, store, data folder.
    pub fn peer(&self) -> TestApp {
        self.peer_opts(self.opts.clone())
    }

    fn peer_opts(&self, opts: Opts) -> TestApp {
        let mut app = TestApp {
            base: String::new(),
            data: tempfile::tempdir().unwrap(),
            http: reqwest::Client::new(),
            child: None,
            pg_db: None,
            opts,
        };
        app.start_in(self.data.path().to_path_buf());
        app
    }

    /// Starts another process of the same deployment with other roles and extra environment.
    pub fn peer_with(&self, roles: &str, env: &[(&str, &str)]) -> TestApp {
        let mut opts = self.opts.clone().roles(roles);
        opts.env.retain(|(k, _)| k != "LECTERN_LISTEN");
        for (k, v) in env {
            opts = opts.env(k, v);
        }
        self.peer_opts(opts)
    }

    /// Sets (or, with an empty value, unsets) an environment variable for the next `restart`.
    pub fn opts_env(&mut self, k: &str, v: &str) {
        self.opts.env.retain(|(key, _)| key != k);
        if !v.is_empty() {
            self.opts.env.push((k.into(), v.into()));
        }
    }

    /// The database URL the server was started with (set for PostgreSQL tests).
    pub fn database_url(&self) -> Option<String> {
        self.opts
            .env
            .iter()
            .find(|(k, _)| k == "LECTERN_DATABASE_URL")
            .map(|(_, v)| v.clone())
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILLs the server and leaves it down.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for the process to exit; returns how long that took.
    pub fn sigterm_and_wait(&mut self) -> Duration {
        let mut c = self.child.take().expect("running");
        let started = Instant::now();
        assert!(sigterm(&c), "SIGTERM sent");
        let status = c.wait().unwrap();
        assert!(status.success(), "clean exit after SIGTERM: {status}");
        started.elapsed()
    }

    /// Sends SIGTERM and returns at once; [`TestApp::wait_exit`] collects the process.
    pub fn send_sigterm(&self) {
        assert!(
            sigterm(self.child.as_ref().expect("running")),
            "SIGTERM sent"
        );
    }

    /// Waits up to `limit` for the process to exit and returns its status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        let c = self.child.as_mut().expect("running");
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                self.child = None;
                return st;
            }
            assert!(Instant::now() < deadline, "still running after {limit:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the server again on the same data and port (after `kill9` or `sigterm_and_wait`).
    pub fn restart(&mut self) {
        let listen = ("LECTERN_LISTEN".to_string(), self.addr());
        self.opts.env.retain(|(k, _)| k != "LECTERN_LISTEN");
        self.opts.env.push(listen);
        // Pooled keep-alive connections went down with the old process.
        self.http = reqwest::Client::new();
        self.start();
    }

    fn start(&mut self) {
        self.start_in(self.data.path().to_path_buf());
    }

    /// The `host:port` the server listens on.
    pub fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    fn start_in(&mut self, data: PathBuf) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lectern"));
        cmd.arg("serve")
            .env_remove("DATABASE_URL")
            .env("LECTERN_DATA_DIR", &data)
            .env("LECTERN_LISTEN", "127.0.0.1:0")
            .env("LECTERN_SECRET", SECRET)
            // Tests fire requests far faster than people do; the rate-limit test sets its own.
            .env("LECTERN_RATE_LIMIT_USER_RPS", "0")
            .env(
                "LECTERN_LOG",
                std::env::var("LECTERN_LOG")
                    .unwrap_or_else(|_| "warn,lectern_transcoder=info".into()),
            )
            .current_dir(&data)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(r) = &self.opts.roles {
            cmd.args(["--roles", r]);
        }
        cmd.args(&self.opts.args);
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn lectern");
        self.base = read_address(&mut child);
        self.child = Some(child);
    }

    /// A client of a server this harness did not start (a load balancer, another host):
    /// every request helper goes to `base`.
    pub fn client(base: &str) -> TestApp {
        TestApp {
            base: base.trim_end_matches('/').to_string(),
            data: tempfile::tempdir().unwrap(),
            http: reqwest::Client::new(),
            child: None,
            pg_db: None,
            opts: Opts::default(),
        }
    }

    /// Runs a prepared server command (one that ends in `lectern serve`, e.g. inside a chroot
    /// or on another network host) as a test server; `data` is kept until the app drops.
    pub fn from_command(mut cmd: Command, data: tempfile::TempDir) -> TestApp {
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn the server command");
        let base = read_address(&mut child);
        TestApp {
            base,
            data,
            http: reqwest::Client::new(),
            child: Some(child),
            pg_db: None,
            opts: Opts::default(),
        }
    }

    /// SIGKILLs the server (no clean shutdown) and starts it again on the same data and port.
    pub fn kill9_and_restart(&mut self) {
        self.kill9();
        self.restart();
    }

    /// A token for `role` in `org`.
    pub fn token(&self, role: Role, org: &str) -> String {
        Keys::from_secret(SECRET).mint("user-1", org, role, 3600)
    }

    /// Creates a tus upload and returns its Location.
    pub async fn create_upload(&self, token: &str, length: u64, metadata: &str) -> String {
        let r = self
            .http
            .post(format!("{}/files/", self.base))
            .bearer_auth(token)
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Length", length)
            .header("Upload-Metadata", metadata)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            201,
            "create failed: {}",
            r.text().await.unwrap()
        );
        r.headers()["location"].to_str().unwrap().to_string()
    }

    /// HEADs an upload; returns (status, offset).
    pub async fn head(&self, url: &str, token: &str) -> (u16, Option<u64>) {
        let r = self
            .http
            .head(url)
            .bearer_auth(token)
            .header("Tus-Resumable", "1.0.0")
            .send()
            .await
            .unwrap();
        let off = r
            .headers()
            .get("upload-offset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        (r.status().as_u16(), off)
    }

    /// GETs the stored bytes of a completed upload.
    pub async fn download(&self, url: &str, token: &str) -> Vec<u8> {
        let r = self.http.get(url).bearer_auth(token).send().await.unwrap();
        assert_eq!(r.status(), 200, "download {url}");
        r.bytes().await.unwrap().to_vec()
    }

    /// PATCHes `data` at `offset`; returns the response.
    pub async fn patch(
        &self,
        url: &str,
        token: &str,
        offset: u64,
        data: Vec<u8>,
    ) -> reqwest::Response {
        self.http
            .patch(url)
            .bearer_auth(token)
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Offset", offset)
            .header("Content-Type", "application/offset+octet-stream")
            .body(data)
            .send()
            .await
            .unwrap()
    }

    /// Uploads a whole file in `chunks` PATCHes; returns the video id.
    pub async fn upload(&self, token: &str, path: &Path, chunks: usize) -> String {
        let bytes = std::fs::read(path).unwrap();
        let url = self
            .create_upload(token, bytes.len() as u64, "filename Y2xpcC5tcDQ=")
            .await;
        let step = bytes.len().div_ceil(chunks.max(1));
        let mut off = 0;
        for part in bytes.chunks(step) {
            let r = self.patch(&url, token, off as u64, part.to_vec()).await;
            assert_eq!(r.status(), 204, "PATCH failed: {}", r.text().await.unwrap());
            off += part.len();
            assert_eq!(
                r.headers()["upload-offset"].to_str().unwrap(),
                off.to_string()
            );
        }
        url.rsplit('/').next().unwrap().to_string()
    }

    /// GETs a status document.
    pub async fn status(&self, token: &str, id: &str) -> Value {
        let r = self
            .http
            .get(format!("{}/api/v1/videos/{id}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    /// GETs `/api/v1/videos/{id}/playback`; returns the JSON body.
    pub async fn playback(&self, token: &str, id: &str) -> Value {
        self.http
            .get(format!("{}/api/v1/videos/{id}/playback", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Polls until the video leaves the pipeline; returns the final status and the states seen.
    pub async fn wait_done(&self, token: &str, id: &str) -> (Value, Vec<String>) {
        let deadline = Instant::now() + Duration::from_secs(240);
        let mut seen: Vec<String> = Vec::new();
        loop {
            let s = self.status(token, id).await;
            let state = s["state"].as_str().unwrap().to_string();
            if seen.last() != Some(&state) {
                seen.push(state.clone());
            }
            if ["ready", "failed", "canceled"].contains(&state.as_str()) {
                return (s, seen);
            }
            assert!(Instant::now() < deadline, "video {id} stuck in {state}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(db) = self.pg_db.take() {
            pg_exec(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
        }
    }
}

/// Reads the server's first stdout line (`lectern listening on http://…`) and returns the URL.
fn read_address(child: &mut Child) -> String {
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    line.split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("server did not report its address: {line:?}"))
        .to_string()
}

/// Fetches a URL and returns status, headers and body.
pub async fn fetch(app: &TestApp, url: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let r = app
        .http
        .get(url)
        .header("Origin", "https://lms.example")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.bytes().await.unwrap().to_vec())
}

/// Resolves a relative URI against a (possibly signed) URL.
pub fn join(base: &str, rel: &str) -> String {
    let dir = &base[..base.split('?').next().unwrap().rfind('/').unwrap() + 1];
    format!("{dir}{rel}")
}

pub struct Rendition {
    /// Init segment followed by every media segment.
    pub bytes: Vec<u8>,
    /// Highest segment bitrate.
    pub peak_bps: f64,
    /// Average bitrate.
    pub avg_bps: f64,
    /// Segment count.
    pub segments: usize,
}

/// Walks a media playlist: checks it and downloads init + segments.
pub async fn walk_media(app: &TestApp, url: &str) -> Rendition {
    let (status, headers, body) = fetch(app, url).await;
    assert_eq!(status, 200, "{url}: {}", String::from_utf8_lossy(&body));
    assert_eq!(headers["content-type"], "application/vnd.apple.mpegurl");
    assert_eq!(headers["access-control-allow-origin"], "*");
    let text = String::from_utf8(body.clone()).unwrap();
    for needle in [
        "#EXT-X-VERSION:7",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        "#EXT-X-ENDLIST",
        "#EXT-X-INDEPENDENT-SEGMENTS",
    ] {
        assert!(text.contains(needle), "{needle} missing in {text}");
    }
    let pl = m3u8_rs::parse_media_playlist_res(&body).unwrap();
    let map = pl.segments[0]
        .map
        .as_ref()
        .expect("EXT-X-MAP on the first segment");
    let (s, h, init) = fetch(app, &join(url, &map.uri)).await;
    assert_eq!(s, 200);
    assert_eq!(h["content-type"], "video/mp4");
    assert!(h["cache-control"].to_str().unwrap().contains("immutable"));
    assert_eq!(&init[4..8], b"ftyp");
    let mut all = init;
    let (mut peak, mut bits, mut secs) = (0f64, 0f64, 0f64);
    for seg in &pl.segments {
        assert!(
            seg.uri.ends_with(".m4s") && !seg.uri.contains('?'),
            "segments are unsigned: {}",
            seg.uri
        );
        assert!(seg.duration as u64 <= pl.target_duration);
        let (s, _, data) = fetch(app, &join(url, &seg.uri)).await;
        assert_eq!(s, 200);
        assert!(
            data.windows(4)
                .take(16)
                .any(|w| w == b"moof" || w == b"styp"),
            "segment is CMAF"
        );
        let b = data.len() as f64 * 8.0;
        peak = peak.max(b / seg.duration as f64);
        bits += b;
        secs += seg.duration as f64;
        all.extend_from_slice(&data);
    }
    Rendition {
        bytes: all,
        peak_bps: peak,
        avg_bps: bits / secs,
        segments: pl.segments.len(),
    }
}

/// What GStreamer's Discoverer finds in a local media file's first video stream.
pub struct Discovered {
    /// Width, pixels.
    pub width: u32,
    /// Height, pixels.
    pub height: u32,
    /// Caps name, e.g. `video/x-h264`.
    pub caps: String,
    /// Duration, seconds (0 when unknown).
    pub duration_s: f64,
    /// Whether the picture is interlaced.
    pub interlaced: bool,
    /// Bits per pixel over all components (24 for 8-bit 4:2:0, 0 when unknown).
    pub depth: u32,
}

/// Discovers a local media file with GStreamer.
pub fn discover(path: &std::path::Path) -> Discovered {
    use gst_pbutils::prelude::*;
    gst::init().unwrap();
    let d = gst_pbutils::Discoverer::new(gst::ClockTime::from_seconds(30)).unwrap();
    let info = d
        .discover_uri(&gst::glib::filename_to_uri(path, None).unwrap())
        .unwrap();
    let v = info
        .video_streams()
        .into_iter()
        .next()
        .expect("a video stream");
    Discovered {
        width: v.width(),
        height: v.height(),
        caps: v.caps().unwrap().structure(0).unwrap().name().to_string(),
        duration_s: info
            .duration()
            .map(|d| d.nseconds() as f64 / 1e9)
            .unwrap_or(0.0),
        interlaced: v.is_interlaced(),
        depth: v.depth(),
    }
}

/// Frames ffprobe decodes from the first video stream (reads every fragment, unlike a
/// duration estimate from the first one).
pub fn count_frames(f: &Path) -> u64 {
    let o = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "csv=p=0",
        ])
        .arg(f)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

/// A free TCP port on loopback (bound and released: good enough for a test's own server).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// nginx with `proxy_cache` in front of an origin, configured the way SECURITY.md tells CDN
/// operators: segments keyed by path alone (one copy for every viewer), playlists by their full
/// URL (the signature is part of the key). `X-Cache-Status` tells HIT from MISS. It also serves
/// the test clients folder at `/player/` (the hls.js page).
pub struct Nginx {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx on `port`, proxying to `upstream` (`host:port`).
    pub fn start(port: u16, upstream: &str) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let clients = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
        let user = if unsafe_is_root() {
            "user root root;"
        } else {
            ""
        };
        let conf = format!(
            r#"{user}
worker_processes 1;
daemon off;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 512; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp-body;
  proxy_temp_path {d}/tmp-proxy;
  fastcgi_temp_path {d}/tmp-fcgi;
  uwsgi_temp_path {d}/tmp-uwsgi;
  scgi_temp_path {d}/tmp-scgi;
  types {{ text/html html; application/javascript js mjs; }}
  proxy_cache_path {d}/cache levels=1:2 keys_zone=lectern:10m max_size=1g inactive=60m use_temp_path=off;
  server {{
    listen 127.0.0.1:{port};
    location /player/ {{ alias {clients}/; }}
    # tus uploads stream through unbuffered, whatever their size.
    location /files/ {{
      proxy_pass http://{upstream};
      client_max_body_size 0;
      proxy_request_buffering off;
      proxy_http_version 1.1;
    }}
    # Init and media segments: immutable and viewer-independent, so the key ignores the query.
    location ~ \.(m4s|mp4|vtt|jpg)$ {{
      proxy_pass http://{upstream};
      proxy_cache lectern;
      proxy_cache_key $scheme$proxy_host$uri;
      proxy_cache_lock on;
      add_header X-Cache-Status $upstream_cache_status always;
    }}
    # Playlists: signed per viewer, so the full URL (signature included) is the key.
    location / {{
      proxy_pass http://{upstream};
      proxy_cache lectern;
      proxy_cache_key $scheme$proxy_host$request_uri;
      add_header X-Cache-Status $upstream_cache_status always;
    }}
  }}
}}
"#,
            clients = clients.display()
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut child = Command::new("nginx")
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir.path())
            // Its log goes to error.log; a stray worker must never hold the test output open.
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx is installed by scripts/test.sh");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
                panic!("nginx did not start ({exited:?}); run `nginx -t -c {conf_path:?}`: {log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx {
            base,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: a killed master orphans its worker and cache-manager processes,
        // which then hold the suite's output pipe open forever.
        sigterm(&self.child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends SIGTERM to `child`; false when it could not be sent.
fn sigterm(child: &std::process::Child) -> bool {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the tests run as root (network namespaces, chroot and mounts need it).
pub fn is_root() -> bool {
    unsafe_is_root()
}

fn unsafe_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Plays `master_url` with hls.js in headless Chromium, from the page nginx serves at
/// `{page_base}/player/hls_page.html`; returns what the page saw.
pub fn play_in_chromium(
    page_base: &str,
    master_url: &str,
    min_played: f64,
    want_cues: bool,
) -> Value {
    let clients = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    let page = format!(
        "{page_base}/player/hls_page.html?src={}",
        percent_encode(master_url)
    );
    let out = Command::new("node")
        .arg(clients.join("hlsplay.mjs"))
        .arg(&page)
        .arg(min_played.to_string())
        .arg(if want_cues { "1" } else { "0" })
        .current_dir(&clients)
        .output()
        .expect("node is installed by scripts/test.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "hlsplay.mjs failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("hlsplay.mjs printed no JSON ({e}): {stdout}"))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One request of a player's walk: URL, status, `X-Cache-Status`.
#[derive(Debug)]
pub struct Hit {
    /// The URL.
    pub url: String,
    /// Its status.
    pub status: u16,
    /// `X-Cache-Status` (empty without a CDN).
    pub cache: String,
}

/// Fetches the master and everything it leads to (media playlists, init segments, media
/// segments, caption files), as a player that watches every rendition would.
pub async fn walk_tree(http: &reqwest::Client, master_url: &str) -> Vec<Hit> {
    let get = |url: String| async move {
        let r = http.get(&url).send().await.unwrap();
        let status = r.status().as_u16();
        let cache = r
            .headers()
            .get("x-cache-status")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = r.bytes().await.unwrap().to_vec();
        (Hit { url, status, cache }, body)
    };
    let mut hits = Vec::new();
    let (h, body) = get(master_url.to_string()).await;
    hits.push(h);
    let master = m3u8_rs::parse_master_playlist_res(&body).unwrap();
    let media: Vec<String> = master
        .variants
        .iter()
        .map(|v| v.uri.clone())
        .chain(master.alternatives.iter().filter_map(|a| a.uri.clone()))
        .map(|u| join(master_url, &u))
        .collect();
    for m in media {
        let (h, body) = get(m.clone()).await;
        hits.push(h);
        let pl = m3u8_rs::parse_media_playlist_res(&body).unwrap();
        let mut files: Vec<String> = pl
            .segments
            .iter()
            .filter_map(|s| s.map.as_ref().map(|m| m.uri.clone()))
            .collect();
        files.extend(pl.segments.iter().map(|s| s.uri.clone()));
        for f in files {
            hits.push(get(join(&m, &f)).await.0);
        }
    }
    hits
}

/// Whether a URL names a segment (or caption file) rather than a playlist.
pub fn is_segment(url: &str) -> bool {
    let path = url.split('?').next().unwrap();
    [".m4s", ".mp4", ".vtt"].iter().any(|e| path.ends_with(e))
}
