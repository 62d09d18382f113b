//! The `lectern` binary: `serve`, `migrate`, `token` and `upload`.

mod api;
mod captions;
mod egress;
mod fastconn;
mod fastorigin;
mod http;
mod listener;
mod openapi;
mod serve;
mod upload;
mod webhooks;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use lectern_core::auth::{parse_ttl, Keys, Role};
use lectern_core::config::Config;

/// Lecture video pipeline: tus upload, GStreamer transcode, signed HLS delivery.
#[derive(Parser)]
#[command(name = "lectern", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Flags every command shares; they override the file and the environment.
#[derive(Args, Clone, Default)]
struct Common {
    /// Config file (default: ./lectern.toml when present).
    #[arg(long, env = "LECTERN_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Data folder for the embedded database, local objects and the secret.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run Lectern's roles (all of them by default).
    Serve {
        #[command(flatten)]
        common: Common,
        /// Listen address, e.g. 127.0.0.1:8080 (port 0 picks a free port).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Comma-separated roles: api, ingest, origin, worker.
        #[arg(long)]
        roles: Option<String>,
        /// Concurrent transcode jobs in this process.
        #[arg(long)]
        workers: Option<usize>,
        /// Do not migrate: only check that the schema is current and exit with what to run if
        /// it is not (pods without DDL rights; run `lectern migrate` first).
        #[arg(long)]
        no_migrate: bool,
    },
    /// Apply the database migrations (and create the extensions the queue needs), then exit.
    Migrate {
        #[command(flatten)]
        common: Common,
    },
    /// Exit 0 when a local server answers 200 on a path (for container health checks, where
    /// the image has no curl).
    Health {
        /// Address of the server.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: std::net::SocketAddr,
        /// Path to ask.
        #[arg(long, default_value = "/readyz")]
        path: String,
    },
    /// Print a bearer token (JWT HS256) signed with this deployment's secret.
    Token {
        #[command(flatten)]
        common: Common,
        /// learner, instructor, admin or operator.
        #[arg(long)]
        role: Role,
        /// User id (the `sub` claim).
        #[arg(long)]
        user: String,
        /// Organisation id.
        #[arg(long)]
        org: String,
        /// Lifetime, e.g. 90s, 15m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: i64,
    },
    /// Upload a video with tus, resuming where a previous run stopped.
    Upload(upload::UploadArgs),
    /// Internal: one encoder process, started by a transcode worker for each attempt.
    #[command(name = "__encoder", hide = true)]
    Encoder,
}

fn load_config(common: &Common) -> anyhow::Result<Config> {
    let mut cfg = Config::load(common.config.as_deref(), |k| std::env::var(k).ok())?;
    if let Some(d) = &common.data_dir {
        cfg.data_dir = d.clone();
    }
    Ok(cfg)
}

/// One HTTP/1.0 GET with a 5 s budget; Ok only on a 200.
fn health(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let limit = std::time::Duration::from_secs(5);
    let mut s = std::net::TcpStream::connect_timeout(&addr, limit)?;
    s.set_read_timeout(Some(limit))?;
    s.set_write_timeout(Some(limit))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head)?;
    let line = String::from_utf8_lossy(&head[..n]);
    match line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        other => anyhow::bail!("{addr}{path} answered {}", other.unwrap_or("nothing")),
    }
}

/// Keeps glibc from growing its mmap threshold: by default, freeing one 8 MiB upload part
/// raises it past the part size, after which every part buffer comes from per-thread arenas
/// that do not shrink, and a node streaming to S3 held 80–95 MiB where 49 MiB is live.
/// Called before the server starts any thread.
fn fixed_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            common,
            listen,
            roles,
            workers,
            no_migrate,
        } => load_config(&common).and_then(|mut cfg| {
            // Not in the encoder children: their frame buffers are theirs to keep.
            fixed_mmap_threshold();
            if let Some(l) = listen {
                cfg.listen = l;
            }
            if let Some(r) = roles {
                cfg.roles = lectern_core::config::split_roles(&r);
            }
            if let Some(w) = workers {
                cfg.workers = w;
            }
            cfg.validate()?;
            let schema = if no_migrate {
                lectern_core::db::Schema::Check
            } else {
                lectern_core::db::Schema::Apply
            };
            serve::run(cfg, schema)
        }),
        Command::Migrate { common } => load_config(&common).and_then(serve::migrate),
        Command::Health { addr, path } => health(addr, &path),
        Command::Token {
            common,
            role,
            user,
            org,
            ttl,
        } => load_config(&common).and_then(|cfg| {
            let keys = Keys::load(cfg.secret.as_deref(), &cfg.data_dir, false)?;
            println!("{}", keys.mint(&user, &org, role, ttl));
            Ok(())
        }),
        Command::Upload(args) => upload::run(args),
        Command::Encoder => {
            serve::init_tracing();
            std::process::exit(lectern_transcoder::isolate::child_main());
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
