//! Cursor paging shared by every list: `?limit=` (default 20, maximum 100) and an opaque
//! `?cursor=` (base64url of the last row's sort key) taken from the previous `next_cursor`.

use crate::error::ApiError;
use crate::error::Code;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde_json::Value;

/// Default page size.
pub const DEFAULT_LIMIT: i64 = 20;
/// Largest page size.
pub const MAX_LIMIT: i64 = 100;

/// Query parameters of a list.
#[derive(Debug, Default, serde::Deserialize)]
pub struct PageQuery {
    /// Page size.
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// State filter (videos).
    pub state: Option<String>,
}

/// A parsed page request.
#[derive(Debug)]
pub struct Page {
    /// Rows to return.
    pub limit: i64,
    /// Sort key of the last row already seen.
    pub after: Option<Vec<Value>>,
}

impl PageQuery {
    /// Validates limit and cursor; a cursor must have `keys` elements.
    pub fn page(&self, keys: usize) -> Result<Page, ApiError> {
        let limit = match self.limit.as_deref() {
            None | Some("") => DEFAULT_LIMIT,
            Some(l) => l
                .parse::<i64>()
                .ok()
                .filter(|l| (1..=MAX_LIMIT).contains(l))
                .ok_or_else(|| {
                    ApiError::new(
                        Code::InvalidLimit,
                        format!("limit must be a whole number from 1 to {MAX_LIMIT}"),
                    )
                })?,
        };
        let after = match self.cursor.as_deref() {
            None | Some("") => None,
            Some(c) => Some(
                B64.decode(c)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Vec<Value>>(&b).ok())
                    .filter(|v| v.len() == keys)
                    .ok_or_else(|| {
                        ApiError::new(
                            Code::InvalidCursor,
                            "cursor must be a next_cursor value from this list",
                        )
                    })?,
            ),
        };
        Ok(Page { limit, after })
    }
}

impl Page {
    /// The cursor's `i`-th key as a string (`""` without a cursor).
    pub fn str_key(&self, i: usize) -> Result<String, ApiError> {
        match &self.after {
            None => Ok(String::new()),
            Some(v) => v[i].as_str().map(str::to_string).ok_or_else(bad_cursor),
        }
    }

    /// The cursor's `i`-th key as an integer (`default` without a cursor).
    pub fn int_key(&self, i: usize, default: i64) -> Result<i64, ApiError> {
        match &self.after {
            None => Ok(default),
            Some(v) => v[i].as_i64().ok_or_else(bad_cursor),
        }
    }

    /// Cuts the extra row fetched to detect a next page and builds `next_cursor`.
    pub fn finish<T>(&self, rows: &mut Vec<T>, key: impl Fn(&T) -> Vec<Value>) -> Value {
        if rows.len() as i64 > self.limit {
            rows.truncate(self.limit as usize);
            rows.last()
                .map(|r| Value::String(B64.encode(serde_json::to_vec(&key(r)).unwrap_or_default())))
                .unwrap_or(Value::Null)
        } else {
            Value::Null
        }
    }
}

fn bad_cursor() -> ApiError {
    ApiError::new(
        Code::InvalidCursor,
        "cursor must be a next_cursor value from this list",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn limits_and_cursors() {
        let q = |l: Option<&str>, c: Option<&str>| PageQuery {
            limit: l.map(str::to_string),
            cursor: c.map(str::to_string),
            state: None,
        };
        assert_eq!(q(None, None).page(1).unwrap().limit, 20);
        assert!(q(Some("101"), None).page(1).is_err());
        assert!(q(Some("0"), None).page(1).is_err());
        assert!(q(None, Some("garbage!")).page(1).is_err());
        let p = q(Some("2"), None).page(2).unwrap();
        let mut rows = vec![(1, "a"), (2, "b"), (3, "c")];
        let next = p.finish(&mut rows, |r| vec![json!(r.0), json!(r.1)]);
        assert_eq!(rows.len(), 2);
        let p2 = q(Some("2"), next.as_str()).page(2).unwrap();
        assert_eq!(
            (p2.int_key(0, 0).unwrap(), p2.str_key(1).unwrap()),
            (2, "b".to_string())
        );
        assert!(
            q(None, next.as_str()).page(3).is_err(),
            "a cursor from another list"
        );
    }
}
