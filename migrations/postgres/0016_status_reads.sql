-- The queue's run-time estimate reads the last 20 finished jobs: without this index every status
-- read of a queued video sorted all ready videos by finish time.
CREATE INDEX videos_state_finished ON videos (state, finished_at);

-- Every commit that touches a video (or its chunks) tells the API nodes, which keep its status
-- answer until then (core/src/statuscache.rs). The payload is the video's id, prefixed `q:`
-- when the change can move the queue (a video's state, class or queue time; a video added or
-- removed): every queued video's place and ETA hang on those, not on a running video's
-- progress. Identical notifications within one transaction are sent once, so a plan that
-- writes a hundred chunk rows notifies once.
CREATE FUNCTION lectern_video_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('lectern_videos', 'q:' || OLD.id);
    ELSIF TG_OP = 'INSERT' OR (OLD.state, OLD.queue_priority, OLD.queued_at)
            IS DISTINCT FROM (NEW.state, NEW.queue_priority, NEW.queued_at) THEN
        PERFORM pg_notify('lectern_videos', 'q:' || NEW.id);
    ELSE
        PERFORM pg_notify('lectern_videos', NEW.id);
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION lectern_chunk_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('lectern_videos',
        CASE WHEN TG_OP = 'DELETE' THEN OLD.video_id ELSE NEW.video_id END);
    RETURN NULL;
END $$;

CREATE TRIGGER videos_changed AFTER INSERT OR UPDATE OR DELETE ON videos
    FOR EACH ROW EXECUTE FUNCTION lectern_video_changed();
CREATE TRIGGER chunks_changed AFTER INSERT OR UPDATE OR DELETE ON chunks
    FOR EACH ROW EXECUTE FUNCTION lectern_chunk_changed();
