//! A bounded in-memory cache (by bytes) of immutable objects: VOD playlists, init segments and
//! hot media segments. Entries live at most `ttl`, so a video deleted on another origin node
//! stops being served from this one's memory within that time; the node that deletes a video
//! drops its entries at once.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use bytes::Bytes;
use lru::LruCache;

/// One cached object with its precomputed validators.
#[derive(Clone)]
pub struct Entry {
    /// The whole object.
    pub body: Bytes,
    /// Strong validator (quoted).
    pub etag: HeaderValue,
    /// HTTP date of the last change.
    pub last_modified: Option<HeaderValue>,
    inserted: Instant,
}

impl Entry {
    /// An entry for `body`.
    pub fn new(body: Bytes, etag: HeaderValue, last_modified: Option<HeaderValue>) -> Self {
        Self {
            body,
            etag,
            last_modified,
            inserted: Instant::now(),
        }
    }
}

struct Inner {
    map: LruCache<String, Entry>,
    bytes: usize,
}

/// The origin's object cache. Cheap to share: clone the `Arc` it lives in.
pub struct ObjectCache {
    inner: Mutex<Inner>,
    budget: usize,
    max_object: usize,
    ttl: Duration,
}

impl std::fmt::Debug for ObjectCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectCache")
            .field("budget", &self.budget)
            .field("max_object", &self.max_object)
            .finish_non_exhaustive()
    }
}

impl ObjectCache {
    /// A cache holding up to `budget` bytes of objects no larger than `max_object` each.
    pub fn new(budget: usize, max_object: usize, ttl: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner {
                map: LruCache::unbounded(),
                bytes: 0,
            }),
            budget,
            max_object: max_object.min(budget),
            ttl,
        }
    }

    /// Whether anything may be cached (a zero budget admits nothing).
    pub fn is_enabled(&self) -> bool {
        self.max_object > 0
    }

    /// Whether an object of `size` bytes may be cached.
    pub fn admits(&self, size: u64) -> bool {
        size as usize <= self.max_object
    }

    /// The entry for `key`, unless absent or older than the TTL.
    pub fn get(&self, key: &str) -> Option<Entry> {
        let mut g = self.inner.lock().expect("cache lock");
        let fresh = match g.map.get(key) {
            Some(e) if e.inserted.elapsed() <= self.ttl => return Some(e.clone()),
            Some(_) => false,
            None => return None,
        };
        if !fresh {
            if let Some(old) = g.map.pop(key) {
                g.bytes -= cost(key, &old);
            }
        }
        None
    }

    /// Stores an entry, evicting the least recently used ones to stay within the budget.
    pub fn insert(&self, key: &str, e: Entry) {
        if !self.admits(e.body.len() as u64) {
            return;
        }
        let c = cost(key, &e);
        let mut g = self.inner.lock().expect("cache lock");
        if let Some(old) = g.map.put(key.to_string(), e) {
            g.bytes -= cost(key, &old);
        }
        g.bytes += c;
        while g.bytes > self.budget {
            match g.map.pop_lru() {
                Some((k, old)) => g.bytes -= cost(&k, &old),
                None => break,
            }
        }
    }

    /// Drops every entry whose key starts with `prefix` (a deleted video's folder).
    pub fn invalidate_prefix(&self, prefix: &str) {
        let mut g = self.inner.lock().expect("cache lock");
        let keys: Vec<String> = g
            .map
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            if let Some(old) = g.map.pop(&k) {
                g.bytes -= cost(&k, &old);
            }
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.inner.lock().expect("cache lock").bytes
    }
}

/// What an entry counts against the budget: its body plus a little bookkeeping.
fn cost(key: &str, e: &Entry) -> usize {
    e.body.len() + key.len() + 128
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: usize) -> Entry {
        Entry::new(
            Bytes::from(vec![0u8; n]),
            HeaderValue::from_static("\"e\""),
            None,
        )
    }

    #[test]
    fn bounded_by_bytes_lru_and_ttl() {
        let c = ObjectCache::new(10_000, 4_000, Duration::from_secs(60));
        c.insert("a", entry(3_000));
        c.insert("b", entry(3_000));
        c.insert("big", entry(5_000));
        assert!(
            c.get("big").is_none(),
            "objects over max_object are not kept"
        );
        assert!(c.get("a").is_some());
        c.insert("c", entry(3_000));
        c.insert("d", entry(3_000));
        assert!(c.bytes() <= 10_000, "{}", c.bytes());
        assert!(c.get("b").is_none(), "least recently used goes first");
        assert!(c.get("a").is_some() && c.get("d").is_some());
        c.invalidate_prefix("d");
        assert!(c.get("d").is_none());
        let short = ObjectCache::new(10_000, 4_000, Duration::from_millis(0));
        short.insert("x", entry(10));
        std::thread::sleep(Duration::from_millis(2));
        assert!(short.get("x").is_none(), "expired");
        assert_eq!(short.bytes(), 0);
    }
}
