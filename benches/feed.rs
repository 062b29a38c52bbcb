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

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use awc::ws::Frame;
use chrono::{DateTime, Utc};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

mod support;

use support::percentile;

/// `BENCH_SUBSCRIBERS` overrides it, to see how latency grows with fan-out.
const SUBSCRIBERS: usize = 1000;
/// One client runtime per core.
const CLIENT_THREADS: usize = 2;

fn subscribers() -> usize {
    std::env::var("BENCH_SUBSCRIBERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SUBSCRIBERS)
}

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

/// Latencies (ms) every subscriber measured, shared by the client threads.
#[derive(Default)]
struct Sink {
    recording: AtomicBool,
    latencies: Mutex<Vec<f64>>,
    /// Of each latency, the part from the report to its write.
    writes: Mutex<Vec<f64>>,
    connected: AtomicUsize,
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

fn time_at(text: &[u8], from: usize) -> Option<DateTime<Utc>> {
    let start = find(text, br#""at":""#, from)? + 6;
    let end = find(text, b"\"", start)?;
    std::str::from_utf8(&text[start..end]).ok()?.parse().ok()
}

/// A progress event's two times: when the job reported it (`progress.at`)
/// and when Postgres numbered the write (the event's `at`). Read without
/// parsing the whole message: the client must stay cheap, as it shares the
/// machine.
fn progress_times(text: &[u8]) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    find(text, br#""type":"progress""#, 0)?;
    let body = find(text, br#""progress":{"#, 0)?;
    Some((time_at(text, body)?, time_at(text, 0)?))
}

async fn subscribe(url: String, token: Arc<str>, sink: Arc<Sink>) {
    let (_, mut conn) = match awc::Client::new()
        .ws(url)
        .bearer_auth(&*token)
        .max_frame_size(16 << 20)
        .connect()
        .await
    {
        Ok(c) => c,
        Err(e) => panic!("a subscriber could not connect: {e}"),
    };
    sink.connected.fetch_add(1, Ordering::Relaxed);
    while let Some(Ok(frame)) = conn.next().await {
        match frame {
            Frame::Text(text) => {
                let received = Utc::now();
                if !sink.recording.load(Ordering::Relaxed) {
                    continue;
                }
                if let Some((reported, written)) = progress_times(&text) {
                    let ms =
                        |d: chrono::TimeDelta| d.num_microseconds().unwrap_or(0) as f64 / 1000.0;
                    sink.latencies.lock().unwrap().push(ms(received - reported));
                    sink.writes.lock().unwrap().push(ms(written - reported));
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

/// Runs `urls` as subscribers on `threads` client threads, each its own
/// single-threaded runtime, for as long as the process lives.
fn start_clients(urls: Vec<String>, token: &str, threads: usize, sink: &Arc<Sink>) {
    let token: Arc<str> = token.into();
    for t in 0..threads {
        let mine: Vec<String> = urls.iter().skip(t).step_by(threads).cloned().collect();
        let (sink, token) = (sink.clone(), token.clone());
        std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                for (i, url) in mine.into_iter().enumerate() {
                    actix_rt::spawn(subscribe(url, token.clone(), sink.clone()));
                    if i % 100 == 99 {
                        actix_rt::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                std::future::pending::<()>().await;
            });
        });
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
    let rss = support::status_kib(pid, "VmRSS:") as f64;
    (cpu / ticks, rss / 1024.0)
}

/// Records latencies for `secs` and reports them with the CPU use of the
/// server and of this process (the clients).
async fn phase(name: &str, secs: u64, sink: &Sink, pid: u32) -> Value {
    sink.latencies.lock().unwrap().clear();
    sink.writes.lock().unwrap().clear();
    sink.recording.store(true, Ordering::Relaxed);
    let (cpu_before, _) = usage(pid);
    let (client_before, _) = usage(std::process::id());
    let started = Instant::now();
    actix_rt::time::sleep(Duration::from_secs(secs)).await;
    let wall = started.elapsed().as_secs_f64();
    let (cpu_after, rss) = usage(pid);
    let (client_after, _) = usage(std::process::id());
    sink.recording.store(false, Ordering::Relaxed);
    let mut latencies = std::mem::take(&mut *sink.latencies.lock().unwrap());
    latencies.sort_by(f64::total_cmp);
    let mut writes = std::mem::take(&mut *sink.writes.lock().unwrap());
    writes.sort_by(f64::total_cmp);
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
        "report_to_write_ms": {
            "p50": percentile(&writes, 0.5),
            "p99": percentile(&writes, 0.99),
        },
        "server_cpu_percent_of_one_core": (cpu_after - cpu_before) / wall * 100.0,
        "client_cpu_percent_of_one_core": (client_after - client_before) / wall * 100.0,
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
        let client = server.client();
        let secs = phase_seconds();
        let subscribers = subscribers();
        let (_, rss_before) = usage(pid);

        // Two long tasks reporting progress every 250 ms, one per worker.
        let steps = secs * 3 * 4 + 40;
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let body = json!({"command": "sleep", "params": {"ms": steps * 250, "steps": steps}});
            tasks.push(submit(&client, &server.base, body).await);
        }

        let sink = Arc::new(Sink::default());
        let ws_base = server.base.replacen("http://", "ws://", 1);
        let urls: Vec<String> = (0..subscribers)
            .map(|i| {
                if i % 2 == 0 {
                    format!("{ws_base}/api/v1/tasks/{}/events", tasks[(i / 2) % 2])
                } else {
                    format!("{ws_base}/api/v1/events?limit=10")
                }
            })
            .collect();
        start_clients(urls, &server.token, CLIENT_THREADS, &sink);
        let deadline = Instant::now() + Duration::from_secs(60);
        while sink.connected.load(Ordering::Relaxed) < subscribers {
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
            "subscribers": subscribers,
            "phase_seconds": secs,
            "server_rss_mib": {"before_subscribers": rss_before, "with_subscribers": rss_connected},
            "phases": [idle, busy],
            "p50_ratio_busy_over_idle": p50_ratio,
            "p99_ratio_busy_over_idle": ratio,
        });

        println!("\nmlq live feed benchmark: {subscribers} WebSocket subscribers, 2 tasks reporting every 250 ms\n");
        println!(
            "    {:<30} {:>10} {:>9} {:>9} {:>13} {:>11} {:>11} {:>9}",
            "", "deliveries", "p50 ms", "p99 ms", "write p50/p99", "server CPU%", "client CPU%", "RSS MiB"
        );
        for p in report["phases"].as_array().unwrap() {
            println!(
                "    {:<30} {:>10} {:>9.2} {:>9.2} {:>13} {:>11.0} {:>11.0} {:>9.1}",
                p["phase"].as_str().unwrap(),
                p["deliveries"],
                p["latency_ms"]["p50"].as_f64().unwrap(),
                p["latency_ms"]["p99"].as_f64().unwrap(),
                format!(
                    "{:.1}/{:.1}",
                    p["report_to_write_ms"]["p50"].as_f64().unwrap(),
                    p["report_to_write_ms"]["p99"].as_f64().unwrap()
                ),
                p["server_cpu_percent_of_one_core"].as_f64().unwrap(),
                p["client_cpu_percent_of_one_core"].as_f64().unwrap(),
                p["server_rss_mib"].as_f64().unwrap(),
            );
        }
        println!("    ratio busy / idle: p50 {p50_ratio:.2}, p99 {ratio:.2}   (target: busy p99 < 100 ms)");
        println!(
            "    server RSS: {rss_before:.1} MiB before subscribers, {rss_connected:.1} MiB with {subscribers}"
        );
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("feed.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&report).unwrap()).unwrap();
        println!("\nwrote {}", path.display());

        support::drop_database(&database).await;
    });
}
