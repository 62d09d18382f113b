//! Chunked transcoding: a long source becomes video chunks (a whole number of segments each,
//! on the ladder's keyframe grid), each its own queue task, so every free worker encodes part
//! of one lecture at once. A chunk seeks the source to its first frame, encodes exactly its
//! frames on every rung, and its packager renumbers and retimes the segments to where they sit
//! in the whole. The first chunk also encodes the whole source's sound, once, in a second
//! encoder process beside its pictures (AAC cut at joins would click), and publishes live
//! playlists as it goes, so a chunked lecture is playable as soon as a single pass would be.
//! After that the live playlists grow over the chunks finished without a gap from the first,
//! and the worker that finishes the last task stitches the VOD playlists (checking that every
//! chunk made the same init segment) and publishes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use lectern_core::ladder::{Ladder, Rendition};
use lectern_core::queue::{ChunkTask, MAX_ATTEMPTS};
use lectern_core::videos::chunks::{self, Chunk, ChunkKind, ChunkState, Planned};
use lectern_core::videos::{self, Attempt, Published, Video, VideoState};
use lectern_packager::{ChunkTrack, Packager, Placement, Track};
use serde::{Deserialize, Serialize};

use crate::{
    check_complete, drive_encoders, emit_failed, make_poster, pipeline, publish, source_path,
    still_wanted, tracks_for, Encode, JobError, Report, Reporter, Staged, WorkerContext,
    CRASHES_TO_FAIL,
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
    /// Whether the first chunk encodes the sound (else an audio task of its own does: rows
    /// planned before the first chunk took it over).
    #[serde(default)]
    pub audio_in_first: bool,
}

impl Shared {
    /// The playlists' target duration: the ladder's segment length.
    fn segment_s(&self) -> u32 {
        self.per_segment.max(1) * self.spec.fragment_s.max(1)
    }
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

/// Where a long source's chunks start, in output frames: on the segment grid (the first chunk
/// adds the short first segment, so every later chunk starts a segment).
pub(crate) struct Grid {
    starts: Vec<i64>,
    total: i64,
    seg_frames: i64,
    chunk_frames: i64,
    /// Segments a start may move to meet a source keyframe.
    flex: i64,
    /// Nanoseconds per output frame, as (numerator, denominator) of the frame rate.
    fps: (i64, i64),
}

impl Grid {
    /// The grid for a source, or `None` when it is short enough for one task.
    pub(crate) fn of(ladder: &Ladder, duration_s: f64, spec: &pipeline::Spec) -> Option<Grid> {
        if ladder.chunk_threshold_s <= 0.0 || duration_s <= ladder.chunk_threshold_s {
            return None;
        }
        let fps = spec.fps.0 as f64 / spec.fps.1.max(1) as f64;
        let gop = spec.gop_frames.max(1) as i64;
        let per_segment =
            (ladder.segment_duration_s / ladder.keyframe_interval_s.max(1)).max(1) as i64;
        let segments = (ladder.chunk_s / ladder.segment_duration_s.max(1)).max(1) as i64;
        let seg_frames = gop * per_segment;
        let chunk_frames = seg_frames * segments;
        let total = (duration_s * fps).round() as i64;
        let mut starts = vec![0];
        let mut next = gop + chunk_frames;
        while next < total {
            starts.push(next);
            next += chunk_frames;
        }
        Some(Grid {
            starts,
            total,
            seg_frames,
            chunk_frames,
            flex: (segments / 4).max(1),
            fps: (spec.fps.0.max(1) as i64, spec.fps.1.max(1) as i64),
        })
    }

    fn secs(&self, frame: i64) -> f64 {
        frame as f64 * self.fps.1 as f64 / self.fps.0 as f64
    }

    /// The later starts `part` names, as indexes into the plan's starts.
    fn later(&self, part: Part) -> std::ops::Range<usize> {
        let n = self.starts.len();
        match part {
            Part::FirstEnd => 1.min(n)..2.min(n),
            Part::Rest => 2.min(n)..n,
            #[cfg(test)]
            Part::All => 1.min(n)..n,
        }
    }

    /// The times to find the keyframe before for `part`: each of its starts as planned, then
    /// the latest boundary it may move to; half a frame late, since a key-unit seek to exactly
    /// a keyframe's time may snap to the one before it.
    pub(crate) fn search_times(&self, part: Part) -> Vec<f64> {
        let later = &self.starts[self.later(part)];
        let half_frame = self.secs(1) / 2.0;
        later
            .iter()
            .map(|&s| self.secs(s) + half_frame)
            .chain(
                later
                    .iter()
                    .map(|&s| self.secs(s + self.flex * self.seg_frames) + half_frame),
            )
            .collect()
    }

    /// Moves each later start, by at most `flex` segments, to the segment boundary nearest
    /// after a source keyframe, so the chunk's accurate seek decodes little before its first
    /// frame rather than up to a whole source GOP. `found` answers [`Grid::search_times`]:
    /// the keyframe before each planned start, and before the latest boundary it may move to.
    /// A start less than half a segment past a keyframe stays; without an answer the plan
    /// stays. Parts are aligned in order (a start's lowest move depends on the one before).
    pub(crate) fn align(&mut self, part: Part, found: &[Option<f64>]) {
        let range = self.later(part);
        let n = range.len();
        if found.len() != 2 * n {
            return;
        }
        let half_frame = self.secs(1) / 2.0;
        for (j, i) in range.map(|s| s - 1).enumerate() {
            let (Some(k0), Some(k1)) = (found[j], found[n + j]) else {
                continue;
            };
            let nominal = self.starts[i + 1];
            // How far a boundary lies past the keyframe it would decode from, where known.
            let past = |b: i64| {
                let t = self.secs(b);
                if t + half_frame >= k1 {
                    Some(t - k1)
                } else if t + half_frame >= k0 {
                    Some(t - k0)
                } else {
                    None
                }
            };
            let Some(now) = past(nominal) else { continue };
            // Under half a segment of decoding before the start is cheaper than the uneven
            // chunks a move makes (the longest chunk sets the time to ready).
            if now < self.secs(self.seg_frames) / 2.0 {
                continue;
            }
            let lowest =
                (nominal - self.flex * self.seg_frames).max(self.starts[i] + self.seg_frames);
            // The chunks are counted (`trim`) before the later starts are aligned, so the last
            // start may not move later into what would make a short last chunk.
            let last = i + 2 == self.starts.len();
            let short_after =
                |b: i64| last && b > nominal && self.total - b < self.chunk_frames / 4;
            let best = (-self.flex..=self.flex)
                .map(|j| nominal + j * self.seg_frames)
                .filter(|&b| b >= lowest && b < self.total && !short_after(b))
                .filter_map(|b| past(b).map(|d| (d.max(0.0), (b - nominal).abs(), b)))
                .min_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
            if let Some((d, _, b)) = best {
                // Only to land near a keyframe: with none near, every boundary decodes far.
                if d + 1.0 < now && d < self.secs(self.seg_frames) {
                    self.starts[i + 1] = b;
                }
            }
        }
    }

    /// Joins a last chunk under a quarter of a chunk to the one before (once, before the
    /// chunks are recorded: a later alignment keeps their number); false when the source
    /// makes one chunk after all.
    pub(crate) fn trim(&mut self) -> bool {
        let starts = &mut self.starts;
        if starts.len() > 1 && self.total - starts[starts.len() - 1] < self.chunk_frames / 4 {
            starts.pop();
        }
        starts.len() >= 2
    }

    /// The chunk tasks (chunk 0 carries the sound).
    pub(crate) fn plan(&self, audio: bool) -> Vec<Planned> {
        let (starts, n, total) = (&self.starts, self.starts.len(), self.total);
        (0..n)
            .map(|i| {
                let frames = (i + 1 < n).then(|| starts[i + 1] - starts[i]);
                let mut weight = frames.unwrap_or(total - starts[i]).max(1) as f64;
                if i == 0 && audio {
                    // AAC of the whole source costs a few percent of the video ladder.
                    weight += total as f64 * 0.02;
                }
                Planned {
                    idx: i as i64,
                    kind: ChunkKind::Video,
                    start_frame: starts[i],
                    frames,
                    weight,
                }
            })
            .collect()
    }
}

/// Which of a grid's later starts to search and align: the first chunk's end is settled
/// before the first chunk is queued, the rest while it encodes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Part {
    /// The second chunk's start.
    FirstEnd,
    /// Every start after it.
    Rest,
    /// Every later start at once.
    #[cfg(test)]
    All,
}

/// Records an attempt's chunk tasks and queues the first chunk (and an audio task of an older
/// plan); [`queue_rest`] queues the others once their starts are settled.
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
    ctx.queue
        .enqueue_chunks(&v.id, attempt.number(), &first, &[], v.queue_priority)
        .await
        .map_err(|e| JobError::retry(format!("chunk tasks not queued: {e}")))?;
    tracing::info!(video = %v.id, attempt = attempt.number(), chunks = plan.len(), "first chunk queued");
    Ok(())
}

/// Moves the later chunks of a recorded plan to their settled starts and queues them. Until
/// now no task of theirs existed, so no worker has read the starts being moved.
pub(crate) async fn queue_rest(
    ctx: &WorkerContext,
    v: &Video,
    attempt: &Attempt,
    plan: &[Planned],
) -> Result<(), JobError> {
    let rest: Vec<Planned> = plan
        .iter()
        .filter(|c| c.idx != 0 && c.kind == ChunkKind::Video)
        .cloned()
        .collect();
    if !chunks::replan(&ctx.db, &v.id, attempt.number(), &rest).await? {
        // Canceled, or failed by chunk 0 meanwhile (which counted it): nothing to queue.
        return Ok(());
    }
    let idx: Vec<i64> = rest.iter().map(|c| c.idx).collect();
    ctx.queue
        .enqueue_chunks(&v.id, attempt.number(), &[], &idx, v.queue_priority)
        .await
        .map_err(|e| JobError::retry(format!("chunk tasks not queued: {e}")))?;
    tracing::info!(video = %v.id, attempt = attempt.number(), chunks = plan.len(), "chunk tasks queued");
    Ok(())
}

/// How long a source URL handed to an encoder stays valid: past the longest attempt.
const SOURCE_URL_TTL: Duration = Duration::from_secs(12 * 3600);

/// A source staged from a remote store, deleted when the last chunk using it lets go (or the
/// URL an encoder reads it through in place).
pub(crate) struct SharedStaged {
    /// The local file (the store's own file when the store is local), or an http(s) URL.
    pub path: PathBuf,
    video: String,
    _staged: Staged,
}

/// Sources that this process staged for chunks, so that its slots download a lecture once
/// rather than once per chunk. At most one source no chunk uses is kept (the latest, for the
/// next chunk of the same lecture); staging another lets it go.
#[derive(Default, Clone)]
pub struct StagedSources(Arc<Sources>);

type Slot = Arc<tokio::sync::Mutex<Weak<SharedStaged>>>;

#[derive(Default)]
struct Sources {
    slots: std::sync::Mutex<HashMap<String, Slot>>,
    kept: std::sync::Mutex<Option<Arc<SharedStaged>>>,
}

impl std::fmt::Debug for StagedSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StagedSources")
    }
}

impl StagedSources {
    /// The attempt's source for an encoder: a URL on a store that has them (unless staging is
    /// asked for), else a local file, staged by the first task that asks (the others wait for
    /// it rather than download it too).
    pub(crate) async fn get(
        &self,
        ctx: &WorkerContext,
        v: &Video,
        attempt: i64,
    ) -> Result<Arc<SharedStaged>, JobError> {
        if !ctx.stage_sources && ctx.store.local_path(&v.source_key).is_none() {
            if let Some(url) = ctx.store.read_url(&v.source_key, SOURCE_URL_TTL).await {
                // A fresh URL for every task: an older one may outlive its credentials.
                return Ok(Arc::new(SharedStaged {
                    path: PathBuf::from(url),
                    video: v.id.clone(),
                    _staged: Staged(None),
                }));
            }
        }
        let slot = {
            let mut slots = self.0.slots.lock().expect("staged sources lock");
            // Forget slots nobody waits on whose source is gone.
            slots.retain(|_, s| {
                Arc::strong_count(s) > 1 || s.try_lock().map_or(true, |w| w.strong_count() > 0)
            });
            slots
                .entry(format!("{}-{attempt}", v.id))
                .or_default()
                .clone()
        };
        let mut held = slot.lock().await;
        if let Some(s) = held.upgrade() {
            return Ok(s);
        }
        let (path, staged) = source_path(ctx, v, &attempt.to_string()).await?;
        let shared = Arc::new(SharedStaged {
            path,
            video: v.id.clone(),
            _staged: staged,
        });
        *held = Arc::downgrade(&shared);
        *self.0.kept.lock().expect("staged sources lock") = Some(shared.clone());
        Ok(shared)
    }

    /// Lets go of the kept source of `video` (it is published or failed).
    pub(crate) fn release(&self, video: &str) {
        let mut kept = self.0.kept.lock().expect("staged sources lock");
        if kept.as_ref().is_some_and(|s| s.video == video) {
            kept.take();
        }
    }
}

/// Runs one chunk task; the last one to finish stitches and publishes the video.
pub(crate) async fn run_chunk(
    ctx: &WorkerContext,
    video_id: &str,
    task: ChunkTask,
) -> Result<(), JobError> {
    let taken = match chunks::start(&ctx.db, video_id, task.attempt, task.idx, &ctx.name).await {
        Ok(taken) => taken,
        Err(e) => {
            tracing::warn!(video = %video_id, chunk = task.idx, error = %e, "chunk not taken; the queue retries it");
            // The queue retries at once; a database that is briefly away needs a moment.
            tokio::time::sleep(Duration::from_secs(2)).await;
            return Err(e.into());
        }
    };
    let Some(chunk) = taken else {
        return restitch(ctx, video_id, task).await;
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
            } else if let Err(e) = grow_live(ctx, &attempt, &shared).await {
                // The chunk is kept; the next chunk to finish grows the playlists over it.
                tracing::warn!(video = %video_id, chunk = idx, error = %e, "live playlists not grown");
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

/// A task for a chunk that is done, or of an attempt no longer processing. When every chunk
/// is done and the attempt still processes, the stitch after the last one failed (its task
/// is the one retried here), so this runs it again; otherwise there is nothing to do.
async fn restitch(ctx: &WorkerContext, video_id: &str, task: ChunkTask) -> Result<(), JobError> {
    let video = videos::get(&ctx.db, video_id).await?;
    let current = video
        .as_ref()
        .is_some_and(|v| v.state == VideoState::Processing && v.attempts == task.attempt);
    let rows = if current {
        chunks::of_attempt(&ctx.db, video_id, task.attempt).await?
    } else {
        Vec::new()
    };
    match (video, rows.first()) {
        (Some(video), Some(first)) if rows.iter().all(|c| c.state == ChunkState::Done) => {
            let shared: Shared = serde_json::from_str(&first.spec)
                .map_err(|e| JobError::retry(format!("unreadable chunk spec: {e}")))?;
            tracing::info!(video = %video_id, attempt = task.attempt, chunk = task.idx, "every chunk is done but the video is not published; stitching again");
            let attempt = Attempt::resume(&ctx.db, video_id, task.attempt);
            stitch(ctx, &video, &attempt, &shared).await
        }
        _ => {
            tracing::info!(video = %video_id, attempt = task.attempt, chunk = task.idx, "chunk no longer wanted; skipping");
            Ok(())
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
    let staged = ctx.sources.get(ctx, v, attempt.number()).await?;
    let input = staged.path.clone();
    let mut spec = shared.spec.clone();
    spec.input = input.clone();
    // Offsets of the whole ladder, so picture and sound keep the sync of a single pass.
    spec.sync_ns = Some(shared.spec.sync());
    let fps = (spec.fps.0.max(1) as u32, spec.fps.1.max(1) as u32);
    let per_segment = shared.per_segment.max(1) as usize;
    let gop = spec.gop_frames.max(1) as u64;
    let mut live = false;
    let (mut packager, encodes, poster) = match chunk.kind {
        ChunkKind::Video => {
            let start = chunk.start_frame.max(0) as u64;
            let frames = chunk.frames.map(|f| f.max(1) as u64);
            let mut sound = None;
            if start == 0 && shared.audio_in_first {
                if let Some(audio) = spec.audio {
                    let mut s = spec.clone();
                    s.video.clear();
                    s.range = None;
                    s.audio = Some(audio);
                    sound = Some(s);
                }
            }
            spec.audio = None;
            spec.range = Some(pipeline::Range {
                start_frame: start,
                frames,
            });
            let audio = sound.as_ref().and(shared.audio);
            let tracks = tracks_for(&shared.renditions, fps.0 as f64 / fps.1 as f64, audio);
            let seg_frames = gop * per_segment as u64;
            // The first chunk starts with the short segments of the first keyframe interval
            // (one fragment each), then full ones; a later chunk starts on a full segment.
            let lead = shared.spec.lead_segments();
            let first_segment = if start == 0 {
                1
            } else {
                lead + 1 + ((start - gop) / seg_frames) as usize
            };
            let fragments_before = if start == 0 {
                0
            } else {
                (start / gop) as u32 + lead as u32 - 1
            };
            let mut packager = Packager::new(ctx.store.clone(), shared.prefix.clone(), tracks)
                .grouping(spec.lead_segments(), per_segment)
                .chunk(Placement {
                    first_segment,
                    fragments_before,
                    frames_before: start,
                    fps,
                    store_init: start == 0,
                });
            // The first chunk makes the attempt playable as it encodes, as a single pass does;
            // once it is, a second try of that chunk leaves the live playlists alone (they
            // would shrink) until it is done.
            if start == 0 && v.live_prefix.is_none() {
                live = true;
                packager = packager.live(shared.segment_s());
            }
            let from_s = spec.frames_ns(start) as f64 / 1e9;
            let media_s = match frames {
                Some(f) => spec.frames_ns(f) as f64 / 1e9,
                None => (shared.duration_s - from_s).max(0.0),
            };
            let (at, _, _) = shared.poster;
            let holds_poster = at >= from_s && (frames.is_none() || at < from_s + media_s);
            let rungs = shared.renditions.len();
            let mut encodes = vec![Encode {
                spec,
                track_base: 0,
                media_s,
            }];
            if let Some(spec) = sound {
                encodes.push(Encode {
                    spec,
                    track_base: rungs,
                    media_s: shared.duration_s,
                });
            }
            (packager, encodes, holds_poster)
        }
        ChunkKind::Audio => {
            spec.video.clear();
            spec.range = None;
            let tracks = tracks_for(&[], 0.0, shared.audio);
            let packager = Packager::new(ctx.store.clone(), shared.prefix.clone(), tracks)
                .grouping(spec.lead_segments(), per_segment);
            let encodes = vec![Encode {
                spec,
                track_base: 0,
                media_s: shared.duration_s,
            }];
            (packager, encodes, false)
        }
    };
    let media_s = encodes.iter().map(|e| e.media_s).fold(0.0, f64::max);
    let chunk_s = encodes[0].media_s;
    let limit = ctx.ladder.attempt_timeout(media_s);
    let mut reporter = ChunkReporter {
        ctx,
        attempt,
        idx: chunk.idx,
        live: live.then(|| shared.prefix.clone()),
    };
    let run = drive_encoders(ctx, encodes, &mut packager, limit, &mut reporter);
    let outcomes = match tokio::time::timeout(limit, run).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(JobError::TimedOut {
                limit_s: limit.as_secs_f64(),
                source_s: media_s,
            })
        }
    };
    if chunk.kind == ChunkKind::Video {
        // A middle chunk must fill its share; the last must reach the declared end, judged as
        // a single pass judges the whole file. A chunk past a cut decodes nothing at all.
        let decoded = outcomes[0].decoded_s;
        let from_s = shared.spec.frames_ns(chunk.start_frame.max(0) as u64) as f64 / 1e9;
        match chunk.frames {
            Some(_) => check_complete(decoded, chunk_s)?,
            None => check_complete(from_s + decoded, shared.duration_s)?,
        }
        if decoded <= 0.0 && chunk_s > 0.5 {
            return Err(JobError::abort(
                "corrupt-input",
                format!("The file ends before {from_s:.1} s although it declares {:.1} s; it is truncated. Upload the complete recording again.", shared.duration_s),
            ));
        }
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

/// Reports of a chunk: its own progress, the video's over all chunks, and (the first chunk)
/// when the attempt became playable.
struct ChunkReporter<'a> {
    ctx: &'a WorkerContext,
    attempt: &'a Attempt,
    idx: i64,
    /// The attempt's prefix when this chunk publishes the live playlists.
    live: Option<String>,
}

impl Reporter for ChunkReporter<'_> {
    fn report(&mut self, r: Report) -> futures::future::BoxFuture<'_, Result<(), JobError>> {
        Box::pin(async move {
            match r {
                Report::Playable => {
                    if let Some(prefix) = &self.live {
                        self.attempt.set_live(prefix).await?;
                        tracing::info!(video = %self.attempt.video_id(), attempt = self.attempt.number(), "playable while encoding (first chunk)");
                    }
                    Ok(())
                }
                Report::Progress { fraction, fps } => {
                    let (video, n) = (self.attempt.video_id(), self.attempt.number());
                    let p = fraction.min(0.99);
                    let _ = chunks::set_progress(&self.ctx.db, video, n, self.idx, p, fps).await;
                    still_wanted(self.attempt).await
                }
            }
        })
    }
}

/// What the attempt's finished chunks stored, per track of the whole ladder, in media order.
struct Gathered {
    tracks: Vec<Track>,
    segments: Vec<Vec<(String, f32, u64)>>,
    posters: Vec<String>,
    encode_secs: f64,
}

/// Why chunk outputs do not join.
enum GatherError {
    /// A chunk's init segment differs from the first chunk's for this track.
    Mismatch(String),
    /// An output that cannot be read or names no known track.
    Unreadable(String),
}

/// Gathers the outputs of `rows` (finished chunks, in order).
fn gather(shared: &Shared, rows: &[&Chunk]) -> Result<Gathered, GatherError> {
    let fps = shared.spec.fps.0 as f64 / shared.spec.fps.1.max(1) as f64;
    let mut tracks = tracks_for(&shared.renditions, fps, shared.audio);
    let mut segments: Vec<Vec<(String, f32, u64)>> = vec![Vec::new(); tracks.len()];
    let mut digests: Vec<Option<String>> = vec![None; tracks.len()];
    let (mut posters, mut encode_secs) = (Vec::new(), 0.0);
    for r in rows {
        let out: ChunkOutput = r
            .result
            .as_deref()
            .and_then(|j| serde_json::from_str(j).ok())
            .ok_or_else(|| {
                GatherError::Unreadable(format!("chunk {} has no readable result", r.idx))
            })?;
        let base = match r.kind {
            ChunkKind::Video => 0,
            ChunkKind::Audio => shared.renditions.len(),
        };
        for (i, t) in out.tracks.iter().enumerate() {
            let slot = base + i;
            if slot >= tracks.len() || tracks[slot].name != t.name {
                return Err(GatherError::Unreadable(format!(
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
                    return Err(GatherError::Mismatch(t.name.clone()))
                }
                Some(_) => {}
            }
            segments[slot].extend(t.segments.iter().cloned());
        }
        posters.extend(out.poster_key);
        encode_secs += out.secs;
    }
    Ok(Gathered {
        tracks,
        segments,
        posters,
        encode_secs,
    })
}

/// Grows the live playlists over the video chunks finished without a gap from the first (a
/// chunk finished out of order waits for those before it), and makes the attempt playable if
/// the first chunk's own live playlists did not (a retried first chunk).
async fn grow_live(
    ctx: &WorkerContext,
    attempt: &Attempt,
    shared: &Shared,
) -> Result<(), JobError> {
    let video = attempt.video_id();
    let Some(step) = chunks::begin_playlist_step(&ctx.db, video, attempt.number()).await? else {
        return Ok(());
    };
    // Every way out ends the step itself (see `PlaylistStep::abandon`).
    let grown = match grow_within(ctx, shared, &step.chunks, step.playable).await {
        Ok(Some(through)) => {
            step.commit(video, attempt.number(), through).await?;
            through
        }
        Ok(None) => return Ok(step.abandon().await?),
        Err(e) => {
            step.abandon().await?;
            return Err(e);
        }
    };
    if videos::get(&ctx.db, video)
        .await?
        .is_some_and(|v| v.live_prefix.is_none())
    {
        attempt.set_live(&shared.prefix).await?;
    }
    tracing::info!(video = %video, attempt = attempt.number(), through = grown, "live playlists grown");
    Ok(())
}

/// The playlist writes of [`grow_live`] inside its step; the last chunk they now include.
async fn grow_within(
    ctx: &WorkerContext,
    shared: &Shared,
    all: &[Chunk],
    playable: bool,
) -> Result<Option<i64>, JobError> {
    let run: Vec<&Chunk> = all
        .iter()
        .filter(|c| c.kind == ChunkKind::Video)
        .take_while(|c| c.state == ChunkState::Done)
        .collect();
    let Some(through) = run.last().map(|c| c.idx) else {
        return Ok(None);
    };
    if run.iter().all(|c| c.live != 0) {
        return Ok(None);
    }
    // Sound from the first chunk, or from the audio task of rows planned before it took over.
    let mut rows = run;
    rows.extend(
        all.iter()
            .filter(|c| c.kind == ChunkKind::Audio && c.state == ChunkState::Done),
    );
    let g = match gather(shared, &rows) {
        Ok(g) => g,
        // The stitch step reports it; until then the playlists stay as they are.
        Err(GatherError::Mismatch(_) | GatherError::Unreadable(_)) => return Ok(None),
    };
    if g.segments.iter().any(|s| s.is_empty()) {
        // No sound yet (an audio task still running): not playable without it.
        return Ok(None);
    }
    Packager::write_live(
        ctx.store.clone(),
        shared.prefix.clone(),
        g.tracks,
        g.segments,
        shared.segment_s(),
        !playable,
    )
    .await?;
    Ok(Some(through))
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
    let Some(step) = chunks::begin_playlist_step(&ctx.db, &v.id, attempt.number()).await? else {
        tracing::info!(video = %v.id, "not stitched: the video was canceled or deleted");
        return Ok(());
    };
    let rows: Vec<&Chunk> = step.chunks.iter().collect();
    let g = match gather(shared, &rows) {
        Ok(g) => g,
        Err(GatherError::Unreadable(why)) => {
            step.abandon().await?;
            return Err(JobError::retry(why));
        }
        Err(GatherError::Mismatch(track)) => {
            // The step holds the video's row, which failing it writes.
            step.abandon().await?;
            tracing::error!(video = %v.id, %track, "chunks made different init segments");
            return fail(ctx, v, attempt, "chunk-mismatch", "The parts of this video were encoded with different settings and cannot be joined. An admin can retry it; report it if it happens again.".into()).await;
        }
    };
    let chunks = rows.len();
    let stitched = Packager::stitch(
        ctx.store.clone(),
        shared.prefix.clone(),
        g.tracks,
        g.segments,
    )
    .await;
    let renditions = match stitched {
        Ok(r) => r,
        Err(e) => {
            step.abandon().await?;
            return Err(e.into());
        }
    };
    // From here on no growth step writes over the VOD playlists.
    step.commit(&v.id, attempt.number(), i64::MAX).await?;
    let poster_key = g.posters.into_iter().next();
    tracing::info!(video = %v.id, chunks, encode_secs = g.encode_secs, stitch_secs = started.elapsed().as_secs_f64(), "chunks stitched");
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

#[cfg(test)]
mod tests {
    use super::*;

    /// 60 s at 30 fps in 12 s chunks of 6 s segments: starts at 0, 14, 26, 38 and 50 s.
    fn grid() -> Grid {
        Grid {
            starts: vec![0, 420, 780, 1140, 1500],
            total: 1800,
            seg_frames: 180,
            chunk_frames: 360,
            flex: 1,
            fps: (30, 1),
        }
    }

    #[test]
    fn starts_move_to_the_boundary_after_a_nearby_keyframe() {
        let mut g = grid();
        let at: Vec<f64> = g
            .search_times(Part::All)
            .iter()
            .map(|t| t - 1.0 / 60.0)
            .collect();
        assert_eq!(at, [14.0, 26.0, 38.0, 50.0, 20.0, 32.0, 44.0, 56.0]);
        // A keyframe every 10 s: at 20 s (not 14), 32 (not 26), 44 (not 38); 50 is on one.
        let k = |t: f64| Some((t / 10.0).floor() * 10.0);
        let found: Vec<_> = g.search_times(Part::All).into_iter().map(k).collect();
        g.align(Part::All, &found);
        assert_eq!(g.starts, [0, 600, 960, 1320, 1500]);
        let plan = g.plan(false);
        let frames: Vec<_> = plan.iter().map(|c| c.frames).collect();
        assert_eq!(frames, [Some(600), Some(360), Some(360), Some(180), None]);
        // The first chunk's end settled alone, then the rest: the same plan.
        let mut g = grid();
        let first: Vec<_> = g.search_times(Part::FirstEnd).into_iter().map(k).collect();
        assert_eq!(first.len(), 2);
        g.align(Part::FirstEnd, &first);
        assert_eq!(g.starts, [0, 600, 780, 1140, 1500]);
        let rest: Vec<_> = g.search_times(Part::Rest).into_iter().map(k).collect();
        g.align(Part::Rest, &rest);
        assert_eq!(g.starts, [0, 600, 960, 1320, 1500]);
    }

    #[test]
    fn the_last_start_never_moves_into_a_short_last_chunk() {
        // 58⅓ s, the last start at 50 s, 10 s past a keyframe at 40 s; the next keyframe at
        // 56 s would leave a 2⅓ s last chunk (under a quarter of 12 s), so the start moves
        // back to 44 s instead.
        let mut g = grid();
        g.total = 1750;
        let found: Vec<_> = g
            .search_times(Part::All)
            .into_iter()
            .map(|t| match t {
                t if (50.0..50.5).contains(&t) => Some(40.0),
                t if (56.0..56.5).contains(&t) => Some(56.0),
                t => Some((t / 2.0).floor() * 2.0),
            })
            .collect();
        g.align(Part::All, &found);
        assert_eq!(g.starts, [0, 420, 780, 1140, 1320]);
    }

    #[test]
    fn a_short_last_chunk_joins_the_one_before() {
        let mut g = grid();
        g.total = 1560;
        assert!(g.trim());
        assert_eq!(g.starts, [0, 420, 780, 1140]);
        assert_eq!(g.plan(true).last().unwrap().frames, None);
        g.starts.truncate(2);
        g.total = 480;
        assert!(!g.trim());
    }

    #[test]
    fn starts_on_keyframes_far_or_missing_ones_keep_the_grid() {
        let planned = [0, 420, 780, 1140, 1500];
        // A keyframe every 2 s: every boundary is on one.
        let mut g = grid();
        let every_2s: Vec<_> = g
            .search_times(Part::All)
            .into_iter()
            .map(|t| Some((t / 2.0).floor() * 2.0))
            .collect();
        g.align(Part::All, &every_2s);
        assert_eq!(g.starts, planned);
        // One keyframe at 0 only: every boundary decodes from it; and no answers at all.
        let mut g = grid();
        g.align(Part::All, &[Some(0.0); 8]);
        assert_eq!(g.starts, planned);
        let mut g = grid();
        g.align(Part::All, &[None; 8]);
        assert_eq!(g.starts, planned);
        // A GOP of 8⅓ s (ffmpeg's default 250 frames at 30 fps): 14 s is 5.7 s past one,
        // 20 s only 3.3 s.
        let mut g = grid();
        let gop = 250.0 / 30.0;
        let found: Vec<_> = g
            .search_times(Part::All)
            .into_iter()
            .map(|t| Some((t / gop).floor() * gop))
            .collect();
        g.align(Part::All, &found);
        assert_eq!(g.starts[1], 600);
        // A keyframe every 10 s (slides) under 60 s chunks: 62 s is 2 s past one; it stays
        // rather than make a 50 s and a 72 s chunk.
        let mut g = Grid {
            starts: vec![0, 1860, 3660],
            total: 5400,
            seg_frames: 180,
            chunk_frames: 1800,
            flex: 2,
            fps: (30, 1),
        };
        let found: Vec<_> = g
            .search_times(Part::All)
            .into_iter()
            .map(|t| Some((t / 10.0).floor() * 10.0))
            .collect();
        g.align(Part::All, &found);
        assert_eq!(g.starts, [0, 1860, 3660]);
    }
}
