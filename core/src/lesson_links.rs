//! The link from a lesson to its video (`lessons.video_id`). The LMS owns the rest of a
//! lesson's row; the pipeline owns this column, because it must flip the link when a
//! replacement video becomes ready (whether or not the LMS is built in) and clear it when a
//! video is deleted.

use crate::db::{Db, DbResult, Tx};
use crate::now_ms;
use crate::videos::{state, Video};

/// Points the lesson a video was uploaded for (`lesson` metadata) at it once it is ready;
/// the lesson's previous video stays until then, so learners never see a gap.
pub async fn attach(tx: &mut Tx, v: &Video) -> DbResult<()> {
    if let Some(lesson) = &v.lesson {
        sqlx::query("UPDATE lessons SET video_id = $1, updated_at = $2 WHERE id = $3 AND org = $4")
            .bind(&v.id)
            .bind(now_ms())
            .bind(lesson)
            .bind(&v.org)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Clears every lesson's link to a video that is being deleted.
pub async fn unlink(tx: &mut Tx, video: &str) -> DbResult<()> {
    sqlx::query("UPDATE lessons SET video_id = NULL WHERE video_id = $1")
        .bind(video)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// For an upload naming `lesson`: `None` when the org has no such lesson, else whether the
/// lesson already shows a ready video (then the upload is a replacement).
pub async fn has_ready_video(db: &Db, org: &str, lesson: &str) -> DbResult<Option<bool>> {
    let row: Option<(Option<String>,)> = sqlx::query_as(
        "SELECT v.state FROM lessons l LEFT JOIN videos v ON v.id = l.video_id WHERE l.id = $1 AND l.org = $2",
    )
    .bind(lesson)
    .bind(org)
    .fetch_optional(&db.pool)
    .await?;
    Ok(row.map(|(st,)| st.as_deref() == Some(state::READY)))
}
