//! Captions: `PUT /api/v1/videos/{id}/captions/{lang}` takes a WebVTT file from the org's
//! instructors and admins, `DELETE` removes it. Each upload is stored with a one-entry HLS
//! subtitle playlist under a fresh revision folder (`videos/{id}/{token}/subs-{lang}/`), and the
//! origin lists every track in the master as an `EXT-X-MEDIA TYPE=SUBTITLES` rendition.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use lectern_core::auth::Auth;
use lectern_core::error::{unprocessable, ApiError};
use lectern_core::videos::{self, Caption};
use serde_json::{json, Value};

use crate::api::ApiState;

/// Largest caption file accepted.
pub const MAX_BYTES: usize = 5 * 1024 * 1024;

/// Query of the PUT: an optional display name.
#[derive(serde::Deserialize)]
pub struct CaptionQuery {
    label: Option<String>,
}

fn valid_lang(l: &str) -> bool {
    let mut parts = l.split('-');
    let first = parts.next().unwrap_or("");
    (2..=3).contains(&first.len())
        && first.bytes().all(|b| b.is_ascii_alphabetic())
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
        && l.len() <= 35
}

/// Parses a WebVTT timestamp (`hh:mm:ss.ttt` or `mm:ss.ttt`) into seconds.
fn timestamp(s: &str) -> Option<f64> {
    let (hms, ms) = s.split_once('.')?;
    if ms.len() != 3 || !ms.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let parts: Vec<&str> = hms.split(':').collect();
    let nums: Vec<u64> = parts
        .iter()
        .map(|p| {
            (p.len() >= 2 && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse().ok())
                .flatten()
        })
        .collect::<Option<_>>()?;
    let (h, m, sec) = match nums[..] {
        [h, m, s] => (h, m, s),
        [m, s] => (0, m, s),
        _ => return None,
    };
    if m > 59 || sec > 59 {
        return None;
    }
    Some((h * 3600 + m * 60 + sec) as f64 + ms.parse::<f64>().ok()? / 1000.0)
}

/// Checks a WebVTT file: the signature line, then cues whose timing lines parse with
/// start ≤ end. Returns the number of cues, or what is wrong and on which line.
pub fn validate(text: &str) -> Result<usize, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, first))
            if first == "WEBVTT"
                || first.starts_with("WEBVTT ")
                || first.starts_with("WEBVTT\t") => {}
        _ => return Err("line 1: a WebVTT file starts with `WEBVTT`".into()),
    }
    let mut cues = 0;
    for (i, line) in lines {
        if !line.contains("-->") {
            continue;
        }
        let mut it = line.split_whitespace();
        let (start, arrow, end) = (it.next(), it.next(), it.next());
        let (Some(a), Some("-->"), Some(b)) = (start, arrow, end) else {
            return Err(format!("line {}: expected `start --> end`", i + 1));
        };
        let (Some(a), Some(b)) = (timestamp(a), timestamp(b)) else {
            return Err(format!("line {}: timestamps look like 00:01:02.500", i + 1));
        };
        if b < a {
            return Err(format!("line {}: the cue ends before it starts", i + 1));
        }
        cues += 1;
    }
    Ok(cues)
}

/// The one-segment subtitle playlist pointing at `captions.vtt`.
fn subtitle_playlist(duration_s: f64) -> String {
    let d = duration_s.max(0.001);
    let pl = m3u8_rs::MediaPlaylist {
        version: Some(7),
        target_duration: d.round().max(1.0) as u64,
        segments: vec![m3u8_rs::MediaSegment {
            uri: "captions.vtt".into(),
            duration: d as f32,
            ..Default::default()
        }],
        end_list: true,
        playlist_type: Some(m3u8_rs::MediaPlaylistType::Vod),
        ..Default::default()
    };
    let mut out = Vec::new();
    pl.write_to(&mut out).expect("writing to a Vec cannot fail");
    String::from_utf8(out).expect("m3u8-rs writes UTF-8")
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
            e.status(),
            "too-large",
            format!("{}; caption files are limited to 5 MiB", e.body_text()),
        )
    })?;
    let v = videos::get_in_org(&st.db, &id, &c.org).await?;
    c.require_manager()?;
    if !valid_lang(&lang) {
        return Err(ApiError::bad_request(
            "invalid-language",
            "the language must be a BCP 47 tag such as en, pt-BR or zh-Hant",
        ));
    }
    let ctype = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ctype.is_empty() && !ctype.starts_with("text/vtt") && !ctype.starts_with("text/plain") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "send the captions as Content-Type: text/vtt",
        ));
    }
    if body.len() > MAX_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "caption files are limited to 5 MiB",
        ));
    }
    let label = q.label.unwrap_or_else(|| lang.clone());
    // The label is written into the master playlist: a quote or any control character (CR,
    // LF, …) could end its attribute or line and inject tags.
    if label.is_empty()
        || label.chars().count() > 100
        || label.contains('"')
        || lectern_core::text::has_controls(&label)
    {
        return Err(ApiError::bad_request(
            "invalid-label",
            "label must be 1 to 100 characters without quotes, line breaks or control characters",
        ));
    }
    let text = std::str::from_utf8(&body)
        .map_err(|_| unprocessable("invalid-webvtt", "WebVTT must be UTF-8 text"))?;
    let cues = validate(text).map_err(|e| unprocessable("invalid-webvtt", e))?;
    let duration = v.duration_s.ok_or_else(|| {
        ApiError::conflict(
            "duration-unknown",
            "add captions once the video is processing or ready (its duration is not known yet)",
        )
    })?;
    let token = lectern_core::new_id();
    let dir = format!("videos/{}/{token}/subs-{lang}/", v.id);
    st.store
        .put_bytes(&format!("{dir}captions.vtt"), body.clone())
        .await?;
    st.store
        .put_bytes(
            &format!("{dir}index.m3u8"),
            Bytes::from(subtitle_playlist(duration)),
        )
        .await?;
    // Older revisions stay in the store until the video is deleted: a player may still
    // hold a master playlist (cached up to a minute) that points at them.
    videos::put_caption(
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
    match videos::delete_caption(&st.db, &v.id, &lang).await? {
        Some(token) => {
            st.store
                .delete_prefix(&format!("videos/{}/{token}/", v.id))
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
    let tracks = videos::captions(&st.db, &v.id).await?;
    Ok(Json(json!({
        "captions": tracks.iter().map(|t| json!({"lang": t.lang, "label": t.label})).collect::<Vec<_>>(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webvtt_checks() {
        assert_eq!(validate("WEBVTT\n\n00:00.000 --> 00:01.500\nHello\n\n00:00:02.000 --> 00:00:03.000 align:start\nWorld\n"), Ok(2));
        assert_eq!(validate("\u{feff}WEBVTT - a title\n"), Ok(0));
        assert!(validate("1\n00:00:01,000 --> 00:00:02,000\nSRT, not VTT\n").is_err());
        assert!(
            validate("WEBVTT\n\n00:00:05.000 --> 00:00:01.000\nbackwards\n")
                .unwrap_err()
                .contains("line 3")
        );
        assert!(
            validate("WEBVTT\n\n00:00:01.000 -> 00:00:02.000\n").is_ok(),
            "no arrow: not a cue line"
        );
        assert!(validate("WEBVTT\n\n00:61.000 --> 01:00.000\n").is_err());
        assert!(valid_lang("en") && valid_lang("pt-BR") && valid_lang("zh-Hant"));
        assert!(
            !valid_lang("english")
                && !valid_lang("e")
                && !valid_lang("en_US")
                && !valid_lang("../x")
        );
        let pl = subtitle_playlist(61.2);
        assert!(pl.contains("#EXT-X-TARGETDURATION:61\n"), "{pl}");
        assert!(
            pl.contains("captions.vtt") && pl.contains("#EXT-X-ENDLIST"),
            "{pl}"
        );
    }
}
