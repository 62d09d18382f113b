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
    /// Also run the mixed run (uploads, learners' heartbeats and players at once) on SQLite
    /// and PostgreSQL.
    #[arg(long)]
    mixed: bool,
    /// Uploads of the mixed run.
    #[arg(long, default_value_t = 100)]
    mixed_uploads: usize,
    /// Learners of the mixed run (one heartbeat every 10 s each).
    #[arg(long, default_value_t = 2000)]
    learners: usize,
    /// Players of the mixed run.
    #[arg(long, default_value_t = 200)]
    players: usize,
    /// The lecture the players watch.
    #[arg(long, default_value = "testdata/videos/clip-720p.mp4")]
    clip: PathBuf,
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

/// What the mixed run measured for one kind of client.
struct Kind {
    name: &'static str,
    ms: Vec<f64>,
    errors: usize,
}

fn p99(ms: &mut [f64]) -> f64 {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    ms.get(((ms.len() as f64 * 0.99) as usize).min(ms.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0)
}

/// The URIs of a playlist (relative to `url`), and its `EXT-X-MAP` init segment.
fn playlist_uris(url: &str, text: &str) -> Vec<String> {
    let base = &url[..url.rfind('/').map(|i| i + 1).unwrap_or(0)];
    let mut out = Vec::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("#EXT-X-MAP:URI=\"") {
            out.push(format!("{base}{}", rest.trim_end_matches('"')));
        } else if !l.starts_with('#') && !l.trim().is_empty() {
            out.push(format!("{base}{}", l.trim()));
        }
    }
    out
}

/// 100 uploads while 2,000 learners send a heartbeat every 10 s and 200 players fetch
/// playlists and segments of a ready lecture, on one node of `setup`.
async fn mixed(args: &Args, setup: &str, shared: &Bytes) -> anyhow::Result<()> {
    let root = fresh_dir(&args.dir, &format!("mixed-{setup}"))?;
    let db = format!("lectern_load_{}", lectern_core::new_id());
    let mut env = vec![
        // One client address carries every learner and player here.
        ("LECTERN_RATE_LIMIT_IP_RPS".to_string(), "0".to_string()),
        ("LECTERN_RATE_LIMIT_USER_RPS".to_string(), "0".to_string()),
    ];
    if setup != "sqlite" {
        psql(&args.postgres, &format!("CREATE DATABASE {db}"))?;
        env.push(("LECTERN_DATABASE_URL".into(), with_db(&args.postgres, &db)));
    }
    let mut cmd = Command::new(&args.lectern);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&root)
        .env("LECTERN_SECRET", SECRET)
        .env("LECTERN_LOG", "warn");
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let node = Server::spawn_announcing(cmd)?;
    let base = node.base.clone();
    let keys = Keys::from_secret(SECRET);
    let admin = keys.mint("admin", "org-load", Role::Admin, 7200);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .timeout(Duration::from_secs(600))
        .build()?;
    // A ready lecture for the players, a course whose lessons the learners watch.
    let clip = tokio::fs::read(&args.clip).await?;
    let video = lectern_bench::tus_upload(&http, &base, &admin, clip).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let master = loop {
        let r = http
            .get(format!("{base}/api/v1/videos/{video}/playback"))
            .bearer_auth(&admin)
            .send()
            .await?;
        let v: serde_json::Value = r.json().await?;
        let st: serde_json::Value = http
            .get(format!("{base}/api/v1/videos/{video}"))
            .bearer_auth(&admin)
            .send()
            .await?
            .json()
            .await?;
        if st["state"] == "ready" {
            break v["url"].as_str().unwrap_or_default().to_string();
        }
        anyhow::ensure!(
            Instant::now() < deadline && st["state"] != "failed",
            "lecture not ready: {st}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let api = format!("{base}/api/v1");
    let course: serde_json::Value = http
        .post(format!("{api}/courses"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"title": "Load"}))
        .send()
        .await?
        .json()
        .await?;
    let course = course["id"].as_str().unwrap_or_default().to_string();
    let lesson: serde_json::Value = http
        .post(format!("{api}/courses/{course}/lessons"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"title": "Lesson", "video_id": video}))
        .send()
        .await?
        .json()
        .await?;
    let lesson = lesson["id"].as_str().unwrap_or_default().to_string();
    for i in 0..args.learners {
        let r = http
            .post(format!("{api}/courses/{course}/enrollments"))
            .bearer_auth(&admin)
            .json(&serde_json::json!({"user": format!("u{i}")}))
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "enroll: {}", r.status());
    }

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Learners: a heartbeat every 10 s each, staggered.
    let mut learners = Vec::new();
    for i in 0..args.learners {
        let (http, stop) = (http.clone(), stop.clone());
        let url = format!("{api}/lessons/{lesson}/progress");
        let token = keys.mint(&format!("u{i}"), "org-load", Role::Learner, 7200);
        let n = args.learners;
        learners.push(tokio::spawn(async move {
            let mut k = Kind {
                name: "heartbeat",
                ms: Vec::new(),
                errors: 0,
            };
            tokio::time::sleep(Duration::from_secs_f64(10.0 * i as f64 / n as f64)).await;
            let mut pos = 0.0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                let r = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&serde_json::json!({"position_s": pos, "watched": [[0.0, pos]]}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => {
                        k.ms.push(t.elapsed().as_secs_f64() * 1000.0)
                    }
                    _ => k.errors += 1,
                }
                pos += 1.0;
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            k
        }));
    }
    // Players: master, a media playlist, its init and segments, over and over.
    let mut players = Vec::new();
    for _ in 0..args.players {
        let (http, stop, master) = (http.clone(), stop.clone(), master.clone());
        players.push(tokio::spawn(async move {
            let mut k = Kind {
                name: "player request",
                ms: Vec::new(),
                errors: 0,
            };
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut queue = vec![master.clone()];
                while let Some(u) = queue.pop() {
                    let t = Instant::now();
                    match http.get(&u).send().await {
                        Ok(r) if r.status().is_success() => {
                            let body = r.bytes().await.unwrap_or_default();
                            k.ms.push(t.elapsed().as_secs_f64() * 1000.0);
                            if u.contains(".m3u8") {
                                let text = String::from_utf8_lossy(&body);
                                let mut uris = playlist_uris(&u, &text);
                                if text.contains("#EXT-X-STREAM-INF") {
                                    uris.truncate(1);
                                }
                                uris.reverse();
                                queue.extend(uris);
                            }
                        }
                        _ => k.errors += 1,
                    }
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                }
            }
            k
        }));
    }
    // The uploads, measured as in the upload runs.
    let bases = Arc::new(vec![base.clone()]);
    let token = Arc::new(keys.mint("bench", "org-load", Role::Instructor, 7200));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let chunk = args.chunk_mib * MIB;
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.mixed_uploads)
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
    let mut done = 0;
    for t in tasks {
        if t.await?.is_some() {
            done += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    // Learners and players keep going for at least two heartbeat rounds.
    tokio::time::sleep_until((started + Duration::from_secs(20)).into()).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut kinds = Vec::new();
    for (name, hs) in [("heartbeat", learners), ("player request", players)] {
        let mut all = Kind {
            name,
            ms: Vec::new(),
            errors: 0,
        };
        for h in hs {
            let k = h.await?;
            all.ms.extend(k.ms);
            all.errors += k.errors;
        }
        kinds.push(all);
    }
    let rss = node.peak_rss_mib();
    drop(node);
    if setup != "sqlite" {
        let _ = psql(
            &args.postgres,
            &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        );
    }
    let _ = std::fs::remove_dir_all(&root);
    let mut t = tally.lock().unwrap();
    let statuses: Vec<String> = t
        .statuses
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    println!(
        "| {setup} | uploads | {done}/{} in {secs:.0} s, {:.0} MiB/s | {:.0} ms | {} |",
        args.mixed_uploads,
        (done * shared.len()) as f64 / MIB as f64 / secs,
        p99(&mut t.patch_ms),
        statuses.join(", ")
    );
    for k in &mut kinds {
        println!(
            "| {setup} | {} | {} requests | {:.1} ms | {} errors |",
            k.name,
            k.ms.len(),
            p99(&mut k.ms),
            k.errors
        );
    }
    println!("| {setup} | node peak RSS | {rss:.0} MiB | | |");
    Ok(())
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
    if args.mixed {
        println!();
        println!("| setup | clients | done | p99 | statuses / errors |");
        println!("|---|---|---|---|---|");
        for setup in setups.iter().filter(|s| **s != "pg-s3-2nodes") {
            mixed(&args, setup, &shared).await?;
        }
    }
    Ok(())
}
