//! Requests with headers past [`MAX_HEADER_BYTES`] are refused (431).
//!
//! Headers on every response: what browsers need to keep the dashboard and
//! the API safe (a content security policy, no sniffing, no framing, no
//! referrer), and CORS for pages of the origins listed in `allowed_origins`
//! (none by default: a page of another site can send a request, but never
//! read the answer).

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};

use super::error::ApiError;
use super::AppState;

/// The dashboard loads its own scripts and styles and talks to its own
/// origin (HTTP and the live feed); nothing inline, nothing framed.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                   img-src 'self' data: blob:; font-src 'self'; connect-src 'self'; \
                   object-src 'none'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

/// Most bytes of header names and values a request may send (cookies and
/// tokens included); actix's own parser bounds the head's buffer above it.
pub const MAX_HEADER_BYTES: usize = 32 << 10;

/// What a listed origin's page may send and read.
const ALLOW_METHODS: &str = "GET, POST, DELETE";
const ALLOW_HEADERS: &str = "Authorization, Content-Type, X-CSRF-Token, X-Request-Id, Range";
const EXPOSE_HEADERS: &str =
    "Location, Retry-After, X-Request-Id, Content-Range, Content-Disposition";

fn security_headers(headers: &mut HeaderMap, https: bool) {
    let set = |headers: &mut HeaderMap, name: HeaderName, value: &'static str| {
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    };
    set(headers, header::CONTENT_SECURITY_POLICY, CSP);
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    // For browsers older than CSP's frame-ancestors.
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(
        headers,
        HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    if https {
        set(
            headers,
            header::STRICT_TRANSPORT_SECURITY,
            "max-age=31536000",
        );
    }
}

fn cors_headers(headers: &mut HeaderMap, origin: &str) {
    if let Ok(value) = HeaderValue::from_str(origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
    }
}

/// Adds the headers; answers CORS preflight requests itself (they carry no
/// credentials, so they never reach authentication).
pub async fn secure(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .expect("AppState is registered")
        .clone();
    let https = req.connection_info().scheme() == "https";
    let sent_origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_owned);
    let listed = sent_origin.as_deref().and_then(|o| state.origins.listed(o));
    let preflight = req.method() == Method::OPTIONS
        && sent_origin.is_some()
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    let mut res = if header_bytes > MAX_HEADER_BYTES {
        let response = actix_web::ResponseError::error_response(&ApiError::HeadersTooLarge {
            limit: MAX_HEADER_BYTES,
        });
        req.into_response(response).map_into_right_body()
    } else if preflight {
        let response = match &listed {
            Some(origin) => {
                let mut response = HttpResponse::NoContent()
                    .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, ALLOW_METHODS))
                    .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOW_HEADERS))
                    .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"))
                    .finish();
                cors_headers(response.headers_mut(), origin);
                response
            }
            None => {
                let origin = sent_origin.unwrap_or_default();
                actix_web::ResponseError::error_response(&ApiError::Forbidden {
                    code: "origin_not_allowed",
                    message: format!(
                        "pages of origin {origin:?} may not call this mlq from a browser; \
                         add it to allowed_origins (MLQ_ALLOWED_ORIGINS) to let them"
                    ),
                })
            }
        };
        req.into_response(response).map_into_right_body()
    } else {
        next.call(req).await?.map_into_left_body()
    };
    let headers = res.headers_mut();
    if let Some(origin) = &listed {
        cors_headers(headers, origin);
    }
    if state.origins.lists_any() {
        // Answers differ by Origin: caches must keep them apart.
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    security_headers(headers, https);
    Ok(res)
}
