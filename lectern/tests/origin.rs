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
    let (id, url) = ready_playback(&app, &token).await;
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

/// Uploads the 360p clip as `token`, waits until it is ready, and returns its id and signed
/// master URL.
async fn ready_playback(app: &common::TestApp, token: &str) -> (String, String) {
    let id = app.upload(token, &clip("clip-360p.mp4"), 1).await;
    let (st, _) = app.wait_done(token, &id).await;
    assert_eq!(st["state"], "ready", "{st}");
    let url = app.playback(token, &id).await["url"]
        .as_str()
        .unwrap()
        .to_string();
    (id, url)
}

/// `/v/{id}/…` with the id's first character percent-escaped: the direct path declines it and
/// the router decodes it to the same object.
fn via_router(path: &str) -> String {
    let rest = path.strip_prefix("/v/").unwrap();
    let c = rest.as_bytes()[0];
    format!("/v/%{c:02X}{}", &rest[1..])
}

/// A request (method, path, headers) and the status it must get.
type Case<'a> = (reqwest::Method, String, Vec<(&'a str, &'a str)>, u16);

/// Status, headers (all but `date`, sorted) and body.
type Answer = (u16, Vec<(String, String)>, Vec<u8>);

async fn answer(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = http.request(method, url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let mut h: Vec<(String, String)> = r
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str() != "date")
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("<bytes>").to_string()))
        .collect();
    h.sort();
    (status, h, r.bytes().await.unwrap().to_vec())
}

/// With the memory cache (segments as bytes) and without it (segments sent from their files
/// with `sendfile`), every playback answer of the connection loop is hyper's.
#[tokio::test]
async fn playback_answers_the_same_on_the_direct_path_and_through_the_router() {
    for cache_mb in ["64", "0"] {
        direct_equals_router(cache_mb).await;
    }
}

async fn direct_equals_router(cache_mb: &str) {
    let app = Opts::new(Db::Sqlite)
        .env(
            "LECTERN_CORS_ORIGIN",
            "https://lms.example,https://other.example",
        )
        .env("LECTERN_ORIGIN_CACHE_MB", cache_mb)
        .spawn();
    // A connection per direct request: each is answered by the connection loop, which hands a
    // connection to hyper for good at its first request that is not plain playback.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let origin = app.base.clone();
    let token = app.token(Role::Instructor, "org-d");
    let (id, url) = ready_playback(&app, &token).await;
    let master_path = url.strip_prefix(&app.base).unwrap().to_string();
    let query = url.split_once('?').unwrap().1.to_string();
    let (_, _, body) = fetch(&app, &url).await;
    let master = m3u8_rs::parse_master_playlist_res(&body).unwrap();
    let variant = master.variants[0].uri.clone();
    let media_path = format!("/v/{id}/{variant}");
    let dir = format!("/v/{id}/{}", variant.rsplit_once('/').unwrap().0);
    let media = answer(
        &app.http,
        reqwest::Method::GET,
        &format!("{}{media_path}", app.base),
        &[],
    )
    .await;
    assert_eq!(media.0, 200);
    let etag = media.1.iter().find(|(k, _)| k == "etag").unwrap().1.clone();

    use reqwest::Method as M;
    let allowed = ("origin", "https://lms.example");
    let stranger = ("origin", "https://evil.example");
    let cases: Vec<Case> = vec![
        (M::GET, master_path.clone(), vec![allowed], 200),
        (M::HEAD, master_path.clone(), vec![stranger], 200),
        (M::GET, media_path.clone(), vec![], 200),
        (
            M::GET,
            media_path.clone(),
            vec![("if-none-match", &etag)],
            304,
        ),
        (
            M::GET,
            format!("{dir}/init.mp4"),
            vec![("range", "bytes=0-99"), allowed],
            206,
        ),
        (M::GET, format!("{dir}/seg00001.m4s"), vec![allowed], 200),
        (
            M::GET,
            format!("{dir}/seg00001.m4s"),
            vec![("range", "bytes=100-4099")],
            206,
        ),
        (M::HEAD, format!("{dir}/seg00001.m4s"), vec![], 200),
        (
            M::GET,
            format!("{dir}/seg00001.m4s"),
            vec![("range", "bytes=999999999-")],
            416,
        ),
        (M::GET, format!("{dir}/seg99999.m4s"), vec![], 404),
        (
            M::GET,
            format!("/v/{id}/master.m3u8?{query}x"),
            vec![allowed],
            403,
        ),
        (M::GET, format!("/v/{id}/master.m3u8"), vec![], 403),
    ];
    for (method, path, headers, want) in cases {
        let direct = answer(
            &fresh,
            method.clone(),
            &format!("{}{path}", app.base),
            &headers,
        )
        .await;
        assert_eq!(
            direct.0, want,
            "{method} {path} (cache {cache_mb} MB): {direct:?}"
        );
        let routed = answer(
            &app.http,
            method.clone(),
            &format!("{}{}", app.base, via_router(&path)),
            &headers,
        )
        .await;
        assert_eq!(
            direct, routed,
            "{method} {path} (cache {cache_mb} MB): direct vs router"
        );
    }
    // CORS as configured: the allowed origin is echoed, a stranger gets none.
    let seg = format!("{dir}/seg00001.m4s");
    let a = answer(&app.http, M::GET, &format!("{origin}{seg}"), &[allowed]).await;
    assert!(a.1.contains(&(
        "access-control-allow-origin".into(),
        "https://lms.example".into()
    )));
    let s = answer(&app.http, M::GET, &format!("{origin}{seg}"), &[stranger]).await;
    assert!(!s.1.iter().any(|(k, _)| k == "access-control-allow-origin"));
    // What the direct path declines still gets the router's answers.
    let pre = answer(
        &app.http,
        M::OPTIONS,
        &format!("{origin}{seg}"),
        &[allowed, ("access-control-request-method", "GET")],
    )
    .await;
    assert_eq!(pre.0, 200, "{pre:?}");
    let post = answer(&app.http, M::POST, &format!("{origin}{master_path}"), &[]).await;
    assert_eq!(post.0, 405, "{post:?}");
    assert_eq!(
        answer(&app.http, M::GET, &format!("{origin}/healthz"), &[])
            .await
            .0,
        200
    );
    // And direct answers are counted per route, as the router's are.
    let (_, _, m) = fetch(&app, &format!("{}/metrics", app.base)).await;
    let m = String::from_utf8_lossy(&m);
    let count = |route: &str, status: &str| -> f64 {
        m.lines()
            .filter(|l| {
                l.starts_with("lectern_http_requests_total")
                    && l.contains(&format!(r#"route="{route}""#))
                    && l.contains(&format!(r#"status="{status}""#))
                    && l.contains(r#"method="GET""#)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(count("/v/{video}/master.m3u8", "2xx") >= 3.0, "{m}");
    assert!(
        count("/v/{video}/{token}/{rendition}/{file}", "4xx") >= 3.0,
        "{m}"
    );
}

/// One connection, several requests written at once: the loop answers the playback ones in
/// order, then hands the connection to hyper at the first request that is not its own
/// (`connection: close`), with that request's bytes intact.
#[tokio::test]
async fn pipelined_playback_requests_then_a_handoff_share_one_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = Opts::new(Db::Sqlite)
        .env("LECTERN_ORIGIN_CACHE_MB", "0")
        .spawn();
    let token = app.token(Role::Instructor, "org-p");
    let (id, url) = ready_playback(&app, &token).await;
    let master_path = url.strip_prefix(&app.base).unwrap().to_string();
    let (_, _, master) = fetch(&app, &url).await;
    let variant = m3u8_rs::parse_master_playlist_res(&master)
        .unwrap()
        .variants[0]
        .uri
        .clone();
    let dir = format!("/v/{id}/{}", variant.rsplit_once('/').unwrap().0);
    let (_, _, segment) = fetch(&app, &format!("{}{dir}/seg00001.m4s", app.base)).await;
    assert!(segment.len() > 1000);

    let addr = app.base.strip_prefix("http://").unwrap().to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let reqs = format!(
        "GET {master_path} HTTP/1.1\r\nhost: a\r\n\r\n\
         HEAD {dir}/seg00001.m4s HTTP/1.1\r\nhost: a\r\n\r\n\
         GET {dir}/seg00001.m4s HTTP/1.1\r\nhost: a\r\nrange: bytes=10-\r\n\r\n\
         GET /v/{id}/master.m3u8 HTTP/1.1\r\nhost: a\r\n\r\n\
         GET /healthz HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
    );
    s.write_all(reqs.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(20), s.read_to_end(&mut raw))
        .await
        .expect("the server closes after the `connection: close` request")
        .unwrap();

    // (status, headers, body) of each answer, framed by content-length (HEAD: no body).
    let mut answers = Vec::new();
    let mut rest = &raw[..];
    for head_req in [false, true, false, false, false] {
        let mut hs = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut hs);
        let n = match r.parse(rest).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => {
                panic!("a partial answer: {:?}", String::from_utf8_lossy(rest))
            }
        };
        let len: usize = r
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
            .unwrap_or(0);
        let body_len = if head_req { 0 } else { len };
        let names: Vec<String> = r
            .headers
            .iter()
            .map(|h| h.name.to_ascii_lowercase())
            .collect();
        answers.push((r.code.unwrap(), names, len, rest[n..n + body_len].to_vec()));
        rest = &rest[n + body_len..];
    }
    assert!(
        rest.is_empty(),
        "trailing bytes: {:?}",
        String::from_utf8_lossy(rest)
    );
    assert_eq!(answers[0].0, 200);
    assert_eq!(answers[0].3, master, "the signed master");
    assert_eq!(answers[1].0, 200);
    assert_eq!(answers[1].2, segment.len(), "HEAD declares the length");
    assert_eq!(answers[2].0, 206);
    assert_eq!(answers[2].3, segment[10..], "the range, sent from the file");
    assert_eq!(answers[3].0, 403, "unsigned");
    assert_eq!(answers[4].0, 200, "the handed-off request");
    for (status, names, _, _) in &answers {
        assert!(names.contains(&"date".to_string()), "{status}: {names:?}");
        assert!(
            names.contains(&"content-length".to_string()),
            "{status}: {names:?}"
        );
    }
}

/// Playback connections run on per-core lanes and move back to the main runtime at a handoff:
/// on many connections at once (dealt across every lane), a playback GET, then a request that
/// hands the connection to hyper, then a playback GET that hyper now serves, all succeed.
#[tokio::test]
async fn lanes_serve_many_connections_and_hand_each_back_to_hyper() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = Opts::new(Db::Sqlite).spawn();
    let token = app.token(Role::Instructor, "org-l");
    let (_, url) = ready_playback(&app, &token).await;
    let master_path = url.strip_prefix(&app.base).unwrap().to_string();
    let (_, _, master) = fetch(&app, &url).await;

    let lanes = std::fs::read_dir(format!("/proc/{}/task", app.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .filter(|name| name.starts_with("lectern-lane-"))
        .count();
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(lanes, cores, "one playback lane per core");

    let addr = app.base.strip_prefix("http://").unwrap().to_string();
    let mut conns = Vec::new();
    for _ in 0..4 * cores {
        let addr = addr.clone();
        let master_path = master_path.clone();
        conns.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let mut answers = Vec::new();
            for path in [master_path.as_str(), "/healthz", master_path.as_str()] {
                let req = format!("GET {path} HTTP/1.1\r\nhost: a\r\n\r\n");
                s.write_all(req.as_bytes()).await.unwrap();
                answers.push(read_answer(&mut s).await);
            }
            s.write_all(b"GET /healthz HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut tail = Vec::new();
            s.read_to_end(&mut tail).await.unwrap();
            assert!(tail.starts_with(b"HTTP/1.1 200 "), "{tail:?}");
            answers
        }));
    }
    for c in conns {
        let answers = tokio::time::timeout(std::time::Duration::from_secs(20), c)
            .await
            .expect("every connection is served")
            .unwrap();
        assert_eq!(answers[0], (200, master.clone()), "the loop's answer");
        assert_eq!(answers[1].0, 200, "hyper's /healthz after the handoff");
        assert_eq!(
            answers[2],
            (200, master.clone()),
            "hyper's answer on the same connection"
        );
    }
}

/// Reads one answer framed by content-length: its status and body.
async fn read_answer(s: &mut tokio::net::TcpStream) -> (u16, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    loop {
        let mut hs = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut hs);
        if let httparse::Status::Complete(n) = r.parse(&buf).unwrap() {
            let len: usize = r
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                .expect("content-length");
            let code = r.code.unwrap();
            while buf.len() < n + len {
                let mut more = [0u8; 8192];
                let got = s.read(&mut more).await.unwrap();
                assert!(got > 0, "the connection closed mid-answer");
                buf.extend_from_slice(&more[..got]);
            }
            assert_eq!(buf.len(), n + len, "nothing past the answer");
            return (code, buf[n..].to_vec());
        }
        let mut more = [0u8; 8192];
        let got = s.read(&mut more).await.unwrap();
        assert!(got > 0, "the connection closed before an answer");
        buf.extend_from_slice(&more[..got]);
    }
}
