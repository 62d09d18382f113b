//! The poster: one upright JPEG frame from a tenth of the way in (at most a minute), grabbed
//! by prerolling a small decode pipeline after a seek.

use std::path::Path;
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

/// Where the poster frame is taken: a tenth in (title cards and black lead-ins come first),
/// at most a minute in.
pub fn poster_time(duration_s: f64) -> f64 {
    (duration_s * 0.1).clamp(0.0, 60.0)
}

/// JPEG bytes of the frame at `at_s`, scaled to `width`×`height` with square pixels.
pub fn grab(input: &Path, at_s: f64, width: u32, height: u32) -> Result<Vec<u8>, String> {
    let src = if crate::pipeline::is_url(input) {
        "souphttpsrc"
    } else {
        "filesrc"
    };
    let desc = format!(
        "{src} name=src ! decodebin ! videoconvert ! videoflip video-direction=auto ! videoscale add-borders=false \
         ! video/x-raw,width={width},height={height},pixel-aspect-ratio=1/1 ! jpegenc quality=85 \
         ! appsink name=sink sync=false max-buffers=1"
    );
    let pipeline = gst::parse::launch(&desc)
        .map_err(|e| e.to_string())?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline".to_string())?;
    let _null = crate::pipeline::NullOnDrop(pipeline.clone());
    pipeline
        .by_name("src")
        .ok_or("no source element")?
        .set_property("location", input.to_string_lossy().to_string());
    let sink = pipeline
        .by_name("sink")
        .ok_or("no appsink")?
        .downcast::<gst_app::AppSink>()
        .map_err(|_| "not an appsink".to_string())?;
    pipeline
        .set_state(gst::State::Paused)
        .map_err(|e| e.to_string())?;
    wait_paused(&pipeline)?;
    if at_s > 0.0 {
        pipeline
            .seek_simple(
                gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT,
                gst::ClockTime::from_nseconds((at_s * 1e9) as u64),
            )
            .map_err(|e| e.to_string())?;
        wait_paused(&pipeline)?;
    }
    let sample = sink
        .try_pull_preroll(gst::ClockTime::from_seconds(10))
        .ok_or("no frame prerolled")?;
    let buf = sample.buffer().ok_or("empty sample")?;
    let map = buf.map_readable().map_err(|e| e.to_string())?;
    Ok(map.as_slice().to_vec())
}

fn wait_paused(p: &gst::Pipeline) -> Result<(), String> {
    let (res, _, _) = p.state(gst::ClockTime::from_seconds(10));
    res.map(|_| ()).map_err(|_| {
        let bus = p.bus().expect("pipeline bus");
        match bus.timed_pop_filtered(gst::ClockTime::ZERO, &[gst::MessageType::Error]) {
            Some(m) => match m.view() {
                gst::MessageView::Error(e) => e.error().to_string(),
                _ => "pipeline did not preroll".into(),
            },
            None => "pipeline did not preroll".into(),
        }
    })
}

/// How long a poster may take before it is skipped (it never fails a transcode).
pub const TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    #[test]
    fn poster_time_is_a_tenth_capped_at_a_minute() {
        assert_eq!(super::poster_time(30.0), 3.0);
        assert_eq!(super::poster_time(3600.0), 60.0);
        assert_eq!(super::poster_time(0.0), 0.0);
    }
}
