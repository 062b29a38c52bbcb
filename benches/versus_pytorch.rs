//! `make bench`: mlq against PyTorch 2.11.0, side by side, on the same
//! model, data, batch size and thread count (one).
//!
//! PyTorch runs in a venv under the build cache (`scripts/bench-torch.sh`),
//! driven by `benches/pytorch/peer.py` over a pipe, so rounds interleave:
//! mlq, PyTorch, mlq, PyTorch… and a burst of load on the machine hits both
//! alike. Each figure is the median of its rounds; ratios are mlq's
//! throughput over PyTorch's (above 1: mlq is faster).
//!
//! - Image forward: one TorchScript module, batches of 32 images of
//!   224×224, through mlq's model loader against `torch.jit.load` under
//!   `torch.inference_mode`.
//! - Image predict: a real `predict` task on PNG files (in a zip) through the service
//!   (decode, resize, normalise, batch, classify, write results) against
//!   Pillow, the same preparation and the same module in PyTorch.
//! - Tabular train: a real `train` task on a CSV (parsing included) against
//!   the same MLP, optimiser, batch size and epochs in PyTorch eager, with
//!   pandas parsing the CSV.
//! - Tabular predict: a real `predict` task on a CSV against the same
//!   network in PyTorch, pandas reading the CSV and writing predictions.
//!
//! Task figures are the job's own time (`finished_at − started_at`), so
//! queueing and polling are left out. Writes `target/bench/versus_pytorch.json`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use mlq_actors::ml::loaded::Loaded;
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

mod support;

use support::{admin_url, free_port, scaled, Proc};

const ROUNDS: usize = 5;
const BATCH: i64 = 32;

/// The PyTorch peer: one Python process answering a JSON line per command.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    fn start() -> Self {
        let out = Command::new("scripts/bench-torch.sh")
            .stderr(Stdio::inherit())
            .output()
            .expect("scripts/bench-torch.sh runs");
        assert!(
            out.status.success(),
            "installing PyTorch for the benchmark failed"
        );
        let python = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let mut child = Command::new(python)
            .arg("benches/pytorch/peer.py")
            // One thread, whatever the environment asks.
            .env("OMP_NUM_THREADS", "1")
            .env("MKL_NUM_THREADS", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the PyTorch peer starts");
        Self {
            stdin: child.stdin.take().unwrap(),
            stdout: BufReader::new(child.stdout.take().unwrap()),
            child,
        }
    }

    fn ask(&mut self, command: Value) -> Value {
        writeln!(self.stdin, "{command}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("the PyTorch peer failed on {command}: {line:?}"))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .arg("-s")
        .args(args)
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Mlq {
    _proc: Proc,
    base: String,
    /// `curl` arguments sending an admin's token.
    auth: [String; 2],
}

impl Mlq {
    /// One worker on one libtorch thread: the peer's configuration.
    fn start(data: &Path, database: &str) -> Self {
        let port = free_port();
        let proc = Proc(
            Command::new(env!("CARGO_BIN_EXE_mlq"))
                .arg("serve")
                .env("MLQ_DATABASE_URL", format!("{}/{database}", admin_url()))
                .env("MLQ_BIND", format!("127.0.0.1:{port}"))
                .env("MLQ_DATA_DIR", data)
                .env("MLQ_WEB_DIR", data.join("no-dashboard"))
                .env("MLQ_WORKERS", "1")
                .env("MLQ_TORCH_THREADS", "1")
                .env("MLQ_DEVICE", "cpu")
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
        let token = support::create_user(&format!("{}/{database}", admin_url()));
        Self {
            _proc: proc,
            base,
            auth: support::bearer(&token),
        }
    }

    /// curl with the token.
    fn curl(&self, args: &[&str]) -> String {
        curl(&[&[self.auth[0].as_str(), self.auth[1].as_str()], args].concat())
    }

    fn get(&self, path: &str) -> Value {
        serde_json::from_str(&self.curl(&[&format!("{}{path}", self.base)])).unwrap()
    }

    /// Submits a task with files; its id.
    fn submit(&self, command: &str, params: Value, files: &[&Path]) -> String {
        let mut args = vec![
            "-F".to_owned(),
            format!("command={command}"),
            "-F".to_owned(),
            format!("params={params}"),
        ];
        for f in files {
            args.push("-F".into());
            args.push(format!("file=@{}", f.display()));
        }
        args.push(format!("{}/api/v1/tasks", self.base));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let body = self.curl(&refs);
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        v["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{command} was refused: {body}"))
            .to_owned()
    }

    /// Waits for the task; it must succeed. Its job time in seconds and
    /// the task.
    fn job(&self, id: &str) -> (f64, Value) {
        let deadline = Instant::now() + Duration::from_secs(3600);
        loop {
            let task = self.get(&format!("/api/v1/tasks/{id}"));
            match task["status"].as_str() {
                Some("succeeded") => {
                    let at = |k: &str| {
                        task[k]
                            .as_str()
                            .and_then(|t| t.parse::<DateTime<Utc>>().ok())
                            .unwrap()
                    };
                    let secs = (at("finished_at") - at("started_at"))
                        .num_microseconds()
                        .unwrap() as f64
                        / 1e6;
                    return (secs, task);
                }
                Some("failed" | "cancelled") => panic!("the task failed: {task:#}"),
                _ => {}
            }
            assert!(Instant::now() < deadline, "the task did not finish");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A photo-like PNG: smooth gradients with noise, `w`×`h`.
fn photo(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    let img = image::RgbImage::from_fn(w, h, |i, j| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let n = (x % 24) as u8;
        image::Rgb([
            ((i * 255 / w) as u8).saturating_add(n),
            ((j * 255 / h) as u8).saturating_add(n),
            (((i + j + seed) % 256) as u8).saturating_add(n),
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Ten numeric features and a three-class label.
fn tabular_csv(path: &Path, rows: usize, with_label: bool) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let header: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
    write!(out, "{}", header.join(",")).unwrap();
    writeln!(out, "{}", if with_label { ",label" } else { "" }).unwrap();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    for _ in 0..rows {
        let v: Vec<f64> = (0..10).map(|_| next()).collect();
        let line: Vec<String> = v.iter().map(|v| format!("{v:.5}")).collect();
        write!(out, "{}", line.join(",")).unwrap();
        if with_label {
            let s = v[0] + v[1] - v[2];
            let label = if s < 0.5 {
                "low"
            } else if s < 1.0 {
                "mid"
            } else {
                "high"
            };
            write!(out, ",{label}").unwrap();
        }
        writeln!(out).unwrap();
    }
    out.flush().unwrap();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One comparison: throughputs per round, in `unit`.
struct Pair {
    name: &'static str,
    unit: &'static str,
    mlq: Vec<f64>,
    pytorch: Vec<f64>,
}

impl Pair {
    fn new(name: &'static str, unit: &'static str) -> Self {
        Self {
            name,
            unit,
            mlq: Vec::new(),
            pytorch: Vec::new(),
        }
    }

    fn json(&self) -> Value {
        let (m, p) = (median(self.mlq.clone()), median(self.pytorch.clone()));
        json!({
            "unit": self.unit,
            "mlq_median": m,
            "pytorch_median": p,
            "ratio": m / p,
            "mlq_rounds": self.mlq,
            "pytorch_rounds": self.pytorch,
        })
    }
}

#[actix_rt::main]
async fn main() {
    let work = tempfile::tempdir().unwrap();
    let mut peer = Peer::start();
    let mut pairs = Vec::new();

    // The image model: made by PyTorch, loaded by both.
    let model = work.path().join("cnn.pt");
    peer.ask(json!({"cmd": "make_model", "out": model}));

    // 1. Forward passes, in process on both sides.
    let forward_batches = scaled(6.0, 2.0) as usize;
    tch::set_num_threads(1);
    let net = Loaded::script(&model, Device::Cpu).expect("mlq loads the module");
    let x = Tensor::rand([BATCH, 3, 224, 224], (Kind::Float, Device::Cpu));
    let _ = net.forward(&x).unwrap();
    let mut forward = Pair::new("image forward, 224×224, batch 32", "images/s");
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for _ in 0..forward_batches {
            let _ = net.forward(&x).unwrap();
        }
        forward
            .mlq
            .push((forward_batches as i64 * BATCH) as f64 / start.elapsed().as_secs_f64());
        let r = peer.ask(json!({"cmd": "image_forward", "model": model, "batches": forward_batches, "batch": BATCH}));
        forward
            .pytorch
            .push(r["images"].as_f64().unwrap() / r["seconds"].as_f64().unwrap());
    }
    drop(net);
    pairs.push(forward);

    // The service, one worker on one thread.
    let database = format!("mlq_bench_peer_{}", std::process::id());
    let mlq = Mlq::start(&work.path().join("data"), &database);

    // 2. Predict on PNG files through the service.
    let images = work.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let n_images = scaled(96.0, 32.0) as u32;
    // The same files for both: in a folder for PyTorch, and stored (not
    // deflated) in a zip for mlq, as one request takes at most 16 files.
    let zip_path = work.path().join("images.zip");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..n_images {
        let name = format!("{i:05}.png");
        let png = photo(320, 240, i);
        std::fs::write(images.join(&name), &png).unwrap();
        zip.start_file(name, stored).unwrap();
        zip.write_all(&png).unwrap();
    }
    zip.finish().unwrap();
    let spec = json!({
        "name": "bench-cnn", "input": "image", "width": 224, "height": 224,
        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
    });
    let body = mlq.curl(&[
        "-F",
        &format!("spec={spec}"),
        "-F",
        &format!("file=@{}", model.display()),
        &format!("{}/api/v1/models", mlq.base),
    ]);
    let uploaded: Value = serde_json::from_str(&body).unwrap();
    let model_id = uploaded["id"].as_str().expect("model accepted").to_owned();
    let deadline = Instant::now() + Duration::from_secs(120);
    while mlq.get(&format!("/api/v1/models/{model_id}"))["status"] != "ready" {
        assert!(Instant::now() < deadline, "the model did not become ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut predict = Pair::new("image predict on 320×240 PNGs, batch 32", "images/s");
    for _ in 0..ROUNDS {
        let id = mlq.submit(
            "predict",
            json!({"model": "bench-cnn", "batch_size": BATCH}),
            &[&zip_path],
        );
        let (secs, _) = mlq.job(&id);
        predict.mlq.push(f64::from(n_images) / secs);
        let r = peer
            .ask(json!({"cmd": "image_predict", "model": model, "dir": images, "batch": BATCH}));
        predict
            .pytorch
            .push(r["images"].as_f64().unwrap() / r["seconds"].as_f64().unwrap());
    }
    pairs.push(predict);

    // 3. Tabular training, CSV parsing included.
    let rows = scaled(100_000.0, 5_000.0) as usize;
    let epochs = 2;
    let train_csv = work.path().join("train.csv");
    tabular_csv(&train_csv, rows, true);
    let params = json!({
        "target": "label", "epochs": epochs, "batch_size": BATCH, "hidden": [64, 64],
        "learning_rate": 0.01, "validation_split": 0.0,
    });
    let peer_model = work.path().join("peer-mlp.pt");
    let mut train = Pair::new("tabular train, MLP 10-64-64-3, batch 32, Adam", "rows/s");
    let mut trained = String::new();
    for _ in 0..ROUNDS {
        let id = mlq.submit("train", params.clone(), &[&train_csv]);
        let (secs, task) = mlq.job(&id);
        trained = task["result"]["model_id"].as_str().unwrap().to_owned();
        train.mlq.push((rows * epochs) as f64 / secs);
        let r = peer.ask(json!({
            "cmd": "tabular_train", "csv": train_csv, "target": "label", "hidden": [64, 64],
            "batch": BATCH, "lr": 0.01, "epochs": epochs, "out": peer_model,
        }));
        train
            .pytorch
            .push(r["rows"].as_f64().unwrap() / r["seconds"].as_f64().unwrap());
    }
    pairs.push(train);

    // 4. Tabular inference, parsing and writing included.
    let predict_rows = scaled(500_000.0, 20_000.0) as usize;
    let predict_csv = work.path().join("predict.csv");
    tabular_csv(&predict_csv, predict_rows, false);
    let out = work.path().join("peer-predictions.csv");
    let mut infer = Pair::new("tabular predict, same MLP", "rows/s");
    for _ in 0..ROUNDS {
        let id = mlq.submit("predict", json!({"model": trained}), &[&predict_csv]);
        let (secs, _) = mlq.job(&id);
        infer.mlq.push(predict_rows as f64 / secs);
        let r = peer.ask(
            json!({"cmd": "tabular_predict", "csv": predict_csv, "model": peer_model, "out": out}),
        );
        infer
            .pytorch
            .push(r["rows"].as_f64().unwrap() / r["seconds"].as_f64().unwrap());
    }
    pairs.push(infer);

    println!(
        "\nmlq against PyTorch 2.11.0, one thread each, medians of {ROUNDS} interleaved rounds"
    );
    println!("{:<48} {:>14} {:>14} {:>8}", "", "mlq", "PyTorch", "ratio");
    let mut report = serde_json::Map::new();
    for pair in &pairs {
        let j = pair.json();
        println!(
            "{:<48} {:>14.1} {:>14.1} {:>7.2}×   ({})",
            pair.name,
            j["mlq_median"].as_f64().unwrap(),
            j["pytorch_median"].as_f64().unwrap(),
            j["ratio"].as_f64().unwrap(),
            pair.unit
        );
        report.insert(pair.name.to_owned(), j);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("versus_pytorch.json"),
        serde_json::to_vec_pretty(&Value::Object(report)).unwrap(),
    )
    .unwrap();
    drop(mlq);
    support::drop_database(&database).await;
}
