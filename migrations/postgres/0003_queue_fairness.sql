-- Org fairness and job facts. Kept in step with migrations/sqlite/0003_queue_fairness.sql.
-- task_id: the apalis task that owns the current queue entry (older tasks of the same video
-- are stale and skip). queue_priority: the effective apalis priority, class first, then the
-- org's round (see ARCHITECTURE.md, "Priority and fairness"). encode_fps: frames per second of
-- the running attempt.
ALTER TABLE videos ADD COLUMN task_id TEXT;
ALTER TABLE videos ADD COLUMN queue_priority BIGINT NOT NULL DEFAULT 0;
ALTER TABLE videos ADD COLUMN encode_fps DOUBLE PRECISION;
CREATE INDEX videos_org_state ON videos (org, state, priority, queued_at);
CREATE INDEX videos_queue ON videos (state, queue_priority, queued_at);
