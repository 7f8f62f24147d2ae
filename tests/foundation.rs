//! Topology, submission and validation against a real nats-server.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::*;
use jetcode::{streams, subjects, Client, ErrorKind, JobSpec};

fn spec(id: Option<&str>) -> JobSpec {
    let mut s: JobSpec = serde_json::from_str(
        r#"{"source":"file:///srv/in/a.mp4","output":"file:///srv/out/a/","renditions":["h264-720p"]}"#,
    )
    .unwrap();
    s.id = id.map(String::from);
    s
}

async fn stream_messages(js: &jetstream::Context, name: &str) -> u64 {
    js.get_stream(name)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages
}

#[tokio::test]
async fn apply_is_idempotent_and_matches_server() {
    let server = NatsServer::start();
    let nc = jetcode::ConnectOptions::new(server.url())
        .connect()
        .await
        .unwrap();
    let js = jetstream::new(nc);
    let first = streams::apply(&js).await.unwrap();
    assert!(first.iter().all(|a| a.created), "{first:?}");
    let second = streams::apply(&js).await.unwrap();
    assert!(second.iter().all(|a| !a.created), "{second:?}");
    assert_eq!(first.len(), second.len());
    for want in streams::stream_configs() {
        let got = js
            .get_stream(&want.name)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .config
            .clone();
        assert_eq!(got.subjects, want.subjects, "{}", want.name);
        assert_eq!(got.retention, want.retention, "{}", want.name);
        assert_eq!(got.storage, want.storage, "{}", want.name);
        assert_eq!(got.duplicate_window, want.duplicate_window, "{}", want.name);
        assert_eq!(got.max_age, want.max_age, "{}", want.name);
    }
    for (stream, want) in streams::consumer_configs() {
        let mut c: jetstream::consumer::PullConsumer = js
            .get_consumer_from_stream(want.durable_name.clone().unwrap(), stream)
            .await
            .unwrap();
        let got = c.info().await.unwrap().config.clone();
        assert_eq!(got.ack_wait, want.ack_wait);
        assert_eq!(got.max_deliver, want.max_deliver);
        assert_eq!(got.filter_subject, want.filter_subject);
        assert_eq!(got.filter_subjects, want.filter_subjects);
    }
}

/// A topology applied by a release before priority classes (one `workers`
/// consumer on every task subject, a task queued under the old subject
/// shape): `apply` narrows `workers` to the normal class, adds the other
/// classes' consumers, and the old task is still delivered by `workers`.
#[tokio::test]
async fn apply_upgrades_a_single_consumer_topology_and_keeps_old_tasks() {
    use jetstream::consumer::{pull, AckPolicy, PullConsumer};
    let server = NatsServer::start();
    let nc = jetcode::ConnectOptions::new(server.url())
        .connect()
        .await
        .unwrap();
    let js = jetstream::new(nc);
    streams::apply(&js).await.unwrap();
    for name in [
        subjects::WORKERS_HIGH_CONSUMER,
        subjects::WORKERS_LOW_CONSUMER,
    ] {
        js.get_stream(subjects::TASKS_STREAM)
            .await
            .unwrap()
            .delete_consumer(name)
            .await
            .unwrap();
    }
    js.update_consumer_on_stream(
        pull::Config {
            durable_name: Some(subjects::WORKERS_CONSUMER.into()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: streams::TASK_ACK_WAIT,
            max_deliver: -1,
            max_ack_pending: 10_000,
            filter_subject: subjects::TASKS_ALL.into(),
            ..Default::default()
        },
        subjects::TASKS_STREAM,
    )
    .await
    .unwrap();
    js.publish("jetcode.tasks.segment.old-job", "old".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let applied = streams::apply(&js).await.unwrap();
    for name in [
        subjects::WORKERS_HIGH_CONSUMER,
        subjects::WORKERS_LOW_CONSUMER,
    ] {
        let want = format!("{}/{name}", subjects::TASKS_STREAM);
        assert!(
            applied.iter().any(|a| a.name == want && a.created),
            "{want} not created: {applied:?}"
        );
    }
    let workers: PullConsumer = js
        .get_consumer_from_stream(subjects::WORKERS_CONSUMER, subjects::TASKS_STREAM)
        .await
        .unwrap();
    let mut batch = workers
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    let msg = futures::StreamExt::next(&mut batch).await.unwrap().unwrap();
    assert_eq!(msg.subject.as_str(), "jetcode.tasks.segment.old-job");
    assert_eq!(
        jetcode::dispatch::queued(&js, "old-job").await.unwrap(),
        (1, 0),
        "an old-shape task is counted as its job's queued work"
    );
}

/// Tasks of every class and of the old subject shape are counted as their
/// job's, in the scaler's lag, and purged with the job, leaving others'.
#[tokio::test]
async fn queued_lag_and_purge_cover_every_class() {
    use jetcode::subjects::{PriorityClass, TaskKind};
    let server = NatsServer::start();
    let nc = connect_applied(&server).await;
    let js = jetstream::new(nc);
    let mut subjects_of_a: Vec<String> = PriorityClass::ALL
        .into_iter()
        .flat_map(|c| {
            [TaskKind::Segment, TaskKind::Audio, TaskKind::Stitch]
                .into_iter()
                .map(move |k| subjects::task(c, k, "a"))
        })
        .collect();
    subjects_of_a.push("jetcode.tasks.segment.a".into());
    subjects_of_a.push("jetcode.tasks.stitch.a".into());
    let others = [
        subjects::task(PriorityClass::High, TaskKind::Segment, "b"),
        subjects::task(PriorityClass::Low, TaskKind::Stitch, "a-b"),
        "jetcode.tasks.audio.b".to_string(),
    ];
    for s in subjects_of_a.iter().chain(others.iter()) {
        js.publish(s.clone(), "t".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    assert_eq!(jetcode::dispatch::queued(&js, "a").await.unwrap(), (7, 4));
    assert_eq!(jetcode::dispatch::queued(&js, "b").await.unwrap(), (2, 0));
    assert_eq!(jetcode::scaler::lag(&js).await.unwrap(), 14);
    jetcode::dispatch::purge(&js, "a").await.unwrap();
    assert_eq!(jetcode::dispatch::queued(&js, "a").await.unwrap(), (0, 0));
    assert_eq!(jetcode::dispatch::queued(&js, "b").await.unwrap(), (2, 0));
    assert_eq!(jetcode::dispatch::queued(&js, "a-b").await.unwrap(), (0, 1));
    assert_eq!(stream_messages(&js, subjects::TASKS_STREAM).await, 3);
}

#[test]
fn stream_json_files_equal_code() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("streams");
    for (name, want) in streams::config_files() {
        let path = dir.join(&name);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run `just streams-json`)", path.display()));
        let got: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            got,
            want,
            "{} is stale: run `just streams-json`",
            path.display()
        );
    }
}

#[tokio::test]
async fn refuses_server_without_jetstream() {
    // A plain server (no -js) must be refused with a clear one-line reason.
    let server = NatsServer::start_plain();
    let err = jetcode::ConnectOptions::new(server.url())
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ServerUnsupported);
    assert!(err.to_string().contains("JetStream"), "{err}");
}

#[tokio::test]
async fn submit_dedupes_by_id_and_names_anonymous_jobs() {
    let server = NatsServer::start();
    let nc = connect_applied(&server).await;
    let js = jetstream::new(nc.clone());
    let client = Client::from_nats(nc.clone()).await.unwrap();

    let id = client.submit(&spec(Some("trailer-42"))).await.unwrap();
    assert_eq!(id.0, "trailer-42");
    let again = client.submit(&spec(Some("trailer-42"))).await.unwrap();
    assert_eq!(again.0, "trailer-42");
    assert_eq!(
        stream_messages(&js, subjects::JOBS_STREAM).await,
        1,
        "duplicate submit stored twice"
    );

    // Anonymous specs get fresh time-ordered ids: never a reused one.
    let anon = client.submit(&spec(None)).await.unwrap();
    let anon2 = client.submit(&spec(None)).await.unwrap();
    assert!(anon.0.starts_with("job-") && anon.0.len() == 30, "{anon}");
    assert_ne!(anon, anon2);
    assert_eq!(stream_messages(&js, subjects::JOBS_STREAM).await, 3);

    // Raw NATS publish of JSON, as `nats req jetcode.jobs.submit` does.
    let raw = r#"{"id":"raw-1","source":"file:///srv/in/b.mp4","output":"file:///srv/out/b/","renditions":["h264-480p"]}"#;
    let reply = nc.request(subjects::JOBS_SUBMIT, raw.into()).await.unwrap();
    let ack: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(ack["stream"], subjects::JOBS_STREAM, "{ack}");
    assert_eq!(stream_messages(&js, subjects::JOBS_STREAM).await, 4);

    // Streams recreated (a rebuilt cluster): fresh ids still never repeat.
    js.delete_stream(subjects::JOBS_STREAM).await.unwrap();
    streams::apply(&js).await.unwrap();
    for _ in 0..3 {
        let id = client.submit(&spec(None)).await.unwrap();
        assert!(id != anon && id != anon2, "{id} reused after recreate");
    }

    // A taken id (it has a record) refuses another spec, accepts its own.
    let own = spec(Some("taken"));
    let rec =
        jetcode::JobRecord::unplanned("taken", Some(own.clone()), jetcode::JobState::Running, "");
    assert!(client.ledger().create_record(&rec).await.unwrap());
    let mut other = own.clone();
    other.segment_seconds = Some(3.0);
    let err = client.submit(&other).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidSpec);
    assert!(err.to_string().contains("different spec"), "{err}");
    assert_eq!(client.submit(&own).await.unwrap().0, "taken");
}

#[tokio::test]
async fn invalid_specs_are_refused_client_side() {
    let server = NatsServer::start();
    let nc = connect_applied(&server).await;
    let js = jetstream::new(nc.clone());
    let client = Client::from_nats(nc).await.unwrap();
    let mut bad_id = spec(Some("no spaces allowed"));
    let mut traversal = spec(None);
    traversal.source = "file:///srv/in/../../etc/passwd".into();
    let mut many = spec(None);
    many.renditions = vec![jetcode::RenditionSpec::Preset("h264-720p".into()); 10_000];
    bad_id.formats.clear();
    for (s, want) in [(bad_id, "id"), (traversal, ".."), (many, "limit")] {
        let err = client.submit(&s).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidSpec);
        assert!(err.to_string().contains(want), "{err}");
        assert!(!err.to_string().contains('\n'));
    }
    assert_eq!(
        stream_messages(&js, subjects::JOBS_STREAM).await,
        0,
        "nothing published"
    );
}

#[tokio::test]
async fn status_of_unknown_job_is_not_found() {
    let server = NatsServer::start();
    let nc = connect_applied(&server).await;
    let client = Client::from_nats(nc).await.unwrap();
    let err = client.status("nope").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let err = client
        .wait("nope", Some(Duration::from_millis(300)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
}

#[test]
fn cli_errors_are_one_line_and_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("job.json");
    std::fs::write(
        &f,
        r#"{"source":"file:///a","output":"file:///o/","renditions":["h264-720p"],"bogus":1}"#,
    )
    .unwrap();
    let out = std::process::Command::new(jetcode_bin())
        .arg("validate")
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("unknown field `bogus`"), "{err}");
    let out = std::process::Command::new(jetcode_bin())
        .args(["status", "x", "--nats-url", "nats://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("cannot connect"), "{err}");
}

#[tokio::test]
async fn auth_options_reach_the_server() {
    let server = NatsServer::start_with(&["--user", "producer", "--pass", "s3cret"]);
    let mut opts = jetcode::ConnectOptions::new(server.url());
    let err = opts.connect().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
    opts.user = Some("producer".into());
    opts.password = Some("s3cret".into());
    opts.connect().await.expect("user/password accepted");

    let server = NatsServer::start_with(&["--auth", "tok-123"]);
    let mut opts = jetcode::ConnectOptions::new(server.url());
    opts.token = Some("tok-123".into());
    opts.connect().await.expect("token accepted");

    let mut opts = jetcode::ConnectOptions::new(server.url());
    opts.creds = Some("/nonexistent/x.creds".into());
    let err = opts.connect().await.unwrap_err();
    assert!(err.to_string().contains("creds"), "{err}");
}

#[tokio::test]
async fn comma_separated_seed_list_connects_past_a_dead_seed() {
    let server = NatsServer::start();
    let dead = free_port();
    let url = format!("nats://127.0.0.1:{dead}, {}", server.url());
    let nc = jetcode::ConnectOptions::new(url)
        .connect()
        .await
        .expect("second seed is up");
    assert!(nc.server_info().jetstream);
}
