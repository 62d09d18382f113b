//! HMAC-SHA256 playlist signatures, scoped to a video and a viewer:
//! `sig = base64url(HMAC(url_key[kid], "v2|{video}|{viewer}|{exp}"))`.
//!
//! The viewer tag `vw` is an opaque, stable per-(org, user) value, so a leaked URL can be traced
//! to whoever it was issued to, and a URL minted for one viewer cannot be re-labelled for
//! another. Keys are looked up by `kid`, so URLs signed before a secret rotation keep working
//! while the old secret is listed in `previous_secrets`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use lectern_core::auth::Keys;
use lectern_core::error::ApiError;
use lectern_core::error::Code;
use sha2::Sha256;
use std::sync::Arc;

/// The signature part of a playlist URL's query, as the signer makes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SignedQuery {
    /// Expiry, seconds since the epoch.
    pub exp: Option<String>,
    /// Key id.
    pub kid: Option<String>,
    /// Opaque viewer tag.
    pub vw: Option<String>,
    /// base64url HMAC-SHA256.
    pub sig: Option<String>,
}

impl SignedQuery {
    /// Renders the query string (`exp=…&kid=…&vw=…&sig=…`).
    pub fn to_query_string(&self) -> String {
        self.params().to_query_string()
    }

    /// The same values, borrowed, as [`Signer::verify`] takes them.
    pub fn params(&self) -> QueryParams<'_> {
        QueryParams {
            exp: self.exp.as_deref(),
            kid: self.kid.as_deref(),
            vw: self.vw.as_deref(),
            sig: self.sig.as_deref(),
        }
    }
}

pub use lectern_wire::signed::QueryParams;

/// Signs and verifies playback URLs. Cheap to clone.
#[derive(Clone)]
pub struct Signer {
    keys: Keys,
    /// An HMAC already keyed with each verifying key, by kid (current first): a request only
    /// pays for hashing its own message.
    macs: Arc<Vec<(String, Hmac<Sha256>)>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("keys", &self.keys).finish()
    }
}

fn message(mut mac: Hmac<Sha256>, video: &str, viewer: &str, exp: &str) -> Hmac<Sha256> {
    for part in [
        b"v2|".as_slice(),
        video.as_bytes(),
        b"|",
        viewer.as_bytes(),
        b"|",
        exp.as_bytes(),
    ] {
        mac.update(part);
    }
    mac
}

/// True for what a viewer tag may look like (base64url, short).
fn valid_viewer(v: &str) -> bool {
    (1..=64).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Signer {
    /// A signer over the deployment keys.
    pub fn new(keys: Keys) -> Self {
        let macs = keys
            .kids()
            .map(|kid| {
                let key = keys.url_key_for(kid).expect("listed kid");
                let mac = Hmac::<Sha256>::new_from_slice(key).expect("hmac takes any key");
                (kid.to_string(), mac)
            })
            .collect();
        Self {
            keys,
            macs: Arc::new(macs),
        }
    }

    /// The opaque viewer tag of a user: stable for the current key, reveals nothing of the id.
    pub fn viewer_tag(&self, org: &str, user: &str) -> String {
        let mut m = Hmac::<Sha256>::new_from_slice(self.keys.url_key()).expect("any key");
        m.update(format!("viewer|{org}|{user}").as_bytes());
        B64.encode(&m.finalize().into_bytes()[..12])
    }

    /// The signed query for `video` and `viewer` (a [`Signer::viewer_tag`]), valid until `exp`.
    pub fn sign(&self, video: &str, viewer: &str, exp: i64) -> SignedQuery {
        let exp = exp.to_string();
        let sig = B64.encode(
            message(self.macs[0].1.clone(), video, viewer, &exp)
                .finalize()
                .into_bytes(),
        );
        SignedQuery {
            exp: Some(exp),
            kid: Some(self.macs[0].0.clone()),
            vw: Some(viewer.to_string()),
            sig: Some(sig),
        }
    }

    /// The absolute signed master playlist URL.
    pub fn master_url(&self, base: &str, video: &str, viewer: &str, exp: i64) -> String {
        format!(
            "{base}/v/{video}/master.m3u8?{}",
            self.sign(video, viewer, exp).to_query_string()
        )
    }

    /// Checks a query: 403 when missing, tampered, for another video, signed with a retired
    /// key, or expired. Returns the expiry.
    pub fn verify(&self, video: &str, q: &QueryParams<'_>) -> Result<i64, ApiError> {
        let deny = |why: &str| {
            let mut e =
                ApiError::forbidden(format!("{why}; ask the playback endpoint for a fresh URL"));
            e.code = Code::InvalidSignature;
            e
        };
        let (Some(exp_text), Some(kid), Some(vw), Some(sig)) = (q.exp, q.kid, q.vw, q.sig) else {
            return Err(deny("this playlist URL is not signed"));
        };
        let exp: i64 = exp_text
            .parse()
            .map_err(|_| deny("this playlist URL's expiry is malformed"))?;
        if !valid_viewer(vw) {
            return Err(deny("this playlist URL's viewer is malformed"));
        }
        let mac = self
            .macs
            .iter()
            .find(|(k, _)| k == kid)
            .map(|(_, m)| m.clone())
            .ok_or_else(|| deny("this playlist URL was signed with an unknown or retired key"))?;
        let mut raw = [0u8; 32];
        let n = B64
            .decode_slice(sig, &mut raw)
            .map_err(|_| deny("this playlist URL's signature is malformed"))?;
        message(mac, video, vw, exp_text)
            .verify_slice(&raw[..n])
            .map_err(|_| deny("this playlist URL's signature does not match"))?;
        if exp < chrono::Utc::now().timestamp() {
            return Err(deny("this playlist URL has expired"));
        }
        Ok(exp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_tamper_expire() {
        let s = Signer::new(Keys::from_secret("0123456789abcdef0123"));
        let exp = chrono::Utc::now().timestamp() + 100;
        let alice = s.viewer_tag("org", "alice");
        assert_ne!(alice, s.viewer_tag("org", "bob"));
        assert_ne!(alice, s.viewer_tag("org2", "alice"));
        let q = s.sign("vid", &alice, exp);
        assert_eq!(s.verify("vid", &q.params()).unwrap(), exp);
        assert_eq!(s.verify("other", &q.params()).unwrap_err().status, 403);
        let mut t = q.clone();
        t.exp = Some((exp + 1).to_string());
        assert_eq!(s.verify("vid", &t.params()).unwrap_err().status, 403);
        let mut t = q.clone();
        t.vw = Some(s.viewer_tag("org", "bob"));
        assert_eq!(
            s.verify("vid", &t.params()).unwrap_err().status,
            403,
            "a URL cannot be re-labelled for another viewer"
        );
        let old = s.sign("vid", &alice, chrono::Utc::now().timestamp() - 1);
        assert_eq!(
            s.verify("vid", &old.params()).unwrap_err().code,
            "invalid-signature"
        );
        assert!(s.verify("vid", &QueryParams::default()).is_err());
    }

    #[test]
    fn rotation_keeps_old_urls_until_the_old_secret_is_dropped() {
        let old = Signer::new(Keys::from_secret("old-secret-0123456789"));
        let exp = chrono::Utc::now().timestamp() + 100;
        let q = old.sign("vid", "vw1", exp);
        let rotated = Signer::new(
            Keys::from_secret("new-secret-0123456789").with_previous(&["old-secret-0123456789"]),
        );
        assert!(rotated.verify("vid", &q.params()).is_ok());
        assert_ne!(rotated.sign("vid", "vw1", exp).kid, q.kid);
        let dropped = Signer::new(Keys::from_secret("new-secret-0123456789"));
        assert_eq!(dropped.verify("vid", &q.params()).unwrap_err().status, 403);
    }

    #[test]
    fn query_parsing_refuses_repeats() {
        let q = QueryParams::parse(Some("exp=1&kid=k&vw=v&sig=s&x=y")).unwrap();
        assert_eq!(q.to_query_string(), "exp=1&kid=k&vw=v&sig=s");
        assert!(QueryParams::parse(Some("exp=1&exp=2")).is_none());
        assert_eq!(QueryParams::parse(None), Some(QueryParams::default()));
    }
}
