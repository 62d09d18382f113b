//! The LMS module against the real binary: courses, lessons, enrollment-gated playback, lesson
//! video replacement, progress with write-behind (SQLite and PostgreSQL), the per-course
//! report, video management, and the org/role matrix over every endpoint.

mod common;

use std::time::Duration;

use common::{clip, fetch, Db, Opts, TestApp};
use lectern_core::auth::{Keys, Role};
use reqwest::Method;
use serde_json::{json, Value};

/// Sends a JSON request; returns status and body (`null` when empty).
async fn call(
    app: &TestApp,
    m: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = app.http.request(m, format!("{}{path}", app.base));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    (status, v)
}

fn tok(role: Role, user: &str, org: &str) -> String {
    Keys::from_secret(common::SECRET).mint(user, org, role, 3600)
}

/// Uploads a clip as `token` and waits until it is ready; returns its id.
async fn ready_video(app: &TestApp, token: &str, name: &str) -> String {
    let id = app.upload(token, &clip(name), 1).await;
    let (st, _) = app.wait_done(token, &id).await;
    assert_eq!(st["state"], "ready", "{st}");
    id
}

/// A course with one lesson showing a ready video: (course, lesson, video).
async fn course_with_lesson(app: &TestApp, inst: &str) -> (String, String, String) {
    let video = ready_video(app, inst, "clip-360p.mp4").await;
    let (s, course) = call(
        app,
        Method::POST,
        "/api/v1/courses",
        Some(inst),
        Some(json!({"title": "Algebra I", "description": "Week 1"})),
    )
    .await;
    assert_eq!(s, 201, "{course}");
    let cid = course["id"].as_str().unwrap().to_string();
    let (s, lesson) = call(
        app,
        Method::POST,
        &format!("/api/v1/courses/{cid}/lessons"),
        Some(inst),
        Some(json!({"title": "Groups", "video_id": video})),
    )
    .await;
    assert_eq!(s, 201, "{lesson}");
    assert_eq!(lesson["position"], 0);
    assert_eq!(lesson["video_state"], "ready");
    (cid, lesson["id"].as_str().unwrap().to_string(), video)
}

#[tokio::test]
async fn enrollment_gates_playback_and_a_replacement_switches_the_lesson_when_ready() {
    let app = TestApp::spawn(Db::Sqlite);
    let inst = tok(Role::Instructor, "prof", "org-l");
    let alice = tok(Role::Learner, "alice", "org-l");
    let (cid, lid, video) = course_with_lesson(&app, &inst).await;

    // Not enrolled: the course exists in her org but is closed to her.
    assert_eq!(
        call(
            &app,
            Method::GET,
            &format!("/api/v1/courses/{cid}"),
            Some(&alice),
            None
        )
        .await
        .0,
        403
    );
    assert_eq!(
        call(
            &app,
            Method::GET,
            &format!("/api/v1/lessons/{lid}/playback"),
            Some(&alice),
            None
        )
        .await
        .0,
        403
    );
    assert_eq!(
        call(
            &app,
            Method::GET,
            &format!("/api/v1/videos/{video}/playback"),
            Some(&alice),
            None
        )
        .await
        .0,
        403
    );
    let (_, mine) = call(&app, Method::GET, "/api/v1/courses", Some(&alice), None).await;
    assert_eq!(mine["courses"].as_array().unwrap().len(), 0);

    let (s, e) = call(
        &app,
        Method::POST,
        &format!("/api/v1/courses/{cid}/enrollments"),
        Some(&inst),
        Some(json!({"user": "alice"})),
    )
    .await;
    assert_eq!(s, 201, "{e}");
    assert_eq!(
        call(
            &app,
            Method::POST,
            &format!("/api/v1/courses/{cid}/enrollments"),
            Some(&inst),
            Some(json!({"user": "alice"}))
        )
        .await
        .0,
        200,
        "enrolling twice is idempotent"
    );
    let (_, mine) = call(&app, Method::GET, "/api/v1/courses", Some(&alice), None).await;
    assert_eq!(mine["courses"][0]["id"], cid.as_str());
    let (s, c) = call(
        &app,
        Method::GET,
        &format!("/api/v1/courses/{cid}"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!((s, c["lessons"].as_i64()), (200, Some(1)));
    let (s, pb) = call(
        &app,
        Method::GET,
        &format!("/api/v1/lessons/{lid}/playback"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(s, 200, "{pb}");
    let (s, _, body) = fetch(&app, pb["url"].as_str().unwrap()).await;
    assert_eq!(s, 200);
    assert!(String::from_utf8_lossy(&body).starts_with("#EXTM3U"));
    assert_eq!(
        call(
            &app,
            Method::GET,
            &format!("/api/v1/videos/{video}/playback"),
            Some(&alice),
            None
        )
        .await
        .0,
        200
    );

    // A replacement upload names the lesson: it jumps the queue as class 20 and the lesson
    // keeps its old video until the new one is ready.
    let bytes = std::fs::read(clip("clip-720p.mp4")).unwrap();
    let lesson_b64 = base64_encode(lid.as_bytes());
    let url = app
        .create_upload(
            &inst,
            bytes.len() as u64,
            &format!("filename eC5tcDQ=,lesson {lesson_b64}"),
        )
        .await;
    let new_id = url.rsplit('/').next().unwrap().to_string();
    assert_eq!(app.patch(&url, &inst, 0, bytes).await.status(), 204);
    let admin = tok(Role::Admin, "boss", "org-l");
    let (_, jobs) = call(&app, Method::GET, "/api/v1/admin/jobs", Some(&admin), None).await;
    let job = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == new_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(job["priority"], 20, "{job}");
    let (st, _) = app.wait_done(&inst, &new_id).await;
    assert_eq!(st["state"], "ready");
    let (_, l) = call(
        &app,
        Method::GET,
        &format!("/api/v1/lessons/{lid}"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(l["video_id"], new_id.as_str(), "{l}");

    // An upload for a lesson the org does not have is refused before a byte is stored.
    let r = app
        .http
        .post(format!("{}/files/", app.base))
        .bearer_auth(&inst)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", 10)
        .header(
            "Upload-Metadata",
            format!("lesson {}", base64_encode(b"nope")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["code"], "unknown-lesson");

    // Unenrolled again: access ends.
    assert_eq!(
        call(
            &app,
            Method::DELETE,
            &format!("/api/v1/courses/{cid}/enrollments/alice"),
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
            Method::GET,
            &format!("/api/v1/lessons/{lid}/playback"),
            Some(&alice),
            None
        )
        .await
        .0,
        403
    );
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

async fn progress_flow(db: Db) {
    let mut app = TestApp::spawn(db);
    let inst = tok(Role::Instructor, "prof", "org-p");
    let (cid, l1, _) = course_with_lesson(&app, &inst).await;
    let (_, l2) = call(
        &app,
        Method::POST,
        &format!("/api/v1/courses/{cid}/lessons"),
        Some(&inst),
        Some(
            json!({"title": "Rings", "video_id": ready_video(&app, &inst, "clip-360p.mp4").await}),
        ),
    )
    .await;
    let l2 = l2["id"].as_str().unwrap().to_string();
    for u in ["bob", "carol"] {
        call(
            &app,
            Method::POST,
            &format!("/api/v1/courses/{cid}/enrollments"),
            Some(&inst),
            Some(json!({"user": u})),
        )
        .await;
    }
    let bob = tok(Role::Learner, "bob", "org-p");
    let post = |lesson: String, body: Value| {
        let app = &app;
        let bob = bob.clone();
        async move {
            call(
                app,
                Method::POST,
                &format!("/api/v1/lessons/{lesson}/progress"),
                Some(&bob),
                Some(body),
            )
            .await
            .0
        }
    };
    // Two overlapping heartbeats cover the whole 3 s lesson: complete. The second lesson is
    // a third watched.
    assert_eq!(
        post(
            l1.clone(),
            json!({"position_s": 1.5, "watched": [[0.0, 1.5]]})
        )
        .await,
        202
    );
    assert_eq!(
        post(
            l1.clone(),
            json!({"position_s": 3.0, "watched": [[1.0, 3.0]]})
        )
        .await,
        202
    );
    assert_eq!(
        post(
            l2.clone(),
            json!({"position_s": 1.0, "watched": [[0.0, 1.0]]})
        )
        .await,
        202
    );
    for bad in [
        json!({"position_s": -1.0}),
        json!({"position_s": 1.0, "watched": [[2.0, 1.0]]}),
        json!({"position_s": 999.0}),
        json!({"pos": 1}),
    ] {
        let s = post(l1.clone(), bad.clone()).await;
        assert!(s == 422 || s == 400, "{bad} -> {s}");
    }
    let dave = tok(Role::Learner, "dave", "org-p");
    assert_eq!(
        call(
            &app,
            Method::POST,
            &format!("/api/v1/lessons/{l1}/progress"),
            Some(&dave),
            Some(json!({"position_s": 1.0}))
        )
        .await
        .0,
        403,
        "not enrolled"
    );

    // Write-behind: visible after the next flush (≤ 1 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, p) = call(
        &app,
        Method::GET,
        &format!("/api/v1/courses/{cid}/progress"),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(
        (
            p["lessons"].as_i64(),
            p["completed"].as_i64(),
            p["percent"].as_f64()
        ),
        (Some(2), Some(1), Some(50.0)),
        "{p}"
    );
    let (_, cont) = call(&app, Method::GET, "/api/v1/me/continue", Some(&bob), None).await;
    let cont = cont["lessons"].as_array().unwrap().clone();
    assert_eq!(cont.len(), 1, "{cont:?}");
    assert_eq!(cont[0]["lesson_id"], l2.as_str());
    assert_eq!(cont[0]["position_s"], 1.0);
    let (s, report) = call(
        &app,
        Method::GET,
        &format!("/api/v1/courses/{cid}/report"),
        Some(&inst),
        None,
    )
    .await;
    assert_eq!(s, 200, "{report}");
    let rows = report["learners"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "every enrolled learner, watched or not");
    assert_eq!(
        (
            rows[0]["user"].as_str(),
            rows[0]["completed"].as_i64(),
            rows[0]["percent"].as_f64()
        ),
        (Some("bob"), Some(1), Some(50.0))
    );
    assert_eq!(
        (rows[1]["user"].as_str(), rows[1]["completed"].as_i64()),
        (Some("carol"), Some(0))
    );
    assert_eq!(
        call(
            &app,
            Method::GET,
            &format!("/api/v1/courses/{cid}/report"),
            Some(&bob),
            None
        )
        .await
        .0,
        403
    );
    let (_, _, metrics) = fetch(&app, &format!("{}/metrics", app.base)).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("lectern_progress_flush_rows"),
        "flush batch sizes are a metric"
    );

    // SIGTERM flushes what is still in memory.
    assert_eq!(
        post(
            l2.clone(),
            json!({"position_s": 3.0, "watched": [[0.9, 3.0]]})
        )
        .await,
        202
    );
    app.sigterm_and_wait();
    app.restart();
    let (_, p) = call(
        &app,
        Method::GET,
        &format!("/api/v1/courses/{cid}/progress"),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(p["completed"].as_i64(), Some(2), "flushed at shutdown: {p}");
}

#[tokio::test]
async fn progress_is_coalesced_unioned_and_reported_on_sqlite() {
    progress_flow(Db::Sqlite).await;
}

#[tokio::test]
async fn progress_is_coalesced_unioned_and_reported_on_postgres() {
    progress_flow(Db::Postgres).await;
}

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
async fn every_endpoint_hides_other_orgs_and_checks_roles() {
    let app = TestApp::spawn(Db::Sqlite);
    let inst = tok(Role::Instructor, "prof", "org-a");
    let (cid, lid, video) = course_with_lesson(&app, &inst).await;
    call(
        &app,
        Method::POST,
        &format!("/api/v1/courses/{cid}/enrollments"),
        Some(&inst),
        Some(json!({"user": "erin"})),
    )
    .await;
    let erin = tok(Role::Learner, "erin", "org-a");

    // (method, path, body, a learner of the course may)
    let endpoints: Vec<(Method, String, Option<Value>, bool)> = vec![
        (Method::GET, format!("/api/v1/courses/{cid}"), None, true),
        (
            Method::PATCH,
            format!("/api/v1/courses/{cid}"),
            Some(json!({"title": "x"})),
            false,
        ),
        (
            Method::GET,
            format!("/api/v1/courses/{cid}/lessons"),
            None,
            true,
        ),
        (
            Method::POST,
            format!("/api/v1/courses/{cid}/lessons"),
            Some(json!({"title": "x"})),
            false,
        ),
        (
            Method::GET,
            format!("/api/v1/courses/{cid}/enrollments"),
            None,
            false,
        ),
        (
            Method::POST,
            format!("/api/v1/courses/{cid}/enrollments"),
            Some(json!({"user": "zed"})),
            false,
        ),
        (
            Method::DELETE,
            format!("/api/v1/courses/{cid}/enrollments/erin"),
            None,
            false,
        ),
        (
            Method::GET,
            format!("/api/v1/courses/{cid}/progress"),
            None,
            true,
        ),
        (
            Method::GET,
            format!("/api/v1/courses/{cid}/report"),
            None,
            false,
        ),
        (Method::GET, format!("/api/v1/lessons/{lid}"), None, true),
        (
            Method::PATCH,
            format!("/api/v1/lessons/{lid}"),
            Some(json!({"title": "x"})),
            false,
        ),
        (
            Method::GET,
            format!("/api/v1/lessons/{lid}/playback"),
            None,
            true,
        ),
        (
            Method::POST,
            format!("/api/v1/lessons/{lid}/progress"),
            Some(json!({"position_s": 1.0})),
            true,
        ),
        (Method::GET, format!("/api/v1/videos/{video}"), None, false),
        (
            Method::PATCH,
            format!("/api/v1/videos/{video}"),
            Some(json!({"title": "x"})),
            false,
        ),
        (
            Method::GET,
            format!("/api/v1/videos/{video}/playback"),
            None,
            true,
        ),
        (
            Method::GET,
            format!("/api/v1/videos/{video}/captions"),
            None,
            false,
        ),
        (
            Method::PUT,
            format!("/api/v1/videos/{video}/captions/en"),
            Some(json!("WEBVTT")),
            false,
        ),
        (
            Method::DELETE,
            format!("/api/v1/videos/{video}/captions/en"),
            None,
            false,
        ),
        (
            Method::DELETE,
            format!("/api/v1/lessons/{lid}"),
            None,
            false,
        ),
        (
            Method::DELETE,
            format!("/api/v1/videos/{video}"),
            None,
            false,
        ),
        (
            Method::DELETE,
            format!("/api/v1/courses/{cid}"),
            None,
            false,
        ),
    ];
    for role in [Role::Learner, Role::Instructor, Role::Admin] {
        let foreign = tok(role, "mallory", "org-b");
        for (m, path, body, _) in &endpoints {
            let (s, e) = call(&app, m.clone(), path, Some(&foreign), body.clone()).await;
            assert_eq!(s, 404, "{role:?} of another org: {m} {path} -> {s} {e}");
            assert!(e["code"].is_string(), "{e}");
        }
    }
    let op = tok(Role::Operator, "ops", "platform");
    for (m, path, body, learner_may) in &endpoints {
        assert_eq!(
            call(&app, m.clone(), path, None, body.clone()).await.0,
            401,
            "{m} {path} without a token"
        );
        let (s, _) = call(&app, m.clone(), path, Some(&op), body.clone()).await;
        assert!(s == 403 || s == 404, "operator: {m} {path} -> {s}");
        if !learner_may {
            let (s, e) = call(&app, m.clone(), path, Some(&erin), body.clone()).await;
            assert_eq!(s, 403, "learner: {m} {path} -> {s} {e}");
        }
    }
    // Lists never show another org's rows.
    let foreign_inst = tok(Role::Instructor, "mallory", "org-b");
    for path in ["/api/v1/courses", "/api/v1/videos", "/api/v1/me/continue"] {
        let (s, v) = call(&app, Method::GET, path, Some(&foreign_inst), None).await;
        assert_eq!(s, 200, "{path}");
        let text = v.to_string();
        assert!(
            !text.contains(&cid) && !text.contains(&video) && !text.contains(&lid),
            "{path}: {text}"
        );
    }
    // Malformed bodies get the contract's JSON error, not the framework's text.
    let r = app
        .http
        .post(format!("{}/api/v1/courses", app.base))
        .bearer_auth(&inst)
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["code"], "invalid-body");
    // Everything still belongs to org A afterwards: the foreign writes changed nothing.
    let (_, c) = call(
        &app,
        Method::GET,
        &format!("/api/v1/courses/{cid}"),
        Some(&inst),
        None,
    )
    .await;
    assert_eq!(c["title"], "Algebra I");
}

#[tokio::test]
async fn lists_page_with_cursors() {
    let app = Opts::new(Db::Sqlite).roles("api,ingest,origin").spawn();
    let inst = tok(Role::Instructor, "prof", "org-c");
    let (_, c) = call(
        &app,
        Method::POST,
        "/api/v1/courses",
        Some(&inst),
        Some(json!({"title": "Big"})),
    )
    .await;
    let cid = c["id"].as_str().unwrap().to_string();
    for i in 0..25 {
        let (s, _) = call(
            &app,
            Method::POST,
            &format!("/api/v1/courses/{cid}/lessons"),
            Some(&inst),
            Some(json!({"title": format!("L{i}")})),
        )
        .await;
        assert_eq!(s, 201);
        call(
            &app,
            Method::POST,
            &format!("/api/v1/courses/{cid}/enrollments"),
            Some(&inst),
            Some(json!({"user": format!("u{i:02}")})),
        )
        .await;
    }
    for (path, key) in [
        (format!("/api/v1/courses/{cid}/lessons"), "lessons"),
        (format!("/api/v1/courses/{cid}/enrollments"), "enrollments"),
        (format!("/api/v1/courses/{cid}/report"), "learners"),
    ] {
        let (_, p1) = call(&app, Method::GET, &path, Some(&inst), None).await;
        assert_eq!(
            p1[key].as_array().unwrap().len(),
            20,
            "default page of 20: {path}"
        );
        let cur = p1["next_cursor"].as_str().unwrap();
        let (_, p2) = call(
            &app,
            Method::GET,
            &format!("{path}?cursor={cur}"),
            Some(&inst),
            None,
        )
        .await;
        assert_eq!(p2[key].as_array().unwrap().len(), 5, "{path}");
        assert_eq!(p2["next_cursor"], Value::Null);
        let all: std::collections::HashSet<String> = p1[key]
            .as_array()
            .unwrap()
            .iter()
            .chain(p2[key].as_array().unwrap())
            .map(|x| x.to_string())
            .collect();
        assert_eq!(all.len(), 25, "no row twice: {path}");
        assert_eq!(
            call(
                &app,
                Method::GET,
                &format!("{path}?limit=0"),
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
                &format!("{path}?cursor=bm9wZQ"),
                Some(&inst),
                None
            )
            .await
            .0,
            400
        );
    }
    let (_, l) = call(
        &app,
        Method::GET,
        &format!("/api/v1/courses/{cid}/lessons?limit=100"),
        Some(&inst),
        None,
    )
    .await;
    let titles: Vec<&str> = l["lessons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        titles[0..3],
        ["L0", "L1", "L2"],
        "lessons come in position order"
    );
}

type Seen = std::sync::Arc<std::sync::Mutex<Vec<(reqwest::header::HeaderMap, String)>>>;

/// A webhook receiver on loopback that answers 500 to its first `fail_first` requests.
async fn receiver(fail_first: usize) -> (String, Seen) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let seen: Seen = Default::default();
    let n = std::sync::Arc::new(AtomicUsize::new(0));
    let s2 = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let seen = s2.clone();
            let n = n.clone();
            async move {
                let mut h = reqwest::header::HeaderMap::new();
                for (k, v) in headers.iter() {
                    h.insert(
                        reqwest::header::HeaderName::from_bytes(k.as_str().as_bytes()).unwrap(),
                        reqwest::header::HeaderValue::from_bytes(v.as_bytes()).unwrap(),
                    );
                }
                seen.lock().unwrap().push((h, body));
                if n.fetch_add(1, Ordering::SeqCst) < fail_first {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    axum::http::StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), seen)
}

/// Waits until the receiver has seen an event of `kind`; returns (headers, body) of each request for it.
async fn wait_event(
    seen: &Seen,
    kind: &str,
    requests: usize,
) -> Vec<(reqwest::header::HeaderMap, Value)> {
    for _ in 0..300 {
        let got: Vec<_> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|(h, b)| (h.clone(), serde_json::from_str::<Value>(b).unwrap()))
            .filter(|(_, b)| b["type"] == kind)
            .collect();
        if got.len() >= requests {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no {kind} webhook arrived");
}

#[tokio::test]
async fn webhooks_are_signed_retried_and_logged() {
    // The receiver is on loopback: an on-premises host the operator allows explicitly.
    let app = Opts::new(Db::Sqlite)
        .env("LECTERN_WEBHOOK_ALLOW_HTTP", "true")
        .env("LECTERN_WEBHOOK_ALLOWED_HOSTS", "127.0.0.1")
        .spawn();
    let admin = tok(Role::Admin, "boss", "org-w");
    let inst = tok(Role::Instructor, "prof", "org-w");
    let (url, seen) = receiver(1).await;
    let events = json!(["video.ready", "video.failed", "lesson.completed"]);
    assert_eq!(
        call(
            &app,
            Method::POST,
            "/api/v1/webhooks",
            Some(&inst),
            Some(json!({"url": url, "events": events}))
        )
        .await
        .0,
        403
    );
    for bad in [
        json!({"url": "ftp://x.example/h", "events": events}),
        json!({"url": url, "events": ["video.exploded"]}),
        json!({"url": "not a url", "events": events}),
    ] {
        let (s, e) = call(
            &app,
            Method::POST,
            "/api/v1/webhooks",
            Some(&admin),
            Some(bad.clone()),
        )
        .await;
        assert_eq!(s, 422, "{bad} -> {e}");
    }
    let (s, hook) = call(
        &app,
        Method::POST,
        "/api/v1/webhooks",
        Some(&admin),
        Some(json!({"url": url, "events": events})),
    )
    .await;
    assert_eq!(s, 201, "{hook}");
    let secret = hook["secret"].as_str().unwrap().to_string();
    let hid = hook["id"].as_str().unwrap().to_string();

    // video.ready: the first delivery gets a 500, the retry succeeds with the same event id.
    let (cid, lid, video) = course_with_lesson(&app, &inst).await;
    let got = wait_event(&seen, "video.ready", 2).await;
    let (h, body) = &got[1];
    assert_eq!(body["data"]["video_id"], video.as_str());
    assert_eq!(
        got[0].1["id"], body["id"],
        "a retry carries the same event id"
    );
    assert_eq!(
        h["lectern-event-id"].to_str().unwrap(),
        body["id"].as_str().unwrap()
    );
    let sig = h["lectern-signature"].to_str().unwrap();
    let (t, v1) = sig.split_once(",v1=").unwrap();
    let t = t.strip_prefix("t=").unwrap();
    let raw = seen
        .lock()
        .unwrap()
        .iter()
        .find(|(hh, _)| hh["lectern-signature"] == sig)
        .unwrap()
        .1
        .clone();
    let mac = lectern_core::auth::hmac(secret.as_bytes(), format!("{t}.{raw}").as_bytes());
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(v1, hex, "HMAC-SHA256 over timestamp and body");
    assert!((chrono::Utc::now().timestamp() - t.parse::<i64>().unwrap()).abs() < 120);

    let (s, d) = call(
        &app,
        Method::GET,
        &format!("/api/v1/webhooks/{hid}/deliveries"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, 200, "{d}");
    let ready = d["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["type"] == "video.ready")
        .unwrap()
        .clone();
    assert_eq!(ready["state"], "delivered", "{ready}");
    let log = ready["attempt_log"].as_array().unwrap();
    assert_eq!(
        (log[0]["status"].as_i64(), log[1]["status"].as_i64()),
        (Some(500), Some(204)),
        "{ready}"
    );

    // video.failed with its code.
    let text = app.data.path().join("notes.txt");
    std::fs::write(&text, "not a video at all").unwrap();
    let bad = app.upload(&inst, &text, 1).await;
    let got = wait_event(&seen, "video.failed", 1).await;
    assert_eq!(got[0].1["data"]["video_id"], bad.as_str());
    assert_eq!(got[0].1["data"]["error"]["code"], "unsupported-input");

    // lesson.completed when a learner's watched ranges cover the lesson.
    call(
        &app,
        Method::POST,
        &format!("/api/v1/courses/{cid}/enrollments"),
        Some(&inst),
        Some(json!({"user": "fay"})),
    )
    .await;
    let fay = tok(Role::Learner, "fay", "org-w");
    let (s, _) = call(
        &app,
        Method::POST,
        &format!("/api/v1/lessons/{lid}/progress"),
        Some(&fay),
        Some(json!({"position_s": 3.0, "watched": [[0.0, 3.0]]})),
    )
    .await;
    assert_eq!(s, 202);
    let got = wait_event(&seen, "lesson.completed", 1).await;
    assert_eq!(
        (
            got[0].1["data"]["user"].as_str(),
            got[0].1["data"]["lesson_id"].as_str()
        ),
        (Some("fay"), Some(lid.as_str()))
    );

    // Another org's admin sees nothing; removing the endpoint stops deliveries.
    let foreign = tok(Role::Admin, "boss", "org-x");
    assert_eq!(
        call(
            &app,
            Method::GET,
            &format!("/api/v1/webhooks/{hid}/deliveries"),
            Some(&foreign),
            None
        )
        .await
        .0,
        404
    );
    let (_, list) = call(&app, Method::GET, "/api/v1/webhooks", Some(&foreign), None).await;
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 0);
    assert_eq!(
        call(
            &app,
            Method::DELETE,
            &format!("/api/v1/webhooks/{hid}"),
            Some(&foreign),
            None
        )
        .await
        .0,
        404,
        "another org's admin cannot remove it"
    );
    // Plain http is refused unless the operator allowed it (this server did).
    let strict = TestApp::spawn(Db::Sqlite);
    let (s, e) = call(
        &strict,
        Method::POST,
        "/api/v1/webhooks",
        Some(&admin),
        Some(json!({"url": "http://hooks.example/h", "events": events})),
    )
    .await;
    assert_eq!((s, e["code"].as_str()), (422, Some("invalid-url")), "{e}");
    // SSRF: loopback, metadata, private and odd spellings of them are refused at registration,
    // and the operator's allow-list admits only what it names.
    for (server, u) in [
        (&strict, "https://127.0.0.1:9/"),
        (&strict, "https://169.254.169.254/latest/meta-data/"),
        (&strict, "https://10.0.0.1/"),
        (&strict, "https://[::1]:9/"),
        (&strict, "https://0x7f.1:9/"),
        (&strict, "https://2130706433:9/"),
        (&strict, "https://localhost:9/"),
        (&app, "https://10.0.0.1/"),
    ] {
        let (s, e) = call(
            server,
            Method::POST,
            "/api/v1/webhooks",
            Some(&admin),
            Some(json!({"url": u, "events": events})),
        )
        .await;
        assert_eq!(
            (s, e["code"].as_str()),
            (422, Some("forbidden-url")),
            "{u}: {e}"
        );
    }
    let long = format!("https://hooks.example/{}", "a".repeat(1 << 20));
    let (s, e) = call(
        &app,
        Method::POST,
        "/api/v1/webhooks",
        Some(&admin),
        Some(json!({"url": long, "events": events})),
    )
    .await;
    assert_eq!((s, e["code"].as_str()), (422, Some("invalid-url")));
    assert_eq!(
        call(
            &app,
            Method::DELETE,
            &format!("/api/v1/webhooks/{hid}"),
            Some(&admin),
            None
        )
        .await
        .0,
        204
    );
    let (_, list) = call(&app, Method::GET, "/api/v1/webhooks", Some(&admin), None).await;
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn rate_limits_request_ids_and_route_metrics() {
    let app = Opts::new(Db::Sqlite)
        .roles("api,ingest,origin")
        .env("LECTERN_RATE_LIMIT_USER_RPS", "2")
        .spawn();
    let greedy = tok(Role::Learner, "greedy", "org-r");
    let mut limited = None;
    for _ in 0..20 {
        let r = app
            .http
            .get(format!("{}/api/v1/courses", app.base))
            .bearer_auth(&greedy)
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("a user over 2 req/s is limited");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["code"], "rate-limited");
    let other = tok(Role::Learner, "calm", "org-r");
    assert_eq!(
        call(&app, Method::GET, "/api/v1/courses", Some(&other), None)
            .await
            .0,
        200,
        "limits are per user"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        call(&app, Method::GET, "/api/v1/courses", Some(&greedy), None)
            .await
            .0,
        200,
        "the bucket refills"
    );

    // Request ids: generated, or the caller's echoed.
    let r = app
        .http
        .get(format!("{}/api/v1/courses", app.base))
        .bearer_auth(&other)
        .header("X-Request-Id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-me-42");
    let r = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"].len(), 32);

    let (_, _, m) = fetch(&app, &format!("{}/metrics", app.base)).await;
    let m = String::from_utf8_lossy(&m);
    for needle in [
        r#"lectern_http_requests_total{method="GET",route="/api/v1/courses",status="2xx"}"#,
        r#"lectern_http_requests_total{method="GET",route="/api/v1/courses",status="4xx"}"#,
        r#"lectern_http_request_duration_seconds_bucket{method="GET",route="/api/v1/courses""#,
        r#"lectern_jobs{state="queued"}"#,
        "lectern_queue_oldest_age_seconds",
        r#"lectern_db_pool_connections{state="idle"}"#,
        "lectern_rate_limited_total",
    ] {
        assert!(m.contains(needle), "/metrics lacks {needle}");
    }

    // Per-address limit, for callers without a token too.
    let app = Opts::new(Db::Sqlite)
        .roles("api")
        .env("LECTERN_RATE_LIMIT_IP_RPS", "1")
        .spawn();
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(
            call(&app, Method::GET, "/api/v1/courses", None, None)
                .await
                .0,
        );
    }
    assert!(codes.contains(&401) && codes.contains(&429), "{codes:?}");
}

#[tokio::test]
async fn the_openapi_document_covers_routes_that_exist() {
    let app = TestApp::spawn(Db::Sqlite);
    let (s, doc) = call(&app, Method::GET, "/api/v1/openapi.json", None, None).await;
    assert_eq!(s, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    for code in ["423", "507"] {
        assert!(
            paths["/files/{id}"]["patch"]["responses"]
                .get(code)
                .is_some(),
            "PATCH /files/{{id}} lacks {code}"
        );
    }
    let mut ops = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            ops += 1;
            let responses = op["responses"].as_object().unwrap();
            assert!(!responses.is_empty(), "{method} {path}");
            // The listener's own refusals apply to every operation.
            for code in ["400", "414", "431", "503"] {
                assert!(responses.contains_key(code), "{method} {path} lacks {code}");
            }
            for (code, r) in responses {
                if code.starts_with('4') {
                    assert_eq!(
                        r["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/Error",
                        "{method} {path} {code}"
                    );
                }
            }
            // The route exists: no router 404/405 (an unknown id's 404 names the resource).
            let url = path
                .replace("{id}", "0123456789abcdef0123456789abcdef")
                .replace(['{', '}'], "");
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = app
                .http
                .request(m, format!("{}{url}", app.base))
                .header("Tus-Resumable", "1.0.0")
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = if method == "head" {
                Value::Null
            } else {
                r.json().await.unwrap_or(Value::Null)
            };
            assert_ne!(status, 405, "{method} {path}");
            assert!(
                !(status == 404 && body["message"].as_str().unwrap_or("").starts_with("route")),
                "{method} {path} is documented but not routed"
            );
        }
    }
    assert!(ops >= 40, "{ops} operations documented");
}

/// The hot queries, with literal values, that must be served by an index.
const HOT_QUERIES: &[(&str, &str)] = &[
    ("enrollment check", "SELECT user_id FROM enrollments WHERE course_id = 'c' AND user_id = 'u'"),
    ("lesson access", "SELECT l.id, v.state FROM lessons l LEFT JOIN videos v ON v.id = l.video_id WHERE l.id = 'l' AND l.org = 'o'"),
    ("learner may watch", "SELECT l.id FROM lessons l JOIN enrollments e ON e.course_id = l.course_id WHERE l.video_id = 'v' AND l.org = 'o' AND e.user_id = 'u' LIMIT 1"),
    ("course list", "SELECT c.id FROM courses c WHERE c.org = 'o' AND (c.created_at < 5 OR (c.created_at = 5 AND c.id < 'x')) ORDER BY c.created_at DESC, c.id DESC LIMIT 21"),
    ("lesson list", "SELECT l.id FROM lessons l WHERE l.course_id = 'c' AND l.org = 'o' AND (l.position > 1 OR (l.position = 1 AND l.id > 'x')) ORDER BY l.position, l.id LIMIT 21"),
    ("progress of a learner in a course", "SELECT COUNT(*) FROM progress WHERE course_id = 'c' AND user_id = 'u' AND completed = 1"),
    ("continue watching", "SELECT p.lesson_id FROM progress p WHERE p.org = 'o' AND p.user_id = 'u' AND p.completed = 0 ORDER BY p.updated_at DESC LIMIT 21"),
    ("course report", "SELECT e.user_id, SUM(p.watched_s) FROM enrollments e LEFT JOIN progress p ON p.course_id = e.course_id AND p.user_id = e.user_id WHERE e.course_id = 'c' AND e.org = 'o' AND e.user_id > '' GROUP BY e.user_id ORDER BY e.user_id LIMIT 21"),
    ("video list", "SELECT id FROM videos WHERE org = 'o' AND state = 'ready' AND (created_at < 5 OR (created_at = 5 AND id < 'x')) ORDER BY created_at DESC, id DESC LIMIT 21"),
    ("queue position", "SELECT COUNT(*) FROM videos WHERE state = 'queued' AND queue_priority > 5"),
    ("fairness head of a class", "SELECT id FROM videos WHERE org = 'o' AND state = 'queued' AND priority = 10 ORDER BY queued_at, id LIMIT 1"),
    ("recent service of an org", "SELECT COUNT(*) FROM videos WHERE org = 'o' AND (state = 'processing' OR started_at >= 5)"),
    ("due webhook deliveries", "SELECT id FROM webhook_deliveries WHERE state = 'pending' AND next_at <= 5 ORDER BY next_at LIMIT 32"),
    ("expired uploads", "SELECT id FROM uploads WHERE state = 'uploading' AND expires_at < 5"),
];

#[tokio::test]
async fn hot_queries_use_indexes_on_postgres() {
    use sqlx::{Connection, Row};
    let app = TestApp::spawn(Db::Postgres);
    let mut c = sqlx::PgConnection::connect(&app.database_url().unwrap())
        .await
        .unwrap();
    // With sequential scans priced out, any plan that still scans has no usable index.
    sqlx::query("SET enable_seqscan = off")
        .execute(&mut c)
        .await
        .unwrap();
    let ids: Vec<(String, String)> =
        sqlx::query_as("SELECT indexname, tablename FROM pg_indexes WHERE schemaname = 'public'")
            .fetch_all(&mut c)
            .await
            .unwrap();
    assert!(ids.len() > 10, "{ids:?}");
    for (name, q) in HOT_QUERIES {
        let plan: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN {q}")))
            .fetch_all(&mut c)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect();
        let plan = plan.join("\n");
        assert!(!plan.contains("Seq Scan"), "{name} scans a table:\n{plan}");
        assert!(plan.contains("Index"), "{name}:\n{plan}");
    }
}

#[tokio::test]
async fn hot_queries_use_indexes_on_sqlite() {
    use sqlx::{Connection, Row};
    let app = Opts::new(Db::Sqlite).roles("api").spawn();
    let url = format!("sqlite://{}", app.data.path().join("lectern.db").display());
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    for (name, q) in HOT_QUERIES {
        let plan: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {q}")))
            .fetch_all(&mut c)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>("detail"))
            .collect();
        // "SCAN t" without an index is a full table scan; "SEARCH t USING INDEX" is not.
        for step in &plan {
            let full_scan =
                step.starts_with("SCAN ") && !step.contains("USING") && !step.contains("CONSTANT");
            assert!(!full_scan, "{name} scans a table: {plan:?}");
        }
    }
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

#[tokio::test]
async fn redis_shares_the_cache_and_carries_invalidations_between_api_nodes() {
    let redis =
        std::env::var("LECTERN_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let a = Opts::new(Db::Postgres)
        .roles("api,origin")
        .env("LECTERN_REDIS_URL", &redis)
        .spawn();
    let b = a.peer_with("api", &[]);
    let inst = tok(Role::Instructor, "prof", "org-redis");
    let (_, c) = call(
        &a,
        Method::POST,
        "/api/v1/courses",
        Some(&inst),
        Some(json!({"title": "Shared"})),
    )
    .await;
    let cid = c["id"].as_str().unwrap().to_string();
    let (_, l) = call(
        &a,
        Method::POST,
        &format!("/api/v1/courses/{cid}/lessons"),
        Some(&inst),
        Some(json!({"title": "One"})),
    )
    .await;
    let lid = l["id"].as_str().unwrap().to_string();
    call(
        &a,
        Method::POST,
        &format!("/api/v1/courses/{cid}/enrollments"),
        Some(&inst),
        Some(json!({"user": "gus"})),
    )
    .await;
    let gus = tok(Role::Learner, "gus", "org-redis");
    assert_eq!(
        heartbeat(&a, &gus, &lid).await,
        202,
        "node A checks the database and fills both tiers"
    );
    assert_eq!(
        heartbeat(&b, &gus, &lid).await,
        202,
        "node B finds the entry in Redis"
    );
    let (_, _, m) = fetch(&b, &format!("{}/metrics", b.base)).await;
    assert!(
        String::from_utf8_lossy(&m)
            .contains(r#"lectern_cache_requests_total{cache="lesson-access",result="hit-redis"}"#),
        "shared tier hit on B"
    );
    // Unenrolled on node B: node A, which holds the entry in memory, refuses at once.
    assert_eq!(
        call(
            &b,
            Method::DELETE,
            &format!("/api/v1/courses/{cid}/enrollments/gus"),
            Some(&inst),
            None
        )
        .await
        .0,
        204
    );
    let mut status = 0;
    for _ in 0..20 {
        status = heartbeat(&a, &gus, &lid).await;
        if status == 403 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status, 403,
        "the invalidation reached node A well within the 30 s TTL"
    );
    assert_eq!(heartbeat(&b, &gus, &lid).await, 403);
}

async fn heartbeat(app: &TestApp, token: &str, lesson: &str) -> u16 {
    let body = json!({"position_s": 5.0, "watched": [[0.0, 5.0]]});
    call(
        app,
        Method::POST,
        &format!("/api/v1/lessons/{lesson}/progress"),
        Some(token),
        Some(body),
    )
    .await
    .0
}
