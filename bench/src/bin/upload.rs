//! Upload benchmark: 1 GiB (by default) over one connection, as one streaming PATCH and as
//! 8 MiB chunks, through Lectern (disk and S3), rustus (with fsync) and `dd conv=fdatasync`,
//! and the same S3 server's raw multipart rate through a stock client (boto3's transfer manager),
//! interleaved in one run. Prints medians, ratios and Lectern's peak RSS.
//!
//! cargo build --release -p lectern -p lectern-bench
//! target/release/upload --lectern target/release/lectern [--size-mib 1024] [--runs 3]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use base64::Engine;
use clap::Parser;
use lectern_bench::{free_port, fresh_dir, median, Server};
use lectern_core::auth::{Keys, Role};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

const SECRET: &str = "bench-secret-0123456789abcdef";
const CHUNK: usize = 8 * 1024 * 1024;

#[derive(Parser)]
struct Args {
    /// The lectern binary (release build).
    #[arg(long, default_value = "target/release/lectern")]
    lectern: PathBuf,
    /// rustus binary; skipped when missing.
    #[arg(long, default_value = "rustus")]
    rustus: String,
    /// s3s-fs binary for the S3 runs; skipped when missing.
    #[arg(long, default_value = "s3s-fs")]
    s3s_fs: String,
    /// Python with boto3 for the raw S3 peer; skipped when boto3 is missing.
    #[arg(long, default_value = "target/testenv/bin/python")]
    python: String,
    /// Upload size, MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Interleaved runs; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Only targets whose name contains this (e.g. `lectern`, `rustus`).
    #[arg(long)]
    only: Option<String>,
    /// Scratch folder (on the disk under test).
    #[arg(long, default_value = "target/bench-work")]
    work: PathBuf,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Stream,
    Chunks,
    ChunksSha256,
    /// boto3's `upload_file`: 8 MiB parts, its default 10 in flight.
    Multipart,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Stream => "1 streaming PATCH",
            Mode::Chunks => "8 MiB PATCHes",
            Mode::ChunksSha256 => "8 MiB PATCHes + sha256",
            Mode::Multipart => "multipart, 8 MiB parts",
        }
    }
}

struct Target {
    name: &'static str,
    modes: Vec<Mode>,
}

/// boto3's managed upload with its stock settings but the part size; prints its seconds.
/// The client is made before the clock starts, as Lectern's server is started before its.
const BOTO3: &str = r#"
import sys, time, boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
ep, path, part = sys.argv[1], sys.argv[2], int(sys.argv[3])
s3 = boto3.client("s3", endpoint_url=ep, aws_access_key_id="bench",
                  aws_secret_access_key="benchbench", region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"}))
cfg = TransferConfig(multipart_threshold=part, multipart_chunksize=part)
t = time.monotonic()
s3.upload_file(path, "bench", "raw.bin", Config=cfg)
print(time.monotonic() - t)
"#;

fn have_boto3(python: &str) -> bool {
    Command::new(python)
        .args(["-c", "import boto3"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A fresh s3s-fs (bucket `bench`) under `dir`; returns it and its endpoint.
fn s3s_fs(args: &Args, dir: &Path) -> anyhow::Result<(Server, String)> {
    let port = free_port();
    let s3dir = fresh_dir(dir, "s3")?;
    std::fs::create_dir_all(s3dir.join("bench"))?;
    let mut cmd = Command::new(&args.s3s_fs);
    cmd.args([
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--access-key",
        "bench",
        "--secret-key",
        "benchbench",
    ])
    .arg(&s3dir);
    let s = Server::spawn_on_port(cmd, port, "/")?;
    Ok((s, format!("http://127.0.0.1:{port}")))
}

fn have(bin: &str) -> bool {
    Command::new(bin)
        .arg("--help")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Uploads `file` with tus; returns seconds from POST to the last byte acknowledged.
async fn tus_upload(
    http: &reqwest::Client,
    endpoint: &str,
    token: Option<&str>,
    file: &Path,
    size: u64,
    mode: Mode,
) -> anyhow::Result<f64> {
    let auth = |rb: reqwest::RequestBuilder| match token {
        Some(t) => rb.bearer_auth(t),
        None => rb,
    };
    // Checksums are computed before the clock starts: we measure the server's cost.
    let sums: Vec<String> = if mode == Mode::ChunksSha256 {
        let mut f = tokio::fs::File::open(file).await?;
        let mut buf = vec![0u8; CHUNK];
        let mut out = Vec::new();
        loop {
            let n = read_full(&mut f, &mut buf).await?;
            if n == 0 {
                break;
            }
            out.push(base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&buf[..n])));
        }
        out
    } else {
        Vec::new()
    };
    let start = Instant::now();
    let r = auth(http.post(endpoint))
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", size)
        .send()
        .await?;
    anyhow::ensure!(r.status() == 201, "create failed: {}", r.status());
    let loc = r.headers()["location"].to_str()?.to_string();
    let url = if loc.starts_with("http") {
        loc
    } else {
        format!("{}{}", endpoint.split("/files").next().unwrap_or(""), loc)
    };
    let patch = |offset: u64| {
        auth(http.patch(&url))
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Offset", offset)
            .header("Content-Type", "application/offset+octet-stream")
    };
    match mode {
        Mode::Stream => {
            let f = tokio::fs::File::open(file).await?;
            let body =
                reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(f, 1 << 20));
            let r = patch(0)
                .header("Content-Length", size)
                .body(body)
                .send()
                .await?;
            anyhow::ensure!(r.status() == 204, "PATCH failed: {}", r.status());
        }
        Mode::Chunks | Mode::ChunksSha256 => {
            let mut f = tokio::fs::File::open(file).await?;
            let mut offset = 0u64;
            let mut i = 0;
            loop {
                let mut buf = vec![0u8; CHUNK];
                let n = read_full(&mut f, &mut buf).await?;
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                let mut rb = patch(offset);
                if let Some(s) = sums.get(i) {
                    rb = rb.header("Upload-Checksum", format!("sha256 {s}"));
                }
                let r = rb.body(buf).send().await?;
                anyhow::ensure!(r.status() == 204, "PATCH failed: {}", r.status());
                offset += n as u64;
                i += 1;
            }
        }
        Mode::Multipart => anyhow::bail!("multipart is not a tus mode"),
    }
    Ok(start.elapsed().as_secs_f64())
}

async fn read_full(f: &mut tokio::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let m = f.read(&mut buf[n..]).await?;
        if m == 0 {
            break;
        }
        n += m;
    }
    Ok(n)
}

fn write_source(path: &Path, size: u64) -> anyhow::Result<()> {
    if std::fs::metadata(path).map(|m| m.len()).ok() == Some(size) {
        return Ok(());
    }
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x: u64 = 0x9E3779B97F4A7C15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..size / block.len() as u64 {
        for c in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        }
        f.write_all(&block)?;
    }
    f.flush()?;
    Ok(())
}

/// Keeps the highest peak RSS seen for a target.
fn note_rss(rss: &mut std::collections::BTreeMap<String, f64>, target: &str, s: &Server) {
    let e = rss.entry(target.into()).or_default();
    *e = e.max(s.peak_rss_mib());
}

fn lectern_server(args: &Args, dir: &Path, s3: Option<&str>) -> anyhow::Result<Server> {
    let mut cmd = Command::new(&args.lectern);
    cmd.args([
        "serve",
        "--roles",
        "api,ingest,origin",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
    ])
    .arg(dir)
    .env("LECTERN_SECRET", SECRET)
    .env("LECTERN_LOG", "warn")
    .env_remove("DATABASE_URL");
    if let Some(ep) = s3 {
        cmd.env("LECTERN_STORAGE", "s3://bench")
            .env("LECTERN_S3_ENDPOINT", ep)
            .env("AWS_ACCESS_KEY_ID", "bench")
            .env("AWS_SECRET_ACCESS_KEY", "benchbench")
            .env("AWS_REGION", "us-east-1");
    }
    Server::spawn_announcing(cmd)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.work)?;
    let size = args.size_mib * 1024 * 1024;
    let src = args.work.join("source.bin");
    write_source(&src, size)?;
    let token = Keys::from_secret(SECRET).mint("bench", "bench", Role::Instructor, 86400);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()?;

    let mut targets = vec![
        Target {
            name: "dd conv=fdatasync",
            modes: vec![Mode::Stream],
        },
        Target {
            name: "lectern (disk)",
            modes: vec![Mode::Stream, Mode::Chunks, Mode::ChunksSha256],
        },
    ];
    if have(&args.s3s_fs) {
        targets.push(Target {
            name: "lectern (S3: s3s-fs)",
            modes: vec![Mode::Stream, Mode::Chunks],
        });
        if have_boto3(&args.python) {
            targets.push(Target {
                name: "boto3 (S3: s3s-fs)",
                modes: vec![Mode::Multipart],
            });
        } else {
            eprintln!(
                "no boto3 in {}: skipping the raw S3 peer (--python)",
                args.python
            );
        }
    } else {
        eprintln!("s3s-fs not found: skipping S3 runs (cargo install s3s-fs --version 0.14.1 --features binary --locked)");
    }
    if have(&args.rustus) {
        targets.push(Target {
            name: "rustus --force-fsync",
            modes: vec![Mode::Stream, Mode::Chunks],
        });
    } else {
        eprintln!("rustus not found: skipping it (cargo install rustus --features hashers)");
    }

    if let Some(only) = &args.only {
        targets.retain(|t| t.name.contains(only.as_str()));
    }
    let mut results: std::collections::BTreeMap<(String, &'static str), Vec<f64>> =
        Default::default();
    let mut rss: std::collections::BTreeMap<String, f64> = Default::default();
    for run in 0..args.runs {
        for t in &targets {
            for &mode in &t.modes {
                let dir = fresh_dir(&args.work, "target")?;
                let secs = match t.name {
                    "dd conv=fdatasync" => {
                        let start = Instant::now();
                        let st = Command::new("dd")
                            .arg(format!("if={}", src.display()))
                            .arg(format!("of={}", dir.join("out").display()))
                            .args(["bs=8M", "conv=fdatasync", "status=none"])
                            .status()?;
                        anyhow::ensure!(st.success(), "dd failed");
                        start.elapsed().as_secs_f64()
                    }
                    "lectern (disk)" => {
                        let s = lectern_server(&args, &dir, None)?;
                        let secs = tus_upload(
                            &http,
                            &format!("{}/files/", s.base),
                            Some(&token),
                            &src,
                            size,
                            mode,
                        )
                        .await?;
                        note_rss(&mut rss, t.name, &s);
                        secs
                    }
                    "boto3 (S3: s3s-fs)" => {
                        let (_s3, ep) = s3s_fs(&args, &dir)?;
                        let out = Command::new(&args.python)
                            .args(["-c", BOTO3, &ep])
                            .arg(&src)
                            .arg(CHUNK.to_string())
                            .output()?;
                        anyhow::ensure!(
                            out.status.success(),
                            "boto3 upload failed: {}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                        String::from_utf8(out.stdout)?.trim().parse::<f64>()?
                    }
                    "lectern (S3: s3s-fs)" => {
                        let (_s3, ep) = s3s_fs(&args, &dir)?;
                        let s = lectern_server(&args, &fresh_dir(&dir, "data")?, Some(&ep))?;
                        let secs = tus_upload(
                            &http,
                            &format!("{}/files/", s.base),
                            Some(&token),
                            &src,
                            size,
                            mode,
                        )
                        .await?;
                        note_rss(&mut rss, t.name, &s);
                        secs
                    }
                    _ => {
                        let port = free_port();
                        let mut cmd = Command::new(&args.rustus);
                        cmd.args([
                            "--host",
                            "127.0.0.1",
                            "--port",
                            &port.to_string(),
                            "--data-dir",
                        ])
                        .arg(&dir)
                        .args([
                            "--force-fsync",
                            "true",
                            "--url",
                            "/files",
                            "--max-body-size",
                            "2147483648",
                            "--log-level",
                            "ERROR",
                        ]);
                        let s = Server::spawn_on_port(cmd, port, "/files/")?;
                        tus_upload(&http, &format!("{}/files/", s.base), None, &src, size, mode)
                            .await?
                    }
                };
                eprintln!(
                    "run {} {:<24} {:<24} {:6.2} s  {:7.1} MB/s",
                    run + 1,
                    t.name,
                    mode.name(),
                    secs,
                    size as f64 / secs / 1e6
                );
                results
                    .entry((t.name.to_string(), mode.name()))
                    .or_default()
                    .push(secs);
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }

    let med = |t: &str, m: Mode| {
        results
            .get(&(t.to_string(), m.name()))
            .map(|v| median(v.clone()))
    };
    let dd = med("dd conv=fdatasync", Mode::Stream);
    println!(
        "Upload of {} MiB, median of {} interleaved runs\n",
        args.size_mib, args.runs
    );
    let boto3 = med("boto3 (S3: s3s-fs)", Mode::Multipart);
    println!("| target | mode | median s | MB/s | vs rustus | vs dd | vs boto3 (same S3) |");
    println!("|---|---|---|---|---|---|---|");
    for ((t, m), v) in &results {
        let secs = median(v.clone());
        let mode = [
            Mode::Stream,
            Mode::Chunks,
            Mode::ChunksSha256,
            Mode::Multipart,
        ]
        .into_iter()
        .find(|x| x.name() == *m)
        .unwrap();
        let vs_rustus = med("rustus --force-fsync", mode)
            .map(|r| format!("{:.2}×", r / secs))
            .unwrap_or("–".into());
        let vs_dd = dd
            .map(|d| format!("{:.2}×", d / secs))
            .unwrap_or("–".into());
        let vs_boto3 = match boto3 {
            Some(b) if t.contains("S3") => format!("{:.2}×", b / secs),
            _ => "–".into(),
        };
        println!(
            "| {t} | {m} | {secs:.2} | {:.0} | {vs_rustus} | {vs_dd} | {vs_boto3} |",
            size as f64 / secs / 1e6
        );
    }
    if let (Some(plain), Some(sum)) = (
        med("lectern (disk)", Mode::Chunks),
        med("lectern (disk)", Mode::ChunksSha256),
    ) {
        println!(
            "\nsha256 checksum cost (lectern disk, 8 MiB PATCHes): {:+.1}%",
            (sum / plain - 1.0) * 100.0
        );
    }
    for (t, r) in rss {
        println!("peak RSS {t}: {r:.0} MiB");
    }
    Ok(())
}
