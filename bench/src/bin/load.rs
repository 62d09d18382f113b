//! Upload load benchmark (issue 18): N instructors at once, each uploading 16 MiB in 4 MiB
//! PATCHes and reading it back, on SQLite + files (the embedded default), PostgreSQL + files,
//! and two nodes sharing PostgreSQL + S3 with requests alternating between the nodes, all with
//! default settings, in one run. A client that is refused resumes from HEAD's offset up to 5
//! times, as the reference client did. Reports completed byte-identical uploads,
//! throughput, PATCH latency p50/p99, every status seen, peak RSS per node, and the ratio of
//! each setup's throughput to SQLite's.
//!
//! cargo build --release -p lectern -p lectern-bench
//! target/release/load --lectern target/release/lectern [--uploads 100,500] [--s3 http://127.0.0.1:5055]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use lectern_bench::{fresh_dir, Server};
use lectern_core::auth::{Keys, Role};
use sha2::{Digest, Sha256};

const SECRET: &str = "bench-secret-0123456789abcdef";
const MIB: usize = 1 << 20;

#[derive(Parser)]
struct Args {
    /// The lectern binary (release build).
    #[arg(long, default_value = "target/release/lectern")]
    lectern: PathBuf,
    /// Concurrent uploads per run, comma-separated.
    #[arg(long, default_value = "100,500")]
    uploads: String,
    /// MiB per upload.
    #[arg(long, default_value_t = 16)]
    size_mib: usize,
    /// MiB per PATCH.
    #[arg(long, default_value_t = 4)]
    chunk_mib: usize,
    /// PostgreSQL admin URL; a fresh database is created per run.
    #[arg(
        long,
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/postgres"
    )]
    postgres: String,
    /// S3-compatible endpoint for the two-node setup (empty skips it).
    #[arg(long, default_value = "http://127.0.0.1:5055")]
    s3: String,
    /// Where data folders go.
    #[arg(long, default_value = "target/bench-load")]
    dir: PathBuf,
    /// Only these setups (sqlite, pg, pg-s3-2nodes), comma-separated.
    #[arg(long)]
    only: Option<String>,
}

#[derive(Default)]
struct Tally {
    statuses: BTreeMap<String, usize>,
    patch_ms: Vec<f64>,
}

fn psql(admin: &str, sql: &str) -> anyhow::Result<()> {
    let ok = Command::new("psql")
        .args([admin, "-qc", sql])
        .status()?
        .success();
    anyhow::ensure!(ok, "psql {sql}");
    Ok(())
}

fn with_db(admin: &str, db: &str) -> String {
    match admin.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db}"),
        None => admin.to_string(),
    }
}

fn spawn(args: &Args, data: &std::path::Path, env: &[(String, String)]) -> anyhow::Result<Server> {
    let mut cmd = Command::new(&args.lectern);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--roles",
        "api,ingest,origin",
    ])
    .arg("--data-dir")
    .arg(data)
    .env("LECTERN_SECRET", SECRET)
    .env("LECTERN_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Server::spawn_announcing(cmd)
}

/// One client's bytes: the shared body with the client's number in its first 8 bytes.
fn first_chunk(shared: &Bytes, i: usize, chunk: usize) -> Bytes {
    let mut c = shared[..chunk.min(shared.len())].to_vec();
    c[..8].copy_from_slice(&(i as u64).to_le_bytes());
    Bytes::from(c)
}

fn expected_hash(shared: &Bytes, i: usize, chunk: usize) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(first_chunk(shared, i, chunk));
    h.update(&shared[chunk.min(shared.len())..]);
    h.finalize().to_vec()
}

async fn client(
    http: reqwest::Client,
    bases: Arc<Vec<String>>,
    token: Arc<String>,
    shared: Bytes,
    i: usize,
    chunk: usize,
    tally: Arc<Mutex<Tally>>,
) -> Option<String> {
    let note = |s: String| {
        *tally.lock().unwrap().statuses.entry(s).or_default() += 1;
    };
    let len = shared.len();
    let r = http
        .post(format!("{}/files/", bases[i % bases.len()]))
        .bearer_auth(token.as_str())
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", len)
        .send()
        .await;
    let r = match r {
        Ok(r) => r,
        Err(_) => {
            note("POST error".into());
            return None;
        }
    };
    note(format!("POST {}", r.status().as_u16()));
    if r.status() != 201 {
        return None;
    }
    let id = r.headers()["location"]
        .to_str()
        .ok()?
        .rsplit('/')
        .next()?
        .to_string();
    let mut off = 0usize;
    let mut retries = 0;
    let mut k = 0usize;
    while off < len {
        let base = &bases[(i + k) % bases.len()];
        k += 1;
        let end = (off + chunk).min(len);
        let body = if off == 0 {
            first_chunk(&shared, i, chunk).slice(..end)
        } else {
            shared.slice(off..end)
        };
        let t = Instant::now();
        let r = http
            .patch(format!("{base}/files/{id}"))
            .bearer_auth(token.as_str())
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Offset", off)
            .header("Content-Type", "application/offset+octet-stream")
            .body(body)
            .send()
            .await;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        tally.lock().unwrap().patch_ms.push(ms);
        match r {
            Ok(r) if r.status() == 204 => {
                note("PATCH 204".into());
                off = r.headers()["upload-offset"].to_str().ok()?.parse().ok()?;
                continue;
            }
            Ok(r) => note(format!("PATCH {}", r.status().as_u16())),
            Err(e) if e.is_connect() => note("PATCH connect error".into()),
            Err(_) => note("PATCH dropped connection".into()),
        }
        retries += 1;
        if retries > 5 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200 * retries)).await;
        let h = http
            .head(format!("{base}/files/{id}"))
            .bearer_auth(token.as_str())
            .header("Tus-Resumable", "1.0.0")
            .send()
            .await
            .ok()?;
        off = h
            .headers()
            .get("upload-offset")?
            .to_str()
            .ok()?
            .parse()
            .ok()?;
    }
    Some(id)
}

struct Outcome {
    completed: usize,
    mib_s: f64,
    p50: f64,
    p99: f64,
    statuses: BTreeMap<String, usize>,
    rss: Vec<f64>,
    videos: usize,
}

async fn run(args: &Args, setup: &str, n: usize, shared: &Bytes) -> anyhow::Result<Outcome> {
    let root = fresh_dir(&args.dir, &format!("{setup}-{n}"))?;
    let mut env = Vec::new();
    let db = format!("lectern_load_{}", lectern_core::new_id());
    if setup != "sqlite" {
        psql(&args.postgres, &format!("CREATE DATABASE {db}"))?;
        env.push(("LECTERN_DATABASE_URL".into(), with_db(&args.postgres, &db)));
    }
    let nodes = if setup == "pg-s3-2nodes" {
        env.push((
            "LECTERN_STORAGE".into(),
            format!("s3://lectern-load-{}", &lectern_core::new_id()[..16]),
        ));
        env.push(("LECTERN_S3_ENDPOINT".into(), args.s3.clone()));
        for (k, v) in [
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
        ] {
            if std::env::var(k).is_err() {
                env.push((k.into(), v.into()));
            }
        }
        let a = spawn(args, &root.join("a"), &env)?;
        let b = spawn(args, &root.join("b"), &env)?;
        vec![a, b]
    } else {
        vec![spawn(args, &root, &env)?]
    };
    let bases = Arc::new(nodes.iter().map(|s| s.base.clone()).collect::<Vec<_>>());
    let token =
        Arc::new(Keys::from_secret(SECRET).mint("bench", "org-load", Role::Instructor, 7200));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(n)
        .timeout(Duration::from_secs(600))
        .build()?;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let chunk = args.chunk_mib * MIB;
    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            tokio::spawn(client(
                http.clone(),
                bases.clone(),
                token.clone(),
                shared.clone(),
                i,
                chunk,
                tally.clone(),
            ))
        })
        .collect();
    let mut ids = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        if let Some(id) = t.await? {
            ids.push((i, id));
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let rss = nodes.iter().map(|s| s.peak_rss_mib()).collect();
    // Read every finished upload back and compare.
    let mut completed = 0;
    for (i, id) in &ids {
        let r = http
            .get(format!("{}/files/{id}", bases[0]))
            .bearer_auth(token.as_str())
            .send()
            .await?;
        if r.status() == 200 {
            let got = Sha256::digest(r.bytes().await?).to_vec();
            if got == expected_hash(shared, *i, chunk) {
                completed += 1;
            }
        }
    }
    let videos = count_videos(&http, &bases[0], &token).await?;
    drop(nodes);
    if setup != "sqlite" {
        let _ = psql(
            &args.postgres,
            &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        );
    }
    let _ = std::fs::remove_dir_all(&root);
    let t = tally.lock().unwrap();
    let mut ms = t.patch_ms.clone();
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| {
        ms.get(((ms.len() as f64 * p) as usize).min(ms.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    Ok(Outcome {
        completed,
        mib_s: (completed * shared.len()) as f64 / MIB as f64 / secs,
        p50: pct(0.50),
        p99: pct(0.99),
        statuses: t.statuses.clone(),
        rss,
        videos,
    })
}

async fn count_videos(http: &reqwest::Client, base: &str, token: &str) -> anyhow::Result<usize> {
    let mut n = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/api/v1/videos?limit=100");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: serde_json::Value = loop {
            let r = http.get(&url).bearer_auth(token).send().await?;
            if r.status() == 429 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            break r.json().await?;
        };
        n += page["videos"].as_array().map(|a| a.len()).unwrap_or(0);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return Ok(n),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut shared = vec![0u8; args.size_mib * MIB];
    let mut x = 0x9e3779b97f4a7c15u64;
    for b in shared.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let shared = Bytes::from(shared);
    let setups: Vec<&str> = ["sqlite", "pg", "pg-s3-2nodes"]
        .into_iter()
        .filter(|s| {
            args.only
                .as_deref()
                .is_none_or(|o| o.split(',').any(|x| x == *s))
        })
        .filter(|s| *s != "pg-s3-2nodes" || !args.s3.is_empty())
        .collect();
    println!(
        "| uploads | setup | completed byte-identical | throughput | vs SQLite | PATCH p50 / p99 | statuses | videos listed | peak RSS per node |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for n in args
        .uploads
        .split(',')
        .filter_map(|s| s.trim().parse::<usize>().ok())
    {
        let mut sqlite_rate = None;
        for setup in &setups {
            let o = run(&args, setup, n, &shared).await?;
            if *setup == "sqlite" {
                sqlite_rate = Some(o.mib_s);
            }
            let ratio = sqlite_rate
                .map(|r| format!("{:.2}×", o.mib_s / r))
                .unwrap_or_else(|| "—".into());
            let statuses: Vec<String> = o
                .statuses
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            let rss: Vec<String> = o.rss.iter().map(|r| format!("{r:.0} MiB")).collect();
            println!(
                "| {n} | {setup} | {}/{n} | {:.0} MiB/s | {ratio} | {:.0} / {:.0} ms | {} | {} | {} |",
                o.completed,
                o.mib_s,
                o.p50,
                o.p99,
                statuses.join(", "),
                o.videos,
                rss.join(", ")
            );
        }
    }
    Ok(())
}
