-- Caption tracks (WebVTT) per video and language. Kept in step with
-- migrations/postgres/0006_captions_poster.sql. token names the immutable revision folder in the store
-- (videos/{video}/{token}/subs-{lang}/), so a new upload never overwrites a cached object.
CREATE TABLE captions (
    video_id TEXT NOT NULL,
    lang TEXT NOT NULL,
    label TEXT NOT NULL,
    token TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (video_id, lang)
);

-- The poster JPEG's key under the published prefix (NULL: no poster could be made).
ALTER TABLE videos ADD COLUMN poster_key TEXT;
