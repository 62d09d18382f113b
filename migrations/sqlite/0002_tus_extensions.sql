-- tus extensions: tail objects (bytes short of a whole part), concatenation and deferred
-- lengths (length = -1). Kept in step with migrations/postgres/0002_tus_extensions.sql.
ALTER TABLE uploads ADD COLUMN tail_key TEXT;
ALTER TABLE uploads ADD COLUMN tail_size BIGINT NOT NULL DEFAULT 0;
ALTER TABLE uploads ADD COLUMN concat TEXT NOT NULL DEFAULT '';
ALTER TABLE uploads ADD COLUMN partials TEXT NOT NULL DEFAULT '[]';
