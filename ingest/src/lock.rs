//! Upload locks, so two requests never write one upload at once. In-process always; on
//! PostgreSQL also a session advisory lock, so any ingest node can serve any request of an
//! upload without sticky sessions. A crashed holder's lock dies with its connection.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use lectern_core::db::{Backend, Db};
use lectern_core::error::ApiError;
use sqlx::pool::PoolConnection;
use sqlx::Any;

/// Hands out upload locks.
#[derive(Clone)]
pub struct Locks {
    local: Arc<Mutex<HashSet<String>>>,
    db: Db,
}

/// Held while a request writes an upload; released on drop.
pub struct Guard {
    local: Arc<Mutex<HashSet<String>>>,
    id: String,
    pg: Option<(PoolConnection<Any>, i64)>,
}

fn locked() -> ApiError {
    ApiError::new(
        StatusCode::LOCKED,
        "upload-locked",
        "another request is writing to this upload; wait for it to end, then resume from HEAD's offset",
    )
}

/// The advisory-lock key of an upload id (ids are 32 hex digits).
fn key(id: &str) -> i64 {
    u64::from_str_radix(id.get(..16).unwrap_or(id), 16).unwrap_or_else(|_| {
        id.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        })
    }) as i64
}

impl Locks {
    /// Locks for uploads in `db`.
    pub fn new(db: Db) -> Self {
        Self {
            local: Default::default(),
            db,
        }
    }

    /// Takes the lock of `id`, or answers 423 at once.
    pub async fn acquire(&self, id: &str) -> Result<Guard, ApiError> {
        if !self
            .local
            .lock()
            .expect("lock set poisoned")
            .insert(id.to_string())
        {
            return Err(locked());
        }
        let mut guard = Guard {
            local: self.local.clone(),
            id: id.to_string(),
            pg: None,
        };
        if self.db.backend == Backend::Postgres {
            let k = key(id);
            let mut conn = self.db.pool.acquire().await?;
            let (ok,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
                .bind(k)
                .fetch_one(&mut *conn)
                .await?;
            if !ok {
                return Err(locked());
            }
            guard.pg = Some((conn, k));
        }
        Ok(guard)
    }
}

impl Guard {
    /// Releases the lock before the answer goes out, so the client's next request (to this
    /// node or another) finds it free; dropping the guard releases it too, a moment later.
    pub async fn release(mut self) {
        if let Some((conn, k)) = self.pg.take() {
            unlock(conn, k).await;
        }
    }
}

async fn unlock(mut conn: PoolConnection<Any>, k: i64) {
    let res = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(k)
        .execute(&mut *conn)
        .await;
    if res.is_err() {
        // Closing the session releases every lock it holds.
        let _ = conn.close().await;
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.local
            .lock()
            .expect("lock set poisoned")
            .remove(&self.id);
        if let Some((conn, k)) = self.pg.take() {
            tokio::spawn(unlock(conn, k));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_stable_and_spread() {
        assert_eq!(super::key("00000000000000010000000000000000"), 1);
        assert_ne!(super::key("abc"), super::key("abd"));
    }
}
