//! `/api/v1`: video status and playback URLs.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use lectern_core::auth::{Auth, HasKeys, Keys, Role};
use lectern_core::db::Db;
use lectern_core::error::ApiError;
use lectern_core::videos::{self, state};
use lectern_origin::Signer;
use serde_json::{json, Value};

/// Query of `GET /api/v1/admin/jobs`.
#[derive(serde::Deserialize)]
struct JobsQuery {
    state: Option<String>,
    org: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

const JOB_STATES: [&str; 5] = [
    state::QUEUED,
    state::PROCESSING,
    state::READY,
    state::FAILED,
    state::CANCELED,
];

fn job_json(v: &videos::Video) -> Value {
    let error = match (&v.error_code, &v.error_message) {
        (Some(code), Some(message)) if v.state == state::FAILED => {
            json!({"code": code, "message": message})
        }
        _ => Value::Null,
    };
    json!({
        "id": v.id,
        "video_id": v.id,
        "org": v.org,
        "priority": v.priority,
        "state": v.state,
        "attempts": v.attempts,
        "worker": v.worker,
        "progress": if v.state == state::READY { 1.0 } else { v.progress },
        "queued_at": v.queued_at.map(lectern_core::rfc3339),
        "started_at": v.started_at.map(lectern_core::rfc3339),
        "finished_at": v.finished_at.map(lectern_core::rfc3339),
        "error": error,
    })
}

/// Admins act on their own org's jobs; operators on every org's.
fn require_admin(c: &lectern_core::auth::Claims) -> Result<(), ApiError> {
    match c.role {
        Role::Admin | Role::Operator => Ok(()),
        _ => Err(ApiError::forbidden(
            "the job queue is for admins and operators",
        )),
    }
}

async fn jobs(
    State(st): State<ApiState>,
    Auth(c): Auth,
    Query(q): Query<JobsQuery>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&c)?;
    let limit = match q.limit.as_deref() {
        None => 20,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=100).contains(l))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid-limit",
                    "limit must be a whole number from 1 to 100",
                )
            })?,
    };
    if let Some(s) = q.state.as_deref() {
        if !JOB_STATES.contains(&s) {
            return Err(ApiError::bad_request(
                "invalid-state",
                format!("state must be one of {}", JOB_STATES.join(", ")),
            ));
        }
    }
    let org = match (c.role, q.org.as_deref()) {
        (Role::Operator, o) => o.map(str::to_string),
        (_, Some(o)) if o != c.org => {
            return Err(ApiError::forbidden(
                "only operators may list other orgs' jobs",
            ))
        }
        _ => Some(c.org.clone()),
    };
    let after = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(cur) => {
            let (ts, id) = cur
                .split_once('.')
                .and_then(|(t, i)| t.parse::<i64>().ok().map(|t| (t, i.to_string())))
                .filter(|(_, i)| i.len() == 32 && i.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid-cursor",
                        "cursor must be a next_cursor value from this list",
                    )
                })?;
            Some((ts, id))
        }
    };
    let query = videos::JobQuery {
        org: org.as_deref(),
        state: q.state.as_deref(),
        limit: limit + 1,
        after: after.as_ref().map(|(t, i)| (*t, i.as_str())),
    };
    let mut rows = videos::list_jobs(&st.db, &query).await?;
    let next = (rows.len() as i64 > limit).then(|| {
        rows.truncate(limit as usize);
        rows.last().map(|v| format!("{}.{}", v.created_at, v.id))
    });
    Ok(Json(json!({
        "jobs": rows.iter().map(job_json).collect::<Vec<_>>(),
        "next_cursor": next.flatten(),
    })))
}

async fn job_of(
    st: &ApiState,
    c: &lectern_core::auth::Claims,
    id: &str,
) -> Result<videos::Video, ApiError> {
    require_admin(c)?;
    match videos::get(&st.db, id).await? {
        Some(v) if (c.role == Role::Operator || v.org == c.org) && v.state != state::UPLOADING => {
            Ok(v)
        }
        _ => Err(ApiError::not_found("job")),
    }
}

async fn cancel_job(
    State(st): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let v = job_of(&st, &c, &id).await?;
    if !videos::cancel(&st.db, &v.id).await? {
        return Err(ApiError::conflict(
            "not-cancelable",
            format!(
                "the job is {}; only queued or processing jobs can be canceled",
                v.state
            ),
        ));
    }
    tracing::info!(video = %v.id, by = %c.sub, "job canceled");
    let v = job_of(&st, &c, &id).await?;
    Ok(Json(job_json(&v)))
}

async fn retry_job(
    State(st): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let v = job_of(&st, &c, &id).await?;
    if !videos::retry(&st.db, &v.id).await? {
        return Err(ApiError::conflict(
            "not-retryable",
            format!(
                "the job is {}; only failed or canceled jobs can be retried",
                v.state
            ),
        ));
    }
    st.queue
        .enqueue(&v.id, v.priority)
        .await
        .map_err(ApiError::unavailable)?;
    tracing::info!(video = %v.id, by = %c.sub, "job retried");
    let v = job_of(&st, &c, &id).await?;
    Ok(Json(job_json(&v)))
}

/// What the API routes need.
#[derive(Clone)]
pub struct ApiState {
    /// Database.
    pub db: Db,
    /// Token keys.
    pub keys: Keys,
    /// The origin's URL signer.
    pub signer: Signer,
    /// Configured external base URL.
    pub public_url: Option<String>,
    /// Seconds a playback URL outlives the video's duration.
    pub grace_s: i64,
    /// The transcode queue (for retries).
    pub queue: lectern_core::queue::Queue,
}

impl HasKeys for ApiState {
    fn keys(&self) -> &Keys {
        &self.keys
    }
}

/// The `/api/v1` routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/videos/{id}", get(status))
        .route("/api/v1/videos/{id}/playback", get(playback))
        .route("/api/v1/admin/jobs", get(jobs))
        .route("/api/v1/admin/jobs/{id}/cancel", post(cancel_job))
        .route("/api/v1/admin/jobs/{id}/retry", post(retry_job))
        .with_state(state)
}

async fn status(
    State(st): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let v = videos::get_in_org(&st.db, &id, &c.org).await?;
    c.require_manager()?;
    let queue_position = videos::queue_position(&st.db, &v).await?;
    let source = match (v.source_width, v.source_height, v.source_fps) {
        (Some(w), Some(h), Some(fps)) => json!({"width": w, "height": h, "fps": fps}),
        _ => Value::Null,
    };
    let error = match (&v.error_code, &v.error_message) {
        (Some(code), Some(message)) if v.state == state::FAILED => {
            json!({"code": code, "message": message})
        }
        _ => Value::Null,
    };
    let progress = match v.state.as_str() {
        state::READY => 1.0,
        // Read from the upload itself, so ingest writes no extra row per chunk.
        state::UPLOADING => lectern_ingest::upload_progress(&st.db, &v.id)
            .await?
            .unwrap_or(0.0),
        _ => v.progress,
    };
    Ok(Json(json!({
        "id": v.id,
        "state": v.state,
        "progress": progress,
        "queue_position": queue_position,
        "eta_s": videos::eta_s(&v, lectern_core::now_ms()),
        "title": v.title,
        "duration_s": v.duration_s,
        "source": source,
        "renditions": v.rendition_list(),
        "poster_url": Value::Null,
        "attempts": v.attempts,
        "created_at": lectern_core::rfc3339(v.created_at),
        "error": error,
    })))
}

async fn playback(
    State(st): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let v = videos::get_in_org(&st.db, &id, &c.org).await?;
    // Until the LMS module decides enrollment, any member of the video's org may watch it.
    if c.role == Role::Operator {
        return Err(ApiError::forbidden(
            "operators run the platform; watch with a token of the video's org",
        ));
    }
    if v.state != state::READY {
        return Err(ApiError::conflict(
            "not-ready",
            format!(
                "the video is {}; poll GET /api/v1/videos/{id} until it is ready",
                v.state
            ),
        ));
    }
    let duration = v.duration_s.unwrap_or(0.0).ceil() as i64;
    let exp = chrono::Utc::now().timestamp() + duration + st.grace_s;
    let base = lectern_core::base_url(st.public_url.as_deref(), &headers);
    Ok(Json(json!({
        "url": st.signer.master_url(&base, &v.id, exp),
        "expires_at": lectern_core::rfc3339(exp * 1000),
    })))
}
