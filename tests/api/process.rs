//! Running mlq as its own OS process: for what an in-process app cannot
//! show (a crash, kill -9, SIGTERM, the process's own peak memory).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::Api;

pub struct MlqProcess {
    pub api: Api,
    pub child: Child,
    pub log: PathBuf,
}

impl std::ops::Deref for MlqProcess {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl MlqProcess {
    /// Starts `mlq serve` on `database_url` with data in `data_dir`, quick
    /// test timers and diagnostics on, plus `env` (`MLQ_*` settings), and
    /// waits until it answers.
    pub async fn start(database_url: &str, data_dir: &Path, env: &[(&str, String)]) -> Self {
        let port = free_port();
        std::fs::create_dir_all(data_dir).unwrap();
        let log = data_dir.join(format!("mlq-{port}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_mlq"));
        command
            .arg("serve")
            .env("MLQ_DATABASE_URL", database_url)
            .env("MLQ_BIND", format!("127.0.0.1:{port}"))
            .env("MLQ_DATA_DIR", data_dir)
            .env("MLQ_DIAGNOSTICS", "true")
            .env("MLQ_WEB_DIR", data_dir.join("no-dashboard"))
            .env("MLQ_WORKERS", "2")
            .env("MLQ_TORCH_THREADS", "1")
            .env("MLQ_HTTP_WORKERS", "1")
            .env("MLQ_POLL", "200ms")
            .env("MLQ_RESCUE_EVERY", "200ms")
            .env("MLQ_RETRY_BASE", "50ms")
            .env("MLQ_PROGRESS_EVERY", "50ms")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(out);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("mlq starts");
        let mut process = Self {
            api: Api::new(format!("http://127.0.0.1:{port}")),
            child,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "mlq did not start: {}",
                process.log_text()
            );
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
        // Every process of a test calls as the same user, `alice`.
        let token = crate::helpers::token_for(database_url, "alice").await;
        process.api = Api::with_token(process.api.address.clone(), &token);
        process
    }

    /// Whether the process is still running.
    pub fn child_alive(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// kill -9, and waits for the process to be gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn sigterm(&self) {
        // SAFETY: a plain syscall on a child we own.
        unsafe {
            libc_kill(self.pid(), 15);
        }
    }

    /// Waits for the process to exit by itself.
    pub async fn exited(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "mlq did not exit in {within:?}: {}",
                self.log_text()
            );
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Resets the kernel's record of the process's peak memory.
    pub fn reset_peak(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").unwrap();
    }

    /// (resident, peak resident since the last reset), in bytes.
    pub fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|kb| kb.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for MlqProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}
