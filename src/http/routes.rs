//! Registering routes so that the app can list them: each resource module
//! adds its routes through a [`Router`], which both mounts them and writes
//! them down. [`table`] reads the list back, for the tests that check every
//! route (the access matrix, the OpenAPI document) and so cannot miss one
//! added later.

use std::sync::OnceLock;

use actix_web::dev::ResourceDef;
use actix_web::http::Method;
use actix_web::{guard, web, FromRequest, Handler, Responder};

/// One route: its method and its full path pattern (`/api/v1/tasks/{id}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    pub path: String,
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

pub struct Router<'a> {
    cfg: &'a mut web::ServiceConfig,
    prefix: &'static str,
    table: &'a mut Vec<Route>,
}

impl<'a> Router<'a> {
    pub fn new(
        cfg: &'a mut web::ServiceConfig,
        prefix: &'static str,
        table: &'a mut Vec<Route>,
    ) -> Self {
        Self { cfg, prefix, table }
    }

    pub fn get<F, Args>(&mut self, path: &str, handler: F) -> &mut Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        // HEAD too, wherever GET is (RFC 9110): the same answer, no body.
        let route = web::route()
            .guard(guard::Any(guard::Get()).or(guard::Head()))
            .to(handler);
        self.add(Method::GET, path, route)
    }

    pub fn post<F, Args>(&mut self, path: &str, handler: F) -> &mut Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.add(Method::POST, path, web::post().to(handler))
    }

    pub fn delete<F, Args>(&mut self, path: &str, handler: F) -> &mut Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.add(Method::DELETE, path, web::delete().to(handler))
    }

    fn add(&mut self, method: Method, path: &str, route: actix_web::Route) -> &mut Self {
        self.table.push(Route {
            method,
            path: format!("{}{path}", self.prefix),
        });
        self.cfg.route(path, route);
        self
    }
}

/// Every route the app serves (the dashboard's pages aside), sorted.
pub fn table() -> Vec<Route> {
    let mut table = Vec::new();
    let _ = actix_web::App::new().configure(|cfg| {
        super::health::config(&mut Router::new(cfg, "", &mut table));
        super::api_routes(&mut Router::new(cfg, "/api/v1", &mut table));
    });
    table.sort_by(|a, b| (&a.path, a.method.as_str()).cmp(&(&b.path, b.method.as_str())));
    table
}

/// The methods served at `path` (HEAD wherever GET is), sorted: for a
/// 405's `Allow` when a request names a route with a method it does not
/// take.
pub fn methods_at(path: &str) -> Vec<Method> {
    static ROUTES: OnceLock<Vec<(ResourceDef, Method)>> = OnceLock::new();
    let mut methods = ROUTES
        .get_or_init(|| {
            table()
                .into_iter()
                .map(|r| (ResourceDef::new(r.path), r.method))
                .collect()
        })
        .iter()
        .filter(|(pattern, _)| pattern.is_match(path))
        .flat_map(|(_, method)| {
            let head = (method == Method::GET).then_some(Method::HEAD);
            std::iter::once(method.clone()).chain(head)
        })
        .collect::<Vec<_>>();
    methods.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    methods.dedup();
    methods
}
