//! Chunked transcoding benchmark (issue 13): a lecture-like 1080p30 source through the real
//! server, encoded in one pass and in chunks, in one run.
//!
//! Reports the chunking overhead (total CPU-seconds, chunked against single pass, both with one
//! worker slot so every chunk's time is its cost on this 2-core machine), the per-chunk times,
//! and from them a model of the critical path to `ready` on N two-core worker nodes: the queue
//! pick-up, the chunks spread over the nodes longest first (chunk 0, which also encodes the
//! whole sound, taken first, as the queue does), and the stitch. The model is checked against a real run with two worker
//! processes on this machine (which share its two cores, so it should match N = 1), and is
//! scaled to a 30-minute and a 2-hour lecture from the measured seconds per source-second.
//!
//! cargo build --release -p lectern -p lectern-bench
//! target/release/chunked --lectern target/release/lectern [--minutes 10] [--chunk-s 60]

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use lectern_bench::{cpu_seconds, fresh_dir, lecture_source, wait_ready, Server};
use lectern_core::auth::{Keys, Role};
use sqlx::Connection;

const SECRET: &str = "bench-secret-0123456789abcdef";

#[derive(Parser)]
struct Args {
    /// The lectern binary (release build).
    #[arg(long, default_value = "target/release/lectern")]
    lectern: PathBuf,
    /// Source length, minutes.
    #[arg(long, default_value_t = 10)]
    minutes: u32,
    /// Chunk length, seconds (a multiple of the ladder's 6 s segments).
    #[arg(long, default_value_t = 60)]
    chunk_s: u32,
    /// Skip the two-process check run.
    #[arg(long)]
    no_check: bool,
    /// Scratch folder.
    #[arg(long, default_value = "target/bench-work/chunked")]
    work: PathBuf,
}

fn spawn(args: &Args, dir: &Path, ladder: &Path, roles: &str) -> anyhow::Result<Server> {
    let mut cmd = lectern_bench::serve_cmd(&args.lectern, dir, SECRET, ladder);
    cmd.env("LECTERN_ROLES", roles);
    Server::spawn_announcing(cmd)
}

/// One transcode through the real server: wall seconds to `ready`, CPU seconds of the server
/// and its encoder children, and (chunked) every chunk's (kind, encode seconds, frames; none
/// for the last).
struct Run {
    wall_s: f64,
    cpu_s: f64,
    chunks: Vec<(String, f64, Option<i64>)>,
}

async fn run(
    args: &Args,
    src: &Path,
    dir: &Path,
    ladder: &Path,
    extra_worker: bool,
) -> anyhow::Result<Run> {
    let server = spawn(args, dir, ladder, "api,ingest,origin,worker")?;
    // A second worker process on the same data folder and database, as a second node would be.
    let peer = if extra_worker {
        Some(spawn(args, dir, ladder, "worker")?)
    } else {
        None
    };
    let pids: Vec<u32> = std::iter::once(server.child.id())
        .chain(peer.as_ref().map(|p| p.child.id()))
        .collect();
    let token = Keys::from_secret(SECRET).mint("bench", "bench", Role::Admin, 7200);
    let http = reqwest::Client::new();
    let body = tokio::fs::read(src).await?;
    let id = lectern_bench::tus_upload(&http, &server.base, &token, body).await?;
    let cpu0: f64 = pids.iter().map(|&p| cpu_seconds(p)).sum();
    let t0 = Instant::now();
    wait_ready(&http, &server.base, &token, &id, || {}).await?;
    let wall_s = t0.elapsed().as_secs_f64();
    let cpu_s = pids.iter().map(|&p| cpu_seconds(p)).sum::<f64>() - cpu0;
    let url = format!("sqlite://{}", dir.join("lectern.db").display());
    let mut db = sqlx::SqliteConnection::connect(&url).await?;
    let rows: Vec<(i64, String, Option<String>, Option<i64>)> = sqlx::query_as(
        "SELECT idx, kind, result, frames FROM chunks WHERE video_id = $1 ORDER BY idx",
    )
    .bind(&id)
    .fetch_all(&mut db)
    .await?;
    let chunks = rows
        .into_iter()
        .map(|(_, kind, result, frames)| {
            let secs = result
                .and_then(|r| serde_json::from_str::<serde_json::Value>(&r).ok())
                .and_then(|v| v["secs"].as_f64())
                .unwrap_or(0.0);
            (kind, secs, frames)
        })
        .collect();
    drop(peer);
    Ok(Run {
        wall_s,
        cpu_s,
        chunks,
    })
}

/// Time to `ready` on `nodes` workers: each takes the next task as it frees up (the first
/// `first` tasks in order, then the rest longest first), plus the queue pick-up and stitch.
fn critical_path(first: &[f64], rest: &[f64], nodes: usize, pickup_s: f64, stitch_s: f64) -> f64 {
    let mut rest = rest.to_vec();
    rest.sort_by(|a, b| b.total_cmp(a));
    let mut free = vec![0.0f64; nodes.max(1)];
    for t in first.iter().chain(&rest) {
        let (i, at) = free
            .iter()
            .copied()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .expect("at least one node");
        free[i] = at + pickup_s + t;
    }
    pickup_s + free.iter().copied().fold(0.0, f64::max) + stitch_s
}

/// Task times of a lecture of `secs` seconds, scaled from the measured seconds per
/// source-second of the video chunks and of the audio, which chunk 0 encodes for the whole
/// source: (chunk 0, the rest).
fn scaled(secs: f64, chunk_s: f64, video_per_s: f64, audio_per_s: f64) -> (Vec<f64>, Vec<f64>) {
    let first_len = (2.0 + chunk_s).min(secs);
    let mut rest = Vec::new();
    let mut at = first_len;
    while at < secs {
        let len = chunk_s.min(secs - at);
        rest.push(len * video_per_s);
        at += len;
    }
    (vec![first_len * video_per_s + secs * audio_per_s], rest)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.work)?;
    let work = std::fs::canonicalize(&args.work)?;
    let secs = args.minutes * 60;
    eprintln!("making a {secs} s lecture-like 1080p30 source…");
    let src = lecture_source(&work, "lecture", secs)?;
    let single_ladder = lectern_bench::ladder_file(&work, None)?;
    let chunked_ladder = lectern_bench::ladder_file(&work, Some(args.chunk_s))?;

    eprintln!("single pass, one worker slot…");
    let dir = fresh_dir(&work, "single")?;
    let single = run(&args, &src, &dir, &single_ladder, false).await?;
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("  wall {:.1} s  cpu {:.1} s", single.wall_s, single.cpu_s);

    eprintln!("chunked, one worker slot…");
    let dir = fresh_dir(&work, "chunked")?;
    let chunked = run(&args, &src, &dir, &chunked_ladder, false).await?;
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "  wall {:.1} s  cpu {:.1} s  {} tasks",
        chunked.wall_s,
        chunked.cpu_s,
        chunked.chunks.len()
    );

    let check = if args.no_check {
        None
    } else {
        eprintln!("chunked, two worker processes…");
        let dir = fresh_dir(&work, "two")?;
        let r = run(&args, &src, &dir, &chunked_ladder, true).await?;
        let _ = std::fs::remove_dir_all(&dir);
        eprintln!("  wall {:.1} s  cpu {:.1} s", r.wall_s, r.cpu_s);
        Some(r)
    };

    // (encode seconds, source seconds) of each video chunk; the source is 30 fps.
    let src_s = f64::from(secs);
    let mut video: Vec<(f64, f64)> = chunked
        .chunks
        .iter()
        .filter(|(k, _, _)| k == "video")
        .map(|(_, s, f)| (*s, f.map_or(0.0, |f| f as f64 / 30.0)))
        .collect();
    let known: f64 = video.iter().map(|v| v.1).sum();
    if let Some(last) = video.iter_mut().rev().find(|v| v.1 == 0.0) {
        last.1 = (src_s - known).max(0.0);
    }
    // Chunk 0 also encodes the sound of the whole source: its time past the other chunks'
    // rate is the audio's.
    let (later_s, later_len) = video
        .iter()
        .skip(1)
        .fold((0.0, 0.0), |(s, l), v| (s + v.0, l + v.1));
    let video_per_s = if later_len > 0.0 {
        later_s / later_len
    } else {
        video.iter().map(|v| v.0).sum::<f64>() / src_s
    };
    let audio_per_s = video
        .first()
        .map_or(0.0, |v| (v.0 - v.1 * video_per_s).max(0.0))
        / src_s;
    let video: Vec<f64> = video.iter().map(|v| v.0).collect();
    // The queue is polled every 250 ms; the stitch writes a few playlists.
    let (pickup, stitch) = (0.25, 0.1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    println!(
        "\n## Chunked transcoding, {} min lecture-like 1080p30, {} s chunks, full ladder, {cores} cores\n",
        args.minutes, args.chunk_s
    );
    println!("| run | wall s | CPU s | CPU ratio |\n|---|---|---|---|");
    println!(
        "| single pass, 1 slot | {:.1} | {:.1} | 1.000 |",
        single.wall_s, single.cpu_s
    );
    println!(
        "| chunked, 1 slot | {:.1} | {:.1} | **{:.3}** |",
        chunked.wall_s,
        chunked.cpu_s,
        chunked.cpu_s / single.cpu_s
    );
    if let Some(c) = &check {
        println!(
            "| chunked, 2 worker processes (same 2 cores) | {:.1} | {:.1} | {:.3} |",
            c.wall_s,
            c.cpu_s,
            c.cpu_s / single.cpu_s
        );
    }
    println!("\nPer task (encode seconds on this machine, one at a time):\n");
    println!("| task | kind | s |\n|---|---|---|");
    for (i, (k, s, f)) in chunked.chunks.iter().enumerate() {
        let what = match (i, f) {
            (0, _) => format!("{k} + the whole sound"),
            (_, Some(f)) => format!("{k}, {:.0} s", *f as f64 / 30.0),
            _ => format!("{k}, the rest"),
        };
        println!("| {i} | {what} | {s:.1} |");
    }
    let (first, rest): (Vec<f64>, Vec<f64>) = (
        vec![video.first().copied().unwrap_or(0.0)],
        video.iter().skip(1).copied().collect(),
    );
    println!(
        "\nModel: time to `ready` on N two-core workers (pick-up {pickup} s per task, stitch {stitch} s), from the measured task times:\n"
    );
    println!("| lecture | N = 1 | N = 4 | N = 12 | N = 24 |\n|---|---|---|---|---|");
    let row = |name: &str, first: &[f64], rest: &[f64]| {
        let cells: Vec<String> = [1, 4, 12, 24]
            .iter()
            .map(|&n| format!("{:.0} s", critical_path(first, rest, n, pickup, stitch)))
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    };
    row(&format!("this {} min source", args.minutes), &first, &rest);
    for (name, len) in [("30 min", 1800.0), ("2 h", 7200.0)] {
        let (f, r) = scaled(len, f64::from(args.chunk_s), video_per_s, audio_per_s);
        row(name, &f, &r);
    }
    if let Some(c) = &check {
        let predicted = critical_path(&first, &rest, 1, pickup, stitch);
        println!(
            "\nCheck: two worker processes sharing these {cores} cores took {:.1} s; the model for the same cores (N = 1) predicts {predicted:.1} s ({:+.1} %).",
            c.wall_s,
            (c.wall_s / predicted - 1.0) * 100.0
        );
    }
    println!(
        "\nSeconds of encoding per source-second: video chunks {video_per_s:.3}, audio (inside chunk 0, from its time past that rate) {audio_per_s:.4}."
    );
    Ok(())
}
