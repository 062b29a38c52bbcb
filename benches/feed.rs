//! `make bench`: the live feed under 1,000 WebSocket subscribers.
//!
//! Starts the real binary (3 ML workers, 1 libtorch thread each) and runs
//! two `sleep` tasks that report progress every 250 ms. 1,000 clients
//! follow them: half on each task's own feed, half on the all-tasks feed.
//! Each progress event carries the time its job reported it, so every
//! client measures delivery latency from the worker's report to its own
//! receipt (same machine, same clock).
//!
//! Two phases, side by side in one run: the third worker idle, then busy
//! with `train` (the ML pool saturated). Reports p50/p99 latency of each,
//! their ratio, and the server's RSS and CPU. Target: p99 < 100 ms while
//! the pool is busy. Writes `target/bench/feed.json`.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use awc::ws::Frame;
use chrono::{DateTime, Utc};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

mod support;

use support::percentile;

const SUBSCRIBERS: usize = 1000;

fn phase_seconds() -> u64 {
    support::scaled(20.0, 3.0) as u64
}

async fn submit(client: &awc::Client, base: &str, body: Value) -> String {
    let mut res = client
        .post(format!("{base}/api/v1/tasks"))
        .send_json(&body)
        .await
        .expect("submit");
    let body: Value = res.json().limit(1 << 20).await.expect("JSON");
    body["id"].as_str().expect("a task id").to_owned()
}

async fn submit_csv(client: &awc::Client, base: &str, rows: usize) -> String {
    let mut csv = String::from("a,b,c,d,label\n");
    for i in 0..rows {
        let x = (i % 97) as f64 / 97.0;
        csv += &format!("{x},{},{},{},{}\n", 1.0 - x, x * x, (i % 13) as f64, i % 2);
    }
    let boundary = "mlqbench";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"command\"\r\n\r\ntrain\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n\
         {{\"target\": \"label\", \"epochs\": 1000, \"hidden\": [256, 256]}}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.csv\"\r\n\
         Content-Type: text/csv\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(csv.as_bytes());
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let mut res = client
        .post(format!("{base}/api/v1/tasks"))
        .insert_header((
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        ))
        .send_body(body)
        .await
        .expect("submit train");
    let body: Value = res.json().limit(1 << 20).await.expect("JSON");
    body["id"].as_str().expect("a task id").to_owned()
}

/// Latencies (ms) every subscriber measured, shared by the client tasks.
#[derive(Default)]
struct Sink {
    recording: bool,
    latencies: Vec<f64>,
    connected: usize,
}

async fn subscribe(url: String, sink: Rc<RefCell<Sink>>) {
    let (_, mut conn) = match awc::Client::new()
        .ws(url)
        .max_frame_size(16 << 20)
        .connect()
        .await
    {
        Ok(c) => c,
        Err(e) => panic!("a subscriber could not connect: {e}"),
    };
    sink.borrow_mut().connected += 1;
    while let Some(Ok(frame)) = conn.next().await {
        match frame {
            Frame::Text(text) => {
                let received = Utc::now();
                let Ok(message) = serde_json::from_slice::<Value>(&text) else {
                    continue;
                };
                if message["type"] != "progress" {
                    continue;
                }
                let Some(at) = message["progress"]["at"]
                    .as_str()
                    .and_then(|s| s.parse::<DateTime<Utc>>().ok())
                else {
                    continue;
                };
                let mut sink = sink.borrow_mut();
                if sink.recording {
                    let ms = (received - at).num_microseconds().unwrap_or(0) as f64 / 1000.0;
                    sink.latencies.push(ms);
                }
            }
            Frame::Ping(bytes) => {
                let _ = conn.send(awc::ws::Message::Pong(bytes)).await;
            }
            Frame::Close(_) => break,
            _ => {}
        }
    }
}

/// (user + system CPU seconds, RSS MiB) of a process.
fn usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = 100.0; // USER_HZ on Linux
    let cpu = fields
        .get(11)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    (cpu / ticks, rss / 1024.0)
}

/// Records latencies for `secs` and reports them with the server's CPU use.
async fn phase(name: &str, secs: u64, sink: &Rc<RefCell<Sink>>, pid: u32) -> Value {
    {
        let mut s = sink.borrow_mut();
        s.latencies.clear();
        s.recording = true;
    }
    let (cpu_before, _) = usage(pid);
    let started = Instant::now();
    actix_rt::time::sleep(Duration::from_secs(secs)).await;
    let wall = started.elapsed().as_secs_f64();
    let (cpu_after, rss) = usage(pid);
    let mut latencies = {
        let mut s = sink.borrow_mut();
        s.recording = false;
        std::mem::take(&mut s.latencies)
    };
    latencies.sort_by(f64::total_cmp);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!({
        "phase": name,
        "deliveries": latencies.len(),
        "deliveries_per_second": latencies.len() as f64 / wall,
        "latency_ms": {
            "p50": percentile(&latencies, 0.5),
            "p99": percentile(&latencies, 0.99),
            "max": latencies.last().copied().unwrap_or(f64::NAN),
        },
        "server_cpu_percent_of_one_core": (cpu_after - cpu_before) / wall * 100.0,
        "server_rss_mib": rss,
        "loadavg": load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    })
}

fn main() {
    actix_rt::System::new().block_on(async {
        let database = format!("mlq_bench_{}", uuid::Uuid::new_v4().simple());
        let server = support::start_server(
            &database,
            &[("MLQ_WORKERS", "3"), ("MLQ_TORCH_THREADS", "1")],
        )
        .await;
        let pid = server.child.id();
        let client = awc::Client::default();
        let secs = phase_seconds();
        let (_, rss_before) = usage(pid);

        // Two long tasks reporting progress every 250 ms, one per worker.
        let steps = secs * 3 * 4 + 40;
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let body = json!({"command": "sleep", "params": {"ms": steps * 250, "steps": steps}});
            tasks.push(submit(&client, &server.base, body).await);
        }

        let sink = Rc::new(RefCell::new(Sink::default()));
        let ws_base = server.base.replacen("http://", "ws://", 1);
        for i in 0..SUBSCRIBERS {
            let url = if i % 2 == 0 {
                format!("{ws_base}/api/v1/tasks/{}/events", tasks[(i / 2) % 2])
            } else {
                format!("{ws_base}/api/v1/events?limit=10")
            };
            actix_rt::spawn(subscribe(url, sink.clone()));
            if i % 100 == 99 {
                actix_rt::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while sink.borrow().connected < SUBSCRIBERS {
            assert!(Instant::now() < deadline, "subscribers did not all connect");
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
        let (_, rss_connected) = usage(pid);
        actix_rt::time::sleep(Duration::from_secs(1)).await;

        let idle = phase("ML pool: third worker idle", secs, &sink, pid).await;
        // Saturate the pool: the third worker trains a large network.
        let train = submit_csv(&client, &server.base, 20_000).await;
        actix_rt::time::sleep(Duration::from_secs(2)).await;
        let busy = phase("ML pool busy (train)", secs, &sink, pid).await;
        let _ = client
            .post(format!("{}/api/v1/tasks/{train}/cancel", server.base))
            .send()
            .await;
        drop(server);

        let ratio = busy["latency_ms"]["p99"].as_f64().unwrap() / idle["latency_ms"]["p99"].as_f64().unwrap();
        let p50_ratio = busy["latency_ms"]["p50"].as_f64().unwrap() / idle["latency_ms"]["p50"].as_f64().unwrap();
        let report = json!({
            "subscribers": SUBSCRIBERS,
            "phase_seconds": secs,
            "server_rss_mib": {"before_subscribers": rss_before, "with_subscribers": rss_connected},
            "phases": [idle, busy],
            "p50_ratio_busy_over_idle": p50_ratio,
            "p99_ratio_busy_over_idle": ratio,
        });

        println!("\nmlq live feed benchmark: {SUBSCRIBERS} WebSocket subscribers, 2 tasks reporting every 250 ms\n");
        println!(
            "    {:<30} {:>10} {:>9} {:>9} {:>9} {:>9}",
            "", "deliveries", "p50 ms", "p99 ms", "CPU %", "RSS MiB"
        );
        for p in report["phases"].as_array().unwrap() {
            println!(
                "    {:<30} {:>10} {:>9.2} {:>9.2} {:>9.0} {:>9.1}",
                p["phase"].as_str().unwrap(),
                p["deliveries"],
                p["latency_ms"]["p50"].as_f64().unwrap(),
                p["latency_ms"]["p99"].as_f64().unwrap(),
                p["server_cpu_percent_of_one_core"].as_f64().unwrap(),
                p["server_rss_mib"].as_f64().unwrap(),
            );
        }
        println!("    ratio busy / idle: p50 {p50_ratio:.2}, p99 {ratio:.2}   (target: busy p99 < 100 ms)");
        println!(
            "    server RSS: {rss_before:.1} MiB before subscribers, {rss_connected:.1} MiB with {SUBSCRIBERS}"
        );
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("feed.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&report).unwrap()).unwrap();
        println!("\nwrote {}", path.display());

        support::drop_database(&database).await;
    });
}
