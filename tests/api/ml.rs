//! Real training and prediction with libtorch, held to a quality bar.

use std::time::Duration;

use awc::http::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::helpers::{blobs_csv, linear_csv, spawn_app};

const TRAINING: Duration = Duration::from_secs(120);

#[actix_web::test]
async fn train_reaches_95_percent_and_predict_matches_on_held_out_rows() {
    let app = spawn_app().await;
    let train_csv = blobs_csv(600, 1);
    let id = app
        .submit_accepted(
            "train",
            json!({"target": "label", "epochs": 15, "seed": 7}),
            &[("blobs.csv", &train_csv)],
        )
        .await;

    // Progress is reported per epoch while it runs.
    let running = app
        .wait_for(id, TRAINING, |t| {
            t["progress"]["stage"]
                .as_str()
                .is_some_and(|s| s.starts_with("epoch"))
                || t["status"] == "succeeded"
        })
        .await;
    if running["status"] == "running" {
        let metrics = &running["progress"]["metrics"];
        assert!(metrics["train_loss"].is_number(), "{running:#}");
        assert!(metrics["val_accuracy"].is_number(), "{running:#}");
    }

    let task = app.finished(id, TRAINING).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    let result = &task["result"];
    assert_eq!(result["kind"], "classification");
    let accuracy = result["metrics"]["val_accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.95, "validation accuracy {accuracy}");
    assert!(result["metrics"]["val_loss"].is_number());
    assert_eq!(result["rows"]["train"], 480);
    assert_eq!(result["rows"]["validation"], 120);
    assert_eq!(task["progress"]["fraction"], 1.0);
    assert_eq!(
        task["progress"]["metrics"]["val_accuracy"].as_f64(),
        Some(accuracy)
    );

    // The model is registered, with its spec.
    let model_id = result["model_id"].as_str().unwrap().to_owned();
    let (status, model) = app.get(&format!("/api/v1/models/{model_id}")).await;
    assert_eq!(status, StatusCode::OK, "{model}");
    assert_eq!(model["task_id"], id.to_string());
    assert_eq!(model["spec"]["classes"], json!(["a", "b", "c"]));
    assert_eq!(model["spec"]["features"][2]["type"], "categorical");
    let (_, models) = app.get("/api/v1/models").await;
    assert_eq!(models["models"][0]["id"], model_id.as_str());
    // Lists leave specs out: one per feature column, they can be megabytes.
    assert!(models["models"][0].get("spec").is_none(), "{models}");

    // Artifacts download intact: the sha256 matches the recorded one.
    let artifact = task["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "model.safetensors")
        .unwrap()
        .clone();
    let (status, headers, bytes) = app.get_bytes(artifact["url"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes.len() as u64, artifact["size"].as_u64().unwrap());
    assert_eq!(
        hex(&Sha256::digest(&bytes)),
        artifact["sha256"].as_str().unwrap()
    );
    assert!(headers
        .get("content-disposition")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("model.safetensors"));

    // Held-out rows from the same rule.
    let held_out = blobs_csv(300, 2);
    let id = app
        .submit_accepted(
            "predict",
            json!({"model": model_id}),
            &[("new.csv", &held_out)],
        )
        .await;
    let task = app.finished(id, TRAINING).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    let result = &task["result"];
    assert_eq!(result["rows"], 300);
    let predict_accuracy = result["metrics"]["accuracy"].as_f64().unwrap();
    assert!(
        predict_accuracy >= 0.95,
        "held-out accuracy {predict_accuracy}"
    );
    let inline = result["predictions"].as_array().unwrap();
    assert_eq!(inline.len(), 100, "at most 100 predictions inline");
    assert_eq!(inline[0]["row"], 1);
    let probabilities: f64 = inline[0]["probabilities"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_f64().unwrap())
        .sum();
    assert!((probabilities - 1.0).abs() < 1e-3);

    let (status, headers, csv) = app
        .get_bytes(&format!("/api/v1/tasks/{id}/artifacts/predictions.csv"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers.get("content-type").unwrap(), "text/csv");
    let csv = String::from_utf8(csv).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("row,prediction,p_a,p_b,p_c"));
    assert_eq!(lines.count(), 300);
}

#[actix_web::test]
async fn regression_beats_the_mean_tenfold() {
    let app = spawn_app().await;
    let (csv, variance) = linear_csv(800, 3);
    let id = app
        .submit_accepted(
            "train",
            json!({"target": "y", "epochs": 30}),
            &[("linear.csv", &csv)],
        )
        .await;
    let task = app.finished(id, TRAINING).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    assert_eq!(
        task["result"]["kind"], "regression",
        "inferred from a real-valued target"
    );
    let rmse = task["result"]["metrics"]["val_rmse"].as_f64().unwrap();
    // Predicting the mean has an MSE of about the variance.
    assert!(
        rmse * rmse * 10.0 <= variance,
        "mse {} vs variance {variance}",
        rmse * rmse
    );

    let model = task["result"]["model_id"].clone();
    let (held_out, _) = linear_csv(200, 4);
    let id = app
        .submit_accepted(
            "predict",
            json!({"model": model}),
            &[("new.csv", &held_out)],
        )
        .await;
    let task = app.finished(id, TRAINING).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    let rmse = task["result"]["metrics"]["rmse"].as_f64().unwrap();
    assert!(
        rmse * rmse * 10.0 <= variance,
        "held-out mse {}",
        rmse * rmse
    );
    assert!(task["result"]["predictions"][0]["prediction"].is_number());
}

#[actix_web::test]
async fn predict_without_the_target_column_still_predicts() {
    let app = spawn_app().await;
    let id = app
        .submit_accepted(
            "train",
            json!({"target": "label", "epochs": 3}),
            &[("b.csv", &blobs_csv(200, 5))],
        )
        .await;
    let task = app.finished(id, TRAINING).await;
    let model = task["result"]["model_id"].clone();
    let csv = "x1,x2,shade\n0.1,0.2,light\n5.1,4.9,dark\n0.0,6.2,neon\n";
    let id = app
        .submit_accepted(
            "predict",
            json!({"model": model}),
            &[("x.csv", csv.as_bytes())],
        )
        .await;
    let task = app.finished(id, TRAINING).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    assert!(task["result"]["metrics"].is_null());
    let labels: Vec<&Value> = task["result"]["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["prediction"])
        .collect();
    assert_eq!(labels.len(), 3, "an unseen category (neon) still predicts");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[actix_web::test]
async fn cancelling_a_training_run_stops_it_between_batches() {
    let app = spawn_app().await;
    let id = app
        .submit_accepted(
            "train",
            json!({"target": "label", "epochs": 1000, "batch_size": 1}),
            &[("b.csv", &blobs_csv(2000, 9))],
        )
        .await;
    app.wait_for(id, TRAINING, |t| {
        t["progress"]["stage"]
            .as_str()
            .is_some_and(|s| s.starts_with("epoch"))
    })
    .await;
    let (status, _) = app
        .post_json(&format!("/api/v1/tasks/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let task = app
        .wait_for(id, Duration::from_secs(5), |t| t["status"] == "cancelled")
        .await;
    assert_eq!(task["error"]["code"], "cancelled");
    assert!(
        task["artifacts"].as_array().unwrap().is_empty(),
        "no half-trained model"
    );
    let (_, models) = app.get("/api/v1/models").await;
    assert!(models["models"].as_array().unwrap().is_empty());
}
