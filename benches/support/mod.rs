//! What the benchmarks that drive a running mlq share: starting the real
//! binary on a free port against its own database, child processes,
//! reading a process's memory, and percentiles.

#![allow(dead_code)] // each benchmark uses its own part of this

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn admin_url() -> String {
    std::env::var("MLQ_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// `n` scaled by `BENCH_SCALE` (default 1), at least `min`.
pub fn scaled(n: f64, min: f64) -> f64 {
    let s: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    (n * s).max(min)
}

/// A new admin in the database at `database_url`, made with `mlq user
/// create` as an operator would; its API token. Run once the server has
/// migrated the database.
pub fn create_user(database_url: &str) -> String {
    static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out = Command::new(env!("CARGO_BIN_EXE_mlq"))
        .args([
            "user",
            "create",
            &format!("bench-{}-{n}", std::process::id()),
            "--admin",
        ])
        .env("MLQ_DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("mlq user create runs");
    assert!(
        out.status.success(),
        "mlq user create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// curl arguments that send `token`.
pub fn bearer(token: &str) -> [String; 2] {
    ["-H".to_owned(), format!("Authorization: Bearer {token}")]
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `kB` field of `/proc/{pid}/status` (`VmRSS:`, `VmHWM:`), in KiB.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A child process stopped (SIGTERM) and reaped when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

pub struct Server {
    pub child: Child,
    pub base: String,
    /// An admin's API token.
    pub token: String,
    _data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM: a graceful stop, as an operator would do it.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Starts `mlq serve` (diagnostics on, no dashboard) with `env` on top, and
/// waits until it is ready.
pub async fn start_server(database: &str, env: &[(&str, &str)]) -> Server {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_mlq"))
        .arg("serve")
        .env("MLQ_DATABASE_URL", format!("{}/{database}", admin_url()))
        .env("MLQ_BIND", format!("127.0.0.1:{port}"))
        .env("MLQ_DATA_DIR", data.path())
        .env("MLQ_WEB_DIR", data.path().join("no-dashboard"))
        .env("MLQ_DIAGNOSTICS", "true")
        // Benchmarks send thousands of requests a second as one user: they
        // measure the service, not the per-user rate limit.
        .env("MLQ_QUOTA_REQUESTS_PER_SECOND", "0")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .spawn()
        .expect("mlq starts");
    let base = format!("http://127.0.0.1:{port}");
    let client = awc::Client::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "mlq did not become ready");
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    let token = create_user(&format!("{}/{database}", admin_url()));
    Server {
        child,
        base,
        token,
        _data: data,
    }
}

impl Server {
    /// A client that sends the server's admin token.
    pub fn client(&self) -> awc::Client {
        awc::Client::builder()
            .timeout(Duration::from_secs(60))
            .bearer_auth(&self.token)
            .finish()
    }
}

/// Drops a benchmark's database.
pub async fn drop_database(database: &str) {
    if let Ok((admin, conn)) =
        tokio_postgres::connect(&format!("{}/postgres", admin_url()), tokio_postgres::NoTls).await
    {
        actix_rt::spawn(conn);
        let _ = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
            .await;
    }
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}
