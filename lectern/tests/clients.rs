//! Real tus clients (tus-js-client from npm, tuspy from PyPI, both pinned) against the binary,
//! each aborting an upload and resuming it with a new client instance.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Db, Opts, TestApp};
use lectern_core::auth::Role;
use sha2::{Digest, Sha256};

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

fn python() -> String {
    std::env::var("LECTERN_TEST_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/../target/testenv/bin/python",
            env!("CARGO_MANIFEST_DIR")
        )
    })
}

async fn run_client(app: &TestApp, program: String, script: &str) -> Vec<u8> {
    let token = app.token(Role::Instructor, "org-clients");
    let src: Vec<u8> = (0..(10 * 1024 * 1024 + 333u32))
        .map(|i| (i.wrapping_mul(31) >> 3) as u8)
        .collect();
    let file = app.data.path().join("lecture.bin");
    std::fs::write(&file, &src).unwrap();
    let endpoint = format!("{}/files/", app.base);
    let script = clients_dir().join(script);
    let out = tokio::task::spawn_blocking({
        let (token, file) = (token.clone(), file.clone());
        move || {
            Command::new(&program)
                .arg(&script)
                .arg(&endpoint)
                .arg(&token)
                .arg(&file)
                .output()
        }
    })
    .await
    .unwrap()
    .expect("the test command installs node and the test virtualenv");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "client failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = stdout.lines().last().unwrap().trim().to_string();
    let got = app.download(&url, &token).await;
    assert_eq!(
        Sha256::digest(&got),
        Sha256::digest(&src),
        "byte-identical after abort and resume"
    );
    let id = url.rsplit('/').next().unwrap();
    let st = app.status(&token, id).await;
    assert_ne!(st["state"], "uploading", "{st}");
    got
}

#[tokio::test]
async fn tus_js_client_aborts_and_resumes() {
    let app = Opts::new(Db::Sqlite).roles("api,ingest,origin").spawn();
    run_client(&app, "node".into(), "tusjs.mjs").await;
}

#[tokio::test]
async fn tuspy_aborts_and_resumes_on_s3() {
    let app = Opts::new(Db::Sqlite)
        .s3()
        .roles("api,ingest,origin")
        .spawn();
    run_client(&app, python(), "tuspy_client.py").await;
}
