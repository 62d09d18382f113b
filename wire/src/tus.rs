//! tus 1.0 request headers: `Upload-Metadata`, `Upload-Concat`, `Upload-Checksum`, and the
//! integer headers (`Upload-Offset`, `Upload-Length`, `Content-Length`).

use crate::Code;
use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::Invalid;

/// Largest `Upload-Metadata` header accepted, bytes.
pub const MAX_METADATA_BYTES: usize = 4096;
/// Most keys in one `Upload-Metadata` header.
pub const MAX_METADATA_KEYS: usize = 32;
/// Most partial uploads one final upload may concatenate.
pub const MAX_PARTIALS: usize = 64;

/// Parses an `Upload-Metadata` header (comma-separated `key base64value` pairs, the value
/// optional) into decoded UTF-8 values.
pub fn metadata(raw: &str) -> Result<HashMap<String, String>, Invalid> {
    let bad = |why: String| {
        Invalid::new(
            Code::InvalidMetadata,
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

/// Writes metadata as `Upload-Metadata` (keys in order, so the output is stable).
pub fn encode_metadata(meta: &HashMap<String, String>) -> String {
    let mut keys: Vec<&String> = meta.keys().collect();
    keys.sort();
    keys.iter()
        .map(|k| match meta[*k].as_str() {
            "" => k.to_string(),
            v => format!("{k} {}", STANDARD.encode(v)),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// What an `Upload-Concat` header asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Concat {
    /// No header (or an empty one): a plain upload.
    None,
    /// `partial`: a piece of a later final upload.
    Partial,
    /// `final;<url> <url>…`: the ids of the partials, in order, each once.
    Final(Vec<String>),
}

/// Parses `Upload-Concat`. Partials are named by URL (or bare id) and must be Lectern ids
/// (32 hex digits), each named once, at most [`MAX_PARTIALS`]: a final naming one partial many
/// times would make the server write far more than the client ever sent.
pub fn concat(v: &str) -> Result<Concat, Invalid> {
    let v = v.trim();
    match v {
        "" => return Ok(Concat::None),
        "partial" => return Ok(Concat::Partial),
        _ => {}
    }
    let bad = || {
        Invalid::new(Code::InvalidConcat,
            "Upload-Concat must be `partial` or `final;<url> <url>…` naming this server's partial uploads",
        )
    };
    let list = v.strip_prefix("final;").ok_or_else(bad)?;
    let ids: Vec<String> = list
        .split_whitespace()
        .map(|u| {
            u.trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    if ids.is_empty()
        || ids
            .iter()
            .any(|i| i.len() != 32 || !i.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(bad());
    }
    if ids.len() > MAX_PARTIALS {
        return Err(Invalid::new(
            Code::TooManyPartials,
            format!("a final upload may concatenate at most {MAX_PARTIALS} partial uploads"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = ids.iter().find(|i| !seen.insert(i.as_str())) {
        return Err(Invalid::new(
            Code::DuplicatePartial,
            format!("partial upload {dup} is named more than once in Upload-Concat"),
        ));
    }
    Ok(Concat::Final(ids))
}

/// Parses a non-negative integer header value: ASCII digits only (no sign, no spaces inside),
/// surrounding whitespace ignored, at most `u64::MAX`.
pub fn number(v: &str) -> Option<u64> {
    let v = v.trim_matches(|c| c == ' ' || c == '\t');
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// A checksum algorithm of the checksum extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// `sha1`.
    Sha1,
    /// `sha256`.
    Sha256,
}

impl Algorithm {
    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 => 32,
        }
    }
}

/// Algorithms advertised in `Tus-Checksum-Algorithm`.
pub const ALGORITHMS: &str = "sha1,sha256";

/// Parses `Upload-Checksum: <sha1|sha256> <base64 digest>`; the digest must have the
/// algorithm's length.
pub fn checksum(v: &str) -> Result<(Algorithm, Vec<u8>), Invalid> {
    let (algo, digest) = v.trim().split_once(' ').ok_or_else(|| {
        Invalid::new(
            Code::InvalidChecksum,
            "Upload-Checksum must be `<algorithm> <base64 digest>`",
        )
    })?;
    let algorithm = match algo {
        "sha1" => Algorithm::Sha1,
        "sha256" => Algorithm::Sha256,
        other => {
            return Err(Invalid::new(
                Code::UnsupportedChecksumAlgorithm,
                format!("checksum algorithm '{other}' is not supported; use one of {ALGORITHMS}"),
            ))
        }
    };
    let want = STANDARD.decode(digest.trim()).map_err(|_| {
        Invalid::new(
            Code::InvalidChecksum,
            "the Upload-Checksum digest is not base64",
        )
    })?;
    if want.len() != algorithm.digest_len() {
        return Err(Invalid::new(
            Code::InvalidChecksum,
            format!(
                "a {algo} digest is {} bytes; this one is {}",
                algorithm.digest_len(),
                want.len()
            ),
        ));
    }
    Ok((algorithm, want))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_digits_only() {
        assert_eq!(number(" 42 "), Some(42));
        assert_eq!(number("18446744073709551615"), Some(u64::MAX));
        for bad in ["", "+5", "-1", "4 2", "0x10", "18446744073709551616", "５"] {
            assert_eq!(number(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn metadata_round_trips() {
        let m = metadata("filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential").unwrap();
        assert_eq!(m["filename"], "world_domination_plan.pdf");
        assert_eq!(m["is_confidential"], "");
        assert_eq!(metadata(&encode_metadata(&m)).unwrap(), m);
        assert_eq!(metadata("a b c").unwrap_err().code, "invalid-metadata");
    }

    #[test]
    fn concat_lists_are_checked() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(concat(" partial ").unwrap(), Concat::Partial);
        assert_eq!(
            concat(&format!("final;http://x/files/{id}/")).unwrap(),
            Concat::Final(vec![id.into()])
        );
        assert_eq!(
            concat(&format!("final;{id} {id}")).unwrap_err().code,
            "duplicate-partial"
        );
        assert_eq!(concat("final;").unwrap_err().code, "invalid-concat");
    }

    #[test]
    fn checksums_have_the_algorithms_length() {
        let (a, d) = checksum("sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=").unwrap();
        assert_eq!((a, d.len()), (Algorithm::Sha1, 20));
        assert_eq!(checksum("sha1 AAAA").unwrap_err().code, "invalid-checksum");
        assert_eq!(
            checksum("md5 AAAA").unwrap_err().code,
            "unsupported-checksum-algorithm"
        );
    }
}
