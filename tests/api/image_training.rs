//! `train` on a zip of images, one folder per class: a small CNN, held to
//! a quality bar, registered and used by `predict`.

use std::time::Duration;

use actix_web::http::StatusCode;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};

use crate::fixtures::{self, shape_image, SHAPES};
use crate::helpers::{spawn_app, Api};

const TRAINING: Duration = Duration::from_secs(180);

/// A zip of `per_class` images of each shape in class folders, plus clutter
/// a real archive has: a file outside any folder and one that is not an
/// image.
fn shapes_zip(per_class: usize, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..per_class {
        for shape in SHAPES {
            let png = shape_image(shape, &mut rng);
            // Formats vary, as in real uploads.
            let (bytes, ext) = match i % 3 {
                0 => (png, "png"),
                1 => (fixtures::encoded(&png, image::ImageFormat::Bmp), "bmp"),
                _ => (fixtures::encoded(&png, image::ImageFormat::WebP), "webp"),
            };
            entries.push((format!("{shape}/{i}.{ext}"), bytes));
        }
    }
    entries.push(("README.md".into(), b"shapes".to_vec()));
    entries.push(("disc/notes.txt".into(), b"not an image".to_vec()));
    let refs: Vec<(&str, &[u8])> = entries
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    fixtures::zip(&refs)
}

async fn train(app: &Api, params: Value, zip: &[u8]) -> Value {
    let id = app
        .submit_accepted("train", params, &[("shapes.zip", zip)])
        .await;
    app.finished(id, TRAINING).await
}

#[actix_web::test]
async fn a_cnn_trained_on_class_folders_reaches_90_percent_and_predicts_regions() {
    let app = spawn_app().await;
    let zip = shapes_zip(60, 1);
    let id = app
        .submit_accepted(
            "train",
            json!({"epochs": 12, "batch_size": 16, "seed": 3}),
            &[("shapes.zip", &zip)],
        )
        .await;
    // Per-epoch progress carries the metrics the dashboard charts.
    let running = app
        .wait_for(id, TRAINING, |t| {
            t["progress"]["stage"]
                .as_str()
                .is_some_and(|s| s.starts_with("epoch"))
                || t["status"] != "running" && t["status"] != "queued"
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
    let accuracy = result["metrics"]["val_accuracy"].as_f64().unwrap();
    assert!(
        accuracy >= 0.9,
        "validation accuracy {accuracy}: {result:#}"
    );
    assert_eq!(result["classes"], json!(SHAPES));
    assert_eq!(result["kind"], "classification");
    assert_eq!(result["images"]["train"], 144);
    assert_eq!(result["images"]["validation"], 36);
    assert_eq!(result["images"]["skipped"], 2, "{result:#}");
    assert_eq!(result["model_name"], "shapes");

    // Skipped entries are named in the log, and every epoch is there.
    let (_, logs) = app.get(&format!("/api/v1/tasks/{id}/logs?limit=200")).await;
    let text = logs.to_string();
    for epoch in 1..=12 {
        assert!(text.contains(&format!("epoch {epoch}/12: ")), "{text}");
    }
    assert!(text.contains("val_accuracy"), "{text}");
    assert!(text.contains("README.md: skipped"), "{text}");
    assert!(text.contains("disc/notes.txt: skipped"), "{text}");

    // Registered like a tabular model: safetensors weights and a spec.
    let (status, model) = app.get("/api/v1/models/shapes@1").await;
    assert_eq!(status, StatusCode::OK, "{model}");
    assert_eq!(model["input"], "image");
    assert_eq!(model["format"], "mlq.cnn.v1");
    assert_eq!(model["status"], "ready");
    assert_eq!(model["spec"]["classes"], json!(SHAPES));
    assert_eq!(model["spec"]["input"]["width"], 32);
    let names: Vec<&str> = task["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"model.safetensors"), "{names:?}");
    assert!(names.contains(&"model.json"), "{names:?}");

    // Fresh images of each shape are classified by name; a picture with
    // vertical bars on the left and horizontal ones on the right is
    // whichever half the region picks.
    let mut rng = StdRng::seed_from_u64(99);
    let fresh: Vec<Vec<u8>> = SHAPES.iter().map(|s| shape_image(s, &mut rng)).collect();
    let halves = fixtures::png(64, 32, |x, y| {
        let on = if x < 32 {
            (x / 3).is_multiple_of(2)
        } else {
            (y / 3).is_multiple_of(2)
        };
        if on {
            [20, 20, 20]
        } else {
            [230, 230, 230]
        }
    });
    let mut files: Vec<(String, Vec<u8>)> = SHAPES
        .iter()
        .zip(fresh)
        .map(|(s, b)| (format!("{s}.png"), b))
        .collect();
    files.push(("halves.png".into(), halves.clone()));
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let predict = app
        .submit_accepted("predict", json!({"model": "shapes"}), &refs)
        .await;
    let task = app.finished(predict, TRAINING).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    let predictions = task["result"]["predictions"].as_array().unwrap();
    for (shape, p) in SHAPES.iter().zip(predictions) {
        assert_eq!(p["top"][0]["label"], *shape, "{p:#}");
    }
    for (region, expected) in [
        (
            json!({"top_left": {"x": 0, "y": 0}, "bottom_right": {"x": 32, "y": 32}}),
            "vertical",
        ),
        (
            json!({"top_left": {"x": 64, "y": 32}, "bottom_right": {"x": 32, "y": 0}}),
            "horizontal",
        ),
    ] {
        let predict = app
            .submit_accepted(
                "predict",
                json!({"model": "shapes@1", "region": region}),
                &[("halves.png", &halves)],
            )
            .await;
        let task = app.finished(predict, TRAINING).await;
        assert_eq!(task["status"], "succeeded", "{task:#}");
        let top = &task["result"]["predictions"][0]["top"][0];
        assert_eq!(top["label"], expected, "{region}: {task:#}");
    }
}

#[actix_web::test]
async fn zips_that_cannot_train_a_classifier_fail_naming_why() {
    let app = spawn_app().await;
    let mut rng = StdRng::seed_from_u64(5);
    let disc = shape_image("disc", &mut rng);
    let bars = shape_image("vertical", &mut rng);

    let one_class = fixtures::zip(&[("disc/a.png", &disc), ("disc/b.png", &disc)]);
    let task = train(&app, json!({"epochs": 1}), &one_class).await;
    assert_eq!(task["error"]["code"], "single_class", "{task:#}");
    assert!(task["error"]["message"].as_str().unwrap().contains("disc"));

    let no_folders = fixtures::zip(&[("a.png", &disc), ("b.png", &bars)]);
    let task = train(&app, json!({"epochs": 1}), &no_folders).await;
    assert_eq!(task["error"]["code"], "no_images", "{task:#}");
    assert!(task["error"]["message"]
        .as_str()
        .unwrap()
        .contains("folder named after it"));

    // Corrupt images are skipped, not fatal, while two classes remain.
    let mut corrupt = disc.clone();
    corrupt.truncate(corrupt.len() / 2);
    let mixed = fixtures::zip(&[
        ("disc/a.png", &disc),
        ("disc/broken.png", &corrupt),
        ("bars/a.png", &bars),
        ("bars/b.png", &bars),
    ]);
    let task = train(&app, json!({"epochs": 1}), &mixed).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    assert_eq!(task["result"]["images"]["skipped"], 1);
    assert_eq!(task["result"]["classes"], json!(["bars", "disc"]));

    // Grayscale, nothing held out, a class folder whose files have long
    // names, and the whole zipped from the dataset's own folder: the
    // classes are the folders one level down.
    let long = format!("data/bars/{}.png", "b".repeat(150));
    let nested = fixtures::zip(&[
        ("data/disc/a.png", &disc),
        ("data/disc/b.png", &disc),
        (long.as_str(), &bars),
        ("data\\bars\\c.png", &bars),
    ]);
    let task = train(
        &app,
        json!({"epochs": 1, "validation_split": 0, "channels": 1}),
        &nested,
    )
    .await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    assert_eq!(task["result"]["classes"], json!(["bars", "disc"]));
    assert_eq!(task["result"]["images"]["validation"], 0);
    assert_eq!(task["result"]["images"]["train"], 4);
    assert_eq!(task["result"]["input"]["channels"], 1);

    // CSV-only params on a zip are refused, not ignored.
    let task = train(&app, json!({"target": "label"}), &mixed).await;
    assert_eq!(task["error"]["code"], "invalid_params", "{task:#}");
    assert!(task["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("target"));

    // A corrupt archive is an invalid archive.
    let task = train(&app, json!({}), b"PK\x03\x04 and then nothing useful").await;
    assert_eq!(task["error"]["code"], "invalid_archive", "{task:#}");

    // Image params on a CSV, and a CSV without a target, are named.
    let csv = crate::helpers::blobs_csv(20, 1);
    let (status, body) = app
        .submit_files("train", json!({"width": 16}), &[("d.csv", &csv)])
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "width", "{body}");
    let id = app
        .submit_accepted("train", json!({"width": 16}), &[("rows.dat", &csv)])
        .await;
    let task = app.finished(id, TRAINING).await;
    assert_eq!(task["error"]["code"], "invalid_params", "{task:#}");
    assert!(task["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("width"));
    // A file named as a CSV needs a target when submitted; one named
    // otherwise is found to be a CSV when it runs.
    let (status, body) = app
        .submit_files("train", json!({}), &[("d.csv", &csv)])
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "target", "{body}");
    let id = app
        .submit_accepted("train", json!({}), &[("rows.dat", &csv)])
        .await;
    let task = app.finished(id, TRAINING).await;
    assert_eq!(task["error"]["code"], "invalid_params", "{task:#}");
    assert!(task["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("target"));

    // Both kinds at once are refused at submission.
    let (status, body) = app
        .submit_files(
            "train",
            json!({"target": "label", "width": 16}),
            &[("d.csv", &csv)],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "target", "{body}");
    let (status, body) = app
        .submit_files("train", json!({"width": 4}), &[("d.zip", &mixed)])
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "width", "{body}");
}
