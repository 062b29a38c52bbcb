//! Who may do what: every route the app serves (read from the app's own
//! route table, so a route added later cannot be forgotten) called by the
//! owner of what it names, another user, an admin, no one and a revoked
//! token. Another user's things answer 404, never 403, and are left as
//! they were; lists and the live feed show each user only their own.

use std::time::Duration;

use actix_web::http::{Method, StatusCode};
use awc::ws::Frame;
use futures_util::StreamExt;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::events::Feed;
use crate::fixtures;
use crate::helpers::{blobs_csv, multipart, spawn_app, Api, TestApp};
use crate::models::ready_model;
use mlq::http::routes::{table, Route};

const WITHIN: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Owner,
    Other,
    Admin,
    Nobody,
    Revoked,
}

const EVERYONE: [Who; 5] = [
    Who::Other,
    Who::Nobody,
    Who::Revoked,
    Who::Owner,
    Who::Admin,
];

/// What a route needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    /// Nothing: the probes.
    Nothing,
    /// Credentials in the body: logging in.
    Login,
    /// A user; it acts on that user's own things.
    User,
    /// A user who may see the thing the path names: its owner or an admin.
    Owner(Thing),
}

/// What an owner route names, made fresh where the call changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Thing {
    /// The trained task (inputs, artifacts, logs) or its model; read only.
    Trained,
    /// A finished task, to delete.
    Finished,
    /// A long task, to cancel.
    Running,
    /// A failed task, to retry.
    Failed,
    /// A model, to delete.
    Model,
    /// An API token, to revoke.
    Token,
}

/// How the matrix calls a route. A route the table lists but this does not
/// know fails the test: decide who may call it, then add it here.
fn needs(route: &Route) -> Needs {
    use Needs::*;
    use Thing::*;
    match (route.method.as_str(), route.path.as_str()) {
        ("GET", "/healthz" | "/readyz") => Nothing,
        ("POST", "/api/v1/session") => Login,
        ("GET", "/api/v1/me" | "/api/v1/commands" | "/api/v1/events" | "/api/v1/openapi.json")
        | ("DELETE", "/api/v1/session")
        | ("GET" | "POST", "/api/v1/tasks" | "/api/v1/models" | "/api/v1/tokens")
        | ("POST", "/api/v1/ws-ticket") => User,
        (
            "GET",
            "/api/v1/tasks/{id}"
            | "/api/v1/tasks/{id}/events"
            | "/api/v1/tasks/{id}/logs"
            | "/api/v1/tasks/{id}/artifacts/{name}"
            | "/api/v1/tasks/{id}/inputs/{n}"
            | "/api/v1/models/{model}"
            | "/api/v1/models/{model}/download",
        ) => Owner(Trained),
        ("DELETE", "/api/v1/tasks/{id}") => Owner(Finished),
        ("POST", "/api/v1/tasks/{id}/cancel") => Owner(Running),
        ("POST", "/api/v1/tasks/{id}/retry") => Owner(Failed),
        ("DELETE", "/api/v1/models/{model}") => Owner(Model),
        ("DELETE", "/api/v1/tokens/{id}") => Owner(Token),
        _ => panic!(
            "{route} is not in the access matrix (tests/api/access.rs): decide who may call it"
        ),
    }
}

/// Alice's things, and everyone's clients.
struct World {
    app: TestApp,
    bob: Api,
    nobody: Api,
    revoked: Api,
    trained: Uuid,
    model: String,
    /// Every id of alice's that the matrix made, to look for in what
    /// others are shown.
    hers: Vec<String>,
}

impl World {
    async fn new() -> Self {
        let app = spawn_app().await;
        let bob = app.user("bob", false).await;
        let nobody = Api::new(app.address.clone());
        let (status, minted) = app
            .post_json("/api/v1/tokens", &json!({"name": "soon revoked"}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{minted}");
        let revoked = Api::with_token(app.address.clone(), minted["token"].as_str().unwrap());
        let (status, _) = app
            .delete(&format!(
                "/api/v1/tokens/{}",
                minted["id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let trained = app
            .submit_accepted(
                "train",
                json!({"target": "label", "epochs": 1}),
                &[("t.csv", &blobs_csv(200, 1))],
            )
            .await;
        let task = app.finished(trained, WITHIN).await;
        assert_eq!(task["status"], "succeeded", "{task:#}");
        let model = task["result"]["model_id"].as_str().unwrap().to_owned();
        let hers = vec![trained.to_string(), model.clone()];
        Self {
            app,
            bob,
            nobody,
            revoked,
            trained,
            model,
            hers,
        }
    }

    fn client(&self, who: Who) -> &Api {
        match who {
            Who::Owner => &self.app.api,
            Who::Other => &self.bob,
            Who::Admin => &self.app.admin,
            Who::Nobody => &self.nobody,
            Who::Revoked => &self.revoked,
        }
    }

    /// A new thing of alice's; the path that names it, with the route's
    /// other parameters filled in.
    async fn make(&mut self, thing: Thing, route: &Route) -> String {
        let alice = &self.app.api;
        let id = match thing {
            Thing::Trained => {
                if route.path.starts_with("/api/v1/models/") {
                    self.model.clone()
                } else {
                    self.trained.to_string()
                }
            }
            Thing::Finished | Thing::Failed => {
                let fail = (thing == Thing::Failed).then_some("permanent");
                let id = alice.submit("sleep", json!({"ms": 0, "fail": fail})).await;
                alice.finished(id, WITHIN).await;
                id.to_string()
            }
            Thing::Running => alice
                .submit("sleep", json!({"ms": 60_000, "steps": 600}))
                .await
                .to_string(),
            Thing::Model => {
                let spec = json!({
                    "name": format!("m{}", self.hers.len()), "input": "image", "width": 16,
                    "height": 16, "labels": ["red", "green", "blue"],
                });
                let model = ready_model(alice, &spec, &fixtures::colour_model(16)).await;
                model["id"].as_str().unwrap().to_owned()
            }
            Thing::Token => {
                let (status, body) = alice.post_json("/api/v1/tokens", &json!({})).await;
                assert_eq!(status, StatusCode::CREATED, "{body}");
                body["id"].as_str().unwrap().to_owned()
            }
        };
        self.hers.push(id.clone());
        route
            .path
            .replace("{id}", &id)
            .replace("{model}", &id)
            .replace("{name}", "model.safetensors")
            .replace("{n}", "0")
    }

    /// Alice's view of the thing at `path`, to see that a refused call
    /// left it as it was.
    async fn state_of(&self, thing: Thing, path: &str) -> Value {
        let alice = &self.app.api;
        let id = path.split('/').nth(4).unwrap();
        match thing {
            Thing::Token => {
                let (status, body) = alice.get("/api/v1/tokens").await;
                assert_eq!(status, StatusCode::OK);
                let listed = body["tokens"].as_array().unwrap();
                json!(listed.iter().any(|t| t["id"] == id))
            }
            Thing::Model | Thing::Trained if path.starts_with("/api/v1/models/") => {
                let (status, body) = alice.get(&format!("/api/v1/models/{id}")).await;
                json!([status.as_u16(), body["status"]])
            }
            // A long task moves from queued to running on its own; what
            // must not change is whether it was cancelled.
            Thing::Running => {
                let (status, body) = alice.get(&format!("/api/v1/tasks/{id}")).await;
                json!([status.as_u16(), body["status"] == "cancelled"])
            }
            _ => {
                let (status, body) = alice.get(&format!("/api/v1/tasks/{id}")).await;
                json!([status.as_u16(), body["status"], body["attempts"]])
            }
        }
    }
}

/// The body a route is called with, as `who`.
enum Body {
    Empty,
    Json(Value),
    Multipart(String, Vec<u8>),
}

fn body_for(route: &Route, who: Who, world: &World) -> Body {
    match (route.method.as_str(), route.path.as_str()) {
        ("POST", "/api/v1/session") => Body::Json(match &world.client(who).token {
            Some(token) => json!({ "token": token }),
            None => json!({}),
        }),
        ("POST", "/api/v1/tasks") => Body::Json(json!({"command": "sleep", "params": {"ms": 0}})),
        ("POST", "/api/v1/models") => {
            let spec = json!({
                "name": "matrix", "input": "image", "width": 16, "height": 16,
                "labels": ["red", "green", "blue"],
            })
            .to_string();
            let (content_type, body) = multipart(
                &[("spec", &spec)],
                &[("model.pt", &fixtures::colour_model(16))],
            );
            Body::Multipart(content_type, body)
        }
        ("POST", _) => Body::Json(json!({})),
        _ => Body::Empty,
    }
}

/// Calls `path` as `api`: the status and the body as text (a WebSocket
/// route is upgraded, and its first message is the body).
async fn call(api: &Api, method: &Method, path: &str, body: Body) -> (StatusCode, String) {
    if method == Method::GET && path.ends_with("/events") {
        let url = api.url(path).replacen("http://", "ws://", 1);
        let mut request = awc::Client::new().ws(url).max_frame_size(64 << 20);
        if let Some(token) = &api.token {
            request = request.bearer_auth(token);
        }
        return match request.connect().await {
            Ok((res, mut conn)) => {
                let mut first = String::new();
                if let Ok(Some(Ok(Frame::Text(text)))) =
                    actix_web::rt::time::timeout(Duration::from_secs(10), conn.next()).await
                {
                    first = String::from_utf8_lossy(&text).into_owned();
                }
                (res.status(), first)
            }
            Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
                (status, String::new())
            }
            Err(e) => panic!("{method} {path}: {e}"),
        };
    }
    let request = api.client.request(method.clone(), api.url(path));
    let sent = match body {
        Body::Empty => request.send().await,
        Body::Json(value) => request.send_json(&value).await,
        Body::Multipart(content_type, bytes) => {
            request
                .insert_header(("content-type", content_type))
                .send_body(bytes)
                .await
        }
    };
    let mut res = sent.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let bytes = res.body().limit(64 << 20).await.expect("body");
    (res.status(), String::from_utf8_lossy(&bytes).into_owned())
}

fn allowed(status: StatusCode) -> bool {
    status.is_success() || status == StatusCode::SWITCHING_PROTOCOLS
}

#[actix_web::test]
async fn every_route_answers_each_kind_of_caller_as_it_should() {
    let mut world = World::new().await;
    let routes = table();
    assert!(
        routes.len() >= 25,
        "the route table is incomplete: {routes:?}"
    );
    let mut calls = 0;
    for route in &routes {
        let needs = needs(route);
        for who in EVERYONE {
            let path = match needs {
                Needs::Owner(thing) => world.make(thing, route).await,
                _ => route.path.clone(),
            };
            let before = match needs {
                Needs::Owner(thing) => Some(world.state_of(thing, &path).await),
                _ => None,
            };
            let body = body_for(route, who, &world);
            let (status, text) = call(world.client(who), &route.method, &path, body).await;
            calls += 1;
            let seen = format!("{route} as {who:?} ({path}): {status} {text:.300}");
            let anonymous = matches!(who, Who::Nobody | Who::Revoked);
            // A refused upgrade has no body to read.
            let says = |code: &str| path.ends_with("/events") || text.contains(code);
            match needs {
                Needs::Nothing => assert!(allowed(status) || status.is_server_error(), "{seen}"),
                Needs::Login if who == Who::Nobody => {
                    assert_eq!(status, StatusCode::BAD_REQUEST, "{seen}")
                }
                _ if anonymous => {
                    assert_eq!(status, StatusCode::UNAUTHORIZED, "{seen}");
                    assert!(says("\"unauthorized\""), "{seen}");
                }
                Needs::Login | Needs::User => assert!(allowed(status), "{seen}"),
                Needs::Owner(_) if who == Who::Other => {
                    assert_eq!(status, StatusCode::NOT_FOUND, "{seen}");
                    assert!(says("\"not_found\""), "{seen}");
                }
                Needs::Owner(_) => assert!(allowed(status), "{seen}"),
            }
            // Whoever was refused changed nothing, and learnt nothing.
            if let (Needs::Owner(thing), false) = (needs, allowed(status)) {
                let after = world.state_of(thing, &path).await;
                assert_eq!(before.as_ref(), Some(&after), "{seen}");
            }
            if who != Who::Admin && who != Who::Owner {
                // (An error may quote the path the caller sent.)
                for id in world.hers.iter().filter(|id| !path.contains(id.as_str())) {
                    assert!(!text.contains(id.as_str()), "alice's {id} shown: {seen}");
                }
            }
            // Long tasks made to be cancelled go, whoever was asked to.
            if needs == Needs::Owner(Thing::Running) {
                world.app.post_json(&path, &json!({})).await;
            }
        }
    }
    eprintln!("access matrix: {} routes, {calls} calls", routes.len());
}

#[actix_web::test]
async fn the_live_feed_and_replays_show_each_user_only_their_own() {
    let app = spawn_app().await;
    let bob = app.user("bob", false).await;
    let hers = app.submit("sleep", json!({"ms": 0})).await;
    app.finished(hers, WITHIN).await;
    // Live: bob's feed carries his task and never hers; the admin's both.
    let mut bobs_feed = Feed::connect(&bob, "/api/v1/events").await;
    let mut admins_feed = Feed::connect(&app.admin, "/api/v1/events").await;
    let hers_too = app.submit("sleep", json!({"ms": 0})).await;
    let his = bob.submit("sleep", json!({"ms": 0})).await;
    let finished = |id: Uuid| {
        move |m: &Value| {
            m["type"] == "status" && m["task"] == id.to_string() && m["status"] == "succeeded"
        }
    };
    let seen = bobs_feed.until(finished(his)).await;
    let admin_seen = admins_feed.until(finished(his)).await;
    for (feed, messages) in [("bob's", &seen), ("the admin's", &admin_seen)] {
        let text = serde_json::to_string(messages).unwrap();
        assert_eq!(
            text.contains(&hers_too.to_string()) || text.contains(&hers.to_string()),
            feed == "the admin's",
            "{feed} feed: {text}"
        );
    }
    // Replays from the start, of the all-tasks feed and of her task's.
    let mut replay = Feed::connect(&bob, "/api/v1/events?after=0").await;
    let replayed = replay.until(finished(his)).await;
    let text = serde_json::to_string(&replayed).unwrap();
    assert!(!text.contains(&hers.to_string()), "{text}");
    assert!(!text.contains(&hers_too.to_string()), "{text}");
    let url = bob
        .url(&format!("/api/v1/tasks/{hers}/events?after=0"))
        .replacen("http://", "ws://", 1);
    let refused = awc::Client::new()
        .ws(url)
        .bearer_auth(bob.token.as_deref().unwrap())
        .connect()
        .await;
    assert!(
        matches!(
            refused,
            Err(awc::error::WsClientError::InvalidResponseStatus(
                StatusCode::NOT_FOUND
            ))
        ),
        "{:?}",
        refused.map(|(r, _)| r.status())
    );
    // Lists and logs agree.
    let (_, listed) = bob.get("/api/v1/tasks").await;
    let ids: Vec<&str> = listed["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [his.to_string()]);
    let (_, listed) = app.admin.get("/api/v1/tasks").await;
    assert_eq!(listed["tasks"].as_array().unwrap().len(), 3, "{listed}");
}

#[actix_web::test]
async fn model_names_belong_to_their_user() {
    let app = spawn_app().await;
    let bob = app.user("bob", false).await;
    let spec = |labels: [&str; 3]| json!({"name": "colours", "input": "image", "width": 16, "height": 16, "labels": labels});
    // One name, two users, two models: each is version 1 of its own.
    let hers = ready_model(
        &app,
        &spec(["red", "green", "blue"]),
        &fixtures::colour_model(16),
    )
    .await;
    let his = ready_model(
        &bob,
        &spec(["rot", "grün", "blau"]),
        &fixtures::colour_model(16),
    )
    .await;
    assert_eq!(hers["version"], 1);
    assert_eq!(his["version"], 1);
    // By name, each predicts with their own.
    let red = fixtures::png(8, 8, |_, _| fixtures::RED);
    for (api, label) in [(&app.api, "red"), (&bob, "rot")] {
        let id = api
            .submit_accepted("predict", json!({"model": "colours"}), &[("r.png", &red)])
            .await;
        let task = api.finished(id, WITHIN).await;
        assert_eq!(task["status"], "succeeded", "{task:#}");
        assert!(task["result"].to_string().contains(label), "{task:#}");
    }
    // Her model, named by id, is not his to use: refused as unknown.
    let (status, body) = bob
        .submit_files("predict", json!({"model": hers["id"]}), &[("r.png", &red)])
        .await;
    assert!(status.is_client_error(), "{status} {body}");
    assert!(
        !body.to_string().contains("red"),
        "nothing of hers is shown: {body}"
    );
    // Each lists only their own.
    let (_, listed) = bob.get("/api/v1/models").await;
    let text = listed.to_string();
    assert!(text.contains(his["id"].as_str().unwrap()), "{text}");
    assert!(!text.contains(hers["id"].as_str().unwrap()), "{text}");
}

#[actix_web::test]
async fn another_users_id_is_no_page_cursor() {
    let app = spawn_app().await;
    let bob = app.user("bob", false).await;
    let early = bob.submit("sleep", json!({"ms": 1})).await;
    let hers = app.submit("sleep", json!({"ms": 1})).await;
    let late = bob.submit("sleep", json!({"ms": 1})).await;
    // Bob's own cursor pages as usual.
    let (status, page) = bob.get(&format!("/api/v1/tasks?before={late}")).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [early.to_string()]);
    // Alice's task, between his two, tells him nothing: as an unknown id.
    for cursor in [hers, Uuid::new_v4()] {
        let (status, page) = bob.get(&format!("/api/v1/tasks?before={cursor}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(page["tasks"], json!([]), "before={cursor}");
        let (_, page) = bob.get(&format!("/api/v1/models?before={cursor}")).await;
        assert_eq!(page["models"], json!([]), "before={cursor}");
    }
    // An admin's cursor may be anyone's.
    let (_, page) = app.admin.get(&format!("/api/v1/tasks?before={hers}")).await;
    assert_eq!(page["tasks"][0]["id"], early.to_string());
}
