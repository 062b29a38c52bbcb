//! The live feed over WebSocket, and task logs over plain HTTP.
//!
//! - `GET /api/v1/tasks/{id}/events` follows one task: its status changes,
//!   progress and log lines.
//! - `GET /api/v1/events` follows every task: status changes and progress
//!   (log lines with `?logs=true`).
//!
//! A connection first gets a `snapshot` of the current state, then, if it
//! passed `?after=<seq>`, every stored event numbered after that (status
//! changes and log lines, marked `"replay": true`), then live events as they
//! happen. Every event carries its task and a sequence number; per task the
//! numbers only grow, so a client keeps the highest it has seen and ignores
//! anything older. The server pings every `ws_ping_every` and drops a peer
//! that has not answered within `ws_timeout`.

use std::collections::HashMap;
use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Message, Session};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::ApiError;
use super::openapi::ErrorBody;
use super::routes::Router;
use super::tasks::TaskView;
use super::AppState;
use super::{no_task, page_limit};
use crate::auth::Caller;
use crate::db::{self, users::Viewer};
use crate::events::{Scope, Subscription};
use crate::http::quota::UserSlot;

/// Stored events read per query while replaying.
const REPLAY_PAGE: i64 = 1000;
/// Most status changes replayed on the all-tasks feed; a client further
/// behind relies on the snapshot (it holds every listed task's state).
const REPLAY_ALL_MAX: i64 = 10_000;

pub fn config(r: &mut Router) {
    r.get("/events", follow_all)
        .get("/tasks/{id}/events", follow_task)
        .get("/tasks/{id}/logs", logs);
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct TaskFeedQuery {
    /// Replay the stored events numbered after this `seq` first.
    after: Option<i64>,
    /// A WebSocket ticket: read by `auth` before the handler runs.
    #[allow(dead_code)]
    ticket: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct AllFeedQuery {
    /// Replay the stored status changes numbered after this `seq` first.
    after: Option<i64>,
    /// Tasks in the snapshot, newest first: 1 to 200 (50 if not given).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// Log lines too.
    #[serde(default)]
    logs: bool,
    /// A WebSocket ticket: read by `auth` before the handler runs.
    #[allow(dead_code)]
    ticket: Option<String>,
}

/// Where a connection starts.
enum Start {
    Task {
        id: Uuid,
        after: Option<i64>,
        viewer: Viewer,
    },
    All {
        after: Option<i64>,
        limit: i64,
        viewer: Viewer,
    },
}

/// Follows one task over WebSocket: its status changes, progress and log
/// lines.
#[utoipa::path(
    get,
    path = "/api/v1/tasks/{id}/events",
    tag = "events",
    security(("bearer" = []), ("session" = []), ("ticket" = [])),
    params(("id" = Uuid, Path, description = "The task's id"), TaskFeedQuery),
    responses(
        (status = 101, description = "Switched to WebSocket: a `snapshot` message, any replayed events, then live events, as JSON text messages"),
        (status = 400, description = "Not a WebSocket upgrade, or a bad query", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
    ),
)]
pub(super) async fn follow_task(
    caller: Caller,
    req: HttpRequest,
    body: web::Payload,
    id: web::Path<Uuid>,
    query: web::Query<TaskFeedQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let slots = FeedSlots::take(&req, &state, &caller)?;
    // Answer a missing task with a plain 404 before upgrading.
    let client = state.db.get().await?;
    db::tasks::get(&client, id, caller.viewer())
        .await?
        .ok_or_else(|| no_task(id))?;
    drop(client);
    let subscription = state.hub.subscribe(Scope::Task(id));
    let start = Start::Task {
        id,
        after: query.after,
        viewer: caller.viewer(),
    };
    upgrade(&req, body, state, slots, subscription, start)
}

/// Follows every task the caller may see over WebSocket: status changes
/// and progress (log lines with `logs=true`).
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "events",
    security(("bearer" = []), ("session" = []), ("ticket" = [])),
    params(AllFeedQuery),
    responses(
        (status = 101, description = "Switched to WebSocket: a `snapshot` message, any replayed events, then live events, as JSON text messages"),
        (status = 400, description = "Not a WebSocket upgrade, or a bad query", body = ErrorBody),
    ),
)]
pub(super) async fn follow_all(
    caller: Caller,
    req: HttpRequest,
    body: web::Payload,
    query: web::Query<AllFeedQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let slots = FeedSlots::take(&req, &state, &caller)?;
    let q = query.into_inner();
    let limit = page_limit(q.limit)?;
    let viewer = caller.viewer();
    let subscription = state.hub.subscribe(Scope::All {
        logs: q.logs,
        owner: viewer.owner(),
    });
    let start = Start::All {
        after: q.after,
        limit,
        viewer,
    };
    upgrade(&req, body, state, slots, subscription, start)
}

/// What a live-feed connection holds while it lasts: one of its user's
/// connections (`quota_sockets`) and one of the process's
/// (`max_sockets`).
struct FeedSlots {
    _user: UserSlot,
    _process: tokio::sync::OwnedSemaphorePermit,
}

impl FeedSlots {
    /// Taken before any other work for the connection, the user's first: a
    /// user at their cap costs nothing more, and takes none of the
    /// process's slots from others.
    fn take(req: &HttpRequest, state: &AppState, caller: &Caller) -> Result<Self, ApiError> {
        // Browsers send cookies with cross-site upgrades, and CORS does not
        // cover WebSockets: only mlq's own pages and listed origins get in.
        state.origins.check_origin(req)?;
        let user = state
            .user_sockets
            .take(&caller.user)
            .map_err(ApiError::OverQuota)?;
        // A flood of sockets is refused with a clear error rather than
        // exhausting the process.
        let process = state
            .sockets
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::Busy {
                code: "too_many_sockets",
                message: format!(
                    "this process holds its limit of {} live-feed connections (max_sockets); \
                     retry shortly or poll GET /api/v1/tasks/{{id}}",
                    state.max_sockets
                ),
                retry_after: 5,
            })?;
        Ok(Self {
            _user: user,
            _process: process,
        })
    }
}

fn upgrade(
    req: &HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    slots: FeedSlots,
    subscription: Subscription,
    start: Start,
) -> Result<HttpResponse, ApiError> {
    let (response, session, messages) = actix_ws::handle(req, body).map_err(|e| {
        ApiError::bad_request(
            "websocket_required",
            format!("this endpoint speaks WebSocket only: {e}"),
        )
    })?;
    actix_web::rt::spawn(async move {
        // Held until the connection ends.
        let _slots = slots;
        let mut feed = Feed {
            session,
            newest: HashMap::new(),
            timeout: state.feed.timeout,
        };
        // The subscription was taken before the snapshot is read, so nothing
        // that happens in between is lost; anything both in the snapshot or
        // replay and in the mailbox is sent once (see `Feed::send`).
        match feed.begin(&state, start).await {
            Ok(()) => feed.run(&state, subscription, messages).await,
            Err(Ended::Closed) => {}
            Err(Ended::Failed(e)) => {
                tracing::warn!("feed could not start: {e}");
                let close = feed.session.clone().close(Some(CloseReason {
                    code: CloseCode::Error,
                    description: Some(format!("the feed could not start ({})", e.code())),
                }));
                let _ = tokio::time::timeout(feed.timeout, close).await;
            }
        }
    });
    Ok(response)
}

enum Ended {
    /// The peer went away.
    Closed,
    Failed(ApiError),
}

impl From<actix_ws::Closed> for Ended {
    fn from(_: actix_ws::Closed) -> Self {
        Self::Closed
    }
}

impl From<ApiError> for Ended {
    fn from(e: ApiError) -> Self {
        Self::Failed(e)
    }
}

impl From<db::DbError> for Ended {
    fn from(e: db::DbError) -> Self {
        Self::Failed(e.into())
    }
}

struct Feed {
    session: Session,
    /// Per task: the highest sequence number sent, and whether the task
    /// ended (a terminal status or deletion) as of that number.
    newest: HashMap<Uuid, (i64, bool)>,
    /// Longest any send may wait: a client that stops reading is dropped
    /// within this, however much its TCP buffers still take.
    timeout: std::time::Duration,
}

impl Feed {
    /// Sends the snapshot, then the replay. Database connections are held
    /// only while querying, never while a (possibly slow) client reads.
    async fn begin(&mut self, state: &AppState, start: Start) -> Result<(), Ended> {
        let (task, after, viewer) = match start {
            Start::Task { id, after, viewer } => {
                let client = state.db.get().await.map_err(db::DbError::from)?;
                let found = db::tasks::get(&client, id, viewer).await?;
                drop(client);
                let Some(task) = found else {
                    // Deleted after the check before the upgrade.
                    self.text(json!({"type": "deleted", "task": id}).to_string())
                        .await?;
                    return Err(Ended::Closed);
                };
                self.newest.insert(id, (task.seq, false));
                let seq = task.seq;
                let task = TaskView::from(task);
                self.text(json!({"type": "snapshot", "seq": seq, "task": task}).to_string())
                    .await?;
                (Some(id), after, viewer)
            }
            Start::All {
                after,
                limit,
                viewer,
            } => {
                let client = state.db.get().await.map_err(db::DbError::from)?;
                let tasks = db::tasks::list(&client, viewer, None, None, limit).await?;
                drop(client);
                let seq = tasks
                    .iter()
                    .map(|t| t.seq)
                    .max()
                    .unwrap_or(0)
                    .max(after.unwrap_or(0));
                for t in &tasks {
                    self.newest.insert(t.id, (t.seq, false));
                }
                let tasks: Vec<TaskView> = tasks.into_iter().map(TaskView::from).collect();
                self.text(json!({"type": "snapshot", "seq": seq, "tasks": tasks}).to_string())
                    .await?;
                (None, after, viewer)
            }
        };
        let Some(mut after) = after else {
            return Ok(());
        };
        let mut replayed = 0;
        loop {
            let client = state.db.get().await.map_err(db::DbError::from)?;
            let rows = db::events::replay(&client, task, viewer, after, REPLAY_PAGE).await?;
            drop(client);
            let n = rows.len() as i64;
            for row in rows {
                after = row.seq;
                let Some(event) = row.into_feed() else {
                    continue;
                };
                let mut message: Value = serde_json::from_str(&event.json).unwrap_or_default();
                message["replay"] = json!(true);
                let newest = self.newest.entry(event.task).or_default();
                newest.0 = newest.0.max(event.seq);
                self.text(message.to_string()).await?;
            }
            replayed += n;
            if n < REPLAY_PAGE || (task.is_none() && replayed >= REPLAY_ALL_MAX) {
                return Ok(());
            }
        }
    }

    async fn run(
        mut self,
        state: &AppState,
        subscription: Subscription,
        mut messages: actix_ws::MessageStream,
    ) {
        let mut ping = tokio::time::interval(state.feed.ping_every);
        ping.tick().await;
        let mut heard = Instant::now();
        let closing = loop {
            tokio::select! {
                _ = subscription.ready() => {
                    let batch = subscription.take(64);
                    for event in &batch.events {
                        if self.send(event).await.is_err() {
                            return;
                        }
                    }
                    if let Some(reason) = batch.closed {
                        break CloseReason { code: CloseCode::Again, description: Some(reason) };
                    }
                    if batch.more {
                        // Others' turn first; come back for the rest.
                        subscription.wake();
                        tokio::task::yield_now().await;
                    }
                    self.prune();
                }
                message = messages.next() => match message {
                    Some(Ok(Message::Ping(bytes))) => {
                        heard = Instant::now();
                        let pong = self.session.pong(&bytes);
                        if !matches!(tokio::time::timeout(self.timeout, pong).await, Ok(Ok(()))) {
                            return;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    // Pongs, and anything else a client sends: it is alive.
                    Some(Ok(_)) => heard = Instant::now(),
                },
                _ = ping.tick() => {
                    if heard.elapsed() > state.feed.timeout {
                        break CloseReason {
                            code: CloseCode::Away,
                            description: Some("no answer to pings".into()),
                        };
                    }
                    let ping = self.session.ping(b"");
                    if !matches!(tokio::time::timeout(self.timeout, ping).await, Ok(Ok(()))) {
                        return;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(self.timeout, self.session.close(Some(closing))).await;
    }

    /// Sends an event unless the client already has it or something newer
    /// about its task.
    async fn send(&mut self, event: &crate::events::FeedEvent) -> Result<(), actix_ws::Closed> {
        let newest = self.newest.entry(event.task).or_default();
        if event.seq <= newest.0 {
            return Ok(());
        }
        *newest = (event.seq, event.last);
        self.text(event.json.clone()).await
    }

    /// Keeps the per-task memory of a long-lived all-tasks connection small:
    /// tasks that ended are forgotten once there are many. (Nothing older
    /// can arrive for them: the hub drops progress a status change made
    /// stale.)
    fn prune(&mut self) {
        if self.newest.len() > 10_000 {
            self.newest.retain(|_, (_, ended)| !*ended);
        }
    }

    /// Sends a message, giving up on (and so dropping) a client that has
    /// not taken it within the timeout.
    async fn text(&mut self, text: String) -> Result<(), actix_ws::Closed> {
        match tokio::time::timeout(self.timeout, self.session.text(text)).await {
            Ok(sent) => sent,
            Err(_) => {
                tracing::info!("dropping a live-feed client that stopped reading");
                Err(actix_ws::Closed)
            }
        }
    }
}

/// Feed settings.
#[derive(Debug, Clone)]
pub struct FeedSettings {
    pub ping_every: std::time::Duration,
    pub timeout: std::time::Duration,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct LogQuery {
    /// Lines numbered after this `seq` (the previous page's `next_after`).
    after: Option<i64>,
    /// 1 to 10,000 (1,000 if not given).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<i64>,
}

/// One page of a task's log.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogPage {
    pub task: Uuid,
    pub lines: Vec<LogLine>,
    /// Pass as `after` for the next lines.
    pub next_after: i64,
    /// Lines the task wrote past its log limit, not kept.
    pub dropped: i32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LogLine {
    pub seq: i64,
    pub at: chrono::DateTime<chrono::Utc>,
    /// `info`, `warn` or `error`.
    pub level: String,
    pub message: String,
    /// Structured detail, e.g. an epoch's metrics.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
}

/// A task's log lines, oldest first. Pass the returned `next_after` as
/// `after` to tail.
#[utoipa::path(
    get,
    path = "/api/v1/tasks/{id}/logs",
    tag = "events",
    params(("id" = Uuid, Path, description = "The task's id"), LogQuery),
    responses(
        (status = 200, description = "Log lines", body = LogPage),
        (status = 404, description = "No such task", body = ErrorBody),
    ),
)]
pub(super) async fn logs(
    caller: Caller,
    id: web::Path<Uuid>,
    query: web::Query<LogQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let after = query.after.unwrap_or(0);
    let limit = match query.limit.unwrap_or(1000) {
        n @ 1..=10_000 => n,
        n => {
            return Err(ApiError::bad_request(
                "invalid_limit",
                format!("limit must be between 1 and 10000, got {n}"),
            ))
        }
    };
    let client = state.db.get().await?;
    let dropped = db::events::log_dropped(&client, id, caller.viewer())
        .await?
        .ok_or_else(|| no_task(id))?;
    let rows = db::events::logs(&client, id, after, limit).await?;
    let next_after = rows.last().map_or(after, |r| r.seq);
    let lines = rows
        .into_iter()
        .map(|r| {
            let text = |key: &str| r.data[key].as_str().unwrap_or_default().to_owned();
            LogLine {
                seq: r.seq,
                at: r.at,
                level: text("level"),
                message: text("message"),
                data: r.data.get("data").cloned(),
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(LogPage {
        task: id,
        lines,
        next_after,
        dropped,
    }))
}
