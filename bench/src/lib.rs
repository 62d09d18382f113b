//! Shared pieces of Lectern's benchmarks: spawning servers, timing, medians, peak RSS.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

pub mod load;

/// A server process under measurement; killed on drop.
pub struct Server {
    /// Base URL.
    pub base: String,
    /// The process.
    pub child: Child,
}

impl Server {
    /// Spawns `cmd`, whose first stdout line containing `http://` names its address.
    pub fn spawn_announcing(mut cmd: Command) -> anyhow::Result<Self> {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        loop {
            line.clear();
            if out.read_line(&mut line)? == 0 {
                anyhow::bail!("server exited before announcing its address");
            }
            if let Some(w) = line.split_whitespace().find(|w| w.starts_with("http://")) {
                let base = w.trim_end_matches('/').to_string();
                std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
                return Ok(Self { base, child });
            }
        }
    }

    /// Spawns `cmd` serving on `port` and waits until `probe_path` answers.
    pub fn spawn_on_port(mut cmd: Command, port: u16, probe_path: &str) -> anyhow::Result<Self> {
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        let base = format!("http://127.0.0.1:{port}");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                let _ = probe_path;
                return Ok(Self { base, child });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!("server on port {port} did not come up")
    }

    /// Peak resident set size so far, MiB (VmHWM).
    pub fn peak_rss_mib(&self) -> f64 {
        peak_rss_mib(self.child.id())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VmHWM of a process, MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_string)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Peak RSS (VmHWM), MiB, of the live child processes of `pid`: the encoder processes.
pub fn children_peak_rss_mib(pid: u32) -> f64 {
    let mut peak = 0.0f64;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(pid) {
            peak = peak.max(peak_rss_mib(child));
        }
    }
    peak
}

/// CPU seconds of `pid` and of its children that have been waited for.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime, stime, and cutime, cstime: the encoder runs in a child process of the server
    // (one per attempt, reaped when it ends), so its CPU is counted once it has been waited.
    let ticks: f64 = [11, 12, 13, 14]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz.max(1.0)
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// The median of a non-empty sample.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A fresh, empty directory.
pub fn fresh_dir(root: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let d = root.join(name);
    let _ = std::fs::remove_dir_all(&d);
    // On a `discard` mount the freed blocks are trimmed at the next journal commit; without
    // this they would be trimmed inside whichever measurement comes next.
    let _ = Command::new("sync").status();
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// Runs ffmpeg; returns its log (stderr), or fails with it.
pub fn ffmpeg(args: &[&str]) -> anyhow::Result<String> {
    let o = Command::new("ffmpeg").args(args).output()?;
    anyhow::ensure!(
        o.status.success(),
        "ffmpeg {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(String::from_utf8_lossy(&o.stderr).into_owned())
}

/// Uploads `body` in the creation request (tus creation-with-upload); returns the video id.
pub async fn tus_upload(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    body: Vec<u8>,
) -> anyhow::Result<String> {
    let r = http
        .post(format!("{base}/files/"))
        .bearer_auth(token)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", body.len())
        .header("Content-Type", "application/offset+octet-stream")
        .body(body)
        .send()
        .await?;
    anyhow::ensure!(r.status() == 201, "upload: {}", r.status());
    Ok(r.headers()["location"]
        .to_str()?
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string())
}

/// A 1080p30 source of `secs` seconds with a tone, made once under `work`: `lecture` (a slide
/// held 10 s at a time with a noisy webcam inset) or anything else for high motion with grain.
pub fn lecture_source(work: &Path, kind: &str, secs: u32) -> anyhow::Result<PathBuf> {
    let src = work.join(format!("{kind}-1080p30-{secs}s.mp4"));
    if src.exists() {
        return Ok(src);
    }
    let graph = match kind {
        // A slide held for 10 s at a time (testsrc2's detailed frame, its every 300th, held) with
        // a 480x270 webcam inset: moving content plus temporal sensor noise, as a talking head
        // over slides looks to an encoder.
        "lecture" => format!(
            "testsrc2=size=1920x1080:rate=30:duration={secs},select='not(mod(n\\,300))',fps=30,\
             tpad=stop_mode=clone:stop_duration={secs}[slides];\
             testsrc2=size=480x270:rate=30:duration={secs},noise=alls=10:allf=t[head];\
             [slides][head]overlay=x=W-w-40:y=H-h-40:shortest=1,format=yuv420p[v]"
        ),
        // Every pixel moves and carries grain: a sports clip or a handheld lab camera.
        _ => format!(
            "testsrc2=size=1920x1080:rate=30:duration={secs},noise=alls=12:allf=t,format=yuv420p[v]"
        ),
    };
    let tmp = work.join(format!("{kind}.tmp.mp4"));
    let (sine, secs) = (
        format!("sine=frequency=440:duration={secs}"),
        secs.to_string(),
    );
    // The source is encoded near-losslessly, so the ladder's cost is the ladder's.
    let mut cmd = vec![
        "-v",
        "error",
        "-y",
        "-filter_complex",
        &graph,
        "-f",
        "lavfi",
    ];
    cmd.extend(["-i", &sine, "-map", "[v]", "-map", "0:a", "-t", &secs]);
    cmd.extend("-c:v libx264 -preset fast -crf 16 -c:a aac -b:a 128k".split(' '));
    cmd.push(tmp.to_str().unwrap_or_default());
    ffmpeg(&cmd)?;
    std::fs::rename(&tmp, &src)?;
    Ok(src)
}

/// Every job the token can see, by video id (pages through the whole list).
pub async fn all_jobs(
    http: &reqwest::Client,
    base: &str,
    token: &str,
) -> anyhow::Result<HashMap<String, Value>> {
    let mut out = HashMap::new();
    let mut cursor = String::new();
    loop {
        let page: Value = http
            .get(format!(
                "{base}/api/v1/admin/jobs?limit=100&cursor={cursor}"
            ))
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        for j in page["jobs"].as_array().into_iter().flatten() {
            out.insert(j["id"].as_str().unwrap_or_default().to_string(), j.clone());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => return Ok(out),
        }
    }
}

/// Milliseconds since the epoch of an RFC 3339 field of a job.
pub fn job_ms(job: &Value, key: &str) -> Option<f64> {
    chrono::DateTime::parse_from_rfc3339(job[key].as_str()?)
        .ok()
        .map(|d| d.timestamp_millis() as f64)
}

/// Polls the job list until job `id` is `ready` (an error if it failed or an hour passed),
/// calling `tick` before every poll; returns the job.
pub async fn wait_ready(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    id: &str,
    mut tick: impl FnMut(),
) -> anyhow::Result<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(3600);
    loop {
        tick();
        let job = all_jobs(http, base, token)
            .await?
            .remove(id)
            .unwrap_or_default();
        match job["state"].as_str() {
            Some("ready") => return Ok(job),
            Some("failed") | Some("canceled") => anyhow::bail!("transcode failed: {job}"),
            _ => {}
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "transcode did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The built-in ladder with chunking at `chunk_s` (or off).
pub fn ladder_file(work: &Path, chunk_s: Option<u32>) -> anyhow::Result<PathBuf> {
    let text = lectern_core::ladder::DEFAULT_LADDER;
    let (threshold, len) = match chunk_s {
        Some(c) => (60.0, c),
        None => (0.0, 60),
    };
    let text = text
        .lines()
        .map(|l| {
            if l.starts_with("chunk_threshold_s") {
                format!("chunk_threshold_s = {threshold:.1}")
            } else if l.starts_with("chunk_s") {
                format!("chunk_s = {len}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = work.join(format!("ladder-{}.toml", chunk_s.unwrap_or(0)));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// `lectern serve` on its embedded defaults in `dir` (any port, one worker slot, quiet) with
/// the ladder in `pipeline`, as the transcode benchmarks run it.
pub fn serve_cmd(lectern: &Path, dir: &Path, secret: &str, pipeline: &Path) -> Command {
    let mut cmd = Command::new(lectern);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("LECTERN_SECRET", secret)
        .env("LECTERN_LOG", "warn")
        .env("LECTERN_WORKERS", "1")
        .env("LECTERN_PIPELINE", pipeline)
        .env_remove("DATABASE_URL");
    cmd
}

/// Concatenates a Lectern rung (init + segments) into one fragmented MP4.
pub fn lectern_rung_file(prefix: &Path, rung: &str, to: &Path) -> anyhow::Result<()> {
    let dir = prefix.join(rung);
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "m4s"))
        .collect();
    segs.sort();
    let mut bytes = std::fs::read(dir.join("init.mp4"))?;
    for s in segs {
        bytes.extend(std::fs::read(s)?);
    }
    std::fs::write(to, bytes)?;
    Ok(())
}

/// PSNR (average, dB) and SSIM (All) of a rung against the source. `at_source = false` scales the source down to
/// the rung with ffmpeg's bicubic (which favours an encoder that scaled the same way);
/// `true` scales the rung up to the source's size with lanczos and compares there, which
/// treats every downscaler alike.
pub fn quality(
    dist: &Path,
    src: &Path,
    w: u32,
    h: u32,
    at_source: bool,
) -> anyhow::Result<(f64, f64)> {
    let graph = if at_source {
        "[0:v]setpts=PTS-STARTPTS,scale=1920:1080:flags=lanczos,format=yuv420p,split[d1][d2];\
         [1:v]setpts=PTS-STARTPTS,format=yuv420p,split[r1][r2];\
         [d1][r1]psnr;[d2][r2]ssim"
            .to_string()
    } else {
        format!(
            "[0:v]setpts=PTS-STARTPTS,format=yuv420p,split[d1][d2];\
             [1:v]setpts=PTS-STARTPTS,scale={w}:{h}:flags=bicubic,format=yuv420p,split[r1][r2];\
             [d1][r1]psnr;[d2][r2]ssim"
        )
    };
    let log = ffmpeg(&[
        "-hide_banner",
        "-i",
        dist.to_str().unwrap(),
        "-i",
        src.to_str().unwrap(),
        "-lavfi",
        &graph,
        "-f",
        "null",
        "-",
    ])?;
    let grab = |key: &str, stop: char| -> Option<f64> {
        let at = log.rfind(key)? + key.len();
        log[at..]
            .split(|c: char| c == stop || c.is_whitespace())
            .next()?
            .parse()
            .ok()
    };
    let psnr = grab("average:", ' ').ok_or_else(|| anyhow::anyhow!("no PSNR in: {log}"))?;
    let ssim = grab("All:", ' ').ok_or_else(|| anyhow::anyhow!("no SSIM in: {log}"))?;
    Ok((psnr, ssim))
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(super::median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
