//! Webhooks: signed, retried deliveries of video and lesson events, and their delivery log.

mod common;

use std::time::Duration;

use common::{call, course_with_lesson, tok, Db, Opts, TestApp};
use lectern_core::auth::Role;
use reqwest::Method;
use serde_json::{json, Value};

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
