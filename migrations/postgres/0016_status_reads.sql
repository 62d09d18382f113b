-- The queue's run-time estimate reads the last 20 finished jobs: without this index every status
-- read of a queued video sorted all ready videos by finish time.
CREATE INDEX videos_state_finished ON videos (state, finished_at);

-- Every commit that touches a video (or its chunks) tells the API nodes, which keep its status
-- answer until then (core/src/statuscache.rs). Identical notifications within one transaction
-- are sent once, so a plan that writes a hundred chunk rows notifies once. The trigger's
-- argument names the column that holds the video's id.
CREATE FUNCTION lectern_video_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('lectern_videos',
        to_jsonb(CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END) ->> TG_ARGV[0]);
    RETURN NULL;
END $$;

CREATE TRIGGER videos_changed AFTER INSERT OR UPDATE OR DELETE ON videos
    FOR EACH ROW EXECUTE FUNCTION lectern_video_changed('id');
CREATE TRIGGER chunks_changed AFTER INSERT OR UPDATE OR DELETE ON chunks
    FOR EACH ROW EXECUTE FUNCTION lectern_video_changed('video_id');
