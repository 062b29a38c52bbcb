//! mlq: an ML processing service. Users upload files, start ML commands on
//! them and follow each task's progress; Postgres is the durable queue and a
//! supervised pool of libtorch workers does the work.
//!
//! - [`auth`]: users' credentials, and who each request comes from.
//! - [`config`]: layered settings.
//! - [`startup`]: builds the application (shared by `main` and the tests).
//! - [`http`]: the REST API, one module per resource.
//! - [`db`]: Postgres, including the queue behind the dispatcher's port.
//! - [`storage`]: object storage behind the object-store port.
//! - [`events`]: the live feed, fanned out to WebSocket connections.
//! - `fuzzing`: the readers of user input, as the fuzz targets run them.
//!
//! The actor system itself (dispatcher, ML pool, commands) lives in the
//! `mlq-actors` crate.

pub mod auth;
pub mod config;
pub mod db;
pub mod events;
// The fuzz targets' entry points: built for tests and fuzzing only.
#[cfg(any(test, fuzzing))]
pub mod fuzzing;
pub mod http;
pub mod startup;
pub mod storage;
pub mod telemetry;
