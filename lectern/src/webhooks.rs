//! Webhook endpoints (admins register HTTPS URLs per org) and the sender that drains the
//! outbox written by `lectern_core::webhooks::emit`.
//!
//! Each delivery is a POST of the event JSON with `Lectern-Event-Id`, `Lectern-Event-Type` and
//! `Lectern-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`. Receivers
//! check the signature and the timestamp (reject old ones against replay) and deduplicate by
//! event id: delivery is at least once. Failures retry with exponential backoff (1 s doubling,
//! capped at 1 h) for up to `MAX_ATTEMPTS`; every attempt is recorded and listed to admins.

use lectern_core::error::Code;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use lectern_core::auth::{hmac, Auth, Claims, Role};
use lectern_core::db::Db;
use lectern_core::error::{ApiError, ApiJson};
use lectern_core::webhooks::EVENTS;
use lectern_core::{new_id, now_ms, rfc3339};
use serde::Deserialize;
use serde_json::{json, Value};

use lectern_core::auth::{HasKeys, Keys};
use lectern_core::page::PageQuery;

/// What the webhook routes need.
#[derive(Clone)]
pub struct WebhookState {
    /// Database (webhooks and their delivery log).
    pub db: Db,
    /// Token keys.
    pub keys: Keys,
    /// Accept plain `http://` webhook URLs (development and tests only).
    pub allow_http: bool,
    /// Where webhooks may deliver (public addresses, plus hosts the operator allowed).
    pub egress: crate::egress::Egress,
}

impl HasKeys for WebhookState {
    fn keys(&self) -> &Keys {
        &self.keys
    }
}

/// Attempts before a delivery is given up as `failed`.
pub const MAX_ATTEMPTS: i64 = 12;
/// How long one attempt may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries claimed per sender tick.
const BATCH: i64 = 32;

/// The webhook routes (admins of the org only).
pub fn router(state: WebhookState) -> Router {
    Router::new()
        .route("/api/v1/webhooks", get(list).post(create))
        .route("/api/v1/webhooks/{id}", delete(remove))
        .route("/api/v1/webhooks/{id}/deliveries", get(deliveries))
        .with_state(state)
}

fn admin(c: &Claims) -> Result<(), ApiError> {
    if c.role == Role::Admin {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "webhooks are managed by the org's admins",
        ))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewHook {
    url: String,
    events: Vec<String>,
}

async fn create(
    State(st): State<WebhookState>,
    Auth(c): Auth,
    ApiJson(b): ApiJson<NewHook>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admin(&c)?;
    if b.url.len() > MAX_URL {
        return Err(ApiError::new(
            Code::InvalidUrl,
            format!("url must be at most {MAX_URL} characters"),
        ));
    }
    let url = reqwest::Url::parse(&b.url)
        .map_err(|e| ApiError::new(Code::InvalidUrl, format!("url is not a valid URL: {e}")))?;
    let https = url.scheme() == "https";
    if !(https || (st.allow_http && url.scheme() == "http")) || url.host().is_none() {
        return Err(ApiError::new(Code::InvalidUrl,
            "webhook URLs must be https:// (plain http only where the operator set webhook_allow_http)",
        ));
    }
    st.egress
        .check(&url)
        .await
        .map_err(|why| ApiError::new(Code::ForbiddenUrl, format!("webhook URL refused: {why}")))?;
    if b.events.is_empty() || b.events.iter().any(|e| !EVENTS.contains(&e.as_str())) {
        return Err(ApiError::new(
            Code::InvalidEvents,
            format!("events must be a non-empty list of {}", EVENTS.join(", ")),
        ));
    }
    let (id, secret) = (new_id(), format!("whsec_{}", new_id()));
    sqlx::query(
        "INSERT INTO webhooks (id, org, url, secret, events, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(&c.org)
    .bind(url.as_str())
    .bind(&secret)
    .bind(b.events.join(","))
    .bind(now_ms())
    .execute(&st.db.pool)
    .await?;
    // The secret is shown once, at creation.
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "url": url.as_str(), "events": b.events, "secret": secret})),
    ))
}

async fn list(
    State(st): State<WebhookState>,
    Auth(c): Auth,
    Query(q): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    admin(&c)?;
    let page = q.page(2)?;
    let mut rows: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT id, url, events, created_at FROM webhooks WHERE org = $1 \
         AND (created_at > $2 OR (created_at = $2 AND id > $3)) ORDER BY created_at, id LIMIT $4",
    )
    .bind(&c.org)
    .bind(page.int_key(0, i64::MIN)?)
    .bind(page.str_key(1)?)
    .bind(page.limit + 1)
    .fetch_all(&st.db.pool)
    .await?;
    let next = page.finish(&mut rows, |r| vec![json!(r.3), json!(r.0)]);
    Ok(Json(json!({
        "webhooks": rows.iter().map(|(id, url, ev, at)| json!({
            "id": id, "url": url, "events": ev.split(',').collect::<Vec<_>>(), "created_at": rfc3339(*at),
        })).collect::<Vec<_>>(),
        "next_cursor": next,
    })))
}

async fn hook_in_org(db: &Db, id: &str, org: &str) -> Result<(), ApiError> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT id FROM webhooks WHERE id = $1 AND org = $2")
            .bind(id)
            .bind(org)
            .fetch_optional(&db.pool)
            .await?;
    row.map(|_| ())
        .ok_or_else(|| ApiError::not_found("webhook"))
}

async fn remove(
    State(st): State<WebhookState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    hook_in_org(&st.db, &id, &c.org).await?;
    admin(&c)?;
    let mut tx = st.db.pool.begin().await?;
    sqlx::query("DELETE FROM webhooks WHERE id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    // Pending deliveries to a removed endpoint stop; their history stays visible until then.
    sqlx::query("UPDATE webhook_deliveries SET state = 'canceled' WHERE webhook_id = $1 AND state = 'pending'")
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(sqlx::FromRow)]
struct Delivery {
    id: String,
    event_id: String,
    event_type: String,
    state: String,
    attempts: i64,
    next_at: i64,
    created_at: i64,
    delivered_at: Option<i64>,
}

async fn deliveries(
    State(st): State<WebhookState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    hook_in_org(&st.db, &id, &c.org).await?;
    admin(&c)?;
    let page = q.page(2)?;
    let mut rows = sqlx::query_as::<_, Delivery>(
        "SELECT id, event_id, event_type, state, attempts, next_at, created_at, delivered_at \
         FROM webhook_deliveries WHERE webhook_id = $1 AND org = $2 \
         AND (created_at < $3 OR (created_at = $3 AND id < $4)) ORDER BY created_at DESC, id DESC LIMIT $5",
    )
    .bind(&id)
    .bind(&c.org)
    .bind(page.int_key(0, i64::MAX)?)
    .bind(page.str_key(1)?)
    .bind(page.limit + 1)
    .fetch_all(&st.db.pool)
    .await?;
    let next = page.finish(&mut rows, |r| vec![json!(r.created_at), json!(r.id)]);
    // The attempts of this page's deliveries, in one query.
    let mut attempts: std::collections::HashMap<String, Vec<Value>> = Default::default();
    if !rows.is_empty() {
        let marks: Vec<String> = (1..=rows.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT delivery_id, attempt, at, status, error, duration_ms FROM webhook_attempts \
             WHERE delivery_id IN ({}) ORDER BY delivery_id, attempt",
            marks.join(", ")
        );
        let mut q = sqlx::query_as::<_, (String, i64, i64, Option<i64>, Option<String>, i64)>(
            sqlx::AssertSqlSafe(sql),
        );
        for r in &rows {
            q = q.bind(&r.id);
        }
        for (d, n, at, status, error, ms) in q.fetch_all(&st.db.pool).await? {
            attempts.entry(d).or_default().push(json!({
                "attempt": n, "at": rfc3339(at), "status": status, "error": error, "duration_ms": ms,
            }));
        }
    }
    Ok(Json(json!({
        "deliveries": rows.iter().map(|r| json!({
            "id": r.id, "event_id": r.event_id, "type": r.event_type, "state": r.state,
            "attempts": r.attempts,
            "next_attempt_at": (r.state == "pending").then(|| rfc3339(r.next_at)),
            "created_at": rfc3339(r.created_at), "delivered_at": r.delivered_at.map(rfc3339),
            "attempt_log": attempts.remove(&r.id).unwrap_or_default(),
        })).collect::<Vec<_>>(),
        "next_cursor": next,
    })))
}

/// The `Lectern-Signature` header value for `body` sent at unix time `t`.
pub fn signature(secret: &str, t: i64, body: &str) -> String {
    let mac = hmac(secret.as_bytes(), format!("{t}.{body}").as_bytes());
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// Backoff before attempt `n + 1` after `n` failures: 1 s doubling, capped at an hour.
pub fn backoff(n: i64) -> Duration {
    Duration::from_secs(1u64 << n.clamp(0, 12) as u32).min(Duration::from_secs(3600))
}

#[derive(sqlx::FromRow)]
struct Due {
    id: String,
    event_id: String,
    event_type: String,
    payload: String,
    attempts: i64,
    next_at: i64,
    url: String,
    secret: String,
}

/// Longest webhook URL accepted.
const MAX_URL: usize = 2048;

/// Records a delivery the egress policy refused as a failed attempt (retried like any other,
/// so a fixed allow-list lets it through later).
async fn record_refusal(db: &Db, d: &Due, why: &str) -> Result<(), ApiError> {
    let attempt = d.attempts + 1;
    let outcome = if attempt >= MAX_ATTEMPTS {
        "failed"
    } else {
        "pending"
    };
    metrics::counter!("lectern_webhook_deliveries_total", "outcome" => "refused").increment(1);
    sqlx::query(
        "INSERT INTO webhook_attempts (delivery_id, attempt, at, status, error, duration_ms) VALUES ($1, $2, $3, NULL, $4, 0)",
    )
    .bind(&d.id)
    .bind(attempt)
    .bind(now_ms())
    .bind(format!("refused: {why}"))
    .execute(&db.pool)
    .await?;
    sqlx::query(
        "UPDATE webhook_deliveries SET state = $1, attempts = $2, next_at = $3 WHERE id = $4",
    )
    .bind(outcome)
    .bind(attempt)
    .bind(now_ms() + backoff(d.attempts).as_millis() as i64)
    .bind(&d.id)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Delivers due outbox rows every second until `stop`.
pub async fn run_sender(
    db: Db,
    egress: crate::egress::Egress,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    // Every connect resolves through the egress policy, so a name that rebinds to a private
    // address after registration reaches nothing; redirects are never followed.
    let http = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(egress.resolver())
        .build()
        .expect("HTTP client");
    loop {
        match send_due(&db, &http, &egress).await {
            Ok(n) if n as i64 == BATCH => continue,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "webhook sender"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|v| *v) => return,
        }
    }
}

async fn send_due(
    db: &Db,
    http: &reqwest::Client,
    egress: &crate::egress::Egress,
) -> Result<usize, ApiError> {
    let now = now_ms();
    let due = sqlx::query_as::<_, Due>(
        "SELECT d.id, d.event_id, d.event_type, d.payload, d.attempts, d.next_at, w.url, w.secret \
         FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id \
         WHERE d.state = 'pending' AND d.next_at <= $1 ORDER BY d.next_at LIMIT $2",
    )
    .bind(now)
    .bind(BATCH)
    .fetch_all(&db.pool)
    .await?;
    let mut sent = 0;
    for d in due {
        // Claim by pushing the lease forward; another API node that read the same row loses.
        let lease = now_ms() + 2 * TIMEOUT.as_millis() as i64;
        let claimed = sqlx::query(
            "UPDATE webhook_deliveries SET next_at = $1 WHERE id = $2 AND next_at = $3 AND state = 'pending'",
        )
        .bind(lease)
        .bind(&d.id)
        .bind(d.next_at)
        .execute(&db.pool)
        .await?;
        if claimed.rows_affected() != 1 {
            continue;
        }
        sent += 1;
        let started = Instant::now();
        let t = chrono::Utc::now().timestamp();
        // IP literals skip the resolver: check them (and allowed hosts) here.
        let literal = match reqwest::Url::parse(&d.url) {
            Ok(u) if matches!(u.host(), Some(url::Host::Domain(_))) => Ok(()),
            Ok(u) => egress.check(&u).await,
            Err(e) => Err(e.to_string()),
        };
        if let Err(why) = literal {
            record_refusal(db, &d, &why).await?;
            continue;
        }
        let res = http
            .post(&d.url)
            .header("Content-Type", "application/json")
            .header("User-Agent", "Lectern-Webhooks/1")
            .header("Lectern-Event-Id", &d.event_id)
            .header("Lectern-Event-Type", &d.event_type)
            .header("Lectern-Signature", signature(&d.secret, t, &d.payload))
            .body(d.payload.clone())
            .send()
            .await;
        let ms = started.elapsed().as_millis() as i64;
        let (status, error) = match &res {
            Ok(r) => (Some(r.status().as_u16() as i64), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let ok = status.is_some_and(|s| (200..300).contains(&s));
        let attempt = d.attempts + 1;
        let outcome = if ok {
            "delivered"
        } else if attempt >= MAX_ATTEMPTS {
            "failed"
        } else {
            "pending"
        };
        metrics::counter!("lectern_webhook_deliveries_total", "outcome" => outcome).increment(1);
        let mut tx = db.pool.begin().await?;
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, attempt, at, status, error, duration_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&d.id)
        .bind(attempt)
        .bind(now_ms())
        .bind(status)
        .bind(error)
        .bind(ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE webhook_deliveries SET state = $1, attempts = $2, next_at = $3, delivered_at = $4 WHERE id = $5",
        )
        .bind(outcome)
        .bind(attempt)
        .bind(now_ms() + backoff(d.attempts).as_millis() as i64)
        .bind(ok.then(now_ms))
        .bind(&d.id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_and_backoff() {
        let s = signature("whsec_x", 1700000000, "{}");
        assert!(s.starts_with("t=1700000000,v1="));
        assert_eq!(s.len(), "t=1700000000,v1=".len() + 64);
        assert_ne!(s, signature("whsec_y", 1700000000, "{}"));
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(40), Duration::from_secs(3600));
    }
}
