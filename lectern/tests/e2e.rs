//! End-to-end: the real binary, a real tus upload, a real GStreamer transcode, and a plain HLS
//! client walking the signed master down to every segment.

mod common;

use std::collections::HashMap;

use common::{clip, discover, fetch, join, walk_media, Db, TestApp};
use lectern_core::auth::Role;
use serde_json::Value;

#[tokio::test]
async fn upload_transcode_and_play_on_sqlite() {
    let app = TestApp::spawn(Db::Sqlite);
    let token = app.token(Role::Instructor, "org-a");
    let source = clip("clip-1080p.mp4");
    let id = app.upload(&token, &source, 3).await;

    let (status, seen) = app.wait_done(&token, &id).await;
    assert_eq!(status["state"], "ready", "{status}");
    assert!(
        seen.iter()
            .all(|s| ["queued", "processing", "ready"].contains(&s.as_str())),
        "{seen:?}"
    );
    assert_eq!(status["progress"], 1.0);
    assert_eq!(status["source"]["width"], 1920);
    assert_eq!(status["source"]["height"], 1080);
    let d = status["duration_s"].as_f64().unwrap();
    assert!((2.5..3.5).contains(&d), "duration {d}");
    let names: Vec<&str> = status["renditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["480p", "720p", "1080p"]);
    assert_eq!(status["renditions"][0]["width"], 854);
    assert_eq!(status["error"], Value::Null);
    check_poster(&app, &status, 1280, 720).await;

    // The original comes back byte for byte.
    let r = app
        .http
        .get(format!("{}/files/{id}", app.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.bytes().await.unwrap().to_vec(),
        std::fs::read(&source).unwrap()
    );

    let r = app
        .http
        .get(format!("{}/api/v1/videos/{id}/playback", app.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let pb: Value = r.json().await.unwrap();
    let master_url = pb["url"].as_str().unwrap().to_string();
    assert!(
        master_url.starts_with(&app.base),
        "absolute URL: {master_url}"
    );
    for p in ["exp=", "kid=", "sig="] {
        assert!(master_url.contains(p));
    }
    let expires = chrono::DateTime::parse_from_rfc3339(pb["expires_at"].as_str().unwrap()).unwrap();
    assert!(
        expires.timestamp() >= chrono::Utc::now().timestamp() + 7200,
        "valid for duration + 2 h"
    );

    let (s, h, body) = fetch(&app, &master_url).await;
    assert_eq!(s, 200);
    assert_eq!(h["content-type"], "application/vnd.apple.mpegurl");
    assert_eq!(h["access-control-allow-origin"], "*");
    let master = m3u8_rs::parse_master_playlist_res(&body).unwrap();
    assert_eq!(master.variants.len(), 3);
    assert_eq!(master.alternatives.len(), 1, "one shared audio rendition");
    let audio_uri = master.alternatives[0].uri.clone().unwrap();
    let audio = walk_media(&app, &join(&master_url, &audio_uri)).await;
    let mut renditions = HashMap::new();
    for v in &master.variants {
        assert!(
            !v.uri.starts_with('/') && !v.uri.contains("://"),
            "relative URI: {}",
            v.uri
        );
        let res = v.resolution.unwrap();
        let codecs = v.codecs.clone().unwrap();
        assert!(
            codecs.starts_with("avc1.64") && codecs.ends_with(",mp4a.40.2"),
            "{codecs}"
        );
        assert_eq!(v.frame_rate, Some(30.0));
        let r = walk_media(&app, &join(&master_url, &v.uri)).await;
        assert!(r.segments >= 1);
        let peak = r.peak_bps + audio.peak_bps;
        assert!(
            v.bandwidth as f64 >= peak * 0.999,
            "BANDWIDTH {} < peak {peak}",
            v.bandwidth
        );
        let avg = (r.avg_bps + audio.avg_bps) as f64;
        let declared = v.average_bandwidth.unwrap() as f64;
        assert!(
            (declared - avg).abs() <= avg * 0.1,
            "AVERAGE-BANDWIDTH {declared} vs measured {avg}"
        );
        renditions.insert((res.width, res.height), r);
    }
    assert!(renditions.contains_key(&(854, 480)) && renditions.contains_key(&(1920, 1080)));

    // The 480p rendition is a real H.264 stream of the right size and length.
    let f = app.data.path().join("480p.mp4");
    std::fs::write(&f, &renditions[&(854, 480)].bytes).unwrap();
    let d = discover(&f);
    assert_eq!(
        (d.width, d.height, d.caps.as_str()),
        (854, 480, "video/x-h264")
    );
    let frames = common::count_frames(&f);
    assert!(
        (88..=92).contains(&frames),
        "3 s at 30 fps across every segment: {frames} frames"
    );

    // HTTP semantics a CDN relies on: validators, 304, HEAD and ranges.
    let media_url = join(&master_url, &master.variants[0].uri);
    let (_, h, body) = fetch(&app, &media_url).await;
    let pl = m3u8_rs::parse_media_playlist_res(&body).unwrap();
    let etag = h["etag"].to_str().unwrap().to_string();
    let r = app
        .http
        .get(&media_url)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304, "an unchanged playlist is not sent again");
    let seg_url = join(&media_url, &pl.segments[0].uri);
    let r = app.http.get(&seg_url).send().await.unwrap();
    let seg_etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert!(r.headers().contains_key("last-modified"));
    let full = r.bytes().await.unwrap();
    let r = app
        .http
        .get(&seg_url)
        .header("If-None-Match", &seg_etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(
        r.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert!(r.bytes().await.unwrap().is_empty());
    let r = app.http.head(&seg_url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], full.len().to_string());
    let r = app
        .http
        .get(&seg_url)
        .header("Range", "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 0-99/{}", full.len())
    );
    assert_eq!(r.bytes().await.unwrap(), full.slice(0..100));

    // A plain HLS client plays it from the one URL.
    let out = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-i",
            &master_url,
            "-map",
            "0:v:0",
            "-map",
            "0:a:0?",
            "-f",
            "null",
            "-",
        ])
        .output()
        .expect("ffmpeg is installed by scripts/test.sh");
    assert!(
        out.status.success(),
        "ffmpeg failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Signatures: tampered, expired, other video, unsigned.
    let tampered = master_url.replace("sig=", "sig=A");
    let (s, h, body) = fetch(&app, &tampered).await;
    assert_eq!(s, 403);
    assert_eq!(h["content-type"], "application/json");
    let err: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(err["code"], "invalid-signature");
    let exp: i64 = master_url
        .split("exp=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (s, _, _) = fetch(
        &app,
        &master_url.replace(&format!("exp={exp}"), &format!("exp={}", exp - 100_000)),
    )
    .await;
    assert_eq!(s, 403, "a changed expiry breaks the signature");
    let (s, _, _) = fetch(&app, master_url.split('?').next().unwrap()).await;
    assert_eq!(s, 403, "unsigned master");
    let media_unsigned = join(
        &master_url,
        master.variants[0].uri.split('?').next().unwrap(),
    );
    let (s, _, _) = fetch(&app, &media_unsigned).await;
    assert_eq!(s, 403, "unsigned media playlist");
    let (s, _, _) = fetch(&app, &format!("{}/v/{id}/zz/480p/../../secret", app.base)).await;
    assert!((400..500).contains(&s), "malformed path gets 4xx, got {s}");
}

#[tokio::test]
async fn cli_upload_on_postgres_and_s3_makes_no_upscaled_rung() {
    let app = common::Opts::new(Db::Postgres).s3().spawn();
    let token = app.token(Role::Instructor, "org-b");
    let out = tokio::task::spawn_blocking({
        let base = app.base.clone();
        let token = token.clone();
        let cache = app.data.path().join("cache");
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_lectern"))
                .args([
                    "upload",
                    clip("clip-720p.mp4").to_str().unwrap(),
                    "--server",
                    &base,
                    "--token",
                    &token,
                    "--title",
                    "Week 1",
                ])
                .env("XDG_CACHE_HOME", cache)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "upload failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    let id = lines.next().unwrap().trim().to_string();
    let url = lines
        .next()
        .expect("playback URL printed once ready")
        .trim()
        .to_string();
    assert!(url.contains(&format!("/v/{id}/master.m3u8?")), "{url}");

    let st = app.status(&token, &id).await;
    assert_eq!(st["state"], "ready");
    assert_eq!(st["title"], "Week 1");
    let names: Vec<&str> = st["renditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["480p", "720p"],
        "a 720p source gives no 1080p rendition"
    );
    check_poster(&app, &st, 1280, 720).await;
    let (s, _, body) = fetch(&app, &url).await;
    assert_eq!(s, 200);
    let master = m3u8_rs::parse_master_playlist_res(&body).unwrap();
    let sizes: Vec<(u64, u64)> = master
        .variants
        .iter()
        .map(|v| (v.resolution.unwrap().width, v.resolution.unwrap().height))
        .collect();
    assert_eq!(sizes, [(854, 480), (1280, 720)]);
    let r = walk_media(&app, &join(&url, &master.variants[1].uri)).await;
    assert!(r.segments >= 1);
}

#[tokio::test]
async fn video_without_audio_is_video_only() {
    let app = TestApp::spawn(Db::Sqlite);
    let token = app.token(Role::Admin, "org-c");
    let id = app.upload(&token, &clip("clip-noaudio-720p.mp4"), 1).await;
    let (st, _) = app.wait_done(&token, &id).await;
    assert_eq!(st["state"], "ready", "{st}");
    let pb = app.playback(&token, &id).await;
    let (_, _, body) = fetch(&app, pb["url"].as_str().unwrap()).await;
    let master = m3u8_rs::parse_master_playlist_res(&body).unwrap();
    assert!(master.alternatives.is_empty(), "no audio group");
    for v in &master.variants {
        let c = v.codecs.clone().unwrap();
        assert!(c.starts_with("avc1.") && !c.contains("mp4a"), "{c}");
        assert_eq!(v.audio, None);
    }
}

#[tokio::test]
async fn bad_input_fails_with_a_stable_code() {
    let app = TestApp::spawn(Db::Sqlite);
    let token = app.token(Role::Instructor, "org-d");
    let f = app.data.path().join("notes.txt");
    std::fs::write(&f, "These are my lecture notes, not a video.\n".repeat(50)).unwrap();
    let id = app.upload(&token, &f, 1).await;
    let (st, _) = app.wait_done(&token, &id).await;
    assert_eq!(st["state"], "failed");
    assert_eq!(st["error"]["code"], "unsupported-input");
    assert!(
        st["error"]["message"].as_str().unwrap().contains("Upload"),
        "{st}"
    );
    let r = app
        .http
        .get(format!("{}/api/v1/videos/{id}/playback", app.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);

    // A truncated recording (cut in half) fails as corrupt, and nothing is published.
    let src = std::fs::read(clip("clip-360p.mp4")).unwrap();
    let cut = app.data.path().join("cut.mp4");
    std::fs::write(&cut, &src[..src.len() / 2]).unwrap();
    let id = app.upload(&token, &cut, 1).await;
    let (st, _) = app.wait_done(&token, &id).await;
    assert_eq!(st["state"], "failed", "{st}");
    assert_eq!(st["error"]["code"], "corrupt-input");
    assert_eq!(
        count_files(&app.data.path().join(format!("objects/videos/{id}"))),
        0,
        "no partial output remains"
    );
}

fn count_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        count_files(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// The status names a poster: an immutable JPEG of the given size, served by the origin.
async fn check_poster(app: &TestApp, status: &Value, w: u32, h: u32) {
    let url = status["poster_url"]
        .as_str()
        .expect("poster_url once ready");
    let (s, headers, jpeg) = fetch(app, url).await;
    assert_eq!(s, 200, "{url}");
    assert_eq!(headers["content-type"], "image/jpeg");
    assert!(headers["cache-control"]
        .to_str()
        .unwrap()
        .contains("immutable"));
    assert_eq!(&jpeg[..3], &[0xff, 0xd8, 0xff], "JPEG magic");
    let f = app.data.path().join("poster.jpg");
    std::fs::write(&f, &jpeg).unwrap();
    let d = common::discover(&f);
    assert_eq!((d.width, d.height), (w, h));
}

/// The x264 settings string (`x264 - core … options: …`) of the first segment of each rung
/// under the published prefix in the data folder's object store.
fn x264_options(app: &TestApp, id: &str) -> Vec<String> {
    let videos = app.data.path().join("objects/videos").join(id);
    let prefix = std::fs::read_dir(&videos)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut out = Vec::new();
    for rung in std::fs::read_dir(&prefix)
        .unwrap()
        .map(|e| e.unwrap().path())
    {
        let Ok(files) = std::fs::read_dir(&rung) else {
            continue;
        };
        let mut segs: Vec<_> = files
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "m4s"))
            .collect();
        segs.sort();
        let Some(first) = segs.first() else { continue };
        let bytes = std::fs::read(first).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        if let Some(at) = text.find("options: ") {
            let opts = &text[at..];
            out.push(opts[..opts.find('\0').unwrap_or(opts.len().min(2000))].to_string());
        }
    }
    out
}

#[tokio::test]
async fn capped_crf_ladder_encodes_at_constant_quality_under_the_rung_cap() {
    let dir = tempfile::tempdir().unwrap();
    let ladder = dir.path().join("capped.toml");
    std::fs::write(
        &ladder,
        lectern_core::ladder::DEFAULT_LADDER
            .replace("rate_control = \"fixed\"", "rate_control = \"capped-crf\"")
            .replace("crf = 20", "crf = 24"),
    )
    .unwrap();
    let app = TestApp::spawn_with(
        Db::Sqlite,
        &[("LECTERN_PIPELINE", ladder.to_str().unwrap())],
    );
    let token = app.token(Role::Admin, "org-crf");
    let id = app.upload(&token, &clip("clip-720p.mp4"), 1).await;
    let (st, _) = app.wait_done(&token, &id).await;
    assert_eq!(st["state"], "ready", "{st}");
    let opts = x264_options(&app, &id);
    assert_eq!(opts.len(), 2, "480p and 720p: {opts:?}");
    for o in &opts {
        assert!(o.contains(" rc=crf ") && o.contains(" crf=24.0 "), "{o}");
        // The cap: the rung's maxrate (1.07 × 1400 or 2800 kb/s) and bufsize (1.5 ×, to the
        // millisecond x264enc takes it in).
        let num = |k: &str| -> u32 {
            let at = o.find(k).unwrap_or_else(|| panic!("{k} in {o}")) + k.len();
            o[at..].split(' ').next().unwrap().parse().unwrap()
        };
        let (max, buf) = (num(" vbv_maxrate="), num(" vbv_bufsize="));
        assert!(max == 1498 || max == 2996, "{o}");
        assert!(buf.abs_diff(max * 1400 / 1000) <= 5, "{o}");
    }
    // The same clip on the default (fixed) ladder is an average-bitrate encode.
    let fixed = TestApp::spawn(Db::Sqlite);
    let t = fixed.token(Role::Admin, "org-crf");
    let id = fixed.upload(&t, &clip("clip-720p.mp4"), 1).await;
    let (st, _) = fixed.wait_done(&t, &id).await;
    assert_eq!(st["state"], "ready", "{st}");
    for o in x264_options(&fixed, &id) {
        assert!(!o.contains(" rc=crf "), "{o}");
    }
}
