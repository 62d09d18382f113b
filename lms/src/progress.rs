//! Watch progress with write-behind: heartbeats are coalesced in memory per (user, lesson) and
//! flushed in batches (every second, or at once when 1,000 rows wait) with one multi-row
//! upsert — `UNNEST` arrays on PostgreSQL, a multi-row `VALUES` on SQLite. The server keeps the
//! union of watched intervals; a lesson is complete once the union covers `complete_ratio` of
//! the video. A crash loses at most the last flush interval (about 1 s) of heartbeats; players
//! send cumulative watched ranges, so the next heartbeat restores them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use lectern_core::db::{Db, DbResult};
use lectern_core::now_ms;
use tokio::sync::Notify;

// The heartbeat handler below shares the LMS router's imports and role checks.
use super::*;

/// Rows that trigger a flush before the timer does.
pub const FLUSH_ROWS: usize = 1000;
/// The longest a heartbeat waits in memory.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Intervals kept per (user, lesson) after merging; beyond this the shortest gaps are closed.
const MAX_INTERVALS: usize = 512;

/// A watched interval, seconds of media time.
pub type Interval = (f64, f64);

/// Sorts and merges overlapping or touching intervals (gaps under 0.5 s count as touching,
/// since heartbeats round positions).
pub fn merge(mut v: Vec<Interval>) -> Vec<Interval> {
    v.retain(|(a, b)| a.is_finite() && b.is_finite() && b > a);
    v.sort_by(|x, y| x.0.total_cmp(&y.0));
    let mut out: Vec<Interval> = Vec::with_capacity(v.len());
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if a <= last.1 + 0.5 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    while out.len() > MAX_INTERVALS {
        // Close the smallest gap: bounded storage for pathological clients.
        let i = (1..out.len())
            .min_by(|&i, &j| (out[i].0 - out[i - 1].1).total_cmp(&(out[j].0 - out[j - 1].1)))
            .expect("more than one interval");
        out[i - 1].1 = out[i].1;
        out.remove(i);
    }
    out
}

/// Total length of merged intervals.
pub fn covered(v: &[Interval]) -> f64 {
    v.iter().map(|(a, b)| b - a).sum()
}

/// One (user, lesson) waiting to be written.
#[derive(Debug, Clone)]
struct Pending {
    org: String,
    course_id: String,
    duration_s: Option<f64>,
    position_s: f64,
    watched: Vec<Interval>,
    at: i64,
}

/// The write-behind buffer.
pub struct Buffer {
    db: Db,
    complete_ratio: f64,
    pending: Mutex<HashMap<(String, String), Pending>>,
    full: Notify,
}

/// One heartbeat.
#[derive(Debug, Clone)]
pub struct Heartbeat<'a> {
    /// Learner.
    pub user: &'a str,
    /// Lesson.
    pub lesson: &'a str,
    /// The lesson's org.
    pub org: &'a str,
    /// The lesson's course.
    pub course_id: &'a str,
    /// The lesson video's duration, when known.
    pub duration_s: Option<f64>,
    /// Playhead.
    pub position_s: f64,
    /// Ranges watched since the last heartbeat (or all of them; the union is idempotent).
    pub watched: Vec<Interval>,
}

impl Buffer {
    /// A buffer writing to `db`; a lesson is complete at `complete_ratio` watched.
    pub fn new(db: Db, complete_ratio: f64) -> Self {
        Self {
            db,
            complete_ratio,
            pending: Mutex::new(HashMap::new()),
            full: Notify::new(),
        }
    }

    /// Coalesces a heartbeat into memory; wakes the flusher when the batch is full.
    pub fn record(&self, h: Heartbeat<'_>) {
        let mut map = self.pending.lock().expect("progress lock");
        let e = map
            .entry((h.user.to_string(), h.lesson.to_string()))
            .or_insert_with(|| Pending {
                org: h.org.to_string(),
                course_id: h.course_id.to_string(),
                duration_s: h.duration_s,
                position_s: 0.0,
                watched: Vec::new(),
                at: 0,
            });
        e.position_s = h.position_s;
        e.duration_s = h.duration_s;
        e.at = now_ms();
        let mut w = std::mem::take(&mut e.watched);
        w.extend(h.watched);
        e.watched = merge(w);
        let n = map.len();
        drop(map);
        metrics::counter!("lectern_progress_heartbeats_total").increment(1);
        if n >= FLUSH_ROWS {
            self.full.notify_one();
        }
    }

    /// Writes one heartbeat at once (read, merge, upsert): the naive path, kept for the load
    /// benchmark's comparison (`progress_write_behind = false`).
    pub async fn write_now(&self, h: Heartbeat<'_>) -> DbResult<()> {
        let p = Pending {
            org: h.org.to_string(),
            course_id: h.course_id.to_string(),
            duration_s: h.duration_s,
            position_s: h.position_s,
            watched: merge(h.watched),
            at: now_ms(),
        };
        self.write(&[((h.user.to_string(), h.lesson.to_string()), p)])
            .await
    }

    /// The playhead of a heartbeat still waiting in memory for (user, lesson), if any.
    pub fn pending_position(&self, user: &str, lesson: &str) -> Option<f64> {
        let map = self.pending.lock().expect("progress lock");
        map.get(&(user.to_string(), lesson.to_string()))
            .map(|p| p.position_s)
    }

    /// Rows waiting in memory.
    pub fn pending(&self) -> usize {
        self.pending.lock().expect("progress lock").len()
    }

    /// Writes everything waiting; returns the rows written. On a database error the batch
    /// goes back into memory (merged with newer heartbeats) for the next flush.
    pub async fn flush(&self) -> DbResult<usize> {
        let batch: Vec<((String, String), Pending)> = {
            let mut map = self.pending.lock().expect("progress lock");
            if map.is_empty() {
                return Ok(0);
            }
            std::mem::take(&mut *map).into_iter().collect()
        };
        let n = batch.len();
        match self.write(&batch).await {
            Ok(()) => {
                metrics::histogram!("lectern_progress_flush_rows").record(n as f64);
                Ok(n)
            }
            Err(e) => {
                let mut map = self.pending.lock().expect("progress lock");
                for (k, old) in batch {
                    match map.get_mut(&k) {
                        Some(newer) => {
                            let mut w = old.watched;
                            w.extend(std::mem::take(&mut newer.watched));
                            newer.watched = merge(w);
                        }
                        None => {
                            map.insert(k, old);
                        }
                    }
                }
                Err(e)
            }
        }
    }

    /// Flushes every second, or sooner when a batch fills, until `stop`; then flushes once more.
    pub async fn run(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(FLUSH_EVERY) => {}
                _ = self.full.notified() => {}
                _ = stop.wait_for(|v| *v) => break,
            }
            if let Err(e) = self.flush().await {
                tracing::warn!(error = %e, "progress flush failed; will retry");
            }
        }
        match self.flush().await {
            Ok(n) => tracing::info!(rows = n, "progress flushed at shutdown"),
            Err(e) => tracing::error!(error = %e, "progress flush at shutdown failed"),
        }
    }

    async fn write(&self, batch: &[((String, String), Pending)]) -> DbResult<()> {
        let keys: Vec<(&str, &str)> = batch
            .iter()
            .map(|((u, l), _)| (u.as_str(), l.as_str()))
            .collect();
        let existing = self.existing(&keys).await?;
        let mut rows = Vec::with_capacity(batch.len());
        let mut completed_now = Vec::new();
        for ((user, lesson), p) in batch {
            let (mut watched, was_complete) = existing
                .get(&(user.clone(), lesson.clone()))
                .cloned()
                .unwrap_or_default();
            watched.extend(p.watched.iter().copied());
            let watched = merge(watched);
            let secs = covered(&watched);
            let complete = was_complete
                || p.duration_s
                    .is_some_and(|d| d > 0.0 && secs >= self.complete_ratio * d);
            if complete && !was_complete {
                completed_now.push((user, lesson, p));
            }
            rows.push(Row {
                user,
                lesson,
                org: &p.org,
                course_id: &p.course_id,
                position_s: p.position_s,
                watched: serde_json::to_string(&watched).unwrap_or_else(|_| "[]".into()),
                watched_s: secs,
                completed: complete as i64,
                at: p.at,
            });
        }
        self.upsert(&rows).await?;
        for (user, lesson, p) in completed_now {
            let data =
                serde_json::json!({"user": user, "lesson_id": lesson, "course_id": p.course_id});
            lectern_core::webhooks::emit(&self.db, &p.org, "lesson.completed", data).await?;
        }
        Ok(())
    }

    /// Stored intervals and completion for the keys, in one statement per 400 keys.
    async fn existing(
        &self,
        keys: &[(&str, &str)],
    ) -> DbResult<HashMap<(String, String), (Vec<Interval>, bool)>> {
        type R = (String, String, String, i64);
        let mut out = HashMap::new();
        let mut found: Vec<R> = Vec::new();
        if let Some(pg) = &self.db.pg {
            let users: Vec<&str> = keys.iter().map(|k| k.0).collect();
            let lessons: Vec<&str> = keys.iter().map(|k| k.1).collect();
            found = sqlx::query_as(
                "SELECT p.user_id, p.lesson_id, p.watched, p.completed FROM progress p \
                 JOIN UNNEST($1::text[], $2::text[]) AS k(u, l) ON p.user_id = k.u AND p.lesson_id = k.l",
            )
            .bind(&users)
            .bind(&lessons)
            .fetch_all(pg)
            .await?;
        } else {
            for chunk in keys.chunks(400) {
                let mut sql = String::from(
                    "SELECT user_id, lesson_id, watched, completed FROM progress WHERE (user_id, lesson_id) IN (VALUES ",
                );
                for i in 0..chunk.len() {
                    if i > 0 {
                        sql.push(',');
                    }
                    sql.push_str(&format!("(${}, ${})", 2 * i + 1, 2 * i + 2));
                }
                sql.push(')');
                let mut q = sqlx::query_as::<_, R>(sqlx::AssertSqlSafe(sql));
                for (u, l) in chunk {
                    q = q.bind(*u).bind(*l);
                }
                found.extend(q.fetch_all(&self.db.pool).await?);
            }
        }
        for (u, l, w, c) in found {
            let w: Vec<Interval> = serde_json::from_str(&w).unwrap_or_default();
            out.insert((u, l), (w, c != 0));
        }
        Ok(out)
    }

    async fn upsert(&self, rows: &[Row<'_>]) -> DbResult<()> {
        const SET: &str = "ON CONFLICT (user_id, lesson_id) DO UPDATE SET position_s = excluded.position_s, \
             watched = excluded.watched, watched_s = excluded.watched_s, \
             completed = CASE WHEN progress.completed > excluded.completed THEN progress.completed ELSE excluded.completed END, \
             updated_at = excluded.updated_at";
        if let Some(pg) = &self.db.pg {
            let col = |f: &dyn Fn(&Row) -> String| rows.iter().map(f).collect::<Vec<String>>();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO progress (user_id, lesson_id, org, course_id, position_s, watched, watched_s, completed, updated_at) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::text[], \
                 $7::float8[], $8::int8[], $9::int8[]) {SET}"
            )))
            .bind(col(&|r| r.user.to_string()))
            .bind(col(&|r| r.lesson.to_string()))
            .bind(col(&|r| r.org.to_string()))
            .bind(col(&|r| r.course_id.to_string()))
            .bind(rows.iter().map(|r| r.position_s).collect::<Vec<f64>>())
            .bind(col(&|r| r.watched.clone()))
            .bind(rows.iter().map(|r| r.watched_s).collect::<Vec<f64>>())
            .bind(rows.iter().map(|r| r.completed).collect::<Vec<i64>>())
            .bind(rows.iter().map(|r| r.at).collect::<Vec<i64>>())
            .execute(pg)
            .await?;
            metrics::counter!("lectern_progress_statements_total").increment(1);
            return Ok(());
        }
        let mut tx = self.db.pool.begin().await?;
        // 9 parameters a row; SQLite allows 32,766 per statement.
        for chunk in rows.chunks(500) {
            let mut sql = String::from(
                "INSERT INTO progress (user_id, lesson_id, org, course_id, position_s, watched, watched_s, completed, updated_at) VALUES ",
            );
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push(',');
                }
                let b = 9 * i;
                sql.push('(');
                sql.push_str(
                    &(1..=9)
                        .map(|k| format!("${}", b + k))
                        .collect::<Vec<_>>()
                        .join(", "),
                );
                sql.push(')');
            }
            sql.push(' ');
            sql.push_str(SET);
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for r in chunk {
                q = q
                    .bind(r.user)
                    .bind(r.lesson)
                    .bind(r.org)
                    .bind(r.course_id)
                    .bind(r.position_s)
                    .bind(r.watched.as_str())
                    .bind(r.watched_s)
                    .bind(r.completed)
                    .bind(r.at);
            }
            q.execute(&mut *tx).await?;
            metrics::counter!("lectern_progress_statements_total").increment(1);
        }
        tx.commit().await?;
        Ok(())
    }
}

struct Row<'a> {
    user: &'a str,
    lesson: &'a str,
    org: &'a str,
    course_id: &'a str,
    position_s: f64,
    watched: String,
    watched_s: f64,
    completed: i64,
    at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_of_intervals() {
        assert_eq!(
            merge(vec![(10.0, 20.0), (0.0, 5.0), (4.0, 8.0), (20.2, 30.0)]),
            vec![(0.0, 8.0), (10.0, 30.0)]
        );
        assert_eq!(covered(&merge(vec![(0.0, 10.0), (0.0, 10.0)])), 10.0);
        assert!(merge(vec![(5.0, 1.0), (f64::NAN, 3.0)]).is_empty());
        let many: Vec<Interval> = (0..2000)
            .map(|i| (i as f64 * 2.0, i as f64 * 2.0 + 1.0))
            .collect();
        let m = merge(many);
        assert!(m.len() <= MAX_INTERVALS);
        assert_eq!(m.first().unwrap().0, 0.0);
        assert_eq!(m.last().unwrap().1, 3999.0);
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProgressBody {
    position_s: f64,
    #[serde(default)]
    watched: Vec<(f64, f64)>,
}

pub(crate) async fn post_progress(
    State(st): State<LmsState>,
    Auth(c): Auth,
    Path(lesson): Path<String>,
    ApiJson(b): ApiJson<ProgressBody>,
) -> Result<StatusCode, ApiError> {
    member(&c)?;
    let key = (c.sub.clone(), c.org.clone(), lesson.clone());
    let access = match st.access.get(&key).await {
        Some(a) => a,
        None => {
            let l = visible_lesson(&st, &c, &lesson).await?;
            let a = Access {
                course_id: l.course_id,
                duration_s: l.duration_s,
            };
            st.access.put(key, a.clone()).await;
            a
        }
    };
    let limit = access.duration_s.map_or(86_400.0, |d| d + 5.0);
    let ok = |x: f64| x.is_finite() && (0.0..=limit).contains(&x);
    if !ok(b.position_s)
        || b.watched.len() > 1000
        || b.watched.iter().any(|(a, z)| !ok(*a) || !ok(*z) || z < a)
    {
        return Err(ApiError::new(Code::InvalidProgress,
            "position_s and watched [[start, end], …] must be seconds within the video, start ≤ end, at most 1000 ranges",
        ));
    }
    let h = progress::Heartbeat {
        user: &c.sub,
        lesson: &lesson,
        org: &c.org,
        course_id: &access.course_id,
        duration_s: access.duration_s,
        position_s: b.position_s,
        watched: b.watched,
    };
    if st.write_behind {
        st.progress.record(h);
    } else {
        st.progress.write_now(h).await?;
    }
    Ok(StatusCode::ACCEPTED)
}

#[derive(sqlx::FromRow)]
struct OwnRow {
    enrolled: i64,
    position_s: Option<f64>,
    watched_s: Option<f64>,
    completed: Option<i64>,
    updated_at: Option<i64>,
}

/// `GET /api/v1/lessons/{id}/progress`: the caller's own watch state of a lesson, so a player
/// resumes where the learner stopped (a heartbeat still in this node's buffer counts).
///
/// Players ask for it on every page load, so the lesson, the caller's enrollment and the
/// stored progress come from one statement (they were three round trips).
pub(crate) async fn get_progress(
    State(st): State<LmsState>,
    Auth(c): Auth,
    Path(lesson): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    member(&c)?;
    let row = sqlx::query_as::<_, OwnRow>(concat!(
        "SELECT ",
        enrolled_sql!("l.course_id", "$1"),
        ", p.position_s, p.watched_s, p.completed, p.updated_at \
             FROM lessons l \
             LEFT JOIN progress p ON p.user_id = $1 AND p.lesson_id = l.id AND p.org = l.org \
             WHERE l.id = $2 AND l.org = $3"
    ))
    .bind(&c.sub)
    .bind(&lesson)
    .bind(&c.org)
    .fetch_optional(&st.db.pool)
    .await?
    .ok_or(lectern_core::db::DbError::NotFound("lesson"))?;
    if !c.can_manage_videos() && row.enrolled == 0 {
        return Err(not_enrolled());
    }
    let pending = st.progress.pending_position(&c.sub, &lesson);
    Ok(Json(serde_json::json!({
        "lesson_id": lesson,
        "position_s": pending.or(row.position_s).unwrap_or(0.0),
        "watched_s": row.watched_s.unwrap_or(0.0),
        "completed": row.completed.is_some_and(|c| c != 0),
        "updated_at": row.updated_at.map(rfc3339),
    })))
}
