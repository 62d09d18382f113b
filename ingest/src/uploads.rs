//! The `uploads` table: one row per tus upload. `offset_bytes` always equals the sum of the
//! committed parts, and both change in one conditional UPDATE.

use lectern_core::auth::Claims;
use lectern_core::db::Db;
use lectern_core::error::ApiError;
use lectern_core::now_ms;
use lectern_core::storage::Part;

/// Bytes are still arriving.
pub const UPLOADING: &str = "uploading";
/// Every byte arrived and the object is assembled.
pub const COMPLETE: &str = "complete";

/// A row of `uploads`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Upload {
    /// Upload id (also the video id).
    pub id: String,
    /// Owning org.
    pub org: String,
    /// Uploading user.
    pub owner: String,
    /// Declared total length.
    pub length: i64,
    /// Bytes durably stored.
    pub offset_bytes: i64,
    /// Raw `Upload-Metadata` header, echoed on HEAD.
    pub metadata: String,
    /// Key of the assembled object.
    pub object_key: String,
    /// The store's multipart upload id.
    pub multipart_id: String,
    /// JSON list of committed parts.
    pub parts: String,
    /// `uploading` or `complete`.
    pub state: String,
    /// After this, an unfinished upload may be swept (epoch ms).
    pub expires_at: i64,
}

impl Upload {
    /// The committed parts.
    pub fn part_list(&self) -> Vec<Part> {
        serde_json::from_str(&self.parts).unwrap_or_default()
    }
}

const COLS: &str = "id, org, owner, length, offset_bytes, metadata, object_key, multipart_id, parts, state, expires_at";

/// Inserts a new upload.
#[allow(clippy::too_many_arguments)]
pub async fn insert(
    db: &Db,
    id: &str,
    claims: &Claims,
    length: u64,
    metadata: &str,
    object_key: &str,
    multipart_id: &str,
    expiry_s: i64,
) -> Result<Upload, ApiError> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO uploads (id, org, owner, length, offset_bytes, metadata, object_key, multipart_id, \
         parts, state, created_at, updated_at, expires_at) VALUES ($1, $2, $3, $4, 0, $5, $6, $7, '[]', $8, $9, $9, $10)",
    )
    .bind(id)
    .bind(&claims.org)
    .bind(&claims.sub)
    .bind(length as i64)
    .bind(metadata)
    .bind(object_key)
    .bind(multipart_id)
    .bind(UPLOADING)
    .bind(now)
    .bind(now + expiry_s * 1000)
    .execute(&db.pool)
    .await?;
    get(db, id)
        .await?
        .ok_or_else(|| ApiError::internal("upload vanished after insert"))
}

/// Loads an upload.
pub async fn get(db: &Db, id: &str) -> Result<Option<Upload>, ApiError> {
    Ok(sqlx::query_as::<_, Upload>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM uploads WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&db.pool)
    .await?)
}

/// Appends a durable part and moves the offset, only if nobody moved it meanwhile.
pub async fn commit_part(db: &Db, u: &Upload, part: Part) -> Result<u64, ApiError> {
    let mut parts = u.part_list();
    let offset = u.offset_bytes + part.size as i64;
    parts.push(part);
    let res = sqlx::query(
        "UPDATE uploads SET parts = $1, offset_bytes = $2, updated_at = $3 WHERE id = $4 AND offset_bytes = $5 AND state = $6",
    )
    .bind(serde_json::to_string(&parts).expect("parts serialize"))
    .bind(offset)
    .bind(now_ms())
    .bind(&u.id)
    .bind(u.offset_bytes)
    .bind(UPLOADING)
    .execute(&db.pool)
    .await?;
    if res.rows_affected() != 1 {
        return Err(ApiError::conflict(
            "offset-mismatch",
            "the upload moved while this chunk was written; send HEAD and resume from its offset",
        ));
    }
    Ok(offset as u64)
}

/// Marks an upload whose object is assembled.
pub async fn mark_complete(db: &Db, id: &str) -> Result<(), ApiError> {
    sqlx::query("UPDATE uploads SET state = $1, updated_at = $2 WHERE id = $3")
        .bind(COMPLETE)
        .bind(now_ms())
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// Uploads whose every byte is stored but that were never finished.
pub async fn list_full_unfinished(db: &Db) -> Result<Vec<Upload>, ApiError> {
    let cols: Vec<String> = COLS.split(", ").map(|c| format!("u.{c}")).collect();
    Ok(sqlx::query_as::<_, Upload>(sqlx::AssertSqlSafe(format!(
        "SELECT {} FROM uploads u JOIN videos v ON v.id = u.id \
         WHERE u.offset_bytes = u.length AND (u.state = $1 OR v.state = $1)",
        cols.join(", ")
    )))
    .bind(UPLOADING)
    .fetch_all(&db.pool)
    .await?)
}

/// Removes an upload row.
pub async fn delete(db: &Db, id: &str) -> Result<(), ApiError> {
    sqlx::query("DELETE FROM uploads WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(())
}
