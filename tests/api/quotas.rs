//! Per-user limits (queued and running tasks, uploads per day, bytes
//! stored, requests per second) and fair claims: one user's flood does not
//! hold back another's task.

use std::time::Duration;

use actix_web::http::StatusCode;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{blobs_csv, spawn_app_with, Api};

const WITHIN: Duration = Duration::from_secs(60);

fn assert_over(status: StatusCode, body: &Value, limit: &str) {
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["limit"], limit, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(limit),
        "the message names the limit: {message}"
    );
}

/// Sends a request and returns its `Retry-After` alongside.
async fn post_with_retry_after(
    api: &Api,
    path: &str,
    body: &Value,
) -> (StatusCode, Option<u64>, Value) {
    let mut res = api
        .client
        .post(api.url(path))
        .send_json(body)
        .await
        .unwrap();
    let retry_after = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let body = res.json::<Value>().await.unwrap_or(Value::Null);
    (res.status(), retry_after, body)
}

fn at(task: &Value, field: &str) -> Option<DateTime<Utc>> {
    task[field].as_str()?.parse().ok()
}

#[actix_web::test]
async fn a_flood_from_one_user_does_not_hold_back_another() {
    let app = spawn_app_with(|_| {}).await;
    let bob = app.user("bob", false).await;
    // Alice queues 2,000 short tasks, eight requests at a time.
    let mut floods = Vec::new();
    for _ in 0..8 {
        let alice = app.api.clone();
        floods.push(actix_web::rt::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..250 {
                ids.push(alice.submit("sleep", json!({"ms": 50})).await);
            }
            ids
        }));
    }
    let mut hers = Vec::new();
    for flood in floods {
        hers.extend(flood.await.unwrap());
    }
    let his = bob.submit("sleep", json!({"ms": 0})).await;
    let task = bob.finished(his, WITHIN).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    let (queued_at, started) = (
        at(&task, "created_at").unwrap(),
        at(&task, "started_at").unwrap(),
    );
    // Of hers, only one claim's worth (one worker: one task) may start
    // between his arriving and his starting.
    let client = app.db.get().await.unwrap();
    let overtook: i64 = client
        .query_one(
            "SELECT count(*) FROM tasks
             WHERE id = ANY ($1) AND started_at > $2 AND started_at < $3",
            &[&hers, &queued_at, &started],
        )
        .await
        .unwrap()
        .get(0);
    let waiting: i64 = client
        .query_one(
            "SELECT count(*) FROM tasks WHERE id = ANY ($1) AND status = 'queued'",
            &[&hers],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        overtook <= 1,
        "{overtook} of alice's tasks started before bob's"
    );
    assert!(
        waiting > 1000,
        "alice's flood was still queued ({waiting} waiting)"
    );
}

#[actix_web::test]
async fn a_user_past_the_running_limit_waits_while_others_run() {
    let app = spawn_app_with(|s| {
        s.workers = Some(2);
        s.quota_running_tasks = 1;
    })
    .await;
    let bob = app.user("bob", false).await;
    let first = app
        .submit("sleep", json!({"ms": 60_000, "steps": 600}))
        .await;
    app.wait_for(first, WITHIN, |t| t["status"] == "running")
        .await;
    let second = app.submit("sleep", json!({"ms": 0})).await;
    // A worker is free, but alice runs her one task: bob's goes first.
    let his = bob.submit("sleep", json!({"ms": 0})).await;
    assert_eq!(bob.finished(his, WITHIN).await["status"], "succeeded");
    assert_eq!(app.task(second).await["status"], "queued");
    // Once hers ends, her next runs.
    app.post_json(&format!("/api/v1/tasks/{first}/cancel"), &json!({}))
        .await;
    assert_eq!(app.finished(second, WITHIN).await["status"], "succeeded");
}

#[actix_web::test]
async fn a_user_at_the_running_limit_gets_the_next_task_once_one_is_recorded() {
    // No poll to fall back on: a task counts as running until its outcome
    // is recorded, after its worker is free, so only the recording can say
    // that the owner may take the next.
    let app = spawn_app_with(|s| {
        s.workers = Some(2);
        s.quota_running_tasks = 1;
        s.poll = Duration::from_secs(3600);
    })
    .await;
    let tasks: Vec<Uuid> =
        futures_util::future::join_all((0..6).map(|_| app.submit("sleep", json!({"ms": 0})))).await;
    for task in tasks {
        assert_eq!(app.finished(task, WITHIN).await["status"], "succeeded");
    }
}

#[actix_web::test]
async fn queued_tasks_past_the_limit_are_refused_until_some_start() {
    let app = spawn_app_with(|s| s.quota_queued_tasks = 3).await;
    let bob = app.user("bob", false).await;
    let running = app
        .submit("sleep", json!({"ms": 60_000, "steps": 600}))
        .await;
    app.wait_for(running, WITHIN, |t| t["status"] == "running")
        .await;
    let mut queued: Vec<Uuid> = Vec::new();
    for _ in 0..3 {
        queued.push(app.submit("sleep", json!({"ms": 0})).await);
    }
    let task = json!({"command": "sleep", "params": {"ms": 0}});
    let (status, retry_after, body) = post_with_retry_after(&app, "/api/v1/tasks", &task).await;
    assert_over(status, &body, "queued_tasks");
    assert_eq!(body["error"]["code"], "quota_exceeded");
    assert!(
        retry_after.is_some_and(|s| s >= 1),
        "Retry-After: {retry_after:?}"
    );
    // Hers, not everyone's.
    bob.submit("sleep", json!({"ms": 0})).await;
    // One fewer waiting, one more may wait.
    app.post_json(&format!("/api/v1/tasks/{}/cancel", queued[0]), &json!({}))
        .await;
    app.submit("sleep", json!({"ms": 0})).await;
    // A retry queues a task too: not past the limit either.
    let retry = format!("/api/v1/tasks/{}/retry", queued[0]);
    let (status, retry_after, body) = post_with_retry_after(&app, &retry, &json!({})).await;
    assert_over(status, &body, "queued_tasks");
    assert!(retry_after.is_some(), "{body}");
    app.post_json(&format!("/api/v1/tasks/{running}/cancel"), &json!({}))
        .await;
}

#[actix_web::test]
async fn uploads_past_the_daily_limit_are_refused_and_deleting_does_not_give_it_back() {
    let app = spawn_app_with(|s| s.quota_upload_bytes_per_day = 10_000).await;
    let bob = app.user("bob", false).await;
    let csv = blobs_csv(300, 1);
    assert!(csv.len() > 5_000 && csv.len() < 10_000, "{}", csv.len());
    let first = app
        .submit_accepted("sleep", json!({}), &[("a.csv", &csv)])
        .await;
    app.finished(first, WITHIN).await;
    let before = app.stored_objects();
    let (status, body) = app
        .submit_files("sleep", json!({}), &[("b.csv", &csv)])
        .await;
    assert_over(status, &body, "upload_bytes_per_day");
    assert_eq!(
        app.stored_objects(),
        before,
        "nothing of the refused upload is kept"
    );
    // Deleting what was uploaded frees storage, not the day's allowance.
    let (status, _) = app.delete(&format!("/api/v1/tasks/{first}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = app
        .submit_files("sleep", json!({}), &[("c.csv", &csv)])
        .await;
    assert_over(status, &body, "upload_bytes_per_day");
    // Bob's day is his own; a task without files uploads nothing.
    let (status, body) = bob
        .submit_files("sleep", json!({}), &[("d.csv", &csv)])
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    app.submit("sleep", json!({"ms": 0})).await;
}

#[actix_web::test]
async fn a_refused_upload_still_counts_against_the_day() {
    let app = spawn_app_with(|s| s.quota_upload_bytes_per_day = 10_000).await;
    let csv = blobs_csv(300, 1);
    // The file is stored whole, then the params after it are refused.
    let (content_type, body) = multipart_parts(&csv);
    let (status, body) = app.post_raw("/api/v1/tasks", &content_type, body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(app.stored_objects(), 0, "nothing of it is kept");
    // Its bytes were sent all the same: the same again passes the limit.
    let (status, body) = app
        .submit_files("sleep", json!({}), &[("b.csv", &csv)])
        .await;
    assert_over(status, &body, "upload_bytes_per_day");
}

/// A `sleep` form whose file comes before params that are not JSON.
fn multipart_parts(file: &[u8]) -> (String, Vec<u8>) {
    let mut body = Vec::new();
    body.extend_from_slice(
        b"--b\r\nContent-Disposition: form-data; name=\"command\"\r\n\r\nsleep\r\n\
          --b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.csv\"\r\n\
          Content-Type: text/csv\r\n\r\n",
    );
    body.extend_from_slice(file);
    body.extend_from_slice(
        b"\r\n--b\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\nnot json\r\n--b--\r\n",
    );
    ("multipart/form-data; boundary=b".into(), body)
}

#[actix_web::test]
async fn what_a_user_stores_is_capped_and_deleting_makes_room() {
    let app = spawn_app_with(|s| s.quota_stored_bytes = 10_000).await;
    let csv = blobs_csv(300, 1);
    let first = app
        .submit_accepted("sleep", json!({}), &[("a.csv", &csv)])
        .await;
    app.finished(first, WITHIN).await;
    let (status, body) = app
        .submit_files("sleep", json!({}), &[("b.csv", &csv)])
        .await;
    assert_over(status, &body, "stored_bytes");
    let (status, _) = app.delete(&format!("/api/v1/tasks/{first}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    app.submit_accepted("sleep", json!({}), &[("c.csv", &csv)])
        .await;
}

#[actix_web::test]
async fn requests_past_the_rate_are_refused_with_retry_after_per_user() {
    let app = spawn_app_with(|s| s.quota_requests_per_second = 5).await;
    let bob = app.user("bob", false).await;
    let mut refused = None;
    for _ in 0..40 {
        let mut res = app
            .client
            .get(app.url("/api/v1/tasks"))
            .send()
            .await
            .unwrap();
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            let retry_after: u64 = res
                .headers()
                .get("retry-after")
                .unwrap()
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            refused = Some((retry_after, res.json::<Value>().await.unwrap()));
            break;
        }
    }
    let (retry_after, body) = refused.expect("40 requests at once pass a rate of 5 a second");
    assert!(retry_after >= 1);
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert_over(StatusCode::TOO_MANY_REQUESTS, &body, "requests_per_second");
    // Bob's allowance is his own, and alice's comes back with time.
    let (status, _) = bob.get("/api/v1/tasks").await;
    assert_eq!(status, StatusCode::OK);
    actix_web::rt::time::sleep(Duration::from_secs(retry_after)).await;
    let (status, _) = app.get("/api/v1/tasks").await;
    assert_eq!(status, StatusCode::OK);
}
