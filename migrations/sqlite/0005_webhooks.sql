-- Webhooks: endpoints per org, a durable outbox of events, and every delivery attempt.
-- Kept in step with migrations/postgres/0005_webhooks.sql.
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    org TEXT NOT NULL,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    events TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX webhooks_org ON webhooks (org, created_at, id);

-- One row per (event, endpoint). next_at doubles as the lease: a sender pushes it forward
-- before delivering, so a crashed sender's rows come due again.
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    org TEXT NOT NULL,
    webhook_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    delivered_at BIGINT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_at);
CREATE INDEX webhook_deliveries_hook ON webhook_deliveries (webhook_id, created_at, id);

CREATE TABLE webhook_attempts (
    delivery_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    at BIGINT NOT NULL,
    status BIGINT,
    error TEXT,
    duration_ms BIGINT NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);
