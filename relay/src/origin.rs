//! Which web pages may use the relay from a browser: the `Origin` check of WebSocket upgrades,
//! long-polling and the document API.
//!
//! A browser sends `Origin` with every WebSocket upgrade and every cross-origin or non-GET
//! request, and a page cannot forge it. Requests without one are not from a page (Node, Python,
//! curl) and are allowed as before. A page's origin is allowed when it is the relay's own, or
//! listed with `--allowed-origin` (`*`: every origin).
//!
//! The relay's own origin is never taken from the request's `Host`: a page on a DNS name that an
//! attacker rebinds to the relay's address sends a `Host` that matches its `Origin`. It is:
//!
//! - with `--public-url`: exactly those origins (behind a proxy, what the browser sees);
//! - otherwise, from the listen address: on a loopback address, `http://127.0.0.1:PORT`,
//!   `http://localhost:PORT` and `http://[::1]:PORT`; on an unspecified address (`0.0.0.0`,
//!   `::`), those and `http://IP:PORT` where IP is the address the connection came in on; on any
//!   other address, `http://ADDRESS:PORT`. A DNS name other than `localhost` needs
//!   `--public-url`, since that is what rebinding forges.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::HeaderValue;

/// The outcome of checking a request's `Origin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OriginCheck {
    /// No `Origin` header: not a request from a web page.
    NoOrigin,
    /// The relay's own origin.
    Same,
    /// Another origin, allowed by `--allowed-origin`.
    Allowed,
    /// Another origin, not allowed.
    Refused,
}

impl OriginCheck {
    /// Whether the request may go on.
    pub(crate) fn is_allowed(self) -> bool {
        self != OriginCheck::Refused
    }
}

/// How the relay's own origin is known.
#[derive(Debug, Clone)]
enum SameOrigin {
    /// `--public-url`, normalized.
    Public(Vec<String>),
    /// From the listen address.
    Listen(SocketAddr),
}

/// The origin rules of one running relay.
#[derive(Debug, Clone)]
pub(crate) struct OriginPolicy {
    /// `--allowed-origin *`.
    any: bool,
    /// `--allowed-origin`, normalized.
    allowed: Vec<String>,
    same: SameOrigin,
}

impl OriginPolicy {
    /// The rules for a relay listening on `listen` (the bound address, with its real port), with
    /// `public_urls` (`--public-url`) and `allowed` (`--allowed-origin`), both already checked by
    /// [`crate::config::Config::validate`]; entries that do not parse are ignored.
    pub(crate) fn new(listen: SocketAddr, public_urls: &[String], allowed: &[String]) -> Self {
        let same = if public_urls.is_empty() {
            SameOrigin::Listen(canonical(listen))
        } else {
            SameOrigin::Public(public_urls.iter().filter_map(|u| url_origin(u)).collect())
        };
        OriginPolicy {
            any: allowed.iter().any(|a| a == "*"),
            allowed: allowed.iter().filter_map(|a| normalize(a)).collect(),
            same,
        }
    }

    /// Checks a request's `Origin` header; `local` is the address its connection came in on.
    pub(crate) fn check(
        &self,
        origin: Option<&HeaderValue>,
        local: Option<SocketAddr>,
    ) -> OriginCheck {
        let Some(origin) = origin else {
            return OriginCheck::NoOrigin;
        };
        // "null" (sandboxed frames, file: pages) and anything unreadable is no origin of ours.
        let origin = origin.to_str().ok().and_then(normalize);
        match origin {
            Some(origin) if self.is_same(&origin, local) => OriginCheck::Same,
            Some(origin) if self.any || self.allowed.contains(&origin) => OriginCheck::Allowed,
            _ if self.any => OriginCheck::Allowed,
            _ => OriginCheck::Refused,
        }
    }

    fn is_same(&self, origin: &str, local: Option<SocketAddr>) -> bool {
        match &self.same {
            SameOrigin::Public(origins) => origins.iter().any(|o| o == origin),
            SameOrigin::Listen(listen) => self
                .listen_origins(*listen, local.map(canonical))
                .iter()
                .any(|o| o == origin),
        }
    }

    /// The same-origin candidates for a connection that came in on `local`.
    fn listen_origins(&self, listen: SocketAddr, local: Option<SocketAddr>) -> Vec<String> {
        let port = listen.port();
        let mut origins = Vec::with_capacity(4);
        let ip = listen.ip();
        if ip.is_loopback() || ip.is_unspecified() {
            origins.extend(loopback_origins(port));
        }
        if ip.is_unspecified() {
            // The address this connection came in on: what a page loaded from the relay by IP
            // sends. Never any other IP: a page on another machine's IP literal is not ours.
            if let Some(local) = local.filter(|l| !l.ip().is_unspecified()) {
                origins.extend(normalize(&format!(
                    "http://{}",
                    SocketAddr::new(local.ip(), port)
                )));
            }
        } else {
            origins.extend(normalize(&format!("http://{listen}")));
        }
        origins
    }

    /// What counts as the relay's own origin, for the start-up log.
    pub(crate) fn describe_same_origin(&self) -> String {
        match &self.same {
            SameOrigin::Public(origins) => format!("{} (--public-url)", origins.join(", ")),
            SameOrigin::Listen(listen) if listen.ip().is_unspecified() => format!(
                "{}, and http://IP:{} for the IP address a connection comes in on (set --public-url for a DNS name)",
                loopback_origins(listen.port()).join(", "),
                listen.port()
            ),
            SameOrigin::Listen(listen) => self.listen_origins(*listen, None).join(", "),
        }
    }

    /// What other origins are allowed, for the start-up log.
    pub(crate) fn describe_allowed(&self) -> String {
        if self.any {
            "every origin (--allowed-origin *)".to_owned()
        } else if self.allowed.is_empty() {
            "none (same origin only)".to_owned()
        } else {
            self.allowed.join(", ")
        }
    }
}

fn loopback_origins(port: u16) -> Vec<String> {
    [
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port).to_string(),
        format!("localhost:{port}"),
        SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port).to_string(),
    ]
    .iter()
    .filter_map(|host| normalize(&format!("http://{host}")))
    .collect()
}

/// An IPv4 address seen through a dual-stack IPv6 socket as plain IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// An origin in the form browsers send, for comparison: `scheme://host[:port]` in lower case,
/// without the scheme's default port. `None` for anything else (`null`, a path, no host).
pub(crate) fn normalize(origin: &str) -> Option<String> {
    let (scheme, rest) = origin.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) || rest.contains(char::is_whitespace)
    {
        return None;
    }
    let host = rest.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => Some(":80"),
        "https" => Some(":443"),
        _ => None,
    };
    let host = match default_port {
        Some(port) => host.strip_suffix(port).map(str::to_owned).unwrap_or(host),
        None => host,
    };
    Some(format!("{scheme}://{host}"))
}

/// The origin of a URL given with `--public-url`: `http://` or `https://`, a host, and an
/// optional port and path (the path is dropped).
pub(crate) fn url_origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    normalize(&format!("{scheme}://{authority}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(policy: &OriginPolicy, origin: &str, local: &str) -> OriginCheck {
        let local: SocketAddr = local.parse().expect("an address");
        policy.check(
            Some(&HeaderValue::from_str(origin).expect("ok")),
            Some(local),
        )
    }

    #[test]
    fn origins_are_normalized_as_browsers_send_them() {
        assert_eq!(
            normalize("HTTP://Example.COM:80").as_deref(),
            Some("http://example.com")
        );
        assert_eq!(
            normalize("https://a.example:443").as_deref(),
            Some("https://a.example")
        );
        assert_eq!(
            normalize("https://a.example:8443").as_deref(),
            Some("https://a.example:8443")
        );
        assert_eq!(
            normalize("http://[::1]:8080").as_deref(),
            Some("http://[::1]:8080")
        );
        assert_eq!(normalize("null"), None);
        assert_eq!(normalize("http://a.example/path"), None);
        assert_eq!(
            url_origin("https://Relay.example/base/?x").as_deref(),
            Some("https://relay.example")
        );
        assert_eq!(url_origin("ftp://relay.example"), None);
    }

    #[test]
    fn a_loopback_relay_is_its_own_origin_on_every_loopback_name_and_nothing_else() {
        let policy = OriginPolicy::new("127.0.0.1:8080".parse().expect("addr"), &[], &[]);
        let local = "127.0.0.1:8080";
        for own in [
            "http://127.0.0.1:8080",
            "http://localhost:8080",
            "http://[::1]:8080",
        ] {
            assert_eq!(check(&policy, own, local), OriginCheck::Same, "{own}");
        }
        for other in [
            "http://evil.example:8080",
            "http://127.0.0.1:8081",
            "https://127.0.0.1:8080",
            "http://192.168.1.5:8080",
            "null",
        ] {
            assert_eq!(
                check(&policy, other, local),
                OriginCheck::Refused,
                "{other}"
            );
        }
        assert_eq!(policy.check(None, None), OriginCheck::NoOrigin);
    }

    #[test]
    fn the_host_header_never_decides_and_a_dns_name_needs_a_public_url() {
        // DNS rebinding: the page's origin and the request's Host are both the attacker's name.
        let policy = OriginPolicy::new("0.0.0.0:8080".parse().expect("addr"), &[], &[]);
        let local = "192.168.1.5:8080";
        assert_eq!(
            check(&policy, "http://rebind.example:8080", local),
            OriginCheck::Refused
        );
        assert_eq!(
            check(&policy, "http://192.168.1.5:8080", local),
            OriginCheck::Same,
            "the address the connection came in on"
        );
        assert_eq!(
            check(&policy, "http://203.0.113.9:8080", local),
            OriginCheck::Refused,
            "another machine's IP literal"
        );
        assert_eq!(
            check(&policy, "http://localhost:8080", "127.0.0.1:8080"),
            OriginCheck::Same
        );
        let mapped = "[::ffff:192.168.1.5]:8080";
        assert_eq!(
            check(&policy, "http://192.168.1.5:8080", mapped),
            OriginCheck::Same,
            "IPv4 through a dual-stack socket"
        );

        let behind_proxy = OriginPolicy::new(
            "127.0.0.1:8080".parse().expect("addr"),
            &["https://relay.example/".to_owned()],
            &["https://app.example".to_owned()],
        );
        let local = "127.0.0.1:8080";
        assert_eq!(
            check(&behind_proxy, "https://relay.example", local),
            OriginCheck::Same
        );
        assert_eq!(
            check(&behind_proxy, "https://app.example", local),
            OriginCheck::Allowed
        );
        assert_eq!(
            check(&behind_proxy, "http://127.0.0.1:8080", local),
            OriginCheck::Refused,
            "--public-url replaces the listen address"
        );
    }

    #[test]
    fn a_star_allows_every_origin() {
        let policy = OriginPolicy::new(
            "127.0.0.1:8080".parse().expect("addr"),
            &[],
            &["*".to_owned()],
        );
        assert_eq!(
            check(&policy, "https://anything.example", "127.0.0.1:8080"),
            OriginCheck::Allowed
        );
        assert_eq!(
            check(&policy, "null", "127.0.0.1:8080"),
            OriginCheck::Allowed
        );
    }
}
