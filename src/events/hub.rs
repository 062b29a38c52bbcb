//! Fan-out of feed events to the connections of this process.
//!
//! Each connection has a bounded mailbox. A slow reader never blocks the
//! publisher (the notification listener) or other readers: once its mailbox
//! holds `buffer` events, further progress updates are coalesced to the
//! latest per task. Status changes, log lines and deletions are never
//! dropped; a reader that falls `8 × buffer` of them behind is told to go
//! away, and its client resumes from its last sequence number, replaying
//! what it missed from Postgres.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};

use uuid::Uuid;

use super::{FeedEvent, Kind};

/// What a connection follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Task(Uuid),
    /// Every task of `owner` (of everyone when `None`: an admin's feed);
    /// log lines only when asked for.
    All {
        logs: bool,
        owner: Option<Uuid>,
    },
}

impl Scope {
    fn wants(&self, event: &FeedEvent) -> bool {
        match self {
            Self::Task(id) => *id == event.task,
            Self::All { logs, owner } => {
                (*logs || event.kind != Kind::Log) && (owner.is_none() || *owner == event.owner)
            }
        }
    }
}

pub struct Hub {
    registry: Mutex<Registry>,
    buffer: usize,
}

#[derive(Default)]
struct Registry {
    next: u64,
    by_task: HashMap<Uuid, HashMap<u64, Arc<Mailbox>>>,
    all: HashMap<u64, (Scope, Arc<Mailbox>)>,
}

impl Hub {
    /// `buffer`: events a mailbox holds before progress is coalesced.
    pub fn new(buffer: usize) -> Arc<Self> {
        Arc::new(Self {
            registry: Mutex::new(Registry::default()),
            buffer: buffer.max(1),
        })
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts collecting events for `scope`; they wait in the returned
    /// subscription's mailbox until taken.
    pub fn subscribe(self: &Arc<Self>, scope: Scope) -> Subscription {
        let mailbox = Arc::new(Mailbox::new(self.buffer));
        let mut registry = self.registry();
        let id = registry.next;
        registry.next += 1;
        match scope {
            Scope::Task(task) => {
                registry
                    .by_task
                    .entry(task)
                    .or_default()
                    .insert(id, mailbox.clone());
            }
            Scope::All { .. } => {
                registry.all.insert(id, (scope, mailbox.clone()));
            }
        }
        Subscription {
            hub: Arc::downgrade(self),
            id,
            scope,
            mailbox,
        }
    }

    pub fn publish(&self, event: FeedEvent) {
        let event = Arc::new(event);
        let registry = self.registry();
        if let Some(followers) = registry.by_task.get(&event.task) {
            for mailbox in followers.values() {
                mailbox.push(&event);
            }
        }
        for (scope, mailbox) in registry.all.values() {
            if scope.wants(&event) {
                mailbox.push(&event);
            }
        }
    }

    /// Tells every connection that events may have been missed (the
    /// listener lost its connection): each closes, and its client resumes
    /// from its last sequence number.
    pub fn interrupt(&self, reason: &str) {
        let registry = self.registry();
        let task_boxes = registry.by_task.values().flat_map(|m| m.values());
        for mailbox in task_boxes.chain(registry.all.values().map(|(_, m)| m)) {
            mailbox.close(reason);
        }
    }

    /// Connections following something right now.
    pub fn subscribers(&self) -> usize {
        let registry = self.registry();
        registry.all.len() + registry.by_task.values().map(HashMap::len).sum::<usize>()
    }

    fn unsubscribe(&self, id: u64, scope: Scope) {
        let mut registry = self.registry();
        match scope {
            Scope::Task(task) => {
                if let Some(followers) = registry.by_task.get_mut(&task) {
                    followers.remove(&id);
                    if followers.is_empty() {
                        registry.by_task.remove(&task);
                    }
                }
            }
            Scope::All { .. } => {
                registry.all.remove(&id);
            }
        }
    }
}

/// A connection's end: take events as they come. Dropping it unsubscribes.
pub struct Subscription {
    hub: Weak<Hub>,
    id: u64,
    scope: Scope,
    mailbox: Arc<Mailbox>,
}

impl Subscription {
    /// Resolves once there is something to take (at once if there already is).
    pub async fn ready(&self) {
        self.mailbox.ready.notified().await;
    }

    /// Comes back to `ready` later, for events left after a partial take.
    pub fn wake(&self) {
        self.mailbox.ready.notify_one();
    }

    /// Up to `max` events in arrival order, then the coalesced progress.
    pub fn take(&self, max: usize) -> Batch {
        self.mailbox.take(max)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.unsubscribe(self.id, self.scope);
        }
    }
}

#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<Arc<FeedEvent>>,
    /// Set when the connection must close, and why.
    pub closed: Option<String>,
    /// More is waiting.
    pub more: bool,
}

struct Mailbox {
    inbox: Mutex<Inbox>,
    ready: tokio::sync::Notify,
    buffer: usize,
}

#[derive(Default)]
struct Inbox {
    queue: VecDeque<Arc<FeedEvent>>,
    /// The latest progress per task that arrived while the queue was full.
    coalesced: HashMap<Uuid, Arc<FeedEvent>>,
    closed: Option<String>,
}

impl Mailbox {
    fn new(buffer: usize) -> Self {
        Self {
            inbox: Mutex::new(Inbox::default()),
            ready: tokio::sync::Notify::new(),
            buffer,
        }
    }

    fn inbox(&self) -> std::sync::MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, event: &Arc<FeedEvent>) {
        let mut inbox = self.inbox();
        if inbox.closed.is_some() {
            return;
        }
        match event.kind {
            Kind::Progress if inbox.queue.len() >= self.buffer => {
                inbox.coalesced.insert(event.task, event.clone());
            }
            Kind::Progress => inbox.queue.push_back(event.clone()),
            _ if inbox.queue.len() >= self.buffer * 8 => {
                inbox.closed = Some(format!(
                    "this connection fell more than {} events behind; reconnect with \
                     ?after=<the last seq you saw> to resume",
                    self.buffer * 8
                ));
                inbox.queue.clear();
                inbox.coalesced.clear();
            }
            _ => {
                // A status change carries the task's progress: any older
                // coalesced progress is stale now.
                inbox.coalesced.remove(&event.task);
                inbox.queue.push_back(event.clone());
            }
        }
        drop(inbox);
        self.ready.notify_one();
    }

    fn close(&self, reason: &str) {
        let mut inbox = self.inbox();
        inbox.closed.get_or_insert_with(|| reason.to_owned());
        drop(inbox);
        self.ready.notify_one();
    }

    fn take(&self, max: usize) -> Batch {
        let mut inbox = self.inbox();
        let n = inbox.queue.len().min(max);
        let mut events: Vec<Arc<FeedEvent>> = inbox.queue.drain(..n).collect();
        if inbox.queue.is_empty() && events.len() < max {
            let mut coalesced: Vec<Arc<FeedEvent>> =
                inbox.coalesced.drain().map(|(_, e)| e).collect();
            coalesced.sort_by_key(|e| e.seq);
            events.extend(coalesced);
        }
        let more = !inbox.queue.is_empty() || !inbox.coalesced.is_empty();
        Batch {
            events,
            closed: inbox.closed.clone(),
            more,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use serde_json::json;

    fn event(seq: i64, task: Uuid, kind: Kind) -> FeedEvent {
        let data = match kind {
            Kind::Status => json!({"status": "running"}),
            _ => json!({"fraction": seq}),
        };
        FeedEvent::new(seq, task, kind, Utc::now(), data)
    }

    #[test]
    fn followers_get_only_their_task_and_unsubscribe_on_drop() {
        let hub = Hub::new(16);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let sub = hub.subscribe(Scope::Task(a));
        let all = hub.subscribe(Scope::All {
            logs: false,
            owner: None,
        });
        hub.publish(event(1, a, Kind::Progress));
        hub.publish(event(2, b, Kind::Progress));
        hub.publish(event(3, b, Kind::Log));
        assert_eq!(
            sub.take(10)
                .events
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>(),
            [1]
        );
        assert_eq!(
            all.take(10)
                .events
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(hub.subscribers(), 2);
        drop(sub);
        drop(all);
        assert_eq!(hub.subscribers(), 0);
    }

    #[test]
    fn a_full_mailbox_coalesces_progress_but_keeps_every_status() {
        let hub = Hub::new(4);
        let task = Uuid::new_v4();
        let other = Uuid::new_v4();
        let sub = hub.subscribe(Scope::All {
            logs: true,
            owner: None,
        });
        for seq in 1..=100 {
            hub.publish(event(seq, task, Kind::Progress));
            hub.publish(event(1000 + seq, other, Kind::Progress));
        }
        hub.publish(event(2000, other, Kind::Status));
        let mut seen = Vec::new();
        loop {
            let batch = sub.take(3);
            assert!(batch.closed.is_none());
            if batch.events.is_empty() {
                break;
            }
            seen.extend(batch.events.iter().map(|e| (e.task, e.seq, e.kind)));
        }
        // The first four went in as they came; of the rest, only the newest
        // progress of `task` survives (`other`'s was superseded by its status).
        assert_eq!(seen.len(), 4 + 1 + 1, "{seen:?}");
        assert!(seen.contains(&(other, 2000, Kind::Status)));
        assert!(seen.contains(&(task, 100, Kind::Progress)));
    }

    #[test]
    fn a_reader_too_far_behind_on_status_is_closed_not_fed_forever() {
        let hub = Hub::new(2);
        let task = Uuid::new_v4();
        let sub = hub.subscribe(Scope::Task(task));
        for seq in 0..100 {
            hub.publish(event(seq, task, Kind::Status));
        }
        let batch = sub.take(1000);
        assert!(batch.closed.unwrap().contains("after="));
        assert!(
            batch.events.is_empty(),
            "nothing half-delivered after the gap"
        );
    }

    #[test]
    fn interrupt_closes_every_connection() {
        let hub = Hub::new(2);
        let sub = hub.subscribe(Scope::Task(Uuid::new_v4()));
        hub.interrupt("listener reconnected");
        assert_eq!(sub.take(1).closed.as_deref(), Some("listener reconnected"));
    }
}
