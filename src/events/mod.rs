//! The live feed: what WebSocket clients are told about tasks.
//!
//! Postgres numbers and announces every change (migration V4); the
//! [`listener`](crate::db::listener) turns each announcement into a
//! [`FeedEvent`] and publishes it on this process's [`Hub`], which hands it
//! to every connection following that task. So a client of any mlq process
//! sees changes made by every process.

mod hub;

pub use hub::{Batch, Hub, Scope, Subscription};

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use mlq_actors::task::TaskStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Status,
    Progress,
    Log,
    Deleted,
}

impl Kind {
    pub fn parse(kind: &str) -> Option<Self> {
        Some(match kind {
            "status" => Self::Status,
            "progress" => Self::Progress,
            "log" => Self::Log,
            "deleted" => Self::Deleted,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Progress => "progress",
            Self::Log => "log",
            Self::Deleted => "deleted",
        }
    }

    /// Whether the task can change after this event: a terminal status or
    /// a deletion ends what a follower needs to track.
    pub fn ends(self, data: &Value) -> bool {
        match self {
            Self::Deleted => true,
            Self::Status => data["status"]
                .as_str()
                .and_then(TaskStatus::parse)
                .is_some_and(TaskStatus::is_finished),
            _ => false,
        }
    }
}

/// One change, serialized once and shared by every connection it goes to.
#[derive(Debug)]
pub struct FeedEvent {
    pub seq: i64,
    pub task: Uuid,
    /// The task's owner: the all-tasks feed of a user who is not an admin
    /// gets only that user's events.
    pub owner: Option<Uuid>,
    pub kind: Kind,
    /// A terminal status or a deletion.
    pub last: bool,
    pub json: String,
}

impl FeedEvent {
    /// The client-facing message: `type`, `task`, `seq` and `at`, then the
    /// event's own fields (a status event's status, attempts, progress,
    /// error and result; a progress event's `progress`; a log line's
    /// level, message and data).
    pub fn new(seq: i64, task: Uuid, kind: Kind, at: DateTime<Utc>, data: Value) -> Self {
        let mut message = Map::new();
        message.insert("type".into(), json!(kind.as_str()));
        message.insert("task".into(), json!(task));
        message.insert("seq".into(), json!(seq));
        message.insert("at".into(), json!(at));
        let last = kind.ends(&data);
        match (kind, data) {
            (Kind::Progress, progress) => {
                message.insert("progress".into(), progress);
            }
            (_, Value::Object(fields)) => message.extend(fields),
            _ => {}
        }
        Self {
            seq,
            task,
            owner: None,
            kind,
            last,
            json: Value::Object(message).to_string(),
        }
    }
}

impl FeedEvent {
    pub fn owned_by(mut self, owner: Option<Uuid>) -> Self {
        self.owner = owner;
        self
    }
}

/// An announcement as Postgres sends it on `mlq_events`. A `big` one came
/// without its data (over the notification size limit): read it back.
#[derive(Debug, serde::Deserialize)]
pub struct Announcement {
    pub seq: i64,
    pub task: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    pub at: DateTime<Utc>,
    #[serde(default)]
    pub owner: Option<Uuid>,
    #[serde(default)]
    pub data: Value,
    #[serde(default)]
    pub big: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_flattened_and_terminal_ones_end_the_task() {
        let e = FeedEvent::new(
            7,
            Uuid::nil(),
            Kind::Status,
            Utc::now(),
            json!({"status": "succeeded", "attempts": 1}),
        );
        let v: Value = serde_json::from_str(&e.json).unwrap();
        assert_eq!(v["type"], "status");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["status"], "succeeded");
        assert!(e.last);
        let running = FeedEvent::new(
            8,
            Uuid::nil(),
            Kind::Status,
            Utc::now(),
            json!({"status": "running"}),
        );
        assert!(!running.last);
    }

    #[test]
    fn progress_is_nested() {
        let e = FeedEvent::new(
            1,
            Uuid::nil(),
            Kind::Progress,
            Utc::now(),
            json!({"fraction": 0.5}),
        );
        let v: Value = serde_json::from_str(&e.json).unwrap();
        assert_eq!(v["progress"]["fraction"], 0.5);
    }
}
