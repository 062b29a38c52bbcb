//! Who is calling. Every `/api/v1` request is authenticated by one of:
//!
//! - `Authorization: Bearer <token>`: an API token (`mlq user create`
//!   prints one; users mint more with `POST /api/v1/tokens`);
//! - the dashboard's session cookie, set by `POST /api/v1/session`. Writes
//!   made with it must also send the session's CSRF token in
//!   `X-CSRF-Token`: a form another site posts cannot;
//! - for a WebSocket upgrade only, `?ticket=`: a single-use ticket from
//!   `POST /api/v1/ws-ticket`, valid for 30 seconds, so a long-lived token
//!   never travels in a URL.
//!
//! The authenticated [`Caller`] is put in the request's extensions for
//! handlers to take; what it may see is its [`Viewer`].

pub mod recent;
pub mod secret;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

use crate::db::users::{self, Kind, User, Viewer};
use crate::db::DbError;
use crate::http::error::ApiError;
use crate::http::AppState;

pub use secret::{Minted, Presented};

/// The dashboard's session cookie.
pub const SESSION_COOKIE: &str = "mlq_session";
/// The header cookie-authenticated writes carry.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a WebSocket ticket is valid.
pub const TICKET_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    Token,
    Session,
    Ticket,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: User,
    pub via: Via,
    /// The credential it presented.
    pub credential: Uuid,
    /// For a session: its CSRF token.
    pub csrf: Option<String>,
}

impl Caller {
    pub fn viewer(&self) -> Viewer {
        Viewer {
            user: self.user.id,
            admin: self.user.admin,
        }
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        // Set by `authenticate`, which guards every route that takes one.
        std::future::ready(
            req.extensions()
                .get::<Caller>()
                .cloned()
                .ok_or_else(|| ApiError::Unauthorized(Unauthorized::Missing)),
        )
    }
}

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthorized {
    /// No credential at all.
    Missing,
    /// Not a credential, or one that is unknown, revoked or expired.
    Invalid,
    /// An `Authorization` header in another scheme than Bearer.
    Scheme,
}

impl std::fmt::Display for Unauthorized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Missing => {
                "authentication required: send Authorization: Bearer <token> (mlq user create \
                 prints one), or log in to the dashboard"
            }
            Self::Invalid => "the credential is invalid, revoked or expired",
            Self::Scheme => "the Authorization header must be Bearer <token>",
        })
    }
}

/// Middleware for `/api/v1`: authenticates the request, or answers 401.
/// `POST /api/v1/session` (logging in) is the one route it lets through.
pub async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let login = req.method() == Method::POST && req.path() == "/api/v1/session";
    if !login {
        let state = req
            .app_data::<web::Data<AppState>>()
            .expect("AppState is registered")
            .clone();
        let admitted = identify(req.request(), &state).await.and_then(|caller| {
            state
                .rate
                .check(&caller.user)
                .map_err(ApiError::OverQuota)?;
            Ok(caller)
        });
        match admitted {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
            }
            // Answered here, inside the request id's scope, so a 503's
            // body names the request id its log lines carry.
            Err(e) => return Ok(req.error_response(e).map_into_right_body()),
        }
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

/// The caller, for a route open to anyone that shows more to some.
pub async fn caller_if_any(req: &HttpRequest, state: &AppState) -> Option<Caller> {
    identify(req, state).await.ok()
}

async fn identify(req: &HttpRequest, state: &AppState) -> Result<Caller, ApiError> {
    if let Some(value) = req.headers().get(header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| Unauthorized::Invalid)?;
        let (scheme, token) = value.trim().split_once(' ').ok_or(Unauthorized::Scheme)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Unauthorized::Scheme.into());
        }
        let presented = Presented::parse(token.trim(), Kind::Token).ok_or(Unauthorized::Invalid)?;
        let user = verify(state, req, &presented).await?;
        return Ok(Caller {
            user,
            via: Via::Token,
            credential: presented.id,
            csrf: None,
        });
    }
    if let Some(cookie) = req.cookie(SESSION_COOKIE) {
        let presented =
            Presented::parse(cookie.value(), Kind::Session).ok_or(Unauthorized::Invalid)?;
        let user = verify(state, req, &presented).await?;
        let csrf = presented.csrf_token();
        if !req.method().is_safe() {
            let sent = req
                .headers()
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !secret::same(sent, &csrf) {
                return Err(ApiError::Forbidden {
                    code: "csrf_failed",
                    message: format!(
                        "a write authenticated by the session cookie must send the session's \
                         CSRF token in {CSRF_HEADER} (GET /api/v1/me gives it)"
                    ),
                });
            }
        }
        return Ok(Caller {
            user,
            via: Via::Session,
            credential: presented.id,
            csrf: Some(csrf),
        });
    }
    if let Some(ticket) = ticket(req) {
        let presented = Presented::parse(&ticket, Kind::Ticket).ok_or(Unauthorized::Invalid)?;
        let user = verify(state, req, &presented).await?;
        return Ok(Caller {
            user,
            via: Via::Ticket,
            credential: presented.id,
            csrf: None,
        });
    }
    Err(Unauthorized::Missing.into())
}

/// A live-feed WebSocket upgrade's `ticket` query parameter.
fn ticket(req: &HttpRequest) -> Option<String> {
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    // Only the live feeds take tickets: a ticket opens a feed, not a
    // download.
    if !upgrade || req.method() != Method::GET || !req.path().ends_with("/events") {
        return None;
    }
    web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
        .ok()?
        .get("ticket")
        .cloned()
}

/// The user a presented credential belongs to, if it is live and its
/// secret matches (remembered for a second: see [`recent`]).
///
/// Each lookup of a credential not known to be live takes from the client
/// address's allowance of refusals (`auth_failures_per_second`), and one
/// that finds it live gives it back: an address that sent too many refused
/// credentials gets 429 without a lookup, except for credentials live here
/// lately, so it cannot lock out the others behind the same address.
pub async fn verify(
    state: &AppState,
    req: &HttpRequest,
    presented: &Presented,
) -> Result<User, ApiError> {
    if let Some(user) = state.credentials.user(presented) {
        return Ok(user);
    }
    let known = state.credentials.known(presented);
    let address = state.proxies.client(req);
    let mut slot = Slot {
        refusals: &state.refusals,
        address: (!known).then_some(address).flatten(),
        spent: false,
    };
    state.refusals.take(slot.address).map_err(|e| {
        slot.spent = true;
        ApiError::OverQuota(e)
    })?;
    let generation = state.credentials.generation();
    let client = state.db.get().await?;
    let Some(found) = users::find_credential(&client, presented.id, presented.kind, |hash| {
        presented.matches(hash)
    })
    .await?
    else {
        // Refused: what the lookup took stays taken. A credential known to
        // be live (only its holder has its secret) is known no more, and
        // its refusal counts too.
        slot.spent = true;
        if known {
            state.credentials.unknown(presented.id);
            let _ = state.refusals.take(address);
        }
        return Err(Unauthorized::Invalid.into());
    };
    state.credentials.note(
        generation,
        presented,
        found.secret_hash,
        &found.user,
        found.expires_at,
    );
    Ok(found.user)
}

/// A lookup's place in its address's allowance of refusals: given back
/// unless the lookup was refused, also when the request is dropped midway.
struct Slot<'a> {
    refusals: &'a crate::http::quota::FailureLimiter,
    address: Option<std::net::IpAddr>,
    spent: bool,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.spent {
            self.refusals.give_back(self.address);
        }
    }
}

/// Mints a credential of `kind` for `user` and stores its hash.
pub async fn issue(
    client: &impl GenericClient,
    user: Uuid,
    kind: Kind,
    name: &str,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(users::Credential, String), DbError> {
    let minted = secret::mint(kind);
    let stored = users::insert_credential(
        client,
        minted.id,
        user,
        kind,
        name,
        &minted.hash,
        expires_at,
    )
    .await?;
    Ok((stored, minted.text))
}

/// Deletes credentials revoked or expired over a day ago (spent tickets
/// and login codes among them), every hour, for as long as the system runs.
pub fn spawn_pruner(db: deadpool_postgres::Pool) {
    actix::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            tick.tick().await;
            let pruned = match db.get().await {
                Ok(client) => users::prune(&client).await,
                Err(e) => Err(e.into()),
            };
            match pruned {
                Ok(0) => {}
                Ok(n) => tracing::info!("pruned {n} revoked or expired credential(s)"),
                Err(e) => tracing::warn!("pruning credentials failed: {e}"),
            }
        }
    });
}

/// Creates a user with a first API token; `None` if the name is taken.
pub async fn create_user(
    client: &impl GenericClient,
    name: &str,
    admin: bool,
) -> Result<Option<(User, String)>, DbError> {
    let Some(user) = users::create_user(client, name, admin).await? else {
        return Ok(None);
    };
    let (_, token) = issue(client, user.id, Kind::Token, "created with the user", None).await?;
    Ok(Some((user, token)))
}

/// Checks a user name: 1–64 letters, digits, `.`, `_` or `-`, starting
/// with a letter or digit.
pub fn check_user_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid user name {name:?}: use 1 to 64 letters, digits, '.', '_' or '-', \
             starting with a letter or digit"
        ))
    }
}

/// How long the first run's login link works.
const LOGIN_CODE_TTL: chrono::Duration = chrono::Duration::hours(24);

/// First run: with no user at all, creates the admin `admin`; while no one
/// has ever logged in or been given a token (a restart before the first
/// login included), mints a one-time login code for the first admin.
/// Returns the code, to print as a link. Processes starting together
/// create one admin (the name is unique); each may print its own code.
pub async fn first_run(client: &impl GenericClient) -> Result<Option<String>, DbError> {
    if !users::any_user(client).await? {
        if let Some(admin) = users::create_user(client, "admin", true).await? {
            tracing::info!(user = %admin.name, "first run: created the admin user");
        }
    }
    let Some(admin) = users::first_admin_without_logins(client).await? else {
        return Ok(None);
    };
    let expires_at = Utc::now() + LOGIN_CODE_TTL;
    let (_, code) = issue(client, admin.id, Kind::Login, "first run", Some(expires_at)).await?;
    Ok(Some(code))
}
