//! The dashboard: the built front end (`web/dist`) served at `/`.
//!
//! The dashboard routes in the browser (`/tasks/{id}`, `/models`), so any
//! GET outside `/api` that names no file gets `index.html`; unknown `/api`
//! paths keep their JSON 404.

use std::path::{Path, PathBuf};

use actix_files::{Files, NamedFile};
use actix_web::dev::{fn_service, ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::{guard, web, HttpResponse};

use super::error::ApiError;

/// Mounts the dashboard if `dir` holds a build; says whether it did.
pub fn config(cfg: &mut web::ServiceConfig, dir: &Path) -> bool {
    let index = dir.join("index.html");
    if !index.is_file() {
        return false;
    }
    // Pages are read: other methods go on to the API's own answers (405
    // naming the methods a path takes, or 404).
    let files = Files::new("/", dir)
        .guard(guard::Any(guard::Get()).or(guard::Head()))
        .index_file("index.html")
        .default_handler(fn_service(move |req: ServiceRequest| {
            let index = index.clone();
            async move {
                let (req, _) = req.into_parts();
                let response = fallback(&req, &index).await;
                Ok(ServiceResponse::new(req, response))
            }
        }));
    cfg.service(files);
    true
}

async fn fallback(req: &actix_web::HttpRequest, index: &PathBuf) -> HttpResponse {
    let page = matches!(*req.method(), Method::GET | Method::HEAD)
        && !req.path().starts_with("/api/")
        && req.path() != "/api"
        && super::routes::methods_at(req.path()).is_empty();
    if !page {
        return actix_web::ResponseError::error_response(&super::no_route(req));
    }
    match NamedFile::open_async(index).await {
        Ok(file) => {
            let mut response = file.into_response(req);
            // The page names its hashed assets: always revalidate it.
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-cache"),
            );
            response
        }
        Err(e) => actix_web::ResponseError::error_response(&ApiError::NotFound(format!(
            "the dashboard is not available: {e}"
        ))),
    }
}
