//! `GET /api/v1/commands`: what each command is, the files it takes, and
//! the JSON Schema of its params. The dashboard builds its forms from it.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use mlq_actors::commands::CommandInfo;

use super::routes::Router;
use super::AppState;

pub fn config(r: &mut Router) {
    r.get("/commands", list);
}

/// The commands users may submit.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CommandList {
    pub commands: Vec<CommandInfo>,
}

/// What each command is, the files it takes, and the JSON Schema of its
/// params.
#[utoipa::path(
    get,
    path = "/api/v1/commands",
    tag = "meta",
    responses((status = 200, description = "The commands", body = CommandList)),
)]
pub(super) async fn list(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(CommandList {
        commands: state.commands.describe(),
    })
}
