//! The transcode queue: apalis storage on SQLite (embedded) or PostgreSQL (production).
//! API and ingest nodes only push; worker nodes (the transcoder crate) consume.

use std::str::FromStr;
use std::time::Duration;

use apalis::prelude::{TaskBuilder, TaskId, TaskSink};
use apalis_postgres::PostgresStorage;
use apalis_sqlite::SqliteStorage;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

use crate::db::{redact, Backend, Db};
use crate::error::ApiError;
use crate::videos::state;

/// Explicit queue name (apalis would default to the Rust type name).
pub const QUEUE_NAME: &str = "lectern.transcode";
/// Attempts before apalis gives up on a job that keeps failing transiently.
pub const MAX_ATTEMPTS: usize = 5;
/// How often a worker proves it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// Heartbeats missed before a job is handed to another worker (30 s).
pub const MISSED_HEARTBEATS: usize = 3;

/// The job payload: which video to transcode.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TranscodeJob {
    /// Video id.
    pub video_id: String,
}

/// A handle on the queue storage; cheap to clone.
#[derive(Clone)]
pub enum Queue {
    /// apalis-sqlite.
    Sqlite(SqliteStorage<TranscodeJob>),
    /// apalis-postgres.
    Postgres(PostgresStorage<TranscodeJob>),
}

impl Queue {
    /// Connects to the same database as [`crate::db::Db`] and prepares apalis's tables.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        Self::connect_with(url, 8).await
    }

    /// Like [`Queue::connect`] with a pool of `max_connections` (SQLite: at most 4).
    pub async fn connect_with(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        let ctx = |e: sqlx::Error| anyhow::anyhow!("queue database {}: {e}", redact(url));
        match Backend::of_url(url)? {
            Backend::Sqlite => {
                let opts = SqliteConnectOptions::from_str(url)
                    .map_err(ctx)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(Duration::from_secs(10));
                let pool = SqlitePoolOptions::new()
                    .max_connections(max_connections.clamp(1, 4))
                    .connect_with(opts)
                    .await
                    .map_err(ctx)?;
                let mut m = SqliteStorage::<()>::migrations();
                // Lectern's own migrations use `lectern_migrations`; keep apalis's history apart.
                m.dangerous_set_table_name("_apalis_migrations");
                m.run(&pool).await?;
                let cfg = apalis_sqlite::Config::default()
                    .queue(QUEUE_NAME)
                    .batch_size(1)
                    .heartbeat_interval(HEARTBEAT)
                    .missed_heartbeats(MISSED_HEARTBEATS);
                Ok(Queue::Sqlite(SqliteStorage::new(&pool).with_config(cfg)))
            }
            Backend::Postgres => {
                let pool = PgPoolOptions::new()
                    .max_connections(max_connections.max(1))
                    .connect(url)
                    .await
                    .map_err(ctx)?;
                for ext in ["pgcrypto", "hstore"] {
                    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE EXTENSION IF NOT EXISTS {ext}"))).execute(&pool).await.map_err(|e| {
                        anyhow::anyhow!("the queue needs the PostgreSQL extension {ext}; create it as a superuser: {e}")
                    })?;
                }
                PostgresStorage::setup(&pool).await?;
                let cfg = apalis_postgres::Config::default()
                    .queue(QUEUE_NAME)
                    .batch_size(1)
                    .heartbeat_interval(HEARTBEAT)
                    .missed_heartbeats(MISSED_HEARTBEATS);
                Ok(Queue::Postgres(
                    PostgresStorage::new(&pool).with_config(cfg),
                ))
            }
        }
    }

    /// Queues a transcode of `video_id` in priority class `class` and returns the apalis task
    /// id. The task starts at the back of its class; [`rebalance`] gives it its fair place.
    pub async fn enqueue(&self, video_id: &str, class: i64) -> anyhow::Result<String> {
        let id = ulid::Ulid::generate();
        let task = TaskBuilder::new(TranscodeJob {
            video_id: video_id.to_string(),
        })
        .task_id(TaskId::from_ulid(id))
        .priority(effective_priority(class, ROUND_MAX) as usize)
        .max_attempts(MAX_ATTEMPTS)
        .build();
        match self {
            Queue::Sqlite(s) => s.clone().push_task(task).await?,
            Queue::Postgres(s) => s.clone().push_task(task).await?,
        }
        Ok(id.to_string())
    }
}

/// Rounds beyond this share the last place in their class.
const ROUND_MAX: i64 = 999_999;

/// The apalis priority of a job in priority class `class` and fairness round `round`: the
/// class always wins; within a class a lower round goes first.
pub fn effective_priority(class: i64, round: i64) -> i64 {
    class.clamp(0, 1000) * (ROUND_MAX + 1) + ROUND_MAX - round.clamp(0, ROUND_MAX)
}

/// Recomputes the effective priority of `org`'s queued jobs, in Lectern's table and in
/// apalis's, so that orgs take turns within a priority class.
///
/// An org's k-th queued job (0-based, oldest first within its class) gets round
/// `k + running`, where `running` counts the org's attempts in progress. apalis takes the
/// highest priority, then the oldest, so a job of an org with nothing running and nothing
/// ahead (round 0) passes every job of an org that already holds a worker. Called when a job
/// is queued, when one starts and when an admin changes a class; not when one finishes, so
/// an org that just had its turn stays behind the others until its next job starts.
pub async fn rebalance(db: &Db, org: &str) -> Result<(), ApiError> {
    let mut tx = db.pool.begin().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE videos SET queue_priority = r.qp FROM ( \
           SELECT id, priority * {scale} + {max} - (CASE WHEN rn + running > {max} THEN {max} ELSE rn + running END) AS qp \
           FROM (SELECT id, priority, ROW_NUMBER() OVER (PARTITION BY priority ORDER BY queued_at, id) - 1 AS rn, \
                        (SELECT COUNT(*) FROM videos WHERE org = $1 AND state = $3) AS running \
                 FROM videos WHERE org = $1 AND state = $2) q \
         ) r WHERE videos.id = r.id",
        scale = ROUND_MAX + 1,
        max = ROUND_MAX,
    )))
    .bind(org)
    .bind(state::QUEUED)
    .bind(state::PROCESSING)
    .execute(&mut *tx)
    .await?;
    let jobs = match db.backend {
        Backend::Sqlite => "Jobs",
        Backend::Postgres => "apalis.jobs",
    };
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {jobs} SET priority = v.queue_priority FROM videos AS v \
         WHERE {jobs}.id = v.task_id AND v.org = $1 AND v.state = $2 AND {jobs}.status IN ('Pending', 'Failed')"
    )))
    .bind(org)
    .bind(state::QUEUED)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_beats_round_and_lower_round_goes_first() {
        assert!(effective_priority(20, ROUND_MAX) > effective_priority(10, 0));
        assert!(effective_priority(10, 0) > effective_priority(10, 1));
        assert!(effective_priority(0, 0) < effective_priority(10, 5_000_000));
        assert_eq!(
            effective_priority(10, 5_000_000),
            effective_priority(10, ROUND_MAX)
        );
        // apalis stores the priority as a 32-bit integer on PostgreSQL.
        assert!(effective_priority(1000, 0) < i32::MAX as i64);
    }
}
