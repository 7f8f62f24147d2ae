//! Coordination cost: the queue path of a task with the media work left
//! out, as the worker runs it, on a real nats-server (its file store).
//! Used by `examples/coord.rs` (standalone) and `examples/bench.rs`.
//!
//! Per task: publish (`dispatch::publish`, Msg-Id `<job>.<task>`), fetch
//! from the real `workers` consumer (`fetch().max_messages(free)`, as the
//! worker's pull loop), decode, checkpoint (`Ledger::checkpoint`: a KV
//! `create`), double ack, then the completion check of
//! `worker/tasks.rs::queue_stitch_if_complete`: `dispatch::queued`, and
//! when nothing of the job is queued any more the job record and its
//! checkpoint listing (stopping before the stitch publish, which is one
//! more task publish). Jobs have [`TASKS_PER_JOB`] tasks and a running
//! record, so the check takes its short path while other tasks of the job
//! are queued or in flight, and goes on once nothing of it is left.
//! Not measured: what the worker does around this path per task (reading
//! the job record and the part's checkpoint before it starts, and two
//! best-effort events).
//!
//! Serial (concurrency 1): one slot; each step publishes the next task of
//! the job, then fetches, checkpoints, acks and checks the oldest one (so
//! the job still has a task queued, as mid-job, and only its last task
//! takes the full check). Its latency covers all five steps. Concurrent: a producer publishes every job's tasks in
//! one pipelined call (as the planner does) while `concurrency` slots pull
//! (16 slots per worker connection, as many connections as needed, each
//! fetching as many messages as it has free slots); latency is a task's
//! worker side (fetched -> checked), throughput is end to end (first
//! publish to last check).

#![allow(dead_code)]

use std::error::Error;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use jetcode::job::Rendition;
use jetcode::ledger::Ledger;
use jetcode::plan::Segment;
use jetcode::record::{now, JobRecord, JobState, TaskDone};
use jetcode::subjects::PriorityClass;
use jetcode::task::{Task, TaskBody, TASK_VERSION};
use jetcode::{dispatch, subjects, ConnectOptions};
use tokio_util::sync::CancellationToken;

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// Tasks per job (a 500 s source in 10 s segments).
pub const TASKS_PER_JOB: usize = 50;
/// Slots per worker connection in the concurrent mode.
pub const SLOTS_PER_WORKER: usize = 16;
/// The worker's pull expiry.
const FETCH_EXPIRES: Duration = Duration::from_secs(5);

/// Figures of one run.
#[derive(Debug, Clone)]
pub struct CoordFigures {
    pub tasks: usize,
    pub concurrency: usize,
    pub workers: usize,
    pub seconds: f64,
    pub tasks_per_s: f64,
    /// Per-task latency (see the module doc for what it covers), ms.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Per step: (name, p50 ms, p99 ms).
    pub steps: Vec<(&'static str, f64, f64)>,
    /// Completion checks that found the job's queue empty (full check).
    pub full_checks: usize,
    /// CPU per task, ms: (nats-server, this process), when the harness
    /// measured it.
    pub cpu_ms_per_task: Option<(f64, f64)>,
}

/// Measure `tasks` tasks through the queue path with `concurrency` slots.
/// The server at `url` must have JetStream; the topology is applied.
pub async fn run(url: &str, tasks: usize, concurrency: usize) -> Res<CoordFigures> {
    let connect = || async {
        let nc = ConnectOptions::new(url.to_string()).connect().await?;
        Res::Ok(jetstream::new(nc))
    };
    let js = connect().await?;
    jetcode::streams::apply(&js).await?;
    let run_id = format!(
        "co{}x{}",
        std::process::id(),
        (now() * 1000.0) as u64 % 1_000_000
    );
    let jobs = make_jobs(&run_id, tasks);
    let ledger = Ledger::open(js.clone()).await?;
    for (job, list) in &jobs {
        ledger.create_record(&record(job, list.len())).await?;
    }
    if concurrency <= 1 {
        serial(&js, &ledger, &jobs).await
    } else {
        let workers = concurrency.div_ceil(SLOTS_PER_WORKER);
        let mut conns = Vec::with_capacity(workers);
        for _ in 0..workers {
            let js = connect().await?;
            let ledger = Ledger::open(js.clone()).await?;
            conns.push((js, ledger));
        }
        concurrent(&js, conns, &jobs, concurrency).await
    }
}

/// Jobs of [`TASKS_PER_JOB`] segment tasks (one rendition), about the
/// size of real task messages.
fn make_jobs(run_id: &str, tasks: usize) -> Vec<(String, Vec<Task>)> {
    let rendition: Rendition = serde_json::from_value(serde_json::json!(
        {"name": "h264-720p", "width": 1280, "height": 720, "crf": 23, "preset": "veryfast"}
    ))
    .expect("rendition");
    let mut out = Vec::new();
    let mut left = tasks;
    let mut j = 0;
    while left > 0 {
        let n = left.min(TASKS_PER_JOB);
        let job = format!("{run_id}-{j}");
        let list = (0..n as u32)
            .map(|i| {
                let start = i as u64 * 250;
                Task {
                    v: TASK_VERSION,
                    job: job.clone(),
                    id: Task::ladder_id(i),
                    source: "file:///srv/media/in/coordination-bench.mp4".into(),
                    output: format!("file:///srv/media/out/{job}/"),
                    body: TaskBody::Segment {
                        renditions: vec![rendition.clone()],
                        rendition: None,
                        segment: Segment {
                            index: i,
                            start_frame: start,
                            end_frame: start + 250,
                            start_ns: start * 40_000_000,
                            end_ns: (start + 250) * 40_000_000,
                            starts_on_keyframe: true,
                        },
                        following: Vec::new(),
                        fps_num: 25,
                        fps_den: 1,
                        pts_offset_ns: Some(0),
                        min_frame_ns: 40_000_000,
                        orientation: None,
                    },
                }
            })
            .collect();
        out.push((job, list));
        left -= n;
        j += 1;
    }
    out
}

fn record(job: &str, tasks: usize) -> JobRecord {
    let t = now();
    JobRecord {
        id: job.to_string(),
        spec: None,
        state: JobState::Running,
        plan: None,
        tasks_total: tasks as u32,
        error: None,
        output: None,
        created_at: t,
        updated_at: t,
        finished_at: None,
        generation: 0,
        repairs: 0,
    }
}

/// Per-task step durations: create, ack, check.
type Sample = [Duration; 3];

/// What a worker does with a fetched task message once the (absent)
/// media work is done: checkpoint, double ack, completion check.
/// Returns the step durations and whether the check went all the way.
async fn finish(
    js: &jetstream::Context,
    ledger: &Ledger,
    worker: &str,
    msg: jetstream::Message,
) -> Res<(Sample, bool)> {
    let task = Task::decode(&msg.payload).map_err(|e| format!("task decode: {e:?}"))?;
    let t0 = Instant::now();
    for part in task.parts() {
        let done = TaskDone {
            worker: worker.to_string(),
            seconds: 0.0,
            frames: 250,
            at: now(),
            bytes: Some(0),
            sha256: None,
            decoded: None,
        };
        ledger.checkpoint(&task.job, &part.id, &done).await?;
    }
    let t1 = Instant::now();
    msg.double_ack().await?;
    let t2 = Instant::now();
    let full = completion_check(js, ledger, &task.job).await?;
    Ok(([t1 - t0, t2 - t1, t2.elapsed()], full))
}

/// `queue_stitch_if_complete` up to (not including) the stitch publish.
/// True when it went past the O(1) queued count.
async fn completion_check(js: &jetstream::Context, ledger: &Ledger, job: &str) -> Res<bool> {
    let (queued, _) = dispatch::queued(js, job).await?;
    if queued > 0 {
        return Ok(false);
    }
    if let Some((rec, _)) = ledger.record(job).await? {
        if rec.state == JobState::Running {
            let done = ledger.done_tasks(job).await?.len();
            if done < rec.tasks_total as usize {
                return Err(format!("job {job}: queue empty but {done} checkpoints").into());
            }
        }
    }
    Ok(true)
}

async fn serial(
    js: &jetstream::Context,
    ledger: &Ledger,
    jobs: &[(String, Vec<Task>)],
) -> Res<CoordFigures> {
    let consumer: PullConsumer = js
        .get_consumer_from_stream(subjects::WORKERS_CONSUMER, subjects::TASKS_STREAM)
        .await?;
    let total: usize = jobs.iter().map(|(_, l)| l.len()).sum();
    let mut lat = Vec::with_capacity(total);
    let mut steps: [Vec<Duration>; 5] = Default::default();
    let mut full_checks = 0;
    let t0 = Instant::now();
    for (_, list) in jobs {
        // The job's first task is queued ahead; each step queues the next.
        dispatch::publish(js, PriorityClass::Normal, &list[..1], None).await?;
        for i in 0..list.len() {
            let t = Instant::now();
            if let Some(next) = list.get(i + 1) {
                dispatch::publish(js, PriorityClass::Normal, std::slice::from_ref(next), None)
                    .await?;
            }
            let tp = Instant::now();
            let mut batch = consumer
                .fetch()
                .max_messages(1)
                .expires(FETCH_EXPIRES)
                .messages()
                .await?;
            let msg = batch.next().await.ok_or("fetch: no message")??;
            let tf = Instant::now();
            let (s, full) = finish(js, ledger, "coord-0", msg).await?;
            lat.push(t.elapsed());
            full_checks += full as usize;
            for (k, d) in [tp - t, tf - tp, s[0], s[1], s[2]].into_iter().enumerate() {
                steps[k].push(d);
            }
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let names = [
        "publish",
        "fetch",
        "checkpoint create",
        "ack",
        "completion check",
    ];
    Ok(figures(total, 1, 1, wall, lat, &names, steps, full_checks))
}

async fn concurrent(
    js: &jetstream::Context,
    conns: Vec<(jetstream::Context, Ledger)>,
    jobs: &[(String, Vec<Task>)],
    concurrency: usize,
) -> Res<CoordFigures> {
    let total: usize = jobs.iter().map(|(_, l)| l.len()).sum();
    let workers = conns.len();
    let done = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let samples: Arc<Mutex<Vec<(Duration, Sample, bool)>>> =
        Arc::new(Mutex::new(Vec::with_capacity(total)));
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let t0 = Instant::now();
    let mut loops = Vec::new();
    for (n, (wjs, wledger)) in conns.into_iter().enumerate() {
        let slots = concurrency / workers + usize::from(n < concurrency % workers);
        let consumer: PullConsumer = wjs
            .get_consumer_from_stream(subjects::WORKERS_CONSUMER, subjects::TASKS_STREAM)
            .await?;
        let (done, stop, samples, errors) =
            (done.clone(), stop.clone(), samples.clone(), errors.clone());
        loops.push(tokio::spawn(async move {
            let sem = Arc::new(tokio::sync::Semaphore::new(slots));
            let name = format!("coord-{n}");
            let mut work = tokio::task::JoinSet::new();
            while !stop.is_cancelled() {
                let free = sem.available_permits();
                if free == 0 {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        p = sem.clone().acquire_owned() => drop(p),
                    }
                    continue;
                }
                let batch = tokio::select! {
                    _ = stop.cancelled() => break,
                    b = consumer.fetch().max_messages(free).expires(FETCH_EXPIRES).messages() => b,
                };
                let mut batch = match batch {
                    Ok(b) => b,
                    Err(e) => {
                        errors.lock().unwrap().push(format!("fetch: {e}"));
                        break;
                    }
                };
                loop {
                    let msg = tokio::select! {
                        _ = stop.cancelled() => break,
                        m = batch.next() => m,
                    };
                    let msg = match msg {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => {
                            errors.lock().unwrap().push(format!("batch: {e}"));
                            break;
                        }
                        None => break,
                    };
                    let Ok(permit) = sem.clone().try_acquire_owned() else {
                        errors
                            .lock()
                            .unwrap()
                            .push("more messages than slots".into());
                        break;
                    };
                    let (js, ledger, name) = (wjs.clone(), wledger.clone(), name.clone());
                    let (done, stop, samples, errors) =
                        (done.clone(), stop.clone(), samples.clone(), errors.clone());
                    work.spawn(async move {
                        let t = Instant::now();
                        match finish(&js, &ledger, &name, msg).await {
                            Ok((s, full)) => samples.lock().unwrap().push((t.elapsed(), s, full)),
                            Err(e) => errors.lock().unwrap().push(e.to_string()),
                        }
                        drop(permit);
                        if done.fetch_add(1, Ordering::SeqCst) + 1 >= total {
                            stop.cancel();
                        }
                    });
                }
                while work.try_join_next().is_some() {}
            }
            while work.join_next().await.is_some() {}
        }));
    }
    // The producer: each job's tasks in one pipelined publish.
    let mut publish_time = Duration::ZERO;
    for (_, list) in jobs {
        let t = Instant::now();
        dispatch::publish(js, PriorityClass::Normal, list, None).await?;
        publish_time += t.elapsed();
    }
    let deadline = Duration::from_secs(60 + total as u64 / 100);
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(deadline) => {
            stop.cancel();
        }
    }
    for l in loops {
        l.await?;
    }
    let wall = t0.elapsed().as_secs_f64();
    let errors = errors.lock().unwrap().clone();
    if !errors.is_empty() {
        return Err(format!("{} errors, first: {}", errors.len(), errors[0]).into());
    }
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    if samples.len() < total {
        return Err(format!("only {} of {total} tasks finished in time", samples.len()).into());
    }
    let full_checks = samples.iter().filter(|s| s.2).count();
    let mut steps: [Vec<Duration>; 4] = Default::default();
    steps[0] = vec![publish_time / total as u32];
    let mut lat = Vec::with_capacity(total);
    for (l, s, _) in samples {
        lat.push(l);
        for k in 0..3 {
            steps[k + 1].push(s[k]);
        }
    }
    let names = [
        "publish (pipelined, per task)",
        "checkpoint create",
        "ack",
        "completion check",
    ];
    Ok(figures(
        total,
        concurrency,
        workers,
        wall,
        lat,
        &names,
        steps,
        full_checks,
    ))
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    sorted[i].as_secs_f64() * 1e3
}

#[allow(clippy::too_many_arguments)]
fn figures<const N: usize>(
    tasks: usize,
    concurrency: usize,
    workers: usize,
    wall: f64,
    mut lat: Vec<Duration>,
    names: &[&'static str; N],
    mut steps: [Vec<Duration>; N],
    full_checks: usize,
) -> CoordFigures {
    lat.sort();
    let steps = names
        .iter()
        .zip(steps.iter_mut())
        .map(|(n, v)| {
            v.sort();
            (*n, pct(v, 0.5), pct(v, 0.99))
        })
        .collect();
    CoordFigures {
        tasks,
        concurrency,
        workers,
        seconds: wall,
        tasks_per_s: tasks as f64 / wall,
        p50_ms: pct(&lat, 0.5),
        p99_ms: pct(&lat, 0.99),
        steps,
        full_checks,
        cpu_ms_per_task: None,
    }
}

/// CPU seconds (user + system) used so far by process `pid` (Linux
/// `/proc`), or by this process when `pid` is None.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces): utime is
    // field 14, stime 15, counted from 1; clock ticks of 1/100 s.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// [`run`], with the CPU the server (`server_pid`) and this process spent.
pub async fn run_measured(
    url: &str,
    tasks: usize,
    concurrency: usize,
    server_pid: Option<u32>,
) -> Res<CoordFigures> {
    let before = (cpu_seconds(server_pid), cpu_seconds(None));
    let mut f = run(url, tasks, concurrency).await?;
    let after = (cpu_seconds(server_pid), cpu_seconds(None));
    if let ((Some(s0), Some(c0)), (Some(s1), Some(c1)), Some(_)) = (before, after, server_pid) {
        let per = 1e3 / tasks.max(1) as f64;
        f.cpu_ms_per_task = Some(((s1 - s0) * per, (c1 - c0) * per));
    }
    Ok(f)
}

/// A markdown section with the figures of several runs.
pub fn markdown(runs: &[CoordFigures]) -> String {
    let mut md = String::from("## Coordination cost\n\n");
    md.push_str(&format!(
        "The queue path of a task with no media work (`examples/common/coord.rs`), on a local nats-server with a file store: publish with Msg-Id (`dispatch::publish`), fetch from the `workers` consumer, checkpoint `create` (`Ledger::checkpoint`), double ack, completion check (`dispatch::queued`; after a job's last task also the record and its checkpoint listing). Jobs of {TASKS_PER_JOB} tasks. Serial: one slot, latency = all five steps of a task. Concurrent: jobs published in one pipelined call each while the slots pull ({SLOTS_PER_WORKER} per worker connection); latency = a task's worker side (fetched -> checked); tasks/s end to end.\n\n"
    ));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    md.push_str(&format!("| slots | workers | tasks | tasks/s | p50 ms | p99 ms | full checks | CPU ms/task server + client | CPU-bound ceiling on {cores} cores, tasks/s |\n|---|---|---|---|---|---|---|---|---|\n"));
    for r in runs {
        let (cpu, ceiling) = match r.cpu_ms_per_task {
            Some((s, c)) => (
                format!("{s:.3} + {c:.3}"),
                format!("{:.0}", cores as f64 * 1e3 / (s + c)),
            ),
            None => ("-".to_string(), "-".to_string()),
        };
        md.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.3} | {:.3} | {} | {cpu} | {ceiling} |\n",
            r.concurrency, r.workers, r.tasks, r.tasks_per_s, r.p50_ms, r.p99_ms, r.full_checks
        ));
    }
    md.push_str("\nServer and bench share the machine (with anything else running on it): tasks/s and latencies move with the CPU left to them, the CPU per task much less. The ceiling is what that CPU per task allows when both processes have every core. Full checks: completion checks that found nothing of the job queued any more and went on to the record and the checkpoint listing; with no media work many tasks of a job finish at the same moment, and each of them sees the end.\n");
    md.push_str(
        "\nPer step, p50 / p99 ms:\n\n| slots | step | p50 ms | p99 ms |\n|---|---|---|---|\n",
    );
    for r in runs {
        for (name, p50, p99) in &r.steps {
            md.push_str(&format!(
                "| {} | {name} | {p50:.3} | {p99:.3} |\n",
                r.concurrency
            ));
        }
    }
    md
}
