-- The queue's run-time estimate reads the last 20 finished jobs: without this index every status
-- read of a queued video sorted all ready videos by finish time.
CREATE INDEX videos_state_finished ON videos (state, finished_at);
