//! The per-node micro-cache of hot GET responses: learners' course and lesson lists, which
//! players and course pages repeat. (Not video status: behind a load balancer, a node still
//! holding a `processing` answer after another said `ready` would show the state going back;
//! `statuscache.rs` keeps those until the database says they changed.)
//!
//! Entries are response bodies, kept for a short TTL (while one request refreshes an expired
//! entry, the others get it for up to another TTL) and only while nothing has changed on
//! this node since they were read: every write request this node serves (other than progress
//! heartbeats) and every state change of its own workers that a lesson shows starts a new
//! generation, which retires every entry at once. A change made on another node (a transcode
//! worker elsewhere) shows after at most twice the TTL.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

static GENERATION: AtomicU64 = AtomicU64::new(0);
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the cache on or off for this process (`read_cache`; off only for comparisons).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// The current generation: read it before the database, and store the answer under it.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// Held by unit tests that bump or depend on the process-wide generation, which run in
/// parallel threads of one process.
#[cfg(test)]
pub(crate) static TEST_GENERATION: Mutex<()> = Mutex::new(());

/// Retires everything cached so far (after a write on this node).
pub fn changed() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// Course and lesson lists live a second (a lesson's `video_state` comes from the workers).
pub static LISTS: LazyLock<ReadCache> =
    LazyLock::new(|| ReadCache::new("course-reads", Duration::from_secs(1)));

/// Entries beyond this many are dropped all at once (a bound, not an eviction policy: the
/// working set of a node is its learners' active courses).
const MAX_ENTRIES: usize = 50_000;

/// JSON bodies by key, each valid for `ttl` within its generation.
pub struct ReadCache {
    name: &'static str,
    ttl: Duration,
    map: Mutex<HashMap<String, Entry>>,
    counters: OnceLock<(metrics::Counter, metrics::Counter)>,
}

struct Entry {
    at: Instant,
    generation: u64,
    body: Bytes,
    /// A request is reading a fresh answer; until it stores one (at most another TTL), the
    /// others get this one.
    refreshing: bool,
}

impl ReadCache {
    /// An empty cache reported as `cache="{name}"` in `lectern_cache_requests_total`.
    pub fn new(name: &'static str, ttl: Duration) -> Self {
        Self {
            name,
            ttl,
            map: Mutex::new(HashMap::new()),
            counters: OnceLock::new(),
        }
    }

    fn count(&self, hit: bool) {
        let (h, m) = self.counters.get_or_init(|| {
            (
                metrics::counter!("lectern_cache_requests_total", "cache" => self.name, "result" => "hit"),
                metrics::counter!("lectern_cache_requests_total", "cache" => self.name, "result" => "miss"),
            )
        });
        if hit {
            h.increment(1)
        } else {
            m.increment(1)
        }
    }

    /// The body stored under `key`, if still valid.
    pub fn get(&self, key: &str) -> Option<Bytes> {
        if !ENABLED.load(Ordering::Relaxed) {
            return None;
        }
        let now = generation();
        let found = {
            let mut map = self.map.lock().expect("read cache");
            match map.get_mut(key) {
                Some(e) if e.generation == now => {
                    let age = e.at.elapsed();
                    if age < self.ttl {
                        Some(e.body.clone())
                    } else if !e.refreshing {
                        // This caller reads afresh; the ones behind it keep getting this
                        // answer meanwhile, so an expiry costs one query, not a stampede.
                        e.refreshing = true;
                        None
                    } else if age < self.ttl * 2 {
                        Some(e.body.clone())
                    } else {
                        None
                    }
                }
                _ => None,
            }
        };
        self.count(found.is_some());
        found
    }

    /// Stores `body` as read in generation `read_in` (taken before the reads it came from).
    pub fn put(&self, key: String, read_in: u64, body: Bytes) {
        if read_in != generation() || !ENABLED.load(Ordering::Relaxed) {
            return;
        }
        let mut map = self.map.lock().expect("read cache");
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(
            key,
            Entry {
                at: Instant::now(),
                generation: read_in,
                body,
                refreshing: false,
            },
        );
    }

    /// Serializes `value`, stores it as read in generation `read_in` and answers it.
    pub fn answer(
        &self,
        key: String,
        read_in: u64,
        value: &serde_json::Value,
    ) -> axum::response::Response {
        let body = Bytes::from(serde_json::to_vec(value).expect("JSON values serialize"));
        self.put(key, read_in, body.clone());
        json_response(body)
    }
}

/// A `200 application/json` response with `body`.
pub fn json_response(body: Bytes) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_any_write_retires_them() {
        let _g = TEST_GENERATION.lock().unwrap_or_else(|e| e.into_inner());
        let c = ReadCache::new("t", Duration::from_millis(50));
        let g = generation();
        c.put("a".into(), g, Bytes::from_static(b"1"));
        assert_eq!(c.get("a").as_deref(), Some(&b"1"[..]));
        changed();
        assert_eq!(c.get("a"), None, "a write retires it");
        let g = generation();
        c.put("a".into(), g, Bytes::from_static(b"2"));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.get("a"), None, "expired: the first caller reads afresh");
        assert_eq!(
            c.get("a").as_deref(),
            Some(&b"2"[..]),
            "the others get the old answer while it does"
        );
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(c.get("a"), None, "but never past twice the TTL");
        let stale = generation();
        changed();
        c.put("a".into(), stale, Bytes::from_static(b"3"));
        assert_eq!(
            c.get("a"),
            None,
            "read before a write, stored after it: not kept"
        );
    }
}
