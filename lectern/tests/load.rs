//! Many instructors at once on PostgreSQL (issue 18): concurrent uploads must not depend on
//! the size of the database pool, and concurrent enqueues of one org must not deadlock.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{Db, Opts, TestApp};
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
