//! Probing the source with GStreamer's Discoverer: duration, picture geometry, frame rate,
//! rotation and audio presence, with failures classified for the instructor.

use std::path::Path;

use gst_pbutils::prelude::*;
use gstreamer as gst;
use gstreamer_pbutils as gst_pbutils;

use crate::JobError;

/// What the transcode needs to know about the source.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Duration, if the container declares one.
    pub duration: Option<gst::ClockTime>,
    /// The first video stream.
    pub video: Option<VideoProbe>,
    /// Whether there is an audio stream.
    pub audio: bool,
}

/// Facts about the video stream.
#[derive(Debug, Clone)]
pub struct VideoProbe {
    /// Coded width.
    pub width: u32,
    /// Coded height.
    pub height: u32,
    /// Declared frame rate (0/1 when variable or unknown).
    pub fps: gst::Fraction,
    /// Pixel aspect ratio.
    pub par: gst::Fraction,
    /// Whether the picture is interlaced.
    pub interlaced: bool,
    /// `image-orientation` tag, e.g. `rotate-90`.
    pub orientation: Option<String>,
}

impl VideoProbe {
    /// Display size, upright: PAR applied and sides swapped for 90° rotations.
    pub fn upright_size(&self) -> (u32, u32) {
        let (n, d) = (
            self.par.numer().max(1) as f64,
            self.par.denom().max(1) as f64,
        );
        let w = (self.width as f64 * n / d).round() as u32;
        let h = self.height;
        let quarter = matches!(
            self.orientation.as_deref(),
            Some("rotate-90" | "rotate-270" | "flip-rotate-90" | "flip-rotate-270")
        );
        if quarter {
            (h, w)
        } else {
            (w, h)
        }
    }

    /// Frame rate as a number; 0 when unknown.
    pub fn fps_f64(&self) -> f64 {
        if self.fps.numer() > 0 && self.fps.denom() > 0 {
            self.fps.numer() as f64 / self.fps.denom() as f64
        } else {
            0.0
        }
    }
}

/// The `file://` URI of a local source; an empty file is refused here.
fn file_uri(path: &Path) -> Result<String, JobError> {
    if std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) == 0 {
        return Err(JobError::abort(
            "corrupt-input",
            "The uploaded file is empty. Upload the recording again.",
        ));
    }
    let abs = path
        .canonicalize()
        .map_err(|e| JobError::retry(format!("cannot open source: {e}")))?;
    Ok(gst::glib::filename_to_uri(&abs, None)
        .map_err(|e| JobError::retry(e.to_string()))?
        .to_string())
}

/// Probes a local file or a URL (an object read in place). Blocking: call from a blocking
/// thread.
pub fn probe(path: &Path) -> Result<Probe, JobError> {
    crate::pipeline::init()?;
    let uri = if crate::pipeline::is_url(path) {
        path.to_string_lossy().into_owned()
    } else {
        file_uri(path)?
    };
    let disc = gst_pbutils::Discoverer::new(gst::ClockTime::from_seconds(60))
        .map_err(|e| JobError::retry(e.to_string()))?;
    let info = disc
        .discover_uri(&uri)
        .map_err(|e| classify_probe_error(&e))?;
    match info.result() {
        gst_pbutils::DiscovererResult::Ok => {}
        gst_pbutils::DiscovererResult::Timeout => return Err(JobError::retry("probing the source timed out")),
        gst_pbutils::DiscovererResult::MissingPlugins => {
            return Err(JobError::abort(
                "unsupported-input",
                "The recording uses a codec Lectern cannot decode. Export it as H.264/AAC MP4 and upload it again.",
            ))
        }
        r => return Err(JobError::abort("corrupt-input", format!("The file could not be read ({r:?}). Upload the original recording again."))),
    }
    let video = info
        .video_streams()
        .into_iter()
        .find(|v| !v.is_image())
        .map(|v| {
            // qtdemux sends the rotation as a stream tag; depending on the demuxer path it
            // lands on the video stream or only in the merged tags.
            let orientation_of = |t: Option<gst::TagList>| {
                t.and_then(|t| {
                    t.get::<gst::tags::ImageOrientation>()
                        .map(|o| o.get().to_string())
                })
            };
            #[allow(deprecated)]
            let orientation = orientation_of(v.tags())
                .or_else(|| orientation_of(info.tags()))
                .or_else(|| preroll_orientation(path));
            tracing::debug!(?orientation, "probed orientation");
            VideoProbe {
                width: v.width(),
                height: v.height(),
                fps: v.framerate(),
                par: v.par(),
                interlaced: v.is_interlaced(),
                orientation,
            }
        });
    let audio = !info.audio_streams().is_empty();
    if video.is_none() {
        return Err(JobError::abort(
            "no-video-stream",
            if audio {
                "The file has sound but no picture. Upload a video recording, not an audio file."
            } else {
                "The file has no video stream. Upload a video recording."
            },
        ));
    }
    Ok(Probe {
        duration: info.duration(),
        video,
        audio,
    })
}

fn classify_probe_error(e: &gst::glib::Error) -> JobError {
    tracing::info!(error = %e, domain = ?e.domain(), "probe failed");
    if e.matches(gst::StreamError::TypeNotFound) || e.matches(gst::StreamError::WrongType) {
        JobError::abort(
            "unsupported-input",
            "This file is not a video format Lectern can read. Upload an MP4, MOV, MKV or WebM recording.",
        )
    } else if e.matches(gst::CoreError::MissingPlugin) || e.matches(gst::StreamError::CodecNotFound)
    {
        JobError::abort(
            "unsupported-input",
            "The recording uses a codec Lectern cannot decode. Export it as H.264/AAC MP4 and upload it again.",
        )
    } else if e.matches(gst::StreamError::Demux)
        || e.matches(gst::StreamError::Decode)
        || e.matches(gst::StreamError::Format)
    {
        JobError::abort(
            "corrupt-input",
            format!(
                "The file is damaged or incomplete ({}). Upload the original recording again.",
                e.message()
            ),
        )
    } else if e.matches(gst::ResourceError::NotFound) || e.matches(gst::ResourceError::Read) {
        JobError::retry(format!("cannot read the source: {}", e.message()))
    } else {
        JobError::abort(
            "corrupt-input",
            format!(
                "The file could not be read ({}). Upload the original recording again.",
                e.message()
            ),
        )
    }
}

/// Links a new pad of a probing pipeline to a fakesink of its own, so it prerolls.
fn drain_into_fakesink(pipeline: &gst::Pipeline, pad: &gst::Pad) {
    use gst::prelude::*;
    let Ok(sink) = gst::ElementFactory::make("fakesink")
        .property("sync", false)
        .build()
    else {
        return;
    };
    if pipeline.add(&sink).is_ok() {
        let _ = sink.sync_state_with_parent();
        if let Some(sinkpad) = sink.static_pad("sink") {
            let _ = pad.link(&sinkpad);
        }
    }
}

/// Reads the `image-orientation` tag by prerolling the file: the Discoverer of GStreamer 1.22
/// does not report qtdemux's rotation tag, which the sinks do see.
fn preroll_orientation(path: &Path) -> Option<String> {
    use gst::prelude::*;
    let pipeline = gst::Pipeline::new();
    let src = crate::pipeline::source_element(path).ok()?;
    let dbin = gst::ElementFactory::make("decodebin").build().ok()?;
    pipeline.add_many([&src, &dbin]).ok()?;
    src.link(&dbin).ok()?;
    let weak = pipeline.downgrade();
    dbin.connect_pad_added(move |_, pad| {
        if let Some(pipeline) = weak.upgrade() {
            drain_into_fakesink(&pipeline, pad);
        }
    });
    struct Null(gst::Pipeline);
    impl Drop for Null {
        fn drop(&mut self) {
            let _ = self.0.set_state(gst::State::Null);
        }
    }
    let guard = Null(pipeline.clone());
    pipeline.set_state(gst::State::Paused).ok()?;
    let bus = pipeline.bus()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let msg = bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(200),
            &[
                gst::MessageType::Tag,
                gst::MessageType::AsyncDone,
                gst::MessageType::Error,
                gst::MessageType::Eos,
            ],
        );
        let Some(msg) = msg else { continue };
        match msg.view() {
            gst::MessageView::Tag(t) => {
                if let Some(o) = t.tags().get::<gst::tags::ImageOrientation>() {
                    return Some(o.get().to_string());
                }
            }
            gst::MessageView::AsyncDone(_)
            | gst::MessageView::Error(_)
            | gst::MessageView::Eos(_) => break,
            _ => {}
        }
    }
    drop(guard);
    None
}

/// The source time (seconds) of the video keyframe at or before each of `at_s`, `None` where
/// none was found. Each is one key-unit seek in a paused demuxer, which finds it from the
/// container's index: cheap, even on a remote source. Blocking.
pub fn keyframes_before(input: &Path, at_s: &[f64]) -> Result<Vec<Option<f64>>, String> {
    use gst::prelude::*;
    use std::sync::{Arc, Condvar, Mutex};
    crate::pipeline::init().map_err(|e| e.to_string())?;
    let pipeline = gst::Pipeline::new();
    let src = crate::pipeline::source_element(input).map_err(|e| e.to_string())?;
    let parse = gst::ElementFactory::make("parsebin")
        .build()
        .map_err(|e| e.to_string())?;
    pipeline
        .add_many([&src, &parse])
        .map_err(|e| e.to_string())?;
    src.link(&parse).map_err(|e| e.to_string())?;
    // The stream time of the first video buffer since the last seek, and a wake-up for the
    // search when it is set (a seek answers in about a millisecond; polling the bus for it
    // cost up to its whole timeout per seek, 60 chunk starts of an hour took over a second).
    let first: Arc<(Mutex<Option<f64>>, Condvar)> = Arc::default();
    let weak = pipeline.downgrade();
    let slot = first.clone();
    parse.connect_pad_added(move |_, pad| {
        let Some(pipeline) = weak.upgrade() else {
            return;
        };
        {
            let slot = slot.clone();
            // Caps may not be set yet when the pad appears: look when a buffer passes.
            pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
                let video = pad
                    .current_caps()
                    .and_then(|c| c.structure(0).map(|s| s.name().starts_with("video/")))
                    .unwrap_or(false);
                let mut found = slot.0.lock().expect("keyframe slot");
                if video && found.is_none() {
                    if let (Some(gst::PadProbeData::Buffer(buf)), Some(ev)) =
                        (&info.data, pad.sticky_event::<gst::event::Segment>(0))
                    {
                        let seg = ev.segment().downcast_ref::<gst::ClockTime>().cloned();
                        if let (Some(pts), Some(seg)) = (buf.pts().or(buf.dts()), seg) {
                            // By hand: a keyframe a rounding before the segment start (where
                            // a seek to it lands) has no stream time in GStreamer's terms.
                            let ns =
                                |t: Option<gst::ClockTime>| t.map_or(0.0, |t| t.nseconds() as f64);
                            let t = ns(seg.time()) + ns(Some(pts)) - ns(seg.start());
                            *found = Some((t / 1e9).max(0.0));
                            slot.1.notify_all();
                        }
                    }
                }
                gst::PadProbeReturn::Ok
            });
        }
        drain_into_fakesink(&pipeline, pad);
    });
    let _null = crate::pipeline::NullOnDrop(pipeline.clone());
    let bus = pipeline.bus().ok_or("no bus")?;
    // parsebin's state change is not asynchronous, so no ASYNC_DONE can be waited for: wait
    // for the first video buffer itself (or the end, or an error).
    let first_video = |bus: &gst::Bus| -> Result<Option<f64>, String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (slot, set) = &*first;
            let found = slot.lock().expect("keyframe slot");
            let (found, _) = set
                .wait_timeout_while(found, std::time::Duration::from_millis(20), |t| t.is_none())
                .expect("keyframe slot");
            if let Some(t) = *found {
                return Ok(Some(t));
            }
            drop(found);
            let msg = bus.pop_filtered(&[gst::MessageType::Eos, gst::MessageType::Error]);
            match msg.as_ref().map(|m| m.view()) {
                Some(gst::MessageView::Error(e)) => return Err(e.error().to_string()),
                Some(gst::MessageView::Eos(_)) => return Ok(None),
                _ if std::time::Instant::now() > deadline => {
                    return Err("no video reached the keyframe search".into())
                }
                _ => {}
            }
        }
    };
    pipeline
        .set_state(gst::State::Paused)
        .map_err(|e| e.to_string())?;
    first_video(&bus)?;
    let mut found = Vec::with_capacity(at_s.len());
    for &t in at_s {
        *first.0.lock().expect("keyframe slot") = None;
        let sought = pipeline.seek_simple(
            gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT | gst::SeekFlags::SNAP_BEFORE,
            gst::ClockTime::from_nseconds((t.max(0.0) * 1e9) as u64),
        );
        if sought.is_err() {
            found.push(None);
            continue;
        }
        found.push(first_video(&bus)?);
    }
    Ok(found)
}
