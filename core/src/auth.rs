//! Bearer tokens: JWT HS256 with `sub`, `org`, `role`, `exp`, `iat` and a `kid` header, keyed by
//! the deployment secret so an LMS can mint them itself.

use std::path::Path;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

type HmacSha256 = Hmac<Sha256>;

/// Clock skew tolerated on `exp` and `iat`, in seconds.
pub const LEEWAY_S: i64 = 60;

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Watches what it may.
    Learner,
    /// Uploads and manages its org's videos.
    Instructor,
    /// Administers its own org.
    Admin,
    /// Runs the platform across orgs.
    Operator,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "learner" => Ok(Role::Learner),
            "instructor" => Ok(Role::Instructor),
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            _ => Err(format!(
                "unknown role '{s}': use learner, instructor, admin or operator"
            )),
        }
    }
}

/// The verified claims of a bearer token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Organisation the user belongs to.
    pub org: String,
    /// The user's role.
    pub role: Role,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Issued-at, seconds since the epoch.
    pub iat: i64,
    /// Not-before, seconds since the epoch (LMSs mint their own tokens and may set it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
}

impl Claims {
    /// True for roles that may upload and manage videos of their org.
    pub fn can_manage_videos(&self) -> bool {
        matches!(self.role, Role::Instructor | Role::Admin)
    }

    /// Errors with 403 unless the role may manage videos.
    pub fn require_manager(&self) -> Result<(), ApiError> {
        if self.can_manage_videos() {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "this needs an instructor or admin token of the video's org",
            ))
        }
    }
}

/// One secret and the keys derived from it.
#[derive(Clone)]
struct KeyMaterial {
    secret: Vec<u8>,
    kid: String,
    url_key: Vec<u8>,
}

impl KeyMaterial {
    fn derive(secret: &str) -> Self {
        let secret = secret.as_bytes().to_vec();
        let kid = hex8(&Sha256::digest(&secret));
        // A separate key for URLs, so a leaked URL signature says nothing about tokens.
        let mut mac = HmacSha256::new_from_slice(&secret).expect("hmac takes any key");
        mac.update(b"lectern/url-signing/v1");
        let url_key = mac.finalize().into_bytes().to_vec();
        Self {
            secret,
            kid,
            url_key,
        }
    }
}

/// The deployment's keyring: the current secret, which signs everything new, and previous
/// secrets, which still verify tokens and URLs issued before a rotation. Each is named by its
/// `kid` (a fingerprint), carried in token headers and signed URLs.
#[derive(Clone)]
pub struct Keys(std::sync::Arc<Ring>);

/// The key material behind [`Keys`], shared so that cloning the keys (every request's state)
/// allocates nothing.
struct Ring {
    current: KeyMaterial,
    previous: Vec<KeyMaterial>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("kid", &self.0.current.kid)
            .field(
                "previous",
                &self.0.previous.iter().map(|k| &k.kid).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// Derives the token key id and URL-signing key from a secret.
    pub fn from_secret(secret: &str) -> Self {
        Self(std::sync::Arc::new(Ring {
            current: KeyMaterial::derive(secret),
            previous: Vec::new(),
        }))
    }

    /// Adds retired secrets that still verify (but never sign), so a rotation does not break
    /// tokens and playback URLs already handed out.
    pub fn with_previous<S: AsRef<str>>(self, secrets: &[S]) -> Self {
        let mut previous: Vec<KeyMaterial> = self.0.previous.clone();
        for s in secrets {
            let k = KeyMaterial::derive(s.as_ref());
            if k.kid != self.0.current.kid && !previous.iter().any(|p| p.kid == k.kid) {
                previous.push(k);
            }
        }
        Self(std::sync::Arc::new(Ring {
            current: self.0.current.clone(),
            previous,
        }))
    }

    /// Every key id that verifies, the current one first.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        std::iter::once(&self.0.current)
            .chain(&self.0.previous)
            .map(|k| k.kid.as_str())
    }

    fn by_kid(&self, kid: &str) -> Option<&KeyMaterial> {
        std::iter::once(&self.0.current)
            .chain(&self.0.previous)
            .find(|k| k.kid == kid)
    }

    /// Finds the secret the way every command does: an explicit one, else the file in the data
    /// folder; `create` generates and keeps one when there is none.
    pub fn load(explicit: Option<&str>, data_dir: &Path, create: bool) -> anyhow::Result<Self> {
        if let Some(s) = explicit {
            return Ok(Self::from_secret(s));
        }
        let path = data_dir.join("secret");
        match std::fs::read_to_string(&path) {
            Ok(s) if !s.trim().is_empty() => Ok(Self::from_secret(s.trim())),
            Ok(_) | Err(_) if create => {
                std::fs::create_dir_all(data_dir)?;
                let mut bytes = [0u8; 32];
                rand::fill(&mut bytes);
                let s = B64.encode(bytes);
                write_private(&path, &s)?;
                tracing::info!(path = %path.display(), "generated a new signing secret");
                Ok(Self::from_secret(&s))
            }
            _ => anyhow::bail!(
                "no secret: set LECTERN_SECRET, or point --data-dir at the folder `lectern serve` uses ({} has no secret file)",
                data_dir.display()
            ),
        }
    }

    /// Key id of the current secret, written in token headers and signed URLs.
    pub fn kid(&self) -> &str {
        &self.0.current.kid
    }

    /// The current key for playback URL signatures.
    pub fn url_key(&self) -> &[u8] {
        &self.0.current.url_key
    }

    /// The URL-signing key named `kid`, current or previous.
    pub fn url_key_for(&self, kid: &str) -> Option<&[u8]> {
        self.by_kid(kid).map(|k| k.url_key.as_slice())
    }

    /// Mints a token valid for `ttl_s` seconds.
    pub fn mint(&self, sub: &str, org: &str, role: Role, ttl_s: i64) -> String {
        let iat = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: sub.into(),
            org: org.into(),
            role,
            exp: iat + ttl_s,
            iat,
            nbf: None,
        };
        let header = serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": self.0.current.kid});
        let signing_input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(serde_json::to_vec(&claims).expect("claims serialize"))
        );
        let sig = B64.encode(hmac(&self.0.current.secret, signing_input.as_bytes()));
        format!("{signing_input}.{sig}")
    }

    /// Verifies signature, algorithm, key id and times; returns the claims.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let bad =
            |why: &str| ApiError::unauthorized(format!("invalid token: {why}; get a new one"));
        let mut parts = token.split('.');
        let (h, p, s) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(h), Some(p), Some(s), None) => (h, p, s),
            _ => return Err(bad("not a JWT")),
        };
        #[derive(Deserialize)]
        struct Header {
            alg: String,
            kid: Option<String>,
        }
        let header: Header = B64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| bad("malformed header"))?;
        if header.alg != "HS256" {
            return Err(bad("algorithm must be HS256"));
        }
        let key = match header.kid.as_deref() {
            Some(kid) => self
                .by_kid(kid)
                .ok_or_else(|| bad("unknown key id (was the secret rotated out?)"))?,
            None => &self.0.current,
        };
        let sig = B64.decode(s).map_err(|_| bad("malformed signature"))?;
        let mut mac = HmacSha256::new_from_slice(&key.secret).expect("hmac takes any key");
        mac.update(h.as_bytes());
        mac.update(b".");
        mac.update(p.as_bytes());
        mac.verify_slice(&sig).map_err(|_| bad("bad signature"))?;
        let claims: Claims = B64
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| bad("malformed claims"))?;
        let now = chrono::Utc::now().timestamp();
        if claims.exp + LEEWAY_S < now {
            return Err(bad("expired"));
        }
        if claims.iat - LEEWAY_S > now {
            return Err(bad("issued in the future"));
        }
        if claims.nbf.is_some_and(|nbf| nbf - LEEWAY_S > now) {
            return Err(bad("not valid yet (nbf)"));
        }
        Ok(claims)
    }
}

/// HMAC-SHA256 of `msg` under `key`.
pub fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("hmac takes any key");
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

fn hex8(bytes: &[u8]) -> String {
    bytes[..4].iter().map(|b| format!("{b:02x}")).collect()
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

/// Parses a duration such as `90s`, `15m`, `1h` or `7d` into seconds.
pub fn parse_ttl(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .map_err(|_| format!("invalid duration '{s}': use e.g. 90s, 15m, 1h, 7d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("invalid duration unit in '{s}': use s, m, h or d")),
    };
    Ok(n * mult)
}

/// Something that holds the verification keys, so the extractor works with any app state.
pub trait HasKeys {
    /// The keys that verify bearer tokens.
    fn keys(&self) -> &Keys;
}

/// The token of an `Authorization` value with the `Bearer` scheme, matched case-insensitively
/// (RFC 9110 §11.1): the one parser the extractor and the rate limiter share.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_once(' ')?;
    let token = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Extracts and verifies `Authorization: Bearer …`; rejects with 401 JSON.
#[derive(Debug, Clone)]
pub struct Auth(pub Claims);

impl<S: HasKeys + Send + Sync> FromRequestParts<S> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::unauthorized("missing bearer token: send `Authorization: Bearer <token>`")
            })?;
        let token = bearer_token(header).ok_or_else(|| {
            ApiError::unauthorized("the Authorization header must be `Bearer <token>`")
        })?;
        Ok(Auth(state.keys().verify(token)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for v in ["Bearer abc", "bearer abc", "BEARER  abc ", "bEaReR abc"] {
            assert_eq!(bearer_token(v), Some("abc"), "{v}");
        }
        for v in ["Basic abc", "Bearer", "Bearer ", "Bearerabc", ""] {
            assert_eq!(bearer_token(v), None, "{v}");
        }
    }

    #[test]
    fn nbf_is_honoured_with_the_same_skew_as_exp() {
        let k = Keys::from_secret("0123456789abcdef0123");
        let now = chrono::Utc::now().timestamp();
        let mint = |nbf: i64| {
            let h = B64.encode(format!(r#"{{"alg":"HS256","kid":"{}"}}"#, k.0.current.kid));
            let p = B64.encode(format!(
                r#"{{"sub":"u","org":"o","role":"learner","exp":{},"iat":{now},"nbf":{nbf}}}"#,
                now + 3600
            ));
            let sig = B64.encode(hmac(&k.0.current.secret, format!("{h}.{p}").as_bytes()));
            format!("{h}.{p}.{sig}")
        };
        assert!(k.verify(&mint(now - 10)).is_ok());
        assert!(k.verify(&mint(now + 30)).is_ok(), "within the 60 s skew");
        let e = k.verify(&mint(now + 600)).unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn roundtrip_and_tamper() {
        let k = Keys::from_secret("0123456789abcdef0123");
        let t = k.mint("u1", "org1", Role::Instructor, 3600);
        let c = k.verify(&t).unwrap();
        assert_eq!(
            (c.sub.as_str(), c.org.as_str(), c.role),
            ("u1", "org1", Role::Instructor)
        );
        let other = Keys::from_secret("another-secret-entirely");
        assert_eq!(other.verify(&t).unwrap_err().status, 401);
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged =
            B64.encode(br#"{"sub":"u1","org":"org2","role":"admin","exp":9999999999,"iat":0}"#);
        parts[1] = &forged;
        assert_eq!(k.verify(&parts.join(".")).unwrap_err().status, 401);
    }

    #[test]
    fn rotated_secrets_still_verify_but_never_sign() {
        let old = Keys::from_secret("the-old-secret-0123456789");
        let t = old.mint("u1", "org1", Role::Learner, 3600);
        let new = Keys::from_secret("the-new-secret-0123456789");
        assert!(new.verify(&t).is_err(), "unknown kid");
        let ring = new.clone().with_previous(&["the-old-secret-0123456789"]);
        assert_eq!(ring.verify(&t).unwrap().sub, "u1");
        assert_eq!(ring.kid(), new.kid(), "the current secret signs");
        assert_eq!(ring.url_key_for(old.kid()), Some(old.url_key()));
        assert!(ring.url_key_for("00000000").is_none());
        let fresh = ring.mint("u2", "org1", Role::Learner, 3600);
        assert!(old.verify(&fresh).is_err(), "new tokens use the new key");
    }

    #[test]
    fn expiry_honours_leeway() {
        let k = Keys::from_secret("0123456789abcdef0123");
        assert!(
            k.verify(&k.mint("u", "o", Role::Learner, -30)).is_ok(),
            "within 60 s skew"
        );
        assert!(k.verify(&k.mint("u", "o", Role::Learner, -120)).is_err());
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("90"), Ok(90));
        assert_eq!(parse_ttl("2d"), Ok(172800));
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("h").is_err());
    }
}
