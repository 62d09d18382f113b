//! Reading progress back: a learner's course progress, the course report for its
//! managers, and "continue watching".

use super::*;

pub(crate) async fn course_progress(
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

pub(crate) fn percent(done: i64, total: i64) -> f64 {
    if total == 0 {
        0.0
    } else {
        (done as f64 * 1000.0 / total as f64).round() / 10.0
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ReportRow {
    user_id: String,
    completed: i64,
    watched_s: f64,
    last_seen: Option<i64>,
}

pub(crate) async fn course_report(
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
pub(crate) struct ContinueRow {
    lesson_id: String,
    course_id: String,
    lesson_title: String,
    course_title: String,
    position_s: f64,
    watched_s: f64,
    updated_at: i64,
}

pub(crate) async fn continue_watching(
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
