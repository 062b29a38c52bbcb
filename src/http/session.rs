//! Who the caller is, and the dashboard's login.
//!
//! - `GET /api/v1/me`: the caller's user, how it authenticated, and for a
//!   session the CSRF token its writes must send.
//! - `POST /api/v1/session` `{"token": …}` or `{"code": …}` (the first
//!   run's one-time login code): starts a dashboard session, kept in an
//!   `HttpOnly`, `SameSite=Strict` cookie (`Secure` over TLS).
//! - `DELETE /api/v1/session`: ends it.

use actix_web::cookie::{time, Cookie, SameSite};
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::routes::Router;
use super::AppState;
use crate::auth::{self, Caller, Presented, Unauthorized, SESSION_COOKIE};
use crate::db::users::{self, Kind};

pub fn config(r: &mut Router) {
    r.get("/me", me)
        .post("/session", login)
        .delete("/session", logout);
}

async fn me(caller: Caller) -> HttpResponse {
    let mut body = json!({ "user": caller.user, "via": caller.via });
    if let Some(csrf) = &caller.csrf {
        body["csrf_token"] = json!(csrf);
    }
    HttpResponse::Ok().json(body)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    /// An API token.
    token: Option<String>,
    /// A one-time login code (`mlq serve` prints one on first run).
    code: Option<String>,
}

async fn login(
    req: HttpRequest,
    body: web::Json<Login>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // A page of another site must not log a visitor in as someone else.
    state.origins.check_origin(&req)?;
    let presented =
        match (&body.token, &body.code) {
            (Some(token), None) => Presented::parse(token.trim(), Kind::Token),
            (None, Some(code)) => Presented::parse(code.trim(), Kind::Login),
            _ => return Err(ApiError::bad_request(
                "invalid_login",
                "send {\"token\": \"<an API token>\"} or {\"code\": \"<a one-time login code>\"}",
            )),
        }
        .ok_or(Unauthorized::Invalid)?;
    let client = state.db.get().await?;
    let user = match users::find_credential(&client, presented.id, presented.kind).await? {
        Some(found) if presented.matches(&found.secret_hash) => found.user,
        _ => return Err(Unauthorized::Invalid.into()),
    };
    let ttl = chrono::Duration::from_std(state.session_ttl).unwrap_or(chrono::Duration::days(7));
    let mut expires_at = Utc::now() + ttl;
    let (session, secret) = auth::issue(
        &client,
        user.id,
        Kind::Session,
        "dashboard",
        Some(expires_at),
    )
    .await?;
    if presented.kind == Kind::Token {
        if let Some(until) = users::bind_session(&client, session.id, presented.id).await? {
            expires_at = expires_at.min(until);
        }
    }
    let ttl = expires_at - Utc::now();
    let csrf = Presented::parse(&secret, Kind::Session)
        .expect("a minted session parses")
        .csrf_token();
    tracing::info!(user = %user.name, session = %session.id, "dashboard login");
    let cookie = Cookie::build(SESSION_COOKIE, secret)
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(req.connection_info().scheme() == "https")
        .max_age(time::Duration::seconds(ttl.num_seconds()))
        .finish();
    Ok(HttpResponse::Ok().cookie(cookie).json(json!({
        "user": user,
        "via": "session",
        "csrf_token": csrf,
        "expires_at": expires_at,
    })))
}

async fn logout(caller: Caller, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if caller.via == auth::Via::Session {
        let client = state.db.get().await?;
        users::revoke(&client, caller.credential, caller.viewer()).await?;
    }
    let mut gone = Cookie::build(SESSION_COOKIE, "").path("/").finish();
    gone.make_removal();
    Ok(HttpResponse::NoContent().cookie(gone).finish())
}
