//! Transcode workers: apalis consumes the queue, and each job probes the source, runs one
//! GStreamer ladder pipeline and hands the CMAF output to the packager.
//!
//! Each attempt writes under its own random prefix (`videos/{id}/{token}/`) and is published
//! only by the database update that marks the video ready, so a crashed or superseded attempt
//! never exposes half-written output and never overwrites a published object.

mod chunked;
pub mod isolate;
pub mod pipeline;
pub mod poster;
pub mod probe;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::prelude::*;
use futures::StreamExt;
use gstreamer as gst;
use lectern_core::db::Db;
use lectern_core::ladder::Ladder;
use lectern_core::queue::{Queue, TranscodeJob, MAX_ATTEMPTS};
use lectern_core::storage::ObjectStore;
use lectern_core::videos::{self, Published, SourceInfo, Video};
use lectern_packager::{Packager, Track, TrackKind};
use tokio::io::AsyncWriteExt;

/// How a job failed: bad input never retries; anything else may succeed later.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The input cannot be transcoded; `code` is stable and `message` tells the instructor what to do.
    #[error("{code}: {message}")]
    Abort {
        /// Stable kebab-case code.
        code: &'static str,
        /// Advice for the instructor.
        message: String,
    },
    /// A transient fault (storage, database, resources).
    #[error("transient failure: {0}")]
    Retry(String),
    /// An admin canceled the job while it ran.
    #[error("canceled")]
    Canceled,
    /// The encoder process crashed, was killed, or hung: the input may be to blame.
    #[error("encoder crashed: {0}")]
    Crashed(String),
    /// The attempt ran past its time limit; retried like a transient fault, and named
    /// `transcode-timeout` once the attempts run out.
    #[error("attempt timed out after {limit_s:.1} s (the limit for {source_s:.1} s of source)")]
    TimedOut {
        /// The attempt's limit, seconds.
        limit_s: f64,
        /// The source's length, seconds.
        source_s: f64,
    },
}

impl JobError {
    /// A permanent failure caused by the input.
    pub fn abort(code: &'static str, message: impl Into<String>) -> Self {
        JobError::Abort {
            code,
            message: message.into(),
        }
    }

    /// A transient failure.
    pub fn retry(message: impl Into<String>) -> Self {
        JobError::Retry(message.into())
    }
}

impl From<lectern_core::db::DbError> for JobError {
    fn from(e: lectern_core::db::DbError) -> Self {
        JobError::Retry(e.to_string())
    }
}

impl From<lectern_packager::PackError> for JobError {
    fn from(e: lectern_packager::PackError) -> Self {
        JobError::Retry(e.to_string())
    }
}

/// What every job needs.
#[derive(Debug, Clone)]
pub struct WorkerContext {
    /// Database.
    pub db: Db,
    /// Object store holding sources and renditions.
    pub store: Arc<dyn ObjectStore>,
    /// The ladder definition.
    pub ladder: Arc<Ladder>,
    /// Where sources from remote stores are staged.
    pub scratch_dir: PathBuf,
    /// Worker name shown in status (`host/pid`).
    pub name: String,
    /// Set when the process is stopping: running attempts hand their jobs back.
    pub stopping: Arc<AtomicBool>,
    /// How encoder processes are started and bounded.
    pub isolation: isolate::Isolation,
    /// The queue, for the chunk tasks of a long source.
    pub queue: Queue,
    /// Sources staged from a remote store for chunks, shared by this process's slots.
    pub sources: chunked::StagedSources,
    /// Stage remote sources on disk rather than read them through a URL.
    pub stage_sources: bool,
}

/// Runs `concurrency` transcode slots until `stop` resolves. Then the slots take no new jobs,
/// and running attempts may finish for up to `drain`; past it, or when `force` resolves first
/// (a second signal), they stop and hand their jobs back to the queue.
pub async fn run_workers(
    ctx: WorkerContext,
    queue: Queue,
    concurrency: usize,
    stop: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
    force: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    pipeline::init().map_err(|e| anyhow::anyhow!("{e}"))?;
    let name = ctx.name.clone();
    let stopping = ctx.stopping.clone();
    let ctx = Arc::new(ctx);
    // Operators see this process in /api/v1/admin/workers while it beats.
    let sweeper = tokio::spawn(run_prefix_sweeper(ctx.clone()));
    let beat = tokio::spawn({
        let (db, name, stopping) = (ctx.db.clone(), ctx.name.clone(), stopping.clone());
        let started = lectern_core::now_ms();
        async move {
            while !stopping.load(Ordering::Relaxed) {
                if let Err(e) =
                    lectern_core::nodes::heartbeat(&db, &name, concurrency, started).await
                {
                    tracing::warn!(error = %e, "worker heartbeat not recorded");
                }
                tokio::time::sleep(lectern_core::queue::HEARTBEAT).await;
            }
        }
    });
    let (reg_db, reg_name) = (ctx.db.clone(), ctx.name.clone());
    let (drain_db, drain_name) = (ctx.db.clone(), ctx.name.clone());
    let drain_tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
    let drain_handles = drain_tasks.clone();
    // A worker whose polling fails (the database went away: a restart, a partition) would
    // otherwise end for good while the process lives on and beats; restart it until shutdown,
    // backing off 1, 2, 4, then 5 s (an unreachable network fails at once). apalis asks this
    // synchronously, so the wait moves the runtime's other tasks off this thread meanwhile.
    let restart_stopping = stopping.clone();
    let draining = Arc::new(AtomicBool::new(false));
    let restart_draining = draining.clone();
    let restart = move |w: &apalis::prelude::WorkerContext, e: &apalis::prelude::WorkerError| {
        let stop =
            || restart_draining.load(Ordering::Relaxed) || restart_stopping.load(Ordering::Relaxed);
        if stop() {
            return false;
        }
        let wait = Duration::from_secs(1 << w.restarts().min(3)).min(Duration::from_secs(5));
        tracing::warn!(restarts = w.restarts(), error = %e, wait_s = wait.as_secs(), "queue polling failed; restarting the worker");
        tokio::task::block_in_place(|| std::thread::sleep(wait));
        !stop()
    };
    let monitor = match queue {
        Queue::Sqlite(storage) => Monitor::new().should_restart(restart).register(move |_| {
            WorkerBuilder::new(name.clone())
                .backend(storage.clone().poll_with_strategy(TickStrategy::new(POLL)))
                .data(ctx.clone())
                .concurrency(concurrency)
                .build(handle)
        }),
        Queue::Postgres(storage) => Monitor::new().should_restart(restart).register(move |_| {
            WorkerBuilder::new(name.clone())
                .backend(storage.clone().poll_with_strategy(TickStrategy::new(POLL)))
                .data(ctx.clone())
                .concurrency(concurrency)
                .build(handle)
        }),
    };
    // No `shutdown_timeout`: with one, apalis swallows a worker's start-up error.
    monitor
        .run_with_signal(async move {
            stop.await;
            draining.store(true, Ordering::Relaxed);
            // apalis now fetches nothing more and waits for the running attempts. It also stops
            // its own heartbeat, so keep this worker's row fresh: other workers would otherwise
            // take its running jobs as orphaned after 30 s and the drain would be wasted.
            tracing::info!(
                drain_s = drain.as_secs(),
                "draining: taking no new jobs; running transcodes may finish within worker_drain_timeout"
            );
            let mut tasks = drain_handles.lock().expect("drain task list");
            tasks.push(tokio::spawn(async move {
                loop {
                    if let Err(e) = lectern_core::queue::keep_worker_alive(&drain_db, &drain_name).await {
                        tracing::warn!(error = %e, "queue heartbeat during drain not recorded");
                    }
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }));
            tasks.push(tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(drain) => tracing::warn!(
                        "worker_drain_timeout passed; handing running transcodes back to the queue"
                    ),
                    _ = force => tracing::warn!(
                        "second stop signal; handing running transcodes back to the queue now"
                    ),
                }
                // Running attempts see this within a second, stop their encoders and hand the
                // jobs back, so another worker takes them at once.
                stopping.store(true, Ordering::Relaxed);
            }));
            Ok(())
        })
        .await?;
    for t in drain_tasks.lock().expect("drain task list").drain(..) {
        t.abort();
    }
    beat.abort();
    sweeper.abort();
    let _ = lectern_core::nodes::remove(&reg_db, &reg_name).await;
    Ok(())
}

/// How often an idle worker looks for jobs: part of every video's time to first playable.
const POLL: Duration = Duration::from_millis(250);

/// A poll timer that always stays armed. apalis's `poll_with_interval` can drop its wake-up
/// after an empty fetch and then only looks again at the next heartbeat. A job queued by this
/// process ([`lectern_core::queue::PUSHED`]) triggers a poll at once.
struct TickStrategy {
    tick: tokio::time::Interval,
    pushed: Pin<Box<tokio::sync::futures::Notified<'static>>>,
}

impl TickStrategy {
    fn new(period: Duration) -> Self {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            tick,
            pushed: Self::armed(),
        }
    }

    /// A wait for the next push, registered now so a push before its first poll counts.
    fn armed() -> Pin<Box<tokio::sync::futures::Notified<'static>>> {
        let mut n = Box::pin(lectern_core::queue::PUSHED.notified());
        n.as_mut().enable();
        n
    }
}

impl PollStrategy for TickStrategy {
    fn poll_drive(
        &mut self,
        cx: &mut std::task::Context<'_>,
        _: &PollSnapshot,
    ) -> std::task::Poll<Option<()>> {
        let mut fired = false;
        // Poll until Pending so the waker for the next tick is always registered.
        while self.tick.poll_tick(cx).is_ready() {
            fired = true;
        }
        while self.pushed.as_mut().poll(cx).is_ready() {
            fired = true;
            self.pushed = Self::armed();
        }
        if fired {
            std::task::Poll::Ready(Some(()))
        } else {
            std::task::Poll::Pending
        }
    }
}

async fn handle(
    job: TranscodeJob,
    task: TaskId,
    ctx: Data<Arc<WorkerContext>>,
) -> Result<(), BoxDynError> {
    let outcome = match job.chunk {
        None => transcode(&ctx, &job.video_id, &task.to_string()).await,
        Some(chunk) => {
            let r = chunked::run_chunk(&ctx, &job.video_id, chunk).await;
            if let Err(e) = &r {
                // The queue runs it again; say why (a chunk's own faults are logged already).
                tracing::debug!(video = %job.video_id, chunk = chunk.idx, error = %e, "chunk task ends with an error");
            }
            r
        }
    };
    match outcome {
        Ok(()) => Ok(()),
        Err(e @ JobError::Abort { .. }) => Err(AbortError::new(e).into()),
        Err(e) => Err(e.into()),
    }
}

/// Starts an attempt for `task`, or `None` when the video does not wait for it. An admin
/// retry queues its task before it marks the failed or canceled video queued (a crash in
/// between must not leave a queued video without a task), and a worker in the same process
/// is woken at once, so for a moment such a video may not wait for its task yet: look again.
async fn start_attempt(
    ctx: &WorkerContext,
    video_id: &str,
    task: &str,
) -> Result<Option<videos::Attempt>, JobError> {
    for look in 0..RETRY_RACE_LOOKS {
        if look > 0 {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if let Some(a) = videos::Attempt::start(&ctx.db, video_id, &ctx.name, task).await? {
            return Ok(Some(a));
        }
        let retryable = videos::get(&ctx.db, video_id).await?.is_some_and(|v| {
            matches!(
                v.state,
                videos::VideoState::Failed | videos::VideoState::Canceled
            )
        });
        if !retryable {
            return Ok(None);
        }
    }
    Ok(None)
}

/// How often a task for a failed or canceled video looks again (every 250 ms) before it is
/// taken for a stale one.
const RETRY_RACE_LOOKS: u32 = 12;

/// Runs one attempt for a video, as apalis task `task`, and records the outcome on it.
pub async fn transcode(ctx: &WorkerContext, video_id: &str, task: &str) -> Result<(), JobError> {
    let Some(attempt) = start_attempt(ctx, video_id, task).await? else {
        tracing::info!(video = %video_id, task, "video no longer waits for this task; skipping");
        return Ok(());
    };
    let video = videos::get(&ctx.db, video_id)
        .await?
        .ok_or_else(|| JobError::retry("video vanished"))?;
    // The org now holds one more worker: its next job moves up to head and takes its turn
    // behind orgs that hold fewer.
    lectern_core::queue::refresh_heads(&ctx.db, &video.org).await?;
    let started = Instant::now();
    tracing::info!(video = %video_id, attempt = attempt.number(), "transcode started");
    let result = run_attempt(ctx, &video, &attempt).await;
    let secs = started.elapsed().as_secs_f64();
    match result {
        Ok(Some(published)) => {
            publish(ctx, &video, &attempt, published, secs, true).await?;
            Ok(())
        }
        Ok(None) => {
            tracing::info!(video = %video_id, attempt = attempt.number(), secs, "source planned in chunks; workers encode them");
            Ok(())
        }
        Err(JobError::Canceled) => {
            tracing::info!(video = %video_id, attempt = attempt.number(), "transcode canceled");
            metrics::counter!("lectern_transcode_jobs_total", "outcome" => "canceled").increment(1);
            Ok(())
        }
        Err(JobError::Abort { code, message }) => {
            tracing::info!(video = %video_id, attempt = attempt.number(), code, "transcode failed for good");
            metrics::counter!("lectern_transcode_jobs_total", "outcome" => "failed").increment(1);
            attempt.mark_failed(code, &message).await?;
            emit_failed(ctx, &video, code, &message).await?;
            Err(JobError::Abort { code, message })
        }
        Err(JobError::Crashed(why)) => {
            // The child took the blow; this process, and every other role in it, carries on.
            let crashes = attempt.record_crash().await?;
            if crashes >= CRASHES_TO_FAIL || attempt.number() >= MAX_ATTEMPTS as i64 {
                tracing::error!(video = %video_id, attempt = attempt.number(), crashes, %why, "the encoder keeps crashing on this input; giving up");
                metrics::counter!("lectern_transcode_jobs_total", "outcome" => "failed")
                    .increment(1);
                let (code, msg) = ("encoder-crashed", "The video encoder crashed on this file twice, so it was not published. Re-export the recording as H.264 MP4 (for example with HandBrake's Fast 1080p30 preset) and upload it again.");
                attempt.mark_failed(code, msg).await?;
                emit_failed(ctx, &video, code, msg).await?;
                return Err(JobError::abort(code, msg));
            }
            tracing::warn!(video = %video_id, attempt = attempt.number(), crashes, %why, "the encoder process crashed; will retry");
            metrics::counter!("lectern_transcode_jobs_total", "outcome" => "crashed").increment(1);
            attempt.requeue().await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            Err(JobError::Crashed(why))
        }
        Err(why @ (JobError::Retry(_) | JobError::TimedOut { .. }))
            if ctx.stopping.load(Ordering::Relaxed) =>
        {
            // Handed back: another worker (or this one after a restart) takes it at once.
            tracing::info!(video = %video_id, attempt = attempt.number(), %why, "worker stopping; job handed back");
            metrics::counter!("lectern_transcode_jobs_total", "outcome" => "handed-back")
                .increment(1);
            attempt.requeue().await?;
            Err(why)
        }
        Err(why @ (JobError::Retry(_) | JobError::TimedOut { .. }))
            if attempt.number() >= MAX_ATTEMPTS as i64 =>
        {
            tracing::error!(video = %video_id, attempt = attempt.number(), %why, "transcode keeps failing; giving up");
            metrics::counter!("lectern_transcode_jobs_total", "outcome" => "failed").increment(1);
            let (code, msg) = if matches!(why, JobError::TimedOut { .. }) {
                ("transcode-timeout", "Every transcode attempt ran past its time limit. An admin can retry it, or raise timeout_base_s / timeout_per_media_s in the pipeline file.")
            } else {
                ("transcode-failed", "Transcoding failed repeatedly because of a server-side problem. An admin can retry it.")
            };
            attempt.mark_failed(code, msg).await?;
            emit_failed(ctx, &video, code, msg).await?;
            Err(JobError::abort(code, msg))
        }
        Err(why @ (JobError::Retry(_) | JobError::TimedOut { .. })) => {
            tracing::warn!(video = %video_id, attempt = attempt.number(), %why, "transcode attempt failed; will retry");
            metrics::counter!("lectern_transcode_jobs_total", "outcome" => "retry").increment(1);
            attempt.requeue().await?;
            // Back off before the slot takes the job again.
            tokio::time::sleep(Duration::from_secs(
                2u64.pow(attempt.number().clamp(1, 6) as u32),
            ))
            .await;
            Err(why)
        }
    }
}

/// Publishes a finished attempt and announces it. When the attempt was superseded meanwhile,
/// its output is deleted if `discard` (a chunked attempt's may have been published by another
/// worker's stitch of the same output, and is kept).
async fn publish(
    ctx: &WorkerContext,
    video: &Video,
    attempt: &videos::Attempt,
    published: Published,
    secs: f64,
    discard: bool,
) -> Result<(), JobError> {
    ctx.sources.release(&video.id);
    if attempt.mark_ready(video, &published).await? {
        tracing::info!(video = %video.id, attempt = attempt.number(), secs, "transcode ready");
        // The published prefix stays for good; every earlier attempt's goes now,
        // including those of attempts whose worker was killed or cut off.
        let _ = videos::forget_prefix(&ctx.db, &published.output_prefix).await;
        delete_stale_prefixes(ctx, Some(&video.id)).await;
        let data = serde_json::json!({
            "video_id": video.id, "title": video.title, "lesson": video.lesson,
            "renditions": published.renditions,
        });
        lectern_core::webhooks::emit(&ctx.db, &video.org, "video.ready", data).await?;
        metrics::counter!("lectern_transcode_jobs_total", "outcome" => "ready").increment(1);
    } else if discard {
        // Superseded or deleted meanwhile: this output is nobody's.
        discard_prefix(ctx, &published.output_prefix).await;
    }
    Ok(())
}

async fn emit_failed(
    ctx: &WorkerContext,
    v: &Video,
    code: &str,
    message: &str,
) -> Result<(), JobError> {
    ctx.sources.release(&v.id);
    let data = serde_json::json!({
        "video_id": v.id, "title": v.title, "lesson": v.lesson,
        "error": {"code": code, "message": message},
    });
    lectern_core::webhooks::emit(&ctx.db, &v.org, "video.failed", data).await?;
    Ok(())
}

/// Deletes an attempt's objects; the record goes only once they are gone, so a deletion that
/// fails now (the store or the database unreachable) is retried by [`run_prefix_sweeper`].
async fn discard_prefix(ctx: &WorkerContext, prefix: &str) {
    match ctx.store.delete_prefix(prefix).await {
        Ok(()) => {
            let _ = videos::forget_prefix(&ctx.db, prefix).await;
        }
        Err(e) => {
            tracing::warn!(prefix, error = %e, "attempt output not deleted yet; the sweep retries")
        }
    }
}

async fn delete_stale_prefixes(ctx: &WorkerContext, video: Option<&str>) {
    match videos::stale_prefixes(&ctx.db, video, 100).await {
        Ok(list) => {
            for p in list {
                discard_prefix(ctx, &p).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "stale attempt outputs not listed"),
    }
}

/// Every minute, deletes the outputs of attempts that can no longer be published.
async fn run_prefix_sweeper(ctx: Arc<WorkerContext>) {
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        delete_stale_prefixes(&ctx, None).await;
    }
}

/// Crashes of the encoder on one input before the video fails with `encoder-crashed`.
const CRASHES_TO_FAIL: i64 = 2;

/// A staged copy of a remote source, removed when dropped.
pub(crate) struct Staged(Option<PathBuf>);

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Moves `part` of a chunk plan's starts next to the source's keyframes.
async fn align(
    ctx: &WorkerContext,
    v: &Video,
    spec: &pipeline::Spec,
    grid: &mut chunked::Grid,
    part: chunked::Part,
) {
    let times = grid.search_times(part);
    if times.is_empty() {
        return;
    }
    match isolate::keyframes(&ctx.isolation, spec.input.clone(), times).await {
        Ok(k) => grid.align(part, &k),
        // The plain grid still encodes correctly; it only decodes more before each start.
        Err(e) => {
            tracing::warn!(video = %v.id, error = %e, "no keyframe index; chunks start on the plain grid")
        }
    }
}

pub(crate) async fn source_path(
    ctx: &WorkerContext,
    v: &Video,
    tag: &str,
) -> Result<(PathBuf, Staged), JobError> {
    if let Some(p) = ctx.store.local_path(&v.source_key) {
        if tokio::fs::try_exists(&p).await.unwrap_or(false) {
            return Ok((p, Staged(None)));
        }
    }
    // Remote store: stream the source to local scratch space (never into memory).
    tokio::fs::create_dir_all(&ctx.scratch_dir)
        .await
        .map_err(|e| JobError::retry(e.to_string()))?;
    let path = ctx.scratch_dir.join(format!("{}-{tag}.src", v.id));
    metrics::counter!("lectern_sources_staged_total").increment(1);
    let staged = Staged(Some(path.clone()));
    let mut got = ctx
        .store
        .get(&v.source_key, None)
        .await
        .map_err(|e| JobError::retry(e.to_string()))?;
    let mut f = tokio::fs::File::create(&path)
        .await
        .map_err(|e| JobError::retry(e.to_string()))?;
    while let Some(chunk) = got.stream.next().await {
        let chunk = chunk.map_err(|e| JobError::retry(e.to_string()))?;
        f.write_all(&chunk)
            .await
            .map_err(|e| JobError::retry(e.to_string()))?;
    }
    f.flush()
        .await
        .map_err(|e| JobError::retry(e.to_string()))?;
    Ok((path, staged))
}

async fn run_attempt(
    ctx: &WorkerContext,
    v: &Video,
    attempt: &videos::Attempt,
) -> Result<Option<Published>, JobError> {
    // Shared with the chunks this process may encode, so a chunked lecture is not staged twice.
    let staged = ctx.sources.get(ctx, v, attempt.number()).await?;
    let input = staged.path.clone();
    let probe = isolate::probe(&ctx.isolation, input.clone()).await?;
    let vp = probe
        .video
        .clone()
        .expect("probe guarantees a video stream");
    let (width, height) = vp.upright_size();
    let ladder = &ctx.ladder;
    let src_fps = vp.fps_f64();
    let fps = if src_fps > 0.0 && src_fps <= 60.0 {
        vp.fps
    } else {
        gst::Fraction::new(ladder.fallback_fps as i32, 1)
    };
    let fps_f = fps.numer() as f64 / fps.denom() as f64;
    let duration_s = probe
        .duration
        .map(|d| d.nseconds() as f64 / 1e9)
        .unwrap_or(0.0);
    attempt
        .set_source_info(SourceInfo {
            duration_s,
            width,
            height,
            fps: if src_fps > 0.0 { src_fps } else { fps_f },
        })
        .await?;
    let renditions = ladder.renditions_for(width, height);

    let audio = probe
        .audio
        .then_some((ladder.audio.channels, ladder.audio.bitrate));
    let tracks = tracks_for(&renditions, fps_f, audio);
    let prefix = lectern_core::keys::revision(&v.id, &lectern_core::new_id());
    attempt.record_prefix(&prefix).await?;
    let spec = pipeline::Spec {
        input,
        fps: (fps.numer(), fps.denom()),
        interlaced: vp.interlaced,
        video: renditions.iter().map(pipeline::VideoOut::of).collect(),
        audio: probe.audio.then_some((
            ladder.audio.bitrate,
            ladder.audio.channels,
            ladder.audio.rate,
        )),
        fragment_s: ladder.keyframe_interval_s,
        gop_frames: ((fps_f * ladder.keyframe_interval_s as f64).round() as u32).max(1),
        preset: ladder.x264_preset.clone(),
        range: None,
        sync_ns: None,
    };
    let (pw, ph) = poster_size(&renditions);
    // A long source: the first chunk is queued as soon as its own end is settled (one
    // keyframe search), the others once the keyframes near their starts are found, so the
    // first chunk's encode (on another slot or node) does not wait for an hour's plan.
    let grid = chunked::Grid::of(ladder, duration_s, &spec)
        .and_then(|mut grid| grid.trim().then_some(grid));
    if let Some(mut grid) = grid {
        align(ctx, v, &spec, &mut grid, chunked::Part::FirstEnd).await;
        let shared = chunked::Shared {
            spec,
            renditions,
            audio,
            prefix,
            duration_s,
            per_segment: (ladder.segment_duration_s / ladder.keyframe_interval_s.max(1)).max(1),
            poster: (poster::poster_time(duration_s), pw, ph),
            audio_in_first: true,
        };
        chunked::begin(ctx, v, attempt, &shared, &grid.plan(probe.audio)).await?;
        // Until the rest is queued this job covers the plan: should the process die here,
        // its redelivered task starts a new attempt (and chunk 0's work is redone).
        align(ctx, v, &shared.spec, &mut grid, chunked::Part::Rest).await;
        chunked::queue_rest(ctx, v, attempt, &grid.plan(probe.audio)).await?;
        return Ok(None);
    }
    // Live: learners can start watching once the first segment of every track is stored.
    // The pipeline cuts a CMAF fragment per keyframe interval, and the first interval in two;
    // those halves are the first two segments (playable after 1 s of encoding), the others
    // the ladder's segment length.
    let per_segment = (ladder.segment_duration_s / ladder.keyframe_interval_s.max(1)).max(1);
    let packager = Packager::new(ctx.store.clone(), prefix.clone(), tracks)
        .live(ladder.segment_duration_s)
        .grouping(spec.lead_segments(), per_segment as usize);
    let limit = ladder.attempt_timeout(duration_s);
    let poster_input = spec.input.clone();
    // Dropping the future on timeout sets the cancel flag, so the pipeline thread stops too.
    let result = match tokio::time::timeout(
        limit,
        encode_and_package(ctx, v, attempt, spec, packager, duration_s, limit),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(JobError::TimedOut {
            limit_s: limit.as_secs_f64(),
            source_s: duration_s,
        }),
    };
    if result.is_err() {
        discard_prefix(ctx, &prefix).await;
    }
    let mut published = result?;
    let at = poster::poster_time(duration_s);
    published.poster_key = make_poster(ctx, &poster_input, at, pw, ph, &prefix).await;
    Ok(Some(published))
}

/// The packager's tracks for a ladder: the video rungs, then the audio (channels, bitrate).
fn tracks_for(
    renditions: &[lectern_core::ladder::Rendition],
    fps: f64,
    audio: Option<(u32, u32)>,
) -> Vec<Track> {
    let mut tracks: Vec<Track> = renditions
        .iter()
        .map(|r| Track {
            name: r.name.clone(),
            kind: TrackKind::Video {
                width: r.width,
                height: r.height,
                fps,
            },
            codec: None,
            nominal_bps: (r.maxrate as u64, r.video_bitrate as u64),
        })
        .collect();
    if let Some((channels, bitrate)) = audio {
        tracks.push(Track {
            name: "audio".into(),
            kind: TrackKind::Audio { channels },
            codec: None,
            nominal_bps: (bitrate as u64, bitrate as u64),
        });
    }
    tracks
}

/// The poster's size: the largest rendition up to 720 lines, else the smallest.
fn poster_size(r: &[lectern_core::ladder::Rendition]) -> (u32, u32) {
    r.iter()
        .filter(|r| r.width.min(r.height) <= 720)
        .max_by_key(|r| r.height)
        .or_else(|| r.iter().min_by_key(|r| r.height))
        .map(|r| (r.width, r.height))
        .unwrap_or((640, 360))
}

/// Grabs and stores the poster; a poster that cannot be made is logged, never fatal.
async fn make_poster(
    ctx: &WorkerContext,
    input: &std::path::Path,
    at: f64,
    w: u32,
    h: u32,
    prefix: &str,
) -> Option<String> {
    let jpeg = match isolate::poster(&ctx.isolation, input.to_path_buf(), at, w, h).await {
        Ok(j) if !j.is_empty() => j,
        other => {
            tracing::warn!(prefix, outcome = ?other.map(|j| j.len()), "no poster");
            return None;
        }
    };
    let key = lectern_core::keys::poster(prefix);
    match ctx.store.put_bytes(&key, jpeg).await {
        Ok(()) => Some(key),
        Err(e) => {
            tracing::warn!(prefix, error = %e, "poster not stored");
            None
        }
    }
}

/// What the encoder loop tells its caller about.
enum Report {
    /// The share of the task encoded so far and the current speed in frames per second,
    /// about once a second.
    Progress { fraction: f64, fps: f64 },
    /// The packager made the output playable (every track has its first segment).
    Playable,
}

/// Where an encoder's progress goes: the video's own row, or a chunk's.
trait Reporter {
    /// Records one report; an error (a cancel seen) stops the encoder.
    fn report(&mut self, r: Report) -> futures::future::BoxFuture<'_, Result<(), JobError>>;
}

/// Reports of an attempt that encodes the whole source.
struct WholeReporter<'a> {
    attempt: &'a videos::Attempt,
    video: &'a str,
    prefix: String,
}

impl Reporter for WholeReporter<'_> {
    fn report(&mut self, r: Report) -> futures::future::BoxFuture<'_, Result<(), JobError>> {
        Box::pin(async move {
            match r {
                Report::Playable => {
                    self.attempt.set_live(&self.prefix).await?;
                    tracing::info!(video = %self.video, attempt = self.attempt.number(), "playable while encoding");
                    Ok(())
                }
                Report::Progress { fraction, fps } => {
                    let _ = self.attempt.set_progress(fraction.min(0.99), fps).await;
                    still_wanted(self.attempt).await
                }
            }
        })
    }
}

/// An admin may cancel (or delete) the video while it encodes: then the encoder stops and
/// nothing is published.
async fn still_wanted(attempt: &videos::Attempt) -> Result<(), JobError> {
    if attempt.still_processing().await.unwrap_or(false) {
        Ok(())
    } else {
        Err(JobError::Canceled)
    }
}

/// One encoder process of a task: its spec, where its tracks sit among the packager's, and
/// the media seconds it encodes (its share of the progress).
pub(crate) struct Encode {
    /// What it encodes.
    pub spec: pipeline::Spec,
    /// The packager's index of its first track.
    pub track_base: usize,
    /// Media seconds it encodes.
    pub media_s: f64,
}

/// Runs encoder processes at once (a chunk's pictures and the whole source's sound run
/// apart), feeding their init segments and fragments to `packager` and their progress to
/// `report` (which may stop them by returning an error), until every one has finished; the
/// outcomes come back in the order given. The worker stopping hands the work back.
async fn drive_encoders(
    ctx: &WorkerContext,
    encodes: Vec<Encode>,
    packager: &mut Packager,
    limit: Duration,
    report: &mut (dyn Reporter + Send),
) -> Result<Vec<pipeline::Outcome>, JobError> {
    use futures::StreamExt;
    let fps = encodes
        .first()
        .map(|e| e.spec.fps.0 as f64 / e.spec.fps.1.max(1) as f64)
        .unwrap_or(0.0);
    let bases: Vec<usize> = encodes.iter().map(|e| e.track_base).collect();
    let media: Vec<f64> = encodes.iter().map(|e| e.media_s).collect();
    // x264 keeps every thread busy, so CPU time can reach threads × the wall-clock limit.
    let cores = ctx.isolation.threads.max(1);
    let mut streams = Vec::new();
    for (i, e) in encodes.into_iter().enumerate() {
        let req = isolate::Request::Encode { spec: e.spec };
        let child = isolate::spawn(&ctx.isolation, &req, limit * cores).await?;
        // Each process's frames, tagged with its index, then `None` when it has no more.
        let frames =
            futures::stream::unfold(child, |mut c| async move { c.next().await.map(|f| (f, c)) })
                .map(Some)
                .chain(futures::stream::once(async { None }))
                .map(move |f| (i, f));
        streams.push(frames.boxed());
    }
    let mut children = futures::stream::select_all(streams);
    let mut outcomes: Vec<Option<pipeline::Outcome>> = vec![None; bases.len()];
    let mut pos = vec![0.0f64; bases.len()];
    let mut last_write = Instant::now();
    let mut last_pos = 0.0;
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    let ended = loop {
        tokio::select! {
            _ = ticker.tick() => {
                if ctx.stopping.load(Ordering::Relaxed) {
                    break Err(JobError::retry("worker stopping"));
                }
            }
            item = children.next() => {
                let Some((i, frame)) = item else {
                    break Ok(());
                };
                let res = match frame {
                    None if outcomes[i].is_none() => Err(JobError::Crashed("the encoder process ended without a result".into())),
                    None => Ok(()),
                    Some(Err(e)) => Err(e),
                    Some(Ok(isolate::Frame::Done(v))) => isolate::outcome(v).map(|o| outcomes[i] = Some(o)),
                    Some(Ok(isolate::Frame::Blob(_))) => Ok(()),
                    Some(Ok(isolate::Frame::Media(pipeline::Event::Init { track, data }))) => packager.init(bases[i] + track, data).await.map_err(JobError::from),
                    Some(Ok(isolate::Frame::Media(pipeline::Event::Segment { track, data, duration }))) => {
                        match packager.fragment(bases[i] + track, data, duration).await {
                            Ok(true) => report.report(Report::Playable).await,
                            Ok(false) => Ok(()),
                            Err(e) => Err(JobError::from(e)),
                        }
                    }
                    Some(Ok(isolate::Frame::Progress(p))) => {
                        pos[i] = p;
                        let since = last_write.elapsed();
                        if since >= Duration::from_secs(1) {
                            last_write = Instant::now();
                            // The speed is the first process's (the pictures, when there are any).
                            let enc_fps = (pos[0] - last_pos).max(0.0) * fps / since.as_secs_f64();
                            last_pos = pos[0];
                            metrics::gauge!("lectern_transcode_fps", "worker" => ctx.name.clone()).set(enc_fps);
                            // As far as the slowest of them.
                            let fraction = pos
                                .iter()
                                .zip(&media)
                                .map(|(p, m)| if *m > 0.0 { (p / m).min(1.0) } else { 1.0 })
                                .fold(1.0f64, f64::min);
                            report.report(Report::Progress { fraction, fps: enc_fps }).await
                        } else {
                            Ok(())
                        }
                    }
                };
                if let Err(e) = res {
                    break Err(e);
                }
            }
        }
    };
    // Whatever ended the loop, the encoder processes go with it (a no-op once they exited).
    drop(children);
    ended?;
    let outcomes: Vec<pipeline::Outcome> = outcomes
        .into_iter()
        .map(|o| o.ok_or_else(|| JobError::Crashed("an encoder process sent no result".into())))
        .collect::<Result<_, _>>()?;
    for (o, base) in outcomes.iter().zip(&bases) {
        for (i, c) in o.codecs.iter().enumerate() {
            if let Some(c) = c {
                packager.set_codec(base + i, c.clone())?;
            }
        }
    }
    Ok(outcomes)
}

/// A source that decodes to a clean early end was cut short: compare what was decoded with
/// what the file declares.
fn check_complete(decoded: f64, expected: f64) -> Result<(), JobError> {
    if expected > 0.0 && decoded < expected * 0.9 && expected - decoded > 1.0 {
        return Err(JobError::abort(
            "corrupt-input",
            format!(
                "The file ends after {decoded:.1} s although it declares {expected:.1} s; it is truncated. Upload the complete recording again."
            ),
        ));
    }
    Ok(())
}

async fn encode_and_package(
    ctx: &WorkerContext,
    v: &Video,
    attempt: &videos::Attempt,
    spec: pipeline::Spec,
    mut packager: Packager,
    duration_s: f64,
    limit: Duration,
) -> Result<Published, JobError> {
    let prefix = packager.prefix().to_string();
    let mut reporter = WholeReporter {
        attempt,
        video: &v.id,
        prefix: prefix.clone(),
    };
    let encode = Encode {
        spec,
        track_base: 0,
        media_s: duration_s,
    };
    let outcomes = drive_encoders(ctx, vec![encode], &mut packager, limit, &mut reporter).await?;
    let outcome = &outcomes[0];
    check_complete(outcome.decoded_s, duration_s)?;
    tracing::debug!(video = %v.id, decoded = outcome.decoded_s, "pipeline finished");
    let renditions = packager.finish().await?;
    Ok(Published {
        output_prefix: prefix,
        renditions,
        poster_key: None,
    })
}
