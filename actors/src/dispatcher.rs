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
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message, WrapFuture};
use uuid::Uuid;

use crate::commands::{AnyCommand, Commands};
use crate::error::{ErrorCode, JobError};
use crate::pool::{MlWorker, RunJob};
use crate::ports::{self, ObjectError, ObjectKey, ObjectStore, StoreError, TaskStore};
use crate::progress::{Progress, ProgressReporter};
use crate::task::{
    CancelToken, ClaimedTask, Finish, JobContext, Lease, LocalInput, LocalModel, Outcome,
    StoredArtifact,
};

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
    /// Minimum time between progress writes for one task.
    pub progress_every: Duration,
    /// Local scratch space for staged inputs and artifacts.
    pub scratch: PathBuf,
}

/// What every job execution needs, shared.
struct Env {
    config: DispatcherConfig,
    store: Arc<dyn TaskStore>,
    objects: Arc<dyn ObjectStore>,
    commands: Commands,
    pool: Addr<MlWorker>,
}

pub struct Dispatcher {
    env: Arc<Env>,
    capacity: usize,
    /// Worker slots taken: from claim until the job leaves its worker. The
    /// outcome is recorded after the slot is freed, so the next claim
    /// overlaps with it.
    busy: usize,
    /// Tasks whose lease this process holds, until their outcome is recorded.
    running: HashMap<Uuid, Running>,
    claiming: bool,
    /// A wake arrived while a claim was in flight.
    again: bool,
    draining: bool,
}

struct Running {
    lease: Lease,
    cancel: CancelToken,
}

impl Dispatcher {
    pub fn new(
        config: DispatcherConfig,
        store: Arc<dyn TaskStore>,
        objects: Arc<dyn ObjectStore>,
        commands: Commands,
        pool: Addr<MlWorker>,
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
            draining: false,
        }
    }

    fn start_task(&mut self, task: ClaimedTask, ctx: &mut Context<Self>) {
        let id = task.lease.task_id;
        let cancel = CancelToken::default();
        self.running.insert(
            id,
            Running {
                lease: task.lease,
                cancel: cancel.clone(),
            },
        );
        self.busy += 1;
        tracing::debug!(task = %id, command = %task.command, attempt = task.lease.attempt, "task started");
        ctx.spawn(
            execute(self.env.clone(), task, cancel, ctx.address())
                .into_actor(self)
                .map(move |_, act, _| {
                    act.running.remove(&id);
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
        ctx.spawn(fut.into_actor(self).map(|report, act, _| match report {
            Ok(report) => {
                for id in report.lost {
                    if let Some(r) = act.running.get(&id) {
                        tracing::warn!(task = %id, "lease lost; stopping the job");
                        r.cancel.cancel();
                    }
                }
                for id in report.cancel_requested {
                    if let Some(r) = act.running.get(&id) {
                        r.cancel.cancel();
                    }
                }
            }
            Err(e) => tracing::warn!("heartbeat failed: {e}"),
        }));
    }

    fn rescue(&mut self, ctx: &mut Context<Self>) {
        let env = self.env.clone();
        let fut = async move { env.store.rescue_expired(env.config.retry_base).await };
        ctx.spawn(fut.into_actor(self).map(|rescued, _, ctx| match rescued {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!("rescued {n} task(s) whose lease expired");
                ctx.notify(Wake);
            }
            Err(e) => tracing::warn!("rescue failed: {e}"),
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
        let free = self.capacity.saturating_sub(self.busy);
        if free == 0 {
            return;
        }
        self.claiming = true;
        let env = self.env.clone();
        let fut = async move {
            let commands: Vec<&str> = env.commands.names().collect();
            env.store
                .claim(&env.config.name, &commands, free, env.config.lease)
                .await
        };
        ctx.spawn(fut.into_actor(self).map(|claimed, act, ctx| {
            act.claiming = false;
            match claimed {
                Ok(tasks) => {
                    for task in tasks {
                        act.start_task(task, ctx);
                    }
                }
                Err(e) => tracing::warn!("claim failed: {e}"),
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
struct WorkerFreed;

impl Handler<WorkerFreed> for Dispatcher {
    type Result = ();

    fn handle(&mut self, _: WorkerFreed, ctx: &mut Context<Self>) {
        self.busy = self.busy.saturating_sub(1);
        ctx.notify(Wake);
    }
}

/// Stop a task if it runs here (a user cancelled it).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CancelTask(pub Uuid);

impl Handler<CancelTask> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: CancelTask, _: &mut Context<Self>) {
        if let Some(r) = self.running.get(&msg.0) {
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
        let leases: Vec<Lease> = self.running.values().map(|r| r.lease).collect();
        let cancels: Vec<CancelToken> = self.running.values().map(|r| r.cancel.clone()).collect();
        let env = self.env.clone();
        Box::pin(async move {
            for lease in &leases {
                if let Err(e) = env.store.release(lease).await {
                    tracing::warn!(task = %lease.task_id, "could not release task: {e}");
                }
            }
            for c in cancels {
                c.cancel();
            }
            if !leases.is_empty() {
                tracing::info!("handed {} running task(s) back to the queue", leases.len());
            }
        })
    }
}

/// Runs one claimed task to its recorded end.
async fn execute(env: Arc<Env>, task: ClaimedTask, cancel: CancelToken, me: Addr<Dispatcher>) {
    let lease = task.lease;
    let workdir = env
        .config
        .scratch
        .join(format!("{}-{}", lease.task_id, lease.attempt));
    let progress = ProgressReporter::default();
    let ran = run(&env, &task, &workdir, cancel, progress.clone()).await;
    me.do_send(WorkerFreed);
    let outcome = match ran {
        Some(outcome) => outcome,
        // The pool is gone (shutting down): leave the lease to expire so the
        // task is rescued, by this process after a restart or by another.
        None => {
            remove_dir(&workdir).await;
            return;
        }
    };
    let finish = match outcome {
        Ok(outcome) => match store_artifacts(&env, &lease, &outcome).await {
            Ok(artifacts) => Finish::Succeeded {
                result: outcome.result,
                artifacts,
                model: outcome.model,
            },
            Err(e) => after_failure(&env, &task, e),
        },
        Err(e) if e.is_cancelled() => Finish::Cancelled,
        Err(e) => after_failure(&env, &task, e),
    };
    // The last progress report is always written (with the outcome),
    // however recent the one before it was.
    let last = progress.take_newer(&mut 0);
    record(&env, &lease, finish, last.as_ref()).await;
    remove_dir(&workdir).await;
}

/// Retry transient failures while attempts remain; fail the rest for good.
fn after_failure(env: &Env, task: &ClaimedTask, error: JobError) -> Finish {
    let attempt = task.lease.attempt;
    if error.is_transient() && attempt < task.max_attempts {
        let factor = 2u32.saturating_pow((attempt - 1).clamp(0, 16) as u32);
        let delay = env.config.retry_base.saturating_mul(factor);
        tracing::warn!(task = %task.lease.task_id, attempt, ?delay, "transient failure, will retry: {error}");
        Finish::Retry { error, delay }
    } else {
        tracing::info!(task = %task.lease.task_id, attempt, "task failed: {error}");
        Finish::Failed(error)
    }
}

/// Writes the end of an attempt, retrying briefly if the store is down. If
/// it stays down, the lease expires and the task is rescued: at least once,
/// never lost.
async fn record(env: &Env, lease: &Lease, finish: Finish, progress: Option<&Progress>) {
    let mut delay = Duration::from_millis(100);
    for _ in 0..5 {
        match env.store.finish(lease, finish.clone(), progress).await {
            Ok(()) => return,
            Err(StoreError::LeaseLost(id)) => {
                tracing::info!(task = %id, attempt = lease.attempt, "lease lost; this attempt's outcome is discarded");
                return;
            }
            Err(e) => {
                tracing::warn!(task = %lease.task_id, "could not record outcome: {e}");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
}

/// Stages inputs, runs the job on the pool and keeps its progress flowing.
/// `None` means the pool is gone.
async fn run(
    env: &Env,
    task: &ClaimedTask,
    workdir: &Path,
    cancel: CancelToken,
    progress: ProgressReporter,
) -> Option<Result<Outcome, JobError>> {
    let Some(command) = env.commands.get(&task.command).cloned() else {
        return Some(Err(JobError::new(
            ErrorCode::InvalidParams,
            format!("unknown command {}", task.command),
        )));
    };
    let ctx = match stage(
        env,
        task,
        &command,
        workdir,
        cancel.clone(),
        progress.clone(),
    )
    .await
    {
        Ok(ctx) => ctx,
        Err(e) => return Some(Err(e)),
    };
    let request = env.pool.send(RunJob {
        command,
        params: task.params.clone(),
        ctx,
    });
    tokio::pin!(request);
    let every = env.config.progress_every;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut seen = 0;
    loop {
        tokio::select! {
            result = &mut request => return result.ok(),
            _ = tick.tick() => {
                if let Some(p) = progress.take_newer(&mut seen) {
                    match env.store.save_progress(&task.lease, &p).await {
                        Ok(true) => {}
                        Ok(false) => cancel.cancel(),
                        Err(e) => tracing::debug!("progress not saved: {e}"),
                    }
                }
            }
        }
    }
}

/// Builds the job's context: inputs and models copied into its scratch
/// folder, so the job reads local files with random access.
async fn stage(
    env: &Env,
    task: &ClaimedTask,
    command: &Arc<dyn AnyCommand>,
    workdir: &Path,
    cancel: CancelToken,
    progress: ProgressReporter,
) -> Result<JobContext, JobError> {
    let checked = command
        .check(task.params.clone(), task.inputs.len())
        .map_err(|e| JobError::new(ErrorCode::InvalidParams, e.to_string()))?;
    for (sub, needed) in [
        ("inputs", !task.inputs.is_empty()),
        ("models", !checked.models.is_empty()),
    ] {
        if needed {
            tokio::fs::create_dir_all(workdir.join(sub))
                .await
                .map_err(|e| JobError::storage(format!("creating scratch folder: {e}")))?;
        }
    }
    let mut inputs = Vec::with_capacity(task.inputs.len());
    for input in &task.inputs {
        let path = workdir.join("inputs").join(input.position.to_string());
        fetch(env, &input.key, &path).await?;
        inputs.push(LocalInput {
            name: input.name.clone(),
            content_type: input.content_type.clone(),
            path,
        });
    }
    let mut models = Vec::with_capacity(checked.models.len());
    for (_, id) in checked.models {
        let record = env
            .store
            .model(id)
            .await
            .map_err(JobError::storage)?
            .ok_or_else(|| {
                JobError::new(
                    ErrorCode::ModelNotFound,
                    format!("model {id} does not exist"),
                )
            })?;
        let weights = workdir.join("models").join(format!("{id}.safetensors"));
        fetch(env, &record.weights_key, &weights).await?;
        models.push(LocalModel { record, weights });
    }
    Ok(JobContext {
        task_id: task.lease.task_id,
        inputs,
        models,
        workdir: workdir.to_owned(),
        cancel,
        progress,
    })
}

async fn fetch(env: &Env, key: &str, path: &Path) -> Result<(), JobError> {
    env.objects.fetch_to(key, path).await.map_err(|e| match e {
        // A stored object that vanished will not come back by retrying.
        ObjectError::NotFound(key) => JobError::new(
            ErrorCode::MissingInput,
            format!("stored object {key} is missing"),
        ),
        e => JobError::storage(e),
    })
}

async fn store_artifacts(
    env: &Env,
    lease: &Lease,
    outcome: &Outcome,
) -> Result<Vec<StoredArtifact>, JobError> {
    let mut stored = Vec::with_capacity(outcome.artifacts.len());
    for artifact in &outcome.artifacts {
        let key = ObjectKey::Artifact {
            task: lease.task_id,
            attempt: lease.attempt,
            name: artifact.name.clone(),
        }
        .as_string();
        let meta = ports::put_file(env.objects.as_ref(), &key, &artifact.path)
            .await
            .map_err(JobError::storage)?;
        stored.push(StoredArtifact {
            name: artifact.name.clone(),
            size: meta.size as i64,
            sha256: meta.sha256,
            content_type: artifact.content_type.clone(),
            key,
        });
    }
    Ok(stored)
}

async fn remove_dir(path: &Path) {
    if let Err(e) = tokio::fs::remove_dir_all(path).await {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("could not remove scratch folder {}: {e}", path.display());
        }
    }
}
