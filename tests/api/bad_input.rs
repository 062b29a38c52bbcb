//! Bad input gets a clear error naming the problem, never a crash, a hang
//! or a 500, and the service keeps working afterwards.

use std::time::Duration;

use awc::http::StatusCode;
use futures_util::StreamExt;
use serde_json::json;

use crate::helpers::{blobs_csv, multipart, multipart_with_headers, spawn_app, spawn_app_with};

const WITHIN: Duration = Duration::from_secs(60);

#[actix_web::test]
async fn bad_files_fail_the_task_with_a_named_error() {
    let app = spawn_app().await;
    let single_class = "x,label\n1,a\n2,a\n3,a\n4,a\n";
    let cases: Vec<(&str, Vec<u8>, serde_json::Value, &str, &str)> = vec![
        (
            "empty file",
            vec![],
            json!({"target": "y"}),
            "empty_file",
            "empty",
        ),
        (
            "no header",
            b"1.0,2.0,3\n4.0,5.0,6\n".to_vec(),
            json!({"target": "y"}),
            "no_header",
            "header",
        ),
        (
            "ragged rows",
            b"a,b,y\n1,2,3\n4,5\n".to_vec(),
            json!({"target": "y"}),
            "ragged_row",
            "row 2",
        ),
        (
            "text in a numeric column",
            b"a,b,y\n1,2,0\n2,3,1\n3,oops,0\n4,5,1\n".to_vec(),
            json!({"target": "y"}),
            "invalid_number",
            "row 3, column \"b\"",
        ),
        (
            "unknown target",
            blobs_csv(20, 1),
            json!({"target": "nope"}),
            "unknown_column",
            "nope",
        ),
        (
            "one class",
            single_class.as_bytes().to_vec(),
            json!({"target": "label"}),
            "single_class",
            "one class",
        ),
        (
            "NaN",
            b"a,y\n1,0\nNaN,1\n2,0\n".to_vec(),
            json!({"target": "y"}),
            "non_finite_value",
            "row 2",
        ),
        (
            "inf",
            b"a,y\n1,0\n2,1\n-inf,0\n".to_vec(),
            json!({"target": "y"}),
            "non_finite_value",
            "row 3",
        ),
        (
            "binary garbage",
            // (Not starting with a zip's `PK\x03\x04`: `train` reads such a
            // file as a zip of images.)
            vec![0x7f, 0x45, 0x4c, 0x46, 0x00, 0xff, 0x13, 0x00, 0x00, 0x08],
            json!({"target": "y"}),
            "not_csv",
            "binary",
        ),
        (
            "missing target value",
            b"a,y\n1,0\n2,\n3,1\n".to_vec(),
            json!({"target": "y"}),
            "missing_value",
            "row 2",
        ),
        (
            "header only",
            b"a,y\n".to_vec(),
            json!({"target": "y"}),
            "too_few_rows",
            "0 data row",
        ),
        (
            "too wide to encode",
            too_wide(),
            json!({"target": "y"}),
            "data_too_large",
            "features",
        ),
    ];
    let mut ids = Vec::new();
    for (name, file, params, _, _) in &cases {
        let (status, body) = app
            .submit_files("train", params.clone(), &[("bad.csv", file)])
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{name}: {body}");
        ids.push(body["id"].as_str().unwrap().parse().unwrap());
    }
    for ((name, _, _, code, words), id) in cases.iter().zip(ids) {
        let task = app.finished(id, WITHIN).await;
        assert_eq!(task["status"], "failed", "{name}: {task:#}");
        assert_eq!(task["error"]["code"], *code, "{name}: {task:#}");
        let message = task["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(words),
            "{name}: message {message:?} should mention {words:?}"
        );
        assert_eq!(task["attempts"], 1, "{name}: bad input is not retried");
    }
    // The pool is whole and the next good task runs.
    assert_eq!(app.ready_workers().await, 1);
    let id = app
        .submit_accepted(
            "train",
            json!({"target": "label", "epochs": 2}),
            &[("ok.csv", &blobs_csv(100, 2))],
        )
        .await;
    assert_eq!(app.finished(id, WITHIN).await["status"], "succeeded");
}

#[actix_web::test]
async fn bad_params_are_422_naming_the_field() {
    let app = spawn_app().await;
    let csv = blobs_csv(20, 1);
    let cases = [
        (json!({"target": "label", "epochs": 0}), "epochs"),
        (
            json!({"target": "label", "epochs": 1_000_000_000}),
            "epochs",
        ),
        (json!({"target": "label", "epochs": -3}), "epochs"),
        (
            json!({"target": "label", "hidden": [64, 100000]}),
            "hidden[1]",
        ),
        (json!({"target": "label", "hidden": vec![8; 20]}), "hidden"),
        (json!({"target": "label", "batch_size": 0}), "batch_size"),
        (
            json!({"target": "label", "learning_rate": 0}),
            "learning_rate",
        ),
        (
            json!({"target": "label", "validation_split": 0.9}),
            "validation_split",
        ),
        (json!({"target": "label", "kind": "clustering"}), "kind"),
        (json!({"target": "label", "epochz": 3}), "epochz"),
        (json!({"epochs": 3}), "target"),
        (
            json!({"target": "label", "features": ["label"]}),
            "features",
        ),
    ];
    for (params, field) in cases {
        let (status, body) = app
            .submit_files("train", params.clone(), &[("a.csv", &csv)])
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{params}: {body}");
        assert_eq!(body["error"]["code"], "invalid_params", "{params}");
        assert_eq!(body["error"]["field"], field, "{params}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(field));
    }
    let (status, body) = app
        .submit_files(
            "predict",
            json!({"model": uuid::Uuid::new_v4()}),
            &[("a.csv", &csv)],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["field"], "model");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no model"));

    let (content_type, body) = multipart(
        &[("command", "train"), ("params", "{not json")],
        &[("a.csv", &csv)],
    );
    let (status, body) = app.post_raw("/api/v1/tasks", &content_type, body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["field"], "params");

    // Nothing was queued by any of these.
    let (_, page) = app.get("/api/v1/tasks").await;
    assert!(page["tasks"].as_array().unwrap().is_empty(), "{page}");
}

#[actix_web::test]
async fn unknown_commands_missing_files_and_wrong_media_types() {
    let app = spawn_app().await;
    let (status, body) = app
        .post_json("/api/v1/tasks", &json!({"command": "dance"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "unknown_command");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("train"),
        "lists the known ones"
    );

    let (status, body) = app
        .post_json(
            "/api/v1/tasks",
            &json!({"command": "train", "params": {"target": "y"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["code"], "missing_file");

    let (status, body) = app
        .submit_files(
            "train",
            json!({"target": "y"}),
            &[("a.csv", b"y\n1\n"), ("b.csv", b"y\n2\n")],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["code"], "too_many_files");

    let (status, body) = app
        .post_raw("/api/v1/tasks", "text/plain", b"train please".to_vec())
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(body["error"]["code"], "unsupported_media_type");

    let (status, body) = app
        .post_raw(
            "/api/v1/tasks",
            "application/json",
            b"{\"command\": ".to_vec(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_json");

    let (status, body) = app
        .post_raw(
            "/api/v1/tasks",
            "multipart/form-data; boundary=xyz",
            b"garbage without parts".to_vec(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[actix_web::test]
async fn bodies_over_the_limit_are_413_and_leave_no_files() {
    let app = spawn_app_with(|s| s.max_request_bytes = 64 * 1024).await;
    let big = vec![b'1'; 200 * 1024];
    let (status, body) = app
        .submit_files("sleep", json!({}), &[("big.csv", &big)])
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");
    assert!(body["error"]["message"].as_str().unwrap().contains("65536"));

    // Without a Content-Length the limit is enforced while streaming.
    let (content_type, payload) = multipart(&[("command", "sleep")], &[("big.csv", &big)]);
    let stream = futures_util::stream::iter(
        payload
            .chunks(8192)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let mut res = app
        .client
        .post(app.url("/api/v1/tasks"))
        .insert_header(("content-type", content_type))
        .send_stream(stream)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");

    assert_eq!(app.stored_objects(), 0, "rejected uploads leave no objects");
    let (_, page) = app.get("/api/v1/tasks").await;
    assert!(page["tasks"].as_array().unwrap().is_empty());
}

/// 301,000 rows whose text column has 1,000 levels: a 301 M-value one-hot
/// matrix, over the 300 M limit, from a file of 3 MB.
fn too_wide() -> Vec<u8> {
    let mut csv = String::from("code,y\n");
    for i in 0..301_000 {
        csv.push_str(&format!("c{},{}\n", i % 1000, i % 2));
    }
    csv.into_bytes()
}

#[actix_web::test]
async fn per_file_count_and_type_limits_are_named() {
    let app = spawn_app_with(|s| {
        s.max_file_bytes = 1000;
        s.max_files = 2;
    })
    .await;
    let big = vec![b'x'; 2000];
    let (status, body) = app
        .submit_files("sleep", json!({}), &[("big.csv", &big)])
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "file_too_large");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_file_bytes"));

    let small: &[u8] = b"x\n1\n";
    let (status, body) = app
        .submit_files(
            "sleep",
            json!({}),
            &[("1.csv", small), ("2.csv", small), ("3.csv", small)],
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "too_many_parts");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_files"));

    let (content_type, payload) = multipart_with_headers("train", b"\x89PNG", "image/png", &[]);
    let (status, body) = app.post_raw("/api/v1/tasks", &content_type, payload).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    assert_eq!(body["error"]["code"], "unsupported_file_type");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("text/csv"),
        "{body}"
    );

    assert_eq!(app.stored_objects(), 0);
    let (_, page) = app.get("/api/v1/tasks").await;
    assert!(page["tasks"].as_array().unwrap().is_empty());
}

#[actix_web::test]
async fn client_checksums_are_verified() {
    use base64::Engine;
    use md5::Digest as _;
    let app = spawn_app().await;
    let file = b"a,b\n1,2\n";
    let sha_hex = hex::encode(sha2::Sha256::digest(file));
    let md5_b64 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(file));
    let cases = [
        (("x-checksum-sha256", sha_hex.clone()), true),
        (
            (
                "x-checksum-sha256",
                base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(file)),
            ),
            true,
        ),
        (("content-md5", md5_b64), true),
        (
            (
                "x-checksum-sha256",
                hex::encode(sha2::Sha256::digest(b"other")),
            ),
            false,
        ),
        (
            (
                "content-md5",
                base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(b"other")),
            ),
            false,
        ),
    ];
    for ((header, value), ok) in cases {
        let (content_type, payload) =
            multipart_with_headers("sleep", file, "text/csv", &[(header, &value)]);
        let (status, body) = app.post_raw("/api/v1/tasks", &content_type, payload).await;
        if ok {
            assert_eq!(status, StatusCode::ACCEPTED, "{header}: {body}");
            assert_eq!(body["inputs"][0]["sha256"], sha_hex);
        } else {
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{header}: {body}");
            assert_eq!(body["error"]["code"], "checksum_mismatch");
        }
    }
    let (_, page) = app.get("/api/v1/tasks").await;
    assert_eq!(
        page["tasks"].as_array().unwrap().len(),
        3,
        "mismatches created no task"
    );
}

#[actix_web::test]
async fn an_upload_slower_than_half_the_orphan_grace_is_refused() {
    // The collector may delete unreferenced objects older than the grace
    // period: an upload must finish well within it.
    let app = spawn_app_with(|s| s.orphan_grace = Duration::from_secs(2)).await;
    let (content_type, payload) = multipart(
        &[("command", "sleep")],
        &[("slow.csv", &vec![b'1'; 64 * 1024])],
    );
    let chunks: Vec<bytes::Bytes> = payload
        .chunks(8 * 1024)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    let stream = futures_util::stream::iter(chunks).then(|chunk| async move {
        actix_web::rt::time::sleep(Duration::from_millis(250)).await;
        Ok::<_, std::io::Error>(chunk)
    });
    let mut res = app
        .client
        .post(app.url("/api/v1/tasks"))
        .insert_header(("content-type", content_type))
        .send_stream(stream)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upload_timeout");
    assert_eq!(app.stored_objects(), 0);
}
