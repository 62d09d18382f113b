//! The lesson resource, and a lesson's playback URLs for its learners.

use super::*;

#[derive(sqlx::FromRow)]
pub(crate) struct Lesson {
    pub(crate) id: String,
    pub(crate) course_id: String,
    pub(crate) title: String,
    pub(crate) position: i64,
    pub(crate) video_id: Option<String>,
    pub(crate) video_state: Option<String>,
    pub(crate) duration_s: Option<f64>,
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

pub(crate) const LESSON_FROM: &str = "SELECT l.id, l.course_id, l.title, l.position, l.video_id, \
    v.state AS video_state, v.duration_s FROM lessons l LEFT JOIN videos v ON v.id = l.video_id";

pub(crate) async fn lesson_row(db: &Db, id: &str, org: &str) -> DbResult<Lesson> {
    sqlx::query_as::<_, Lesson>(sqlx::AssertSqlSafe(format!(
        "{LESSON_FROM} WHERE l.id = $1 AND l.org = $2"
    )))
    .bind(id)
    .bind(org)
    .fetch_optional(&db.pool)
    .await?
    .ok_or(DbError::NotFound("lesson"))
}

/// The lesson, if the caller may see it (managers of its org, learners of its course).
pub(crate) async fn visible_lesson(
    st: &LmsState,
    c: &Claims,
    id: &str,
) -> Result<Lesson, ApiError> {
    member(c)?;
    let l = lesson_row(&st.db, id, &c.org).await?;
    if !c.can_manage_videos() && !is_enrolled(&st.db, &l.course_id, &c.sub).await? {
        return Err(not_enrolled());
    }
    Ok(l)
}

/// A video id from a request body must name a video of the caller's org.
pub(crate) async fn check_video(db: &Db, video: &str, org: &str) -> Result<(), ApiError> {
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
pub(crate) struct NewLesson {
    title: String,
    video_id: Option<String>,
    position: Option<i64>,
}

pub(crate) async fn create_lesson(
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

pub(crate) async fn list_lessons(
    State(st): State<LmsState>,
    Auth(c): Auth,
    Path(course): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Response, ApiError> {
    member(&c)?;
    let key = read_key(&format!("lessons/{course}"), &c, &q);
    if let Some(body) = LISTS.get(&key) {
        return Ok(json_response(body));
    }
    let read_in = generation();
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
    let body = json!({
        "lessons": rows.iter().map(Lesson::json).collect::<Vec<_>>(),
        "next_cursor": next,
    });
    Ok(LISTS.answer(key, read_in, &body))
}

pub(crate) async fn get_lesson(
    State(st): State<LmsState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(visible_lesson(&st, &c, &id).await?.json()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LessonPatch {
    title: Option<String>,
    position: Option<i64>,
    /// `null` detaches the video.
    #[serde(default, deserialize_with = "some_or_null")]
    video_id: Option<Option<String>>,
}

pub(crate) fn some_or_null<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

pub(crate) async fn patch_lesson(
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

pub(crate) async fn delete_lesson(
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

pub(crate) async fn lesson_playback(
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
