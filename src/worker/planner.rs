//! Planner role: job spec in, job record + tasks out, ack last.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};

use super::supervise::{self, ChildSpec, Limits, Outcome};
use super::Worker;
use crate::error::{Error, Result};
use crate::job::{valid_id, JobSpec};
use crate::plan::{self, PlanOptions, SourceFacts};
use crate::record::{now, EventKind, JobRecord, JobState};
use crate::subjects::{self, TaskKind};
use crate::task::{Task, TaskBody, AUDIO_TASK_ID};

/// A probe may take this long (it scans the whole file's packets).
const PROBE_TIMEOUT: Duration = Duration::from_secs(600);

pub(super) async fn planner_loop(w: Arc<Worker>, consumer: PullConsumer) {
    while let Some(mut batch) = super::next_batch(&w, &consumer, 1, "planner").await {
        while let Some(Ok(msg)) = batch.next(&w.shutdown).await {
            if w.shutdown.is_cancelled() {
                let _ = msg.ack_with(AckKind::Nak(None)).await;
                continue;
            }
            match plan_one(&w, &msg).await {
                Ok(()) => {
                    let _ = msg.double_ack().await;
                }
                Err(e) => {
                    // NATS trouble mid-plan: try again later; planning is idempotent.
                    tracing::warn!("planning failed, will retry: {e}");
                    let _ = msg
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(2))))
                        .await;
                }
            }
        }
    }
}

/// Plan one submitted spec. `Ok` means "handled" (planned or rejected with a
/// recorded reason); `Err` means "retry later".
async fn plan_one(w: &Worker, msg: &jetstream::Message) -> Result<()> {
    let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
    let payload = &msg.payload;
    let spec = match JobSpec::from_json(payload) {
        Ok(s) => s,
        Err(invalid) => {
            let id = raw_id(payload).unwrap_or_else(|| format!("job-{seq}"));
            metrics::counter!(crate::metrics::JOBS_PLANNED, crate::metrics::LABEL_OUTCOME => "rejected").increment(1);
            tracing::warn!(job = %id, "rejected: {invalid}");
            return reject(w, &id, None, invalid.to_string()).await;
        }
    };
    let id = spec.id.clone().unwrap_or_else(|| format!("job-{seq}"));

    if resume_recorded(w, &id, &spec).await? {
        return Ok(());
    }

    let source = match w.roots.source_path(&spec.source) {
        Ok(p) => p,
        Err(e) => return reject(w, &id, Some(spec), e.to_string()).await,
    };
    if let Err(e) = w.roots.output_dir(&spec.output) {
        return reject(w, &id, Some(spec), e.to_string()).await;
    }
    let work = serde_json::to_string(&source).unwrap_or_default();
    let outcome = supervise::run(ChildSpec {
        kind: "probe",
        work,
        limits: Limits {
            stall: PROBE_TIMEOUT,
            total: PROBE_TIMEOUT,
            memory: w.args.child_memory(),
        },
        msg: Some(msg),
        stop: w.abort.child_token(),
        on_frames: &|_| {},
    })
    .await;
    let facts: SourceFacts = match outcome {
        Outcome::Done { summary, .. } => match serde_json::from_value(summary) {
            Ok(f) => f,
            Err(e) => {
                return reject(w, &id, Some(spec), format!("probe returned bad facts: {e}")).await
            }
        },
        Outcome::Failed {
            reason,
            permanent: true,
        } => return reject(w, &id, Some(spec), format!("cannot read source: {reason}")).await,
        Outcome::Failed { reason, .. } => {
            return Err(Error::new(
                crate::error::ErrorKind::Storage,
                format!("probe: {reason}"),
            ))
        }
        Outcome::Stopped => {
            return Err(Error::new(
                crate::error::ErrorKind::Storage,
                "worker stopping",
            ))
        }
    };
    let opts = PlanOptions {
        target_seconds: spec.segment_seconds(),
        ..Default::default()
    };
    let p = match plan::plan(&facts, &opts) {
        Ok(p) => p,
        Err(e) => return reject(w, &id, Some(spec), e.to_string()).await,
    };
    let renditions = spec.resolved_renditions()?.len() as u32;
    let tasks_total = p.segments.len() as u32 * renditions + u32::from(p.has_audio);
    let t = now();
    let rec = JobRecord {
        id: id.clone(),
        spec: Some(spec.clone()),
        state: JobState::Running,
        plan: Some(p.clone()),
        tasks_total,
        error: None,
        output: Some(spec.output.clone()),
        created_at: t,
        updated_at: t,
        finished_at: None,
    };
    if !w.ledger.create_record(&rec).await? {
        // Someone recorded this job while we probed (a redelivered copy, or
        // the dead-letter role failing it): theirs stands.
        resume_recorded(w, &id, &spec).await?;
        return Ok(());
    }
    publish_tasks(w, &id, &spec, &p).await?;
    w.ledger
        .event(
            &id,
            EventKind::Planned {
                segments: p.segments.len() as u32,
                renditions,
                tasks: tasks_total,
                frames: p.frames,
            },
        )
        .await?;
    metrics::counter!(crate::metrics::JOBS_PLANNED, crate::metrics::LABEL_OUTCOME => "planned")
        .increment(1);
    tracing::info!(job = %id, segments = p.segments.len(), tasks = tasks_total, "planned");
    Ok(())
}

/// If `id` already has a record, make sure a running one has its tasks
/// published and return true. Redelivered after a crash mid-plan, or a
/// resubmit: publishing the same tasks again is harmless (Msg-Id dedupe,
/// checkpoints).
async fn resume_recorded(w: &Worker, id: &str, spec: &JobSpec) -> Result<bool> {
    let Some((rec, _)) = w.ledger.record(id).await? else {
        return Ok(false);
    };
    if rec.state == JobState::Running {
        if let Some(p) = &rec.plan {
            publish_tasks(w, id, spec, p).await?;
        }
    }
    Ok(true)
}

/// The id a malformed spec asked for, if it is a valid one.
pub(super) fn raw_id(payload: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let id = v.get("id")?.as_str()?;
    valid_id(id).then(|| id.to_string())
}

/// Record a refused job as failed with its reason, and tell watchers.
pub(super) async fn reject(
    w: &Worker,
    id: &str,
    spec: Option<JobSpec>,
    reason: String,
) -> Result<()> {
    let t = now();
    let rec = JobRecord {
        id: id.to_string(),
        output: spec.as_ref().map(|s| s.output.clone()),
        spec,
        state: JobState::Failed,
        plan: None,
        tasks_total: 0,
        error: Some(reason.clone()),
        created_at: t,
        updated_at: t,
        finished_at: Some(t),
    };
    // An existing record (e.g. a bad resubmit of a good job's id) is left alone.
    if w.ledger.create_record(&rec).await? {
        w.ledger.event(id, EventKind::Failed { reason }).await?;
    }
    Ok(())
}

/// Publish every segment and audio task with its Msg-Id.
async fn publish_tasks(w: &Worker, id: &str, spec: &JobSpec, p: &plan::Plan) -> Result<()> {
    let renditions = spec.resolved_renditions()?;
    let mut tasks = Vec::new();
    for s in &p.segments {
        for r in &renditions {
            tasks.push(Task {
                job: id.to_string(),
                id: Task::segment_id(&r.name, s.index),
                source: spec.source.clone(),
                output: spec.output.clone(),
                body: TaskBody::Segment {
                    rendition: r.clone(),
                    segment: *s,
                    fps_num: p.fps_num,
                    fps_den: p.fps_den,
                    pts_offset_ns: p.pts_offset_ns,
                },
            });
        }
    }
    if p.has_audio {
        tasks.push(Task {
            job: id.to_string(),
            id: AUDIO_TASK_ID.into(),
            source: spec.source.clone(),
            output: spec.output.clone(),
            body: TaskBody::Audio,
        });
    }
    // Segments are published in time order, interleaving renditions, so the
    // first minutes of every rendition are ready first.
    let mut acks = Vec::new();
    for t in &tasks {
        acks.push(publish_task(&w.js, t).await?);
    }
    for a in acks {
        a.await.map_err(|e| Error::js("publish task", e))?;
    }
    Ok(())
}

/// Publish one task with Msg-Id `<job>.<task>`; returns the pending ack.
pub(super) async fn publish_task(
    js: &jetstream::Context,
    t: &Task,
) -> Result<jetstream::context::PublishAckFuture> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        subjects::task_msg_id(&t.job, &t.id).as_str(),
    );
    let kind: TaskKind = t.kind();
    let body = serde_json::to_vec(t).unwrap_or_default();
    js.publish_with_headers(subjects::task(kind, &t.job), headers, body.into())
        .await
        .map_err(|e| Error::js("publish task", e))
}
