//! `/api/v1`: video status and playback URLs.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use lectern_core::auth::{Auth, HasKeys, Keys, Role};
use lectern_core::db::Db;
use lectern_core::error::ApiError;
use lectern_core::videos::{self, state};
use lectern_origin::Signer;
use serde_json::{json, Value};

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
        "eta_s": Value::Null,
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
