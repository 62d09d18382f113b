//! Layered configuration: built-in defaults, then `lectern.toml`, then `LECTERN_*` environment
//! variables; the binary applies command-line flags last.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Every role a process can run.
pub const ALL_ROLES: [&str; 4] = ["api", "ingest", "origin", "worker"];

/// Everything a Lectern process can be configured with. Every key is optional in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP listener binds.
    pub listen: SocketAddr,
    /// Folder for the embedded database, local objects, the generated secret and scratch files.
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; defaults to SQLite in the data folder.
    pub database_url: Option<String>,
    /// `file://DIR` or `s3://BUCKET`; defaults to `file://<data_dir>/objects`.
    pub storage: Option<String>,
    /// Endpoint of an S3-compatible server (used with `s3://` storage).
    pub s3_endpoint: Option<String>,
    /// External base URL for URLs handed out; without it the request's Host is used.
    pub public_url: Option<String>,
    /// Signing secret; without it one is generated and kept in the data folder.
    pub secret: Option<String>,
    /// Retired secrets that still verify tokens and playback URLs issued before a rotation.
    pub previous_secrets: Vec<String>,
    /// Roles this process runs: any of api, ingest, origin, worker.
    pub roles: Vec<String>,
    /// Concurrent transcode jobs per worker process.
    pub workers: usize,
    /// Ladder definition file; defaults to the built-in copy of `pipelines/default.toml`.
    pub pipeline: Option<PathBuf>,
    /// Value of `Access-Control-Allow-Origin` on ingest and origin responses.
    pub cors_origin: String,
    /// Who may frame the player at `/embed/{id}`: the CSP `frame-ancestors` sources (the page's
    /// own origin is always allowed, for the studio's preview), e.g. `https://lms.example.edu`.
    pub embed_frame_ancestors: String,
    /// Origins, besides the page's own and `public_url`'s, the web pages may fetch playlists,
    /// segments and posters from (a CDN host that differs from the public URL), space-separated.
    pub web_media_origins: String,
    /// Seconds a playback URL stays valid beyond the video's duration.
    pub playback_grace_s: u64,
    /// How long an unfinished upload is kept after its last write, e.g. `24h`.
    pub upload_expiry: String,
    /// Bytes per stored upload part (8–64 MiB); smaller leftovers live in a tail object.
    pub upload_part_size: usize,
    /// MiB of upload bodies this node holds in memory at once on S3 (parts being sent, tails);
    /// a write that cannot get its share within 20 s is refused `503 over-capacity`.
    pub upload_buffer_mb: u64,
    /// MiB of source uploads one organisation may store (0 = no quota); past it a new upload
    /// is refused `413 storage-quota-exceeded`.
    pub org_storage_quota_mb: u64,
    /// Videos one organisation may have uploading, queued or transcoding at once (0 = no
    /// quota); past it a new upload is refused `429 queue-quota-exceeded`.
    pub org_queue_quota: u64,
    /// Seconds an S3 request may wait to connect or for the first byte of its answer, and a
    /// body read may go without a byte, before it fails (and is retried or answered 503).
    pub store_timeout_s: u64,
    /// Fraction of a lesson's video a learner must have watched for it to count as complete.
    pub complete_ratio: f64,
    /// Connections in the database pool of this process (unset: sized by role, see [`Pools`]).
    pub db_max_connections: Option<u32>,
    /// Connections of the PostgreSQL pool for batch writes (progress flushes; unset: by role).
    pub db_batch_connections: Option<u32>,
    /// Connections of the job queue's pool (unset: by role).
    pub queue_db_connections: Option<u32>,
    /// Accept plain `http://` webhook URLs (development and tests; production wants https).
    pub webhook_allow_http: bool,
    /// Hosts (names or IP literals) webhooks may reach although they are not public addresses:
    /// on-premises receivers. Everything else private, loopback or link-local is refused.
    pub webhook_allowed_hosts: Vec<String>,
    /// API requests per second per user (token subject), bursts of twice that; 0 = off.
    pub rate_limit_user_rps: f64,
    /// API requests per second per client address, bursts of twice that; 0 = off.
    pub rate_limit_ip_rps: f64,
    /// Coalesce progress heartbeats in memory and flush them in batches (false: one write
    /// per heartbeat, only for comparison benchmarks).
    pub progress_write_behind: bool,
    /// Answer repeated course and lesson lists from a per-node micro-cache
    /// (1 s, retired by any write on the node; false only for comparisons).
    pub read_cache: bool,
    /// Redis as the shared cache and invalidation bus between API nodes (`redis://HOST:PORT`).
    pub redis_url: Option<String>,
    /// MiB of memory the origin keeps hot playlists and segments in (0 = no cache).
    pub origin_cache_mb: u64,
    /// A command run when a video is deleted, with the CDN path to purge (`/v/{id}/`) as its
    /// argument (and `LECTERN_PURGE_PATH`, `LECTERN_VIDEO_ID` in its environment).
    pub cdn_purge_command: Option<String>,
    /// Open HTTP connections at most; past it new ones get `503 over-capacity` (also bounded by
    /// the open-file limit, which the server raises to its hard limit).
    pub max_connections: usize,
    /// Seconds to receive a request's headers; also how long a keep-alive connection may idle.
    pub header_timeout_s: u64,
    /// Address-space limit of each encoder child process, MiB (0 = none).
    pub encoder_memory_mb: u64,
    /// Seconds an encoder child may go without reporting before it is killed as hung.
    pub encoder_stall_s: u64,
    /// Copy a source from S3 to the worker's disk before encoding it, rather than read it in
    /// place through a presigned URL with ranged GETs (for an S3 the encoders cannot reach).
    pub stage_sources: bool,
    /// x264 and decoder threads per encoder (0: the CPUs this process may use, read from its
    /// cgroup's CPU quota and affinity, not the node's core count).
    pub encoder_threads: u32,
    /// How long a stopping worker lets its running attempts finish before handing them back
    /// (a duration: 90s, 15m, 1h). Kubernetes' `terminationGracePeriodSeconds` should exceed it.
    pub worker_drain_timeout: String,
    /// Seconds between SIGTERM (when `/readyz` starts answering 503) and the listener closing,
    /// so load balancers stop sending new requests first.
    pub shutdown_delay_s: u64,
    /// Peers (CIDRs such as `10.0.0.0/8`) whose `X-Forwarded-For` names the client, for rate
    /// limits and logs. Empty: the TCP peer is the client.
    pub trusted_proxies: Vec<String>,
    /// How long finished rows stay in the queue's own tables before a sweep deletes them.
    pub queue_retention: String,
}

impl Default for Config {
    fn default() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Self {
            listen: "127.0.0.1:8080".parse().expect("static address"),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            storage: None,
            s3_endpoint: None,
            public_url: None,
            secret: None,
            previous_secrets: Vec::new(),
            roles: ALL_ROLES.iter().map(|s| s.to_string()).collect(),
            // x264 already spreads one job over every core; a second job only helps on big hosts.
            workers: (cores / 4).max(1),
            pipeline: None,
            cors_origin: "*".into(),
            embed_frame_ancestors: "*".into(),
            web_media_origins: String::new(),
            playback_grace_s: 2 * 3600,
            upload_expiry: "24h".into(),
            upload_part_size: 8 * 1024 * 1024,
            upload_buffer_mb: 1024,
            org_storage_quota_mb: 0,
            org_queue_quota: 0,
            store_timeout_s: 30,
            complete_ratio: 0.9,
            db_max_connections: None,
            db_batch_connections: None,
            queue_db_connections: None,
            webhook_allow_http: false,
            webhook_allowed_hosts: Vec::new(),
            rate_limit_user_rps: 20.0,
            rate_limit_ip_rps: 1000.0,
            progress_write_behind: true,
            read_cache: true,
            redis_url: None,
            origin_cache_mb: 256,
            cdn_purge_command: None,
            // Virtual size, not RSS: a full 1080p ladder peaks near 700 MiB resident but maps
            // far more (thread stacks, x264 lookahead); this only stops a runaway decoder.
            max_connections: 4096,
            header_timeout_s: 30,
            encoder_memory_mb: 8192,
            encoder_stall_s: 120,
            stage_sources: false,
            encoder_threads: 0,
            worker_drain_timeout: "15m".into(),
            shutdown_delay_s: 0,
            trusted_proxies: Vec::new(),
            queue_retention: "7d".into(),
        }
    }
}

/// Why configuration could not be loaded; each says which key or file to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file exists but cannot be read.
    #[error("cannot read config file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The config file is not valid TOML or has an unknown key.
    #[error("invalid config file {0}: {1}")]
    Parse(PathBuf, toml::de::Error),
    /// An environment variable has a value of the wrong shape.
    #[error("invalid value for {0}: {1}")]
    Env(&'static str, String),
    /// A value is well-formed but unusable.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads defaults, then the file (an explicit path must exist; `./lectern.toml` is optional),
    /// then `LECTERN_*` variables from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let (path, required) = match file {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from("lectern.toml"), false),
        };
        let mut cfg = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| ConfigError::Parse(path.clone(), e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Config::default(),
            Err(e) => return Err(ConfigError::Read(path, e)),
        };
        cfg.apply_env(env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(key: &'static str, v: String) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            v.parse()
                .map_err(|e: T::Err| ConfigError::Env(key, e.to_string()))
        }
        if let Some(v) = env("LECTERN_LISTEN") {
            self.listen = parse("LECTERN_LISTEN", v)?;
        }
        if let Some(v) = env("LECTERN_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = env("LECTERN_DATABASE_URL") {
            self.database_url = Some(v);
        }
        if let Some(v) = env("LECTERN_STORAGE") {
            self.storage = Some(v);
        }
        if let Some(v) = env("LECTERN_S3_ENDPOINT") {
            self.s3_endpoint = Some(v);
        }
        if let Some(v) = env("LECTERN_PUBLIC_URL") {
            self.public_url = Some(v);
        }
        if let Some(v) = env("LECTERN_SECRET") {
            self.secret = Some(v);
        }
        if let Some(v) = env("LECTERN_PREVIOUS_SECRETS") {
            self.previous_secrets = v
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Some(v) = env("LECTERN_ROLES") {
            self.roles = split_roles(&v);
        }
        if let Some(v) = env("LECTERN_WORKERS") {
            self.workers = parse("LECTERN_WORKERS", v)?;
        }
        if let Some(v) = env("LECTERN_PIPELINE") {
            self.pipeline = Some(PathBuf::from(v));
        }
        if let Some(v) = env("LECTERN_CORS_ORIGIN") {
            self.cors_origin = v;
        }
        if let Some(v) = env("LECTERN_EMBED_FRAME_ANCESTORS") {
            self.embed_frame_ancestors = v;
        }
        if let Some(v) = env("LECTERN_WEB_MEDIA_ORIGINS") {
            self.web_media_origins = v;
        }
        if let Some(v) = env("LECTERN_PLAYBACK_GRACE_S") {
            self.playback_grace_s = parse("LECTERN_PLAYBACK_GRACE_S", v)?;
        }
        if let Some(v) = env("LECTERN_UPLOAD_EXPIRY") {
            self.upload_expiry = v;
        }
        if let Some(v) = env("LECTERN_UPLOAD_PART_SIZE") {
            self.upload_part_size = parse("LECTERN_UPLOAD_PART_SIZE", v)?;
        }
        if let Some(v) = env("LECTERN_UPLOAD_BUFFER_MB") {
            self.upload_buffer_mb = parse("LECTERN_UPLOAD_BUFFER_MB", v)?;
        }
        if let Some(v) = env("LECTERN_ORG_STORAGE_QUOTA_MB") {
            self.org_storage_quota_mb = parse("LECTERN_ORG_STORAGE_QUOTA_MB", v)?;
        }
        if let Some(v) = env("LECTERN_ORG_QUEUE_QUOTA") {
            self.org_queue_quota = parse("LECTERN_ORG_QUEUE_QUOTA", v)?;
        }
        if let Some(v) = env("LECTERN_STORE_TIMEOUT_S") {
            self.store_timeout_s = parse("LECTERN_STORE_TIMEOUT_S", v)?;
        }
        if let Some(v) = env("LECTERN_COMPLETE_RATIO") {
            self.complete_ratio = parse("LECTERN_COMPLETE_RATIO", v)?;
        }
        if let Some(v) = env("LECTERN_RATE_LIMIT_USER_RPS") {
            self.rate_limit_user_rps = parse("LECTERN_RATE_LIMIT_USER_RPS", v)?;
        }
        if let Some(v) = env("LECTERN_RATE_LIMIT_IP_RPS") {
            self.rate_limit_ip_rps = parse("LECTERN_RATE_LIMIT_IP_RPS", v)?;
        }
        if let Some(v) = env("LECTERN_REDIS_URL") {
            self.redis_url = Some(v).filter(|v| !v.is_empty());
        }
        if let Some(v) = env("LECTERN_PROGRESS_WRITE_BEHIND") {
            self.progress_write_behind = parse("LECTERN_PROGRESS_WRITE_BEHIND", v)?;
        }
        if let Some(v) = env("LECTERN_READ_CACHE") {
            self.read_cache = parse("LECTERN_READ_CACHE", v)?;
        }
        if let Some(v) = env("LECTERN_WEBHOOK_ALLOW_HTTP") {
            self.webhook_allow_http = parse("LECTERN_WEBHOOK_ALLOW_HTTP", v)?;
        }
        if let Some(v) = env("LECTERN_ORIGIN_CACHE_MB") {
            self.origin_cache_mb = parse("LECTERN_ORIGIN_CACHE_MB", v)?;
        }
        if let Some(v) = env("LECTERN_CDN_PURGE_COMMAND") {
            self.cdn_purge_command = Some(v).filter(|v| !v.is_empty());
        }
        if let Some(v) = env("LECTERN_DB_BATCH_CONNECTIONS") {
            self.db_batch_connections = Some(parse("LECTERN_DB_BATCH_CONNECTIONS", v)?);
        }
        if let Some(v) = env("LECTERN_QUEUE_DB_CONNECTIONS") {
            self.queue_db_connections = Some(parse("LECTERN_QUEUE_DB_CONNECTIONS", v)?);
        }
        if let Some(v) = env("LECTERN_WEBHOOK_ALLOWED_HOSTS") {
            self.webhook_allowed_hosts = v
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Some(v) = env("LECTERN_MAX_CONNECTIONS") {
            self.max_connections = parse("LECTERN_MAX_CONNECTIONS", v)?;
        }
        if let Some(v) = env("LECTERN_HEADER_TIMEOUT_S") {
            self.header_timeout_s = parse("LECTERN_HEADER_TIMEOUT_S", v)?;
        }
        if let Some(v) = env("LECTERN_ENCODER_MEMORY_MB") {
            self.encoder_memory_mb = parse("LECTERN_ENCODER_MEMORY_MB", v)?;
        }
        if let Some(v) = env("LECTERN_ENCODER_STALL_S") {
            self.encoder_stall_s = parse("LECTERN_ENCODER_STALL_S", v)?;
        }
        if let Some(v) = env("LECTERN_STAGE_SOURCES") {
            self.stage_sources = parse("LECTERN_STAGE_SOURCES", v)?;
        }
        if let Some(v) = env("LECTERN_ENCODER_THREADS") {
            self.encoder_threads = parse("LECTERN_ENCODER_THREADS", v)?;
        }
        if let Some(v) = env("LECTERN_WORKER_DRAIN_TIMEOUT") {
            self.worker_drain_timeout = v;
        }
        if let Some(v) = env("LECTERN_SHUTDOWN_DELAY_S") {
            self.shutdown_delay_s = parse("LECTERN_SHUTDOWN_DELAY_S", v)?;
        }
        if let Some(v) = env("LECTERN_TRUSTED_PROXIES") {
            self.trusted_proxies = v
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Some(v) = env("LECTERN_QUEUE_RETENTION") {
            self.queue_retention = v;
        }
        if let Some(v) = env("LECTERN_DB_MAX_CONNECTIONS") {
            self.db_max_connections = Some(parse("LECTERN_DB_MAX_CONNECTIONS", v)?);
        }
        Ok(())
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.storage {
            crate::storage::Backend::parse(url).map_err(ConfigError::Invalid)?;
        }
        for r in &self.roles {
            if !ALL_ROLES.contains(&r.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "unknown role '{r}'; roles are {}",
                    ALL_ROLES.join(", ")
                )));
            }
        }
        if self.roles.is_empty() {
            return Err(ConfigError::Invalid(
                "no roles given; pick from api, ingest, origin, worker".into(),
            ));
        }
        if self.max_connections < 16 || self.header_timeout_s == 0 {
            return Err(ConfigError::Invalid(
                "max_connections must be at least 16 and header_timeout_s at least 1".into(),
            ));
        }
        if self.upload_buffer_mb.saturating_mul(1 << 20) < 2 * self.upload_part_size as u64 {
            return Err(ConfigError::Invalid(
                "upload_buffer_mb must hold at least two parts (2 × upload_part_size)".into(),
            ));
        }
        if self.store_timeout_s == 0 {
            return Err(ConfigError::Invalid(
                "store_timeout_s must be at least 1".into(),
            ));
        }
        if self.workers == 0 {
            return Err(ConfigError::Invalid("workers must be at least 1".into()));
        }
        crate::auth::parse_ttl(&self.upload_expiry)
            .map_err(|e| ConfigError::Invalid(format!("upload_expiry: {e}")))?;
        crate::auth::parse_ttl(&self.worker_drain_timeout)
            .map_err(|e| ConfigError::Invalid(format!("worker_drain_timeout: {e}")))?;
        if crate::auth::parse_ttl(&self.queue_retention)
            .map_err(|e| ConfigError::Invalid(format!("queue_retention: {e}")))?
            < 3600
        {
            return Err(ConfigError::Invalid(
                "queue_retention must be at least 1h (finished jobs stay visible that long)".into(),
            ));
        }
        for p in &self.trusted_proxies {
            Cidr::parse(p).map_err(|e| ConfigError::Invalid(format!("trusted_proxies: {e}")))?;
        }
        if !(8 << 20..=64 << 20).contains(&self.upload_part_size) {
            return Err(ConfigError::Invalid(
                "upload_part_size must be between 8 MiB and 64 MiB (8388608..67108864)".into(),
            ));
        }
        if !(0.5..=1.0).contains(&self.complete_ratio) {
            return Err(ConfigError::Invalid(
                "complete_ratio must be between 0.5 and 1.0".into(),
            ));
        }
        if !(self.rate_limit_user_rps >= 0.0 && self.rate_limit_ip_rps >= 0.0) {
            return Err(ConfigError::Invalid(
                "rate limits must be 0 (off) or a positive number of requests per second".into(),
            ));
        }
        for (k, v) in [
            ("db_max_connections", self.db_max_connections),
            ("db_batch_connections", self.db_batch_connections),
            ("queue_db_connections", self.queue_db_connections),
        ] {
            if v.is_some_and(|v| !(1..=1000).contains(&v)) {
                return Err(ConfigError::Invalid(format!(
                    "{k} must be between 1 and 1000"
                )));
            }
        }
        if let Some(s) = &self.secret {
            if s.len() < 16 {
                return Err(ConfigError::Invalid(
                    "secret must be at least 16 characters".into(),
                ));
            }
        }
        if self.previous_secrets.iter().any(|s| s.len() < 16) {
            return Err(ConfigError::Invalid(
                "every previous_secrets entry must be at least 16 characters".into(),
            ));
        }
        Ok(())
    }

    /// Whether this process runs `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// The database URL, defaulting to SQLite in the data folder.
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("lectern.db").display()
            )
        })
    }

    /// The upload expiry as a duration.
    pub fn upload_expiry(&self) -> std::time::Duration {
        duration(&self.upload_expiry, 86400, 1)
    }

    /// How long a stopping worker lets running attempts finish.
    pub fn worker_drain_timeout(&self) -> std::time::Duration {
        duration(&self.worker_drain_timeout, 900, 0)
    }

    /// How long finished queue rows are kept.
    pub fn queue_retention(&self) -> std::time::Duration {
        duration(&self.queue_retention, 7 * 86400, 3600)
    }

    /// The trusted proxy ranges (validated by [`Config::validate`]).
    pub fn trusted_proxies(&self) -> Vec<Cidr> {
        self.trusted_proxies
            .iter()
            .filter_map(|p| Cidr::parse(p).ok())
            .collect()
    }

    /// Pool sizes for this process: the configured ones, else defaults by role that keep a
    /// fleet inside PostgreSQL's default 100 connections (see "Connection budget" in docs/DESIGN.md). A process
    /// with every role (the embedded default) keeps the large pools a single node can use.
    pub fn pools(&self) -> Pools {
        let web = ["api", "ingest", "origin"].iter().any(|r| self.has_role(r));
        let (main, batch, queue) = match (web, self.has_role("worker")) {
            (true, true) => (16, 4, 8),
            // Short statements only (leases, offset commits, lookups): bodies stream with no
            // connection held, so three serve hundreds of uploads.
            (true, false) => (3, 1, 1),
            // One per running attempt for its state and progress; the queue's polls are short.
            (false, _) => ((self.workers as u32).clamp(1, 64), 0, 1),
        };
        Pools {
            main: self.db_max_connections.unwrap_or(main),
            batch: if self.has_role("api") {
                self.db_batch_connections.unwrap_or(batch.max(1))
            } else {
                0
            },
            queue: self.queue_db_connections.unwrap_or(queue),
            listen: u32::from(self.has_role("api") && self.read_cache),
        }
    }

    /// The object-store URL, defaulting to `file://<data_dir>/objects`.
    pub fn storage_url(&self) -> String {
        self.storage
            .clone()
            .unwrap_or_else(|| format!("file://{}", self.data_dir.join("objects").display()))
    }
}

/// A duration key's value ([`Config::validate`] has refused bad ones), at least `min` seconds.
fn duration(v: &str, default_s: i64, min_s: i64) -> std::time::Duration {
    std::time::Duration::from_secs(crate::auth::parse_ttl(v).unwrap_or(default_s).max(min_s) as u64)
}

/// Database pool sizes of one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pools {
    /// The main pool (every role).
    pub main: u32,
    /// The typed PostgreSQL pool of batch writes; 0 when this process has no api role.
    pub batch: u32,
    /// The job queue's pool.
    pub queue: u32,
    /// The status cache's listening connection: 1 on an api process with the read cache on
    /// (only PostgreSQL opens it).
    pub listen: u32,
}

impl Pools {
    /// Connections this process may open at most.
    pub fn total(&self) -> u32 {
        self.main + self.batch + self.queue + self.listen
    }
}

/// An address range such as `10.0.0.0/8` or `fd00::/8` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: std::net::IpAddr,
    bits: u8,
}

impl Cidr {
    /// Parses `ADDR/BITS` or `ADDR`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, b) = s.trim().split_once('/').unwrap_or((s.trim(), ""));
        let net: std::net::IpAddr = a
            .parse()
            .map_err(|_| format!("'{s}' is not an address range such as 10.0.0.0/8"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = if b.is_empty() {
            max
        } else {
            b.parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("'{s}': the prefix length must be 0 to {max}"))?
        };
        Ok(Cidr { net, bits })
    }

    /// Whether `ip` lies in the range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Splits a comma-separated role list.
pub fn split_roles(v: &str) -> Vec<String> {
    v.split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_are_embedded() {
        let cfg = Config::load(Some(Path::new("/nonexistent/x.toml")), no_env);
        assert!(
            matches!(cfg, Err(ConfigError::Read(..))),
            "explicit file must exist"
        );
        let cfg = Config::default();
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:8080");
        assert!(cfg.database_url().starts_with("sqlite://"));
        assert!(cfg.storage_url().starts_with("file://"));
    }

    #[test]
    fn env_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.toml");
        std::fs::write(&p, "listen = \"127.0.0.1:9000\"\nworkers = 3\n").unwrap();
        let cfg = Config::load(Some(&p), |k| {
            (k == "LECTERN_WORKERS").then(|| "5".to_string())
        })
        .unwrap();
        assert_eq!(cfg.listen.port(), 9000);
        assert_eq!(cfg.workers, 5);
        let bad = Config::load(Some(&p), |k| {
            (k == "LECTERN_WORKERS").then(|| "x".to_string())
        });
        assert!(matches!(bad, Err(ConfigError::Env("LECTERN_WORKERS", _))));
    }

    #[test]
    fn unknown_keys_and_roles_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.toml");
        std::fs::write(&p, "lisen = \"127.0.0.1:9000\"\n").unwrap();
        assert!(matches!(
            Config::load(Some(&p), no_env),
            Err(ConfigError::Parse(..))
        ));
        std::fs::write(&p, "roles = [\"api\", \"cook\"]\n").unwrap();
        assert!(matches!(
            Config::load(Some(&p), no_env),
            Err(ConfigError::Invalid(_))
        ));
    }

    /// The sample config must name every key, so operators can discover them all.
    #[test]
    fn sample_config_names_every_key_and_parses() {
        let sample = include_str!("../../lectern.example.toml");
        let uncommented: String = sample
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|r| r.contains(" = "))
                    .unwrap_or(l)
            })
            .collect::<Vec<_>>()
            .join("\n");
        let parsed: toml::Table =
            toml::from_str(&uncommented).expect("sample parses when uncommented");
        let cfg: Config = toml::from_str(&uncommented).expect("sample keys are all known");
        cfg.validate().unwrap();
        for key in KEYS {
            assert!(
                parsed.contains_key(key),
                "lectern.example.toml does not mention `{key}`"
            );
        }
    }

    #[test]
    fn cidrs_and_pools() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("fd00::/8")
            .unwrap()
            .contains("fd12::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("tenish").is_err());
        let mut cfg = Config::default();
        assert_eq!(cfg.pools().total(), 29);
        cfg.roles = split_roles("api,ingest,origin");
        let web = cfg.pools();
        cfg.roles = split_roles("worker");
        cfg.workers = 1;
        let worker = cfg.pools();
        assert_eq!(worker.batch, 0);
        // The deploy's largest fleet (web HPA max 9, KEDA max 20 workers) in PostgreSQL's
        // default 100 connections (97 usable), with 3 left for KEDA, the migrate Job and psql.
        assert_eq!(web.total(), 6, "{web:?}");
        assert!(
            9 * web.total() + 20 * worker.total() <= 94,
            "{web:?} {worker:?}"
        );
        cfg.queue_db_connections = Some(5);
        assert_eq!(cfg.pools().queue, 5);
    }

    const KEYS: [&str; 44] = [
        "listen",
        "data_dir",
        "database_url",
        "storage",
        "s3_endpoint",
        "public_url",
        "secret",
        "previous_secrets",
        "roles",
        "workers",
        "pipeline",
        "cors_origin",
        "embed_frame_ancestors",
        "web_media_origins",
        "playback_grace_s",
        "upload_expiry",
        "upload_part_size",
        "upload_buffer_mb",
        "org_storage_quota_mb",
        "org_queue_quota",
        "store_timeout_s",
        "complete_ratio",
        "db_max_connections",
        "db_batch_connections",
        "queue_db_connections",
        "webhook_allow_http",
        "rate_limit_user_rps",
        "rate_limit_ip_rps",
        "progress_write_behind",
        "read_cache",
        "redis_url",
        "origin_cache_mb",
        "cdn_purge_command",
        "encoder_memory_mb",
        "encoder_stall_s",
        "stage_sources",
        "max_connections",
        "header_timeout_s",
        "webhook_allowed_hosts",
        "encoder_threads",
        "worker_drain_timeout",
        "shutdown_delay_s",
        "trusted_proxies",
        "queue_retention",
    ];
}
