//! Regression tests for what an adversarial run found (issue 12, D2–D13): connection
//! exhaustion, the rate-limit bypass, Upload-Concat amplification, playlist injection through
//! caption labels, unbounded metadata and update paths, the Range overflow, non-JSON errors,
//! byte-counted titles, uploads served as pages, a world-readable database, and ids that reach
//! PostgreSQL with a NUL in them.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{Db, Opts, TestApp};
use lectern_core::auth::Role;
use serde_json::{json, Value};

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn addr(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_string()
}

/// Sends raw bytes on a fresh connection and returns what comes back until the server closes
/// it (or 3 s pass).
fn raw(app: &TestApp, req: &[u8]) -> String {
    let mut s = TcpStream::connect(addr(app)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(req).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test]
async fn idle_connections_are_closed_and_capped_with_a_503() {
    let app = Opts::new(Db::Sqlite)
        .env("LECTERN_MAX_CONNECTIONS", "16")
        .env("LECTERN_HEADER_TIMEOUT_S", "1")
        .spawn();
    // Fill every slot with connections that send nothing, or half a request.
    let mut idle: Vec<TcpStream> = (0..16)
        .map(|i| {
            let mut s = TcpStream::connect(addr(&app)).unwrap();
            if i % 2 == 0 {
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                    .unwrap();
            }
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // One more: answered at once with JSON, not left hanging.
    let over = raw(&app, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(over.starts_with("HTTP/1.1 503"), "{over}");
    assert!(
        over.to_ascii_lowercase().contains("retry-after: 1"),
        "{over}"
    );
    assert!(over.contains(r#""code":"over-capacity""#), "{over}");
    // The header timeout closes the idle and half-sent ones…
    let started = Instant::now();
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "idle connections closed by the server"
    );
    // …and a keep-alive connection that goes quiet after a response is closed too.
    let mut ka = TcpStream::connect(addr(&app)).unwrap();
    ka.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    ka.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = ka.read_to_end(&mut buf);
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "idle keep-alive closed"
    );
    // Service is back for everyone.
    let r = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn lowercase_bearer_counts_against_the_user_limit() {
    let app = Opts::new(Db::Sqlite)
        .env("LECTERN_RATE_LIMIT_USER_RPS", "1")
        .spawn();
    let t = app.token(Role::Instructor, "org-r");
    let mut limited = 0;
    for _ in 0..6 {
        let r = app
            .http
            .get(format!("{}/api/v1/videos", app.base))
            .header("Authorization", format!("bearer {t}"))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited += 1;
        } else {
            assert_eq!(r.status(), 200);
        }
    }
    assert!(limited >= 3, "the per-user limit applies to `bearer` too");
}

async fn create(app: &TestApp, t: &str, headers: &[(&str, String)]) -> (u16, Value) {
    let mut r = app
        .http
        .post(format!("{}/files/", app.base))
        .bearer_auth(t)
        .header("Tus-Resumable", "1.0.0");
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    let r = r.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn concat_lists_and_metadata_are_bounded() {
    let app = TestApp::spawn(Db::Sqlite);
    let t = app.token(Role::Instructor, "org-c");
    let r = app
        .http
        .post(format!("{}/files/", app.base))
        .bearer_auth(&t)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", "4")
        .header("Upload-Concat", "partial")
        .send()
        .await
        .unwrap();
    let p = r.headers()["location"].to_str().unwrap().to_string();
    // D4: one partial named twice, or too many partials: refused before anything is written.
    let (s, e) = create(&app, &t, &[("Upload-Concat", format!("final;{p} {p}"))]).await;
    assert_eq!(
        (s, e["code"].as_str()),
        (400, Some("duplicate-partial")),
        "{e}"
    );
    let many: Vec<String> = (0..65).map(|_| p.clone()).collect();
    let (s, e) = create(
        &app,
        &t,
        &[("Upload-Concat", format!("final;{}", many.join(" ")))],
    )
    .await;
    assert_eq!(
        (s, e["code"].as_str()),
        (400, Some("too-many-partials")),
        "{e}"
    );
    // D6: a 60,000-character title, 10,000 keys, a huge header.
    let (s, e) = create(
        &app,
        &t,
        &[
            ("Upload-Length", "4".into()),
            (
                "Upload-Metadata",
                format!("title {}", b64(&"x".repeat(3000))),
            ),
        ],
    )
    .await;
    assert_eq!((s, e["code"].as_str()), (422, Some("invalid-title")), "{e}");
    // Too many keys, or a header too big for a client to read back from HEAD (10,000 keys
    // are over the server's 32 KiB header bound and get 431 before this check).
    for n in [40, 1000] {
        let keys: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
        let (s, e) = create(
            &app,
            &t,
            &[
                ("Upload-Length", "4".into()),
                ("Upload-Metadata", keys.join(",")),
            ],
        )
        .await;
        assert_eq!(
            (s, e["code"].as_str()),
            (400, Some("invalid-metadata")),
            "{n}: {e}"
        );
    }
    // D11: 150 CJK characters (450 bytes) are a valid title.
    let cjk = "講".repeat(150);
    let (s, _) = create(
        &app,
        &t,
        &[
            ("Upload-Length", "4".into()),
            ("Upload-Metadata", format!("title {}", b64(&cjk))),
        ],
    )
    .await;
    assert_eq!(s, 201);
}

#[tokio::test]
async fn downloads_ranges_and_framework_errors_are_safe_and_json() {
    let app = TestApp::spawn(Db::Sqlite);
    let t = app.token(Role::Instructor, "org-d");
    let r = app
        .http
        .post(format!("{}/files/", app.base))
        .bearer_auth(&t)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", "5")
        .header("Upload-Metadata", format!("filetype {}", b64("text/html")))
        .header("Content-Type", "application/offset+octet-stream")
        .body("<b>x</b>".as_bytes()[..5].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let url = r.headers()["location"].to_str().unwrap().to_string();
    // D12: an uploaded "text/html" is never rendered by a browser.
    let r = app.http.get(&url).bearer_auth(&t).send().await.unwrap();
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert!(r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment"));
    // D8: a last position of u64::MAX means "to the end": 206, not 416 (nor a debug panic).
    let r = app
        .http
        .get(&url)
        .bearer_auth(&t)
        .header("Range", "bytes=0-18446744073709551615")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 0-4/5");
    // D12: the database holding webhook secrets is readable by its owner only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(app.data.path().join("lectern.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "lectern.db mode {mode:o}");
    // D9: 405 on the origin, 431 and 414 answer JSON.
    let id = url.rsplit('/').next().unwrap();
    for m in ["POST", "PUT", "PATCH", "DELETE"] {
        let r = app
            .http
            .request(
                m.parse().unwrap(),
                format!("{}/v/{id}/master.m3u8", app.base),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{m}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["code"], "method-not-allowed");
    }
    let r = app
        .http
        .get(format!("{}/api/v1/videos", app.base))
        .bearer_auth(&t)
        .header("X-Big", "a".repeat(40 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "headers-too-large"
    );
    let r = app
        .http
        .get(format!(
            "{}/api/v1/admin/jobs?cursor={}",
            app.base,
            "a".repeat(20 * 1024)
        ))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 414);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "uri-too-long");
    // D11: an empty ?limit= is the default on the admin job list too.
    let admin = app.token(Role::Admin, "org-d");
    let r = app
        .http
        .get(format!("{}/api/v1/admin/jobs?limit=", app.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// D13 on both databases: ids with a NUL byte or a bad shape get a 4xx, never a 500.
#[tokio::test]
async fn malformed_ids_never_reach_a_query() {
    for db in [Db::Sqlite, Db::Postgres] {
        let app = TestApp::spawn(db);
        let t = app.token(Role::Instructor, "org-n");
        for path in [
            "/files/%00",
            "/files/ab%00cd",
            "/api/v1/videos/%00",
            "/api/v1/videos/a%00b/playback",
            "/api/v1/courses/%00",
            "/api/v1/videos?cursor=%00",
        ] {
            for m in ["GET", "HEAD", "PATCH", "DELETE"] {
                let r = app
                    .http
                    .request(m.parse().unwrap(), format!("{}{path}", app.base))
                    .bearer_auth(&t)
                    .header("Tus-Resumable", "1.0.0")
                    .header("Upload-Offset", "0")
                    .header("Content-Type", "application/offset+octet-stream")
                    .send()
                    .await
                    .unwrap();
                assert!(
                    r.status().is_client_error(),
                    "{m} {path} on {db:?}: {}",
                    r.status()
                );
            }
        }
        let r = app
            .http
            .head(format!("{}/files/{}", app.base, "z".repeat(200)))
            .bearer_auth(&t)
            .header("Tus-Resumable", "1.0.0")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
}

/// D5 and D7: what reaches a playlist has no control characters, and update paths apply the
/// same limits as create.
#[tokio::test]
async fn labels_and_updates_are_bounded() {
    let app = TestApp::spawn(Db::Sqlite);
    let t = app.token(Role::Instructor, "org-l");
    let url = app.create_upload(&t, 10, "").await;
    let id = url.rsplit('/').next().unwrap();
    for label in ["A%0D%0A%23EXT-X-ENDLIST", "A%0Bb", "A%22b", "A%C2%85b"] {
        let r = app
            .http
            .put(format!(
                "{}/api/v1/videos/{id}/captions/en?label={label}",
                app.base
            ))
            .bearer_auth(&t)
            .header("Content-Type", "text/vtt")
            .body("WEBVTT\n\n00:00.000 --> 00:01.000\nhi\n")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{label}");
        let e: Value = r.json().await.unwrap();
        assert!(
            e["code"] == "invalid-label" || e["code"] == "invalid-url",
            "{label}: {e}"
        );
    }
    let r = app
        .http
        .post(format!("{}/api/v1/courses", app.base))
        .bearer_auth(&t)
        .json(&json!({"title": "Algebra"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let course: Value = r.json().await.unwrap();
    let r = app
        .http
        .patch(format!(
            "{}/api/v1/courses/{}",
            app.base,
            course["id"].as_str().unwrap()
        ))
        .bearer_auth(&t)
        .json(&json!({"description": "x".repeat(1_900_000)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let r = app
        .http
        .patch(format!("{}/api/v1/videos/{id}", app.base))
        .bearer_auth(&t)
        .json(&json!({"title": "講".repeat(150)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a 150-character CJK title is valid");
}

/// D4: per-org quotas. Storage counts every upload not terminated at its declared length (a
/// deferred one when it declares it); the queue quota counts videos on their way to `ready`.
/// Both refuse before anything is stored, with a stable code, and only the org over its quota.
async fn quotas_on(db: Db) {
    let app = Opts::new(db)
        .roles("api,ingest,origin")
        .env("LECTERN_ORG_STORAGE_QUOTA_MB", "1")
        .env("LECTERN_ORG_QUEUE_QUOTA", "2")
        .spawn();
    let t = app.token(Role::Instructor, "org-quota");
    let len = |n: u64| vec![("Upload-Length", n.to_string())];
    let first = app.create_upload(&t, 600 << 10, "").await;
    let (s, body) = create(&app, &t, &len(600 << 10)).await;
    assert_eq!(
        (s, body["code"].as_str()),
        (413, Some("storage-quota-exceeded")),
        "{body}"
    );
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("org_storage_quota_mb"));

    // Two videos pending fill the queue quota; partials are not videos and still fit.
    app.create_upload(&t, 1000, "").await;
    let r = app
        .http
        .post(format!("{}/files/", app.base))
        .bearer_auth(&t)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", "1000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "queue-quota-exceeded", "{body}");
    let partial = [
        ("Upload-Length", "1000".to_string()),
        ("Upload-Concat", "partial".into()),
    ];
    assert_eq!(create(&app, &t, &partial).await.0, 201);

    // Another org is not affected.
    let other = app.token(Role::Instructor, "org-elsewhere");
    app.create_upload(&other, 900 << 10, "").await;

    // Terminating an upload frees both its bytes and its place.
    let r = app
        .http
        .delete(&first)
        .bearer_auth(&t)
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = app
        .http
        .post(format!("{}/files/", app.base))
        .bearer_auth(&t)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Defer-Length", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "a terminated upload's place is free again");
    let deferred = r.headers()["location"].to_str().unwrap().to_string();
    // Naming a length past the quota is refused and stores nothing of the body.
    let r = app
        .http
        .patch(&deferred)
        .bearer_auth(&t)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Offset", "0")
        .header("Upload-Length", (2u64 << 20).to_string())
        .header("Content-Type", "application/offset+octet-stream")
        .body(vec![7u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "storage-quota-exceeded", "{body}");
    assert_eq!(app.head(&deferred, &t).await.1, Some(0));
    let r = app
        .http
        .patch(&deferred)
        .bearer_auth(&t)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Offset", "0")
        .header("Upload-Length", (500u64 << 10).to_string())
        .header("Content-Type", "application/offset+octet-stream")
        .body(vec![7u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "a length within the quota is taken");
    let (s, body) = create(&app, &t, &len(10)).await;
    assert_eq!(
        (s, body["code"].as_str()),
        (429, Some("queue-quota-exceeded"))
    );
}

#[tokio::test]
async fn org_quotas_refuse_new_uploads_with_stable_codes() {
    quotas_on(Db::Sqlite).await;
    quotas_on(Db::Postgres).await;
}
