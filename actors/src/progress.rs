//! Progress reporting from ML threads.
//!
//! A job reports as often as it likes (every batch, if it wants); the
//! reporter only keeps the latest value. The dispatcher samples it on a
//! timer and writes at most a few updates per second per task to the store,
//! so a chatty job can never flood Postgres.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// A task's progress as users see it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// How far along, from 0 to 1.
    pub fraction: f64,
    /// What the job is doing, e.g. `epoch 3/20`.
    pub stage: String,
    pub message: String,
    pub metrics: BTreeMap<String, f64>,
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

#[derive(Debug, Default)]
struct Latest {
    progress: Progress,
    version: u64,
}

/// The job's side: report progress. Cheap to call; never blocks on I/O.
#[derive(Debug, Clone, Default)]
pub struct ProgressReporter(Arc<Mutex<Latest>>);

impl ProgressReporter {
    pub fn report(&self, progress: Progress) {
        let mut latest = self.0.lock().unwrap_or_else(|e| e.into_inner());
        latest.progress = progress;
        latest.version += 1;
    }

    /// The dispatcher's side: the latest progress, if it changed since the
    /// version the caller last saw.
    pub fn take_newer(&self, seen: &mut u64) -> Option<Progress> {
        let latest = self.0.lock().unwrap_or_else(|e| e.into_inner());
        (latest.version > *seen).then(|| {
            *seen = latest.version;
            latest.progress.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_newer_progress_is_taken() {
        let reporter = ProgressReporter::default();
        let mut seen = 0;
        assert_eq!(reporter.take_newer(&mut seen), None);
        reporter.report(Progress::new(0.25, "epoch 1/4"));
        reporter.report(Progress::new(0.5, "epoch 2/4"));
        let taken = reporter.take_newer(&mut seen).unwrap();
        assert_eq!(taken.stage, "epoch 2/4");
        assert_eq!(reporter.take_newer(&mut seen), None);
    }

    #[test]
    fn fraction_is_clamped_and_non_finite_metrics_dropped() {
        let p = Progress::new(1.5, "x")
            .with_metric("loss", f64::NAN)
            .with_metric("acc", 0.9);
        assert_eq!(p.fraction, 1.0);
        assert_eq!(p.metrics.len(), 1);
    }
}
