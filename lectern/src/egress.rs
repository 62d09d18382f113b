//! Where webhook deliveries may connect. A webhook URL is chosen by an org admin, so without a
//! check it is a way to make the server probe its own network (SSRF): loopback, the cloud
//! metadata address, private ranges. Only public unicast addresses are allowed, checked when a
//! hook is registered and again at every connect (a DNS name may change its answer between the
//! two, or rebind to 127.0.0.1), unless the operator names the host in
//! `webhook_allowed_hosts` for an on-premises receiver.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The egress policy of webhook deliveries.
#[derive(Debug, Clone, Default)]
pub struct Egress {
    allowed: Arc<Vec<String>>,
}

impl Egress {
    /// A policy allowing, besides public addresses, exactly these hosts (names or IP literals).
    pub fn new(allowed_hosts: &[String]) -> Self {
        Egress {
            allowed: Arc::new(
                allowed_hosts
                    .iter()
                    .map(|h| normalise(h))
                    .filter(|h| !h.is_empty())
                    .collect(),
            ),
        }
    }

    fn allows_host(&self, host: &str) -> bool {
        self.allowed.iter().any(|a| *a == normalise(host))
    }

    /// Checks a URL's host: an allowed host passes; an IP literal must be public; a name must
    /// resolve, and every address it resolves to must be public.
    pub async fn check(&self, url: &reqwest::Url) -> Result<(), String> {
        let host = url.host_str().ok_or("the URL has no host")?;
        if self.allows_host(host) {
            return Ok(());
        }
        match url.host() {
            Some(url::Host::Ipv4(ip)) => public_or_err(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => public_or_err(IpAddr::V6(ip)),
            Some(url::Host::Domain(d)) => {
                let port = url.port_or_known_default().unwrap_or(443);
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host((d, port))
                    .await
                    .map_err(|e| format!("{d} does not resolve: {e}"))?
                    .collect();
                if addrs.is_empty() {
                    return Err(format!("{d} does not resolve"));
                }
                addrs.iter().try_for_each(|a| public_or_err(a.ip()))
            }
            None => Err("the URL has no host".into()),
        }
    }

    /// A DNS resolver for the delivery client that drops every non-public answer, so a name
    /// that rebinds to a private address after registration connects nowhere.
    pub fn resolver(&self) -> Arc<Egress> {
        Arc::new(self.clone())
    }
}

impl Resolve for Egress {
    fn resolve(&self, name: Name) -> Resolving {
        let allowed = self.allows_host(name.as_str());
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allowed || is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!(
                    "{host} resolves to no public address (private, loopback and link-local ones are refused; an operator can allow the host with webhook_allowed_hosts)"
                )
                .into());
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

fn normalise(h: &str) -> String {
    h.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

fn public_or_err(ip: IpAddr) -> Result<(), String> {
    if is_public(ip) {
        Ok(())
    } else {
        Err(format!(
            "{ip} is not a public address (loopback, private, link-local, unique-local, unspecified and multicast ones are refused; an operator can allow a host with webhook_allowed_hosts)"
        ))
    }
}

/// True for a globally routable unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return public_v4(v4);
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link local fe80::/10
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0..6] == [0, 0, 0, 0, 0, 0])) // IPv4-compatible, deprecated
                && v6 != Ipv6Addr::UNSPECIFIED
        }
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0 // "this network"
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared address space (CGNAT)
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking
        || o[0] >= 240) // reserved
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn private_and_odd_spellings_are_refused() {
        let e = Egress::new(&[]);
        for u in [
            "https://127.0.0.1:9/",
            "https://169.254.169.254/latest/meta-data/",
            "https://10.0.0.1/",
            "https://[::1]:9/",
            "https://0x7f.1:9/",
            "https://2130706433:9/",
            "https://[::ffff:127.0.0.1]/",
            "https://[fd00::1]/",
            "https://[fe80::1]/",
            "https://0.0.0.0/",
            "https://224.0.0.1/",
            "https://100.64.0.1/",
            "https://localhost:9/",
        ] {
            let url = reqwest::Url::parse(u).unwrap();
            assert!(e.check(&url).await.is_err(), "{u} must be refused");
        }
        for u in ["https://93.184.216.34/", "https://[2606:4700::1111]/"] {
            let url = reqwest::Url::parse(u).unwrap();
            assert!(e.check(&url).await.is_ok(), "{u} is public");
        }
    }

    #[tokio::test]
    async fn the_operator_can_allow_an_on_premises_host() {
        let e = Egress::new(&["127.0.0.1".into(), "LocalHost".into()]);
        for u in ["http://127.0.0.1:8080/hook", "https://localhost/x"] {
            let url = reqwest::Url::parse(u).unwrap();
            assert!(e.check(&url).await.is_ok(), "{u}");
        }
        assert!(e
            .check(&reqwest::Url::parse("https://10.0.0.1/").unwrap())
            .await
            .is_err());
    }
}
