//! Process isolation: an encoder that aborts, is killed (as by the OOM killer) or hangs ends
//! only its attempt. The server process, its API, ingest and origin stay up; the input fails
//! after two crashes with `encoder-crashed`; nothing of the attempt is left running.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{clip, Db, TestApp};
use lectern_core::auth::Role;

const FAULT_ENV: &str = "LECTERN_TEST_ENCODER_FAULT_FILE";

/// Encoder processes (re-executions of the binary) whose parent is `pid`.
fn encoder_children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        // Field 4 of /proc/PID/stat is the parent pid (after the parenthesised name).
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(pid) && String::from_utf8_lossy(&cmd).contains("__encoder") {
            out.push(p);
        }
    }
    out
}

async fn crash_case(fault: &str, extra: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let fault_file = dir.path().join("fault");
    std::fs::write(&fault_file, fault).unwrap();
    let mut env = vec![(FAULT_ENV, fault_file.to_str().unwrap())];
    env.extend_from_slice(extra);
    let app = TestApp::spawn_with(Db::Sqlite, &env);
    let pid = app.pid();
    let t = app.token(Role::Instructor, "org-x");

    let bad = app.upload(&t, &clip("clip-360p.mp4"), 1).await;
    // While the encoder crashes and is retried, every other role keeps answering.
    let started = Instant::now();
    let mut served = 0;
    loop {
        let st = app.status(&t, &bad).await;
        if st["state"] == "failed" {
            break;
        }
        let h = app
            .http
            .get(format!("{}/healthz", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(h.status(), 200);
        served += 1;
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{fault}: still {st}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(served > 0);
    let st = app.status(&t, &bad).await;
    assert_eq!(st["error"]["code"], "encoder-crashed", "{fault}: {st}");
    assert!(
        st["error"]["message"]
            .as_str()
            .unwrap()
            .contains("H.264 MP4"),
        "the message says what to do: {st}"
    );
    // Two attempts, one crash each; the playback endpoint publishes nothing.
    let admin = app.token(Role::Admin, "org-x");
    let jobs: serde_json::Value = app
        .http
        .get(format!("{}/api/v1/admin/jobs?state=failed", app.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jobs["jobs"][0]["attempts"], 2, "{jobs}");
    let pb = app
        .http
        .get(format!("{}/api/v1/videos/{bad}/playback", app.base))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(pb.status(), 409);
    // The same server process did all of this, and no encoder outlived its attempt.
    assert_eq!(app.pid(), pid);
    assert!(
        std::fs::metadata(format!("/proc/{pid}")).is_ok(),
        "server alive"
    );
    assert_eq!(encoder_children(pid), Vec::<u32>::new());

    // Once the fault is gone, the same node transcodes the next upload (ingest and origin too).
    std::fs::write(&fault_file, "").unwrap();
    let good = app.upload(&t, &clip("clip-360p.mp4"), 2).await;
    let (st, _) = app.wait_done(&t, &good).await;
    assert_eq!(st["state"], "ready", "{st}");
    let url = app.playback(&t, &good).await["url"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, _, body) = common::fetch(&app, &url).await;
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body).contains("#EXT-X-STREAM-INF"));
    // An admin retry of the crashed video starts with a clean crash count, and now succeeds.
    let r = app
        .http
        .post(format!("{}/api/v1/admin/jobs/{bad}/retry", app.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (st, _) = app.wait_done(&t, &bad).await;
    assert_eq!(st["state"], "ready", "{st}");
}

#[tokio::test]
async fn an_aborting_encoder_ends_only_its_attempt() {
    crash_case("abort", &[]).await;
}

#[tokio::test]
async fn an_encoder_killed_like_by_the_oom_killer_ends_only_its_attempt() {
    crash_case("kill", &[]).await;
}

#[tokio::test]
async fn a_hung_encoder_is_killed_after_the_stall_limit() {
    crash_case("hang", &[("LECTERN_ENCODER_STALL_S", "2")]).await;
}

/// The real file that took the whole server down before isolation (HEVC Main 10 + AAC in
/// Matroska, whose first frame is at 23 ms): it is now simply ready.
#[tokio::test]
async fn hevc_main10_in_matroska_is_ready() {
    let app = TestApp::spawn(Db::Sqlite);
    let t = app.token(Role::Instructor, "org-h");
    let f = app.data.path().join("hevc10.mkv");
    make_hevc_mkv(&f);
    let id = app.upload(&t, &f, 1).await;
    let (st, _) = app.wait_done(&t, &id).await;
    assert_eq!(st["state"], "ready", "{st}");
    assert_eq!(st["renditions"].as_array().unwrap().len(), 2);
}

fn make_hevc_mkv(out: &Path) {
    let o = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc2=duration=4:size=1280x720:rate=30")
        .args(["-f", "lavfi", "-i", "sine=frequency=440:duration=4"])
        .args(["-c:v", "libx265", "-pix_fmt", "yuv420p10le"])
        .args([
            "-x265-params",
            "log-level=error",
            "-c:a",
            "aac",
            "-shortest",
        ])
        .arg(out)
        .output()
        .expect("ffmpeg is installed by scripts/test.sh");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
