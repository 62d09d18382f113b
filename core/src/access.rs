//! Who may watch a video: the seam between the core video API and whatever decides which
//! learners see what. With the LMS built in, enrollments decide (a learner watches the
//! videos of lessons in courses they are enrolled in); without it, the integrator's own
//! system decides by whom it gives a learner token, and a learner watches any video of its
//! org ([`OrgWide`]).

use async_trait::async_trait;

use crate::error::ApiError;

/// Decides whether a learner may watch a video of its org.
#[async_trait]
pub trait PlaybackAccess: Send + Sync {
    /// Whether learner `user` of `org` may watch `video` (instructors and admins always may).
    async fn learner_may_watch(&self, org: &str, user: &str, video: &str)
        -> Result<bool, ApiError>;

    /// Forgets cached decisions, on every node, after a video went away.
    async fn invalidate(&self) {}
}

/// Every learner of an org may watch the org's videos (the LMS-less default).
pub struct OrgWide;

#[async_trait]
impl PlaybackAccess for OrgWide {
    async fn learner_may_watch(&self, _: &str, _: &str, _: &str) -> Result<bool, ApiError> {
        Ok(true)
    }
}
