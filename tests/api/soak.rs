//! The kill -9 soak: two mlq processes share one Postgres and one object
//! store while tasks of every kind are submitted without pause, and one of
//! them is killed with SIGKILL (and started again) every cycle. Afterwards
//! every accepted task has finished exactly once, its artifacts download,
//! and the live feed shows the final states.
//!
//! `make test` runs a short soak; `make soak` runs `MLQ_SOAK_CYCLES`
//! (default 100) cycles.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use awc::http::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::events::Feed;
use crate::faults::all_finished;
use crate::helpers::{blobs_csv, new_database_name, server_url, Api};
use crate::process::MlqProcess;

const WITHIN: Duration = Duration::from_secs(120);

fn settings() -> Vec<(&'static str, String)> {
    vec![
        ("MLQ_LEASE", "2s".into()),
        ("MLQ_HEARTBEAT", "500ms".into()),
        ("RUST_LOG", "warn".into()),
    ]
}

/// What a soak saw.
#[derive(Debug, Default)]
struct Report {
    cycles: usize,
    tasks: usize,
    succeeded: usize,
    /// Failed as `worker_crashed`: a process died under it twice.
    crashed: usize,
    lost: usize,
    duplicated: usize,
    /// From a kill to each of the killed process's tasks being taken up
    /// again, in seconds.
    rescues: Vec<f64>,
}

impl Report {
    fn percentile(&self, p: f64) -> f64 {
        let mut sorted = self.rescues.clone();
        sorted.sort_by(f64::total_cmp);
        if sorted.is_empty() {
            return 0.0;
        }
        sorted[((sorted.len() - 1) as f64 * p).round() as usize]
    }
}

/// One task of the mix, submitted to `api`; its id if accepted.
async fn submit(api: &Api, n: usize, model: &str) -> Option<Uuid> {
    let csv = blobs_csv(200, n as u64);
    let (status, body) = match n % 3 {
        0 => {
            api.post_json(
                "/api/v1/tasks",
                &json!({"command": "sleep", "params": {"ms": 100 + n % 5 * 100, "steps": 5}}),
            )
            .await
        }
        1 => {
            api.submit_files(
                "train",
                json!({"target": "label", "epochs": 2}),
                &[("t.csv", &csv)],
            )
            .await
        }
        _ => {
            api.submit_files("predict", json!({"model": model}), &[("p.csv", &csv)])
                .await
        }
    };
    match status {
        StatusCode::ACCEPTED => body["id"].as_str().and_then(|id| id.parse().ok()),
        _ => None,
    }
}

async fn soak(cycles: usize) -> Report {
    let data = tempfile::tempdir().unwrap();
    let database = new_database_name();
    let url = format!("{}/{database}", server_url());
    let mut processes = Vec::new();
    for _ in 0..2 {
        processes.push(MlqProcess::start(&url, data.path(), &settings()).await);
    }
    let pool = mlq::db::connect(
        &mlq::db::PgConfig::from_settings(&crate::helpers::test_settings(&database)).unwrap(),
        2,
    )
    .await
    .unwrap();
    let trained = processes[0]
        .submit_accepted(
            "train",
            json!({"target": "label", "epochs": 2}),
            &[("m.csv", &blobs_csv(300, 1))],
        )
        .await;
    let trained = processes[0].finished(trained, WITHIN).await;
    let model = trained["result"]["model_id"].as_str().unwrap().to_owned();

    let mut accepted: Vec<Uuid> = vec![];
    let rescues = Rc::new(RefCell::new(Vec::<f64>::new()));
    let mut watchers = Vec::new();
    let mut n = 0;
    for cycle in 0..cycles {
        // Submissions keep pace with the work, so the queue stays short
        // however many cycles run: a soak measures faults, not a backlog.
        let queued: i64 = pool
            .get()
            .await
            .unwrap()
            .query_one("SELECT count(*) FROM tasks WHERE status = 'queued'", &[])
            .await
            .unwrap()
            .get(0);
        let batch = if queued > 24 { 0 } else { 6 };
        for _ in 0..batch {
            n += 1;
            let api = &processes[n % 2];
            if let Some(id) = submit(api, n, &model).await {
                accepted.push(id);
            }
        }
        // Longer ones, so both processes are busy when one is killed.
        for api in processes.iter().take(batch / 3) {
            let (status, body) = api
                .post_json(
                    "/api/v1/tasks",
                    &json!({"command": "sleep", "params": {"ms": 2500, "steps": 25}}),
                )
                .await;
            if status == StatusCode::ACCEPTED {
                accepted.push(body["id"].as_str().unwrap().parse().unwrap());
            }
        }
        actix_web::rt::time::sleep(Duration::from_millis(1200)).await;
        // Kill one of them, noting the leases it held. On a loaded machine
        // the victim may not have claimed anything yet (the other process
        // took the batch), and killing an idle process proves nothing, so
        // wait a little for it to hold a lease.
        let victim = cycle % 2;
        let pid = processes[victim].pid();
        let mut held: Vec<(Uuid, Uuid)> = vec![];
        let waiting = Instant::now();
        while held.is_empty() && waiting.elapsed() < Duration::from_secs(10) {
            held = pool
                .get()
                .await
                .unwrap()
                .query(
                    "SELECT id, lease_token FROM tasks
                     WHERE status = 'running' AND claimed_by LIKE '%:' || $1 || ':%'",
                    &[&pid.to_string()],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            if held.is_empty() {
                actix_web::rt::time::sleep(Duration::from_millis(100)).await;
            }
        }
        processes[victim].kill9();
        let killed = Instant::now();
        let (watch_pool, rescues) = (pool.clone(), rescues.clone());
        watchers.push(actix_web::rt::spawn(async move {
            let mut left = held;
            while !left.is_empty() && killed.elapsed() < WITHIN {
                let client = watch_pool.get().await.unwrap();
                let mut still = Vec::new();
                for (id, token) in left {
                    let moved: bool = client
                        .query_one(
                            "SELECT lease_token IS DISTINCT FROM $2 FROM tasks WHERE id = $1",
                            &[&id, &token],
                        )
                        .await
                        .unwrap()
                        .get(0);
                    if moved {
                        rescues.borrow_mut().push(killed.elapsed().as_secs_f64());
                    } else {
                        still.push((id, token));
                    }
                }
                left = still;
                drop(client);
                actix_web::rt::time::sleep(Duration::from_millis(50)).await;
            }
        }));
        processes[victim] = MlqProcess::start(&url, data.path(), &settings()).await;
        if (cycle + 1) % 100 == 0 {
            eprintln!(
                "soak: {} cycles, {} tasks accepted",
                cycle + 1,
                accepted.len()
            );
        }
    }
    for watcher in watchers {
        watcher.await.unwrap();
    }

    let live = &processes[0];
    let all = all_finished(live, Duration::from_secs(300)).await;
    let mut report = Report {
        cycles,
        tasks: accepted.len(),
        rescues: rescues.borrow().clone(),
        ..Report::default()
    };
    let client = pool.get().await.unwrap();
    for id in &accepted {
        let Some(task) = all.iter().find(|t| t["id"] == id.to_string()) else {
            report.lost += 1;
            continue;
        };
        let outcomes: i64 = client
            .query_one(
                "SELECT count(*) FROM task_events
                 WHERE task_id = $1 AND kind = 'status'
                   AND data->>'status' IN ('succeeded', 'failed', 'cancelled')",
                &[id],
            )
            .await
            .unwrap()
            .get(0);
        if outcomes > 1 {
            report.duplicated += 1;
        }
        match (task["status"].as_str(), task["error"]["code"].as_str()) {
            (Some("succeeded"), _) => {
                report.succeeded += 1;
                for artifact in task["artifacts"].as_array().unwrap() {
                    let (status, _, bytes) =
                        live.get_bytes(artifact["url"].as_str().unwrap()).await;
                    assert_eq!(status, StatusCode::OK, "{task:#}");
                    assert_eq!(bytes.len() as i64, artifact["size"].as_i64().unwrap());
                }
            }
            (Some("failed"), Some("worker_crashed")) => report.crashed += 1,
            _ => panic!("a task ended wrongly: {task:#}"),
        }
    }
    // The dashboard's feed shows the final states.
    let mut feed = Feed::connect(live, "/api/v1/events?limit=200").await;
    let snapshot: Value = feed.next(WITHIN).await.unwrap();
    for task in snapshot["tasks"].as_array().unwrap() {
        let listed = all.iter().find(|t| t["id"] == task["id"]).unwrap();
        assert_eq!(task["status"], listed["status"], "{task:#}");
    }
    report
}

#[actix_web::test]
async fn kill_9_soak_loses_and_duplicates_nothing() {
    let cycles = std::env::var("MLQ_SOAK_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(4);
    let started = Instant::now();
    let report = soak(cycles).await;
    eprintln!(
        "soak: {} cycles in {:.0} s, {} tasks: {} succeeded, {} failed as worker_crashed, \
         {} lost, {} duplicated outcomes; kill to rescue ({} tasks): p50 {:.2} s, p99 {:.2} s",
        report.cycles,
        started.elapsed().as_secs_f64(),
        report.tasks,
        report.succeeded,
        report.crashed,
        report.lost,
        report.duplicated,
        report.rescues.len(),
        report.percentile(0.5),
        report.percentile(0.99),
    );
    assert_eq!(report.lost, 0, "{report:?}");
    assert_eq!(report.duplicated, 0, "{report:?}");
    assert_eq!(report.succeeded + report.crashed, report.tasks);
    assert!(report.tasks > 0 && !report.rescues.is_empty(), "{report:?}");
}
