//! Origin benchmark: wrk against Lectern's origin and against nginx serving the same files from
//! disk (sendfile, keep-alive), in the same run and interleaved. Two cases:
//! - a signed media playlist (Lectern checks the HMAC signature on every request; nginx serves
//!   the static file with no check at all);
//! - the largest 1080p segment (about 4 MB), from Lectern's hot cache vs nginx sendfile.
//!
//! Reports requests/s, throughput and p99 latency per side (median of `--runs`), the ratios,
//! and Lectern's peak RSS.
//!
//! cargo build --release -p lectern -p lectern-bench
//! target/release/origin --lectern target/release/lectern [--runs 3] [--secs 10]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use lectern_bench::{free_port, fresh_dir, median, Server};
use lectern_core::auth::{Keys, Role};

const SECRET: &str = "bench-secret-0123456789abcdef";

#[derive(Parser)]
struct Args {
    /// The lectern binary (release build).
    #[arg(long, default_value = "target/release/lectern")]
    lectern: PathBuf,
    /// Interleaved runs per side and case; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 10)]
    secs: u32,
    /// Open connections (keep-alive).
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Scratch folder.
    #[arg(long, default_value = "target/bench-work/origin")]
    work: PathBuf,
}

/// What one wrk run measured.
#[derive(Debug, Clone, Copy)]
struct Wrk {
    rps: f64,
    bytes_per_s: f64,
    p99_ms: f64,
}

fn unit(v: &str, units: &[(&str, f64)]) -> Option<f64> {
    let v = v.trim();
    for (u, mult) in units {
        if let Some(n) = v.strip_suffix(u) {
            if let Ok(n) = n.parse::<f64>() {
                return Some(n * mult);
            }
        }
    }
    v.parse().ok()
}

fn parse_wrk(out: &str) -> anyhow::Result<Wrk> {
    let field = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_string()))
    };
    let rps = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no Requests/sec in wrk output:\n{out}"))?;
    // wrk's units are binary.
    let bytes = [
        ("GB", 1024.0 * 1024.0 * 1024.0),
        ("MB", 1024.0 * 1024.0),
        ("KB", 1024.0),
        ("B", 1.0),
    ];
    let bytes_per_s = field("Transfer/sec:")
        .and_then(|v| unit(&v, &bytes))
        .unwrap_or(0.0);
    let times = [("us", 1e-3), ("ms", 1.0), ("s", 1000.0)];
    let p99_ms = field("99%")
        .and_then(|v| unit(&v, &times))
        .ok_or_else(|| anyhow::anyhow!("no p99 in wrk output:\n{out}"))?;
    let errors = out
        .lines()
        .any(|l| l.contains("Non-2xx") || l.contains("Socket errors"));
    anyhow::ensure!(!errors, "wrk saw errors:\n{out}");
    Ok(Wrk {
        rps,
        bytes_per_s,
        p99_ms,
    })
}

fn wrk(args: &Args, url: &str, secs: u32) -> anyhow::Result<Wrk> {
    let o = Command::new("wrk")
        .args([
            "-t",
            &args.threads.to_string(),
            "-c",
            &args.connections.to_string(),
            "-d",
            &format!("{secs}s"),
            "--latency",
            url,
        ])
        .output()
        .map_err(|e| anyhow::anyhow!("wrk: {e} (apt-get install wrk)"))?;
    anyhow::ensure!(o.status.success(), "wrk failed");
    parse_wrk(&String::from_utf8_lossy(&o.stdout))
}

fn make_source(work: &Path) -> anyhow::Result<PathBuf> {
    let src = work.join("source-1080p30-14s.mp4");
    if src.exists() {
        return Ok(src);
    }
    // Noise keeps x264 at its full bitrate, so the 1080p segments are the ~4 MB of a real one.
    let o = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=1920x1080:rate=30:duration=14")
        .args(["-f", "lavfi", "-i", "sine=frequency=440:duration=14"])
        .args(["-vf", "noise=alls=20:allf=t", "-c:v", "libx264", "-preset"])
        .args([
            "veryfast", "-b:v", "12M", "-pix_fmt", "yuv420p", "-c:a", "aac",
        ])
        .arg(&src)
        .output()?;
    anyhow::ensure!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    Ok(src)
}

fn lectern(args: &Args, data: &Path, roles: &str) -> anyhow::Result<Server> {
    let mut cmd = Command::new(&args.lectern);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--roles",
        roles,
        "--data-dir",
    ])
    .arg(data)
    .env("LECTERN_SECRET", SECRET)
    .env("LECTERN_LOG", "warn")
    .env_remove("DATABASE_URL");
    Server::spawn_announcing(cmd)
}

/// Uploads and transcodes the source; returns the signed master URL (path and query).
async fn publish(args: &Args, data: &Path, src: &Path) -> anyhow::Result<String> {
    let server = lectern(args, data, "api,ingest,origin,worker")?;
    let token = Keys::from_secret(SECRET).mint("bench", "bench", Role::Admin, 86400);
    let http = reqwest::Client::new();
    let body = tokio::fs::read(src).await?;
    let id = lectern_bench::tus_upload(&http, &server.base, &token, body).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let st: serde_json::Value = http
            .get(format!("{}/api/v1/videos/{id}", server.base))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        match st["state"].as_str() {
            Some("ready") => break,
            Some("failed") | Some("canceled") => anyhow::bail!("transcode failed: {st}"),
            _ => {}
        }
        anyhow::ensure!(Instant::now() < deadline, "transcode did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pb: serde_json::Value = http
        .get(format!("{}/api/v1/videos/{id}/playback", server.base))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    let url = pb["url"].as_str().unwrap_or_default();
    Ok(url[url.find("/v/").unwrap_or(0)..].to_string())
}

fn nginx(work: &Path, root: &Path) -> anyhow::Result<Server> {
    let port = free_port();
    let dir = fresh_dir(work, "nginx")?;
    let d = dir.display();
    let conf = format!(
        r#"worker_processes 2;
daemon off;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
{user}
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  client_body_temp_path {d}/tmp-body;
  proxy_temp_path {d}/tmp-proxy;
  fastcgi_temp_path {d}/tmp-fcgi;
  uwsgi_temp_path {d}/tmp-uwsgi;
  scgi_temp_path {d}/tmp-scgi;
  types {{ application/vnd.apple.mpegurl m3u8; video/mp4 m4s mp4; }}
  server {{
    listen 127.0.0.1:{port};
    root {root};
  }}
}}
"#,
        root = root.display(),
        user = if unsafe { libc::geteuid() } == 0 {
            "user root root;"
        } else {
            ""
        }
    );
    std::fs::write(dir.join("nginx.conf"), conf)?;
    let mut cmd = Command::new("nginx");
    cmd.arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-p")
        .arg(&dir);
    Server::spawn_on_port(cmd, port, "/")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.work)?;
    let work = args.work.canonicalize()?;
    let src = make_source(&work)?;
    let data = fresh_dir(&work, "data")?;
    let master_path = publish(&args, &data, &src).await?;

    // Only the origin runs during the measurement, as on an origin node.
    let origin = lectern(&args, &data, "origin")?;
    let http = reqwest::Client::new();
    let master = http
        .get(format!("{}{master_path}", origin.base))
        .send()
        .await?
        .text()
        .await?;
    let variant = master
        .lines()
        .find(|l| l.contains("1080p/index.m3u8"))
        .ok_or_else(|| anyhow::anyhow!("no 1080p variant in {master}"))?;
    let (rel, query) = variant.split_once('?').unwrap_or((variant, ""));
    let video_dir = master_path.trim_start_matches("/v/");
    let video = video_dir.split('/').next().unwrap_or_default();
    let media_path = format!("/v/{video}/{rel}?{query}");
    let static_media = format!("/videos/{video}/{rel}");
    // The largest segment of the 1080p rung.
    let rung_dir = data
        .join("objects/videos")
        .join(video)
        .join(rel.trim_end_matches("/index.m3u8"));
    let (seg, size) = std::fs::read_dir(&rung_dir)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".m4s"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().map(|m| m.len()).unwrap_or(0),
            )
        })
        .max_by_key(|(_, n)| *n)
        .ok_or_else(|| anyhow::anyhow!("no segments in {}", rung_dir.display()))?;
    let seg_rel = format!("{}/{seg}", rel.trim_end_matches("/index.m3u8"));
    let playlist_size = std::fs::metadata(rung_dir.join("index.m3u8"))?.len();
    let nginx = nginx(&work, &data.join("objects"))?;

    let cases = [
        (
            "signed media playlist",
            media_path.clone(),
            static_media.clone(),
        ),
        (
            "1080p segment, hot",
            format!("/v/{video}/{seg_rel}"),
            format!("/videos/{video}/{seg_rel}"),
        ),
    ];
    for (_, l, n) in &cases {
        for url in [format!("{}{l}", origin.base), format!("{}{n}", nginx.base)] {
            let r = http.get(&url).send().await?;
            anyhow::ensure!(r.status() == 200, "{url}: {}", r.status());
        }
    }
    println!(
        "playlist {playlist_size} B, segment {seg} {size} B; wrk -t{} -c{} -d{}s, {} interleaved runs",
        args.threads, args.connections, args.secs, args.runs
    );
    let mut results: Vec<(Vec<Wrk>, Vec<Wrk>)> = vec![(Vec::new(), Vec::new()); cases.len()];
    for run in 0..args.runs {
        for (i, (name, l, n)) in cases.iter().enumerate() {
            let lu = format!("{}{l}", origin.base);
            let nu = format!("{}{n}", nginx.base);
            // Warm both (Lectern's cache, nginx's page cache), then alternate who goes first.
            wrk(&args, &lu, 1)?;
            wrk(&args, &nu, 1)?;
            let (a, b) = if run % 2 == 0 {
                let a = wrk(&args, &lu, args.secs)?;
                (a, wrk(&args, &nu, args.secs)?)
            } else {
                let b = wrk(&args, &nu, args.secs)?;
                (wrk(&args, &lu, args.secs)?, b)
            };
            println!(
                "run {run} {name}: lectern {:.0} rps {:.0} MB/s p99 {:.2} ms | nginx {:.0} rps {:.0} MB/s p99 {:.2} ms",
                a.rps,
                a.bytes_per_s / 1e6,
                a.p99_ms,
                b.rps,
                b.bytes_per_s / 1e6,
                b.p99_ms
            );
            results[i].0.push(a);
            results[i].1.push(b);
        }
    }
    println!("\n| case | side | rps | MB/s | p99 ms | ratio (rps) |");
    println!("|---|---|---|---|---|---|");
    for ((name, _, _), (l, n)) in cases.iter().zip(&results) {
        let m = |v: &Vec<Wrk>, f: fn(&Wrk) -> f64| median(v.iter().map(f).collect());
        let (lr, nr) = (m(l, |w| w.rps), m(n, |w| w.rps));
        println!(
            "| {name} | lectern | {lr:.0} | {:.0} | {:.2} | **{:.2}×** |",
            m(l, |w| w.bytes_per_s) / 1e6,
            m(l, |w| w.p99_ms),
            lr / nr
        );
        println!(
            "| {name} | nginx | {nr:.0} | {:.0} | {:.2} | 1.00× |",
            m(n, |w| w.bytes_per_s) / 1e6,
            m(n, |w| w.p99_ms)
        );
    }
    println!("\nlectern peak RSS {:.0} MiB", origin.peak_rss_mib());
    Ok(())
}
