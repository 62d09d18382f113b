-- Transcode worker processes, for operators. Kept in step with migrations/postgres/0008_transcode_nodes.sql.
-- Not called "workers": apalis's SQLite table is Workers, and SQLite names are case-insensitive.
-- A process upserts its row every heartbeat and deletes it when it stops cleanly; a row whose
-- last_seen is older than three heartbeats belongs to a dead process.
CREATE TABLE transcode_nodes (
    name TEXT PRIMARY KEY,
    slots BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    last_seen BIGINT NOT NULL
);
