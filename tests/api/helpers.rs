//! Starting the real application against a fresh database per test, and
//! talking to it over HTTP.

use std::future::Future;
use std::sync::Once;
use std::time::{Duration, Instant};

use awc::http::StatusCode;
use deadpool_postgres::Pool;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use secrecy::SecretString;
use serde_json::{json, Value};
use uuid::Uuid;

use mlq::config::Settings;
use mlq::db;
use mlq::startup::Application;

/// Where test databases are created. Each test gets its own.
pub fn server_url() -> String {
    std::env::var("MLQ_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

static TRACING: Once = Once::new();

pub struct TestApp {
    /// As the user `alice`, who is not an admin.
    pub api: Api,
    /// As the admin `root`.
    pub admin: Api,
    pub settings: Settings,
    pub db: Pool,
    pub handle: actix_web::dev::ServerHandle,
    _data: tempfile::TempDir,
}

/// Talking to one mlq over HTTP, in-process or not, as one user.
#[derive(Clone)]
pub struct Api {
    pub address: String,
    pub client: awc::Client,
    /// The API token every request sends, if any.
    pub token: Option<String>,
}

impl std::ops::Deref for TestApp {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

/// Settings for a test: quick timers, diagnostics on, one ML worker.
pub fn test_settings(database: &str) -> Settings {
    Settings {
        database_url: SecretString::from(format!("{}/{database}", server_url())),
        database_pool_size: 8,
        bind: "127.0.0.1:0".into(),
        http_workers: Some(1),
        workers: Some(1),
        torch_threads: Some(1),
        heartbeat: Duration::from_millis(300),
        poll: Duration::from_millis(200),
        rescue_every: Duration::from_millis(200),
        retry_base: Duration::from_millis(50),
        progress_every: Duration::from_millis(50),
        diagnostics: true,
        // Tests make their own users; the first-run admin has its own test.
        first_run_login: false,
        // Tests poll as fast as they like; the rate limits have their own test.
        quota_requests_per_second: 0,
        auth_failures_per_second: 0,
        // API tests see the API alone, whether or not web/dist was built.
        web_dir: std::env::temp_dir().join("mlq-no-dashboard"),
        ..Settings::default()
    }
}

pub fn new_database_name() -> String {
    format!("mlq_test_{}", Uuid::new_v4().simple())
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_on(&new_database_name(), configure).await
}

/// Starts an app on `database`, which other apps in the test may share.
pub async fn spawn_app_on(database: &str, configure: impl FnOnce(&mut Settings)) -> TestApp {
    TRACING.call_once(|| {
        if std::env::var("TEST_LOG").is_ok() {
            mlq::telemetry::init("info");
        }
    });
    let data = tempfile::tempdir().expect("temp dir");
    let mut settings = test_settings(database);
    settings.data_dir = data.path().to_owned();
    configure(&mut settings);
    let app = Application::build(settings.clone())
        .await
        .expect("application starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    actix_web::rt::spawn(app.run_until_stopped());
    let db = db::connect(&db::PgConfig::from_settings(&settings).unwrap(), 8)
        .await
        .expect("test pool");
    let alice = create_user(&db, "alice", false).await;
    let root = create_user(&db, "root", true).await;
    TestApp {
        api: Api::with_token(address.clone(), &alice),
        admin: Api::with_token(address, &root),
        settings,
        db,
        handle,
        _data: data,
    }
}

/// A multipart body: text fields, then files as `(filename, bytes)`.
pub fn multipart(fields: &[(&str, &str)], files: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = format!("mlq-test-{}", Uuid::new_v4().simple());
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    for (filename, bytes) in files {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; \
                 filename=\"{filename}\"\r\nContent-Type: text/csv\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A new API token for the user `name` of the app's database, creating
/// the user if it is not there yet (apps of one test share a database).
pub async fn create_user(db: &Pool, name: &str, admin: bool) -> String {
    let client = db.get().await.expect("a connection");
    if let Some((_, token)) = mlq::auth::create_user(&client, name, admin)
        .await
        .expect("user created")
    {
        return token;
    }
    let user: Uuid = client
        .query_one("SELECT id FROM users WHERE name = $1", &[&name])
        .await
        .unwrap()
        .get(0);
    let (_, token) = mlq::auth::issue(&client, user, mlq::db::users::Kind::Token, "test", None)
        .await
        .unwrap();
    token
}

/// A new API token for the user `name` of the database at `url`, creating
/// the user (not an admin) if it is not there yet.
pub async fn token_for(url: &str, name: &str) -> String {
    let mut settings = test_settings("unused");
    settings.database_url = SecretString::from(url.to_owned());
    let pool = db::connect(&db::PgConfig::from_settings(&settings).unwrap(), 1)
        .await
        .expect("test pool");
    create_user(&pool, name, false).await
}

impl TestApp {
    /// A new user, and a client that calls as that user.
    pub async fn user(&self, name: &str, admin: bool) -> Api {
        Api::with_token(
            self.address.clone(),
            &create_user(&self.db, name, admin).await,
        )
    }
}

impl Api {
    /// Without credentials.
    pub fn new(address: String) -> Self {
        Self {
            address,
            client: awc::Client::builder()
                .timeout(Duration::from_secs(30))
                .finish(),
            token: None,
        }
    }

    /// Sending `token` with every request.
    pub fn with_token(address: String, token: &str) -> Self {
        Self {
            address,
            client: awc::Client::builder()
                .timeout(Duration::from_secs(30))
                .add_default_header(("authorization", format!("Bearer {token}")))
                .finish(),
            token: Some(token.to_owned()),
        }
    }

    /// The `Authorization` header line for hand-written requests ("" when
    /// there is no token).
    pub fn auth_line(&self) -> String {
        self.token
            .as_deref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let mut res = self.client.get(self.url(path)).send().await.expect("GET");
        let body = res.body().limit(64 << 20).await.expect("body");
        (
            res.status(),
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        )
    }

    pub async fn get_bytes(
        &self,
        path: &str,
    ) -> (StatusCode, awc::http::header::HeaderMap, Vec<u8>) {
        let mut res = self.client.get(self.url(path)).send().await.expect("GET");
        let body = res.body().limit(256 << 20).await.expect("body");
        (res.status(), res.headers().clone(), body.to_vec())
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let mut res = self
            .client
            .post(self.url(path))
            .send_json(body)
            .await
            .expect("POST");
        let body = res.body().limit(64 << 20).await.expect("body");
        (
            res.status(),
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        )
    }

    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let mut res = self
            .client
            .post(self.url(path))
            .insert_header(("content-type", content_type))
            .send_body(body)
            .await
            .expect("POST");
        let body = res.body().limit(64 << 20).await.expect("body");
        (
            res.status(),
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        )
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        let mut res = self
            .client
            .delete(self.url(path))
            .send()
            .await
            .expect("DELETE");
        let body = res.body().limit(1 << 20).await.expect("body");
        (
            res.status(),
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        )
    }

    /// Submits a JSON task and expects it accepted.
    pub async fn submit(&self, command: &str, params: Value) -> Uuid {
        let (status, body) = self
            .post_json(
                "/api/v1/tasks",
                &json!({ "command": command, "params": params }),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body["id"].as_str().unwrap().parse().unwrap()
    }

    /// Submits a task with files as multipart.
    pub async fn submit_files(
        &self,
        command: &str,
        params: Value,
        files: &[(&str, &[u8])],
    ) -> (StatusCode, Value) {
        let params = params.to_string();
        let (content_type, body) = multipart(&[("command", command), ("params", &params)], files);
        self.post_raw("/api/v1/tasks", &content_type, body).await
    }

    /// Submits a task with files and expects it accepted.
    pub async fn submit_accepted(
        &self,
        command: &str,
        params: Value,
        files: &[(&str, &[u8])],
    ) -> Uuid {
        let (status, body) = self.submit_files(command, params, files).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body["id"].as_str().unwrap().parse().unwrap()
    }

    pub async fn task(&self, id: Uuid) -> Value {
        let (status, body) = self.get(&format!("/api/v1/tasks/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Polls the task until `done` holds, failing the test after `within`.
    pub async fn wait_for(
        &self,
        id: Uuid,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let task = self.task(id).await;
            if done(&task) {
                return task;
            }
            assert!(
                Instant::now() < deadline,
                "task did not reach the state in {within:?}: {task:#}"
            );
            actix_web::rt::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the task has finished, whatever the outcome.
    pub async fn finished(&self, id: Uuid, within: Duration) -> Value {
        self.wait_for(id, within, |t| {
            matches!(
                t["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            )
        })
        .await
    }

    pub async fn ready_workers(&self) -> u64 {
        let (_, body) = self.get("/readyz").await;
        body["workers"]["alive"].as_u64().unwrap()
    }
}

impl TestApp {
    /// Stored objects in the filesystem store, temporary files aside.
    pub fn stored_objects(&self) -> usize {
        stored_objects(&self.settings.objects_dir())
    }
}

/// Objects in a filesystem store at `objects`, temporary files aside.
pub fn stored_objects(objects: &std::path::Path) -> usize {
    fn walk(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| {
                if e.path().is_dir() {
                    walk(&e.path())
                } else {
                    1
                }
            })
            .sum()
    }
    walk(objects) - walk(&objects.join(".tmp"))
}

/// Retries `f` until it returns `Some`, failing after `within`.
pub async fn eventually<T, F: Future<Output = Option<T>>>(
    within: Duration,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {within:?}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A standard normal sample (Box–Muller), to need no extra crate.
fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Three well-separated Gaussian blobs with labels `a`, `b`, `c`, plus a
/// noise column of no use.
pub fn blobs_csv(rows: usize, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let centers = [(0.0, 0.0), (5.0, 5.0), (0.0, 6.0)];
    let mut out = String::from("x1,x2,shade,label\n");
    for _ in 0..rows {
        let class = rng.random_range(0..3);
        let (cx, cy) = centers[class];
        let shade = ["light", "dark"][rng.random_range(0..2)];
        out.push_str(&format!(
            "{:.4},{:.4},{shade},{}\n",
            cx + normal(&mut rng),
            cy + normal(&mut rng),
            ["a", "b", "c"][class]
        ));
    }
    out.into_bytes()
}

/// `y = 3·x1 − 2·x2 + 0.5·x3 + small noise`; returns the CSV and y's variance.
pub fn linear_csv(rows: usize, seed: u64) -> (Vec<u8>, f64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = String::from("x1,x2,x3,y\n");
    let mut ys = Vec::with_capacity(rows);
    for _ in 0..rows {
        let (x1, x2, x3) = (normal(&mut rng), normal(&mut rng), normal(&mut rng));
        let y = 3.0 * x1 - 2.0 * x2 + 0.5 * x3 + 0.1 * normal(&mut rng);
        ys.push(y);
        out.push_str(&format!("{x1:.5},{x2:.5},{x3:.5},{y:.5}\n"));
    }
    let mean = ys.iter().sum::<f64>() / rows as f64;
    let var = ys.iter().map(|y| (y - mean).powi(2)).sum::<f64>() / rows as f64;
    (out.into_bytes(), var)
}

/// A multipart body with one file part carrying the given content type and
/// extra part headers.
pub fn multipart_with_headers(
    command: &str,
    file: &[u8],
    content_type: &str,
    headers: &[(&str, &str)],
) -> (String, Vec<u8>) {
    let boundary = format!("mlq-test-{}", Uuid::new_v4().simple());
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"command\"\r\n\r\n{command}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.bin\"\r\n\
         Content-Type: {content_type}\r\n"
    )
    .into_bytes();
    for (name, value) in headers {
        body.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    body.extend_from_slice(b"\r\n");
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}
