//! Hand-written HTTP/1.1 load: thousands of keep-alive connections, cheaply, plus the
//! PostgreSQL helpers the load benches share.

use std::path::Path;
use std::process::Command;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One HTTP/1.1 keep-alive connection with hand-written requests: 10,000 of these are cheap.
pub struct Conn {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
    host: String,
}

impl Conn {
    /// Connects to `addr` (host:port).
    pub async fn open(addr: &str) -> anyhow::Result<Self> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        Ok(Self {
            r: BufReader::new(r),
            w,
            host: addr.to_string(),
        })
    }

    /// Sends a request and reads the whole response; returns the status.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        token: &str,
        body: &str,
    ) -> anyhow::Result<u16> {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.w.write_all(req.as_bytes()).await?;
        let mut line = String::new();
        self.r.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("bad status line {line:?}"))?;
        let mut len = 0usize;
        loop {
            line.clear();
            self.r.read_line(&mut line).await?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; len];
        self.r.read_exact(&mut body).await?;
        Ok(status)
    }
}

/// Runs one SQL statement through psql; returns its trimmed output.
pub fn pg(url: &str, sql: &str) -> anyhow::Result<String> {
    let o = Command::new("psql").args([url, "-tAc", sql]).output()?;
    anyhow::ensure!(
        o.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// `admin` (a PostgreSQL URL) pointed at database `db`.
pub fn db_url(admin: &str, db: &str) -> String {
    let cut = admin.rfind('/').expect("URL with a database");
    format!("{}/{db}", &admin[..cut])
}

/// Transactions committed in `db` so far (each autocommit statement is one).
pub fn xacts(admin: &str, db: &str) -> f64 {
    pg(
        admin,
        &format!("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '{db}'"),
    )
    .ok()
    .and_then(|s| s.parse().ok())
    .unwrap_or(0.0)
}

/// The `p` quantile of sorted microseconds, in milliseconds.
pub fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Raises the open-file limit to the hard limit (thousands of client connections).
pub fn raise_nofile() {
    // SAFETY: plain struct in/out; raising the soft limit up to the hard one is always allowed.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// A `lectern serve` on a fresh PostgreSQL database, with an admin token of org `bench`.
pub struct FreshServer {
    /// The process.
    pub server: crate::Server,
    /// `host:port`.
    pub addr: String,
    /// `{base}/api/v1`.
    pub api: String,
    /// The database's name (drop it when done).
    pub db: String,
    /// An admin token of org `bench`.
    pub admin: String,
}

/// Starts `lectern serve --roles ROLES` on a fresh PostgreSQL database (named
/// `lectern_bench_…`), rate limits off (one client address carries every user here, and
/// capacity runs send as fast as they can), with `env` on top.
pub fn spawn_on_fresh_pg(
    lectern: &Path,
    postgres: &str,
    roles: &str,
    secret: &str,
    env: &[(&str, String)],
) -> anyhow::Result<FreshServer> {
    let db = format!("lectern_bench_{}", lectern_core::new_id());
    pg(postgres, &format!("CREATE DATABASE {db}"))?;
    let dir = std::env::temp_dir().join(&db);
    std::fs::create_dir_all(&dir)?;
    let mut cmd = Command::new(lectern);
    cmd.args([
        "serve",
        "--roles",
        roles,
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
    ])
    .arg(&dir)
    .env("LECTERN_SECRET", secret)
    .env("LECTERN_LOG", "warn")
    .env("LECTERN_DATABASE_URL", db_url(postgres, &db))
    .env("LECTERN_RATE_LIMIT_IP_RPS", "0")
    .env("LECTERN_RATE_LIMIT_USER_RPS", "0")
    // 10,000 learners keep 10,000 connections open; the default caps a node at 4,096.
    .env("LECTERN_MAX_CONNECTIONS", "30000")
    .env_remove("DATABASE_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let server = crate::Server::spawn_announcing(cmd)?;
    let keys = lectern_core::auth::Keys::from_secret(secret);
    Ok(FreshServer {
        addr: server.base.trim_start_matches("http://").to_string(),
        api: format!("{}/api/v1", server.base),
        admin: keys.mint("admin", "bench", lectern_core::auth::Role::Admin, 86_400),
        server,
        db,
    })
}

/// Creates a course titled `title` with `lessons` lessons through the API; returns the course
/// id and the lesson ids.
pub async fn course_with_lessons(
    api: &str,
    admin: &str,
    title: &str,
    lessons: usize,
) -> anyhow::Result<(String, Vec<String>)> {
    let http = reqwest::Client::new();
    let id = |v: serde_json::Value| v["id"].as_str().unwrap_or_default().to_string();
    let course = id(http
        .post(format!("{api}/courses"))
        .bearer_auth(admin)
        .json(&serde_json::json!({ "title": title }))
        .send()
        .await?
        .json()
        .await?);
    let mut ids = Vec::new();
    for i in 0..lessons {
        ids.push(id(http
            .post(format!("{api}/courses/{course}/lessons"))
            .bearer_auth(admin)
            .json(&serde_json::json!({"title": format!("Lesson {i}")}))
            .send()
            .await?
            .json()
            .await?));
    }
    Ok((course, ids))
}
