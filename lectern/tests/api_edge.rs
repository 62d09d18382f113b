//! The HTTP edge every route shares: rate limits, request ids, route metrics, and the OpenAPI
//! document against the routes that exist.

mod common;

use std::time::Duration;

use common::{call, fetch, tok, Db, Opts, TestApp};
use lectern_core::auth::Role;
use reqwest::Method;
use serde_json::Value;

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
