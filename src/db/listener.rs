//! LISTEN/NOTIFY: wakes the dispatcher the moment a task is queued anywhere,
//! forwards cancellation requests to whichever process runs the task, and
//! publishes every process's task changes on this process's event hub.
//!
//! tokio-postgres only surfaces notifications on a connection whose
//! `Connection` future the caller drives itself (`poll_message`), so the
//! listener owns one dedicated connection, reconnecting with backoff. While
//! it is down, the dispatcher's polling and heartbeats cover the gap; feed
//! connections are closed when it comes back, so their clients resume from
//! their last sequence number instead of silently missing events.

use std::time::Duration;

use std::sync::Arc;

use actix::Addr;
use deadpool_postgres::Pool;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};
use uuid::Uuid;

use mlq_actors::dispatcher::{CancelTask, Dispatcher, Wake};

use crate::events::{Announcement, FeedEvent, Hub, Kind};

pub const TASKS_CHANNEL: &str = "mlq_tasks";
pub const CANCEL_CHANNEL: &str = "mlq_cancel";
pub const EVENTS_CHANNEL: &str = "mlq_events";

/// Sent on `EVENTS_CHANNEL` when announcements were lost: every process's
/// feed clients resync.
pub const GAP: &str = "gap";

/// Announcements waiting to be published.
const ANNOUNCED_BUFFER: usize = 10_000;
/// How often the LISTEN connection is probed, and how long a probe waits:
/// a dead connection is noticed within their sum.
const PROBE_EVERY: Duration = Duration::from_secs(10);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the listener on an arbiter (thread) of its own for as long as the
/// system lives: every task change anywhere arrives here, and turning those
/// into feed events must not take turns with the dispatcher. `pool` reads
/// back announcements too big to carry their data.
pub fn spawn(
    config: tokio_postgres::Config,
    dispatcher: Addr<Dispatcher>,
    hub: Arc<Hub>,
    pool: Pool,
) -> Listener {
    let arbiter = actix::Arbiter::new();
    let listener = Listener(arbiter.handle());
    let (events, announced) = mpsc::channel(ANNOUNCED_BUFFER);
    arbiter.spawn(publish(announced, hub.clone(), pool));
    let mut config = config;
    super::keep_alive(&mut config);
    arbiter.spawn(async move {
        let mut backoff = Duration::from_millis(100);
        let mut first = true;
        loop {
            match listen(&config, &dispatcher, &events, &hub, first).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => tracing::warn!("notification listener: {e}; reconnecting in {backoff:?}"),
            }
            // Whatever happened while nobody listened is not coming: feed
            // clients resync now rather than after the reconnect.
            hub.interrupt(
                "the event stream was interrupted; reconnect with ?after=<the last seq you saw>",
            );
            first = false;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    });
    listener
}

/// The listener's thread, stopped (and its connection closed) when the
/// application that started it goes: an arbiter outlives the actix system
/// it was started from, so without this every application started in one
/// process (as the tests do) would leave a connection behind.
pub struct Listener(actix::ArbiterHandle);

impl Drop for Listener {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Turns announcements into feed events, one at a time and in the order
/// they came, so a big one read back from Postgres is not overtaken by the
/// events after it.
async fn publish(mut announced: mpsc::Receiver<String>, hub: Arc<Hub>, pool: Pool) {
    while let Some(payload) = announced.recv().await {
        if hub.subscribers() == 0 {
            continue;
        }
        if payload == GAP {
            hub.interrupt(
                "some events could not be announced; reconnect with ?after=<the last seq you saw>",
            );
            continue;
        }
        let a: Announcement = match serde_json::from_str(&payload) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("bad event announcement ({e}): {payload}");
                continue;
            }
        };
        let Some(kind) = Kind::parse(&a.kind) else {
            continue;
        };
        let event = if a.big {
            match read_back(&pool, &a, kind).await {
                Ok(Some(event)) => event,
                // Deleted since: its deletion is announced next.
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(seq = a.seq, "could not read back an event: {e}");
                    hub.interrupt(
                        "an event could not be read; reconnect with ?after=<the last seq you saw>",
                    );
                    continue;
                }
            }
        } else {
            FeedEvent::new(a.seq, a.task, kind, a.at, a.data)
        };
        hub.publish(event.owned_by(a.owner));
    }
}

async fn read_back(
    pool: &Pool,
    a: &Announcement,
    kind: Kind,
) -> Result<Option<FeedEvent>, super::DbError> {
    let client = pool.get().await?;
    Ok(match kind {
        Kind::Progress => super::events::progress(&client, a.task)
            .await?
            .map(|(seq, progress)| FeedEvent::new(seq, a.task, kind, a.at, progress)),
        _ => super::events::by_seq(&client, a.seq)
            .await?
            .and_then(|row| row.into_feed()),
    })
}

/// Listens until the connection drops, or stops answering.
async fn listen(
    config: &tokio_postgres::Config,
    dispatcher: &Addr<Dispatcher>,
    events: &mpsc::Sender<String>,
    hub: &Arc<Hub>,
    first: bool,
) -> Result<(), String> {
    let (client, mut connection) = tokio::time::timeout(PROBE_TIMEOUT, config.connect(NoTls))
        .await
        .map_err(|_| format!("no answer to connecting within {PROBE_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    let (ended_tx, ended) = tokio::sync::oneshot::channel();
    let forward = dispatcher.clone();
    let events = events.clone();
    let overflow = hub.clone();
    actix::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        let result = loop {
            match messages.next().await {
                Some(Ok(AsyncMessage::Notification(n))) => match n.channel() {
                    EVENTS_CHANNEL => {
                        // Bounded: a burst the publisher cannot keep up with
                        // costs its clients a resync, not this process's
                        // memory.
                        if let Err(mpsc::error::TrySendError::Full(_)) =
                            events.try_send(n.payload().to_owned())
                        {
                            overflow.interrupt(
                                "this process fell behind the event stream; reconnect with \
                                 ?after=<the last seq you saw>",
                            );
                        }
                    }
                    TASKS_CHANNEL => forward.do_send(Wake),
                    CANCEL_CHANNEL => match n.payload().parse::<Uuid>() {
                        Ok(id) => forward.do_send(CancelTask(id)),
                        Err(_) => tracing::warn!("bad cancel notification: {}", n.payload()),
                    },
                    _ => {}
                },
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(e),
                None => break Ok(()),
            }
        };
        let _ = ended_tx.send(result);
    });
    let statement =
        format!("LISTEN {TASKS_CHANNEL}; LISTEN {CANCEL_CHANNEL}; LISTEN {EVENTS_CHANNEL};");
    let listening = client.batch_execute(&statement);
    tokio::time::timeout(PROBE_TIMEOUT, listening)
        .await
        .map_err(|_| format!("no answer to LISTEN within {PROBE_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    tracing::debug!("listening for task notifications");
    if !first {
        hub.interrupt(
            "the event stream was interrupted; reconnect with ?after=<the last seq you saw>",
        );
    }
    // Tasks queued while we were not listening would otherwise wait for the
    // next poll.
    dispatcher.do_send(Wake);
    // A connection can die without a word (a black-holed route): probe it.
    let probe = async {
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            match tokio::time::timeout(PROBE_TIMEOUT, client.simple_query("SELECT 1")).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("probe failed: {e}")),
                Err(_) => return Err(format!("no answer to a probe within {PROBE_TIMEOUT:?}")),
            }
        }
    };
    tokio::select! {
        ended = ended => ended.unwrap_or(Ok(())).map_err(|e| e.to_string()),
        failed = probe => failed,
    }
}
