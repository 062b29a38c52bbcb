//! The client's address, as limits per address count it.
//!
//! A request's peer is the client, unless the peer is a reverse proxy
//! listed in `trusted_proxies`: then the client is the last address in
//! `X-Forwarded-For` that is not a trusted proxy itself (each proxy
//! appends the address it was reached from, so what comes before can be
//! anything a client wrote). From anyone else the header is ignored.
//! Ranges (CIDR) are not taken: list each proxy's address.

use std::net::IpAddr;

use actix_web::HttpRequest;

use crate::config::Settings;

#[derive(Debug, Default)]
pub struct Proxies {
    trusted: Vec<IpAddr>,
}

impl Proxies {
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            // Checked by Settings::validate.
            trusted: settings
                .trusted_proxies
                .iter()
                .filter_map(|p| address(p))
                .collect(),
        }
    }

    /// The address of the client that sent `req`.
    pub fn client(&self, req: &HttpRequest) -> Option<IpAddr> {
        let peer = req.peer_addr()?.ip().to_canonical();
        if !self.trusted.contains(&peer) {
            return Some(peer);
        }
        let forwarded: Vec<&str> = req
            .headers()
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        // From the proxy nearest mlq outwards; what cannot be read ends the
        // walk, and then the peer is all that is known.
        for entry in forwarded.iter().rev() {
            match address(entry) {
                Some(a) if self.trusted.contains(&a) => continue,
                Some(a) => return Some(a),
                None => break,
            }
        }
        Some(peer)
    }
}

/// An address as proxies write it: `198.51.100.7`, `2001:db8::1`, with a
/// port (`198.51.100.7:4711`, `[2001:db8::1]:4711`), an IPv4 one mapped
/// into IPv6 counting as itself.
pub fn address(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    text.parse::<IpAddr>()
        .or_else(|_| text.parse::<std::net::SocketAddr>().map(|a| a.ip()))
        .ok()
        .map(|a| a.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn proxies(trusted: &[&str]) -> Proxies {
        Proxies {
            trusted: trusted.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn from(peer: &str, forwarded: &[&str]) -> HttpRequest {
        let peer = std::net::SocketAddr::new(peer.parse().unwrap(), 40000);
        let mut req = TestRequest::default().peer_addr(peer);
        for f in forwarded {
            req = req.append_header(("x-forwarded-for", *f));
        }
        req.to_http_request()
    }

    fn ip(a: &str) -> Option<IpAddr> {
        Some(a.parse().unwrap())
    }

    #[test]
    fn the_header_counts_only_from_a_trusted_proxy() {
        let none = proxies(&[]);
        assert_eq!(
            none.client(&from("203.0.113.9", &["198.51.100.1"])),
            ip("203.0.113.9")
        );
        let one = proxies(&["10.0.0.5"]);
        assert_eq!(
            one.client(&from("203.0.113.9", &["198.51.100.1"])),
            ip("203.0.113.9")
        );
        assert_eq!(
            one.client(&from("10.0.0.5", &["198.51.100.1"])),
            ip("198.51.100.1")
        );
        // No header: the proxy itself.
        assert_eq!(one.client(&from("10.0.0.5", &[])), ip("10.0.0.5"));
    }

    #[test]
    fn what_a_client_wrote_before_the_proxies_is_not_believed() {
        let two = proxies(&["10.0.0.5", "10.0.0.6"]);
        // The client sent "X-Forwarded-For: 1.2.3.4"; the proxies appended
        // the client's real address and the first proxy's.
        let req = from("10.0.0.6", &["1.2.3.4, 198.51.100.7", "10.0.0.5"]);
        assert_eq!(two.client(&req), ip("198.51.100.7"));
        // What a client wrote that is no address is never reached...
        let req = from("10.0.0.6", &["not-an-address, 198.51.100.7, 10.0.0.5"]);
        assert_eq!(two.client(&req), ip("198.51.100.7"));
        // Ports and IPv4 mapped into IPv6, as some proxies write them.
        let req = from(
            "::ffff:10.0.0.6",
            &["198.51.100.7:4711, [::ffff:10.0.0.5]:80"],
        );
        assert_eq!(two.client(&req), ip("198.51.100.7"));
        // ...and a chain that cannot be read leaves the peer, the proxy.
        assert_eq!(
            two.client(&from("10.0.0.6", &["not-an-address"])),
            ip("10.0.0.6")
        );
    }
}
