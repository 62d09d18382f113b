-- Chunked transcoding: a long source is cut into video chunks (a whole number of segments
-- each) plus one audio task, every one its own queue task, so several workers encode one
-- lecture at once. One row per task of an attempt; the attempt that wrote them owns them
-- (kept in step with the other migrations folder).
CREATE TABLE chunks (
    video_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    idx BIGINT NOT NULL,
    kind TEXT NOT NULL,
    start_frame BIGINT NOT NULL,
    frames BIGINT,
    weight REAL NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    worker TEXT,
    tries BIGINT NOT NULL DEFAULT 0,
    progress REAL NOT NULL DEFAULT 0,
    result TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (video_id, attempt, idx)
);
