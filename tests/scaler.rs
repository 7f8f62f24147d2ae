//! The autoscaler with the local actuator against a real nats-server: a
//! burst of jobs grows the fleet from its minimum within an interval or
//! so, the fleet drains back once the queue is empty for the window, and
//! every job ends done with no task spending a delivery on the way down.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use jetcode::{EventKind, JobState};

async fn live_workers(f: &Fixture) -> usize {
    f.client
        .workers()
        .await
        .map(|w| w.iter().filter(|h| !h.draining).count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn burst_scales_up_then_drains_back_to_min() {
    let f = Fixture::new().await;
    let log = std::fs::File::create(f.root().join("scaler.log")).unwrap();
    let root = f.root().to_str().unwrap().to_string();
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let mut scaler = Command::new(jetcode_bin())
        .args([
            "scaler",
            "--metrics-addr",
            &metrics_addr,
            "--actuator",
            "local",
            "--min",
            "1",
            "--max",
            "3",
            "--interval",
            "1",
            "--scale-down-window",
            "4",
            "--target-tasks-per-worker",
            "2",
            "--stop-bound",
            "20",
            "--",
            "--slots",
            "1",
            "--file-root",
            &root,
            "--drain-timeout",
            "5",
        ])
        .env("NATS_URL", f.server.url())
        .env("JETCODE_LOG", "info,async_nats=warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(30), "the minimum fleet", || async {
        live_workers(&f).await == 1
    })
    .await;

    let src = f.clip("in.mp4", 12.0, 640, 360);
    let jobs = ["burst-a", "burst-b", "burst-c"];
    let submitted = Instant::now();
    for id in jobs {
        let spec = f.spec(
            id,
            &src,
            serde_json::json!([{"name": "r360", "height": 360, "crf": 26, "preset": "veryfast"}]),
            2.0,
        );
        f.client.submit(&spec).await.unwrap();
    }
    wait_for(Duration::from_secs(30), "the fleet grown", || async {
        live_workers(&f).await >= 2
    })
    .await;
    let grew_in = submitted.elapsed();
    let metrics = http_get_body(metrics_port, "/metrics").expect("scaler /metrics");
    assert!(
        metrics.contains("jetcode_scaler_decisions_total{reason=\"backlog\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("jetcode_scaler_workers_desired"),
        "{metrics}"
    );

    for id in jobs {
        let rec = f
            .client
            .wait(id, Some(Duration::from_secs(240)))
            .await
            .unwrap();
        assert_eq!(rec.state, JobState::Done, "{id}");
    }
    let idle_at = Instant::now();
    wait_for(
        Duration::from_secs(60),
        "the fleet back to its minimum",
        || async { f.client.workers().await.map(|w| w.len()).unwrap_or(0) == 1 },
    )
    .await;
    let shrank_in = idle_at.elapsed();

    // Scale-down drained workers: their tasks went back as fresh copies,
    // so no task was ever delivered twice.
    for id in jobs {
        for e in f.events(id).await {
            if let EventKind::TaskStarted { task, attempt, .. } = &e.kind {
                assert!(*attempt <= 1, "{id}/{task} delivered {attempt} times");
            }
        }
    }

    // SIGTERM: the scaler drains its workers and exits within its bound.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(scaler.id() as i32, libc::SIGTERM) };
    let status = wait_exit(&mut scaler, Duration::from_secs(40), "scaler exit");
    assert!(status.success(), "{status}");
    wait_for(Duration::from_secs(20), "no worker left", || async {
        f.client.workers().await.is_ok_and(|w| w.is_empty())
    })
    .await;
    eprintln!(
        "scaler: lag appeared -> second worker live in {:.1} s; idle -> back to min in {:.1} s",
        grew_in.as_secs_f64(),
        shrank_in.as_secs_f64()
    );
}

/// `jetcode local`: with no server answering it starts nats-server, applies
/// the topology, runs the minimum fleet; SIGTERM stops workers and server.
#[tokio::test(flavor = "multi_thread")]
async fn local_runs_server_topology_and_fleet_and_stops_them() {
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let log = std::fs::File::create(root.path().join("local.log")).unwrap();
    let mut local = Command::new(jetcode_bin())
        .args(["local", "--nats-url", &url, "--store"])
        .arg(root.path().join("nats"))
        .args([
            "--min",
            "1",
            "--max",
            "2",
            "--interval",
            "1",
            "--",
            "--slots",
            "1",
        ])
        .arg("--file-root")
        .arg(root.path())
        .env("NATS_SERVER_BIN", server_bin())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let client = async || {
        jetcode::Client::connect(&jetcode::ConnectOptions::new(url.clone()))
            .await
            .ok()
    };
    wait_for(
        Duration::from_secs(30),
        "a worker of the local fleet",
        || async {
            match client().await {
                Some(c) => c.workers().await.is_ok_and(|w| w.len() == 1),
                None => false,
            }
        },
    )
    .await;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(local.id() as i32, libc::SIGTERM) };
    let status = wait_exit(&mut local, Duration::from_secs(60), "jetcode local exit");
    assert!(status.success(), "{status}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nats-server stopped with it"
    );
    let root_path = root.path().display().to_string();
    assert!(
        processes_mentioning(&root_path).is_empty(),
        "no worker left"
    );
}

/// After a server restart the in-memory heartbeat bucket is gone until a
/// worker writes again: the scaler must still bring the fleet to its
/// minimum from the lag alone. Killed outright, it takes its workers with
/// it instead of leaving them to init.
#[tokio::test(flavor = "multi_thread")]
async fn scaler_starts_without_heartbeats_and_its_workers_die_with_it() {
    let f = Fixture::new().await;
    let js = async_nats::jetstream::new(f.client.nats().clone());
    js.delete_key_value(jetcode::subjects::WORKERS_BUCKET)
        .await
        .unwrap();
    let root = f.root().to_str().unwrap().to_string();
    let mut scaler = Command::new(jetcode_bin())
        .args([
            "scaler",
            "--min",
            "1",
            "--max",
            "2",
            "--interval",
            "1",
            "--",
        ])
        .args(["--slots", "1", "--file-root", &root])
        .env("NATS_URL", f.server.url())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(30), "the minimum fleet", || async {
        live_workers(&f).await == 1
    })
    .await;
    scaler.kill().unwrap();
    scaler.wait().unwrap();
    wait_until(Duration::from_secs(30), "the workers gone with it", || {
        processes_mentioning(&root).is_empty()
    });
}

/// `--min 0`: no worker runs while nothing waits. A submitted job is
/// counted as lag before any worker planned it (the planner consumer's
/// pending), so the first worker starts within an interval or so, plans
/// and runs the job; once idle for the window the fleet is zero again.
#[tokio::test(flavor = "multi_thread")]
async fn min_zero_scales_from_nothing_for_a_job_and_back_to_zero() {
    let f = Fixture::new().await;
    let root = f.root().to_str().unwrap().to_string();
    let log = std::fs::File::create(f.root().join("scaler.log")).unwrap();
    let metrics_port = free_port();
    let mut scaler = Command::new(jetcode_bin())
        .args([
            "scaler",
            "--metrics-addr",
            &format!("127.0.0.1:{metrics_port}"),
            "--min",
            "0",
            "--max",
            "2",
            "--interval",
            "1",
            "--scale-down-window",
            "3",
            "--stop-bound",
            "20",
            "--",
        ])
        .args(["--slots", "1", "--drain-timeout", "5", "--file-root", &root])
        .env("NATS_URL", f.server.url())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    // The scaler decides (an empty queue: zero workers) before anything
    // arrives.
    let src = f.clip("in.mp4", 4.0, 320, 180);
    wait_until(
        Duration::from_secs(20),
        "the scaler's first decision",
        || {
            http_get_body(metrics_port, "/metrics")
                .is_some_and(|m| m.contains("jetcode_scaler_workers_desired 0"))
        },
    );
    assert_eq!(live_workers(&f).await, 0, "no worker for an empty queue");

    let spec = f.spec(
        "from-zero",
        &src,
        serde_json::json!([{"name": "r180", "height": 180, "crf": 28, "preset": "ultrafast"}]),
        2.0,
    );
    let submitted = Instant::now();
    f.client.submit(&spec).await.unwrap();
    wait_for(Duration::from_secs(20), "a worker for the job", || async {
        live_workers(&f).await >= 1
    })
    .await;
    let started_in = submitted.elapsed();
    let rec = f
        .client
        .wait("from-zero", Some(Duration::from_secs(120)))
        .await
        .unwrap();
    assert_eq!(rec.state, JobState::Done, "{:?}", rec.error);
    wait_for(
        Duration::from_secs(60),
        "the fleet back to zero",
        || async { f.client.workers().await.is_ok_and(|w| w.is_empty()) },
    )
    .await;
    assert_eq!(
        processes_mentioning(&root),
        vec![scaler.id()],
        "no worker process left, only the scaler"
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(scaler.id() as i32, libc::SIGTERM) };
    let status = wait_exit(&mut scaler, Duration::from_secs(30), "scaler exit");
    assert!(status.success(), "{status}");
    eprintln!(
        "scaler from zero: job submitted -> first worker live in {:.1} s",
        started_in.as_secs_f64()
    );
}
