//! Chunked transcoding: a long source becomes video chunks (a whole number of segments each,
//! on the ladder's keyframe grid) and one audio task, each its own queue task, so every free
//! worker encodes part of one lecture at once. A chunk seeks the source to its first frame,
//! encodes exactly its frames on every rung, and its packager renumbers and retimes the
//! segments to where they sit in the whole; the worker that finishes the last task stitches
//! the playlists (checking that every chunk made the same init segment) and publishes.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lectern_core::ladder::{Ladder, Rendition};
use lectern_core::queue::{ChunkTask, MAX_ATTEMPTS};
use lectern_core::videos::chunks::{self, Chunk, ChunkKind, Planned};
use lectern_core::videos::{self, Attempt, Published, Video};
use lectern_packager::{ChunkTrack, Packager, Placement};
use serde::{Deserialize, Serialize};

use crate::{
    check_complete, drive_encoder, emit_failed, make_poster, pipeline, publish, source_path,
    still_wanted, tracks_for, JobError, Report, Reporter, WorkerContext, CRASHES_TO_FAIL,
};

/// What every chunk task of an attempt shares (stored with each chunk row).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Shared {
    /// The whole ladder's encoder spec; each task narrows it (its source path is its own).
    pub spec: pipeline::Spec,
    /// The rungs.
    pub renditions: Vec<Rendition>,
    /// Audio (channels, bitrate) when the source has sound.
    pub audio: Option<(u32, u32)>,
    /// The attempt's output prefix.
    pub prefix: String,
    /// Source duration, seconds.
    pub duration_s: f64,
    /// CMAF fragments (keyframe intervals) per segment.
    pub per_segment: u32,
    /// Poster time and size.
    pub poster: (f64, u32, u32),
}

/// What a finished chunk task reports (the chunk row's `result`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChunkOutput {
    /// Per track: init digest, codec and segments.
    tracks: Vec<ChunkTrack>,
    /// The poster, when this chunk holds the poster's time.
    poster_key: Option<String>,
    /// Wall-clock seconds the encode took.
    secs: f64,
}

/// The chunk tasks for a source, or `None` when it is short enough for one task: video chunks
/// on the segment grid (the first adds the short first segment, so every later chunk starts
/// a segment) and the audio task last. A last chunk under a quarter of a chunk joins the one
/// before.
pub(crate) fn plan(
    ladder: &Ladder,
    duration_s: f64,
    spec: &pipeline::Spec,
    audio: bool,
) -> Option<Vec<Planned>> {
    if ladder.chunk_threshold_s <= 0.0 || duration_s <= ladder.chunk_threshold_s {
        return None;
    }
    let fps = spec.fps.0 as f64 / spec.fps.1.max(1) as f64;
    let gop = spec.gop_frames.max(1) as i64;
    let per_segment = (ladder.segment_duration_s / ladder.keyframe_interval_s.max(1)).max(1) as i64;
    let chunk_frames =
        gop * per_segment * (ladder.chunk_s / ladder.segment_duration_s.max(1)).max(1) as i64;
    let total = (duration_s * fps).round() as i64;
    let mut starts = vec![0];
    let mut next = gop + chunk_frames;
    while next < total {
        starts.push(next);
        next += chunk_frames;
    }
    if starts.len() > 1 && total - starts[starts.len() - 1] < chunk_frames / 4 {
        starts.pop();
    }
    if starts.len() < 2 {
        return None;
    }
    let n = starts.len();
    let mut out: Vec<Planned> = (0..n)
        .map(|i| {
            let frames = (i + 1 < n).then(|| starts[i + 1] - starts[i]);
            Planned {
                idx: i as i64,
                kind: ChunkKind::Video,
                start_frame: starts[i],
                frames,
                weight: frames.unwrap_or(total - starts[i]).max(1) as f64,
            }
        })
        .collect();
    if audio {
        // AAC costs a few percent of the video ladder.
        out.push(Planned {
            idx: n as i64,
            kind: ChunkKind::Audio,
            start_frame: 0,
            frames: None,
            weight: (total as f64 * 0.02).max(1.0),
        });
    }
    Some(out)
}

/// Records an attempt's chunk tasks and queues them: chunk 0 and the audio first.
pub(crate) async fn begin(
    ctx: &WorkerContext,
    v: &Video,
    attempt: &Attempt,
    shared: &Shared,
    plan: &[Planned],
) -> Result<(), JobError> {
    chunks::forget(&ctx.db, &v.id, Some(attempt.number())).await?;
    let spec = serde_json::to_string(shared).expect("the shared spec serializes");
    if !chunks::plan(&ctx.db, &v.id, attempt.number(), &spec, plan).await? {
        return Err(JobError::Canceled);
    }
    let first: Vec<i64> = plan
        .iter()
        .filter(|c| c.idx == 0 || c.kind == ChunkKind::Audio)
        .map(|c| c.idx)
        .collect();
    let rest: Vec<i64> = plan
        .iter()
        .filter(|c| c.idx != 0 && c.kind == ChunkKind::Video)
        .map(|c| c.idx)
        .collect();
    ctx.queue
        .enqueue_chunks(&v.id, attempt.number(), &first, &rest, v.queue_priority)
        .await
        .map_err(|e| JobError::retry(format!("chunk tasks not queued: {e}")))?;
    tracing::info!(video = %v.id, attempt = attempt.number(), chunks = plan.len(), "chunk tasks queued");
    Ok(())
}

/// Runs one chunk task; the last one to finish stitches and publishes the video.
pub(crate) async fn run_chunk(
    ctx: &WorkerContext,
    video_id: &str,
    task: ChunkTask,
) -> Result<(), JobError> {
    let Some(chunk) = chunks::start(&ctx.db, video_id, task.attempt, task.idx, &ctx.name).await?
    else {
        tracing::info!(video = %video_id, attempt = task.attempt, chunk = task.idx, "chunk no longer wanted; skipping");
        return Ok(());
    };
    let video = videos::get(&ctx.db, video_id)
        .await?
        .ok_or_else(|| JobError::retry("video vanished"))?;
    let attempt = Attempt::resume(&ctx.db, video_id, task.attempt);
    let shared: Shared = serde_json::from_str(&chunk.spec)
        .map_err(|e| JobError::retry(format!("unreadable chunk spec: {e}")))?;
    let started = Instant::now();
    tracing::info!(video = %video_id, attempt = task.attempt, chunk = task.idx, kind = %chunk.kind, try_ = chunk.tries, "chunk started");
    let result = encode_chunk(ctx, &video, &attempt, &chunk, &shared).await;
    let secs = started.elapsed().as_secs_f64();
    let (video_id, idx) = (video_id, task.idx);
    match result {
        Ok(mut out) => {
            out.secs = secs;
            let json = serde_json::to_string(&out).expect("chunk output serializes");
            tracing::info!(video = %video_id, chunk = idx, secs, "chunk done");
            metrics::counter!("lectern_transcode_chunks_total", "outcome" => "done").increment(1);
            if chunks::finish(&ctx.db, video_id, task.attempt, idx, &ctx.name, &json).await? {
                stitch(ctx, &video, &attempt, &shared).await?;
            }
            Ok(())
        }
        Err(JobError::Canceled) => {
            tracing::info!(video = %video_id, chunk = idx, "chunk stopped: the video was canceled or deleted");
            Ok(())
        }
        Err(JobError::Abort { code, message }) => fail(ctx, &video, &attempt, code, message).await,
        Err(why) if ctx.stopping.load(Ordering::Relaxed) => {
            tracing::info!(video = %video_id, chunk = idx, %why, "worker stopping; chunk handed back");
            chunks::requeue(&ctx.db, video_id, task.attempt, idx).await?;
            Err(why)
        }
        Err(JobError::Crashed(why)) if chunk.tries >= CRASHES_TO_FAIL => {
            tracing::error!(video = %video_id, chunk = idx, %why, "the encoder keeps crashing on this chunk; giving up");
            fail(ctx, &video, &attempt, "encoder-crashed", "The video encoder crashed on this file twice, so it was not published. Re-export the recording as H.264 MP4 (for example with HandBrake's Fast 1080p30 preset) and upload it again.".into()).await
        }
        Err(why) if chunk.tries >= MAX_ATTEMPTS as i64 => {
            tracing::error!(video = %video_id, chunk = idx, %why, "chunk keeps failing; giving up");
            let (code, msg) = if matches!(why, JobError::TimedOut { .. }) {
                ("transcode-timeout", "Every transcode attempt ran past its time limit. An admin can retry it, or raise timeout_base_s / timeout_per_media_s in the pipeline file.")
            } else {
                ("transcode-failed", "Transcoding failed repeatedly because of a server-side problem. An admin can retry it.")
            };
            fail(ctx, &video, &attempt, code, msg.into()).await
        }
        Err(why) => {
            // Only this chunk runs again; the others keep what they made.
            tracing::warn!(video = %video_id, chunk = idx, %why, "chunk failed; will retry");
            metrics::counter!("lectern_transcode_chunks_total", "outcome" => "retry").increment(1);
            chunks::requeue(&ctx.db, video_id, task.attempt, idx).await?;
            tokio::time::sleep(Duration::from_secs(
                2u64.pow(chunk.tries.clamp(1, 5) as u32),
            ))
            .await;
            Err(why)
        }
    }
}

/// Fails the whole video once (the first chunk to fail it announces it); the other chunks see
/// it and stop.
async fn fail(
    ctx: &WorkerContext,
    video: &Video,
    attempt: &Attempt,
    code: &'static str,
    message: String,
) -> Result<(), JobError> {
    if attempt.mark_failed(code, &message).await? {
        tracing::info!(video = %video.id, attempt = attempt.number(), code, "chunked transcode failed for good");
        metrics::counter!("lectern_transcode_jobs_total", "outcome" => "failed").increment(1);
        emit_failed(ctx, video, code, &message).await?;
    }
    Err(JobError::abort(code, message))
}

async fn encode_chunk(
    ctx: &WorkerContext,
    v: &Video,
    attempt: &Attempt,
    chunk: &Chunk,
    shared: &Shared,
) -> Result<ChunkOutput, JobError> {
    let tag = format!("{}-c{}", attempt.number(), chunk.idx);
    let (input, _staged) = source_path(ctx, v, &tag).await?;
    let mut spec = shared.spec.clone();
    spec.input = input.clone();
    // Offsets of the whole ladder, so picture and sound keep the sync of a single pass.
    spec.sync_ns = Some(shared.spec.sync());
    let fps = (spec.fps.0.max(1) as u32, spec.fps.1.max(1) as u32);
    let per_segment = shared.per_segment.max(1) as usize;
    let gop = spec.gop_frames.max(1) as u64;
    let (packager, media_s, poster) = match chunk.kind {
        ChunkKind::Video => {
            let start = chunk.start_frame.max(0) as u64;
            let frames = chunk.frames.map(|f| f.max(1) as u64);
            spec.audio = None;
            spec.range = Some(pipeline::Range {
                start_frame: start,
                frames,
            });
            let tracks = tracks_for(&shared.renditions, fps.0 as f64 / fps.1 as f64, None);
            let seg_frames = gop * per_segment as u64;
            let first_segment = if start == 0 {
                1
            } else {
                2 + ((start - gop) / seg_frames) as usize
            };
            let grouping = if start == 0 { 1 } else { per_segment };
            let packager = Packager::new(ctx.store.clone(), shared.prefix.clone(), tracks)
                .grouping(grouping, per_segment)
                .chunk(Placement {
                    first_segment,
                    fragments_before: (start / gop) as u32,
                    frames_before: start,
                    fps,
                    store_init: start == 0,
                });
            let from_s = spec.frames_ns(start) as f64 / 1e9;
            let media_s = match frames {
                Some(f) => spec.frames_ns(f) as f64 / 1e9,
                None => (shared.duration_s - from_s).max(0.0),
            };
            let (at, _, _) = shared.poster;
            let holds_poster = at >= from_s && (frames.is_none() || at < from_s + media_s);
            (packager, media_s, holds_poster)
        }
        ChunkKind::Audio => {
            spec.video.clear();
            spec.range = None;
            let tracks = tracks_for(&[], 0.0, shared.audio);
            let packager = Packager::new(ctx.store.clone(), shared.prefix.clone(), tracks)
                .grouping(1, per_segment);
            (packager, shared.duration_s, false)
        }
    };
    let mut packager = packager;
    let limit = ctx.ladder.attempt_timeout(media_s);
    let mut reporter = ChunkReporter {
        ctx,
        attempt,
        idx: chunk.idx,
        media_s,
    };
    let run = drive_encoder(ctx, spec, &mut packager, limit, &mut reporter);
    let outcome = match tokio::time::timeout(limit, run).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(JobError::TimedOut {
                limit_s: limit.as_secs_f64(),
                source_s: media_s,
            })
        }
    };
    if chunk.kind == ChunkKind::Video && chunk.frames.is_some() {
        check_complete(outcome.decoded_s, media_s)?;
    }
    let tracks = packager.finish_chunk().await?;
    let poster_key = if poster {
        let (at, w, h) = shared.poster;
        make_poster(ctx, &input, at, w, h, &shared.prefix).await
    } else {
        None
    };
    Ok(ChunkOutput {
        tracks,
        poster_key,
        secs: 0.0,
    })
}

/// Reports of a chunk: its own progress, and the video's over all chunks.
struct ChunkReporter<'a> {
    ctx: &'a WorkerContext,
    attempt: &'a Attempt,
    idx: i64,
    media_s: f64,
}

impl Reporter for ChunkReporter<'_> {
    fn report(&mut self, r: Report) -> futures::future::BoxFuture<'_, Result<(), JobError>> {
        Box::pin(async move {
            let Report::Progress { pos, fps } = r else {
                return Ok(());
            };
            if self.media_s > 0.0 {
                let p = (pos / self.media_s).min(0.99);
                let (video, n) = (self.attempt.video_id(), self.attempt.number());
                let _ = chunks::set_progress(&self.ctx.db, video, n, self.idx, p, fps).await;
            }
            still_wanted(self.attempt).await
        })
    }
}

/// Writes the playlists of a chunked attempt from its chunks' segments and publishes it.
/// Every chunk of a rung must have made a byte-identical init segment (the players read only
/// the first chunk's); a mismatch fails the video with `chunk-mismatch` rather than publish
/// a stream that breaks at a join.
async fn stitch(
    ctx: &WorkerContext,
    v: &Video,
    attempt: &Attempt,
    shared: &Shared,
) -> Result<(), JobError> {
    let started = Instant::now();
    let rows = chunks::of_attempt(&ctx.db, &v.id, attempt.number()).await?;
    let mut outs = Vec::new();
    for r in &rows {
        let out: ChunkOutput = r
            .result
            .as_deref()
            .and_then(|j| serde_json::from_str(j).ok())
            .ok_or_else(|| JobError::retry(format!("chunk {} has no readable result", r.idx)))?;
        outs.push((r.kind, out));
    }
    let fps = shared.spec.fps.0 as f64 / shared.spec.fps.1.max(1) as f64;
    let mut tracks = tracks_for(&shared.renditions, fps, shared.audio);
    let mut segments: Vec<Vec<(String, f32, u64)>> = vec![Vec::new(); tracks.len()];
    let mut digests: Vec<Option<String>> = vec![None; tracks.len()];
    for (kind, out) in &outs {
        let base = match kind {
            ChunkKind::Video => 0,
            ChunkKind::Audio => shared.renditions.len(),
        };
        for (i, t) in out.tracks.iter().enumerate() {
            let slot = base + i;
            if slot >= tracks.len() || tracks[slot].name != t.name {
                return Err(JobError::retry(format!(
                    "chunk output names an unknown track {}",
                    t.name
                )));
            }
            match &digests[slot] {
                None => {
                    digests[slot] = Some(t.init_sha256.clone());
                    tracks[slot].codec = t.codec.clone();
                }
                Some(d) if *d != t.init_sha256 => {
                    tracing::error!(video = %v.id, track = %t.name, "chunks made different init segments");
                    return fail(ctx, v, attempt, "chunk-mismatch", "The parts of this video were encoded with different settings and cannot be joined. An admin can retry it; report it if it happens again.".into()).await;
                }
                Some(_) => {}
            }
            segments[slot].extend(t.segments.iter().cloned());
        }
    }
    let renditions =
        Packager::stitch(ctx.store.clone(), shared.prefix.clone(), tracks, segments).await?;
    let poster_key = outs.iter().find_map(|(_, o)| o.poster_key.clone());
    let encode_secs: f64 = outs.iter().map(|(_, o)| o.secs).sum();
    tracing::info!(video = %v.id, chunks = outs.len(), encode_secs, stitch_secs = started.elapsed().as_secs_f64(), "chunks stitched");
    let published = Published {
        output_prefix: shared.prefix.clone(),
        renditions,
        poster_key,
    };
    let secs = v
        .started_at
        .map(|s| (lectern_core::now_ms() - s).max(0) as f64 / 1000.0)
        .unwrap_or(0.0);
    publish(ctx, v, attempt, published, secs, false).await?;
    // Rows of earlier attempts are nobody's now; this attempt's stay for the per-chunk times.
    chunks::forget(&ctx.db, &v.id, Some(attempt.number())).await?;
    Ok(())
}
