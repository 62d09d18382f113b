//! Captions: `PUT /api/v1/videos/{id}/captions/{lang}` takes a WebVTT file from the org's
//! instructors and admins, `DELETE` removes it. Each upload is stored with a one-entry HLS
//! subtitle playlist under a fresh revision folder (`videos/{id}/{token}/subs-{lang}/`), and the
//! origin lists every track in the master as an `EXT-X-MEDIA TYPE=SUBTITLES` rendition.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use lectern_core::auth::Auth;
use lectern_core::error::ApiError;
use lectern_core::error::Code;
use lectern_core::keys;
use lectern_core::videos::{self, Caption};
use lectern_wire::{playlist, webvtt};
use serde_json::{json, Value};

use crate::api::ApiState;

/// Largest caption file accepted.
pub const MAX_BYTES: usize = 5 * 1024 * 1024;

/// Query of the PUT: an optional display name.
#[derive(serde::Deserialize)]
pub struct CaptionQuery {
    label: Option<String>,
}

/// `PUT /api/v1/videos/{id}/captions/{lang}`.
pub async fn put(
    State(st): State<ApiState>,
    Auth(c): Auth,
    Path((id, lang)): Path<(String, String)>,
    Query(q): Query<CaptionQuery>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = body.map_err(|e| {
        ApiError::new(
            Code::TooLarge,
            format!("{}; caption files are limited to 5 MiB", e.body_text()),
        )
        .with_status(e.status())
    })?;
    let v = videos::get_in_org(&st.db, &id, &c.org).await?;
    c.require_manager()?;
    if !playlist::language(&lang) {
        return Err(ApiError::new(
            Code::InvalidLanguage,
            "the language must be a BCP 47 tag such as en, pt-BR or zh-Hant",
        ));
    }
    let ctype = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ctype.is_empty() && !ctype.starts_with("text/vtt") && !ctype.starts_with("text/plain") {
        return Err(ApiError::new(
            Code::UnsupportedMediaType,
            "send the captions as Content-Type: text/vtt",
        ));
    }
    if body.len() > MAX_BYTES {
        return Err(ApiError::new(
            Code::TooLarge,
            "caption files are limited to 5 MiB",
        ));
    }
    let label = q.label.unwrap_or_else(|| lang.clone());
    // The label is written into the master playlist: a quote or any control character (CR,
    // LF, …) could end its attribute or line and inject tags.
    playlist::label(&label)?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::new(Code::InvalidWebvtt, "WebVTT must be UTF-8 text"))?;
    let cues = webvtt::validate(text).map_err(|e| ApiError::new(Code::InvalidWebvtt, e))?;
    let duration = v.duration_s.ok_or_else(|| {
        ApiError::new(
            Code::DurationUnknown,
            "add captions once the video is processing or ready (its duration is not known yet)",
        )
    })?;
    let token = lectern_core::new_id();
    let dir = keys::captions_dir(&v.id, &token, &lang);
    st.store
        .put_bytes(&format!("{dir}{}", keys::CAPTIONS_FILE), body.clone())
        .await?;
    st.store
        .put_bytes(
            &format!("{dir}{}", keys::MEDIA_PLAYLIST),
            Bytes::from(playlist::subtitle_playlist(duration)),
        )
        .await?;
    // Older revisions stay in the store until the video is deleted: a player may still
    // hold a master playlist (cached up to a minute) that points at them.
    videos::captions::put(
        &st.db,
        &v.id,
        &Caption {
            lang: lang.clone(),
            label: label.clone(),
            token,
        },
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"video_id": v.id, "lang": lang, "label": label, "cues": cues})),
    ))
}

/// `DELETE /api/v1/videos/{id}/captions/{lang}`.
pub async fn delete(
    State(st): State<ApiState>,
    Auth(c): Auth,
    Path((id, lang)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let v = videos::get_in_org(&st.db, &id, &c.org).await?;
    c.require_manager()?;
    match videos::captions::delete(&st.db, &v.id, &lang).await? {
        Some(token) => {
            st.store
                .delete_prefix(&keys::revision(&v.id, &token))
                .await?;
            Ok(StatusCode::NO_CONTENT)
        }
        None => Err(ApiError::not_found("caption track")),
    }
}

/// `GET /api/v1/videos/{id}/captions`.
pub async fn list(
    State(st): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let v = videos::get_in_org(&st.db, &id, &c.org).await?;
    c.require_manager()?;
    let tracks = videos::captions::list(&st.db, &v.id).await?;
    Ok(Json(json!({
        "captions": tracks.iter().map(|t| json!({"lang": t.lang, "label": t.label})).collect::<Vec<_>>(),
    })))
}
