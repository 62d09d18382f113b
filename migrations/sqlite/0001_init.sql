-- Uploads (tus) and videos. Kept in step with migrations/postgres/0001_init.sql.
-- Times are epoch milliseconds in BIGINT so both backends share every query.
CREATE TABLE uploads (
    id TEXT PRIMARY KEY,
    org TEXT NOT NULL,
    owner TEXT NOT NULL,
    length BIGINT NOT NULL,
    offset_bytes BIGINT NOT NULL DEFAULT 0,
    metadata TEXT NOT NULL DEFAULT '',
    object_key TEXT NOT NULL,
    multipart_id TEXT NOT NULL,
    parts TEXT NOT NULL DEFAULT '[]',
    state TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX uploads_state_expires ON uploads (state, expires_at);

CREATE TABLE videos (
    id TEXT PRIMARY KEY,
    org TEXT NOT NULL,
    owner TEXT NOT NULL,
    title TEXT,
    lesson TEXT,
    filename TEXT,
    state TEXT NOT NULL,
    progress DOUBLE PRECISION NOT NULL DEFAULT 0,
    priority BIGINT NOT NULL DEFAULT 0,
    attempts BIGINT NOT NULL DEFAULT 0,
    worker TEXT,
    source_key TEXT NOT NULL,
    duration_s DOUBLE PRECISION,
    source_width BIGINT,
    source_height BIGINT,
    source_fps DOUBLE PRECISION,
    renditions TEXT,
    output_prefix TEXT,
    error_code TEXT,
    error_message TEXT,
    queued_at BIGINT,
    started_at BIGINT,
    finished_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX videos_org_created ON videos (org, created_at);
CREATE INDEX videos_state_priority ON videos (state, priority, queued_at);
