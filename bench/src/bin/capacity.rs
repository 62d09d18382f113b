//! Capacity benchmark (issue 11): the measured figures behind `deploy/CAPACITY.md`.
//!
//! `cost`: CPU-seconds per source-second of the full ladder, on a lecture-like 1080p30 source
//! (a slide that changes every 10 s with a noisy webcam inset) and on a high-motion one
//! (full-frame motion with film grain), each through the real server on its embedded defaults
//! with one worker.
//!
//! `burst`: 100 instructors in unequal orgs (one of 40, the rest of 5) upload a tiny clip at the
//! same moment; reports upload p50/p95, the time until every video is `ready`, and per org the
//! longest queue wait and the last video's time to `ready`: "what happens if 100 instructors
//! upload simultaneously".
//!
//! cargo build --release -p lectern -p lectern-bench
//! target/release/capacity --lectern target/release/lectern [--only cost|burst] [--secs 30]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use lectern_bench::{
    all_jobs, children_peak_rss_mib, cpu_seconds, fresh_dir, job_ms as ms, lecture_source, median,
    wait_ready, Server,
};
use lectern_core::auth::{Keys, Role};

const SECRET: &str = "bench-secret-0123456789abcdef";

#[derive(Parser)]
struct Args {
    /// The lectern binary (release build).
    #[arg(long, default_value = "target/release/lectern")]
    lectern: PathBuf,
    /// Only one part: `cost` or `burst`.
    #[arg(long)]
    only: Option<String>,
    /// Source length of the cost runs, seconds.
    #[arg(long, default_value_t = 30)]
    secs: u32,
    /// Runs per source kind in the cost part; medians are reported.
    #[arg(long, default_value_t = 2)]
    runs: usize,
    /// Instructors in the burst.
    #[arg(long, default_value_t = 100)]
    instructors: usize,
    /// Instructors of the one large org; the rest are spread over orgs of `org_size`.
    #[arg(long, default_value_t = 40)]
    big_org: usize,
    /// Instructors per small org.
    #[arg(long, default_value_t = 5)]
    org_size: usize,
    /// The clip each instructor uploads.
    #[arg(long, default_value = "testdata/videos/clip-720p.mp4")]
    clip: PathBuf,
    /// Transcode slots of the burst's server (unset: Lectern's default for this machine).
    #[arg(long)]
    workers: Option<usize>,
    /// PostgreSQL admin URL: run the burst on a fresh database there instead of SQLite.
    #[arg(long)]
    postgres: Option<String>,
    /// Scratch folder.
    #[arg(long, default_value = "target/bench-work/capacity")]
    work: PathBuf,
}

fn spawn(args: &Args, dir: &Path, env: &[(&str, String)]) -> anyhow::Result<Server> {
    let mut cmd = Command::new(&args.lectern);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("LECTERN_SECRET", SECRET)
        .env("LECTERN_LOG", "warn")
        .env_remove("DATABASE_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Server::spawn_announcing(cmd)
}

/// One transcode of `src` through the real server with one worker.
struct Cost {
    wall_s: f64,
    cpu_s: f64,
    encoder_rss_mib: f64,
}

async fn transcode_cost(args: &Args, src: &Path, dir: &Path) -> anyhow::Result<Cost> {
    let server = spawn(args, dir, &[("LECTERN_WORKERS", "1".into())])?;
    let pid = server.child.id();
    let token = Keys::from_secret(SECRET).mint("bench", "bench", Role::Admin, 7200);
    let http = reqwest::Client::new();
    let body = tokio::fs::read(src).await?;
    let cpu0 = cpu_seconds(pid);
    let id = lectern_bench::tus_upload(&http, &server.base, &token, body).await?;
    let mut rss = 0.0f64;
    let job = wait_ready(&http, &server.base, &token, &id, || {
        rss = rss.max(children_peak_rss_mib(pid));
    })
    .await?;
    let cpu_s = cpu_seconds(pid) - cpu0;
    let wall_s =
        (ms(&job, "finished_at").unwrap_or(0.0) - ms(&job, "started_at").unwrap_or(0.0)) / 1000.0;
    Ok(Cost {
        wall_s,
        cpu_s,
        encoder_rss_mib: rss,
    })
}

async fn cost(args: &Args, work: &Path) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for kind in ["lecture", "motion"] {
        let src = lecture_source(work, kind, args.secs)?;
        let mut runs = Vec::new();
        for run in 0..args.runs {
            let dir = fresh_dir(work, &format!("cost-{kind}-{run}"))?;
            let c = transcode_cost(args, &src, &dir).await?;
            eprintln!(
                "{kind} run {run}: wall {:.2} s  cpu {:.2} s  encoder rss {:.0} MiB",
                c.wall_s, c.cpu_s, c.encoder_rss_mib
            );
            runs.push(c);
            let _ = std::fs::remove_dir_all(&dir);
        }
        rows.push((kind, runs));
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "\nLadder cost on {} s of 1080p30 (480p/720p/1080p + AAC), one worker on {cores} cores, median of {} runs\n",
        args.secs, args.runs
    );
    println!("| source | CPU s | CPU-s per source-s | wall s | real-time factor (wall/source) | encoder peak RSS MiB |\n|---|---|---|---|---|---|");
    for (kind, runs) in rows {
        let cpu = median(runs.iter().map(|c| c.cpu_s).collect());
        let wall = median(runs.iter().map(|c| c.wall_s).collect());
        let rss = runs.iter().map(|c| c.encoder_rss_mib).fold(0.0, f64::max);
        let secs = f64::from(args.secs);
        println!(
            "| {kind} | {cpu:.1} | **{:.2}** | {wall:.1} | {:.2}× | {rss:.0} |",
            cpu / secs,
            wall / secs
        );
    }
    Ok(())
}

async fn burst(args: &Args, work: &Path) -> anyhow::Result<()> {
    let dir = fresh_dir(work, "burst")?;
    let mut env: Vec<(&str, String)> = Vec::new();
    if let Some(w) = args.workers {
        env.push(("LECTERN_WORKERS", w.to_string()));
    }
    let db = format!("lectern_capacity_{}", lectern_core::new_id());
    if let Some(admin) = &args.postgres {
        let ok = Command::new("psql")
            .args([admin, "-qc", &format!("CREATE DATABASE {db}")])
            .status()?
            .success();
        anyhow::ensure!(ok, "could not create database {db}");
        let url = match admin.rsplit_once('/') {
            Some((b, _)) => format!("{b}/{db}"),
            None => admin.clone(),
        };
        env.push(("LECTERN_DATABASE_URL", url));
    }
    let server = spawn(args, &dir, &env)?;
    let pid = server.child.id();
    let keys = Keys::from_secret(SECRET);
    let operator = keys.mint("ops", "platform", Role::Operator, 7200);
    let clip = Arc::new(std::fs::read(&args.clip)?);
    let n = args.instructors;
    let org_of = |i: usize| {
        if i < args.big_org {
            "org-00".to_string()
        } else {
            format!("org-{:02}", 1 + (i - args.big_org) / args.org_size.max(1))
        }
    };
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(n)
        .timeout(Duration::from_secs(600))
        .build()?;
    let cpu0 = cpu_seconds(pid);
    let gate = Arc::new(tokio::sync::Barrier::new(n + 1));
    let mut tasks = Vec::new();
    for i in 0..n {
        let (http, base, clip, gate) = (
            http.clone(),
            server.base.clone(),
            clip.clone(),
            gate.clone(),
        );
        let token = keys.mint(
            &format!("instructor-{i}"),
            &org_of(i),
            Role::Instructor,
            7200,
        );
        tasks.push(tokio::spawn(async move {
            gate.wait().await;
            let t = Instant::now();
            // tus as clients do it: create, then send the bytes.
            let r = http
                .post(format!("{base}/files/"))
                .bearer_auth(&token)
                .header("Tus-Resumable", "1.0.0")
                .header("Upload-Length", clip.len())
                .send()
                .await?;
            anyhow::ensure!(r.status() == 201, "POST {}", r.status());
            let loc = r.headers()["location"].to_str()?.to_string();
            let id = loc.rsplit('/').next().unwrap_or_default().to_string();
            let r = http
                .patch(format!("{base}/files/{id}"))
                .bearer_auth(&token)
                .header("Tus-Resumable", "1.0.0")
                .header("Upload-Offset", 0)
                .header("Content-Type", "application/offset+octet-stream")
                .body(clip.as_ref().clone())
                .send()
                .await?;
            anyhow::ensure!(r.status() == 204, "PATCH {}", r.status());
            anyhow::Ok((id, t.elapsed().as_secs_f64() * 1000.0))
        }));
    }
    gate.wait().await;
    let started = Instant::now();
    let wall0 = chrono::Utc::now().timestamp_millis() as f64;
    let mut uploads = Vec::new();
    let mut failed_uploads = BTreeMap::<String, usize>::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await? {
            Ok((id, ms)) => uploads.push((i, id, ms)),
            Err(e) => *failed_uploads.entry(e.to_string()).or_default() += 1,
        }
    }
    let uploads_done_s = started.elapsed().as_secs_f64();
    let mut peak_active = 0usize;
    let deadline = Instant::now() + Duration::from_secs(3600);
    let jobs = loop {
        let jobs = all_jobs(&http, &server.base, &operator).await?;
        let active = jobs
            .values()
            .filter(|j| matches!(j["state"].as_str(), Some("queued" | "processing")))
            .count();
        peak_active = peak_active.max(active);
        let done = uploads.iter().all(|(_, id, _)| {
            jobs.get(id).is_some_and(|j| {
                matches!(j["state"].as_str(), Some("ready" | "failed" | "canceled"))
            })
        });
        if done {
            break jobs;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the burst did not finish in an hour"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let cpu_s = cpu_seconds(pid) - cpu0;
    let rss = server.peak_rss_mib();
    drop(server);
    if let Some(admin) = &args.postgres {
        let _ = Command::new("psql")
            .args([
                admin,
                "-qc",
                &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
            ])
            .status();
    }

    let mut up_ms: Vec<f64> = uploads.iter().map(|u| u.2).collect();
    up_ms.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let pct = |p: f64| up_ms[((up_ms.len() as f64 * p).ceil() as usize).clamp(1, up_ms.len()) - 1];
    let mut last_ready_ms = 0.0f64;
    let mut states = BTreeMap::<String, usize>::new();
    // org -> (uploads, queue waits s, times to ready s from the burst's start)
    let mut orgs: BTreeMap<String, (usize, Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for (i, id, _) in &uploads {
        let j = &jobs[id];
        *states
            .entry(j["state"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
        let o = orgs.entry(org_of(*i)).or_default();
        o.0 += 1;
        if let (Some(q), Some(s), Some(f)) = (
            ms(j, "queued_at"),
            ms(j, "started_at"),
            ms(j, "finished_at"),
        ) {
            o.1.push((s - q) / 1000.0);
            o.2.push((f - wall0) / 1000.0);
            last_ready_ms = last_ready_ms.max(f - wall0);
        }
    }
    let workers = args
        .workers
        .map_or("Lectern's default".to_string(), |w| w.to_string());
    println!(
        "\nBurst: {n} instructors in {} orgs upload {} ({} KiB) at once; {} on the local store; workers: {workers}\n",
        orgs.len(),
        args.clip.display(),
        clip.len() / 1024,
        if args.postgres.is_some() { "PostgreSQL" } else { "SQLite" },
    );
    println!("| | value |\n|---|---|");
    println!("| uploads completed | {} of {n} |", uploads.len());
    for (e, c) in &failed_uploads {
        println!("| upload refused: {e} | {c} |");
    }
    println!(
        "| upload p50 / p95 / max (create + PATCH) | {:.0} / {:.0} / {:.0} ms |",
        pct(0.5),
        pct(0.95),
        pct(1.0)
    );
    println!("| all uploads acknowledged after | {uploads_done_s:.1} s |");
    println!(
        "| every video ready after | **{:.1} s** |",
        last_ready_ms / 1000.0
    );
    println!("| final states | {states:?} |");
    println!("| peak queued + processing (the KEDA query) | {peak_active} |");
    println!(
        "| server + encoders CPU | {cpu_s:.1} s ({:.2} s per clip) |",
        cpu_s / n as f64
    );
    println!("| server peak RSS | {rss:.0} MiB |");
    println!("\n| org | instructors | median queue wait s | longest queue wait s | last ready after s |\n|---|---|---|---|---|");
    for (org, (k, waits, ready)) in &orgs {
        if waits.is_empty() {
            println!("| {org} | {k} | – | – | – |");
            continue;
        }
        println!(
            "| {org} | {k} | {:.1} | {:.1} | {:.1} |",
            median(waits.clone()),
            waits.iter().copied().fold(0.0, f64::max),
            ready.iter().copied().fold(0.0, f64::max)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.work)?;
    let work = args.work.canonicalize()?;
    if args.only.as_deref().is_none_or(|o| o == "cost") {
        cost(&args, &work).await?;
    }
    if args.only.as_deref().is_none_or(|o| o == "burst") {
        burst(&args, &work).await?;
    }
    Ok(())
}
