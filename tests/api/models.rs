//! The model registry with users' own TorchScript models: upload,
//! validation, names and versions, predict on images with a region, and
//! deletion while in use.

use std::time::Duration;

use actix_web::http::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::fixtures::{self, BLUE, GREEN, RED};
use crate::helpers::{multipart, spawn_app, Api};

const WITHIN: Duration = Duration::from_secs(60);

fn colour_spec(name: &str) -> Value {
    json!({
        "name": name,
        "input": "image",
        "width": 16,
        "height": 16,
        "labels": ["red", "green", "blue"],
    })
}

/// Uploads a model; the response's status and body.
pub async fn upload(app: &Api, spec: &Value, model: &[u8]) -> (StatusCode, Value) {
    let spec = spec.to_string();
    let (content_type, body) = multipart(&[("spec", &spec)], &[("model.pt", model)]);
    app.post_raw("/api/v1/models", &content_type, body).await
}

/// Waits until the model's validation has settled; the model as then.
pub async fn settled(app: &Api, id: &str) -> Value {
    crate::helpers::eventually(WITHIN, || async {
        let (status, model) = app.get(&format!("/api/v1/models/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{model}");
        (model["status"] != "validating").then_some(model)
    })
    .await
}

/// Uploads a model and waits for it to be ready.
pub async fn ready_model(app: &Api, spec: &Value, model: &[u8]) -> Value {
    let (status, body) = upload(app, spec, model).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let model = settled(app, body["id"].as_str().unwrap()).await;
    assert_eq!(model["status"], "ready", "{model:#}");
    model
}

#[actix_web::test]
async fn an_uploaded_model_is_validated_then_predicts_by_name_and_version() {
    let app = spawn_app().await;
    let bytes = fixtures::colour_model(16);
    let (status, body) = upload(&app, &colour_spec("colours"), &bytes).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "validating");
    assert_eq!(body["reference"], "colours@1");
    let model = settled(&app, body["id"].as_str().unwrap()).await;
    assert_eq!(model["status"], "ready", "{model:#}");
    assert_eq!(model["kind"], "classification");
    assert_eq!(model["metrics"]["outputs"], 3);
    assert_eq!(model["spec"]["channels"], 3, "defaults are filled in");
    assert_eq!(model["size"], bytes.len());

    // The file downloads as uploaded.
    let (status, headers, downloaded) = app
        .get_bytes(&format!(
            "/api/v1/models/{}/download",
            model["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(downloaded, bytes);
    assert!(headers
        .get("content-disposition")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("colours-v1.pt"));

    // A second upload of the name is version 2; the name alone means it.
    let v2 = ready_model(&app, &colour_spec("colours"), &bytes).await;
    assert_eq!(v2["version"], 2);
    let (_, by_name) = app.get("/api/v1/models/colours").await;
    assert_eq!(by_name["id"], v2["id"]);
    let (_, v1) = app.get("/api/v1/models/colours@1").await;
    assert_eq!(v1["id"], model["id"]);
    let (_, list) = app.get("/api/v1/models?name=colours").await;
    assert_eq!(list["models"].as_array().unwrap().len(), 2);

    // Predict by name@version on a red, a green and a blue image.
    let images = [
        ("red.png", fixtures::png(20, 20, |_, _| RED)),
        (
            "green.jpg",
            fixtures::encoded(
                &fixtures::png(20, 20, |_, _| GREEN),
                image::ImageFormat::Jpeg,
            ),
        ),
        (
            "blue.webp",
            fixtures::encoded(
                &fixtures::png(20, 20, |_, _| BLUE),
                image::ImageFormat::WebP,
            ),
        ),
    ];
    let files: Vec<(&str, &[u8])> = images.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    let id = app
        .submit_accepted("predict", json!({"model": "colours@1", "top_k": 2}), &files)
        .await;
    let task = app.finished(id, WITHIN).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    // Pinned: the stored params name the model by id.
    assert_eq!(task["params"]["model"], model["id"]);
    let predictions = task["result"]["predictions"].as_array().unwrap();
    let tops: Vec<&str> = predictions
        .iter()
        .map(|p| p["top"][0]["label"].as_str().unwrap())
        .collect();
    assert_eq!(tops, ["red", "green", "blue"], "{predictions:#?}");
    assert_eq!(predictions[0]["top"].as_array().unwrap().len(), 2);
    let p = predictions[0]["top"][0]["probability"].as_f64().unwrap();
    assert!(p > 0.9 && p <= 1.0, "{p}");
    let artifacts: Vec<&str> = task["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(artifacts, ["predictions.csv", "predictions.json"]);
    let (_, _, json) = app
        .get_bytes(&format!("/api/v1/tasks/{id}/artifacts/predictions.json"))
        .await;
    let all: Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 3);

    // The worker kept the model loaded: a second predict is a cache hit,
    // and /readyz says so.
    let id = app
        .submit_accepted("predict", json!({"model": "colours@1"}), &files[..1])
        .await;
    assert_eq!(app.finished(id, WITHIN).await["status"], "succeeded");
    let (_, ready) = app.admin.get("/readyz").await;
    let cache = &ready["workers"]["detail"][0]["cache"];
    assert!(cache["hits"].as_u64().unwrap() >= 1, "{ready:#}");
    assert!(cache["hit_rate"].as_f64().unwrap() > 0.0, "{ready:#}");
    assert!(cache["models"].as_u64().unwrap() >= 1, "{ready:#}");
}

#[actix_web::test]
async fn a_region_decides_what_is_classified_and_bad_files_fail_alone() {
    let app = spawn_app().await;
    ready_model(&app, &colour_spec("regions"), &fixtures::colour_model(16)).await;
    // Left half red, right half blue.
    let split = fixtures::png(40, 20, |x, _| if x < 20 { RED } else { BLUE });
    let tiny = fixtures::png(10, 10, |_, _| GREEN);
    let zip = fixtures::zip(&[
        ("set/a.png", &split),
        ("set/not-an-image.txt", b"hello"),
        ("__MACOSX/set/._a.png", b"junk"),
    ]);
    // Corners given bottom-right first: normalised.
    let region = json!({"top_left": {"x": 38, "y": 18}, "bottom_right": {"x": 22, "y": 2}});
    let id = app
        .submit_accepted(
            "predict",
            json!({"model": "regions", "region": region}),
            &[
                ("split.png", &split),
                ("tiny.png", &tiny),
                ("set.zip", &zip),
            ],
        )
        .await;
    let task = app.finished(id, WITHIN).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    let result = &task["result"];
    assert_eq!(result["images"], 4, "{result:#}");
    assert_eq!(result["classified"], 2);
    let p = result["predictions"].as_array().unwrap();
    assert_eq!(p[0]["file"], "split.png");
    assert_eq!(
        p[0]["top"][0]["label"], "blue",
        "the region is on the blue half"
    );
    assert_eq!(
        p[0]["region"],
        json!({"x": 22, "y": 2, "width": 16, "height": 16})
    );
    // The region does not fit in a 10×10 image: that image fails alone.
    assert_eq!(p[1]["file"], "tiny.png");
    assert_eq!(p[1]["error"]["code"], "invalid_region");
    assert!(p[1]["error"]["message"].as_str().unwrap().contains("10×10"));
    assert_eq!(p[2]["file"], "set.zip/set/a.png");
    assert_eq!(p[2]["top"][0]["label"], "blue");
    assert_eq!(p[3]["error"]["code"], "invalid_image", "{:#}", p[3]);

    // Without a region the whole split image is half red, half blue; a
    // region of zero area fails every image, and so the task.
    let flat = json!({"top_left": {"x": 5, "y": 5}, "bottom_right": {"x": 5, "y": 15}});
    let id = app
        .submit_accepted(
            "predict",
            json!({"model": "regions", "region": flat}),
            &[("split.png", &split)],
        )
        .await;
    let task = app.finished(id, WITHIN).await;
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["error"]["code"], "no_images");
    assert!(task["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no area"));
}

#[actix_web::test]
async fn broken_models_end_invalid_with_libtorch_s_reason() {
    let app = spawn_app().await;
    let cases: [(&str, Vec<u8>, Value, &str); 5] = [
        (
            "not TorchScript",
            b"PK\x03\x04 this is no model".to_vec(),
            colour_spec("junk"),
            "not a TorchScript module",
        ),
        (
            "traced with its batch size fixed at 2",
            fixtures::rigid_model(16),
            colour_spec("rigid"),
            "failed on a dummy batch of shape [1, 3, 16, 16]",
        ),
        (
            "returns five classes for three labels",
            fixtures::five_class_model(16),
            colour_spec("five"),
            "names 3 labels, but the module returns 5",
        ),
        (
            "a tabular spec for an image model",
            fixtures::colour_model(16),
            json!({"name": "mixed", "input": "tabular", "features": ["a", "b"]}),
            "failed on a dummy batch of shape [1, 2]",
        ),
        (
            "reads a file on the server into its output",
            fixtures::file_reading_model("/etc/passwd"),
            json!({"name": "thief", "input": "tabular", "features": ["a", "b"]}),
            "calls aten::from_file",
        ),
    ];
    for (what, bytes, spec, expected) in cases {
        let (status, body) = upload(&app, &spec, &bytes).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{what}: {body}");
        let model = settled(&app, body["id"].as_str().unwrap()).await;
        assert_eq!(model["status"], "invalid", "{what}: {model:#}");
        assert_eq!(model["error"]["code"], "model_invalid", "{what}: {model:#}");
        let message = model["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{what}: {message}");
        assert!(!message.contains('\n'), "{what}: one line: {message}");
        // An invalid model cannot be used.
        let (status, body) = app
            .submit_files(
                "predict",
                json!({"model": model["id"]}),
                &[("a.png", &fixtures::png(4, 4, |_, _| RED))],
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{what}: {body}");
        assert_eq!(body["error"]["code"], "model_not_ready");
    }
    // The workers are all still there.
    let (_, ready) = app.get("/readyz").await;
    assert_eq!(ready["status"], "ready", "{ready}");
}

#[actix_web::test]
async fn bad_specs_are_refused_naming_the_field() {
    let app = spawn_app().await;
    let model = fixtures::colour_model(16);
    for (spec, field) in [
        (json!({"input": "image", "width": 16, "height": 16}), "spec"),
        (
            json!({"name": "../etc", "input": "image", "width": 16, "height": 16}),
            "spec.name",
        ),
        (
            json!({"name": "a", "input": "image", "width": 16}),
            "spec.height",
        ),
        (
            json!({"name": "a", "input": "image", "width": 0, "height": 16}),
            "spec.width",
        ),
        (
            json!({"name": "a", "input": "image", "width": 16, "height": 16, "channels": 2}),
            "spec.channels",
        ),
        (json!({"name": "a", "input": "video"}), "spec.input"),
        (
            json!({"name": Uuid::new_v4(), "input": "tabular", "features": ["x"]}),
            "spec.name",
        ),
    ] {
        let (status, body) = upload(&app, &spec, &model).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{spec}: {body}");
        assert_eq!(body["error"]["code"], "invalid_params", "{body}");
        assert_eq!(body["error"]["field"], field, "{spec}: {body}");
    }
    // No spec, no file, or a spec that is not JSON.
    let (content_type, body) = multipart(&[], &[("m.pt", &model)]);
    let (status, body) = app.post_raw("/api/v1/models", &content_type, body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let spec = colour_spec("nofile").to_string();
    let (content_type, body) = multipart(&[("spec", &spec)], &[]);
    let (status, body) = app.post_raw("/api/v1/models", &content_type, body).await;
    assert!(status.is_client_error(), "{body}");
    let (content_type, body) = multipart(&[("spec", "{not json")], &[("m.pt", &model)]);
    let (status, body) = app.post_raw("/api/v1/models", &content_type, body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    // Nothing was kept of the refused uploads.
    assert_eq!(app.stored_objects(), 0);
    // Models cannot be validated through the tasks API.
    let (status, body) = app
        .post_json(
            "/api/v1/tasks",
            &json!({"command": "validate_model", "params": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "unknown_command");
}

#[actix_web::test]
async fn a_model_in_use_is_not_deleted() {
    let app = spawn_app().await;
    let model = ready_model(&app, &colour_spec("busy"), &fixtures::colour_model(16)).await;
    let id = model["id"].as_str().unwrap().to_owned();
    // Keep the only worker busy, so the predict stays queued.
    let sleeper = app
        .submit("sleep", json!({"ms": 60_000, "steps": 600}))
        .await;
    app.wait_for(sleeper, WITHIN, |t| t["status"] == "running")
        .await;
    let predict = app
        .submit_accepted(
            "predict",
            json!({"model": "busy"}),
            &[("r.png", &fixtures::png(8, 8, |_, _| RED))],
        )
        .await;
    let (status, body) = app.delete(&format!("/api/v1/models/{id}")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "model_in_use");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains(&predict.to_string()));
    // Nor the task that made it.
    let task = model["task_id"].as_str().unwrap();
    let (status, _) = app.delete(&format!("/api/v1/tasks/{task}")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    // Once the predict is cancelled, it goes, with its file.
    let (status, _) = app
        .post_json(&format!("/api/v1/tasks/{predict}/cancel"), &json!({}))
        .await;
    assert!(status.is_success());
    let before = app.stored_objects();
    let (status, body) = app.delete(&format!("/api/v1/models/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, _) = app.get(&format!("/api/v1/models/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(app.stored_objects(), before - 1, "the model's file is gone");
    let (status, _) = app.get(&format!("/api/v1/tasks/{task}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "its validation task too");
    // The name's next version is 2, not 1 again.
    app.post_json(&format!("/api/v1/tasks/{sleeper}/cancel"), &json!({}))
        .await;
    let again = ready_model(&app, &colour_spec("busy"), &fixtures::colour_model(16)).await;
    assert_eq!(again["version"], 2);
}

#[actix_web::test]
async fn a_tabular_torchscript_model_predicts_on_a_csv() {
    let app = spawn_app().await;
    let spec = json!({"name": "tab", "input": "tabular", "features": ["x", "y"], "labels": ["x_small", "x_big"]});
    ready_model(&app, &spec, &fixtures::tabular_model()).await;
    let csv = b"y,note,x\n1,a,5\n5,b,1\n0,c,2\n";
    let id = app
        .submit_accepted("predict", json!({"model": "tab"}), &[("rows.csv", csv)])
        .await;
    let task = app.finished(id, WITHIN).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    let labels: Vec<&str> = task["result"]["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["prediction"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["x_big", "x_small", "x_big"]);
    // A missing number is an error naming the row, not a silent zero.
    let id = app
        .submit_accepted(
            "predict",
            json!({"model": "tab"}),
            &[("rows.csv", b"x,y\n1,\n")],
        )
        .await;
    let task = app.finished(id, WITHIN).await;
    assert_eq!(task["error"]["code"], "missing_value", "{task:#}");
    // A region means nothing to a model that reads a CSV: refused when
    // submitted, naming the param and the model.
    let (status, body) = app
        .submit_files(
            "predict",
            json!({"model": "tab", "region": {"top_left": {"x": 0, "y": 0}, "bottom_right": {"x": 1, "y": 1}}}),
            &[("rows.csv", csv)],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "region", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("tab@1"),
        "{body}"
    );
}

#[actix_web::test]
async fn a_corrupt_zip_fails_alone() {
    let app = spawn_app().await;
    ready_model(&app, &colour_spec("zips"), &fixtures::colour_model(16)).await;
    let red = fixtures::png(8, 8, |_, _| RED);
    let id = app
        .submit_accepted(
            "predict",
            json!({"model": "zips"}),
            &[
                ("red.png", &red),
                ("broken.zip", b"PK\x03\x04 and then nothing a zip has"),
            ],
        )
        .await;
    let task = app.finished(id, WITHIN).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    let p = task["result"]["predictions"].as_array().unwrap();
    assert_eq!(p[0]["top"][0]["label"], "red");
    assert_eq!(p[0]["input"], 0);
    assert_eq!(p[1]["file"], "broken.zip");
    assert_eq!(p[1]["error"]["code"], "invalid_archive", "{:#}", p[1]);
}
