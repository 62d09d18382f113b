//! The queue's fairness ranks on `videos` rows (`queue_priority`); [`crate::queue`] decides
//! the ranks and mirrors them into apalis's table, this module reads and writes the rows.

use super::state;
use crate::db::{Db, DbResult};

/// Whether `org` has a queued job in priority class `class`.
pub async fn has_queued(db: &Db, org: &str, class: i64) -> DbResult<bool> {
    let (queued,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM (SELECT 1 FROM videos WHERE org = $1 AND state = $2 AND priority = $3 LIMIT 1) q",
    )
    .bind(org)
    .bind(state::QUEUED)
    .bind(class)
    .fetch_one(&db.pool)
    .await?;
    Ok(queued > 0)
}

/// An org's attempts running now plus those started since `since_ms`.
pub async fn recent_service(db: &Db, org: &str, since_ms: i64) -> DbResult<i64> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM videos WHERE org = $1 AND (state = $2 OR started_at >= $3)",
    )
    .bind(org)
    .bind(state::PROCESSING)
    .bind(since_ms)
    .fetch_one(&db.pool)
    .await?;
    Ok(n)
}

/// The priority classes in which `org` has queued jobs.
pub async fn queued_classes(db: &Db, org: &str) -> DbResult<Vec<i64>> {
    let rows: Vec<(i64,)> =
        sqlx::query_as("SELECT DISTINCT priority FROM videos WHERE org = $1 AND state = $2")
            .bind(org)
            .bind(state::QUEUED)
            .fetch_all(&db.pool)
            .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// A queued job as ranking sees it: id, effective priority, apalis task.
pub type Ranked = (String, i64, Option<String>);

/// The oldest queued job of `org` in `class` (the class's head).
pub async fn head(db: &Db, org: &str, class: i64) -> DbResult<Option<Ranked>> {
    Ok(sqlx::query_as(
        "SELECT id, queue_priority, task_id FROM videos WHERE org = $1 AND state = $2 AND priority = $3 \
         ORDER BY queued_at, id LIMIT 1",
    )
    .bind(org)
    .bind(state::QUEUED)
    .bind(class)
    .fetch_optional(&db.pool)
    .await?)
}

/// Queued jobs of `org` in `class`, other than `head`, not ranked `parked`.
pub async fn unparked(
    db: &Db,
    org: &str,
    class: i64,
    head: &str,
    parked: i64,
) -> DbResult<Vec<Ranked>> {
    Ok(sqlx::query_as(
        "SELECT id, queue_priority, task_id FROM videos WHERE org = $1 AND state = $2 AND priority = $3 \
         AND id <> $4 AND queue_priority <> $5",
    )
    .bind(org)
    .bind(state::QUEUED)
    .bind(class)
    .bind(head)
    .bind(parked)
    .fetch_all(&db.pool)
    .await?)
}

/// Sets a queued job's effective priority.
pub async fn set(db: &Db, id: &str, queue_priority: i64) -> DbResult<()> {
    sqlx::query("UPDATE videos SET queue_priority = $1 WHERE id = $2 AND state = $3")
        .bind(queue_priority)
        .bind(id)
        .bind(state::QUEUED)
        .execute(&db.pool)
        .await?;
    Ok(())
}
