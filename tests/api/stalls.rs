//! Stalls and slow peers are bounded: an upload that goes quiet, too many
//! uploads or feed connections at once, a feed client that stops reading, a
//! task past its time limit or stuck in native code, and a shutdown with
//! work in flight.

use std::time::{Duration, Instant};

use awc::http::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::events::Feed;
use crate::helpers::{
    blobs_csv, eventually, new_database_name, server_url, spawn_app_with, stored_objects, Api,
};
use crate::process::MlqProcess;

const WITHIN: Duration = Duration::from_secs(60);

/// A multipart upload written by hand, so a test can stop sending halfway.
struct SlowUpload {
    stream: TcpStream,
    boundary: String,
    /// A file part is open: the next delimiter must end it.
    in_file: bool,
}

impl SlowUpload {
    /// Sends the request head and the `command` field; the body is
    /// declared chunked, so nothing says how much is still to come.
    async fn start(api: &Api, command: &str) -> Self {
        let host = api.address.trim_start_matches("http://").to_owned();
        let auth = api.auth_line();
        let mut stream = TcpStream::connect(&host).await.unwrap();
        let boundary = format!("slow-{}", uuid::Uuid::new_v4().simple());
        let head = format!(
            "POST /api/v1/tasks HTTP/1.1\r\nHost: {host}\r\n{auth}\
             Content-Type: multipart/form-data; boundary={boundary}\r\n\
             Transfer-Encoding: chunked\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut upload = Self {
            stream,
            boundary,
            in_file: false,
        };
        let field = format!(
            "--{b}\r\nContent-Disposition: form-data; name=\"command\"\r\n\r\n{command}\r\n",
            b = upload.boundary
        );
        upload.send(field.as_bytes()).await;
        upload
    }

    async fn send(&mut self, bytes: &[u8]) {
        let chunk = [format!("{:x}\r\n", bytes.len()).as_bytes(), bytes, b"\r\n"].concat();
        self.stream.write_all(&chunk).await.unwrap();
    }

    /// Starts a file part and sends `bytes` of it.
    async fn file(&mut self, name: &str, bytes: &[u8]) {
        let end = if std::mem::replace(&mut self.in_file, true) {
            "\r\n"
        } else {
            ""
        };
        let head = format!(
            "{end}--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
             Content-Type: text/csv\r\n\r\n",
            b = self.boundary
        );
        self.send(head.as_bytes()).await;
        self.send(bytes).await;
    }

    /// Ends the open part and the body.
    async fn finish(&mut self) {
        let tail = format!("\r\n--{}--\r\n", self.boundary);
        self.send(tail.as_bytes()).await;
        self.stream.write_all(b"0\r\n\r\n").await.unwrap();
    }

    /// The response: status and JSON body.
    async fn response(&mut self) -> (u16, Value) {
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(WITHIN, async {
            let mut buf = [0u8; 8192];
            loop {
                match self.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => raw.extend_from_slice(&buf[..n]),
                }
                if let Some(end) = find(&raw, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&raw[..end]).to_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if raw.len() >= end + 4 + length {
                        break;
                    }
                }
            }
        })
        .await;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .and_then(|(_, b)| serde_json::from_str(b).ok())
            .unwrap_or(Value::Null);
        (status, body)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[actix_web::test]
async fn an_upload_that_goes_quiet_gets_408_and_leaves_nothing() {
    let app = spawn_app_with(|s| s.upload_idle = Duration::from_secs(1)).await;
    let mut upload = SlowUpload::start(&app, "train").await;
    upload.file("a.csv", &blobs_csv(5000, 1)).await;
    // ... and nothing more.
    let (status, body) = upload.response().await;
    assert_eq!(status, 408, "{body}");
    assert_eq!(body["error"]["code"], "upload_idle", "{body}");
    eventually(Duration::from_secs(10), || async {
        (app.stored_objects() == 0).then_some(())
    })
    .await;
    let (_, page) = app.get("/api/v1/tasks").await;
    assert_eq!(page["tasks"].as_array().unwrap().len(), 0);
}

#[actix_web::test]
async fn an_upload_that_ends_past_its_deadline_is_refused_not_queued() {
    // Uploads must end within half the orphan grace (here 1 s): a file
    // stored before that could already be collected.
    let app = spawn_app_with(|s| s.orphan_grace = Duration::from_secs(2)).await;
    let mut upload = SlowUpload::start(&app, "train").await;
    upload.file("a.csv", &blobs_csv(100, 1)).await;
    // The file is whole; the body's last bytes come late.
    actix_web::rt::time::sleep(Duration::from_millis(1500)).await;
    upload.finish().await;
    let (status, body) = upload.response().await;
    assert_eq!(status, 408, "{body}");
    assert_eq!(body["error"]["code"], "upload_timeout", "{body}");
    assert_eq!(app.stored_objects(), 0);
    let (_, page) = app.get("/api/v1/tasks").await;
    assert_eq!(page["tasks"].as_array().unwrap().len(), 0);
}

/// Waits until the app has one upload in progress.
async fn one_upload_running(app: &Api) {
    eventually(Duration::from_secs(10), || async {
        let (_, ready) = app.get("/readyz").await;
        (ready["uploads"]["running"] == 1).then_some(())
    })
    .await;
}

/// Starts another (empty) upload: its status, `Retry-After` and body.
async fn another_upload(app: &Api) -> (StatusCode, Option<String>, Value) {
    let mut res = app
        .client
        .post(app.url("/api/v1/tasks"))
        .insert_header(("content-type", "multipart/form-data; boundary=x"))
        .send_body("--x--\r\n")
        .await
        .unwrap();
    let retry_after = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (res.status(), retry_after, res.json().await.unwrap())
}

#[actix_web::test]
async fn uploads_and_feed_connections_past_their_caps_get_503() {
    let app = spawn_app_with(|s| {
        s.max_uploads = 1;
        s.max_sockets = 2;
    })
    .await;
    let mut first = SlowUpload::start(&app, "train").await;
    first.file("a.csv", b"x,label\n1,a\n").await;
    one_upload_running(&app).await;
    let (status, retry_after, body) = another_upload(&app).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(body["error"]["code"], "too_many_uploads", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_uploads"));
    // JSON submissions store nothing and are not counted.
    app.submit("sleep", json!({"ms": 1})).await;
    first.finish().await;
    let (status, body) = first.response().await;
    assert_eq!(status, 422, "the first upload went on: {body}");

    let id = app.submit("sleep", json!({"ms": 5000, "steps": 50})).await;
    let path = format!("/api/v1/tasks/{id}/events");
    let _a = Feed::connect(&app, &path).await;
    let _b = Feed::connect(&app, &path).await;
    let mut res = app.client.get(app.url(&path)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_sockets", "{body}");
}

#[actix_web::test]
async fn one_user_cannot_take_every_upload_or_feed_slot() {
    let app = spawn_app_with(|s| {
        s.max_uploads = 8;
        s.quota_uploads = 1;
        s.max_sockets = 8;
        s.quota_sockets = 2;
    })
    .await;
    let bob = app.user("bob", false).await;
    // Alice's slow upload holds her one slot...
    let mut slow = SlowUpload::start(&app, "train").await;
    slow.file("a.csv", b"x,label\n1,a\n").await;
    one_upload_running(&app).await;
    // ...so her next one is refused, naming her limit...
    let (status, retry_after, body) = another_upload(&app).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
    assert_eq!(body["error"]["limit"], "uploads", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("quota_uploads"));
    // ...while bob's goes through.
    let (status, body) = bob
        .submit_files(
            "train",
            json!({"target": "label", "epochs": 1}),
            &[("b.csv", b"x,label\n1,a\n2,b\n")],
        )
        .await;
    assert_eq!(status, 202, "{body}");
    slow.finish().await;
    slow.response().await;
    // Her slot is hers again once the upload ends.
    let (status, body) = app
        .submit_files(
            "train",
            json!({"target": "label", "epochs": 1}),
            &[("c.csv", b"x,label\n1,a\n2,b\n")],
        )
        .await;
    assert_eq!(status, 202, "{body}");

    // Two feeds each.
    let id = app.submit("sleep", json!({"ms": 5000, "steps": 50})).await;
    let path = format!("/api/v1/tasks/{id}/events");
    let _a = Feed::connect(&app, &path).await;
    let b = Feed::connect(&app, &path).await;
    let mut res = app.client.get(app.url(&path)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["limit"], "sockets", "{body}");
    let _bobs = Feed::connect(&bob, "/api/v1/events").await;
    drop(b);
    eventually(Duration::from_secs(10), || async {
        let res = app.client.get(app.url(&path)).send().await.unwrap();
        (res.status() != StatusCode::TOO_MANY_REQUESTS).then_some(())
    })
    .await;
}

#[actix_web::test]
async fn a_feed_client_that_stops_reading_is_dropped() {
    let app = spawn_app_with(|s| {
        s.ws_ping_every = Duration::from_millis(500);
        s.ws_timeout = Duration::from_secs(2);
        // Big enough that only the send timeout can drop the client.
        s.ws_buffer = 1 << 20;
    })
    .await;
    let id = app
        .submit(
            "sleep",
            json!({"ms": 20_000, "steps": 200, "log_lines": 100_000}),
        )
        .await;
    // A client that upgrades, then never reads a byte, with a small receive
    // buffer: the server's sends back up.
    let host = app.address.trim_start_matches("http://");
    let auth = app.auth_line();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(host.parse().unwrap()).await.unwrap();
    let request = format!(
        "GET /api/v1/tasks/{id}/events HTTP/1.1\r\nHost: {host}\r\n{auth}Upgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    eventually(Duration::from_secs(10), || async {
        let (_, ready) = app.get("/readyz").await;
        (ready["feed"]["connections"] == 1).then_some(())
    })
    .await;
    // The server gives up on it...
    eventually(Duration::from_secs(30), || async {
        let (_, ready) = app.get("/readyz").await;
        (ready["feed"]["connections"] == 0).then_some(())
    })
    .await;
    // ...and the kernel drops its end of the connection (TCP_USER_TIMEOUT),
    // with whatever was queued for it: a client that never reads holds no
    // memory for long.
    let client_port = stream.local_addr().unwrap().port();
    let server_port: u16 = host.rsplit(':').next().unwrap().parse().unwrap();
    eventually(Duration::from_secs(30), || async {
        (!established(server_port, client_port)).then_some(())
    })
    .await;
    drop(stream);
}

/// Whether the server's end of the connection from `client_port` is open,
/// per /proc/net/tcp (ports in hex; state 01 is ESTABLISHED).
fn established(server_port: u16, client_port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next().unwrap(), 16).unwrap();
        f.len() > 3 && port(f[1]) == server_port && port(f[2]) == client_port && f[3] == "01"
    })
}

#[actix_web::test]
async fn a_task_past_its_time_limit_fails_with_timeout() {
    let app = spawn_app_with(|s| {
        s.task_timeouts = [("sleep".to_owned(), Duration::from_secs(1))].into();
    })
    .await;
    // The deployment's limit for sleep.
    let id = app
        .submit("sleep", json!({"ms": 30_000, "steps": 300}))
        .await;
    let task = app.finished(id, WITHIN).await;
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["error"]["code"], "timeout", "{task:#}");
    assert!(task["error"]["message"].as_str().unwrap().contains("1s"));
    assert_eq!(task["attempts"], 1, "a timeout is not retried");
    // A task's own limit wins.
    let id = app
        .submit("sleep", json!({"ms": 1500, "steps": 15, "timeout": "20s"}))
        .await;
    assert_eq!(app.finished(id, WITHIN).await["status"], "succeeded");
    let (status, body) = app
        .post_json(
            "/api/v1/tasks",
            &json!({"command": "sleep", "params": {"timeout": "forever"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "timeout");
}

#[actix_web::test]
async fn a_job_stuck_in_native_code_is_abandoned_and_replaced() {
    let app = spawn_app_with(|s| {
        s.stuck_after = Duration::from_secs(1);
        s.max_stuck_workers = 0;
    })
    .await;
    // It ignores every request to stop, as a libtorch call would.
    let stuck = app
        .submit("sleep", json!({"fail": "hang", "ms": 8000, "timeout": 1}))
        .await;
    let task = app.finished(stuck, WITHIN).await;
    assert_eq!(task["error"]["code"], "timeout", "{task:#}");
    // The pool is at full size, one thread is stuck, and past the limit
    // of stuck threads the process says it is not ready.
    let (status, ready) = app.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(ready["workers"]["alive"], 1, "{ready}");
    assert_eq!(ready["workers"]["stuck"], 1, "{ready}");
    // The replacement takes work while the stuck thread is still stuck.
    let id = app.submit("sleep", json!({"ms": 10})).await;
    assert_eq!(app.finished(id, WITHIN).await["status"], "succeeded");
    // When the stuck call ends, its thread goes and the process is ready.
    eventually(Duration::from_secs(30), || async {
        let (status, ready) = app.get("/readyz").await;
        (status == StatusCode::OK && ready["workers"]["stuck"] == 0).then_some(())
    })
    .await;
}

#[actix_web::test]
async fn a_cancel_lands_while_a_large_file_is_scanned() {
    let app = spawn_app_with(|_| {}).await;
    let id = app
        .submit_accepted(
            "train",
            json!({"target": "label"}),
            &[("big.csv", &blobs_csv(2_000_000, 1))],
        )
        .await;
    app.wait_for(id, WITHIN, |t| t["progress"]["stage"] == "scanning data")
        .await;
    let asked = Instant::now();
    let (status, _) = app
        .post_json(&format!("/api/v1/tasks/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let task = app.finished(id, WITHIN).await;
    assert_eq!(task["status"], "cancelled", "{task:#}");
    // It stopped the scan itself, not a later stage.
    assert_eq!(task["progress"]["stage"], "scanning data", "{task:#}");
    eprintln!("cancel landed {:?} after it was asked", asked.elapsed());
}

#[actix_web::test]
async fn sigterm_stops_readiness_at_once_and_shutdown_loses_nothing() {
    let data = tempfile::tempdir().unwrap();
    let database = new_database_name();
    let url = format!("{}/{database}", server_url());
    let mut mlq = MlqProcess::start(
        &url,
        data.path(),
        &[
            ("MLQ_DRAIN_TIMEOUT", "2s".into()),
            ("MLQ_WORKERS", "1".into()),
        ],
    )
    .await;
    let running = mlq
        .submit("sleep", json!({"ms": 60_000, "steps": 600}))
        .await;
    mlq.wait_for(running, WITHIN, |t| t["status"] == "running")
        .await;
    // An upload in flight: one file whole, the next half sent.
    let mut upload = SlowUpload::start(&mlq, "sleep").await;
    upload.file("one.csv", &blobs_csv(1000, 1)).await;
    upload.file("two.csv", b"x,label\n").await;
    let objects = data.path().join("objects");
    eventually(Duration::from_secs(10), || async {
        (stored_objects(&objects) == 1).then_some(())
    })
    .await;

    mlq.sigterm();
    eventually(Duration::from_secs(5), || async {
        let (status, ready) = mlq.get("/readyz").await;
        (status == StatusCode::SERVICE_UNAVAILABLE && ready["status"] == "stopping").then_some(())
    })
    .await;
    let (status, body) = mlq
        .post_json("/api/v1/tasks", &json!({"command": "sleep", "params": {}}))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "shutting_down");
    let exit = mlq.exited(WITHIN).await;
    assert!(exit.success(), "{exit:?}: {}", mlq.log_text());
    // The upload that did not finish in the drain left nothing behind.
    assert_eq!(stored_objects(&objects), 0, "{}", mlq.log_text());
    // The running task went back to the queue, its attempt not counted.
    let pool = mlq::db::connect(
        &mlq::db::PgConfig::from_settings(&crate::helpers::test_settings(&database)).unwrap(),
        1,
    )
    .await
    .unwrap();
    let row = pool
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT status, attempts FROM tasks WHERE id = $1",
            &[&running],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "queued");
    assert_eq!(row.get::<_, i32>(1), 0);
}
