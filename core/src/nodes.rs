//! The registry of transcode worker processes that operators see: each process upserts its
//! row every heartbeat; the running jobs come from the videos they hold.

use serde::Serialize;

use crate::db::{Db, DbResult};
use crate::now_ms;

/// A worker process as operators see it.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    /// `host/pid`, as in the job list's `worker`.
    pub name: String,
    /// Concurrent transcode slots.
    pub slots: i64,
    /// When it started, epoch ms.
    pub started_at: i64,
    /// Its last heartbeat, epoch ms.
    pub last_seen: i64,
}

/// Records a heartbeat of worker `name`.
pub async fn heartbeat(db: &Db, name: &str, slots: usize, started_at: i64) -> DbResult<()> {
    sqlx::query(
        "INSERT INTO transcode_nodes (name, slots, started_at, last_seen) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (name) DO UPDATE SET slots = excluded.slots, last_seen = excluded.last_seen",
    )
    .bind(name)
    .bind(slots as i64)
    .bind(started_at)
    .bind(now_ms())
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Removes a worker that stopped cleanly.
pub async fn remove(db: &Db, name: &str) -> DbResult<()> {
    sqlx::query("DELETE FROM transcode_nodes WHERE name = $1")
        .bind(name)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// Workers seen within `window_ms`, newest first; older rows (dead processes) are pruned.
pub async fn list(db: &Db, window_ms: i64) -> DbResult<Vec<Node>> {
    let cutoff = now_ms() - window_ms;
    // A dead process's row goes after ten windows, so the list does not grow for ever.
    sqlx::query("DELETE FROM transcode_nodes WHERE last_seen < $1")
        .bind(cutoff - 9 * window_ms)
        .execute(&db.pool)
        .await?;
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT name, slots, started_at, last_seen FROM transcode_nodes ORDER BY started_at DESC, name",
    )
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, slots, started_at, last_seen)| Node {
            name,
            slots,
            started_at,
            last_seen,
        })
        .collect())
}

/// The videos each worker is transcoding now: (worker, video id, org, progress, fps).
pub async fn running(db: &Db) -> DbResult<Vec<crate::videos::Running>> {
    crate::videos::running(db).await
}
