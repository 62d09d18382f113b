//! `/api/v1` videos and the admin queue: list, status, rename, delete and playback URLs of
//! videos, the transcode jobs admins list, reprioritise, cancel and retry, and the workers.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use lectern_core::auth::{Auth, HasKeys, Keys, Role};
use lectern_core::db::Db;
use lectern_core::error::Code;
use lectern_core::error::{ApiError, ApiJson};
use lectern_core::videos::{self, VideoState};
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

fn job_json(v: &videos::Video) -> Value {
    let error = match (&v.error_code, &v.error_message) {
        (Some(code), Some(message)) if v.state == VideoState::Failed => {
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
        "progress": if v.state == VideoState::Ready { 1.0 } else { v.progress },
        "queued_at": v.queued_at.map(lectern_core::rfc3339),
        "started_at": v.started_at.map(lectern_core::rfc3339),
        "finished_at": v.finished_at.map(lectern_core::rfc3339),
        "error": error,
        "fps": if v.state == VideoState::Processing { v.encode_fps } else { None },
    })
}

/// A job with its queue position, ETA and chunk counts (the job list's view of a page of one).
async fn job_view(st: &ApiState, v: &videos::Video) -> Result<Value, ApiError> {
    Ok(job_views(st, std::slice::from_ref(v)).await?.remove(0))
}

/// The job list's views of a page: a constant number of statements whatever its length.
async fn job_views(st: &ApiState, page: &[videos::Video]) -> Result<Vec<Value>, ApiError> {
    let refs: Vec<&videos::Video> = page.iter().collect();
    let facts = videos::queue_facts(&st.db, &refs).await?;
    let mut chunks = chunk_counts(st, &refs).await?;
    let now = lectern_core::now_ms();
    Ok(page
        .iter()
        .map(|v| {
            let mut j = job_json(v);
            j["queue_position"] = json!(facts.position(v));
            j["eta_s"] = json!(facts.eta_s(v, now));
            if let Some(c) = chunks.remove(&v.id) {
                j["chunks"] = json!(c);
            }
            j
        })
        .collect())
}

/// `{total, done, workers}` of the videos of `page` being encoded in chunks (contract:
/// `chunks`), keyed by video.
async fn chunk_counts(
    st: &ApiState,
    page: &[&videos::Video],
) -> Result<std::collections::HashMap<String, videos::chunks::Counts>, ApiError> {
    let running: Vec<(&str, i64)> = page
        .iter()
        .filter(|v| v.state == VideoState::Processing)
        .map(|v| (v.id.as_str(), v.attempts))
        .collect();
    Ok(videos::chunks::counts_of(&st.db, &running).await?)
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

/// `GET /api/v1/admin/workers`: the transcode worker processes and what each runs (operators).
async fn workers(State(st): State<ApiState>, Auth(c): Auth) -> Result<Json<Value>, ApiError> {
    if c.role != Role::Operator {
        return Err(ApiError::forbidden(
            "the worker fleet is visible to operators only",
        ));
    }
    let window = lectern_core::queue::HEARTBEAT.as_millis() as i64
        * lectern_core::queue::MISSED_HEARTBEATS as i64;
    let now = lectern_core::now_ms();
    let running = lectern_core::nodes::running(&st.db).await?;
    let list: Vec<Value> = lectern_core::nodes::list(&st.db, window)
        .await?
        .into_iter()
        .map(|n| {
            let jobs: Vec<Value> = running
                .iter()
                .filter(|(w, ..)| *w == n.name)
                .map(|(_, id, org, progress, fps)| {
                    json!({"video_id": id, "org": org, "progress": progress, "fps": fps})
                })
                .collect();
            json!({
                "name": n.name,
                "slots": n.slots,
                "busy": jobs.len(),
                "alive": now - n.last_seen <= window,
                "started_at": lectern_core::rfc3339(n.started_at),
                "last_seen": lectern_core::rfc3339(n.last_seen),
                "running": jobs,
            })
        })
        .collect();
    Ok(Json(json!({ "workers": list })))
}

async fn jobs(
    State(st): State<ApiState>,
    Auth(c): Auth,
    Query(q): Query<JobsQuery>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&c)?;
    // An empty `?limit=` means the default, as on every other list.
    let limit = match q.limit.as_deref() {
        None | Some("") => 20,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=100).contains(l))
            .ok_or_else(|| {
                ApiError::new(
                    Code::InvalidLimit,
                    "limit must be a whole number from 1 to 100",
                )
            })?,
    };
    if let Some(s) = q.state.as_deref() {
        if !VideoState::parse(s).is_some_and(|s| VideoState::JOB.contains(&s)) {
            return Err(ApiError::new(
                Code::InvalidState,
                format!(
                    "state must be one of {}",
                    VideoState::names(&VideoState::JOB)
                ),
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
                    ApiError::new(
                        Code::InvalidCursor,
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
    let jobs = job_views(&st, &rows).await?;
    Ok(Json(json!({
        "jobs": jobs,
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
        Some(v)
            if (c.role == Role::Operator || v.org == c.org) && v.state != VideoState::Uploading =>
        {
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
        return Err(ApiError::new(
            Code::NotCancelable,
            format!(
                "the job is {}; only queued or processing jobs can be canceled",
                v.state
            ),
        ));
    }
    tracing::info!(video = %v.id, by = %c.sub, "job canceled");
    let v = job_of(&st, &c, &id).await?;
    Ok(Json(job_view(&st, &v).await?))
}

async fn retry_job(
    State(st): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let v = job_of(&st, &c, &id).await?;
    if v.state != VideoState::Failed && v.state != VideoState::Canceled {
        return Err(not_retryable(v.state.as_str()));
    }
    // The new task owns the queue entry; a task left from before the cancel is stale and skips.
    let qp = lectern_core::queue::placement(&st.db, &v.org, v.priority).await?;
    let task = st
        .queue
        .enqueue(&v.id, qp)
        .await
        .map_err(ApiError::unavailable)?;
    if !videos::retry(&st.db, &v.id, &task, qp).await? {
        return Err(not_retryable(v.state.as_str()));
    }
    tracing::info!(video = %v.id, by = %c.sub, "job retried");
    let v = job_of(&st, &c, &id).await?;
    Ok(Json(job_view(&st, &v).await?))
}

fn not_retryable(state: &str) -> ApiError {
    ApiError::new(
        Code::NotRetryable,
        format!("the job is {state}; only failed or canceled jobs can be retried"),
    )
}

/// Body of `PATCH /api/v1/admin/jobs/{id}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JobPatch {
    priority: i64,
}

/// Highest priority class an admin may set (replacements are 20, uploads 10, bulk 0).
const MAX_PRIORITY: i64 = 100;

async fn patch_job(
    State(st): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    body: Result<Json<JobPatch>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let v = job_of(&st, &c, &id).await?;
    let Json(p) = body.map_err(|e| {
        ApiError::new(
            Code::InvalidBody,
            format!("expected {{\"priority\": 0..{MAX_PRIORITY}}}: {e}"),
        )
    })?;
    if !(0..=MAX_PRIORITY).contains(&p.priority) {
        return Err(ApiError::new(Code::InvalidPriority,
            format!("priority must be a whole number from 0 to {MAX_PRIORITY} (bulk 0, upload 10, replacement 20)"),
        ));
    }
    if !videos::set_priority(&st.db, &v.id, p.priority).await? {
        return Err(ApiError::new(
            Code::NotQueued,
            format!(
                "the job is {}; only a queued job's priority can change",
                v.state
            ),
        ));
    }
    lectern_core::queue::refresh_heads(&st.db, &v.org).await?;
    tracing::info!(video = %v.id, by = %c.sub, priority = p.priority, "job priority changed");
    let v = job_of(&st, &c, &id).await?;
    Ok(Json(job_view(&st, &v).await?))
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
    /// The object store (to delete a video's objects).
    pub store: std::sync::Arc<dyn lectern_core::storage::ObjectStore>,
    /// This node's origin cache, dropped for a deleted video.
    pub origin_cache: Option<std::sync::Arc<lectern_origin::ObjectCache>>,
    /// Which learners may watch what (enrollments with the LMS, else the whole org); its
    /// caches are cleared when a video goes away.
    pub access: std::sync::Arc<dyn lectern_core::access::PlaybackAccess>,
    /// Command that purges a deleted video's path from the CDN.
    pub cdn_purge_command: Option<String>,
}

impl HasKeys for ApiState {
    fn keys(&self) -> &Keys {
        &self.keys
    }
}

/// The `/api/v1` routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route(
            "/api/v1/openapi.json",
            get(|| async {
                static DOC: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
                Json(DOC.get_or_init(crate::openapi::document).clone())
            }),
        )
        .route("/api/v1/videos", get(list_videos))
        .route(
            "/api/v1/videos/{id}",
            get(status).patch(rename_video).delete(delete_video),
        )
        .route("/api/v1/videos/{id}/playback", get(playback))
        .route("/api/v1/videos/{id}/captions", get(crate::captions::list))
        .route(
            "/api/v1/videos/{id}/captions/{lang}",
            axum::routing::put(crate::captions::put)
                .delete(crate::captions::delete)
                .layer(axum::extract::DefaultBodyLimit::max(
                    crate::captions::MAX_BYTES + 1,
                )),
        )
        .route("/api/v1/admin/jobs", get(jobs))
        .route("/api/v1/admin/jobs/{id}", axum::routing::patch(patch_job))
        .route("/api/v1/admin/jobs/{id}/cancel", post(cancel_job))
        .route("/api/v1/admin/jobs/{id}/retry", post(retry_job))
        .route("/api/v1/admin/workers", get(workers))
        .with_state(state)
}

async fn status(
    State(st): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    use lectern_core::statuscache::{Snapshot, STATUS};
    // Not from the timed read cache (behind a load balancer, a node still holding `processing`
    // after another said `ready` would show the state going backwards), but kept until the
    // database says the video changed: see statuscache.rs.
    let snap = match STATUS.get(&id) {
        Some(s) if s.video.org == c.org => s,
        _ => {
            let read_in = STATUS.begin();
            let (video, facts) = videos::get_in_org_with_queue_facts(&st.db, &id, &c.org).await?;
            let chunks = chunk_counts(&st, &[&video]).await?.remove(&video.id);
            let snap = Snapshot {
                video,
                facts: facts.into(),
                chunks,
            };
            STATUS.put(read_in, snap.clone());
            snap
        }
    };
    c.require_manager()?;
    let Snapshot {
        video: v,
        facts,
        chunks,
    } = snap;
    let (queue_position, eta_s) = (facts.position(&v), facts.eta_s(&v, lectern_core::now_ms()));
    let source = match (v.source_width, v.source_height, v.source_fps) {
        (Some(w), Some(h), Some(fps)) => json!({"width": w, "height": h, "fps": fps}),
        _ => Value::Null,
    };
    let error = match (&v.error_code, &v.error_message) {
        (Some(code), Some(message)) if v.state == VideoState::Failed => {
            json!({"code": code, "message": message})
        }
        _ => Value::Null,
    };
    let progress = match v.state {
        VideoState::Ready => 1.0,
        // Read from the upload itself, so ingest writes no extra row per chunk.
        VideoState::Uploading => lectern_ingest::upload_progress(&st.db, &v.id)
            .await?
            .unwrap_or(0.0),
        _ => v.progress,
    };
    // The poster sits beside the segments: unguessable, immutable, no signature needed.
    let poster_url = match (&v.poster_key, v.state) {
        (Some(key), VideoState::Ready) => lectern_core::keys::under_videos(key).map(|rest| {
            format!(
                "{}/v/{rest}",
                lectern_core::base_url(st.public_url.as_deref(), &headers)
            )
        }),
        _ => None,
    };
    let mut body = json!({
        "id": v.id,
        "state": v.state,
        "progress": progress,
        "queue_position": queue_position,
        "eta_s": eta_s,
        "title": v.title,
        "duration_s": v.duration_s,
        "source": source,
        "renditions": v.rendition_list(),
        // True from the moment the playback endpoint hands out a URL (while processing, once
        // the first segment of every rendition is encoded).
        "playable": v.playable_prefix().is_some(),
        "poster_url": poster_url,
        "attempts": v.attempts,
        "created_at": lectern_core::rfc3339(v.created_at),
        "error": error,
    });
    if let Some(c) = chunks {
        body["chunks"] = json!(c);
    }
    Ok(Json(body))
}

async fn playback(
    State(st): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let v = videos::get_in_org(&st.db, &id, &c.org).await?;
    match c.role {
        Role::Operator => {
            return Err(ApiError::forbidden(
                "operators run the platform; watch with a token of the video's org",
            ))
        }
        // Learners watch the videos of lessons in courses they are enrolled in.
        Role::Learner => {
            if !st.access.learner_may_watch(&c.org, &c.sub, &v.id).await? {
                return Err(ApiError::forbidden(
                    "you are not enrolled in a course with this video; ask an instructor to enroll you",
                ));
            }
        }
        Role::Instructor | Role::Admin => {}
    }
    Ok(Json(lectern_origin::playback_json(
        &st.signer,
        st.public_url.as_deref(),
        &headers,
        &v,
        st.grace_s,
        &c,
    )?))
}

async fn list_videos(
    State(st): State<ApiState>,
    Auth(c): Auth,
    Query(q): Query<lectern_core::page::PageQuery>,
) -> Result<Json<Value>, ApiError> {
    c.require_manager()?;
    if let Some(s) = q.state.as_deref() {
        if VideoState::parse(s).is_none() {
            return Err(ApiError::new(
                Code::InvalidState,
                format!(
                    "state must be one of {}",
                    VideoState::names(VideoState::ALL)
                ),
            ));
        }
    }
    let page = q.page(2)?;
    let after = match page.after {
        Some(_) => Some((page.int_key(0, 0)?, page.str_key(1)?)),
        None => None,
    };
    let mut rows =
        videos::list_in_org(&st.db, &c.org, q.state.as_deref(), page.limit + 1, after).await?;
    let next = page.finish(&mut rows, |v| vec![json!(v.created_at), json!(v.id)]);
    Ok(Json(json!({
        "videos": rows.iter().map(|v| json!({
            "id": v.id, "title": v.title, "state": v.state, "filename": v.filename,
            "duration_s": v.duration_s, "lesson": v.lesson,
            "progress": if v.state == VideoState::Ready { 1.0 } else { v.progress },
            "created_at": lectern_core::rfc3339(v.created_at),
        })).collect::<Vec<_>>(),
        "next_cursor": next,
    })))
}

/// Body of `PATCH /api/v1/videos/{id}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct VideoPatch {
    title: String,
}

async fn rename_video(
    State(st): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<VideoPatch>,
) -> Result<Json<Value>, ApiError> {
    let v = videos::get_in_org(&st.db, &id, &c.org).await?;
    c.require_manager()?;
    let title = lectern_core::text::title(&b.title)?;
    videos::set_title(&st.db, &v.id, title).await?;
    Ok(Json(json!({"id": v.id, "title": title})))
}

/// Deletes a video: cancels its job, removes the source, every rendition and the captions,
/// and unlinks it from lessons. Playlists answer 404 at once; a CDN may keep serving cached
/// segments until it is purged for `/v/{id}/` (see deploy/README.md).
async fn delete_video(
    State(st): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let v = videos::get_in_org(&st.db, &id, &c.org).await?;
    c.require_manager()?;
    if v.state == VideoState::Uploading {
        return Err(ApiError::new(
            Code::StillUploading,
            "the upload is still in progress; terminate it with DELETE /files/{id} instead",
        ));
    }
    // A running attempt sees the cancel within a second and removes its own prefix.
    videos::cancel(&st.db, &v.id).await?;
    st.store.delete(&v.source_key).await?;
    st.store
        .delete_prefix(&lectern_core::keys::video_root(&v.id))
        .await?;
    // Every owner removes its rows in one transaction: nothing points at a half-deleted video.
    let mut tx = st.db.begin().await?;
    lectern_core::lesson_links::unlink(&mut tx, &v.id).await?;
    videos::captions::delete_all(&mut tx, &v.id).await?;
    videos::chunks::delete_all(&mut tx, &v.id).await?;
    lectern_ingest::uploads::delete(&mut *tx, &v.id).await?;
    videos::delete(&mut tx, &v.id).await?;
    tx.commit().await?;
    let purge = format!("/v/{}/", v.id);
    if let Some(c) = &st.origin_cache {
        c.invalidate_prefix(&lectern_core::keys::video_root(&v.id));
    }
    // Heartbeats for its lessons must stop counting at once, on every API node.
    st.access.invalidate().await;
    tracing::info!(video = %v.id, by = %c.sub, purge = %purge, "video deleted; purge the CDN for this prefix");
    metrics::counter!("lectern_videos_deleted_total").increment(1);
    let data = json!({"video_id": v.id, "title": v.title, "purge_path": purge});
    lectern_core::webhooks::emit(&st.db, &v.org, "video.deleted", data).await?;
    if let Some(cmd) = st.cdn_purge_command.clone() {
        tokio::spawn(purge_cdn(cmd, purge, v.id.clone()));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Runs the operator's purge command for a deleted video's path; failures are logged (the
/// objects are gone, so a CDN copy only lingers until its own expiry).
async fn purge_cdn(cmd: String, path: String, video: String) {
    let out = tokio::process::Command::new(&cmd)
        .arg(&path)
        .env("LECTERN_PURGE_PATH", &path)
        .env("LECTERN_VIDEO_ID", &video)
        .stdin(std::process::Stdio::null())
        .output();
    match tokio::time::timeout(std::time::Duration::from_secs(60), out).await {
        Ok(Ok(o)) if o.status.success() => {
            tracing::info!(%video, %path, "CDN purged");
            metrics::counter!("lectern_cdn_purges_total", "outcome" => "ok").increment(1);
        }
        other => {
            let why = match other {
                Ok(Ok(o)) => format!(
                    "{}: {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out after 60 s".into(),
            };
            tracing::warn!(%video, %path, %cmd, %why, "CDN purge command failed; purge the path by hand");
            metrics::counter!("lectern_cdn_purges_total", "outcome" => "failed").increment(1);
        }
    }
}
