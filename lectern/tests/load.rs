//! Many instructors at once on PostgreSQL (issue 18): concurrent uploads must not depend on
//! the size of the database pool, and concurrent enqueues of one org must not deadlock.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{Db, Opts, TestApp};
use futures::StreamExt;
use lectern_core::auth::Role;
use serde_json::Value;
use tokio::sync::Mutex;

const MIB: usize = 1 << 20;

fn data(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Uploads `body` in `chunk`-byte PATCHes, resuming from HEAD after any refusal the client
/// can act on (423, 503 with Retry-After), as a tus client does; records every status seen.
async fn upload(
    app: Arc<TestApp>,
    t: String,
    body: Vec<u8>,
    chunk: usize,
    seen: Arc<Mutex<BTreeMap<u16, usize>>>,
) -> String {
    let url = app.create_upload(&t, body.len() as u64, "").await;
    let mut off = 0usize;
    let mut tries = 0;
    while off < body.len() {
        let end = (off + chunk).min(body.len());
        let r = app
            .patch(&url, &t, off as u64, body[off..end].to_vec())
            .await;
        let s = r.status().as_u16();
        *seen.lock().await.entry(s).or_default() += 1;
        if s == 204 {
            off = r.headers()["upload-offset"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            continue;
        }
        assert!(s == 423 || s == 503 || s == 409, "PATCH answered {s}");
        tries += 1;
        assert!(tries < 50, "an upload kept being refused");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        off = app.head(&url, &t).await.1.unwrap() as usize;
    }
    url
}

#[tokio::test]
async fn forty_concurrent_uploads_complete_with_a_pool_of_eight() {
    let app = Arc::new(
        Opts::new(Db::Postgres)
            .roles("api,ingest,origin")
            .env("LECTERN_DB_MAX_CONNECTIONS", "8")
            .spawn(),
    );
    let t = app.token(Role::Instructor, "org-load");
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let mut tasks = Vec::new();
    for i in 0..40 {
        let body = data(8 * MIB + 123 * i, i as u32);
        let (app, t, seen) = (app.clone(), t.clone(), seen.clone());
        tasks.push(tokio::spawn(async move {
            let url = upload(app.clone(), t.clone(), body.clone(), 2 * MIB, seen).await;
            (url, body)
        }));
    }
    let mut done = Vec::new();
    for task in tasks {
        done.push(task.await.unwrap());
    }
    let seen = seen.lock().await.clone();
    assert!(
        seen.keys().all(|s| *s < 500),
        "no 5xx while 40 uploads share 8 connections: {seen:?}"
    );
    for (url, body) in &done {
        assert!(
            app.download(url, &t).await == *body,
            "byte-identical: {url}"
        );
    }
    // One video per upload, each queued once.
    let list: Value = app
        .http
        .get(format!("{}/api/v1/videos?limit=100", app.base))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let videos = list["videos"].as_array().unwrap();
    assert_eq!(videos.len(), 40, "{list}");
    assert!(videos.iter().all(|v| v["state"] == "queued"), "{list}");
}

/// On S3 a node buffers upload bodies in memory (parts sending, a part filling), so the bytes
/// in flight are bounded per node: a write that cannot get its share is refused with 503 and
/// Retry-After (its body read, none of it stored), and a creation-with-upload still creates the
/// upload but keeps none of the body. Once the memory is free, the same writes go through.
#[tokio::test]
async fn upload_memory_is_bounded_per_node_on_s3() {
    let app = Opts::new(Db::Sqlite)
        .s3()
        .roles("api,ingest,origin")
        .env("LECTERN_UPLOAD_BUFFER_MB", "16")
        .spawn();
    let t = app.token(Role::Instructor, "org-buffer");
    let (a, b, c) = (data(12 * MIB, 1), data(8 * MIB, 2), data(6 * MIB, 3));
    let url_a = app.create_upload(&t, a.len() as u64, "").await;
    let url_b = app.create_upload(&t, b.len() as u64, "").await;

    // A's PATCH declares 12 MiB and sends 1 MiB, then waits: it holds 12 of the 16 MiB.
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let (head, rest) = (a[..MIB].to_vec(), a[MIB..].to_vec());
    let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(head) }).chain(
        futures::stream::once(async move {
            let _ = go_rx.await;
            Ok(rest)
        }),
    );
    let patch_a = app
        .http
        .patch(&url_a)
        .bearer_auth(&t)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Offset", "0")
        .header("Content-Type", "application/offset+octet-stream")
        .header("Content-Length", a.len())
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    let patch_a = tokio::spawn(patch_a);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    // B needs 8 MiB and a creation-with-upload 6 MiB: neither fits while A holds its share.
    let (refused, created) = tokio::join!(
        app.patch(&url_b, &t, 0, b.clone()),
        app.http
            .post(format!("{}/files", app.base))
            .bearer_auth(&t)
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Length", c.len())
            .header("Content-Type", "application/offset+octet-stream")
            .body(c.clone())
            .send()
    );
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "over-capacity", "{body}");
    assert_eq!(app.head(&url_b, &t).await.1, Some(0), "nothing of B stored");
    let created = created.unwrap();
    assert_eq!(created.status(), 201);
    assert_eq!(created.headers()["upload-offset"], "0");
    let url_c = created.headers()["location"].to_str().unwrap().to_string();

    // A goes on and completes; its memory is then free for B and C.
    go_tx.send(()).unwrap();
    let done = patch_a.await.unwrap().unwrap();
    assert_eq!(done.status(), 204);
    assert_eq!(
        done.headers()["upload-offset"],
        a.len().to_string().as_str()
    );
    assert_eq!(app.patch(&url_b, &t, 0, b.clone()).await.status(), 204);
    assert_eq!(app.patch(&url_c, &t, 0, c.clone()).await.status(), 204);
    for (url, body) in [(&url_a, &a), (&url_b, &b), (&url_c, &c)] {
        assert!(
            app.download(url, &t).await == *body,
            "byte-identical: {url}"
        );
    }
}
