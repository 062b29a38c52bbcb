//! The live feed over WebSocket, task logs and retries.

use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use awc::ws::{Frame, Message};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{new_database_name, spawn_app, spawn_app_on, spawn_app_with, Api};

const WITHIN: Duration = Duration::from_secs(30);

/// A WebSocket client that answers pings (unless told not to) and yields
/// the JSON messages.
pub struct Feed {
    conn: actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>,
    answer_pings: bool,
    /// Why the server closed the connection, once it did.
    pub closed: Option<awc::ws::CloseReason>,
}

impl Feed {
    pub async fn connect(app: &Api, path: &str) -> Self {
        let url = app.url(path).replacen("http://", "ws://", 1);
        let mut request = awc::Client::new().ws(url).max_frame_size(64 << 20);
        if let Some(token) = &app.token {
            request = request.bearer_auth(token);
        }
        let (_, conn) = request
            .connect()
            .await
            .expect("the feed accepts the connection");
        Self {
            conn,
            answer_pings: true,
            closed: None,
        }
    }

    /// The next JSON message, or `None` once the server closed.
    pub async fn next(&mut self, within: Duration) -> Option<Value> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = actix_web::rt::time::timeout(left, self.conn.next())
                .await
                .expect("a message arrives in time")?;
            match frame.expect("a valid frame") {
                Frame::Text(text) => return Some(serde_json::from_slice(&text).unwrap()),
                Frame::Ping(bytes) if self.answer_pings => {
                    self.conn.send(Message::Pong(bytes)).await.unwrap();
                }
                Frame::Close(reason) => {
                    self.closed = reason;
                    return None;
                }
                _ => {}
            }
        }
    }

    /// Messages up to and including the first that `done` accepts.
    pub async fn until(&mut self, done: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let message = self
                .next(WITHIN)
                .await
                .unwrap_or_else(|| panic!("the feed closed early; saw {seen:#?}"));
            let stop = done(&message);
            seen.push(message);
            if stop {
                return seen;
            }
        }
    }
}

fn is_final(message: &Value) -> bool {
    message["type"] == "status"
        && matches!(
            message["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        )
}

fn of_type<'a>(messages: &'a [Value], kind: &str) -> Vec<&'a Value> {
    messages.iter().filter(|m| m["type"] == kind).collect()
}

#[actix_web::test]
async fn a_task_feed_sends_a_snapshot_then_status_progress_and_logs_in_order() {
    let app = spawn_app_with(|s| s.workers = Some(1)).await;
    // Keep the only worker busy so the followed task is still queued when
    // the feed connects: its whole life is seen live.
    let blocker = app.submit("sleep", json!({"ms": 400})).await;
    let id = app
        .submit("sleep", json!({"ms": 900, "steps": 3, "log_lines": 2}))
        .await;
    let mut feed = Feed::connect(&app, &format!("/api/v1/tasks/{id}/events")).await;
    let snapshot = feed.next(WITHIN).await.unwrap();
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["task"]["id"], id.to_string());
    assert_eq!(snapshot["task"]["status"], "queued");

    let messages = feed.until(is_final).await;
    assert!(
        messages.iter().all(|m| m["task"] == id.to_string()),
        "only this task: {messages:#?}"
    );
    let seqs: Vec<i64> = messages
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "numbers grow: {seqs:?}"
    );
    assert!(seqs[0] > snapshot["seq"].as_i64().unwrap());

    let statuses: Vec<&str> = of_type(&messages, "status")
        .iter()
        .map(|m| m["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["running", "succeeded"]);
    let fractions: Vec<f64> = of_type(&messages, "progress")
        .iter()
        .map(|m| m["progress"]["fraction"].as_f64().unwrap())
        .collect();
    assert!(
        fractions.len() >= 2,
        "progress arrives as it happens: {fractions:?}"
    );
    assert!(fractions.windows(2).all(|w| w[0] <= w[1]), "{fractions:?}");
    let last = messages.last().unwrap();
    assert_eq!(
        last["result"]["slept_ms"], 900,
        "the final event carries the result"
    );
    assert_eq!(last["progress"]["fraction"], 1.0);
    let logs: Vec<&str> = of_type(&messages, "log")
        .iter()
        .map(|m| m["message"].as_str().unwrap())
        .collect();
    assert_eq!(logs, ["step 1/3", "step 2/3"], "the job's own lines");
    app.finished(blocker, WITHIN).await;
}

#[actix_web::test]
async fn reconnecting_with_the_last_seq_replays_everything_missed() {
    let app = spawn_app().await;
    let (status, created) = app
        .post_json(
            "/api/v1/tasks",
            &json!({"command": "sleep", "params": {"ms": 50, "log_lines": 3}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id: Uuid = created["id"].as_str().unwrap().parse().unwrap();
    let seen = created["seq"].as_i64().unwrap();
    // The client was away while the task ran to the end.
    app.finished(id, WITHIN).await;

    let mut feed = Feed::connect(&app, &format!("/api/v1/tasks/{id}/events?after={seen}")).await;
    let snapshot = feed.next(WITHIN).await.unwrap();
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["task"]["status"], "succeeded");
    let replay = feed.until(is_final).await;
    assert!(replay.iter().all(|m| m["replay"] == true));
    assert!(replay.iter().all(|m| m["seq"].as_i64().unwrap() > seen));
    let statuses: Vec<&str> = of_type(&replay, "status")
        .iter()
        .map(|m| m["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["running", "succeeded"],
        "no status change is missed"
    );
    assert_eq!(of_type(&replay, "log").len(), 3, "{replay:#?}");

    // Resuming from the newest number seen replays nothing more.
    let newest = replay.last().unwrap()["seq"].as_i64().unwrap();
    let mut again = Feed::connect(&app, &format!("/api/v1/tasks/{id}/events?after={newest}")).await;
    assert_eq!(again.next(WITHIN).await.unwrap()["type"], "snapshot");
    let quiet = actix_web::rt::time::timeout(Duration::from_millis(300), again.next(WITHIN)).await;
    assert!(quiet.is_err(), "nothing to replay: {quiet:?}");
}

#[actix_web::test]
async fn the_all_tasks_feed_follows_every_task_without_logs_by_default() {
    let app = spawn_app().await;
    let mut feed = Feed::connect(&app, "/api/v1/events").await;
    let snapshot = feed.next(WITHIN).await.unwrap();
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["tasks"], json!([]));
    let a = app.submit("sleep", json!({"ms": 10, "log_lines": 2})).await;
    let b = app
        .submit("sleep", json!({"ms": 10, "fail": "permanent"}))
        .await;
    let mut ended = std::collections::HashSet::new();
    let mut messages = Vec::new();
    while ended.len() < 2 {
        let m = feed.next(WITHIN).await.unwrap();
        if is_final(&m) {
            ended.insert(m["task"].as_str().unwrap().to_owned());
        }
        messages.push(m);
    }
    assert!(ended.contains(&a.to_string()) && ended.contains(&b.to_string()));
    assert!(
        of_type(&messages, "log").is_empty(),
        "logs only when asked for"
    );
    let failed = messages
        .iter()
        .find(|m| m["task"] == b.to_string() && m["status"] == "failed")
        .unwrap();
    assert_eq!(failed["error"]["code"], "invalid_params");
    let queued = of_type(&messages, "status")
        .into_iter()
        .filter(|m| m["status"] == "queued")
        .count();
    assert_eq!(queued, 2, "new tasks are announced");

    // With a snapshot limit, the newest tasks come first.
    let mut limited = Feed::connect(&app, "/api/v1/events?limit=1").await;
    let snapshot = limited.next(WITHIN).await.unwrap();
    assert_eq!(snapshot["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(snapshot["tasks"][0]["id"], b.to_string());
}

#[actix_web::test]
async fn a_client_of_one_process_sees_live_progress_of_a_task_run_by_another() {
    let database = new_database_name();
    // `a` cannot run `sleep` (no diagnostics), so `b` runs it.
    let a = spawn_app_on(&database, |s| s.diagnostics = false).await;
    let b = spawn_app_on(&database, |_| {}).await;
    let mut feed = Feed::connect(&a, "/api/v1/events").await;
    assert_eq!(feed.next(WITHIN).await.unwrap()["type"], "snapshot");
    let id = b.submit("sleep", json!({"ms": 600, "steps": 3})).await;
    let messages = feed.until(is_final).await;
    let progress = of_type(&messages, "progress");
    assert!(progress.len() >= 2, "{messages:#?}");
    assert!(progress.iter().all(|m| m["task"] == id.to_string()));
    assert_eq!(messages.last().unwrap()["status"], "succeeded");
    let client = a.db.get().await.unwrap();
    let claimed_by: String = client
        .query_one("SELECT claimed_by FROM tasks WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert!(!claimed_by.is_empty());
}

#[actix_web::test]
async fn deleting_a_task_is_announced_to_its_followers() {
    let app = spawn_app().await;
    let id = app.submit("sleep", json!({"ms": 10})).await;
    app.finished(id, WITHIN).await;
    let mut feed = Feed::connect(&app, &format!("/api/v1/tasks/{id}/events")).await;
    assert_eq!(feed.next(WITHIN).await.unwrap()["type"], "snapshot");
    let res = app
        .client
        .delete(app.url(&format!("/api/v1/tasks/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let message = feed.next(WITHIN).await.unwrap();
    assert_eq!(message["type"], "deleted");
    assert_eq!(message["task"], id.to_string());
}

#[actix_web::test]
async fn a_peer_that_stops_answering_pings_is_dropped() {
    let app = spawn_app_with(|s| {
        s.ws_ping_every = Duration::from_millis(100);
        s.ws_timeout = Duration::from_millis(400);
    })
    .await;
    let mut feed = Feed::connect(&app, "/api/v1/events").await;
    feed.answer_pings = false;
    assert_eq!(feed.next(WITHIN).await.unwrap()["type"], "snapshot");
    let started = Instant::now();
    assert_eq!(
        feed.next(Duration::from_secs(10)).await,
        None,
        "the server closes"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));

    // One that answers stays connected past the timeout.
    let mut alive = Feed::connect(&app, "/api/v1/events").await;
    assert_eq!(alive.next(WITHIN).await.unwrap()["type"], "snapshot");
    let quiet = actix_web::rt::time::timeout(Duration::from_millis(1200), alive.next(WITHIN)).await;
    assert!(quiet.is_err(), "still open and quiet: {quiet:?}");
}

#[actix_web::test]
async fn feed_endpoints_refuse_what_they_cannot_serve() {
    let app = spawn_app().await;
    let missing = Uuid::new_v4();
    let (status, body) = app.get(&format!("/api/v1/tasks/{missing}/events")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains(&missing.to_string()));
    let (status, body) = app.get("/api/v1/events").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "websocket_required");
    let (status, body) = app.get("/api/v1/events?after=soon").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_query");
}

#[actix_web::test]
async fn logs_are_served_for_tailing_and_capped_per_task() {
    let app = spawn_app_with(|s| s.max_log_bytes = 400).await;
    let id = app
        .submit("sleep", json!({"ms": 10, "log_lines": 100}))
        .await;
    app.finished(id, WITHIN).await;
    let (status, page) = app.get(&format!("/api/v1/tasks/{id}/logs?limit=3")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let lines = page["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["message"], "step 1/1");
    assert_eq!(lines[0]["level"], "info");
    assert!(lines[0]["at"].is_string());

    let after = page["next_after"].as_i64().unwrap();
    assert_eq!(after, lines[2]["seq"].as_i64().unwrap());
    let (_, rest) = app
        .get(&format!("/api/v1/tasks/{id}/logs?after={after}"))
        .await;
    let rest = rest["lines"].as_array().unwrap().clone();
    assert!(rest.iter().all(|l| l["seq"].as_i64().unwrap() > after));
    let messages: Vec<&str> = rest
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    let note = messages
        .iter()
        .position(|m| m.contains("log limit reached"))
        .expect("the cap is noted in the log");
    assert_eq!(
        note,
        messages.len() - 1,
        "nothing is stored after the note: {messages:?}"
    );
    let total: usize = lines
        .iter()
        .chain(rest.iter())
        .map(|l| l["message"].as_str().unwrap().len())
        .sum();
    assert!(total <= 400 + 100, "{total} bytes kept");
    // 100 lines of 8 bytes against a 400-byte cap: 50 kept, 50 dropped.
    assert_eq!(lines.len() + rest.len(), 50 + 1, "50 lines and the note");
    assert_eq!(page["dropped"], 50, "{page}");

    let (status, _) = app
        .get(&format!("/api/v1/tasks/{}/logs", Uuid::new_v4()))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = app.get(&format!("/api/v1/tasks/{id}/logs?limit=0")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_limit");
}

#[actix_web::test]
async fn a_failure_is_logged_with_its_code_and_context() {
    let app = spawn_app_with(|s| {
        s.max_attempts = 2;
        s.retry_base = Duration::from_millis(10);
    })
    .await;
    let id = app.submit("sleep", json!({"fail": "transient"})).await;
    let task = app.finished(id, WITHIN).await;
    assert_eq!(task["status"], "failed");
    let (_, page) = app.get(&format!("/api/v1/tasks/{id}/logs")).await;
    let lines = page["lines"].as_array().unwrap();
    let levels: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| (l["level"].as_str().unwrap(), l["message"].as_str().unwrap()))
        .collect();
    assert_eq!(levels[0].0, "warn");
    assert!(levels[0].1.contains("retrying in"), "{levels:?}");
    assert!(
        levels[1].1.starts_with("attempt 2 of 2 started on"),
        "{levels:?}"
    );
    let last = lines.last().unwrap();
    assert_eq!(last["level"], "error");
    assert_eq!(last["data"]["code"], "storage_error");
    assert!(last["message"].as_str().unwrap().contains("asked to fail"));
}

#[actix_web::test]
async fn retry_queues_a_failed_task_again_and_refuses_others() {
    let app = spawn_app().await;
    let id = app.submit("sleep", json!({"fail": "permanent"})).await;
    assert_eq!(app.finished(id, WITHIN).await["status"], "failed");
    let (status, task) = app
        .post_json(&format!("/api/v1/tasks/{id}/retry"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{task}");
    assert!(matches!(
        task["status"].as_str(),
        Some("queued" | "running")
    ));
    assert_eq!(task["error"], Value::Null);
    // It fails again (same params), as a fresh first attempt.
    let again = app.finished(id, WITHIN).await;
    assert_eq!(again["status"], "failed");
    assert_eq!(again["attempts"], 1);
    let (_, page) = app.get(&format!("/api/v1/tasks/{id}/logs")).await;
    assert!(page["lines"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["message"] == "retry requested"));

    let ok = app.submit("sleep", json!({})).await;
    app.finished(ok, WITHIN).await;
    let (status, body) = app
        .post_json(&format!("/api/v1/tasks/{ok}/retry"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "task_not_retryable");
    let (status, _) = app
        .post_json(
            &format!("/api/v1/tasks/{}/retry", Uuid::new_v4()),
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[actix_web::test]
async fn the_dashboard_is_served_with_a_fallback_for_its_routes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("index.html"),
        "<!doctype html><title>mlq</title>",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("assets")).unwrap();
    std::fs::write(dir.path().join("assets/app.js"), "console.log(1)").unwrap();
    let web_dir = dir.path().to_owned();
    let app = spawn_app_with(move |s| s.web_dir = web_dir).await;
    for path in ["/", "/tasks/123", "/models"] {
        let (status, headers, body) = app.get_bytes(path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(
            String::from_utf8_lossy(&body).contains("<title>mlq</title>"),
            "{path}"
        );
        assert!(headers
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/html"));
    }
    let (status, _, body) = app.get_bytes("/assets/app.js").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, b"console.log(1)");
    let (status, body) = app.get("/api/v1/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    let (status, body) = app.get("/healthz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[actix_web::test]
async fn a_chatty_job_is_throttled_but_its_last_report_lands() {
    let app = spawn_app_with(|s| s.progress_every = Duration::from_millis(200)).await;
    // 1,000 progress reports in one second.
    let id = app
        .submit("sleep", json!({"ms": 1000, "steps": 1000}))
        .await;
    let mut feed = Feed::connect(&app, &format!("/api/v1/tasks/{id}/events")).await;
    assert_eq!(feed.next(WITHIN).await.unwrap()["type"], "snapshot");
    let messages = feed.until(is_final).await;
    let progress = of_type(&messages, "progress");
    assert!(
        (2..=10).contains(&progress.len()),
        "about one write per 200 ms, not one per report: {} progress events",
        progress.len()
    );
    let last = messages.last().unwrap();
    assert_eq!(last["status"], "succeeded");
    assert_eq!(
        last["progress"]["fraction"], 1.0,
        "the end is always written"
    );
}
