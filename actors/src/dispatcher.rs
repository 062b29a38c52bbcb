//! The dispatcher: the one actor per process that moves tasks from the
//! durable queue onto ML workers and records how they end.
//!
//! - It claims only as many tasks as it has idle workers (backpressure: the
//!   rest wait in Postgres, where any other process may claim them).
//! - It wakes on `Wake` (sent by the LISTEN/NOTIFY listener on new tasks, by
//!   finished jobs, and by a polling timer that covers missed notifications).
//! - It extends the leases of its running tasks on a heartbeat; a lease it
//!   finds lost cancels the job, and a cancellation request found there (or
//!   sent as `CancelTask`) stops it between batches.
//! - It rescues tasks whose lease expired anywhere (a crashed process), so
//!   no task stays "running" forever.
//! - Every write about a task is fenced by its lease, so an attempt that lost
//!   its lease can never overwrite a newer one.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, WrapFuture};
use uuid::Uuid;

use crate::attempt::{execute, release, Env};
use crate::commands::Commands;
use crate::pool::Pool;
use crate::ports::{ObjectStore, StoreError, TaskStore};
use crate::task::{CancelToken, ClaimedTask, HeartbeatReport, Lease};

/// How long a suspect may wait for an idle process before busy ones stop
/// claiming other work, so that one drains and runs it.
const SUSPECT_PATIENCE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// Names this process in claims, for operators reading the tasks table.
    pub name: String,
    /// How long a claim holds without a heartbeat.
    pub lease: Duration,
    pub heartbeat: Duration,
    /// Backstop for missed notifications.
    pub poll: Duration,
    pub rescue_every: Duration,
    /// First retry delay; doubled for each further attempt.
    pub retry_base: Duration,
    /// Minimum time between progress writes for one task. A report after a
    /// quiet spell is written at once; a burst is written at this pace,
    /// always ending with its last report.
    pub progress_every: Duration,
    /// Most log text stored per task, over all its attempts.
    pub max_log_bytes: usize,
    /// Local scratch space for staged inputs and artifacts.
    pub scratch: PathBuf,
    /// Time limits per command, over the commands' own defaults (a task's
    /// `timeout` param overrides both).
    pub timeouts: std::collections::BTreeMap<String, Duration>,
    /// The longest limit a task's own `timeout` param may set.
    pub max_timeout: Duration,
    /// How long a job told to stop may take to come back before its worker
    /// is taken to be stuck, abandoned and replaced.
    pub stuck_after: Duration,
}

pub struct Dispatcher {
    env: Arc<Env>,
    capacity: usize,
    /// Worker slots taken: from claim until the job leaves its worker. The
    /// outcome is recorded after the slot is freed, so the next claim
    /// overlaps with it.
    busy: usize,
    /// Attempts whose lease this process holds, by lease token, until their
    /// outcome is recorded. By token, not task: after a lost lease the same
    /// task can be claimed again here while its old attempt winds down.
    running: HashMap<Uuid, Running>,
    claiming: bool,
    /// A wake arrived while a claim was in flight.
    again: bool,
    /// The last claim got fewer tasks than there were free workers. Then a
    /// recorded outcome wakes the next claim: an owner at its limit of
    /// running tasks (which counts tasks until their outcome is recorded,
    /// after their worker is free) may take another once one is recorded.
    /// So does an outcome recorded while a claim is in flight (it may have
    /// read the task as running): that claim is followed by another. An
    /// outcome recorded by another process wakes none here; the poll
    /// covers it.
    short: bool,
    draining: bool,
    /// Told when a claim that was in flight as draining began has handed
    /// its tasks back.
    claim_drained: Option<tokio::sync::oneshot::Sender<()>>,
    /// A suspect (a task some process died running) is due, since when.
    suspects_waiting: bool,
    suspects_since: Option<Instant>,
    /// The lease of a suspect running here: nothing else is claimed until
    /// its attempt has ended and been recorded, so if it kills this process
    /// too, no other task is blamed.
    isolating: Option<Uuid>,
    /// Since when the store has answered without a failure in between.
    /// After an outage every process's leases look expired; rescuing waits
    /// until live processes have had two heartbeats to extend theirs.
    store_ok_since: Option<Instant>,
}

struct Running {
    lease: Lease,
    cancel: CancelToken,
    /// Its job has returned: the attempt is storing artifacts or recording
    /// the outcome, and a shutdown lets it finish rather than throw the
    /// work away.
    job_done: bool,
}

impl Dispatcher {
    pub fn new(
        config: DispatcherConfig,
        store: Arc<dyn TaskStore>,
        objects: Arc<dyn ObjectStore>,
        commands: Commands,
        pool: Pool,
        capacity: usize,
    ) -> Self {
        Self {
            env: Arc::new(Env {
                config,
                store,
                objects,
                commands,
                pool,
            }),
            capacity,
            busy: 0,
            running: HashMap::new(),
            claiming: false,
            again: false,
            short: false,
            draining: false,
            claim_drained: None,
            store_ok_since: None,
            // Looked for once at start; rescues keep it current.
            suspects_waiting: true,
            suspects_since: Some(Instant::now()),
            isolating: None,
        }
    }

    fn note_suspects(&mut self, waiting: bool) {
        if waiting && !self.suspects_waiting {
            self.suspects_since = Some(Instant::now());
        }
        self.suspects_waiting = waiting;
    }

    /// Notes whether a call to the store got through.
    fn store_answered(&mut self, ok: bool) {
        match (ok, self.store_ok_since) {
            (true, None) => self.store_ok_since = Some(Instant::now()),
            (false, Some(_)) => self.store_ok_since = None,
            _ => {}
        }
    }

    fn start_task(&mut self, task: ClaimedTask, ctx: &mut Context<Self>) {
        let id = task.lease.task_id;
        let token = task.lease.token;
        let cancel = CancelToken::default();
        self.running.insert(
            token,
            Running {
                lease: task.lease,
                cancel: cancel.clone(),
                job_done: false,
            },
        );
        self.busy += 1;
        tracing::debug!(task = %id, command = %task.command, attempt = task.lease.attempt, "task started");
        ctx.spawn(
            execute(self.env.clone(), task, cancel, ctx.address())
                .into_actor(self)
                .map(move |_, act, ctx| {
                    act.running.remove(&token);
                    if act.isolating == Some(token) {
                        act.isolating = None;
                        ctx.notify(Wake);
                    } else if act.short
                        || act.claiming
                        || (act.suspects_waiting && act.running.is_empty())
                    {
                        ctx.notify(Wake);
                    }
                }),
        );
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        if self.running.is_empty() {
            return;
        }
        let leases: Vec<Lease> = self.running.values().map(|r| r.lease).collect();
        let env = self.env.clone();
        let fut = async move { env.store.heartbeat(&leases, env.config.lease).await };
        ctx.spawn(fut.into_actor(self).map(|report, act, _| {
            act.store_answered(report.is_ok());
            act.heartbeat_done(report)
        }));
    }

    fn heartbeat_done(&mut self, report: Result<HeartbeatReport, StoreError>) {
        let act = self;
        match report {
            Ok(report) => {
                for token in report.lost {
                    if let Some(r) = act.running.get(&token) {
                        tracing::warn!(task = %r.lease.task_id, "lease lost; stopping the job");
                        r.cancel.cancel();
                    }
                }
                for token in report.cancel_requested {
                    if let Some(r) = act.running.get(&token) {
                        r.cancel.cancel();
                    }
                }
            }
            Err(e) => tracing::warn!("heartbeat failed: {e}"),
        }
    }

    fn rescue(&mut self, ctx: &mut Context<Self>) {
        let grace = self.env.config.heartbeat * 2;
        if self.store_ok_since.is_none_or(|t| t.elapsed() < grace) {
            return;
        }
        let live: Vec<Uuid> = self.running.keys().copied().collect();
        let env = self.env.clone();
        let fut = async move {
            let commands: Vec<&str> = env.commands.names().collect();
            env.store
                .rescue_expired(env.config.retry_base, &live, &commands)
                .await
        };
        ctx.spawn(fut.into_actor(self).map(|rescued, act, ctx| {
            act.store_answered(rescued.is_ok());
            match rescued {
                Ok(rescued) => {
                    if rescued.tasks > 0 {
                        tracing::warn!("rescued {} task(s) whose lease expired", rescued.tasks);
                    }
                    act.note_suspects(rescued.suspects_waiting);
                    if rescued.tasks > 0 || rescued.suspects_waiting {
                        ctx.notify(Wake);
                    }
                }
                Err(e) => tracing::warn!("rescue failed: {e}"),
            }
        }));
    }
}

impl Actor for Dispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let c = &self.env.config;
        ctx.run_interval(c.poll, |_, ctx| ctx.notify(Wake));
        ctx.run_interval(c.heartbeat, |act, ctx| act.heartbeat(ctx));
        ctx.run_interval(c.rescue_every, |act, ctx| act.rescue(ctx));
        self.rescue(ctx);
        ctx.notify(Wake);
    }
}

/// Look for due tasks now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Wake;

impl Handler<Wake> for Dispatcher {
    type Result = ();

    fn handle(&mut self, _: Wake, ctx: &mut Context<Self>) {
        if self.draining {
            return;
        }
        if self.claiming {
            self.again = true;
            return;
        }
        // The pool may run smaller than configured (stuck threads past the
        // limit are not replaced).
        let free = self
            .capacity
            .min(self.env.pool.size())
            .saturating_sub(self.busy);
        if free == 0 || self.isolating.is_some() {
            return;
        }
        // A suspect runs alone, so an idle process (every attempt here ended
        // and recorded: a death while one records would blame it too) claims
        // it before anything else. A busy one goes on claiming other work,
        // unless the suspect has waited too long: then it drains.
        let suspects = self.suspects_waiting && self.running.is_empty();
        if self.suspects_waiting
            && !suspects
            && self
                .suspects_since
                .is_some_and(|t| t.elapsed() > SUSPECT_PATIENCE)
        {
            return;
        }
        self.claiming = true;
        let env = self.env.clone();
        let fut = async move {
            let commands: Vec<&str> = env.commands.names().collect();
            let (name, lease) = (&env.config.name, env.config.lease);
            if suspects {
                let suspect = env.store.claim(name, &commands, 1, lease, true).await?;
                if !suspect.is_empty() {
                    return Ok((suspect, true));
                }
            }
            let tasks = env.store.claim(name, &commands, free, lease, false).await?;
            Ok::<_, StoreError>((tasks, false))
        };
        ctx.spawn(fut.into_actor(self).map(move |claimed, act, ctx| {
            act.claiming = false;
            act.store_answered(claimed.is_ok());
            let claimed = claimed.map(|(tasks, suspect)| {
                if !suspect && suspects {
                    // None was due after all.
                    act.note_suspects(false);
                }
                if suspect && !act.draining {
                    tracing::warn!(task = %tasks[0].lease.task_id, "running a task a process died running, alone");
                    act.isolating = Some(tasks[0].lease.token);
                }
                tasks
            });
            match claimed {
                // Draining began while this claim was in flight: hand the
                // tasks straight back.
                Ok(tasks) if act.draining => {
                    let env = act.env.clone();
                    let done = act.claim_drained.take();
                    actix::spawn(async move {
                        for task in tasks {
                            release(&env, &task.lease).await;
                        }
                        if let Some(done) = done {
                            let _ = done.send(());
                        }
                    });
                }
                Ok(tasks) => {
                    act.short = tasks.len() < free;
                    for task in tasks {
                        act.start_task(task, ctx);
                    }
                }
                Err(e) => tracing::warn!("claim failed: {e}"),
            }
            if let Some(done) = act.claim_drained.take() {
                let _ = done.send(());
            }
            if std::mem::take(&mut act.again) {
                ctx.notify(Wake);
            }
        }));
    }
}

/// A job has left its worker: the slot can take the next task.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct WorkerFreed(pub Uuid);

impl Handler<WorkerFreed> for Dispatcher {
    type Result = ();

    fn handle(&mut self, WorkerFreed(token): WorkerFreed, ctx: &mut Context<Self>) {
        self.busy = self.busy.saturating_sub(1);
        if let Some(r) = self.running.get_mut(&token) {
            r.job_done = true;
        }
        ctx.notify(Wake);
    }
}

/// How many attempts here are past their job and still storing artifacts
/// or recording an outcome: a shutdown waits for them (up to its drain).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Recording;

impl Handler<Recording> for Dispatcher {
    type Result = usize;

    fn handle(&mut self, _: Recording, _: &mut Context<Self>) -> usize {
        self.running.values().filter(|r| r.job_done).count()
    }
}

/// Stop a task if it runs here (a user cancelled it).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CancelTask(pub Uuid);

impl Handler<CancelTask> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: CancelTask, _: &mut Context<Self>) {
        for r in self.running.values().filter(|r| r.lease.task_id == msg.0) {
            r.cancel.cancel();
        }
    }
}

/// Shutting down: stop claiming, hand running tasks back to the queue at
/// once (rather than after their lease expires) and stop their jobs. The
/// jobs' own late writes are fenced out by the released leases.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

impl Handler<Drain> for Dispatcher {
    type Result = actix::ResponseFuture<()>;

    fn handle(&mut self, _: Drain, _: &mut Context<Self>) -> Self::Result {
        self.draining = true;
        let claim_done = self.claiming.then(|| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.claim_drained = Some(tx);
            rx
        });
        // Attempts whose job already returned record their outcome within
        // the drain; only jobs still running are handed back.
        let running: Vec<(Lease, CancelToken)> = self
            .running
            .values()
            .filter(|r| !r.job_done)
            .map(|r| (r.lease, r.cancel.clone()))
            .collect();
        let env = self.env.clone();
        Box::pin(async move {
            for (lease, cancel) in &running {
                // Stop only jobs whose task is safely back in the queue; the
                // rest finish and record their outcome as usual.
                if release(&env, lease).await {
                    cancel.cancel();
                }
            }
            if let Some(done) = claim_done {
                let _ = tokio::time::timeout(Duration::from_secs(5), done).await;
            }
            if !running.is_empty() {
                tracing::info!("handed {} running task(s) back to the queue", running.len());
            }
        })
    }
}
