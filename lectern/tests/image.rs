//! The runtime image's package list, proven without Docker: a minimal Debian 12 root
//! filesystem with exactly `deploy/docker/runtime-packages.txt` (mmdebstrap, minbase), the
//! `lectern` binary copied in, started in that root (chroot, as the image's non-root user) and
//! made to transcode a clip to `ready`. A plugin missing from the list fails the transcode.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::TestApp;
use lectern_core::auth::Role;

/// The package list, without comments.
fn packages(root: &Path) -> Vec<String> {
    std::fs::read_to_string(root.join("deploy/docker/runtime-packages.txt"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// Builds (once per package list) the root filesystem under target/, and returns its path.
fn rootfs(repo: &Path) -> PathBuf {
    let pkgs = packages(repo);
    let key = {
        use sha1::Digest;
        let mut h = sha1::Sha1::new();
        h.update(pkgs.join(",").as_bytes());
        h.finalize()
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let dir = repo.join(format!("target/rootfs/bookworm-{key}"));
    if dir.join("usr/bin/tini").exists() {
        return dir;
    }
    let tmp = repo.join(format!("target/rootfs/.building-{key}"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.parent().unwrap()).unwrap();
    let out = Command::new("mmdebstrap")
        .args(["--variant=minbase", "--quiet"])
        .arg(format!("--include={}", pkgs.join(",")))
        .args(["bookworm"])
        .arg(&tmp)
        .arg("http://deb.debian.org/debian")
        .output()
        .expect("mmdebstrap (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "mmdebstrap failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&tmp, &dir).unwrap();
    dir
}

#[tokio::test]
async fn the_runtime_package_list_transcodes_in_a_bare_debian_root() {
    if !common::is_root() {
        eprintln!("skipped: building and entering a root filesystem needs root (chroot, mount)");
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = rootfs(&repo);
    // Nothing from the build machine leaks in: the root has no GStreamer development files,
    // no tools, only the runtime list.
    assert!(!root.join("usr/bin/gst-launch-1.0").exists());
    assert!(!root.join("usr/include").join("gstreamer-1.0").exists());
    std::fs::copy(
        env!("CARGO_BIN_EXE_lectern"),
        root.join("usr/local/bin/lectern"),
    )
    .unwrap();
    let data_rel = format!("var/lib/lectern-t-{}", std::process::id());
    let data_dir = root.join(&data_rel);
    let _ = std::fs::remove_dir_all(&data_dir);
    std::fs::create_dir_all(&data_dir).unwrap();
    let chown = Command::new("chown")
        .args(["-R", "10001:10001"])
        .arg(&data_dir)
        .status()
        .unwrap();
    assert!(chown.success());

    // A private mount namespace: /proc (the worker re-executes /proc/self/exe for each encoder)
    // and /dev exist only for this process and vanish with it.
    let script = format!(
        "mount -t proc proc '{r}/proc' && mount --rbind /dev '{r}/dev' && \
         exec /usr/sbin/chroot --userspec=10001:10001 '{r}' /usr/local/bin/lectern serve",
        r = root.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", format!("/{data_rel}"))
        .env("LECTERN_DATA_DIR", format!("/{data_rel}"))
        .env("LECTERN_LISTEN", "127.0.0.1:0")
        .env("LECTERN_SECRET", common::SECRET)
        .env("LECTERN_RATE_LIMIT_USER_RPS", "0")
        .env("GST_REGISTRY", format!("/{data_rel}/gst-registry.bin"))
        .env("LECTERN_LOG", "warn,lectern_transcoder=info");
    let app = TestApp::from_command(cmd, tempfile::tempdir().unwrap());
    let t = app.token(Role::Admin, "org-image");
    let id = app.upload(&t, &common::clip("clip-720p.mp4"), 1).await;
    let (st, seen) = app.wait_done(&t, &id).await;
    assert_eq!(
        st["state"], "ready",
        "a plugin the pipeline needs is missing from runtime-packages.txt? {st} {seen:?}"
    );
    let pb = app.playback(&t, &id).await;
    let (s, _, master) = common::fetch(&app, pb["url"].as_str().unwrap()).await;
    assert_eq!(s, 200);
    assert!(String::from_utf8_lossy(&master).contains("#EXT-X-STREAM-INF"));
    drop(app);
    let _ = std::fs::remove_dir_all(&data_dir);
}
