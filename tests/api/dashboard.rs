//! The dashboard in a real browser: `web/e2e/dashboard.mjs` drives Debian's
//! chromium through playwright-core against this app (upload and train
//! with live progress and charts, predict and download, a cut WebSocket
//! recovering, uploading a TorchScript model and predicting on a region
//! drawn with the mouse), after logging in with a one-time code; the
//! session cookie's flags, CSRF refusal, minting a token, logging out and
//! back in with it. Screenshots land in `web/e2e-results/`.
//!
//! `make test` builds the dashboard and installs chromium first; missing
//! either fails this test rather than skipping it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use actix_web::http::Method;

use crate::helpers::spawn_app_with;

#[actix_web::test]
async fn dashboard_scenarios_pass_in_a_real_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let web = root.join("web");
    let dist = web.join("dist");
    assert!(
        dist.join("index.html").is_file(),
        "{} has no build of the dashboard; `make test` builds it (npm ci && npm run build in web/)",
        dist.display()
    );
    assert!(
        web.join("node_modules/playwright-core").is_dir(),
        "web/node_modules lacks playwright-core; `make test` installs it (npm ci in web/)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).is_file(),
        "{chromium} is missing; `make test` installs Debian's chromium (apt-get install chromium)"
    );

    let app = spawn_app_with(|s| {
        s.web_dir = dist;
        s.progress_every = Duration::from_millis(100);
    })
    .await;
    // The scenarios log in as alice with a one-time login code, as the
    // first run's link does.
    let code = {
        let client = app.db.get().await.unwrap();
        let alice: uuid::Uuid = client
            .query_one("SELECT id FROM users WHERE name = 'alice'", &[])
            .await
            .unwrap()
            .get(0);
        mlq::auth::issue(&client, alice, mlq::db::users::Kind::Login, "e2e", None)
            .await
            .unwrap()
            .1
    };
    let results = web.join("e2e-results");
    let base = app.url("");
    // A TorchScript model and an image for the upload-and-region scenario.
    let fixtures = tempfile::tempdir().unwrap();
    let model = fixtures.path().join("colours.pt");
    std::fs::write(&model, crate::fixtures::colour_model(16)).unwrap();
    let image = fixtures.path().join("split.png");
    let split = crate::fixtures::png(40, 20, |x, _| {
        if x < 20 {
            crate::fixtures::RED
        } else {
            crate::fixtures::BLUE
        }
    });
    std::fs::write(&image, split).unwrap();
    // The browser runs on its own thread: this test's runtime also drives
    // the app's dispatcher, which must keep running meanwhile.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let out = Command::new("node")
            .arg("e2e/dashboard.mjs")
            .arg(&base)
            .arg(&results)
            .env("CHROMIUM", chromium)
            .env("MODEL_FIXTURE", &model)
            .env("LOGIN_CODE", &code)
            .env("MLQ_TOKEN", app.api.token.clone().unwrap())
            .env("IMAGE_FIXTURE", &image)
            .current_dir(&web)
            .output();
        let _ = tx.send(out);
    });
    let out = actix_web::rt::time::timeout(Duration::from_secs(300), rx)
        .await
        .expect("the browser scenarios finish within 5 minutes")
        .expect("the runner thread reports")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "dashboard scenarios failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("all dashboard scenarios passed"),
        "{stdout}"
    );
}

/// With the dashboard mounted at `/`, the API's own answers still hold
/// for paths it serves: a probe's HEAD is the probe's, not the page; a
/// method a path does not take is 405, not a page or a plain-text error.
#[actix_web::test]
async fn the_dashboard_does_not_answer_for_the_api() {
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("web/dist");
    assert!(
        dist.join("index.html").is_file(),
        "{} has no build of the dashboard; `make test` builds it",
        dist.display()
    );
    let app = spawn_app_with(|s| s.web_dir = dist).await;
    let head = app.client.head(app.url("/readyz")).send().await.unwrap();
    assert!(head.status().is_success() || head.status() == 503);
    assert_eq!(
        head.headers().get("content-type").unwrap(),
        "application/json",
        "the probe answered, not index.html"
    );
    for (method, path, allow) in [
        (Method::POST, "/healthz", "GET, HEAD"),
        (Method::DELETE, "/readyz", "GET, HEAD"),
        (Method::PUT, "/api/v1/tasks", "GET, HEAD, POST"),
    ] {
        let mut res = app
            .client
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 405, "{method} {path}");
        assert_eq!(
            res.headers().get("allow").unwrap(),
            allow,
            "{method} {path}"
        );
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    }
    // Pages are still pages, and other writes still 404.
    let (status, headers, _) = app.get_bytes("/tasks/whatever").await;
    assert_eq!(status, 200);
    assert!(headers
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let res = app
        .client
        .post(app.url("/no-such-page"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}
