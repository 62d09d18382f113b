//! tus and API conformance against the real binary: auth, status codes and JSON errors.

mod common;

use common::{Db, TestApp};
use lectern_core::auth::{Keys, Role};
use serde_json::Value;

async fn json_error(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    assert_eq!(
        r.headers()["content-type"],
        "application/json",
        "errors are JSON"
    );
    let v: Value = r.json().await.unwrap();
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    (status, v["code"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn tus_core_and_creation_conformance() {
    let app = TestApp::spawn(Db::Sqlite);
    let token = app.token(Role::Instructor, "org-a");
    let files = format!("{}/files/", app.base);

    let r = app
        .http
        .request(reqwest::Method::OPTIONS, &files)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["tus-version"], "1.0.0");
    assert_eq!(r.headers()["tus-max-size"], "2147483648");
    assert!(r.headers()["tus-extension"]
        .to_str()
        .unwrap()
        .contains("creation"));
    assert_eq!(r.headers()["tus-resumable"], "1.0.0");

    // Every creation the server must refuse, before anything is stored: who asks, the tus
    // headers, and the status and stable code of the JSON error.
    let learner = app.token(Role::Learner, "org-a");
    let forged = Keys::from_secret("some-other-secret-value").mint("u", "org-a", Role::Admin, 3600);
    const V1: (&str, &str) = ("Tus-Resumable", "1.0.0");
    let refused = [
        (
            "no token",
            None,
            vec![V1, ("Upload-Length", "10")],
            401,
            "unauthorized",
        ),
        (
            "a learner",
            Some(&learner),
            vec![V1, ("Upload-Length", "10")],
            403,
            "forbidden",
        ),
        (
            "a forged token",
            Some(&forged),
            vec![V1, ("Upload-Length", "10")],
            401,
            "unauthorized",
        ),
        (
            "an old protocol",
            Some(&token),
            vec![("Tus-Resumable", "0.2.2"), ("Upload-Length", "10")],
            412,
            "unsupported-tus-version",
        ),
        (
            "over 2 GiB",
            Some(&token),
            vec![V1, ("Upload-Length", "2147483649")],
            413,
            "upload-too-large",
        ),
        (
            "no length",
            Some(&token),
            vec![V1],
            400,
            "missing-upload-length",
        ),
        (
            "bad metadata",
            Some(&token),
            vec![
                V1,
                ("Upload-Length", "5"),
                ("Upload-Metadata", "filename ***"),
            ],
            400,
            "invalid-metadata",
        ),
    ];
    for (case, who, headers, status, code) in refused {
        let mut r = app.http.post(&files);
        if let Some(t) = who {
            r = r.bearer_auth(t);
        }
        for (k, v) in headers {
            r = r.header(k, v);
        }
        let r = r.send().await.unwrap();
        if status == 412 {
            assert_eq!(r.headers()["tus-version"], "1.0.0", "{case}");
        }
        assert_eq!(json_error(r).await, (status, code.into()), "{case}");
    }

    // A resumable upload: first chunk, HEAD, a wrong offset, a wrong content type, the rest.
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let url = app
        .create_upload(
            &token,
            data.len() as u64,
            "filename bm90ZXMuYmlu,title V2VlayAx",
        )
        .await;
    let id = url.rsplit('/').next().unwrap().to_string();
    assert_eq!(
        app.status(&token, &id).await["state"],
        "uploading",
        "the video exists from the POST"
    );
    let r = app.patch(&url, &token, 0, data[..40_000].to_vec()).await;
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["upload-offset"], "40000");
    let r = app
        .http
        .head(&url)
        .bearer_auth(&token)
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["upload-offset"], "40000");
    assert_eq!(r.headers()["upload-length"], "100000");
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(
        r.headers()["upload-metadata"],
        "filename bm90ZXMuYmlu,title V2VlayAx"
    );
    let st = app.status(&token, &id).await;
    assert!(
        (st["progress"].as_f64().unwrap() - 0.4).abs() < 1e-9,
        "progress is bytes received: {st}"
    );
    // Every PATCH the server must refuse at offset 40,000; none of them moves the offset.
    let patches = [
        (
            "a stale offset",
            10,
            "application/offset+octet-stream",
            data[10..20].to_vec(),
            409,
            "offset-mismatch",
        ),
        (
            "a JSON body",
            40_000,
            "application/json",
            b"{}".to_vec(),
            415,
            "invalid-content-type",
        ),
        (
            "a body past Upload-Length",
            40_000,
            "application/offset+octet-stream",
            vec![0u8; 70_000],
            413,
            "exceeds-upload-length",
        ),
    ];
    for (case, offset, ctype, body, status, code) in patches {
        let r = app
            .http
            .patch(&url)
            .bearer_auth(&token)
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Offset", offset)
            .header("Content-Type", ctype)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(json_error(r).await, (status, code.into()), "{case}");
    }
    let r = app
        .http
        .head(&url)
        .bearer_auth(&token)
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["upload-offset"], "40000");
    // Only a POST is overridden: a GET asking to be a DELETE stays a GET.
    let r = app
        .http
        .get(&url)
        .bearer_auth(&token)
        .header("X-HTTP-Method-Override", "DELETE")
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 204, "a GET never terminates an upload");
    let (status, off) = app.head(&url, &token).await;
    assert_eq!((status, off), (200, Some(40_000)));
    // X-HTTP-Method-Override turns a POST into the PATCH that finishes the upload.
    let r = app
        .http
        .post(&url)
        .bearer_auth(&token)
        .header("X-HTTP-Method-Override", "PATCH")
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Offset", 40_000)
        .header("Content-Type", "application/offset+octet-stream")
        .body(data[40_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["upload-offset"], "100000");
    let r = app
        .http
        .get(&url)
        .bearer_auth(&token)
        .header("Range", "bytes=99990-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 99990-99999/100000");
    assert_eq!(r.bytes().await.unwrap().to_vec(), data[99_990..].to_vec());
    let r = app.http.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(
        r.bytes().await.unwrap().to_vec(),
        data,
        "stored bytes are identical"
    );
    let st = app.status(&token, &id).await;
    assert_ne!(
        st["state"], "uploading",
        "queued without a further call: {st}"
    );

    // Another org sees nothing; termination removes an unfinished upload.
    let other = app.token(Role::Admin, "org-z");
    let r = app
        .http
        .head(&url)
        .bearer_auth(&other)
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = app
        .http
        .get(format!("{}/api/v1/videos/{id}", app.base))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(json_error(r).await, (404, "not-found".into()));
    let r = app
        .http
        .get(format!("{}/api/v1/videos/{id}", app.base))
        .bearer_auth(&learner)
        .send()
        .await
        .unwrap();
    assert_eq!(json_error(r).await.0, 403, "right org, wrong role");
    let url2 = app.create_upload(&token, 10, "").await;
    let r = app
        .http
        .delete(&url2)
        .bearer_auth(&token)
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = app
        .http
        .head(&url2)
        .bearer_auth(&token)
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 410, "terminated uploads are gone");
    let r = app.patch(&url2, &token, 0, vec![1; 10]).await;
    assert_eq!(json_error(r).await, (410, "upload-gone".into()));

    // creation-with-upload: the POST carries the first bytes.
    let r = app
        .http
        .post(&files)
        .bearer_auth(&token)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", 20)
        .header("Content-Type", "application/offset+octet-stream")
        .body(vec![7u8; 8])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["upload-offset"], "8");
}

#[tokio::test]
async fn api_errors_are_json_and_metrics_are_served() {
    let app = TestApp::spawn(Db::Sqlite);
    let r = app
        .http
        .get(format!("{}/nope", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(json_error(r).await, (404, "not-found".into()));
    let r = app
        .http
        .get(format!("{}/api/v1/videos/abc", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(json_error(r).await.0, 401);
    let r = app
        .http
        .get(format!("{}/api/v1/videos/abc", app.base))
        .header("Authorization", "Bearer not.a.jwt")
        .send()
        .await
        .unwrap();
    assert_eq!(json_error(r).await.0, 401);
    let t = app.token(Role::Instructor, "o");
    let r = app
        .http
        .get(format!("{}/api/v1/videos/abc", app.base))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(json_error(r).await.0, 404);
    let r = app
        .http
        .delete(format!("{}/api/v1/videos/abc/playback", app.base))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(json_error(r).await.0, 405);
    let r = app
        .http
        .get(format!(
            "{}/v/0123456789abcdef0123456789abcdef/master.m3u8?exp=zz",
            app.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(json_error(r).await.0, 403);
    // Exercise a counter, then read it back.
    let _ = app.create_upload(&t, 10, "").await;
    let r = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("lectern_uploads_created_total 1"), "{text}");
}

#[test]
fn token_command_mints_contract_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_lectern");
    // Without a secret anywhere, it says what to do.
    let out = std::process::Command::new(bin)
        .args([
            "token",
            "--role",
            "admin",
            "--user",
            "u1",
            "--org",
            "o1",
            "--data-dir",
        ])
        .arg(dir.path())
        .env_remove("LECTERN_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("LECTERN_SECRET"));
    // With the secret `serve` keeps in the data folder.
    std::fs::write(dir.path().join("secret"), "a-secret-kept-by-serve-0123").unwrap();
    let out = std::process::Command::new(bin)
        .args([
            "token",
            "--role",
            "admin",
            "--user",
            "u1",
            "--org",
            "o1",
            "--ttl",
            "2h",
            "--data-dir",
        ])
        .arg(dir.path())
        .env_remove("LECTERN_SECRET")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(token.lines().count(), 1, "the token alone on stdout");
    let claims = Keys::from_secret("a-secret-kept-by-serve-0123")
        .verify(token.trim())
        .unwrap();
    assert_eq!(
        (claims.sub.as_str(), claims.org.as_str(), claims.role),
        ("u1", "o1", Role::Admin)
    );
    assert_eq!(claims.exp - claims.iat, 7200);
    use base64::Engine;
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.split('.').next().unwrap())
        .unwrap();
    let header: Value = serde_json::from_slice(&header).unwrap();
    assert_eq!(header["alg"], "HS256");
    assert!(header["kid"].as_str().is_some_and(|k| !k.is_empty()));
    // A bad role is refused with a hint.
    let out = std::process::Command::new(bin)
        .args(["token", "--role", "root", "--user", "u", "--org", "o"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test]
async fn browsers_may_use_tus_through_cors() {
    let app = TestApp::spawn(Db::Sqlite);
    let files = format!("{}/files/", app.base);
    let r = app
        .http
        .request(reqwest::Method::OPTIONS, &files)
        .header("Origin", "https://lms.example")
        .header("Access-Control-Request-Method", "PATCH")
        .header(
            "Access-Control-Request-Headers",
            "authorization,tus-resumable,upload-offset,upload-checksum,content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let allowed = r.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for h in [
        "authorization",
        "tus-resumable",
        "upload-offset",
        "upload-checksum",
    ] {
        assert!(allowed.contains(h), "{h} not allowed: {allowed}");
    }
    assert!(r.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("PATCH"));
    assert_eq!(
        r.headers()["tus-version"],
        "1.0.0",
        "the preflight answer still carries tus discovery headers"
    );
    let t = app.token(Role::Instructor, "org-a");
    let r = app
        .http
        .post(&files)
        .bearer_auth(&t)
        .header("Origin", "https://lms.example")
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", 5)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for h in [
        "location",
        "upload-offset",
        "upload-length",
        "upload-metadata",
        "upload-defer-length",
        "upload-concat",
        "tus-resumable",
        "tus-version",
        "tus-extension",
        "tus-max-size",
        "tus-checksum-algorithm",
        "upload-expires",
    ] {
        assert!(exposed.contains(h), "{h} not exposed: {exposed}");
    }
}
