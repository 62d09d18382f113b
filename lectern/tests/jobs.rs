//! The admin job queue API: listing with filters and cursor paging, roles, cancel and retry.

mod common;

use common::{Db, Opts, TestApp};
use lectern_core::auth::Role;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

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
    let src = common::long_clip(app.data.path(), "long.mp4", 20, "1920x1080");
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

async fn patch_priority(app: &TestApp, token: &str, id: &str, body: Value) -> (u16, Value) {
    let r = app
        .http
        .patch(format!("{}/api/v1/admin/jobs/{id}", app.base))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Uploads `path` with extra `Upload-Metadata`; returns the video id.
async fn upload_meta(app: &TestApp, token: &str, path: &std::path::Path, meta: &str) -> String {
    let bytes = std::fs::read(path).unwrap();
    let url = app.create_upload(token, bytes.len() as u64, meta).await;
    assert_eq!(app.patch(&url, token, 0, bytes).await.status(), 204);
    url.rsplit('/').next().unwrap().to_string()
}

/// Every job of the deployment, in the order workers started them.
async fn start_order(app: &TestApp) -> Vec<String> {
    start_order_of(app, "").await
}

/// The started jobs in the given states (comma-separated; all when empty), in start order.
async fn start_order_of(app: &TestApp, states: &str) -> Vec<String> {
    let op = app.token(Role::Operator, "platform");
    let mut jobs: Vec<(String, String)> = Vec::new();
    for state in states.split(',') {
        let q = if state.is_empty() {
            "/api/v1/admin/jobs?limit=100".to_string()
        } else {
            format!("/api/v1/admin/jobs?limit=100&state={state}")
        };
        let (s, page) = get(app, &op, &q).await;
        assert_eq!(s, 200);
        jobs.extend(page["jobs"].as_array().unwrap().iter().filter_map(|j| {
            Some((
                j["started_at"].as_str()?.to_string(),
                j["id"].as_str().unwrap().to_string(),
            ))
        }));
    }
    jobs.sort();
    jobs.into_iter().map(|(_, id)| id).collect()
}

#[tokio::test]
async fn orgs_take_turns_classes_order_the_queue_and_admins_change_priority() {
    // Jobs pile up on an API-only process; one single-slot worker process starts later.
    let api = Opts::new(Db::Sqlite).roles("api,ingest,origin").spawn();
    let clip = common::clip("clip-360p.mp4");
    let a = api.token(Role::Instructor, "org-a");
    let b = api.token(Role::Instructor, "org-b");
    let name = "filename Y2xpcC5tcDQ=";
    let mut a_ids = Vec::new();
    for _ in 0..4 {
        a_ids.push(upload_meta(&api, &a, &clip, name).await);
    }
    let b1 = upload_meta(&api, &b, &clip, name).await;
    // `priority=bulk` waits behind interactive uploads, whoever queued first.
    let bulk = upload_meta(&api, &a, &clip, &format!("{name},priority YnVsaw==")).await;
    let late = upload_meta(&api, &a, &clip, name).await;

    let admin_a = api.token(Role::Admin, "org-a");
    let admin_b = api.token(Role::Admin, "org-b");
    assert_eq!(
        patch_priority(&api, &a, &late, json!({"priority": 20}))
            .await
            .0,
        403,
        "instructors cannot reorder the queue"
    );
    assert_eq!(
        patch_priority(&api, &admin_b, &late, json!({"priority": 20}))
            .await
            .0,
        404,
        "another org's job is invisible"
    );
    for bad in [
        json!({"priority": 101}),
        json!({"priority": -1}),
        json!({"priority": "high"}),
        json!({}),
    ] {
        let (s, e) = patch_priority(&api, &admin_a, &late, bad.clone()).await;
        assert_eq!(s, 400, "{bad} -> {e}");
        assert!(e["code"].is_string(), "{e}");
    }
    // The admin makes the last upload a replacement: it jumps the whole queue.
    let (s, j) = patch_priority(&api, &admin_a, &late, json!({"priority": 20})).await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(
        (j["priority"].as_i64(), j["queue_position"].as_i64()),
        (Some(20), Some(1)),
        "{j}"
    );
    let st = api.status(&b, &b1).await;
    assert!(st["queue_position"].as_i64().is_some(), "{st}");
    let (_, j) = get(&api, &admin_a, "/api/v1/admin/jobs?state=queued").await;
    let bulk_job = j["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == bulk.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        (
            bulk_job["priority"].as_i64(),
            bulk_job["queue_position"].as_i64()
        ),
        (Some(0), Some(7)),
        "{bulk_job}"
    );
    // The list reads a whole page's positions in one statement: each must be what the
    // video's own status says, and no two queued jobs may share a place.
    let listed = j["jobs"].as_array().unwrap();
    let mut places = Vec::new();
    for job in listed {
        let st = api.status(&a, job["id"].as_str().unwrap()).await;
        assert_eq!(
            (&st["queue_position"], &st["eta_s"]),
            (&job["queue_position"], &job["eta_s"]),
            "{job} vs {st}"
        );
        places.push(
            job["queue_position"]
                .as_i64()
                .expect("a queued job has a place"),
        );
    }
    places.sort();
    places.dedup();
    assert_eq!(places.len(), listed.len(), "{places:?}");

    let worker = api.peer_with("worker", &[("LECTERN_WORKERS", "1")]);
    let mut all = a_ids.clone();
    all.extend([b1.clone(), bulk.clone(), late.clone()]);
    for id in &all {
        let t = if *id == b1 { &b } else { &a };
        let (st, _) = api.wait_done(t, id).await;
        assert_eq!(st["state"], "ready", "{st}");
    }
    // The replacement first; then org B's only lecture, before org A's second; bulk last.
    let mut want = vec![late.clone(), b1.clone()];
    want.extend(a_ids.iter().cloned());
    want.push(bulk.clone());
    assert_eq!(start_order(&api).await, want);
    let (s, e) = patch_priority(&api, &admin_a, &late, json!({"priority": 10})).await;
    assert_eq!((s, e["code"].as_str()), (409, Some("not-queued")));
    drop(worker);
}

#[tokio::test]
async fn a_burst_from_several_orgs_takes_turns_one_job_per_org() {
    // Three orgs queue three lectures each (A's first, then B's, then C's) before a single
    // slot starts. Every round serves each org once: with running attempts alone as the
    // round, every head tied at 1 after the first round and the oldest went first
    // (A B C A A B B C C), so an org's burst still ran back to back.
    let api = Opts::new(Db::Sqlite).roles("api,ingest,origin").spawn();
    let clip = common::clip("clip-360p.mp4");
    let name = "filename Y2xpcC5tcDQ=";
    let mut ids = std::collections::HashMap::new();
    for org in ["org-a", "org-b", "org-c"] {
        let t = api.token(Role::Instructor, org);
        for k in 0..3 {
            ids.insert(upload_meta(&api, &t, &clip, name).await, (org, k));
        }
    }
    let worker = api.peer_with("worker", &[("LECTERN_WORKERS", "1")]);
    for (id, (org, _)) in &ids {
        let (st, _) = api.wait_done(&api.token(Role::Instructor, org), id).await;
        assert_eq!(st["state"], "ready", "{st}");
    }
    drop(worker);
    let order: Vec<String> = start_order(&api)
        .await
        .iter()
        .map(|id| {
            let (org, k) = ids[id];
            format!("{org}#{k}")
        })
        .collect();
    assert_eq!(
        order,
        [
            "org-a#0", "org-b#0", "org-c#0", "org-a#1", "org-b#1", "org-c#1", "org-a#2", "org-b#2",
            "org-c#2"
        ]
    );
}

#[tokio::test]
async fn one_lecture_of_org_b_passes_fifty_of_org_a_on_postgres() {
    // Org A bulk-queues 50 lectures while a single-slot worker is busy with its first one;
    // org B's only lecture must start in the next free slot.
    let api = Opts::new(Db::Postgres).roles("api,ingest,origin").spawn();
    let clip = common::clip("clip-360p.mp4");
    let a = api.token(Role::Instructor, "org-a");
    let b = api.token(Role::Instructor, "org-b");
    let name = "filename Y2xpcC5tcDQ=";
    let worker = api.peer_with("worker", &[("LECTERN_WORKERS", "1")]);
    // A first lecture long enough to keep the slot busy while the others queue.
    let long = common::long_clip(api.data.path(), "long.mp4", 20, "1280x720");
    let first = upload_meta(&api, &a, &long, name).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while api.status(&a, &first).await["state"] != "processing" {
        assert!(
            std::time::Instant::now() < deadline,
            "the first job never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut rest = Vec::new();
    for _ in 0..49 {
        rest.push(upload_meta(&api, &a, &clip, name).await);
    }
    let b1 = upload_meta(&api, &b, &clip, name).await;
    let started_before = start_order_of(&api, "processing,ready").await.len();
    let st = api.status(&b, &b1).await;
    if api.status(&a, &first).await["state"] == "processing" {
        assert_eq!(st["queue_position"], 1, "B is next of 50 queued: {st}");
    }
    let (st, _) = api.wait_done(&b, &b1).await;
    assert_eq!(st["state"], "ready", "{st}");
    drop(worker);
    let order = start_order_of(&api, "processing,ready").await;
    assert_eq!(order[0], first);
    let at = order.iter().position(|x| *x == b1).unwrap();
    assert!(
        at <= started_before,
        "org B's lecture started in the next free slot (start #{at}, {started_before} had started when it was queued)"
    );
}

#[tokio::test]
async fn a_killed_worker_process_loses_no_job_on_postgres() {
    let api = Opts::new(Db::Postgres).roles("api,ingest,origin").spawn();
    let t = api.token(Role::Instructor, "org-k");
    let dir = api.data.path().join("src");
    std::fs::create_dir_all(&dir).unwrap();
    let src = common::long_clip(&dir, "eight.mp4", 8, "1280x720");
    let mut w1 = api.peer_with("worker", &[("LECTERN_WORKERS", "1")]);
    let w2 = api.peer_with("worker", &[("LECTERN_WORKERS", "1")]);
    let name1 = format!("/{}", w1.pid());
    let name2 = format!("/{}", w2.pid());
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(api.upload(&t, &src, 1).await);
    }
    // Wait until each worker process holds a job, then kill -9 the first one.
    let admin = api.token(Role::Admin, "org-k");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let victim = loop {
        let (_, page) = get(&api, &admin, "/api/v1/admin/jobs?state=processing").await;
        let running: Vec<(String, String)> = page["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| {
                (
                    j["id"].as_str().unwrap().into(),
                    j["worker"].as_str().unwrap_or("").into(),
                )
            })
            .collect();
        let on1 = running.iter().find(|(_, w)| w.ends_with(&name1));
        if let Some((id, _)) = on1.filter(|_| running.iter().any(|(_, w)| w.ends_with(&name2))) {
            break id.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "both workers never ran at once: {page}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    // Operators see both worker processes, alive, each with the job it runs; admins may not.
    let op = api.token(Role::Operator, "platform");
    let (s, fleet) = get(&api, &op, "/api/v1/admin/workers").await;
    assert_eq!(s, 200, "{fleet}");
    let workers = fleet["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2, "{fleet}");
    for name in [&name1, &name2] {
        let w = workers
            .iter()
            .find(|w| w["name"].as_str().unwrap().ends_with(name.as_str()))
            .unwrap_or_else(|| panic!("{name} missing: {fleet}"));
        assert_eq!(
            (w["alive"].clone(), w["slots"].clone()),
            (json!(true), json!(1)),
            "{w}"
        );
        assert_eq!(w["running"].as_array().unwrap().len(), 1, "{w}");
        assert_eq!(w["running"][0]["org"], "org-k");
    }
    assert_eq!(get(&api, &admin, "/api/v1/admin/workers").await.0, 403);
    w1.kill9();
    let killed_at = std::time::Instant::now();
    for id in &ids {
        let (st, _) = api.wait_done(&t, id).await;
        assert_eq!(st["state"], "ready", "{st}");
        let renditions = st["renditions"].as_array().unwrap().len();
        assert_eq!(renditions, 2, "{st}");
    }
    let (_, j) = get(&api, &admin, "/api/v1/admin/jobs?state=ready").await;
    let v = j["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == victim.as_str())
        .unwrap()
        .clone();
    assert!(
        v["worker"].as_str().unwrap().ends_with(&name2),
        "the survivor finished it: {v}"
    );
    assert!(v["attempts"].as_i64().unwrap() >= 2, "{v}");
    // Three missed 10 s heartbeats hand the job over; the contract allows 60 s.
    let started = chrono::DateTime::parse_from_rfc3339(v["started_at"].as_str().unwrap()).unwrap();
    let waited = started.timestamp_millis()
        - (chrono::Utc::now().timestamp_millis() - killed_at.elapsed().as_millis() as i64);
    assert!(waited < 60_000, "picked up {waited} ms after the kill");
    let (_, fleet) = get(&api, &op, "/api/v1/admin/workers").await;
    let dead = fleet["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"].as_str().unwrap().ends_with(&name1))
        .cloned()
        .unwrap_or(json!({"alive": false}));
    assert_eq!(
        dead["alive"], false,
        "a killed worker stops beating: {fleet}"
    );
    // Only the published attempt's output remains (the dead attempt's prefix is never listed).
    let pb = api.playback(&t, &victim).await;
    let (s, _, _) = common::fetch(&api, pb["url"].as_str().unwrap()).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn sigterm_past_the_drain_timeout_hands_a_running_job_back() {
    let mut app = Opts::new(Db::Sqlite)
        .env("LECTERN_WORKERS", "1")
        .env("LECTERN_WORKER_DRAIN_TIMEOUT", "1s")
        .spawn();
    let t = app.token(Role::Admin, "org-s");
    let src = common::long_clip(app.data.path(), "twenty.mp4", 20, "1920x1080");
    let id = app.upload(&t, &src, 1).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let st = app.status(&t, &id).await;
        if st["state"] == "processing" && st["progress"].as_f64().unwrap() >= 0.05 {
            let eta = st["eta_s"].as_f64().expect("eta_s while processing");
            // The 20 s source encodes at a few fps on 2 cores: minutes, not zero or days.
            assert!(eta > 1.0 && eta < 3600.0, "{st}");
            assert_eq!(st["queue_position"], Value::Null, "{st}");
            let (_, jobs) = get(&app, &t, "/api/v1/admin/jobs?state=processing").await;
            let fps = jobs["jobs"][0]["fps"].as_f64();
            assert!(
                fps.is_some_and(|f| f > 0.0),
                "encoding speed is reported: {jobs}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{st}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // A 20 s 1080p ladder takes far longer than this on 2 cores: past the 1 s drain the job
    // was handed back, not finished.
    let took = app.sigterm_and_wait();
    assert!(took.as_secs_f64() < 8.0, "SIGTERM took {took:?}");
    app.restart();
    let (st, _) = app.wait_done(&t, &id).await;
    assert_eq!(st["state"], "ready", "{st}");
    assert_eq!(st["attempts"], 2, "{st}");
    let prefixes = std::fs::read_dir(app.data.path().join(format!("objects/videos/{id}")))
        .unwrap()
        .count();
    assert_eq!(prefixes, 1, "the handed-back attempt left no output");
}

#[tokio::test]
async fn an_attempt_past_its_time_limit_is_retried_then_fails_with_a_code() {
    let dir = tempfile::tempdir().unwrap();
    let ladder = lectern_core::ladder::DEFAULT_LADDER
        .replace("timeout_base_s = 600.0", "timeout_base_s = 0.0")
        .replace("timeout_per_media_s = 4.0", "timeout_per_media_s = 0.01");
    assert_ne!(ladder, lectern_core::ladder::DEFAULT_LADDER);
    let file = dir.path().join("tight.toml");
    std::fs::write(&file, ladder).unwrap();
    let app = Opts::new(Db::Sqlite)
        .env("LECTERN_PIPELINE", file.to_str().unwrap())
        .spawn();
    let t = app.token(Role::Admin, "org-t");
    let id = app.upload(&t, &common::clip("clip-720p.mp4"), 1).await;
    let (st, seen) = app.wait_done(&t, &id).await;
    assert_eq!(st["state"], "failed", "{st}");
    assert_eq!(st["error"]["code"], "transcode-timeout", "{st}");
    assert!(st["error"]["message"]
        .as_str()
        .unwrap()
        .contains("timeout_base_s"));
    assert_eq!(st["attempts"], 5, "timeouts are retried: {st} {seen:?}");
}

/// A node's `lectern_cache_requests_total{cache="status",result="hit"}`.
async fn status_cache_hits(app: &TestApp) -> f64 {
    let (_, _, m) = common::fetch(app, &format!("{}/metrics", app.base)).await;
    String::from_utf8_lossy(&m)
        .lines()
        .filter(|l| {
            l.starts_with("lectern_cache_requests_total")
                && l.contains(r#"cache="status""#)
                && l.contains(r#"result="hit""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn status_answers_are_kept_until_the_database_says_the_video_changed() {
    // Two API nodes of one deployment and no worker: the uploads stay queued.
    let a = Opts::new(Db::Postgres).roles("api,ingest,origin").spawn();
    let b = a.peer_with("api,ingest,origin", &[]);
    let clip = common::clip("clip-360p.mp4");
    let inst = a.token(Role::Instructor, "org-a");
    let admin = a.token(Role::Admin, "org-a");
    let name = "filename Y2xpcC5tcDQ=";
    let first = upload_meta(&a, &inst, &clip, name).await;
    let second = upload_meta(&a, &inst, &clip, name).await;
    // Once B listens for changes, its polls are answered from memory.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = b.status(&inst, &second).await;
        assert_eq!(
            (st["state"].as_str(), st["queue_position"].as_i64()),
            (Some("queued"), Some(2)),
            "{st}"
        );
        if status_cache_hits(&b).await >= 5.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node B never answered a status from its cache"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = b.status(&inst, &first).await;

    // The other node cancels the first job: B shows the cancel, and the second job's new
    // place, as soon as PostgreSQL's notification reaches it (not after the cache's 5 s
    // safety expiry).
    let (s, j) = post(&a, &admin, &format!("/api/v1/admin/jobs/{first}/cancel")).await;
    assert_eq!((s, j["state"].as_str()), (200, Some("canceled")), "{j}");
    let t = Instant::now();
    loop {
        let st1 = b.status(&inst, &first).await;
        let st2 = b.status(&inst, &second).await;
        if st1["state"] == "canceled" && st2["queue_position"] == 1 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(1), "{st1} {st2}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("node B saw another node's cancel after {:?}", t.elapsed());

    // A statement from outside Lectern (an operator's psql) is a change too.
    {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&a.database_url().unwrap())
            .await
            .unwrap();
        sqlx::query("UPDATE videos SET title = 'renamed by hand' WHERE id = $1")
            .bind(&second)
            .execute(&mut c)
            .await
            .unwrap();
    }
    let t = Instant::now();
    while b.status(&inst, &second).await["title"] != "renamed by hand" {
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "the rename never showed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Another org's token gets no answer from the cache that its own read would refuse.
    let other = a.token(Role::Instructor, "org-b");
    let (s, _) = get(&b, &other, &format!("/api/v1/videos/{second}")).await;
    assert_eq!(s, 404);

    // A client reads its own write on the node that served it. (Here the notification usually
    // wins the race against the next request anyway; the statuscache unit test pins the rule
    // that makes it certain: a write this node serves retires its entries at once.)
    let hits = status_cache_hits(&b).await;
    let t = Instant::now();
    while status_cache_hits(&b).await <= hits {
        let _ = b.status(&inst, &second).await;
        assert!(t.elapsed() < Duration::from_secs(5), "B stopped caching");
    }
    let (s, j) = post(&b, &admin, &format!("/api/v1/admin/jobs/{second}/cancel")).await;
    assert_eq!((s, j["state"].as_str()), (200, Some("canceled")), "{j}");
    let st = b.status(&inst, &second).await;
    assert_eq!(
        st["state"], "canceled",
        "the node that canceled answered its old status: {st}"
    );
}
