//! The course/progress module beside the origin: courses, lessons (each pointing at a video),
//! enrollments, lesson playback for enrolled learners, and watch progress with write-behind.
//!
//! Every query is scoped by the caller's org; another org's rows answer 404. Learners see the
//! courses they are enrolled in; instructors and admins manage their org's courses; operators
//! run the platform and have no access to org content.

pub mod cache;
pub mod progress;

use lectern_core::error::Code;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use lectern_core::auth::{Auth, Claims, HasKeys, Keys, Role};
use lectern_core::db::Db;
use lectern_core::error::{ApiError, ApiJson};
use lectern_core::page::PageQuery;
use lectern_core::{new_id, now_ms, rfc3339};
use lectern_origin::Signer;
use serde::Deserialize;
use serde_json::{json, Value};

/// What the LMS routes need.
#[derive(Clone)]
pub struct LmsState {
    /// Database.
    pub db: Db,
    /// Token keys.
    pub keys: Keys,
    /// The origin's URL signer (only origin signs URLs).
    pub signer: Signer,
    /// Configured external base URL.
    pub public_url: Option<String>,
    /// Seconds a playback URL outlives the video's duration.
    pub grace_s: i64,
    /// Progress write-behind buffer.
    pub progress: Arc<progress::Buffer>,
    /// Who may send progress for which lesson (hot path of every heartbeat).
    pub access: Arc<AccessCache>,
    /// Coalesce heartbeats in memory (true) or write each one at once (the naive baseline).
    pub write_behind: bool,
}

impl HasKeys for LmsState {
    fn keys(&self) -> &Keys {
        &self.keys
    }
}

/// The `/api/v1` course, lesson, enrollment and progress routes.
pub fn router(state: LmsState) -> Router {
    Router::new()
        .route("/api/v1/courses", post(create_course).get(list_courses))
        .route(
            "/api/v1/courses/{id}",
            get(get_course).patch(patch_course).delete(delete_course),
        )
        .route(
            "/api/v1/courses/{id}/lessons",
            post(create_lesson).get(list_lessons),
        )
        .route(
            "/api/v1/courses/{id}/enrollments",
            post(enroll).get(list_enrollments),
        )
        .route(
            "/api/v1/courses/{id}/enrollments/{user}",
            axum::routing::delete(unenroll),
        )
        .route("/api/v1/courses/{id}/progress", get(course_progress))
        .route("/api/v1/courses/{id}/report", get(course_report))
        .route(
            "/api/v1/lessons/{id}",
            get(get_lesson).patch(patch_lesson).delete(delete_lesson),
        )
        .route("/api/v1/lessons/{id}/playback", get(lesson_playback))
        .route("/api/v1/lessons/{id}/progress", post(post_progress))
        .route("/api/v1/me/continue", get(continue_watching))
        .with_state(state)
}

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
type AccessKey = (String, String, String);

/// What a permitted heartbeat needs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Access {
    course_id: String,
    duration_s: Option<f64>,
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

    async fn get(&self, k: &AccessKey) -> Option<Access> {
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

    async fn put(&self, k: AccessKey, a: Access) {
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

fn member(c: &Claims) -> Result<(), ApiError> {
    if c.role == Role::Operator {
        return Err(ApiError::forbidden(
            "operators run the platform; use a token of the org's instructors, admins or learners",
        ));
    }
    Ok(())
}

fn manager(c: &Claims) -> Result<(), ApiError> {
    if c.can_manage_videos() {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "this needs an instructor or admin token of the course's org",
        ))
    }
}

fn not_enrolled() -> ApiError {
    ApiError::forbidden("you are not enrolled in this course; ask an instructor to enroll you")
}

#[derive(sqlx::FromRow)]
struct Course {
    id: String,
    title: String,
    description: String,
    created_by: String,
    created_at: i64,
    updated_at: i64,
}

impl Course {
    fn json(&self) -> Value {
        json!({
            "id": self.id, "title": self.title, "description": self.description,
            "created_by": self.created_by, "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
        })
    }
}

const COURSE_COLS: &str = "c.id, c.title, c.description, c.created_by, c.created_at, c.updated_at";

async fn course_row(db: &Db, id: &str, org: &str) -> Result<Course, ApiError> {
    sqlx::query_as::<_, Course>(sqlx::AssertSqlSafe(format!(
        "SELECT {COURSE_COLS} FROM courses c WHERE c.id = $1 AND c.org = $2"
    )))
    .bind(id)
    .bind(org)
    .fetch_optional(&db.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("course"))
}

async fn is_enrolled(db: &Db, course: &str, user: &str) -> Result<bool, ApiError> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT user_id FROM enrollments WHERE course_id = $1 AND user_id = $2")
            .bind(course)
            .bind(user)
            .fetch_optional(&db.pool)
            .await?;
    Ok(row.is_some())
}

/// The course, if the caller may see it: managers of its org, or learners enrolled in it.
async fn visible_course(st: &LmsState, c: &Claims, id: &str) -> Result<Course, ApiError> {
    member(c)?;
    let course = course_row(&st.db, id, &c.org).await?;
    if !c.can_manage_videos() && !is_enrolled(&st.db, id, &c.sub).await? {
        return Err(not_enrolled());
    }
    Ok(course)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCourse {
    title: String,
    #[serde(default)]
    description: String,
}

fn check_title(t: &str) -> Result<(), ApiError> {
    lectern_core::text::title(t).map(|_| ())
}

async fn create_course(
    State(st): State<LmsState>,
    Auth(c): Auth,
    ApiJson(b): ApiJson<NewCourse>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    manager(&c)?;
    check_title(&b.title)?;
    lectern_core::text::description(&b.description)?;
    let id = new_id();
    let now = now_ms();
    sqlx::query(
        "INSERT INTO courses (id, org, title, description, created_by, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $6)",
    )
    .bind(&id)
    .bind(&c.org)
    .bind(b.title.trim())
    .bind(&b.description)
    .bind(&c.sub)
    .bind(now)
    .execute(&st.db.pool)
    .await?;
    let course = course_row(&st.db, &id, &c.org).await?;
    Ok((StatusCode::CREATED, Json(course.json())))
}

async fn list_courses(
    State(st): State<LmsState>,
    Auth(c): Auth,
    Query(q): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    member(&c)?;
    let page = q.page(2)?;
    let (ts, id) = (page.int_key(0, i64::MAX)?, page.str_key(1)?);
    // Learners see only the courses they are enrolled in.
    let join = if c.can_manage_videos() {
        "".to_string()
    } else {
        "JOIN enrollments e ON e.course_id = c.id AND e.user_id = $5".to_string()
    };
    let mut rows = sqlx::query_as::<_, Course>(sqlx::AssertSqlSafe(format!(
        "SELECT {COURSE_COLS} FROM courses c {join} WHERE c.org = $1 \
         AND (c.created_at < $2 OR (c.created_at = $2 AND c.id < $3)) \
         ORDER BY c.created_at DESC, c.id DESC LIMIT $4"
    )))
    .bind(&c.org)
    .bind(ts)
    .bind(id)
    .bind(page.limit + 1);
    if !c.can_manage_videos() {
        rows = rows.bind(&c.sub);
    }
    let mut rows = rows.fetch_all(&st.db.pool).await?;
    let next = page.finish(&mut rows, |r| vec![json!(r.created_at), json!(r.id)]);
    Ok(Json(json!({
        "courses": rows.iter().map(Course::json).collect::<Vec<_>>(),
        "next_cursor": next,
    })))
}

async fn get_course(
    State(st): State<LmsState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let course = visible_course(&st, &c, &id).await?;
    let (lessons,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM lessons WHERE course_id = $1")
        .bind(&id)
        .fetch_one(&st.db.pool)
        .await?;
    let mut j = course.json();
    j["lessons"] = json!(lessons);
    Ok(Json(j))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CoursePatch {
    title: Option<String>,
    description: Option<String>,
}

async fn patch_course(
    State(st): State<LmsState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<CoursePatch>,
) -> Result<Json<Value>, ApiError> {
    member(&c)?;
    let course = course_row(&st.db, &id, &c.org).await?;
    manager(&c)?;
    let title = b.title.unwrap_or(course.title);
    check_title(&title)?;
    let description = b.description.unwrap_or(course.description);
    lectern_core::text::description(&description)?;
    sqlx::query(
        "UPDATE courses SET title = $1, description = $2, updated_at = $3 WHERE id = $4 AND org = $5",
    )
    .bind(title.trim())
    .bind(&description)
    .bind(now_ms())
    .bind(&id)
    .bind(&c.org)
    .execute(&st.db.pool)
    .await?;
    Ok(Json(course_row(&st.db, &id, &c.org).await?.json()))
}

async fn delete_course(
    State(st): State<LmsState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    member(&c)?;
    course_row(&st.db, &id, &c.org).await?;
    manager(&c)?;
    let mut tx = st.db.pool.begin().await?;
    for sql in [
        "DELETE FROM progress WHERE course_id = $1",
        "DELETE FROM enrollments WHERE course_id = $1",
        "DELETE FROM lessons WHERE course_id = $1",
        "DELETE FROM courses WHERE id = $1",
    ] {
        sqlx::query(sql).bind(&id).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    st.access.invalidate().await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(sqlx::FromRow)]
struct Lesson {
    id: String,
    course_id: String,
    title: String,
    position: i64,
    video_id: Option<String>,
    video_state: Option<String>,
    duration_s: Option<f64>,
}

impl Lesson {
    fn json(&self) -> Value {
        json!({
            "id": self.id, "course_id": self.course_id, "title": self.title,
            "position": self.position, "video_id": self.video_id,
            "video_state": self.video_state, "duration_s": self.duration_s,
        })
    }
}

const LESSON_FROM: &str = "SELECT l.id, l.course_id, l.title, l.position, l.video_id, \
    v.state AS video_state, v.duration_s FROM lessons l LEFT JOIN videos v ON v.id = l.video_id";

async fn lesson_row(db: &Db, id: &str, org: &str) -> Result<Lesson, ApiError> {
    sqlx::query_as::<_, Lesson>(sqlx::AssertSqlSafe(format!(
        "{LESSON_FROM} WHERE l.id = $1 AND l.org = $2"
    )))
    .bind(id)
    .bind(org)
    .fetch_optional(&db.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("lesson"))
}

/// The lesson, if the caller may see it (managers of its org, learners of its course).
async fn visible_lesson(st: &LmsState, c: &Claims, id: &str) -> Result<Lesson, ApiError> {
    member(c)?;
    let l = lesson_row(&st.db, id, &c.org).await?;
    if !c.can_manage_videos() && !is_enrolled(&st.db, &l.course_id, &c.sub).await? {
        return Err(not_enrolled());
    }
    Ok(l)
}

/// A video id from a request body must name a video of the caller's org.
async fn check_video(db: &Db, video: &str, org: &str) -> Result<(), ApiError> {
    match lectern_core::videos::get(db, video).await? {
        Some(v) if v.org == org => Ok(()),
        _ => Err(ApiError::new(
            Code::UnknownVideo,
            format!("no video {video} in your org; upload it first"),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewLesson {
    title: String,
    video_id: Option<String>,
    position: Option<i64>,
}

async fn create_lesson(
    State(st): State<LmsState>,
    Auth(c): Auth,
    Path(course): Path<String>,
    ApiJson(b): ApiJson<NewLesson>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    member(&c)?;
    course_row(&st.db, &course, &c.org).await?;
    manager(&c)?;
    check_title(&b.title)?;
    if let Some(v) = &b.video_id {
        check_video(&st.db, v, &c.org).await?;
    }
    let position = match b.position {
        Some(p) if p >= 0 => p,
        Some(_) => {
            return Err(ApiError::new(
                Code::InvalidPosition,
                "position must not be negative",
            ))
        }
        None => {
            let (max,): (Option<i64>,) =
                sqlx::query_as("SELECT MAX(position) FROM lessons WHERE course_id = $1")
                    .bind(&course)
                    .fetch_one(&st.db.pool)
                    .await?;
            max.map_or(0, |m| m + 1)
        }
    };
    let id = new_id();
    let now = now_ms();
    sqlx::query(
        "INSERT INTO lessons (id, org, course_id, title, position, video_id, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
    )
    .bind(&id)
    .bind(&c.org)
    .bind(&course)
    .bind(b.title.trim())
    .bind(position)
    .bind(&b.video_id)
    .bind(now)
    .execute(&st.db.pool)
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(lesson_row(&st.db, &id, &c.org).await?.json()),
    ))
}

async fn list_lessons(
    State(st): State<LmsState>,
    Auth(c): Auth,
    Path(course): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    visible_course(&st, &c, &course).await?;
    let page = q.page(2)?;
    let mut rows = sqlx::query_as::<_, Lesson>(sqlx::AssertSqlSafe(format!(
        "{LESSON_FROM} WHERE l.course_id = $1 AND l.org = $2 \
         AND (l.position > $3 OR (l.position = $3 AND l.id > $4)) ORDER BY l.position, l.id LIMIT $5"
    )))
    .bind(&course)
    .bind(&c.org)
    .bind(page.int_key(0, -1)?)
    .bind(page.str_key(1)?)
    .bind(page.limit + 1)
    .fetch_all(&st.db.pool)
    .await?;
    let next = page.finish(&mut rows, |r| vec![json!(r.position), json!(r.id)]);
    Ok(Json(json!({
        "lessons": rows.iter().map(Lesson::json).collect::<Vec<_>>(),
        "next_cursor": next,
    })))
}

async fn get_lesson(
    State(st): State<LmsState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(visible_lesson(&st, &c, &id).await?.json()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LessonPatch {
    title: Option<String>,
    position: Option<i64>,
    /// `null` detaches the video.
    #[serde(default, deserialize_with = "some_or_null")]
    video_id: Option<Option<String>>,
}

fn some_or_null<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

async fn patch_lesson(
    State(st): State<LmsState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<LessonPatch>,
) -> Result<Json<Value>, ApiError> {
    member(&c)?;
    let l = lesson_row(&st.db, &id, &c.org).await?;
    manager(&c)?;
    let title = b.title.unwrap_or(l.title);
    check_title(&title)?;
    let position = b.position.unwrap_or(l.position);
    if position < 0 {
        return Err(ApiError::new(
            Code::InvalidPosition,
            "position must not be negative",
        ));
    }
    let video = match b.video_id {
        Some(Some(v)) => {
            check_video(&st.db, &v, &c.org).await?;
            Some(v)
        }
        Some(None) => None,
        None => l.video_id,
    };
    sqlx::query(
        "UPDATE lessons SET title = $1, position = $2, video_id = $3, updated_at = $4 WHERE id = $5 AND org = $6",
    )
    .bind(title.trim())
    .bind(position)
    .bind(&video)
    .bind(now_ms())
    .bind(&id)
    .bind(&c.org)
    .execute(&st.db.pool)
    .await?;
    st.access.invalidate().await;
    Ok(Json(lesson_row(&st.db, &id, &c.org).await?.json()))
}

async fn delete_lesson(
    State(st): State<LmsState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    member(&c)?;
    lesson_row(&st.db, &id, &c.org).await?;
    manager(&c)?;
    let mut tx = st.db.pool.begin().await?;
    sqlx::query("DELETE FROM progress WHERE lesson_id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM lessons WHERE id = $1 AND org = $2")
        .bind(&id)
        .bind(&c.org)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    st.access.invalidate().await;
    Ok(StatusCode::NO_CONTENT)
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

async fn lesson_playback(
    State(st): State<LmsState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let l = visible_lesson(&st, &c, &id).await?;
    let video = match &l.video_id {
        Some(v) => lectern_core::videos::get(&st.db, v).await?,
        None => None,
    }
    .ok_or_else(|| {
        ApiError::new(
            Code::NoVideo,
            "this lesson has no video yet; an instructor must attach one",
        )
    })?;
    Ok(Json(lectern_origin::playback_json(
        &st.signer,
        st.public_url.as_deref(),
        &headers,
        &video,
        st.grace_s,
        &c,
    )?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollBody {
    user: String,
}

async fn enroll(
    State(st): State<LmsState>,
    Auth(c): Auth,
    Path(course): Path<String>,
    ApiJson(b): ApiJson<EnrollBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    member(&c)?;
    course_row(&st.db, &course, &c.org).await?;
    manager(&c)?;
    if b.user.is_empty() || b.user.len() > 200 {
        return Err(ApiError::new(
            Code::InvalidUser,
            "user must be the learner's token subject (1 to 200 characters)",
        ));
    }
    let now = now_ms();
    let res = sqlx::query(
        "INSERT INTO enrollments (course_id, user_id, org, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (course_id, user_id) DO NOTHING",
    )
    .bind(&course)
    .bind(&b.user)
    .bind(&c.org)
    .bind(now)
    .execute(&st.db.pool)
    .await?;
    let status = if res.rows_affected() == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({"course_id": course, "user": b.user}))))
}

async fn list_enrollments(
    State(st): State<LmsState>,
    Auth(c): Auth,
    Path(course): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    member(&c)?;
    course_row(&st.db, &course, &c.org).await?;
    manager(&c)?;
    let page = q.page(1)?;
    let mut rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT user_id, created_at FROM enrollments WHERE course_id = $1 AND org = $2 AND user_id > $3 \
         ORDER BY user_id LIMIT $4",
    )
    .bind(&course)
    .bind(&c.org)
    .bind(page.str_key(0)?)
    .bind(page.limit + 1)
    .fetch_all(&st.db.pool)
    .await?;
    let next = page.finish(&mut rows, |r| vec![json!(r.0)]);
    Ok(Json(json!({
        "enrollments": rows.iter().map(|(u, at)| json!({"user": u, "enrolled_at": rfc3339(*at)})).collect::<Vec<_>>(),
        "next_cursor": next,
    })))
}

async fn unenroll(
    State(st): State<LmsState>,
    Auth(c): Auth,
    Path((course, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    member(&c)?;
    course_row(&st.db, &course, &c.org).await?;
    manager(&c)?;
    let res = sqlx::query("DELETE FROM enrollments WHERE course_id = $1 AND user_id = $2")
        .bind(&course)
        .bind(&user)
        .execute(&st.db.pool)
        .await?;
    st.access.invalidate().await;
    if res.rows_affected() == 0 {
        return Err(ApiError::not_found("enrollment"));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProgressBody {
    position_s: f64,
    #[serde(default)]
    watched: Vec<(f64, f64)>,
}

async fn post_progress(
    State(st): State<LmsState>,
    Auth(c): Auth,
    Path(lesson): Path<String>,
    ApiJson(b): ApiJson<ProgressBody>,
) -> Result<StatusCode, ApiError> {
    member(&c)?;
    let key = (c.sub.clone(), c.org.clone(), lesson.clone());
    let access = match st.access.get(&key).await {
        Some(a) => a,
        None => {
            let l = visible_lesson(&st, &c, &lesson).await?;
            let a = Access {
                course_id: l.course_id,
                duration_s: l.duration_s,
            };
            st.access.put(key, a.clone()).await;
            a
        }
    };
    let limit = access.duration_s.map_or(86_400.0, |d| d + 5.0);
    let ok = |x: f64| x.is_finite() && (0.0..=limit).contains(&x);
    if !ok(b.position_s)
        || b.watched.len() > 1000
        || b.watched.iter().any(|(a, z)| !ok(*a) || !ok(*z) || z < a)
    {
        return Err(ApiError::new(Code::InvalidProgress,
            "position_s and watched [[start, end], …] must be seconds within the video, start ≤ end, at most 1000 ranges",
        ));
    }
    let h = progress::Heartbeat {
        user: &c.sub,
        lesson: &lesson,
        org: &c.org,
        course_id: &access.course_id,
        duration_s: access.duration_s,
        position_s: b.position_s,
        watched: b.watched,
    };
    if st.write_behind {
        st.progress.record(h);
    } else {
        st.progress.write_now(h).await?;
    }
    Ok(StatusCode::ACCEPTED)
}

async fn course_progress(
    State(st): State<LmsState>,
    Auth(c): Auth,
    Path(course): Path<String>,
) -> Result<Json<Value>, ApiError> {
    visible_course(&st, &c, &course).await?;
    let (total, done, watched): (i64, i64, f64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM lessons WHERE course_id = $1), \
         (SELECT COUNT(*) FROM progress WHERE course_id = $1 AND user_id = $2 AND completed = 1), \
         (SELECT COALESCE(SUM(watched_s), 0.0) FROM progress WHERE course_id = $1 AND user_id = $2)",
    )
    .bind(&course)
    .bind(&c.sub)
    .fetch_one(&st.db.pool)
    .await?;
    Ok(Json(json!({
        "course_id": course,
        "lessons": total,
        "completed": done,
        "percent": percent(done, total),
        "watched_s": watched,
    })))
}

fn percent(done: i64, total: i64) -> f64 {
    if total == 0 {
        0.0
    } else {
        (done as f64 * 1000.0 / total as f64).round() / 10.0
    }
}

#[derive(sqlx::FromRow)]
struct ReportRow {
    user_id: String,
    completed: i64,
    watched_s: f64,
    last_seen: Option<i64>,
}

async fn course_report(
    State(st): State<LmsState>,
    Auth(c): Auth,
    Path(course): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    member(&c)?;
    course_row(&st.db, &course, &c.org).await?;
    manager(&c)?;
    let page = q.page(1)?;
    let (total,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM lessons WHERE course_id = $1")
        .bind(&course)
        .fetch_one(&st.db.pool)
        .await?;
    // One query for the page of learners: enrollments joined to their progress, grouped.
    let mut rows = sqlx::query_as::<_, ReportRow>(
        "SELECT e.user_id, \
           COALESCE(SUM(CASE WHEN p.completed = 1 THEN 1 ELSE 0 END), 0) AS completed, \
           COALESCE(SUM(p.watched_s), 0.0) AS watched_s, MAX(p.updated_at) AS last_seen \
         FROM enrollments e LEFT JOIN progress p ON p.course_id = e.course_id AND p.user_id = e.user_id \
         WHERE e.course_id = $1 AND e.org = $2 AND e.user_id > $3 \
         GROUP BY e.user_id ORDER BY e.user_id LIMIT $4",
    )
    .bind(&course)
    .bind(&c.org)
    .bind(page.str_key(0)?)
    .bind(page.limit + 1)
    .fetch_all(&st.db.pool)
    .await?;
    let next = page.finish(&mut rows, |r| vec![json!(r.user_id)]);
    Ok(Json(json!({
        "course_id": course,
        "lessons": total,
        "learners": rows.iter().map(|r| json!({
            "user": r.user_id, "completed": r.completed, "percent": percent(r.completed, total),
            "watched_s": r.watched_s, "last_seen": r.last_seen.map(rfc3339),
        })).collect::<Vec<_>>(),
        "next_cursor": next,
    })))
}

#[derive(sqlx::FromRow)]
struct ContinueRow {
    lesson_id: String,
    course_id: String,
    lesson_title: String,
    course_title: String,
    position_s: f64,
    watched_s: f64,
    updated_at: i64,
}

async fn continue_watching(
    State(st): State<LmsState>,
    Auth(c): Auth,
    Query(q): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    member(&c)?;
    let page = q.page(2)?;
    let mut rows = sqlx::query_as::<_, ContinueRow>(
        "SELECT p.lesson_id, p.course_id, l.title AS lesson_title, c.title AS course_title, \
           p.position_s, p.watched_s, p.updated_at \
         FROM progress p JOIN lessons l ON l.id = p.lesson_id JOIN courses c ON c.id = p.course_id \
         JOIN enrollments e ON e.course_id = p.course_id AND e.user_id = p.user_id \
         WHERE p.org = $1 AND p.user_id = $2 AND p.completed = 0 \
           AND (p.updated_at < $3 OR (p.updated_at = $3 AND p.lesson_id < $4)) \
         ORDER BY p.updated_at DESC, p.lesson_id DESC LIMIT $5",
    )
    .bind(&c.org)
    .bind(&c.sub)
    .bind(page.int_key(0, i64::MAX)?)
    .bind(page.str_key(1)?)
    .bind(page.limit + 1)
    .fetch_all(&st.db.pool)
    .await?;
    let next = page.finish(&mut rows, |r| vec![json!(r.updated_at), json!(r.lesson_id)]);
    Ok(Json(json!({
        "lessons": rows.iter().map(|r| json!({
            "lesson_id": r.lesson_id, "course_id": r.course_id, "lesson_title": r.lesson_title,
            "course_title": r.course_title, "position_s": r.position_s, "watched_s": r.watched_s,
            "updated_at": rfc3339(r.updated_at),
        })).collect::<Vec<_>>(),
        "next_cursor": next,
    })))
}
