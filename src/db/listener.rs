//! LISTEN/NOTIFY: wakes the dispatcher the moment a task is queued anywhere,
//! and forwards cancellation requests to whichever process runs the task.
//!
//! tokio-postgres only surfaces notifications on a connection whose
//! `Connection` future the caller drives itself (`poll_message`), so the
//! listener owns one dedicated connection, reconnecting with backoff. While
//! it is down, the dispatcher's polling and heartbeats cover the gap.

use std::time::Duration;

use actix::Addr;
use futures_util::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};
use uuid::Uuid;

use mlq_actors::dispatcher::{CancelTask, Dispatcher, Wake};

pub const TASKS_CHANNEL: &str = "mlq_tasks";
pub const CANCEL_CHANNEL: &str = "mlq_cancel";

/// Runs the listener on the current arbiter for as long as the system lives.
pub fn spawn(config: tokio_postgres::Config, dispatcher: Addr<Dispatcher>) {
    actix::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            match listen(&config, &dispatcher).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => tracing::warn!("notification listener: {e}; reconnecting in {backoff:?}"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    });
}

/// Listens until the connection drops.
async fn listen(
    config: &tokio_postgres::Config,
    dispatcher: &Addr<Dispatcher>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (ended_tx, ended) = tokio::sync::oneshot::channel();
    let forward = dispatcher.clone();
    actix::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        let result = loop {
            match messages.next().await {
                Some(Ok(AsyncMessage::Notification(n))) => match n.channel() {
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
        .batch_execute(&format!("LISTEN {TASKS_CHANNEL}; LISTEN {CANCEL_CHANNEL};"))
        .await?;
    tracing::debug!("listening for task notifications");
    // Tasks queued while we were not listening would otherwise wait for the
    // next poll.
    dispatcher.do_send(Wake);
    let result = ended.await.unwrap_or(Ok(()));
    drop(client);
    result
}
