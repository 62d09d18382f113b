//! Ladder benchmark: Lectern's transcode of a 1080p30 source (probe, one GStreamer pipeline
//! for every rung, CMAF packaging, publishing) against ffmpeg's single-pass `split=3` ladder
//! with the same x264 preset, bitrates, VBV and GOP, interleaved A/B in one run. Reports wall
//! time, CPU seconds, peak RSS, and PSNR/SSIM of each rung against the source (ffmpeg's psnr
//! and ssim filters on both outputs).
//!
//! cargo build --release -p lectern -p lectern-bench
//! target/release/ladder --lectern target/release/lectern [--secs 20] [--runs 3]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use clap::Parser;
use lectern_bench::{
    children_peak_rss_mib, cpu_seconds, ffmpeg, fresh_dir, lectern_rung_file, median, quality,
    Server,
};
use lectern_core::auth::{Keys, Role};
use lectern_core::ladder::Ladder;

const SECRET: &str = "bench-secret-0123456789abcdef";

#[derive(Parser)]
struct Args {
    /// The lectern binary (release build).
    #[arg(long, default_value = "target/release/lectern")]
    lectern: PathBuf,
    /// Source length, seconds (1080p30 test pattern with moving content and a tone).
    #[arg(long, default_value_t = 20)]
    secs: u32,
    /// Interleaved runs per side; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Scratch folder.
    #[arg(long, default_value = "target/bench-work/ladder")]
    work: PathBuf,
}

/// What one run cost.
#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    wall_s: f64,
    cpu_s: f64,
    rss_mib: f64,
}

fn make_source(work: &Path, secs: u32) -> anyhow::Result<PathBuf> {
    let src = work.join(format!("source-1080p30-{secs}s.mp4"));
    if src.exists() {
        return Ok(src);
    }
    // testsrc2 moves and carries fine detail; a light noise overlay keeps x264 from coasting.
    let tmp = work.join("source.tmp.mp4");
    ffmpeg(&[
        "-v",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc2=size=1920x1080:rate=30:duration={secs}"),
        "-f",
        "lavfi",
        "-i",
        &format!("sine=frequency=440:duration={secs}"),
        "-vf",
        "noise=alls=12:allf=t",
        "-c:v",
        "libx264",
        "-preset",
        "fast",
        "-crf",
        "16",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-b:a",
        "192k",
        "-shortest",
        tmp.to_str().unwrap(),
    ])?;
    std::fs::rename(&tmp, &src)?;
    Ok(src)
}

/// Runs a command to completion and measures it with wait4 (CPU and peak RSS of the child).
fn measured(mut cmd: Command) -> anyhow::Result<Cost> {
    let started = Instant::now();
    let child = cmd.spawn()?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let wall_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(r == pid, "wait4 failed");
    anyhow::ensure!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "command failed: {cmd:?}"
    );
    std::mem::forget(child);
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Cost {
        wall_s,
        cpu_s: tv(ru.ru_utime) + tv(ru.ru_stime),
        rss_mib: ru.ru_maxrss as f64 / 1024.0,
    })
}

/// ffmpeg's ladder: decode once, `split`, scale and encode each rung with the ladder's x264
/// settings, AAC audio once. Fragmented MP4 output, like Lectern's CMAF.
fn ffmpeg_ladder(src: &Path, out: &Path, ladder: &Ladder) -> anyhow::Result<Cost> {
    let rungs = ladder.renditions_for(1920, 1080);
    let n = rungs.len();
    let mut graph = format!("[0:v]split={n}");
    for i in 0..n {
        graph.push_str(&format!("[s{i}]"));
    }
    for (i, r) in rungs.iter().enumerate() {
        graph.push_str(&format!(
            ";[s{i}]scale={}:{}:flags=bicubic,setsar=1[v{i}]",
            r.width, r.height
        ));
    }
    let gop = (30 * ladder.keyframe_interval_s).to_string();
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-y", "-i"])
        .arg(src)
        .args(["-filter_complex", &graph]);
    for (i, r) in rungs.iter().enumerate() {
        cmd.args(["-map", &format!("[v{i}]")])
            .args(["-c:v", "libx264", "-preset", &ladder.x264_preset])
            .args(["-profile:v", "high", "-pix_fmt", "yuv420p"])
            .args(["-b:v", &r.video_bitrate.to_string()])
            .args(["-maxrate", &r.maxrate.to_string()])
            .args(["-bufsize", &r.bufsize.to_string()])
            .args(["-g", &gop, "-keyint_min", &gop, "-sc_threshold", "0"])
            .args(["-movflags", "+frag_keyframe+empty_moov+default_base_moof"])
            .arg(out.join(format!("{}.mp4", r.name)));
    }
    cmd.args(["-map", "0:a", "-c:a", "aac", "-b:a"])
        .arg(ladder.audio.bitrate.to_string())
        .args(["-ac", "2", "-movflags", "+frag_keyframe+empty_moov"])
        .arg(out.join("audio.mp4"));
    measured(cmd)
}

/// One Lectern transcode through the real server: upload, then the job's own start-to-ready
/// time; CPU and peak RSS of the whole server process.
async fn lectern_ladder(args: &Args, src: &Path, dir: &Path) -> anyhow::Result<(Cost, PathBuf)> {
    // One pipeline against ffmpeg's one pass, however long the source (bench/chunked measures
    // chunking).
    let ladder = lectern_bench::ladder_file(dir, None)?;
    let cmd = lectern_bench::serve_cmd(&args.lectern, dir, SECRET, &ladder);
    let server = Server::spawn_announcing(cmd)?;
    let pid = server.child.id();
    let keys = Keys::from_secret(SECRET);
    let token = keys.mint("bench", "bench", Role::Admin, 3600);
    let http = reqwest::Client::new();
    let body = tokio::fs::read(src).await?;
    let cpu0 = cpu_seconds(pid);
    let id = lectern_bench::tus_upload(&http, &server.base, &token, body).await?;
    let mut encoder_rss = 0.0f64;
    let job = lectern_bench::wait_ready(&http, &server.base, &token, &id, || {
        encoder_rss = encoder_rss.max(children_peak_rss_mib(pid));
    })
    .await?;
    let cpu_s = cpu_seconds(pid) - cpu0;
    let t = |k: &str| lectern_bench::job_ms(&job, k).unwrap_or(0.0) / 1000.0;
    // The server and its encoder process run at once: their peaks add up.
    let cost = Cost {
        wall_s: t("finished_at") - t("started_at"),
        cpu_s,
        rss_mib: server.peak_rss_mib() + encoder_rss,
    };
    drop(server);
    let out = std::fs::read_dir(dir.join("objects/videos").join(&id))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("no output prefix"))??
        .path();
    Ok((cost, out))
}

/// Whether a file's first video stream uses B-frames (to show both encoders match).
fn has_b_frames(f: &Path) -> String {
    Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .args(["stream=has_b_frames,profile,level", "-of", "csv=p=0"])
        .arg(f)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.work)?;
    let work = args.work.canonicalize()?;
    let ladder = Ladder::default_ladder();
    eprintln!("source: {} s of 1080p30", args.secs);
    let src = make_source(&work, args.secs)?;
    let mut costs: BTreeMap<&str, Vec<Cost>> = BTreeMap::new();
    let mut last_lectern = None;
    let ff_out = fresh_dir(&work, "ffmpeg-out")?;
    for run in 0..args.runs {
        // Interleave, alternating who goes first, so drift on the machine hits both.
        for side in if run % 2 == 0 {
            ["lectern", "ffmpeg"]
        } else {
            ["ffmpeg", "lectern"]
        } {
            let cost = if side == "lectern" {
                let dir = fresh_dir(&work, &format!("lectern-{run}"))?;
                let (cost, prefix) = lectern_ladder(&args, &src, &dir).await?;
                last_lectern = Some(prefix);
                cost
            } else {
                ffmpeg_ladder(&src, &ff_out, &ladder)?
            };
            eprintln!(
                "run {run} {side:8} wall {:6.2} s  cpu {:6.2} s  rss {:6.1} MiB",
                cost.wall_s, cost.cpu_s, cost.rss_mib
            );
            costs.entry(side).or_default().push(cost);
        }
    }
    let med = |side: &str, f: fn(&Cost) -> f64| median(costs[side].iter().map(f).collect());
    println!(
        "\nLadder on {} s of 1080p30 (3 rungs, x264 {}), median of {} interleaved runs\n",
        args.secs, ladder.x264_preset, args.runs
    );
    println!("| | Lectern | ffmpeg split | ratio |\n|---|---|---|---|");
    for (name, f) in [
        ("wall s", (|c: &Cost| c.wall_s) as fn(&Cost) -> f64),
        ("CPU s", |c: &Cost| c.cpu_s),
        ("peak RSS MiB", |c: &Cost| c.rss_mib),
    ] {
        let (l, g) = (med("lectern", f), med("ffmpeg", f));
        println!("| {name} | {l:.2} | {g:.2} | {:.2}× |", l / g);
    }
    let busy = |side: &str| med(side, |c| c.cpu_s) / med(side, |c| c.wall_s);
    println!(
        "| cores busy | {:.2} | {:.2} | |",
        busy("lectern"),
        busy("ffmpeg")
    );
    println!("\n| rung | PSNR Lectern | PSNR ffmpeg | Δ dB | SSIM Lectern | SSIM ffmpeg | at 1080p: PSNR L · F (Δ) | B-frames/profile/level L · F |\n|---|---|---|---|---|---|---|---|");
    let prefix = last_lectern.expect("at least one run");
    for r in ladder.renditions_for(1920, 1080) {
        let lf = work.join(format!("lectern-{}.mp4", r.name));
        lectern_rung_file(&prefix, &r.name, &lf)?;
        let ff = ff_out.join(format!("{}.mp4", r.name));
        let (lp, ls) = quality(&lf, &src, r.width, r.height, false)?;
        let (fp, fs) = quality(&ff, &src, r.width, r.height, false)?;
        let (lu, _) = quality(&lf, &src, r.width, r.height, true)?;
        let (fu, _) = quality(&ff, &src, r.width, r.height, true)?;
        println!(
            "| {} | {lp:.2} | {fp:.2} | {:+.2} | {ls:.4} | {fs:.4} | {lu:.2} · {fu:.2} ({:+.2}) | {} · {} |",
            r.name,
            lp - fp,
            lu - fu,
            has_b_frames(&lf),
            has_b_frames(&ff)
        );
    }
    Ok(())
}
