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

use crate::db::{redact, Backend, Db, DbResult, Schema};
use crate::videos::ranking;

/// Explicit queue name (apalis would default to the Rust type name).
pub const QUEUE_NAME: &str = "lectern.transcode";
/// Attempts before apalis gives up on a job that keeps failing transiently.
pub const MAX_ATTEMPTS: usize = 5;
/// How often a worker proves it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// Heartbeats missed before a job is handed to another worker (30 s).
pub const MISSED_HEARTBEATS: usize = 3;

/// The job payload: which video to transcode, or which chunk of one of its attempts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TranscodeJob {
    /// Video id.
    pub video_id: String,
    /// A chunk task of a chunked attempt; `None` for the video's own task (which probes,
    /// and either encodes the whole source or plans its chunks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<ChunkTask>,
}

/// Which chunk a chunk task encodes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct ChunkTask {
    /// The attempt that planned it.
    pub attempt: i64,
    /// The chunk's position (see [`crate::videos::chunks`]).
    pub idx: i64,
}

/// A handle on the queue storage; cheap to clone.
#[derive(Clone)]
pub enum Queue {
    /// apalis-sqlite.
    Sqlite(SqliteStorage<TranscodeJob>),
    /// apalis-postgres.
    Postgres(PostgresStorage<TranscodeJob>),
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Queue::Sqlite(_) => "Queue(sqlite)",
            Queue::Postgres(_) => "Queue(postgres)",
        })
    }
}

impl Queue {
    /// Connects to the same database as [`crate::db::Db`] and prepares apalis's tables.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        Self::connect_with(url, 8).await
    }

    /// Like [`Queue::connect`] with a pool of `max_connections` (SQLite: at most 4).
    pub async fn connect_with(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        Self::open(url, max_connections, Schema::Apply).await
    }

    /// Like [`Queue::connect_with`], with apalis's tables (and the extensions they need)
    /// created or only checked.
    pub async fn open(url: &str, max_connections: u32, schema: Schema) -> anyhow::Result<Self> {
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
                match schema {
                    Schema::Apply => m.run(&pool).await?,
                    Schema::Check => {
                        let applied: Vec<(i64,)> =
                            sqlx::query_as("SELECT version FROM _apalis_migrations WHERE success")
                                .fetch_all(&pool)
                                .await
                                .map_err(|e| crate::db::no_schema("job queue", e))?;
                        let applied: Vec<i64> = applied.into_iter().map(|(v,)| v).collect();
                        crate::db::require_applied(&m, &applied, "job queue")?;
                    }
                }
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
                    .after_connect(|conn, _| Box::pin(crate::db::pg_session_setup(conn)))
                    .idle_timeout(crate::db::PG_IDLE_TIMEOUT)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await
                    .map_err(ctx)?;
                match schema {
                    Schema::Apply => {
                        for ext in ["pgcrypto", "hstore"] {
                            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE EXTENSION IF NOT EXISTS {ext}"))).execute(&pool).await.map_err(|e| {
                                anyhow::anyhow!("the queue needs the PostgreSQL extension {ext}; create it as a superuser: {e}")
                            })?;
                        }
                        PostgresStorage::setup(&pool).await?;
                    }
                    Schema::Check => {
                        let m = PostgresStorage::<()>::migrations();
                        let applied: Vec<(i64,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                            "SELECT version FROM {} WHERE success",
                            m.table_name
                        )))
                        .fetch_all(&pool)
                        .await
                        .map_err(|e| crate::db::no_schema("job queue", e))?;
                        let applied: Vec<i64> = applied.into_iter().map(|(v,)| v).collect();
                        crate::db::require_applied(&m, &applied, "job queue")?;
                    }
                }
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

    /// Queues a transcode of `video_id` at effective priority `queue_priority` (from
    /// [`placement`]) and returns the apalis task id.
    pub async fn enqueue(&self, video_id: &str, queue_priority: i64) -> anyhow::Result<String> {
        self.push(
            TranscodeJob {
                video_id: video_id.to_string(),
                chunk: None,
            },
            queue_priority,
        )
        .await
    }

    /// Queues the chunk tasks of an attempt at the priority of the video's own task, under
    /// the same class and org fairness; the `first` ones (chunk 0 and the audio, which make
    /// the lecture playable) one step ahead of the rest, within the class.
    pub async fn enqueue_chunks(
        &self,
        video_id: &str,
        attempt: i64,
        first: &[i64],
        rest: &[i64],
        queue_priority: i64,
    ) -> anyhow::Result<()> {
        let ahead = if queue_priority.rem_euclid(ROUND_MAX + 1) < ROUND_MAX {
            queue_priority + 1
        } else {
            queue_priority
        };
        for (list, qp) in [(first, ahead), (rest, queue_priority)] {
            for &idx in list {
                let job = TranscodeJob {
                    video_id: video_id.to_string(),
                    chunk: Some(ChunkTask { attempt, idx }),
                };
                self.push(job, qp).await?;
            }
        }
        Ok(())
    }

    async fn push(&self, job: TranscodeJob, queue_priority: i64) -> anyhow::Result<String> {
        let id = ulid::Ulid::generate();
        let task = TaskBuilder::new(job)
            .task_id(TaskId::from_ulid(id))
            .priority(queue_priority as usize)
            .max_attempts(MAX_ATTEMPTS)
            .build();
        match self {
            Queue::Sqlite(s) => s.clone().push_task(task).await?,
            Queue::Postgres(s) => s.clone().push_task(task).await?,
        }
        PUSHED.notify_waiters();
        Ok(id.to_string())
    }
}

/// Woken whenever this process queues a job, so a worker in the same process (the embedded
/// default, or a worker queueing a lecture's chunks) picks it up at once instead of at its
/// next poll; workers elsewhere still poll.
pub static PUSHED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Rounds beyond this share the last place in their class; it is also the round of a parked
/// job (see [`placement`]).
const ROUND_MAX: i64 = 999_999;

/// The apalis priority of a job in priority class `class` and fairness round `round`: the
/// class always wins; within a class a lower round goes first.
pub fn effective_priority(class: i64, round: i64) -> i64 {
    class.clamp(0, 1000) * (ROUND_MAX + 1) + ROUND_MAX - round.clamp(0, ROUND_MAX)
}

/// The priority of a parked job: behind every org's head in its class, ahead of lower classes.
fn parked(class: i64) -> i64 {
    effective_priority(class, ROUND_MAX)
}

// Fairness without rewriting the queue. Within a class an org's jobs run oldest first, so
// only each org's oldest queued job of a class (its *head*) competes with other orgs: it gets
// round = the org's recent service (its running attempts plus those it started within
// `FAIR_SHARE_WINDOW_MS`), so an org holding fewer workers goes first, and among orgs that
// hold none the one served least lately goes first: a burst takes turns one job per org.
// (Counting running attempts alone made idle orgs tie at round 0 on a busy single slot, and
// the tie went to whichever head was queued first: first come, first served.) Every other
// queued job is *parked* at the back of its class. Keeping that true costs a few single-row
// writes per event, whatever the backlog: an enqueue places one job, and a start (or a class
// change) re-ranks the org's heads, one per class, and promotes the next job. No statement
// touches more than one job row, and none runs in a transaction, so enqueues and starts of
// one org can never deadlock.

/// Where a new job of `org` in `class` goes: the head of its class (round = the org's recent
/// service) when the org has nothing queued there yet, else parked behind it.
pub async fn placement(db: &Db, org: &str, class: i64) -> DbResult<i64> {
    if ranking::has_queued(db, org, class).await? {
        return Ok(parked(class));
    }
    Ok(effective_priority(class, running(db, org).await?))
}

/// How far back an org's started attempts count towards its fairness round.
const FAIR_SHARE_WINDOW_MS: i64 = 15 * 60 * 1000;

/// An org's recent service: attempts running now, plus those started within the window.
async fn running(db: &Db, org: &str) -> DbResult<i64> {
    ranking::recent_service(db, org, crate::now_ms() - FAIR_SHARE_WINDOW_MS).await
}

/// Re-ranks `org`'s heads after its recent service or a job's class changed: in each class
/// with queued jobs, the oldest becomes (or stays) the head at round = recent service, and any other
/// job still ranked as a head is parked.
pub async fn refresh_heads(db: &Db, org: &str) -> DbResult<()> {
    let running = running(db, org).await?;
    for class in ranking::queued_classes(db, org).await? {
        let Some((head, qp, task)) = ranking::head(db, org, class).await? else {
            continue;
        };
        let want = effective_priority(class, running);
        if qp != want {
            set_queue_priority(db, &head, task.as_deref(), want).await?;
        }
        for (id, _, task) in ranking::unparked(db, org, class, &head, parked(class)).await? {
            set_queue_priority(db, &id, task.as_deref(), parked(class)).await?;
        }
    }
    Ok(())
}

/// Sets one queued job's effective priority, in Lectern's table and in apalis's.
async fn set_queue_priority(db: &Db, id: &str, task: Option<&str>, qp: i64) -> DbResult<()> {
    ranking::set(db, id, qp).await?;
    let Some(task) = task else { return Ok(()) };
    let jobs = match db.backend {
        Backend::Sqlite => "Jobs",
        Backend::Postgres => "apalis.jobs",
    };
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {jobs} SET priority = $1 WHERE id = $2 AND status IN ('Pending', 'Failed')"
    )))
    .bind(qp)
    .bind(task)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Marks apalis's row of worker `name` as alive, as apalis's own heartbeat does; a draining
/// worker calls it, since apalis stops beating once it takes no new jobs.
pub async fn keep_worker_alive(db: &Db, name: &str) -> anyhow::Result<()> {
    let sql = match db.backend {
        Backend::Postgres => "UPDATE apalis.workers SET last_seen = now() WHERE id = $1",
        Backend::Sqlite => {
            "UPDATE Workers SET last_seen = CAST(strftime('%s', 'now') AS INTEGER) WHERE id = $1"
        }
    };
    sqlx::query(sql).bind(name).execute(&db.pool).await?;
    Ok(())
}

/// Deletes finished rows of this queue (done, killed, or failed for good) whose `done_at` is
/// older than `retention`, at most `limit` per call, and then workers apalis registered that
/// have not been seen for as long and hold no row. Returns the jobs deleted. The videos keep
/// their state and history; only apalis's bookkeeping goes.
pub async fn sweep_finished(db: &Db, retention: Duration, limit: i64) -> anyhow::Result<u64> {
    let secs = retention.as_secs() as i64;
    let finished =
        "(status IN ('Done', 'Killed') OR (status = 'Failed' AND attempts >= max_attempts))";
    let (jobs, workers) = match db.backend {
        Backend::Postgres => (
            format!(
                "DELETE FROM apalis.jobs WHERE id IN (SELECT id FROM apalis.jobs WHERE job_type = $1 \
                 AND {finished} AND done_at < now() - make_interval(secs => $2::float8) LIMIT $3)"
            ),
            "DELETE FROM apalis.workers w WHERE w.last_seen < now() - make_interval(secs => $1::float8) \
             AND NOT EXISTS (SELECT 1 FROM apalis.jobs j WHERE j.lock_by = w.id)"
                .to_string(),
        ),
        Backend::Sqlite => (
            format!(
                "DELETE FROM Jobs WHERE id IN (SELECT id FROM Jobs WHERE job_type = $1 \
                 AND {finished} AND done_at < CAST(strftime('%s', 'now') AS INTEGER) - $2 LIMIT $3)"
            ),
            "DELETE FROM Workers WHERE last_seen < CAST(strftime('%s', 'now') AS INTEGER) - $1 \
             AND NOT EXISTS (SELECT 1 FROM Jobs j WHERE j.lock_by = Workers.id)"
                .to_string(),
        ),
    };
    let n = sqlx::query(sqlx::AssertSqlSafe(jobs))
        .bind(QUEUE_NAME)
        .bind(secs)
        .bind(limit)
        .execute(&db.pool)
        .await?
        .rows_affected();
    sqlx::query(sqlx::AssertSqlSafe(workers))
        .bind(secs)
        .execute(&db.pool)
        .await?;
    Ok(n)
}

/// Runs [`sweep_finished`] every ten minutes until `stop` is set, in batches so a backlog of a
/// million rows never holds a long lock.
pub async fn run_sweeper(
    db: Db,
    retention: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        loop {
            match sweep_finished(&db, retention, 5000).await {
                Ok(n) if n >= 5000 => continue,
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(jobs = n, "swept finished queue rows");
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "queue retention sweep failed; retrying later");
                    break;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(600)) => {}
            _ = stop.wait_for(|v| *v) => return,
        }
    }
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
