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
use crate::progress::{Level, Reporter};
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
    /// Minimum time between progress writes for one task. A report after a
    /// quiet spell is written at once; a burst is written at this pace,
    /// always ending with its last report.
    pub progress_every: Duration,
    /// Most log text stored per task, over all its attempts.
    pub max_log_bytes: usize,
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
    /// Attempts whose lease this process holds, by lease token, until their
    /// outcome is recorded. By token, not task: after a lost lease the same
    /// task can be claimed again here while its old attempt winds down.
    running: HashMap<Uuid, Running>,
    claiming: bool,
    /// A wake arrived while a claim was in flight.
    again: bool,
    draining: bool,
    /// Told when a claim that was in flight as draining began has handed
    /// its tasks back.
    claim_drained: Option<tokio::sync::oneshot::Sender<()>>,
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
            claim_drained: None,
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
            },
        );
        self.busy += 1;
        tracing::debug!(task = %id, command = %task.command, attempt = task.lease.attempt, "task started");
        ctx.spawn(
            execute(self.env.clone(), task, cancel, ctx.address())
                .into_actor(self)
                .map(move |_, act, _| {
                    act.running.remove(&token);
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
        let running: Vec<(Lease, CancelToken)> = self
            .running
            .values()
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

/// Hands a task back to the queue; says whether it worked.
async fn release(env: &Env, lease: &Lease) -> bool {
    match env.store.release(lease).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(task = %lease.task_id, "could not release task: {e}");
            false
        }
    }
}

/// Runs one claimed task to its recorded end.
async fn execute(env: Arc<Env>, task: ClaimedTask, cancel: CancelToken, me: Addr<Dispatcher>) {
    let lease = task.lease;
    // Named by lease token: unique to this attempt, even where processes
    // share a scratch folder or a released attempt's number is reused.
    let workdir = env.config.scratch.join(lease.token.to_string());
    let budget = env
        .config
        .max_log_bytes
        .saturating_sub(task.log_bytes.max(0) as usize);
    let report = Reporter::new(budget);
    // The status change to `running` marks a first attempt; a retry's log
    // says where it runs. (Lines cost a transaction: the common path of a
    // quick, successful task writes none.)
    if lease.attempt > 1 {
        report.info(format!(
            "attempt {} of {} started on {}",
            lease.attempt, task.max_attempts, env.config.name
        ));
    }
    let ran = run(&env, &task, &workdir, cancel, report.clone()).await;
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
    log_finish(&report, &finish);
    // What is left unwritten goes with the outcome, however recent the
    // write before it was.
    let last = report.take();
    let stored: Vec<String> = match &finish {
        Finish::Succeeded { artifacts, .. } => artifacts.iter().map(|a| a.key.clone()).collect(),
        _ => Vec::new(),
    };
    if !record(&env, &lease, finish, &last).await {
        // Nothing references these objects: the outcome was not recorded.
        delete_objects(&env, &stored).await;
    }
    remove_dir(&workdir).await;
}

async fn delete_objects(env: &Env, keys: &[String]) {
    for key in keys {
        if let Err(e) = env.objects.delete(key).await {
            tracing::warn!(%key, "could not delete an unreferenced object: {e}");
        }
    }
}

/// The line a task's log ends an unsuccessful attempt with. A failure's
/// line carries its code, so the log tells the story without the row.
fn log_finish(report: &Reporter, finish: &Finish) {
    match finish {
        // The status change says it; a line would cost the one-statement
        // finish its speed.
        Finish::Succeeded { .. } => {}
        Finish::Failed(e) => report.log(
            Level::Error,
            format!("failed: {} ({})", e.message, e.code),
            Some(e.to_json()),
        ),
        Finish::Retry { error, delay } => report.log(
            Level::Warn,
            format!(
                "attempt failed: {} ({}); retrying in {:.1} s",
                error.message,
                error.code,
                delay.as_secs_f64()
            ),
            Some(error.to_json()),
        ),
        Finish::Cancelled => report.info("cancelled"),
    }
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

/// Writes the end of an attempt and says whether it was recorded. While the
/// store is unreachable it keeps trying (the task stays in `running`, so
/// its lease keeps being extended once the store is back); a lost lease
/// means another attempt owns the task now.
async fn record(
    env: &Env,
    lease: &Lease,
    finish: Finish,
    report: &crate::progress::Report,
) -> bool {
    let mut finish = finish;
    let mut delay = Duration::from_millis(100);
    loop {
        match env.store.finish(lease, finish.clone(), report).await {
            Ok(()) => return true,
            Err(StoreError::LeaseLost(id)) => {
                tracing::info!(task = %id, attempt = lease.attempt, "lease lost; this attempt's outcome is discarded");
                return false;
            }
            // The outcome itself cannot be stored: record that instead, so
            // the task ends rather than being re-run to the same end.
            Err(StoreError::Rejected(why)) if !matches!(finish, Finish::Failed(_)) => {
                tracing::error!(task = %lease.task_id, "outcome rejected by the store: {why}");
                finish = Finish::Failed(JobError::new(
                    ErrorCode::Internal,
                    format!("the task's outcome could not be stored: {why}"),
                ));
            }
            Err(StoreError::Rejected(why)) => {
                tracing::error!(task = %lease.task_id, "failure rejected by the store: {why}");
                return false;
            }
            Err(StoreError::Unavailable(why)) => {
                tracing::warn!(task = %lease.task_id, "could not record outcome, retrying in {delay:?}: {why}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Stages inputs, runs the job on the pool and keeps its reports flowing.
/// `None` means the pool is gone.
async fn run(
    env: &Env,
    task: &ClaimedTask,
    workdir: &Path,
    cancel: CancelToken,
    report: Reporter,
) -> Option<Result<Outcome, JobError>> {
    let Some(command) = env.commands.get(&task.command).cloned() else {
        return Some(Err(JobError::new(
            ErrorCode::InvalidParams,
            format!("unknown command {}", task.command),
        )));
    };
    let ctx = match stage(env, task, &command, workdir, cancel.clone(), report.clone()).await {
        Ok(ctx) => ctx,
        Err(e) => return Some(Err(e)),
    };
    let request = env.pool.send(RunJob {
        command,
        params: task.params.clone(),
        ctx,
    });
    tokio::pin!(request);
    // Leading-edge throttle: the first report after a quiet spell is
    // written at once; later ones wait for `every` to pass since the last
    // write, and are written together.
    let every = env.config.progress_every;
    let mut last_write = tokio::time::Instant::now() - every;
    let mut due: Option<tokio::time::Instant> = None;
    loop {
        let flush_at = due.unwrap_or_else(|| tokio::time::Instant::now() + every);
        tokio::select! {
            result = &mut request => return result.ok(),
            _ = report.changed(), if due.is_none() => {
                due = Some((last_write + every).max(tokio::time::Instant::now()));
            }
            _ = tokio::time::sleep_until(flush_at), if due.is_some() => {
                // Paced from when the write was due, not when the timer
                // fired: timer lag would otherwise add up write after write,
                // and a job reporting every `every` would see its reports
                // written ever later.
                last_write = flush_at;
                due = None;
                let taken = report.take();
                if taken.is_empty() {
                    continue;
                }
                match env.store.save_report(&task.lease, &taken).await {
                    Ok(true) => {}
                    Ok(false) => cancel.cancel(),
                    Err(e) => tracing::debug!("progress not saved: {e}"),
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
    report: Reporter,
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
        report,
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

/// Stores a successful job's artifacts; on failure, deletes those already
/// stored, so an attempt leaves all of its artifacts or none.
async fn store_artifacts(
    env: &Env,
    lease: &Lease,
    outcome: &Outcome,
) -> Result<Vec<StoredArtifact>, JobError> {
    let mut stored = Vec::with_capacity(outcome.artifacts.len());
    for artifact in &outcome.artifacts {
        let key = ObjectKey::Artifact {
            task: lease.task_id,
            lease: lease.token,
            name: artifact.name.clone(),
        }
        .as_string();
        match ports::put_file(
            env.objects.as_ref(),
            &key,
            &artifact.path,
            &artifact.content_type,
        )
        .await
        {
            Ok(meta) => stored.push(StoredArtifact {
                name: artifact.name.clone(),
                size: meta.size as i64,
                sha256: meta.sha256,
                content_type: artifact.content_type.clone(),
                key,
            }),
            Err(e) => {
                let keys: Vec<String> = stored.into_iter().map(|a| a.key).collect();
                delete_objects(env, &keys).await;
                return Err(JobError::storage(e));
            }
        }
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
