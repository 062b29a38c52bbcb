//! Faults, injected for real: connections cut or stalled between mlq and
//! Postgres (through a proxy), processes killed mid-task, Postgres itself
//! restarted. No task or file is lost, nothing hangs, and every process
//! recovers on its own.

use std::time::{Duration, Instant};

use awc::http::StatusCode;
use secrecy::SecretString;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::events::Feed;
use crate::helpers::{blobs_csv, new_database_name, server_url, spawn_app_on, TestApp};
use crate::process::MlqProcess;
use crate::proxy::PgProxy;

const WITHIN: Duration = Duration::from_secs(60);

/// An app whose every database connection goes through `proxy`.
async fn app_behind(
    proxy: &PgProxy,
    configure: impl FnOnce(&mut mlq::config::Settings),
) -> TestApp {
    let database = new_database_name();
    let url = proxy.url(&database);
    spawn_app_on(&database, |s| {
        s.database_url = SecretString::from(url);
        configure(s);
    })
    .await
}

async fn proxy() -> PgProxy {
    PgProxy::start("127.0.0.1:5432".parse().unwrap()).await
}

#[actix_web::test]
async fn an_outcome_whose_commit_answer_was_lost_is_recorded_once_and_its_model_works() {
    let proxy = proxy().await;
    let app = app_behind(&proxy, |_| {}).await;
    // The first connection to record artifacts has its COMMIT delivered and
    // then dies: mlq cannot know whether the outcome landed.
    proxy.cut_after_commit(b"INSERT INTO artifacts");
    let id = app
        .submit_accepted(
            "train",
            json!({"target": "label", "epochs": 3}),
            &[("blobs.csv", &blobs_csv(300, 1))],
        )
        .await;
    let task = app.finished(id, WITHIN).await;
    assert_eq!(proxy.cuts(), 1, "the cut fired");
    assert_eq!(task["status"], "succeeded", "{task:#}");
    assert_eq!(task["attempts"], 1, "the retry found its own outcome");
    assert_eq!(task["artifacts"].as_array().unwrap().len(), 2, "{task:#}");
    // Nothing it references was deleted while the outcome was unknown.
    let (status, _, weights) = app
        .get_bytes(&format!("/api/v1/tasks/{id}/artifacts/model.safetensors"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!weights.is_empty());
    assert_eq!(app.stored_objects(), 3, "one input, two artifacts");
    let model = task["result"]["model_id"].as_str().unwrap();
    let id = app
        .submit_accepted(
            "predict",
            json!({"model": model}),
            &[("blobs.csv", &blobs_csv(50, 2))],
        )
        .await;
    let task = app.finished(id, WITHIN).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
}

#[actix_web::test]
async fn an_outcome_too_big_to_keep_is_recorded_as_a_small_failure() {
    let app = crate::helpers::spawn_app_with(|s| {
        s.statement_timeout = Duration::from_millis(250);
    })
    .await;
    // 200 MB of result: it would bloat the task's JSON, the list and every
    // feed event (and Postgres could not take it within the statement
    // timeout). The task fails small instead, and is not run again.
    let id = app
        .submit("sleep", json!({"result_bytes": 200 << 20}))
        .await;
    let task = app.finished(id, WITHIN).await;
    assert_eq!(task["status"], "failed", "{}", task["error"]);
    assert_eq!(task["error"]["code"], "data_too_large", "{}", task["error"]);
    let message = task["error"]["message"].as_str().unwrap();
    assert!(message.contains("262144-byte limit"), "{message}");
    assert_eq!(task["attempts"], 1, "not run again");
    assert!(task.to_string().len() < 16 << 10);
    // Just under the cap, it is stored whole within the timeout.
    let id = app
        .submit("sleep", json!({"result_bytes": 200 << 10}))
        .await;
    let task = app.finished(id, WITHIN).await;
    assert_eq!(task["status"], "succeeded", "{}", task["error"]);
    assert_eq!(task["result"]["filler"].as_str().unwrap().len(), 200 << 10);
}

#[actix_web::test]
async fn requests_answer_503_while_postgres_is_unreachable_and_recover() {
    let proxy = proxy().await;
    let app = app_behind(&proxy, |_| {}).await;
    let (status, _) = app.get("/api/v1/tasks").await;
    assert_eq!(status, StatusCode::OK);
    proxy.black_hole_all(true);
    for path in [
        "/api/v1/tasks",
        "/api/v1/models",
        &format!("/api/v1/tasks/{}", Uuid::new_v4()),
    ] {
        let started = Instant::now();
        let (status, body) = app.get(path).await;
        // Within a second or two (the pool's wait timeout), with room for
        // a loaded machine: the request did not hang.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{path} took {:?}",
            started.elapsed()
        );
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {body}");
        assert_eq!(body["error"]["code"], "database_unavailable", "{body}");
        assert!(body["error"]["request_id"].is_string(), "{body}");
    }
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    proxy.black_hole_all(false);
    crate::helpers::eventually(Duration::from_secs(20), || async {
        (app.get("/api/v1/tasks").await.0 == StatusCode::OK).then_some(())
    })
    .await;
    let id = app.submit("sleep", json!({"ms": 10})).await;
    assert_eq!(app.finished(id, WITHIN).await["status"], "succeeded");
}

/// An app behind a proxy, running a long task, and a feed client that has
/// its snapshot (and the snapshot's number).
async fn following_a_running_task() -> (PgProxy, TestApp, Uuid, Feed, i64) {
    let proxy = proxy().await;
    let app = app_behind(&proxy, |_| {}).await;
    let id = app
        .submit("sleep", json!({"ms": 60_000, "steps": 600}))
        .await;
    app.wait_for(id, WITHIN, |t| t["status"] == "running").await;
    let mut feed = Feed::connect(&app, &format!("/api/v1/tasks/{id}/events")).await;
    let seq = feed.next(WITHIN).await.unwrap()["seq"].as_i64().unwrap();
    (proxy, app, id, feed, seq)
}

#[actix_web::test]
async fn a_dead_listen_connection_closes_feed_clients_who_then_resync() {
    let (proxy, app, id, mut feed, mut last_seq) = following_a_running_task().await;

    // The LISTEN connection stops answering, without a word.
    proxy.black_hole_listeners(true);
    let cut = Instant::now();
    while let Some(message) = feed.next(Duration::from_secs(60)).await {
        last_seq = last_seq.max(message["seq"].as_i64().unwrap_or(0));
    }
    let closed = feed.closed.clone().expect("a close frame with a reason");
    assert_eq!(closed.code, awc::ws::CloseCode::Again, "{closed:?}");
    assert!(
        closed.description.unwrap_or_default().contains("after="),
        "the reason says how to resume"
    );
    eprintln!(
        "feed closed {:?} after the LISTEN connection died",
        cut.elapsed()
    );

    // Back up: the client resumes from its last number (reconnecting, as
    // the dashboard does, while the listener settles) and follows the task
    // to its end, live, having missed nothing.
    proxy.black_hole_listeners(false);
    let (status, _) = app
        .post_json(&format!("/api/v1/tasks/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let deadline = Instant::now() + WITHIN;
    'resync: loop {
        assert!(Instant::now() < deadline, "never saw the task end");
        let mut feed =
            Feed::connect(&app, &format!("/api/v1/tasks/{id}/events?after={last_seq}")).await;
        while let Some(message) = feed.next(WITHIN).await {
            if message["type"] != "snapshot" {
                let seq = message["seq"].as_i64().unwrap();
                assert!(seq > last_seq, "nothing old comes again: {message}");
                last_seq = seq;
            }
            if message["type"] == "status" && message["status"] == "cancelled" {
                break 'resync;
            }
        }
    }
}

#[actix_web::test]
async fn feed_clients_that_would_miss_unannounced_events_are_told_to_resync() {
    let (proxy, app, id, mut feed, _) = following_a_running_task().await;
    // The announcer's connection stops answering: the task's claim and
    // everything after it are stored but cannot be announced.
    proxy.black_hole_announcers(true);
    let (status, _) = app
        .post_json(&format!("/api/v1/tasks/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    while feed.next(Duration::from_secs(90)).await.is_some() {}
    let closed = feed.closed.clone().expect("closed with a reason");
    assert_eq!(closed.code, awc::ws::CloseCode::Again, "{closed:?}");
    proxy.black_hole_announcers(false);
    // What was stored is there for the resync.
    let task = app.finished(id, WITHIN).await;
    assert_eq!(task["status"], "cancelled");
}

#[actix_web::test]
async fn a_process_does_not_rescue_its_own_live_task_after_an_outage() {
    let proxy = proxy().await;
    let app = app_behind(&proxy, |s| {
        s.lease = Duration::from_secs(1);
        s.heartbeat = Duration::from_millis(300);
    })
    .await;
    let id = app.submit("sleep", json!({"ms": 6000, "steps": 60})).await;
    app.wait_for(id, WITHIN, |t| t["status"] == "running").await;
    // Postgres is out of reach for three leases: every lease expires.
    proxy.black_hole_all(true);
    actix_web::rt::time::sleep(Duration::from_secs(3)).await;
    proxy.black_hole_all(false);
    let task = app.finished(id, WITHIN).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    assert_eq!(
        task["attempts"], 1,
        "the task kept running where it was: {task:#}"
    );
}

/// Settings for the crash tests' processes: short leases, so a dead
/// process's tasks are rescued quickly.
fn quick_leases() -> Vec<(&'static str, String)> {
    vec![
        ("MLQ_LEASE", "2s".into()),
        ("MLQ_HEARTBEAT", "500ms".into()),
    ]
}

#[actix_web::test]
async fn an_input_that_kills_its_process_is_stopped_after_two_and_the_rest_finish() {
    let data = tempfile::tempdir().unwrap();
    let url = format!("{}/{}", server_url(), new_database_name());
    let mut first = MlqProcess::start(&url, &data.path().join("a"), &quick_leases()).await;
    // An innocent task runs on the process that is about to die.
    let innocent = first
        .submit("sleep", json!({"ms": 3000, "steps": 30}))
        .await;
    first
        .wait_for(innocent, WITHIN, |t| t["status"] == "running")
        .await;
    let poison = first.submit("sleep", json!({"fail": "abort"})).await;
    first.exited(WITHIN).await;

    // The next process rescues both: the innocent task finishes there, and
    // the poison kills it too.
    let mut second = MlqProcess::start(&url, &data.path().join("b"), &quick_leases()).await;
    second.exited(WITHIN).await;

    // A third process rescues the poison once more, and fails it for good
    // rather than dying a third time.
    let mut third = MlqProcess::start(&url, &data.path().join("c"), &quick_leases()).await;
    let task = third.finished(poison, WITHIN).await;
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["error"]["code"], "worker_crashed", "{task:#}");
    let message = task["error"]["message"].as_str().unwrap();
    assert!(
        message.matches(" and ").count() == 1 && message.matches(':').count() >= 4,
        "names both processes: {message}"
    );
    let innocent = third.finished(innocent, WITHIN).await;
    assert_eq!(innocent["status"], "succeeded", "{innocent:#}");
    assert!(innocent["attempts"].as_i64().unwrap() >= 2, "{innocent:#}");
    // The third process is alive and well.
    let id = third.submit("sleep", json!({"ms": 10})).await;
    assert_eq!(third.finished(id, WITHIN).await["status"], "succeeded");
    assert!(third.child_alive());
}

/// Polls the task list until every task has finished.
pub async fn all_finished(api: &crate::helpers::Api, within: Duration) -> Vec<Value> {
    crate::helpers::eventually(within, || async {
        let mut all = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let path = match &before {
                Some(b) => format!("/api/v1/tasks?limit=200&before={b}"),
                None => "/api/v1/tasks?limit=200".into(),
            };
            let (status, page) = api.get(&path).await;
            if status != StatusCode::OK {
                return None;
            }
            all.extend(page["tasks"].as_array().unwrap().iter().cloned());
            match page["next_before"].as_str() {
                Some(b) => before = Some(b.to_owned()),
                None => break,
            }
        }
        all.iter()
            .all(|t| {
                matches!(
                    t["status"].as_str(),
                    Some("succeeded" | "failed" | "cancelled")
                )
            })
            .then_some(all)
    })
    .await
}

/// A Postgres cluster of the test's own, so it can be stopped and started
/// without disturbing the other tests' server.
struct PrivatePostgres {
    dir: tempfile::TempDir,
    port: u16,
    bin: std::path::PathBuf,
}

impl PrivatePostgres {
    fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("Postgres's server binaries (make test installs them)")
            .flatten()
            .map(|e| e.path().join("bin"))
            .find(|b| b.join("initdb").exists())
            .expect("initdb");
        let dir = tempfile::tempdir().unwrap();
        let port = crate::process::free_port();
        let me = Self { dir, port, bin };
        // Postgres refuses to run as root: as root, run it as `postgres`.
        std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(me.dir.path())
            .status()
            .unwrap();
        let data = me.dir.path().join("data");
        me.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        me.up();
        me
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let tool = self.bin.join(tool);
        let root = unsafe { libc_geteuid() } == 0;
        let mut command = if root {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&tool);
            c
        } else {
            std::process::Command::new(&tool)
        };
        let out = command.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{} {args:?}: {}",
            tool.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn up(&self) {
        let data = self.dir.path().join("data");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
    }

    fn down(&self) {
        let data = self.dir.path().join("data");
        self.run(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"],
        );
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = std::panic::catch_unwind(|| {
            self.run(
                "pg_ctl",
                &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"],
            )
        });
    }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

#[actix_web::test]
async fn a_postgres_restart_under_load_loses_and_duplicates_nothing() {
    let pg = PrivatePostgres::start();
    let database = new_database_name();
    let url = pg.url(&database);
    let app = spawn_app_on(&database, |s| {
        s.database_url = SecretString::from(url);
        s.workers = Some(2);
    })
    .await;
    // Submissions and work go on throughout; Postgres goes away for 3 s.
    let accepted = std::rc::Rc::new(std::cell::RefCell::new(Vec::<Uuid>::new()));
    let refused = std::rc::Rc::new(std::cell::Cell::new(0usize));
    let submitting = {
        let (api, accepted, refused) = (app.api.clone(), accepted.clone(), refused.clone());
        actix_web::rt::spawn(async move {
            for i in 0..120 {
                let (status, body) = api
                    .post_json(
                        "/api/v1/tasks",
                        &json!({"command": "sleep", "params": {"ms": 50 + i % 7 * 30}}),
                    )
                    .await;
                match status {
                    StatusCode::ACCEPTED => accepted
                        .borrow_mut()
                        .push(body["id"].as_str().unwrap().parse().unwrap()),
                    StatusCode::SERVICE_UNAVAILABLE => refused.set(refused.get() + 1),
                    other => panic!("{other}: {body}"),
                }
                actix_web::rt::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    actix_web::rt::time::sleep(Duration::from_secs(2)).await;
    pg.down();
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let (status, body) = app.get("/api/v1/tasks").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered in {:?}",
        started.elapsed()
    );
    actix_web::rt::time::sleep(Duration::from_millis(2500)).await;
    pg.up();
    let back = Instant::now();
    crate::helpers::eventually(Duration::from_secs(10), || async {
        (app.get("/api/v1/tasks").await.0 == StatusCode::OK).then_some(())
    })
    .await;
    let id = crate::helpers::eventually(Duration::from_secs(10), || async {
        let (status, body) = app
            .post_json("/api/v1/tasks", &json!({"command": "sleep", "params": {}}))
            .await;
        (status == StatusCode::ACCEPTED).then(|| body["id"].as_str().unwrap().to_owned())
    })
    .await;
    eprintln!(
        "Postgres restart: API back {:?} after Postgres; {} submissions refused with 503 meanwhile",
        back.elapsed(),
        refused.get()
    );
    submitting.await.unwrap();
    let all = all_finished(&app, WITHIN).await;
    let accepted = accepted.borrow().clone();
    assert!(refused.get() > 0, "the outage was seen");
    for id in accepted.iter() {
        let task = all.iter().find(|t| t["id"] == id.to_string());
        let task = task.unwrap_or_else(|| panic!("accepted task {id} was lost"));
        assert_eq!(task["status"], "succeeded", "{task:#}");
        // Ran once: no lease was taken from the live process.
        assert_eq!(task["attempts"], 1, "{task:#}");
    }
    assert!(all.iter().any(|t| t["id"] == id.as_str()));
    // Exactly one outcome each: one `succeeded` event per task.
    let client = app.db.get().await.unwrap();
    let doubled: i64 = client
        .query_one(
            "SELECT count(*) FROM (
                 SELECT task_id FROM task_events
                 WHERE kind = 'status' AND data->>'status' = 'succeeded'
                 GROUP BY task_id HAVING count(*) > 1) AS d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(doubled, 0, "no outcome recorded twice");
}
