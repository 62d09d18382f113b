//! The course/progress module beside the origin: courses, lessons (each pointing at a video),
//! enrollments, lesson playback for enrolled learners, and watch progress with write-behind.
//!
//! Every query is scoped by the caller's org; another org's rows answer 404. Learners see the
//! courses they are enrolled in; instructors and admins manage their org's courses; operators
//! run the platform and have no access to org content.

/// The SQL column `enrolled` (1 or 0): whether user `$user` is enrolled in course `$course`, the
/// check [`enrollments::is_enrolled`] makes on its own, for statements that read it with others.
macro_rules! enrolled_sql {
    ($course:literal, $user:literal) => {
        concat!(
            "CAST(CASE WHEN EXISTS (SELECT 1 FROM enrollments e WHERE e.course_id = ",
            $course,
            " AND e.user_id = ",
            $user,
            ") THEN 1 ELSE 0 END AS BIGINT) AS enrolled"
        )
    };
}

pub mod access;
pub mod cache;
mod courses;
mod enrollments;
mod lessons;
pub mod progress;
mod reports;

pub use access::{Access, AccessCache, Enrollments};
use courses::*;
use enrollments::*;
use lessons::*;
use progress::{get_progress, post_progress};
use reports::*;

use lectern_core::error::Code;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use lectern_core::auth::{Auth, Claims, HasKeys, Keys, Role};
use lectern_core::db::{Db, DbError, DbResult};
use lectern_core::error::{ApiError, ApiJson};
use lectern_core::page::PageQuery;
use lectern_core::readcache::{generation, json_response, LISTS};
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
        .route(
            "/api/v1/lessons/{id}/progress",
            post(post_progress).get(get_progress),
        )
        .route("/api/v1/me/continue", get(continue_watching))
        .with_state(state)
}

/// The read-cache key of a list or course answer: what it shows, to whom (every manager of the
/// org sees the same; a learner only what it is enrolled in) and which page.
fn read_key(what: &str, c: &Claims, q: &PageQuery) -> String {
    let who = if c.can_manage_videos() {
        "*"
    } else {
        c.sub.as_str()
    };
    format!(
        "{what}\u{1f}{}\u{1f}{who}\u{1f}{:?}\u{1f}{:?}\u{1f}{:?}",
        c.org, q.limit, q.cursor, q.state
    )
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
