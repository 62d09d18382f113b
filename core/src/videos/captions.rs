//! The `captions` table: a video's caption tracks, one revision per language.

use crate::db::{Db, DbResult, Tx};
use crate::now_ms;

/// A caption track: language, display name and the revision folder token.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Caption {
    /// BCP 47 language tag.
    pub lang: String,
    /// Name shown in players.
    pub label: String,
    /// Revision folder: `videos/{video}/{token}/subs-{lang}/`.
    pub token: String,
}

/// A video's caption tracks, by language.
pub async fn list(db: &Db, video: &str) -> DbResult<Vec<Caption>> {
    Ok(sqlx::query_as::<_, Caption>(
        "SELECT lang, label, token FROM captions WHERE video_id = $1 ORDER BY lang",
    )
    .bind(video)
    .fetch_all(&db.pool)
    .await?)
}

/// Records (or replaces) a caption track; returns the replaced revision's token.
pub async fn put(db: &Db, video: &str, c: &Caption) -> DbResult<Option<String>> {
    let old: Option<(String,)> =
        sqlx::query_as("SELECT token FROM captions WHERE video_id = $1 AND lang = $2")
            .bind(video)
            .bind(&c.lang)
            .fetch_optional(&db.pool)
            .await?;
    sqlx::query(
        "INSERT INTO captions (video_id, lang, label, token, created_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (video_id, lang) DO UPDATE SET label = excluded.label, token = excluded.token, \
         created_at = excluded.created_at",
    )
    .bind(video)
    .bind(&c.lang)
    .bind(&c.label)
    .bind(&c.token)
    .bind(now_ms())
    .execute(&db.pool)
    .await?;
    Ok(old.map(|o| o.0))
}

/// Removes a caption track; returns its token when there was one.
pub async fn delete(db: &Db, video: &str, lang: &str) -> DbResult<Option<String>> {
    let old: Option<(String,)> =
        sqlx::query_as("DELETE FROM captions WHERE video_id = $1 AND lang = $2 RETURNING token")
            .bind(video)
            .bind(lang)
            .fetch_optional(&db.pool)
            .await?;
    Ok(old.map(|o| o.0))
}

/// Removes every caption row of a video inside a step that spans tables.
pub async fn delete_all(tx: &mut Tx, video: &str) -> DbResult<()> {
    sqlx::query("DELETE FROM captions WHERE video_id = $1")
        .bind(video)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
