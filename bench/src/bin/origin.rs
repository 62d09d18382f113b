//! Origin benchmark: wrk against Lectern's origin and against nginx serving the same files from
//! disk, configured as its operators run it (`worker_processes auto`, `sendfile`, `tcp_nopush`,
//! `open_file_cache`, keep-alive), in the same run and interleaved. Three cases:
//! - a signed media playlist (Lectern checks the HMAC signature on every request; nginx serves
//!   the static file with no check at all);
//! - the largest 1080p segment (about 4 MB), from Lectern's hot cache vs nginx sendfile;
//! - the same segment cold: a Lectern origin with no memory cache streams it from the disk
//!   store on every request (nginx still serves it from the page cache, as it would).
//!
//! Reports requests/s, throughput and p99 latency per side (median of `--runs`), the ratios
//! against nginx, and Lectern's peak RSS.
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
    /// Requests wrk gave up on after its 2 s timeout (reported, not fatal: a slow tail is a
    /// result; refused connections, resets and non-2xx answers still stop the run).
    timeouts: f64,
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
    let mut timeouts = 0.0;
    for l in out.lines() {
        anyhow::ensure!(!l.contains("Non-2xx"), "wrk saw errors:\n{out}");
        if let Some(e) = l.trim().strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 1"
            for part in e.split(',') {
                let mut w = part.split_whitespace();
                let (kind, n) = (w.next().unwrap_or(""), w.next().unwrap_or("0"));
                let n: f64 = n.parse().unwrap_or(0.0);
                if kind == "timeout" {
                    timeouts = n;
                } else {
                    anyhow::ensure!(n == 0.0, "wrk saw errors:\n{out}");
                }
            }
        }
    }
    Ok(Wrk {
        timeouts,
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

fn lectern(
    args: &Args,
    data: &Path,
    roles: &str,
    extra: &[(&str, String)],
) -> anyhow::Result<Server> {
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
    for (k, v) in extra {
        cmd.env(k, v);
    }
    Server::spawn_announcing(cmd)
}

/// An origin-only Lectern on `data` with a memory cache of `cache_mb` (0: every segment is
/// read from the disk store).
fn origin_node(args: &Args, data: &Path, cache_mb: u64) -> anyhow::Result<Server> {
    lectern(
        args,
        data,
        "origin",
        &[("LECTERN_ORIGIN_CACHE_MB", cache_mb.to_string())],
    )
}

/// Uploads and transcodes the source; returns the signed master URL (path and query).
async fn publish(args: &Args, data: &Path, src: &Path) -> anyhow::Result<String> {
    let server = lectern(args, data, "api,ingest,origin,worker", &[])?;
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
        r#"worker_processes auto;
worker_rlimit_nofile 65536;
daemon off;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
{user}
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  open_file_cache max=10000 inactive=60s;
  open_file_cache_valid 60s;
  open_file_cache_min_uses 1;
  open_file_cache_errors on;
  keepalive_timeout 65;
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

    // Only origins run during the measurement, as on origin nodes: one with its memory cache
    // (hot), one with none (cold: every segment request reads the disk store).
    let origin = origin_node(&args, &data, 256)?;
    let cold = origin_node(&args, &data, 0)?;
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

    let seg_path = format!("/v/{video}/{seg_rel}");
    let static_seg = format!("/videos/{video}/{seg_rel}");
    // Per case, the sides: (label, URL); nginx is last and the ratios are against it.
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        (
            "signed media playlist",
            vec![
                ("lectern", format!("{}{media_path}", origin.base)),
                ("nginx", format!("{}{static_media}", nginx.base)),
            ],
        ),
        (
            "1080p segment, hot",
            vec![
                ("lectern", format!("{}{seg_path}", origin.base)),
                ("nginx", format!("{}{static_seg}", nginx.base)),
            ],
        ),
        (
            "1080p segment, cold (disk store)",
            vec![
                ("lectern", format!("{}{seg_path}", cold.base)),
                ("nginx", format!("{}{static_seg}", nginx.base)),
            ],
        ),
    ];
    for (_, sides) in &cases {
        for (_, url) in sides {
            let r = http.get(url).send().await?;
            anyhow::ensure!(r.status() == 200, "{url}: {}", r.status());
        }
    }
    println!(
        "playlist {playlist_size} B, segment {seg} {size} B; wrk -t{} -c{} -d{}s, {} interleaved runs",
        args.threads, args.connections, args.secs, args.runs
    );
    let mut results: Vec<Vec<Vec<Wrk>>> = cases
        .iter()
        .map(|(_, sides)| vec![Vec::new(); sides.len()])
        .collect();
    for run in 0..args.runs {
        for (i, (name, sides)) in cases.iter().enumerate() {
            // Warm every side (Lectern's cache, nginx's page and file caches), then rotate who
            // goes first.
            for (_, url) in sides {
                wrk(&args, url, 1)?;
            }
            let n = sides.len();
            let mut line = format!("run {run} {name}:");
            for k in 0..n {
                let j = (k + run) % n;
                let (label, url) = &sides[j];
                let w = wrk(&args, url, args.secs)?;
                line += &format!(
                    " | {label} {:.0} rps {:.0} MB/s p99 {:.2} ms {} timeouts",
                    w.rps,
                    w.bytes_per_s / 1e6,
                    w.p99_ms,
                    w.timeouts
                );
                results[i][j].push(w);
            }
            println!("{line}");
        }
    }
    println!("\n| case | side | rps | MB/s | p99 ms | timeouts (all runs) | ratio (rps) |");
    println!("|---|---|---|---|---|---|---|");
    for ((name, sides), per_side) in cases.iter().zip(&results) {
        let m = |v: &Vec<Wrk>, f: fn(&Wrk) -> f64| median(v.iter().map(f).collect());
        let nginx_rps = m(per_side.last().expect("nginx side"), |w| w.rps);
        for ((label, _), v) in sides.iter().zip(per_side) {
            let rps = m(v, |w| w.rps);
            println!(
                "| {name} | {label} | {rps:.0} | {:.0} | {:.2} | {} | **{:.2}×** |",
                m(v, |w| w.bytes_per_s) / 1e6,
                m(v, |w| w.p99_ms),
                v.iter().map(|w| w.timeouts).sum::<f64>(),
                rps / nginx_rps
            );
        }
    }
    println!(
        "\nlectern peak RSS {:.0} MiB (hot origin), {:.0} MiB (cold origin)",
        origin.peak_rss_mib(),
        cold.peak_rss_mib()
    );
    Ok(())
}
