//! Content-adaptive ladder benchmark: Lectern's fixed ladder against its capped-CRF ladder on
//! lecture-like sources (`testdata/lectures/generate.sh`: slides with a webcam inset, a screen
//! recording, and a high-motion control), each through the real server, one after the other
//! per source. Reports each rung's bytes per hour of video, its peak declared BANDWIDTH, SSIM
//! and PSNR against the source (ffmpeg's filters at the rung's size), and the CDN egress of
//! 1,000 learner-hours watched at the top rung.
//!
//! cargo build --release -p lectern -p lectern-bench
//! target/release/cae --lectern target/release/lectern [--secs 120] [--kinds slides,screen,motion]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use lectern_bench::{cpu_seconds, fresh_dir, lectern_rung_file, quality, Server};
use lectern_core::auth::{Keys, Role};
use lectern_core::ladder::Ladder;

const SECRET: &str = "bench-secret-0123456789abcdef";

#[derive(Parser)]
struct Args {
    /// The lectern binary (release build).
    #[arg(long, default_value = "target/release/lectern")]
    lectern: PathBuf,
    /// Source length, seconds (the slides change after 20, 40 and 60 s).
    #[arg(long, default_value_t = 120)]
    secs: u32,
    /// Sources to run.
    #[arg(long, default_value = "slides,screen,motion", value_delimiter = ',')]
    kinds: Vec<String>,
    /// CRFs of the capped-CRF ladders compared with the fixed one.
    #[arg(long, default_value = "16,20", value_delimiter = ',')]
    crf: Vec<u32>,
    /// Scratch folder.
    #[arg(long, default_value = "target/bench-work/cae")]
    work: PathBuf,
}

/// One rung's outcome.
#[derive(Debug, Clone, Default)]
struct Rung {
    bytes: u64,
    bandwidth: u64,
    psnr: f64,
    ssim: f64,
}

fn source(work: &Path, kind: &str, secs: u32) -> anyhow::Result<PathBuf> {
    let out = work.join(format!("{kind}-{secs}s.mp4"));
    if !out.exists() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/lectures/generate.sh");
        let st = Command::new("bash")
            .arg(script)
            .arg(kind)
            .arg(secs.to_string())
            .arg(&out)
            .status()?;
        anyhow::ensure!(st.success(), "generating the {kind} source failed");
    }
    Ok(out)
}

/// Transcodes `src` with the ladder in `pipeline`; returns the output prefix and CPU seconds.
async fn transcode(
    args: &Args,
    src: &Path,
    dir: &Path,
    pipeline: &Path,
) -> anyhow::Result<(PathBuf, f64)> {
    let cmd = lectern_bench::serve_cmd(&args.lectern, dir, SECRET, pipeline);
    let server = Server::spawn_announcing(cmd)?;
    let token = Keys::from_secret(SECRET).mint("bench", "bench", Role::Admin, 3600);
    let http = reqwest::Client::new();
    let cpu0 = cpu_seconds(server.child.id());
    let id =
        lectern_bench::tus_upload(&http, &server.base, &token, tokio::fs::read(src).await?).await?;
    lectern_bench::wait_ready(&http, &server.base, &token, &id, || {}).await?;
    let cpu = cpu_seconds(server.child.id()) - cpu0;
    drop(server);
    let prefix = std::fs::read_dir(dir.join("objects/videos").join(&id))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("no output prefix"))??
        .path();
    Ok((prefix, cpu))
}

/// Declared BANDWIDTH per rendition name, from the published master playlist.
fn bandwidths(prefix: &Path) -> anyhow::Result<BTreeMap<String, u64>> {
    let text = std::fs::read_to_string(prefix.join("master.m3u8"))?;
    let mut out = BTreeMap::new();
    let mut last = None;
    for line in text.lines() {
        if let Some(attrs) = line.strip_prefix("#EXT-X-STREAM-INF:") {
            last = attrs
                .split(',')
                .find_map(|a| a.strip_prefix("BANDWIDTH="))
                .and_then(|v| v.parse().ok());
        } else if let (Some(bw), false) = (last.take(), line.starts_with('#')) {
            out.insert(line.split('/').next().unwrap_or_default().to_string(), bw);
        }
    }
    Ok(out)
}

fn dir_bytes(d: &Path) -> anyhow::Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(d)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "m4s" || x == "mp4") {
            n += std::fs::metadata(p)?.len();
        }
    }
    Ok(n)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.work)?;
    let work = args.work.canonicalize()?;
    let base = lectern_bench::ladder_file(&work, None)?;
    let fixed_text = std::fs::read_to_string(&base)?;
    let mut ladders = vec![("fixed".to_string(), base.clone())];
    for crf in &args.crf {
        let text = fixed_text
            .replace("rate_control = \"fixed\"", "rate_control = \"capped-crf\"")
            .replace("crf = 20", &format!("crf = {crf}"));
        anyhow::ensure!(
            text.contains("capped-crf"),
            "the default ladder names its rate control"
        );
        let path = work.join(format!("ladder-crf{crf}.toml"));
        std::fs::write(&path, &text)?;
        ladders.push((format!("crf {crf}"), path));
    }
    let renditions = Ladder::parse(&fixed_text)?.renditions_for(1920, 1080);
    let hours = args.secs as f64 / 3600.0;
    let mut table = Vec::new();
    let mut egress = Vec::new();
    for kind in &args.kinds {
        let src = source(&work, kind, args.secs)?;
        let mut results: Vec<(String, BTreeMap<String, Rung>, f64)> = Vec::new();
        for (mode, ladder) in &ladders {
            let dir = fresh_dir(&work, &format!("{kind}-{}", mode.replace(' ', "")))?;
            let (prefix, cpu) = transcode(&args, &src, &dir, ladder).await?;
            let bw = bandwidths(&prefix)?;
            let mut rungs = BTreeMap::new();
            for r in &renditions {
                let file = work.join(format!("{kind}-{}.mp4", r.name));
                lectern_rung_file(&prefix, &r.name, &file)?;
                let (psnr, ssim) = quality(&file, &src, r.width, r.height, false)?;
                rungs.insert(
                    r.name.clone(),
                    Rung {
                        bytes: dir_bytes(&prefix.join(&r.name))?,
                        bandwidth: bw.get(&r.name).copied().unwrap_or(0),
                        psnr,
                        ssim,
                    },
                );
            }
            eprintln!("{kind} {mode}: CPU {cpu:.1} s");
            results.push((mode.clone(), rungs, cpu));
        }
        let mbh = |b: u64| b as f64 / 1e6 / hours;
        let fixed = &results[0].1;
        for (mode, capped, _) in &results[1..] {
            for r in &renditions {
                let (x, y) = (&fixed[&r.name], &capped[&r.name]);
                table.push(format!(
                    "| {kind} | {} | {mode} | {:.0} · {:.0} | **{:.2}×** | {:.0} k · {:.0} k | {:.4} · {:.4} ({:+.4}) | {:.2} · {:.2} ({:+.2}) |",
                    r.name,
                    mbh(x.bytes),
                    mbh(y.bytes),
                    y.bytes as f64 / x.bytes.max(1) as f64,
                    x.bandwidth as f64 / 1e3,
                    y.bandwidth as f64 / 1e3,
                    x.ssim,
                    y.ssim,
                    y.ssim - x.ssim,
                    x.psnr,
                    y.psnr,
                    y.psnr - x.psnr
                ));
            }
        }
        // 1,000 learner-hours at the top rung, with the 128 kb/s sound.
        let top = &renditions.last().expect("a rung").name;
        let audio = 128_000.0 / 8.0 * 3600.0;
        let cells: Vec<String> = results
            .iter()
            .map(|(m, r, cpu)| {
                let tb = (r[top].bytes as f64 / hours + audio) * 1000.0 / 1e12;
                format!("{m}: {tb:.2} TB ({cpu:.0} CPU s)")
            })
            .collect();
        egress.push(format!("| {kind} | {} |", cells.join(" · ")));
    }
    println!(
        "\nContent-adaptive ladder: {} s sources, fixed vs capped CRF (cap = the fixed rung's maxrate)\n",
        args.secs
    );
    println!("| source | rung | ladder | MB/h: fixed · capped | bytes ratio | BANDWIDTH: fixed · capped | SSIM: fixed · capped | PSNR dB: fixed · capped |");
    println!("|---|---|---|---|---|---|---|---|");
    for row in table {
        println!("{row}");
    }
    println!("\n| source | CDN egress per 1,000 learner-hours at 1080p (with the sound), and encode CPU |\n|---|---|");
    for row in egress {
        println!("{row}");
    }
    Ok(())
}
