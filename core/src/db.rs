//! Database access for Lectern's own tables through sqlx's `Any` driver, so every query is
//! written once for SQLite and PostgreSQL (`$N` placeholders work on both).

use std::str::FromStr;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::AnyPool;

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
                    }
                    Ok(())
                })
            })
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
            Backend::Postgres => Some(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(batch_connections.max(1))
                    .acquire_timeout(std::time::Duration::from_secs(10))
                    .connect(url)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!("cannot connect to the database at {}: {e}", redact(url))
                    })?,
            ),
            Backend::Sqlite => None,
        };
        let db = Db { pool, backend, pg };
        db.migrate().await?;
        Ok(db)
    }

    /// Applies pending migrations for this backend.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let mut m = match self.backend {
            Backend::Sqlite => sqlx::migrate!("../migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("../migrations/postgres"),
        };
        m.dangerous_set_table_name(MIGRATIONS_TABLE);
        m.run(&self.pool).await?;
        Ok(())
    }
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
