//! Stream, consumer and bucket definitions, and `streams apply`.
//!
//! The JSON files under `streams/` are these definitions serialised; a test
//! keeps them equal, so `nats stream add --config streams/JETCODE_TASKS.json`
//! builds the same stream as `jetcode streams apply`.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};

use crate::error::{Error, Result};
use crate::subjects::*;

/// How long a task may go without an ack or progress ack before
/// redelivery: how fast a killed or frozen worker's task comes back.
/// Workers progress-ack every [`PROGRESS_ACK_EVERY`] while a child lives.
pub const TASK_ACK_WAIT: Duration = Duration::from_secs(10);
/// How often a worker tells the server it is still on a task; a third of
/// [`TASK_ACK_WAIT`], so two lost acks in a row do not cause a redelivery.
pub const PROGRESS_ACK_EVERY: Duration = Duration::from_secs(3);
/// Time-to-live of a lease in [`LEASES_BUCKET`]: a dead reconciler's lease
/// is free after this long.
pub const LEASE_TTL: Duration = Duration::from_secs(30);
/// Attempts a task (or a spec's planning) gets before its job fails.
/// Enforced by the workers, not by the server: the consumers have no
/// max_deliver, so a message is never left in a work queue undeliverable
/// with only a one-shot MAX_DELIVERIES advisory (a core message, lost if
/// nothing stores it at that moment) to tell about it. The delivery after
/// the last attempt goes to a live worker, which records the failure (or
/// completes the task if its last attempt checkpointed) and only then
/// terminates the message.
pub const TASK_MAX_DELIVER: i64 = 5;
/// How long a job spec may be planned before redelivery.
pub const PLANNER_ACK_WAIT: Duration = Duration::from_secs(60);
/// Window in which a repeated Msg-Id is dropped as a duplicate.
pub const DEDUPE_WINDOW: Duration = Duration::from_secs(3600);
/// Heartbeats older than this are gone: the worker is dead.
pub const HEARTBEAT_MAX_AGE: Duration = Duration::from_secs(15);

/// The four streams, in apply order.
pub fn stream_configs() -> Vec<stream::Config> {
    vec![
        stream::Config {
            name: JOBS_STREAM.into(),
            description: Some("Submitted job specs; consumed once by the planner".into()),
            subjects: vec![JOBS_SUBMIT.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: DEDUPE_WINDOW,
            // Hard cap well above the spec limit: oversized specs still reach
            // the planner, which records why they were refused.
            max_message_size: 1024 * 1024,
            ..Default::default()
        },
        stream::Config {
            name: TASKS_STREAM.into(),
            description: Some("Segment, audio and stitch tasks".into()),
            subjects: vec![TASKS_ALL.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: DEDUPE_WINDOW,
            max_message_size: 4 * 1024 * 1024,
            ..Default::default()
        },
        stream::Config {
            name: EVENTS_STREAM.into(),
            description: Some("Job lifecycle and progress events".into()),
            subjects: vec![EVENTS_ALL.into()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(7 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        },
        stream::Config {
            name: DEAD_STREAM.into(),
            description: Some(
                "Advisories of tasks that exhausted deliveries or were terminated, and of specs the planner gave up on".into(),
            ),
            subjects: dead_letter_subjects(),
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(30 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        },
    ]
}

/// The task consumer of one priority class. All classes share the ack
/// settings; their filters partition the task subjects.
fn task_consumer(class: PriorityClass) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(class.consumer().into()),
        description: Some(format!(
            "All workers pull {} priority tasks by free slots",
            class.as_str()
        )),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: TASK_ACK_WAIT,
        max_deliver: -1,
        max_ack_pending: 10_000,
        filter_subjects: class.filter_subjects(),
        ..Default::default()
    }
}

/// Durable pull consumers: (stream, config), in apply order. Of the task
/// consumers `workers` (the normal class) comes first: on an upgrade from
/// one task consumer, `apply` must narrow `workers` from every task
/// subject to its class before the work-queue stream accepts another task
/// consumer (their filters may not overlap).
pub fn consumer_configs() -> Vec<(&'static str, consumer::pull::Config)> {
    let mut tasks: Vec<_> = PriorityClass::ALL
        .into_iter()
        .map(|c| (TASKS_STREAM, task_consumer(c)))
        .collect();
    // `workers` first (see above).
    tasks.sort_by_key(|(_, c)| c.durable_name.as_deref() != Some(WORKERS_CONSUMER));
    let mut all = vec![
        (
            JOBS_STREAM,
            consumer::pull::Config {
                durable_name: Some(PLANNER_CONSUMER.into()),
                description: Some("Workers' planner role".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: PLANNER_ACK_WAIT,
                max_deliver: -1,
                filter_subject: JOBS_SUBMIT.into(),
                ..Default::default()
            },
        ),
        (
            DEAD_STREAM,
            consumer::pull::Config {
                durable_name: Some(DEAD_LETTER_CONSUMER.into()),
                description: Some("Workers fail the jobs of dead tasks".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: PLANNER_ACK_WAIT,
                // Handling is idempotent and fails only on NATS trouble:
                // never give up on a dead letter.
                max_deliver: -1,
                ..Default::default()
            },
        ),
    ];
    all.splice(1..1, tasks);
    all
}

/// The KV buckets.
pub fn bucket_configs() -> Vec<kv::Config> {
    vec![
        kv::Config {
            bucket: JOBS_BUCKET.into(),
            description: "job id -> JobRecord".into(),
            history: 5,
            storage: stream::StorageType::File,
            ..Default::default()
        },
        kv::Config {
            bucket: PROGRESS_BUCKET.into(),
            description: "<job>.<task> -> TaskDone: the checkpoint".into(),
            history: 1,
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(30 * 24 * 3600),
            ..Default::default()
        },
        kv::Config {
            bucket: LEASES_BUCKET.into(),
            description: "leases: one active reconciler in the fleet".into(),
            history: 1,
            storage: stream::StorageType::File,
            max_age: LEASE_TTL,
            ..Default::default()
        },
        kv::Config {
            bucket: WORKERS_BUCKET.into(),
            description: "worker id -> Heartbeat; absent = dead".into(),
            history: 1,
            storage: stream::StorageType::Memory,
            max_age: HEARTBEAT_MAX_AGE,
            ..Default::default()
        },
    ]
}

/// Open bucket `name`, creating it from its definition when it is missing
/// (a memory bucket is gone after a server restart; a worker must not go
/// silent because of that).
pub async fn ensure_bucket(js: &jetstream::Context, name: &str) -> Result<kv::Store> {
    if let Ok(kv) = js.get_key_value(name).await {
        return Ok(kv);
    }
    let cfg = bucket_configs()
        .into_iter()
        .find(|c| c.bucket == name)
        .ok_or_else(|| Error::js("open bucket", format!("{name} is not a jetcode bucket")))?;
    js.create_key_value(cfg)
        .await
        .map_err(|e| Error::js(&format!("create bucket {name}"), e))
}

/// What `apply` did to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub name: String,
    pub created: bool,
}

/// Create or update every stream, consumer and bucket. Idempotent.
pub async fn apply(js: &jetstream::Context) -> Result<Vec<Applied>> {
    apply_replicated(js, 1).await
}

/// [`apply`] with `replicas` copies of every stream and bucket (3 on a
/// 3-node cluster: the loss of any one node loses no job, task, record or
/// checkpoint; with 1, killing the node that holds them leaves jobs
/// unreadable until it returns). Consumers follow their stream.
pub async fn apply_replicated(js: &jetstream::Context, replicas: usize) -> Result<Vec<Applied>> {
    let replicas = replicas.max(1);
    let mut done = Vec::new();
    for mut cfg in stream_configs() {
        cfg.num_replicas = replicas;
        let name = cfg.name.clone();
        let created = match js.get_stream(&name).await {
            Ok(_) => {
                js.update_stream(&cfg)
                    .await
                    .map_err(|e| Error::js(&format!("update stream {name}"), e))?;
                false
            }
            Err(_) => {
                js.create_stream(cfg)
                    .await
                    .map_err(|e| Error::js(&format!("create stream {name}"), e))?;
                true
            }
        };
        done.push(Applied { name, created });
    }
    for (stream_name, cfg) in consumer_configs() {
        let name = format!(
            "{stream_name}/{}",
            cfg.durable_name.clone().unwrap_or_default()
        );
        let durable = cfg.durable_name.clone().unwrap_or_default();
        let exists = js
            .get_consumer_from_stream::<consumer::pull::Config, _, _>(&durable, stream_name)
            .await
            .is_ok();
        if exists {
            js.update_consumer_on_stream(cfg, stream_name)
                .await
                .map_err(|e| Error::js(&format!("update consumer {name}"), e))?;
        } else {
            js.create_consumer_on_stream(cfg, stream_name)
                .await
                .map_err(|e| Error::js(&format!("create consumer {name}"), e))?;
        }
        done.push(Applied {
            name,
            created: !exists,
        });
    }
    for mut cfg in bucket_configs() {
        cfg.num_replicas = replicas;
        let name = cfg.bucket.clone();
        let created = match js.get_key_value(&name).await {
            Ok(_) => {
                js.update_key_value(cfg)
                    .await
                    .map_err(|e| Error::js(&format!("update bucket {name}"), e))?;
                false
            }
            Err(_) => {
                js.create_key_value(cfg)
                    .await
                    .map_err(|e| Error::js(&format!("create bucket {name}"), e))?;
                true
            }
        };
        done.push(Applied { name, created });
    }
    Ok(done)
}

/// The files under `streams/`: (file name, JSON). Streams as `<NAME>.json`,
/// consumers as `<STREAM>.<consumer>.consumer.json`.
pub fn config_files() -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    for cfg in stream_configs() {
        let v = serde_json::to_value(&cfg).unwrap_or_default();
        out.push((format!("{}.json", cfg.name), v));
    }
    for (stream_name, cfg) in consumer_configs() {
        let v = serde_json::to_value(&cfg).unwrap_or_default();
        let durable = cfg.durable_name.clone().unwrap_or_default();
        out.push((format!("{stream_name}.{durable}.consumer.json"), v));
    }
    out.push(("jobspec.schema.json".into(), crate::job::json_schema()));
    out
}
