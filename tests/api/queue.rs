//! The durable queue: leases, rescue, fencing, retries, panics, concurrency
//! and several processes sharing one database.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use mlq::db::queue::PgTaskStore;
use mlq_actors::ports::{StoreError, TaskStore};
use mlq_actors::task::{Finish, Lease};

use crate::helpers::{eventually, new_database_name, spawn_app, spawn_app_on, spawn_app_with};

const WITHIN: Duration = Duration::from_secs(30);

/// Inserts a task as if a process had claimed it and then died: running,
/// with a lease that already expired.
async fn insert_ghost_claim(app: &crate::helpers::TestApp, attempts: i32) -> Lease {
    let client = app.db.get().await.unwrap();
    let lease = Lease {
        task_id: Uuid::new_v4(),
        token: Uuid::new_v4(),
        attempt: attempts,
    };
    client
        .execute(
            "INSERT INTO tasks (id, command, params, status, attempts, lease_token,
                                lease_expires_at, claimed_by, started_at, owner)
             VALUES ($1, 'sleep', '{\"ms\": 20}', 'running', $2, $3,
                     now() - interval '1 second', 'ghost', now(),
                     (SELECT id FROM users WHERE name = 'alice'))",
            &[&lease.task_id, &attempts, &lease.token],
        )
        .await
        .unwrap();
    lease
}

#[actix_web::test]
async fn a_task_whose_worker_vanished_is_rerun_and_finishes_exactly_once() {
    let app = spawn_app().await;
    let ghost = insert_ghost_claim(&app, 1).await;

    let task = app.finished(ghost.task_id, WITHIN).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    assert_eq!(task["attempts"], 2, "the rescued task ran a second attempt");
    let result = task["result"].clone();

    // The vanished worker comes back and tries to record its own outcome:
    // the fence rejects it and the real result stands.
    let store = PgTaskStore::new(app.db.clone());
    let late = store
        .finish(
            &ghost,
            Finish::Succeeded {
                result: json!({"from": "ghost"}),
                artifacts: vec![],
                model: None,
            },
            &Default::default(),
        )
        .await;
    assert!(
        matches!(late, Err(StoreError::LeaseLost(id)) if id == ghost.task_id),
        "{late:?}"
    );
    let stale = store
        .save_report(
            &ghost,
            &mlq_actors::progress::Report {
                progress: Some(Default::default()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!stale, "progress from a lost lease is not written");
    let task = app.task(ghost.task_id).await;
    assert_eq!(task["result"], result);
    assert_eq!(task["status"], "succeeded");
}

#[actix_web::test]
async fn a_task_that_exhausts_its_attempts_fails_with_a_clear_error() {
    let app = spawn_app().await;
    let ghost = insert_ghost_claim(&app, 3).await;
    let task = app.finished(ghost.task_id, WITHIN).await;
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["error"]["code"], "lease_expired");
    assert!(task["error"]["message"]
        .as_str()
        .unwrap()
        .contains("gave up after 3 attempts"));
}

#[actix_web::test]
async fn a_panicking_job_fails_its_task_and_the_pool_stays_whole() {
    let app = spawn_app().await;
    let before = app.ready_workers().await;
    let id = app.submit("sleep", json!({"fail": "panic"})).await;
    let task = app.finished(id, WITHIN).await;
    assert_eq!(task["status"], "failed");
    assert_eq!(task["error"]["code"], "worker_panic");
    assert!(task["error"]["message"]
        .as_str()
        .unwrap()
        .contains("asked to panic"));
    assert_eq!(
        app.ready_workers().await,
        before,
        "pool size before == after"
    );
    let (_, ready) = app.admin.get("/readyz").await;
    assert_eq!(ready["workers"]["detail"][0]["panics"], 1);
    let next = app.submit("sleep", json!({})).await;
    assert_eq!(app.finished(next, WITHIN).await["status"], "succeeded");
}

#[actix_web::test]
async fn transient_failures_are_retried_with_backoff_then_fail() {
    let app = spawn_app().await;
    let id = app.submit("sleep", json!({"fail": "transient"})).await;
    let task = app.finished(id, WITHIN).await;
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["attempts"], 3, "retried up to max_attempts");
    assert_eq!(task["error"]["code"], "storage_error");

    let id = app.submit("sleep", json!({"fail": "permanent"})).await;
    let task = app.finished(id, WITHIN).await;
    assert_eq!(task["status"], "failed");
    assert_eq!(task["attempts"], 1, "permanent failures are not retried");
}

#[actix_web::test]
async fn fifty_concurrent_submissions_all_finish() {
    let app = spawn_app_with(|s| s.workers = Some(2)).await;
    let submissions = (0..50).map(|i| app.submit("sleep", json!({"ms": i % 5})));
    let ids = futures_util::future::join_all(submissions).await;
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 50);
    for id in ids {
        let task = app.finished(id, WITHIN).await;
        assert_eq!(task["status"], "succeeded", "{task:#}");
        assert_eq!(task["attempts"], 1);
    }
}

#[actix_web::test]
async fn concurrent_claims_never_hand_out_a_task_twice() {
    // Workers that claim nothing (diagnostics off: no `sleep`), so the test
    // owns the queue.
    let app = spawn_app_with(|s| s.diagnostics = false).await;
    let client = app.db.get().await.unwrap();
    client
        .execute(
            "INSERT INTO tasks (id, command) SELECT gen_random_uuid(), 'sleep' FROM generate_series(1, 200)",
            &[],
        )
        .await
        .unwrap();
    let stores: Vec<PgTaskStore> = (0..4).map(|_| PgTaskStore::new(app.db.clone())).collect();
    let claims = stores.iter().enumerate().map(|(i, store)| async move {
        let mut mine = Vec::new();
        loop {
            let batch = store
                .claim(
                    &format!("claimer-{i}"),
                    &["sleep"],
                    7,
                    Duration::from_secs(30),
                    false,
                )
                .await
                .unwrap();
            if batch.is_empty() {
                return mine;
            }
            mine.extend(batch.into_iter().map(|t| t.lease.task_id));
        }
    });
    let all: Vec<Uuid> = futures_util::future::join_all(claims).await.concat();
    assert_eq!(all.len(), 200);
    assert_eq!(
        all.iter().collect::<HashSet<_>>().len(),
        200,
        "no task claimed twice"
    );
}

#[actix_web::test]
async fn two_processes_share_one_queue() {
    let database = new_database_name();
    let a = spawn_app_on(&database, |_| {}).await;
    let b = spawn_app_on(&database, |_| {}).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let app = if i % 2 == 0 { &a } else { &b };
        ids.push(app.submit("sleep", json!({"ms": 30})).await);
    }
    for id in &ids {
        let task = a.finished(*id, WITHIN).await;
        assert_eq!(task["status"], "succeeded");
        assert_eq!(task["attempts"], 1, "each task ran exactly once");
    }
    let client = a.db.get().await.unwrap();
    let claimers: i64 = client
        .query_one("SELECT count(DISTINCT claimed_by) FROM tasks", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(claimers, 2, "both processes took work");
}

#[actix_web::test]
async fn shutting_down_hands_running_tasks_back() {
    let database = new_database_name();
    let a = spawn_app_on(&database, |_| {}).await;
    let id = a.submit("sleep", json!({"ms": 60000, "steps": 600})).await;
    a.wait_for(id, WITHIN, |t| t["status"] == "running").await;
    a.handle.stop(true).await;
    // The HTTP server is gone; read the row directly.
    let (status, attempts) = eventually(WITHIN, || async {
        let client = a.db.get().await.unwrap();
        let row = client
            .query_one("SELECT status, attempts FROM tasks WHERE id = $1", &[&id])
            .await
            .unwrap();
        let (status, attempts): (String, i32) = (row.get(0), row.get(1));
        (status != "running").then_some((status, attempts))
    })
    .await;
    assert_eq!(status, "queued");
    assert_eq!(attempts, 0, "a drained attempt is not counted");

    // Another process picks it up at once, without waiting for a lease.
    let b = spawn_app_on(&database, |_| {}).await;
    b.wait_for(id, WITHIN, |t| t["status"] == "running").await;
    let (status, _) = b
        .post_json(&format!("/api/v1/tasks/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, awc::http::StatusCode::OK);
    assert_eq!(b.finished(id, WITHIN).await["status"], "cancelled");
}

#[actix_web::test]
async fn ml_threads_run_at_a_lower_os_priority() {
    let app = spawn_app().await;
    assert_eq!(app.ready_workers().await, 1);
    // Field 19 of /proc/<pid>/task/<tid>/stat is the nice value; the comm
    // field (2) holds the thread name the pool gives its workers.
    let mut ml_threads = Vec::new();
    let mut main_nice = None;
    for entry in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (head, tail) = stat.split_at(stat.rfind(')').unwrap());
        let name = &head[head.find('(').unwrap() + 1..];
        let nice: i32 = tail[2..]
            .split_whitespace()
            .nth(16)
            .unwrap()
            .parse()
            .unwrap();
        if name.starts_with("mlq-ml-") {
            ml_threads.push(nice);
        }
        if entry.file_name().to_str() == Some(&std::process::id().to_string()) {
            main_nice = Some(nice);
        }
    }
    let base = main_nice.unwrap();
    assert!(!ml_threads.is_empty(), "no ML worker threads found");
    assert!(
        ml_threads.iter().all(|n| *n >= base + 10 || *n == 19),
        "ML threads {ml_threads:?} vs process {base}"
    );
}

#[actix_web::test]
async fn a_worker_that_loses_its_lease_stops_and_writes_nothing() {
    let app = spawn_app().await;
    let id = app
        .submit("sleep", json!({"ms": 60000, "steps": 600}))
        .await;
    app.wait_for(id, WITHIN, |t| t["status"] == "running").await;
    // Another process takes the task over, as after a rescue: new token.
    let usurper = Uuid::new_v4();
    let client = app.db.get().await.unwrap();
    client
        .execute(
            "UPDATE tasks SET lease_token = $2, claimed_by = 'usurper', attempts = attempts + 1
             WHERE id = $1",
            &[&id, &usurper],
        )
        .await
        .unwrap();
    // The heartbeat notices, the job stops, and the worker is free again.
    eventually(WITHIN, || async {
        let (_, ready) = app.admin.get("/readyz").await;
        (ready["workers"]["detail"][0]["state"] == "idle").then_some(())
    })
    .await;
    let task = app.task(id).await;
    assert_eq!(
        task["status"], "running",
        "the old attempt wrote no outcome: {task:#}"
    );
    let owner: String = client
        .query_one("SELECT claimed_by FROM tasks WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, "usurper");
}

#[actix_web::test]
async fn notifications_start_and_cancel_tasks_without_waiting_for_a_poll() {
    // Polling and heartbeats far slower than the deadlines below: only
    // LISTEN/NOTIFY can meet them.
    let app = spawn_app_with(|s| {
        s.poll = Duration::from_secs(600);
        s.heartbeat = Duration::from_secs(300);
        s.lease = Duration::from_secs(600);
        s.rescue_every = Duration::from_secs(600);
    })
    .await;
    let id = app
        .submit("sleep", json!({"ms": 60000, "steps": 600}))
        .await;
    app.wait_for(id, Duration::from_secs(10), |t| t["status"] == "running")
        .await;
    let (status, _) = app
        .post_json(&format!("/api/v1/tasks/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, awc::http::StatusCode::OK);
    app.wait_for(id, Duration::from_secs(10), |t| t["status"] == "cancelled")
        .await;
}
