//! `make bench`: the claim statement with a deep queue, fair against FIFO.
//!
//! 10 users × 50,000 queued tasks, each user's queued after the one before
//! it, as floods are (`BENCH_SCALE` scales the depth). Each
//! sample claims 4 tasks (a pool's worth of free workers) inside a
//! transaction that is rolled back, so every sample sees the same queue;
//! the two statements alternate, so drift on a shared machine weighs on
//! both alike. The FIFO statement is the claim as it was before claims
//! took turns across users: the baseline the fair one is held to. Each is
//! prepared once and run on a connection set as mlq set it (the fair one
//! on a generic plan, see `db::CLAIM_OPTIONS`), so planning counts as it
//! does in the service.
//!
//! Prints a table and writes `target/bench/claim.json`.

use std::time::Instant;

use serde_json::json;
use tokio_postgres::NoTls;

mod support;

use support::percentile;

const USERS: usize = 10;
const CLAIM: i64 = 4;
const SAMPLES: usize = 300;

/// The claim before fair turns: one ordered scan of the due index.
const FIFO: &str = "
WITH due AS (
    SELECT id FROM tasks
    WHERE status = 'queued' AND run_at <= now() AND command = ANY ($1)
      AND (cardinality(crashed_on) > 0) = $5
    ORDER BY priority DESC, run_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks AS t
SET status = 'running', attempts = t.attempts + 1, lease_token = gen_random_uuid(),
    lease_expires_at = now() + $3 * interval '1 millisecond', claimed_by = $4,
    started_at = coalesce(t.started_at, now()), updated_at = now(),
    progress = '{\"fraction\": 0, \"stage\": \"starting\", \"message\": \"\", \"metrics\": {}}'
FROM due
WHERE t.id = due.id AND $6::bigint >= 0
RETURNING t.id, t.owner,
    (SELECT coalesce(jsonb_agg(i.name), '[]') FROM task_inputs AS i WHERE i.task_id = t.id)";

const FAIR: &str = include_str!("../src/db/sql/claim.sql");

fn main() {
    actix_rt::System::new().block_on(async {
        let per_user = support::scaled(50_000.0, 1_000.0) as i64;
        let database = format!("mlq_bench_claim_{}", std::process::id());
        let url = format!("{}/{database}", support::admin_url());
        // mlq migrates the database as it would for itself.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mlq"))
            .arg("migrate")
            .env("MLQ_DATABASE_URL", &url)
            .env("RUST_LOG", "warn")
            .output()
            .expect("mlq migrate runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // Each statement runs on a connection set as mlq set it: FIFO as it
        // ran before fair claims, the fair one as claims run now.
        let connect = |options: &'static str| {
            let url = url.clone();
            async move {
                let mut config: tokio_postgres::Config = url.parse().unwrap();
                config.options(format!("-c jit=off {options}"));
                let (client, conn) = config.connect(NoTls).await.unwrap();
                actix_rt::spawn(conn);
                client
            }
        };
        let mut fifo_db = connect("-c enable_sort=off -c synchronous_commit=off").await;
        let mut fair_db = connect(mlq::db::CLAIM_OPTIONS).await;
        let filled = Instant::now();
        fifo_db.batch_execute(&format!(
            "INSERT INTO users (id, name)
             SELECT gen_random_uuid(), 'user' || g FROM generate_series(1, {USERS}) AS g;
             INSERT INTO tasks (id, command, owner, run_at)
             SELECT gen_random_uuid(), 'sleep', u.id,
                    now() - interval '1 hour' + (u.n * {per_user} + g) * interval '1 ms'
             FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM users) AS u,
                  generate_series(1, {per_user}) AS g;"
        ))
        .await
        .unwrap();
        // The FIFO claim's own index, which mlq dropped with it (V9).
        fifo_db
            .batch_execute(
                "CREATE INDEX tasks_due ON tasks (priority DESC, run_at, id)
                 WHERE status = 'queued'",
            )
            .await
            .unwrap();
        // On its own: a multi-statement batch is one transaction, and
        // VACUUM refuses to run in one.
        fifo_db.batch_execute("VACUUM ANALYZE tasks").await.unwrap();
        let filled = filled.elapsed();
        let commands = vec!["sleep"];
        let lease = 60_000.0f64;
        let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        let mut owners_per_claim: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
        let fifo = fifo_db.prepare(FIFO).await.unwrap();
        let fair = fair_db.prepare(FAIR).await.unwrap();
        for sample in 0..SAMPLES {
            for which in [0, 1] {
                let (db, statement) = match which {
                    0 => (&mut fifo_db, &fifo),
                    _ => (&mut fair_db, &fair),
                };
                let tx = db.transaction().await.unwrap();
                let started = Instant::now();
                let rows = tx
                    .query(
                        statement,
                        &[&commands, &CLAIM, &lease, &"bench", &false, &0i64],
                    )
                    .await
                    .unwrap();
                let took = started.elapsed().as_secs_f64() * 1000.0;
                assert_eq!(rows.len() as i64, CLAIM);
                tx.rollback().await.unwrap();
                // The first samples warm caches and plans.
                if sample >= 10 {
                    times[which].push(took);
                }
                if which == 0 {
                    let owners: std::collections::HashSet<Option<uuid::Uuid>> =
                        rows.iter().map(|r| r.get(1)).collect();
                    owners_per_claim[0].push(owners.len());
                } else {
                    let ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.get("id")).collect();
                    let owners: i64 = fifo_db
                        .query_one(
                            "SELECT count(DISTINCT owner) FROM tasks WHERE id = ANY ($1)",
                            &[&ids],
                        )
                        .await
                        .unwrap()
                        .get(0);
                    owners_per_claim[1].push(owners as usize);
                }
            }
        }
        for t in &mut times {
            t.sort_by(f64::total_cmp);
        }
        let p = |which: usize, q: f64| percentile(&times[which], q);
        let distinct = |which: usize| {
            owners_per_claim[which].iter().sum::<usize>() as f64
                / owners_per_claim[which].len() as f64
        };
        let report = json!({
            "queued": per_user * USERS as i64,
            "users": USERS,
            "claim_size": CLAIM,
            "samples": times[0].len(),
            "fill_seconds": filled.as_secs_f64(),
            "fifo_ms": {"p50": p(0, 0.5), "p99": p(0, 0.99)},
            "fair_ms": {"p50": p(1, 0.5), "p99": p(1, 0.99)},
            "p50_ratio_fair_over_fifo": p(1, 0.5) / p(0, 0.5),
            "owners_per_claim": {"fifo": distinct(0), "fair": distinct(1)},
        });
        println!(
            "\nclaim statement: {} queued across {USERS} users, {CLAIM} tasks a claim, {} samples each (rolled back)\n",
            report["queued"], report["samples"]
        );
        println!("    {:<10} {:>9} {:>9} {:>18}", "", "p50 ms", "p99 ms", "users per claim");
        for (name, which) in [("fifo", 0), ("fair", 1)] {
            println!(
                "    {name:<10} {:>9.3} {:>9.3} {:>18.2}",
                p(which, 0.5),
                p(which, 0.99),
                distinct(which)
            );
        }
        println!(
            "    ratio fair / fifo (p50): {:.2}",
            report["p50_ratio_fair_over_fifo"].as_f64().unwrap()
        );
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("claim.json"),
            serde_json::to_string_pretty(&report).unwrap(),
        )
        .unwrap();
        drop((fifo_db, fair_db));
        support::drop_database(&database).await;
    });
}
