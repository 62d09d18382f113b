//! The web pages in a real browser: an instructor uploads through `/studio` and watches the
//! lecture become ready, a learner plays it in `/embed/{id}` (quality, captions, speed,
//! keyboard, heartbeats, resume after reload, and an LMS page driving it by postMessage), and
//! an admin cancels and retries a job in `/admin`. Every page passes axe-core with no serious
//! or critical violation and no CSP violation; screenshots land in `target/pages/`.

mod common;

use common::{call, lecture_clip, media_cache, tok, Db, Opts, TestApp};
use lectern_core::auth::Role;
use reqwest::Method;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

const CAPTIONS: &str = "WEBVTT\n\n00:00:00.000 --> 00:00:12.000\nWelcome to week one.\n";

/// Runs one scenario of `tests/clients/pages.mjs`; returns what it saw.
fn browse(args: Value) -> Value {
    let clients = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    let out = Command::new("node")
        .arg(clients.join("pages.mjs"))
        .arg(args.to_string())
        .current_dir(&clients)
        .output()
        .expect("node is installed by scripts/test.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|e| {
            panic!(
                "pages.mjs printed no JSON ({e}): {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    eprintln!("pages.mjs {}: {v}", args["scenario"]);
    assert!(v.get("error").is_none(), "the browser run failed: {v}");
    v
}

/// `target/pages/`: the screenshots CI keeps.
fn shots() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pages")
}

/// Every page checked: no serious or critical axe violation, no CSP violation, no script error.
fn assert_clean(v: &Value) {
    for (page, list) in v["axe"].as_object().unwrap() {
        assert_eq!(list, &json!([]), "axe-core on {page}: {v}");
    }
    assert_eq!(v["csp"], json!([]), "CSP violations: {v}");
    let errors: Vec<&Value> = v["console_errors"]
        .as_array()
        .unwrap()
        .iter()
        // A 4xx the page asked for on purpose is logged by Chromium as a failed resource.
        .filter(|e| !e.as_str().unwrap_or("").contains("Failed to load resource"))
        .collect();
    assert!(errors.is_empty(), "script errors: {v}");
    for (page, ms) in v["lcp_ms"].as_object().unwrap() {
        eprintln!("LCP {page}: {ms} ms (loopback)");
    }
}

#[tokio::test]
async fn studio_upload_then_player_with_captions_heartbeats_and_resume() {
    let app = Opts::new(Db::Sqlite).spawn();
    let inst = tok(Role::Instructor, "ines", "org-web");
    // A title that would run script if a page rendered it as HTML.
    let hostile = "<img src=x onerror=\"window.pwned=1\"><script>window.pwned=1</script>";
    let meta = format!("filename {},title {}", b64("x.mp4"), b64(hostile));
    let hostile_url = app.create_upload(&inst, 1000, &meta).await;
    let hostile_id = hostile_url.rsplit('/').next().unwrap().to_string();

    // Studio: upload through the file input, watch it reach 100 % and `ready`.
    let source = lecture_clip(&media_cache(), "lecture-12s-720p.mp4", 12, "1280x720", 30);
    let vtt = app.data.path().join("week1.en.vtt");
    std::fs::write(&vtt, CAPTIONS).unwrap();
    let s = browse(json!({
        "scenario": "studio", "base": app.base, "token": inst, "file": source, "captions": vtt,
        "hostile": hostile_id, "shots": shots(),
    }));
    assert_clean(&s);
    assert!(
        !s["url_after_load"].as_str().unwrap().contains("token="),
        "{s}"
    );
    assert_eq!(s["upload_pct_at_done"], "100 %", "{s}");
    assert_eq!(s["state"], "ready", "{s}");
    assert_eq!(
        s["hostile_title_text"], hostile,
        "a title is shown as text: {s}"
    );
    assert_eq!(s["pwned"], false, "{s}");
    assert_eq!(s["captions_message"], "Captions (en) added.", "{s}");
    let video = s["video_id"].as_str().unwrap().to_string();
    let st = app.status(&inst, &video).await;
    assert_eq!(st["state"], "ready", "{st}");
    assert_eq!(st["title"], "lecture-12s-720p", "{st}");

    // A course, a lesson with the video, and an enrolled learner.
    let (s200, caps) = call(
        &app,
        Method::GET,
        &format!("/api/v1/videos/{video}/captions"),
        Some(&inst),
        None,
    )
    .await;
    assert_eq!(s200, 200);
    assert_eq!(
        caps["captions"],
        json!([{"lang": "en", "label": "English"}]),
        "{caps}"
    );
    let (_, course) = call(
        &app,
        Method::POST,
        "/api/v1/courses",
        Some(&inst),
        Some(json!({"title": "Physics"})),
    )
    .await;
    let cid = course["id"].as_str().unwrap();
    let (s201, lesson) = call(
        &app,
        Method::POST,
        &format!("/api/v1/courses/{cid}/lessons"),
        Some(&inst),
        Some(json!({"title": "Kinematics", "video_id": video})),
    )
    .await;
    assert_eq!(s201, 201, "{lesson}");
    let lid = lesson["id"].as_str().unwrap().to_string();
    let (s201, _) = call(
        &app,
        Method::POST,
        &format!("/api/v1/courses/{cid}/enrollments"),
        Some(&inst),
        Some(json!({"user": "lea"})),
    )
    .await;
    assert_eq!(s201, 201);
    let learner = tok(Role::Learner, "lea", "org-web");

    let p = browse(json!({
        "scenario": "player", "base": app.base, "token": learner, "lesson": lid,
        "video": video, "shots": shots(),
    }));
    assert_clean(&p);
    assert!(
        !p["url_after_load"].as_str().unwrap().contains("token="),
        "{p}"
    );
    assert_eq!(p["qualities"], json!(["Auto", "480p", "720p"]), "{p}");
    assert_eq!(p["switched"], json!(["480p", "720p"]), "{p}");
    assert_eq!(
        p["caption_options"],
        json!(["Captions off", "English"]),
        "{p}"
    );
    assert_eq!(p["captions_showing"], true, "{p}");
    assert_eq!(p["rate"], 1.5, "{p}");
    assert_eq!(p["paused_by_space"], true, "{p}");
    assert_eq!(p["captions_after_c"], "-1", "{p}");
    let beats = p["heartbeats"].as_array().unwrap();
    assert!(!beats.is_empty() && beats.iter().all(|b| b == 202), "{p}");
    let paused_at = p["paused_at"].as_f64().unwrap();
    let resumed_at = p["resumed_at"].as_f64().unwrap();
    assert!(paused_at > 4.0, "{p}");
    assert!(
        (resumed_at - paused_at).abs() < 1.5,
        "resumes where it paused: {p}"
    );
    assert_eq!(
        p["host_events"],
        json!(["ready", "timeupdate", "ended"]),
        "{p}"
    );

    // The heartbeats reached the progress API.
    let (s200, prog) = call(
        &app,
        Method::GET,
        &format!("/api/v1/lessons/{lid}/progress"),
        Some(&learner),
        None,
    )
    .await;
    assert_eq!(s200, 200, "{prog}");
    assert!(prog["position_s"].as_f64().unwrap() > 4.0, "{prog}");
}

#[tokio::test]
async fn admin_dashboard_shows_the_queue_and_cancels_and_retries() {
    // No worker role: the job waits in the queue for the dashboard to act on it.
    let app = Opts::new(Db::Sqlite).roles("api,ingest,origin").spawn();
    let inst = tok(Role::Instructor, "ines", "org-adm");
    let admin = tok(Role::Admin, "ada", "org-adm");
    let id = app.upload(&inst, &common::clip("clip-360p.mp4"), 1).await;
    let a = browse(json!({
        "scenario": "admin", "base": app.base, "token": admin, "video": id, "shots": shots(),
    }));
    assert_clean(&a);
    assert_eq!(a["row_state"], "queued", "{a}");
    assert_eq!(a["after_cancel"], "canceled", "{a}");
    assert_eq!(a["after_retry"], "queued", "{a}");
    assert!(
        a["workers_text"].as_str().unwrap().contains("operators"),
        "{a}"
    );
    let st = app.status(&inst, &id).await;
    assert_eq!(st["state"], "queued", "{st}");

    // The player says what is wrong instead of spinning: still queued, then deleted.
    let embed = format!("{}/embed/{id}#token={inst}", app.base);
    let m = browse(json!({"scenario": "message", "url": embed, "shots": shots()}));
    assert_clean(&m);
    assert!(
        m["message"]
            .as_str()
            .unwrap()
            .contains("still being prepared"),
        "{m}"
    );
    let (s204, _) = call(
        &app,
        Method::DELETE,
        &format!("/api/v1/videos/{id}"),
        Some(&inst),
        None,
    )
    .await;
    assert_eq!(s204, 204);
    let m = browse(json!({"scenario": "message", "url": embed, "shots": shots()}));
    assert!(m["message"].as_str().unwrap().contains("deleted"), "{m}");
}

#[tokio::test]
async fn pages_are_served_with_csp_hashed_immutable_assets_and_json_errors() {
    let app = TestApp::spawn_with(
        Db::Sqlite,
        &[("LECTERN_EMBED_FRAME_ANCESTORS", "https://lms.example.edu")],
    );
    let get = |p: &str| app.http.get(format!("{}{p}", app.base)).send();
    for path in ["/studio", "/admin", "/embed/abc123"] {
        let r = get(path).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers().clone();
        assert_eq!(h["content-type"], "text/html; charset=utf-8");
        assert_eq!(h["cache-control"], "no-cache");
        assert_eq!(h["referrer-policy"], "no-referrer");
        let csp = h["content-security-policy"].to_str().unwrap().to_string();
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert!(csp.contains("default-src 'none'"), "{csp}");
        if path.starts_with("/embed") {
            assert!(
                csp.contains("frame-ancestors 'self' https://lms.example.edu;"),
                "{csp}"
            );
            assert!(!h.contains_key("x-frame-options"));
        } else {
            assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
            assert_eq!(h["x-frame-options"], "DENY");
        }
        let html = r.text().await.unwrap();
        // Every asset is local and content-hashed, and serves immutable.
        let assets: Vec<&str> = html
            .split("\"/assets/")
            .skip(1)
            .map(|s| s.split('"').next().unwrap())
            .collect();
        assert!(assets.len() >= 2, "{html}");
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "{html}"
        );
        for a in assets {
            assert!(
                a.split('-').nth(1).is_some_and(|h| h.len() >= 8),
                "hashed name: {a}"
            );
            let r = get(&format!("/assets/{a}")).await.unwrap();
            assert_eq!(r.status(), 200, "{a}");
            assert_eq!(
                r.headers()["cache-control"],
                "public, max-age=31536000, immutable"
            );
        }
    }
    let r = get("/assets/nope.js").await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "not-found");
    let r = get("/embed/..%2Fetc").await.unwrap();
    assert_eq!(r.status(), 404);
    let r = app.http.get(format!("{}/", app.base)).send().await.unwrap();
    assert!(r.url().path() == "/studio", "{}", r.url());
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}
