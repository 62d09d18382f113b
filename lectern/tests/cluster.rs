//! What the binary needs to run in a cluster: `/readyz`, worker drain on SIGTERM, `lectern
//! migrate` and `serve --no-migrate`, trusted proxies, and the queue's retention sweep.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Db, Opts, TestApp};
use lectern_core::auth::Role;
use serde_json::Value;

async fn get_json(app: &TestApp, path: &str) -> (u16, Value) {
    let r = app
        .http
        .get(format!("{}{path}", app.base))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_database_and_the_store() {
    let s3 = common::FaultProxy::start(&common::authority(&common::s3_endpoint())).await;
    let pg = common::FaultProxy::start(&common::authority(&common::pg_admin_url())).await;
    let app = Opts::new(Db::Postgres)
        .pg_via(pg.port)
        .s3()
        .s3_via(s3.port)
        .roles("api,ingest,origin")
        .spawn();
    let (s, body) = get_json(&app, "/readyz").await;
    assert_eq!((s, body["status"].as_str()), (200, Some("ready")), "{body}");

    s3.cut();
    let (s, body) = get_json(&app, "/readyz").await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["code"], "store-unavailable", "{body}");
    // Liveness is not readiness: the process itself is fine.
    assert_eq!(get_json(&app, "/healthz").await.0, 200);
    s3.restore().await;

    pg.cut();
    let started = Instant::now();
    let (s, body) = get_json(&app, "/readyz").await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["code"], "database-unavailable", "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "answers within its own timeout"
    );
    pg.restore().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, body) = get_json(&app, "/readyz").await;
        if s == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ready again once both answer: {body}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn sigterm_drains_a_worker_the_running_job_finishes_here() {
    let mut app = Opts::new(Db::Sqlite)
        .env("LECTERN_WORKERS", "1")
        .env("LECTERN_SHUTDOWN_DELAY_S", "1")
        .spawn();
    let t = app.token(Role::Admin, "org-drain");
    let src = common::long_clip(app.data.path(), "eight.mp4", 8, "1280x720");
    let first = app.upload(&t, &src, 1).await;
    let second = app.upload(&t, &common::clip("clip-720p.mp4"), 1).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let st = app.status(&t, &first).await;
        if st["state"] == "processing" && st["progress"].as_f64().unwrap_or(0.0) > 0.0 {
            break;
        }
        assert_ne!(
            st["state"], "ready",
            "the job must still run when SIGTERM comes: {st}"
        );
        assert!(Instant::now() < deadline, "{st}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.send_sigterm();
    // Readiness drops at once, while the process still answers liveness.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (s, body) = get_json(&app, "/readyz").await;
        if s == 503 {
            assert_eq!(body["code"], "draining", "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "/readyz still {s} after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        get_json(&app, "/healthz").await.0,
        200,
        "a draining worker answers /healthz"
    );
    let status = app.wait_exit(Duration::from_secs(180));
    assert!(status.success(), "clean exit after the drain: {status}");

    app.restart();
    let st = app.status(&t, &first).await;
    assert_eq!(st["state"], "ready", "finished during the drain: {st}");
    assert_eq!(st["attempts"], 1, "nothing was handed back: {st}");
    // The queued job was not started during the drain (a start there would have been handed
    // back and counted a second attempt).
    let (st2, _) = app.wait_done(&t, &second).await;
    assert_eq!(st2["state"], "ready", "{st2}");
    assert_eq!(st2["attempts"], 1, "{st2}");
}

/// Runs `lectern` with `args` against `db_url`; returns (success, stdout + stderr).
fn lectern(args: &[&str], db_url: &str, data: &std::path::Path) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lectern"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env("LECTERN_DATABASE_URL", db_url)
        .env("LECTERN_DATA_DIR", data)
        .env("LECTERN_LISTEN", "127.0.0.1:0")
        .env("LECTERN_SECRET", common::SECRET)
        .env("LECTERN_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("lectern {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn migrate_then_serve_without_ddl() {
    let name = format!("lectern_m_{}", lectern_core::new_id());
    common::pg_exec(format!("CREATE DATABASE {name}"));
    let _drop = DropDb(name.clone());
    let url = common::pg_url_for(&name);
    let data = tempfile::tempdir().unwrap();

    // An empty database: --no-migrate refuses, and says what to run.
    let (ok, out) = lectern(&["serve", "--no-migrate"], &url, data.path());
    assert!(!ok, "{out}");
    assert!(
        out.contains("no Lectern schema") && out.contains("lectern migrate"),
        "{out}"
    );

    let (ok, out) = lectern(&["migrate"], &url, data.path());
    assert!(ok, "{out}");
    assert!(out.contains("is current"), "{out}");
    // Idempotent, as a Job that reruns on every rollout must be.
    let (ok, out) = lectern(&["migrate"], &url, data.path());
    assert!(ok, "{out}");

    // Now a pod without DDL rights starts on it.
    let app = serve_without_ddl(&url).await;
    let t = app.token(Role::Admin, "org-m");
    let id = app.upload(&t, &common::clip("clip-720p.mp4"), 1).await;
    let (st, _) = app.wait_done(&t, &id).await;
    assert_eq!(st["state"], "ready", "{st}");
    drop(app);

    // A schema behind the binary (as after deploying a new release without its migrate Job).
    behind(&url).await;
    let (ok, out) = lectern(&["serve", "--no-migrate"], &url, data.path());
    assert!(!ok, "{out}");
    assert!(
        out.contains("behind this binary") && out.contains("lectern migrate"),
        "{out}"
    );
}

/// Drops a test database however the test ends.
struct DropDb(String);

impl Drop for DropDb {
    fn drop(&mut self) {
        common::pg_exec(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0));
    }
}

/// `serve --no-migrate` on a migrated database: it starts and is ready.
async fn serve_without_ddl(url: &str) -> TestApp {
    let app = Opts::default()
        .env("LECTERN_DATABASE_URL", url)
        .arg("--no-migrate")
        .spawn();
    let (s, body) = get_json(&app, "/readyz").await;
    assert_eq!(s, 200, "{body}");
    app
}

/// Forgets the newest Lectern migration, as if the binary were one release ahead.
async fn behind(url: &str) {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query("DELETE FROM lectern_migrations WHERE version = (SELECT max(version) FROM lectern_migrations)")
        .execute(&mut c)
        .await
        .unwrap();
}

#[tokio::test]
async fn migrate_on_the_embedded_database() {
    let data = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", data.path().join("l.db").display());
    let (ok, out) = lectern(&["migrate"], &url, data.path());
    assert!(ok, "{out}");
    let _app = serve_without_ddl(&url).await;
}

#[tokio::test]
async fn forwarded_for_counts_only_from_trusted_proxies() {
    let api = |trusted: &str| {
        Opts::new(Db::Sqlite)
            .roles("api")
            .env("LECTERN_RATE_LIMIT_IP_RPS", "1")
            .env("LECTERN_TRUSTED_PROXIES", trusted)
            .spawn()
    };
    async fn hit(app: &TestApp, xff: &str) -> u16 {
        app.http
            .get(format!("{}/api/v1/openapi.json", app.base))
            .header("x-forwarded-for", xff)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
    // Behind a trusted proxy (here: loopback), each client has its own bucket.
    let app = api("127.0.0.0/8");
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(hit(&app, "203.0.113.1").await);
    }
    assert!(
        codes.contains(&429),
        "one client exhausts its own bucket: {codes:?}"
    );
    assert_eq!(
        hit(&app, "203.0.113.2").await,
        200,
        "another client is unaffected"
    );
    // A header from an untrusted peer is ignored: the peer's bucket is shared.
    let app = api("10.0.0.0/8");
    let mut codes = Vec::new();
    for i in 0..4 {
        codes.push(hit(&app, &format!("203.0.113.{i}")).await);
    }
    assert!(
        codes.contains(&429),
        "forged X-Forwarded-For buys nothing: {codes:?}"
    );
}

#[tokio::test]
async fn the_queue_sweep_keeps_running_work_and_deletes_old_finished_rows() {
    for backend in [Db::Sqlite, Db::Postgres] {
        let app = Opts::new(backend).roles("api,ingest").spawn();
        let url = app.database_url().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                app.data.path().join("lectern.db").display()
            )
        });
        let db = lectern_core::db::Db::connect_with(&url, 2, 1)
            .await
            .unwrap();
        let queue = lectern_core::queue::Queue::connect_with(&url, 1)
            .await
            .unwrap();
        let mut ids = Vec::new();
        for i in 0..4 {
            ids.push(queue.enqueue(&format!("video-{i}"), 10).await.unwrap());
        }
        let (jobs, old) = match backend {
            Db::Postgres => ("apalis.jobs", "now() - interval '30 days'"),
            Db::Sqlite => (
                "Jobs",
                "CAST(strftime('%s', 'now') AS INTEGER) - 30 * 86400",
            ),
        };
        // 0: done long ago; 1: killed long ago; 2: done just now; 3: still pending.
        for (id, status, at) in [
            (&ids[0], "Done", old),
            (&ids[1], "Killed", old),
            (
                &ids[2],
                "Done",
                if backend == Db::Postgres {
                    "now()"
                } else {
                    "CAST(strftime('%s', 'now') AS INTEGER)"
                },
            ),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE {jobs} SET status = '{status}', done_at = {at} WHERE id = $1"
            )))
            .bind(id)
            .execute(&db.pool)
            .await
            .unwrap();
        }
        let n = lectern_core::queue::sweep_finished(&db, Duration::from_secs(7 * 86400), 1000)
            .await
            .unwrap();
        assert_eq!(n, 2, "{backend:?}");
        let left: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM {jobs} ORDER BY id"
        )))
        .fetch_all(&db.pool)
        .await
        .unwrap();
        let left: Vec<&str> = left.iter().map(|(s,)| s.as_str()).collect();
        let mut want = vec![ids[2].as_str(), ids[3].as_str()];
        want.sort();
        assert_eq!(left, want, "{backend:?}");
    }
}
