-- Crashes of the encoder process on a video's input (kept in step with the other migrations
-- folder). Two crashes fail the video with `encoder-crashed`; an admin retry resets the count.
ALTER TABLE videos ADD COLUMN encoder_crashes INTEGER NOT NULL DEFAULT 0;
