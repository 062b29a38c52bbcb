//! One storage suite, run against both backends: the filesystem store and
//! S3 (rust-s3 against a real s3s-fs server).

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use mlq::storage::{FsStore, S3Store};
use mlq_actors::ports::{ObjectError, ObjectStore, Upload};

use crate::helpers::eventually;
use crate::s3::S3Server;

const MIB: usize = 1 << 20;

/// Deterministic bytes that differ at every offset.
fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
}

async fn read_all(store: &dyn ObjectStore, key: &str) -> Vec<u8> {
    let body = store.open(key).await.expect("open");
    let chunks: Vec<Bytes> = body.stream.map(|c| c.expect("chunk")).collect().await;
    let bytes = chunks.concat();
    assert_eq!(bytes.len() as u64, body.size, "declared size matches");
    bytes
}

/// Writes `bytes` in uneven chunks, as a network upload arrives.
async fn put(store: &dyn ObjectStore, key: &str, bytes: &[u8]) -> mlq_actors::ports::Stored {
    let mut upload = Upload::start(store, key, "application/octet-stream")
        .await
        .unwrap();
    for chunk in bytes.chunks(777_777) {
        upload.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    upload.finish().await.unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn suite(store: &dyn ObjectStore) {
    // A small object: one PUT.
    let small = data(1000);
    let stored = put(store, "inputs/t1/0", &small).await;
    assert_eq!(stored.size, 1000);
    assert_eq!(stored.sha256, sha256(&small));
    assert_eq!(read_all(store, "inputs/t1/0").await, small);

    // Across the 5 MiB part size: three parts, the last one short.
    let big = data(12 * MIB + 12_345);
    let stored = put(store, "inputs/t1/1", &big).await;
    assert_eq!(stored.sha256, sha256(&big));
    assert_eq!(read_all(store, "inputs/t1/1").await, big);

    // Ranges, including the very last byte.
    for (start, end) in [
        (0, 0),
        (10, 19),
        (5 * MIB as u64 - 3, 5 * MIB as u64 + 3),
        (big.len() as u64 - 1, big.len() as u64 - 1),
    ] {
        let body = store.open_range("inputs/t1/1", start, end).await.unwrap();
        assert_eq!(body.size, end - start + 1);
        let got: Vec<Bytes> = body.stream.map(|c| c.unwrap()).collect().await;
        assert_eq!(
            got.concat(),
            &big[start as usize..=end as usize],
            "range {start}-{end}"
        );
    }

    // An aborted upload (after one part went up) leaves no object.
    let mut upload = Upload::start(store, "inputs/t1/2", "text/csv")
        .await
        .unwrap();
    upload.write(Bytes::from(data(6 * MIB))).await.unwrap();
    upload.abort().await;
    assert!(matches!(
        store.open("inputs/t1/2").await,
        Err(ObjectError::NotFound(_))
    ));

    // A writer dropped mid-upload (the client went away) leaves none either.
    let mut upload = Upload::start(store, "inputs/t1/3", "text/csv")
        .await
        .unwrap();
    upload.write(Bytes::from(data(6 * MIB))).await.unwrap();
    drop(upload);
    assert!(matches!(
        store.open("inputs/t1/3").await,
        Err(ObjectError::NotFound(_))
    ));

    // Listing by prefix, and deleting.
    let mut keys: Vec<String> = store
        .list("inputs/t1/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    keys.sort();
    assert_eq!(keys, ["inputs/t1/0", "inputs/t1/1"]);
    assert!(store.list("artifacts/").await.unwrap().is_empty());
    store.delete("inputs/t1/0").await.unwrap();
    store.delete("inputs/t1/0").await.unwrap();
    assert!(matches!(
        store.open("inputs/t1/0").await,
        Err(ObjectError::NotFound(_))
    ));
    assert_eq!(store.list("inputs/").await.unwrap().len(), 1);
}

#[actix_web::test]
async fn filesystem_store_passes_the_storage_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::new(dir.path()).unwrap();
    suite(&store).await;
    let tmp = std::fs::read_dir(dir.path().join(".tmp")).unwrap().count();
    assert_eq!(tmp, 0, "no temporary files are left");
}

#[actix_web::test]
async fn s3_store_passes_the_storage_suite() {
    let server = S3Server::start();
    let store = S3Store::connect(&server.config("suite"))
        .await
        .expect("bucket is created");
    suite(&store).await;
    // Aborted multipart uploads leave nothing on the server's disk: only
    // the one remaining object (and the server's own metadata for it).
    let files = eventually(Duration::from_secs(10), || async {
        let files = server.files();
        let big: Vec<_> = files
            .iter()
            .filter(|f| f.metadata().map(|m| m.len() > MIB as u64).unwrap_or(false))
            .cloned()
            .collect();
        (big.len() == 1).then_some(big)
    })
    .await;
    assert!(files[0].ends_with("inputs/t1/1"), "{files:?}");
}

#[actix_web::test]
async fn s3_errors_say_what_is_wrong() {
    let server = S3Server::start();
    let mut config = server.config("denied");
    config.secret_key = Some("wrong-secret".into());
    let err = S3Store::connect(&config)
        .await
        .err()
        .expect("wrong secret is refused");
    let message = err.to_string();
    assert!(
        message.contains("denied access to bucket \"denied\""),
        "{message}"
    );

    let mut config = server.config("missing");
    config.create_bucket = false;
    let err = S3Store::connect(&config)
        .await
        .err()
        .expect("missing bucket is reported");
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(err.to_string().contains("MLQ_S3_CREATE_BUCKET"), "{err}");
}

#[actix_web::test]
async fn train_and_predict_with_inputs_and_artifacts_in_s3() {
    use awc::http::StatusCode;
    use serde_json::json;

    let server = S3Server::start();
    let app = crate::helpers::spawn_app_with(|s| server.configure(s, "e2e")).await;
    let id = app
        .submit_accepted(
            "train",
            json!({"target": "label", "epochs": 5}),
            &[("blobs.csv", &crate::helpers::blobs_csv(300, 3))],
        )
        .await;
    let task = app.finished(id, Duration::from_secs(120)).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");

    // Everything lives in the bucket; nothing went to the local data dir.
    let store = S3Store::connect(&server.config("e2e")).await.unwrap();
    let keys: Vec<String> = store
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert!(keys.contains(&format!("inputs/{id}/0")), "{keys:?}");
    let artifacts = keys
        .iter()
        .filter(|k| k.starts_with(&format!("artifacts/{id}/")))
        .count();
    assert_eq!(artifacts, 2, "{keys:?}");
    assert!(!app.settings.objects_dir().join("inputs").exists());

    // predict reads the model's weights back from S3.
    let model = task["result"]["model_id"].clone();
    let id = app
        .submit_accepted(
            "predict",
            json!({"model": model}),
            &[("new.csv", &crate::helpers::blobs_csv(50, 4))],
        )
        .await;
    let task = app.finished(id, Duration::from_secs(120)).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");

    // Downloads stream from S3, whole or by range.
    let url = format!("/api/v1/tasks/{id}/artifacts/predictions.csv");
    let (status, headers, whole) = app.get_bytes(&url).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers.get("accept-ranges").unwrap(), "bytes");
    assert_eq!(
        headers.get("content-length").unwrap().to_str().unwrap(),
        whole.len().to_string()
    );
    let mut res = app
        .client
        .get(app.url(&url))
        .insert_header(("range", "bytes=4-13"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        res.headers()
            .get("content-range")
            .unwrap()
            .to_str()
            .unwrap(),
        format!("bytes 4-13/{}", whole.len())
    );
    assert_eq!(res.body().await.unwrap(), &whole[4..14]);
    let res = app
        .client
        .get(app.url(&url))
        .insert_header(("range", "bytes=999999-"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        res.headers()
            .get("content-range")
            .unwrap()
            .to_str()
            .unwrap(),
        format!("bytes */{}", whole.len())
    );
}

#[actix_web::test]
async fn the_collector_deletes_only_old_unreferenced_objects() {
    let app = crate::helpers::spawn_app_with(|s| s.collect_every = Duration::from_secs(3600)).await;
    let id = app
        .submit_accepted("sleep", serde_json::json!({}), &[("a.csv", b"x\n1\n")])
        .await;
    app.finished(id, Duration::from_secs(20)).await;
    let store = FsStore::new(app.settings.objects_dir()).unwrap();
    let orphan = format!("inputs/{}/0", uuid::Uuid::new_v4());
    let young = format!("inputs/{}/0", uuid::Uuid::new_v4());
    put(&store, &orphan, b"left behind").await;
    put(&store, &young, b"still uploading").await;
    // The orphan and the real input are old; the young orphan is not.
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    for key in [&orphan, &format!("inputs/{id}/0")] {
        let file = std::fs::File::options()
            .write(true)
            .open(app.settings.objects_dir().join(key))
            .unwrap();
        file.set_modified(two_hours_ago).unwrap();
    }
    let deleted = mlq::storage::collector::collect(&app.db, &store, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    assert!(matches!(
        store.open(&orphan).await,
        Err(ObjectError::NotFound(_))
    ));
    assert_eq!(read_all(&store, &young).await, b"still uploading");
    assert_eq!(
        read_all(&store, &format!("inputs/{id}/0")).await,
        b"x\n1\n",
        "referenced: kept"
    );
}

#[actix_web::test]
async fn the_collector_removes_writes_a_dead_process_left_unfinished() {
    let app = crate::helpers::spawn_app_with(|s| s.collect_every = Duration::from_secs(3600)).await;
    let store = FsStore::new(app.settings.objects_dir()).unwrap();
    // A write begun and never finished or aborted, as when a process dies
    // mid-upload.
    let mut writer = store
        .writer(&format!("inputs/{}/0", uuid::Uuid::new_v4()), "text/csv")
        .await
        .unwrap();
    writer
        .write(Bytes::from_static(b"half an upload"))
        .await
        .unwrap();
    std::mem::forget(writer);
    let tmp = app.settings.objects_dir().join(".tmp");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 1);
    // Within the grace period it may still finish: kept.
    mlq::storage::collector::collect(&app.db, &store, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 1);
    let removed = mlq::storage::collector::collect(&app.db, &store, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
}

/// Sends the start of a multipart upload over a raw socket, `bytes` of file
/// content, then hangs up.
async fn upload_and_disconnect(app: &crate::helpers::TestApp, bytes: usize) {
    use tokio::io::AsyncWriteExt;
    let boundary = "mlq-disconnect";
    let host = app.address.trim_start_matches("http://");
    let auth = app.auth_line();
    let mut stream = tokio::net::TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST /api/v1/tasks HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: multipart/form-data; boundary={boundary}\r\n\
         Content-Length: {}\r\n\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"command\"\r\n\r\nsleep\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.csv\"\r\n\
         Content-Type: text/csv\r\n\r\n",
        100 * MIB
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'7'; 64 * 1024];
    for _ in 0..bytes / chunk.len() {
        stream.write_all(&chunk).await.unwrap();
    }
    stream.flush().await.unwrap();
    // Let the server take it in, then vanish mid-body.
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    drop(stream);
}

#[actix_web::test]
async fn a_client_that_disconnects_mid_upload_leaves_no_task_and_no_object() {
    let server = S3Server::start();
    let fs_app = crate::helpers::spawn_app().await;
    let s3_app = crate::helpers::spawn_app_with(|s| server.configure(s, "gone")).await;
    // 7 MiB: more than one 5 MiB part went to S3 before the hang-up.
    upload_and_disconnect(&fs_app, 7 * MIB).await;
    upload_and_disconnect(&s3_app, 7 * MIB).await;

    let objects = fs_app.settings.objects_dir();
    eventually(Duration::from_secs(10), || async {
        let left = std::fs::read_dir(objects.join(".tmp")).unwrap().count()
            + std::fs::read_dir(&objects).unwrap().count();
        // Only the (now empty) .tmp folder remains.
        (left == 1).then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), || async {
        let big = server
            .files()
            .into_iter()
            .filter(|f| f.metadata().map(|m| m.len() > MIB as u64).unwrap_or(false))
            .count();
        (big == 0).then_some(())
    })
    .await;
    for app in [&fs_app, &s3_app] {
        let (_, page) = app.get("/api/v1/tasks").await;
        assert!(page["tasks"].as_array().unwrap().is_empty(), "{page}");
    }
}
