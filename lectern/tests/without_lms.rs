//! The binary built without the LMS (`cargo test -p lectern --no-default-features`, a step of
//! scripts/test.sh): the video pipeline works on its own. Uploads transcode and play, learners
//! of the org may watch (no enrollments exist to ask), other orgs may not, webhooks are still
//! served, and the LMS's routes are neither routed nor documented.
#![cfg(not(feature = "lms"))]

mod common;

use common::{clip, Db, TestApp};
use lectern_core::auth::Role;
use serde_json::{json, Value};

#[tokio::test]
async fn the_video_pipeline_serves_alone_without_the_lms() {
    let app = TestApp::spawn(Db::Sqlite);
    let inst = app.token(Role::Instructor, "org-a");
    let id = app.upload(&inst, &clip("clip-360p.mp4"), 2).await;
    let (status, _) = app.wait_done(&inst, &id).await;
    assert_eq!(status["state"], "ready", "{status}");

    // A learner of the org watches without an enrollment; one of another org does not see it.
    let learner = app.token(Role::Learner, "org-a");
    let p = app.playback(&learner, &id).await;
    let url = p["url"].as_str().unwrap_or_else(|| panic!("{p}"));
    let (s, _, body) = common::fetch(&app, url).await;
    assert_eq!(s, 200);
    assert!(String::from_utf8_lossy(&body).starts_with("#EXTM3U"));
    let other = app.token(Role::Learner, "org-b");
    let r = app
        .http
        .get(format!("{}/api/v1/videos/{id}/playback", app.base))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // The LMS's routes do not exist, and answer the contract's JSON 404.
    let admin = app.token(Role::Admin, "org-a");
    for path in ["/api/v1/courses", "/api/v1/me/continue"] {
        let r = app
            .http
            .get(format!("{}{path}", app.base))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["code"], "not-found", "{path}");
    }

    // Webhooks belong to the video API and stay: listed, and checked when registered.
    let r = app
        .http
        .get(format!("{}/api/v1/webhooks", app.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = app
        .http
        .post(format!("{}/api/v1/webhooks", app.base))
        .bearer_auth(&admin)
        .json(&json!({"url": "http://hooks.example/lectern", "events": ["video.ready"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["code"], "invalid-url", "{e}");

    // The OpenAPI document lists what is served, and nothing of the LMS.
    let doc: Value = app
        .http
        .get(format!("{}/api/v1/openapi.json", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    assert!(paths.iter().any(|p| p.as_str() == "/api/v1/videos/{id}"));
    assert!(paths.iter().any(|p| p.as_str() == "/api/v1/webhooks"));
    for p in &paths {
        assert!(
            !p.contains("/courses") && !p.contains("/lessons") && !p.contains("/me/"),
            "{p} is an LMS route"
        );
    }
}
