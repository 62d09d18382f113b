//! Video status answers kept until the database says they changed (PostgreSQL only).
//!
//! Admin dashboards poll every video's status every second, and a status read was a database
//! round trip each time. A time-to-live cache cannot hold it: behind a load balancer, a node
//! still holding `processing` after another node said `ready` shows the state going backwards.
//! So this cache is told, not timed: triggers on `videos` and `chunks` (migration 0016) send
//! `NOTIFY lectern_videos, '<video id>'` at every commit that touches a video, every API node
//! listens, and a notification retires that video's entry. A queued video's answer also holds
//! its place in the queue and its ETA, which another video's change of state, class or queue
//! time can move (the triggers prefix those notifications `q:`), so queued entries live only
//! while no such notification has arrived since they were read; a running video's progress
//! moves nobody's place.
//!
//! A write this node serves also retires its entries at once (each entry holds the
//! [`crate::readcache::generation`] it was read in), so a client that cancels a job and polls
//! the same node reads its own write without waiting for the notification.
//!
//! What it does not promise: another node answers from its entry until the notification
//! reaches it, which is after the commit by the time PostgreSQL needs to signal the listening
//! session and the listener task to run (well under a millisecond on an idle node). While the listening
//! connection is down, or before it has subscribed, nothing is cached; after a reconnect
//! everything cached before is dropped (notifications sent meanwhile are lost). An entry also
//! expires after [`TTL`], a bound for a listener that has not yet noticed its connection is gone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::videos::chunks::Counts;
use crate::videos::{QueueFacts, Video, VideoState};

/// The channel the triggers of migration 0016 notify on, with the video id as payload.
pub const CHANNEL: &str = "lectern_videos";

/// The payload prefix of a change that can move the queue.
const MOVES_QUEUE: &str = "q:";

/// The longest an entry is used: a safety net, not the mechanism.
pub const TTL: Duration = Duration::from_secs(5);

/// Entries beyond this many are dropped all at once.
const MAX_ENTRIES: usize = 50_000;

/// What a status answer is made from, as one statement read it.
#[derive(Clone)]
pub struct Snapshot {
    /// The video row.
    pub video: Video,
    /// Its place in the queue.
    pub facts: std::sync::Arc<QueueFacts>,
    /// Its chunk counts, when encoded in chunks.
    pub chunks: Option<Counts>,
}

struct Entry {
    at: Instant,
    /// [`StatusCache::seq`] when the read began.
    seq: u64,
    /// This node's write generation when the read began: a later write here retires it.
    generation: u64,
    snap: Snapshot,
}

/// When a read began, as [`StatusCache::begin`] saw it: pass it to [`StatusCache::put`].
#[derive(Clone, Copy, Debug)]
pub struct ReadStamp {
    seq: u64,
    generation: u64,
}

/// The node's status entries and what it has heard from the database.
pub struct StatusCache {
    /// True while the listener is subscribed: only then may anything be cached.
    live: AtomicBool,
    /// Counts notifications (and reconnects): a read that saw a lower number is older.
    seq: AtomicU64,
    inner: Mutex<Inner>,
    counters: OnceLock<(metrics::Counter, metrics::Counter)>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<String, Entry>,
    /// The `seq` of each video's last notification, so that a read that began before it is
    /// not stored after it.
    changed: HashMap<String, u64>,
    /// The `seq` of the last notification that could move the queue: queued entries read
    /// before it are stale.
    queue_moved: u64,
}

/// This process's status cache (empty and unused until a listener goes live).
pub static STATUS: LazyLock<StatusCache> = LazyLock::new(StatusCache::new);

impl Default for StatusCache {
    fn default() -> Self {
        Self::new()
    }
}

impl StatusCache {
    /// An empty cache that caches nothing until [`StatusCache::went_live`].
    pub fn new() -> Self {
        Self {
            live: AtomicBool::new(false),
            seq: AtomicU64::new(0),
            inner: Mutex::new(Inner::default()),
            counters: OnceLock::new(),
        }
    }

    fn count(&self, hit: bool) {
        let (h, m) = self.counters.get_or_init(|| {
            (
                metrics::counter!("lectern_cache_requests_total", "cache" => "status", "result" => "hit"),
                metrics::counter!("lectern_cache_requests_total", "cache" => "status", "result" => "miss"),
            )
        });
        if hit {
            h.increment(1)
        } else {
            m.increment(1)
        }
    }

    /// Whether entries are kept (a listener is subscribed).
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// The stamp to pass to [`StatusCache::put`]: take it before the database.
    pub fn begin(&self) -> ReadStamp {
        ReadStamp {
            generation: crate::readcache::generation(),
            seq: self.seq.load(Ordering::Acquire),
        }
    }

    /// The snapshot of `id`, if one is held and nothing has retired it.
    pub fn get(&self, id: &str) -> Option<Snapshot> {
        if !self.is_live() {
            return None;
        }
        let found = {
            let generation = crate::readcache::generation();
            let inner = self.inner.lock().expect("status cache");
            inner.map.get(id).and_then(|e| {
                let queued = e.snap.video.state == VideoState::Queued;
                (e.at.elapsed() < TTL
                    && e.generation == generation
                    && (!queued || e.seq >= inner.queue_moved))
                    .then(|| e.snap.clone())
            })
        };
        self.count(found.is_some());
        found
    }

    /// Keeps `snap`, read after [`StatusCache::begin`] returned `stamp`, unless its video
    /// changed since, this node served a write since, or it is uploading (that progress lives
    /// in another table).
    pub fn put(&self, stamp: ReadStamp, snap: Snapshot) {
        if !self.is_live()
            || snap.video.state == VideoState::Uploading
            || stamp.generation != crate::readcache::generation()
        {
            return;
        }
        let read_in = stamp.seq;
        let mut inner = self.inner.lock().expect("status cache");
        if inner
            .changed
            .get(&snap.video.id)
            .is_some_and(|&at| at > read_in)
        {
            return;
        }
        if snap.video.state == VideoState::Queued && inner.queue_moved > read_in {
            return;
        }
        if inner.map.len() >= MAX_ENTRIES {
            inner.map.clear();
        }
        inner.map.insert(
            snap.video.id.clone(),
            Entry {
                at: Instant::now(),
                seq: read_in,
                generation: stamp.generation,
                snap,
            },
        );
    }

    /// The database says a video changed: `payload` is its id, prefixed `q:` when the change
    /// can move the queue.
    pub fn changed(&self, payload: &str) {
        let (id, moves_queue) = match payload.strip_prefix(MOVES_QUEUE) {
            Some(id) => (id, true),
            None => (payload, false),
        };
        let mut inner = self.inner.lock().expect("status cache");
        // Under the lock, so that a `put` either sees the new number or is removed here.
        let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        if moves_queue {
            inner.queue_moved = seq;
        }
        inner.map.remove(id);
        if inner.changed.len() >= MAX_ENTRIES {
            // Forgetting who changed when is safe only if nothing read before now is kept.
            inner.changed.clear();
            inner.map.clear();
        }
        inner.changed.insert(id.to_string(), seq);
    }

    /// The listener is subscribed (again): start from nothing, since notifications may have
    /// been missed while it was not.
    pub fn went_live(&self) {
        self.reset();
        self.live.store(true, Ordering::Release);
    }

    /// The listener lost its connection: cache nothing until it is back.
    pub fn went_dark(&self) {
        self.live.store(false, Ordering::Release);
        self.reset();
    }

    fn reset(&self) {
        let mut inner = self.inner.lock().expect("status cache");
        inner.queue_moved = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        inner.map.clear();
        inner.changed.clear();
    }
}

/// Listens on [`CHANNEL`] on a connection of its own (not one of the pools', which a held
/// listener would starve) and retires [`STATUS`] entries until `stop` turns true.
pub async fn run_listener(url: String, mut stop: tokio::sync::watch::Receiver<bool>) {
    use sqlx::postgres::{PgListener, PgPoolOptions};
    let cache = &*STATUS;
    loop {
        let subscribed = async {
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .after_connect(|c, _| Box::pin(crate::db::pg_session_setup(c)))
                .connect(&url)
                .await?;
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let got = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            l = subscribed => l,
        };
        let mut listener = match got {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "status cache: cannot listen for changes; retrying in 1 s");
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        cache.went_live();
        tracing::info!("status cache: listening for video changes");
        loop {
            let got = tokio::select! {
                _ = stop.wait_for(|s| *s) => {
                    cache.went_dark();
                    return;
                }
                got = listener.try_recv() => got,
            };
            match got {
                Ok(Some(n)) => cache.changed(n.payload()),
                // The connection was lost (and made again): what was said meanwhile is lost.
                Ok(None) => {
                    tracing::warn!(
                        "status cache: the listening connection was lost; starting over"
                    );
                    cache.went_live();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "status cache: listening failed; caching nothing until it is back");
                    cache.went_dark();
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: &str, state: VideoState) -> Snapshot {
        let video = Video {
            id: id.into(),
            org: "org".into(),
            owner: "owner".into(),
            title: None,
            lesson: None,
            filename: None,
            state,
            progress: 0.0,
            priority: 0,
            attempts: 1,
            worker: None,
            source_key: String::new(),
            duration_s: None,
            source_width: None,
            source_height: None,
            source_fps: None,
            renditions: None,
            output_prefix: None,
            error_code: None,
            error_message: None,
            queued_at: None,
            started_at: None,
            finished_at: None,
            created_at: 0,
            updated_at: 0,
            task_id: None,
            queue_priority: 0,
            encode_fps: None,
            poster_key: None,
            live_prefix: None,
        };
        Snapshot {
            video,
            facts: Default::default(),
            chunks: None,
        }
    }

    #[test]
    fn entries_live_until_their_video_or_the_queue_changes() {
        let _g = crate::readcache::TEST_GENERATION
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let c = StatusCache::new();
        let s = c.begin();
        c.put(s, snap("a", VideoState::Processing));
        assert!(
            c.get("a").is_none(),
            "nothing is kept before the listener is live"
        );
        c.went_live();
        let s = c.begin();
        c.put(s, snap("a", VideoState::Processing));
        c.put(s, snap("q", VideoState::Queued));
        c.put(s, snap("u", VideoState::Uploading));
        assert!(c.get("a").is_some());
        assert!(c.get("q").is_some());
        assert!(c.get("u").is_none(), "upload progress lives elsewhere");
        c.changed("b");
        assert!(c.get("a").is_some(), "another video's change leaves it");
        assert!(
            c.get("q").is_some(),
            "and a running video's progress moves nobody's place"
        );
        c.changed("q:b");
        assert!(c.get("a").is_some());
        assert!(c.get("q").is_none(), "a change of state moves the queue");
        let before = c.begin();
        c.changed("q:b");
        c.put(before, snap("q", VideoState::Queued));
        assert!(
            c.get("q").is_none(),
            "a queued answer read before the move is not kept"
        );
        c.changed("a");
        assert!(c.get("a").is_none(), "its own change retires it");
        let before = c.begin();
        c.changed("a");
        c.put(before, snap("a", VideoState::Ready));
        assert!(
            c.get("a").is_none(),
            "read before a change, stored after it: not kept"
        );
        let s = c.begin();
        c.put(s, snap("a", VideoState::Ready));
        assert!(c.get("a").is_some());
        crate::readcache::changed();
        assert!(
            c.get("a").is_none(),
            "a write served by this node retires it before any notification"
        );
        let before = c.begin();
        crate::readcache::changed();
        c.put(before, snap("a", VideoState::Ready));
        assert!(
            c.get("a").is_none(),
            "read before this node's write, stored after it: not kept"
        );
        let s = c.begin();
        c.put(s, snap("a", VideoState::Ready));
        assert!(c.get("a").is_some());
        c.went_dark();
        assert!(c.get("a").is_none(), "a lost listener retires everything");
        c.went_live();
        assert!(c.get("a").is_none(), "and nothing comes back with it");
    }
}
