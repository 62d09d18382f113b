//! HTTP `Range: bytes=…` (RFC 9110 §14.1), single ranges only.

/// The range cannot be served (answered 416 with the object's size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsatisfiable;

/// A byte range as HTTP expresses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=a-b`, both ends inclusive.
    Inclusive(u64, u64),
    /// `bytes=a-`.
    From(u64),
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

impl ByteRange {
    /// Parses a single-range `Range` header value; `None` for absent or multi-range headers
    /// (which are then served whole, as RFC 9110 allows).
    pub fn parse_header(v: &str) -> Option<Result<Self, Unsatisfiable>> {
        let spec = v.trim().strip_prefix("bytes=")?;
        if spec.contains(',') {
            return None;
        }
        let (a, b) = spec.split_once('-')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
        let (a, b) = (a.trim(), b.trim());
        if (!a.is_empty() && !digits(a)) || (!b.is_empty() && !digits(b)) {
            return Some(Err(Unsatisfiable));
        }
        // A last position too large for u64 still means "to the end"; a first one that large
        // is past any object.
        let num = |s: &str| s.parse::<u64>().unwrap_or(u64::MAX);
        Some(match (a.is_empty(), b.is_empty()) {
            (true, false) => Ok(ByteRange::Suffix(num(b))),
            (false, true) => Ok(ByteRange::From(num(a))),
            (false, false) => match (num(a), num(b)) {
                (a, b) if a <= b => Ok(ByteRange::Inclusive(a, b)),
                _ => Err(Unsatisfiable),
            },
            (true, true) => Err(Unsatisfiable),
        })
    }

    /// Resolves against an object size into a half-open `start..end`, never empty.
    pub fn resolve(self, size: u64) -> Result<std::ops::Range<u64>, Unsatisfiable> {
        let r = match self {
            // A last-byte-pos past the end means "to the end" (RFC 9110 §14.1.2), even u64::MAX.
            ByteRange::Inclusive(a, b) => a..b.saturating_add(1).min(size),
            ByteRange::From(a) => a..size,
            ByteRange::Suffix(n) => size.saturating_sub(n)..size,
        };
        if r.start >= size || r.start >= r.end {
            return Err(Unsatisfiable);
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_resolve() {
        let p = |s| ByteRange::parse_header(s);
        assert_eq!(
            p("bytes=0-18446744073709551615")
                .unwrap()
                .unwrap()
                .resolve(10),
            Ok(0..10)
        );
        assert_eq!(
            p("bytes=0-99999999999999999999")
                .unwrap()
                .unwrap()
                .resolve(10),
            Ok(0..10)
        );
        assert_eq!(p("bytes=-3").unwrap().unwrap().resolve(10), Ok(7..10));
        assert_eq!(p("bytes=4-").unwrap().unwrap().resolve(10), Ok(4..10));
        assert_eq!(
            p("bytes=10-").unwrap().unwrap().resolve(10),
            Err(Unsatisfiable)
        );
        assert_eq!(
            p("bytes=-0").unwrap().unwrap().resolve(10),
            Err(Unsatisfiable)
        );
        assert_eq!(p("bytes=5-4"), Some(Err(Unsatisfiable)));
        assert_eq!(p("bytes=+1-2"), Some(Err(Unsatisfiable)));
        assert_eq!(p("bytes=0-1,3-4"), None);
        assert_eq!(p("items=0-1"), None);
    }
}
