//! One attempt of a task, from claim to recorded outcome: stage its inputs,
//! run the job on the pool while its reports flow to the store, store its
//! artifacts, and record how it ended, fenced by its lease.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;

use crate::commands::{AnyCommand, Commands};
use crate::dispatcher::{Dispatcher, DispatcherConfig, WorkerFreed};
use crate::error::{ErrorCode, JobError};
use crate::ml::registry::ModelRef;
use crate::pool::{Pool, RunJob};
use crate::ports::{self, ObjectError, ObjectKey, ObjectStore, StoreError, TaskStore};
use crate::progress::{Level, Reporter};
use crate::task::{
    CancelToken, ClaimedTask, Finish, JobContext, Lease, LocalInput, LocalModel, Outcome,
    StoredArtifact,
};

/// What every job execution needs, shared.
pub(crate) struct Env {
    pub config: DispatcherConfig,
    pub store: Arc<dyn TaskStore>,
    pub objects: Arc<dyn ObjectStore>,
    pub commands: Commands,
    pub pool: Pool,
}

/// Largest result a task keeps, serialised. The result is in the task's
/// JSON, the task list and every status event of the live feed: a job
/// whose output would bloat them fails instead (its bulk belongs in an
/// artifact).
pub const MAX_RESULT_BYTES: usize = 256 << 10;

fn result_fits(outcome: Outcome) -> Result<Outcome, JobError> {
    let size = serde_json::to_vec(&outcome.result).map_or(usize::MAX, |v| v.len());
    if size > MAX_RESULT_BYTES {
        return Err(JobError::new(
            ErrorCode::DataTooLarge,
            format!(
                "the job's result has {size} bytes, over the {MAX_RESULT_BYTES}-byte limit on \
                 what a task shows inline"
            ),
        ));
    }
    Ok(outcome)
}

/// Hands a task back to the queue; says whether it worked.
pub(crate) async fn release(env: &Env, lease: &Lease) -> bool {
    match env.store.release(lease).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(task = %lease.task_id, "could not release task: {e}");
            false
        }
    }
}

/// Runs one claimed task to its recorded end.
pub(crate) async fn execute(
    env: Arc<Env>,
    task: ClaimedTask,
    cancel: CancelToken,
    me: Addr<Dispatcher>,
) {
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
    me.do_send(WorkerFreed(lease.token));
    let outcome = match ran {
        Some(outcome) => outcome,
        // No worker could take it (the pool is gone: shutting down). Handed
        // back now rather than left to expire, which would count as a
        // crash; if that fails, the lease expires and it is rescued.
        None => {
            release(&env, &lease).await;
            remove_dir(&workdir).await;
            return;
        }
    };
    let finish = match outcome.and_then(result_fits) {
        Ok(outcome) => match store_artifacts(&env, &lease, &outcome).await {
            Ok(artifacts) => Finish::Succeeded {
                result: outcome.result,
                artifacts,
                model: outcome.model.map(Box::new),
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
    if record(&env, &lease, finish, &last).await == Recorded::No {
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
        let delay = crate::task::retry_delay(env.config.retry_base, attempt);
        tracing::warn!(task = %task.lease.task_id, attempt, ?delay, "transient failure, will retry: {error}");
        Finish::Retry { error, delay }
    } else {
        tracing::info!(task = %task.lease.task_id, attempt, "task failed: {error}");
        Finish::Failed(error)
    }
}

/// How recording an outcome ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recorded {
    Yes,
    /// Certainly not: the lease was lost, or the store refused even a
    /// small failure.
    No,
    /// Unknown: the store stayed unreachable. The outcome may have landed
    /// (a commit whose answer was lost), so nothing it references may be
    /// deleted; the orphan collector settles its objects later, and the
    /// lease expiring settles the task.
    Unknown,
}

/// Tries at recording an outcome while the store answers with errors that
/// may pass (statement timeouts, deadlocks): then a small failure is
/// recorded instead, in case the outcome itself is the cause.
const BUSY_TRIES: u32 = 4;
/// How long recording keeps trying while the store cannot be reached at
/// all. The lease is extended meanwhile, once heartbeats get through.
const UNREACHABLE_PATIENCE: Duration = Duration::from_secs(120);

/// Writes the end of an attempt. Every path is bounded: a refused or
/// stubborn outcome is replaced by a small failure, and an unreachable
/// store is given up on after `UNREACHABLE_PATIENCE`. Retrying after an
/// answer was lost is safe: the store finds an outcome it already recorded
/// for this lease and reports success.
async fn record(
    env: &Env,
    lease: &Lease,
    finish: Finish,
    report: &crate::progress::Report,
) -> Recorded {
    let mut finish = finish;
    let mut delay = Duration::from_millis(100);
    let started = tokio::time::Instant::now();
    let mut busy = 0;
    loop {
        let why = match env.store.finish(lease, finish.clone(), report).await {
            Ok(()) => return Recorded::Yes,
            Err(StoreError::LeaseLost(id)) => {
                tracing::info!(task = %id, attempt = lease.attempt, "lease lost; this attempt's outcome is discarded");
                return Recorded::No;
            }
            Err(StoreError::Rejected(why)) => {
                tracing::error!(task = %lease.task_id, "outcome refused by the store: {why}");
                why
            }
            Err(StoreError::Busy(why)) => {
                busy += 1;
                if busy < BUSY_TRIES {
                    tracing::warn!(task = %lease.task_id, "could not record outcome, retrying in {delay:?}: {why}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
                why
            }
            Err(StoreError::Unavailable(why)) => {
                if started.elapsed() > UNREACHABLE_PATIENCE {
                    tracing::error!(task = %lease.task_id, "gave up recording an outcome after {UNREACHABLE_PATIENCE:?}: {why}");
                    return Recorded::Unknown;
                }
                tracing::warn!(task = %lease.task_id, "could not record outcome, retrying in {delay:?}: {why}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        // The outcome itself will not go in: record a small failure
        // instead, so the task ends rather than being run again to the
        // same end. If even that will not go in, give up.
        if matches!(&finish, Finish::Failed(e) if e.code == ErrorCode::Internal) {
            return if busy >= BUSY_TRIES {
                Recorded::Unknown
            } else {
                Recorded::No
            };
        }
        finish = Finish::Failed(JobError::new(
            ErrorCode::Internal,
            format!("the task's outcome could not be stored: {why}"),
        ));
        busy = 0;
    }
}

/// Stages inputs, runs the job on the pool and keeps its reports flowing.
/// `None` means the pool is gone.
///
/// The job is stopped (cooperatively, through its cancel token) when its
/// time limit passes. A job that has not come back `stuck_after` a stop
/// is stuck inside one libtorch call: its worker is abandoned and replaced,
/// and the attempt ends without it.
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
    let limit = time_limit(env, task, command.as_ref());
    let deadline = tokio::time::Instant::now() + limit;
    let staged = tokio::select! {
        staged = stage(env, task, &command, workdir, cancel.clone(), report.clone()) => staged,
        () = tokio::time::sleep_until(deadline) => {
            cancel.time_out();
            Err(JobError::cancelled())
        }
        // A stalled download must not hold a cancel back.
        () = cancel.stopped() => Err(JobError::cancelled()),
    };
    let ctx = match staged {
        Ok(ctx) => ctx,
        Err(e) => return Some(Err(stopped(e, &cancel, limit))),
    };
    let Some(worker) = env.pool.take() else {
        // Every worker is busy or gone: only at shutdown.
        return None;
    };
    let request = worker.addr().send(RunJob {
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
    // When the job was told to stop, to notice one that will not.
    let mut stopped_at: Option<tokio::time::Instant> = None;
    let mut watch = tokio::time::interval(Duration::from_millis(250));
    loop {
        let flush_at = due.unwrap_or_else(|| tokio::time::Instant::now() + every);
        tokio::select! {
            result = &mut request => {
                drop(worker);
                return result.ok().map(|r| r.map_err(|e| stopped(e, &cancel, limit)));
            }
            () = tokio::time::sleep_until(deadline), if !cancel.is_cancelled() => {
                tracing::warn!(task = %task.lease.task_id, ?limit, "task ran past its time limit; stopping it");
                cancel.time_out();
            }
            _ = watch.tick() => {
                if !cancel.is_cancelled() {
                    continue;
                }
                let since = *stopped_at.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= env.config.stuck_after {
                    worker.abandon(task.lease.task_id);
                    let why = if cancel.timed_out() { "ran past its time limit" } else { "was stopped" };
                    report.warn(format!(
                        "the job {why} but did not stop within {:?}: its worker was abandoned and replaced",
                        env.config.stuck_after
                    ));
                    return Some(Err(stopped(JobError::cancelled(), &cancel, limit)));
                }
            }
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

/// The task's time limit: its own `timeout` param, else the deployment's
/// for its command, else the command's default.
fn time_limit(env: &Env, task: &ClaimedTask, command: &dyn AnyCommand) -> Duration {
    let own = crate::commands::split_timeout(task.params.clone())
        .ok()
        .and_then(|(_, t)| t);
    own.map(|t| t.min(env.config.max_timeout))
        .or_else(|| env.config.timeouts.get(&task.command).copied())
        .unwrap_or_else(|| command.default_timeout())
}

/// A job stopped by its time limit fails with `timeout`, not `cancelled`.
fn stopped(e: JobError, cancel: &CancelToken, limit: Duration) -> JobError {
    if e.is_cancelled() && cancel.timed_out() {
        JobError::new(
            ErrorCode::Timeout,
            format!(
                "the task ran past its time limit of {} (set the `timeout` param to allow more)",
                humantime::format_duration(Duration::from_secs(limit.as_secs().max(1)))
            ),
        )
    } else {
        e
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
        fetch(env, &input.key, &path, &cancel).await?;
        inputs.push(LocalInput {
            name: input.name.clone(),
            content_type: input.content_type.clone(),
            path,
        });
    }
    let mut models = Vec::with_capacity(checked.models.len());
    for (_, model) in checked.models {
        let ModelRef::Id(id) = model else {
            // Submission pins every model by id.
            return Err(JobError::new(
                ErrorCode::InvalidParams,
                format!("model {model} was not pinned to an id when the task was submitted"),
            ));
        };
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
        // libtorch reads weights by their file's extension.
        let extension = if record.format == "torchscript" {
            "pt"
        } else {
            "safetensors"
        };
        let weights = workdir.join("models").join(format!("{id}.{extension}"));
        fetch(env, &record.weights_key, &weights, &cancel).await?;
        models.push(LocalModel { record, weights });
    }
    Ok(JobContext {
        task_id: task.lease.task_id,
        inputs,
        models,
        workdir: workdir.to_owned(),
        cancel,
        report,
        // The worker that takes the job lends its own.
        device: tch::Device::Cpu,
        cache: Default::default(),
    })
}

/// Copies a stored object to a local file, checking for a cancel (or the
/// time limit) between chunks: a large input never holds a stop back.
async fn fetch(env: &Env, key: &str, path: &Path, cancel: &CancelToken) -> Result<(), JobError> {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    let missing = |e: ObjectError| match e {
        // A stored object that vanished will not come back by retrying.
        ObjectError::NotFound(key) => JobError::new(
            ErrorCode::MissingInput,
            format!("stored object {key} is missing"),
        ),
        e => JobError::storage(e),
    };
    let mut body = env.objects.open(key).await.map_err(missing)?;
    let file = tokio::fs::File::create(path)
        .await
        .map_err(|e| JobError::storage(format!("staging {key}: {e}")))?;
    let mut file = tokio::io::BufWriter::with_capacity(1 << 20, file);
    while let Some(chunk) = body.stream.next().await {
        cancel.check()?;
        file.write_all(&chunk.map_err(missing)?)
            .await
            .map_err(|e| JobError::storage(format!("staging {key}: {e}")))?;
    }
    file.flush()
        .await
        .map_err(|e| JobError::storage(format!("staging {key}: {e}")))
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
