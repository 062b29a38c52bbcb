//! What every response carries for browsers, CORS for listed origins only,
//! limits on request heads and small bodies, slow-drip clients, and
//! credentials kept out of the log.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use awc::http::header;
use serde_json::json;

use crate::helpers::{new_database_name, server_url, spawn_app, spawn_app_with, Api};
use crate::process::MlqProcess;

fn value(headers: &header::HeaderMap, name: header::HeaderName) -> String {
    headers
        .get(&name)
        .unwrap_or_else(|| panic!("no {name}"))
        .to_str()
        .unwrap()
        .to_owned()
}

fn assert_secure(headers: &header::HeaderMap, what: &str) {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{what}: no {name}"))
            .to_owned()
    };
    let csp = get("content-security-policy");
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert!(csp.contains("default-src 'self'"), "{what}: {csp}");
    assert!(!csp.contains("unsafe-inline"), "{what}: {csp}");
    assert_eq!(get("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(get("referrer-policy"), "no-referrer", "{what}");
    assert_eq!(get("x-frame-options"), "DENY", "{what}");
}

#[actix_web::test]
async fn every_response_carries_the_security_headers() {
    let app = spawn_app().await;
    let client = awc::Client::new();
    for (path, api) in [
        ("/healthz", &app.api),
        ("/api/v1/tasks", &app.api),
        ("/api/v1/tasks/not-a-uuid", &app.api),
        ("/api/v1/nothing-here", &app.api),
        ("/no-such-page", &app.api),
    ] {
        let (status, headers, _) = api.get_bytes(path).await;
        assert_secure(&headers, &format!("GET {path} ({status})"));
    }
    // Refusals too: no token, and a Host not configured.
    let res = client.get(app.url("/api/v1/tasks")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_secure(res.headers(), "401");
    let res = client
        .get(app.url("/api/v1/tasks"))
        .insert_header((header::HOST, "evil.example"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_secure(res.headers(), "403 for a foreign Host");
}

#[actix_web::test]
async fn cors_is_closed_unless_an_origin_is_listed() {
    let closed = spawn_app().await;
    let listed = spawn_app_with(|s| s.allowed_origins = vec!["https://app.example".into()]).await;
    let preflight = |api: &Api, origin: &str| {
        api.client
            .request(awc::http::Method::OPTIONS, api.url("/api/v1/tasks"))
            .insert_header((header::ORIGIN, origin.to_owned()))
            .insert_header((header::ACCESS_CONTROL_REQUEST_METHOD, "POST"))
            .insert_header((
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                "authorization,content-type",
            ))
            .send()
    };
    // Closed: a preflight from any page is refused, and no answer names an
    // origin a browser would let read it.
    let mut res = preflight(&closed.api, "https://app.example").await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "origin_not_allowed", "{body}");
    assert!(res
        .headers()
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .is_none());
    let res = closed
        .client
        .get(closed.url("/api/v1/tasks"))
        .insert_header((header::ORIGIN, "https://app.example"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res
        .headers()
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .is_none());

    // Listed: its pages may call with a token and read the answers.
    let res = preflight(&listed.api, "https://app.example").await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let h = res.headers();
    assert_eq!(
        value(h, header::ACCESS_CONTROL_ALLOW_ORIGIN),
        "https://app.example"
    );
    let allowed = value(h, header::ACCESS_CONTROL_ALLOW_HEADERS).to_lowercase();
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{allowed}"
    );
    assert!(value(h, header::ACCESS_CONTROL_ALLOW_METHODS).contains("POST"));
    assert!(
        h.get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none(),
        "cookies stay same-site"
    );
    let res = listed
        .client
        .get(listed.url("/api/v1/tasks"))
        .insert_header((header::ORIGIN, "https://app.example"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        value(res.headers(), header::ACCESS_CONTROL_ALLOW_ORIGIN),
        "https://app.example"
    );
    assert!(value(res.headers(), header::VARY).contains("Origin"));
    // Another origin, or the listed one's look-alikes, are not.
    for other in [
        "https://evil.example",
        "http://app.example",
        "https://app.example.evil.example",
    ] {
        let res = preflight(&listed.api, other).await.unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{other}");
        assert!(
            res.headers()
                .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                .is_none(),
            "{other}"
        );
    }
}

/// Sends raw bytes and reads what comes back until the server closes.
fn raw_exchange(address: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(address.trim_start_matches("http://")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[actix_web::test]
async fn oversized_heads_and_bodies_are_refused_and_the_server_goes_on() {
    let app = spawn_app().await;
    let address = app.address.clone();
    let token = app.api.token.clone().unwrap();
    // A 100 KiB header.
    let huge = format!(
        "GET /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
         X-Filler: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(100 << 10)
    );
    let answer =
        actix_web::rt::task::spawn_blocking(move || raw_exchange(&address, huge.as_bytes()))
            .await
            .unwrap();
    let status_line = answer.lines().next().unwrap_or("");
    assert!(status_line.contains(" 431 "), "{status_line:?}");
    assert!(answer.contains("headers_too_large"), "{answer:.300}");
    // Too many headers.
    let address = app.address.clone();
    let mut many = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n".to_owned();
    for i in 0..500 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("Connection: close\r\n\r\n");
    let answer =
        actix_web::rt::task::spawn_blocking(move || raw_exchange(&address, many.as_bytes()))
            .await
            .unwrap();
    assert!(!answer.starts_with("HTTP/1.1 200"), "{:.100}", answer);
    // A JSON body over the small endpoints' limit: 413, naming the limit.
    let (status, body) = app
        .post_json("/api/v1/tokens", &json!({"name": "x".repeat(200 << 10)}))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("65536"),
        "{body}"
    );
    // A NUL in a path segment is a name that does not exist, not an error.
    let (status, body) = app
        .get(&format!(
            "/api/v1/tasks/{}/artifacts/a%00b",
            uuid::Uuid::new_v4()
        ))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // And it still answers.
    let (status, _) = app.get("/api/v1/tasks").await;
    assert_eq!(status, StatusCode::OK);
}

#[actix_web::test]
async fn a_client_dripping_its_request_head_is_cut_off() {
    let app = spawn_app_with(|s| s.request_head_timeout = Duration::from_secs(1)).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let dripping = actix_web::rt::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(&address).unwrap();
        let started = Instant::now();
        // A byte a second: never a whole head.
        for byte in b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
            .iter()
            .cycle()
        {
            if stream.write_all(&[*byte]).is_err() || started.elapsed() > Duration::from_secs(60) {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
            let mut peek = [0u8; 1];
            stream.set_nonblocking(true).unwrap();
            let closed = matches!(stream.read(&mut peek), Ok(0) | Ok(1));
            stream.set_nonblocking(false).unwrap();
            if closed {
                break;
            }
        }
        started.elapsed()
    });
    // Meanwhile everyone else is served.
    let (status, _) = app.get("/api/v1/tasks").await;
    assert_eq!(status, StatusCode::OK);
    let held = dripping.await.unwrap();
    assert!(
        held < Duration::from_secs(60),
        "the slow client was never cut off"
    );
}

#[actix_web::test]
async fn credentials_never_reach_the_log() {
    let data = tempfile::tempdir().unwrap();
    let url = format!("{}/{}", server_url(), new_database_name());
    let mlq = MlqProcess::start(&url, data.path(), &[("RUST_LOG", "debug".into())]).await;
    let token = mlq.token.clone().unwrap();
    // The secret is the last 43 characters (its alphabet includes '_').
    let secret = token[token.len() - 43..].to_owned();
    // In a header, in a query string where it does not belong, and as a
    // WebSocket ticket; also a bad one.
    let (status, ticket) = mlq.post_json("/api/v1/ws-ticket", &json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    let ticket = ticket["ticket"].as_str().unwrap().to_owned();
    let anonymous = Api::new(mlq.address.clone());
    anonymous.get(&format!("/api/v1/tasks?token={token}")).await;
    anonymous
        .get(&format!("/api/v1/events?ticket={ticket}"))
        .await;
    let mut flipped = token.clone();
    flipped.pop();
    flipped.push('Z');
    Api::with_token(mlq.address.clone(), &flipped)
        .get("/api/v1/tasks")
        .await;
    mlq.get("/api/v1/me").await;
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    let log = mlq.log_text();
    assert!(
        log.contains("/api/v1/tasks"),
        "the requests were logged: {log:.2000}"
    );
    let ticket_secret = &ticket[ticket.len() - 43..];
    for (what, s) in [("token", &secret[..]), ("ticket", ticket_secret)] {
        assert!(!log.contains(s), "the {what}'s secret is in the log");
    }
}
