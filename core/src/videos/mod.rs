//! The video record: its state machine and every query on the `videos` table. Submodules own
//! the rest of a video's rows: [`attempt`] (a worker's fenced writes and `attempt_prefixes`),
//! [`captions`] (`captions`), [`chunks`] (the tasks of a chunked attempt) and [`ranking`]
//! (the queue's fairness ranks).

pub mod attempt;
pub mod captions;
pub mod chunks;
pub mod ranking;

pub use attempt::{forget_prefix, stale_prefixes, Attempt};
pub use captions::Caption;

use serde::{Deserialize, Serialize};

use crate::db::{Db, DbError, DbResult, Tx};
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
pub async fn insert(db: &Db, v: NewVideo<'_>) -> DbResult<()> {
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
pub async fn get(db: &Db, id: &str) -> DbResult<Option<Video>> {
    Ok(sqlx::query_as::<_, Video>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM videos WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&db.pool)
    .await?)
}

/// Loads a video of `org`; another org's video is reported as not found.
pub async fn get_in_org(db: &Db, id: &str, org: &str) -> DbResult<Video> {
    match get(db, id).await? {
        Some(v) if v.org == org => Ok(v),
        _ => Err(DbError::NotFound("video")),
    }
}

/// Moves an uploaded video into the queue as owned by apalis task `task_id` (unless a worker
/// already took it).
pub async fn mark_queued(db: &Db, id: &str, task_id: &str, queue_priority: i64) -> DbResult<()> {
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

/// Videos of an org on their way to `ready`: uploading, queued or transcoding.
pub async fn org_pending(db: &Db, org: &str) -> DbResult<u64> {
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

/// Where queued videos stand and how long the queue takes, read for a whole page of videos in
/// one statement: a job list of twenty queued videos used to cost forty-one round trips.
#[derive(Debug, Default)]
pub struct QueueFacts {
    positions: std::collections::HashMap<String, i64>,
    /// Mean run time of the last 20 finished jobs, ms.
    avg_ms: Option<f64>,
    /// Attempts running now.
    running: i64,
}

impl QueueFacts {
    /// Takes in one row's facts (NULL when the row was not queued as the statement read it).
    fn add(&mut self, id: String, ahead: Option<i64>, avg_ms: Option<f64>, running: Option<i64>) {
        if let Some(ahead) = ahead {
            self.positions.insert(id, ahead + 1);
            self.avg_ms = avg_ms;
            self.running = running.unwrap_or(0);
        }
    }

    /// 1-based position among queued videos in the order workers take them (effective
    /// priority, then oldest), or `None` when `v` is not queued.
    pub fn position(&self, v: &Video) -> Option<i64> {
        if v.state != VideoState::Queued {
            return None;
        }
        self.positions.get(&v.id).copied()
    }

    /// Seconds until `v` is done: for a queued video its wait and then its run, estimated from
    /// the last 20 finished jobs and the attempts running now (`None` without history); for a
    /// running one what is left of it (see [`eta_s`]).
    pub fn eta_s(&self, v: &Video, now_ms: i64) -> Option<f64> {
        let Some(position) = self.position(v) else {
            return eta_s(v, now_ms);
        };
        self.avg_ms.map(|ms| {
            let job_s = ms / 1000.0;
            // Jobs ahead drain over the slots busy now; then this one runs.
            let slots = self.running.max(1) as f64;
            ((position - 1) as f64 / slots).ceil() * job_s + job_s
        })
    }
}

/// The [`QueueFacts`] of `page`: one statement when any of it is queued, none otherwise.
pub async fn queue_facts(db: &Db, page: &[&Video]) -> DbResult<QueueFacts> {
    let queued: Vec<&str> = page
        .iter()
        .filter(|v| v.state == VideoState::Queued)
        .map(|v| v.id.as_str())
        .collect();
    if queued.is_empty() {
        return Ok(QueueFacts::default());
    }
    let ids = (0..queued.len())
        .map(|i| format!("${}", i + 4))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!("SELECT v.id, {QUEUE_FACTS} FROM videos v WHERE v.id IN ({ids})");
    let mut q = sqlx::query_as::<_, (String, Option<i64>, Option<f64>, Option<i64>)>(
        sqlx::AssertSqlSafe(sql),
    )
    .bind(state::QUEUED)
    .bind(state::READY)
    .bind(state::PROCESSING);
    for id in &queued {
        q = q.bind(*id);
    }
    let rows = q.fetch_all(&db.pool).await?;
    let mut facts = QueueFacts::default();
    for (id, ahead, avg_ms, running) in rows {
        facts.add(id, ahead, avg_ms, running);
    }
    Ok(facts)
}

/// The queue facts of the row `v`, NULL unless it is queued; bound as `$1` queued, `$2` ready,
/// `$3` processing. The uncorrelated subqueries run once per statement (PostgreSQL's InitPlan,
/// SQLite's once-only subqueries), and only when a row is queued.
const QUEUE_FACTS: &str = "\
    CASE WHEN v.state = $1 THEN (SELECT COUNT(*) FROM videos w WHERE w.state = $1 AND w.id <> v.id AND \
      (w.queue_priority > v.queue_priority OR (w.queue_priority = v.queue_priority AND \
        (w.queued_at < COALESCE(v.queued_at, v.created_at) OR \
         (w.queued_at = COALESCE(v.queued_at, v.created_at) AND w.id < v.id))))) END AS ahead, \
    CASE WHEN v.state = $1 THEN (SELECT AVG(CAST(finished_at - started_at AS DOUBLE PRECISION)) FROM \
      (SELECT finished_at, started_at FROM videos WHERE state = $2 AND started_at IS NOT NULL \
       AND finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT 20) recent) END AS avg_ms, \
    CASE WHEN v.state = $1 THEN (SELECT COUNT(*) FROM videos WHERE state = $3) END AS running";

/// A video row with its [`QueueFacts`] columns.
#[derive(sqlx::FromRow)]
struct WithQueueFacts {
    #[sqlx(flatten)]
    video: Video,
    ahead: Option<i64>,
    avg_ms: Option<f64>,
    running: Option<i64>,
}

/// [`get_in_org`] and the video's [`QueueFacts`] in one statement: the status API's read.
pub async fn get_in_org_with_queue_facts(
    db: &Db,
    id: &str,
    org: &str,
) -> DbResult<(Video, QueueFacts)> {
    let row = sqlx::query_as::<_, WithQueueFacts>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS}, {QUEUE_FACTS} FROM videos v WHERE v.id = $4"
    )))
    .bind(state::QUEUED)
    .bind(state::READY)
    .bind(state::PROCESSING)
    .bind(id)
    .fetch_optional(&db.pool)
    .await?;
    match row {
        Some(r) if r.video.org == org => {
            let mut facts = QueueFacts::default();
            facts.add(r.video.id.clone(), r.ahead, r.avg_ms, r.running);
            Ok((r.video, facts))
        }
        _ => Err(DbError::NotFound("video")),
    }
}

/// Removes a video row inside a step that spans tables (its objects are removed by the caller).
pub async fn delete(tx: &mut Tx, id: &str) -> DbResult<()> {
    sqlx::query("DELETE FROM videos WHERE id = $1")
        .bind(id)
        .execute(&mut **tx)
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
pub async fn list_jobs(db: &Db, q: &JobQuery<'_>) -> DbResult<Vec<Video>> {
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
pub async fn cancel(db: &Db, id: &str) -> DbResult<bool> {
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
pub async fn retry(db: &Db, id: &str, task_id: &str, queue_priority: i64) -> DbResult<bool> {
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
pub async fn set_priority(db: &Db, id: &str, priority: i64) -> DbResult<bool> {
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

/// A page of an org's videos, newest first, optionally in one state, after `(created_at, id)`.
pub async fn list_in_org(
    db: &Db,
    org: &str,
    state: Option<&str>,
    limit: i64,
    after: Option<(i64, String)>,
) -> DbResult<Vec<Video>> {
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
pub async fn set_title(db: &Db, id: &str, title: &str) -> DbResult<()> {
    sqlx::query("UPDATE videos SET title = $1, updated_at = $2 WHERE id = $3")
        .bind(title)
        .bind(now_ms())
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// The current state of a video (for workers checking for cancellation).
pub async fn current_state(db: &Db, id: &str) -> DbResult<Option<VideoState>> {
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

/// A running attempt as operators see it: (worker, video id, org, progress, fps).
pub type Running = (String, String, String, f64, Option<f64>);

/// The videos being transcoded now, oldest attempt first.
pub async fn running(db: &Db) -> DbResult<Vec<Running>> {
    Ok(sqlx::query_as(
        "SELECT worker, id, org, progress, encode_fps FROM videos WHERE state = $1 AND worker IS NOT NULL ORDER BY started_at",
    )
    .bind(state::PROCESSING)
    .fetch_all(&db.pool)
    .await?)
}

/// Videos per state, with the oldest `queued_at` among the queued: (state, count, oldest).
pub async fn state_counts(db: &Db) -> DbResult<Vec<(String, i64, Option<i64>)>> {
    Ok(sqlx::query_as(
        "SELECT state, COUNT(*), MIN(CASE WHEN state = $1 THEN queued_at END) FROM videos GROUP BY state",
    )
    .bind(state::QUEUED)
    .fetch_all(&db.pool)
    .await?)
}
