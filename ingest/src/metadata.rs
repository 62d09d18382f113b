//! `Upload-Metadata`: comma-separated `key base64value` pairs (the value may be absent).

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use lectern_core::error::ApiError;

/// Largest `Upload-Metadata` header accepted, bytes.
pub const MAX_METADATA_BYTES: usize = 4096;
/// Most keys in one `Upload-Metadata` header.
pub const MAX_METADATA_KEYS: usize = 32;

/// Parses an `Upload-Metadata` header into decoded UTF-8 values.
pub fn parse_metadata(raw: &str) -> Result<HashMap<String, String>, ApiError> {
    let bad = |why: String| {
        ApiError::bad_request(
            "invalid-metadata",
            format!("invalid Upload-Metadata: {why}"),
        )
    };
    // Stock tus clients read HEAD's echo of this header; keep it small and sane.
    if raw.len() > MAX_METADATA_BYTES {
        return Err(bad(format!(
            "the header is {} bytes; at most {MAX_METADATA_BYTES} are accepted",
            raw.len()
        )));
    }
    let mut out = HashMap::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut it = pair.split(' ').filter(|s| !s.is_empty());
        let key = it.next().unwrap_or_default();
        let value = it.next();
        if it.next().is_some() {
            return Err(bad(format!("`{pair}` has more than a key and a value")));
        }
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(format!(
                "key `{key}` must be printable ASCII without spaces"
            )));
        }
        let value = match value {
            None => String::new(),
            Some(v) => {
                let bytes = STANDARD
                    .decode(v)
                    .map_err(|_| bad(format!("value of `{key}` is not base64")))?;
                String::from_utf8(bytes)
                    .map_err(|_| bad(format!("value of `{key}` is not UTF-8")))?
            }
        };
        if out.insert(key.to_string(), value).is_some() {
            return Err(bad(format!("key `{key}` appears twice")));
        }
        if out.len() > MAX_METADATA_KEYS {
            return Err(bad(format!("more than {MAX_METADATA_KEYS} keys")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tus_examples() {
        let m = parse_metadata("filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential")
            .unwrap();
        assert_eq!(m["filename"], "world_domination_plan.pdf");
        assert_eq!(m["is_confidential"], "");
        assert!(parse_metadata("").unwrap().is_empty());
        assert!(parse_metadata("a !!!").is_err());
        assert!(parse_metadata("a YQ==,a YQ==").is_err());
        let many: Vec<String> = (0..33).map(|i| format!("k{i} YQ==")).collect();
        assert!(parse_metadata(&many.join(",")).is_err());
        assert!(parse_metadata(&format!("title {}", "QUFB".repeat(1100))).is_err());
    }
}
