//! The webhook outbox: a state change is written as delivery rows in the same database right
//! after the change commits, and the LMS crate's sender delivers them (signed, at least once,
//! with backoff) from there, so a receiver that is down loses nothing. The one window is a
//! crash between the state change and the insert (two statements, microseconds apart).

use serde_json::{json, Value};

use crate::db::{Db, DbResult};
use crate::{new_id, now_ms, rfc3339};

/// Event types an endpoint can subscribe to.
pub const EVENTS: [&str; 4] = [
    "video.ready",
    "video.failed",
    "video.deleted",
    "lesson.completed",
];

/// Queues `event_type` with `data` for every endpoint of `org` subscribed to it; returns the
/// event id (shared by all its deliveries, for receivers to deduplicate).
pub async fn emit(db: &Db, org: &str, event_type: &str, data: Value) -> DbResult<String> {
    let hooks: Vec<(String, String)> =
        sqlx::query_as("SELECT id, events FROM webhooks WHERE org = $1")
            .bind(org)
            .fetch_all(&db.pool)
            .await?;
    let event_id = new_id();
    let now = now_ms();
    let payload = json!({
        "id": event_id, "type": event_type, "org": org, "created_at": rfc3339(now), "data": data,
    })
    .to_string();
    for (hook, events) in hooks {
        if !events.split(',').any(|e| e == event_type) {
            continue;
        }
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, org, webhook_id, event_id, event_type, payload, state, attempts, next_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $7)",
        )
        .bind(new_id())
        .bind(org)
        .bind(&hook)
        .bind(&event_id)
        .bind(event_type)
        .bind(&payload)
        .bind(now)
        .execute(&db.pool)
        .await?;
        metrics::counter!("lectern_webhook_events_total", "type" => event_type.to_string())
            .increment(1);
    }
    Ok(event_id)
}
