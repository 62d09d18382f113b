//! tus extensions, S3, crash safety and multi-process locking, against the real binary.

mod common;

use std::time::Duration;

use base64::Engine;
use common::{Db, Opts, TestApp};
use lectern_core::auth::Role;
use sha2::{Digest, Sha256};

const MIB: usize = 1024 * 1024;

fn data(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn b64(d: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(d)
}

fn sha256(d: &[u8]) -> Vec<u8> {
    Sha256::digest(d).to_vec()
}

async fn patch_with(
    app: &TestApp,
    url: &str,
    token: &str,
    offset: u64,
    body: Vec<u8>,
    extra: &[(&str, String)],
) -> reqwest::Response {
    let mut rb = app
        .http
        .patch(url)
        .bearer_auth(token)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Offset", offset)
        .header("Content-Type", "application/offset+octet-stream");
    for (k, v) in extra {
        rb = rb.header(*k, v);
    }
    rb.body(body).send().await.unwrap()
}

/// Uploads in chunks of `chunk` bytes; returns the upload URL.
async fn upload_chunks(
    app: &TestApp,
    token: &str,
    bytes: &[u8],
    chunk: usize,
    meta: &str,
) -> String {
    let url = app.create_upload(token, bytes.len() as u64, meta).await;
    let mut off = 0;
    for c in bytes.chunks(chunk) {
        let r = app.patch(&url, token, off as u64, c.to_vec()).await;
        assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
        off += c.len();
    }
    url
}

#[tokio::test]
async fn checksum_and_deferred_length() {
    let app = Opts::new(Db::Sqlite).roles("api,ingest,origin").spawn();
    let t = app.token(Role::Instructor, "org-a");
    let r = app
        .http
        .post(format!("{}/files/", app.base))
        .bearer_auth(&t)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Defer-Length", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(
        r.headers().contains_key("upload-expires"),
        "expiration is advertised"
    );
    let url = r.headers()["location"].to_str().unwrap().to_string();
    let r = app
        .http
        .head(&url)
        .bearer_auth(&t)
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["upload-defer-length"], "1");
    assert!(!r.headers().contains_key("upload-length"));

    let body = data(1000, 1);
    let sha1 = b64(&sha1::Sha1::digest(&body));
    // A wrong digest: 460, and nothing stored.
    let r = patch_with(
        &app,
        &url,
        &t,
        0,
        body.clone(),
        &[("Upload-Checksum", format!("sha1 {}", b64(&[0u8; 20])))],
    )
    .await;
    assert_eq!(r.status().as_u16(), 460);
    assert_eq!(app.head(&url, &t).await.1, Some(0));
    let r = patch_with(
        &app,
        &url,
        &t,
        0,
        body.clone(),
        &[("Upload-Checksum", "crc32 AAAA".into())],
    )
    .await;
    assert_eq!(r.status(), 400);
    let r = patch_with(
        &app,
        &url,
        &t,
        0,
        body.clone(),
        &[("Upload-Checksum", format!("sha1 {sha1}"))],
    )
    .await;
    assert_eq!(r.status(), 204);
    // The last chunk declares the length (sha256 this time).
    let rest = data(500, 2);
    let r = patch_with(
        &app,
        &url,
        &t,
        1000,
        rest.clone(),
        &[
            ("Upload-Checksum", format!("sha256 {}", b64(&sha256(&rest)))),
            ("Upload-Length", "1500".into()),
        ],
    )
    .await;
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    let r = app
        .http
        .head(&url)
        .bearer_auth(&t)
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["upload-length"], "1500");
    assert_eq!(app.download(&url, &t).await, [body, rest].concat());
}

#[tokio::test]
async fn expired_uploads_are_swept_and_gone() {
    let app = Opts::new(Db::Sqlite)
        .roles("api,ingest,origin")
        .env("LECTERN_UPLOAD_EXPIRY", "2s")
        .spawn();
    let t = app.token(Role::Instructor, "org-a");
    let url = app.create_upload(&t, 100, "").await;
    let id = url.rsplit('/').next().unwrap().to_string();
    assert_eq!(app.patch(&url, &t, 0, vec![1; 10]).await.status(), 204);
    let mut status = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        status = app.head(&url, &t).await.0;
        if status == 410 {
            break;
        }
    }
    assert_eq!(status, 410, "an expired upload answers 410");
    let r = app
        .http
        .get(format!("{}/api/v1/videos/{id}", app.base))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "its video is gone too");
    assert!(
        !app.data.path().join("objects/tails").join(&id).exists()
            || std::fs::read_dir(app.data.path().join("objects/tails").join(&id))
                .unwrap()
                .next()
                .is_none()
    );
}

async fn concat_and_odd_chunks(app: TestApp) {
    let t = app.token(Role::Instructor, "org-c");
    // Chunks that never line up with the 8 MiB parts.
    let big = data(20 * MIB + 123, 3);
    let url = upload_chunks(&app, &t, &big, 3 * MIB + 7, "").await;
    assert_eq!(sha256(&app.download(&url, &t).await), sha256(&big));

    // Concatenation: a large partial (server-side copy), a small one in the middle, a last one.
    let parts = [data(6 * MIB, 4), data(MIB + 5, 5), data(9 * MIB + 1, 6)];
    let mut urls = Vec::new();
    for p in &parts {
        let r = app
            .http
            .post(format!("{}/files/", app.base))
            .bearer_auth(&t)
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Concat", "partial")
            .header("Upload-Length", p.len())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let u = r.headers()["location"].to_str().unwrap().to_string();
        for (i, c) in p.chunks(4 * MIB).enumerate() {
            assert_eq!(
                app.patch(&u, &t, (i * 4 * MIB) as u64, c.to_vec())
                    .await
                    .status(),
                204
            );
        }
        let id = u.rsplit('/').next().unwrap();
        let r = app
            .http
            .get(format!("{}/api/v1/videos/{id}", app.base))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "a partial upload is not a video");
        urls.push(u);
    }
    let r = app
        .http
        .post(format!("{}/files/", app.base))
        .bearer_auth(&t)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Concat", format!("final;{}", urls.join(" ")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let fin = r.headers()["location"].to_str().unwrap().to_string();
    let r = app
        .http
        .head(&fin)
        .bearer_auth(&t)
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert!(r.headers()["upload-concat"]
        .to_str()
        .unwrap()
        .starts_with("final;"));
    assert_eq!(
        r.headers()["upload-offset"],
        parts.iter().map(Vec::len).sum::<usize>().to_string()
    );
    assert_eq!(
        sha256(&app.download(&fin, &t).await),
        sha256(&parts.concat())
    );
    let id = fin.rsplit('/').next().unwrap();
    let st = app.status(&t, id).await;
    assert_ne!(
        st["state"], "uploading",
        "the final upload is a video, queued at once: {st}"
    );
    // A final upload over an unfinished partial is refused.
    let r = app
        .http
        .post(format!("{}/files/", app.base))
        .bearer_auth(&t)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Concat", "partial")
        .header("Upload-Length", 10)
        .send()
        .await
        .unwrap();
    let open = r.headers()["location"].to_str().unwrap().to_string();
    let r = app
        .http
        .post(format!("{}/files/", app.base))
        .bearer_auth(&t)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Concat", format!("final;{open}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn concatenation_and_odd_chunks_on_disk() {
    concat_and_odd_chunks(Opts::new(Db::Sqlite).roles("api,ingest,origin").spawn()).await;
}

#[tokio::test]
async fn concatenation_and_odd_chunks_on_s3() {
    concat_and_odd_chunks(
        Opts::new(Db::Sqlite)
            .s3()
            .roles("api,ingest,origin")
            .spawn(),
    )
    .await;
}

/// Streams `bytes` as one PATCH with a declared length, pausing after `pause_at` bytes until
/// told to go on; returns the channel that releases the rest.
fn slow_patch(
    app: &TestApp,
    url: &str,
    token: &str,
    bytes: Vec<u8>,
    pause_at: usize,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<reqwest::Response, reqwest::Error>>,
) {
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let len = bytes.len();
    let stream = futures::stream::unfold(
        (bytes, 0usize, Some(go_rx)),
        move |(bytes, pos, mut gate)| async move {
            if pos >= bytes.len() {
                return None;
            }
            if pos >= pause_at {
                if let Some(g) = gate.take() {
                    let _ = g.await;
                }
            }
            let end = (pos + 256 * 1024).min(bytes.len());
            let chunk = bytes::Bytes::copy_from_slice(&bytes[pos..end]);
            Some((Ok::<_, std::io::Error>(chunk), (bytes, end, gate)))
        },
    );
    let req = app
        .http
        .patch(url)
        .bearer_auth(token)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Offset", 0)
        .header("Content-Type", "application/offset+octet-stream")
        .header("Content-Length", len)
        .body(reqwest::Body::wrap_stream(stream));
    (go_tx, tokio::spawn(req.send()))
}

/// Streams a body that stalls after `sent` MiB, waits until `committed` MiB are durably
/// committed, kills the server, and resumes. Parts are 8 MiB on S3 and 64 MiB on disk.
async fn kill9_mid_patch(mut app: TestApp, sent: usize, committed: usize) {
    let t = app.token(Role::Instructor, "org-k");
    let src = data((sent + 10) * MIB + 77, 7);
    let url = app.create_upload(&t, src.len() as u64, "").await;
    let (_go, req) = slow_patch(&app, &url, &t, src.clone(), sent * MIB);
    let (sent, committed) = ((sent * MIB) as u64, (committed * MIB) as u64);
    // Wait until parts are durably committed, then kill the server mid-body.
    let mut off = 0;
    for _ in 0..400 {
        off = app.head(&url, &t).await.1.unwrap_or(0);
        if off >= committed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        off >= committed,
        "parts are committed while the body streams (offset {off})"
    );
    let old_base = app.base.clone();
    app.kill9_and_restart();
    let _ = req.await;
    let url = url.replace(&old_base, &app.base);
    let (status, off) = app.head(&url, &t).await;
    assert_eq!(status, 200);
    let off = off.unwrap();
    assert!(off <= sent, "HEAD never reports more than was sent ({off})");
    assert!(
        off >= committed,
        "what was committed survives the crash ({off})"
    );
    // Resume from the reported offset, in odd chunks. The dead process's writer lease
    // still stands for at most its lease time (10 s): until then the server answers 423 with
    // Retry-After, which tus clients retry.
    let mut pos = off as usize;
    let deadline = std::time::Instant::now() + Duration::from_secs(12);
    for c in src[pos..].chunks(5 * MIB + 3) {
        let r = loop {
            let r = app.patch(&url, &t, pos as u64, c.to_vec()).await;
            if r.status() == 423 && std::time::Instant::now() < deadline {
                assert_eq!(r.headers()["retry-after"], "1");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            break r;
        };
        assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
        pos += c.len();
    }
    assert_eq!(
        sha256(&app.download(&url, &t).await),
        sha256(&src),
        "byte-identical after kill -9 and resume"
    );
}

#[tokio::test]
async fn kill9_mid_patch_resumes_on_disk_and_sqlite() {
    kill9_mid_patch(
        Opts::new(Db::Sqlite).roles("api,ingest,origin").spawn(),
        140,
        128,
    )
    .await;
}

#[tokio::test]
async fn kill9_mid_patch_resumes_on_s3_and_postgres() {
    kill9_mid_patch(
        Opts::new(Db::Postgres)
            .s3()
            .roles("api,ingest,origin")
            .spawn(),
        20,
        16,
    )
    .await;
}

#[tokio::test]
async fn racing_patches_across_two_processes() {
    let a = Opts::new(Db::Postgres).roles("api,ingest,origin").spawn();
    let b = a.peer();
    let t = a.token(Role::Instructor, "org-r");
    let src = data(12 * MIB, 9);
    let url = a.create_upload(&t, src.len() as u64, "").await;
    let url_b = url.replace(&a.base, &b.base);
    // Process A holds the upload mid-body; process B's PATCH at the same offset must lose.
    let (go, req) = slow_patch(&a, &url, &t, src.clone(), 2 * MIB);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = b.patch(&url_b, &t, 0, src[..MIB].to_vec()).await;
    assert!(
        r.status() == 423 || r.status() == 409,
        "the racing PATCH loses: {}",
        r.status()
    );
    go.send(()).unwrap();
    let r = req.await.unwrap().unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        sha256(&b.download(&url_b, &t).await),
        sha256(&src),
        "the bytes stay correct"
    );
}

fn cli(app: &TestApp, cache: &std::path::Path, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_lectern"));
    let token = app.token(Role::Instructor, "org-cli");
    c.arg("upload")
        .args(args)
        .args(["--server", &app.base, "--token", &token, "--no-wait"])
        .env("XDG_CACHE_HOME", cache);
    c
}

#[tokio::test]
async fn cli_parallel_parts_and_resume_after_crash() {
    let mut app = Opts::new(Db::Sqlite).roles("api,ingest,origin").spawn();
    let t = app.token(Role::Instructor, "org-cli");
    let cache = app.data.path().join("cache");
    let src = data(24 * MIB + 9, 11);
    let file = app.data.path().join("lecture.bin");
    std::fs::write(&file, &src).unwrap();
    let f = file.to_str().unwrap().to_string();

    // Parallel parts joined by concatenation.
    let out = cli(&app, &cache, &[&f, "--parallel", "3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let got = app.download(&format!("{}/files/{id}", app.base), &t).await;
    assert_eq!(sha256(&got), sha256(&src));

    // Ctrl-C (here: SIGKILL) of the CLI and kill -9 of the server halfway; both start again.
    let src2 = data(24 * MIB + 1, 12);
    std::fs::write(&file, &src2).unwrap();
    let mut child = cli(&app, &cache, &[&f, "--chunk-size", "1048576"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let state = cache.join("lectern/uploads.json");
    let mut url = None;
    for _ in 0..400 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        let urls: Option<serde_json::Value> = std::fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let Some(u) = urls.and_then(|v| {
            v["urls"]
                .as_object()
                .and_then(|m| m.values().next().cloned())
        }) else {
            continue;
        };
        let u = u[0].as_str().unwrap().to_string();
        if app.head(&u, &t).await.1.unwrap_or(0) >= 9 * MIB as u64 {
            url = Some(u);
            break;
        }
    }
    let url = url.expect("the CLI made progress");
    child.kill().unwrap();
    let _ = child.wait();
    app.kill9_and_restart();
    let off = app.head(&url, &t).await.1.unwrap();
    assert!(
        off >= 8 * MIB as u64 && off < src2.len() as u64,
        "offset after the crash: {off}"
    );
    let out = cli(&app, &cache, &[&f, "--chunk-size", "1048576"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("resuming"),
        "the second run resumes"
    );
    let id2 = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(format!("{}/files/{id2}", app.base), url);
    assert_eq!(
        sha256(&app.download(&url, &t).await),
        sha256(&src2),
        "byte-identical"
    );
}
