//! The `uploads` table: one row per tus upload. `offset_bytes` always equals the bytes of the
//! committed parts plus the tail object, and all of them change in one conditional UPDATE.

use lectern_core::auth::Claims;
use lectern_core::db::{Db, DbError, DbResult};
use lectern_core::now_ms;
use lectern_core::storage::PartList;

lectern_core::text_enum! {
    /// An upload's state, stored as its name in `uploads.state`.
    pub enum UploadState {
        /// Bytes are still arriving.
        Uploading => "uploading",
        /// Every byte arrived and the object is assembled.
        Complete => "complete",
        /// Terminated by the client or expired; answers 410.
        Terminated => "terminated",
    }
}

/// `length` of an upload whose length is deferred.
pub const DEFERRED: i64 = -1;

/// A row of `uploads`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Upload {
    /// Upload id (also the video id of plain and final uploads).
    pub id: String,
    /// Owning org.
    pub org: String,
    /// Uploading user.
    pub owner: String,
    /// Declared total length, or [`DEFERRED`].
    pub length: i64,
    /// Bytes durably stored (parts plus tail).
    pub offset_bytes: i64,
    /// Raw `Upload-Metadata` header, echoed on HEAD.
    pub metadata: String,
    /// Key of the assembled object.
    pub object_key: String,
    /// The store's multipart upload id.
    pub multipart_id: String,
    /// JSON list of committed parts.
    pub parts: String,
    /// Object holding the bytes short of a whole part.
    pub tail_key: Option<String>,
    /// Size of the tail object.
    pub tail_size: i64,
    /// Where the upload is.
    pub state: UploadState,
    /// `''`, `partial` or `final` (concatenation).
    pub concat: String,
    /// For a final upload: JSON list of the partial upload ids.
    pub partials: String,
    /// After this, an unfinished upload may be swept (epoch ms).
    pub expires_at: i64,
    /// Fencing token of the newest writer lease (see `lock.rs`); commits must carry it.
    pub lease_token: i64,
}

impl Upload {
    /// The committed parts.
    pub fn part_list(&self) -> PartList {
        serde_json::from_str(&self.parts).unwrap_or_default()
    }

    /// The declared length, if known.
    pub fn known_length(&self) -> Option<u64> {
        (self.length >= 0).then_some(self.length as u64)
    }

    /// Whether this upload becomes a video (plain and final uploads; not partials).
    pub fn is_video(&self) -> bool {
        self.concat != "partial"
    }
}

const COLS: &str =
    "id, org, owner, length, offset_bytes, metadata, object_key, multipart_id, parts, \
    tail_key, tail_size, state, concat, partials, expires_at, lease_token";

/// Fields of a new upload.
pub struct NewUpload<'a> {
    /// Id.
    pub id: &'a str,
    /// Creator.
    pub claims: &'a Claims,
    /// Length or [`DEFERRED`].
    pub length: i64,
    /// Raw metadata header.
    pub metadata: &'a str,
    /// Object key.
    pub object_key: &'a str,
    /// Multipart upload id.
    pub multipart_id: &'a str,
    /// Concatenation role.
    pub concat: &'a str,
    /// Partial ids of a final upload.
    pub partials: &'a [String],
    /// Expiry, epoch ms.
    pub expires_at: i64,
}

/// Inserts a new upload.
pub async fn insert(db: &Db, n: NewUpload<'_>) -> DbResult<Upload> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO uploads (id, org, owner, length, offset_bytes, metadata, object_key, multipart_id, \
         parts, state, concat, partials, created_at, updated_at, expires_at) \
         VALUES ($1, $2, $3, $4, 0, $5, $6, $7, '[]', $8, $9, $10, $11, $11, $12)",
    )
    .bind(n.id)
    .bind(&n.claims.org)
    .bind(&n.claims.sub)
    .bind(n.length)
    .bind(n.metadata)
    .bind(n.object_key)
    .bind(n.multipart_id)
    .bind(UploadState::Uploading)
    .bind(n.concat)
    .bind(serde_json::to_string(n.partials).expect("ids serialize"))
    .bind(now)
    .bind(n.expires_at)
    .execute(&db.pool)
    .await?;
    get(db, n.id)
        .await?
        .ok_or(DbError::NotFound("upload just inserted"))
}

/// Loads an upload.
pub async fn get(db: &Db, id: &str) -> DbResult<Option<Upload>> {
    Ok(sqlx::query_as::<_, Upload>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM uploads WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&db.pool)
    .await?)
}

/// Records new parts and tail, moving the offset, only if nobody moved it meanwhile.
/// Returns the updated row.
pub async fn commit(
    db: &Db,
    u: &Upload,
    parts: PartList,
    tail: Option<(String, u64)>,
    expires_at: i64,
) -> DbResult<Upload> {
    let tail_size = tail.as_ref().map(|t| t.1).unwrap_or(0) as i64;
    let offset = parts.total() as i64 + tail_size;
    let parts_json = serde_json::to_string(&parts).expect("parts serialize");
    let tail_key = tail.map(|t| t.0);
    let res = sqlx::query(
        "UPDATE uploads SET parts = $1, offset_bytes = $2, tail_key = $3, tail_size = $4, updated_at = $5, \
         expires_at = $6 WHERE id = $7 AND offset_bytes = $8 AND state = $9 AND lease_token = $10",
    )
    .bind(&parts_json)
    .bind(offset)
    .bind(&tail_key)
    .bind(tail_size)
    .bind(now_ms())
    .bind(expires_at)
    .bind(&u.id)
    .bind(u.offset_bytes)
    .bind(UploadState::Uploading)
    .bind(u.lease_token)
    .execute(&db.pool)
    .await?;
    if res.rows_affected() != 1 {
        return Err(DbError::Moved("upload offset"));
    }
    Ok(Upload {
        parts: parts_json,
        offset_bytes: offset,
        tail_key,
        tail_size,
        expires_at,
        ..u.clone()
    })
}

/// Sets the length of a deferred-length upload.
pub async fn set_length(db: &Db, id: &str, length: u64) -> DbResult<()> {
    sqlx::query("UPDATE uploads SET length = $1, updated_at = $2 WHERE id = $3 AND length = $4")
        .bind(length as i64)
        .bind(now_ms())
        .bind(id)
        .bind(DEFERRED)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// Marks an upload whose object is assembled.
pub async fn mark_complete(db: &Db, id: &str) -> DbResult<()> {
    sqlx::query("UPDATE uploads SET state = $1, tail_key = NULL, tail_size = 0, updated_at = $2 WHERE id = $3")
        .bind(UploadState::Complete)
        .bind(now_ms())
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// Leaves a tombstone, so later requests get 410, and removes the upload's video row (it
/// never reached the queue), in one transaction. The caller has removed the bytes.
pub async fn terminate(db: &Db, u: &Upload) -> DbResult<()> {
    let mut tx = db.begin().await?;
    sqlx::query("UPDATE uploads SET state = $1, parts = '[]', tail_key = NULL, tail_size = 0, updated_at = $2 WHERE id = $3")
        .bind(UploadState::Terminated)
        .bind(now_ms())
        .bind(&u.id)
        .execute(&mut *tx)
        .await?;
    if u.is_video() {
        lectern_core::videos::delete(&mut tx, &u.id).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Uploads whose every byte is stored but whose completion was interrupted.
pub async fn list_full_unfinished(db: &Db) -> DbResult<Vec<Upload>> {
    let cols: Vec<String> = COLS
        .split(", ")
        .map(|c| format!("u.{}", c.trim()))
        .collect();
    Ok(sqlx::query_as::<_, Upload>(sqlx::AssertSqlSafe(format!(
        "SELECT {} FROM uploads u LEFT JOIN videos v ON v.id = u.id \
         WHERE u.offset_bytes = u.length AND u.concat <> 'partial' AND (u.state = $1 OR v.state = $1)",
        cols.join(", ")
    )))
    .bind(UploadState::Uploading)
    .fetch_all(&db.pool)
    .await?)
}

/// Unfinished uploads past their expiry, and partial uploads past theirs (partials are kept
/// only for concatenation).
pub async fn list_expired(db: &Db, now: i64) -> DbResult<Vec<Upload>> {
    Ok(sqlx::query_as::<_, Upload>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM uploads WHERE expires_at < $1 AND (state = $2 OR (state = $3 AND concat = 'partial'))"
    )))
    .bind(now)
    .bind(UploadState::Uploading)
    .bind(UploadState::Complete)
    .fetch_all(&db.pool)
    .await?)
}

/// Removes an upload row: when its creation could not be completed, or (inside the video's
/// own deletion) with its video.
pub async fn delete<'c>(
    ex: impl sqlx::Executor<'c, Database = sqlx::Any>,
    id: &str,
) -> DbResult<()> {
    sqlx::query("DELETE FROM uploads WHERE id = $1")
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}

/// Source bytes an org stores or has announced: every upload not terminated, at its declared
/// length (what it has stored while the length is deferred).
pub async fn org_bytes(db: &Db, org: &str) -> DbResult<u64> {
    let n: Option<i64> = sqlx::query_scalar(
        "SELECT CAST(SUM(CASE WHEN length >= 0 THEN length ELSE offset_bytes END) AS BIGINT) \
         FROM uploads WHERE org = $1 AND state <> $2",
    )
    .bind(org)
    .bind(UploadState::Terminated)
    .fetch_one(&db.pool)
    .await?;
    Ok(n.unwrap_or(0).max(0) as u64)
}
