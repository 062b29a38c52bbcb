//! The ML worker pool: actors on dedicated OS threads (`SyncArbiter`).
//!
//! actix does not replace a `SyncArbiter` thread whose actor panicked, and
//! tch's tensor ops, layers and optimizer steps panic on libtorch errors. So
//! every job runs inside `catch_unwind`: a panic fails that one task with a
//! clear error and the thread lives on, keeping the pool at full size.
//!
//! Each thread lowers its own OS priority and sets libtorch's intra-op thread
//! count, so ML work never starves the async arbiters serving HTTP and the
//! pool never oversubscribes the cores.
//!
//! Each worker is a `SyncArbiter` of one thread, so one can be replaced on
//! its own: a job stuck inside a libtorch call cannot be interrupted, and
//! its thread is abandoned (left to finish or not, marked `stuck`) while a
//! new worker takes its place and the pool stays at full size.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use actix::{Actor, Addr, Handler, Message, SyncArbiter, SyncContext};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::commands::AnyCommand;
use crate::error::{ErrorCode, JobError};
use crate::ml::loaded::{CacheStats, ModelCache};
use crate::task::{JobContext, Outcome};

/// Where workers run libtorch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerDevice {
    Cpu,
    /// `count` GPUs: worker `i` runs on GPU `i % count`.
    Cuda {
        count: usize,
    },
}

impl WorkerDevice {
    fn for_worker(self, id: usize) -> tch::Device {
        match self {
            Self::Cpu => tch::Device::Cpu,
            Self::Cuda { count } => tch::Device::Cuda(id % count.max(1)),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    pub workers: usize,
    /// libtorch intra-op threads per worker.
    pub torch_threads: usize,
    /// Added to each worker thread's nice value.
    pub nice: i32,
    /// Stuck (abandoned) threads tolerated; `/readyz` reports not ready
    /// past it. Stuck threads are replaced while there are at most
    /// `max_stuck + workers` of them: past that the pool shrinks, rather
    /// than let a stream of stuck jobs pile up threads that each hold
    /// memory and a core.
    pub max_stuck: usize,
    pub device: WorkerDevice,
    /// Bytes of loaded models each worker keeps (`model_cache_bytes`).
    pub cache_bytes: u64,
}

impl PoolConfig {
    /// Sizes the pool for a machine with `cores` cores: `workers` threads
    /// (default cores − 1, at least 1), and libtorch threads per worker such
    /// that all ML threads together leave one core to HTTP and Postgres and
    /// never exceed the cores.
    pub fn for_cores(cores: usize, workers: Option<usize>) -> Self {
        let cores = cores.max(1);
        let workers = workers.unwrap_or(cores - 1).max(1);
        let spare = cores.saturating_sub(1).max(1);
        Self {
            workers,
            torch_threads: (spare / workers).max(1),
            nice: 10,
            max_stuck: 2,
            device: WorkerDevice::Cpu,
            cache_bytes: 512 << 20,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    Idle,
    Busy,
    /// Abandoned inside a job that would not stop; replaced in the pool.
    Stuck,
}

/// One worker's status, as `/readyz` and the dashboard show it.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerInfo {
    pub id: usize,
    pub state: WorkerState,
    pub current_task: Option<Uuid>,
    pub tasks_done: u64,
    pub panics: u64,
    /// The code of the last job's error (its message quotes user data, and
    /// stays with the task).
    pub last_error: Option<String>,
    /// `cpu` or `cuda:N`.
    pub device: String,
    pub cache: CacheStats,
}

/// The live workers' statuses. A worker is on the board from the moment its
/// thread starts until its actor is dropped, so the board's size is the
/// pool's real size.
#[derive(Debug, Clone, Default)]
pub struct WorkerBoard(Arc<Mutex<BTreeMap<usize, WorkerInfo>>>);

impl WorkerBoard {
    /// Workers that can take jobs (stuck ones do not count).
    pub fn alive(&self) -> usize {
        self.lock()
            .values()
            .filter(|w| w.state != WorkerState::Stuck)
            .count()
    }

    /// Threads abandoned inside a job that would not stop.
    pub fn stuck(&self) -> usize {
        self.lock()
            .values()
            .filter(|w| w.state == WorkerState::Stuck)
            .count()
    }

    pub fn snapshot(&self) -> Vec<WorkerInfo> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<usize, WorkerInfo>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(&self, id: usize, device: tch::Device, cache_bytes: u64) {
        self.lock().insert(
            id,
            WorkerInfo {
                id,
                state: WorkerState::Idle,
                current_task: None,
                tasks_done: 0,
                panics: 0,
                last_error: None,
                device: match device {
                    tch::Device::Cuda(i) => format!("cuda:{i}"),
                    _ => "cpu".into(),
                },
                cache: ModelCache::new(cache_bytes).stats(),
            },
        );
    }

    fn update(&self, id: usize, f: impl FnOnce(&mut WorkerInfo)) {
        if let Some(info) = self.lock().get_mut(&id) {
            f(info);
        }
    }
}

/// Runs one job on a worker thread.
pub struct RunJob {
    pub command: Arc<dyn AnyCommand>,
    pub params: Value,
    pub ctx: JobContext,
}

impl Message for RunJob {
    type Result = Result<Outcome, JobError>;
}

pub struct MlWorker {
    id: usize,
    config: PoolConfig,
    board: WorkerBoard,
    device: tch::Device,
    /// Models this worker loaded, lent to each job; never shared with
    /// another thread (tensors are not `Sync`).
    cache: Option<ModelCache>,
}

/// The pool: one single-thread `SyncArbiter` per worker, handed out one
/// job at a time.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Mutex<Slots>>,
    config: PoolConfig,
    board: WorkerBoard,
}

struct Slots {
    idle: Vec<(usize, Addr<MlWorker>)>,
    /// Workers that can take jobs: idle or busy, not stuck.
    size: usize,
    next_id: usize,
}

/// A worker taken for one job. Dropped, it goes back to the pool; see
/// [`Taken::abandon`] for one that will not come back.
pub struct Taken {
    pool: Pool,
    worker: Option<(usize, Addr<MlWorker>)>,
}

impl Taken {
    pub fn addr(&self) -> &Addr<MlWorker> {
        &self.worker.as_ref().expect("a taken worker").1
    }

    /// Gives up on this worker's thread: it is marked stuck, and a new
    /// worker takes its place in the pool.
    pub fn abandon(mut self, task: Uuid) {
        if let Some((id, _)) = self.worker.take() {
            tracing::error!(worker = id, %task, "abandoning an ML thread stuck in a job");
            self.pool.board.update(id, |w| w.state = WorkerState::Stuck);
            self.pool.slots().size -= 1;
            self.pool.top_up();
        }
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            self.pool.slots().idle.push(worker);
        }
    }
}

impl Pool {
    /// Starts `config.workers` workers.
    pub fn start(config: PoolConfig, board: WorkerBoard) -> Self {
        let pool = Self {
            inner: Arc::new(Mutex::new(Slots {
                idle: Vec::new(),
                size: 0,
                next_id: 0,
            })),
            config,
            board,
        };
        pool.top_up();
        pool
    }

    /// Workers that can take jobs now: the configured number, less the
    /// stuck threads past `max_stuck` that were not replaced. Asking tops
    /// the pool up first: a stuck thread that ended since makes room for a
    /// replacement, so a pool that shrank grows back.
    pub fn size(&self) -> usize {
        self.top_up();
        self.slots().size
    }

    /// Starts workers until the pool is at full size, unless too many
    /// threads are stuck (a stuck thread that comes back leaves the board,
    /// and the pool grows again).
    fn top_up(&self) {
        while self.slots().size < self.config.workers {
            if self.board.stuck() > self.config.max_stuck + self.config.workers {
                tracing::error!(
                    stuck = self.board.stuck(),
                    "too many stuck ML threads to replace: the pool runs smaller until they end"
                );
                return;
            }
            let worker = self.spawn();
            let mut slots = self.slots();
            slots.idle.push(worker);
            slots.size += 1;
        }
    }

    /// An idle worker, if there is one.
    pub fn take(&self) -> Option<Taken> {
        self.top_up();
        let worker = self.slots().idle.pop()?;
        Some(Taken {
            pool: self.clone(),
            worker: Some(worker),
        })
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn(&self) -> (usize, Addr<MlWorker>) {
        let id = {
            let mut slots = self.slots();
            slots.next_id += 1;
            slots.next_id - 1
        };
        let (config, board) = (self.config, self.board.clone());
        // Registered here, not when the thread starts, so the board counts
        // the worker from the moment it exists.
        let device = config.device.for_worker(id);
        board.register(id, device, config.cache_bytes);
        let addr = SyncArbiter::start(1, move || MlWorker {
            id,
            config,
            board: board.clone(),
            device,
            cache: Some(ModelCache::new(config.cache_bytes)),
        });
        (id, addr)
    }
}

impl Actor for MlWorker {
    type Context = SyncContext<Self>;

    fn started(&mut self, _: &mut Self::Context) {
        name_thread(&format!("mlq-ml-{}", self.id));
        lower_priority(self.config.nice);
        // Per thread: OpenMP's thread count is a per-thread setting.
        tch::set_num_threads(self.config.torch_threads as i32);
        tracing::debug!(worker = self.id, "ML worker started");
    }
}

impl Drop for MlWorker {
    fn drop(&mut self) {
        self.board.lock().remove(&self.id);
    }
}

impl Handler<RunJob> for MlWorker {
    type Result = Result<Outcome, JobError>;

    fn handle(&mut self, mut job: RunJob, _: &mut Self::Context) -> Self::Result {
        let task = job.ctx.task_id;
        job.ctx.device = self.device;
        job.ctx.cache = std::cell::RefCell::new(self.cache.take().unwrap_or_default());
        self.board.update(self.id, |w| {
            w.state = WorkerState::Busy;
            w.current_task = Some(task);
        });
        // tch types are not UnwindSafe; nothing the job touched outlives it,
        // so observing it half-updated after a panic is impossible.
        let result = catch_unwind(AssertUnwindSafe(|| job.command.run(job.params, &job.ctx)))
            .unwrap_or_else(|panic| {
                let message = panic_message(&panic);
                tracing::error!(worker = self.id, %task, "job panicked: {message}");
                self.board.update(self.id, |w| w.panics += 1);
                Err(JobError::new(
                    ErrorCode::WorkerPanic,
                    format!("the job crashed: {message}"),
                ))
            });
        let cache = std::mem::take(&mut *job.ctx.cache.borrow_mut());
        let stats = cache.stats();
        self.cache = Some(cache);
        self.board.update(self.id, |w| {
            if w.state != WorkerState::Stuck {
                w.state = WorkerState::Idle;
                w.current_task = None;
            }
            w.cache = stats;
            w.tasks_done += 1;
            w.last_error = result.as_ref().err().map(|e| e.code.to_string());
        });
        result
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    // libtorch errors carry a C++ backtrace; the first lines say what happened.
    text.lines().take(3).collect::<Vec<_>>().join(" ")
}

/// Names the OS thread, so `top -H` and `/proc` show which threads are ML
/// workers. Linux keeps at most 15 bytes.
fn name_thread(name: &str) {
    let mut bytes: Vec<u8> = name.bytes().take(15).collect();
    bytes.push(0);
    // SAFETY: `bytes` is a NUL-terminated buffer that outlives the call.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, bytes.as_ptr() as libc::c_ulong, 0, 0, 0);
    }
}

/// Lowers this thread's scheduling priority. Threads it spawns later
/// (libgomp's OpenMP team) inherit it.
///
/// A nice value, not `SCHED_IDLE`: measured on a 2-core VM, a CPU hog under
/// `SCHED_IDLE` raised p99 request latency to ~3.7 ms (the kernel places
/// woken request threads on its "idle" CPU), while one at nice 10 left it
/// at ~0.4 ms, the same as with no hog.
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    // SAFETY: plain syscalls on the calling thread; no memory is shared.
    let rc = unsafe {
        let tid = libc::gettid();
        let current = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, current + nice)
    };
    if rc != 0 {
        tracing::warn!(
            "could not lower ML thread priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_leave_a_core_and_never_oversubscribe() {
        for cores in 1..=64 {
            let c = PoolConfig::for_cores(cores, None);
            assert_eq!(c.workers, (cores - 1).max(1));
            assert_eq!(
                c.workers * c.torch_threads,
                (cores - 1).max(1),
                "{cores}: {c:?}"
            );
            for workers in 1..=cores {
                let c = PoolConfig::for_cores(cores, Some(workers));
                assert!(c.workers * c.torch_threads <= cores, "{cores}: {c:?}");
            }
        }
        assert_eq!(PoolConfig::for_cores(16, Some(3)).torch_threads, 5);
    }
}
