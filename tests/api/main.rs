//! Integration tests: each starts the real application on port 0 against its
//! own fresh Postgres database and talks to it over HTTP.

mod access;
mod api;
mod auth;
mod bad_input;
mod cli;
mod dashboard;
mod events;
mod faults;
mod fixtures;
mod hardening;
mod helpers;
mod image_training;
mod limits;
mod ml;
mod models;
mod openapi;
mod process;
mod proxy;
mod queue;
mod quotas;
mod s3;
mod soak;
mod stalls;
mod storage;
