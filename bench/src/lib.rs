//! Shared pieces of Lectern's benchmarks: spawning servers, timing, medians, peak RSS.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

#[cfg(test)]
mod tests {
    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(super::median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
