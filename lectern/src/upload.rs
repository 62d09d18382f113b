//! `lectern upload`: a tus client with a progress bar that resumes across runs.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lectern_core::auth::{Keys, Role};
use lectern_core::config::Config;
use reqwest::blocking::Client;
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

/// Arguments of `lectern upload`.
#[derive(Args)]
pub struct UploadArgs {
    /// The video file.
    file: PathBuf,
    /// Title shown to learners.
    #[arg(long)]
    title: Option<String>,
    /// Lesson to attach the video to when it is ready.
    #[arg(long)]
    lesson: Option<String>,
    /// Lectern base URL.
    #[arg(long, env = "LECTERN_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Bearer token (instructor or admin). Without it, one is minted from the local secret.
    #[arg(long, env = "LECTERN_TOKEN")]
    token: Option<String>,
    /// Data folder holding the local secret (to mint a token when none is given).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Org for a locally minted token.
    #[arg(long, default_value = "default")]
    org: String,
    /// Bytes per PATCH request.
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    chunk_size: usize,
    /// Queue behind interactive uploads (bulk import).
    #[arg(long)]
    bulk: bool,
    /// Return once uploaded, without waiting for the transcode.
    #[arg(long)]
    no_wait: bool,
    /// Upload this many parts of the file at once (tus concatenation), for fast links.
    #[arg(long, default_value_t = 1)]
    parallel: usize,
}

/// Runs the upload; prints the video id, then (unless `--no-wait`) the playback URL.
pub fn run(args: UploadArgs) -> anyhow::Result<()> {
    let token = match &args.token {
        Some(t) => t.clone(),
        None => {
            let mut cfg = Config::load(None, |k| std::env::var(k).ok())?;
            if let Some(d) = &args.data_dir {
                cfg.data_dir = d.clone();
            }
            let keys = Keys::load(cfg.secret.as_deref(), &cfg.data_dir, false)
                .map_err(|e| anyhow::anyhow!("{e}; or pass --token (see `lectern token`)"))?;
            keys.mint("cli", &args.org, Role::Instructor, 24 * 3600)
        }
    };
    let server = args.server.trim_end_matches('/').to_string();
    let client = Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(None)
        .build()?;
    let file = std::fs::File::open(&args.file)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", args.file.display()))?;
    let meta = file.metadata()?;
    let size = meta.len();
    let parallel = if size >= 2 * MIN_SPLIT {
        args.parallel.clamp(1, 16) as u64
    } else {
        1
    };
    let fingerprint = fingerprint(&server, &args.file, &meta, parallel)?;
    let mut state = ResumeState::load();
    let up = Uploader {
        client: &client,
        token: &token,
        path: &args.file,
        chunk: args.chunk_size.max(1),
    };

    // One upload per range: the whole file, or `parallel` partial uploads joined at the end.
    let ranges: Vec<(u64, u64)> = (0..parallel)
        .map(|i| (size * i / parallel, size * (i + 1) / parallel))
        .collect();
    let mut urls = state.urls.get(&fingerprint).cloned().unwrap_or_default();
    if urls.len() != ranges.len() || urls.iter().any(|u| up.offset(u).is_none()) {
        urls = ranges
            .iter()
            .map(|(a, b)| create(&client, &server, &token, &args, b - a, parallel > 1))
            .collect::<anyhow::Result<_>>()?;
        state.urls.insert(fingerprint.clone(), urls.clone());
        state.save();
    } else {
        eprintln!("resuming {}", args.file.display());
    }

    let bar = ProgressBar::new(size);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_message("uploading");
    let results: Vec<anyhow::Result<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = urls
            .iter()
            .zip(&ranges)
            .map(|(url, range)| {
                let (up, bar) = (&up, &bar);
                scope.spawn(move || up.send(url, *range, bar))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("upload thread panicked")))
            })
            .collect()
    });
    if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
        bar.abandon();
        return Err(e);
    }
    let url = if parallel > 1 {
        concat(&client, &server, &token, &args, &urls)?
    } else {
        urls[0].clone()
    };
    bar.finish_with_message("uploaded");
    state.urls.remove(&fingerprint);
    state.save();
    let id = url.rsplit('/').next().unwrap_or_default().to_string();
    println!("{id}");
    if args.no_wait {
        return Ok(());
    }
    let playback = wait_ready(&client, &server, &token, &id)?;
    println!("{playback}");
    Ok(())
}

/// Files smaller than twice this are not split into parallel parts.
const MIN_SPLIT: u64 = 8 * 1024 * 1024;

/// Sends byte ranges of one file to tus uploads.
struct Uploader<'a> {
    client: &'a Client,
    token: &'a str,
    path: &'a Path,
    chunk: usize,
}

impl Uploader<'_> {
    /// The server's offset for an upload, or `None` when it is gone.
    fn offset(&self, url: &str) -> Option<u64> {
        let r = self
            .client
            .head(url)
            .bearer_auth(self.token)
            .header("Tus-Resumable", "1.0.0")
            .send()
            .ok()?;
        if r.status() != StatusCode::OK {
            return None;
        }
        header_u64(&r, "upload-offset")
    }

    /// Uploads `range` of the file to `url`, from the server's offset, retrying with backoff.
    fn send(&self, url: &str, (start, end): (u64, u64), bar: &ProgressBar) -> anyhow::Result<()> {
        let mut file = std::fs::File::open(self.path)?;
        let len = end - start;
        let mut offset = self
            .offset(url)
            .ok_or_else(|| anyhow::anyhow!("upload {url} is gone; run the command again"))?;
        bar.inc(offset);
        let mut buf = vec![0u8; self.chunk];
        let mut failures = 0;
        while offset < len {
            let want = (len - offset).min(buf.len() as u64) as usize;
            file.seek(SeekFrom::Start(start + offset))?;
            file.read_exact(&mut buf[..want])?;
            let res = self
                .client
                .patch(url)
                .bearer_auth(self.token)
                .header("Tus-Resumable", "1.0.0")
                .header("Upload-Offset", offset)
                .header("Content-Type", "application/offset+octet-stream")
                .body(buf[..want].to_vec())
                .send();
            let before = offset;
            match res {
                Ok(r) if r.status() == StatusCode::NO_CONTENT => {
                    offset = header_u64(&r, "upload-offset").unwrap_or(offset + want as u64);
                    failures = 0;
                }
                Ok(r)
                    if r.status().is_client_error()
                        && r.status() != StatusCode::CONFLICT
                        && r.status() != StatusCode::LOCKED =>
                {
                    anyhow::bail!("server refused the upload: {}", error_text(r));
                }
                other => {
                    failures += 1;
                    if failures > 8 {
                        anyhow::bail!(
                            "upload keeps failing ({}); run the same command again to resume",
                            describe(other)
                        );
                    }
                    std::thread::sleep(Duration::from_millis(500 * (1 << failures.min(5))));
                    // Re-sync from the server, which knows how much it durably stored.
                    if let Some(o) = self.offset(url) {
                        offset = o;
                    }
                }
            }
            if offset >= before {
                bar.inc(offset - before);
            } else {
                bar.set_position(bar.position().saturating_sub(before - offset));
            }
        }
        Ok(())
    }
}

fn concat(
    client: &Client,
    server: &str,
    token: &str,
    args: &UploadArgs,
    urls: &[String],
) -> anyhow::Result<String> {
    let r = client
        .post(format!("{server}/files/"))
        .bearer_auth(token)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Concat", format!("final;{}", urls.join(" ")))
        .header("Upload-Metadata", metadata(args))
        .send()?;
    if r.status() != StatusCode::CREATED {
        anyhow::bail!("joining the parallel parts failed: {}", error_text(r));
    }
    location(&r)
}

/// The `Location` of a 201 answer.
fn location(r: &reqwest::blocking::Response) -> anyhow::Result<String> {
    r.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("server sent no Location"))
}

fn metadata(args: &UploadArgs) -> String {
    let name = args
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut meta = vec![
        format!("filename {}", B64.encode(&name)),
        format!("filetype {}", B64.encode(guess_type(&name))),
    ];
    if let Some(t) = &args.title {
        meta.push(format!("title {}", B64.encode(t)));
    }
    if let Some(l) = &args.lesson {
        meta.push(format!("lesson {}", B64.encode(l)));
    }
    if args.bulk {
        meta.push(format!("priority {}", B64.encode("bulk")));
    }
    meta.join(",")
}

fn create(
    client: &Client,
    server: &str,
    token: &str,
    args: &UploadArgs,
    size: u64,
    partial: bool,
) -> anyhow::Result<String> {
    let mut rb = client
        .post(format!("{server}/files/"))
        .bearer_auth(token)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", size);
    rb = if partial {
        rb.header("Upload-Concat", "partial")
    } else {
        rb.header("Upload-Metadata", metadata(args))
    };
    let r = rb
        .send()
        .map_err(|e| anyhow::anyhow!("cannot reach {server}: {e}; is `lectern serve` running?"))?;
    if r.status() != StatusCode::CREATED {
        anyhow::bail!("creating the upload failed: {}", error_text(r));
    }
    location(&r)
}

fn wait_ready(client: &Client, server: &str, token: &str, id: &str) -> anyhow::Result<String> {
    let bar = ProgressBar::new(1000);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {percent}% {elapsed}")
            .expect("static template")
            .progress_chars("=> "),
    );
    loop {
        let r = client
            .get(format!("{server}/api/v1/videos/{id}"))
            .bearer_auth(token)
            .send()?;
        if !r.status().is_success() {
            anyhow::bail!("status check failed: {}", error_text(r));
        }
        let v: serde_json::Value = r.json()?;
        let state = v["state"].as_str().unwrap_or("?").to_string();
        bar.set_message(state.clone());
        bar.set_position((v["progress"].as_f64().unwrap_or(0.0) * 1000.0) as u64);
        match state.as_str() {
            "ready" => break,
            "failed" | "canceled" => {
                bar.abandon();
                anyhow::bail!(
                    "transcode {state}: {} — {}",
                    v["error"]["code"],
                    v["error"]["message"]
                );
            }
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
    bar.finish_with_message("ready");
    let r = client
        .get(format!("{server}/api/v1/videos/{id}/playback"))
        .bearer_auth(token)
        .send()?;
    if !r.status().is_success() {
        anyhow::bail!("playback URL request failed: {}", error_text(r));
    }
    let v: serde_json::Value = r.json()?;
    v["url"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("playback response has no url"))
}

fn header_u64(r: &reqwest::blocking::Response, name: &str) -> Option<u64> {
    r.headers().get(name)?.to_str().ok()?.parse().ok()
}

fn error_text(r: reqwest::blocking::Response) -> String {
    let status = r.status();
    let body = r.text().unwrap_or_default();
    match serde_json::from_str::<serde_json::Value>(&body) {
        Ok(v) => format!(
            "{status}: {} ({})",
            v["message"].as_str().unwrap_or(&body),
            v["code"].as_str().unwrap_or("")
        ),
        Err(_) => format!("{status}: {body}"),
    }
}

fn describe(r: Result<reqwest::blocking::Response, reqwest::Error>) -> String {
    match r {
        Ok(r) => error_text(r),
        Err(e) => e.to_string(),
    }
}

fn guess_type(name: &str) -> &'static str {
    match name
        .rsplit('.')
        .next()
        .map(|e| e.to_ascii_lowercase())
        .as_deref()
    {
        Some("mp4" | "m4v") => "video/mp4",
        Some("mov") => "video/quicktime",
        Some("mkv") => "video/x-matroska",
        Some("webm") => "video/webm",
        _ => "application/octet-stream",
    }
}

fn fingerprint(
    server: &str,
    path: &Path,
    meta: &std::fs::Metadata,
    parallel: u64,
) -> anyhow::Result<String> {
    let canon = std::fs::canonicalize(path)?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default();
    let mut h = Sha256::new();
    h.update(format!(
        "{server}\n{}\n{}\n{}\n{parallel}",
        canon.display(),
        meta.len(),
        mtime.as_nanos()
    ));
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Upload URLs of unfinished uploads (one, or one per parallel part), keyed by file
/// fingerprint, kept between runs.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct ResumeState {
    urls: HashMap<String, Vec<String>>,
}

impl ResumeState {
    fn path() -> PathBuf {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        base.join("lectern").join("uploads.json")
    }

    fn load() -> Self {
        std::fs::read(Self::path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save(&self) {
        let p = Self::path();
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = p.with_extension("tmp");
        if std::fs::write(&tmp, serde_json::to_vec(self).unwrap_or_default()).is_ok() {
            let _ = std::fs::rename(tmp, p);
        }
    }
}
