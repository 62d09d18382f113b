-- Every transcode attempt's output prefix, recorded before its first object is written (kept in
-- step with the other migrations folder). Publishing deletes the video's other prefixes, and a
-- sweep retries deletions that failed (the store was unreachable, the worker was killed), so no
-- attempt's objects are left behind for good.
CREATE TABLE attempt_prefixes (
    prefix TEXT PRIMARY KEY,
    video_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX attempt_prefixes_video ON attempt_prefixes (video_id);
