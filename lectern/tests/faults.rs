//! Faults between Lectern and a real dependency: nothing acknowledged is lost, the error codes
//! are clear, and service recovers by itself when the fault ends.

mod common;

use std::process::Command;

use common::{Db, Opts};
use lectern_core::auth::Role;
use serde_json::{json, Value};

const MIB: usize = 1 << 20;

/// A fault a [`common::FaultProxy`] injects.
type Fault = fn(&common::FaultProxy);

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// A size-limited tmpfs, unmounted on drop.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn new(mib: usize) -> Self {
        let d = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(d.path())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "mounting a tmpfs needs root, as scripts/test.sh runs");
        SmallDisk(d)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// A full data folder: the PATCH that cannot be stored gets 507 `storage-full`, the offset
/// stays at what is stored, and once space is freed the upload resumes to a byte-identical end.
#[tokio::test]
async fn a_full_disk_answers_507_and_loses_nothing() {
    let disk = SmallDisk::new(48);
    let root = disk.0.path().to_path_buf();
    // Room for the database and about 20 MiB of upload; the filler is freed later.
    let filler = root.join("filler");
    let app = Opts::new(Db::Sqlite)
        .roles("api,ingest,origin")
        .env("LECTERN_DATA_DIR", root.to_str().unwrap())
        .spawn();
    std::fs::write(&filler, vec![0u8; 20 * MIB]).unwrap();
    let t = app.token(Role::Instructor, "org-full");
    let src = data(32 * MIB);
    let url = app.create_upload(&t, src.len() as u64, "").await;
    let mut off = 0usize;
    let mut full = None;
    for c in src.chunks(4 * MIB) {
        let r = app.patch(&url, &t, off as u64, c.to_vec()).await;
        if r.status() == 204 {
            off += c.len();
            continue;
        }
        let status = r.status().as_u16();
        let e: Value = r.json().await.unwrap();
        full = Some((status, e));
        break;
    }
    let (status, e) = full.expect("the disk fills before 32 MiB are stored");
    assert_eq!(
        (status, e["code"].as_str()),
        (507, Some("storage-full")),
        "{e}"
    );
    // The offset is exactly what was acknowledged.
    let (s, head) = app.head(&url, &t).await;
    assert_eq!(s, 200);
    assert_eq!(
        head.unwrap() as usize,
        off,
        "no offset moved past the stored bytes"
    );
    // The service still answers, and recovers by itself once there is room.
    let h = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(h.status(), 200);
    std::fs::remove_file(&filler).unwrap();
    // The refused request's lease is freed as soon as the database can write again (within
    // the 10 s lease at worst); a 423 meanwhile carries Retry-After, as tus clients expect.
    let mut pos = off;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(12);
    for c in src[pos..].chunks(4 * MIB) {
        let r = loop {
            let r = app.patch(&url, &t, pos as u64, c.to_vec()).await;
            if r.status() == 423 && std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                continue;
            }
            break r;
        };
        assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
        pos += c.len();
    }
    assert!(
        app.download(&url, &t).await == src,
        "byte-identical after the disk filled and was freed"
    );
    drop(app);
    drop(disk);
}

/// Uploads `src` in 4 MiB PATCHes while `fault` runs after the first one, resuming from HEAD
/// after every refusal; every answer must be 204, or 503 with Retry-After (or 423 while a
/// refused writer's lease runs out), and the result byte-identical.
async fn upload_through_fault(
    app: &common::TestApp,
    t: &str,
    src: &[u8],
    outage: std::time::Duration,
    proxy: &common::FaultProxy,
    fault: Fault,
) -> Vec<u16> {
    let url = app.create_upload(t, src.len() as u64, "").await;
    let mut off = 0usize;
    let mut seen = Vec::new();
    let mut cut_at = None;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while off < src.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "no progress: {seen:?}"
        );
        if off > 0 && cut_at.is_none() {
            fault(proxy);
            cut_at = Some(std::time::Instant::now());
        }
        if cut_at.is_some_and(|c| c.elapsed() >= outage) {
            proxy.restore().await;
        }
        let end = (off + 4 * MIB).min(src.len());
        let r = app
            .http
            .patch(&url)
            .bearer_auth(t)
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Offset", off)
            .header("Content-Type", "application/offset+octet-stream")
            .body(src[off..end].to_vec())
            .send()
            .await
            .expect("an answer, never a dropped connection");
        let status = r.status().as_u16();
        seen.push(status);
        match status {
            204 => {
                off = r.headers()["upload-offset"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap()
            }
            503 | 423 => {
                assert!(
                    r.headers().contains_key("retry-after"),
                    "{status} without Retry-After"
                );
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                if cut_at.is_some_and(|c| c.elapsed() >= outage) {
                    proxy.restore().await;
                }
                let (s, h) = app.head(&url, t).await;
                if s == 200 {
                    let h = h.unwrap() as usize;
                    assert!(h >= off, "HEAD went back from {off} to {h}");
                    off = h;
                }
            }
            other => panic!("PATCH answered {other} during the outage: {seen:?}"),
        }
    }
    proxy.restore().await;
    assert!(
        app.download(&url, t).await == src,
        "byte-identical after the outage"
    );
    seen
}

/// PostgreSQL goes away for 3 s in the middle of an upload (every connection cut, new ones
/// refused, as in a restart): the client sees 503s with Retry-After, never a 500 or a reset,
/// and the upload completes byte-identical and is queued once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_upload_loses_nothing() {
    let proxy = common::FaultProxy::start(&common::authority(&common::pg_admin_url())).await;
    let app = Opts::new(Db::Postgres)
        .pg_via(proxy.port)
        .roles("api,ingest,origin")
        .spawn();
    let t = app.token(Role::Instructor, "org-pg");
    let src = data(24 * MIB);
    let seen = upload_through_fault(
        &app,
        &t,
        &src,
        std::time::Duration::from_secs(3),
        &proxy,
        common::FaultProxy::cut,
    )
    .await;
    assert!(seen.contains(&503), "the outage was seen: {seen:?}");
    let list: Value = app
        .http
        .get(format!("{}/api/v1/videos", app.base))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["videos"][0]["state"], "queued", "{list}");
}

/// The S3 server drops every connection for 3 s mid-upload: the same guarantees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_outage_mid_upload_loses_nothing() {
    let proxy = common::FaultProxy::start(&common::authority(&common::s3_endpoint())).await;
    let app = Opts::new(Db::Sqlite)
        .s3()
        .s3_via(proxy.port)
        .roles("api,ingest,origin")
        .spawn();
    let t = app.token(Role::Instructor, "org-s3");
    let src = data(24 * MIB);
    let seen = upload_through_fault(
        &app,
        &t,
        &src,
        std::time::Duration::from_secs(3),
        &proxy,
        common::FaultProxy::cut,
    )
    .await;
    assert!(seen.contains(&503), "the outage was seen: {seen:?}");
}

/// S3 answers `503 SlowDown` to everything, then stalls (connections open, no byte moving),
/// each for longer than the SDK's own retries last: the same guarantees, and a stalled store
/// costs a bounded wait (`store_timeout_s`), not a hung request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_errors_and_stalls_mid_upload_lose_nothing() {
    let proxy = common::FaultProxy::start(&common::authority(&common::s3_endpoint())).await;
    let app = Opts::new(Db::Sqlite)
        .s3()
        .s3_via(proxy.port)
        .roles("api,ingest,origin")
        .env("LECTERN_STORE_TIMEOUT_S", "2")
        .spawn();
    let t = app.token(Role::Instructor, "org-s3");
    let src = data(16 * MIB);
    let faults: [(&str, Fault); 2] = [
        ("503 SlowDown", common::FaultProxy::slow_down),
        ("stall", common::FaultProxy::stall),
    ];
    for (name, fault) in faults {
        let started = std::time::Instant::now();
        let seen = upload_through_fault(
            &app,
            &t,
            &src,
            std::time::Duration::from_secs(8),
            &proxy,
            fault,
        )
        .await;
        assert!(seen.contains(&503), "{name}: the fault was seen: {seen:?}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "{name}: took {:?}",
            started.elapsed()
        );
    }
}

/// The video's state, or `None` while the API cannot answer.
async fn state_of(app: &common::TestApp, t: &str, id: &str) -> Option<String> {
    let r = app
        .http
        .get(format!("{}/api/v1/videos/{id}", app.base))
        .bearer_auth(t)
        .send()
        .await
        .ok()?;
    let v: Value = r.json().await.ok()?;
    v["state"].as_str().map(str::to_string)
}

async fn wait_for_state(app: &common::TestApp, t: &str, id: &str, want: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let st = state_of(app, t, id).await;
        if st.as_deref() == Some(want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id} never reached {want}: {st:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// S3 stalls while a worker writes a ladder, PostgreSQL restarts while a worker transcodes, and
/// S3 stalls while the origin serves: each attempt that fails is retried and the video ends
/// `ready`; playback answers 503 with Retry-After during the fault (never a 500, never a hang)
/// and plays once it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_mid_transcode_and_playback_recover() {
    let s3 = common::FaultProxy::start(&common::authority(&common::s3_endpoint())).await;
    let pg = common::FaultProxy::start(&common::authority(&common::pg_admin_url())).await;
    let app = Opts::new(Db::Postgres)
        .pg_via(pg.port)
        .s3()
        .s3_via(s3.port)
        .env("LECTERN_STORE_TIMEOUT_S", "2")
        .env("LECTERN_ORIGIN_CACHE_MB", "0")
        .spawn();
    let t = app.token(Role::Admin, "org-f");
    let dir = tempfile::tempdir().unwrap();
    let clip = common::long_clip(dir.path(), "fault.mp4", 6, "640x360");
    let faults: [(&str, &common::FaultProxy, Fault); 2] = [
        ("S3 stall", &s3, common::FaultProxy::stall),
        ("PostgreSQL restart", &pg, common::FaultProxy::cut),
    ];
    let mut ready = Vec::new();
    for (name, proxy, fault) in faults {
        let id = app.upload(&t, &clip, 1).await;
        wait_for_state(&app, &t, &id, "processing").await;
        fault(proxy);
        tokio::time::sleep(std::time::Duration::from_secs(4)).await;
        proxy.restore().await;
        let (st, seen) = app.wait_done(&t, &id).await;
        assert_eq!(st["state"], "ready", "{name}: {st} after {seen:?}");
        ready.push(id);
    }

    // Playback while S3 stalls: a bounded 503, then the segments again.
    let pb = app.playback(&t, &ready[0]).await;
    let master = pb["url"].as_str().unwrap().to_string();
    let (s, _, body) = common::fetch(&app, &master).await;
    assert_eq!(s, 200);
    let text = String::from_utf8(body).unwrap();
    let media = common::join(
        &master,
        text.lines()
            .find(|l| l.ends_with(".m3u8") || l.contains(".m3u8?"))
            .unwrap(),
    );
    s3.stall();
    let started = std::time::Instant::now();
    let r = app.http.get(&media).send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 503, "a stalled store: {:?}", r.text().await);
    assert!(r.headers().contains_key("retry-after"));
    assert!(took < std::time::Duration::from_secs(20), "waited {took:?}");
    s3.restore().await;
    let (s, _, _) = common::fetch(&app, &media).await;
    assert_eq!(s, 200, "playback is back once the store is");
}

/// An API call: status, JSON body (or null) and how long it took.
async fn call(
    app: &common::TestApp,
    method: reqwest::Method,
    path: String,
    token: String,
    body: Value,
) -> (u16, Value, std::time::Duration) {
    let started = std::time::Instant::now();
    let r = app
        .http
        .request(method, format!("{}/api/v1{path}", app.base))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (
        s,
        r.json::<Value>().await.unwrap_or(Value::Null),
        started.elapsed(),
    )
}

/// A ready video in a lesson of a course that learner `u1` of `org` is enrolled in.
struct Lesson {
    admin: String,
    learner: String,
    course: String,
    lesson: String,
}

async fn lesson_with_learner(app: &common::TestApp, org: &str) -> Lesson {
    let admin = app.token(Role::Admin, org);
    let id = app.upload(&admin, &common::clip("clip-360p.mp4"), 1).await;
    let (st, _) = app.wait_done(&admin, &id).await;
    assert_eq!(st["state"], "ready", "{st}");
    let post = reqwest::Method::POST;
    let (_, course, _) = call(
        app,
        post.clone(),
        "/courses".into(),
        admin.clone(),
        json!({"title": "C"}),
    )
    .await;
    let course = course["id"].as_str().unwrap().to_string();
    let (_, lesson, _) = call(
        app,
        post.clone(),
        format!("/courses/{course}/lessons"),
        admin.clone(),
        json!({"title": "L", "video_id": id}),
    )
    .await;
    let lesson = lesson["id"].as_str().unwrap().to_string();
    let (s, e, _) = call(
        app,
        post,
        format!("/courses/{course}/enrollments"),
        admin.clone(),
        json!({"user": "u1"}),
    )
    .await;
    assert!(s == 200 || s == 201, "{s} {e}");
    let learner =
        lectern_core::auth::Keys::from_secret(common::SECRET).mint("u1", org, Role::Learner, 3600);
    Lesson {
        admin,
        learner,
        course,
        lesson,
    }
}

/// PostgreSQL restarts while heartbeats wait in memory for their flush: they are answered 202
/// during the outage, the failed flushes keep them, and they are written once the database is
/// back, so no learner's progress is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_flush_loses_no_progress() {
    let pg = common::FaultProxy::start(&common::authority(&common::pg_admin_url())).await;
    let app = Opts::new(Db::Postgres)
        .pg_via(pg.port)
        .env("LECTERN_RATE_LIMIT_USER_RPS", "0")
        .spawn();
    let Lesson {
        learner,
        course,
        lesson,
        ..
    } = lesson_with_learner(&app, "org-p").await;
    let beat = |to: f64| json!({"position_s": to, "watched": [[0.0, to]]});
    let post = reqwest::Method::POST;
    let path = format!("/lessons/{lesson}/progress");
    let (s, e, _) = call(&app, post.clone(), path.clone(), learner.clone(), beat(0.2)).await;
    assert_eq!(s, 202, "{e}");
    pg.cut();
    let mut accepted = 0;
    for i in 1..=4 {
        let (s, _, took) = call(
            &app,
            post.clone(),
            path.clone(),
            learner.clone(),
            beat(0.2 * i as f64),
        )
        .await;
        assert!(s == 202 || s == 503, "heartbeat during the outage: {s}");
        assert!(took < std::time::Duration::from_secs(15), "waited {took:?}");
        accepted += (s == 202) as u32;
    }
    assert!(
        accepted > 0,
        "heartbeats are taken in memory while the database is away"
    );
    // Longer than a flush interval, so flushes fail and must keep what they hold.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    pg.restore().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (s, p, _) = call(
            &app,
            reqwest::Method::GET,
            format!("/courses/{course}/progress"),
            learner.clone(),
            Value::Null,
        )
        .await;
        let text = p.to_string();
        if s == 200 && p["watched_s"].as_f64().is_some_and(|w| w >= 0.79) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the last heartbeat never reached the database: {s} {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Redis, the shared cache tier, goes away: heartbeats and enrollment changes go on without
/// it (the database answers; no request waits on Redis past a bound), and it is used again
/// once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_costs_only_the_cache() {
    let redis =
        std::env::var("LECTERN_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let proxy = common::FaultProxy::start(&common::authority(&redis)).await;
    let app = Opts::new(Db::Sqlite)
        .env(
            "LECTERN_REDIS_URL",
            &format!("redis://127.0.0.1:{}", proxy.port),
        )
        .env("LECTERN_RATE_LIMIT_USER_RPS", "0")
        .spawn();
    let Lesson {
        admin,
        learner,
        course,
        lesson,
    } = lesson_with_learner(&app, "org-r").await;
    let call = |method, path, token, body| call(&app, method, path, token, body);
    let beat = serde_json::json!({"position_s": 1.0, "watched": [[0.0, 1.0]]});
    let (s, _, _) = call(
        reqwest::Method::POST,
        format!("/lessons/{lesson}/progress"),
        learner.clone(),
        beat.clone(),
    )
    .await;
    assert_eq!(s, 202);
    proxy.cut();
    for i in 0..5 {
        let (s, e, took) = call(
            reqwest::Method::POST,
            format!("/lessons/{lesson}/progress"),
            learner.clone(),
            beat.clone(),
        )
        .await;
        assert_eq!(s, 202, "heartbeat {i} without Redis: {e}");
        assert!(
            took < std::time::Duration::from_secs(2),
            "heartbeat waited {took:?}"
        );
    }
    let (s, e, took) = call(
        reqwest::Method::POST,
        format!("/courses/{course}/enrollments"),
        admin.clone(),
        serde_json::json!({"user": "u2"}),
    )
    .await;
    assert!(s == 200 || s == 201, "enrollment without Redis: {s} {e}");
    assert!(took < std::time::Duration::from_secs(2));
    proxy.restore().await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let (s, _, _) = call(
        reqwest::Method::POST,
        format!("/lessons/{lesson}/progress"),
        learner,
        beat,
    )
    .await;
    assert_eq!(s, 202);
}
