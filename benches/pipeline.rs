//! `make bench`: the service's two promises, measured on the real binary.
//!
//! (a) `GET /api/v1/tasks/{id}` latency with the ML pool idle, then with it
//!     saturated by `train` tasks, side by side in one run.
//! (b) End-to-end throughput and latency of `sleep` tasks with `ms: 0`:
//!     submit over HTTP → claimed → run on the pool → recorded as succeeded.
//!
//! Prints a table and writes `target/bench/pipeline.json`. Sizes can be
//! scaled down with `BENCH_SCALE=0.1` for a quick look.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_postgres::NoTls;

mod support;

use support::{percentile, Server};

fn scale(n: usize) -> usize {
    support::scaled(n as f64, 10.0) as usize
}

struct Stats {
    p50: f64,
    p99: f64,
    mean: f64,
    n: usize,
}

fn stats(mut ms: Vec<f64>) -> Stats {
    ms.sort_by(f64::total_cmp);
    Stats {
        p50: percentile(&ms, 0.5),
        p99: percentile(&ms, 0.99),
        mean: ms.iter().sum::<f64>() / ms.len() as f64,
        n: ms.len(),
    }
}

async fn post_json(client: &awc::Client, url: &str, body: &Value) -> Value {
    let mut res = client.post(url).send_json(body).await.expect("POST");
    res.json::<Value>().limit(1 << 24).await.expect("JSON")
}

/// Sequential GETs of one task, in milliseconds each.
async fn get_latencies(client: &awc::Client, url: &str, n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let mut res = client.get(url).send().await.expect("GET");
        let _ = res.body().await.expect("body");
        assert!(res.status().is_success());
        out.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    out
}

fn wide_csv(rows: usize) -> Vec<u8> {
    let mut out = (0..16)
        .map(|i| format!("f{i}"))
        .collect::<Vec<_>>()
        .join(",")
        + ",label\n";
    let mut x: u64 = 1;
    for r in 0..rows {
        let mut sum = 0.0;
        for _ in 0..16 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let v = (x >> 33) as f64 / (1u64 << 31) as f64;
            sum += v;
            out.push_str(&format!("{v:.4},"));
        }
        out.push_str(if sum > 8.0 || r % 7 == 0 {
            "yes\n"
        } else {
            "no\n"
        });
    }
    out.into_bytes()
}

fn multipart(command: &str, params: &Value, file: &[u8]) -> (String, Vec<u8>) {
    let b = "mlq-bench-boundary";
    let mut body = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"command\"\r\n\r\n{command}\r\n\
         --{b}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n{params}\r\n\
         --{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"data.csv\"\r\n\
         Content-Type: text/csv\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={b}"), body)
}

async fn latency_bench(server: &Server) -> Value {
    let client = server.client();
    let tasks = format!("{}/api/v1/tasks", server.base);
    let probe = post_json(
        &client,
        &tasks,
        &json!({"command": "sleep", "params": {"ms": 0}}),
    )
    .await;
    let url = format!("{tasks}/{}", probe["id"].as_str().unwrap());
    let n = scale(3000);
    // Warm up, then sample idle before and after the busy phase, so slow
    // drift on a shared machine weighs on both sides alike.
    get_latencies(&client, &url, 200).await;
    let mut idle = get_latencies(&client, &url, n / 2).await;

    // Saturate the pool: more long train tasks than workers.
    let csv = wide_csv(scale(20_000));
    let params = json!({"target": "label", "epochs": 1000, "hidden": [256, 256], "batch_size": 64});
    let mut train_ids = Vec::new();
    for _ in 0..3 {
        let (content_type, body) = multipart("train", &params, &csv);
        let mut res = client
            .post(&tasks)
            .insert_header(("content-type", content_type))
            .send_body(body)
            .await
            .expect("submit train");
        let task: Value = res.json().await.unwrap();
        train_ids.push(task["id"].as_str().unwrap().to_owned());
    }
    // Wait until training is in its epochs, so libtorch holds every core.
    let first = format!("{tasks}/{}", train_ids[0]);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut res = client.get(&first).send().await.unwrap();
        let task: Value = res.json().limit(1 << 24).await.unwrap();
        if task["progress"]["stage"]
            .as_str()
            .is_some_and(|s| s.starts_with("epoch"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "train never started: {task}");
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let busy = stats(get_latencies(&client, &url, n).await);
    for id in &train_ids {
        let _ = client.post(format!("{tasks}/{id}/cancel")).send().await;
    }
    // Wait for the pool to be idle again before the second idle sample.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut res = client
            .get(format!("{}/readyz", server.base))
            .send()
            .await
            .unwrap();
        let ready: Value = res.json().limit(1 << 20).await.unwrap();
        let busy_workers = ready["workers"]["detail"]
            .as_array()
            .map_or(0, |w| w.iter().filter(|w| w["state"] == "busy").count());
        if busy_workers == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "train tasks did not stop: {ready}"
        );
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    idle.extend(get_latencies(&client, &url, n - n / 2).await);
    let idle = stats(idle);
    json!({
        "requests_each": n,
        "idle_ms": {"p50": idle.p50, "p99": idle.p99, "mean": idle.mean},
        "busy_ms": {"p50": busy.p50, "p99": busy.p99, "mean": busy.mean},
        "p50_ratio_busy_over_idle": busy.p50 / idle.p50,
        "p99_ratio_busy_over_idle": busy.p99 / idle.p99,
        "loadavg_during_busy": load.trim(),
        "busy_samples": busy.n,
    })
}

/// Rounds of the sleep pipeline; the median round is reported.
const ROUNDS: usize = 3;

async fn throughput_bench(server: &Server, database: &str) -> Value {
    let (db, conn) =
        tokio_postgres::connect(&format!("{}/{database}", support::admin_url()), NoTls)
            .await
            .unwrap();
    actix_rt::spawn(conn);
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        rounds.push(throughput_round(server, &db).await);
    }
    rounds.sort_by(|a, b| {
        a["tasks_per_second"]
            .as_f64()
            .unwrap()
            .total_cmp(&b["tasks_per_second"].as_f64().unwrap())
    });
    let mut median = rounds[ROUNDS / 2].clone();
    median["rounds_tasks_per_second"] = rounds
        .iter()
        .map(|r| r["tasks_per_second"].clone())
        .collect();
    median
}

/// Submits `n` sleep tasks with bounded concurrency and waits until all
/// have succeeded.
async fn throughput_round(server: &Server, db: &tokio_postgres::Client) -> Value {
    use futures_util::StreamExt;
    let n = scale(3000);
    let concurrency = 32;
    let client = server.client();
    let tasks = format!("{}/api/v1/tasks", server.base);
    let count = "SELECT count(*) FROM tasks WHERE status = 'succeeded' AND command = 'sleep'";
    let before: i64 = db.query_one(count, &[]).await.unwrap().get(0);
    let since: chrono::DateTime<chrono::Utc> =
        db.query_one("SELECT now()", &[]).await.unwrap().get(0);

    let start = Instant::now();
    futures_util::stream::iter(0..n)
        .map(|_| {
            let client = client.clone();
            let tasks = tasks.clone();
            async move {
                let mut res = client
                    .post(&tasks)
                    .send_json(&json!({"command": "sleep", "params": {"ms": 0}}))
                    .await
                    .expect("submit");
                let _ = res.body().await;
                assert_eq!(res.status().as_u16(), 202);
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    let submitted = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done: i64 = db.query_one(count, &[]).await.unwrap().get(0);
        if done - before >= n as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} finished",
            done - before
        );
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = start.elapsed();
    let rows = db
        .query(
            "SELECT extract(epoch FROM finished_at - created_at)::float8 * 1000,
                    extract(epoch FROM started_at - created_at)::float8 * 1000
             FROM tasks WHERE command = 'sleep' AND created_at >= $1",
            &[&since],
        )
        .await
        .unwrap();
    let latency = stats(rows.iter().map(|r| r.get::<_, f64>(0)).collect());
    let queued = stats(rows.iter().map(|r| r.get::<_, f64>(1)).collect());
    json!({
        "tasks": n,
        "submit_concurrency": concurrency,
        "submit_seconds": submitted.as_secs_f64(),
        "submit_per_second": n as f64 / submitted.as_secs_f64(),
        "end_to_end_seconds": elapsed.as_secs_f64(),
        "tasks_per_second": n as f64 / elapsed.as_secs_f64(),
        "latency_ms": {"p50": latency.p50, "p99": latency.p99, "mean": latency.mean},
        "queue_wait_ms": {"p50": queued.p50, "p99": queued.p99},
    })
}

fn main() {
    actix_rt::System::new().block_on(async {
        let database = format!("mlq_bench_{}", uuid::Uuid::new_v4().simple());
        let server = support::start_server(&database, &[]).await;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

        // Latency first, on a fresh database: the throughput run leaves
        // thousands of rows for autovacuum to chew on.
        let latency = latency_bench(&server).await;
        let throughput = throughput_bench(&server, &database).await;
        drop(server);

        let report = json!({
            "machine": {"cores": cores},
            "get_task_latency": latency,
            "sleep_pipeline": throughput,
        });
        let l = &report["get_task_latency"];
        let t = &report["sleep_pipeline"];
        println!("\nmlq pipeline benchmark ({cores} cores, release build, real server process)\n");
        println!(
            "(a) GET /api/v1/tasks/{{id}}, {} sequential requests each (idle: half before, half after busy)",
            l["requests_each"]
        );
        println!("    {:<28} {:>9} {:>9}", "", "p50 ms", "p99 ms");
        println!(
            "    {:<28} {:>9.3} {:>9.3}",
            "ML pool idle",
            l["idle_ms"]["p50"].as_f64().unwrap(),
            l["idle_ms"]["p99"].as_f64().unwrap()
        );
        println!(
            "    {:<28} {:>9.3} {:>9.3}",
            "ML pool saturated (train)",
            l["busy_ms"]["p50"].as_f64().unwrap(),
            l["busy_ms"]["p99"].as_f64().unwrap()
        );
        println!(
            "    {:<28} {:>9.2} {:>9.2}   (target p99 ratio <= 2)",
            "ratio busy / idle",
            l["p50_ratio_busy_over_idle"].as_f64().unwrap(),
            l["p99_ratio_busy_over_idle"].as_f64().unwrap()
        );
        println!(
            "    load average while busy: {}",
            l["loadavg_during_busy"].as_str().unwrap()
        );
        println!(
            "\n(b) sleep ms=0, submit -> succeeded, {} tasks per round, {} concurrent submitters, median of {ROUNDS} rounds",
            t["tasks"], t["submit_concurrency"]
        );
        println!(
            "    throughput            {:>9.0} tasks/s   (target >= 1000; rounds: {})",
            t["tasks_per_second"].as_f64().unwrap(),
            t["rounds_tasks_per_second"]
        );
        println!(
            "    submissions           {:>9.0} req/s",
            t["submit_per_second"].as_f64().unwrap()
        );
        println!(
            "    latency p50 / p99     {:>9.1} / {:.1} ms",
            t["latency_ms"]["p50"].as_f64().unwrap(),
            t["latency_ms"]["p99"].as_f64().unwrap()
        );
        println!(
            "    queue wait p50 / p99  {:>9.1} / {:.1} ms",
            t["queue_wait_ms"]["p50"].as_f64().unwrap(),
            t["queue_wait_ms"]["p99"].as_f64().unwrap()
        );

        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pipeline.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&report).unwrap()).unwrap();
        println!("\nwrote {}", path.display());

        support::drop_database(&database).await;
    });
}
