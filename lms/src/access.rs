//! Who may do what with a lesson: the two-tier heartbeat-permission cache, and playback
//! access by enrollment for the core video API.

use super::*;

/// Heartbeat permissions, (user, org, lesson) → the lesson's course and video duration, in
/// two tiers: in-process (30 s) and, with `redis_url`, Redis shared by every API node. Any
/// enrollment, lesson or course change clears both (through the Redis bus on every node), so a
/// revoked learner is refused from the next heartbeat.
pub struct AccessCache {
    ttl: Duration,
    map: Mutex<HashMap<AccessKey, (Access, Instant)>>,
    shared: Option<Arc<cache::SharedCache>>,
}

/// (user, org, lesson).
pub(crate) type AccessKey = (String, String, String);

/// What a permitted heartbeat needs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Access {
    pub(crate) course_id: String,
    pub(crate) duration_s: Option<f64>,
}

impl AccessCache {
    /// A cache whose entries live `ttl`, with an optional shared Redis tier.
    pub fn new(ttl: Duration, shared: Option<Arc<cache::SharedCache>>) -> Arc<Self> {
        let me = Arc::new(Self {
            ttl,
            map: Mutex::new(HashMap::new()),
            shared: shared.clone(),
        });
        if let Some(sh) = shared {
            let weak = Arc::downgrade(&me);
            sh.spawn_listener(move || {
                // Another node revoked something: neither tier may answer from before it.
                lectern_core::readcache::changed();
                if let Some(c) = weak.upgrade() {
                    c.clear_local();
                }
            });
        }
        me
    }

    fn count(result: &'static str) {
        metrics::counter!("lectern_cache_requests_total", "cache" => "lesson-access", "result" => result)
            .increment(1);
    }

    pub(crate) async fn get(&self, k: &AccessKey) -> Option<Access> {
        let local = {
            let map = self.map.lock().expect("access cache");
            map.get(k)
                .filter(|(_, at)| at.elapsed() < self.ttl)
                .map(|(a, _)| a.clone())
        };
        if local.is_some() {
            Self::count("hit");
            return local;
        }
        if let Some(sh) = &self.shared {
            let shared = sh
                .get(&format!("{}/{}/{}", k.1, k.0, k.2))
                .await
                .and_then(|v| serde_json::from_str::<Access>(&v).ok());
            if let Some(a) = shared {
                Self::count("hit-redis");
                self.put_local(k.clone(), a.clone());
                return Some(a);
            }
        }
        Self::count("miss");
        None
    }

    fn put_local(&self, k: AccessKey, a: Access) {
        let mut map = self.map.lock().expect("access cache");
        if map.len() >= 100_000 {
            map.clear();
        }
        map.insert(k, (a, Instant::now()));
    }

    pub(crate) async fn put(&self, k: AccessKey, a: Access) {
        if let Some(sh) = &self.shared {
            if let Ok(v) = serde_json::to_string(&a) {
                sh.set(&format!("{}/{}/{}", k.1, k.0, k.2), &v, self.ttl)
                    .await;
            }
        }
        self.put_local(k, a);
    }

    fn clear_local(&self) {
        self.map.lock().expect("access cache").clear();
    }

    /// Forgets everything, here and on every node (after a write that may revoke access).
    pub async fn invalidate(&self) {
        self.clear_local();
        if let Some(sh) = &self.shared {
            sh.invalidate().await;
        }
    }
}

/// Playback access by enrollment: a learner watches the videos of lessons in courses it is
/// enrolled in. Deleting a video clears the heartbeat cache on every node.
pub struct Enrollments {
    /// Database.
    pub db: Db,
    /// The heartbeat-permission cache the LMS shares.
    pub cache: Arc<AccessCache>,
}

#[async_trait::async_trait]
impl lectern_core::access::PlaybackAccess for Enrollments {
    async fn learner_may_watch(
        &self,
        org: &str,
        user: &str,
        video: &str,
    ) -> Result<bool, ApiError> {
        // Enrolled in some course of `org` with a lesson showing `video`.
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT l.id FROM lessons l JOIN enrollments e ON e.course_id = l.course_id \
             WHERE l.video_id = $1 AND l.org = $2 AND e.user_id = $3 LIMIT 1",
        )
        .bind(video)
        .bind(org)
        .bind(user)
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(row.is_some())
    }

    async fn invalidate(&self) {
        self.cache.invalidate().await;
    }
}
