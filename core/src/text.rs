//! Bounds on the text users send, checked in one place so that create and update paths agree,
//! counted in characters (a CJK title is as long as it looks), and free of control characters
//! wherever the text may reach a playlist, a header or a log line.

use crate::error::ApiError;
use crate::error::Code;

/// Longest title, in characters.
pub const TITLE_MAX: usize = 300;
/// Longest description, in characters.
pub const DESCRIPTION_MAX: usize = 10_000;
/// Longest id accepted in a path (Lectern's own are 32 characters; LMS ids may be longer).
pub const ID_MAX: usize = 128;

/// True when `s` holds a control character (NUL, CR, LF, the other C0 and C1 codes).
pub fn has_controls(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// A title, trimmed: 1–300 characters, no control characters.
pub fn title(t: &str) -> Result<&str, ApiError> {
    let t = t.trim();
    if t.is_empty() || t.chars().count() > TITLE_MAX || has_controls(t) {
        return Err(ApiError::new(
            Code::InvalidTitle,
            "title must be 1 to 300 characters, without control characters",
        ));
    }
    Ok(t)
}

/// A description: at most 10,000 characters (line breaks and tabs allowed, other controls not).
pub fn description(d: &str) -> Result<(), ApiError> {
    if d.chars().count() > DESCRIPTION_MAX
        || d.chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(ApiError::new(
            Code::InvalidDescription,
            "description must be at most 10,000 characters",
        ));
    }
    Ok(())
}

/// True for an id fit for a query and a path: 1–128 of `A–Z a–z 0–9 . _ -`. Anything else
/// (NUL bytes, which PostgreSQL refuses in text, slashes, spaces) is answered before any query.
pub fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= ID_MAX
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_count_characters_not_bytes() {
        let cjk = "講".repeat(150);
        assert_eq!(title(&cjk).unwrap(), cjk);
        assert!(title(&"講".repeat(301)).is_err());
        assert!(title(&"a".repeat(300)).is_ok());
        assert!(title("  ").is_err());
        assert!(title("a\r\n#EXT-X-ENDLIST").is_err());
        assert!(title("a\u{0}b").is_err());
    }

    #[test]
    fn ids_have_a_safe_shape() {
        assert!(is_id("0123abcd"));
        assert!(is_id("lesson-1.a_b"));
        for bad in ["", "a\0b", "a/b", "a b", "é", &"a".repeat(129)] {
            assert!(!is_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn descriptions_keep_line_breaks_and_bound_length() {
        assert!(description("line one\nline two\tend").is_ok());
        assert!(description(&"x".repeat(10_001)).is_err());
        assert!(description("bell\u{7}").is_err());
    }
}
