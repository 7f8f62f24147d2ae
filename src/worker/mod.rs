//! The worker runtime: plans jobs, pulls tasks by free slots, runs each in a
//! supervised child, checkpoints, completes, and drains on shutdown.

mod dead_letter;
mod health;
mod planner;
pub mod priority;
mod reconcile;
mod supervise;
mod tasks;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connect::ConnectOptions;
use crate::error::{Error, ErrorKind, Result};
use crate::ledger::Ledger;
use crate::record::Heartbeat;
use crate::store::FileRoots;
use crate::subjects::{self, PriorityClass};

pub use supervise::Limits;

/// `jetcode worker` options.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Concurrent tasks; default: one per two cores (an encode uses several
    /// threads). 0 runs only the planner and dead-letter roles.
    #[arg(long, env = "JETCODE_SLOTS")]
    pub slots: Option<u32>,
    /// Directory file:// sources and outputs must lie under (repeatable). Default: working directory.
    #[arg(long = "file-root", env = "JETCODE_FILE_ROOTS", value_delimiter = ',')]
    pub file_roots: Vec<PathBuf>,
    /// Worker id; default host-pid.
    #[arg(long, env = "JETCODE_WORKER_ID")]
    pub id: Option<String>,
    /// Kill a child whose progress stops for this many seconds.
    #[arg(long, default_value_t = 60.0)]
    pub stall_timeout: f64,
    /// A task may run this many times the source seconds it encodes, times
    /// its renditions (at least 300 s).
    #[arg(long, default_value_t = 30.0)]
    pub task_timeout_factor: f64,
    /// Memory (RLIMIT_DATA) each media child may use, MiB; 0 = unlimited.
    /// A child over it fails its task (retried, maybe on a bigger worker)
    /// instead of waking the OOM killer on the whole machine.
    #[arg(long, env = "JETCODE_CHILD_MEMORY_MB", default_value_t = 8192)]
    pub child_memory_mb: u64,
    /// Open files (RLIMIT_NOFILE) each media child may hold; 0 = the
    /// worker's own limit.
    #[arg(long, env = "JETCODE_CHILD_OPEN_FILES", default_value_t = 4096)]
    pub child_open_files: u64,
    /// Widest source picture this worker accepts, pixels; wider sources
    /// fail their job at planning with the reason.
    #[arg(long, env = "JETCODE_MAX_WIDTH", default_value_t = 8192)]
    pub max_width: u32,
    /// Tallest source picture this worker accepts, pixels.
    #[arg(long, env = "JETCODE_MAX_HEIGHT", default_value_t = 8192)]
    pub max_height: u32,
    /// Most video frames a source may have.
    #[arg(long, env = "JETCODE_MAX_FRAMES", default_value_t = 2_000_000)]
    pub max_frames: u64,
    /// Longest source (video, container or audio), seconds (default 12 h).
    #[arg(long, env = "JETCODE_MAX_DURATION", default_value_t = 43_200.0)]
    pub max_duration: f64,
    /// Highest nominal source frame rate, frames per second.
    #[arg(long, env = "JETCODE_MAX_FPS", default_value_t = 240.0)]
    pub max_fps: f64,
    /// Seconds before the first retry of a failed task; doubles per
    /// attempt (at most 5 min), ±25 % jitter.
    #[arg(long, default_value_t = 10.0)]
    pub retry_backoff: f64,
    /// On SIGTERM, let in-flight tasks finish for this many seconds, then
    /// hand them back. The process exits at most 10 s after that, even when
    /// NATS is unreachable.
    #[arg(long, default_value_t = 30.0)]
    pub drain_timeout: f64,
    /// Address for /healthz, /readyz, /metrics (port 0 = any free port).
    #[arg(long, env = "JETCODE_HEALTH_ADDR", default_value = "127.0.0.1:0")]
    pub health_addr: String,
    /// Do not run the planner role.
    #[arg(long)]
    pub no_planner: bool,
    /// Seconds between reconciler sweeps (one worker of the fleet holds the
    /// reconciler lease and sweeps; at most 10, a third of the lease's
    /// life); a stranded job moves again within about twice this plus 20 s.
    /// 0: never take the lease.
    #[arg(long, env = "JETCODE_RECONCILE_INTERVAL", default_value_t = 10.0)]
    pub reconcile_interval: f64,
    /// Apply streams/buckets at start (idempotent) instead of requiring them.
    #[arg(long)]
    pub apply_streams: bool,
    #[command(flatten)]
    pub s3: crate::store::s3::S3Args,
}

impl WorkerArgs {
    pub fn slots(&self) -> u32 {
        self.slots.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
            (cores / 2).max(1)
        })
    }

    /// Threads each media child may use: the machine's cores shared by
    /// the slots, so busy slots do not oversubscribe the CPU (x264 alone
    /// would start 1.5 threads per core in every child).
    pub fn child_threads(&self) -> u32 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        (cores / self.slots().max(1)).max(1)
    }

    /// Check the options that have no safe meaning outside a range.
    pub fn validate(&self) -> Result<()> {
        let mut bad = Vec::new();
        if self.max_width == 0 || self.max_height == 0 || self.max_frames == 0 {
            bad.push("--max-width, --max-height and --max-frames must be at least 1".to_string());
        }
        // Upper bounds keep every duration built from them representable
        // (a week of stall, a factor of 10,000 on a day-long task).
        for (name, v, most) in [
            ("--max-duration", self.max_duration, 1e7),
            ("--max-fps", self.max_fps, 1e4),
            ("--stall-timeout", self.stall_timeout, 604_800.0),
            ("--task-timeout-factor", self.task_timeout_factor, 1e4),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= most) {
                bad.push(format!("{name} must be a number in (0, {most}], not {v}"));
            }
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(Error::new(ErrorKind::InvalidSpec, bad.join("; ")))
        }
    }

    /// What a source may decode to on this worker.
    pub fn media_limits(&self) -> crate::plan::MediaLimits {
        crate::plan::MediaLimits {
            max_width: self.max_width,
            max_height: self.max_height,
            max_frames: self.max_frames,
            max_duration_seconds: self.max_duration,
            max_fps: self.max_fps,
        }
    }

    fn child_open_files(&self) -> Option<u64> {
        (self.child_open_files > 0).then_some(self.child_open_files)
    }

    fn child_memory(&self) -> Option<u64> {
        (self.child_memory_mb > 0).then_some(self.child_memory_mb << 20)
    }

    fn stall(&self) -> Duration {
        Duration::from_secs_f64(self.stall_timeout.max(1.0))
    }
}

/// Cores of this machine (at least 1).
fn cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as u32
}

/// True while `client` is connected. On the way out, steps that need the
/// server are skipped when it is not: waiting out their timeouts would only
/// delay the exit, and what they would do (a hand-back, a heartbeat delete)
/// happens anyway through ack deadlines and max ages.
pub(crate) fn connected(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// Consecutive tasks this worker could not run before it reports not ready.
pub(crate) const LOCAL_FAILURES_UNREADY: u32 = 3;

/// Shared state of one worker process.
pub(crate) struct Worker {
    id: String,
    host: String,
    args: WorkerArgs,
    nats: async_nats::Client,
    js: jetstream::Context,
    ledger: Ledger,
    roots: FileRoots,
    /// The S3 buckets this worker may use.
    s3: crate::store::s3::S3Access,
    /// Stop pulling new work.
    shutdown: CancellationToken,
    /// Drain time is over: kill children and hand their tasks back.
    abort: CancellationToken,
    /// Per-job cancellation of running children.
    cancels: Mutex<HashMap<String, (CancellationToken, usize)>>,
    busy: AtomicU32,
    /// Wakes the heartbeat when `busy` changes, so `jetcode workers` and a
    /// scaler see a slot free up at once, not up to 3 s later.
    busy_changed: tokio::sync::Notify,
    frames: AtomicU64,
    /// [`Heartbeat::speed`] as f64 bits.
    speed: AtomicU64,
    tasks_done: AtomicU64,
    /// Tasks in a row this worker could not run (paths outside its roots,
    /// a missing mount); at [`LOCAL_FAILURES_UNREADY`] /readyz says no.
    local_failures: AtomicU32,
    ready: AtomicBool,
    started_at: f64,
    last_heartbeat: Mutex<Option<Heartbeat>>,
    health_addr: Option<String>,
}

impl Worker {
    /// A token cancelled when the job is cancelled or the worker aborts.
    /// Pair every call with [`Worker::release_job`].
    fn job_token(&self, job: &str) -> CancellationToken {
        let mut map = self.cancels.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map
            .entry(job.to_string())
            .or_insert_with(|| (self.abort.child_token(), 0));
        if entry.0.is_cancelled() {
            // Cancelled, then retried while an old task was still winding
            // down: the new generation's task gets a live token.
            entry.0 = self.abort.child_token();
        }
        entry.1 += 1;
        entry.0.clone()
    }

    /// The input a media child reads for source `url`: a local file under
    /// the file roots, or an `s3://` URL of an allowed bucket (the child
    /// reads it through its block cache).
    fn source_input(&self, url: &str) -> Result<PathBuf> {
        match self.s3.check(url)? {
            Some(_) => Ok(PathBuf::from(url)),
            None => self.roots.source_path(url),
        }
    }

    /// Check that an output URL is one this worker may write; the local
    /// directory (created, symlinks resolved) of a `file://` output.
    fn check_output(&self, url: &str) -> Result<Option<PathBuf>> {
        match self.s3.check(url)? {
            Some(_) => Ok(None),
            None => self.roots.output_dir(url).map(Some),
        }
    }

    fn release_job(&self, job: &str) {
        let mut map = self.cancels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get_mut(job) {
            e.1 = e.1.saturating_sub(1);
            if e.1 == 0 {
                map.remove(job);
            }
        }
    }

    fn cancel_job(&self, job: &str) {
        let map = self.cancels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((t, _)) = map.get(job) {
            t.cancel();
        }
    }
}

/// Run a worker until SIGTERM/SIGINT; returns after draining.
pub async fn run(opts: ConnectOptions, args: WorkerArgs) -> Result<()> {
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    let abort = CancellationToken::new();
    let abort_on_second = abort.clone();
    tokio::spawn(async move {
        wait_signal().await;
        tracing::info!("signal: draining (send again to stop at once)");
        signals.cancel();
        wait_signal().await;
        tracing::warn!("second signal: handing in-flight tasks back now");
        abort_on_second.cancel();
    });
    run_until(opts, args, shutdown, abort).await
}

async fn wait_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Run until `shutdown` is cancelled, then drain (or stop at once when `abort` is).
pub async fn run_until(
    opts: ConnectOptions,
    args: WorkerArgs,
    shutdown: CancellationToken,
    abort: CancellationToken,
) -> Result<()> {
    args.validate()?;
    let roots = if args.file_roots.is_empty() {
        let cwd = std::env::current_dir()
            .map_err(|e| Error::new(ErrorKind::Storage, format!("working directory: {e}")))?;
        FileRoots::new(&[cwd])?
    } else {
        FileRoots::new(&args.file_roots)?
    };
    let host = sysinfo::System::host_name().unwrap_or_else(|| "localhost".into());
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| format!("{host}-{}", std::process::id()));
    if !crate::job::valid_id(&id) {
        return Err(Error::new(
            ErrorKind::Storage,
            format!("worker id {id:?} must match [A-Za-z0-9_-]{{1,64}}"),
        ));
    }
    supervise::set_child_env(args.s3.child_env());
    let mut opts = opts;
    opts.name = Some(format!("jetcode-worker {id}"));
    let nats = opts.connect().await?;
    let js = jetstream::new(nats.clone());
    if args.apply_streams {
        crate::streams::apply(&js).await?;
    }
    let ledger = Ledger::open(js.clone()).await?;
    let mut tasks_consumers: ClassConsumers = Vec::new();
    for class in PriorityClass::ALL {
        let name = class.consumer();
        let c: PullConsumer = js
            .get_consumer_from_stream(name, subjects::TASKS_STREAM)
            .await
            .map_err(|e| {
                Error::js(
                    &format!("open {name} consumer (run `jetcode streams apply`)"),
                    e,
                )
            })?;
        tasks_consumers.push((class, c));
    }
    let dead_letter_consumer: PullConsumer = js
        .get_consumer_from_stream(subjects::DEAD_LETTER_CONSUMER, subjects::DEAD_STREAM)
        .await
        .map_err(|e| Error::js("open dead-letter consumer (run `jetcode streams apply`)", e))?;
    let planner_consumer: PullConsumer = js
        .get_consumer_from_stream(subjects::PLANNER_CONSUMER, subjects::JOBS_STREAM)
        .await
        .map_err(|e| Error::js("open planner consumer (run `jetcode streams apply`)", e))?;

    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| Error::new(ErrorKind::Storage, format!("metrics: {e}")));
    crate::metrics::describe();
    let listener = tokio::net::TcpListener::bind(&args.health_addr)
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::Storage,
                format!("health address {}: {e}", args.health_addr),
            )
        })?;
    let health_addr = listener.local_addr().ok();

    let slots = args.slots();
    let w = Arc::new(Worker {
        id: id.clone(),
        host,
        args: args.clone(),
        nats: nats.clone(),
        js,
        ledger,
        roots,
        s3: crate::store::s3::S3Access::new(args.s3.clone()),
        shutdown: shutdown.clone(),
        abort: abort.clone(),
        cancels: Mutex::new(HashMap::new()),
        busy: AtomicU32::new(0),
        busy_changed: tokio::sync::Notify::new(),
        frames: AtomicU64::new(0),
        speed: AtomicU64::new(0f64.to_bits()),
        tasks_done: AtomicU64::new(0),
        local_failures: AtomicU32::new(0),
        ready: AtomicBool::new(false),
        started_at: crate::record::now(),
        health_addr: health_addr.map(|a| a.to_string()),
        last_heartbeat: Mutex::new(None),
    });
    metrics::gauge!(crate::metrics::SLOTS).set(slots as f64);

    let background = CancellationToken::new();
    let side = TaskTracker::new();
    side.spawn(health::heartbeat_loop(w.clone(), background.clone()));
    if let Ok(handle) = prometheus {
        side.spawn(health::http_loop(
            w.clone(),
            listener,
            handle,
            background.clone(),
        ));
    }
    side.spawn(health::micro_service(w.clone(), background.clone()));
    side.spawn(cancel_listener(w.clone(), background.clone()));

    let work = TaskTracker::new();
    if !args.no_planner {
        // Tracked with the tasks: the drain waits for a plan in progress
        // (or, past the drain timeout, stops its probe and hands the spec
        // back) instead of leaving it to its 60 s ack deadline.
        let w2 = w.clone();
        let c = planner_consumer.clone();
        work.spawn(async move { planner::planner_loop(w2, c).await });
    }
    if args.reconcile_interval > 0.0 {
        side.spawn(reconcile::reconcile_loop(
            w.clone(),
            Duration::from_secs_f64(args.reconcile_interval),
            background.clone(),
        ));
    }
    side.spawn(dead_letter::dead_letter_loop(
        w.clone(),
        dead_letter_consumer,
    ));
    w.ready.store(true, Ordering::Relaxed);
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    tracing::info!(
        worker = %id,
        slots,
        health = %health_addr.map(|a| a.to_string()).unwrap_or_default(),
        roots = ?w.roots.roots(),
        s3_buckets = ?w.s3.args().buckets,
        "worker ready"
    );

    pull_loop(
        w.clone(),
        tasks_consumers,
        Arc::new(Semaphore::new(slots as usize)),
        &work,
    )
    .await;

    // Drain: no new work; in-flight tasks finish or are handed back. Every
    // step below is bounded, so the process exits within
    // `drain_timeout + SHUTDOWN_GRACE` whatever state NATS is in.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    work.close();
    let in_flight = w.busy.load(Ordering::Relaxed);
    tracing::info!(in_flight, "draining");
    let drain = Duration::from_secs_f64(args.drain_timeout.max(0.0));
    tokio::select! {
        _ = work.wait() => {}
        _ = tokio::time::sleep(drain) => {
            tracing::warn!("drain timeout: handing remaining tasks back");
            abort.cancel();
        }
        _ = abort.cancelled() => {}
    }
    if tokio::time::timeout(HAND_BACK_BOUND, work.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "could not hand every task back within {HAND_BACK_BOUND:?} (NATS unreachable?); their ack deadline will redeliver them"
        );
    }
    background.cancel();
    side.close();
    if tokio::time::timeout(SIDE_TASKS_BOUND, side.wait())
        .await
        .is_err()
    {
        tracing::warn!("background tasks did not stop within {SIDE_TASKS_BOUND:?}");
    }
    if !connected(&nats) {
        tracing::warn!("NATS unreachable: nothing more to flush");
    } else {
        match tokio::time::timeout(FLUSH_BOUND, nats.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("final flush failed: {e}"),
            Err(_) => {
                tracing::warn!("final flush timed out after {FLUSH_BOUND:?} (NATS unreachable?)")
            }
        }
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// After the drain, how long in-flight tasks get to be handed back.
const HAND_BACK_BOUND: Duration = Duration::from_secs(5);
/// How long the heartbeat, health, micro and role loops get to stop.
const SIDE_TASKS_BOUND: Duration = Duration::from_millis(2500);
/// How long the last flush may wait for a server.
const FLUSH_BOUND: Duration = Duration::from_secs(1);
/// Upper bound of shutdown beyond `--drain-timeout` (documented in the
/// README next to that flag): the batch tail (0.5 s), the three bounds
/// above and the runtime's 1 s shutdown timeout.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long one pull request waits on the server for messages.
const FETCH_EXPIRES: Duration = Duration::from_secs(5);
/// Bound on a pull request the server answers at once (a no-wait fetch,
/// or sending the requests of a wait): covers a server that never does.
const NO_WAIT_BOUND: Duration = Duration::from_secs(2);

/// The task consumers, one per priority class, highest class first.
type ClassConsumers = Vec<(PriorityClass, PullConsumer)>;

/// Fetch only as many tasks as there are free slots; never prefetch long
/// work. Each free slot takes its class by [`priority::Picker`] (weighted
/// round robin over the classes with work) through a no-wait fetch of one
/// task, so a class found empty costs one round trip and the slot falls
/// through to the next class at once. Only when every class was empty does
/// the loop wait, on all of them at once ([`wait_any`]).
async fn pull_loop(
    w: Arc<Worker>,
    consumers: ClassConsumers,
    slots: Arc<Semaphore>,
    work: &TaskTracker,
) {
    let mut picker = priority::Picker::default();
    let mut backoff = Duration::from_millis(250);
    loop {
        if w.shutdown.is_cancelled() {
            return;
        }
        if slots.available_permits() == 0 {
            tokio::select! {
                _ = w.shutdown.cancelled() => return,
                p = slots.clone().acquire_owned() => drop(p),
            }
            continue;
        }
        // Messages we will not run, handed back together (in parallel,
        // each step bounded) once the round is over.
        let mut give_back = Vec::new();
        let mut empty: Vec<PriorityClass> = Vec::new();
        let mut failed = Vec::new();
        while slots.available_permits() > 0 && !w.shutdown.is_cancelled() {
            let has_work = |c: PriorityClass| !empty.contains(&c);
            let Some(class) = picker.choose(has_work) else {
                break;
            };
            let consumer = &consumers[class_index(&consumers, class)].1;
            match fetch_now(&w, consumer).await {
                Pulled::Task(msg) => {
                    picker.commit(class, has_work);
                    start_task(&w, work, &slots, *msg, &mut give_back);
                }
                Pulled::Empty => empty.push(class),
                Pulled::Failed(e) => {
                    failed.push(format!("{}: {e}", class.as_str()));
                    empty.push(class);
                }
            }
        }
        let idle = slots.available_permits() > 0 && !w.shutdown.is_cancelled();
        if idle && !failed.is_empty() {
            tracing::warn!("fetch: {}", failed.join("; "));
            tokio::select! {
                _ = w.shutdown.cancelled() => {}
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        } else if idle {
            backoff = Duration::from_millis(250);
            match wait_any(&w, &consumers).await {
                Ok(got) => {
                    for (_, msg) in got {
                        start_task(&w, work, &slots, msg, &mut give_back);
                    }
                }
                Err(e) => {
                    tracing::warn!("fetch: {e}");
                    tokio::select! {
                        _ = w.shutdown.cancelled() => {}
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        } else {
            backoff = Duration::from_millis(250);
        }
        if !give_back.is_empty() {
            // In the work tracker, so the drain's bounds cover it and the
            // pull loop returns at once.
            let js = w.js.clone();
            work.spawn(async move {
                futures::future::join_all(give_back.iter().map(|m| tasks::hand_back(&js, m))).await;
            });
        }
    }
}

fn class_index(consumers: &ClassConsumers, class: PriorityClass) -> usize {
    consumers
        .iter()
        .position(|(c, _)| *c == class)
        .unwrap_or_default()
}

/// Run `msg` in a free slot, or keep it to hand back (shutting down, or
/// no slot: a wait on every class can bring more tasks than free slots).
fn start_task(
    w: &Arc<Worker>,
    work: &TaskTracker,
    slots: &Arc<Semaphore>,
    msg: jetstream::Message,
    give_back: &mut Vec<jetstream::Message>,
) {
    if w.shutdown.is_cancelled() {
        give_back.push(msg);
        return;
    }
    let Ok(permit) = slots.clone().try_acquire_owned() else {
        give_back.push(msg);
        return;
    };
    let w = w.clone();
    work.spawn(async move {
        w.busy.fetch_add(1, Ordering::Relaxed);
        w.busy_changed.notify_one();
        metrics::gauge!(crate::metrics::SLOTS_BUSY).increment(1.0);
        tasks::handle(&w, msg).await;
        w.busy.fetch_sub(1, Ordering::Relaxed);
        w.busy_changed.notify_one();
        metrics::gauge!(crate::metrics::SLOTS_BUSY).decrement(1.0);
        drop(permit);
    });
}

/// What a no-wait fetch of one task brought.
enum Pulled {
    Task(Box<jetstream::Message>),
    /// Nothing queued for this consumer (or nothing we may take now: the
    /// server answers "requests pending" when other workers' waiting pulls
    /// already claim what is queued).
    Empty,
    /// The request failed (NATS trouble, a missing consumer).
    Failed(String),
}

/// One task from `consumer` if it has one queued, without waiting: the
/// server answers at once, with the task or with "no messages".
async fn fetch_now(w: &Worker, consumer: &PullConsumer) -> Pulled {
    let request = tokio::time::timeout(NO_WAIT_BOUND, consumer.fetch().max_messages(1).messages());
    let batch = tokio::select! {
        _ = w.shutdown.cancelled() => return Pulled::Empty,
        b = request => b,
    };
    let batch = match batch {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return Pulled::Failed(e.to_string()),
        Err(_) => return Pulled::Failed("pull request timed out".into()),
    };
    let mut batch = Batch::with_deadline(batch, NO_WAIT_BOUND);
    match batch.next(&w.shutdown).await {
        Some(Ok(m)) => Pulled::Task(Box::new(m)),
        // async-nats ends the batch on "no messages" and "request timeout";
        // an error here is a real one (no responders, consumer deleted,
        // too many waiting pulls): the loop backs off.
        Some(Err(e)) => Pulled::Failed(e.to_string()),
        None => Pulled::Empty,
    }
}

/// Every class was empty: ask each class's consumer for one task at once,
/// each request held by the server up to [`FETCH_EXPIRES`] and answered
/// as soon as a task arrives, and return with the first task (plus any
/// other request's task already here). A worker with free slots so waits
/// for work of any class with no polling and no class waiting on another.
///
/// The requests still open are then dropped: the client unsubscribes their
/// inboxes and the server, which checks a pull request's interest before
/// it delivers to it, forgets them. Only a task sent to such a request in
/// the instant before that (a second class receiving work at the same
/// moment) is lost to this worker; the server redelivers it after its ack
/// deadline. A task more than the free slots (a 1- or 2-slot worker whose
/// requests were answered together) is handed back.
async fn wait_any(
    w: &Worker,
    consumers: &ClassConsumers,
) -> std::result::Result<Vec<(PriorityClass, jetstream::Message)>, String> {
    let requests = futures::future::join_all(consumers.iter().map(|(class, c)| async move {
        let class = *class;
        c.fetch()
            .max_messages(1)
            .expires(FETCH_EXPIRES)
            .messages()
            .await
            .map(|b| b.map(move |r| r.map(|m| (class, m))))
            .map_err(|e| format!("{}: {e}", class.as_str()))
    }));
    let requests = tokio::select! {
        _ = w.shutdown.cancelled() => return Ok(Vec::new()),
        r = tokio::time::timeout(NO_WAIT_BOUND, requests) => r,
    };
    let requests = requests.map_err(|_| "pull requests timed out".to_string())?;
    let (open, failed): (Vec<_>, Vec<_>) = requests.into_iter().partition(|r| r.is_ok());
    let failed: Vec<String> = failed.into_iter().filter_map(|r| r.err()).collect();
    if open.is_empty() {
        return Err(failed.join("; "));
    }
    if !failed.is_empty() {
        tracing::warn!("fetch: {}", failed.join("; "));
    }
    let mut merged = Batch::new(futures::stream::select_all(open.into_iter().flatten()));
    let mut got = Vec::new();
    let mut errors = Vec::new();
    loop {
        match merged.next(&w.shutdown).await {
            Some(Ok(m)) => {
                got.push(m);
                break;
            }
            // One request ended with an error status; the others still wait.
            Some(Err(e)) => {
                tracing::debug!("task pull: {e}");
                errors.push(e.to_string());
            }
            // Every request ended with an error and nothing came: the loop
            // backs off instead of asking again at once.
            None if !errors.is_empty() && errors.len() + failed.len() >= consumers.len() => {
                return Err(errors.join("; "))
            }
            None => return Ok(got),
        }
    }
    while let Some(Some(r)) = futures::FutureExt::now_or_never(merged.inner.next()) {
        if let Ok(m) = r {
            got.push(m);
        }
    }
    got.sort_by_key(|(class, _)| *class);
    Ok(got)
}

/// A pull batch read with deadlines: it ends at the pull's expiry (plus
/// slack) even when the server is gone and never ends it, and at most
/// [`BATCH_TAIL_ON_SHUTDOWN`] after shutdown starts. Messages delivered
/// before that are still read, so they can be handed back at once instead
/// of waiting out their ack deadline.
struct Batch<S = jetstream::consumer::pull::Batch> {
    inner: S,
    end: tokio::time::Instant,
}

/// How long a batch is still read after shutdown starts.
const BATCH_TAIL_ON_SHUTDOWN: Duration = Duration::from_millis(500);

impl<S, T, E> Batch<S>
where
    S: futures::Stream<Item = std::result::Result<T, E>> + Unpin,
    E: std::fmt::Display,
{
    /// A batch of a pull that expires after [`FETCH_EXPIRES`].
    fn new(inner: S) -> Self {
        Self::with_deadline(inner, FETCH_EXPIRES + Duration::from_secs(1))
    }

    fn with_deadline(inner: S, deadline: Duration) -> Self {
        Batch {
            inner,
            end: tokio::time::Instant::now() + deadline,
        }
    }

    async fn next(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Option<std::result::Result<T, String>> {
        loop {
            if shutdown.is_cancelled() {
                self.end = self
                    .end
                    .min(tokio::time::Instant::now() + BATCH_TAIL_ON_SHUTDOWN);
            }
            tokio::select! {
                r = tokio::time::timeout_at(self.end, self.inner.next()) => {
                    return match r {
                        Ok(Some(Ok(m))) => Some(Ok(m)),
                        Ok(Some(Err(e))) => Some(Err(e.to_string())),
                        Ok(None) | Err(_) => None,
                    };
                }
                // Shorten the deadline, then read on.
                _ = shutdown.cancelled(), if !shutdown.is_cancelled() => {}
            }
        }
    }
}

/// The next batch of up to `max` messages of a short-task role (planner,
/// dead letters), waiting at most 5 s; `None` once the worker shuts down.
/// NATS trouble is logged and retried with backoff (0.5 s doubling to 10 s).
async fn next_batch(w: &Worker, consumer: &PullConsumer, max: usize, role: &str) -> Option<Batch> {
    let mut backoff = Duration::from_millis(500);
    loop {
        if w.shutdown.is_cancelled() {
            return None;
        }
        let batch = tokio::select! {
            _ = w.shutdown.cancelled() => return None,
            b = consumer.fetch().max_messages(max).expires(FETCH_EXPIRES).messages() => b,
        };
        match batch {
            Ok(b) => return Some(Batch::new(b)),
            Err(e) => {
                tracing::warn!("{role} fetch: {e} (retrying in {backoff:?})");
                tokio::select! {
                    _ = w.shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Kill children of cancelled jobs as soon as the control message arrives.
async fn cancel_listener(w: Arc<Worker>, stop: CancellationToken) {
    let mut sub = match w.nats.subscribe(subjects::CANCEL_ALL).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cancel subscription failed: {e}");
            return;
        }
    };
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return,
            m = sub.next() => m,
        };
        let Some(msg) = msg else { return };
        if let Some(job) = msg.subject.as_str().rsplit('.').next() {
            tracing::info!(job, "cancel received");
            w.cancel_job(job);
        }
    }
}
