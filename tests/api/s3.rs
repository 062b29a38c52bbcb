//! A real S3-protocol server for the tests: s3s-fs over a temporary
//! directory, on a free port, with an access key and secret. `make test`
//! installs it. A test that needs it fails when it cannot start: never a
//! silent skip.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mlq::config::{Settings, StorageKind};
use mlq::storage::S3Config;

pub const ACCESS_KEY: &str = "mlq-test-access";
pub const SECRET_KEY: &str = "mlq-test-secret-key";

pub struct S3Server {
    child: Child,
    pub endpoint: String,
    pub root: tempfile::TempDir,
}

impl S3Server {
    pub fn start() -> Self {
        let root = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let binary = std::env::var("S3S_FS").unwrap_or_else(|_| "s3s-fs".into());
        let child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {binary} (install it with `make test` or `cargo install s3s-fs --version =0.14.1 --features binary --locked`): {e}")
            });
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not start listening on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            root,
        }
    }

    /// Settings for a bucket of this server (created on first use).
    pub fn config(&self, bucket: &str) -> S3Config {
        S3Config {
            endpoint: Some(self.endpoint.clone()),
            region: "us-east-1".into(),
            bucket: bucket.into(),
            path_style: true,
            access_key: Some(ACCESS_KEY.into()),
            secret_key: Some(SECRET_KEY.into()),
            create_bucket: true,
            part_size: 5 << 20,
            parts_in_flight: 2,
        }
    }

    /// Points an app's settings at a bucket of this server.
    pub fn configure(&self, settings: &mut Settings, bucket: &str) {
        settings.storage = StorageKind::S3;
        settings.s3_endpoint = Some(self.endpoint.clone());
        settings.s3_bucket = bucket.into();
        settings.s3_access_key = Some(ACCESS_KEY.into());
        settings.s3_secret_key = Some(SECRET_KEY.into());
        settings.s3_create_bucket = true;
        settings.s3_part_size = 5 << 20;
    }

    /// Every file the server keeps on disk, completed objects and
    /// in-progress multipart uploads alike.
    pub fn files(&self) -> Vec<std::path::PathBuf> {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
        let mut out = Vec::new();
        walk(self.root.path(), &mut out);
        out
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
