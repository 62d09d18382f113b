//! Enrollments: which learners may see a course.

use super::*;

pub(crate) async fn is_enrolled(db: &Db, course: &str, user: &str) -> DbResult<bool> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT user_id FROM enrollments WHERE course_id = $1 AND user_id = $2")
            .bind(course)
            .bind(user)
            .fetch_optional(&db.pool)
            .await?;
    Ok(row.is_some())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnrollBody {
    user: String,
}

pub(crate) async fn enroll(
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

pub(crate) async fn list_enrollments(
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

pub(crate) async fn unenroll(
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
