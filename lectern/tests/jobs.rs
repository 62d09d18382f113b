//! The admin job queue API: listing with filters and cursor paging, roles, cancel and retry.

mod common;

use common::{Db, Opts, TestApp};
use lectern_core::auth::Role;
use serde_json::Value;

async fn get(app: &TestApp, token: &str, path: &str) -> (u16, Value) {
    let r = app
        .http
        .get(format!("{}{path}", app.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn post(app: &TestApp, token: &str, path: &str) -> (u16, Value) {
    let r = app
        .http
        .post(format!("{}{path}", app.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn admins_list_cancel_and_retry_their_orgs_jobs() {
    // No worker role: jobs stay queued, so the queue can be inspected and acted on.
    let app = Opts::new(Db::Sqlite).roles("api,ingest,origin").spawn();
    let inst_a = app.token(Role::Instructor, "org-a");
    let inst_b = app.token(Role::Instructor, "org-b");
    let mut a_ids = Vec::new();
    for i in 0..3u8 {
        let url = app.create_upload(&inst_a, 4, "").await;
        assert_eq!(app.patch(&url, &inst_a, 0, vec![i; 4]).await.status(), 204);
        a_ids.push(url.rsplit('/').next().unwrap().to_string());
    }
    let url_b = app.create_upload(&inst_b, 4, "").await;
    assert_eq!(
        app.patch(&url_b, &inst_b, 0, vec![9; 4]).await.status(),
        204
    );
    let _still_uploading = app.create_upload(&inst_a, 100, "").await;

    let admin_a = app.token(Role::Admin, "org-a");
    let (s, page) = get(&app, &admin_a, "/api/v1/admin/jobs?limit=2").await;
    assert_eq!(s, 200, "{page}");
    let jobs = page["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    assert!(
        jobs.iter()
            .all(|j| j["org"] == "org-a" && j["state"] == "queued"),
        "{page}"
    );
    let j = &jobs[0];
    for k in [
        "id",
        "video_id",
        "priority",
        "attempts",
        "worker",
        "progress",
        "queued_at",
        "started_at",
        "finished_at",
        "error",
    ] {
        assert!(j.get(k).is_some(), "job has {k}: {j}");
    }
    assert_eq!(j["priority"], 10);
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_string();
    let (_, page2) = get(
        &app,
        &admin_a,
        &format!("/api/v1/admin/jobs?limit=2&cursor={cursor}"),
    )
    .await;
    assert_eq!(
        page2["jobs"].as_array().unwrap().len(),
        1,
        "uploads still in progress are not jobs"
    );
    assert_eq!(page2["next_cursor"], Value::Null);
    let mut seen: Vec<String> = jobs
        .iter()
        .chain(page2["jobs"].as_array().unwrap())
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    seen.sort();
    let mut want = a_ids.clone();
    want.sort();
    assert_eq!(seen, want, "paging visits every job once");

    // Roles: instructors and learners may not; admins see only their org; operators see all.
    assert_eq!(get(&app, &inst_a, "/api/v1/admin/jobs").await.0, 403);
    assert_eq!(
        get(&app, &admin_a, "/api/v1/admin/jobs?org=org-b").await.0,
        403
    );
    let op = app.token(Role::Operator, "platform");
    let (_, all) = get(&app, &op, "/api/v1/admin/jobs").await;
    assert_eq!(all["jobs"].as_array().unwrap().len(), 4);
    let (_, only_b) = get(&app, &op, "/api/v1/admin/jobs?org=org-b").await;
    assert_eq!(only_b["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(
        get(&app, &admin_a, "/api/v1/admin/jobs?limit=101").await.0,
        400
    );
    assert_eq!(
        get(&app, &admin_a, "/api/v1/admin/jobs?state=exploded")
            .await
            .0,
        400
    );
    assert_eq!(
        get(&app, &admin_a, "/api/v1/admin/jobs?cursor=nonsense")
            .await
            .0,
        400
    );

    // Cancel, then retry; another org's job is invisible.
    let id = &a_ids[0];
    let id_b = url_b.rsplit('/').next().unwrap();
    assert_eq!(
        post(&app, &admin_a, &format!("/api/v1/admin/jobs/{id_b}/cancel"))
            .await
            .0,
        404
    );
    let (s, j) = post(&app, &admin_a, &format!("/api/v1/admin/jobs/{id}/cancel")).await;
    assert_eq!((s, j["state"].as_str()), (200, Some("canceled")), "{j}");
    assert!(j["finished_at"].is_string());
    assert_eq!(app.status(&inst_a, id).await["state"], "canceled");
    let (s, e) = post(&app, &admin_a, &format!("/api/v1/admin/jobs/{id}/cancel")).await;
    assert_eq!((s, e["code"].as_str()), (409, Some("not-cancelable")));
    let (_, canceled) = get(&app, &admin_a, "/api/v1/admin/jobs?state=canceled").await;
    assert_eq!(canceled["jobs"].as_array().unwrap().len(), 1);
    let (s, j) = post(&app, &admin_a, &format!("/api/v1/admin/jobs/{id}/retry")).await;
    assert_eq!((s, j["state"].as_str()), (200, Some("queued")), "{j}");
    let (s, e) = post(&app, &admin_a, &format!("/api/v1/admin/jobs/{id}/retry")).await;
    assert_eq!((s, e["code"].as_str()), (409, Some("not-retryable")));
    let (s, _) = post(&app, &op, &format!("/api/v1/admin/jobs/{id_b}/cancel")).await;
    assert_eq!(s, 200, "operators act on every org");
    let st = app.status(&inst_a, &a_ids[1]).await;
    assert!(
        st["queue_position"].as_i64().is_some_and(|p| p >= 1),
        "{st}"
    );
}

#[tokio::test]
async fn a_running_job_stops_when_canceled() {
    let app = TestApp::spawn(Db::Sqlite);
    let t = app.token(Role::Admin, "org-c");
    let src = app.data.path().join("long.mp4");
    let out = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=duration=20:size=1920x1080:rate=30",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ])
        .arg(&src)
        .output()
        .expect("ffmpeg");
    assert!(out.status.success());
    let id = app.upload(&t, &src, 1).await;
    for _ in 0..200 {
        if app.status(&t, &id).await["state"] == "processing" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (s, j) = post(&app, &t, &format!("/api/v1/admin/jobs/{id}/cancel")).await;
    assert_eq!(s, 200, "{j}");
    // The single worker slot frees up at once: a short clip queued now is done long before
    // the 20 s 1080p ladder could have finished.
    let started = std::time::Instant::now();
    let next = app.upload(&t, &common::clip("clip-360p.mp4"), 1).await;
    let (done, _) = app.wait_done(&t, &next).await;
    assert_eq!(done["state"], "ready");
    assert!(
        started.elapsed().as_secs_f64() < 12.0,
        "the canceled pipeline kept the worker for {:?}",
        started.elapsed()
    );
    let st = app.status(&t, &id).await;
    assert_eq!(st["state"], "canceled", "{st}");
    let videos = app.data.path().join(format!("objects/videos/{id}"));
    let files = std::fs::read_dir(&videos).map(|d| d.count()).unwrap_or(0);
    assert_eq!(files, 0, "the canceled attempt's output is removed");
}
