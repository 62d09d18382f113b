//! The ladder pipeline: decode once, then scale and encode every rung in one GStreamer pipeline,
//! each rung (and the audio) muxed to CMAF by cmafmux and handed out through an appsink.
//!
//! ```text
//! filesrc ! decodebin
//!   video: videoconvert [! deinterlace] ! videorate ! I420,framerate=F ! videoflip(auto) ! tee
//!          tee ! queue ! videoscale ! WxH,par=1/1 ! x264enc ! profile=high ! h264parse ! cmafmux ! appsink  (per rung)
//!   audio: audioconvert ! audioresample ! 48k stereo ! avenc_aac ! aacparse ! cmafmux ! appsink
//! ```
//! GStreamer calls block, so everything here runs on a blocking thread; segments leave through a
//! bounded channel, which also paces the pipeline to the speed of the object store.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;
use gstreamer_pbutils as gst_pbutils;
use gstreamer_video as gst_video;
use tokio::sync::mpsc;

use crate::JobError;

/// Output of the pipeline, in order per track.
#[derive(Debug)]
pub enum Event {
    /// A track's init segment.
    Init {
        /// Track index (video rungs first, audio last).
        track: usize,
        /// `ftyp` + `moov`.
        data: Bytes,
    },
    /// A complete media segment.
    Segment {
        /// Track index.
        track: usize,
        /// `moof` + `mdat`.
        data: Bytes,
        /// Duration, seconds.
        duration: f64,
    },
}

/// One video rung to encode.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VideoOut {
    /// Output width, even.
    pub width: u32,
    /// Output height, even.
    pub height: u32,
    /// Average bitrate, kbit/s.
    pub bitrate_kbps: u32,
    /// VBV buffer, milliseconds of the bitrate.
    pub vbv_ms: u32,
    /// Constant quality (x264 CRF) with `bitrate_kbps` as the VBV cap, instead of an average
    /// bitrate.
    #[serde(default)]
    pub crf: Option<u32>,
}

impl VideoOut {
    /// The encoder settings of a planned rendition.
    pub fn of(r: &lectern_core::ladder::Rendition) -> Self {
        match r.crf {
            // x264enc's quality mode ("qual") takes `bitrate` as the VBV maxrate.
            Some(crf) => Self {
                width: r.width,
                height: r.height,
                bitrate_kbps: r.maxrate / 1000,
                vbv_ms: ((r.bufsize as u64 * 1000) / r.maxrate.max(1) as u64) as u32,
                crf: Some(crf),
            },
            None => Self {
                width: r.width,
                height: r.height,
                bitrate_kbps: r.video_bitrate / 1000,
                vbv_ms: ((r.bufsize as u64 * 1000) / r.video_bitrate.max(1) as u64) as u32,
                crf: None,
            },
        }
    }
}

/// Everything the pipeline needs (sent to the encoder process as JSON).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Spec {
    /// Local source file.
    pub input: PathBuf,
    /// Output frame rate (numerator, denominator).
    pub fps: (i32, i32),
    /// Whether to deinterlace.
    pub interlaced: bool,
    /// Rungs.
    pub video: Vec<VideoOut>,
    /// Audio (bitrate, channels, rate) when the source has sound.
    pub audio: Option<(u32, u32, u32)>,
    /// CMAF fragment length, seconds (one keyframe interval; the packager groups fragments
    /// into segments).
    pub fragment_s: u32,
    /// Keyframe interval, frames.
    pub gop_frames: u32,
    /// x264 speed preset.
    pub preset: String,
    /// Encode only this stretch of the source (a chunk); `None` encodes all of it.
    #[serde(default)]
    pub range: Option<Range>,
    /// Decode-time offsets (video, audio), ns, when the tracks are encoded apart (chunks and
    /// the audio task): those of the whole ladder, so sync matches a single pass.
    #[serde(default)]
    pub sync_ns: Option<(i64, i64)>,
}

/// A stretch of the source on the output frame grid, for chunked transcoding.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Range {
    /// Output frames before it.
    pub start_frame: u64,
    /// Output frames in it; `None` runs to the end of the source.
    pub frames: Option<u64>,
}

impl Spec {
    /// Nanoseconds of `frames` output frames.
    pub fn frames_ns(&self, frames: u64) -> u64 {
        let (n, d) = (self.fps.0.max(1) as u128, self.fps.1.max(1) as u128);
        (frames as u128 * d * 1_000_000_000 / n) as u64
    }

    /// Where the stream's first keyframe interval is cut in two, in output frames, when this
    /// encode starts the stream (a whole source, the first chunk or the sound): a half-length
    /// first fragment makes a lecture playable after half as much encoding, and the second
    /// half ends on the regular keyframe grid, so every later fragment (and chunk) is where it
    /// would be without the cut.
    pub fn lead_split(&self) -> Option<u64> {
        let starts = self.range.is_none_or(|r| r.start_frame == 0);
        (starts && self.gop_frames >= 2).then_some(self.gop_frames as u64 / 2)
    }

    /// Segments of one fragment each at the start of this encode's output: the two halves of
    /// the first keyframe interval, or the whole interval when it is not cut.
    pub fn lead_segments(&self) -> usize {
        if self.range.is_some_and(|r| r.start_frame > 0) {
            0
        } else if self.lead_split().is_some() {
            2
        } else {
            1
        }
    }

    /// The decode-time offsets (video, audio) that keep picture and sound in sync.
    pub fn sync(&self) -> (i64, i64) {
        self.sync_ns.unwrap_or_else(|| {
            let s = AvSync::of(self);
            (s.video_ns, s.audio_ns)
        })
    }
}

/// What a finished pipeline reports.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// RFC 6381 codec string per track, read from the stream.
    pub codecs: Vec<Option<String>>,
    /// Media time of decoded video, seconds (shorter than declared when the file is cut).
    pub decoded_s: f64,
}

static INIT: OnceLock<Result<(), String>> = OnceLock::new();

/// Initialises GStreamer and registers the statically linked CMAF muxer, once.
pub fn init() -> Result<(), JobError> {
    INIT.get_or_init(|| {
        gst::init().map_err(|e| e.to_string())?;
        gstfmp4::plugin_register_static().map_err(|e| e.to_string())?;
        for el in ["x264enc", "avenc_aac", "decodebin", "videoflip", "h264parse", "aacparse", "cmafmux"] {
            if gst::ElementFactory::find(el).is_none() {
                return Err(format!(
                    "GStreamer element '{el}' is missing; install gstreamer1.0-plugins-{{base,good,bad,ugly}} and gstreamer1.0-libav"
                ));
            }
        }
        Ok(())
    })
    .clone()
    .map_err(JobError::retry)
}

/// Sets the pipeline to Null however the job ends, so no streaming thread outlives it.
pub(crate) struct NullOnDrop(pub(crate) gst::Pipeline);

impl Drop for NullOnDrop {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}

/// Threads per encoder and decoder, from the worker ([`crate::isolate::THREADS_ENV`]); 0 lets
/// each library pick (the node's core count).
fn encoder_threads() -> u32 {
    std::env::var(crate::isolate::THREADS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn make(name: &str) -> Result<gst::Element, JobError> {
    gst::ElementFactory::make(name)
        .build()
        .map_err(|e| JobError::retry(format!("cannot create {name}: {e}")))
}

fn capsfilter(caps: gst::Caps) -> Result<gst::Element, JobError> {
    gst::ElementFactory::make("capsfilter")
        .property("caps", &caps)
        .build()
        .map_err(|e| JobError::retry(e.to_string()))
}

fn link(elements: &[&gst::Element]) -> Result<(), JobError> {
    gst::Element::link_many(elements.iter().copied())
        .map_err(|e| JobError::retry(format!("cannot link pipeline: {e}")))
}

struct Built {
    pipeline: gst::Pipeline,
    parsers: Vec<gst::Element>,
    position_ns: Arc<AtomicU64>,
    /// Set once a chunk's seek is done; until then decoded video is dropped.
    seeked: Arc<AtomicBool>,
    /// The decoded video pad a chunk's seek is sent through, once decodebin has exposed it.
    video_pad: Arc<std::sync::Mutex<Option<gst::Pad>>>,
    /// Signalled when decodebin has exposed every pad.
    pads_done: std::sync::mpsc::Receiver<()>,
}

/// Whether an input is a URL (a presigned object read in place) rather than a local file.
pub fn is_url(input: &Path) -> bool {
    let s = input.to_string_lossy();
    s.starts_with("http://") || s.starts_with("https://")
}

/// The element that reads an input: `souphttpsrc` for a URL (it seeks with ranged GETs, so a
/// chunk fetches little more than its own part), `filesrc` for a file.
pub fn source_element(input: &Path) -> Result<gst::Element, gst::glib::BoolError> {
    let factory = if is_url(input) {
        "souphttpsrc"
    } else {
        "filesrc"
    };
    gst::ElementFactory::make(factory)
        .property("location", input.to_string_lossy().as_ref())
        .build()
}

fn build(spec: &Spec, tx: &mpsc::Sender<Event>) -> Result<Built, JobError> {
    let pipeline = gst::Pipeline::with_name("ladder");
    let src = source_element(&spec.input).map_err(|e| JobError::retry(e.to_string()))?;
    let dbin = make("decodebin")?;
    let threads = encoder_threads();
    if threads > 0 {
        // libav decoders otherwise start one thread per core of the node, not of the pod.
        dbin.downcast_ref::<gst::Bin>()
            .expect("decodebin is a bin")
            .connect_element_added(move |_, el| {
                if el.find_property("max-threads").is_some() {
                    el.set_property("max-threads", threads as i32);
                }
            });
    }
    pipeline
        .add_many([&src, &dbin])
        .map_err(|e| JobError::retry(e.to_string()))?;
    src.link(&dbin)
        .map_err(|e| JobError::retry(e.to_string()))?;
    let position_ns = Arc::new(AtomicU64::new(0));
    let fragment = gst::ClockTime::from_seconds(spec.fragment_s as u64);
    let (sync_video_ns, sync_audio_ns) = spec.sync();
    let mut parsers = Vec::new();

    let seeked = Arc::new(AtomicBool::new(spec.range.is_none()));
    let mut video_entry = None;
    // Video: normalise once, then branch per rung (the audio task has none).
    if !spec.video.is_empty() {
        let conv = make("videoconvert")?;
        let mut chain = vec![conv.clone()];
        if spec.interlaced {
            chain.push(make("deinterlace")?);
        }
        // Without skip-to-first, videorate on 1.22 emits a source's first frame at its own time
        // (say 23 ms, common in Matroska) and then fills the grid from 0: timestamps go backwards
        // and cmafmux panics. Starting the grid at the first frame keeps them monotonic, and keeps
        // the source's own offset between picture and sound.
        // A chunk starts on the output grid at its seek position instead (its first frame is the
        // source's picture at that time), so its frames continue the previous chunk's exactly.
        chain.push(
            gst::ElementFactory::make("videorate")
                .property("skip-to-first", spec.range.is_none())
                .build()
                .map_err(|e| JobError::retry(e.to_string()))?,
        );
        let grid = capsfilter(
            gst::Caps::builder("video/x-raw")
                .field("format", "I420")
                .field("framerate", gst::Fraction::new(spec.fps.0, spec.fps.1))
                .build(),
        )?;
        if let Some(frames) = spec.range.and_then(|r| r.frames) {
            keep_frames(&grid.static_pad("src").expect("capsfilter has src"), frames);
        }
        chain.push(grid);
        // `method=automatic` ignores orientation tags on 1.22; `video-direction=auto` applies them.
        let flip = gst::ElementFactory::make("videoflip")
            .property_from_str("video-direction", "auto")
            .build()
            .map_err(|e| JobError::retry(e.to_string()))?;
        chain.push(flip.clone());
        let tee = make("tee")?;
        chain.push(tee.clone());
        pipeline
            .add_many(chain.iter())
            .map_err(|e| JobError::retry(e.to_string()))?;
        link(&chain.iter().collect::<Vec<_>>())?;
        drop_orientation_tags(&flip.static_pad("src").expect("videoflip has src"));
        let entry = conv.static_pad("sink").expect("videoconvert has sink");
        // Measured before videorate, which pads a cut-short stream out to its declared end.
        track_position(&entry, position_ns.clone());
        if spec.range.is_some() {
            // Pictures decoded before the chunk's seek are not the chunk's.
            let gate = seeked.clone();
            entry.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                if gate.load(Ordering::Acquire) {
                    gst::PadProbeReturn::Ok
                } else {
                    gst::PadProbeReturn::Drop
                }
            });
        }
        video_entry = Some(entry);

        for (i, r) in spec.video.iter().enumerate() {
            let q = make("queue")?;
            // Catmull-Rom (bicubic) like ffmpeg's default: the 2-tap bilinear default aliases
            // on 1080p → 480p and costs about 1 dB PSNR.
            let scale = gst::ElementFactory::make("videoscale")
                .property("add-borders", false)
                .property_from_str("method", "catrom")
                .build()
                .map_err(|e| JobError::retry(e.to_string()))?;
            // BT.709 on every rung: left open, SD rungs default to BT.601 and videoscale converts
            // the matrix, so colours would shift when a player switches rungs.
            let caps = capsfilter(
                gst::Caps::builder("video/x-raw")
                    .field("format", "I420")
                    .field("width", r.width as i32)
                    .field("height", r.height as i32)
                    .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
                    .field("colorimetry", "bt709")
                    .build(),
            )?;
            let mut enc = gst::ElementFactory::make("x264enc")
                .property("threads", encoder_threads())
                .property("bitrate", r.bitrate_kbps)
                .property("vbv-buf-capacity", r.vbv_ms);
            if let Some(crf) = r.crf {
                enc = enc
                    .property_from_str("pass", "qual")
                    .property("quantizer", crf);
            }
            let enc = enc
                .property("key-int-max", spec.gop_frames)
                .property_from_str("speed-preset", &spec.preset)
                // Scene-cut keyframes would differ between rungs and break switching alignment.
                .property("option-string", "scenecut=0:open-gop=0")
                .build()
                .map_err(|e| JobError::retry(e.to_string()))?;
            let profile = capsfilter(
                gst::Caps::builder("video/x-h264")
                    .field("profile", "high")
                    .build(),
            )?;
            let parse = make("h264parse")?;
            let mux = cmafmux(fragment)?;
            if sync_video_ns > 0 {
                mux.set_property("decode-time-offset", sync_video_ns);
            }
            if let Some(k) = spec.lead_split() {
                let cuts = [spec.frames_ns(k), spec.frames_ns(spec.gop_frames as u64)];
                force_keyframes_at(&caps.static_pad("src").expect("capsfilter has src"), cuts);
                split_fragments_at(
                    &parse.static_pad("src").expect("h264parse has src"),
                    &mux,
                    cuts,
                );
            }
            let sink = appsink(i, tx.clone());
            let els = [
                &q,
                &scale,
                &caps,
                &enc,
                &profile,
                &parse,
                &mux,
                sink.upcast_ref(),
            ];
            pipeline
                .add_many(els)
                .map_err(|e| JobError::retry(e.to_string()))?;
            link(&[
                &tee,
                &q,
                &scale,
                &caps,
                &enc,
                &profile,
                &parse,
                &mux,
                sink.upcast_ref(),
            ])?;
            parsers.push(parse);
        }
    }

    let mut audio_entry = None;
    if let Some((bitrate, channels, rate)) = spec.audio {
        let conv = make("audioconvert")?;
        let res = make("audioresample")?;
        let caps = capsfilter(
            gst::Caps::builder("audio/x-raw")
                .field("channels", channels as i32)
                .field("rate", rate as i32)
                .build(),
        )?;
        let enc = gst::ElementFactory::make("avenc_aac")
            .property("bitrate", bitrate as i32)
            // Matroska stores times in whole milliseconds, so AAC frames (21.33 ms) arrive with
            // jitter; timestamps from the sample count keep decode times strictly increasing.
            .property("perfect-timestamp", true)
            .build()
            .map_err(|e| JobError::retry(e.to_string()))?;
        let parse = make("aacparse")?;
        let mux = cmafmux(fragment)?;
        if sync_audio_ns > 0 {
            mux.set_property("decode-time-offset", sync_audio_ns);
        }
        if let Some(k) = spec.lead_split() {
            let cuts = [spec.frames_ns(k), spec.frames_ns(spec.gop_frames as u64)];
            split_fragments_at(
                &parse.static_pad("src").expect("aacparse has src"),
                &mux,
                cuts,
            );
        }
        let sink = appsink(spec.video.len(), tx.clone());
        let els = [&conv, &res, &caps, &enc, &parse, &mux, sink.upcast_ref()];
        pipeline
            .add_many(els)
            .map_err(|e| JobError::retry(e.to_string()))?;
        link(&els)?;
        audio_entry = conv.static_pad("sink");
        if spec.video.is_empty() {
            track_position(
                audio_entry.as_ref().expect("audioconvert has sink"),
                position_ns.clone(),
            );
        }
        parsers.push(parse);
    }

    if spec.video.is_empty() {
        // The audio task: leave video encoded (decodebin would decode every picture only to
        // drop it), but keep plugging containers so the audio inside is reached.
        let demuxers = gst::ElementFactory::factories_with_type(
            gst::ElementFactoryType::DEMUXER,
            gst::Rank::MARGINAL,
        );
        dbin.connect("autoplug-continue", false, move |args| {
            let caps = args[2].get::<gst::Caps>().ok()?;
            let video = caps
                .structure(0)
                .is_some_and(|s| s.name().starts_with("video/"));
            let container = demuxers.iter().any(|f| f.can_sink_any_caps(&caps));
            Some((!video || container).to_value())
        });
    }

    let (pads_tx, pads_done) = std::sync::mpsc::channel();
    let video_pad = Arc::new(std::sync::Mutex::new(None));
    let entries = (video_entry, audio_entry);
    let (v_entry, a_entry) = entries.clone();
    let seek_pad = video_pad.clone();
    dbin.connect_pad_added(move |dbin, pad| {
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let Some(s) = caps.structure(0) else { return };
        let target = if s.name().starts_with("video/") {
            v_entry.as_ref()
        } else if s.name().starts_with("audio/") {
            a_entry.as_ref()
        } else {
            None
        };
        // Only the first stream of each kind is used; extra tracks stay unlinked.
        let Some(target) = target.filter(|t| !t.is_linked()) else {
            return;
        };
        if s.name().starts_with("video/") {
            *seek_pad.lock().expect("video pad slot") = Some(pad.clone());
        }
        if let Err(err) = pad.link(target) {
            gst::element_error!(
                dbin,
                gst::CoreError::Negotiation,
                ("cannot link decoded {}: {:?}", s.name(), err)
            );
        }
    });
    let (v_entry, a_entry) = entries;
    dbin.connect_no_more_pads(move |dbin| {
        for (what, p) in [("video", &v_entry), ("audio", &a_entry)] {
            if p.as_ref().is_some_and(|p| !p.is_linked()) {
                gst::element_error!(
                    dbin,
                    gst::StreamError::Demux,
                    ("the source has no decodable {} stream", what)
                );
            }
        }
        let _ = pads_tx.send(());
    });
    Ok(Built {
        pipeline,
        parsers,
        position_ns,
        seeked,
        video_pad,
        pads_done,
    })
}

/// How far to push each track's decode times so that picture and sound keep the source's
/// offset. Each track has its own cmafmux, and each starts its timeline at its own first
/// decode time: x264's B-frame pyramid decodes two frames ahead of presentation, so the video
/// is presented two frames late, while the AAC encoder's 1024 priming samples present the
/// sound one AAC frame late. The track that is early is delayed by the difference.
#[derive(Debug, Clone, Copy, PartialEq)]
struct AvSync {
    video_ns: i64,
    audio_ns: i64,
}

/// Samples of AAC encoder priming (FFmpeg's AAC encoder, behind avenc_aac).
const AAC_PRIMING: i64 = 1024;

impl AvSync {
    fn of(spec: &Spec) -> Self {
        let (n, d) = (spec.fps.0.max(1) as i64, spec.fps.1.max(1) as i64);
        // x264 delays decode by 2 frames with B-frames and b-pyramid (every preset but
        // ultrafast, which has no B-frames).
        let frames = if spec.preset == "ultrafast" { 0 } else { 2 };
        let video = frames * d * 1_000_000_000 / n;
        let audio = match spec.audio {
            Some((_, _, rate)) if rate > 0 => AAC_PRIMING * 1_000_000_000 / rate as i64,
            _ => {
                return AvSync {
                    video_ns: 0,
                    audio_ns: 0,
                }
            }
        };
        AvSync {
            video_ns: (audio - video).max(0),
            audio_ns: (video - audio).max(0),
        }
    }
}

/// The running time of `buffer` on `pad`'s current segment.
fn running_time(pad: &gst::Pad, buffer: &gst::BufferRef) -> Option<gst::ClockTime> {
    let pts = buffer.pts()?;
    let ev = pad.sticky_event::<gst::event::Segment>(0)?;
    ev.segment()
        .downcast_ref::<gst::ClockTime>()?
        .to_running_time(pts)
}

/// Makes the encoder behind `pad` start a keyframe at each of `cuts` (ns after the first
/// frame). x264's own keyframe counter then restarts there, so with the last cut on the
/// regular grid every later keyframe stays where `key-int-max` alone would put it. The
/// encoder applies a downstream force-key-unit to the next frame it gets, so each goes in
/// just before its frame (fmp4mux's upstream requests can arrive after it).
fn force_keyframes_at(pad: &gst::Pad, cuts: [u64; 2]) {
    let t0 = OnceLock::new();
    let next = std::sync::atomic::AtomicUsize::new(0);
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(gst::PadProbeData::Buffer(buffer)) = &info.data else {
            return gst::PadProbeReturn::Ok;
        };
        let Some(rt) = running_time(pad, buffer) else {
            return gst::PadProbeReturn::Ok;
        };
        let start = *t0.get_or_init(|| rt);
        let i = next.load(Ordering::Relaxed);
        // A millisecond early, so rounding never pushes a cut past its frame.
        let due = start + gst::ClockTime::from_nseconds(cuts[i].saturating_sub(1_000_000));
        if rt >= due {
            let ev = gst_video::DownstreamForceKeyUnitEvent::builder()
                .running_time(rt)
                .all_headers(true)
                .build();
            pad.push_event(ev);
            next.store(i + 1, Ordering::Relaxed);
            if i + 1 == cuts.len() {
                return gst::PadProbeReturn::Remove;
            }
        }
        gst::PadProbeReturn::Ok
    });
}

/// Makes `mux` end a fragment before the first keyframe (or, for sound, the first buffer) at
/// each of `cuts` (ns after its first buffer), on top of its regular fragment duration. The
/// request names that buffer's exact time as it passes: fmp4mux only retires a request that
/// falls exactly on where the next fragment starts, and one a few samples off would leave a
/// sliver of a fragment behind it. A flush (a chunk's seek) clears fmp4mux's requests, so the
/// count starts again after one.
fn split_fragments_at(pad: &gst::Pad, mux: &gst::Element, cuts: [u64; 2]) {
    let mux = mux.downgrade();
    // (first running time, cuts made)
    let state = std::sync::Mutex::new((None::<gst::ClockTime>, 0usize));
    pad.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_FLUSH,
        move |pad, info| {
            let mut st = state.lock().expect("split state");
            match &info.data {
                Some(gst::PadProbeData::Event(ev)) if ev.type_() == gst::EventType::FlushStop => {
                    *st = (None, 0);
                }
                Some(gst::PadProbeData::Buffer(buffer)) if st.1 < cuts.len() => {
                    let Some(rt) = running_time(pad, buffer) else {
                        return gst::PadProbeReturn::Ok;
                    };
                    let t0 = *st.0.get_or_insert(rt);
                    // A millisecond early, so rounding never skips the keyframe made for it.
                    let due =
                        t0 + gst::ClockTime::from_nseconds(cuts[st.1].saturating_sub(1_000_000));
                    if rt >= due && !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT) {
                        if let Some(mux) = mux.upgrade() {
                            mux.emit_by_name::<()>("split-at-running-time", &[&rt]);
                        }
                        st.1 += 1;
                    }
                }
                _ => {}
            }
            gst::PadProbeReturn::Ok
        },
    );
}

fn cmafmux(fragment: gst::ClockTime) -> Result<gst::Element, JobError> {
    gst::ElementFactory::make("cmafmux")
        .property("fragment-duration", fragment)
        .build()
        .map_err(|e| JobError::retry(e.to_string()))
}

/// An appsink that turns each cmafmux buffer list into an init and/or a segment event.
fn appsink(track: usize, tx: mpsc::Sender<Event>) -> gst_app::AppSink {
    let sink = gst_app::AppSink::builder()
        .buffer_list(true)
        .sync(false)
        // Several appsinks behind one tee must not wait for each other to preroll.
        .async_(false)
        .enable_last_sample(false)
        .build();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                for ev in fragment_events(track, &sample).map_err(|e| {
                    gst::element_error!(sink, gst::StreamError::Mux, ("{}", e));
                    gst::FlowError::Error
                })? {
                    // The receiver is gone when the job was canceled or failed: stop the pipeline.
                    tx.blocking_send(ev).map_err(|_| gst::FlowError::Flushing)?;
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    sink
}

fn fragment_events(track: usize, sample: &gst::Sample) -> Result<Vec<Event>, String> {
    let list = sample
        .buffer_list()
        .ok_or("cmafmux sample without a buffer list")?;
    let mut out = Vec::new();
    let mut idx = 0;
    let first = list.get(0).ok_or("empty buffer list")?;
    if first
        .flags()
        .contains(gst::BufferFlags::DISCONT | gst::BufferFlags::HEADER)
    {
        let map = first.map_readable().map_err(|e| e.to_string())?;
        out.push(Event::Init {
            track,
            data: Bytes::copy_from_slice(&map),
        });
        idx = 1;
        if list.len() == 1 {
            return Ok(out);
        }
    }
    let header = list.get(idx).ok_or("fragment without a header")?;
    if !header.flags().contains(gst::BufferFlags::HEADER)
        || header.flags().contains(gst::BufferFlags::DELTA_UNIT)
    {
        return Err(format!(
            "unexpected cmafmux output flags {:?}",
            header.flags()
        ));
    }
    let duration = header
        .duration()
        .ok_or("fragment header without a duration")?;
    let mut data = Vec::new();
    for buf in list.iter().skip(idx) {
        let map = buf.map_readable().map_err(|e| e.to_string())?;
        data.extend_from_slice(&map);
    }
    out.push(Event::Segment {
        track,
        data: data.into(),
        duration: duration.nseconds() as f64 / 1e9,
    });
    Ok(out)
}

/// videoflip has already turned the pixels; a tag left on the stream would make cmafmux write a
/// rotation matrix and players turn the picture a second time.
fn drop_orientation_tags(pad: &gst::Pad) {
    pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, |_, info| {
        if let Some(gst::PadProbeData::Event(ev)) = &info.data {
            if let gst::EventView::Tag(t) = ev.view() {
                if t.tag().get::<gst::tags::ImageOrientation>().is_some() {
                    return gst::PadProbeReturn::Drop;
                }
            }
        }
        gst::PadProbeReturn::Ok
    });
}

/// Records how far (running time, end of frame) the decoded video has got, for progress and
/// for spotting sources that end before their declared duration.
fn track_position(pad: &gst::Pad, slot: Arc<AtomicU64>) {
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        if let Some(gst::PadProbeData::Buffer(buf)) = &info.data {
            if let (Some(pts), Some(ev)) = (buf.pts(), pad.sticky_event::<gst::event::Segment>(0)) {
                if let Some(rt) = ev
                    .segment()
                    .downcast_ref::<gst::ClockTime>()
                    .and_then(|s| s.to_running_time(pts))
                {
                    let end = rt.nseconds() + buf.duration().map(|d| d.nseconds()).unwrap_or(0);
                    slot.fetch_max(end, Ordering::Relaxed);
                }
            }
        }
        gst::PadProbeReturn::Ok
    });
}

/// Lets exactly `frames` pictures through (a chunk's share of the grid), then ends the stream:
/// videorate may fill a frame past the seek's stop.
fn keep_frames(pad: &gst::Pad, frames: u64) {
    let seen = AtomicU64::new(0);
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        if seen.fetch_add(1, Ordering::Relaxed) < frames {
            gst::PadProbeReturn::Ok
        } else {
            gst::PadProbeReturn::Drop
        }
    });
}

fn classify(err: &gst::glib::Error, src: &str, debug: Option<String>) -> JobError {
    let detail = format!("{src}: {} ({})", err.message(), debug.unwrap_or_default());
    if err.matches(gst::StreamError::TypeNotFound) || err.matches(gst::StreamError::WrongType) {
        JobError::abort("unsupported-input", "This file is not a video format Lectern can read. Upload an MP4, MOV, MKV or WebM recording.")
    } else if err.matches(gst::CoreError::MissingPlugin)
        || err.matches(gst::StreamError::CodecNotFound)
    {
        JobError::abort("unsupported-input", "The recording uses a codec Lectern cannot decode. Export it as H.264/AAC MP4 and upload it again.")
    } else if err.matches(gst::StreamError::Decode)
        || err.matches(gst::StreamError::Demux)
        || err.matches(gst::StreamError::Format)
    {
        tracing::info!(%detail, "source failed to decode");
        JobError::abort("corrupt-input", "The file is damaged or incomplete and could not be decoded. Upload the original recording again.")
    } else {
        JobError::retry(format!("pipeline error: {detail}"))
    }
}

/// Starts a chunk: pauses the pipeline until decodebin has exposed its pads, then seeks the
/// decoded video accurately to the chunk's first frame (and just past its last), so the
/// demuxer reads from the keyframe before it and the decoder drops what lies before.
fn seek_to(
    built: &Built,
    spec: &Spec,
    range: Range,
    bus: &gst::Bus,
    first_error: &dyn Fn(&gst::Bus) -> Option<JobError>,
) -> Result<(), JobError> {
    if built.pipeline.set_state(gst::State::Paused).is_err() {
        return Err(
            first_error(bus).unwrap_or_else(|| JobError::retry("the pipeline failed to start"))
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(e) = first_error(bus) {
            return Err(e);
        }
        match built.pads_done.recv_timeout(Duration::from_millis(100)) {
            Ok(()) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
            Err(_) => return Err(JobError::retry("the source exposed no streams within 60 s")),
        }
    }
    let pad = built
        .video_pad
        .lock()
        .expect("video pad slot")
        .clone()
        .ok_or_else(|| {
            JobError::abort(
                "no-video-stream",
                "The file has no video stream. Upload a recording with video.",
            )
        })?;
    let start = gst::ClockTime::from_nseconds(spec.frames_ns(range.start_frame));
    // Half a frame past the last one, so the stop never cuts the last picture of the chunk.
    let stop = range.frames.map(|f| {
        gst::ClockTime::from_nseconds(spec.frames_ns(2 * (range.start_frame + f) + 1) / 2)
    });
    let seek = gst::event::Seek::new(
        1.0,
        gst::SeekFlags::FLUSH | gst::SeekFlags::ACCURATE,
        gst::SeekType::Set,
        start,
        if stop.is_some() {
            gst::SeekType::Set
        } else {
            gst::SeekType::None
        },
        stop.unwrap_or(gst::ClockTime::NONE.unwrap_or(gst::ClockTime::ZERO)),
    );
    if !pad.send_event(seek) {
        return Err(JobError::retry(format!(
            "the source cannot seek to {start}"
        )));
    }
    // Pictures decoded to preroll before the seek are not the chunk's (on a truncated file
    // they would pass for the chunk's share); from here running time counts from its start.
    built.position_ns.store(0, Ordering::Relaxed);
    built.seeked.store(true, Ordering::Release);
    Ok(())
}

/// Runs the pipeline to the end. Blocking. `cancel` stops it early; `progress` receives the
/// media time (seconds) that has entered the encoders, about every 250 ms.
pub fn run(
    spec: &Spec,
    tx: mpsc::Sender<Event>,
    cancel: Arc<AtomicBool>,
    mut progress: impl FnMut(f64),
) -> Result<Outcome, JobError> {
    init()?;
    let built = build(spec, &tx)?;
    drop(tx);
    let guard = NullOnDrop(built.pipeline.clone());
    let bus = built.pipeline.bus().expect("a pipeline has a bus");
    let first_error = |bus: &gst::Bus| {
        bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(500),
            &[gst::MessageType::Error],
        )
        .and_then(|msg| match msg.view() {
            gst::MessageView::Error(e) => Some(classify(
                &e.error(),
                &msg.src()
                    .map(|s| s.path_string().to_string())
                    .unwrap_or_default(),
                e.debug().map(|d| d.to_string()),
            )),
            _ => None,
        })
    };
    if let Some(range) = spec.range {
        seek_to(&built, spec, range, &bus, &first_error)?;
    }
    if built.pipeline.set_state(gst::State::Playing).is_err() {
        return Err(
            first_error(&bus).unwrap_or_else(|| JobError::retry("the pipeline failed to start"))
        );
    }
    let (mut last_pos, mut last_change) = (0u64, Instant::now());
    loop {
        let msg = bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(250),
            &[
                gst::MessageType::Eos,
                gst::MessageType::Error,
                gst::MessageType::Warning,
            ],
        );
        if cancel.load(Ordering::Relaxed) {
            return Err(JobError::retry("canceled"));
        }
        let pos = built.position_ns.load(Ordering::Relaxed);
        if pos != last_pos {
            last_pos = pos;
            last_change = Instant::now();
        } else if last_change.elapsed() > Duration::from_secs(120) {
            return Err(JobError::retry("the pipeline stalled for 120 s"));
        }
        // Every turn, moved or not: across the process boundary this is also the keep-alive.
        progress(pos as f64 / 1e9);
        let Some(msg) = msg else { continue };
        match msg.view() {
            gst::MessageView::Eos(..) => break,
            gst::MessageView::Error(e) => {
                let src = msg
                    .src()
                    .map(|s| s.path_string().to_string())
                    .unwrap_or_default();
                return Err(classify(&e.error(), &src, e.debug().map(|d| d.to_string())));
            }
            gst::MessageView::Warning(w) => {
                tracing::warn!(src = ?msg.src().map(|s| s.path_string()), "gstreamer warning: {} ({:?})", w.error(), w.debug());
            }
            _ => {}
        }
    }
    // Pads keep their caps until the pipeline leaves PLAYING, so read the codecs now.
    let codecs = built
        .parsers
        .iter()
        .map(|p| {
            let caps = p.static_pad("src")?.current_caps()?;
            gst_pbutils::codec_utils_caps_get_mime_codec(&caps)
                .ok()
                .map(|s| s.to_string())
        })
        .collect();
    let decoded_s = built.position_ns.load(Ordering::Relaxed) as f64 / 1e9;
    drop(guard);
    Ok(Outcome { codecs, decoded_s })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 5 s 320×240 30 fps source with sound, from ffmpeg.
    fn source(dir: &Path) -> PathBuf {
        let out = dir.join("src.mp4");
        let ok = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
            .arg("testsrc2=size=320x240:rate=30:duration=5")
            .args(["-f", "lavfi", "-i", "sine=frequency=440:duration=5"])
            .args(["-c:v", "libx264", "-g", "250", "-c:a", "aac", "-shortest"])
            .arg(&out)
            .status()
            .expect("ffmpeg runs");
        assert!(ok.success());
        out
    }

    fn spec(input: PathBuf, range: Option<Range>) -> Spec {
        Spec {
            input,
            fps: (30, 1),
            interlaced: false,
            video: vec![VideoOut {
                width: 320,
                height: 240,
                bitrate_kbps: 300,
                vbv_ms: 1500,
                crf: None,
            }],
            audio: Some((64000, 2, 48000)),
            fragment_s: 2,
            gop_frames: 60,
            preset: "ultrafast".into(),
            range,
            sync_ns: None,
        }
    }

    /// Fragment durations per track.
    fn fragments(spec: &Spec) -> Vec<Vec<f64>> {
        let (tx, mut rx) = mpsc::channel(64);
        let spec2 = spec.clone();
        let run = std::thread::spawn(move || run(&spec2, tx, Arc::default(), |_| {}));
        let mut per_track = vec![Vec::new(); 2];
        while let Some(ev) = rx.blocking_recv() {
            if let Event::Segment {
                track, duration, ..
            } = ev
            {
                per_track[track].push(duration);
            }
        }
        run.join().unwrap().expect("the pipeline runs");
        per_track
    }

    #[test]
    fn the_first_keyframe_interval_is_cut_in_two_one_second_fragments() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path());
        let s = spec(src.clone(), None);
        assert_eq!(s.lead_segments(), 2);
        for (track, durations) in fragments(&s).iter().enumerate() {
            let rounded: Vec<u64> = durations
                .iter()
                .map(|d| (d * 10.0).round() as u64)
                .collect();
            assert_eq!(rounded, [10, 10, 20, 10], "track {track}: {durations:?}");
        }
        // A later chunk keeps the regular grid.
        let later = spec(
            src,
            Some(Range {
                start_frame: 60,
                frames: Some(60),
            }),
        );
        assert_eq!((later.lead_split(), later.lead_segments()), (None, 0));
    }
}
