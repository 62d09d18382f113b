//! HMAC-SHA256 playlist signatures: `sig = base64url(HMAC(url_key, "v1|video|exp"))`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use lectern_core::auth::Keys;
use lectern_core::error::ApiError;
use serde::Deserialize;
use sha2::Sha256;

/// The signature part of a playlist URL's query.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SignedQuery {
    /// Expiry, seconds since the epoch (kept as text so a malformed value is a 403, not a 400).
    pub exp: Option<String>,
    /// Key id.
    pub kid: Option<String>,
    /// base64url HMAC-SHA256.
    pub sig: Option<String>,
}

impl SignedQuery {
    /// Renders the query string (`exp=…&kid=…&sig=…`).
    pub fn to_query_string(&self) -> String {
        format!(
            "exp={}&kid={}&sig={}",
            self.exp.as_deref().unwrap_or_default(),
            self.kid.as_deref().unwrap_or_default(),
            self.sig.as_deref().unwrap_or_default()
        )
    }
}

/// Signs and verifies playback URLs.
#[derive(Clone, Debug)]
pub struct Signer {
    keys: Keys,
}

impl Signer {
    /// A signer over the deployment keys.
    pub fn new(keys: Keys) -> Self {
        Self { keys }
    }

    fn mac(&self, video: &str, exp: i64) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(self.keys.url_key()).expect("hmac takes any key");
        mac.update(format!("v1|{video}|{exp}").as_bytes());
        mac
    }

    /// The signed query for `video`, valid until `exp`.
    pub fn sign(&self, video: &str, exp: i64) -> SignedQuery {
        let sig = B64.encode(self.mac(video, exp).finalize().into_bytes());
        SignedQuery {
            exp: Some(exp.to_string()),
            kid: Some(self.keys.kid().to_string()),
            sig: Some(sig),
        }
    }

    /// The absolute signed master playlist URL.
    pub fn master_url(&self, base: &str, video: &str, exp: i64) -> String {
        format!(
            "{base}/v/{video}/master.m3u8?{}",
            self.sign(video, exp).to_query_string()
        )
    }

    /// Checks a query: 403 when missing, tampered, for another video or expired.
    pub fn verify(&self, video: &str, q: &SignedQuery) -> Result<(), ApiError> {
        let deny = |why: &str| {
            ApiError::forbidden(format!("{why}; ask the playback endpoint for a fresh URL"))
                .with_code("invalid-signature")
        };
        let (Some(exp), Some(kid), Some(sig)) =
            (q.exp.as_deref(), q.kid.as_deref(), q.sig.as_deref())
        else {
            return Err(deny("this playlist URL is not signed"));
        };
        let exp: i64 = exp
            .parse()
            .map_err(|_| deny("this playlist URL's expiry is malformed"))?;
        if kid != self.keys.kid() {
            return Err(deny("this playlist URL was signed with an unknown key"));
        }
        let sig = B64
            .decode(sig)
            .map_err(|_| deny("this playlist URL's signature is malformed"))?;
        self.mac(video, exp)
            .verify_slice(&sig)
            .map_err(|_| deny("this playlist URL's signature does not match"))?;
        if exp < chrono::Utc::now().timestamp() {
            return Err(deny("this playlist URL has expired"));
        }
        Ok(())
    }
}

trait WithCode {
    fn with_code(self, code: &'static str) -> Self;
}

impl WithCode for ApiError {
    fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_tamper_expire() {
        let s = Signer::new(Keys::from_secret("0123456789abcdef0123"));
        let exp = chrono::Utc::now().timestamp() + 100;
        let q = s.sign("vid", exp);
        s.verify("vid", &q).unwrap();
        assert_eq!(s.verify("other", &q).unwrap_err().status, 403);
        let mut t = q.clone();
        t.exp = Some((exp + 1).to_string());
        assert_eq!(s.verify("vid", &t).unwrap_err().status, 403);
        let old = s.sign("vid", chrono::Utc::now().timestamp() - 1);
        assert_eq!(s.verify("vid", &old).unwrap_err().code, "invalid-signature");
        assert!(s.verify("vid", &SignedQuery::default()).is_err());
    }
}
