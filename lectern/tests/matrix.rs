//! The contract's output ladder over a matrix of tricky sources, each a couple of seconds long,
//! generated with ffmpeg: every source gets exactly the contract's rungs, or a clean failure code.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{discover, join, walk_media, Db, TestApp};
use lectern_core::auth::Role;

/// Generates a source with ffmpeg (lavfi test patterns).
fn make(dir: &Path, name: &str, args: &str) -> PathBuf {
    let out = dir.join(name);
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-y"]);
    cmd.args(args.split_whitespace());
    cmd.arg(&out);
    let o = cmd
        .output()
        .expect("ffmpeg is installed by scripts/test.sh");
    assert!(
        o.status.success(),
        "ffmpeg {args}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    if name.starts_with("rotated") {
        // A phone recording: landscape pixels with a 90° display matrix.
        let rotated = dir.join(format!("rot-{name}"));
        let o = Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-i"])
            .arg(&out)
            .args(["-c", "copy", "-metadata:s:v:0", "rotate=90"])
            .arg(&rotated)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        return rotated;
    }
    out
}

const V: &str = "-f lavfi -i testsrc2=duration=2";
const A: &str = "-f lavfi -i sine=frequency=440:duration=2";

struct Case {
    name: &'static str,
    file: &'static str,
    args: String,
    expect: Result<Vec<(u64, u64)>, &'static str>,
}

fn cases() -> Vec<Case> {
    let c = |name, file, args: String, expect| Case {
        name,
        file,
        args,
        expect,
    };
    vec![
        c("portrait", "portrait.mp4", format!("{V}:size=720x1280:rate=30 {A} -c:v libx264 -pix_fmt yuv420p -c:a aac -shortest"), Ok(vec![(480, 854), (720, 1280)])),
        c(
            "rotated phone video",
            "rotated.mp4",
            // ffmpeg 5.1 writes the display matrix only when remuxing (see `make`).
            format!("{V}:size=1280x720:rate=30 {A} -c:v libx264 -pix_fmt yuv420p -c:a aac -shortest"),
            Ok(vec![(480, 854), (720, 1280)]),
        ),
        c("4:3", "four-three.mp4", format!("{V}:size=1440x1080:rate=25 -c:v libx264 -pix_fmt yuv420p"), Ok(vec![(640, 480), (960, 720), (1440, 1080)])),
        c("odd size", "odd.mkv", format!("{V}:size=853x479:rate=30 -c:v ffv1"), Ok(vec![(852, 478)])),
        c("60 fps", "sixty.mp4", format!("{V}:size=1280x720:rate=60 -c:v libx264 -pix_fmt yuv420p"), Ok(vec![(854, 480), (1280, 720)])),
        c("HEVC 10-bit", "hevc10.mp4", format!("{V}:size=1280x720:rate=30 -c:v libx265 -pix_fmt yuv420p10le -x265-params log-level=error"), Ok(vec![(854, 480), (1280, 720)])),
        c("4:2:2 10-bit (ProRes)", "prores422.mov", format!("{V}:size=1280x720:rate=30 -c:v prores_ks -profile:v 2 -pix_fmt yuv422p10le"), Ok(vec![(854, 480), (1280, 720)])),
        c("4:4:4", "444.mp4", format!("{V}:size=1280x720:rate=30 -c:v libx264 -pix_fmt yuv444p"), Ok(vec![(854, 480), (1280, 720)])),
        c(
            "interlaced",
            "interlaced.mp4",
            format!("{V}:size=1920x1080:rate=30 -vf tinterlace=interleave_top,fieldorder=tff -c:v libx264 -pix_fmt yuv420p -flags +ilme+ildct -x264-params tff=1"),
            Ok(vec![(854, 480), (1280, 720), (1920, 1080)]),
        ),
        c("VP9 + Opus", "vp9.webm", format!("{V}:size=640x360:rate=30 {A} -c:v libvpx-vp9 -deadline realtime -c:a libopus -shortest"), Ok(vec![(640, 360)])),
        c("5.1 audio", "surround.mp4", format!("{V}:size=640x360:rate=30 -f lavfi -i sine=duration=2 -c:v libx264 -pix_fmt yuv420p -c:a aac -ac 6 -shortest"), Ok(vec![(640, 360)])),
        c(
            "variable frame rate",
            "vfr.mp4",
            // The first 20 frames at 30 fps, then every third: irregular timestamps.
            format!("{V}:size=640x360:rate=30 -vf select=lt(n\\,20)+not(mod(n\\,3)) -vsync vfr -c:v libx264 -pix_fmt yuv420p"),
            Ok(vec![(640, 360)]),
        ),
        c("audio only", "audio.m4a", format!("{A} -c:a aac"), Err("no-video-stream")),
    ]
}

#[tokio::test]
async fn tricky_sources_get_the_contract_ladder() {
    let app = TestApp::spawn(Db::Sqlite);
    let t = app.token(Role::Instructor, "org-m");
    let dir = app.data.path().join("sources");
    std::fs::create_dir_all(&dir).unwrap();
    let mut ids = Vec::new();
    for case in cases() {
        let f = make(&dir, case.file, &case.args);
        ids.push((app.upload(&t, &f, 1).await, case));
    }
    // An empty upload completes at creation and fails cleanly.
    let empty = app.create_upload(&t, 0, "").await;
    let empty_id = empty.rsplit('/').next().unwrap().to_string();

    for (id, case) in &ids {
        let (st, _) = app.wait_done(&t, id).await;
        match &case.expect {
            Err(code) => {
                assert_eq!(st["state"], "failed", "{}: {st}", case.name);
                assert_eq!(st["error"]["code"], *code, "{}", case.name);
            }
            Ok(sizes) => {
                assert_eq!(st["state"], "ready", "{}: {st}", case.name);
                let got: Vec<(u64, u64)> = st["renditions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| (r["width"].as_u64().unwrap(), r["height"].as_u64().unwrap()))
                    .collect();
                assert_eq!(&got, sizes, "{}", case.name);
                check_output(&app, &t, id, case).await;
            }
        }
    }
    let (st, _) = app.wait_done(&t, &empty_id).await;
    assert_eq!(st["state"], "failed");
    assert_eq!(st["error"]["code"], "corrupt-input");
}

/// Fetches the master and the lowest rendition and checks what the contract promises.
async fn check_output(app: &TestApp, t: &str, id: &str, case: &Case) {
    let pb = app.playback(t, id).await;
    let url = pb["url"].as_str().unwrap().to_string();
    let body = app
        .http
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let master = m3u8_rs::parse_master_playlist_res(&body).unwrap();
    for v in &master.variants {
        let codecs = v.codecs.clone().unwrap();
        assert!(
            codecs.starts_with("avc1.64")
                || codecs.starts_with("avc1.4d")
                || codecs.starts_with("avc1.42"),
            "{}: {codecs}",
            case.name
        );
        let level = u8::from_str_radix(&codecs[9..11], 16).unwrap();
        assert!(level <= 42, "{}: level {level} above 4.2", case.name);
    }
    if case.name == "60 fps" {
        assert_eq!(master.variants[0].frame_rate, Some(60.0));
    }
    if case.name == "5.1 audio" {
        assert_eq!(
            master.alternatives[0].channels.as_deref(),
            Some("2"),
            "audio is stereo AAC"
        );
    }
    if case.name == "VP9 + Opus" {
        assert!(master.variants[0]
            .codecs
            .as_deref()
            .unwrap()
            .ends_with("mp4a.40.2"));
    }
    // The lowest rendition: size, progressive, 8-bit 4:2:0, upright (no rotation left).
    let r = walk_media(app, &join(&url, &master.variants[0].uri)).await;
    let f = app.data.path().join(format!("{id}.mp4"));
    std::fs::write(&f, &r.bytes).unwrap();
    if case.name == "variable frame rate" {
        // Constant-rate output: as many frames as the declared rate over the duration.
        let rate = master.variants[0].frame_rate.expect("FRAME-RATE");
        let frames = common::count_frames(&f);
        let want = rate * 2.0;
        assert!(
            (frames as f64 - want).abs() <= 2.0,
            "{frames} frames at {rate} fps over 2 s"
        );
    }
    let d = discover(&f);
    let (w, h, interlaced, depth) = (d.width, d.height, d.interlaced, d.depth);
    let (ew, eh) = match &case.expect {
        Ok(sizes) => sizes[0],
        Err(_) => unreachable!(),
    };
    assert_eq!(
        (w as u64, h as u64),
        (ew, eh),
        "{}: stored picture is upright at the rung's size",
        case.name
    );
    assert!(!interlaced, "{}: progressive output", case.name);
    assert!(
        depth == 0 || depth == 24 || depth == 8,
        "{}: 8-bit output (depth {depth})",
        case.name
    );
    // What ffprobe reads from the stream itself: 8-bit 4:2:0 High profile, level ≤ 4.2.
    let o = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .args(["stream=profile,pix_fmt,level", "-of", "default=nw=1"])
        .arg(&f)
        .output()
        .unwrap();
    let probe = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(probe.contains("profile=High\n"), "{}: {probe}", case.name);
    assert!(
        probe.contains("pix_fmt=yuv420p\n"),
        "{}: {probe}",
        case.name
    );
    let level: u32 = probe
        .lines()
        .find_map(|l| l.strip_prefix("level="))
        .and_then(|l| l.parse().ok())
        .unwrap_or(99);
    assert!(level <= 42, "{}: level {level}", case.name);
}

/// What a container or timestamp oddity may end as.
enum Outcome {
    /// `ready`, and a player decodes every stream with strictly increasing timestamps.
    Ready,
    /// `ready`, or `failed` with one of these codes (damaged files: the decoder decides).
    ReadyOr(&'static [&'static str]),
}

/// How a damaged file is made from a good one.
#[derive(Clone, Copy)]
enum Damage {
    None,
    /// Every 997th byte past the first tenth flipped.
    BitFlips,
    /// The first 64 bytes (the container's header) overwritten.
    Header,
    /// Remuxed with `-ss 1.3 -c copy`: a cut that does not start on a keyframe, so the
    /// MOV carries an edit list.
    EditListCut,
}

fn damaged(dir: &Path, src: PathBuf, damage: Damage) -> PathBuf {
    match damage {
        Damage::None => src,
        Damage::BitFlips | Damage::Header => {
            let mut b = std::fs::read(&src).unwrap();
            if matches!(damage, Damage::Header) {
                for (i, x) in b.iter_mut().take(64).enumerate() {
                    *x = (i as u8).wrapping_mul(37) ^ 0x5a;
                }
            } else {
                let from = b.len() / 10;
                for i in (from..b.len()).step_by(997) {
                    b[i] ^= 0xff;
                }
            }
            std::fs::write(&src, b).unwrap();
            src
        }
        Damage::EditListCut => {
            let out = dir.join(format!(
                "cut-{}",
                src.file_name().unwrap().to_string_lossy()
            ));
            let o = Command::new("ffmpeg")
                .args(["-v", "error", "-y", "-ss", "1.3", "-i"])
                .arg(&src)
                .args(["-c", "copy"])
                .arg(&out)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            out
        }
    }
}

/// Containers, codecs and timestamp oddities from phones, screen recorders and editors: each
/// ends `ready` with clean timestamps or `failed` with a code, and none crashes anything.
#[tokio::test]
async fn container_and_timestamp_oddities_never_crash() {
    let small = "size=640x360:rate=30";
    let v = |secs: u32| format!("-f lavfi -i testsrc2=duration={secs}:{small}");
    let a = |secs: u32| format!("-f lavfi -i sine=frequency=1000:duration={secs}");
    let x265 = "-c:v libx265 -x265-params log-level=error";
    let cases: Vec<(&str, &str, String, Damage, Outcome)> = vec![
        ("HEVC 10-bit + AAC in MKV", "hevc10.mkv", format!("{} {} {x265} -pix_fmt yuv420p10le -c:a aac -shortest", v(2), a(2)), Damage::None, Outcome::Ready),
        ("HEVC 8-bit + AAC in MKV", "hevc8.mkv", format!("{} {} {x265} -pix_fmt yuv420p -c:a aac -shortest", v(2), a(2)), Damage::None, Outcome::Ready),
        ("HEVC 8-bit + AAC in MP4", "hevc8.mp4", format!("{} {} {x265} -pix_fmt yuv420p -tag:v hvc1 -c:a aac -shortest", v(2), a(2)), Damage::None, Outcome::Ready),
        ("H.264 B-frames + AAC in MKV", "bframes.mkv", format!("{} {} -c:v libx264 -bf 3 -pix_fmt yuv420p -c:a aac -shortest", v(2), a(2)), Damage::None, Outcome::Ready),
        ("H.264 B-frames + AAC in MPEG-TS", "bframes.ts", format!("{} {} -c:v libx264 -bf 3 -pix_fmt yuv420p -c:a aac -shortest", v(2), a(2)), Damage::None, Outcome::Ready),
        ("H.264 + Opus in MKV", "opus.mkv", format!("{} {} -c:v libx264 -pix_fmt yuv420p -c:a libopus -shortest", v(2), a(2)), Damage::None, Outcome::Ready),
        ("MPEG-4 Part 2 + MP3 in AVI", "mpeg4.avi", format!("{} {} -c:v mpeg4 -q:v 5 -c:a libmp3lame -shortest", v(2), a(2)), Damage::None, Outcome::Ready),
        ("audio starts 0.5 s before video", "late-video.mp4", format!("-itsoffset 0.5 {} {} -c:v libx264 -pix_fmt yuv420p -c:a aac", v(2), a(3)), Damage::None, Outcome::Ready),
        ("audio starts 0.5 s after video", "late-audio.mkv", format!("{} -itsoffset 0.5 {} -c:v libx264 -pix_fmt yuv420p -c:a aac", v(3), a(2)), Damage::None, Outcome::Ready),
        ("frame rate changes mid-file", "fps-change.mkv", format!("-f lavfi -i testsrc2=duration=1:{small} -f lavfi -i testsrc2=duration=1:size=640x360:rate=15 -filter_complex [0:v][1:v]concat=n=2:v=1:a=0 -vsync vfr -c:v libx264 -pix_fmt yuv420p"), Damage::None, Outcome::Ready),
        ("MOV with an edit list (cut off a keyframe)", "edit.mov", format!("{} {} -c:v libx264 -g 30 -pix_fmt yuv420p -c:a aac -shortest", v(4), a(4)), Damage::EditListCut, Outcome::Ready),
        ("bit-flipped MP4", "flipped.mp4", format!("{} {} -c:v libx264 -pix_fmt yuv420p -c:a aac -shortest", v(2), a(2)), Damage::BitFlips, Outcome::ReadyOr(&["corrupt-input", "unsupported-input"])),
        ("bit-flipped MKV", "flipped.mkv", format!("{} {} -c:v libx264 -pix_fmt yuv420p -c:a aac -shortest", v(2), a(2)), Damage::BitFlips, Outcome::ReadyOr(&["corrupt-input", "unsupported-input"])),
        ("header-damaged MP4", "header.mp4", format!("{} {} -c:v libx264 -pix_fmt yuv420p -c:a aac -shortest -movflags +faststart", v(2), a(2)), Damage::Header, Outcome::ReadyOr(&["corrupt-input", "unsupported-input", "no-video-stream"])),
    ];
    let app = TestApp::spawn(Db::Sqlite);
    let pid = app.pid();
    let t = app.token(Role::Instructor, "org-o");
    let dir = app.data.path().join("odd");
    std::fs::create_dir_all(&dir).unwrap();
    let mut ids = Vec::new();
    for (name, file, args, damage, outcome) in cases {
        let f = damaged(&dir, make(&dir, file, &args), damage);
        ids.push((app.upload(&t, &f, 1).await, name, outcome));
    }
    for (id, name, outcome) in &ids {
        let (st, _) = app.wait_done(&t, id).await;
        let health = app
            .http
            .get(format!("{}/healthz", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200, "{name}: the server answers after it");
        let state = st["state"].as_str().unwrap();
        match (outcome, state) {
            (_, "ready") => check_player_timestamps(&app, &t, id, name).await,
            (Outcome::ReadyOr(codes), "failed") => {
                let code = st["error"]["code"].as_str().unwrap();
                assert!(codes.contains(&code), "{name}: {st}");
            }
            _ => panic!("{name}: {st}"),
        }
    }
    assert_eq!(app.pid(), pid, "one server process throughout");
}

/// What a player decodes from the signed master: every stream (`-map 0`), no errors, and no
/// decode timestamps that repeat or go backwards.
async fn check_player_timestamps(app: &TestApp, t: &str, id: &str, name: &str) {
    let url = app.playback(t, id).await["url"]
        .as_str()
        .unwrap()
        .to_string();
    let o = Command::new("ffmpeg")
        .args(["-v", "warning", "-i", &url, "-map", "0", "-f", "null", "-"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{name}: {err}");
    assert!(
        !err.contains("non monotonically increasing dts") && !err.contains("Error"),
        "{name}: {err}"
    );
}

/// Times (seconds) of the first bright video frame and the first loud audio window of what
/// ffmpeg decodes from `input` (a file or the signed master playlist).
fn flash_and_beep(input: &str) -> (f64, f64) {
    let run = |map: &str, filter: &str, key: &str| -> Vec<(f64, f64)> {
        let o = Command::new("ffmpeg")
            .args([
                "-v",
                "error",
                "-i",
                input,
                "-map",
                map,
                filter.split(' ').next().unwrap(),
            ])
            .arg(filter.split_once(' ').unwrap().1)
            .args(["-f", "null", "-"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        let mut out = Vec::new();
        let mut t = 0.0;
        for l in text.lines() {
            if let Some(p) = l.split("pts_time:").nth(1) {
                t = p.trim().parse().unwrap_or(0.0);
            } else if let Some(v) = l.strip_prefix(&format!("{key}=")) {
                out.push((t, v.trim().parse().unwrap_or(f64::NEG_INFINITY)));
            }
        }
        out
    };
    let video = run(
        "0:v:0",
        "-vf signalstats,metadata=print:key=lavfi.signalstats.YAVG:file=-",
        "lavfi.signalstats.YAVG",
    );
    let audio = run(
        "0:a:0",
        "-af asetnsamples=48,astats=metadata=1:reset=1,ametadata=print:key=lavfi.astats.Overall.Peak_level:file=-",
        "lavfi.astats.Overall.Peak_level",
    );
    let v = video.iter().find(|(_, y)| *y > 100.0).expect("a flash").0;
    let a = audio.iter().find(|(_, p)| *p > -20.0).expect("a beep").0;
    (v, a)
}

/// Lip sync: a white flash and a 1 kHz beep at the same instant keep the source's offset
/// between picture and sound, within one AAC frame, across containers and frame rates.
#[tokio::test]
async fn picture_and_sound_keep_the_sources_offset() {
    let app = TestApp::spawn(Db::Sqlite);
    let t = app.token(Role::Instructor, "org-s");
    let dir = app.data.path().join("sync");
    std::fs::create_dir_all(&dir).unwrap();
    let flash = |fps: u32| {
        format!(
            "-f lavfi -i color=black:s=640x360:r={fps}:d=4,drawbox=enable=between(t\\,2\\,2.02):color=white:t=fill \
             -f lavfi -i aevalsrc=if(between(t\\,2\\,2.1)\\,sin(2*PI*1000*t)\\,0):s=48000:d=4"
        )
    };
    let cases = [
        (
            "flash30.mp4",
            format!(
                "{} -c:v libx264 -pix_fmt yuv420p -c:a aac -shortest",
                flash(30)
            ),
        ),
        (
            "flash25.mkv",
            format!(
                "{} -c:v libx264 -pix_fmt yuv420p -c:a aac -shortest",
                flash(25)
            ),
        ),
        (
            "flash60.mp4",
            format!(
                "{} -c:v libx264 -pix_fmt yuv420p -c:a aac -shortest",
                flash(60)
            ),
        ),
        (
            "flash30.ts",
            format!(
                "{} -c:v libx264 -bf 3 -pix_fmt yuv420p -c:a aac -shortest",
                flash(30)
            ),
        ),
    ];
    for (file, args) in cases {
        let src = make(&dir, file, &args);
        let (sv, sa) = flash_and_beep(src.to_str().unwrap());
        let id = app.upload(&t, &src, 1).await;
        let (st, _) = app.wait_done(&t, &id).await;
        assert_eq!(st["state"], "ready", "{file}: {st}");
        let url = app.playback(&t, &id).await["url"]
            .as_str()
            .unwrap()
            .to_string();
        let (ov, oa) = flash_and_beep(&url);
        let (src_off, out_off) = ((sa - sv) * 1000.0, (oa - ov) * 1000.0);
        assert!(
            (out_off - src_off).abs() <= 21.4,
            "{file}: audio minus video is {out_off:.1} ms in the output, {src_off:.1} ms in the source"
        );
    }
}
