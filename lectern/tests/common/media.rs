//! Test media: the generated clips, longer sources made on demand, and what GStreamer finds
//! in a file.

use super::*;

/// Path of a generated test clip, generating the clips on first use.
pub fn clip(name: &str) -> PathBuf {
    static GEN: Once = Once::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/videos");
    GEN.call_once(|| {
        let st = Command::new("bash")
            .arg(dir.join("generate.sh"))
            .status()
            .expect("run generate.sh");
        assert!(st.success(), "testdata/videos/generate.sh failed");
    });
    let p = dir.join(name);
    assert!(p.exists(), "missing clip {}", p.display());
    p
}

/// Generates a `secs`-second `size` (e.g. `1280x720`) H.264 test pattern in `dir` with ffmpeg:
/// long enough for a transcode to be caught in the middle.
pub fn long_clip(dir: &Path, name: &str, secs: u32, size: &str) -> PathBuf {
    let out = dir.join(name);
    let o = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=duration={secs}:size={size}:rate=30"))
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ])
        .arg(&out)
        .output()
        .expect("ffmpeg is installed by scripts/test.sh");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// Generates a `secs`-second `size` test pattern at `fps` with a stereo AAC tone, like a
/// screen-recorded lecture, in `dir` (kept between runs, since long ones take a while).
pub fn lecture_clip(dir: &Path, name: &str, secs: u32, size: &str, fps: u32) -> PathBuf {
    let out = dir.join(name);
    if out.exists() {
        return out;
    }
    let part = dir.join(format!("{}.part.mp4", lectern_core::new_id()));
    let o = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=duration={secs}:size={size}:rate={fps}"))
        .args(["-f", "lavfi", "-i"])
        .arg(format!(
            "sine=frequency=440:duration={secs}:sample_rate=48000"
        ))
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            &(fps * 2).to_string(),
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-ac",
            "2",
            "-b:a",
            "96k",
            "-movflags",
            "+faststart",
        ])
        .arg(&part)
        .output()
        .expect("ffmpeg is installed by scripts/test.sh");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::rename(&part, &out).unwrap();
    out
}

/// Where generated media that outlives one test run is kept (under `target/`).
pub fn media_cache() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-media");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// What GStreamer's Discoverer finds in a local media file's first video stream.
pub struct Discovered {
    /// Width, pixels.
    pub width: u32,
    /// Height, pixels.
    pub height: u32,
    /// Caps name, e.g. `video/x-h264`.
    pub caps: String,
    /// Duration, seconds (0 when unknown).
    pub duration_s: f64,
    /// Whether the picture is interlaced.
    pub interlaced: bool,
    /// Bits per pixel over all components (24 for 8-bit 4:2:0, 0 when unknown).
    pub depth: u32,
}

/// Discovers a local media file with GStreamer.
pub fn discover(path: &std::path::Path) -> Discovered {
    use gst_pbutils::prelude::*;
    gst::init().unwrap();
    let d = gst_pbutils::Discoverer::new(gst::ClockTime::from_seconds(30)).unwrap();
    let info = d
        .discover_uri(&gst::glib::filename_to_uri(path, None).unwrap())
        .unwrap();
    let v = info
        .video_streams()
        .into_iter()
        .next()
        .expect("a video stream");
    Discovered {
        width: v.width(),
        height: v.height(),
        caps: v.caps().unwrap().structure(0).unwrap().name().to_string(),
        duration_s: info
            .duration()
            .map(|d| d.nseconds() as f64 / 1e9)
            .unwrap_or(0.0),
        interlaced: v.is_interlaced(),
        depth: v.depth(),
    }
}

/// Frames ffprobe decodes from the first video stream (reads every fragment, unlike a
/// duration estimate from the first one).
pub fn count_frames(f: &Path) -> u64 {
    let o = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "csv=p=0",
        ])
        .arg(f)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}
