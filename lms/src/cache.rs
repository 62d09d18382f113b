//! The shared cache tier and invalidation bus (optional, `LECTERN_REDIS_URL`).
//!
//! Entries live in Redis under a generation number (`lectern:access:g{N}:…`, 30 s TTL), so
//! invalidating is one `INCR` of the generation plus a `PUBLISH` on `lectern:invalidate`: every
//! API node clears its in-process tier on the message and builds keys with the new generation,
//! and the old entries simply expire. A node that misses a message (a dropped connection) reads
//! the old generation's entries for at most their TTL.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::StreamExt;
use redis::AsyncCommands;

const GEN_KEY: &str = "lectern:access:gen";
const CHANNEL: &str = "lectern:invalidate";

/// A Redis connection with the current generation.
pub struct SharedCache {
    client: redis::Client,
    conn: redis::aio::ConnectionManager,
    generation: AtomicU64,
}

/// The longest a request waits on Redis before going on without it.
const REDIS_WAIT: Duration = Duration::from_millis(250);

impl SharedCache {
    /// Connects and reads the current generation.
    pub async fn connect(url: &str) -> anyhow::Result<Arc<Self>> {
        let client = redis::Client::open(url)
            .map_err(|e| anyhow::anyhow!("invalid redis_url {url}: {e}"))?;
        let mut conn = redis::aio::ConnectionManager::new(client.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to Redis at {url}: {e}"))?;
        let generation: Option<u64> = conn.get(GEN_KEY).await?;
        Ok(Arc::new(Self {
            client,
            conn,
            generation: AtomicU64::new(generation.unwrap_or(0)),
        }))
    }

    fn key(&self, k: &str) -> String {
        format!(
            "lectern:access:g{}:{k}",
            self.generation.load(Ordering::Relaxed)
        )
    }

    /// A cached value, or `None` (also when Redis is unreachable: the database answers then).
    pub async fn get(&self, k: &str) -> Option<String> {
        let mut c = self.conn.clone();
        // A stalled Redis must not stall a heartbeat: past the bound the database answers.
        tokio::time::timeout(REDIS_WAIT, c.get::<_, Option<String>>(self.key(k)))
            .await
            .ok()
            .and_then(|r| r.ok())
            .flatten()
    }

    /// Stores a value for `ttl`.
    pub async fn set(&self, k: &str, v: &str, ttl: Duration) {
        let mut c = self.conn.clone();
        let _ = tokio::time::timeout(REDIS_WAIT, async {
            let _: Result<(), _> = c.set_ex(self.key(k), v, ttl.as_secs().max(1)).await;
        })
        .await;
    }

    /// Starts a new generation and tells every node.
    pub async fn invalidate(&self) {
        let mut c = self.conn.clone();
        let incr = tokio::time::timeout(REDIS_WAIT, c.incr::<_, _, u64>(GEN_KEY, 1))
            .await
            .unwrap_or_else(|_| {
                Err(redis::RedisError::from((
                    redis::ErrorKind::IoError,
                    "no answer from Redis in time",
                )))
            });
        match incr {
            Ok(g) => {
                self.generation.store(g, Ordering::Relaxed);
                let _ = tokio::time::timeout(REDIS_WAIT, async {
                    let _: Result<(), _> = c.publish(CHANNEL, g.to_string()).await;
                })
                .await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "redis invalidation failed; peers rely on the TTL")
            }
        }
    }

    /// Follows the invalidation channel until the cache is dropped, calling `on_invalidate`
    /// for every message; reconnects after errors.
    pub fn spawn_listener(self: &Arc<Self>, on_invalidate: impl Fn() + Send + Sync + 'static) {
        let me: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(cache) = me.upgrade() else { return };
                let client = cache.client.clone();
                drop(cache);
                match client.get_async_pubsub().await {
                    Ok(mut ps) => {
                        if ps.subscribe(CHANNEL).await.is_ok() {
                            let mut msgs = ps.on_message();
                            while let Some(m) = msgs.next().await {
                                let Some(cache) = me.upgrade() else { return };
                                if let Ok(Ok(g)) =
                                    m.get_payload::<String>().map(|p| p.parse::<u64>())
                                {
                                    cache.generation.fetch_max(g, Ordering::Relaxed);
                                }
                                on_invalidate();
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "redis subscription lost; retrying"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}
