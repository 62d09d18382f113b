//! Managing videos through the API: listing, renaming and deleting them, and their captions.

mod common;

use common::{call, course_with_lesson, fetch, ready_video, tok, Db, TestApp};
use lectern_core::auth::Role;
use reqwest::Method;
use serde_json::{json, Value};

#[tokio::test]
async fn instructors_list_rename_and_delete_videos() {
    // The operator's CDN purge hook: records the path it is asked to purge.
    let hook_dir = tempfile::tempdir().unwrap();
    let purged = hook_dir.path().join("purged");
    let hook = hook_dir.path().join("purge.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$1 $LECTERN_VIDEO_ID\" >> {}\n",
            purged.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let app = TestApp::spawn_with(
        Db::Sqlite,
        &[("LECTERN_CDN_PURGE_COMMAND", hook.to_str().unwrap())],
    );
    let inst = tok(Role::Instructor, "prof", "org-v");
    let (cid, lid, video) = course_with_lesson(&app, &inst).await;
    let other = ready_video(&app, &inst, "clip-360p.mp4").await;
    let (s, page) = call(
        &app,
        Method::GET,
        "/api/v1/videos?limit=1",
        Some(&inst),
        None,
    )
    .await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["videos"].as_array().unwrap().len(), 1);
    let cur = page["next_cursor"].as_str().unwrap().to_string();
    let (_, page2) = call(
        &app,
        Method::GET,
        &format!("/api/v1/videos?limit=1&cursor={cur}"),
        Some(&inst),
        None,
    )
    .await;
    let mut seen = vec![
        page["videos"][0]["id"].clone(),
        page2["videos"][0]["id"].clone(),
    ];
    seen.sort_by_key(|v| v.as_str().unwrap().to_string());
    let mut want = vec![json!(video), json!(other)];
    want.sort_by_key(|v| v.as_str().unwrap().to_string());
    assert_eq!(seen, want);
    assert_eq!(page2["next_cursor"], Value::Null);
    let (_, ready) = call(
        &app,
        Method::GET,
        "/api/v1/videos?state=ready",
        Some(&inst),
        None,
    )
    .await;
    assert_eq!(ready["videos"].as_array().unwrap().len(), 2);
    assert_eq!(
        call(
            &app,
            Method::GET,
            "/api/v1/videos?state=nope",
            Some(&inst),
            None
        )
        .await
        .0,
        400
    );
    assert_eq!(
        call(
            &app,
            Method::GET,
            "/api/v1/videos?limit=101",
            Some(&inst),
            None
        )
        .await
        .0,
        400
    );

    let (s, r) = call(
        &app,
        Method::PATCH,
        &format!("/api/v1/videos/{video}"),
        Some(&inst),
        Some(json!({"title": "Lecture 1"})),
    )
    .await;
    assert_eq!((s, r["title"].as_str()), (200, Some("Lecture 1")));
    assert_eq!(app.status(&inst, &video).await["title"], "Lecture 1");
    assert_eq!(
        call(
            &app,
            Method::PATCH,
            &format!("/api/v1/videos/{video}"),
            Some(&inst),
            Some(json!({"title": ""}))
        )
        .await
        .0,
        422
    );

    let pb = app.playback(&inst, &video).await;
    let url = pb["url"].as_str().unwrap().to_string();
    assert_eq!(fetch(&app, &url).await.0, 200);
    assert_eq!(
        call(
            &app,
            Method::DELETE,
            &format!("/api/v1/videos/{video}"),
            Some(&inst),
            None
        )
        .await
        .0,
        204
    );
    assert_eq!(fetch(&app, &url).await.0, 404, "the master is gone at once");
    let mut line = String::new();
    for _ in 0..50 {
        line = std::fs::read_to_string(&purged).unwrap_or_default();
        if !line.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        line.trim(),
        format!("/v/{video}/ {video}"),
        "the CDN purge hook ran"
    );
    assert_eq!(
        call(
            &app,
            Method::GET,
            &format!("/api/v1/videos/{video}"),
            Some(&inst),
            None
        )
        .await
        .0,
        404
    );
    let objects = app.data.path().join("objects");
    assert!(
        !objects.join(format!("videos/{video}")).exists(),
        "renditions removed"
    );
    assert!(
        !objects.join(format!("sources/{video}")).exists(),
        "source removed"
    );
    let (_, l) = call(
        &app,
        Method::GET,
        &format!("/api/v1/lessons/{lid}"),
        Some(&inst),
        None,
    )
    .await;
    assert_eq!(
        l["video_id"],
        Value::Null,
        "the lesson no longer points at it"
    );
    let (_, c) = call(
        &app,
        Method::GET,
        &format!("/api/v1/courses/{cid}"),
        Some(&inst),
        None,
    )
    .await;
    assert_eq!(c["lessons"], 1);
}

#[tokio::test]
async fn captions_appear_as_a_subtitles_group_and_can_be_removed() {
    let app = TestApp::spawn(Db::Sqlite);
    let inst = tok(Role::Instructor, "prof", "org-cc");
    let video = ready_video(&app, &inst, "clip-360p.mp4").await;
    let vtt = "WEBVTT\n\n00:00.000 --> 00:01.500\nWelcome to the lecture\n\n00:01.500 --> 00:03.000\nToday: groups\n";
    let put = |lang: &str, body: &str, token: &str| {
        app.http
            .put(format!(
                "{}/api/v1/videos/{video}/captions/{lang}?label=English",
                app.base
            ))
            .bearer_auth(token)
            .header("Content-Type", "text/vtt")
            .body(body.to_string())
            .send()
    };
    let r = put("en", vtt, &inst).await.unwrap();
    assert_eq!(r.status(), 201);
    let j: Value = r.json().await.unwrap();
    assert_eq!(j["cues"], 2);
    let r = put("en", "1\n00:00:01,000 --> 00:00:02,000\nSRT\n", &inst)
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["code"], "invalid-webvtt");
    assert_eq!(put("not_a_lang", vtt, &inst).await.unwrap().status(), 400);
    assert_eq!(
        put("en", vtt, &tok(Role::Learner, "l", "org-cc"))
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        put("en", vtt, &tok(Role::Instructor, "x", "org-zz"))
            .await
            .unwrap()
            .status(),
        404
    );
    let (_, list) = call(
        &app,
        Method::GET,
        &format!("/api/v1/videos/{video}/captions"),
        Some(&inst),
        None,
    )
    .await;
    assert_eq!(list["captions"][0]["lang"], "en");

    let url = app.playback(&inst, &video).await["url"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, _, body) = fetch(&app, &url).await;
    let master = m3u8_rs::parse_master_playlist_res(&body).unwrap();
    let subs: Vec<_> = master
        .alternatives
        .iter()
        .filter(|m| m.media_type == m3u8_rs::AlternativeMediaType::Subtitles)
        .collect();
    assert_eq!(subs.len(), 1, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        (subs[0].language.as_deref(), subs[0].name.as_str()),
        (Some("en"), "English")
    );
    assert!(master
        .variants
        .iter()
        .all(|v| v.subtitles.as_deref() == Some("subs")));
    let sub_url = common::join(&url, subs[0].uri.as_deref().unwrap());
    let (s, h, pl) = fetch(&app, &sub_url).await;
    assert_eq!(s, 200);
    assert_eq!(h["content-type"], "application/vnd.apple.mpegurl");
    let media = m3u8_rs::parse_media_playlist_res(&pl).unwrap();
    assert!(media.end_list);
    let (s, h, got) = fetch(&app, &common::join(&sub_url, &media.segments[0].uri)).await;
    assert_eq!(s, 200);
    assert!(h["content-type"].to_str().unwrap().starts_with("text/vtt"));
    assert!(h["cache-control"].to_str().unwrap().contains("immutable"));
    assert_eq!(String::from_utf8(got).unwrap(), vtt);
    let tampered = sub_url.replace("sig=", "sig=A");
    assert_eq!(fetch(&app, &tampered).await.0, 403);

    assert_eq!(
        call(
            &app,
            Method::DELETE,
            &format!("/api/v1/videos/{video}/captions/en"),
            Some(&inst),
            None
        )
        .await
        .0,
        204
    );
    assert_eq!(
        call(
            &app,
            Method::DELETE,
            &format!("/api/v1/videos/{video}/captions/en"),
            Some(&inst),
            None
        )
        .await
        .0,
        404
    );
    let (_, _, body) = fetch(&app, &url).await;
    assert!(!String::from_utf8_lossy(&body).contains("SUBTITLES"));
}
