//! The `mlq` binary itself: database creation, migrations, and the one-line
//! hint when Postgres cannot be reached.

use std::process::Command;

use crate::helpers::{new_database_name, test_settings};

#[actix_web::test]
async fn migrate_creates_the_database_and_its_tables() {
    let database = new_database_name();
    let settings = test_settings(&database);
    let url = secrecy::ExposeSecret::expose_secret(&settings.database_url).to_owned();
    let out = Command::new(env!("CARGO_BIN_EXE_mlq"))
        .args(["migrate", "--database-url", &url])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pool = mlq::db::connect(&mlq::db::PgConfig::from_settings(&settings).unwrap(), 8)
        .await
        .unwrap();
    let client = pool.get().await.unwrap();
    let tables: Vec<String> = client
        .query(
            "SELECT table_name FROM information_schema.tables
             WHERE table_schema = 'public' AND table_name IN ('tasks', 'task_inputs', 'artifacts', 'models')
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tables, ["artifacts", "models", "task_inputs", "tasks"]);
}

#[test]
fn an_unreachable_postgres_gets_one_line_saying_how_to_start_it() {
    // Nothing listens on port 1.
    let out = Command::new(env!("CARGO_BIN_EXE_mlq"))
        .args([
            "serve",
            "--database-url",
            "postgres://postgres@127.0.0.1:1/mlq",
            "--bind",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("cannot reach Postgres at 127.0.0.1:1/mlq"),
        "{stderr}"
    );
    assert!(lines[0].contains("pg_ctlcluster"), "{stderr}");
}

#[test]
fn a_bad_config_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mlq.toml");
    std::fs::write(&file, "wrokers = 2\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mlq"))
        .args(["--config", file.to_str().unwrap(), "migrate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrokers"));
}

#[test]
fn the_docker_files_build_what_the_repository_builds() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("docker/Dockerfile")).unwrap();
    let compose = std::fs::read_to_string(root.join("docker/compose.yml")).unwrap();
    let fetch = std::fs::read_to_string(root.join("scripts/libtorch.sh")).unwrap();
    // The image fetches libtorch with the repository's own script and
    // copies the library folder the binary's rpath names.
    assert!(dockerfile.contains("RUN scripts/libtorch.sh"));
    let version = fetch
        .lines()
        .find_map(|l| l.strip_prefix("version="))
        .unwrap();
    assert!(
        dockerfile.contains(&format!("libtorch-{version}/lib")),
        "Dockerfile and scripts/libtorch.sh disagree on {version}"
    );
    assert!(dockerfile.contains("cargo build --release --bin mlq"));
    // The dashboard is built from the lock file and served from where the
    // image says.
    assert!(dockerfile.contains("npm ci") && dockerfile.contains("npm run build"));
    assert!(dockerfile.contains("COPY --from=web /web/dist /usr/share/mlq/web"));
    assert!(dockerfile.contains("MLQ_WEB_DIR=/usr/share/mlq/web"));
    // Compose builds that Dockerfile from the repository root, and every
    // mlq process shares one database and one object volume.
    assert!(compose.contains("dockerfile: docker/Dockerfile"));
    assert!(compose.contains("context: .."));
    assert_eq!(
        compose.matches("MLQ_DATABASE_URL").count(),
        1,
        "one anchor shared by all mlq services"
    );
    assert!(compose.contains("<<: *mlq"));
}
