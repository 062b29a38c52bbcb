//! Users and credentials: API tokens, the CLI, the first run's login link,
//! dashboard sessions with CSRF, WebSocket tickets, and the Host and Origin
//! checks.

use std::process::Command;
use std::time::Duration;

use actix_web::http::StatusCode;
use awc::http::header;
use serde_json::{json, Value};

use crate::events::Feed;
use crate::helpers::{spawn_app, spawn_app_with, test_settings, Api};

async fn send(request: awc::ClientRequest) -> (StatusCode, awc::http::header::HeaderMap, Value) {
    let mut res = request.send().await.expect("request");
    let body = res.body().await.expect("body");
    (
        res.status(),
        res.headers().clone(),
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

fn assert_unauthorized(status: StatusCode, headers: &header::HeaderMap, body: &Value) {
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    let challenge = headers
        .get(header::WWW_AUTHENTICATE)
        .expect("WWW-Authenticate")
        .to_str()
        .unwrap();
    assert!(challenge.starts_with("Bearer realm=\"mlq\""), "{challenge}");
}

#[actix_web::test]
async fn every_api_route_wants_a_live_token() {
    let app = spawn_app().await;
    let client = awc::Client::new();
    let url = app.url("/api/v1/tasks");
    // None at all: 401 with a challenge, and a message saying what to send.
    let (status, headers, body) = send(client.get(&url)).await;
    assert_unauthorized(status, &headers, &body);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer"),
        "{body}"
    );
    // Garbage, another scheme, a token with one character changed, a
    // token of the right shape that was never issued.
    let token = app.api.token.clone().unwrap();
    let mut flipped = token.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let never = format!("mlq_{}_{}", uuid::Uuid::new_v4().simple(), "A".repeat(43));
    for bad in [
        "Bearer nonsense".to_owned(),
        format!("Basic {token}"),
        format!("Bearer {flipped}"),
        format!("Bearer {never}"),
        "Bearer".to_owned(),
    ] {
        let (status, headers, body) = send(
            client
                .get(&url)
                .insert_header(("authorization", bad.as_str())),
        )
        .await;
        assert_unauthorized(status, &headers, &body);
        let challenge = headers
            .get(header::WWW_AUTHENTICATE)
            .unwrap()
            .to_str()
            .unwrap();
        assert!(challenge.contains("invalid_token"), "{bad}: {challenge}");
    }
    // The real one works, in any case of the scheme.
    let (status, _, body) = send(
        client
            .get(&url)
            .insert_header(("authorization", format!("bEaReR {token}"))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Unknown API paths are no help to a caller without a token either.
    let (status, headers, body) = send(client.get(app.url("/api/v1/nothing-here"))).await;
    assert_unauthorized(status, &headers, &body);
    // Probes stay open.
    let (status, _, _) = send(client.get(app.url("/healthz"))).await;
    assert_eq!(status, StatusCode::OK);
}

#[actix_web::test]
async fn users_mint_list_and_revoke_their_own_tokens() {
    let app = spawn_app().await;
    let (status, minted) = app
        .post_json(
            "/api/v1/tokens",
            &json!({"name": "laptop", "expires_in": "30d"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{minted}");
    let token = minted["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("mlq_"), "{token}");
    let expires: chrono::DateTime<chrono::Utc> =
        minted["expires_at"].as_str().unwrap().parse().unwrap();
    let days = (expires - chrono::Utc::now()).num_hours() as f64 / 24.0;
    assert!((29.9..=30.1).contains(&days), "{days}");
    let laptop = Api::with_token(app.address.clone(), &token);
    let (status, me) = laptop.get("/api/v1/me").await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["user"]["name"], "alice");
    assert_eq!(me["via"], "token");

    // Listed without its secret, with when it was last used.
    let (_, list) = app.get("/api/v1/tokens").await;
    let listed = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == minted["id"])
        .expect("the new token is listed")
        .clone();
    assert_eq!(listed["name"], "laptop");
    assert!(listed["last_used_at"].is_string(), "{listed}");
    assert!(!list.to_string().contains(&token[token.len() - 43..]));
    assert!(listed.get("token").is_none() && listed.get("secret_hash").is_none());

    // Another user can neither see nor revoke it.
    let bob = app.user("bob", false).await;
    let (_, theirs) = bob.get("/api/v1/tokens").await;
    assert!(!theirs.to_string().contains(minted["id"].as_str().unwrap()));
    let path = format!("/api/v1/tokens/{}", minted["id"].as_str().unwrap());
    let (status, _) = bob.delete(&path).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(laptop.get("/api/v1/me").await.0, StatusCode::OK);

    // Its owner revokes it: refused from then on, and listed as revoked.
    let (status, _) = app.delete(&path).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = laptop.get("/api/v1/tasks").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (_, list) = app.get("/api/v1/tokens").await;
    assert!(list.to_string().contains("revoked_at"));

    // Bad requests name the problem.
    for (body, field) in [
        (json!({"expires_in": "0s"}), "expires_in"),
        (json!({"expires_in": "soon"}), "expires_in"),
        (json!({"expires_in": "100years"}), "expires_in"),
        (json!({"name": "x".repeat(101)}), "name"),
        (json!({"name": "a\u{0}b"}), "name"),
    ] {
        let (status, err) = app.post_json("/api/v1/tokens", &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {err}");
        assert_eq!(err["error"]["field"], field);
    }
    let (status, err) = app
        .post_json("/api/v1/tokens", &json!({"scope": "all"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
}

#[actix_web::test]
async fn an_expired_token_is_refused() {
    let app = spawn_app().await;
    let client = app.db.get().await.unwrap();
    let alice: uuid::Uuid = client
        .query_one("SELECT id FROM users WHERE name = 'alice'", &[])
        .await
        .unwrap()
        .get(0);
    let past = chrono::Utc::now() - chrono::Duration::seconds(1);
    let (_, token) = mlq::auth::issue(
        &client,
        alice,
        mlq::db::users::Kind::Token,
        "old",
        Some(past),
    )
    .await
    .unwrap();
    let (status, body) = Api::with_token(app.address.clone(), &token)
        .get("/api/v1/tasks")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

#[actix_web::test]
async fn an_address_that_keeps_sending_refused_credentials_is_slowed_down() {
    let app = spawn_app_with(|s| s.auth_failures_per_second = 1).await;
    // The user has been working here; past the second its verification is
    // remembered, its token is still known to be live.
    assert_eq!(app.get("/api/v1/me").await.0, StatusCode::OK);
    actix_web::rt::time::sleep(mlq::auth::recent::FOR).await;
    let made_up = format!("mlq_{}_{}", uuid::Uuid::new_v4().simple(), "A".repeat(43));
    let guess = Api::with_token(app.address.clone(), &made_up);
    // A burst of two seconds' worth is refused as usual...
    for _ in 0..2 {
        assert_eq!(guess.get("/api/v1/me").await.0, StatusCode::UNAUTHORIZED);
    }
    // ...then the address gets 429 without a lookup, for any route and for
    // the login form too...
    let client = awc::Client::default();
    let (status, headers, body) = send(
        client
            .get(app.url("/api/v1/tasks"))
            .insert_header(("authorization", format!("Bearer {made_up}"))),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert_eq!(body["error"]["limit"], "auth_failures_per_second", "{body}");
    assert!(headers.contains_key(header::RETRY_AFTER));
    let (status, body) = Api::new(app.address.clone())
        .post_json("/api/v1/session", &json!({"token": made_up}))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    // ...but not for the user's known token from the same address.
    let (status, body) = app.get("/api/v1/me").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Once the allowance refills, credentials are looked up again.
    actix_web::rt::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(guess.get("/api/v1/me").await.0, StatusCode::UNAUTHORIZED);
}

fn mlq(database: &str, args: &[&str]) -> std::process::Output {
    let settings = test_settings(database);
    let url = secrecy::ExposeSecret::expose_secret(&settings.database_url).to_owned();
    Command::new(env!("CARGO_BIN_EXE_mlq"))
        .args(args)
        .args(["--database-url", &url])
        .env("RUST_LOG", "info")
        .output()
        .unwrap()
}

#[actix_web::test]
async fn the_cli_creates_users_prints_tokens_once_and_revokes_them() {
    let database = crate::helpers::new_database_name();
    let out = mlq(&database, &["user", "create", "carol", "--admin"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Only the token on stdout, so `$(mlq user create …)` captures it
    // (logs go to stderr).
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let token = stdout.trim().to_owned();
    assert!(token.starts_with("mlq_"), "{token}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&token[token.len() - 43..]));
    // The same name twice is refused.
    let again = mlq(&database, &["user", "create", "carol"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let bad = mlq(&database, &["user", "create", "../x"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid user name"));
    let out = mlq(&database, &["user", "create", "dave"]);
    assert!(out.status.success());

    let list = mlq(&database, &["user", "list"]);
    let list = String::from_utf8(list.stdout).unwrap();
    let carol = list.lines().find(|l| l.contains("carol")).expect("carol");
    assert!(carol.contains("yes"), "{list}");
    let dave = list.lines().find(|l| l.contains("dave")).expect("dave");
    assert!(dave.contains(" no "), "{list}");

    // The token works against a server on that database, as an admin.
    let app = crate::helpers::spawn_app_on(&database, |_| {}).await;
    let carol = Api::with_token(app.address.clone(), &token);
    let (status, me) = carol.get("/api/v1/me").await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["user"]["admin"], true);
    // `mlq token revoke` ends it.
    let client = app.db.get().await.unwrap();
    let id: uuid::Uuid = client
        .query_one(
            "SELECT c.id FROM credentials c JOIN users u ON u.id = c.user_id
             WHERE u.name = 'carol' AND c.kind = 'token'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let out = mlq(&database, &["token", "revoke", &id.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Revoked by another process: the server may take it for up to a
    // second more, as verified just now (auth::recent), and not after.
    actix_web::rt::time::sleep(mlq::auth::recent::FOR).await;
    assert_eq!(carol.get("/api/v1/me").await.0, StatusCode::UNAUTHORIZED);
    let out = mlq(
        &database,
        &["token", "revoke", &uuid::Uuid::new_v4().to_string()],
    );
    assert!(!out.status.success());
}

/// Starts `mlq serve` on `url`; the process and the login link it printed.
fn serve_first_run(url: &str, data: &std::path::Path) -> (std::process::Child, u16, String) {
    let port = crate::process::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mlq"))
        .arg("serve")
        .env("MLQ_DATABASE_URL", url)
        .env("MLQ_BIND", format!("127.0.0.1:{port}"))
        .env("MLQ_DATA_DIR", data)
        .env("MLQ_WORKERS", "1")
        .env("MLQ_WEB_DIR", data.join("none"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("/login#code=") {
                let _ = tx.send(line.trim().to_owned());
            }
        }
    });
    let link = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("a login link");
    (child, port, link)
}

#[actix_web::test]
async fn the_first_run_prints_a_login_link_that_works_once() {
    let database = crate::helpers::new_database_name();
    let data = tempfile::tempdir().unwrap();
    let url =
        secrecy::ExposeSecret::expose_secret(&test_settings(&database).database_url).to_owned();
    let (mut first, port, link) = serve_first_run(&url, data.path());
    let _ = first.kill();
    let _ = first.wait();
    assert!(
        link.starts_with(&format!("http://127.0.0.1:{port}/login#code=mlql_")),
        "{link}"
    );
    let code = link.split("#code=").nth(1).unwrap().to_owned();

    // Restarted before anyone logged in, it prints a fresh link; the first
    // still works, once, for the admin `admin`.
    let (mut second, port, again) = serve_first_run(&url, data.path());
    assert_ne!(again, link);
    let anonymous = Api::new(format!("http://127.0.0.1:{port}"));
    crate::helpers::eventually(Duration::from_secs(30), || async {
        let ok = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        ok.then_some(())
    })
    .await;
    let (status, session) = anonymous
        .post_json("/api/v1/session", &json!({ "code": code }))
        .await;
    assert_eq!(status, StatusCode::OK, "{session}");
    assert_eq!(session["user"]["name"], "admin");
    assert_eq!(session["user"]["admin"], true);
    let (status, body) = anonymous
        .post_json("/api/v1/session", &json!({ "code": code }))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a spent code: {body}");
    let _ = second.kill();
    let _ = second.wait();
    // Someone has logged in now: no more links.
    let pool = mlq::db::connect(
        &mlq::db::PgConfig::from_settings(&test_settings(&database)).unwrap(),
        1,
    )
    .await
    .unwrap();
    let client = pool.get().await.unwrap();
    assert_eq!(mlq::auth::first_run(&client).await.unwrap(), None);
    let admins: i64 = client
        .query_one("SELECT count(*) FROM users WHERE admin", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(admins, 1, "one admin, however often it started");
}

/// The session cookie `POST /api/v1/session` set, as a `Cookie` header.
fn session_cookie(headers: &header::HeaderMap) -> (String, String) {
    let set = headers
        .get_all(header::SET_COOKIE)
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|v| v.starts_with("mlq_session="))
        .expect("a session cookie");
    let pair = set.split(';').next().unwrap().to_owned();
    (pair, set)
}

#[actix_web::test]
async fn a_dashboard_session_needs_its_csrf_token_for_writes() {
    let app = spawn_app().await;
    let client = awc::Client::new();
    let token = app.api.token.clone().unwrap();
    let (status, headers, login) = send_json(
        client.post(app.url("/api/v1/session")),
        &json!({ "token": token }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{login}");
    let (cookie, set) = session_cookie(&headers);
    let flags = set.to_ascii_lowercase();
    assert!(flags.contains("httponly"), "{set}");
    assert!(flags.contains("samesite=strict"), "{set}");
    assert!(flags.contains("path=/"), "{set}");
    assert!(!flags.contains("secure"), "plain HTTP: not Secure ({set})");
    let csrf = login["csrf_token"].as_str().unwrap().to_owned();

    // Reads with the cookie alone work; /me gives the CSRF token again.
    let (status, _, me) = send(
        client
            .get(app.url("/api/v1/me"))
            .insert_header(("cookie", cookie.as_str())),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["via"], "session");
    assert_eq!(me["csrf_token"], csrf.as_str());

    // A write with the cookie but no (or a wrong) CSRF token: 403, and
    // nothing was queued.
    let task = json!({"command": "sleep", "params": {"ms": 1}});
    for sent in [None, Some("wrong"), Some("")] {
        let mut request = client
            .post(app.url("/api/v1/tasks"))
            .insert_header(("cookie", cookie.as_str()));
        if let Some(value) = sent {
            request = request.insert_header(("x-csrf-token", value));
        }
        let (status, _, body) = send_json(request, &task).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{sent:?}: {body}");
        assert_eq!(body["error"]["code"], "csrf_failed");
    }
    let (_, list) = app.get("/api/v1/tasks").await;
    assert_eq!(list["tasks"].as_array().unwrap().len(), 0);
    let (status, _, body) = send_json(
        client
            .post(app.url("/api/v1/tasks"))
            .insert_header(("cookie", cookie.as_str()))
            .insert_header(("x-csrf-token", csrf.as_str())),
        &task,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    // Logging out ends the session on the server, not just in the browser.
    let (status, headers, _) = send(
        client
            .delete(app.url("/api/v1/session"))
            .insert_header(("cookie", cookie.as_str()))
            .insert_header(("x-csrf-token", csrf.as_str())),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(headers
        .get(header::SET_COOKIE)
        .unwrap()
        .to_str()
        .unwrap()
        .contains("mlq_session=;"));
    let (status, _, _) = send(
        client
            .get(app.url("/api/v1/me"))
            .insert_header(("cookie", cookie.as_str())),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Logging in from another site's page is refused; bad bodies are 4xx.
    let (status, _, body) = send_json(
        client
            .post(app.url("/api/v1/session"))
            .insert_header(("origin", "https://evil.example")),
        &json!({ "token": token }),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "origin_not_allowed");
    for bad in [
        json!({}),
        json!({"token": "x", "code": "y"}),
        json!({"token": 5}),
    ] {
        let (status, _, body) = send_json(client.post(app.url("/api/v1/session")), &bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (status, _, _) = send_json(
        client.post(app.url("/api/v1/session")),
        &json!({"token": "mlq_nope"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[actix_web::test]
async fn the_session_cookie_is_secure_behind_tls() {
    let app = spawn_app().await;
    let (status, headers, _) = send_json(
        awc::Client::new()
            .post(app.url("/api/v1/session"))
            .insert_header(("x-forwarded-proto", "https")),
        &json!({ "token": app.api.token.clone().unwrap() }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, set) = session_cookie(&headers);
    assert!(set.to_ascii_lowercase().contains("secure"), "{set}");
}

async fn send_json(
    request: awc::ClientRequest,
    body: &Value,
) -> (StatusCode, awc::http::header::HeaderMap, Value) {
    let mut res = request.send_json(body).await.expect("request");
    let bytes = res.body().await.expect("body");
    (
        res.status(),
        res.headers().clone(),
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[actix_web::test]
async fn websocket_tickets_work_once_and_foreign_pages_are_refused() {
    let app = spawn_app().await;
    let id = app.submit("sleep", json!({"ms": 10})).await;
    let (status, ticket) = app.post_json("/api/v1/ws-ticket", &json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{ticket}");
    let ticket = ticket["ticket"].as_str().unwrap().to_owned();
    assert!(ticket.starts_with("mlqt_"));
    let anonymous = Api::new(app.address.clone());
    let path = format!("/api/v1/tasks/{id}/events?ticket={ticket}");
    let mut feed = Feed::connect(&anonymous, &path).await;
    let snapshot = feed.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(snapshot["type"], "snapshot");
    // Spent: the same ticket again is refused before the upgrade.
    let ws = |path: &str| awc::Client::new().ws(app.url(path).replacen("http://", "ws://", 1));
    let err = ws(&path).connect().await.err().expect("refused");
    assert!(format!("{err:?}").contains("401"), "{err:?}");
    // Without any credential, and with a ticket on a plain GET.
    let err = ws(&format!("/api/v1/tasks/{id}/events"))
        .connect()
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:?}").contains("401"), "{err:?}");
    let (_, fresh) = app.post_json("/api/v1/ws-ticket", &json!({})).await;
    let fresh = fresh["ticket"].as_str().unwrap();
    let (status, _) = anonymous
        .get(&format!("/api/v1/tasks/{id}?ticket={fresh}"))
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "tickets are for upgrades only"
    );
    // A page of another origin cannot open the feed, even with a token.
    let token = app.api.token.clone().unwrap();
    let err = ws("/api/v1/events")
        .bearer_auth(&token)
        .origin("https://evil.example")
        .connect()
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:?}").contains("403"), "{err:?}");
    // mlq's own pages can.
    let own = app.address.clone();
    let (res, _) = ws("/api/v1/events")
        .bearer_auth(&token)
        .origin(own.as_str())
        .connect()
        .await
        .expect("mlq's own origin");
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
}

#[actix_web::test]
async fn listed_origins_may_open_the_feed() {
    let app = spawn_app_with(|s| s.allowed_origins = vec!["https://app.example.com".into()]).await;
    let (res, _) = awc::Client::new()
        .ws(app.url("/api/v1/events").replacen("http://", "ws://", 1))
        .bearer_auth(app.api.token.clone().unwrap())
        .origin("https://app.example.com")
        .connect()
        .await
        .expect("a listed origin");
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
}

#[actix_web::test]
async fn hosts_not_configured_are_refused_against_dns_rebinding() {
    let app = spawn_app_with(|s| s.allowed_hosts = vec!["mlq.example.com".into()]).await;
    let client = awc::Client::new();
    let token = app.api.token.clone().unwrap();
    let get = |host: &str| {
        client
            .get(app.url("/api/v1/tasks"))
            .insert_header(("host", host.to_owned()))
            .bearer_auth(&token)
    };
    let (status, _, body) = send(get("evil.example:8080")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "host_not_allowed");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("allowed_hosts"));
    for ok in ["mlq.example.com", "localhost:1234", "127.0.0.1"] {
        let (status, _, body) = send(get(ok)).await;
        assert_eq!(status, StatusCode::OK, "{ok}: {body}");
    }
    // Probes answer whatever host they are sent to.
    let (status, _, _) = send(
        client
            .get(app.url("/healthz"))
            .insert_header(("host", "10.1.2.3:8080")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[actix_web::test]
async fn readiness_details_are_for_admins() {
    let app = spawn_app().await;
    let (_, public) = Api::new(app.address.clone()).get("/readyz").await;
    assert_eq!(public["status"], "ready", "{public}");
    assert!(public["workers"].get("detail").is_none(), "{public}");
    let (_, user) = app.get("/readyz").await;
    assert!(user["workers"].get("detail").is_none(), "{user}");
    let (_, admin) = app.admin.get("/readyz").await;
    assert!(admin["workers"]["detail"].is_array(), "{admin}");
}

#[actix_web::test]
async fn a_session_ends_with_the_token_that_opened_it() {
    let app = spawn_app().await;
    let client = awc::Client::new();
    let (status, minted) = app
        .post_json(
            "/api/v1/tokens",
            &json!({"name": "short", "expires_in": "1h"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{minted}");
    let (status, headers, login) = send_json(
        client.post(app.url("/api/v1/session")),
        &json!({ "token": minted["token"] }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{login}");
    // It lasts no longer than the token (1 h, not the 7-day default).
    let expires: chrono::DateTime<chrono::Utc> =
        login["expires_at"].as_str().unwrap().parse().unwrap();
    assert!(
        expires <= chrono::Utc::now() + chrono::Duration::hours(1),
        "{login}"
    );
    let (cookie, _) = session_cookie(&headers);
    let me = || {
        client
            .get(app.url("/api/v1/me"))
            .insert_header(("cookie", cookie.clone()))
    };
    assert_eq!(send(me()).await.0, StatusCode::OK);
    // A stolen token's holder cannot keep a session after it is revoked.
    let (status, _) = app
        .delete(&format!(
            "/api/v1/tokens/{}",
            minted["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, headers, body) = send(me()).await;
    assert_unauthorized(status, &headers, &body);
}
