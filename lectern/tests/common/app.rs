//! Spawning the real binary (`TestApp`), its options, PostgreSQL databases per test, and
//! process helpers.

use super::*;
use reqwest::Method;
use serde_json::json;

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

/// A free TCP port on loopback (bound and released: good enough for a test's own server).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends SIGTERM to `child`; false when it could not be sent.
pub(crate) fn sigterm(child: &std::process::Child) -> bool {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the tests run as root (network namespaces, chroot and mounts need it).
pub fn is_root() -> bool {
    unsafe_is_root()
}

pub(crate) fn unsafe_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Sends a JSON request; returns status and body (`null` when empty).
pub async fn call(
    app: &TestApp,
    m: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = app.http.request(m, format!("{}{path}", app.base));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    (status, v)
}

/// A token for `user` of `org` with `role`, signed with the test secret.
pub fn tok(role: Role, user: &str, org: &str) -> String {
    Keys::from_secret(SECRET).mint(user, org, role, 3600)
}

/// Uploads a clip as `token` and waits until it is ready; returns its id.
pub async fn ready_video(app: &TestApp, token: &str, name: &str) -> String {
    let id = app.upload(token, &clip(name), 1).await;
    let (st, _) = app.wait_done(token, &id).await;
    assert_eq!(st["state"], "ready", "{st}");
    id
}

/// A course with one lesson showing a ready video: (course, lesson, video).
pub async fn course_with_lesson(app: &TestApp, inst: &str) -> (String, String, String) {
    let video = ready_video(app, inst, "clip-360p.mp4").await;
    let (s, course) = call(
        app,
        Method::POST,
        "/api/v1/courses",
        Some(inst),
        Some(json!({"title": "Algebra I", "description": "Week 1"})),
    )
    .await;
    assert_eq!(s, 201, "{course}");
    let cid = course["id"].as_str().unwrap().to_string();
    let (s, lesson) = call(
        app,
        Method::POST,
        &format!("/api/v1/courses/{cid}/lessons"),
        Some(inst),
        Some(json!({"title": "Groups", "video_id": video})),
    )
    .await;
    assert_eq!(s, 201, "{lesson}");
    assert_eq!(lesson["position"], 0);
    assert_eq!(lesson["video_state"], "ready");
    (cid, lesson["id"].as_str().unwrap().to_string(), video)
}
