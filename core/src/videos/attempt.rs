//! One transcode attempt as its worker holds it, and the `attempt_prefixes` table that keeps
//! every attempt's output findable until it is published or deleted.

use super::{current_state, state, Published, SourceInfo, Video, VideoState};
use crate::db::{Db, DbResult, Tx};
use crate::now_ms;

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
    ) -> DbResult<Option<Attempt>> {
        let started = start_attempt(db, video_id, worker, task).await?;
        crate::readcache::changed();
        Ok(started.map(|number| Attempt {
            db: db.clone(),
            video_id: video_id.to_string(),
            number,
        }))
    }

    /// The running attempt `number` of `video_id`, as a chunk task holds it: its writes are
    /// fenced like the planning task's.
    pub fn resume(db: &Db, video_id: &str, number: i64) -> Attempt {
        Attempt {
            db: db.clone(),
            video_id: video_id.to_string(),
            number,
        }
    }

    /// The video this attempt transcodes.
    pub fn video_id(&self) -> &str {
        &self.video_id
    }

    /// The attempt's number (1 for the first).
    pub fn number(&self) -> i64 {
        self.number
    }

    /// Records the prefix the attempt writes under, before its first object.
    pub async fn record_prefix(&self, prefix: &str) -> DbResult<()> {
        record_prefix(&self.db, &self.video_id, self.number, prefix).await
    }

    /// Records what the probe found about the source.
    pub async fn set_source_info(&self, s: SourceInfo) -> DbResult<()> {
        set_source_info(&self.db, &self.video_id, s).await
    }

    /// Makes the attempt's output playable while it encodes; false if it was superseded.
    pub async fn set_live(&self, prefix: &str) -> DbResult<bool> {
        set_live(&self.db, &self.video_id, self.number, prefix).await
    }

    /// Reports progress (fraction of the source encoded) and the encoder's frame rate.
    pub async fn set_progress(&self, progress: f64, fps: f64) -> DbResult<()> {
        set_progress(&self.db, &self.video_id, self.number, progress, fps).await
    }

    /// Whether the video is still `processing` (not canceled or deleted meanwhile).
    pub async fn still_processing(&self) -> DbResult<bool> {
        Ok(current_state(&self.db, &self.video_id).await? == Some(VideoState::Processing))
    }

    /// Publishes the attempt's output: the video is `ready` and, when it was uploaded for a
    /// lesson, that lesson shows it, in one transaction. False if the attempt was superseded.
    pub async fn mark_ready(&self, v: &Video, p: &Published) -> DbResult<bool> {
        let mut tx = self.db.begin().await?;
        if !mark_ready(&mut tx, &self.video_id, self.number, p).await? {
            return Ok(false);
        }
        crate::lesson_links::attach(&mut tx, v).await?;
        tx.commit().await?;
        crate::readcache::changed();
        Ok(true)
    }

    /// Fails the video for good with a stable code and advice; false when it had already
    /// left `processing` (another chunk failed it first, an admin canceled it).
    pub async fn mark_failed(&self, code: &str, message: &str) -> DbResult<bool> {
        let r = mark_failed(&self.db, &self.video_id, self.number, code, message).await;
        crate::readcache::changed();
        r
    }

    /// Counts an encoder crash on this input; returns the crashes so far.
    pub async fn record_crash(&self) -> DbResult<i64> {
        record_crash(&self.db, &self.video_id, self.number).await
    }

    /// Hands the video back to the queue for another attempt.
    pub async fn requeue(&self) -> DbResult<()> {
        let r = requeue(&self.db, &self.video_id, self.number).await;
        crate::readcache::changed();
        r
    }
}

/// Starts an attempt: returns the attempt number, or `None` when the video is no longer
/// waiting for one (deleted, canceled, already published) or `task` is a stale queue entry
/// (the video was canceled and retried, which queued a newer task).
async fn start_attempt(db: &Db, id: &str, worker: &str, task: &str) -> DbResult<Option<i64>> {
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
async fn set_source_info(db: &Db, id: &str, s: SourceInfo) -> DbResult<()> {
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
async fn set_progress(db: &Db, id: &str, attempt: i64, progress: f64, fps: f64) -> DbResult<()> {
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
async fn set_live(db: &Db, id: &str, attempt: i64, prefix: &str) -> DbResult<bool> {
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
async fn mark_ready(tx: &mut Tx, id: &str, attempt: i64, p: &Published) -> DbResult<bool> {
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
    .execute(&mut **tx)
    .await?;
    Ok(res.rows_affected() == 1)
}

/// Fails an attempt for good with a stable code and a message for the instructor.
async fn mark_failed(db: &Db, id: &str, attempt: i64, code: &str, message: &str) -> DbResult<bool> {
    let now = now_ms();
    let res = sqlx::query(
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
    Ok(res.rows_affected() == 1)
}

/// Counts a crash of the encoder process on this video's attempt; returns the crashes so far.
async fn record_crash(db: &Db, id: &str, attempt: i64) -> DbResult<i64> {
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
async fn requeue(db: &Db, id: &str, attempt: i64) -> DbResult<()> {
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

/// Records an attempt's output prefix before anything is written under it, so its objects can
/// always be found and deleted later ([`stale_prefixes`], [`forget_prefix`]).
async fn record_prefix(db: &Db, id: &str, attempt: i64, prefix: &str) -> DbResult<()> {
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
pub async fn forget_prefix(db: &Db, prefix: &str) -> DbResult<()> {
    sqlx::query("DELETE FROM attempt_prefixes WHERE prefix = $1")
        .bind(prefix)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// Prefixes that no attempt will publish: of `video` (or of every video when `None`), those of
/// attempts older than the video's current one, or of a video that is no longer processing,
/// never the published output. At most `limit`.
pub async fn stale_prefixes(db: &Db, video: Option<&str>, limit: i64) -> DbResult<Vec<String>> {
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
