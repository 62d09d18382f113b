//! Database access for Lectern's own tables through sqlx's `Any` driver, so every query is
//! written once for SQLite and PostgreSQL (`$N` placeholders work on both).

use std::str::FromStr;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::AnyPool;

/// A failed database step. Data-layer functions return it; the HTTP edge turns it into an
/// [`ApiError`](crate::error::ApiError) (see its `From<DbError>`), the worker into a retry.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The statement failed: connection, constraint, full disk.
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    /// The row the step needs is gone (or belongs to another org).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A fenced write lost its race: the row moved since the caller read it.
    #[error("{0} changed meanwhile")]
    Moved(&'static str),
}

/// The result of a data-layer function.
pub type DbResult<T> = Result<T, DbError>;

/// A transaction over Lectern's tables, for a step that spans several tables' owners.
pub type Tx = sqlx::Transaction<'static, sqlx::Any>;

impl Db {
    /// Begins a transaction that several tables' owners write in (see [`Tx`]).
    pub async fn begin(&self) -> DbResult<Tx> {
        Ok(self.pool.begin().await?)
    }
}

/// Which database engine backs a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

impl Backend {
    /// The backend a URL names.
    pub fn of_url(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Backend::Postgres)
        } else {
            anyhow::bail!("unsupported database URL '{url}': use sqlite://PATH or postgres://…")
        }
    }
}

/// A pool over Lectern's own tables plus the backend it talks to.
#[derive(Debug, Clone)]
pub struct Db {
    /// The pool.
    pub pool: AnyPool,
    /// The engine behind it.
    pub backend: Backend,
    /// A typed PostgreSQL pool for statements the `Any` driver cannot express (array binds
    /// for `UNNEST` batch upserts); `None` on SQLite.
    pub pg: Option<sqlx::PgPool>,
}

/// Migration history table; apalis keeps `_sqlx_migrations` for its own tables.
pub const MIGRATIONS_TABLE: &str = "lectern_migrations";

/// What opening a database does about its schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// Apply pending migrations (needs DDL rights): `lectern migrate`, and `serve` by default.
    Apply,
    /// Only check that every migration is applied; fail with what to run if not
    /// (`serve --no-migrate`, for pods without DDL rights).
    Check,
}

/// Session settings for every PostgreSQL connection: the *server* notices a partitioned client
/// within about 30 s (keepalive probes after 10 s idle, 3 × 5 s; unacknowledged data after
/// 30 s) and ends its session, releasing its locks and its connection slot, instead of waiting
/// for the kernel's two-hour default. On a Unix socket PostgreSQL ignores them.
pub const PG_SESSION_SETTINGS: [&str; 4] = [
    "SET tcp_keepalives_idle = 10",
    "SET tcp_keepalives_interval = 5",
    "SET tcp_keepalives_count = 3",
    "SET tcp_user_timeout = 30000",
];

/// How long an idle pooled PostgreSQL connection is kept: short, so a quiet pod gives its
/// connections back to a shared server (or PgBouncer) within a minute.
pub const PG_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Applies [`PG_SESSION_SETTINGS`] to a fresh connection.
pub async fn pg_session_setup(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    for s in PG_SESSION_SETTINGS {
        sqlx::Executor::execute(&mut *conn, s).await?;
    }
    Ok(())
}

impl Db {
    /// Connects with the default pool size and brings the schema up to date.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        Self::connect_with(url, 16, 4).await
    }

    /// Connects with a pool of up to `max_connections` (SQLite: at most 4, since writers
    /// serialize anyway) and brings the schema up to date.
    /// `batch_connections` sizes the typed PostgreSQL pool of the batch writes (progress flushes).
    pub async fn connect_with(
        url: &str,
        max_connections: u32,
        batch_connections: u32,
    ) -> anyhow::Result<Self> {
        Self::open(url, max_connections, batch_connections, Schema::Apply).await
    }

    /// Like [`Db::connect_with`], with the schema applied or only checked. A
    /// `batch_connections` of 0 opens no batch pool (writes then go through the main pool).
    pub async fn open(
        url: &str,
        max_connections: u32,
        batch_connections: u32,
        schema: Schema,
    ) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url)?;
        if backend == Backend::Sqlite {
            if let Some(parent) = sqlite_path(url).and_then(|p| p.parent().map(|p| p.to_path_buf()))
            {
                if !parent.as_os_str().is_empty() {
                    std::fs::create_dir_all(&parent)?;
                }
            }
            if let Some(path) = sqlite_path(url) {
                owner_only(&path)?;
            }
        }
        let opts = AnyConnectOptions::from_str(url)?;
        let pool = AnyPoolOptions::new()
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL without a sync per commit: a power cut can only lose the newest
                        // commits, which makes an upload's offset smaller, never larger than
                        // the bytes the store holds durably (those are fsynced first).
                        sqlx::Executor::execute(
                            &mut *conn,
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000",
                        )
                        .await?;
                    } else {
                        for s in PG_SESSION_SETTINGS {
                            sqlx::Executor::execute(&mut *conn, s).await?;
                        }
                    }
                    Ok(())
                })
            })
            .idle_timeout((backend == Backend::Postgres).then_some(PG_IDLE_TIMEOUT))
            .max_connections(if backend == Backend::Sqlite { max_connections.min(4) } else { max_connections })
            // An embedded SQLite connection cannot drop away like a network one, so skip the
            // ping before every query (a round trip to its worker thread each time).
            .test_before_acquire(backend != Backend::Sqlite)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(opts)
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot connect to the database at {}: {e}", redact(url))
            })?;
        let pg = match backend {
            Backend::Postgres if batch_connections > 0 => Some(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(batch_connections)
                    .after_connect(|conn, _| Box::pin(pg_session_setup(conn)))
                    .idle_timeout(PG_IDLE_TIMEOUT)
                    .acquire_timeout(std::time::Duration::from_secs(10))
                    .connect(url)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!("cannot connect to the database at {}: {e}", redact(url))
                    })?,
            ),
            _ => None,
        };
        let db = Db { pool, backend, pg };
        match schema {
            Schema::Apply => db.migrate().await?,
            Schema::Check => db.check_schema().await?,
        }
        Ok(db)
    }

    fn migrator(&self) -> sqlx::migrate::Migrator {
        let mut m = match self.backend {
            Backend::Sqlite => sqlx::migrate!("../migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("../migrations/postgres"),
        };
        m.dangerous_set_table_name(MIGRATIONS_TABLE);
        m
    }

    /// Applies pending migrations for this backend.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        self.migrator().run(&self.pool).await?;
        Ok(())
    }

    /// Fails, saying what to run, unless every migration this binary knows is applied. A
    /// schema *ahead* of the binary (a rollout in progress) is accepted: migrations only add.
    pub async fn check_schema(&self) -> anyhow::Result<()> {
        let applied: Vec<(i64,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT version FROM {MIGRATIONS_TABLE} WHERE success"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| no_schema("Lectern", e))?;
        let applied: Vec<i64> = applied.into_iter().map(|(v,)| v).collect();
        require_applied(&self.migrator(), &applied, "Lectern")
    }
}

/// The error for a query of a migration table that failed: no schema there yet.
pub fn no_schema(what: &str, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!(
        "the database holds no {what} schema yet ({e}); run `lectern migrate` with the same \
         database settings first, or start `lectern serve` without --no-migrate"
    )
}

/// Fails, naming them, when migrations of `m` are missing from `applied` (versions).
pub fn require_applied(
    m: &sqlx::migrate::Migrator,
    applied: &[i64],
    what: &str,
) -> anyhow::Result<()> {
    let missing: Vec<String> = m
        .iter()
        .filter(|x| !x.migration_type.is_down_migration())
        .filter(|x| !applied.contains(&x.version))
        .map(|x| format!("{} {}", x.version, x.description))
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "the database's {what} schema is behind this binary: {} migration(s) not applied \
             ({}); run `lectern migrate` from this release (for example as the migrate Job of \
             the Kubernetes overlay), then start serve again",
            missing.len(),
            missing.join(", ")
        );
    }
    Ok(())
}

/// Creates the SQLite file readable by its owner only, or narrows an existing one: it holds
/// webhook secrets and upload metadata. SQLite gives its `-wal` and `-shm` files the same mode.
fn owner_only(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    for p in [
        path.to_path_buf(),
        path.with_extension("db-wal"),
        path.with_extension("db-shm"),
    ] {
        if let Ok(m) = std::fs::metadata(&p) {
            if m.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    Ok(())
}

/// The file path inside a `sqlite://` URL.
pub fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && path != ":memory:").then(|| std::path::PathBuf::from(path))
}

/// A URL with its password hidden, for error messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_kept_in_step() {
        let names = |dir: &str| {
            let mut v: Vec<String> = std::fs::read_dir(format!(
                "{}/../migrations/{dir}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
            v.sort();
            v
        };
        assert_eq!(names("sqlite"), names("postgres"));
    }

    #[test]
    fn urls() {
        assert_eq!(
            redact("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            sqlite_path("sqlite://./data/l.db?mode=rwc").unwrap(),
            std::path::PathBuf::from("./data/l.db")
        );
        assert!(Backend::of_url("mysql://x").is_err());
    }
}
