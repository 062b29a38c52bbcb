//! `/api/v1/tokens`: users mint, list and revoke their own API tokens;
//! `POST /api/v1/ws-ticket` hands out a single-use WebSocket ticket.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::ApiError;
use super::openapi::ErrorBody;
use super::routes::Router;
use super::AppState;
use crate::auth::{self, Caller, Presented, TICKET_TTL};
use crate::db::users::{self, Credential, Kind};

/// Longest a token may be minted for; without `expires_in` it never
/// expires.
const MAX_TOKEN_LIFE: Duration = Duration::from_secs(10 * 366 * 86_400);

pub fn config(r: &mut Router) {
    r.get("/tokens", list)
        .post("/tokens", create)
        .delete("/tokens/{id}", revoke)
        .post("/ws-ticket", ticket);
}

/// The caller's API tokens.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<Credential>,
}

/// A token just minted: the secret is here, and nowhere else ever again.
#[derive(Debug, Serialize, ToSchema)]
pub struct MintedToken {
    #[serde(flatten)]
    pub credential: Credential,
    /// `Authorization: Bearer <token>`.
    pub token: String,
}

/// A WebSocket ticket.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ticket {
    /// Pass as `?ticket=` on one upgrade.
    pub ticket: String,
    pub expires_at: DateTime<Utc>,
}

/// The caller's API tokens (not their dashboard sessions), revoked ones
/// included.
#[utoipa::path(
    get,
    path = "/api/v1/tokens",
    tag = "access",
    responses((status = 200, description = "The caller's tokens", body = TokenList)),
)]
pub(super) async fn list(
    caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let client = state.db.get().await?;
    let tokens = users::list_tokens(&client, caller.user.id).await?;
    Ok(HttpResponse::Ok().json(TokenList { tokens }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewToken {
    /// What it is for, e.g. `laptop` or `ci`.
    #[serde(default)]
    name: String,
    /// How long it lasts, e.g. `30d` or `12h`; forever when absent.
    expires_in: Option<String>,
}

/// Mints an API token for the caller: the token is in the answer, and
/// only there.
#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    tag = "access",
    request_body = NewToken,
    responses(
        (status = 201, description = "The new token", body = MintedToken),
        (status = 422, description = "A name or expiry that is not valid", body = ErrorBody),
    ),
)]
pub(super) async fn create(
    caller: Caller,
    body: web::Json<NewToken>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let name = body.name.trim();
    if name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::InvalidParams {
            field: "name".into(),
            message: "must be at most 100 characters, none of them control characters".into(),
        });
    }
    let expires_at = match &body.expires_in {
        None => None,
        Some(text) => {
            let life = humantime::parse_duration(text.trim())
                .ok()
                .filter(|d| !d.is_zero() && *d <= MAX_TOKEN_LIFE)
                .ok_or_else(|| ApiError::InvalidParams {
                    field: "expires_in".into(),
                    message: format!(
                        "must be a duration such as 30d or 12h, above zero and at most 10 \
                         years; got {text:?}"
                    ),
                })?;
            Some(Utc::now() + chrono::Duration::from_std(life).unwrap_or(chrono::Duration::MAX))
        }
    };
    let client = state.db.get().await?;
    let (credential, token) =
        auth::issue(&client, caller.user.id, Kind::Token, name, expires_at).await?;
    tracing::info!(user = %caller.user.name, token = %credential.id, "token minted");
    Ok(HttpResponse::Created()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(MintedToken { credential, token }))
}

/// Revokes a token: one's own (an admin: anyone's). Dashboard sessions
/// opened with it end with it.
#[utoipa::path(
    delete,
    path = "/api/v1/tokens/{id}",
    tag = "access",
    params(("id" = Uuid, Path, description = "The token's id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such token", body = ErrorBody),
    ),
)]
pub(super) async fn revoke(
    caller: Caller,
    id: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let client = state.db.get().await?;
    let revoked = users::revoke(&client, id, caller.viewer())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no token with id {id}")))?;
    state.credentials.forget_user(revoked.user_id);
    tracing::info!(user = %caller.user.name, token = %id, "token revoked");
    Ok(HttpResponse::NoContent().finish())
}

/// A ticket for one WebSocket upgrade within 30 seconds (`?ticket=`), for
/// clients that cannot send a header or cookie with the upgrade.
#[utoipa::path(
    post,
    path = "/api/v1/ws-ticket",
    tag = "access",
    responses((status = 201, description = "The ticket", body = Ticket)),
)]
pub(super) async fn ticket(
    caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let expires_at = Utc::now() + chrono::Duration::from_std(TICKET_TTL).unwrap_or_default();
    let client = state.db.get().await?;
    let (_, ticket) =
        auth::issue(&client, caller.user.id, Kind::Ticket, "", Some(expires_at)).await?;
    // Its upgrade is let through from an address past its allowance of
    // refused credentials: it was minted for a caller who proved itself.
    if let Some(minted) = Presented::parse(&ticket, Kind::Ticket) {
        state.credentials.vouch(&minted, TICKET_TTL);
    }
    Ok(HttpResponse::Created()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(Ticket { ticket, expires_at }))
}
