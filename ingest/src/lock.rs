//! Upload locks, so two requests never write one upload at once, across processes and nodes,
//! without sticky sessions, and without holding a database connection while bytes stream.
//!
//! In-process: a set of ids, so a second request on this node gets 423 without a query. Across
//! nodes: a *lease* on the upload's row (`lease_owner`, `lease_token`, `lease_expires`), taken
//! and released by single short statements on the shared pool, on SQLite and PostgreSQL alike,
//! and so also behind a transaction-pooling proxy (PgBouncer), where session advisory locks do
//! not work. A holder renews its lease every [`RENEW`]; every take bumps `lease_token`, and the
//! offset commit requires the token the writer read after taking it (fencing), so a former
//! holder that was paused past its lease can never move the offset. A holder that cannot renew
//! stops writing before its lease can run out. A crashed holder's lease runs out after
//! [`LEASE`]; a request that finds a lease not renewed for two periods waits for it to run out
//! and takes it, so a crash costs the client a few seconds, not a 423.

use lectern_core::error::Code;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lectern_core::db::Db;
use lectern_core::error::ApiError;
use lectern_core::now_ms;

/// How long a lease lasts without renewal.
pub const LEASE: Duration = Duration::from_secs(10);
/// How often a holder renews.
pub const RENEW: Duration = Duration::from_secs(2);
/// A holder stops writing this long before its last renewed lease would run out.
const SAFETY: Duration = Duration::from_millis(1500);

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
    token: i64,
    db: Db,
    renew: Option<tokio::task::JoinHandle<()>>,
    lost: Arc<AtomicBool>,
}

fn locked() -> ApiError {
    ApiError::new(Code::UploadLocked,
        "another request is writing to this upload; wait for it to end, then resume from HEAD's offset",
    )
    .with_header("retry-after", "1")
}

impl Locks {
    /// Locks for uploads in `db`.
    pub fn new(db: Db) -> Self {
        Self {
            local: Default::default(),
            db,
        }
    }

    /// Takes the lock of `id`, or answers 423 at once when a live writer holds it. Errors with
    /// 423 too when the upload does not exist (callers check existence for the 404 first).
    pub async fn acquire(&self, id: &str) -> Result<Guard, ApiError> {
        if !self
            .local
            .lock()
            .expect("lock set poisoned")
            .insert(id.to_string())
        {
            return Err(locked());
        }
        // From here the local slot is ours; a failure below gives it back when `slot` drops.
        let slot = LocalSlot {
            local: self.local.clone(),
            id: id.to_string(),
        };
        let token = match self.take(id).await? {
            Some(t) => t,
            None => {
                // Held elsewhere. A lease its holder stopped renewing (a crash) runs out soon:
                // wait for that instead of sending the client away.
                let expires = self.expires(id).await?;
                let left = expires - now_ms();
                let stale = left < (LEASE - 2 * RENEW).as_millis() as i64;
                if !stale || left > LEASE.as_millis() as i64 {
                    return Err(locked());
                }
                tokio::time::sleep(Duration::from_millis(left.max(0) as u64 + 50)).await;
                self.take(id).await?.ok_or_else(locked)?
            }
        };
        std::mem::forget(slot);
        let lost = Arc::new(AtomicBool::new(false));
        let renew = tokio::spawn(renew(self.db.clone(), id.to_string(), token, lost.clone()));
        Ok(Guard {
            local: self.local.clone(),
            id: id.to_string(),
            token,
            db: self.db.clone(),
            renew: Some(renew),
            lost,
        })
    }

    /// Takes the lease if it is free or ran out; returns the new token.
    async fn take(&self, id: &str) -> Result<Option<i64>, ApiError> {
        let now = now_ms();
        let row: Option<(i64,)> = sqlx::query_as(
            "UPDATE uploads SET lease_owner = $1, lease_token = lease_token + 1, lease_expires = $2 \
             WHERE id = $3 AND (lease_owner IS NULL OR lease_expires < $4) RETURNING lease_token",
        )
        .bind(lectern_core::new_id())
        .bind(now + LEASE.as_millis() as i64)
        .bind(id)
        .bind(now)
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(row.map(|r| r.0))
    }

    async fn expires(&self, id: &str) -> Result<i64, ApiError> {
        let row: Option<(i64,)> = sqlx::query_as("SELECT lease_expires FROM uploads WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.db.pool)
            .await?;
        Ok(row.map(|r| r.0).unwrap_or(i64::MAX))
    }
}

/// Renews the lease until aborted. When a renewal does not land in time (the database is
/// away, or someone took the lease over), the holder counts the lease as lost before it could
/// have run out, and its writes stop.
async fn renew(db: Db, id: String, token: i64, lost: Arc<AtomicBool>) {
    // The lease is valid until (the moment the last landed renewal was sent) + LEASE; a busy
    // pool may delay a renewal, but the writer stops before that moment minus SAFETY.
    let mut valid_until = tokio::time::Instant::now() + LEASE;
    loop {
        tokio::time::sleep(RENEW).await;
        let sent = tokio::time::Instant::now();
        let stop_at = valid_until - SAFETY;
        let res = tokio::time::timeout_at(
            stop_at,
            sqlx::query("UPDATE uploads SET lease_expires = $1 WHERE id = $2 AND lease_token = $3")
                .bind(now_ms() + LEASE.as_millis() as i64)
                .bind(&id)
                .bind(token)
                .execute(&db.pool),
        )
        .await;
        match res {
            Ok(Ok(r)) if r.rows_affected() == 1 => valid_until = sent + LEASE,
            // Taken over, or no renewal landed in time: stop writing.
            Ok(Ok(_)) | Err(_) => {
                lost.store(true, Ordering::Release);
                return;
            }
            Ok(Err(_)) if tokio::time::Instant::now() >= stop_at => {
                lost.store(true, Ordering::Release);
                return;
            }
            Ok(Err(_)) => {}
        }
    }
}

/// Gives back a local slot that was taken but never became a guard.
struct LocalSlot {
    local: Arc<Mutex<HashSet<String>>>,
    id: String,
}

impl Drop for LocalSlot {
    fn drop(&mut self) {
        self.local
            .lock()
            .expect("lock set poisoned")
            .remove(&self.id);
    }
}

impl Guard {
    /// The fencing token: the offset commit must carry it.
    pub fn token(&self) -> i64 {
        self.token
    }

    /// A flag that turns true once the lease may be lost; writers stop when it does.
    pub fn lost_flag(&self) -> Arc<AtomicBool> {
        self.lost.clone()
    }

    /// Releases the lock before the answer goes out, so the client's next request (to this
    /// node or another) finds it free; dropping the guard releases it too, a moment later.
    pub async fn release(mut self) {
        if let Some(r) = self.renew.take() {
            r.abort();
        }
        let _ = free(&self.db, &self.id, self.token).await;
    }
}

/// Frees the lease. When the database refuses the write (a full disk, a restart), it keeps
/// trying in the background until the lease would have run out anyway.
async fn free(db: &Db, id: &str, token: i64) -> Result<(), sqlx::Error> {
    let res = free_once(db, id, token).await;
    if res.is_err() {
        let (db, id) = (db.clone(), id.to_string());
        tokio::spawn(async move {
            let until = tokio::time::Instant::now() + LEASE;
            while tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if free_once(&db, &id, token).await.is_ok() {
                    return;
                }
            }
        });
    }
    res
}

async fn free_once(db: &Db, id: &str, token: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE uploads SET lease_owner = NULL, lease_expires = 0 WHERE id = $1 AND lease_token = $2",
    )
    .bind(id)
    .bind(token)
    .execute(&db.pool)
    .await
    .map(|_| ())
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.local
            .lock()
            .expect("lock set poisoned")
            .remove(&self.id);
        if let Some(r) = self.renew.take() {
            r.abort();
            let (db, id, token) = (self.db.clone(), self.id.clone(), self.token);
            tokio::spawn(async move {
                let _ = free(&db, &id, token).await;
            });
        }
    }
}
