//! What a running job tells its watchers: progress and log lines.
//!
//! A job reports as often as it likes (every batch, if it wants) and never
//! blocks on I/O: the reporter keeps only the latest progress and a bounded
//! batch of log lines, and wakes the dispatcher, which writes at most a few
//! updates per second per task to the store. A chatty job can never flood
//! Postgres, and a quiet one is seen at once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::truncate;

/// Longest log message (and progress stage or message), in bytes.
pub const MAX_LINE_BYTES: usize = 4096;
/// Most data a log line carries, serialized, in bytes; more is replaced by
/// a note saying how much there was.
pub const MAX_LINE_DATA_BYTES: usize = 16 << 10;

/// A task's progress as users see it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// How far along, from 0 to 1.
    pub fraction: f64,
    /// What the job is doing, e.g. `epoch 3/20`.
    pub stage: String,
    pub message: String,
    pub metrics: BTreeMap<String, f64>,
    /// When the job reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
}

impl Progress {
    pub fn new(fraction: f64, stage: impl Into<String>) -> Self {
        Self {
            fraction: fraction.clamp(0.0, 1.0),
            stage: stage.into(),
            ..Self::default()
        }
    }

    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    pub fn with_metric(mut self, name: &str, value: f64) -> Self {
        if value.is_finite() {
            self.metrics.insert(name.to_owned(), value);
        }
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// One line of a task's log: stage changes, epoch summaries, warnings, the
/// error that ended an attempt. `data` carries the figures behind a line
/// (an epoch's metrics, say) for clients that chart them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub at: DateTime<Utc>,
    pub level: Level,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl LogLine {
    /// What a line counts against the task's log cap.
    pub fn cost(&self) -> usize {
        self.message.len() + self.data.as_ref().map_or(0, |d| d.to_string().len())
    }
}

/// What the dispatcher takes from a reporter to write in one go.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// The latest progress, if it changed since the last take.
    pub progress: Option<Progress>,
    pub logs: Vec<LogLine>,
    /// Lines refused since the last take because the log cap was reached.
    pub dropped: u32,
}

impl Report {
    pub fn is_empty(&self) -> bool {
        self.progress.is_none() && self.logs.is_empty() && self.dropped == 0
    }

    /// Bytes of log text this report adds to the task's log.
    pub fn log_bytes(&self) -> usize {
        self.logs.iter().map(LogLine::cost).sum()
    }
}

#[derive(Debug)]
struct State {
    progress: Option<Progress>,
    logs: Vec<LogLine>,
    /// Log bytes the task may still store.
    budget: usize,
    dropped: u32,
    capped: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    changed: tokio::sync::Notify,
}

/// The job's side: report progress and log lines. Cheap to call; never
/// blocks on I/O. Clones share one reporter.
#[derive(Debug, Clone)]
pub struct Reporter(Arc<Shared>);

impl Default for Reporter {
    fn default() -> Self {
        Self::new(1 << 20)
    }
}

impl Reporter {
    /// A reporter that stores at most `log_budget` more bytes of log text;
    /// lines past it are counted, not kept.
    pub fn new(log_budget: usize) -> Self {
        Self(Arc::new(Shared {
            state: Mutex::new(State {
                progress: None,
                logs: Vec::new(),
                budget: log_budget,
                dropped: 0,
                capped: false,
            }),
            changed: tokio::sync::Notify::new(),
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn progress(&self, mut progress: Progress) {
        progress.at.get_or_insert_with(Utc::now);
        progress.stage = truncate(progress.stage, MAX_LINE_BYTES);
        progress.message = truncate(progress.message, MAX_LINE_BYTES);
        self.state().progress = Some(progress);
        self.0.changed.notify_one();
    }

    pub fn log(&self, level: Level, message: impl Into<String>, data: Option<Value>) {
        let data = data.map(|d| {
            let size = d.to_string().len();
            if size > MAX_LINE_DATA_BYTES {
                serde_json::json!({ "omitted": format!("{size} bytes of data, over the limit of {MAX_LINE_DATA_BYTES}") })
            } else {
                d
            }
        });
        let line = LogLine {
            at: Utc::now(),
            level,
            message: truncate(message.into(), MAX_LINE_BYTES),
            data,
        };
        let mut state = self.state();
        let cost = line.cost();
        if !state.capped && cost <= state.budget {
            state.budget -= cost;
            state.logs.push(line);
        } else {
            state.dropped += 1;
            if !state.capped {
                // The one line allowed past the cap: say that lines are missing.
                state.capped = true;
                state.logs.push(LogLine {
                    at: line.at,
                    level: Level::Warn,
                    message: "log limit reached: later lines of this task are dropped".into(),
                    data: None,
                });
            }
        }
        drop(state);
        self.0.changed.notify_one();
    }

    pub fn info(&self, message: impl Into<String>) {
        self.log(Level::Info, message, None);
    }

    pub fn warn(&self, message: impl Into<String>) {
        self.log(Level::Warn, message, None);
    }

    /// The dispatcher's side: everything reported since the last take.
    pub fn take(&self) -> Report {
        let mut state = self.state();
        Report {
            progress: state.progress.take(),
            logs: std::mem::take(&mut state.logs),
            dropped: std::mem::take(&mut state.dropped),
        }
    }

    /// Resolves once something was reported since the last wake-up
    /// (at once if that happened before this call).
    pub async fn changed(&self) {
        self.0.changed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_latest_progress_is_taken() {
        let reporter = Reporter::default();
        assert!(reporter.take().is_empty());
        reporter.progress(Progress::new(0.25, "epoch 1/4"));
        reporter.progress(Progress::new(0.5, "epoch 2/4"));
        let taken = reporter.take().progress.unwrap();
        assert_eq!(taken.stage, "epoch 2/4");
        assert!(taken.at.is_some(), "reports are stamped");
        assert!(reporter.take().is_empty());
    }

    #[test]
    fn fraction_is_clamped_and_non_finite_metrics_dropped() {
        let p = Progress::new(1.5, "x")
            .with_metric("loss", f64::NAN)
            .with_metric("acc", 0.9);
        assert_eq!(p.fraction, 1.0);
        assert_eq!(p.metrics.len(), 1);
    }

    #[test]
    fn logs_past_the_budget_are_counted_with_one_note() {
        let reporter = Reporter::new(10);
        reporter.info("12345");
        reporter.info("678901"); // 5 + 6 > 10: dropped
        reporter.info("abc"); // would fit, but the log is capped now
        reporter.warn("more");
        let report = reporter.take();
        let messages: Vec<&str> = report.logs.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0], "12345");
        assert!(messages[1].contains("log limit reached"));
        assert_eq!(report.dropped, 3);
        assert_eq!(reporter.take().dropped, 0, "counts are handed over once");
    }

    #[test]
    fn lines_and_their_data_are_capped() {
        let reporter = Reporter::new(1 << 30);
        reporter.info("x".repeat(1 << 20));
        reporter.log(
            Level::Info,
            "data",
            Some(serde_json::json!({"cell": "y".repeat(1 << 20)})),
        );
        reporter.progress(Progress::new(0.5, "s".repeat(1 << 20)));
        let report = reporter.take();
        assert!(report.logs[0].message.len() <= MAX_LINE_BYTES);
        assert!(report.logs[1].cost() < MAX_LINE_DATA_BYTES);
        assert!(report.progress.unwrap().stage.len() <= MAX_LINE_BYTES);
    }

    #[tokio::test]
    async fn a_report_before_waiting_still_wakes() {
        let reporter = Reporter::default();
        reporter.info("early");
        tokio::time::timeout(std::time::Duration::from_secs(1), reporter.changed())
            .await
            .expect("the wake-up is kept");
    }
}
