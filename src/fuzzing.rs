//! What the fuzz targets (`fuzz/`, `make fuzz`) run: each reader of user
//! input, fed arbitrary bytes. Any outcome but a panic, a hang or a memory
//! error is fine; refusing the input is the usual one.
//!
//! The functions live here rather than in `fuzz/` so that the test build
//! compiles them (with what they reach inside the crate), and a test runs
//! each over the committed corpus seeds.

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use actix_web::http::header::{self, HeaderMap, HeaderValue};
use serde_json::Value;

use mlq_actors::commands::Commands;
use mlq_actors::ml::archive::{self, Entries};
use mlq_actors::ml::image::decode_bytes;
use mlq_actors::ml::records::Records;
use mlq_actors::ml::registry::ModelRef;
use mlq_actors::ml::table;
use mlq_actors::ml::upload::UploadSpec;
use mlq_actors::ports::ObjectStore;
use mlq_actors::task::CancelToken;

use crate::http::submit::{read_multipart, Form, Intake};
use crate::http::UploadLimits;
use crate::storage::FsStore;

/// A CSV file, as `train`, `predict` and `evaluate` read it: record by
/// record from memory, then the first pass a task makes over a file
/// (header checks, column statistics, column kinds).
pub fn csv(data: &[u8]) {
    let cancel = CancelToken::default();
    let mut records = Records::from_reader(data, &cancel);
    while let Ok(Some(record)) = records.next_record() {
        std::hint::black_box(record.iter().map(str::len).sum::<usize>());
    }
    let path = scratch("csv");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(headers) = table::read_headers(&path) {
        let target = headers.last().map(String::as_str);
        if let Ok((_, stats)) = table::scan(&path, &headers, &headers, target, &cancel) {
            for (name, stats) in headers.iter().zip(&stats) {
                let _ = table::infer_kind(name, stats);
            }
        }
    }
}

/// Params as a submission carries them: checked by every command, with
/// and without files, and read as a model upload's spec.
pub fn params(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let commands = commands();
    for name in commands.names() {
        let command = commands.get(name).expect("a listed command");
        for files in [0, 1, 2] {
            let _ = command.check(value.clone(), files);
        }
    }
    if let Ok(spec) = serde_json::from_value::<UploadSpec>(value.clone()) {
        let _ = spec
            .normalized()
            .map(|s| s.image_input().map(|i| i.check()));
    }
    // Model names, wherever a string could be one.
    if let Value::Object(fields) = &value {
        for v in fields.values().filter_map(Value::as_str) {
            let _ = v.parse::<ModelRef>();
        }
    }
}

/// A `multipart/form-data` body as `POST /api/v1/tasks` and
/// `POST /api/v1/models` read it, files stored on disk. The first line
/// is the boundary, the rest the body.
pub fn multipart(data: &[u8]) {
    let (boundary, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"x"[..], data),
    };
    let Ok(content_type) = HeaderValue::from_bytes(
        &[
            b"multipart/form-data; boundary=".as_slice(),
            boundary.strip_suffix(b"\r").unwrap_or(boundary),
        ]
        .concat(),
    ) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, content_type);
    RUNTIME.with(|runtime| {
        runtime.block_on(async {
            let objects = objects();
            let limits = UploadLimits {
                max_request_bytes: 1 << 20,
                max_file_bytes: 256 << 10,
                max_files: 4,
                max_upload_time: Duration::from_secs(10),
                idle: Duration::from_secs(1),
            };
            let intake = Intake {
                limits: &limits,
                commands: commands(),
                objects,
            };
            for form in [Form::Task, Form::Model] {
                // Sent in pieces, as a network would.
                let chunks: Vec<Result<actix_web::web::Bytes, actix_web::error::PayloadError>> =
                    body.chunks(4096)
                        .map(|c| Ok(actix_web::web::Bytes::copy_from_slice(c)))
                        .collect();
                let mut inputs = Vec::new();
                let _ = read_multipart(
                    &headers,
                    futures_util::stream::iter(chunks),
                    &intake,
                    uuid::Uuid::nil(),
                    form,
                    &mut inputs,
                )
                .await;
                for input in inputs {
                    let _ = objects.delete(&input.key).await;
                }
            }
        })
    });
}

/// An image, as `predict` and image training decode it.
pub fn image(data: &[u8]) {
    if let Ok(image) = decode_bytes(data) {
        std::hint::black_box((image.width(), image.height()));
    }
}

/// A zip archive of images, as image training reads it: every entry, each
/// inflated within the archive's limits.
pub fn zip(data: &[u8]) {
    let Ok(mut entries) = Entries::open(Cursor::new(data), data.len() as u64) else {
        return;
    };
    while let Some(entry) = entries.next_entry() {
        let Ok(entry) = entry else { break };
        let _ = archive::class_folders(&entry.path);
        std::hint::black_box(archive::display_name(&entry.path));
    }
}

fn commands() -> &'static Commands {
    static COMMANDS: OnceLock<Commands> = OnceLock::new();
    COMMANDS.get_or_init(|| Commands::standard(true))
}

fn objects() -> &'static FsStore {
    static OBJECTS: OnceLock<FsStore> = OnceLock::new();
    OBJECTS.get_or_init(|| FsStore::new(scratch("objects")).expect("a scratch object store"))
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
}

/// A path of this process's own under the temporary directory (tmpfs
/// when there is one).
fn scratch(name: &str) -> PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    base.join(format!("mlq-fuzz-{}-{name}", std::process::id()))
}

#[cfg(test)]
mod tests {
    //! Each target over its committed corpus seeds (`fuzz/corpus/*`): the
    //! short version of `make fuzz` that every test run makes.

    use std::path::Path;

    fn seeds(target: &str) -> Vec<Vec<u8>> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let mut seeds: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        assert!(seeds.len() >= 3, "{target} has {} seeds", seeds.len());
        seeds.sort();
        seeds
    }

    #[test]
    fn every_target_takes_its_seeds() {
        for (target, run) in [
            ("csv", super::csv as fn(&[u8])),
            ("params", super::params),
            ("multipart", super::multipart),
            ("image", super::image),
            ("zip", super::zip),
        ] {
            for seed in seeds(target) {
                run(&seed);
            }
        }
        for name in ["csv", "objects"] {
            let _ = std::fs::remove_file(super::scratch(name));
            let _ = std::fs::remove_dir_all(super::scratch(name));
        }
    }
}
