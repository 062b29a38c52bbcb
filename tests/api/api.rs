//! The REST surface: health, submission, reading, listing, cancelling.

use std::time::Duration;

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{multipart, spawn_app};

#[actix_web::test]
async fn health_and_readiness_report_the_pool() {
    let app = spawn_app().await;
    let (status, body) = app.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    let (status, body) = app.admin.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["database"], "ok");
    assert_eq!(body["workers"]["configured"], 1);
    assert_eq!(body["workers"]["alive"], 1);
    assert_eq!(body["workers"]["detail"][0]["state"], "idle");
}

#[actix_web::test]
async fn a_json_task_is_accepted_run_and_readable() {
    let app = spawn_app().await;
    let (status, body) = app
        .post_json(
            "/api/v1/tasks",
            &json!({"command": "sleep", "params": {"ms": 10}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "queued");
    assert_eq!(body["params"]["ms"], 10);
    assert_eq!(body["attempts"], 0);
    let id: uuid::Uuid = body["id"].as_str().unwrap().parse().unwrap();

    let task = app.finished(id, Duration::from_secs(20)).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    assert_eq!(task["attempts"], 1);
    assert_eq!(task["result"]["slept_ms"], 10);
    assert_eq!(task["progress"]["fraction"], 1.0);
    assert!(task["error"].is_null());
    for field in ["created_at", "started_at", "finished_at"] {
        assert!(task[field].is_string(), "{field} missing: {task:#}");
    }
}

#[actix_web::test]
async fn accepted_tasks_carry_a_location_header() {
    let app = spawn_app().await;
    let res = app
        .client
        .post(app.url("/api/v1/tasks"))
        .send_json(&json!({"command": "sleep"}))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let location = res
        .headers()
        .get("location")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(location.starts_with("/api/v1/tasks/"), "{location}");
    let (status, body) = app.get(&location).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["command"], "sleep");
}

#[actix_web::test]
async fn uploaded_files_are_recorded_with_size_and_sha256() {
    let app = spawn_app().await;
    let (status, body) = app
        .submit_files(
            "sleep",
            json!({}),
            &[("hello.txt", b"hello world"), ("two.csv", b"a\n1\n")],
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let inputs = body["inputs"].as_array().unwrap();
    assert_eq!(inputs.len(), 2);
    assert_eq!(inputs[0]["name"], "hello.txt");
    assert_eq!(inputs[0]["size"], 11);
    assert_eq!(
        inputs[0]["sha256"],
        "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
    );
    assert_eq!(inputs[0]["content_type"], "text/csv");
    assert_eq!(inputs[1]["name"], "two.csv");
    let id = body["id"].as_str().unwrap().parse().unwrap();
    let task = app.finished(id, Duration::from_secs(20)).await;
    assert_eq!(
        task["result"]["inputs"], 2,
        "the job saw both files: {task:#}"
    );
}

#[actix_web::test]
async fn listing_is_newest_first_filtered_and_paginated() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(app.submit("sleep", json!({})).await);
    }
    for id in &ids {
        app.finished(*id, Duration::from_secs(20)).await;
    }
    let (status, page) = app.get("/api/v1/tasks?limit=2").await;
    assert_eq!(status, StatusCode::OK);
    let listed: Vec<String> = page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, vec![ids[4].to_string(), ids[3].to_string()]);
    let before = page["next_before"].as_str().unwrap();
    let (_, next) = app
        .get(&format!("/api/v1/tasks?limit=2&before={before}"))
        .await;
    assert_eq!(next["tasks"][0]["id"], ids[2].to_string());

    let (_, succeeded) = app.get("/api/v1/tasks?status=succeeded&limit=200").await;
    assert_eq!(succeeded["tasks"].as_array().unwrap().len(), 5);
    assert!(succeeded["next_before"].is_null());
    let (_, failed) = app.get("/api/v1/tasks?status=failed").await;
    assert!(failed["tasks"].as_array().unwrap().is_empty());

    let (status, body) = app.get("/api/v1/tasks?status=bogus").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_status");
    let (status, body) = app.get("/api/v1/tasks?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_limit");
}

#[actix_web::test]
async fn queued_and_running_tasks_can_be_cancelled() {
    let app = spawn_app().await;
    // The one worker is busy with a long task, so the second stays queued.
    let running = app
        .submit("sleep", json!({"ms": 60000, "steps": 600}))
        .await;
    app.wait_for(running, Duration::from_secs(20), |t| {
        t["status"] == "running"
    })
    .await;
    let queued = app.submit("sleep", json!({})).await;

    let (status, body) = app
        .post_json(&format!("/api/v1/tasks/{queued}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "cancelled");
    assert_eq!(body["error"]["code"], "cancelled");

    let (status, body) = app
        .post_json(&format!("/api/v1/tasks/{running}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["cancel_requested"], true);
    let task = app
        .wait_for(running, Duration::from_secs(5), |t| {
            t["status"] == "cancelled"
        })
        .await;
    assert!(task["finished_at"].is_string());

    let (status, body) = app
        .post_json(&format!("/api/v1/tasks/{running}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "task_finished");

    // The cancelled queued task never ran.
    let task = app.task(queued).await;
    assert_eq!(task["attempts"], 0);
    assert!(task["started_at"].is_null());
}

#[actix_web::test]
async fn unknown_things_are_404_with_json() {
    let app = spawn_app().await;
    let missing = uuid::Uuid::new_v4();
    for path in [
        format!("/api/v1/tasks/{missing}"),
        format!("/api/v1/models/{missing}"),
        format!("/api/v1/tasks/{missing}/artifacts/model.json"),
        "/api/v1/nothing-here".to_owned(),
    ] {
        let (status, body) = app.get(&path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body["error"]["code"], "not_found", "{path}");
    }
    let (status, body) = app
        .post_json(&format!("/api/v1/tasks/{missing}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    let (status, body) = app.get("/api/v1/tasks/not-a-uuid").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_path");
}

#[actix_web::test]
async fn multipart_without_a_command_is_rejected() {
    let app = spawn_app().await;
    let (content_type, body) = multipart(&[("params", "{}")], &[("a.csv", b"x\n1\n")]);
    let (status, body) = app.post_raw("/api/v1/tasks", &content_type, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "missing_command");
}

#[actix_web::test]
async fn deleting_a_task_removes_its_files_and_model() {
    let app = spawn_app().await;
    let id = app
        .submit_accepted(
            "train",
            json!({"target": "label", "epochs": 2}),
            &[("b.csv", &crate::helpers::blobs_csv(100, 1))],
        )
        .await;
    let task = app.finished(id, Duration::from_secs(60)).await;
    assert_eq!(task["status"], "succeeded");
    let model = task["result"]["model_id"].as_str().unwrap().to_owned();
    let objects = app.settings.objects_dir();
    assert!(objects.join(format!("inputs/{id}/0")).exists());

    let res = app
        .client
        .delete(app.url(&format!("/api/v1/tasks/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let (status, _) = app.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.get(&format!("/api/v1/models/{model}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "its model went with it");
    assert!(
        !objects.join(format!("inputs/{id}")).exists(),
        "input deleted"
    );
    assert!(
        !objects.join(format!("artifacts/{id}")).exists(),
        "artifacts deleted"
    );

    let res = app
        .client
        .delete(app.url(&format!("/api/v1/tasks/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[actix_web::test]
async fn deleting_a_running_task_stops_it() {
    let app = spawn_app().await;
    let id = app
        .submit("sleep", json!({"ms": 60000, "steps": 600}))
        .await;
    app.wait_for(id, Duration::from_secs(20), |t| t["status"] == "running")
        .await;
    let res = app
        .client
        .delete(app.url(&format!("/api/v1/tasks/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    // The worker stops and takes the next task.
    let next = app.submit("sleep", json!({})).await;
    assert_eq!(
        app.finished(next, Duration::from_secs(10)).await["status"],
        "succeeded"
    );
}

#[actix_web::test]
async fn server_errors_name_a_request_id_and_keep_their_details_to_the_log() {
    let app = spawn_app().await;
    let id = app
        .submit_accepted(
            "train",
            json!({"target": "label", "epochs": 1}),
            &[("blobs.csv", &crate::helpers::blobs_csv(100, 1))],
        )
        .await;
    let task = app.finished(id, Duration::from_secs(60)).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    // The stored weights vanish behind mlq's back: a server-side fault.
    let artifacts = app
        .settings
        .objects_dir()
        .join("artifacts")
        .join(id.to_string());
    std::fs::remove_dir_all(&artifacts).unwrap();
    let mut res = app
        .client
        .get(app.url(&format!("/api/v1/tasks/{id}/artifacts/model.safetensors")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let header = res
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = res.json().await.unwrap();
    let error = &body["error"];
    assert_eq!(error["code"], "storage_error", "{body}");
    assert_eq!(error["request_id"], header.as_str(), "{body}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("request id"), "{message}");
    assert!(
        !message.contains("artifacts/") && !message.contains(&id.to_string()),
        "{message}"
    );
    // Every response names its request, errors or not.
    let res = app
        .client
        .get(app.url("/api/v1/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert!(res.headers().contains_key("x-request-id"));
    let res = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert!(res.headers().contains_key("x-request-id"));
}

#[actix_web::test]
async fn database_errors_are_told_apart_by_sqlstate_class() {
    use mlq::db::{is_statement_error, DbError};
    let app = spawn_app().await;
    let client = app.db.get().await.unwrap();
    // The statement is at fault: retrying cannot help.
    for bad in [
        "SELECT 1 / 0",                   // 22: data exception
        "SELECT nonsense FROM nowhere",   // 42: undefined table
        "SELECT repeat('x', 1100000000)", // 54: program limit
    ] {
        let e = client.simple_query(bad).await.unwrap_err();
        assert!(is_statement_error(&e), "{bad}: {e}");
        assert!(!DbError::Query(e).is_unavailable(), "{bad}");
    }
    // The server was busy or going away: worth another try, and a 503.
    client
        .batch_execute("SET statement_timeout = 50")
        .await
        .unwrap();
    let e = client.simple_query("SELECT pg_sleep(2)").await.unwrap_err();
    assert!(!is_statement_error(&e), "{e}");
    let e = DbError::Query(e);
    assert!(e.is_unavailable());
    assert_eq!(e.code(), "database_unavailable");
}

#[actix_web::test]
async fn commands_describe_themselves_and_their_schemas_are_enforced() {
    let app = crate::helpers::spawn_app_with(|s| {
        s.content_types = [("train".to_owned(), vec!["text/csv".to_owned()])].into();
    })
    .await;
    let (status, body) = app.get("/api/v1/commands").await;
    assert_eq!(status, StatusCode::OK);
    let commands = body["commands"].as_array().unwrap();
    let names: Vec<&str> = commands
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["predict", "sleep", "train"],
        "internal commands are not listed"
    );
    let train = &commands[2];
    assert_eq!(train["files"], json!({"min": 1, "max": 1}));
    assert_eq!(
        train["content_types"],
        json!(["text/csv"]),
        "the deployment's override"
    );
    assert!(train["summary"].as_str().unwrap().len() > 10);
    let epochs = &train["params"]["properties"]["epochs"];
    assert_eq!(epochs["minimum"], 1, "{epochs}");
    assert_eq!(epochs["default"], 20, "{epochs}");
    let max = epochs["maximum"].as_u64().unwrap();
    // `target` is for CSV files only; a zip of images has none.
    assert_eq!(train["params"]["required"], Value::Null);
    assert_eq!(
        train["params"]["properties"]["target"]["x-mlq-input"],
        "csv"
    );
    assert!(train["params"]["properties"]["timeout"].is_object());
    let predict = &commands[0];
    assert!(predict["content_types"]
        .as_array()
        .unwrap()
        .contains(&json!("image/png")));

    // What the schema says is what submissions are held to.
    let csv = b"x,y\n1,a\n2,b\n";
    for (params, field) in [
        (json!({"target": "y", "epochs": max + 1}), "epochs"),
        (json!({"target": "y", "epochs": 0}), "epochs"),
        (json!({"target": "y", "learning_rate": 0}), "learning_rate"),
        (json!({"target": "y", "hidden": [8, 2000]}), "hidden[1]"),
        (
            json!({"target": "y", "validation_split": 0.9}),
            "validation_split",
        ),
        (json!({"target": "y", "name": "no spaces"}), "name"),
    ] {
        let (status, body) = app
            .submit_files("train", params.clone(), &[("d.csv", csv)])
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{params}: {body}");
        assert_eq!(body["error"]["field"], field, "{params}: {body}");
    }
    let (status, body) = app
        .submit_files(
            "train",
            json!({"target": "y", "epochs": max}),
            &[("d.csv", csv)],
        )
        .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "the maximum itself is allowed: {body}"
    );
}
