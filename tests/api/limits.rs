//! Poison pills: whatever an uploader sends, a job allocates no more than a
//! limit checked first, fails with a code naming that limit, and keeps
//! every message it writes small. Measured on a real mlq process, whose
//! peak memory the kernel reports.

use std::time::Duration;

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{blobs_csv, linear_csv, new_database_name, server_url, spawn_app};
use crate::process::MlqProcess;

const WITHIN: Duration = Duration::from_secs(120);
const MIB: u64 = 1 << 20;

/// Runs one task on `mlq` and returns it when finished, with how far the
/// process's peak memory rose above its resident memory before the upload.
async fn peak_growth(
    mlq: &MlqProcess,
    command: &str,
    params: Value,
    file: &[u8],
    during: impl AsyncFnOnce(uuid::Uuid),
) -> (Value, u64) {
    mlq.reset_peak();
    let (before, _) = mlq.memory();
    let id = mlq
        .submit_accepted(command, params.clone(), &[("input.csv", file)])
        .await;
    during(id).await;
    let task = mlq.finished(id, WITHIN).await;
    let (_, peak) = mlq.memory();
    let growth = peak.saturating_sub(before);
    // Reported for the record (`cargo test -- --nocapture`).
    eprintln!(
        "{command} {params}: {}, peak memory +{:.1} MiB",
        task["error"]["code"].as_str().unwrap_or("succeeded"),
        growth as f64 / MIB as f64
    );
    (task, growth)
}

#[actix_web::test]
async fn poison_pills_fail_with_the_limit_named_and_memory_bounded() {
    let data = tempfile::tempdir().unwrap();
    let url = format!("{}/{}", server_url(), new_database_name());
    let mlq = MlqProcess::start(&url, data.path(), &[]).await;
    // Warm up libtorch (kernels, allocator pools) so it is in the baseline,
    // and get a model to predict with.
    let model = mlq
        .submit_accepted(
            "train",
            json!({"target": "label", "epochs": 2}),
            &[("blobs.csv", &blobs_csv(2000, 1))],
        )
        .await;
    let model = mlq.finished(model, WITHIN).await;
    assert_eq!(model["status"], "succeeded", "{model:#}");
    let model_id = model["result"]["model_id"].as_str().unwrap().to_owned();

    // A header of three million columns (6 MB): refused at the column
    // limit, having read no more than one row buffer.
    let mut wide = "c,".repeat(3_000_000).into_bytes();
    wide.extend_from_slice(b"y\n1,2\n");
    let (task, growth) =
        peak_growth(&mlq, "train", json!({"target": "y"}), &wide, async |_| {}).await;
    assert_eq!(task["error"]["code"], "too_many_columns", "{task:#}");
    assert!(
        growth < 48 * MIB,
        "wide header: peak grew {} MiB",
        growth / MIB
    );

    // One cell of 100 MB: refused at the row limit, never held whole.
    let mut cell = b"x,label\n1,a\n2,\"".to_vec();
    cell.extend(std::iter::repeat_n(b'z', 100 << 20));
    cell.extend_from_slice(b"\"\n3,b\n");
    let (task, growth) = peak_growth(
        &mlq,
        "train",
        json!({"target": "label"}),
        &cell,
        async |_| {},
    )
    .await;
    assert_eq!(task["error"]["code"], "field_too_large", "{task:#}");
    assert!(
        task["error"]["message"].as_str().unwrap().len() < 300,
        "{task:#}"
    );
    assert!(
        growth < 48 * MIB,
        "enormous cell: peak grew {} MiB",
        growth / MIB
    );
    drop(cell);

    // A million rows to predict (27 MB): streamed in chunks, so memory does
    // not grow with the row count. (Held whole, the encoded rows, outputs
    // and probabilities came to about 100 MB.)
    let rows = blobs_csv(1_000_000, 7);
    let (task, growth) = peak_growth(
        &mlq,
        "predict",
        json!({"model": model_id}),
        &rows,
        async |_| {},
    )
    .await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    assert_eq!(task["result"]["rows"], 1_000_000);
    assert!(task["result"]["metrics"]["accuracy"].as_f64().unwrap() > 0.9);
    assert!(
        growth < 48 * MIB,
        "many rows: peak grew {} MiB",
        growth / MIB
    );

    // Batches of one row over 800,000 training rows: batches are ranges of
    // one index tensor, made one at a time. (Split up front they were
    // 800,000 tensors, about 300 MB, before the first step.) The job is
    // cancelled a while into its first epoch.
    let (task, growth) = peak_growth(
        &mlq,
        "train",
        json!({"target": "label", "batch_size": 1, "epochs": 1}),
        &rows,
        async |id| {
            mlq.wait_for(id, WITHIN, |t| {
                t["progress"]["stage"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("training"))
            })
            .await;
            actix_web::rt::time::sleep(Duration::from_secs(3)).await;
            let (status, body) = mlq
                .post_json(&format!("/api/v1/tasks/{id}/cancel"), &json!({}))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        },
    )
    .await;
    assert_eq!(task["status"], "cancelled", "{task:#}");
    // The data itself: a 1M × 4 matrix, the row order and the target.
    assert!(
        growth < 128 * MIB,
        "tiny batches: peak grew {} MiB",
        growth / MIB
    );
}

#[actix_web::test]
async fn a_huge_bad_cell_is_quoted_short_everywhere() {
    let app = spawn_app().await;
    let junk = "q".repeat(60_000);
    let file = format!("a,y\n1,0\n2,1\n{junk},0\n3,1\n4,0\n5,1\n");
    let id = app
        .submit_accepted(
            "train",
            json!({"target": "y"}),
            &[("bad.csv", file.as_bytes())],
        )
        .await;
    let task = app.finished(id, WITHIN).await;
    assert_eq!(task["error"]["code"], "invalid_number", "{task:#}");
    let message = task["error"]["message"].as_str().unwrap();
    assert!(message.contains("row 3"), "{message}");
    assert!(message.len() < 300, "{message}");
    // The task, the list and the log carry the message, never the cell.
    let (_, body) = app.get(&format!("/api/v1/tasks/{id}")).await;
    assert!(body.to_string().len() < 8 << 10);
    let (_, list) = app.get("/api/v1/tasks").await;
    assert!(list.to_string().len() < 8 << 10);
    let (_, logs) = app.get(&format!("/api/v1/tasks/{id}/logs")).await;
    assert!(logs.to_string().len() < 8 << 10, "{logs}");
}

#[actix_web::test]
async fn predictions_that_are_not_numbers_fail_and_unseen_levels_are_zeros() {
    let app = spawn_app().await;
    // A regression model, then inputs far outside anything it saw: its
    // output overflows, and that is an error, not a silent null.
    let (csv, _) = linear_csv(500, 3);
    let id = app
        .submit_accepted(
            "train",
            json!({"target": "y", "epochs": 5}),
            &[("linear.csv", &csv)],
        )
        .await;
    let task = app.finished(id, WITHIN).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    let model = task["result"]["model_id"].as_str().unwrap().to_owned();
    let huge = "x1,x2,x3\n1,2,3\n3e38,-3e38,3e38\n";
    let id = app
        .submit_accepted(
            "predict",
            json!({"model": model}),
            &[("huge.csv", huge.as_bytes())],
        )
        .await;
    let task = app.finished(id, WITHIN).await;
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["error"]["code"], "non_finite_result", "{task:#}");
    assert!(task["error"]["message"].as_str().unwrap().contains("row 2"));

    // A classifier with a text feature, asked about 5,000 values it never
    // saw: each encodes as zeros, however many there are.
    let id = app
        .submit_accepted(
            "train",
            json!({"target": "label", "epochs": 3}),
            &[("blobs.csv", &blobs_csv(300, 4))],
        )
        .await;
    let task = app.finished(id, WITHIN).await;
    let model = task["result"]["model_id"].as_str().unwrap().to_owned();
    let mut unseen = String::from("x1,x2,shade\n");
    for i in 0..5000 {
        unseen.push_str(&format!("0.1,0.2,shade{i}\n"));
    }
    let id = app
        .submit_accepted(
            "predict",
            json!({"model": model}),
            &[("unseen.csv", unseen.as_bytes())],
        )
        .await;
    let task = app.finished(id, WITHIN).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    assert_eq!(task["result"]["rows"], 5000);
}
