//! Postgres: connection pool, database creation, migrations, and the queries
//! for each aggregate (`tasks`, `models`, the `queue` the dispatcher uses).
//!
//! Query functions take `&impl GenericClient`, so they run the same on a
//! pooled connection or inside a transaction.

pub mod announcer;
pub mod events;
pub mod listener;
pub mod models;
pub mod queue;
pub mod tasks;
pub mod usage;
pub mod users;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use crate::config::Settings;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Errors of the database layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Postgres cannot be reached at all: the one error an operator must act
    /// on before anything works, so its message says how.
    #[error(
        "cannot reach Postgres at {target}: {reason}. Start it (on Debian: \
         `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, \
         or `make db`) or point MLQ_DATABASE_URL at a running server"
    )]
    Unreachable { target: String, reason: String },
    #[error("invalid database URL: {0}")]
    Config(String),
    #[error("database query failed: {}", describe(.0))]
    Query(#[from] tokio_postgres::Error),
    #[error("no database connection available: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database migration failed: {0}")]
    Migration(#[from] refinery::Error),
    /// A row did not have the shape this version expects.
    #[error("unexpected row: {0}")]
    RowShape(String),
}

impl DbError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unreachable { .. } | Self::Pool(_) => "database_unavailable",
            Self::Query(e) if !is_statement_error(e) => "database_unavailable",
            Self::Config(_) => "database_config",
            Self::Query(_) | Self::RowShape(_) => "database_error",
            Self::Migration(_) => "migration_failed",
        }
    }

    /// Whether retrying later could help (the database is down, restarting
    /// or busy), rather than the statement being at fault.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Pool(_) => true,
            Self::Query(e) => !is_statement_error(e),
            _ => false,
        }
    }
}

/// A query error with the server's own message: tokio-postgres shows it as
/// just "db error".
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// Whether Postgres refused the statement itself, so that running it again
/// would fail the same way: data exceptions (SQLSTATE class 22), integrity
/// violations (23), program limits (54), syntax and access errors (42),
/// unsupported features (0A) and internal errors (XX). Everything else
/// (no answer, a closed connection, a server shutting down, a statement
/// timeout, a deadlock) is the database being unavailable for now.
pub fn is_statement_error(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code().map(|c| &c.code()[..2]),
        Some("22" | "23" | "54" | "42" | "0A" | "XX")
    )
}

/// How to reach Postgres, and how long anything may wait for it.
#[derive(Debug, Clone)]
pub struct PgConfig {
    pub config: tokio_postgres::Config,
    /// Longest wait for a pooled connection, and for a new one to open: a
    /// request while Postgres is down answers 503 after this, not hangs.
    pub wait_timeout: Duration,
    /// `statement_timeout` of every pooled connection.
    pub statement_timeout: Duration,
}

impl PgConfig {
    pub fn from_settings(settings: &Settings) -> Result<Self, DbError> {
        let config = settings
            .postgres()
            .map_err(|e| DbError::Config(e.to_string()))?;
        Ok(Self {
            config,
            wait_timeout: settings.database_wait_timeout,
            statement_timeout: settings.statement_timeout,
        })
    }
}

/// Connects, creating the database if it does not exist and applying
/// migrations, and returns a pool of `size` connections.
pub async fn connect(pg: &PgConfig, size: usize) -> Result<Pool, DbError> {
    ensure_database(&pg.config).await?;
    migrate(&pg.config).await?;
    pool(pg, size)
}

/// A pool of up to `size` connections. Connections are opened lazily and
/// driven on the arbiter that opens them.
pub fn pool(pg: &PgConfig, size: usize) -> Result<Pool, DbError> {
    build_pool(pg, pg.config.clone(), "", size, RecyclingMethod::Verified)
}

/// What a queue connection is for; each kind commits and announces
/// differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueConn {
    /// Submissions (task inserts): committed durably; announced after their
    /// commit.
    Submissions,
    /// Outcomes: committed durably; announced after their commit.
    Outcomes,
    /// Claims: not waiting for the WAL flush; announced after their commit.
    Claims,
    /// Heartbeats, progress, logs, rescues and releases: not waiting for
    /// the WAL flush; announced as they commit.
    Fast,
    /// The announcer's: not waiting for the WAL flush. It sorts what it
    /// announces, so explicit sorts stay enabled.
    Announce,
}

/// The settings of the claim connections.
///
/// The claim is one statement of several steps (`sql/claim.sql`). Left to
/// choose, the planner plans it afresh on every execution: 0.6 ms of
/// planning for 0.4 ms of work, measured, which halved the pipeline's
/// throughput. So it runs on one generic plan, which knows neither the
/// tables' sizes when it is used nor how many tasks are asked for. Two
/// kinds of scan are disabled so that it walks the indexes in order and
/// stops early whatever it assumed: sequential scans (a plan made while the
/// tables are still small, as at start-up, would scan them whole for as
/// long as it is kept) and bitmap scans (which gather every match before
/// the first: 60 ms a claim at 50,000 queued tasks of one user, measured).
/// `benches/claim.rs` runs the statement under the same settings.
pub const CLAIM_OPTIONS: &str = "-c enable_sort=off -c enable_seqscan=off \
     -c enable_bitmapscan=off -c plan_cache_mode=force_generic_plan \
     -c synchronous_commit=off \
     -c mlq.announce_after_commit=on";

/// A pool for the dispatcher's queue work (see [`QueueConn`]).
///
/// Its queries all follow an index in order (the claim's `ORDER BY …
/// LIMIT` has an index made for it), but with stale statistics, as after a
/// burst of inserts, the planner may instead sort every queued row on each
/// claim: 5 ms per claim at 6,000 queued tasks, measured. Disabling explicit
/// sorts on these connections keeps the plan that stays cheap however deep
/// the queue is.
pub fn queue_pool(pg: &PgConfig, size: usize, conn: QueueConn) -> Result<Pool, DbError> {
    // See V4's `announce` and the announcer module.
    let options = match conn {
        QueueConn::Submissions => "-c mlq.announce_after_commit=on",
        QueueConn::Outcomes => "-c enable_sort=off -c mlq.announce_after_commit=on",
        QueueConn::Claims => CLAIM_OPTIONS,
        QueueConn::Fast => "-c enable_sort=off -c synchronous_commit=off",
        // Its one statement joins the changes it is handed to the events
        // and tasks tables. Prepared while both are near empty (at start-up),
        // its plan scanned them whole on every batch from then on: 2,000
        // batches read 21 million event rows in one benchmark run. Index
        // lookups are the plan whatever the tables' size.
        QueueConn::Announce => "-c synchronous_commit=off -c enable_seqscan=off",
    };
    // Requests check a connection before using it: one that went dead
    // while pooled (a restarted server, a stalled route) is replaced within
    // the wait timeout instead of hanging the request. The dispatcher's
    // pools skip the round trip; their work retries on its own.
    let recycling = match conn {
        QueueConn::Submissions => RecyclingMethod::Verified,
        _ => RecyclingMethod::Fast,
    };
    build_pool(pg, pg.config.clone(), options, size, recycling)
}

fn build_pool(
    pg: &PgConfig,
    mut config: tokio_postgres::Config,
    options: &str,
    size: usize,
    recycling_method: RecyclingMethod,
) -> Result<Pool, DbError> {
    // The server's side of the same care: a session that went quiet inside
    // a transaction (its client stalled or vanished after an UPDATE) would
    // hold its row locks for as long as the server keeps it, blocking the
    // heartbeat that extends every lease of this process; it is ended
    // after 10 s, and the server probes idle peers as the client does.
    //
    // No JIT: mlq's statements each touch a few rows, and compiling one
    // costs a second or more. The queue's connections disable explicit
    // sorts, which makes any plan with a small sort look expensive enough
    // to compile (seen: a 1.3 s claim that runs in 0.3 ms without).
    config.options(format!(
        "-c statement_timeout={} -c idle_in_transaction_session_timeout=10000 \
         -c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3 \
         -c jit=off {options}",
        pg.statement_timeout.as_millis().max(1)
    ));
    config.connect_timeout(pg.wait_timeout);
    keep_alive(&mut config);
    let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method });
    Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(pg.wait_timeout))
        .create_timeout(Some(pg.wait_timeout))
        .recycle_timeout(Some(pg.wait_timeout))
        .build()
        .map_err(|e| DbError::Config(e.to_string()))
}

/// Short TCP keepalives and a user timeout: a connection whose peer
/// vanished (a cut cable, a black-holed route) errors within about 20 s
/// instead of the kernel's two hours.
pub fn keep_alive(config: &mut tokio_postgres::Config) {
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(5))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(15));
}

/// Opens one connection outside the pool, driving it on this arbiter.
pub async fn connect_one(
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, DbError> {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| unreachable_or_query(config, e))?;
    actix::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("postgres connection ended: {e}");
        }
    });
    Ok(client)
}

fn target(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{host}:{port}/{}",
        config.get_dbname().unwrap_or("postgres")
    )
}

fn unreachable_or_query(config: &tokio_postgres::Config, e: tokio_postgres::Error) -> DbError {
    if e.as_db_error().is_some() {
        DbError::Query(e)
    } else {
        let reason = std::error::Error::source(&e)
            .map(ToString::to_string)
            .unwrap_or_else(|| e.to_string());
        DbError::Unreachable {
            target: target(config),
            reason,
        }
    }
}

/// Creates the configured database when it is missing, so a fresh machine
/// needs no manual `createdb`.
async fn ensure_database(config: &tokio_postgres::Config) -> Result<(), DbError> {
    match connect_one(config).await {
        Ok(_) => return Ok(()),
        Err(DbError::Query(e)) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {}
        Err(e) => return Err(e),
    }
    let name = config.get_dbname().unwrap_or("mlq").to_owned();
    let mut admin = config.clone();
    admin.dbname("postgres");
    let client = connect_one(&admin).await?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match client
        .batch_execute(&format!("CREATE DATABASE {quoted}"))
        .await
    {
        Ok(()) => {
            tracing::info!(database = %name, "created database");
            Ok(())
        }
        // Another process created it first.
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_DATABASE) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Applies pending migrations. An advisory lock serializes processes that
/// start at the same time against one database.
pub async fn migrate(config: &tokio_postgres::Config) -> Result<(), DbError> {
    const LOCK: i64 = 0x006d_6c71_5f6d_6967; // "mlq_mig"
    let mut client = connect_one(config).await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK])
        .await?;
    let report = embedded::migrations::runner().run_async(&mut client).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK])
        .await?;
    for m in report?.applied_migrations() {
        tracing::info!(migration = %m, "applied migration");
    }
    Ok(())
}
