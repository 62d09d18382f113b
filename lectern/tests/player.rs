//! Learners' players and the CDN: the signed URL plays in hls.js (headless Chromium) with its
//! captions, in ffmpeg with every stream, and through nginx's `proxy_cache`, where a second
//! viewer's segment requests are cache hits. The output itself is checked the way a player
//! relies on it: every segment starts on a keyframe, boundaries line up across rungs, and the
//! master's CODECS match the streams.

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::{
    fetch, free_port, is_segment, join, lecture_clip, media_cache, play_in_chromium, walk_tree, Db,
    Nginx, Opts, TestApp, SECRET,
};
use lectern_core::auth::{Keys, Role};
use serde_json::Value;

const CAPTIONS: &str = "WEBVTT\n\n00:00:00.500 --> 00:00:04.000\nWelcome to week one.\n\n00:00:04.500 --> 00:00:09.000\nToday: kinematics.\n";

#[tokio::test]
async fn signed_urls_play_through_a_caching_cdn_in_hls_js_and_ffmpeg() {
    let port = free_port();
    let cdn_base = format!("http://127.0.0.1:{port}");
    let app = Opts::new(Db::Sqlite)
        .env("LECTERN_PUBLIC_URL", &cdn_base)
        .spawn();
    let cdn = Nginx::start(port, &app.addr());
    let token = app.token(Role::Instructor, "org-cdn");
    let source = lecture_clip(&media_cache(), "lecture-14s-1080p.mp4", 14, "1920x1080", 30);
    let id = app.upload(&token, &source, 2).await;
    let (st, _) = app.wait_done(&token, &id).await;
    assert_eq!(st["state"], "ready", "{st}");
    let r = app
        .http
        .put(format!(
            "{}/api/v1/videos/{id}/captions/en?label=English",
            app.base
        ))
        .bearer_auth(&token)
        .header("Content-Type", "text/vtt")
        .body(CAPTIONS)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // Two viewers get two different signed URLs, both pointing at the CDN.
    let other = Keys::from_secret(SECRET).mint("user-2", "org-cdn", Role::Admin, 3600);
    let url1 = app.playback(&token, &id).await["url"]
        .as_str()
        .unwrap()
        .to_string();
    let url2 = app.playback(&other, &id).await["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(url1.starts_with(&cdn.base), "{url1}");
    assert_ne!(url1, url2, "signatures are scoped to the viewer");

    let http = reqwest::Client::new();
    let first = walk_tree(&http, &url1).await;
    assert!(first.iter().all(|h| h.status == 200), "{first:#?}");
    let segments = first.iter().filter(|h| is_segment(&h.url)).count();
    // Init + three segments for each of 3 rungs and the audio, plus the caption file.
    assert!(segments >= 17, "3 rungs, audio and captions: {first:#?}");
    let second = walk_tree(&http, &url2).await;
    for h in &second {
        assert_eq!(h.status, 200, "{h:?}");
        if is_segment(&h.url) {
            assert_eq!(
                h.cache, "HIT",
                "the second viewer's segments come from the CDN: {h:?}"
            );
        } else {
            assert_ne!(
                h.cache, "HIT",
                "another viewer's playlist is never served: {h:?}"
            );
        }
    }
    // The same viewer again: even its signed VOD playlists are cached (keyed by full URL).
    let again = walk_tree(&http, &url1).await;
    assert!(again.iter().skip(1).all(|h| h.cache == "HIT"), "{again:#?}");

    // A tampered URL is refused through the CDN, every time (errors are never cached).
    let tampered = url1.replace("sig=", "sig=x");
    for _ in 0..2 {
        let r = http.get(&tampered).send().await.unwrap();
        assert_eq!(r.status(), 403);
        assert_ne!(r.headers()["x-cache-status"], "HIT");
    }

    // ffmpeg reads the whole tree: every rendition, the audio and the captions.
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i", &url1, "-map", "0", "-f", "null", "-"])
        .output()
        .expect("ffmpeg is installed by scripts/test.sh");
    assert!(
        out.status.success(),
        "ffmpeg -map 0 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // hls.js in Chromium, through the CDN, with the caption track.
    let base = cdn.base.clone();
    let seen = tokio::task::spawn_blocking(move || play_in_chromium(&base, &url1, 2.5, true))
        .await
        .unwrap();
    assert_no_fatal(&seen);
    assert_eq!(
        seen["levels"],
        serde_json::json!(["854x480", "1280x720", "1920x1080"]),
        "{seen}"
    );
    assert_eq!(seen["audioTracks"], 1, "{seen}");
    assert_eq!(seen["subtitleTracks"], 1, "{seen}");
    assert!(seen["cues"].as_u64().unwrap() > 0, "captions show: {seen}");
    assert!(seen["played"].as_f64().unwrap() >= 2.5, "{seen}");
    assert_eq!(seen["live"], false);

    check_segments(&app, &token, &id).await;
}

/// Every segment starts on a keyframe, segment n starts at the same time in every rung, and
/// each variant's CODECS names its stream's profile and level (ffprobe reads the streams).
async fn check_segments(app: &TestApp, token: &str, id: &str) {
    let url = app.playback(token, id).await["url"]
        .as_str()
        .unwrap()
        .to_string();
    // Straight to the origin, past the CDN the URL names.
    let path = &url[url.find("/v/").unwrap()..];
    let master_url = format!("{}{path}", app.base);
    let (_, _, body) = fetch(app, &master_url).await;
    let master = m3u8_rs::parse_master_playlist_res(&body).unwrap();
    let mut starts: HashMap<usize, Vec<f64>> = HashMap::new();
    for v in &master.variants {
        let media_url = join(&master_url, &v.uri);
        let (_, _, body) = fetch(app, &media_url).await;
        let pl = m3u8_rs::parse_media_playlist_res(&body).unwrap();
        let (_, _, init) = fetch(app, &join(&media_url, "init.mp4")).await;
        assert!(pl.segments.len() >= 3, "14 s in 6 s segments");
        for (n, seg) in pl.segments.iter().enumerate() {
            let (_, _, data) = fetch(app, &join(&media_url, &seg.uri)).await;
            let f = app.data.path().join(format!("probe-{n}.mp4"));
            std::fs::write(&f, [init.clone(), data].concat()).unwrap();
            // Decode time of the segment's first sample (its tfdt): the same in every rung
            // when keyframes line up. (A lone segment's presentation times depend on how a
            // probe seeds the B-frame delay, so they are not compared.)
            let packets = ffprobe_csv(&f, "packet=dts_time,flags");
            let first = packets.lines().next().expect("a packet");
            let (dts, flags) = first.split_once(',').unwrap();
            assert!(
                flags.starts_with('K'),
                "{} segment {n} starts on a keyframe: {first}",
                v.uri
            );
            starts.entry(n).or_default().push(dts.parse().unwrap());
            if n == 0 {
                let s = ffprobe(&f, "stream=codec_name,profile,level,pix_fmt");
                let field = |k: &str| {
                    s.lines()
                        .find_map(|l| l.strip_prefix(&format!("{k}=")))
                        .unwrap_or_else(|| panic!("no {k} in {s}"))
                        .to_string()
                };
                assert_eq!(field("codec_name"), "h264", "{s}");
                assert_eq!(field("profile"), "High", "{s}");
                assert_eq!(field("pix_fmt"), "yuv420p", "{s}");
                let level: u32 = field("level").parse().unwrap();
                let codecs = v.codecs.clone().unwrap();
                let avc = codecs.split(',').next().unwrap();
                assert!(avc.starts_with("avc1.64"), "High profile: {codecs}");
                assert_eq!(
                    &avc[9..],
                    format!("{level:02x}"),
                    "CODECS level matches the stream: {codecs}"
                );
            }
        }
    }
    for (n, times) in &starts {
        assert!(
            times.iter().all(|t| (t - times[0]).abs() < 0.002),
            "segment {n} starts at the same time in every rung: {times:?}"
        );
    }
}

/// hls.js reported no fatal error (recovered, non-fatal ones are allowed).
fn assert_no_fatal(seen: &Value) {
    let errors = seen["errors"].as_array().expect("an errors list");
    assert!(
        !errors
            .iter()
            .any(|e| e.as_str().unwrap_or_default().starts_with("FATAL")),
        "{seen}"
    );
}

fn ffprobe_csv(file: &std::path::Path, entries: &str) -> String {
    ffprobe_as(file, entries, "csv=p=0")
}

fn ffprobe(file: &std::path::Path, entries: &str) -> String {
    ffprobe_as(file, entries, "default=nw=1")
}

fn ffprobe_as(file: &std::path::Path, entries: &str, format: &str) -> String {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            entries,
        ])
        .args(["-of", format])
        .arg(file)
        .output()
        .expect("ffprobe comes with ffmpeg");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn hls_js_starts_a_lecture_at_its_beginning_while_it_is_still_encoding() {
    let port = free_port();
    let app = Opts::new(Db::Sqlite)
        .env("LECTERN_PUBLIC_URL", &format!("http://127.0.0.1:{port}"))
        .spawn();
    let cdn = Nginx::start(port, &app.addr());
    let token = app.token(Role::Instructor, "org-live");
    let source = lecture_clip(&media_cache(), "lecture-600s-360p.mp4", 600, "640x360", 15);
    let id = app.upload(&token, &source, 1).await;
    let url = loop {
        let pb: Value = app.playback(&token, &id).await;
        if let Some(u) = pb["url"].as_str() {
            break u.to_string();
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let base = cdn.base.clone();
    let seen = tokio::task::spawn_blocking(move || play_in_chromium(&base, &url, 2.5, false))
        .await
        .unwrap();
    assert_eq!(app.status(&token, &id).await["state"], "processing");
    assert_no_fatal(&seen);
    assert_eq!(seen["live"], true, "an EVENT playlist: {seen}");
    assert!(
        seen["started"].as_f64().unwrap() < 1.0,
        "starts at the beginning, not the live edge: {seen}"
    );
    assert!(seen["played"].as_f64().unwrap() >= 2.5, "{seen}");
}
