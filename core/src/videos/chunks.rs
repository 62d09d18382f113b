//! The `chunks` table: the tasks of a chunked attempt. A long source is cut into video chunks
//! (whole segments each) and one audio task; each is its own queue task, so free workers
//! encode one lecture at once. Rows belong to one attempt of one video; a newer attempt
//! writes its own, and every write is fenced by the attempt number.

use serde::{Deserialize, Serialize};

use super::state;
use crate::db::{Db, DbResult, Tx};
use crate::now_ms;

crate::text_enum! {
    /// What a chunk task encodes.
    pub enum ChunkKind {
        /// A range of frames of every video rung.
        Video => "video",
        /// The whole source's sound, once (AAC priming makes chunked audio click at joins).
        Audio => "audio",
    }
}

crate::text_enum! {
    /// Where a chunk task is.
    pub enum ChunkState {
        /// Waiting for a worker (or for another try).
        Queued => "queued",
        /// A worker encodes it.
        Running => "running",
        /// Encoded and stored; `result` says what it produced.
        Done => "done",
    }
}

/// A row of `chunks`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Chunk {
    /// The video.
    pub video_id: String,
    /// The attempt that planned it.
    pub attempt: i64,
    /// Position: video chunks 0…n−1 in media order, the audio task last.
    pub idx: i64,
    /// Video range or the whole audio.
    pub kind: ChunkKind,
    /// First output frame (video chunks).
    pub start_frame: i64,
    /// Output frames, or `None` to the end of the source.
    pub frames: Option<i64>,
    /// Share of the attempt's work, for progress over all chunks.
    pub weight: f64,
    /// The encoder spec shared by every chunk of the attempt (JSON, the source path left out).
    pub spec: String,
    /// Where it is.
    pub state: ChunkState,
    /// The worker encoding it.
    pub worker: Option<String>,
    /// Tries started.
    pub tries: i64,
    /// Fraction done.
    pub progress: f64,
    /// What a finished chunk produced (JSON, see the transcoder's stitch step).
    pub result: Option<String>,
    /// 1 when the live playlists include it (0 otherwise; the Any driver reads no booleans).
    pub live: i64,
}

/// A chunk task as planned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Planned {
    /// Position (video chunks first, in media order; the audio task last).
    pub idx: i64,
    /// Video range or the whole audio.
    pub kind: ChunkKind,
    /// First output frame.
    pub start_frame: i64,
    /// Output frames, or `None` to the end.
    pub frames: Option<i64>,
    /// Share of the work.
    pub weight: f64,
}

const COLS: &str =
    "video_id, attempt, idx, kind, start_frame, frames, weight, spec, state, worker, \
    tries, progress, result, live";

/// Locks the video's row in `tx` if `attempt` is its current, processing one (false if not).
/// A write first: on SQLite a transaction that reads before it writes cannot wait for another
/// writer (it fails with "database is locked" at once).
async fn lock_processing(tx: &mut Tx, video: &str, attempt: i64) -> DbResult<bool> {
    let current = sqlx::query(
        "UPDATE videos SET updated_at = $1 WHERE id = $2 AND attempts = $3 AND state = $4",
    )
    .bind(now_ms())
    .bind(video)
    .bind(attempt)
    .bind(state::PROCESSING)
    .execute(&mut **tx)
    .await?;
    Ok(current.rows_affected() > 0)
}

/// Records the chunk tasks of an attempt that is still processing; false when the attempt
/// was superseded meanwhile (then nothing is written).
pub async fn plan(
    db: &Db,
    video: &str,
    attempt: i64,
    spec: &str,
    chunks: &[Planned],
) -> DbResult<bool> {
    let now = now_ms();
    let mut tx = db.begin().await?;
    if !lock_processing(&mut tx, video, attempt).await? {
        return Ok(false);
    }
    for c in chunks {
        sqlx::query(
            "INSERT INTO chunks (video_id, attempt, idx, kind, start_frame, frames, weight, spec, state, \
             tries, progress, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, 0.0, $10)",
        )
        .bind(video)
        .bind(attempt)
        .bind(c.idx)
        .bind(c.kind)
        .bind(c.start_frame)
        .bind(c.frames)
        .bind(c.weight)
        .bind(spec)
        .bind(ChunkState::Queued)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// Moves recorded chunks of an attempt that is still processing to new extents (a plan's
/// later starts are settled after its first chunk was queued); false when the attempt was
/// superseded meanwhile (then nothing is written). Only chunks still waiting move.
pub async fn replan(db: &Db, video: &str, attempt: i64, chunks: &[Planned]) -> DbResult<bool> {
    let mut tx = db.begin().await?;
    if !lock_processing(&mut tx, video, attempt).await? {
        return Ok(false);
    }
    for c in chunks {
        sqlx::query(
            "UPDATE chunks SET start_frame = $1, frames = $2, weight = $3 \
             WHERE video_id = $4 AND attempt = $5 AND idx = $6 AND state = $7",
        )
        .bind(c.start_frame)
        .bind(c.frames)
        .bind(c.weight)
        .bind(video)
        .bind(attempt)
        .bind(c.idx)
        .bind(ChunkState::Queued)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// Every chunk of an attempt, in order.
pub async fn of_attempt(db: &Db, video: &str, attempt: i64) -> DbResult<Vec<Chunk>> {
    Ok(sqlx::query_as::<_, Chunk>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM chunks WHERE video_id = $1 AND attempt = $2 ORDER BY idx"
    )))
    .bind(video)
    .bind(attempt)
    .fetch_all(&db.pool)
    .await?)
}

/// Takes a chunk for `worker`, if its attempt is still the video's current one and it is not
/// done: a chunk whose worker died is taken again, and only that chunk runs twice.
pub async fn start(
    db: &Db,
    video: &str,
    attempt: i64,
    idx: i64,
    worker: &str,
) -> DbResult<Option<Chunk>> {
    let res = sqlx::query(
        "UPDATE chunks SET state = $1, worker = $2, tries = tries + 1, progress = 0.0, updated_at = $3 \
         WHERE video_id = $4 AND attempt = $5 AND idx = $6 AND state <> $7 \
         AND EXISTS (SELECT 1 FROM videos v WHERE v.id = $4 AND v.attempts = $5 AND v.state = $8)",
    )
    .bind(ChunkState::Running)
    .bind(worker)
    .bind(now_ms())
    .bind(video)
    .bind(attempt)
    .bind(idx)
    .bind(ChunkState::Done)
    .bind(state::PROCESSING)
    .execute(&db.pool)
    .await?;
    if res.rows_affected() == 0 {
        return Ok(None);
    }
    Ok(sqlx::query_as::<_, Chunk>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM chunks WHERE video_id = $1 AND attempt = $2 AND idx = $3"
    )))
    .bind(video)
    .bind(attempt)
    .bind(idx)
    .fetch_optional(&db.pool)
    .await?)
}

/// Records a running chunk's progress, and the video's as the weighted mean over its chunks.
pub async fn set_progress(
    db: &Db,
    video: &str,
    attempt: i64,
    idx: i64,
    progress: f64,
    fps: f64,
) -> DbResult<()> {
    let now = now_ms();
    sqlx::query(
        "UPDATE chunks SET progress = $1, updated_at = $2 WHERE video_id = $3 AND attempt = $4 AND idx = $5 AND state = $6",
    )
    .bind(progress.clamp(0.0, 1.0))
    .bind(now)
    .bind(video)
    .bind(attempt)
    .bind(idx)
    .bind(ChunkState::Running)
    .execute(&db.pool)
    .await?;
    sync_video_progress(db, video, attempt, Some(fps)).await
}

/// Sets the video's progress to the weighted mean of its chunks' (at most 0.99 until it is
/// published), and its encode speed when one is given.
async fn sync_video_progress(db: &Db, video: &str, attempt: i64, fps: Option<f64>) -> DbResult<()> {
    let (done,): (Option<f64>,) = sqlx::query_as(
        "SELECT SUM(CASE WHEN state = $1 THEN weight ELSE weight * progress END) / SUM(weight) \
         FROM chunks WHERE video_id = $2 AND attempt = $3",
    )
    .bind(ChunkState::Done)
    .bind(video)
    .bind(attempt)
    .fetch_one(&db.pool)
    .await?;
    sqlx::query(
        "UPDATE videos SET progress = $1, encode_fps = COALESCE($2, encode_fps), updated_at = $3 \
         WHERE id = $4 AND attempts = $5 AND state = $6",
    )
    .bind(done.unwrap_or(0.0).clamp(0.0, 0.99))
    .bind(fps)
    .bind(now_ms())
    .bind(video)
    .bind(attempt)
    .bind(state::PROCESSING)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Records a finished chunk and what it produced; returns whether every chunk of the attempt
/// is now done (the caller then stitches). False as well when the chunk was not running here.
pub async fn finish(
    db: &Db,
    video: &str,
    attempt: i64,
    idx: i64,
    worker: &str,
    result: &str,
) -> DbResult<bool> {
    let res = sqlx::query(
        "UPDATE chunks SET state = $1, progress = 1.0, result = $2, updated_at = $3 \
         WHERE video_id = $4 AND attempt = $5 AND idx = $6 AND state = $7 AND worker = $8",
    )
    .bind(ChunkState::Done)
    .bind(result)
    .bind(now_ms())
    .bind(video)
    .bind(attempt)
    .bind(idx)
    .bind(ChunkState::Running)
    .bind(worker)
    .execute(&db.pool)
    .await?;
    if res.rows_affected() == 0 {
        return Ok(false);
    }
    sync_video_progress(db, video, attempt, None).await?;
    let (left,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM chunks WHERE video_id = $1 AND attempt = $2 AND state <> $3",
    )
    .bind(video)
    .bind(attempt)
    .bind(ChunkState::Done)
    .fetch_one(&db.pool)
    .await?;
    Ok(left == 0)
}

/// A step that changes what an attempt's playlists show (growing the live ones, or stitching
/// the VOD ones). Such steps of one attempt run one at a time, so a slower step never writes
/// a shorter playlist over a longer one, and none writes after the stitch.
pub struct PlaylistStep {
    tx: Tx,
    /// The attempt's chunks as they are now, in order.
    pub chunks: Vec<Chunk>,
    /// Whether the attempt is already playable (its live playlists published).
    pub playable: bool,
}

/// Begins a [`PlaylistStep`] for an attempt that is still processing (`None` otherwise). It
/// holds the video's row (on SQLite, the database) and a pooled connection until committed or
/// dropped, so the playlists should be written, and the step ended, promptly, with no other
/// database call in between.
pub async fn begin_playlist_step(
    db: &Db,
    video: &str,
    attempt: i64,
) -> DbResult<Option<PlaylistStep>> {
    let mut tx = db.begin().await?;
    // The row lock (the write lock on SQLite) orders the steps.
    if !lock_processing(&mut tx, video, attempt).await? {
        return Ok(None);
    }
    let chunks = sqlx::query_as::<_, Chunk>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM chunks WHERE video_id = $1 AND attempt = $2 ORDER BY idx"
    )))
    .bind(video)
    .bind(attempt)
    .fetch_all(&mut *tx)
    .await?;
    // Read here rather than by the caller: a worker's pool may be one connection, which the
    // step holds.
    let live: Option<String> = sqlx::query_scalar("SELECT live_prefix FROM videos WHERE id = $1")
        .bind(video)
        .fetch_one(&mut *tx)
        .await?;
    Ok(Some(PlaylistStep {
        tx,
        chunks,
        playable: live.is_some(),
    }))
}

impl PlaylistStep {
    /// Ends the step without a change. Call it rather than drop the step: a dropped
    /// transaction's ROLLBACK waits in its pooled connection until that is used again, and
    /// on PostgreSQL the video's row stays locked until then.
    pub async fn abandon(self) -> DbResult<()> {
        self.tx.rollback().await?;
        Ok(())
    }

    /// Ends the step, recording that the playlists now include every chunk up to `through`
    /// (`i64::MAX` once stitched: then no later step writes).
    pub async fn commit(mut self, video: &str, attempt: i64, through: i64) -> DbResult<()> {
        sqlx::query(
            "UPDATE chunks SET live = $1 WHERE video_id = $2 AND attempt = $3 AND idx <= $4",
        )
        .bind(1i64)
        .bind(video)
        .bind(attempt)
        .bind(through)
        .execute(&mut *self.tx)
        .await?;
        self.tx.commit().await?;
        Ok(())
    }
}

/// Hands a chunk back to the queue after a transient fault (the queue retries its task).
pub async fn requeue(db: &Db, video: &str, attempt: i64, idx: i64) -> DbResult<()> {
    sqlx::query(
        "UPDATE chunks SET state = $1, worker = NULL, progress = 0.0, updated_at = $2 \
         WHERE video_id = $3 AND attempt = $4 AND idx = $5 AND state = $6",
    )
    .bind(ChunkState::Queued)
    .bind(now_ms())
    .bind(video)
    .bind(attempt)
    .bind(idx)
    .bind(ChunkState::Running)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// A video's chunk counts for the status API and the job list.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Counts {
    /// Chunk tasks of the current attempt (video chunks and the audio task).
    pub total: i64,
    /// Those finished.
    pub done: i64,
    /// Those being encoded now.
    pub running: i64,
    /// Workers encoding one of them now.
    pub workers: Vec<String>,
}

/// The chunk counts of a video's current attempt; `None` when it is not encoded in chunks.
pub async fn counts(db: &Db, video: &str, attempt: i64) -> DbResult<Option<Counts>> {
    Ok(counts_of(db, &[(video, attempt)]).await?.remove(video))
}

/// [`counts`] for a page of `(video, attempt)`s in one statement, keyed by video; videos not
/// encoded in chunks are absent.
pub async fn counts_of(
    db: &Db,
    page: &[(&str, i64)],
) -> DbResult<std::collections::HashMap<String, Counts>> {
    let mut out = std::collections::HashMap::new();
    if page.is_empty() {
        return Ok(out);
    }
    let ids = (0..page.len())
        .map(|i| format!("${}", i + 1))
        .collect::<Vec<_>>()
        .join(", ");
    let sql =
        format!("SELECT video_id, attempt, state, worker FROM chunks WHERE video_id IN ({ids})");
    let mut q =
        sqlx::query_as::<_, (String, i64, ChunkState, Option<String>)>(sqlx::AssertSqlSafe(sql));
    for (id, _) in page {
        q = q.bind(*id);
    }
    let rows = q.fetch_all(&db.pool).await?;
    let mut busy: std::collections::HashMap<String, Vec<String>> = Default::default();
    for (video, attempt, state, worker) in rows {
        if !page.iter().any(|(v, a)| *v == video && *a == attempt) {
            continue;
        }
        let c: &mut Counts = out.entry(video.clone()).or_default();
        c.total += 1;
        match state {
            ChunkState::Done => c.done += 1,
            ChunkState::Running => {
                c.running += 1;
                busy.entry(video).or_default().extend(worker);
            }
            ChunkState::Queued => {}
        }
    }
    for (video, mut workers) in busy {
        workers.sort();
        workers.dedup();
        if let Some(c) = out.get_mut(&video) {
            c.workers = workers;
        }
    }
    Ok(out)
}

/// Removes a video's chunk rows of attempts before `attempt` (and all of them with `None`).
pub async fn forget(db: &Db, video: &str, before: Option<i64>) -> DbResult<()> {
    sqlx::query("DELETE FROM chunks WHERE video_id = $1 AND attempt < $2")
        .bind(video)
        .bind(before.unwrap_or(i64::MAX))
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// Removes every chunk row of a video inside a step that spans tables.
pub async fn delete_all(tx: &mut Tx, video: &str) -> DbResult<()> {
    sqlx::query("DELETE FROM chunks WHERE video_id = $1")
        .bind(video)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
