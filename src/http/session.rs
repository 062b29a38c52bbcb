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
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ApiError;
use super::openapi::ErrorBody;
use super::routes::Router;
use super::AppState;
use crate::auth::{self, Caller, Presented, Unauthorized, Via, SESSION_COOKIE};
use crate::db::users::{self, Kind, User};

pub fn config(r: &mut Router) {
    r.get("/me", me)
        .post("/session", login)
        .delete("/session", logout);
}

/// Who the caller is, and how they signed in.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    pub user: User,
    pub via: Via,
    /// For a dashboard session: the token its writes send as
    /// `X-CSRF-Token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf_token: Option<String>,
    /// For a new session: when it ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// Who the caller is.
#[utoipa::path(
    get,
    path = "/api/v1/me",
    tag = "access",
    responses((status = 200, description = "The caller", body = Me)),
)]
pub(super) async fn me(caller: Caller) -> HttpResponse {
    HttpResponse::Ok().json(Me {
        user: caller.user,
        via: caller.via,
        csrf_token: caller.csrf,
        expires_at: None,
    })
}

/// An API token, or the first run's one-time login code: one of the two.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Login {
    /// An API token.
    token: Option<String>,
    /// A one-time login code (`mlq serve` prints one on first run).
    code: Option<String>,
}

/// Signs the dashboard in: trades an API token (or the one-time login
/// code) for a session cookie (`HttpOnly`, `SameSite=Strict`, `Secure` over
/// TLS). A session opened with a token ends when the token does.
#[utoipa::path(
    post,
    path = "/api/v1/session",
    tag = "access",
    security(()),
    request_body = Login,
    responses(
        (status = 200, description = "Signed in; the cookie is set", body = Me,
            headers(("Set-Cookie" = String, description = "The session cookie"))),
        (status = 401, description = "Not a valid token or code", body = ErrorBody),
        (status = 429, description = "Too many refused credentials from this address \
            lately (`rate_limited`, `limit` `auth_failures_per_second`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    ),
)]
pub(super) async fn login(
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
    let user = auth::verify(&state, &req, &presented).await?;
    let client = state.db.get().await?;
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
    Ok(HttpResponse::Ok().cookie(cookie).json(Me {
        user,
        via: Via::Session,
        csrf_token: Some(csrf),
        expires_at: Some(expires_at),
    }))
}

/// Signs the dashboard out: ends the session and clears its cookie. With
/// a token, nothing is ended (revoke tokens with DELETE /api/v1/tokens/{id}).
#[utoipa::path(
    delete,
    path = "/api/v1/session",
    tag = "access",
    responses((status = 204, description = "Signed out")),
)]
pub(super) async fn logout(
    caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if caller.via == auth::Via::Session {
        let client = state.db.get().await?;
        users::revoke(&client, caller.credential, caller.viewer()).await?;
        state.credentials.forget_user(caller.user.id);
    }
    let mut gone = Cookie::build(SESSION_COOKIE, "").path("/").finish();
    gone.make_removal();
    Ok(HttpResponse::NoContent().cookie(gone).finish())
}
