//! Which hosts and web origins mlq deals with.
//!
//! - **Host** (against DNS rebinding): a page on `evil.example` whose name
//!   is re-pointed at 127.0.0.1 reaches a local mlq as a same-origin page,
//!   but its requests still say `Host: evil.example`. Only configured hosts
//!   are answered (`allowed_hosts`); probes (`/healthz`, `/readyz`) answer
//!   any.
//! - **Origin**: a WebSocket upgrade from a page of another origin than
//!   mlq's own or the allow-list (`allowed_origins`) is refused: browsers
//!   send cookies with cross-site WebSocket upgrades, and CORS does not
//!   apply to them.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest};

use super::error::ApiError;
use super::AppState;
use crate::config::Settings;

#[derive(Debug, Clone)]
pub struct Origins {
    /// Lower-case host names (no port); a leading `.` allows subdomains.
    /// `None`: any host (`*`).
    hosts: Option<Vec<String>>,
    /// `scheme://host[:port]`, lower case, default ports dropped.
    origins: Vec<String>,
}

impl Origins {
    pub fn from_settings(settings: &Settings) -> Self {
        let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "[::1]"]
            .iter()
            .map(|h| h.to_string())
            .collect();
        if let Some(host) = bind_host(&settings.bind) {
            hosts.push(host);
        }
        if let Some(url) = settings.public_url.as_deref().and_then(Self::parse_origin) {
            hosts.push(host_of(url.split_once("://").map_or("", |(_, a)| a)));
        }
        let mut any = false;
        for host in &settings.allowed_hosts {
            let host = host.trim().to_ascii_lowercase();
            if host == "*" {
                any = true;
            } else if !host.is_empty() {
                hosts.push(host_of(&host));
            }
        }
        let origins = settings
            .allowed_origins
            .iter()
            .filter_map(|o| Self::parse_origin(o))
            .collect();
        Self {
            hosts: (!any).then_some(hosts),
            origins,
        }
    }

    /// `scheme://host[:port]` of an http(s) URL, lower case, with a default
    /// port dropped; `None` if it is not one.
    pub fn parse_origin(url: &str) -> Option<String> {
        let url = url.trim().to_ascii_lowercase();
        let (scheme, rest) = url.split_once("://")?;
        if scheme != "http" && scheme != "https" {
            return None;
        }
        let authority = rest.split(['/', '?', '#']).next()?;
        if authority.is_empty() || authority.contains('@') {
            return None;
        }
        let default = if scheme == "http" { ":80" } else { ":443" };
        let authority = authority.strip_suffix(default).unwrap_or(authority);
        Some(format!("{scheme}://{authority}"))
    }

    pub fn host_allowed(&self, host: &str) -> bool {
        let Some(hosts) = &self.hosts else {
            return true;
        };
        let host = host_of(&host.to_ascii_lowercase());
        hosts.iter().any(|allowed| match allowed.strip_prefix('.') {
            Some(domain) => host == domain || host.ends_with(allowed.as_str()),
            None => host == *allowed,
        })
    }

    /// Whether a page of `origin` may use mlq from a browser: mlq's own
    /// origin (the one whose host the request names) or a listed one.
    pub fn origin_allowed(&self, origin: &str, host: &str) -> bool {
        let Some(origin) = Self::parse_origin(origin) else {
            return false;
        };
        let authority = origin.split_once("://").map_or("", |(_, a)| a);
        authority == host.to_ascii_lowercase() || self.origins.contains(&origin)
    }

    /// `origin` as listed in `allowed_origins`, if it is: its pages may
    /// read the API's answers (CORS).
    pub fn listed(&self, origin: &str) -> Option<String> {
        Self::parse_origin(origin).filter(|o| self.origins.contains(o))
    }

    pub fn lists_any(&self) -> bool {
        !self.origins.is_empty()
    }

    /// Refuses a request from a page of an origin not allowed; a request
    /// without `Origin` (not from a browser page) passes.
    pub fn check_origin(&self, req: &HttpRequest) -> Result<(), ApiError> {
        let Some(origin) = req.headers().get(header::ORIGIN) else {
            return Ok(());
        };
        let origin = origin.to_str().unwrap_or("");
        if self.origin_allowed(origin, request_host(req)) {
            Ok(())
        } else {
            Err(ApiError::Forbidden {
                code: "origin_not_allowed",
                message: format!(
                    "pages of origin {origin:?} may not use this mlq; add it to allowed_origins \
                     (MLQ_ALLOWED_ORIGINS) to let them"
                ),
            })
        }
    }
}

/// The host a request names, as sent: the `Host` header (or HTTP/2's
/// authority), never a forwarding header a page's script could set.
pub fn request_host(req: &HttpRequest) -> &str {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("")
}

/// A host name without its port (`[::1]:80` → `[::1]`).
fn host_of(authority: &str) -> String {
    let host = if authority.starts_with('[') {
        authority.split_inclusive(']').next().unwrap_or(authority)
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    host.to_owned()
}

/// The bind address's host, unless it is a wildcard.
fn bind_host(bind: &str) -> Option<String> {
    let host = host_of(&bind.to_ascii_lowercase());
    (!matches!(host.as_str(), "0.0.0.0" | "[::]" | "")).then_some(host)
}

/// Middleware: answers only allowed hosts (probes aside).
pub async fn check_host(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let probe = matches!(req.path(), "/healthz" | "/readyz");
    if !probe {
        let state = req
            .app_data::<web::Data<AppState>>()
            .expect("AppState is registered");
        let host = request_host(req.request());
        if !state.origins.host_allowed(host) {
            let refused = ApiError::Forbidden {
                code: "host_not_allowed",
                message: format!(
                    "this mlq does not answer to host {host:?}; add it to allowed_hosts \
                     (MLQ_ALLOWED_HOSTS) or set public_url"
                ),
            };
            return Ok(req.error_response(refused).map_into_right_body());
        }
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(hosts: &[&str], allowed: &[&str]) -> Origins {
        Origins::from_settings(&Settings {
            bind: "0.0.0.0:8080".into(),
            public_url: Some("https://mlq.example.com/".into()),
            allowed_hosts: hosts.iter().map(|s| s.to_string()).collect(),
            allowed_origins: allowed.iter().map(|s| s.to_string()).collect(),
            ..Settings::default()
        })
    }

    #[test]
    fn only_configured_hosts_are_answered() {
        let o = origins(&[".corp.example", "Other.Example:9000"], &[]);
        for ok in [
            "localhost:8080",
            "127.0.0.1",
            "[::1]:8080",
            "mlq.example.com",
            "MLQ.example.com:443",
            "corp.example",
            "a.b.corp.example:1",
            "other.example",
        ] {
            assert!(o.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "",
            "mlq.example.com.evil.example",
            "evilcorp.example",
            "0.0.0.0:8080",
            "localhost.evil.example",
        ] {
            assert!(!o.host_allowed(bad), "{bad}");
        }
        assert!(origins(&["*"], &[]).host_allowed("anything.example"));
    }

    #[test]
    fn pages_of_other_origins_are_refused_unless_listed() {
        let o = origins(&[], &["https://app.example.com"]);
        assert!(o.origin_allowed("http://localhost:8080", "localhost:8080"));
        assert!(o.origin_allowed("https://app.example.com", "localhost:8080"));
        assert!(o.origin_allowed("https://app.example.com:443", "localhost:8080"));
        assert!(!o.origin_allowed("https://evil.example", "localhost:8080"));
        assert!(!o.origin_allowed("http://localhost:9999", "localhost:8080"));
        assert!(!o.origin_allowed("null", "localhost:8080"));
        assert!(!o.origin_allowed("https://app.example.com.evil.example", "x"));
    }

    #[test]
    fn origins_parse_to_scheme_host_and_port() {
        assert_eq!(
            Origins::parse_origin("HTTPS://Mlq.Example.com:443/path?q"),
            Some("https://mlq.example.com".into())
        );
        assert_eq!(
            Origins::parse_origin("http://h:8080"),
            Some("http://h:8080".into())
        );
        assert_eq!(Origins::parse_origin("ftp://h"), None);
        assert_eq!(Origins::parse_origin("http://user@h"), None);
        assert_eq!(Origins::parse_origin("h:8080"), None);
    }
}
