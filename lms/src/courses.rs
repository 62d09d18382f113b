//! The course resource: create, list, read, rename, delete.

use super::*;

#[derive(sqlx::FromRow)]
pub(crate) struct Course {
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

pub(crate) const COURSE_COLS: &str =
    "c.id, c.title, c.description, c.created_by, c.created_at, c.updated_at";

pub(crate) async fn course_row(db: &Db, id: &str, org: &str) -> DbResult<Course> {
    sqlx::query_as::<_, Course>(sqlx::AssertSqlSafe(format!(
        "SELECT {COURSE_COLS} FROM courses c WHERE c.id = $1 AND c.org = $2"
    )))
    .bind(id)
    .bind(org)
    .fetch_optional(&db.pool)
    .await?
    .ok_or(DbError::NotFound("course"))
}

/// A course with whether the caller is enrolled in it.
#[derive(sqlx::FromRow)]
struct SeenCourse {
    #[sqlx(flatten)]
    course: Course,
    enrolled: i64,
}

/// The course, if the caller may see it: managers of its org, or learners enrolled in it.
/// One statement (it was two): every learner's first course or lesson list starts here.
pub(crate) async fn visible_course(
    st: &LmsState,
    c: &Claims,
    id: &str,
) -> Result<Course, ApiError> {
    member(c)?;
    let seen = sqlx::query_as::<_, SeenCourse>(sqlx::AssertSqlSafe(format!(
        "SELECT {COURSE_COLS}, {} FROM courses c WHERE c.id = $1 AND c.org = $2",
        enrolled_sql!("c.id", "$3")
    )))
    .bind(id)
    .bind(&c.org)
    .bind(&c.sub)
    .fetch_optional(&st.db.pool)
    .await?
    .ok_or(DbError::NotFound("course"))?;
    if !c.can_manage_videos() && seen.enrolled == 0 {
        return Err(not_enrolled());
    }
    Ok(seen.course)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewCourse {
    title: String,
    #[serde(default)]
    description: String,
}

pub(crate) fn check_title(t: &str) -> Result<(), ApiError> {
    lectern_core::text::title(t).map(|_| ())
}

pub(crate) async fn create_course(
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

pub(crate) async fn list_courses(
    State(st): State<LmsState>,
    Auth(c): Auth,
    Query(q): Query<PageQuery>,
) -> Result<Response, ApiError> {
    member(&c)?;
    let key = read_key("courses", &c, &q);
    if let Some(body) = LISTS.get(&key) {
        return Ok(json_response(body));
    }
    let read_in = generation();
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
    let body = json!({
        "courses": rows.iter().map(Course::json).collect::<Vec<_>>(),
        "next_cursor": next,
    });
    Ok(LISTS.answer(key, read_in, &body))
}

pub(crate) async fn get_course(
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
pub(crate) struct CoursePatch {
    title: Option<String>,
    description: Option<String>,
}

pub(crate) async fn patch_course(
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

pub(crate) async fn delete_course(
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
