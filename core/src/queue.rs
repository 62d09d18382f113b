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

use crate::db::{redact, Backend};

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
        let ctx = |e: sqlx::Error| anyhow::anyhow!("queue database {}: {e}", redact(url));
        match Backend::of_url(url)? {
            Backend::Sqlite => {
                let opts = SqliteConnectOptions::from_str(url)
                    .map_err(ctx)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(Duration::from_secs(10));
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
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
                    .max_connections(8)
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

    /// Queues a transcode of `video_id`; higher `priority` runs first.
    pub async fn enqueue(&self, video_id: &str, priority: i64) -> anyhow::Result<()> {
        let task = TaskBuilder::new(TranscodeJob {
            video_id: video_id.to_string(),
        })
        .task_id(TaskId::from_ulid(ulid::Ulid::generate()))
        .priority(priority.max(0) as usize)
        .max_attempts(MAX_ATTEMPTS)
        .build();
        match self {
            Queue::Sqlite(s) => s.clone().push_task(task).await?,
            Queue::Postgres(s) => s.clone().push_task(task).await?,
        }
        Ok(())
    }
}
