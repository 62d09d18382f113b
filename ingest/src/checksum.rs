//! The checksum extension: `Upload-Checksum: <sha1|sha256> <base64 digest>` over a PATCH body.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use lectern_core::error::ApiError;
use sha2::Digest;

/// Algorithms advertised in `Tus-Checksum-Algorithm`.
pub const ALGORITHMS: &str = "sha1,sha256";

/// A running digest and the value it must reach.
pub enum Checksum {
    /// SHA-1.
    Sha1(sha1::Sha1, Vec<u8>),
    /// SHA-256.
    Sha256(sha2::Sha256, Vec<u8>),
}

impl Checksum {
    /// Parses the header; 400 for an unknown algorithm or a malformed digest.
    pub fn parse(header: &str) -> Result<Self, ApiError> {
        let (algo, digest) = header.trim().split_once(' ').ok_or_else(|| {
            ApiError::bad_request(
                "invalid-checksum",
                "Upload-Checksum must be `<algorithm> <base64 digest>`",
            )
        })?;
        let digest = STANDARD.decode(digest.trim()).map_err(|_| {
            ApiError::bad_request(
                "invalid-checksum",
                "the Upload-Checksum digest is not base64",
            )
        })?;
        match algo {
            "sha1" => Ok(Checksum::Sha1(sha1::Sha1::new(), digest)),
            "sha256" => Ok(Checksum::Sha256(sha2::Sha256::new(), digest)),
            other => Err(ApiError::bad_request(
                "unsupported-checksum-algorithm",
                format!("checksum algorithm '{other}' is not supported; use one of {ALGORITHMS}"),
            )),
        }
    }

    /// Feeds body bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Checksum::Sha1(h, _) => h.update(data),
            Checksum::Sha256(h, _) => h.update(data),
        }
    }

    /// True when the body matched the declared digest.
    pub fn matches(self) -> bool {
        match self {
            Checksum::Sha1(h, want) => h.finalize().as_slice() == want.as_slice(),
            Checksum::Sha256(h, want) => h.finalize().as_slice() == want.as_slice(),
        }
    }
}

/// The 460 answer for a body whose checksum does not match.
pub fn mismatch() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::from_u16(460).expect("460 is a valid status"),
        "checksum-mismatch",
        "the PATCH body does not match Upload-Checksum; nothing was stored, send the chunk again",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_and_refuses() {
        // sha1("abc") and sha256("abc")
        let mut c = Checksum::parse("sha1 qZk+NkcGgWq6PiVxeFDCbJzQ2J0=").unwrap();
        c.update(b"abc");
        assert!(c.matches());
        let mut c = Checksum::parse("sha256 ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=").unwrap();
        c.update(b"abd");
        assert!(!c.matches());
        assert_eq!(
            Checksum::parse("md5 AAAA").err().unwrap().code,
            "unsupported-checksum-algorithm"
        );
        assert_eq!(mismatch().status.as_u16(), 460);
    }
}
