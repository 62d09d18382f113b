//! Time to first playable: how long after an upload's last byte the playback endpoint hands
//! out a URL for a lecture that is still encoding, for 1-, 10- and 60-minute 1080p30 sources
//! (interleaved, median of `--runs`). Target: ≤ 10 s whatever the length.
//!
//! The sources are one generated minute looped with `-c copy` (a 60-minute lecture at about
//! 2 Mb/s, 0.9 GB), so making them is quick. Each video is deleted as soon as it is playable,
//! which cancels its transcode before the next one starts.
//!
//! With `--s3s-fs <binary>` Lectern stores on S3 (s3s-fs on loopback) and its worker reads
//! the source in place through presigned ranged GETs (`--minutes 136` is a 2 GiB source).
//!
//! cargo build --release -p lectern -p lectern-bench
//! target/release/ttfp --lectern target/release/lectern [--minutes 1,10,60] [--runs 3] [--s3s-fs s3s-fs]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use lectern_bench::{ffmpeg, free_port, fresh_dir, median, Server};
use lectern_core::auth::{Keys, Role};

const SECRET: &str = "bench-secret-0123456789abcdef";

#[derive(Parser)]
struct Args {
    /// The lectern binary (release build).
    #[arg(long, default_value = "target/release/lectern")]
    lectern: PathBuf,
    /// Source lengths, minutes.
    #[arg(long, value_delimiter = ',', default_value = "1,10,60")]
    minutes: Vec<u32>,
    /// Runs per length, interleaved; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Scratch folder.
    #[arg(long, default_value = "target/bench-work/ttfp")]
    work: PathBuf,
    /// Store on S3 served by this s3s-fs binary (cargo install s3s-fs --version 0.14.1
    /// --features binary --locked) instead of the local disk.
    #[arg(long)]
    s3s_fs: Option<String>,
}

fn source(work: &Path, minutes: u32) -> anyhow::Result<PathBuf> {
    let one = work.join("lecture-1min-1080p.mp4");
    if !one.exists() {
        let tmp = work.join("one.tmp.mp4");
        ffmpeg(&[
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1920x1080:rate=30:duration=60",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=60:sample_rate=48000",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-b:v",
            "2M",
            "-g",
            "60",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-b:a",
            "96k",
            "-movflags",
            "+faststart",
            tmp.to_str().unwrap_or_default(),
        ])?;
        std::fs::rename(&tmp, &one)?;
    }
    if minutes == 1 {
        return Ok(one);
    }
    let out = work.join(format!("lecture-{minutes}min-1080p.mp4"));
    if !out.exists() {
        let tmp = work.join("long.tmp.mp4");
        ffmpeg(&[
            "-v",
            "error",
            "-y",
            "-stream_loop",
            &(minutes - 1).to_string(),
            "-i",
            one.to_str().unwrap_or_default(),
            "-c",
            "copy",
            "-movflags",
            "+faststart",
            tmp.to_str().unwrap_or_default(),
        ])?;
        std::fs::rename(&tmp, &out)?;
    }
    Ok(out)
}

/// Uploads `src` in one streaming PATCH; returns the seconds from its last byte to a playback
/// URL, then deletes the video.
async fn once(server: &Server, token: &str, src: &Path) -> anyhow::Result<f64> {
    let http = reqwest::Client::new();
    let len = std::fs::metadata(src)?.len();
    let r = http
        .post(format!("{}/files/", server.base))
        .bearer_auth(token)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", len)
        .send()
        .await?;
    anyhow::ensure!(r.status() == 201, "create: {}", r.status());
    let loc = r.headers()["location"].to_str()?.to_string();
    let id = loc.rsplit('/').next().unwrap_or_default().to_string();
    let file = tokio::fs::File::open(src).await?;
    let body =
        reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
    let r = http
        .patch(&loc)
        .bearer_auth(token)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Offset", 0)
        .header("Content-Length", len)
        .header("Content-Type", "application/offset+octet-stream")
        .body(body)
        .send()
        .await?;
    anyhow::ensure!(r.status() == 204, "patch: {}", r.status());
    let done = Instant::now();
    loop {
        let r = http
            .get(format!("{}/api/v1/videos/{id}/playback", server.base))
            .bearer_auth(token)
            .send()
            .await?;
        if r.status() == 200 {
            break;
        }
        anyhow::ensure!(done.elapsed() < Duration::from_secs(300), "never playable");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = done.elapsed().as_secs_f64();
    let r = http
        .delete(format!("{}/api/v1/videos/{id}", server.base))
        .bearer_auth(token)
        .send()
        .await?;
    anyhow::ensure!(r.status() == 204, "delete: {}", r.status());
    // Let the canceled attempt stop before the next upload competes with it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(secs)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.work)?;
    let work = args.work.canonicalize()?;
    let sources: Vec<(u32, PathBuf)> = args
        .minutes
        .iter()
        .map(|&m| source(&work, m).map(|p| (m, p)))
        .collect::<anyhow::Result<_>>()?;
    let data = fresh_dir(&work, "data")?;
    let mut cmd = Command::new(&args.lectern);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("LECTERN_SECRET", SECRET)
        .env("LECTERN_LOG", "warn")
        .env_remove("DATABASE_URL");
    // Kept alive for the whole run.
    let mut _s3 = None;
    if let Some(bin) = &args.s3s_fs {
        let port = free_port();
        let s3dir = fresh_dir(&work, "s3")?;
        std::fs::create_dir_all(s3dir.join("bench"))?;
        let mut s3 = Command::new(bin);
        s3.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", "bench", "--secret-key", "benchbench"])
            .arg(&s3dir);
        _s3 = Some(Server::spawn_on_port(s3, port, "/")?);
        cmd.env("LECTERN_STORAGE", "s3://bench")
            .env("LECTERN_S3_ENDPOINT", format!("http://127.0.0.1:{port}"))
            .env("AWS_ACCESS_KEY_ID", "bench")
            .env("AWS_SECRET_ACCESS_KEY", "benchbench")
            .env("AWS_REGION", "us-east-1");
    }
    let server = Server::spawn_announcing(cmd)?;
    let token = Keys::from_secret(SECRET).mint("bench", "bench", Role::Admin, 86400);
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); sources.len()];
    for run in 0..args.runs {
        for (i, (m, src)) in sources.iter().enumerate() {
            let t = once(&server, &token, src).await?;
            println!("run {run}: {m} min: first playable after {t:.2} s");
            times[i].push(t);
        }
    }
    let store = if args.s3s_fs.is_some() {
        "S3 (s3s-fs)"
    } else {
        "local disk"
    };
    println!(
        "\n| source (1080p30, 3 rungs + audio), {store} | size | time to first playable (median) | runs |"
    );
    println!("|---|---|---|---|");
    for ((m, src), t) in sources.iter().zip(times) {
        let mb = std::fs::metadata(src)?.len() as f64 / 1e6;
        let runs = t
            .iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ");
        println!("| {m} min | {mb:.0} MB | **{:.2} s** | {runs} |", median(t));
    }
    Ok(())
}
