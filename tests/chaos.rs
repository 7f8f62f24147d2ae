//! Chaos: real workers killed for real (SIGKILL, children included) and a
//! real nats-server restarted, while multi-rendition jobs run. Every job
//! must end done, with exact frames and exactly one checkpoint per task.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use jetcode::{Client, Event, EventKind, JobSpec, JobState};

fn spec(root: &Path, id: &str, src: &Path) -> JobSpec {
    let r = |name: &str, h: u32| serde_json::json!({"name": name, "height": h, "crf": 28, "preset": "veryfast"});
    serde_json::from_value(serde_json::json!({
        "id": id,
        "source": format!("file://{}", src.display()),
        "output": format!("file://{}/out/{id}/", root.display()),
        "renditions": [r("r180", 180), r("r144", 144)],
        "segment_seconds": 2.0,
        // One task per segment: many tasks for the kills to hit, and the
        // same chunks in the calm run (the planner's own pick follows the
        // fleet's measured speeds, and chunk boundaries change the bytes).
        "chunk_seconds": 2.0,
    }))
    .unwrap()
}

async fn client(url: &str) -> Option<Client> {
    let nc = jetcode::ConnectOptions::new(url).connect().await.ok()?;
    Client::from_nats(nc).await.ok()
}

async fn events(c: &Client, id: &str) -> Vec<Event> {
    let mut evs = Box::pin(c.watch(id).await.unwrap());
    let mut out = Vec::new();
    while let Ok(Some(Ok(e))) = tokio::time::timeout(Duration::from_millis(500), evs.next()).await {
        out.push(e);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_workers_and_restart_nats_mid_job_every_job_ends_exact() {
    let mut server = NatsServer::start();
    let url = server.url();
    drop(connect_applied(&server).await);
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("in.mp4");
    make_clip(&src, 30.0, 320, 180);
    let want_frames = ffprobe_frames(&src);

    let start = |n: usize| {
        WorkerProc::start(
            &url,
            &format!("w{n}"),
            root.path(),
            &["--reconcile-interval", "2", "--drain-timeout", "1"],
            &[],
        )
    };
    let mut workers: Vec<WorkerProc> = (0..3).map(start).collect();
    let mut names: Vec<String> = (0..3).map(|n| format!("w{n}")).collect();
    // Worker id -> unix time of its kill -9.
    let mut killed_at: HashMap<String, f64> = HashMap::new();
    let mut next_id = 3;
    let jobs = ["chaos-a", "chaos-b"];
    {
        let c = client(&url).await.unwrap();
        for j in jobs {
            c.submit(&spec(root.path(), j, &src)).await.unwrap();
        }
    }

    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(300);
    let (mut kills, mut restarts) = (0, 0);
    let mut last_kill = Instant::now();
    loop {
        assert!(Instant::now() < deadline, "jobs did not end within 300 s");
        if let Some(c) = client(&url).await {
            let mut ended = 0;
            for j in jobs {
                if let Ok(r) = c.status(j).await {
                    if r.state.is_terminal() {
                        ended += 1;
                    }
                }
            }
            if ended == jobs.len() {
                break;
            }
        }
        // Every ~1.5 s kill -9 a worker (its children die with it) and
        // start a fresh one; twice, restart the server (same store).
        if last_kill.elapsed() > Duration::from_millis(1500) && kills < 8 {
            let victim = kills % workers.len();
            workers[victim].signal(libc::SIGKILL);
            killed_at.insert(names[victim].clone(), unix_now());
            workers[victim].wait_exit(Duration::from_secs(10));
            workers[victim] = start(next_id);
            names[victim] = format!("w{next_id}");
            next_id += 1;
            kills += 1;
            last_kill = Instant::now();
            if kills == 2 || kills == 4 {
                server.kill();
                server = server.restart_same();
                restarts += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let c = client(&url).await.unwrap();
    let mut redeliveries = 0;
    let mut lost = LostWork::default();
    for j in jobs {
        let rec = c.status(j).await.unwrap();
        assert_eq!(rec.state, JobState::Done, "{j}: {:?}", rec.error);
        let out = root.path().join("out").join(j);
        for r in ["r180", "r144"] {
            assert_eq!(
                ffprobe_frames(&out.join(format!("{r}.mp4"))),
                want_frames,
                "{j}/{r}"
            );
        }
        // Exactly one checkpoint per task (+ stitch), one part file each.
        let done = c.ledger().done_tasks(j).await.unwrap();
        assert_eq!(done.len() as u32, rec.tasks_total + 1, "{j}: {done:?}");
        let segments = rec.plan.as_ref().unwrap().segments.len();
        for r in ["r180", "r144"] {
            let parts = std::fs::read_dir(out.join("parts").join(r))
                .unwrap()
                .count();
            assert_eq!(parts, segments, "{j}/{r}: no stray or missing parts");
        }
        let evs = events(&c, j).await;
        let mut starts: HashMap<String, u64> = HashMap::new();
        for e in &evs {
            if let EventKind::TaskStarted { task, .. } = &e.kind {
                *starts.entry(task.clone()).or_default() += 1;
            }
        }
        redeliveries += starts.values().map(|n| n - 1).sum::<u64>();
        lost.add(&evs, &killed_at);
    }
    // The same job without faults: x264 and the TS muxer are deterministic
    // for the same settings on the same machine, so every part (and the
    // audio) must be byte-identical to what the chaos produced.
    c.submit(&spec(root.path(), "calm", &src)).await.unwrap();
    let calm = c
        .wait("calm", Some(Duration::from_secs(300)))
        .await
        .unwrap();
    let segments = calm.plan.as_ref().unwrap().segments.len() as u32;
    let digest = |job: &str, key: &str| {
        let p = root.path().join("out").join(job).join(key);
        jetcode::store::digest_file(&p).unwrap_or_else(|e| panic!("{e}"))
    };
    let mut compared = 0;
    for j in jobs {
        let mut keys = vec![jetcode::subjects::AUDIO_PART_KEY.to_string()];
        for r in ["r180", "r144"] {
            keys.extend((0..segments).map(|i| jetcode::subjects::part_key(r, i)));
        }
        for key in keys {
            assert_eq!(
                digest(j, &key),
                digest("calm", &key),
                "{j}/{key} differs from a fault-free run"
            );
            compared += 1;
        }
    }
    eprintln!(
        "chaos: {} jobs done in {:.1}s; {kills} workers killed, {restarts} server restart(s), {redeliveries} task restarts; 0 lost, 0 duplicate parts; {compared} parts byte-identical to a fault-free run",
        jobs.len(),
        t0.elapsed().as_secs_f64()
    );
    eprintln!(
        "chaos: encode work lost to kills: {:.1} s of child time over {} interrupted attempts ({:.2} s per kill; {:.1} s of useful encode in all); kill -> redelivery: median {:.1} s, max {:.1} s",
        lost.seconds,
        lost.attempts,
        lost.seconds / kills.max(1) as f64,
        lost.useful,
        median(&mut lost.redelivery.clone()),
        lost.redelivery.iter().cloned().fold(0.0, f64::max),
    );
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Encode work the kills threw away, read from a job's events: an attempt
/// that started on a worker later killed, and that worker never finished
/// nor retried it, ran from its start until the kill.
#[derive(Default)]
struct LostWork {
    /// Child seconds of interrupted attempts.
    seconds: f64,
    attempts: usize,
    /// Child seconds of attempts that finished.
    useful: f64,
    /// Seconds from a kill to the next start of each task it interrupted.
    redelivery: Vec<f64>,
}

impl LostWork {
    fn add(&mut self, evs: &[Event], killed_at: &HashMap<String, f64>) {
        for (i, e) in evs.iter().enumerate() {
            match &e.kind {
                EventKind::TaskDone { seconds, .. } => self.useful += seconds,
                EventKind::TaskStarted { task, worker, .. } => {
                    let Some(&kill) = killed_at.get(worker) else {
                        continue;
                    };
                    let later = &evs[i + 1..];
                    let ended_here = later.iter().any(|l| match &l.kind {
                        EventKind::TaskDone {
                            task: t, worker: w, ..
                        }
                        | EventKind::Retried {
                            task: t, worker: w, ..
                        } => t == task && w == worker,
                        _ => false,
                    });
                    if ended_here || kill < e.time {
                        continue;
                    }
                    self.seconds += kill - e.time;
                    self.attempts += 1;
                    if let Some(next) = later.iter().find(|l| {
                        matches!(&l.kind, EventKind::TaskStarted { task: t, .. } if t == task)
                            && l.time >= kill
                    }) {
                        self.redelivery.push(next.time - kill);
                    }
                }
                _ => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn frozen_worker_past_ack_wait_corrupts_and_duplicates_nothing() {
    let server = NatsServer::start();
    let url = server.url();
    drop(connect_applied(&server).await);
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("in.mp4");
    make_clip(&src, 8.0, 320, 180);
    let want_frames = ffprobe_frames(&src);
    let mut frozen = WorkerProc::start(&url, "frozen", root.path(), &[], &[]);
    let c = client(&url).await.unwrap();
    let mut job = spec(root.path(), "thaw", &src);
    job.renditions.truncate(1);
    c.submit(&job).await.unwrap();
    // Freeze it (and its child) mid-task, past the 10 s ack deadline.
    let mut evs = Box::pin(c.watch("thaw").await.unwrap());
    let frozen_task = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(Ok(e)) = evs.next().await {
            if let EventKind::TaskStarted { task, .. } = e.kind {
                return task;
            }
        }
        panic!("events ended");
    })
    .await
    .expect("a task started");
    // SAFETY: kill(2) on our child's process group members by pid.
    let stop_all = |sig: i32| {
        for pid in processes_mentioning(&root.path().display().to_string()) {
            unsafe {
                libc::kill(pid as i32, sig);
            }
        }
    };
    stop_all(libc::SIGSTOP);
    let _rescuer = WorkerProc::start(&url, "rescuer", root.path(), &[], &[]);
    // Frozen past its ack deadline: the rescuer takes the task over.
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(Ok(e)) = evs.next().await {
            if matches!(&e.kind, EventKind::TaskStarted { task, worker, .. } if worker == "rescuer" && *task == frozen_task) {
                return;
            }
        }
    })
    .await
    .expect("the frozen worker's task is redelivered to the rescuer");
    // Thaw: its late completion and late ack must change nothing.
    stop_all(libc::SIGCONT);
    let rec = c
        .wait("thaw", Some(Duration::from_secs(180)))
        .await
        .expect("job ends done");
    assert_eq!(rec.state, JobState::Done);
    let out = root.path().join("out/thaw");
    assert_eq!(ffprobe_frames(&out.join("r180.mp4")), want_frames);
    let done = c.ledger().done_tasks("thaw").await.unwrap();
    assert_eq!(done.len() as u32, rec.tasks_total + 1, "{done:?}");
    // The stitch verified every part against its checkpoint digest, so a
    // late duplicate did not replace one; the frozen worker is alive again.
    assert!(
        frozen.child.try_wait().unwrap().is_none(),
        "frozen worker survived"
    );
    let _ = &mut frozen;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_node_cluster_survives_stream_and_meta_leader_kills_mid_job() {
    let mut cluster = NatsCluster::start(3);
    let urls = cluster.urls();
    // R3 topology, once the cluster has elected its meta leader.
    wait_for(Duration::from_secs(60), "R3 topology applied", || {
        let urls = urls.clone();
        async move {
            match jetcode::ConnectOptions::new(urls).connect().await {
                Ok(nc) => jetcode::streams::apply_replicated(&async_nats::jetstream::new(nc), 3)
                    .await
                    .is_ok(),
                Err(_) => false,
            }
        }
    })
    .await;
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("in.mp4");
    make_clip(&src, 30.0, 320, 180);
    let want_frames = ffprobe_frames(&src);
    let _workers: Vec<WorkerProc> = (0..2)
        .map(|n| {
            WorkerProc::start(
                &urls,
                &format!("cw{n}"),
                root.path(),
                &["--reconcile-interval", "2"],
                &[],
            )
        })
        .collect();
    let c = client(&urls).await.unwrap();
    c.submit(&spec(root.path(), "clustered", &src))
        .await
        .unwrap();
    let mut evs = Box::pin(c.watch("clustered").await.unwrap());
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(Ok(e)) = evs.next().await {
            if matches!(e.kind, EventKind::TaskDone { .. }) {
                return;
            }
        }
    })
    .await
    .expect("a part done");

    let js = async_nats::jetstream::new(c.nats().clone());
    let stream_leader = || {
        let js = js.clone();
        async move {
            let mut s = js.get_stream(jetcode::subjects::TASKS_STREAM).await.ok()?;
            let leader = s.info().await.ok()?.cluster.as_ref()?.leader.clone()?;
            (0..3).find(|i| NatsCluster::name(*i) == leader)
        }
    };
    // 1. Kill the task stream's leader; a new one is elected; bring it back.
    let old = stream_leader().await.expect("stream leader");
    cluster.kill_node(old);
    wait_for(Duration::from_secs(60), "new stream leader", || async {
        stream_leader().await.is_some_and(|l| l != old)
    })
    .await;
    cluster.start_node(old);
    // 2. Kill the meta leader; a new one is elected; bring it back.
    let meta = cluster.meta_leader().expect("meta leader");
    cluster.kill_node(meta);
    wait_until(Duration::from_secs(60), "new meta leader", || {
        cluster.meta_leader().is_some_and(|l| l != meta)
    });
    cluster.start_node(meta);

    let rec = c
        .wait("clustered", Some(Duration::from_secs(300)))
        .await
        .expect("job ends done");
    assert_eq!(rec.state, JobState::Done);
    let out = root.path().join("out/clustered");
    for r in ["r180", "r144"] {
        assert_eq!(
            ffprobe_frames(&out.join(format!("{r}.mp4"))),
            want_frames,
            "{r}"
        );
    }
    let done = c.ledger().done_tasks("clustered").await.unwrap();
    assert_eq!(done.len() as u32, rec.tasks_total + 1, "{done:?}");
    eprintln!(
        "cluster: stream leader {} and meta leader {} killed mid-job; job done",
        NatsCluster::name(old),
        NatsCluster::name(meta)
    );
}
