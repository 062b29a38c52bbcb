//! mlq's actor system and ML code.
//!
//! This crate knows nothing about HTTP or Postgres. It defines the domain
//! types of a task's life ([`task`]), the ports the outside world plugs into
//! ([`ports`]: where task state lives, where bytes live), and the actors that
//! move work along:
//!
//! - [`dispatcher::Dispatcher`] claims due tasks from the [`ports::TaskStore`],
//!   stages their inputs from the [`ports::ObjectStore`], hands them to the
//!   pool, keeps their leases alive, and records each outcome (fenced by the
//!   lease, so a worker that lost its lease cannot overwrite a newer attempt).
//! - [`pool::MlWorker`] runs on dedicated OS threads (`SyncArbiter`) at a
//!   lower OS priority, so libtorch never competes on equal terms with the
//!   async arbiters that serve HTTP. It catches panics per job, so the pool
//!   never shrinks.
//! - [`commands`] holds the ML commands (`train`, `predict`, `sleep`), each a
//!   typed [`commands::Command`] with parsed, validated params.

pub mod attempt;
pub mod commands;
pub mod dispatcher;
pub mod error;
pub mod gpu;
pub mod ml;
pub mod pool;
pub mod ports;
pub mod progress;
pub mod task;

pub use error::{ErrorCode, JobError};
