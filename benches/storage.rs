//! `make bench`: object storage throughput and memory, on the real binary.
//!
//! For 100 MiB and 2 GiB files on each backend (filesystem, S3 via
//! s3s-fs), it measures upload (`POST /api/v1/tasks` with the file) and
//! download (`GET …/inputs/0`) throughput with curl, and how much the mlq
//! process's peak RSS grew during each. Next to them, raw references on the
//! same machine and disk: curl straight into s3s-fs (one PUT, and a
//! multipart upload with mlq's part size and parts in flight), and dd.
//!
//! The multipart reference is the like-for-like one for S3: mlq must upload
//! in parts to keep memory flat, and s3s-fs assembles parts on completion
//! by copying every byte again, a cost a single PUT does not pay.
//!
//! Each size runs `BENCH_REPEATS` (3) rounds, mlq and references interleaved;
//! the table shows medians, and the peak for memory. Prints a table and
//! writes `target/bench/storage.json`. `BENCH_SCALE=0.1` shrinks the large
//! file for a quick look.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod support;

use support::{admin_url, free_port, status_kib, Proc};

const MIB: u64 = 1 << 20;
const KEY: &str = "bench";
const SECRET: &str = "bench-secret";

/// curl arguments that sign requests for s3s-fs (SigV4, unsigned payload).
fn signed() -> Vec<String> {
    [
        "--aws-sigv4",
        "aws:amz:us-east-1:s3",
        "--user",
        &format!("{KEY}:{SECRET}"),
        "-H",
        "x-amz-content-sha256: UNSIGNED-PAYLOAD",
    ]
    .map(String::from)
    .to_vec()
}

fn wait_for(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = Command::new("curl")
            .args(["-sf", "-o", "/dev/null", url])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "{url} never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Pseudo-random bytes, so nothing on the path can compress them.
fn make_file(path: &Path, size: u64) {
    let mut file = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let n = left.min(block.len() as u64) as usize;
        file.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    file.flush().unwrap();
}

/// Runs curl and returns (seconds, HTTP status, body).
fn curl(args: &[&str]) -> (f64, u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code} %{time_total}"])
        .args(args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut parts = tail.split_whitespace();
    let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let secs = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN);
    (secs, status, body.to_owned())
}

fn dd(args: &[&str]) -> f64 {
    let start = Instant::now();
    let ok = Command::new("dd")
        .args(args)
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "dd {args:?}");
    start.elapsed().as_secs_f64()
}

/// Runs `f` and returns its result with how far the process's peak RSS
/// rose above its resident size before, in MiB.
fn peak_growth<T>(pid: u32, f: impl FnOnce() -> T) -> (T, f64) {
    // Writing 5 to clear_refs resets the peak (VmHWM) to the current RSS.
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    let before = status_kib(pid, "VmRSS:");
    let out = f();
    let peak = status_kib(pid, "VmHWM:");
    (out, peak.saturating_sub(before) as f64 / 1024.0)
}

/// Uploads `file` into s3s-fs at `object` the way mlq does: 8 MiB parts,
/// two in flight, then the completion. Returns the seconds it took,
/// splitting the file aside.
fn curl_multipart(sign: &[&str], work: &Path, file: &Path, object: &str) -> f64 {
    let parts_dir = work.join("parts");
    std::fs::create_dir_all(&parts_dir).unwrap();
    let ok = Command::new("split")
        .args(["-b", "8388608", "-d", "-a", "5"])
        .arg(file)
        .arg(parts_dir.join("p"))
        .status()
        .unwrap()
        .success();
    assert!(ok, "split");
    let mut parts: Vec<PathBuf> = std::fs::read_dir(&parts_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    parts.sort();

    let start = Instant::now();
    // curl 7.88 signs `?uploads` only when written with its empty value.
    let (_, status, body) = curl(&[sign, &["-X", "POST", &format!("{object}?uploads=")]].concat());
    assert_eq!(status, 200, "initiate: {body}");
    let upload = body
        .split("<UploadId>")
        .nth(1)
        .and_then(|rest| rest.split("</UploadId>").next())
        .expect("an upload id")
        .to_owned();
    // A window of two parts in flight, oldest first, as mlq keeps it.
    let spawn = |number: usize, part: &Path| {
        let url = format!("{object}?partNumber={number}&uploadId={upload}");
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%header{etag}"])
            .args(sign)
            .arg("-T")
            .arg(part)
            .arg(url)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut etags = Vec::with_capacity(parts.len());
    let mut in_flight = std::collections::VecDeque::new();
    let mut next = parts.iter().enumerate();
    loop {
        while in_flight.len() < 2 {
            let Some((i, part)) = next.next() else { break };
            in_flight.push_back(spawn(i + 1, part));
        }
        let Some(oldest) = in_flight.pop_front() else {
            break;
        };
        let out = oldest.wait_with_output().unwrap();
        etags.push(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    }
    let mut complete = String::from("<CompleteMultipartUpload>");
    for (i, etag) in etags.iter().enumerate() {
        complete += &format!(
            "<Part><PartNumber>{}</PartNumber><ETag>{etag}</ETag></Part>",
            i + 1
        );
    }
    complete += "</CompleteMultipartUpload>";
    let url = format!("{object}?uploadId={upload}");
    let (_, status, body) =
        curl(&[sign, &["-X", "POST", "--data-binary", &complete, &url]].concat());
    assert_eq!(status, 200, "complete: {body}");
    let secs = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&parts_dir);
    secs
}

/// The same bytes straight into s3s-fs (one PUT, then multipart) and onto
/// the disk with dd.
fn references(sign: &[&str], work: &Path, endpoint: &str, file: &Path, size: u64) -> Value {
    let object = format!("{endpoint}/reference/in-{size}");
    let path = file.display().to_string();
    let (up, status, _) = curl(&[sign, &["-T", &path, &object]].concat());
    assert_eq!(status, 200);
    let (down, _, _) = curl(&[sign, &["-o", "/dev/null", &object]].concat());
    let multipart_object = format!("{endpoint}/reference/multipart-{size}");
    let multipart = curl_multipart(sign, work, file, &multipart_object);
    let copy = work.join(format!("dd-{size}"));
    let dd_write = dd(&[
        &format!("if={}", file.display()),
        &format!("of={}", copy.display()),
        "bs=8M",
        "conv=fsync",
    ]);
    let dd_read = dd(&[&format!("if={}", copy.display()), "of=/dev/null", "bs=8M"]);
    let _ = std::fs::remove_file(&copy);
    json!({
        "curl_s3s_upload_mib_s": mbps(size, up),
        "curl_s3s_download_mib_s": mbps(size, down),
        "curl_s3s_multipart_upload_mib_s": mbps(size, multipart),
        "dd_write_mib_s": mbps(size, dd_write),
        "dd_read_mib_s": mbps(size, dd_read),
    })
}

/// Per figure across rounds: the median, or for memory the peak.
fn summarize(rounds: &[Value]) -> Value {
    fn walk(key: &str, values: &[&Value]) -> Value {
        match values[0] {
            Value::Object(map) => Value::Object(
                map.keys()
                    .map(|k| {
                        let inner: Vec<&Value> = values.iter().map(|v| &v[k]).collect();
                        (k.clone(), walk(k, &inner))
                    })
                    .collect(),
            ),
            _ => {
                let mut xs: Vec<f64> = values.iter().filter_map(|v| v.as_f64()).collect();
                xs.sort_by(f64::total_cmp);
                if key.contains("rss") {
                    json!(xs.last().copied().unwrap_or(f64::NAN))
                } else {
                    json!(xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN))
                }
            }
        }
    }
    walk("", &rounds.iter().collect::<Vec<_>>())
}

struct Mlq {
    process: Proc,
    base: String,
    token: String,
}

fn start_mlq(work: &Path, name: &str, s3: Option<&str>) -> Mlq {
    let database = format!("mlq_bench_{}_{}", name, std::process::id());
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlq"));
    cmd.arg("serve")
        .env("MLQ_DATABASE_URL", format!("{}/{database}", admin_url()))
        .env("MLQ_BIND", format!("127.0.0.1:{port}"))
        .env("MLQ_DATA_DIR", work.join(format!("data-{name}")))
        .env("MLQ_DIAGNOSTICS", "true")
        .env("MLQ_MAX_REQUEST_BYTES", (8u64 << 30).to_string())
        .env("MLQ_MAX_FILE_BYTES", (8u64 << 30).to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    if let Some(endpoint) = s3 {
        cmd.env("MLQ_STORAGE", "s3")
            .env("MLQ_S3_ENDPOINT", endpoint)
            .env("MLQ_S3_BUCKET", "mlq")
            .env("MLQ_S3_ACCESS_KEY", KEY)
            .env("MLQ_S3_SECRET_KEY", SECRET)
            .env("MLQ_S3_CREATE_BUCKET", "true");
    }
    let process = Proc(cmd.spawn().expect("mlq starts"));
    let base = format!("http://127.0.0.1:{port}");
    wait_for(&format!("{base}/readyz"));
    let token = support::create_user(&format!("{}/{database}", admin_url()));
    Mlq {
        process,
        base,
        token,
    }
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / MIB as f64 / secs
}

/// Uploads then downloads `file` through mlq; returns the figures.
fn through_mlq(mlq: &Mlq, file: &Path, size: u64) -> Value {
    let pid = mlq.process.0.id();
    let form = format!("file=@{};type=text/csv", file.display());
    let url = format!("{}/api/v1/tasks", mlq.base);
    let [h, auth] = support::bearer(&mlq.token);
    let curl = |args: &[&str]| curl(&[&[h.as_str(), auth.as_str()], args].concat());
    let ((secs, status, body), up_rss) =
        peak_growth(pid, || curl(&["-F", "command=sleep", "-F", &form, &url]));
    assert_eq!(status, 202, "upload failed: {body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Let the staging of the input (a copy to scratch on S3) finish first.
    let task_url = format!("{url}/{id}");
    let deadline = Instant::now() + Duration::from_secs(600);
    while !curl(&[&task_url]).2.contains("\"succeeded\"") {
        assert!(Instant::now() < deadline, "task {id} did not finish");
        std::thread::sleep(Duration::from_millis(200));
    }
    let input = format!("{url}/{id}/inputs/0");
    let ((down, status, _), down_rss) = peak_growth(pid, || curl(&["-o", "/dev/null", &input]));
    assert_eq!(status, 200);
    // Rounds of gigabytes add up: free the disk for the next.
    let (_, status, _) = curl(&["-X", "DELETE", &task_url]);
    assert_eq!(status, 204);
    json!({
        "upload_mib_s": mbps(size, secs),
        "upload_rss_growth_mib": up_rss,
        "download_mib_s": mbps(size, down),
        "download_rss_growth_mib": down_rss,
    })
}

fn main() {
    let scale: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let sizes = [100 * MIB, ((2048.0 * scale) as u64).max(100) * MIB];
    let repeats: usize = std::env::var("BENCH_REPEATS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let work = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let work_path: PathBuf = work.path().to_owned();

    let s3_port = free_port();
    let s3_root = work_path.join("s3s");
    std::fs::create_dir_all(&s3_root).unwrap();
    let _s3 = Proc(
        Command::new(std::env::var("S3S_FS").unwrap_or_else(|_| "s3s-fs".into()))
            .args(["--host", "127.0.0.1", "--port", &s3_port.to_string()])
            .args(["--access-key", KEY, "--secret-key", SECRET])
            .arg(&s3_root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs starts (make bench installs it)"),
    );
    let s3_endpoint = format!("http://127.0.0.1:{s3_port}");
    std::thread::sleep(Duration::from_millis(300));
    let sign = signed();
    let sign: Vec<&str> = sign.iter().map(String::as_str).collect();
    let bucket = format!("{s3_endpoint}/reference");
    let (_, status, _) = curl(&[&sign[..], &["-X", "PUT", &bucket]].concat());
    assert_eq!(status, 200, "reference bucket");

    let fs_mlq = start_mlq(&work_path, "fs", None);
    let s3_mlq = start_mlq(&work_path, "s3", Some(&s3_endpoint));

    let mut rows = Vec::new();
    for size in sizes {
        let file = work_path.join(format!("in-{size}"));
        make_file(&file, size);
        // Rounds interleave mlq and the references, so each pair shares the
        // machine's mood; medians (peaks for memory) smooth the rest.
        let rounds: Vec<Value> = (0..repeats)
            .map(|_| {
                let fs = through_mlq(&fs_mlq, &file, size);
                let s3 = through_mlq(&s3_mlq, &file, size);
                let reference = references(&sign, &work_path, &s3_endpoint, &file, size);
                json!({"fs": fs, "s3": s3, "reference": reference})
            })
            .collect();
        let _ = std::fs::remove_file(&file);
        let mut row = summarize(&rounds);
        row["size_mib"] = json!(size / MIB);
        row["rounds"] = json!(rounds);
        rows.push(row);
    }
    drop(fs_mlq);
    drop(s3_mlq);

    println!(
        "\nmlq storage benchmark (release build, real server processes, curl as the client)\n"
    );
    println!(
        "{:>9}  {:<8} {:>9} {:>9} {:>8} {:>11} {:>11} {:>11}",
        "file", "backend", "up MiB/s", "ref MiB/s", "up/ref", "up/1-PUT", "down MiB/s", "peak +MiB"
    );
    for row in &rows {
        let size = row["size_mib"].as_u64().unwrap();
        let r = &row["reference"];
        // S3's like-for-like reference is the multipart curl upload; the
        // single PUT is shown beside it.
        for (name, reference, single) in [
            ("fs", r["dd_write_mib_s"].as_f64().unwrap(), None),
            (
                "s3",
                r["curl_s3s_multipart_upload_mib_s"].as_f64().unwrap(),
                r["curl_s3s_upload_mib_s"].as_f64(),
            ),
        ] {
            let b = &row[name];
            let up = b["upload_mib_s"].as_f64().unwrap();
            let peak = b["upload_rss_growth_mib"]
                .as_f64()
                .unwrap()
                .max(b["download_rss_growth_mib"].as_f64().unwrap());
            let single = single.map_or("-".to_owned(), |s| format!("{:.0}%", up / s * 100.0));
            println!(
                "{:>6} MiB  {:<8} {:>9.0} {:>9.0} {:>7.0}% {:>11} {:>11.0} {:>11.1}",
                size,
                name,
                up,
                reference,
                up / reference * 100.0,
                single,
                b["download_mib_s"].as_f64().unwrap(),
                peak
            );
        }
        println!(
            "{:>9}  reference: curl→s3s-fs multipart up {:.0}, one PUT up {:.0} / down {:.0} MiB/s, dd write {:.0} / read {:.0} MiB/s",
            "",
            r["curl_s3s_multipart_upload_mib_s"].as_f64().unwrap(),
            r["curl_s3s_upload_mib_s"].as_f64().unwrap(),
            r["curl_s3s_download_mib_s"].as_f64().unwrap(),
            r["dd_write_mib_s"].as_f64().unwrap(),
            r["dd_read_mib_s"].as_f64().unwrap()
        );
    }
    println!("\nTargets: upload within 80 % of the direct reference (dd for fs, multipart curl for s3); peak RSS growth under 64 MiB for 2 GiB.");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("storage.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&json!({"rows": rows})).unwrap(),
    )
    .unwrap();
    println!("wrote {}", path.display());
    for name in ["fs", "s3"] {
        let _ = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-qc"])
            .arg(format!(
                "DROP DATABASE IF EXISTS mlq_bench_{name}_{} WITH (FORCE)",
                std::process::id()
            ))
            .stderr(Stdio::null())
            .status();
    }
}
