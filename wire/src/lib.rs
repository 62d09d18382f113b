//! The formats Lectern reads from untrusted input and the playlist text it writes from it:
//! tus headers ([`tus`]), HTTP `Range` ([`range`]), the signature query of playback URLs
//! ([`signed`]), WebVTT ([`webvtt`]) and the master playlist's rewrite ([`playlist`]).
//!
//! Nothing here does I/O or depends on the rest of Lectern, so each parser can be fuzzed on
//! its own (`fuzz/`) and builds in seconds; the crates that serve HTTP map [`Invalid`] onto
//! their error responses.

mod code;
pub mod playlist;
pub mod range;
pub mod signed;
pub mod tus;
pub mod webvtt;

pub use code::Code;

/// Why an input was refused: a stable kebab-case code and a message that says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Stable kebab-case code, as the API answers it.
    pub code: Code,
    /// What is wrong and what to send instead.
    pub message: String,
}

impl Invalid {
    /// An `Invalid` with this code and message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Invalid {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Invalid {}
