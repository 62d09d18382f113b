//! The video record: state machine and every query on the `videos` table.

use serde::{Deserialize, Serialize};

use crate::db::Db;
use crate::error::ApiError;
use crate::now_ms;

crate::text_enum! {
    /// A video's lifecycle state: stored as its name in `videos.state` and named so in the API.
    pub enum VideoState {
        /// Bytes are still arriving.
        Uploading => "uploading",
        /// Waiting for a transcode worker.
        Queued => "queued",
        /// A worker is transcoding it.
        Processing => "processing",
        /// Playable.
        Ready => "ready",
        /// Transcoding failed; `error_code` says why.
        Failed => "failed",
        /// Stopped by an admin.
        Canceled => "canceled",
    }
}

impl VideoState {
    /// The states a transcode job can be in (every state but `uploading`).
    pub const JOB: [VideoState; 5] = [
        VideoState::Queued,
        VideoState::Processing,
        VideoState::Ready,
        VideoState::Failed,
        VideoState::Canceled,
    ];
}

/// The state names as string constants, for SQL parameters and string matches.
pub mod state {
    use super::VideoState;
    /// See [`VideoState::Uploading`].
    pub const UPLOADING: &str = VideoState::Uploading.as_str();
    /// See [`VideoState::Queued`].
    pub const QUEUED: &str = VideoState::Queued.as_str();
    /// See [`VideoState::Processing`].
    pub const PROCESSING: &str = VideoState::Processing.as_str();
    /// See [`VideoState::Ready`].
    pub const READY: &str = VideoState::Ready.as_str();
    /// See [`VideoState::Failed`].
    pub const FAILED: &str = VideoState::Failed.as_str();
    /// See [`VideoState::Canceled`].
    pub const CANCELED: &str = VideoState::Canceled.as_str();
}

/// Queue priority classes: higher runs first.
pub mod priority {
    /// Replacing the video of a published lesson.
    pub const REPLACEMENT: i64 = 20;
    /// A new upload.
    pub const NORMAL: i64 = 10;
    /// Bulk imports (`priority=bulk`).
    pub const BULK: i64 = 0;
}

/// A row of `videos`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Video {
    /// Video id, equal to its upload id.
    pub id: String,
    /// Owning org.
    pub org: String,
    /// Uploading user.
    pub owner: String,
    /// Optional title from `Upload-Metadata`.
    pub title: Option<String>,
    /// Lesson to attach to when ready.
    pub lesson: Option<String>,
    /// Original filename.
    pub filename: Option<String>,
    /// Where it is in its lifecycle.
    pub state: VideoState,
    /// Fraction done of the current phase.
    pub progress: f64,
    /// Queue priority class.
    pub priority: i64,
    /// Transcode attempts started.
    pub attempts: i64,
    /// Worker running the current attempt.
    pub worker: Option<String>,
    /// Object-store key of the source.
    pub source_key: String,
    /// Source duration, seconds.
    pub duration_s: Option<f64>,
    /// Upright source width.
    pub source_width: Option<i64>,
    /// Upright source height.
    pub source_height: Option<i64>,
    /// Source frame rate.
    pub source_fps: Option<f64>,
    /// JSON array of [`RenditionInfo`].
    pub renditions: Option<String>,
    /// Object-store prefix of the published output (ends with `/`).
    pub output_prefix: Option<String>,
    /// Failure code.
    pub error_code: Option<String>,
    /// Failure message for the instructor.
    pub error_message: Option<String>,
    /// When it entered the queue.
    pub queued_at: Option<i64>,
    /// When the current attempt started.
    pub started_at: Option<i64>,
    /// When the last attempt finished.
    pub finished_at: Option<i64>,
    /// Creation time.
    pub created_at: i64,
    /// Last change.
    pub updated_at: i64,
    /// The apalis task that owns the current queue entry.
    pub task_id: Option<String>,
    /// Effective apalis priority: class first, then the org's round (see [`crate::queue::placement`]).
    pub queue_priority: i64,
    /// Frames per second of the running attempt.
    pub encode_fps: Option<f64>,
    /// Object key of the poster JPEG, when one was made.
    pub poster_key: Option<String>,
    /// Output prefix of the running attempt once it is playable (first segment of every track).
    pub live_prefix: Option<String>,
}

/// A published rendition, as the status API lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RenditionInfo {
    /// Name, e.g. `720p`.
    pub name: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Declared peak bandwidth (video plus audio), bits per second.
    pub bandwidth: u64,
}

/// Fields of a new video.
#[derive(Debug, Clone)]
pub struct NewVideo<'a> {
    /// Id (the upload id).
    pub id: &'a str,
    /// Owning org.
    pub org: &'a str,
    /// Uploading user.
    pub owner: &'a str,
    /// Title.
    pub title: Option<&'a str>,
    /// Lesson to attach to.
    pub lesson: Option<&'a str>,
    /// Original filename.
    pub filename: Option<&'a str>,
    /// Priority class.
    pub priority: i64,
    /// Where the source will be stored.
    pub source_key: &'a str,
}

/// What a finished transcode publishes.
#[derive(Debug, Clone)]
pub struct Published {
    /// Output prefix in the store (ends with `/`).
    pub output_prefix: String,
    /// Renditions with measured bandwidths.
    pub renditions: Vec<RenditionInfo>,
    /// The poster's key, when one was made.
    pub poster_key: Option<String>,
}

/// Facts from probing the source.
#[derive(Debug, Clone, Copy)]
pub struct SourceInfo {
    /// Duration, seconds.
    pub duration_s: f64,
    /// Upright width.
    pub width: u32,
    /// Upright height.
    pub height: u32,
    /// Frame rate.
    pub fps: f64,
}

const COLS: &str = "id, org, owner, title, lesson, filename, state, progress, priority, attempts, \
    worker, source_key, duration_s, source_width, source_height, source_fps, renditions, \
    output_prefix, error_code, error_message, queued_at, started_at, finished_at, created_at, updated_at, \
    task_id, queue_priority, encode_fps, poster_key, live_prefix";

impl Video {
    /// The prefix a player is served from: the published output once ready, else the running
    /// attempt's once it is playable; `None` when there is nothing to watch yet.
    pub fn playable_prefix(&self) -> Option<&str> {
        match self.state {
            VideoState::Ready => self.output_prefix.as_deref(),
            VideoState::Processing => self.live_prefix.as_deref(),
            _ => None,
        }
    }

    /// Parsed renditions, empty before any are published.
    pub fn rendition_list(&self) -> Vec<RenditionInfo> {
        self.renditions
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default()
    }
}

/// Inserts a video in state `uploading`.
pub async fn insert(db: &Db, v: NewVideo<'_>) -> Result<(), ApiError> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO videos (id, org, owner, title, lesson, filename, state, progress, priority, \
         attempts, source_key, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 0.0, $8, 0, $9, $10, $10)",
    )
    .bind(v.id)
    .bind(v.org)
    .bind(v.owner)
    .bind(v.title)
    .bind(v.lesson)
    .bind(v.filename)
    .bind(state::UPLOADING)
    .bind(v.priority)
    .bind(v.source_key)
    .bind(now)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Loads a video by id, whatever its org.
pub async fn get(db: &Db, id: &str) -> Result<Option<Video>, ApiError> {
    Ok(sqlx::query_as::<_, Video>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM videos WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&db.pool)
    .await?)
}

/// Loads a video of `org`; another org's video is reported as not found.
pub async fn get_in_org(db: &Db, id: &str, org: &str) -> Result<Video, ApiError> {
    match get(db, id).await? {
        Some(v) if v.org == org => Ok(v),
        _ => Err(ApiError::not_found("video")),
    }
}

/// Moves an uploaded video into the queue as owned by apalis task `task_id` (unless a worker
/// already took it).
pub async fn mark_queued(
    db: &Db,
    id: &str,
    task_id: &str,
    queue_priority: i64,
) -> Result<(), ApiError> {
    let now = now_ms();
    sqlx::query(
        "UPDATE videos SET state = $1, progress = 0.0, queued_at = $2, updated_at = $2, task_id = $5, \
         queue_priority = $6 WHERE id = $3 AND state = $4",
    )
    .bind(state::QUEUED)
    .bind(now)
    .bind(id)
    .bind(state::UPLOADING)
    .bind(task_id)
    .bind(queue_priority)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// One transcode attempt of a video, as its worker holds it. Every write is fenced by the
/// attempt number (and state), so an attempt that was superseded (handed back, canceled,
/// retried elsewhere, the video deleted) changes nothing.
#[derive(Debug, Clone)]
pub struct Attempt {
    db: Db,
    video_id: String,
    number: i64,
}

impl Attempt {
    /// Starts the next attempt of `video_id` for apalis task `task` on `worker`: the video is
    /// `processing` and counts one more attempt. `None` when it no longer waits for this task.
    pub async fn start(
        db: &Db,
        video_id: &str,
        worker: &str,
        task: &str,
    ) -> Result<Option<Attempt>, ApiError> {
        Ok(start_attempt(db, video_id, worker, task)
            .await?
            .map(|number| Attempt {
                db: db.clone(),
                video_id: video_id.to_string(),
                number,
            }))
    }

    /// The attempt's number (1 for the first).
    pub fn number(&self) -> i64 {
        self.number
    }

    /// Records the prefix the attempt writes under, before its first object.
    pub async fn record_prefix(&self, prefix: &str) -> Result<(), ApiError> {
        record_prefix(&self.db, &self.video_id, self.number, prefix).await
    }

    /// Records what the probe found about the source.
    pub async fn set_source_info(&self, s: SourceInfo) -> Result<(), ApiError> {
        set_source_info(&self.db, &self.video_id, s).await
    }

    /// Makes the attempt's output playable while it encodes; false if it was superseded.
    pub async fn set_live(&self, prefix: &str) -> Result<bool, ApiError> {
        set_live(&self.db, &self.video_id, self.number, prefix).await
    }

    /// Reports progress (fraction of the source encoded) and the encoder's frame rate.
    pub async fn set_progress(&self, progress: f64, fps: f64) -> Result<(), ApiError> {
        set_progress(&self.db, &self.video_id, self.number, progress, fps).await
    }

    /// Whether the video is still `processing` (not canceled or deleted meanwhile).
    pub async fn still_processing(&self) -> Result<bool, ApiError> {
        Ok(current_state(&self.db, &self.video_id).await? == Some(VideoState::Processing))
    }

    /// Publishes the attempt's output: the video is `ready`. False if it was superseded.
    pub async fn mark_ready(&self, p: &Published) -> Result<bool, ApiError> {
        mark_ready(&self.db, &self.video_id, self.number, p).await
    }

    /// Fails the video for good with a stable code and advice.
    pub async fn mark_failed(&self, code: &str, message: &str) -> Result<(), ApiError> {
        mark_failed(&self.db, &self.video_id, self.number, code, message).await
    }

    /// Counts an encoder crash on this input; returns the crashes so far.
    pub async fn record_crash(&self) -> Result<i64, ApiError> {
        record_crash(&self.db, &self.video_id, self.number).await
    }

    /// Hands the video back to the queue for another attempt.
    pub async fn requeue(&self) -> Result<(), ApiError> {
        requeue(&self.db, &self.video_id, self.number).await
    }
}

/// Starts an attempt: returns the attempt number, or `None` when the video is no longer
/// waiting for one (deleted, canceled, already published) or `task` is a stale queue entry
/// (the video was canceled and retried, which queued a newer task).
async fn start_attempt(
    db: &Db,
    id: &str,
    worker: &str,
    task: &str,
) -> Result<Option<i64>, ApiError> {
    let now = now_ms();
    let row: Option<(i64,)> = sqlx::query_as(
        "UPDATE videos SET state = $1, progress = 0.0, encode_fps = NULL, attempts = attempts + 1, worker = $2, \
         live_prefix = NULL, started_at = $3, finished_at = NULL, error_code = NULL, error_message = NULL, updated_at = $3 \
         WHERE id = $4 AND state IN ($5, $6, $1) AND (task_id IS NULL OR task_id = $7) RETURNING attempts",
    )
    .bind(state::PROCESSING)
    .bind(worker)
    .bind(now)
    .bind(id)
    .bind(state::QUEUED)
    .bind(state::UPLOADING)
    .bind(task)
    .fetch_optional(&db.pool)
    .await?;
    Ok(row.map(|r| r.0))
}

/// Records what probing found.
async fn set_source_info(db: &Db, id: &str, s: SourceInfo) -> Result<(), ApiError> {
    sqlx::query(
        "UPDATE videos SET duration_s = $1, source_width = $2, source_height = $3, source_fps = $4, \
         updated_at = $5 WHERE id = $6",
    )
    .bind(s.duration_s)
    .bind(s.width as i64)
    .bind(s.height as i64)
    .bind(s.fps)
    .bind(now_ms())
    .bind(id)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Records transcode progress (fraction of media time) and speed of a running attempt.
async fn set_progress(
    db: &Db,
    id: &str,
    attempt: i64,
    progress: f64,
    fps: f64,
) -> Result<(), ApiError> {
    sqlx::query(
        "UPDATE videos SET progress = $1, updated_at = $2, encode_fps = $6 WHERE id = $3 AND attempts = $4 AND state = $5",
    )
    .bind(progress.clamp(0.0, 1.0))
    .bind(now_ms())
    .bind(id)
    .bind(attempt)
    .bind(state::PROCESSING)
    .bind(fps)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Makes a running attempt's output watchable while it is still encoding (its first segment
/// of every track is stored); false when the attempt is no longer the current one.
async fn set_live(db: &Db, id: &str, attempt: i64, prefix: &str) -> Result<bool, ApiError> {
    let res = sqlx::query(
        "UPDATE videos SET live_prefix = $1, updated_at = $2 WHERE id = $3 AND attempts = $4 AND state = $5",
    )
    .bind(prefix)
    .bind(now_ms())
    .bind(id)
    .bind(attempt)
    .bind(state::PROCESSING)
    .execute(&db.pool)
    .await?;
    Ok(res.rows_affected() == 1)
}

/// Publishes a finished attempt; returns false when the video changed under it (deleted,
/// canceled or taken over by a newer attempt), in which case the output must be discarded.
async fn mark_ready(db: &Db, id: &str, attempt: i64, p: &Published) -> Result<bool, ApiError> {
    let now = now_ms();
    let res = sqlx::query(
        "UPDATE videos SET state = $1, progress = 1.0, renditions = $2, output_prefix = $3, \
         live_prefix = NULL, finished_at = $4, updated_at = $4, poster_key = $8 WHERE id = $5 AND attempts = $6 AND state = $7",
    )
    .bind(state::READY)
    .bind(serde_json::to_string(&p.renditions).expect("renditions serialize"))
    .bind(&p.output_prefix)
    .bind(now)
    .bind(id)
    .bind(attempt)
    .bind(state::PROCESSING)
    .bind(&p.poster_key)
    .execute(&db.pool)
    .await?;
    Ok(res.rows_affected() == 1)
}

/// Fails an attempt for good with a stable code and a message for the instructor.
async fn mark_failed(
    db: &Db,
    id: &str,
    attempt: i64,
    code: &str,
    message: &str,
) -> Result<(), ApiError> {
    let now = now_ms();
    sqlx::query(
        "UPDATE videos SET state = $1, error_code = $2, error_message = $3, finished_at = $4, \
         live_prefix = NULL, updated_at = $4 WHERE id = $5 AND attempts = $6 AND state = $7",
    )
    .bind(state::FAILED)
    .bind(code)
    .bind(message)
    .bind(now)
    .bind(id)
    .bind(attempt)
    .bind(state::PROCESSING)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Counts a crash of the encoder process on this video's attempt; returns the crashes so far.
async fn record_crash(db: &Db, id: &str, attempt: i64) -> Result<i64, ApiError> {
    let row: Option<(i64,)> = sqlx::query_as(
        "UPDATE videos SET encoder_crashes = encoder_crashes + 1, updated_at = $1 \
         WHERE id = $2 AND attempts = $3 RETURNING encoder_crashes",
    )
    .bind(now_ms())
    .bind(id)
    .bind(attempt)
    .fetch_optional(&db.pool)
    .await?;
    Ok(row.map(|r| r.0).unwrap_or(0))
}

/// Hands an attempt back to the queue after a transient fault.
async fn requeue(db: &Db, id: &str, attempt: i64) -> Result<(), ApiError> {
    sqlx::query(
        "UPDATE videos SET state = $1, worker = NULL, progress = 0.0, live_prefix = NULL, updated_at = $2 \
         WHERE id = $3 AND attempts = $4 AND state = $5",
    )
    .bind(state::QUEUED)
    .bind(now_ms())
    .bind(id)
    .bind(attempt)
    .bind(state::PROCESSING)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Videos of an org on their way to `ready`: uploading, queued or transcoding.
pub async fn org_pending(db: &Db, org: &str) -> Result<u64, ApiError> {
    let (n,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM videos WHERE org = $1 AND state IN ($2, $3, $4)")
            .bind(org)
            .bind(state::UPLOADING)
            .bind(state::QUEUED)
            .bind(state::PROCESSING)
            .fetch_one(&db.pool)
            .await?;
    Ok(n.max(0) as u64)
}

/// 1-based position among queued videos in the order workers take them (effective priority,
/// then oldest), or `None`.
pub async fn queue_position(db: &Db, v: &Video) -> Result<Option<i64>, ApiError> {
    if v.state != VideoState::Queued {
        return Ok(None);
    }
    let queued_at = v.queued_at.unwrap_or(v.created_at);
    let (ahead,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM videos WHERE state = $1 AND id <> $2 AND \
         (queue_priority > $3 OR (queue_priority = $3 AND (queued_at < $4 OR (queued_at = $4 AND id < $2))))",
    )
    .bind(state::QUEUED)
    .bind(&v.id)
    .bind(v.queue_priority)
    .bind(queued_at)
    .fetch_one(&db.pool)
    .await?;
    Ok(Some(ahead + 1))
}

/// Removes a video row (its objects are removed by the caller).
pub async fn delete(db: &Db, id: &str) -> Result<(), ApiError> {
    sqlx::query("DELETE FROM videos WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// Filters and paging for the admin job list.
#[derive(Debug, Default)]
pub struct JobQuery<'a> {
    /// Only this org (admins: always their own).
    pub org: Option<&'a str>,
    /// Only this state.
    pub state: Option<&'a str>,
    /// Page size (1–100).
    pub limit: i64,
    /// Continue after this (created_at, id).
    pub after: Option<(i64, &'a str)>,
}

/// Videos that are or were transcode jobs (every state but `uploading`), newest first.
pub async fn list_jobs(db: &Db, q: &JobQuery<'_>) -> Result<Vec<Video>, ApiError> {
    let (after_ts, after_id) = q
        .after
        .map(|(t, i)| (t, i.to_string()))
        .unwrap_or((i64::MAX, String::new()));
    Ok(sqlx::query_as::<_, Video>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM videos WHERE state <> $1 AND ($2 = '' OR org = $2) AND ($3 = '' OR state = $3) \
         AND (created_at < $4 OR (created_at = $4 AND id < $5) OR $5 = '') ORDER BY created_at DESC, id DESC LIMIT $6"
    )))
    .bind(state::UPLOADING)
    .bind(q.org.unwrap_or(""))
    .bind(q.state.unwrap_or(""))
    .bind(after_ts)
    .bind(after_id)
    .bind(q.limit)
    .fetch_all(&db.pool)
    .await?)
}

/// Cancels a queued or running transcode; false when it was in no such state.
pub async fn cancel(db: &Db, id: &str) -> Result<bool, ApiError> {
    let now = now_ms();
    let res = sqlx::query(
        "UPDATE videos SET state = $1, finished_at = $2, updated_at = $2 WHERE id = $3 AND state IN ($4, $5)",
    )
    .bind(state::CANCELED)
    .bind(now)
    .bind(id)
    .bind(state::QUEUED)
    .bind(state::PROCESSING)
    .execute(&db.pool)
    .await?;
    Ok(res.rows_affected() == 1)
}

/// Puts a failed or canceled video back in the queue under apalis task `task_id`; false when
/// it was in neither state.
pub async fn retry(
    db: &Db,
    id: &str,
    task_id: &str,
    queue_priority: i64,
) -> Result<bool, ApiError> {
    let now = now_ms();
    let res = sqlx::query(
        "UPDATE videos SET state = $1, progress = 0.0, error_code = NULL, error_message = NULL, worker = NULL, \
         encoder_crashes = 0, queued_at = $2, started_at = NULL, finished_at = NULL, updated_at = $2, task_id = $6, \
         queue_priority = $7 WHERE id = $3 AND state IN ($4, $5)",
    )
    .bind(state::QUEUED)
    .bind(now)
    .bind(id)
    .bind(state::FAILED)
    .bind(state::CANCELED)
    .bind(task_id)
    .bind(queue_priority)
    .execute(&db.pool)
    .await?;
    Ok(res.rows_affected() == 1)
}

/// Sets the priority class of a queued video; false when it is not queued.
pub async fn set_priority(db: &Db, id: &str, priority: i64) -> Result<bool, ApiError> {
    let res = sqlx::query(
        "UPDATE videos SET priority = $1, updated_at = $2 WHERE id = $3 AND state = $4",
    )
    .bind(priority)
    .bind(now_ms())
    .bind(id)
    .bind(state::QUEUED)
    .execute(&db.pool)
    .await?;
    Ok(res.rows_affected() == 1)
}

/// Seconds a queued video at 1-based `position` waits and then takes, estimated from the
/// last 20 finished jobs and the number of attempts running now; `None` without history.
pub async fn queued_eta_s(db: &Db, position: i64) -> Result<Option<f64>, ApiError> {
    let (avg_ms, running): (Option<f64>, i64) = sqlx::query_as(
        "SELECT (SELECT AVG(CAST(finished_at - started_at AS DOUBLE PRECISION)) FROM \
           (SELECT finished_at, started_at FROM videos WHERE state = $1 AND started_at IS NOT NULL \
            AND finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT 20) recent), \
         (SELECT COUNT(*) FROM videos WHERE state = $2)",
    )
    .bind(state::READY)
    .bind(state::PROCESSING)
    .fetch_one(&db.pool)
    .await?;
    Ok(avg_ms.map(|ms| {
        let job_s = ms / 1000.0;
        // Jobs ahead drain over the slots busy now; then this one runs.
        let slots = running.max(1) as f64;
        ((position - 1) as f64 / slots).ceil() * job_s + job_s
    }))
}

/// A page of an org's videos, newest first, optionally in one state, after `(created_at, id)`.
pub async fn list_in_org(
    db: &Db,
    org: &str,
    state: Option<&str>,
    limit: i64,
    after: Option<(i64, String)>,
) -> Result<Vec<Video>, ApiError> {
    let (ts, id) = after.unwrap_or((i64::MAX, String::new()));
    Ok(sqlx::query_as::<_, Video>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM videos WHERE org = $1 AND ($2 = '' OR state = $2) \
         AND (created_at < $3 OR (created_at = $3 AND id < $4)) ORDER BY created_at DESC, id DESC LIMIT $5"
    )))
    .bind(org)
    .bind(state.unwrap_or(""))
    .bind(ts)
    .bind(id)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?)
}

/// Renames a video.
pub async fn set_title(db: &Db, id: &str, title: &str) -> Result<(), ApiError> {
    sqlx::query("UPDATE videos SET title = $1, updated_at = $2 WHERE id = $3")
        .bind(title)
        .bind(now_ms())
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// Removes a video's row, its upload row and every lesson's link to it, in one transaction
/// (its objects are removed by the caller first).
pub async fn forget(db: &Db, id: &str) -> Result<(), ApiError> {
    let mut tx = db.pool.begin().await?;
    sqlx::query("UPDATE lessons SET video_id = NULL WHERE video_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM captions WHERE video_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM uploads WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM videos WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Points the lesson a video was uploaded for (`lesson` metadata) at it once it is ready;
/// the lesson's previous video stays until then, so learners never see a gap.
pub async fn attach_to_lesson(db: &Db, v: &Video) -> Result<(), ApiError> {
    if let Some(lesson) = &v.lesson {
        sqlx::query("UPDATE lessons SET video_id = $1, updated_at = $2 WHERE id = $3 AND org = $4")
            .bind(&v.id)
            .bind(now_ms())
            .bind(lesson)
            .bind(&v.org)
            .execute(&db.pool)
            .await?;
    }
    Ok(())
}

/// For an upload naming `lesson`: `None` when the org has no such lesson, else whether the
/// lesson already shows a ready video (then the upload is a replacement).
pub async fn lesson_has_ready_video(
    db: &Db,
    org: &str,
    lesson: &str,
) -> Result<Option<bool>, ApiError> {
    let row: Option<(Option<String>,)> = sqlx::query_as(
        "SELECT v.state FROM lessons l LEFT JOIN videos v ON v.id = l.video_id WHERE l.id = $1 AND l.org = $2",
    )
    .bind(lesson)
    .bind(org)
    .fetch_optional(&db.pool)
    .await?;
    Ok(row.map(|(st,)| st.as_deref() == Some(state::READY)))
}

/// The current state of a video (for workers checking for cancellation).
pub async fn current_state(db: &Db, id: &str) -> Result<Option<VideoState>, ApiError> {
    let row: Option<(VideoState,)> = sqlx::query_as("SELECT state FROM videos WHERE id = $1")
        .bind(id)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.map(|r| r.0))
}

/// Seconds left for a running attempt, from its pace so far; `None` when unknown.
pub fn eta_s(v: &Video, now_ms: i64) -> Option<f64> {
    let started = v.started_at?;
    if v.state != VideoState::Processing || v.progress < 0.02 {
        return None;
    }
    let elapsed = (now_ms - started).max(0) as f64 / 1000.0;
    Some((elapsed / v.progress - elapsed).max(0.0))
}

/// A caption track: language, display name and the revision folder token.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Caption {
    /// BCP 47 language tag.
    pub lang: String,
    /// Name shown in players.
    pub label: String,
    /// Revision folder: `videos/{video}/{token}/subs-{lang}/`.
    pub token: String,
}

/// A video's caption tracks, by language.
pub async fn captions(db: &Db, video: &str) -> Result<Vec<Caption>, ApiError> {
    Ok(sqlx::query_as::<_, Caption>(
        "SELECT lang, label, token FROM captions WHERE video_id = $1 ORDER BY lang",
    )
    .bind(video)
    .fetch_all(&db.pool)
    .await?)
}

/// Records (or replaces) a caption track; returns the replaced revision's token.
pub async fn put_caption(db: &Db, video: &str, c: &Caption) -> Result<Option<String>, ApiError> {
    let old: Option<(String,)> =
        sqlx::query_as("SELECT token FROM captions WHERE video_id = $1 AND lang = $2")
            .bind(video)
            .bind(&c.lang)
            .fetch_optional(&db.pool)
            .await?;
    sqlx::query(
        "INSERT INTO captions (video_id, lang, label, token, created_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (video_id, lang) DO UPDATE SET label = excluded.label, token = excluded.token, \
         created_at = excluded.created_at",
    )
    .bind(video)
    .bind(&c.lang)
    .bind(&c.label)
    .bind(&c.token)
    .bind(now_ms())
    .execute(&db.pool)
    .await?;
    Ok(old.map(|o| o.0))
}

/// Removes a caption track; returns its token when there was one.
pub async fn delete_caption(db: &Db, video: &str, lang: &str) -> Result<Option<String>, ApiError> {
    let old: Option<(String,)> =
        sqlx::query_as("DELETE FROM captions WHERE video_id = $1 AND lang = $2 RETURNING token")
            .bind(video)
            .bind(lang)
            .fetch_optional(&db.pool)
            .await?;
    Ok(old.map(|o| o.0))
}

/// Records an attempt's output prefix before anything is written under it, so its objects can
/// always be found and deleted later ([`stale_prefixes`], [`forget_prefix`]).
async fn record_prefix(db: &Db, id: &str, attempt: i64, prefix: &str) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO attempt_prefixes (prefix, video_id, attempt, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(prefix)
    .bind(id)
    .bind(attempt)
    .bind(now_ms())
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Forgets a prefix whose objects are deleted (or, for the published one, kept for good).
pub async fn forget_prefix(db: &Db, prefix: &str) -> Result<(), ApiError> {
    sqlx::query("DELETE FROM attempt_prefixes WHERE prefix = $1")
        .bind(prefix)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// Prefixes that no attempt will publish: of `video` (or of every video when `None`), those of
/// attempts older than the video's current one, or of a video that is no longer processing,
/// never the published output. At most `limit`.
pub async fn stale_prefixes(
    db: &Db,
    video: Option<&str>,
    limit: i64,
) -> Result<Vec<String>, ApiError> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT p.prefix FROM attempt_prefixes p LEFT JOIN videos v ON v.id = p.video_id \
         WHERE ($1 = '' OR p.video_id = $1) \
           AND (v.id IS NULL OR ((p.attempt < v.attempts OR v.state <> $2) \
                AND p.prefix <> COALESCE(v.output_prefix, ''))) \
         ORDER BY p.created_at LIMIT $3",
    )
    .bind(video.unwrap_or(""))
    .bind(state::PROCESSING)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.into_iter().map(|(p,)| p).collect())
}
