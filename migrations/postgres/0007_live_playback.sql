-- Playable while transcoding. Kept in step with migrations/sqlite/0007_live_playback.sql.
-- live_prefix is the running attempt's output prefix once the first segment of every track
-- is stored: the origin serves its growing EVENT playlists until the video is ready (then
-- output_prefix takes over and live_prefix is cleared). A new attempt clears it.
ALTER TABLE videos ADD COLUMN live_prefix TEXT;
