//! Two sections of `just bench` that run real jobs on real workers
//! (`jetcode worker` processes, a nats-server with its file store):
//!
//! * **Scale**: one job of thousands of tiny media tasks (a long,
//!   low-resolution, low-fps clip in 2 s segments, one segment per task):
//!   wall time, tasks/s, peak RSS of every process (workers, the planner's
//!   worker, the media children by kind, nats-server), worker RSS after the
//!   first 100 tasks against after the job (flat = no per-task growth), the
//!   job record's size when planned and when done, and what a task costs
//!   the progress bucket and the event stream.
//! * **Unequal fleet**: two one-slot workers of unequal power (one pinned to
//!   core 0, one pinned to core 1 next to two busy loops), calibration jobs
//!   measuring each one's speed, then a job whose chunk count the planner
//!   picks; its real makespan and per-worker task counts against
//!   `jetcode::balance::simulate` fed the measured speeds and the job's
//!   actual task list (work of a task = its frames).
//!
//! Memory is read from /proc (VmHWM / VmRSS of the workers and, polled every
//! 20 ms, of their children); speeds and task counts from the job's events
//! (`task_started` / `task_done`), read live from `jetcode.events.<job>`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jetcode::balance::{simulate, Capacity, Order, SimWorker};
use jetcode::record::{Event, EventKind};
use jetcode::task::{TaskBody, STITCH_TASK_ID};
use jetcode::{subjects, Client, ConnectOptions, JobRecord, JobState};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// `field` (e.g. `VmHWM`) of /proc/<pid>/status, KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Direct children of `pid` (every thread's list).
fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// The verb of a `jetcode media <kind>` child (probe, segment, audio,
/// stitch), from its command line.
fn media_kind(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
    let i = args.iter().position(|a| *a == b"media")?;
    args.get(i + 1)
        .map(|k| String::from_utf8_lossy(k).into_owned())
}

/// What the sampler saw.
#[derive(Debug, Default, Clone)]
pub struct Memory {
    /// Per watched process (by name): VmHWM at the end, KiB.
    pub peak_kib: HashMap<String, u64>,
    /// VmRSS per watched process once the job had finished each of the
    /// marks' task counts, in order.
    pub at_marks: Vec<(usize, HashMap<String, u64>)>,
    /// Per watched process: VmRSS when the sampler stopped (after the job).
    pub end_kib: HashMap<String, u64>,
    /// Per media child kind: the largest VmHWM seen (polled), KiB, and how
    /// many children of that kind were seen.
    pub child_peak_kib: HashMap<String, (u64, usize)>,
}

/// Polls the memory of some processes and their children every 20 ms on a
/// thread of its own; takes a VmRSS snapshot each time `done` reaches one
/// of `marks` (ascending).
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Memory>>,
}

impl Sampler {
    pub fn start(procs: Vec<(String, u32)>, done: Arc<AtomicUsize>, marks: Vec<usize>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut m = Memory::default();
            let mut seen: HashMap<u32, String> = HashMap::new();
            loop {
                let last = flag.load(Ordering::Relaxed);
                if let Some(&mark) = marks.get(m.at_marks.len()) {
                    if done.load(Ordering::Relaxed) >= mark {
                        let rss = procs
                            .iter()
                            .filter_map(|(name, pid)| {
                                Some((name.clone(), status_kib(*pid, "VmRSS")?))
                            })
                            .collect();
                        m.at_marks.push((mark, rss));
                    }
                }
                for (_, pid) in &procs {
                    for c in children(*pid) {
                        let kind = match seen.get(&c) {
                            Some(k) => k.clone(),
                            // Not exec'd yet (still a copy of the worker):
                            // looked at again at the next poll.
                            None => match media_kind(c) {
                                Some(k) => {
                                    seen.insert(c, k.clone());
                                    m.child_peak_kib.entry(k.clone()).or_insert((0, 0)).1 += 1;
                                    k
                                }
                                None => continue,
                            },
                        };
                        if let Some(k) = status_kib(c, "VmHWM") {
                            let e = m.child_peak_kib.entry(kind).or_insert((0, 0));
                            e.0 = e.0.max(k);
                        }
                    }
                }
                if last {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            for (name, pid) in &procs {
                if let Some(k) = status_kib(*pid, "VmHWM") {
                    m.peak_kib.insert(name.clone(), k);
                }
                if let Some(k) = status_kib(*pid, "VmRSS") {
                    m.end_kib.insert(name.clone(), k);
                }
            }
            m
        });
        Sampler {
            stop,
            thread: Some(thread),
        }
    }

    pub fn finish(mut self) -> Memory {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Processes stopped (SIGTERM, then waited for) when dropped, last first.
pub struct Procs(pub Vec<(String, Child)>);

impl Procs {
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, c)| c.id())
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in self.0.iter_mut().rev() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        for (_, c) in self.0.iter_mut().rev() {
            let _ = c.wait();
        }
    }
}

/// A nats-server on a free port with its file store under `root`, topology
/// applied. Returns (url, server process).
pub async fn nats(bin: &Path, root: &Path) -> Res<(String, Child)> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let (child, url) = super::start_nats(&root.join(format!("nats-{stamp}")))
        .await
        .map_err(|e| e.to_string())?;
    let mut guard = Procs(vec![("nats".into(), child)]);
    let st = Command::new(bin)
        .args(["streams", "apply", "--nats-url", &url])
        .stdout(Stdio::null())
        .status()?;
    if !st.success() {
        return Err("streams apply failed".into());
    }
    let (_, child) = guard.0.pop().ok_or("nats-server gone")?;
    Ok((url, child))
}

/// `jetcode worker` with `slots`, id `id`, run through `wrap` (e.g.
/// `["taskset", "-c", "0"]`) and with `extra` options.
pub fn worker(
    bin: &Path,
    url: &str,
    root: &Path,
    id: &str,
    slots: u32,
    wrap: &[&str],
    extra: &[&str],
) -> Res<Child> {
    let mut cmd = match wrap.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.args(["worker", "--nats-url", url])
        .args(["--slots", &slots.to_string(), "--id", id])
        .arg("--file-root")
        .arg(root)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Ok(cmd.spawn()?)
}

/// Wait until `n` workers heartbeat.
pub async fn workers_up(client: &Client, n: usize) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.workers().await?.len() < n {
        if Instant::now() > deadline {
            return Err("workers did not come up".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The events of one job as they arrive, with a count of `task_done`s.
pub struct EventLog {
    pub events: Arc<Mutex<Vec<Event>>>,
    pub done: Arc<AtomicUsize>,
    pub planned: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl EventLog {
    /// Subscribe before submitting (core subscription on the subject the
    /// event stream stores).
    pub async fn follow(nc: &async_nats::Client, job: &str) -> Res<EventLog> {
        let mut sub = nc.subscribe(subjects::events(job)).await?;
        nc.flush().await?;
        let events: Arc<Mutex<Vec<Event>>> = Arc::default();
        let done = Arc::new(AtomicUsize::new(0));
        let planned = Arc::new(tokio::sync::Notify::new());
        let (e, d, p) = (events.clone(), done.clone(), planned.clone());
        let task = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let Ok(ev) = serde_json::from_slice::<Event>(&msg.payload) else {
                    continue;
                };
                match &ev.kind {
                    EventKind::TaskDone { .. } => {
                        d.fetch_add(1, Ordering::Relaxed);
                    }
                    EventKind::Planned { .. } => p.notify_one(),
                    _ => {}
                }
                e.lock().unwrap_or_else(|p| p.into_inner()).push(ev);
            }
        });
        Ok(EventLog {
            events,
            done,
            planned,
            task,
        })
    }

    pub fn take(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One task as run: worker, start, end (its last part's checkpoint),
/// frames, the child's own seconds.
#[derive(Debug, Clone)]
pub struct RunTask {
    pub task: String,
    pub worker: String,
    pub start: f64,
    pub end: f64,
    pub frames: u64,
    pub child_seconds: f64,
}

/// Tasks from a job's events. Needs one slot per worker: a worker's
/// `task_done`s belong to its latest `task_started`.
pub fn run_tasks(events: &[Event]) -> Vec<RunTask> {
    let mut ev: Vec<&Event> = events.iter().collect();
    ev.sort_by(|a, b| a.time.total_cmp(&b.time));
    let mut open: HashMap<String, RunTask> = HashMap::new();
    let mut out = Vec::new();
    for e in ev {
        match &e.kind {
            EventKind::TaskStarted { task, worker, .. } => {
                if let Some(t) = open.remove(worker) {
                    out.push(t);
                }
                open.insert(
                    worker.clone(),
                    RunTask {
                        task: task.clone(),
                        worker: worker.clone(),
                        start: e.time,
                        end: e.time,
                        frames: 0,
                        child_seconds: 0.0,
                    },
                );
            }
            EventKind::TaskDone {
                worker,
                frames,
                seconds,
                ..
            } => {
                if let Some(t) = open.get_mut(worker) {
                    t.end = e.time;
                    t.frames += frames;
                    t.child_seconds = *seconds;
                }
            }
            _ => {}
        }
    }
    out.extend(open.into_values());
    out.retain(|t| t.task != STITCH_TASK_ID && t.frames > 0);
    out.sort_by(|a, b| a.start.total_cmp(&b.start));
    out
}

/// Per worker: (tasks, frames, busy seconds, child seconds).
pub fn per_worker(tasks: &[RunTask]) -> Vec<(String, usize, u64, f64, f64)> {
    let mut m: HashMap<&str, (usize, u64, f64, f64)> = HashMap::new();
    for t in tasks {
        let e = m.entry(&t.worker).or_default();
        e.0 += 1;
        e.1 += t.frames;
        e.2 += t.end - t.start;
        e.3 += t.child_seconds;
    }
    let mut v: Vec<_> = m
        .into_iter()
        .map(|(w, (n, f, b, c))| (w.to_string(), n, f, b, c))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Size in bytes of a KV entry's value, if the key holds one.
async fn kv_bytes(js: &async_nats::jetstream::Context, bucket: &str, key: &str) -> Res<usize> {
    let kv = js.get_key_value(bucket).await?;
    Ok(kv.entry(key).await?.map_or(0, |e| e.value.len()))
}

/// (messages, bytes) of a stream.
async fn stream_size(js: &async_nats::jetstream::Context, stream: &str) -> Res<(u64, u64)> {
    let mut s = js.get_stream(stream).await?;
    let info = s.info().await?;
    Ok((info.state.messages, info.state.bytes))
}

/// A test clip made in this process (no audio: the figures are about
/// segment tasks).
fn clip(path: &Path, seconds: f64, fps: u32, w: u32, h: u32) -> Res<()> {
    eprintln!(
        "[bench] clip {}: {seconds} s {w}x{h} @ {fps} fps, no audio",
        path.display()
    );
    let o = jetcode::media::testsrc::ClipOptions {
        seconds,
        fps_num: fps,
        fps_den: 1,
        width: w,
        height: h,
        gop: fps * 2,
        audio: false,
        noise: false,
    };
    tokio::task::block_in_place(|| jetcode::media::testsrc::generate_clip(path, &o))?;
    Ok(())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// What the scale run measured.
#[derive(Debug, Clone)]
pub struct ScaleFigures {
    pub tasks: u32,
    pub source_seconds: f64,
    pub fps: u32,
    pub size: (u32, u32),
    pub workers: u32,
    pub slots: u32,
    pub wall: f64,
    pub plan_s: f64,
    pub segment_phase_s: f64,
    pub stitch_s: f64,
    pub memory: Memory,
    /// A task's child, spawn to exit: mean and median, seconds.
    pub child_s: (f64, f64),
    /// The worker holding the reconciler lease at the end.
    pub reconciler: String,
    /// Names of the worker processes, the planner's first.
    pub worker_names: Vec<String>,
    pub record_bytes_planned: usize,
    pub record_bytes_done: usize,
    pub progress_msgs: u64,
    pub progress_bytes: u64,
    pub events_msgs: u64,
    pub events_bytes: u64,
}

/// Run one job of `tasks` one-segment tasks on `workers` workers × `slots`
/// slots (the planner role only on the first).
pub async fn scale_run(
    bin: &Path,
    root: &Path,
    tasks: u32,
    workers: u32,
    slots: u32,
) -> Res<ScaleFigures> {
    let (fps, w, h) = (5, 160, 90);
    let seconds = tasks as f64 * 2.0;
    let src = root.join(format!("scale-{tasks}.mp4"));
    clip(&src, seconds, fps, w, h)?;
    let (url, server) = nats(bin, root).await?;
    let mut procs = Procs(vec![("nats-server".into(), server)]);
    let mut names = Vec::new();
    for n in 0..workers {
        let name = if n == 0 {
            "worker 0 (planner)".to_string()
        } else {
            format!("worker {n}")
        };
        let extra: &[&str] = if n == 0 { &[] } else { &["--no-planner"] };
        let c = worker(bin, &url, root, &format!("scale-{n}"), slots, &[], extra)?;
        procs.0.push((name.clone(), c));
        names.push(name);
    }
    let client = Client::connect(&ConnectOptions::new(url.clone())).await?;
    workers_up(&client, workers as usize).await?;
    let js = async_nats::jetstream::new(client.nats().clone());
    let id = format!("scale-{tasks}");
    let out = root.join("jobs").join(&id);
    let spec = super::job_spec(
        &id,
        &src,
        &out,
        serde_json::json!({
            "renditions": [{"name": "r90", "height": h, "crf": 30, "preset": "ultrafast"}],
            "segment_seconds": 2.0,
            "chunk_seconds": 2.0,
        }),
    )?;
    let log = EventLog::follow(client.nats(), &id).await?;
    // Worker RSS after 100 tasks, at each quarter and after the job: flat
    // means nothing grows per task.
    let mut marks = vec![100usize.min(tasks as usize / 4).max(1)];
    marks.extend((1..4).map(|q| tasks as usize * q / 4));
    marks.dedup();
    let watched: Vec<(String, u32)> = procs.0.iter().map(|(n, c)| (n.clone(), c.id())).collect();
    let sampler = Sampler::start(watched, log.done.clone(), marks);
    let progress0 = stream_size(&js, &format!("KV_{}", subjects::PROGRESS_BUCKET)).await?;
    let events0 = stream_size(&js, subjects::EVENTS_STREAM).await?;
    eprintln!("[bench] scale: {tasks} tasks, {workers} workers × {slots} slots");
    let t0 = Instant::now();
    let planned = log.planned.clone();
    let wait_planned = planned.notified();
    client.submit(&spec).await?;
    tokio::time::timeout(Duration::from_secs(600), wait_planned)
        .await
        .map_err(|_| "scale job not planned in 600 s")?;
    let plan_s = t0.elapsed().as_secs_f64();
    let record_bytes_planned = kv_bytes(&js, subjects::JOBS_BUCKET, &id).await?;
    let rec: JobRecord = client.wait(&id, Some(Duration::from_secs(3600))).await?;
    let wall = t0.elapsed().as_secs_f64();
    if rec.state != JobState::Done {
        return Err(format!("scale job ended {:?}: {:?}", rec.state, rec.error).into());
    }
    // Let the last events and heartbeats land, then read everything.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lease = js.get_key_value(subjects::LEASES_BUCKET).await?;
    let holder = lease
        .get(subjects::RECONCILER_LEASE)
        .await?
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_default();
    let reconciler = holder
        .strip_prefix("scale-")
        .and_then(|n| names.get(n.parse::<usize>().ok()?).cloned())
        .unwrap_or(holder);
    let memory = sampler.finish();
    for (mark, rss) in &memory.at_marks {
        eprintln!("[bench] scale: RSS KiB after {mark} tasks: {rss:?}");
    }
    eprintln!("[bench] scale: RSS KiB after the job: {:?}", memory.end_kib);
    let record_bytes_done = kv_bytes(&js, subjects::JOBS_BUCKET, &id).await?;
    let progress1 = stream_size(&js, &format!("KV_{}", subjects::PROGRESS_BUCKET)).await?;
    let events1 = stream_size(&js, subjects::EVENTS_STREAM).await?;
    let events = log.take();
    let last_part = events
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::TaskDone { task, .. } if task != STITCH_TASK_ID))
        .map(|e| e.time)
        .fold(0.0, f64::max);
    let first_start = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::TaskStarted { .. }))
        .map(|e| e.time)
        .fold(f64::INFINITY, f64::min);
    let mut child: Vec<f64> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::TaskDone { task, seconds, .. } if task != STITCH_TASK_ID => Some(*seconds),
            _ => None,
        })
        .collect();
    child.sort_by(f64::total_cmp);
    let child_s = (
        child.iter().sum::<f64>() / child.len().max(1) as f64,
        child.get(child.len() / 2).copied().unwrap_or(0.0),
    );
    let end = rec.finished_at.unwrap_or(last_part);
    drop(procs);
    Ok(ScaleFigures {
        tasks: rec.tasks_total,
        source_seconds: seconds,
        fps,
        size: (w, h),
        workers,
        slots,
        wall,
        plan_s,
        segment_phase_s: last_part - first_start,
        stitch_s: end - last_part,
        memory,
        child_s,
        reconciler,
        worker_names: names,
        record_bytes_planned,
        record_bytes_done,
        progress_msgs: progress1.0 - progress0.0,
        progress_bytes: progress1.1 - progress0.1,
        events_msgs: events1.0 - events0.0,
        events_bytes: events1.1 - events0.1,
    })
}

pub fn scale_markdown(f: &ScaleFigures, cores: usize) -> String {
    let mut md = format!(
        "## Scale: a {}-task job\n\nOne job of {} tasks through the real worker: a {:.0} s {}x{} @ {} fps test clip (no audio, keyframe every 2 s) with `segment_seconds: 2, chunk_seconds: 2` (one 2 s segment per task, {} frames each), one `ultrafast` CRF 30 rendition at the source size, MP4 out. Fleet on this {cores}-core machine: a local nats-server (file store) and {} workers × {} slots; only worker 0 runs the planner role (`--no-planner` on the others), so its figures include planning. The smallest picture and frame rate keep the media work negligible: the figures are the per-task machinery (child start, checkpoint, queue).\n\n",
        f.tasks,
        f.tasks,
        f.source_seconds,
        f.size.0,
        f.size.1,
        f.fps,
        2 * f.fps,
        f.workers,
        f.slots
    );
    md.push_str("| figure | value |\n|---|---|\n");
    let row = |md: &mut String, k: &str, v: String| md.push_str(&format!("| {k} | {v} |\n"));
    row(
        &mut md,
        "wall time, submit → done",
        format!("{:.1} s", f.wall),
    );
    row(
        &mut md,
        "tasks/s, whole job",
        format!("{:.1}", f.tasks as f64 / f.wall),
    );
    row(
        &mut md,
        "planning (probe, plan, record, publish), submit → planned event",
        format!("{:.2} s", f.plan_s),
    );
    row(
        &mut md,
        "segment tasks, first start → last checkpoint",
        format!(
            "{:.1} s ({:.1} tasks/s, {:.3} slot-seconds per task)",
            f.segment_phase_s,
            f.tasks as f64 / f.segment_phase_s,
            f.segment_phase_s * (f.workers * f.slots) as f64 / f.tasks as f64
        ),
    );
    row(
        &mut md,
        "a task's media child, spawn → exit: mean / median",
        format!("{:.3} / {:.3} s", f.child_s.0, f.child_s.1),
    );
    row(
        &mut md,
        &format!("stitch of {} parts, last checkpoint → done", f.tasks),
        format!("{:.1} s", f.stitch_s),
    );
    for name in &f.worker_names {
        let peak = f.memory.peak_kib.get(name).copied().unwrap_or(0);
        row(
            &mut md,
            &format!("{name}: peak RSS (VmHWM)"),
            format!("{:.1} MiB", mib(peak)),
        );
        let marks: Vec<String> = f
            .memory
            .at_marks
            .iter()
            .map(|(n, _)| n.to_string())
            .collect();
        let rss: Vec<String> = f
            .memory
            .at_marks
            .iter()
            .map(|(_, m)| format!("{:.1}", mib(m.get(name).copied().unwrap_or(0))))
            .collect();
        row(
            &mut md,
            &format!(
                "{name}: RSS after {} tasks → after the job",
                marks.join(" / ")
            ),
            format!(
                "{} → {:.1} MiB",
                rss.join(" / "),
                mib(f.memory.end_kib.get(name).copied().unwrap_or(0))
            ),
        );
    }
    row(
        &mut md,
        "reconciler lease (sweeps running jobs every 10 s) held by",
        f.reconciler.clone(),
    );
    if let Some(k) = f.memory.peak_kib.get("nats-server") {
        row(
            &mut md,
            "nats-server: peak RSS",
            format!("{:.1} MiB", mib(*k)),
        );
    }
    let mut kinds: Vec<_> = f.memory.child_peak_kib.iter().collect();
    kinds.sort();
    for (kind, (k, n)) in kinds {
        row(
            &mut md,
            &format!("largest `media {kind}` child (of {n}, polled every 20 ms)"),
            format!("{:.1} MiB", mib(*k)),
        );
    }
    row(
        &mut md,
        "job record (`jetcode-jobs` value): planned → done",
        format!(
            "{} → {} bytes ({:.0} bytes per segment of the plan)",
            f.record_bytes_planned,
            f.record_bytes_done,
            f.record_bytes_planned as f64 / f.tasks.max(1) as f64
        ),
    );
    row(
        &mut md,
        "progress bucket: checkpoints stored, bytes per checkpoint",
        format!(
            "{} (task parts + stitch), {:.0} bytes",
            f.progress_msgs,
            f.progress_bytes as f64 / f.progress_msgs.max(1) as f64
        ),
    );
    row(
        &mut md,
        "event stream: messages and bytes per task",
        format!(
            "{:.2}, {:.0} bytes",
            f.events_msgs as f64 / f.tasks.max(1) as f64,
            f.events_bytes as f64 / f.tasks.max(1) as f64
        ),
    );
    md.push_str("\nRSS after the job is VmRSS read once the job is done; peak is VmHWM at the end. A worker that only runs tasks levels off after the first few hundred; the one holding the reconciler lease (and the one that stitches) also allocates, now and then, lists as long as the job (its checkpoints, its tasks), so its RSS follows the size of the largest job it has seen, not the number of tasks. The job record holds the plan (one entry per segment) and is written when the job is planned and when it ends, never per task; the per-task state is one progress key per part (stream bytes: value, subject and headers as the file store counts them) and its events (`task_started`, `task_done`).\n");
    md
}

/// What the unequal-fleet run measured.
#[derive(Debug, Clone)]
pub struct UnequalFigures {
    /// Seconds, width, height, fps of the job's source; of the calibration's.
    pub source: (f64, u32, u32, u32),
    pub calib_seconds: f64,
    /// Per worker (name, tasks, frames, busy s, child s): calibration, job.
    pub calib: Vec<(String, usize, u64, f64, f64)>,
    pub job: Vec<(String, usize, u64, f64, f64)>,
    /// Frames per second per worker the planner could see (heartbeats read
    /// just before the submit).
    pub heartbeat_pace: Vec<(String, f64)>,
    /// Per worker (in `calib` order): start-up and speed from the calibration.
    pub fits: Vec<Fit>,
    /// Mean start-up of a task in frames of work.
    pub startup_frames: f64,
    /// Simulated makespan with the calibrated speeds and no start-up.
    pub sim_frames_only: f64,
    pub segments: usize,
    pub tasks: usize,
    pub chunk_segments: u32,
    /// Tasks the planner's rule picks with the calibrated speeds.
    pub chunk_plan_n: usize,
    pub real_makespan: f64,
    /// Submit → done, and the stitch (last checkpoint → done).
    pub wall: f64,
    pub stitch_s: f64,
    /// Mean gap between a worker's tasks (end of one → start of the next), s.
    pub gap_s: f64,
    /// Simulated makespan with the calibrated speeds, with the job's own.
    pub sim_calibrated: f64,
    pub sim_in_run: f64,
    /// Sum of the frames over the sum of the job's own speeds.
    pub ideal: f64,
    /// The simulator's per-worker task counts: calibrated, the job's speeds.
    pub sim_counts: Vec<usize>,
    pub in_run_counts: Vec<usize>,
}

/// A worker's tasks fitted as busy seconds = `startup` + frames / `speed`
/// (through the median of the shortest and of the longest tasks).
#[derive(Debug, Clone, Copy)]
pub struct Fit {
    pub startup: f64,
    pub speed: f64,
    pub tasks: usize,
    /// No line with a start-up of 0 or more fits: the long tasks took more
    /// time per frame than the short ones (the machine's load changed).
    pub clamped: bool,
}

fn fit<'a>(tasks: impl Iterator<Item = &'a RunTask>) -> Fit {
    // Median busy time per task length (robust to the odd slow task on a
    // shared machine), then the line through the shortest and the longest.
    let mut by_frames: std::collections::BTreeMap<u64, Vec<f64>> = Default::default();
    let mut n = 0;
    for t in tasks {
        by_frames.entry(t.frames).or_default().push(t.end - t.start);
        n += 1;
    }
    let med = |v: &Vec<f64>| {
        let mut v = v.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (Some((&f0, t0)), Some((&f1, t1))) =
        (by_frames.first_key_value(), by_frames.last_key_value())
    else {
        return Fit {
            startup: 0.0,
            speed: 0.0,
            tasks: 0,
            clamped: true,
        };
    };
    let (t0, t1) = (med(t0), med(t1));
    if f1 > f0 && t1 > t0 {
        let speed = (f1 - f0) as f64 / (t1 - t0);
        let startup = t0 - f0 as f64 / speed;
        Fit {
            startup: startup.max(0.0),
            speed,
            tasks: n,
            clamped: startup < 0.0,
        }
    } else {
        // One task length only (or noise): no start-up, the mean speed.
        Fit {
            startup: 0.0,
            speed: f1 as f64 / t1.max(1e-9),
            tasks: n,
            clamped: true,
        }
    }
}

/// `simulate`d makespan and split (chunks each worker started).
fn simulate_counts(speeds: &[f64], chunks: &[f64]) -> (f64, Vec<usize>) {
    // Exact ties between a fast and a slow worker (both free at 6.0 s) are
    // broken by noise in a real fleet, not by worker order: the makespan
    // is the mean over the speeds as given and 15 variations of them
    // within ±2 %, the split the most common one.
    let mut unit = jetcode::balance::unit_sequence(0x2545_f491_4f6c_dd1d);
    let mut spans = Vec::new();
    let mut splits: Vec<(Vec<usize>, usize)> = Vec::new();
    for run in 0..16 {
        let workers: Vec<SimWorker> = speeds
            .iter()
            .map(|&s| {
                let v = if run == 0 {
                    s
                } else {
                    s * (1.0 + 0.02 * (2.0 * unit() - 1.0))
                };
                SimWorker::steady(v, 1)
            })
            .collect();
        let r = simulate(&workers, chunks, Order::AsGiven, 30.0);
        spans.push(r.makespan);
        let counts: Vec<usize> = r.started.iter().map(|&n| n as usize).collect();
        match splits.iter_mut().find(|(c, _)| *c == counts) {
            Some(e) => e.1 += 1,
            None => splits.push((counts, 1)),
        }
    }
    let split = splits
        .into_iter()
        .max_by_key(|e| e.1)
        .map(|e| e.0)
        .unwrap_or_default();
    (spans.iter().sum::<f64>() / spans.len() as f64, split)
}

/// Two one-slot workers of unequal power: `fast` pinned to core 0, `slow`
/// pinned to core 1 beside a busy loop on that core. A calibration job
/// measures their speeds; then a job the planner chunks.
pub async fn unequal_run(bin: &Path, root: &Path, quick: bool) -> Res<UnequalFigures> {
    let (w, h, fps) = (640, 360, 25);
    let job_s = if quick { 60.0 } else { 240.0 };
    // Calibrated on the job's own source: a task's cost depends on the
    // source as well (its index, the seek), not only on the task's length.
    let src = root.join("unequal.mp4");
    let (calib_s, calib_src) = (job_s, src.clone());
    clip(&src, job_s, fps, w, h)?;
    let (url, server) = nats(bin, root).await?;
    let mut procs = Procs(vec![("nats-server".into(), server)]);
    // Two busy loops: a media child runs two threads (cores / slots), so
    // it gets about half of core 1 while it encodes.
    for n in 0..2 {
        let hog = Command::new("taskset")
            .args(["-c", "1", "sh", "-c", "while :; do :; done"])
            .stdout(Stdio::null())
            .spawn()?;
        procs.0.push((format!("hog {n}"), hog));
    }
    let names = ["fast", "slow"];
    for (n, name) in names.iter().enumerate() {
        let core = n.to_string();
        let c = worker(bin, &url, root, name, 1, &["taskset", "-c", &core], &[])?;
        procs.0.push((name.to_string(), c));
    }
    let client = Client::connect(&ConnectOptions::new(url.clone())).await?;
    workers_up(&client, 2).await?;
    let rendition =
        serde_json::json!([{"name": "r360", "height": h, "crf": 23, "preset": "veryfast"}]);

    // Calibration: the same clip as 2 s tasks and as 10 s tasks, both
    // workers pulling; per worker a fit of busy time = start-up + frames / speed.
    // A warm-up job first (page cache, fresh processes), not counted.
    let mut calib_tasks = Vec::new();
    // Short and long tasks alternate, so a change in the machine's load
    // (other work on it) falls on both lengths rather than on one.
    for (n, chunk) in [10.0, 2.0, 10.0, 2.0, 10.0].into_iter().enumerate() {
        eprintln!("[bench] unequal fleet: calibration ({calib_s} s source, {chunk} s tasks)");
        let id = format!("unequal-calib-{n}");
        let log = EventLog::follow(client.nats(), &id).await?;
        let s = super::job_spec(
            &id,
            &calib_src,
            &root.join("jobs").join(&id),
            serde_json::json!({"renditions": rendition, "segment_seconds": 2.0, "chunk_seconds": chunk}),
        )?;
        client.submit(&s).await?;
        let rec = client.wait(&id, Some(Duration::from_secs(1200))).await?;
        if rec.state != JobState::Done {
            return Err(format!("calibration ended {:?}: {:?}", rec.state, rec.error).into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if n > 0 {
            calib_tasks.extend(run_tasks(&log.take()));
        }
    }
    let calib = per_worker(&calib_tasks);
    let fits: Vec<Fit> = names
        .iter()
        .map(|n| fit(calib_tasks.iter().filter(|t| t.worker == *n)))
        .collect();
    for (n, f) in names.iter().zip(&fits) {
        let pts: Vec<String> = calib_tasks
            .iter()
            .filter(|t| t.worker == *n)
            .map(|t| format!("{}f/{:.3}s", t.frames, t.end - t.start))
            .collect();
        eprintln!(
            "[bench] {n}: start-up {:.3} s, {:.0} frames/s from {}",
            f.startup,
            f.speed,
            pts.join(" ")
        );
    }
    if fits.iter().any(|f| f.speed <= 0.0) {
        return Err(format!("calibration: a worker ran nothing: {calib:?}").into());
    }
    let speed_of = |rows: &[(String, usize, u64, f64, f64)], name: &str| {
        rows.iter()
            .find(|r| r.0 == name)
            .map_or(0.0, |r| r.2 as f64 / r.3.max(1e-9))
    };

    // The job: segments of 2 s, chunks as the planner picks them.
    let heartbeat_pace = client
        .workers()
        .await?
        .into_iter()
        // The smoothed per-slot pace the planner reads, in frames/s of
        // this clip (the heartbeat carries output pixels per second).
        .map(|hb| (hb.id, hb.speed / (w as f64 * h as f64)))
        .collect();
    eprintln!("[bench] unequal fleet: the job ({job_s} s source, planner's chunks)");
    let id = "unequal-job";
    let log = EventLog::follow(client.nats(), id).await?;
    let s = super::job_spec(
        id,
        &src,
        &root.join("jobs").join(id),
        serde_json::json!({"renditions": rendition, "segment_seconds": 2.0}),
    )?;
    let t0 = Instant::now();
    client.submit(&s).await?;
    let rec = client.wait(id, Some(Duration::from_secs(3600))).await?;
    let wall = t0.elapsed().as_secs_f64();
    if rec.state != JobState::Done {
        return Err(format!("job ended {:?}: {:?}", rec.state, rec.error).into());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let tasks = run_tasks(&log.take());
    drop(log);
    drop(procs);
    let job = per_worker(&tasks);
    let in_run: Vec<f64> = names.iter().map(|n| speed_of(&job, n)).collect();
    let start = tasks.iter().map(|t| t.start).fold(f64::INFINITY, f64::min);
    let last = tasks.iter().map(|t| t.end).fold(0.0, f64::max);
    let mut gaps = Vec::new();
    for n in names {
        let mine: Vec<&RunTask> = tasks.iter().filter(|t| t.worker == n).collect();
        for pair in mine.windows(2) {
            gaps.push(pair[1].start - pair[0].end);
        }
    }
    let gap_s = gaps.iter().sum::<f64>() / gaps.len().max(1) as f64;

    // The job's task list as queued (time order), work = frames.
    let (spec_r, plan) = jetcode::dispatch::planned(&rec)?;
    let queued: Vec<f64> = jetcode::dispatch::work_tasks(id, spec_r, plan)?
        .iter()
        .filter_map(|t| match &t.body {
            TaskBody::Segment {
                segment, following, ..
            } => {
                Some((segment.frames() + following.iter().map(|s| s.frames()).sum::<u64>()) as f64)
            }
            _ => None,
        })
        .collect();
    let calibrated: Vec<f64> = fits.iter().map(|f| f.speed).collect();
    // A task's start-up in frames of work: the same on both workers when it
    // is CPU work slowed down like the encode.
    let startup_frames = fits.iter().map(|f| f.startup * f.speed).sum::<f64>() / fits.len() as f64;
    let with_startup: Vec<f64> = queued.iter().map(|f| f + startup_frames).collect();
    let (sim_frames_only, _) = simulate_counts(&calibrated, &queued);
    let (sim_calibrated, sim_counts) = simulate_counts(&calibrated, &with_startup);
    let (sim_in_run, in_run_counts) = simulate_counts(&in_run, &queued);
    let total: f64 = queued.iter().sum();
    let caps: Vec<Capacity> = calibrated
        .iter()
        .map(|&s| Capacity { slots: 1, speed: s })
        .collect();
    // The planner's own rule with the calibrated speeds (seconds of
    // source per second), for comparison with what it picked from the
    // heartbeats.
    let caps: Vec<Capacity> = caps
        .into_iter()
        .map(|c| Capacity {
            speed: c.speed / fps as f64,
            ..c
        })
        .collect();
    let seconds: Vec<f64> = plan
        .segments
        .iter()
        .map(|s| s.duration_ns() as f64 / 1e9)
        .collect();
    let k = jetcode::plan::chunk_segments(&seconds, None, Some(&caps)).max(1) as usize;
    let chunk_plan_n = seconds.len().div_ceil(k);
    Ok(UnequalFigures {
        source: (job_s, w, h, fps),
        calib_seconds: calib_s,
        calib,
        job,
        heartbeat_pace,
        fits,
        startup_frames,
        sim_frames_only,
        segments: plan.segments.len(),
        tasks: queued.len(),
        chunk_segments: plan.chunk_segments,
        chunk_plan_n,
        real_makespan: last - start,
        wall,
        stitch_s: rec.finished_at.unwrap_or(last) - last,
        gap_s,
        sim_calibrated,
        sim_in_run,
        ideal: total / in_run.iter().sum::<f64>(),
        sim_counts,
        in_run_counts,
    })
}

pub fn unequal_markdown(f: &UnequalFigures) -> String {
    let (secs, w, h, fps) = f.source;
    let mut md = format!(
        "## Real unequal fleet vs the simulator\n\nTwo real workers × 1 slot on this machine: `fast` under `taskset -c 0`, `slow` under `taskset -c 1` beside two busy loops (`taskset -c 1 sh -c 'while :; do :; done'`; a media child runs two threads, cores ÷ slots), so the slow one's encode gets about half a core and its single-threaded start-up a third; nats-server and the bench run unpinned. One 360p `veryfast` CRF 23 rendition of a {w}x{h} @ {fps} fps test clip without audio. Calibration first: the job's {:.0} s clip as 10 s tasks (a warm-up, not counted), then twice as 2 s tasks and as 10 s tasks, alternating; per worker, a line through the median busy time of each task length (its `task_started` event to its last `task_done`: child start, seek, encode, checkpoint) = start-up + frames ÷ speed. Then the job on the same {secs:.0} s clip, with `segment_seconds: 2` and no `chunk_seconds`, so the planner picks the chunks from the heartbeats it sees.\n\n",
        f.calib_seconds
    );
    md.push_str("| worker | calibration tasks | start-up per task, s | speed, frames/s | heartbeat pace before the submit, frames/s | job: tasks | job: frames/s (busy) |\n|---|---|---|---|---|---|---|\n");
    for ((name, ..), fit) in f.calib.iter().zip(&f.fits) {
        let hb = f
            .heartbeat_pace
            .iter()
            .find(|h| &h.0 == name)
            .map_or(0.0, |h| h.1);
        let (jn, jspeed) = f
            .job
            .iter()
            .find(|r| &r.0 == name)
            .map_or((0, 0.0), |r| (r.1, r.2 as f64 / r.3.max(1e-9)));
        md.push_str(&format!(
            "| {name} | {} | {:.3} | {:.0} | {hb:.0} | {jn} | {jspeed:.0} |\n",
            fit.tasks, fit.startup, fit.speed
        ));
    }
    let speeds: Vec<f64> = f.fits.iter().map(|x| x.speed).collect();
    let hi = speeds.iter().copied().fold(0.0, f64::max);
    let lo = speeds.iter().copied().fold(f64::INFINITY, f64::min);
    md.push_str(&format!(
        "\nSpeed ratio fast ÷ slow: {:.2} calibrated (encode speed), {:.2} in the job (frames ÷ busy seconds). A task's start-up is {:.0} frames of work (start-up × speed, mean of the two). The planner cut {} segments into {} tasks ({} segments each) from the heartbeats' paces; its rule (`balance::segments_per_chunk`) with the calibrated speeds picks {} tasks. The simulator (pull in queue order, as `balance::simulate`; the mean makespan over the speeds as given and 15 variations within ±2 %, because an exact tie between the two workers' finish times, which equal chunks on a 2.5 : 1 fleet produce, is broken by noise in a real fleet, not by worker order) gets the job's actual task list, work = a task's frames (+ the start-up where said), and either the speed each worker showed in the job itself (frames ÷ busy seconds from its `task_done` events, start-up included) or the calibrated ones, measured a minute earlier: on a machine shared with other work a worker's CPU share drifts between the two, which the last two columns carry.\n\n",
        hi / lo,
        {
            let v: Vec<f64> = f.job.iter().map(|r| r.2 as f64 / r.3.max(1e-9)).collect();
            v.iter().copied().fold(0.0, f64::max) / v.iter().copied().fold(f64::INFINITY, f64::min)
        },
        f.startup_frames,
        f.segments,
        f.tasks,
        f.chunk_segments,
        f.chunk_plan_n,
    ));
    if f.fits.iter().any(|x| x.clamped) {
        md.push_str("The calibration did not fit this run: a worker's long tasks took more time per frame than its short ones (other work on the machine came and went), so its start-up is taken as 0 and its speed is the slope alone; the calibrated columns are not a prediction this time.\n\n");
    }
    let counts: Vec<String> = f.job.iter().map(|r| r.1.to_string()).collect();
    let sim_counts: Vec<String> = f.sim_counts.iter().map(|n| n.to_string()).collect();
    let in_run_counts: Vec<String> = f.in_run_counts.iter().map(|n| n.to_string()).collect();
    md.push_str("| figure | real | simulated: the job's own speeds | simulated: calibrated speeds + start-up | calibrated speeds, frames only |\n|---|---|---|---|---|\n");
    md.push_str(&format!(
        "| makespan (first task start → last part checkpoint), s | {:.2} | {:.2} | {:.2} | {:.2} |\n",
        f.real_makespan, f.sim_in_run, f.sim_calibrated, f.sim_frames_only
    ));
    md.push_str(&format!(
        "| simulated ÷ real | 1 | **{:.3}** | {:.3} | {:.3} |\n",
        f.sim_in_run / f.real_makespan,
        f.sim_calibrated / f.real_makespan,
        f.sim_frames_only / f.real_makespan
    ));
    md.push_str(&format!(
        "| makespan ÷ ideal (frames ÷ the job's total speed = {:.2} s) | **{:.3}** | {:.3} | {:.3} | {:.3} |\n",
        f.ideal,
        f.real_makespan / f.ideal,
        f.sim_in_run / f.ideal,
        f.sim_calibrated / f.ideal,
        f.sim_frames_only / f.ideal
    ));
    md.push_str(&format!(
        "| tasks fast / slow | {} | {} | {} | |\n",
        counts.join(" / "),
        in_run_counts.join(" / "),
        sim_counts.join(" / ")
    ));
    md.push_str(&format!(
        "\nThe job took {:.1} s from submit to done: planning (probe, heartbeats, publish) before the first task and the stitch after the last checkpoint ({:.2} s) are outside the makespan and outside the simulator. Inside it the simulator leaves out what a worker does between two busy windows (ack, completion check, fetch, reading the job record and the checkpoints before `task_started`): {:.0} ms per task here. Frames only, the simulator misses each task's start-up (child process, GStreamer registry, pipeline, seek), which on short tasks is a large share of the work.\n",
        f.wall,
        f.stitch_s,
        f.gap_s * 1e3
    ));
    md
}
