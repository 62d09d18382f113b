//! The origin's contract with players and operators: secret rotation keeps URLs and tokens
//! alive, and no malformed path or query ever gets a 5xx or a non-JSON error.

mod common;

use common::{clip, fetch, Db, Opts};
use lectern_core::auth::{Keys, Role};
use serde_json::Value;

const OLD: &str = "the-old-secret-0123456789";
const NEW: &str = "the-new-secret-0123456789";

#[tokio::test]
async fn rotating_the_secret_keeps_old_urls_until_the_old_secret_is_dropped() {
    let mut app = Opts::new(Db::Sqlite).env("LECTERN_SECRET", OLD).spawn();
    let token = Keys::from_secret(OLD).mint("u1", "org-r", Role::Instructor, 3600);
    let id = app.upload(&token, &clip("clip-360p.mp4"), 1).await;
    let (st, _) = app.wait_done(&token, &id).await;
    assert_eq!(st["state"], "ready", "{st}");
    let old_url = app.playback(&token, &id).await["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(fetch(&app, &old_url).await.0, 200);

    // Rotate: NEW signs, OLD still verifies.
    app.kill9();
    app.opts_env("LECTERN_SECRET", NEW);
    app.opts_env("LECTERN_PREVIOUS_SECRETS", OLD);
    app.restart();
    assert_eq!(
        fetch(&app, &old_url).await.0,
        200,
        "URLs signed before the rotation play"
    );
    assert_eq!(
        app.status(&token, &id).await["state"],
        "ready",
        "tokens minted before the rotation work"
    );
    let new_url = app.playback(&token, &id).await["url"]
        .as_str()
        .unwrap()
        .to_string();
    let kid = |u: &str| {
        u.split("kid=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap()
            .to_string()
    };
    assert_ne!(kid(&new_url), kid(&old_url), "new URLs use the new key");
    assert_eq!(kid(&new_url), Keys::from_secret(NEW).kid());

    // Drop the old secret: its URLs and tokens stop working, the new ones go on.
    app.kill9();
    app.opts_env("LECTERN_PREVIOUS_SECRETS", "");
    app.restart();
    let (s, _, body) = fetch(&app, &old_url).await;
    assert_eq!(s, 403);
    let e: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(e["code"], "invalid-signature");
    assert_eq!(fetch(&app, &new_url).await.0, 200);
    let r = app
        .http
        .get(format!("{}/api/v1/videos/{id}", app.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn malformed_paths_and_queries_get_json_4xx_never_5xx() {
    let app = Opts::new(Db::Sqlite).spawn();
    let token = app.token(Role::Instructor, "org-m");
    let id = app.upload(&token, &clip("clip-360p.mp4"), 1).await;
    let (st, _) = app.wait_done(&token, &id).await;
    assert_eq!(st["state"], "ready", "{st}");
    let url = app.playback(&token, &id).await["url"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, _, body) = fetch(&app, &url).await;
    let master = m3u8_rs::parse_master_playlist_res(&body).unwrap();
    let variant = master.variants[0].uri.clone(); // {token}/{rendition}/index.m3u8?…
    let token_dir = variant.split('/').next().unwrap().to_string();
    let rung = variant.split('/').nth(1).unwrap().to_string();
    let query = url.split_once('?').unwrap().1.to_string();
    let v = format!("/v/{id}");
    let cases: Vec<(String, u16)> = vec![
        (format!("{v}/{token_dir}/master.m3u8/x.mp4"), 404),
        (format!("{v}/{token_dir}/480p/../../secret"), 404),
        (format!("{v}/{token_dir}/%2e%2e/seg00001.m4s"), 404),
        (format!("{v}/{token_dir}/{rung}/seg99999.m4s"), 404),
        (format!("{v}/{token_dir}/{rung}/.hidden.m4s"), 404),
        (format!("{v}/{token_dir}/{rung}/seg00001.exe"), 404),
        (format!("{v}/{token_dir}/{rung}/%FF.m4s"), 400),
        (format!("{v}/zz/{rung}/seg00001.m4s"), 404),
        (format!("/v/{}/master.m3u8?{query}", "0".repeat(32)), 403),
        (format!("/v/nothex/master.m3u8?{query}"), 404),
        (format!("{v}/master.m3u8?{query}&sig=again"), 403),
        (format!("{v}/master.m3u8?exp=abc&kid=k&vw=v&sig=s"), 403),
        (format!("{v}/master.m3u8?exp=1&kid=k&vw=%ZZ&sig=s"), 403),
        (format!("{v}/master.m3u8"), 403),
        (format!("{v}/{token_dir}/{rung}/index.m3u8"), 403),
        (format!("{v}/a/b/c/d/e"), 404),
        ("/api/v1/admin/jobs?limit=1&limit=2".to_string(), 400),
        ("/api/v1/videos/%FF".to_string(), 400),
    ];
    for (path, want) in cases {
        let r = app
            .http
            .get(format!("{}{path}", app.base))
            .bearer_auth(&token)
            .header(
                "Range",
                if path.contains("seg99999") {
                    "bytes=0-1"
                } else {
                    "bytes=0-"
                },
            )
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let ctype = r.headers()["content-type"].to_str().unwrap().to_string();
        let body = r.text().await.unwrap();
        assert_eq!(status, want, "{path}: {body}");
        assert_eq!(ctype, "application/json", "{path}: {body}");
        let e: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{path}: {body}"));
        assert!(
            e["code"].is_string() && e["message"].is_string(),
            "{path}: {e}"
        );
    }
    // A range past the end of a segment: 416 with the size, not a 5xx.
    let seg = format!("{}{v}/{token_dir}/{rung}/seg00001.m4s", app.base);
    let r = app
        .http
        .get(&seg)
        .header("Range", "bytes=999999999-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert!(r.headers()["content-range"]
        .to_str()
        .unwrap()
        .starts_with("bytes */"));
}
