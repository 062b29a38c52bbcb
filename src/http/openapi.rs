//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document, generated from the
//! handlers' `#[utoipa::path]` annotations and the types they send and
//! take. A test checks that it lists exactly the routes the app serves
//! (`routes::table`), so the two cannot drift apart.
//!
//! Each operation names its own answers; the refusals that any route may
//! give (a bad credential, a Host not allowed, the rate limit, a database
//! that is down) are added to every operation here, in one place.

use std::sync::OnceLock;

use actix_web::http::header;
use actix_web::HttpResponse;
use serde::{Deserialize, Serialize};
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder, Schema};
use utoipa::{Modify, OpenApi, ToSchema};

use super::routes::Router;
use crate::auth::SESSION_COOKIE;

pub fn config(r: &mut Router) {
    r.get("/openapi.json", serve);
}

/// The body of every error answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable, e.g. `not_found`, `invalid_params`,
    /// `quota_exceeded`.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// The param at fault, for `invalid_params`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The limit that was reached, for `quota_exceeded` and
    /// `rate_limited`: the setting's name without `quota_`, e.g.
    /// `queued_tasks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// On a 5xx: the id the server log files the details under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mlq",
        description = "Upload files, run ML commands (train, predict, evaluate, export) on \
                       them, and follow each task live. Every route but `/healthz`, `/readyz` \
                       and `POST /api/v1/session` needs a credential: an API token as \
                       `Authorization: Bearer <token>`, or the dashboard's session cookie \
                       (whose writes also need the `X-CSRF-Token` header).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        super::health::healthz,
        super::health::readyz,
        serve,
        super::session::me,
        super::session::login,
        super::session::logout,
        super::tokens::list,
        super::tokens::create,
        super::tokens::revoke,
        super::tokens::ticket,
        super::submit::create,
        super::tasks::list,
        super::tasks::get,
        super::tasks::delete,
        super::tasks::cancel,
        super::tasks::retry,
        super::tasks::artifact,
        super::tasks::input,
        super::models::list,
        super::models::upload,
        super::models::get,
        super::models::delete,
        super::models::download,
        super::commands::list,
        super::events::follow_all,
        super::events::follow_task,
        super::events::logs,
    ),
    components(schemas(ErrorBody)),
    modifiers(&CommonAnswers),
    security(("bearer" = []), ("session" = [])),
    tags(
        (name = "health", description = "Liveness and readiness probes"),
        (name = "access", description = "Who you are, tokens, dashboard sessions"),
        (name = "tasks", description = "Submit, follow, cancel, retry and delete tasks"),
        (name = "models", description = "The model registry"),
        (name = "events", description = "Live feeds (WebSocket) and task logs"),
        (name = "meta", description = "What the service offers"),
    ),
)]
pub struct ApiDoc;

/// The document, built once.
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        ApiDoc::openapi()
            .to_json()
            .expect("the OpenAPI document serializes")
    })
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object)),
)]
pub(super) async fn serve() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .body(document())
}

/// Adds the security schemes, and the answers any route may give.
struct CommonAnswers;

/// A refusal every route of its kind may answer with.
struct Common {
    status: &'static str,
    name: &'static str,
    description: &'static str,
    header: Option<(&'static str, &'static str)>,
    /// Only for routes that need a credential.
    authenticated: bool,
    /// Only for routes that take a body.
    takes_body: bool,
    /// Only for routes that take path or query parameters, or a body.
    takes_input: bool,
}

const COMMON: &[Common] = &[
    Common {
        status: "400",
        name: "BadRequest",
        description: "A path or query parameter, or the body, is malformed; `code` and \
                      `message` say which",
        header: None,
        authenticated: false,
        takes_body: false,
        takes_input: true,
    },
    Common {
        status: "401",
        name: "Unauthorized",
        description: "No credential, or one that is unknown, revoked or expired",
        header: Some((
            "WWW-Authenticate",
            "`Bearer realm=\"mlq\"`, with `error=\"invalid_token\"` when one was sent",
        )),
        authenticated: true,
        takes_body: false,
        takes_input: false,
    },
    Common {
        status: "403",
        name: "Forbidden",
        description: "The Host is not one this service answers to, a browser Origin is not \
                      allowed, or a cookie-authenticated write lacks its CSRF token",
        header: None,
        authenticated: false,
        takes_body: false,
        takes_input: false,
    },
    Common {
        status: "413",
        name: "PayloadTooLarge",
        description: "The body is larger than this endpoint takes",
        header: None,
        authenticated: false,
        takes_body: true,
        takes_input: false,
    },
    Common {
        status: "429",
        name: "TooManyRequests",
        description: "Over one of the caller's limits (`quota_exceeded`, `rate_limited`); \
                      `limit` gives it",
        header: Some(("Retry-After", "Seconds to wait before trying again")),
        authenticated: true,
        takes_body: false,
        takes_input: false,
    },
    Common {
        status: "431",
        name: "HeadersTooLarge",
        description: "The request's headers take more than 32 KiB",
        header: None,
        authenticated: false,
        takes_body: false,
        takes_input: false,
    },
    Common {
        status: "500",
        name: "InternalError",
        description: "Something failed that is not the request's fault; the body names the \
                      request id the server log files the details under",
        header: None,
        authenticated: false,
        takes_body: false,
        takes_input: false,
    },
    Common {
        status: "503",
        name: "Unavailable",
        description: "The database is unavailable, or the process is at a limit or shutting \
                      down; retry after `Retry-After`",
        header: Some(("Retry-After", "Seconds to wait before trying again")),
        authenticated: false,
        takes_body: false,
        takes_input: false,
    },
];

impl Modify for CommonAnswers {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token: `mlq user create` or POST /api/v1/tokens",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                SESSION_COOKIE,
                "The dashboard's session, from POST /api/v1/session",
            ))),
        );
        let error_body: RefOr<Schema> = Ref::from_schema_name("ErrorBody").into();
        for common in COMMON {
            let mut response = ResponseBuilder::new()
                .description(common.description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(error_body.clone()))
                        .build(),
                );
            if let Some((name, description)) = common.header {
                response = response.header(
                    name,
                    HeaderBuilder::new()
                        .schema(String::schema())
                        .description(Some(description))
                        .build(),
                );
            }
            components
                .responses
                .insert(common.name.to_owned(), response.build().into());
        }
        components.add_security_scheme(
            "ticket",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "ticket",
                "A single-use WebSocket ticket from POST /api/v1/ws-ticket: live feeds only",
            ))),
        );
        let global_security = doc.security.clone();
        for (_, item) in doc.paths.paths.iter_mut() {
            for operation in [
                item.get.as_mut(),
                item.post.as_mut(),
                item.put.as_mut(),
                item.patch.as_mut(),
                item.delete.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                // A credential is needed unless one of the ways in is none.
                let authenticated = match operation.security.as_ref().or(global_security.as_ref()) {
                    Some(ways) => {
                        !ways.is_empty() && ways.iter().all(|way| way != &Default::default())
                    }
                    None => false,
                };
                add_common(operation, authenticated);
            }
        }
    }
}

fn add_common(operation: &mut Operation, authenticated: bool) {
    let takes_body = operation.request_body.is_some();
    let takes_input = takes_body || operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
    for common in COMMON {
        if (common.authenticated && !authenticated)
            || (common.takes_body && !takes_body)
            || (common.takes_input && !takes_input)
        {
            continue;
        }
        operation
            .responses
            .responses
            .entry(common.status.to_owned())
            .or_insert_with(|| Ref::from_response_name(common.name).into());
    }
}

/// The schema of a string, for headers.
trait StringSchema {
    fn schema() -> RefOr<Schema>;
}

impl StringSchema for String {
    fn schema() -> RefOr<Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .into()
    }
}
