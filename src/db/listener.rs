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

/// Runs the listener on an arbiter (thread) of its own for as long as the
/// system lives: every task change anywhere arrives here, and turning those
/// into feed events must not take turns with the dispatcher. `pool` reads
/// back announcements too big to carry their data.
pub fn spawn(
    config: tokio_postgres::Config,
    dispatcher: Addr<Dispatcher>,
    hub: Arc<Hub>,
    pool: Pool,
) {
    let arbiter = actix::Arbiter::new();
    let (events, announced) = mpsc::unbounded_channel();
    arbiter.spawn(publish(announced, hub.clone(), pool));
    arbiter.spawn(async move {
        let mut backoff = Duration::from_millis(100);
        let mut first = true;
        loop {
            match listen(&config, &dispatcher, &events, &hub, first).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => tracing::warn!("notification listener: {e}; reconnecting in {backoff:?}"),
            }
            first = false;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    });
}

/// Turns announcements into feed events, one at a time and in the order
/// they came, so a big one read back from Postgres is not overtaken by the
/// events after it.
async fn publish(mut announced: mpsc::UnboundedReceiver<String>, hub: Arc<Hub>, pool: Pool) {
    while let Some(payload) = announced.recv().await {
        if hub.subscribers() == 0 {
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
        hub.publish(event);
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

/// Listens until the connection drops.
async fn listen(
    config: &tokio_postgres::Config,
    dispatcher: &Addr<Dispatcher>,
    events: &mpsc::UnboundedSender<String>,
    hub: &Hub,
    first: bool,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (ended_tx, ended) = tokio::sync::oneshot::channel();
    let forward = dispatcher.clone();
    let events = events.clone();
    actix::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        let result = loop {
            match messages.next().await {
                Some(Ok(AsyncMessage::Notification(n))) => match n.channel() {
                    EVENTS_CHANNEL => {
                        let _ = events.send(n.payload().to_owned());
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
    client
        .batch_execute(&format!(
            "LISTEN {TASKS_CHANNEL}; LISTEN {CANCEL_CHANNEL}; LISTEN {EVENTS_CHANNEL};"
        ))
        .await?;
    tracing::debug!("listening for task notifications");
    if !first {
        hub.interrupt(
            "the event stream was interrupted; reconnect with ?after=<the last seq you saw>",
        );
    }
    // Tasks queued while we were not listening would otherwise wait for the
    // next poll.
    dispatcher.do_send(Wake);
    let result = ended.await.unwrap_or(Ok(()));
    drop(client);
    result
}
