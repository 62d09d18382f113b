//! Playable while transcoding: a lecture can be watched from the moment the first segment of
//! every rendition is stored, through growing EVENT playlists that turn VOD at the same URIs.
//! Time-to-first-playable is measured (and printed) for a 1- and a 10-minute source in
//! CI-sized form; `bench/src/bin/ttfp.rs` measures it at full size.

mod common;

use std::time::{Duration, Instant};

use common::{fetch, join, lecture_clip, media_cache, Db, TestApp};
use lectern_core::auth::Role;
use serde_json::Value;

/// Uploads `path` and polls the playback endpoint until it hands out a URL; returns the video
/// id, the playback answer and the seconds from the upload's last byte to that answer.
async fn upload_until_playable(
    app: &TestApp,
    token: &str,
    path: &std::path::Path,
) -> (String, Value, f64) {
    let id = app.upload(token, path, 1).await;
    let done = Instant::now();
    loop {
        let r = app
            .http
            .get(format!("{}/api/v1/videos/{id}/playback", app.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        if status == 200 {
            return (id, body, done.elapsed().as_secs_f64());
        }
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["code"], "not-ready");
        assert!(
            done.elapsed() < Duration::from_secs(120),
            "not playable after 120 s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks a growing media playlist and its first segment; returns its segment URIs.
async fn check_event_playlist(app: &TestApp, url: &str) -> Vec<String> {
    let (s, h, body) = fetch(app, url).await;
    assert_eq!(s, 200, "{url}");
    assert_eq!(
        h["cache-control"], "no-cache",
        "growing playlists revalidate"
    );
    let text = String::from_utf8(body.clone()).unwrap();
    for needle in [
        "#EXT-X-VERSION:7",
        "#EXT-X-PLAYLIST-TYPE:EVENT",
        "#EXT-X-TARGETDURATION:6",
        "#EXT-X-START:TIME-OFFSET=0",
        "#EXT-X-MAP:URI=\"init.mp4\"",
    ] {
        assert!(text.contains(needle), "{needle} missing in {text}");
    }
    assert!(!text.contains("#EXT-X-ENDLIST"), "{text}");
    let pl = m3u8_rs::parse_media_playlist_res(&body).unwrap();
    assert!(!pl.segments.is_empty());
    let (s, h, init) = fetch(app, &join(url, "init.mp4")).await;
    assert_eq!(s, 200);
    assert!(h["cache-control"].to_str().unwrap().contains("immutable"));
    assert_eq!(&init[4..8], b"ftyp");
    let (s, _, seg) = fetch(app, &join(url, &pl.segments[0].uri)).await;
    assert_eq!(s, 200);
    assert!(seg
        .windows(4)
        .take(16)
        .any(|w| w == b"moof" || w == b"styp"));
    pl.segments.iter().map(|s| s.uri.clone()).collect()
}

#[tokio::test]
async fn a_lecture_plays_while_it_is_still_encoding() {
    let app = TestApp::spawn(Db::Sqlite);
    let token = app.token(Role::Instructor, "org-live");
    let one = lecture_clip(&media_cache(), "lecture-60s-720p.mp4", 60, "1280x720", 30);
    let ten = lecture_clip(&media_cache(), "lecture-600s-360p.mp4", 600, "640x360", 15);

    // 1 minute, two rungs: watch it grow, then turn VOD at the same URIs.
    let (id, pb, ttfp_1) = upload_until_playable(&app, &token, &one).await;
    assert_eq!(
        pb["state"], "processing",
        "playable before it is ready: {pb}"
    );
    let st = app.status(&token, &id).await;
    assert_eq!(st["playable"], true, "{st}");
    let master_url = pb["url"].as_str().unwrap().to_string();
    let (s, h, body) = fetch(&app, &master_url).await;
    assert_eq!(s, 200);
    assert_eq!(h["cache-control"], "no-cache");
    let master = m3u8_rs::parse_master_playlist_res(&body).unwrap();
    let sizes: Vec<_> = master
        .variants
        .iter()
        .map(|v| v.resolution.unwrap().height)
        .collect();
    assert_eq!(sizes, [480, 720], "every rung is announced at once");
    let nominal: Vec<u64> = master.variants.iter().map(|v| v.bandwidth).collect();
    assert_eq!(
        nominal,
        [1_498_000 + 128_000, 2_996_000 + 128_000],
        "the ladder's maxrate plus audio while processing"
    );
    for v in &master.variants {
        let c = v.codecs.as_deref().unwrap();
        assert!(c.starts_with("avc1.64") && c.ends_with(",mp4a.40.2"), "{c}");
    }
    let media_url = join(&master_url, &master.variants[1].uri);
    let audio_url = join(&master_url, master.alternatives[0].uri.as_deref().unwrap());
    let early = check_event_playlist(&app, &media_url).await;
    check_event_playlist(&app, &audio_url).await;

    let (st, _) = app.wait_done(&token, &id).await;
    assert_eq!(st["state"], "ready", "{st}");
    assert_eq!(st["playable"], true);
    let (s, h, body) = fetch(&app, &media_url).await;
    assert_eq!(
        s, 200,
        "the same media playlist URL keeps working once ready"
    );
    assert!(h["cache-control"]
        .to_str()
        .unwrap()
        .starts_with("public, max-age="));
    let text = String::from_utf8(body.clone()).unwrap();
    assert!(text.contains("#EXT-X-PLAYLIST-TYPE:VOD") && text.contains("#EXT-X-ENDLIST"));
    let vod = m3u8_rs::parse_media_playlist_res(&body).unwrap();
    let durations: Vec<u64> = vod
        .segments
        .iter()
        .map(|s| s.duration.round() as u64)
        .collect();
    assert_eq!(
        durations,
        [1, 1, 6, 6, 6, 6, 6, 6, 6, 6, 6, 4],
        "the first keyframe interval as two 1 s segments, then 6 s ones"
    );
    assert!(
        vod.segments[..2]
            .iter()
            .all(|s| (s.duration - 1.0).abs() < 0.05),
        "1 s lead segments: {:?}",
        &vod.segments[..2]
    );
    let later: Vec<_> = vod.segments.iter().map(|s| s.uri.clone()).collect();
    assert_eq!(
        later[..early.len()],
        early[..],
        "the EVENT playlist only ever grew"
    );
    let (_, h, body) = fetch(&app, &master_url).await;
    assert!(h["cache-control"]
        .to_str()
        .unwrap()
        .starts_with("public, max-age="));
    let master = m3u8_rs::parse_master_playlist_res(&body).unwrap();
    assert_ne!(
        master.variants[0].bandwidth, nominal[0],
        "measured once ready"
    );

    // 10 minutes: first playable no later than for the short one (it does not depend on the
    // length), then deleted mid-encode.
    let (id, pb, ttfp_10) = upload_until_playable(&app, &token, &ten).await;
    assert_eq!(pb["state"], "processing");
    let master_url = pb["url"].as_str().unwrap().to_string();
    let (_, _, body) = fetch(&app, &master_url).await;
    let master = m3u8_rs::parse_master_playlist_res(&body).unwrap();
    assert_eq!(master.variants.len(), 1, "a 360p source has one rendition");
    let media_url = join(&master_url, &master.variants[0].uri);
    check_event_playlist(&app, &media_url).await;
    println!("time to first playable: 1-min 720p source {ttfp_1:.2} s, 10-min 360p source {ttfp_10:.2} s");
    assert!(
        ttfp_10 < 30.0 && ttfp_1 < 30.0,
        "first playable after {ttfp_1:.1} s / {ttfp_10:.1} s"
    );
    let r = app
        .http
        .delete(format!("{}/api/v1/videos/{id}", app.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (s, h, _) = fetch(&app, &media_url).await;
    assert_eq!(s, 404, "a deleted video's playlists are gone at once");
    assert_eq!(h["cache-control"], "no-store");
}
