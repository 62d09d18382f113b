//! The signature parameters of a playback URL's query (`exp`, `kid`, `vw`, `sig`).

/// The signature parameters of a request's query, borrowed from it (no allocation on the
/// origin's hot path). Values are kept as text, so a malformed one is a 403, not a 400.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryParams<'a> {
    /// Expiry, seconds since the epoch.
    pub exp: Option<&'a str>,
    /// Key id.
    pub kid: Option<&'a str>,
    /// Opaque viewer tag.
    pub vw: Option<&'a str>,
    /// base64url HMAC-SHA256.
    pub sig: Option<&'a str>,
}

impl<'a> QueryParams<'a> {
    /// Parses a raw query string; a repeated signature parameter makes the whole query invalid
    /// (`None`), since a proxy and the origin could otherwise read different values.
    pub fn parse(raw: Option<&'a str>) -> Option<Self> {
        let mut q = QueryParams::default();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match k {
                "exp" => &mut q.exp,
                "kid" => &mut q.kid,
                "vw" => &mut q.vw,
                "sig" => &mut q.sig,
                _ => continue,
            };
            if slot.replace(v).is_some() {
                return None;
            }
        }
        Some(q)
    }

    /// Renders the query string (`exp=…&kid=…&vw=…&sig=…`).
    pub fn to_query_string(&self) -> String {
        format!(
            "exp={}&kid={}&vw={}&sig={}",
            self.exp.unwrap_or_default(),
            self.kid.unwrap_or_default(),
            self.vw.unwrap_or_default(),
            self.sig.unwrap_or_default()
        )
    }
}
