//! The OpenAPI document: it lists exactly the routes the app serves, and
//! the app answers as it says (schemathesis, against a running app).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use actix_web::http::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{blobs_csv, multipart, spawn_app, spawn_app_with, Api};
use mlq::http::routes::table;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

async fn document(api: &Api) -> Value {
    let (status, doc) = api.get("/api/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    doc
}

#[actix_web::test]
async fn the_document_lists_every_route_the_app_serves_and_no_other() {
    let app = spawn_app().await;
    let alice = app.user("alice", false).await;
    let doc = document(&alice).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let documented: BTreeSet<String> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(move |m| format!("{} {path}", m.to_uppercase()))
        })
        .collect();
    let served: BTreeSet<String> = table().iter().map(|r| r.to_string()).collect();
    assert_eq!(
        documented.difference(&served).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "documented but not served"
    );
    assert_eq!(
        served.difference(&documented).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "served but not documented"
    );

    // Every operation says what it answers, and every error is the one
    // error shape; everything it refers to is in the document.
    let text = doc.to_string();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS.iter().filter(|m| item.get(**m).is_some()) {
            let op = &item[*method];
            let label = format!("{method} {path}");
            assert!(op["summary"].is_string(), "{label} has no summary");
            let responses = op["responses"].as_object().expect("responses");
            assert!(
                responses.keys().any(|s| s.starts_with('2') || s == "101"),
                "{label} documents no success"
            );
            assert!(responses.contains_key("503"), "{label}: 503");
            let public = op["security"]
                .as_array()
                .is_some_and(|ways| ways.contains(&json!({})));
            assert_eq!(
                responses.contains_key("401"),
                !public || path == "/api/v1/session",
                "{label}: 401"
            );
        }
    }
    for reference in text.split("\"$ref\":\"#/components/").skip(1) {
        let name = reference.split('"').next().unwrap();
        let (kind, name) = name.split_once('/').unwrap();
        assert!(
            doc["components"][kind][name].is_object(),
            "{kind}/{name} is referred to but not defined"
        );
    }
}

#[actix_web::test]
async fn the_document_needs_a_credential_like_the_rest_of_the_api() {
    let app = spawn_app().await;
    let nobody = Api::new(app.address.clone());
    let (status, body) = nobody.get("/api/v1/openapi.json").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

#[actix_web::test]
async fn a_method_a_route_does_not_take_is_405_naming_those_it_does() {
    let app = spawn_app().await;
    let alice = app.user("alice", false).await;
    let mut res = alice
        .client
        .put(alice.url("/api/v1/tasks"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(res.headers().get("allow").unwrap(), "GET, HEAD, POST");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    // Path parameters count: this is a task's URL, whatever the id.
    let res = alice
        .client
        .patch(alice.url("/api/v1/tasks/not-even-a-uuid"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(res.headers().get("allow").unwrap(), "DELETE, GET, HEAD");
    let res = alice
        .client
        .post(alice.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = alice.get("/api/v1/no-such-thing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[actix_web::test]
async fn model_uploads_are_forms_only() {
    let app = spawn_app().await;
    let alice = app.user("alice", false).await;
    let (status, body) = alice
        .post_json("/api/v1/models", &json!({"command": "train", "params": {}}))
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("send multipart/form-data"),
        "{body}"
    );
    // The form itself is still read.
    let (content_type, form) = multipart(&[("spec", "[]")], &[]);
    let (status, body) = alice.post_raw("/api/v1/models", &content_type, form).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}

/// Where `make test` installs schemathesis.
fn schemathesis() -> PathBuf {
    let path = std::env::var_os("MLQ_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("BUILD_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/mlq")
                });
            cache.join("schemathesis/bin/schemathesis")
        });
    assert!(
        path.is_file(),
        "schemathesis is not installed at {}: `make schemathesis` installs it (`make test` does)",
        path.display()
    );
    path
}

/// schemathesis generates requests from the document (valid and not) for
/// every operation, and checks each answer: no 5xx, a status, content type,
/// headers and body the document allows, a 4xx for what the document
/// rules out, 401 without the token, 405 with `Allow` for other methods.
/// Not checked: that every request the document allows is accepted (a
/// command's params depend on the command, and files on their contents,
/// which a document cannot say). `MLQ_SCHEMATHESIS_EXAMPLES` sets the
/// examples per operation (`make api-fuzz` runs many).
#[actix_web::test]
async fn schemathesis_finds_no_server_error_and_no_answer_the_document_does_not_allow() {
    let program = schemathesis();
    let examples = std::env::var("MLQ_SCHEMATHESIS_EXAMPLES").ok();
    // The short run passes a rate limit at times, so 429s are checked too;
    // the long one goes without, or the limit would answer most of it.
    let rate = if examples.is_some() { 0 } else { 50 };
    let app = spawn_app_with(|s| s.quota_requests_per_second = rate).await;
    let alice = app.user("alice", false).await;
    let doc = document(&alice).await;
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("openapi.json");
    std::fs::write(&schema, doc.to_string()).unwrap();
    // Real things of alice's for the routes that name one, so those
    // answers are checked too, not only their 404s: a trained task (with
    // inputs, artifacts, a log and a model) to read, and others to delete.
    let csv = blobs_csv(200, 7);
    let files: &[(&str, &[u8])] = &[("blobs.csv", &csv)];
    let params = json!({"target": "label", "epochs": 1});
    let read = alice.submit_accepted("train", params.clone(), files).await;
    let delete = alice.submit_accepted("train", params, files).await;
    let read = alice.finished(read, Duration::from_secs(120)).await;
    assert_eq!(read["status"], "succeeded", "{read}");
    let artifact = read["artifacts"][0]["name"].as_str().unwrap().to_owned();
    let delete = alice.finished(delete, Duration::from_secs(120)).await;
    assert_eq!(delete["status"], "succeeded", "{delete}");
    let (_, models) = alice.get("/api/v1/models").await;
    let model_of = |task: &Value| {
        models["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["task_id"] == task["id"])
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .expect("the task's model")
    };
    let (status, spare) = alice
        .post_json("/api/v1/tokens", &json!({"name": "to revoke"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{spare}");
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[operations]]
include-path-regex = '^/api/v1/tasks/\{{id\}}'
include-method = "GET"
parameters = {{ "path.id" = "{read_id}", "path.name" = "{artifact}", "path.n" = 0 }}

[[operations]]
include-path-regex = '^/api/v1/tasks/\{{id\}}'
include-method = "POST"
parameters = {{ "path.id" = "{read_id}" }}

[[operations]]
include-path = "/api/v1/tasks/{{id}}"
include-method = "DELETE"
parameters = {{ "path.id" = "{delete_id}" }}

[[operations]]
include-path-regex = '^/api/v1/models/\{{model\}}'
include-method = "GET"
parameters = {{ "path.model" = "{read_model}" }}

[[operations]]
include-path = "/api/v1/models/{{model}}"
include-method = "DELETE"
parameters = {{ "path.model" = "{delete_model}" }}

[[operations]]
include-path = "/api/v1/tokens/{{id}}"
parameters = {{ "path.id" = "{spare_id}" }}
"#,
            read_id = read["id"].as_str().unwrap(),
            delete_id = delete["id"].as_str().unwrap(),
            read_model = model_of(&read),
            delete_model = model_of(&delete),
            spare_id = spare["id"].as_str().unwrap(),
        ),
    )
    .unwrap();
    let long = examples.is_some();
    let examples = examples.unwrap_or_else(|| "25".into());
    let mut command = Command::new(program);
    command
        .current_dir(dir.path())
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(&schema)
        .args(["--url", &app.address])
        .args([
            "--header",
            &format!("Authorization: Bearer {}", alice.token.as_deref().unwrap()),
        ])
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--max-examples", &examples])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--workers", "2", "--request-timeout", "30"])
        .args(["--suppress-health-check", "all"])
        .args(["--generation-database", "none"])
        .arg("--no-color")
        .env("SCHEMATHESIS_TELEMETRY", "false");
    if !long {
        // The short run in `make test` is the same every time.
        command.args(["--seed", "20261203"]);
    }
    let output = actix_web::rt::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}");
    assert!(
        output.status.success(),
        "schemathesis failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
}
