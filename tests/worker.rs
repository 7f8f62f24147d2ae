//! The running system: real nats-server, real worker processes, real media.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use futures::StreamExt;
use jetcode::{Client, Event, EventKind, JobState, Manifest};

fn small(name: &str, height: u32, preset: &str) -> serde_json::Value {
    serde_json::json!({"name": name, "height": height, "crf": 26, "preset": preset})
}

fn task_done_counts(evs: &[Event]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for e in evs {
        if let EventKind::TaskDone { task, .. } = &e.kind {
            *m.entry(task.clone()).or_insert(0) += 1;
        }
    }
    m
}

/// Segment tasks (not parts) that started, by id.
fn segment_tasks_started(evs: &[Event]) -> HashSet<String> {
    evs.iter()
        .filter_map(|e| match &e.kind {
            EventKind::TaskStarted { task, .. } if task.starts_with("seg-") => Some(task.clone()),
            _ => None,
        })
        .collect()
}

fn manifest(dir: &Path) -> Manifest {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

fn assert_outputs(dir: &Path, source: &Path, renditions: &[&str]) {
    let want = ffprobe_frames(source);
    let m = manifest(dir);
    assert_eq!(m.frames, want, "manifest frames");
    for r in renditions {
        let mp4 = dir.join(format!("{r}.mp4"));
        assert_eq!(ffprobe_frames(&mp4), want, "{}", mp4.display());
    }
    assert!(dir.join("hls/master.m3u8").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn two_workers_complete_a_two_rendition_job_once_each() {
    let f = Fixture::new().await;
    let src = f.clip("in.mp4", 16.0, 320, 240);
    let _a = f.worker("wa", &[]);
    let _b = f.worker("wb", &[]);
    let spec = f.spec(
        "two",
        &src,
        serde_json::json!([
            small("r240", 240, "veryfast"),
            small("r120", 120, "veryfast")
        ]),
        4.0,
    );
    let id = f.client.submit(&spec).await.unwrap();
    wait_for(Duration::from_secs(30), "two live workers", || async {
        f.client
            .workers()
            .await
            .map(|w| w.len() == 2)
            .unwrap_or(false)
    })
    .await;
    let rec = f
        .client
        .wait(&id.0, Some(Duration::from_secs(240)))
        .await
        .unwrap();
    assert_eq!(rec.state, JobState::Done);
    let plan = rec.plan.unwrap();
    assert!(plan.segments.len() >= 4, "{} segments", plan.segments.len());
    assert_outputs(&f.out("two"), &src, &["r240", "r120"]);

    let evs = f.events("two").await;
    let done = task_done_counts(&evs);
    assert_eq!(
        done.len() as u32,
        rec.tasks_total + 1,
        "every task (and the stitch) done: {done:?}"
    );
    assert!(
        done.values().all(|&n| n == 1),
        "a task was done twice: {done:?}"
    );
    let checkpoints = f.client.ledger().done_tasks("two").await.unwrap();
    assert_eq!(checkpoints.len() as u32, rec.tasks_total + 1);
    let workers: HashSet<_> = evs
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::TaskDone { worker, .. } => Some(worker.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        workers.len(),
        2,
        "work spread over both workers: {workers:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_worker_task_is_redelivered_and_job_completes() {
    let f = Fixture::new().await;
    let src = f.clip("in.mp4", 12.0, 640, 360);
    let mut a = f.worker("victim", &[]);
    let spec = f.spec(
        "kill9",
        &src,
        serde_json::json!([small("r360", 360, "medium")]),
        6.0,
    );
    f.client.submit(&spec).await.unwrap();
    let victim_task = f.first_segment_started("kill9").await;
    a.signal(libc::SIGKILL);
    let killed_at = std::time::Instant::now();
    a.wait_exit(Duration::from_secs(10));
    let _b = f.worker("rescuer", &[]);
    // Prompt detection: redelivered within ack_wait (10 s, the worker
    // progress-acks every 3 s) + 2 s of the kill.
    let t = victim_task.clone();
    f.wait_event("kill9", "victim task restarted", move |k| {
        matches!(k, EventKind::TaskStarted { task, worker, .. } if *task == t && worker == "rescuer")
    })
    .await;
    let redelivered_after = killed_at.elapsed();
    eprintln!("kill -9 -> redelivery: {redelivered_after:?}");
    assert!(
        redelivered_after <= jetcode::streams::TASK_ACK_WAIT + Duration::from_secs(2),
        "redelivered {redelivered_after:?} after the kill"
    );
    let rec = f
        .client
        .wait("kill9", Some(Duration::from_secs(240)))
        .await
        .unwrap();
    assert_eq!(rec.state, JobState::Done);
    assert_outputs(&f.out("kill9"), &src, &["r360"]);
    let evs = f.events("kill9").await;
    let done = task_done_counts(&evs);
    assert!(
        done.values().all(|&n| n == 1),
        "duplicate completion: {done:?}"
    );
    // Its part (a task's events name the task; a part's, the part).
    let victim_part = victim_task.replacen("seg-", "seg-r360-", 1);
    let rescued = evs.iter().any(|e| {
        matches!(&e.kind,
        EventKind::TaskDone { task, worker, .. } if *task == victim_part && worker == "rescuer")
    });
    assert!(rescued, "{victim_task} was redelivered to the rescuer");
    let parts = std::fs::read_dir(f.out("kill9").join("parts/r360"))
        .unwrap()
        .count();
    assert_eq!(
        parts,
        rec.plan.unwrap().segments.len(),
        "no stray partial files"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_hands_in_flight_work_back_at_once() {
    let f = Fixture::new().await;
    let src = f.clip("in.mp4", 12.0, 640, 360);
    let mut a = f.worker("leaver", &["--drain-timeout", "0"]);
    let spec = f.spec(
        "term",
        &src,
        serde_json::json!([small("r360", 360, "medium")]),
        6.0,
    );
    f.client.submit(&spec).await.unwrap();
    let task = f.first_segment_started("term").await;
    a.signal(libc::SIGTERM);
    let status = a.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "drained worker exits 0: {status:?}");
    assert!(
        f.client.workers().await.unwrap().is_empty(),
        "heartbeat deleted on exit"
    );
    let _b = f.worker("taker", &[]);
    // Handed back as a fresh copy, so it comes again well before ack_wait
    // (30 s), and as a first attempt: a drain spends none of its deliveries.
    let t = task.clone();
    let again = tokio::time::timeout(
        Duration::from_secs(15),
        f.wait_event("term", "the same task restarted by taker", move |k| {
            matches!(k, EventKind::TaskStarted { task, worker, .. } if *task == t && worker == "taker")
        }),
    )
    .await;
    let again = again.unwrap_or_else(|_| panic!("{task} not handed back promptly"));
    assert!(
        matches!(again.kind, EventKind::TaskStarted { attempt: 1, .. }),
        "hand-back spent a delivery: {again:?}"
    );
    let rec = f
        .client
        .wait("term", Some(Duration::from_secs(240)))
        .await
        .unwrap();
    assert_eq!(rec.state, JobState::Done);
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_child_is_killed_and_retried() {
    let f = Fixture::new().await;
    let src = f.clip("in.mp4", 6.0, 320, 240);
    let marker = f.root().join("stalled-once");
    let failpoint = format!("segment:{}", marker.display());
    let _w = WorkerProc::start(
        &f.server.url(),
        "w",
        f.root(),
        &["--stall-timeout", "2"],
        &[("JETCODE_FAILPOINT_STALL_ONCE", &failpoint)],
    );
    let spec = f.spec(
        "stall",
        &src,
        serde_json::json!([small("r120", 120, "veryfast")]),
        3.0,
    );
    f.client.submit(&spec).await.unwrap();
    let rec = f
        .client
        .wait("stall", Some(Duration::from_secs(180)))
        .await
        .unwrap();
    assert_eq!(rec.state, JobState::Done);
    assert!(marker.exists(), "the failpoint fired");
    let evs = f.events("stall").await;
    assert!(
        evs.iter().any(
            |e| matches!(&e.kind, EventKind::Retried { reason, .. } if reason.contains("stalled"))
        ),
        "a retry for the stall was recorded"
    );
    assert_outputs(&f.out("stall"), &src, &["r120"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_fails_its_job_with_a_reason_and_others_flow() {
    let f = Fixture::new().await;
    let _w = f.worker("w", &[]);
    // Not media at all.
    let junk = f.root().join("junk.mp4");
    std::fs::write(&junk, vec![0x42u8; 100_000]).unwrap();
    f.client
        .submit(&f.spec("junk", &junk, serde_json::json!(["h264-240p"]), 4.0))
        .await
        .unwrap();
    // Raw publishes the client would refuse: the planner records why.
    let nc = f.client.nats();
    nc.request(jetcode::subjects::JOBS_SUBMIT, r#"{"id":"unknown-field","source":"file:///x","output":"file:///y/","renditions":["h264-240p"],"bogus":1}"#.into()).await.unwrap();
    nc.request(jetcode::subjects::JOBS_SUBMIT, r#"{"id":"escape","source":"file:///etc/passwd","output":"file:///tmp/o/","renditions":["h264-240p"]}"#.into()).await.unwrap();
    let big = format!(
        r#"{{"id":"huge","source":"file:///{}","output":"file:///o/","renditions":["h264-240p"]}}"#,
        "a".repeat(70_000)
    );
    nc.request(jetcode::subjects::JOBS_SUBMIT, big.into())
        .await
        .unwrap();
    // A good job behind them still completes.
    let src = f.clip("in.mp4", 4.0, 320, 240);
    f.client
        .submit(&f.spec(
            "good",
            &src,
            serde_json::json!([small("r120", 120, "veryfast")]),
            2.0,
        ))
        .await
        .unwrap();
    let rec = f
        .client
        .wait("good", Some(Duration::from_secs(180)))
        .await
        .unwrap();
    assert_eq!(rec.state, JobState::Done);
    for (id, want) in [
        ("junk", "cannot read source"),
        ("unknown-field", "unknown field `bogus`"),
        ("escape", "outside"),
        ("huge", "limit"),
    ] {
        let err = f
            .client
            .wait(id, Some(Duration::from_secs(60)))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), jetcode::ErrorKind::JobFailed, "{id}: {err}");
        let rec = f.client.status(id).await.unwrap();
        let reason = rec.error.unwrap_or_default();
        assert!(reason.contains(want), "{id}: {reason}");
        assert!(!reason.contains('\n'), "{id}: one line");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_job_resumes_without_reencoding_checkpointed_parts() {
    let f = Fixture::new().await;
    let src = f.clip("in.mp4", 16.0, 320, 240);
    let mut a = f.worker("first", &[]);
    f.client
        .submit(&f.spec(
            "resume",
            &src,
            serde_json::json!([small("r240", 240, "medium")]),
            2.0,
        ))
        .await
        .unwrap();
    wait_for(Duration::from_secs(120), "two checkpoints", || async {
        f.client
            .ledger()
            .done_tasks("resume")
            .await
            .map(|t| t.len() >= 2)
            .unwrap_or(false)
    })
    .await;
    a.signal(libc::SIGKILL);
    a.wait_exit(Duration::from_secs(10));
    let before: HashSet<String> = f
        .client
        .ledger()
        .done_tasks("resume")
        .await
        .unwrap()
        .into_iter()
        .collect();
    let mtimes: HashMap<String, std::time::SystemTime> =
        std::fs::read_dir(f.out("resume").join("parts/r240"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name().to_string_lossy().ends_with(".ts")
                    && !e.file_name().to_string_lossy().starts_with('.')
            })
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().modified().unwrap(),
                )
            })
            .collect();
    // A crash between a checkpoint and its ack leaves a checkpointed task
    // queued: queue a late copy of each, which must not be encoded again.
    let rec = f.client.status("resume").await.unwrap();
    let (spec, plan) = jetcode::dispatch::planned(&rec).unwrap();
    let copies: Vec<_> = jetcode::dispatch::work_tasks("resume", spec, plan)
        .unwrap()
        .into_iter()
        .filter(|t| before.contains(&t.id))
        .collect();
    let js = async_nats::jetstream::new(f.client.nats().clone());
    jetcode::dispatch::publish(&js, spec.priority_class(), &copies, Some("late"))
        .await
        .unwrap();
    let _b = f.worker("second", &[]);
    let rec = f
        .client
        .wait("resume", Some(Duration::from_secs(240)))
        .await
        .unwrap();
    assert_eq!(rec.state, JobState::Done);
    let done = task_done_counts(&f.events("resume").await);
    for t in &before {
        assert_eq!(done.get(t), Some(&1), "{t} was encoded again");
    }
    for (name, t) in mtimes {
        let now = std::fs::metadata(f.out("resume").join("parts/r240").join(&name))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(now, t, "{name} rewritten");
    }
    assert_outputs(&f.out("resume"), &src, &["r240"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_work_within_seconds() {
    let f = Fixture::new().await;
    let src = f.clip("in.mp4", 20.0, 640, 360);
    // The first segment's child hangs (stall timeout 60 s): only the
    // cancel can end it within the bound, however fast the machine.
    let marker = f.root().join("stall.marker");
    let failpoint = format!("segment:{}", marker.display());
    let _w = WorkerProc::start(
        &f.server.url(),
        "w",
        f.root(),
        &[],
        &[("JETCODE_FAILPOINT_STALL_ONCE", &failpoint)],
    );
    f.client
        .submit(&f.spec(
            "cancel",
            &src,
            serde_json::json!([small("r360", 360, "slow")]),
            10.0,
        ))
        .await
        .unwrap();
    f.wait_event(
        "cancel",
        "a segment started",
        |k| matches!(k, EventKind::TaskStarted { task, .. } if task.starts_with("seg-")),
    )
    .await;
    let rec = f.client.cancel("cancel").await.unwrap();
    assert_eq!(rec.state, JobState::Cancelled);
    wait_for(
        Duration::from_secs(10),
        "worker idle after cancel",
        || async {
            f.client
                .workers()
                .await
                .map(|ws| ws.iter().all(|w| w.busy == 0))
                .unwrap_or(false)
        },
    )
    .await;
    assert!(marker.exists(), "the failpoint fired");
    let err = f
        .client
        .wait("cancel", Some(Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), jetcode::ErrorKind::JobFailed);
    let evs = f.events("cancel").await;
    assert!(!evs.iter().any(|e| matches!(e.kind, EventKind::Done { .. })));
    assert_eq!(
        f.client.status("cancel").await.unwrap().state,
        JobState::Cancelled
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_metrics_heartbeat_and_micro_service() {
    let f = Fixture::new().await;
    let mut w = f.worker("probe-me", &["--slots", "3"]);
    wait_for(Duration::from_secs(30), "heartbeat", || async {
        f.client
            .workers()
            .await
            .map(|w| w.len() == 1)
            .unwrap_or(false)
    })
    .await;
    let hb = f.client.workers().await.unwrap().remove(0);
    assert_eq!((hb.id.as_str(), hb.slots, hb.busy), ("probe-me", 3, 0));
    assert!(hb.rss > 0, "{hb:?}");
    let port: u16 = hb
        .health
        .as_deref()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("heartbeat names the health address");
    let (code, _) = http_get(port, "/healthz");
    assert_eq!(code, 200);
    let (code, _) = http_get(port, "/readyz");
    assert_eq!(code, 200);
    let (code, body) = http_get(port, "/metrics");
    assert_eq!(code, 200);
    assert!(body.contains("jetcode_slots 3"), "{body}");
    let (code, _) = http_get(port, "/nope");
    assert_eq!(code, 404);
    let ping = f
        .client
        .nats()
        .request("$SRV.PING.jetcode-worker", "".into())
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&ping.payload).unwrap();
    assert_eq!(v["name"], "jetcode-worker");
    // The CLI lists it too.
    let out = std::process::Command::new(jetcode_bin())
        .args(["workers", "--nats-url", &f.server.url()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("probe-me"));
    w.signal(libc::SIGTERM);
    assert!(w.wait_exit(Duration::from_secs(20)).success());
    assert!(
        f.client.workers().await.unwrap().is_empty(),
        "heartbeat removed on drain"
    );
}

/// A task whose every delivery dies with its worker is never delivered
/// again; the dead-letter role must fail its job instead of leaving it
/// `running` forever, and clear the task out of the work queue.
#[tokio::test(flavor = "multi_thread")]
async fn task_that_exhausts_its_deliveries_fails_the_job() {
    use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
    let f = Fixture::new().await;
    // Planner and dead-letter roles only: no slots, so it encodes nothing.
    let _w = f.worker("planner-only", &["--slots", "0"]);
    // One segment, no audio: a single task, so only its failure can fail
    // the job.
    let src = f.root().join("in.mp4");
    jetcode::media::testsrc::generate_clip(
        &src,
        &jetcode::media::testsrc::ClipOptions {
            seconds: 2.0,
            audio: false,
            ..Default::default()
        },
    )
    .unwrap();
    f.client
        .submit(&f.spec("doomed", &src, serde_json::json!(["h264-240p"]), 2.0))
        .await
        .unwrap();
    wait_for(Duration::from_secs(60), "job planned", || async {
        f.client
            .status("doomed")
            .await
            .map(|r| r.plan.is_some())
            .unwrap_or(false)
    })
    .await;
    // This test is the worker that keeps dying: it takes every delivery and
    // hands it straight back, which uses up deliveries as a crash would.
    let js = jetstream::new(f.client.nats().clone());
    let workers: PullConsumer = js
        .get_consumer_from_stream(
            jetcode::subjects::WORKERS_CONSUMER,
            jetcode::subjects::TASKS_STREAM,
        )
        .await
        .unwrap();
    // Use up every attempt of the first task to arrive.
    let mut deliveries = 0u64;
    let mut doomed_seq = None;
    while deliveries < jetcode::streams::TASK_MAX_DELIVER as u64 {
        let mut batch = workers
            .fetch()
            .max_messages(16)
            .expires(Duration::from_millis(300))
            .messages()
            .await
            .unwrap();
        while let Some(Ok(m)) = batch.next().await {
            let info = m.info().unwrap();
            if doomed_seq.is_none_or(|s| s == info.stream_sequence) {
                doomed_seq = Some(info.stream_sequence);
                deliveries += 1;
            }
            m.ack_with(AckKind::Nak(None)).await.unwrap();
        }
    }
    assert_eq!(
        f.client.status("doomed").await.unwrap().state,
        JobState::Running,
        "the server gives up on nothing: the next delivery goes to a live worker"
    );
    // A live worker gets the next delivery, and fails the job for it. Its
    // first attempt to record the failure fails: the task must stay queued
    // (nak, not term) until the failure is on record. Terminated at once,
    // it would vanish, and the job would be resumed (done), not failed.
    let marker = f.root().join("record-failure.marker");
    let _live = WorkerProc::start(
        &f.server.url(),
        "live",
        f.root(),
        &["--retry-backoff", "0.2"],
        &[(
            "JETCODE_FAILPOINT_RECORD_FAILURE_ONCE",
            marker.to_str().unwrap(),
        )],
    );
    wait_for(Duration::from_secs(60), "job failed", || async {
        f.client
            .status("doomed")
            .await
            .map(|r| r.state != JobState::Running)
            .unwrap_or(false)
    })
    .await;
    let rec = f.client.status("doomed").await.unwrap();
    assert!(marker.exists(), "the failpoint fired");
    assert_eq!(rec.state, JobState::Failed);
    let reason = rec.error.unwrap_or_default();
    // 5 deliveries used up here, and one more spent by the failed record
    // write.
    assert!(
        reason.contains(&format!(
            "delivered {} times",
            jetcode::streams::TASK_MAX_DELIVER + 1
        )),
        "{reason}"
    );
    assert!(deliveries >= jetcode::streams::TASK_MAX_DELIVER as u64);
    let evs = f.events("doomed").await;
    assert!(evs.iter().any(
        |e| matches!(&e.kind, EventKind::Failed { reason } if reason.contains("never finished"))
    ));
    // The failed job's other tasks are purged from the work queue.
    wait_for(Duration::from_secs(30), "job's tasks removed", || {
        let js = js.clone();
        async move {
            match js.get_stream(jetcode::subjects::TASKS_STREAM).await {
                Ok(mut tasks) => tasks
                    .info()
                    .await
                    .map(|i| i.state.messages == 0)
                    .unwrap_or(false),
                Err(_) => false,
            }
        }
    })
    .await;
    // The terminated task's advisory is on record.
    let mut dead = js.get_stream(jetcode::subjects::DEAD_STREAM).await.unwrap();
    assert!(dead.info().await.unwrap().state.messages >= 1);
}

/// A child over its memory limit fails its task with a reason that names
/// the limit (and is retried), instead of growing until the OOM killer
/// picks something on the machine.
#[tokio::test(flavor = "multi_thread")]
async fn child_over_its_memory_limit_fails_the_task_and_says_so() {
    let f = Fixture::new().await;
    // x264 `medium` at 1080p needs ~800 MB (measured); probe and audio fit
    // in 256 MiB.
    let src = f.clip("hd.mp4", 2.0, 1920, 1080);
    let _w = f.worker("small", &["--child-memory-mb", "256"]);
    f.client
        .submit(&f.spec(
            "big",
            &src,
            serde_json::json!([{"name": "r1080", "height": 1080, "crf": 23, "preset": "medium"}]),
            2.0,
        ))
        .await
        .unwrap();
    let e = f
        .wait_event("big", "a retry for the memory limit", |k| {
            matches!(k, EventKind::Retried { reason, .. } if reason.contains("memory limit 256 MiB"))
        })
        .await;
    eprintln!("{e:?}");
    f.client.cancel("big").await.unwrap();
}

/// The bound `jetcode worker --help` documents for `--drain-timeout`: the
/// process exits at most 10 s after the drain ends, whatever NATS does.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Wait for a worker's heartbeat: it is connected and pulling.
async fn wait_worker_live(f: &Fixture, id: &str) {
    wait_for(Duration::from_secs(30), "worker heartbeat", || async {
        f.client
            .workers()
            .await
            .map(|ws| ws.iter().any(|w| w.id == id))
            .unwrap_or(false)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_worker_exits_in_bound_after_sigterm_with_nats_gone() {
    let mut f = Fixture::new().await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut w = f.worker("orphan", &["--drain-timeout", "2", "--health-addr", &addr]);
    wait_worker_live(&f, "orphan").await;
    assert_eq!(http_get(port, "/readyz").0, 200);
    f.server.kill();
    // Liveness is the process, not NATS: a supervisor must not kill a
    // worker (and its encodes) for a NATS outage. Readiness says no.
    wait_until(Duration::from_secs(10), "readyz 503 without NATS", || {
        http_get(port, "/readyz").0 == 503
    });
    assert_eq!(http_get(port, "/healthz").0, 200);
    let t0 = std::time::Instant::now();
    w.signal(libc::SIGTERM);
    let status = w.wait_exit(Duration::from_secs(2) + SHUTDOWN_GRACE);
    assert!(status.success(), "exit 0 with NATS gone: {status:?}");
    eprintln!("idle worker exited {:?} after SIGTERM", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn busy_worker_exits_in_bound_after_sigterm_with_nats_gone() {
    let mut f = Fixture::new().await;
    let src = f.clip("in.mp4", 12.0, 640, 360);
    let mut w = f.worker("busy-orphan", &["--drain-timeout", "2"]);
    let spec = f.spec(
        "orphaned",
        &src,
        serde_json::json!([small("r360", 360, "medium")]),
        12.0,
    );
    f.client.submit(&spec).await.unwrap();
    f.first_segment_started("orphaned").await;
    f.server.kill();
    let t0 = std::time::Instant::now();
    w.signal(libc::SIGTERM);
    let status = w.wait_exit(Duration::from_secs(2) + SHUTDOWN_GRACE);
    assert!(status.success(), "exit 0 with NATS gone: {status:?}");
    eprintln!("busy worker exited {:?} after SIGTERM", t0.elapsed());
    let log = std::fs::read_to_string(f.root().join("busy-orphan.log")).unwrap();
    assert!(log.contains("worker stopped"), "clean stop logged:\n{log}");
    // Its media child died with it: nothing of ours keeps running.
    let root = f.root().display().to_string();
    wait_until(Duration::from_secs(5), "media child gone", || {
        processes_mentioning(&root).is_empty()
    });
}

// ---- Every job ends (issue 9) --------------------------------------------

/// Flip a job back to `running` as a crash between its stitch checkpoint
/// and its `done` record would leave it.
async fn strand_as_running(f: &Fixture, id: &str) {
    f.client
        .ledger()
        .update_record(id, |r| {
            r.state = JobState::Running;
            r.finished_at = None;
            true
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn checkpointed_stitch_always_finishes_the_job() {
    let f = Fixture::new().await;
    let src = f.clip("in.mp4", 4.0, 320, 180);
    let _a = f.worker("plain", &["--reconcile-interval", "0"]);
    let spec = f.spec(
        "stitched",
        &src,
        serde_json::json!([small("r180", 180, "ultrafast")]),
        2.0,
    );
    f.client.submit(&spec).await.unwrap();
    f.client
        .wait("stitched", Some(Duration::from_secs(120)))
        .await
        .unwrap();

    // 1. A redelivered stitch whose checkpoint exists runs the finish step.
    strand_as_running(&f, "stitched").await;
    let rec = f.client.status("stitched").await.unwrap();
    let (spec_r, plan) = jetcode::dispatch::planned(&rec).unwrap();
    let stitch = jetcode::dispatch::stitch_task("stitched", spec_r, plan).unwrap();
    let js = async_nats::jetstream::new(f.client.nats().clone());
    jetcode::dispatch::publish(&js, spec_r.priority_class(), &[stitch], Some("again"))
        .await
        .unwrap();
    let rec = f
        .client
        .wait("stitched", Some(Duration::from_secs(30)))
        .await
        .expect("redelivered checkpointed stitch finishes the job");
    assert_eq!(rec.state, JobState::Done);

    // 2. No message at all: the reconciler finishes it.
    strand_as_running(&f, "stitched").await;
    let _b = f.worker("reconciler", &["--reconcile-interval", "1"]);
    let rec = f
        .client
        .wait("stitched", Some(Duration::from_secs(30)))
        .await
        .expect("reconciler finishes a job whose stitch is checkpointed");
    assert_eq!(rec.state, JobState::Done);
    assert_outputs(&f.out("stitched"), &src, &["r180"]);

    // 3. The stitch never ran and its message vanished: the reconciler
    //    queues it again (the repair needs two sweeps that agree).
    strand_as_running(&f, "stitched").await;
    let progress = js
        .get_stream(format!("KV_{}", jetcode::subjects::PROGRESS_BUCKET))
        .await
        .unwrap();
    progress
        .purge()
        .filter(format!(
            "$KV.{}.stitched.stitch",
            jetcode::subjects::PROGRESS_BUCKET
        ))
        .await
        .unwrap();
    let rec = f
        .client
        .wait("stitched", Some(Duration::from_secs(60)))
        .await
        .expect("reconciler queues a stitch that never came");
    assert_eq!((rec.state, rec.repairs), (JobState::Done, 1));
    assert_outputs(&f.out("stitched"), &src, &["r180"]);

    // 4. The id is taken: the same id with another spec is refused.
    let mut other = spec.clone();
    other.segment_seconds = Some(3.0);
    let err = f.client.submit(&other).await.unwrap_err();
    assert_eq!(err.kind(), jetcode::ErrorKind::InvalidSpec);
    assert!(err.to_string().contains("different spec"), "{err}");
    assert_eq!(f.client.submit(&spec).await.unwrap().0, "stitched");
}

#[tokio::test(flavor = "multi_thread")]
async fn reconciler_requeues_tasks_that_vanished_from_the_queue() {
    let f = Fixture::new().await;
    let src = f.clip("in.mp4", 6.0, 320, 180);
    // A planner-only worker plans the job, then dies; the queued tasks are
    // then lost, as a power failure under lazy fsync can lose them.
    let mut planner = f.worker("planner", &["--slots", "0", "--reconcile-interval", "0"]);
    let spec = f.spec(
        "vanished",
        &src,
        serde_json::json!([small("r180", 180, "ultrafast")]),
        2.0,
    );
    f.client.submit(&spec).await.unwrap();
    wait_for(Duration::from_secs(60), "job planned", || async {
        f.client.status("vanished").await.is_ok()
    })
    .await;
    planner.signal(libc::SIGKILL);
    planner.wait_exit(Duration::from_secs(10));
    let js = async_nats::jetstream::new(f.client.nats().clone());
    let stream = js
        .get_stream(jetcode::subjects::TASKS_STREAM)
        .await
        .unwrap();
    stream.purge().await.unwrap();
    assert_eq!(
        jetcode::dispatch::queued(&js, "vanished").await.unwrap(),
        (0, 0)
    );

    let _w = f.worker("fresh", &["--reconcile-interval", "1"]);
    let rec = f
        .client
        .wait("vanished", Some(Duration::from_secs(90)))
        .await
        .expect("stranded job completes");
    assert_eq!(rec.state, JobState::Done);
    assert_eq!(rec.repairs, 1, "one repair");
    assert_outputs(&f.out("vanished"), &src, &["r180"]);
    let evs = f.events("vanished").await;
    assert!(
        evs.iter().any(
            |e| matches!(&e.kind, EventKind::Repaired { action } if action.contains("vanished"))
        ),
        "repair announced: {evs:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_follows_the_record_not_only_events() {
    let f = Fixture::new().await;
    let ledger = f.client.ledger().clone();
    let rec = jetcode::JobRecord::unplanned("quiet", None, JobState::Running, "");
    assert!(ledger.create_record(&rec).await.unwrap());
    let client = f.client.clone();
    let waiter =
        tokio::spawn(async move { client.wait("quiet", Some(Duration::from_secs(20))).await });
    // The job ends without any event (its announcement was lost).
    ledger
        .update_record("quiet", |r| {
            r.state = JobState::Failed;
            r.error = Some("lost announcement".into());
            true
        })
        .await
        .unwrap();
    let err = waiter.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), jetcode::ErrorKind::JobFailed, "{err}");
    assert!(err.to_string().contains("lost announcement"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_before_planning_wins_and_retry_resumes_from_checkpoints() {
    let f = Fixture::new().await;
    let src = f.clip("in.mp4", 8.0, 320, 180);
    // Cancelled before any worker saw it: it must never run.
    let rec = f.client.cancel("early").await.unwrap();
    assert_eq!(rec.state, JobState::Cancelled);
    let _w = f.worker("w", &["--reconcile-interval", "0"]);
    let early = f.spec(
        "early",
        &src,
        serde_json::json!([small("r180", 180, "ultrafast")]),
        2.0,
    );
    f.client.submit(&early).await.unwrap();

    // A job cancelled mid-way resumes with `retry`, reusing checkpoints.
    let spec = f.spec(
        "resumed",
        &src,
        serde_json::json!([small("r180", 180, "medium")]),
        2.0,
    );
    f.client.submit(&spec).await.unwrap();
    f.wait_event(
        "resumed",
        "a part done",
        |k| matches!(k, EventKind::TaskDone { task, .. } if task.starts_with("seg-")),
    )
    .await;
    let rec = f.client.cancel("resumed").await.unwrap();
    assert_eq!(rec.state, JobState::Cancelled);
    let js = async_nats::jetstream::new(f.client.nats().clone());
    assert_eq!(
        jetcode::dispatch::queued(&js, "resumed").await.unwrap(),
        (0, 0),
        "cancel purges the job's queued tasks"
    );
    let done_before: HashSet<String> = f
        .client
        .ledger()
        .done_tasks("resumed")
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert!(!done_before.is_empty());
    let (rec, queued) = f.client.retry("resumed").await.unwrap();
    assert_eq!((rec.state, rec.generation), (JobState::Running, 1));
    assert!(
        (queued as usize) <= rec.tasks_total as usize + 1 - done_before.len(),
        "only unfinished tasks queued: {queued}"
    );
    let rec = f
        .client
        .wait("resumed", Some(Duration::from_secs(120)))
        .await
        .unwrap();
    assert_eq!(rec.state, JobState::Done);
    assert_outputs(&f.out("resumed"), &src, &["r180"]);
    let evs = f.events("resumed").await;
    let done = task_done_counts(&evs);
    for t in &done_before {
        assert_eq!(done.get(t), Some(&1), "{t} was encoded again after retry");
    }
    assert!(f.client.retry("resumed").await.is_err(), "done is final");

    // The early-cancelled job never ran.
    assert_eq!(
        f.client.status("early").await.unwrap().state,
        JobState::Cancelled
    );
    assert!(f
        .events("early")
        .await
        .iter()
        .all(|e| !matches!(e.kind, EventKind::TaskStarted { .. })));
}

#[tokio::test(flavor = "multi_thread")]
async fn task_from_a_newer_worker_is_left_for_it_not_failed() {
    let f = Fixture::new().await;
    let rec = jetcode::JobRecord::unplanned("future", None, JobState::Running, "");
    assert!(f.client.ledger().create_record(&rec).await.unwrap());
    let js = async_nats::jetstream::new(f.client.nats().clone());
    let body = format!(
        r#"{{"v":{},"job":"future","id":"seg-x-00000","body":{{"kind":"hologram"}}}}"#,
        jetcode::task::TASK_VERSION + 1
    );
    js.publish("jetcode.tasks.segment.future", body.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let _w = f.worker("old", &["--reconcile-interval", "0"]);
    let consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream(
            jetcode::subjects::WORKERS_CONSUMER,
            jetcode::subjects::TASKS_STREAM,
        )
        .await
        .unwrap();
    // Delivered to the old worker, which naks it (with a delay) ...
    wait_for(Duration::from_secs(30), "task delivered and nak'ed", || {
        let mut c = consumer.clone();
        async move {
            c.info()
                .await
                .map(|i| i.delivered.stream_sequence >= 1 && i.num_ack_pending == 1)
                .unwrap_or(false)
        }
    })
    .await;
    let log = f.root().join("old.log");
    wait_until(Duration::from_secs(10), "hand-back logged", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("newer jetcode")
    });
    // ... and the job is not failed.
    assert_eq!(
        f.client.status("future").await.unwrap().state,
        JobState::Running
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_resume_after_a_server_restart() {
    let server = NatsServer::start();
    let nc = connect_applied(&server).await;
    drop(nc);
    let root = tempfile::tempdir().unwrap();
    let _w = WorkerProc::start(&server.url(), "survivor", root.path(), &[], &[]);
    let live = |url: String| async move {
        let Ok(nc) = jetcode::ConnectOptions::new(url).connect().await else {
            return false;
        };
        let Ok(c) = Client::from_nats(nc).await else {
            return false;
        };
        c.workers()
            .await
            .map(|ws| ws.iter().any(|w| w.id == "survivor"))
            .unwrap_or(false)
    };
    wait_for(Duration::from_secs(30), "first heartbeat", || {
        live(server.url())
    })
    .await;
    // The heartbeat bucket lives in memory: a restart loses it.
    let server = server.restart();
    wait_for(Duration::from_secs(30), "heartbeat after restart", || {
        live(server.url())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_with_the_wrong_file_root_leaves_jobs_to_the_right_one() {
    let f = Fixture::new().await;
    let src = f.clip("in.mp4", 8.0, 320, 180);
    let elsewhere = tempfile::tempdir().unwrap();
    // A worker whose only root is some other directory (a missing mount).
    let _wrong = WorkerProc::start(
        &f.server.url(),
        "wrong-root",
        elsewhere.path(),
        &["--slots", "2", "--no-planner"],
        &[],
    );
    let _right = f.worker("right-root", &[]);
    let spec = f.spec(
        "rooted",
        &src,
        serde_json::json!([small("r180", 180, "ultrafast")]),
        2.0,
    );
    f.client.submit(&spec).await.unwrap();
    let rec = f
        .client
        .wait("rooted", Some(Duration::from_secs(120)))
        .await
        .expect("jobs complete on the correct worker");
    assert_eq!(rec.state, JobState::Done);
    assert_outputs(&f.out("rooted"), &src, &["r180"]);
    let evs = f.events("rooted").await;
    assert!(evs
        .iter()
        .all(|e| !matches!(&e.kind, EventKind::TaskDone { worker, .. } if worker == "wrong-root")));
}

/// `chattr +i` on a directory (root ignores file modes, not this), undone
/// on drop. None where the filesystem does not support it.
struct Immutable(PathBuf);

impl Immutable {
    fn set(dir: &Path) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("chattr")
            .arg("+i")
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Immutable(dir.to_path_buf()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unwritable_output_is_retried_then_fails_naming_the_path() {
    let f = Fixture::new().await;
    let src = f.clip("in.mp4", 4.0, 320, 180);
    let _w = f.worker("w", &["--retry-backoff", "0.3"]);
    let spec = |id: &str| {
        f.spec(
            id,
            &src,
            serde_json::json!([small("r180", 180, "ultrafast")]),
            2.0,
        )
    };
    // Unwritable, then writable again: retried, then done.
    let parts = f.out("healed").join("parts");
    let Some(lock) = Immutable::set(&parts) else {
        eprintln!("chattr +i unsupported here: skipping");
        return;
    };
    f.client.submit(&spec("healed")).await.unwrap();
    let shown = parts.display().to_string();
    f.wait_event(
        "healed",
        "a retry naming the path",
        |k| matches!(k, EventKind::Retried { reason, .. } if reason.contains(&shown)),
    )
    .await;
    drop(lock);
    let rec = f
        .client
        .wait("healed", Some(Duration::from_secs(120)))
        .await
        .expect("done once writable");
    assert_eq!(rec.state, JobState::Done);
    assert_outputs(&f.out("healed"), &src, &["r180"]);

    // Left unwritable: the job fails, and the reason names the path.
    let parts = f.out("stuck").join("parts");
    let _lock = Immutable::set(&parts).expect("chattr worked above");
    f.client.submit(&spec("stuck")).await.unwrap();
    let err = f
        .client
        .wait("stuck", Some(Duration::from_secs(120)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), jetcode::ErrorKind::JobFailed, "{err}");
    assert!(
        err.to_string().contains(&parts.display().to_string()),
        "{err}"
    );
}

/// A finished job put back to "parts done, stitch not run" (its stitch
/// checkpoint removed, its record running): what a crash right before the
/// stitch leaves.
async fn unstitch(f: &Fixture, id: &str) {
    strand_as_running(f, id).await;
    let js = async_nats::jetstream::new(f.client.nats().clone());
    js.get_stream(format!("KV_{}", jetcode::subjects::PROGRESS_BUCKET))
        .await
        .unwrap()
        .purge()
        .filter(format!(
            "$KV.{}.{id}.stitch",
            jetcode::subjects::PROGRESS_BUCKET
        ))
        .await
        .unwrap();
}

/// Run job `id` to done on a worker that is then killed, and put it back
/// to "parts done, stitch not run". Returns the source.
async fn done_then_unstitched(f: &Fixture, id: &str) -> PathBuf {
    let src = f.clip("in.mp4", 4.0, 320, 180);
    let mut w = f.worker("w", &["--reconcile-interval", "0"]);
    let spec = f.spec(
        id,
        &src,
        serde_json::json!([small("r180", 180, "ultrafast")]),
        2.0,
    );
    f.client.submit(&spec).await.unwrap();
    f.client
        .wait(id, Some(Duration::from_secs(120)))
        .await
        .unwrap();
    w.signal(libc::SIGKILL);
    w.wait_exit(Duration::from_secs(10));
    unstitch(f, id).await;
    src
}

#[tokio::test(flavor = "multi_thread")]
async fn part_changed_after_its_checkpoint_is_refused_by_the_stitch() {
    let f = Fixture::new().await;
    done_then_unstitched(&f, "tampered").await;
    let part = f.out("tampered").join("parts/r180/00001.ts");
    let mut bytes = std::fs::read(&part).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&part, bytes).unwrap();
    let rec = f.client.status("tampered").await.unwrap();
    let (spec_r, plan) = jetcode::dispatch::planned(&rec).unwrap();
    let js = async_nats::jetstream::new(f.client.nats().clone());
    jetcode::dispatch::publish(
        &js,
        spec_r.priority_class(),
        &[jetcode::dispatch::stitch_task("tampered", spec_r, plan).unwrap()],
        Some("again"),
    )
    .await
    .unwrap();
    let _w2 = f.worker("w2", &["--reconcile-interval", "0"]);
    let err = f
        .client
        .wait("tampered", Some(Duration::from_secs(60)))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("changed after its checkpoint"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exhausted_task_that_was_checkpointed_completes_its_job() {
    use async_nats::jetstream::{consumer::PullConsumer, AckKind};
    let f = Fixture::new().await;
    // The job needs its stitch; the only message left is a copy of a part
    // that was checkpointed, whose every delivery died (here: this test
    // takes them and gives them back).
    let src = done_then_unstitched(&f, "lastgasp").await;
    let rec = f.client.status("lastgasp").await.unwrap();
    let (spec_r, plan) = jetcode::dispatch::planned(&rec).unwrap();
    let part = jetcode::dispatch::work_tasks("lastgasp", spec_r, plan)
        .unwrap()
        .into_iter()
        .find(|t| t.id.starts_with("seg-"))
        .unwrap();
    let js = async_nats::jetstream::new(f.client.nats().clone());
    jetcode::dispatch::publish(&js, spec_r.priority_class(), &[part], Some("late"))
        .await
        .unwrap();
    let workers: PullConsumer = js
        .get_consumer_from_stream(
            jetcode::subjects::WORKERS_CONSUMER,
            jetcode::subjects::TASKS_STREAM,
        )
        .await
        .unwrap();
    let mut deliveries = 0;
    while deliveries < jetcode::streams::TASK_MAX_DELIVER {
        let mut batch = workers
            .fetch()
            .max_messages(1)
            .expires(Duration::from_millis(300))
            .messages()
            .await
            .unwrap();
        while let Some(Ok(m)) = batch.next().await {
            deliveries += 1;
            m.ack_with(AckKind::Nak(None)).await.unwrap();
        }
    }
    // Its next delivery: checkpointed, so the completion step runs instead
    // of the job failing. (The stitch's Msg-Id was used when the job first
    // ran, so within the dedupe hour it is the reconciler that queues it
    // again, under a repair tag.)
    let _w2 = f.worker("w2", &["--reconcile-interval", "1"]);
    let rec = f
        .client
        .wait("lastgasp", Some(Duration::from_secs(90)))
        .await
        .expect("completed, not failed");
    assert_eq!((rec.state, rec.generation), (JobState::Done, 0));
    assert_outputs(&f.out("lastgasp"), &src, &["r180"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn stitch_phase_without_frames_is_not_killed_as_stalled() {
    let f = Fixture::new().await;
    let src = f.clip("in.mp4", 4.0, 320, 180);
    // Stall timeout 3 s; the stitch spends 8 s doing I/O without frames.
    let _w = WorkerProc::start(
        &f.server.url(),
        "patient",
        f.root(),
        &["--stall-timeout", "3", "--retry-backoff", "60"],
        &[("JETCODE_FAILPOINT_SLOW", "stitch:8")],
    );
    let spec = f.spec(
        "slowstitch",
        &src,
        serde_json::json!([small("r180", 180, "ultrafast")]),
        2.0,
    );
    f.client.submit(&spec).await.unwrap();
    let rec = f
        .client
        .wait("slowstitch", Some(Duration::from_secs(120)))
        .await
        .unwrap();
    assert_eq!(rec.state, JobState::Done);
    let evs = f.events("slowstitch").await;
    assert!(
        evs.iter()
            .all(|e| !matches!(&e.kind, EventKind::Retried { .. })),
        "nothing retried: {evs:?}"
    );
}

/// Completion detection costs about one checkpoint listing per job, not
/// one per task: a worker counts the job's queued tasks first (O(1)) and
/// lists checkpoints only when none is left. Listing after every part
/// would read tasks² keys over a 2,880-task job.
#[tokio::test(flavor = "multi_thread")]
async fn completion_check_lists_checkpoints_about_once_per_job() {
    let f = Fixture::new().await;
    let src = f.clip("in.mp4", 24.0, 320, 180);
    let _w = f.worker("one-slot", &["--slots", "1"]);
    let mut spec = f.spec(
        "many",
        &src,
        serde_json::json!([small("r120", 120, "ultrafast")]),
        2.0,
    );
    spec.chunk_seconds = Some(2.0); // one task per segment
    f.client.submit(&spec).await.unwrap();
    let rec = f
        .client
        .wait("many", Some(Duration::from_secs(180)))
        .await
        .unwrap();
    assert_eq!(rec.state, JobState::Done);
    assert!(rec.tasks_total >= 12, "{} tasks", rec.tasks_total);
    let hb = f.client.workers().await.unwrap().remove(0);
    let port: u16 = hb
        .health
        .as_deref()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("heartbeat names the health address");
    let (_, body) = http_get(port, "/metrics");
    let scans: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("jetcode_completion_scans_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no completion scan counted: {body}"));
    assert!(
        (1..=2).contains(&scans),
        "{scans} checkpoint listings for {} tasks",
        rec.tasks_total
    );
    // Encoded frames are the segments' frames: not the audio child's
    // milliseconds nor the stitch's muxed frames.
    let encoded: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("jetcode_frames_encoded_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert_eq!(encoded, rec.plan.as_ref().unwrap().frames);
}

/// Without `chunk_seconds` the planner sizes chunks for the live fleet
/// from the heartbeats: one slot does best with the fewest tasks (here the
/// whole 24 s clip in one; with no fleet known the default keeps one task
/// per 2 s segment), and after encoding the heartbeat carries the slot's
/// measured pace for the next plan.
#[tokio::test(flavor = "multi_thread")]
async fn planner_sizes_chunks_for_the_live_fleet() {
    let f = Fixture::new().await;
    let src = f.clip("in.mp4", 24.0, 320, 180);
    let _w = f.worker("one-slot", &["--slots", "1"]);
    let spec = f.spec(
        "fleet",
        &src,
        serde_json::json!([small("r120", 120, "ultrafast")]),
        2.0,
    );
    f.client.submit(&spec).await.unwrap();
    let rec = f
        .client
        .wait("fleet", Some(Duration::from_secs(120)))
        .await
        .unwrap();
    assert_eq!(rec.state, JobState::Done, "{:?}", rec.error);
    let plan = rec.plan.clone().unwrap();
    assert_eq!(plan.segments.len(), 12);
    assert_eq!(plan.chunk_segments, 12, "one task for one slot");
    let started = segment_tasks_started(&f.events("fleet").await);
    assert_eq!(started.len(), 1, "{started:?}");
    wait_for(
        Duration::from_secs(10),
        "a pace in the heartbeat",
        || async {
            f.client
                .workers()
                .await
                .is_ok_and(|w| w.iter().any(|h| h.speed > 0.0))
        },
    )
    .await;
}

/// SIGTERM while a job is being planned: the drain lets the probe finish
/// and the plan land, instead of dropping the work for another worker to
/// probe again.
#[tokio::test(flavor = "multi_thread")]
async fn drain_waits_for_a_plan_in_progress() {
    let f = Fixture::new().await;
    let src = f.clip("slow-probe.mp4", 4.0, 320, 180);
    let mut w = WorkerProc::start(
        &f.server.url(),
        "planner",
        f.root(),
        &["--slots", "0", "--drain-timeout", "20"],
        &[("JETCODE_FAILPOINT_SLOW", "probe:3")],
    );
    f.client
        .submit(&f.spec(
            "planned-on-drain",
            &src,
            serde_json::json!(["h264-240p"]),
            2.0,
        ))
        .await
        .unwrap();
    let worker = w.child.id();
    wait_until(Duration::from_secs(30), "the probe running", || {
        children_of(worker)
            .iter()
            .any(|c| c.contains("media probe"))
    });
    w.signal(libc::SIGTERM);
    assert!(w.wait_exit(Duration::from_secs(40)).success());
    let rec = f.client.status("planned-on-drain").await.unwrap();
    assert!(rec.plan.is_some(), "planned before exit: {rec:?}");
}

/// A dead-letter advisory for a task of a job that has no record (purged
/// by hand) cannot be handled, ever: it is dropped after a bounded number
/// of tries instead of being redelivered forever.
#[tokio::test(flavor = "multi_thread")]
async fn dead_letter_of_an_unknown_job_is_dropped_after_bounded_tries() {
    use async_nats::jetstream;
    use jetcode::subjects;
    let f = Fixture::new().await;
    let _w = f.worker("dead-letters", &["--slots", "0"]);
    let js = jetstream::new(f.client.nats().clone());
    let seq = js
        .publish(
            subjects::task(
                subjects::PriorityClass::Normal,
                subjects::TaskKind::Segment,
                "ghost",
            ),
            "not a task".into(),
        )
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;
    let advisory = serde_json::json!({
        "type": "io.nats.jetstream.advisory.v1.max_deliver",
        "stream": subjects::TASKS_STREAM,
        "stream_seq": seq,
        "deliveries": 5,
    });
    js.publish(
        subjects::dead_letter_subjects()[0].clone(),
        advisory.to_string().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    wait_for(Duration::from_secs(60), "the advisory dropped", || {
        let js = js.clone();
        async move {
            let Ok(mut c) = js
                .get_consumer_from_stream::<jetstream::consumer::pull::Config, _, _>(
                    subjects::DEAD_LETTER_CONSUMER,
                    subjects::DEAD_STREAM,
                )
                .await
            else {
                return false;
            };
            c.info().await.is_ok_and(|i| {
                i.num_pending == 0 && i.num_ack_pending == 0 && i.ack_floor.stream_sequence >= 1
            })
        }
    })
    .await;
    // Still on record in the dead-letter stream; only the asking stopped.
    let mut dead = js.get_stream(subjects::DEAD_STREAM).await.unwrap();
    assert_eq!(dead.info().await.unwrap().state.messages, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn job_completes_when_its_events_cannot_be_published() {
    let f = Fixture::new().await;
    let src = f.clip("in.mp4", 4.0, 320, 180);
    let _w = f.worker("w", &["--retry-backoff", "0.2"]);
    wait_worker_live(&f, "w").await;
    // Events are telemetry: a stream that refuses every one of them must
    // not stop the work (the record tells how the job ended).
    let js = async_nats::jetstream::new(f.client.nats().clone());
    let mut events = js
        .get_stream(jetcode::subjects::EVENTS_STREAM)
        .await
        .unwrap();
    let mut cfg = events.info().await.unwrap().config.clone();
    cfg.max_message_size = 1;
    js.update_stream(&cfg).await.unwrap();
    let spec = f.spec(
        "muted",
        &src,
        serde_json::json!([small("r180", 180, "ultrafast")]),
        2.0,
    );
    f.client.submit(&spec).await.unwrap();
    let rec = f
        .client
        .wait("muted", Some(Duration::from_secs(120)))
        .await
        .expect("job completes without events");
    assert_eq!(rec.state, JobState::Done);
    assert_outputs(&f.out("muted"), &src, &["r180"]);
    assert!(f.events("muted").await.is_empty(), "events were refused");
}

/// A package upgrade replaces the binary under running workers: their
/// children must still start (from the running binary, so they match
/// their worker's version) instead of failing every task.
#[tokio::test(flavor = "multi_thread")]
async fn workers_keep_encoding_after_their_binary_is_replaced() {
    let f = Fixture::new().await;
    let bin = f.root().join("jetcode-installed");
    std::fs::copy(jetcode_bin(), &bin).unwrap();
    let _w = WorkerProc::start_bin(&bin, &f.server.url(), "upgraded", f.root(), &[], &[]);
    wait_for(Duration::from_secs(30), "worker live", || async {
        f.client.workers().await.is_ok_and(|w| w.len() == 1)
    })
    .await;
    // What a package manager does: the new file renamed over the old path.
    let staged = f.root().join("jetcode-installed.new");
    std::fs::write(&staged, b"#!/bin/sh\nexit 3\n").unwrap();
    std::fs::rename(&staged, &bin).unwrap();
    let src = f.clip("in.mp4", 4.0, 320, 180);
    let spec = f.spec(
        "after-upgrade",
        &src,
        serde_json::json!([small("r180", 180, "ultrafast")]),
        2.0,
    );
    f.client.submit(&spec).await.unwrap();
    let rec = f
        .client
        .wait("after-upgrade", Some(Duration::from_secs(120)))
        .await
        .unwrap();
    assert_eq!(rec.state, JobState::Done);
    assert_outputs(&f.out("after-upgrade"), &src, &["r180"]);
}

/// A ladder decodes each segment once: one task per segment encodes every
/// rendition, and the decoder count its child reports (kept in each part's
/// checkpoint) is the segment's own frames, where a task per rendition
/// would decode the segment once per rung. Frames stay exact.
#[tokio::test(flavor = "multi_thread")]
async fn ladder_job_decodes_each_segment_once() {
    let f = Fixture::new().await;
    // Keyframes every 2 s (testclip) and 2 s segments: every segment starts
    // on a keyframe, so its decode needs no earlier frame.
    let src = f.clip("ladder.mp4", 10.0, 640, 360);
    let rungs = ["r360", "r240", "r144"];
    let mut spec = f.spec(
        "ladder",
        &src,
        serde_json::json!([
            small("r360", 360, "ultrafast"),
            small("r240", 240, "ultrafast"),
            small("r144", 144, "ultrafast")
        ]),
        2.0,
    );
    spec.chunk_seconds = Some(2.0); // one task per segment
    f.client.submit(&spec).await.unwrap();
    let _w = f.worker("w1", &[]);
    let rec = f
        .client
        .wait("ladder", Some(Duration::from_secs(120)))
        .await
        .unwrap();
    assert_eq!(rec.state, JobState::Done, "{:?}", rec.error);
    let plan = rec.plan.clone().unwrap();
    assert_eq!(
        rec.tasks_total as usize,
        plan.segments.len() * rungs.len() + 1
    );

    let evs = f.events("ladder").await;
    let started = segment_tasks_started(&evs);
    assert_eq!(
        started.len(),
        plan.segments.len(),
        "one task per segment: {started:?}"
    );
    let parts_done = task_done_counts(&evs);

    let js = async_nats::jetstream::new(f.client.nats().clone());
    let kv = js
        .get_key_value(jetcode::subjects::PROGRESS_BUCKET)
        .await
        .unwrap();
    let mut decoded_total = 0;
    for s in &plan.segments {
        let mut decoded = HashSet::new();
        for r in rungs {
            let part = jetcode::task::Task::segment_id(r, s.index);
            assert_eq!(parts_done.get(&part), Some(&1), "{part} done once");
            let bytes = kv
                .get(jetcode::subjects::progress_key("ladder", &part))
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("checkpoint of {part}"));
            let done: jetcode::record::TaskDone = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(done.frames, s.frames(), "{part}");
            decoded.insert(done.decoded.expect("the child's decoder count"));
        }
        assert_eq!(
            decoded.len(),
            1,
            "segment {}: one decode for all parts",
            s.index
        );
        let d = decoded.into_iter().next().unwrap();
        assert!(
            d >= s.frames() && d < s.frames() + 3,
            "segment {} decoded {d} frames for {} of its own",
            s.index,
            s.frames()
        );
        decoded_total += d;
    }
    let frames = ffprobe_frames(&src);
    assert!(decoded_total < frames + 3 * plan.segments.len() as u64);
    assert_outputs(&f.out("ladder"), &src, &rungs);
}

/// Long chunks, short HLS segments: a job with `chunk_seconds` 12 and
/// `segment_seconds` 4 runs one task per chunk, each encoding its three
/// segments in one run; every part (HLS segment) is its segment's frames,
/// starts with an IDR, and the playlist lists 4 s segments. Frames exact.
#[tokio::test(flavor = "multi_thread")]
async fn chunked_encode_cuts_hls_segments_at_forced_idrs() {
    let f = Fixture::new().await;
    let src = f.clip("chunks.mp4", 24.0, 320, 240);
    let mut spec = f.spec(
        "chunks",
        &src,
        // veryfast has B-frames: the forced IDR's decode time precedes its
        // presentation time, which the cut must not trip over.
        serde_json::json!([
            small("r240", 240, "veryfast"),
            small("r120", 120, "veryfast")
        ]),
        4.0,
    );
    spec.chunk_seconds = Some(12.0);
    f.client.submit(&spec).await.unwrap();
    let _w = f.worker("w1", &[]);
    let rec = f
        .client
        .wait("chunks", Some(Duration::from_secs(120)))
        .await
        .unwrap();
    assert_eq!(rec.state, JobState::Done, "{:?}", rec.error);
    let plan = rec.plan.clone().unwrap();
    assert_eq!(plan.segments.len(), 6);
    assert_eq!(plan.chunk_segments, 3);
    let evs = f.events("chunks").await;
    let started = segment_tasks_started(&evs);
    assert_eq!(started.len(), 2, "one task per chunk: {started:?}");

    let out = f.out("chunks");
    for r in ["r240", "r120"] {
        for s in &plan.segments {
            let part = out.join(jetcode::subjects::part_key(r, s.index));
            assert_part_starts_with_keyframe(&part, s.frames());
        }
        let playlist = std::fs::read_to_string(out.join(format!("hls/{r}.m3u8"))).unwrap();
        let durations: Vec<f64> = playlist
            .lines()
            .filter_map(|l| l.strip_prefix("#EXTINF:"))
            .map(|d| d.trim_end_matches(',').parse().unwrap())
            .collect();
        assert_eq!(durations.len(), 6, "{playlist}");
        assert!(
            durations.iter().all(|d| (d - 4.0).abs() < 0.05),
            "{durations:?}"
        );
    }
    assert_outputs(&out, &src, &["r240", "r120"]);
}

/// Priority classes: with the one encoding slot started after both jobs
/// are queued, a high-priority job submitted after a low-priority one
/// starts first and ends first, while the low one still gets a slot
/// before the high one's work runs out (weighted, not strict) and ends.
#[tokio::test(flavor = "multi_thread")]
async fn high_priority_job_overtakes_a_queued_low_one() {
    use async_nats::jetstream::{self, consumer::PullConsumer};
    use jetcode::subjects::{self, PriorityClass};
    let f = Fixture::new().await;
    let src = f.clip("in.mp4", 8.0, 160, 120);
    // Plans only: both jobs' tasks are queued before any slot pulls.
    let _planner = f.worker("planner", &["--slots", "0"]);
    for (id, priority) in [("low", 1), ("high", 8)] {
        let mut spec = f.spec(
            id,
            &src,
            serde_json::json!([small("r120", 120, "ultrafast")]),
            2.0,
        );
        spec.priority = Some(priority);
        f.client.submit(&spec).await.unwrap();
    }
    let js = jetstream::new(f.client.nats().clone());
    let mut totals = HashMap::new();
    for id in ["low", "high"] {
        wait_for(
            Duration::from_secs(60),
            "job planned and queued",
            || async {
                let Ok(rec) = f.client.status(id).await else {
                    return false;
                };
                let queued = jetcode::dispatch::queued(&js, id).await.map(|q| q.0);
                rec.tasks_total > 0 && queued.is_ok_and(|q| q == rec.tasks_total as u64)
            },
        )
        .await;
        totals.insert(id, f.client.status(id).await.unwrap().tasks_total as u64);
    }
    // Each job's tasks wait in its class's consumer.
    for (class, id) in [(PriorityClass::High, "high"), (PriorityClass::Low, "low")] {
        let mut c: PullConsumer = js
            .get_consumer_from_stream(class.consumer(), subjects::TASKS_STREAM)
            .await
            .unwrap();
        assert_eq!(c.info().await.unwrap().num_pending, totals[id], "{id}");
    }

    let _w = f.worker("w", &["--no-planner"]);
    for id in ["high", "low"] {
        let rec = f
            .client
            .wait(id, Some(Duration::from_secs(240)))
            .await
            .unwrap();
        assert_eq!(rec.state, JobState::Done, "{id}");
    }

    // (time, job, task) of every start, and each job's end.
    let mut starts = Vec::new();
    let mut ends = HashMap::new();
    for id in ["high", "low"] {
        for e in f.events(id).await {
            match e.kind {
                EventKind::TaskStarted { task, .. } => starts.push((e.time, id, task)),
                EventKind::Done { .. } => {
                    ends.insert(id, e.time);
                }
                _ => {}
            }
        }
    }
    starts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let order: Vec<String> = starts.iter().map(|(_, j, t)| format!("{j}/{t}")).collect();
    assert_eq!(starts[0].1, "high", "first start: {order:?}");
    assert!(ends["high"] < ends["low"], "high ended first: {order:?}");
    let last_high_work = starts
        .iter()
        .filter(|(_, j, t)| *j == "high" && t != "stitch")
        .map(|s| s.0)
        .fold(f64::MIN, f64::max);
    assert!(
        starts
            .iter()
            .any(|(at, j, _)| *j == "low" && *at < last_high_work),
        "low got no slot while high was queued: {order:?}"
    );
}
