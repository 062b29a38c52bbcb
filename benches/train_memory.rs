//! `make bench`: memory of `train` on a large CSV, on the real binary.
//!
//! Uploads a generated CSV (1 GiB by default; `BENCH_SCALE` scales it),
//! trains one epoch, and reports how far the mlq process's peak RSS rose
//! during training next to the size of the parsed tensors (rows × encoded
//! inputs × 4 bytes). The bar: no more than a few hundred MiB above the
//! tensors. Writes `target/bench/train_memory.json`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod support;

use support::{status_kib, Proc};

const MIB: f64 = (1 << 20) as f64;
const FEATURES: usize = 10;

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .arg("-s")
        .args(args)
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes a CSV of about `bytes` bytes: ten numeric features and a label.
fn make_csv(path: &std::path::Path, bytes: u64) -> u64 {
    let mut out = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(path).unwrap());
    let header: Vec<String> = (0..FEATURES).map(|i| format!("f{i}")).collect();
    writeln!(out, "{},label", header.join(",")).unwrap();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let (mut written, mut rows) = (0u64, 0u64);
    let mut line = String::with_capacity(128);
    while written < bytes {
        line.clear();
        let mut sum = 0.0;
        for _ in 0..FEATURES {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = (x >> 11) as f64 / (1u64 << 53) as f64;
            sum += v;
            line.push_str(&format!("{v:.5},"));
        }
        line.push_str(if sum > FEATURES as f64 / 2.0 {
            "yes\n"
        } else {
            "no\n"
        });
        out.write_all(line.as_bytes()).unwrap();
        written += line.len() as u64;
        rows += 1;
    }
    out.flush().unwrap();
    rows
}

fn main() {
    let scale: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let target_bytes = ((1024.0 * scale) as u64).max(16) << 20;
    let work = tempfile::tempdir().unwrap();
    let csv = work.path().join("big.csv");
    let rows = make_csv(&csv, target_bytes);
    let csv_bytes = std::fs::metadata(&csv).unwrap().len();

    let admin = std::env::var("MLQ_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let database = format!("mlq_bench_train_{}", std::process::id());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mlq = Proc(
        Command::new(env!("CARGO_BIN_EXE_mlq"))
            .arg("serve")
            .env("MLQ_DATABASE_URL", format!("{admin}/{database}"))
            .env("MLQ_BIND", format!("127.0.0.1:{port}"))
            .env("MLQ_DATA_DIR", work.path().join("data"))
            .env("MLQ_MAX_REQUEST_BYTES", (8u64 << 30).to_string())
            .env("MLQ_MAX_FILE_BYTES", (8u64 << 30).to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("mlq starts"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !curl(&[&format!("{base}/readyz")]).contains("\"ready\"") {
        assert!(Instant::now() < deadline, "mlq did not become ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let [h, auth] = support::bearer(&support::create_user(&format!("{admin}/{database}")));
    let curl = |args: &[&str]| curl(&[&[h.as_str(), auth.as_str()], args].concat());
    let pid = mlq.0.id();
    let before = status_kib(pid, "VmRSS:");
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    let started = Instant::now();
    let params = r#"params={"target": "label", "epochs": 1, "batch_size": 4096, "hidden": [32]}"#;
    let body = curl(&[
        "-F",
        "command=train",
        "-F",
        params,
        "-F",
        &format!("file=@{};type=text/csv", csv.display()),
        &format!("{base}/api/v1/tasks"),
    ]);
    let id = serde_json::from_str::<Value>(&body).expect("task JSON")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let task = loop {
        let task: Value =
            serde_json::from_str(&curl(&[&format!("{base}/api/v1/tasks/{id}")])).unwrap();
        if matches!(task["status"].as_str(), Some("succeeded" | "failed")) {
            break task;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "training did not finish"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let seconds = started.elapsed().as_secs_f64();
    let peak = status_kib(pid, "VmHWM:");
    drop(mlq);
    assert_eq!(task["status"], "succeeded", "{task}");

    let tensors = rows as f64 * (FEATURES as f64 + 1.0) * 4.0;
    let growth = peak.saturating_sub(before) as f64 * 1024.0;
    let report = json!({
        "csv_mib": csv_bytes as f64 / MIB,
        "rows": rows,
        "tensors_mib": tensors / MIB,
        "peak_rss_growth_mib": growth / MIB,
        "above_tensors_mib": (growth - tensors) / MIB,
        "upload_and_train_seconds": seconds,
    });
    println!("\nmlq train memory (release build, real server process)\n");
    println!(
        "    CSV                     {:>8.0} MiB, {rows} rows × {FEATURES} features",
        report["csv_mib"].as_f64().unwrap()
    );
    println!(
        "    parsed tensors          {:>8.0} MiB",
        report["tensors_mib"].as_f64().unwrap()
    );
    println!(
        "    peak RSS growth         {:>8.0} MiB",
        report["peak_rss_growth_mib"].as_f64().unwrap()
    );
    println!(
        "    above the tensors       {:>8.0} MiB   (bar: a few hundred MiB)",
        report["above_tensors_mib"].as_f64().unwrap()
    );
    println!("    upload + 1 epoch        {:>8.1} s", seconds);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("train_memory.json"),
        serde_json::to_vec_pretty(&report).unwrap(),
    )
    .unwrap();
    let _ = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-qc"])
        .arg(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .stderr(Stdio::null())
        .status();
}
