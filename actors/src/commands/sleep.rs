//! `sleep`: a diagnostic command for tests and benchmarks. It waits, reports
//! progress each step, can log a given number of lines, and can be told to
//! fail or panic. Only registered
//! when diagnostics are enabled in the config.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Command, Params};
use crate::error::{ErrorCode, JobError};
use crate::progress::Progress;
use crate::task::{JobContext, Outcome};

pub const MAX_MS: u64 = 600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// Fails with a transient error, which is retried.
    Transient,
    /// Fails with a permanent error.
    Permanent,
    /// Panics on the worker thread.
    Panic,
    /// Aborts the whole process, as a crash in native code would.
    Abort,
    /// Sleeps `ms` without ever checking for cancellation, as a job stuck
    /// inside one libtorch call would.
    Hang,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SleepParams {
    /// How long to sleep, in milliseconds.
    #[serde(default)]
    #[schemars(range(max = MAX_MS))]
    pub ms: u64,
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 10_000))]
    pub steps: u32,
    #[serde(default)]
    pub fail: Option<Failure>,
    /// Log lines to write, one per step (the rest with the last step).
    #[serde(default)]
    #[schemars(range(max = 100_000))]
    pub log_lines: u32,
    /// Bytes of filler in the result, for outcomes too big to keep.
    #[serde(default)]
    #[schemars(range(max = 268_435_456))]
    pub result_bytes: u64,
}

fn one() -> u32 {
    1
}

impl Params for SleepParams {}

pub struct Sleep;

impl Command for Sleep {
    const NAME: &'static str = "sleep";
    const SUMMARY: &'static str =
        "Diagnostics: sleeps, reporting progress, and can fail or crash on request.";
    const CONTENT_TYPES: &'static [&'static str] = &[];
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(900);
    const FILES: std::ops::RangeInclusive<usize> = 0..=16;
    type Params = SleepParams;

    fn run(&self, p: SleepParams, ctx: &JobContext) -> Result<Outcome, JobError> {
        match p.fail {
            Some(Failure::Abort) => std::process::abort(),
            Some(Failure::Hang) => {
                std::thread::sleep(Duration::from_millis(p.ms));
                return Ok(Outcome {
                    result: json!({ "slept_ms": p.ms, "hung": true }),
                    ..Outcome::default()
                });
            }
            _ => {}
        }
        let step = Duration::from_millis(p.ms) / p.steps;
        for i in 1..=p.steps {
            ctx.cancel.check()?;
            if !step.is_zero() {
                std::thread::sleep(step);
            }
            ctx.report.progress(Progress::new(
                f64::from(i) / f64::from(p.steps),
                format!("step {i}/{}", p.steps),
            ));
            let lines = if i == p.steps {
                p.log_lines.saturating_sub(p.steps - 1)
            } else {
                u32::from(i <= p.log_lines)
            };
            for _ in 0..lines {
                ctx.report.info(format!("step {i}/{}", p.steps));
            }
        }
        match p.fail {
            None | Some(Failure::Abort) | Some(Failure::Hang) => Ok(Outcome {
                result: {
                    let mut result = json!({
                        "slept_ms": p.ms,
                        "steps": p.steps,
                        "inputs": ctx.inputs.len(),
                    });
                    if p.result_bytes > 0 {
                        result["filler"] = json!("x".repeat(p.result_bytes as usize));
                    }
                    result
                },
                ..Outcome::default()
            }),
            Some(Failure::Transient) => {
                Err(JobError::storage("sleep was asked to fail transiently"))
            }
            Some(Failure::Permanent) => Err(JobError::new(
                ErrorCode::InvalidParams,
                "sleep was asked to fail",
            )),
            Some(Failure::Panic) => panic!("sleep was asked to panic"),
        }
    }
}
