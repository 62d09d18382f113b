//! Process isolation for GStreamer: every probe, encode and poster of an attempt runs in a
//! child process (`lectern __encoder`), so a crash, abort, out-of-memory kill or hang inside a
//! demuxer, decoder or muxer ends only that attempt, never the worker — nor, in the all-in-one
//! default, the API, ingest and origin that share its process.
//!
//! The parent writes one JSON [`Request`] to the child's stdin and reads frames from the
//! child's stdout: `tag: u8, len: u32 LE, payload`. The child moves its own fd 1 to stderr first,
//! so nothing a library prints can corrupt the frame stream. The parent keeps the queue
//! heartbeat, the database and the packaging decisions; the child only turns bytes into bytes.

use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::probe::{Probe, VideoProbe};
use crate::{pipeline, poster, probe, JobError};

/// The hidden subcommand that runs [`child_main`].
pub const SUBCOMMAND: &str = "__encoder";

/// Test-only fault injection: the child reads this file at start and, after its first media
/// segment, acts on its contents (`abort`, `segv`, `kill`, or `hang`). Never set in production.
pub const FAULT_FILE_ENV: &str = "LECTERN_TEST_ENCODER_FAULT_FILE";

/// One job for an encoder process.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Probe a local source.
    Probe {
        /// Local source file.
        input: PathBuf,
    },
    /// Run the ladder pipeline.
    Encode {
        /// What to encode.
        spec: pipeline::Spec,
    },
    /// Find the video keyframe at or before each time (planning chunk starts).
    Keyframes {
        /// Local source file or URL.
        input: PathBuf,
        /// Times, seconds.
        at_s: Vec<f64>,
    },
    /// Grab a poster frame.
    Poster {
        /// Local source file.
        input: PathBuf,
        /// Where, seconds.
        at_s: f64,
        /// Width.
        width: u32,
        /// Height.
        height: u32,
    },
}

const T_INIT: u8 = b'I';
const T_SEGMENT: u8 = b'S';
const T_PROGRESS: u8 = b'P';
const T_BLOB: u8 = b'B';
const T_DONE: u8 = b'D';
const T_ERROR: u8 = b'E';

/// The largest frame a parent accepts: a CMAF fragment of a 2 s keyframe interval is a few
/// MiB even at 1080p; anything near this is a broken child, not a segment.
const MAX_FRAME: u32 = 256 << 20;

/// A [`JobError`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
struct WireError {
    abort: bool,
    code: String,
    message: String,
}

impl From<JobError> for WireError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::Abort { code, message } => WireError {
                abort: true,
                code: code.into(),
                message,
            },
            other => WireError {
                abort: false,
                code: String::new(),
                message: other.to_string(),
            },
        }
    }
}

impl From<WireError> for JobError {
    fn from(e: WireError) -> Self {
        if !e.abort {
            return JobError::Retry(e.message);
        }
        // Codes are `&'static str` so that only known codes reach users.
        let code = [
            "unsupported-input",
            "corrupt-input",
            "no-video-stream",
            "transcode-failed",
        ]
        .into_iter()
        .find(|c| *c == e.code)
        .unwrap_or("transcode-failed");
        JobError::Abort {
            code,
            message: e.message,
        }
    }
}

/// A probe result on the wire (GStreamer types are not serde).
#[derive(Debug, Serialize, Deserialize)]
struct ProbeWire {
    duration_ns: Option<u64>,
    video: Option<VideoWire>,
    audio: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct VideoWire {
    width: u32,
    height: u32,
    fps: (i32, i32),
    par: (i32, i32),
    interlaced: bool,
    orientation: Option<String>,
}

impl From<&Probe> for ProbeWire {
    fn from(p: &Probe) -> Self {
        ProbeWire {
            duration_ns: p.duration.map(|d| d.nseconds()),
            video: p.video.as_ref().map(|v| VideoWire {
                width: v.width,
                height: v.height,
                fps: (v.fps.numer(), v.fps.denom()),
                par: (v.par.numer(), v.par.denom()),
                interlaced: v.interlaced,
                orientation: v.orientation.clone(),
            }),
            audio: p.audio,
        }
    }
}

impl From<ProbeWire> for Probe {
    fn from(p: ProbeWire) -> Self {
        use gstreamer as gst;
        Probe {
            duration: p.duration_ns.map(gst::ClockTime::from_nseconds),
            video: p.video.map(|v| VideoProbe {
                width: v.width,
                height: v.height,
                fps: gst::Fraction::new(v.fps.0, v.fps.1.max(1)),
                par: gst::Fraction::new(v.par.0, v.par.1.max(1)),
                interlaced: v.interlaced,
                orientation: v.orientation,
            }),
            audio: p.audio,
        }
    }
}

/// What a finished encode reports on the wire.
#[derive(Debug, Serialize, Deserialize)]
struct OutcomeWire {
    codecs: Vec<Option<String>>,
    decoded_s: f64,
}

// ---------------------------------------------------------------------------------------------
// Child side

type Out = Arc<Mutex<std::fs::File>>;

fn send(out: &Out, tag: u8, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut guard = out.lock().unwrap_or_else(|p| p.into_inner());
    let mut ok =
        guard.write_all(&[tag]).is_ok() && guard.write_all(&(len as u32).to_le_bytes()).is_ok();
    for p in parts {
        ok = ok && guard.write_all(p).is_ok();
    }
    if !ok {
        // The parent is gone (canceled, timed out or crashed itself): nobody wants the rest.
        unsafe { libc::_exit(3) };
    }
}

fn send_json(out: &Out, tag: u8, v: &impl Serialize) {
    let body = serde_json::to_vec(v).expect("wire types serialize");
    send(out, tag, &[&body]);
}

/// Faults a test can ask a child for; see [`FAULT_FILE_ENV`].
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    Abort,
    Segv,
    Kill,
    Hang,
}

impl Fault {
    fn from_env() -> Fault {
        let Some(path) = std::env::var_os(FAULT_FILE_ENV) else {
            return Fault::None;
        };
        match std::fs::read_to_string(path).unwrap_or_default().trim() {
            "abort" => Fault::Abort,
            "segv" => Fault::Segv,
            "kill" => Fault::Kill,
            "hang" => Fault::Hang,
            _ => Fault::None,
        }
    }

    /// Acts out the fault. `out` is held while hanging, so the child goes silent entirely.
    fn strike(self, out: &Out) {
        match self {
            Fault::None => {}
            Fault::Abort => std::process::abort(),
            Fault::Segv => unsafe {
                libc::raise(libc::SIGSEGV);
            },
            Fault::Kill => unsafe {
                libc::raise(libc::SIGKILL);
            },
            Fault::Hang => {
                let _held = out.lock();
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
        }
    }
}

/// The encoder process: reads one request from stdin, answers with frames, exits. Returns the
/// exit status.
pub fn child_main() -> i32 {
    // SAFETY: plain fd juggling before any other thread exists.
    let out = unsafe {
        let fd = libc::dup(1);
        if fd < 0 || libc::dup2(2, 1) < 0 {
            eprintln!("encoder: cannot set up the frame pipe");
            return 70;
        }
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        std::fs::File::from_raw_fd(fd)
    };
    let out: Out = Arc::new(Mutex::new(out));
    let mut text = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut text) {
        eprintln!("encoder: cannot read the request: {e}");
        return 70;
    }
    let req: Request = match serde_json::from_str(&text) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("encoder: malformed request: {e}");
            return 70;
        }
    };
    if let Err(e) = pipeline::init() {
        send_json(&out, T_ERROR, &WireError::from(e));
        return 0;
    }
    let result = match req {
        Request::Probe { input } => probe::probe(&input)
            .map(|p| serde_json::to_value(ProbeWire::from(&p)).expect("probe serializes")),
        Request::Poster {
            input,
            at_s,
            width,
            height,
        } => poster::grab(&input, at_s, width, height)
            .map(|jpeg| {
                send(&out, T_BLOB, &[&jpeg]);
                serde_json::Value::Null
            })
            .map_err(JobError::retry),
        Request::Encode { spec } => encode(&spec, &out, Fault::from_env()),
        Request::Keyframes { input, at_s } => probe::keyframes_before(&input, &at_s)
            .map(|k| serde_json::to_value(k).expect("keyframes serialize"))
            .map_err(JobError::retry),
    };
    match result {
        Ok(v) => send_json(&out, T_DONE, &v),
        Err(e) => send_json(&out, T_ERROR, &WireError::from(e)),
    }
    0
}

fn encode(spec: &pipeline::Spec, out: &Out, fault: Fault) -> Result<serde_json::Value, JobError> {
    let (tx, mut rx) = mpsc::channel(4);
    let writer = {
        let out = out.clone();
        std::thread::spawn(move || {
            while let Some(ev) = rx.blocking_recv() {
                match ev {
                    pipeline::Event::Init { track, data } => {
                        send(&out, T_INIT, &[&(track as u32).to_le_bytes(), &data]);
                    }
                    pipeline::Event::Segment {
                        track,
                        data,
                        duration,
                    } => {
                        send(
                            &out,
                            T_SEGMENT,
                            &[
                                &(track as u32).to_le_bytes(),
                                &duration.to_le_bytes(),
                                &data,
                            ],
                        );
                        fault.strike(&out);
                    }
                }
            }
        })
    };
    // The parent kills this process to cancel it, so nothing here ever sets the flag.
    let cancel = Arc::new(AtomicBool::new(false));
    let result = pipeline::run(spec, tx, cancel, |pos| {
        send(out, T_PROGRESS, &[&pos.to_le_bytes()]);
    });
    // Every init and segment must be out before the result that ends the stream.
    let _ = writer.join();
    result.map(|o| {
        serde_json::to_value(OutcomeWire {
            codecs: o.codecs,
            decoded_s: o.decoded_s,
        })
        .expect("outcome serializes")
    })
}

// ---------------------------------------------------------------------------------------------
// Parent side

/// How encoder processes are started and bounded.
#[derive(Debug, Clone)]
pub struct Isolation {
    /// The `lectern` binary to re-execute.
    pub exe: PathBuf,
    /// Address-space limit, MiB (0 = none).
    pub memory_mb: u64,
    /// A child silent for this long is killed as hung.
    pub stall: Duration,
    /// Encoder and decoder threads of a child: the CPUs this process may use.
    pub threads: u32,
}

impl Isolation {
    /// Re-executes the running binary with the given limits; `threads` 0 means the CPUs this
    /// process may use ([`usable_cpus`]).
    pub fn current_exe(memory_mb: u64, stall: Duration, threads: u32) -> std::io::Result<Self> {
        Ok(Isolation {
            exe: std::env::current_exe()?,
            memory_mb,
            stall,
            threads: if threads == 0 { usable_cpus() } else { threads },
        })
    }
}

/// The environment variable that tells an encoder child its thread count.
pub const THREADS_ENV: &str = "LECTERN_ENCODER_THREADS";

/// CPUs this process may use: its affinity mask (what `nproc` says), lowered to the cgroup's
/// CPU quota when one is set (`cpu.max` on cgroup v2, `cfs_quota_us` on v1), rounded up. x264
/// and libav size their thread pools from the affinity mask alone, so in a 4-CPU pod on a
/// 64-core node they would start 64 threads each and be throttled.
pub fn usable_cpus() -> u32 {
    let affinity = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(2);
    match cgroup_quota() {
        Some(q) => affinity.min(q.ceil().max(1.0) as u32),
        None => affinity,
    }
}

fn cgroup_quota() -> Option<f64> {
    // v2: "max 100000" or "400000 100000" in this process's own cgroup.
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in own.lines() {
        if let Some(path) = line.strip_prefix("0::") {
            let file = format!("/sys/fs/cgroup{}/cpu.max", path.trim_end_matches('/'));
            let text = std::fs::read_to_string(&file)
                .or_else(|_| std::fs::read_to_string("/sys/fs/cgroup/cpu.max"))
                .ok()?;
            return parse_cpu_max(&text);
        }
    }
    // v1
    let quota: f64 = std::fs::read_to_string("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let period: f64 = std::fs::read_to_string("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// The CPUs a cgroup v2 `cpu.max` allows (`None`: no quota).
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut it = text.split_whitespace();
    let quota: f64 = it.next()?.parse().ok()?;
    let period: f64 = it.next().unwrap_or("100000").parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// What the child sends.
#[derive(Debug)]
pub enum Frame {
    /// An init or media segment, as the pipeline handed it out.
    Media(pipeline::Event),
    /// Media time that has entered the encoders, seconds (also the keep-alive).
    Progress(f64),
    /// Opaque bytes (the poster JPEG).
    Blob(Bytes),
    /// The request's result, the last frame; for an encode see [`outcome`].
    Done(serde_json::Value),
}

/// Reads an encode's [`Frame::Done`] value.
pub fn outcome(v: serde_json::Value) -> Result<pipeline::Outcome, JobError> {
    let o: OutcomeWire = serde_json::from_value(v)
        .map_err(|e| JobError::Crashed(format!("the encoder sent a malformed result: {e}")))?;
    Ok(pipeline::Outcome {
        codecs: o.codecs,
        decoded_s: o.decoded_s,
    })
}

/// A running encoder process. Dropping it kills the process group.
pub struct Running {
    frames: mpsc::Receiver<Result<Frame, JobError>>,
    kill: KillGuard,
}

impl Running {
    /// The next frame; `None` after the last one (the result, or an error).
    pub async fn next(&mut self) -> Option<Result<Frame, JobError>> {
        self.frames.recv().await
    }

    /// Kills the child now (cancel, shutdown, a packaging error).
    pub fn kill(&self) {
        self.kill.kill();
    }
}

struct KillGuard {
    pgid: i32,
    reaped: Arc<AtomicBool>,
}

impl KillGuard {
    fn kill(&self) {
        if !self.reaped.load(Ordering::Acquire) {
            // SAFETY: signalling our own child's process group, which exists until reaped.
            unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
        }
    }
}

impl Drop for KillGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a child for `req`. `cpu` bounds its CPU time (all threads together).
pub async fn spawn(iso: &Isolation, req: &Request, cpu: Duration) -> Result<Running, JobError> {
    let mut cmd = tokio::process::Command::new(&iso.exe);
    cmd.arg(SUBCOMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // glibc's default of 8 arenas per core only inflates the address space the limit sees.
        .env("MALLOC_ARENA_MAX", "2")
        .env(THREADS_ENV, iso.threads.to_string())
        .process_group(0)
        .kill_on_drop(true);
    let memory = iso.memory_mb.saturating_mul(1 << 20);
    let cpu_s = cpu.as_secs().max(10);
    // SAFETY: only async-signal-safe calls (setrlimit, prctl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let set = |res, soft: u64, hard: u64| {
                let lim = libc::rlimit {
                    rlim_cur: soft as libc::rlim_t,
                    rlim_max: hard as libc::rlim_t,
                };
                if libc::setrlimit(res, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            };
            if memory > 0 {
                set(libc::RLIMIT_AS, memory, memory)?;
            }
            // SIGXCPU at the soft limit, SIGKILL at the hard one.
            set(libc::RLIMIT_CPU, cpu_s, cpu_s + 30)?;
            // The child writes no files; this only bounds a runaway cache or log.
            set(libc::RLIMIT_FSIZE, 1 << 30, 1 << 30)?;
            set(libc::RLIMIT_CORE, 0, 0)?;
            // A worker that dies must not leave its encoders running.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        JobError::retry(format!(
            "cannot start the encoder process {}: {e}",
            iso.exe.display()
        ))
    })?;
    let pgid = child.id().map(|p| p as i32).unwrap_or(0);
    let body = serde_json::to_vec(req).expect("requests serialize");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    let reaped = Arc::new(AtomicBool::new(false));
    let kill = KillGuard {
        pgid,
        reaped: reaped.clone(),
    };
    // A child that dies before reading its request is reported by the reader below.
    let _ = stdin.write_all(&body).await;
    drop(stdin);
    let (tx, rx) = mpsc::channel(4);
    let stall = iso.stall;
    tokio::spawn(async move {
        let mut rd = BufReader::with_capacity(1 << 20, stdout);
        let ended = loop {
            let frame = match tokio::time::timeout(stall, read_frame(&mut rd)).await {
                Err(_) => {
                    // SAFETY: our child's group; not yet reaped.
                    unsafe { libc::kill(-pgid, libc::SIGKILL) };
                    let _ = child.wait().await;
                    reaped.store(true, Ordering::Release);
                    break Some(Err(JobError::Crashed(format!(
                        "the encoder process reported nothing for {} s and was killed as hung",
                        stall.as_secs()
                    ))));
                }
                Ok(f) => f,
            };
            match frame {
                Ok(Some(Ok(f @ Frame::Done(_)))) => break Some(Ok(f)),
                Ok(Some(Ok(f))) => {
                    if tx.send(Ok(f)).await.is_err() {
                        break None;
                    }
                }
                Ok(Some(Err(e))) => break Some(Err(e)),
                Ok(None) | Err(_) => {
                    // The stream ended without a result: the child died.
                    let status = child.wait().await;
                    reaped.store(true, Ordering::Release);
                    break Some(Err(JobError::Crashed(describe_exit(status))));
                }
            }
        };
        if let Some(last) = ended {
            let _ = tx.send(last).await;
        }
        // Reap the child (it exits on its own after its result) so no zombie is left.
        if !reaped.load(Ordering::Acquire) {
            let _ = child.wait().await;
            reaped.store(true, Ordering::Release);
        }
    });
    Ok(Running { frames: rx, kill })
}

fn describe_exit(status: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (_, Some(sig)) => {
                let name = match sig {
                    libc::SIGABRT => " (SIGABRT: an abort or a panic)",
                    libc::SIGSEGV => " (SIGSEGV: a crash)",
                    libc::SIGBUS => " (SIGBUS: a crash)",
                    libc::SIGKILL => " (SIGKILL: out of memory, or killed)",
                    libc::SIGXCPU => " (SIGXCPU: CPU time limit)",
                    libc::SIGXFSZ => " (SIGXFSZ: file size limit)",
                    _ => "",
                };
                format!("the encoder process was killed by signal {sig}{name}")
            }
            (Some(c), None) => {
                format!("the encoder process exited with status {c} without a result")
            }
            _ => "the encoder process ended without a result".into(),
        },
        Err(e) => format!("the encoder process vanished: {e}"),
    }
}

/// Reads one frame; `Ok(None)` at a clean end of stream. A protocol error reads as a crash.
async fn read_frame<R: AsyncReadExt + Unpin>(
    rd: &mut R,
) -> std::io::Result<Option<Result<Frame, JobError>>> {
    let mut head = [0u8; 5];
    match rd.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
    if len > MAX_FRAME {
        return Err(std::io::Error::other("oversized frame"));
    }
    let mut body = vec![0u8; len as usize];
    rd.read_exact(&mut body).await?;
    let bad = || std::io::Error::other("malformed frame");
    let u32_at = |b: &[u8], i: usize| -> std::io::Result<u32> {
        Ok(u32::from_le_bytes(
            b.get(i..i + 4)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        ))
    };
    let f64_at = |b: &[u8], i: usize| -> std::io::Result<f64> {
        Ok(f64::from_le_bytes(
            b.get(i..i + 8)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        ))
    };
    let frame = match head[0] {
        T_INIT => {
            let track = u32_at(&body, 0)? as usize;
            let data = Bytes::from(body).slice(4..);
            Ok(Frame::Media(pipeline::Event::Init { track, data }))
        }
        T_SEGMENT => {
            let track = u32_at(&body, 0)? as usize;
            let duration = f64_at(&body, 4)?;
            let data = Bytes::from(body).slice(12..);
            Ok(Frame::Media(pipeline::Event::Segment {
                track,
                data,
                duration,
            }))
        }
        T_PROGRESS => Ok(Frame::Progress(f64_at(&body, 0)?)),
        T_BLOB => Ok(Frame::Blob(body.into())),
        T_DONE => Ok(Frame::Done(
            serde_json::from_slice(&body).map_err(|_| bad())?,
        )),
        T_ERROR => Err(serde_json::from_slice::<WireError>(&body)
            .map_err(|_| bad())?
            .into()),
        _ => return Err(bad()),
    };
    Ok(Some(frame))
}

/// Runs a short request (probe, poster) to its end within `limit`: its JSON result and any
/// blob it sent.
async fn run_to_end(
    iso: &Isolation,
    req: &Request,
    limit: Duration,
) -> Result<(serde_json::Value, Option<Bytes>), JobError> {
    let mut running = spawn(iso, req, limit).await?;
    let mut blob = None;
    let work = async {
        while let Some(f) = running.next().await {
            match f? {
                Frame::Blob(data) => blob = Some(data),
                Frame::Done(v) => return Ok(v),
                _ => {}
            }
        }
        Err(JobError::Crashed(
            "the encoder process ended without a result".into(),
        ))
    };
    let v = tokio::time::timeout(limit, work)
        .await
        .map_err(|_| JobError::retry(format!("timed out after {} s", limit.as_secs())))??;
    Ok((v, blob))
}

/// Probes `input` in a child process.
pub async fn probe(iso: &Isolation, input: PathBuf) -> Result<Probe, JobError> {
    let (v, _) = run_to_end(iso, &Request::Probe { input }, Duration::from_secs(120)).await?;
    let wire: ProbeWire = serde_json::from_value(v)
        .map_err(|e| JobError::Crashed(format!("the probe sent a malformed result: {e}")))?;
    Ok(wire.into())
}

/// The keyframe at or before each of `at_s` (seconds), found in a child process.
pub async fn keyframes(
    iso: &Isolation,
    input: PathBuf,
    at_s: Vec<f64>,
) -> Result<Vec<Option<f64>>, JobError> {
    let limit = Duration::from_secs(60 + at_s.len() as u64);
    let (v, _) = run_to_end(iso, &Request::Keyframes { input, at_s }, limit).await?;
    serde_json::from_value(v)
        .map_err(|e| JobError::Crashed(format!("the keyframe search sent a malformed result: {e}")))
}

/// Grabs a poster JPEG in a child process.
pub async fn poster(
    iso: &Isolation,
    input: PathBuf,
    at_s: f64,
    width: u32,
    height: u32,
) -> Result<Bytes, JobError> {
    let req = Request::Poster {
        input,
        at_s,
        width,
        height,
    };
    let (_, blob) = run_to_end(iso, &req, poster::TIMEOUT).await?;
    blob.ok_or_else(|| JobError::retry("no poster frame"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_cpu_quota() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("400000 100000\n"), Some(4.0));
        assert_eq!(parse_cpu_max("150000 100000"), Some(1.5));
        assert_eq!(parse_cpu_max(""), None);
        let n = usable_cpus();
        assert!(n >= 1 && n as usize <= std::thread::available_parallelism().unwrap().get());
    }
}
