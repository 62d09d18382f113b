-- The LMS module: courses, lessons, enrollments, progress. Kept in step with
-- migrations/postgres/0004_lms.sql. Every row carries its org so every query is scoped by it.
-- Booleans are BIGINT 0/1 so one query text serves both backends.
CREATE TABLE courses (
    id TEXT PRIMARY KEY,
    org TEXT NOT NULL,
    title TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX courses_org_created ON courses (org, created_at, id);

CREATE TABLE lessons (
    id TEXT PRIMARY KEY,
    org TEXT NOT NULL,
    course_id TEXT NOT NULL,
    title TEXT NOT NULL,
    position BIGINT NOT NULL,
    video_id TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX lessons_course_position ON lessons (course_id, position, id);
CREATE INDEX lessons_video ON lessons (video_id);

CREATE TABLE enrollments (
    course_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    org TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (course_id, user_id)
);
CREATE INDEX enrollments_org_user ON enrollments (org, user_id, created_at);

CREATE TABLE progress (
    user_id TEXT NOT NULL,
    lesson_id TEXT NOT NULL,
    org TEXT NOT NULL,
    course_id TEXT NOT NULL,
    position_s DOUBLE PRECISION NOT NULL,
    watched TEXT NOT NULL,
    watched_s DOUBLE PRECISION NOT NULL,
    completed BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, lesson_id)
);
CREATE INDEX progress_course_user ON progress (course_id, user_id);
CREATE INDEX progress_org_user_recent ON progress (org, user_id, updated_at);
