-- Whether a finished chunk is in the live (EVENT) playlists of its attempt: they grow only over
-- chunks finished without a gap from the first, and the stitch step marks every chunk so that
-- no later growth step overwrites the VOD playlists (kept in step with the other folder).
ALTER TABLE chunks ADD COLUMN live BIGINT NOT NULL DEFAULT 0;
