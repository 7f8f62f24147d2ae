//! One task, start to finish: skip if checkpointed, run the child, place
//! the output durably, checkpoint, ack; then maybe publish the stitch.
//!
//! Order is the invariant: output durable -> checkpoint `create` -> ack. A
//! crash anywhere redoes the task into the same key or skips it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};

use super::supervise::{self, ChildSpec, Limits, Outcome};
use super::Worker;
use crate::error::{Error, ErrorKind, Result};
use crate::metrics as m;
use crate::record::{now, EventKind, JobState, TaskDone};
use crate::subjects::{self, TaskKind};
use crate::task::{AudioWork, SegmentWork, StitchWork, Task, TaskBody, STITCH_TASK_ID};

/// What to do with the message after the task ran.
enum Verdict {
    Ack,
    /// Retry later (transient failure).
    Retry(String),
    /// Never retry; fail the job with this reason.
    Fail(String),
    /// Handed back: another worker should take it now.
    HandBack,
}

pub(super) async fn handle(w: &Worker, msg: jetstream::Message) {
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
    if delivered > 1 {
        metrics::counter!(m::REDELIVERIES).increment(1);
    }
    let task: Task = match serde_json::from_slice(&msg.payload) {
        Ok(t) => t,
        Err(e) => {
            // The job id is the last subject token: fail it, or it would
            // wait for this task forever.
            let reason = format!("unreadable task on {}: {e}", msg.subject);
            tracing::error!("{reason}; terminating it");
            if let Some(job) = subjects::job_of_task_subject(msg.subject.as_str()) {
                fail_job_or_log(w, job, &reason).await;
            }
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
    };
    let kind = task.kind();
    let token = w.job_token(&task.job);
    let verdict = match run_task(w, &msg, &task, token.clone()).await {
        Ok(v) => v,
        Err(e) if e.kind() == ErrorKind::Storage => Verdict::Fail(e.to_string()),
        Err(e) => Verdict::Retry(e.to_string()),
    };
    w.release_job(&task.job);
    let outcome = match verdict {
        Verdict::Ack => {
            let _ = msg.double_ack().await;
            "ok"
        }
        Verdict::HandBack => {
            hand_back(&w.js, &msg).await;
            "handed_back"
        }
        Verdict::Retry(reason) if delivered < crate::streams::TASK_MAX_DELIVER => {
            tracing::warn!(job = %task.job, task = %task.id, delivered, "retrying: {reason}");
            let delay = Duration::from_secs(1u64 << delivered.clamp(0, 5) as u64);
            let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
            let _ = w
                .ledger
                .event(
                    &task.job,
                    EventKind::Retried {
                        task: task.id.clone(),
                        worker: w.id.clone(),
                        reason,
                    },
                )
                .await;
            "retried"
        }
        Verdict::Retry(reason) => {
            let reason = format!(
                "task {} gave up after {delivered} attempts: {reason}",
                task.id
            );
            fail_job_or_log(w, &task.job, &reason).await;
            let _ = msg.ack_with(AckKind::Term).await;
            "failed"
        }
        Verdict::Fail(reason) => {
            let reason = format!("task {}: {reason}", task.id);
            fail_job_or_log(w, &task.job, &reason).await;
            let _ = msg.ack_with(AckKind::Term).await;
            "failed"
        }
    };
    metrics::counter!(m::TASKS_TOTAL, m::LABEL_KIND => kind.as_str(), m::LABEL_OUTCOME => outcome)
        .increment(1);
}

/// Give a task to another worker now, without spending one of its
/// deliveries. JetStream counts a nak as a delivery, so a task handed back
/// by draining workers (scale-down) `max_deliver` times would be
/// dead-lettered although it never failed. A fresh copy starts at zero; the
/// original is acked only once the copy is stored. A crash in between
/// leaves both, and running a task twice is harmless (checkpoints).
pub(super) async fn hand_back(js: &jetstream::Context, msg: &jetstream::Message) {
    let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
    let original = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|v| v.as_str().to_string())
        .unwrap_or_else(|| msg.subject.to_string());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        subjects::handback_msg_id(&original, seq).as_str(),
    );
    let copy = async {
        js.publish_with_headers(msg.subject.clone(), headers, msg.payload.clone())
            .await
            .map_err(|e| e.to_string())?
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let stored = tokio::time::timeout(HAND_BACK_OP_BOUND, copy)
        .await
        .unwrap_or_else(|_| Err("timed out".into()));
    let settled = match stored {
        Ok(()) => tokio::time::timeout(HAND_BACK_OP_BOUND, msg.double_ack())
            .await
            .map(|r| r.map_err(|e| e.to_string())),
        Err(e) => {
            tracing::warn!(subject = %msg.subject, "hand-back copy not stored, naking: {e}");
            tokio::time::timeout(HAND_BACK_OP_BOUND, msg.ack_with(AckKind::Nak(None)))
                .await
                .map(|r| r.map_err(|e| e.to_string()))
        }
    };
    if !matches!(settled, Ok(Ok(()))) {
        // The ack deadline hands it to another worker instead.
        tracing::warn!(subject = %msg.subject, "hand-back not acknowledged by the server");
    }
}

/// Bound on each NATS step of a hand-back (it runs on the way out).
const HAND_BACK_OP_BOUND: Duration = Duration::from_secs(2);

/// [`fail_job`] where the caller has no way to retry (the message is
/// terminated anyway; its advisory reaches the dead-letter role, which does).
async fn fail_job_or_log(w: &Worker, job: &str, reason: &str) {
    if let Err(e) = fail_job(w, job, reason).await {
        tracing::warn!(job, "could not record the failure: {e}");
    }
}

/// Mark the job failed (if it is still running) and announce it.
pub(super) async fn fail_job(w: &Worker, job: &str, reason: &str) -> Result<()> {
    tracing::error!(job, "job failed: {reason}");
    let mut changed = false;
    let res = w
        .ledger
        .update_record(job, |r| {
            changed = r.state == JobState::Running;
            if changed {
                r.state = JobState::Failed;
                r.error = Some(reason.to_string());
                r.finished_at = Some(now());
            }
            changed
        })
        .await;
    res?;
    if changed {
        w.ledger
            .event(
                job,
                EventKind::Failed {
                    reason: reason.to_string(),
                },
            )
            .await?;
    }
    Ok(())
}

async fn run_task(
    w: &Worker,
    msg: &jetstream::Message,
    task: &Task,
    token: tokio_util::sync::CancellationToken,
) -> Result<Verdict> {
    let Some((rec, _)) = w.ledger.record(&task.job).await? else {
        return Ok(Verdict::Fail("job has no record".into()));
    };
    if rec.state.is_terminal() {
        // Cancelled or failed: drop its remaining work.
        return Ok(Verdict::Ack);
    }
    if w.ledger.is_done(&task.job, &task.id).await? {
        // Already checkpointed (a redelivery after a crash before the ack):
        // nothing to redo, but make sure completion was not lost.
        if task.kind() != TaskKind::Stitch {
            maybe_publish_stitch(w, task).await?;
        }
        return Ok(Verdict::Ack);
    }
    w.ledger
        .event(
            &task.job,
            EventKind::TaskStarted {
                task: task.id.clone(),
                worker: w.id.clone(),
                attempt: msg.info().map(|i| i.delivered as u64).unwrap_or(1),
            },
        )
        .await?;
    let out_dir = w.roots.output_dir(&task.output)?;
    // The child writes its output atomically (temp file, fsync, rename) to
    // the deterministic key, so a crash never leaves a partial part there.
    let (kind, work, seconds): (&str, String, f64) = match &task.body {
        TaskBody::Segment {
            rendition,
            segment,
            fps_num,
            fps_den,
            pts_offset_ns,
        } => {
            let work = SegmentWork {
                input: w.roots.source_path(&task.source)?,
                output: out_dir.join(subjects::part_key(&rendition.name, segment.index)),
                rendition: rendition.clone(),
                segment: *segment,
                fps_num: *fps_num,
                fps_den: *fps_den,
                pts_offset_ns: *pts_offset_ns,
            };
            ("segment", json(&work), segment.duration_ns() as f64 / 1e9)
        }
        TaskBody::Audio => {
            let work = AudioWork {
                input: w.roots.source_path(&task.source)?,
                output: out_dir.join(subjects::AUDIO_PART_KEY),
            };
            let secs = rec
                .plan
                .as_ref()
                .map_or(60.0, |p| p.audio_duration_ns as f64 / 1e9);
            ("audio", json(&work), secs)
        }
        TaskBody::Stitch {
            plan,
            renditions,
            formats,
        } => {
            let work = StitchWork {
                output_dir: out_dir.clone(),
                plan: plan.clone(),
                renditions: renditions.clone(),
                formats: formats.clone(),
            };
            let secs = plan.segments.last().map_or(0.0, |s| s.end_ns as f64 / 1e9);
            ("stitch", json(&work), secs)
        }
    };
    let limits = Limits {
        stall: w.args.stall(),
        total: Duration::from_secs_f64((seconds * w.args.task_timeout_factor).max(300.0)),
        memory: w.args.child_memory(),
    };
    let frames_counter = &w.frames;
    let on_frames = move |n: u64| {
        frames_counter.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(m::FRAMES_ENCODED).increment(n);
    };
    let outcome = supervise::run(ChildSpec {
        kind,
        work,
        limits,
        msg: Some(msg),
        stop: token.clone(),
        on_frames: &on_frames,
    })
    .await;
    let (frames, secs) = match outcome {
        Outcome::Done {
            frames, seconds, ..
        } => (frames, seconds),
        Outcome::Failed { reason, permanent } => {
            return Ok(if permanent {
                Verdict::Fail(reason)
            } else {
                Verdict::Retry(reason)
            });
        }
        Outcome::Stopped => {
            // Job cancelled: drop the task. Worker aborting: hand it back.
            return Ok(if w.abort.is_cancelled() {
                Verdict::HandBack
            } else {
                Verdict::Ack
            });
        }
    };
    metrics::histogram!(m::TASK_SECONDS, m::LABEL_KIND => kind).record(secs);
    let done = TaskDone {
        worker: w.id.clone(),
        seconds: secs,
        frames,
        at: now(),
    };
    let first = w.ledger.checkpoint(&task.job, &task.id, &done).await?;
    if !first {
        tracing::info!(job = %task.job, task = %task.id, "already checkpointed by another worker");
    }
    w.tasks_done.fetch_add(1, Ordering::Relaxed);
    w.ledger
        .event(
            &task.job,
            EventKind::TaskDone {
                task: task.id.clone(),
                worker: w.id.clone(),
                seconds: secs,
                fps: if secs > 0.0 {
                    frames as f64 / secs
                } else {
                    0.0
                },
                frames,
            },
        )
        .await?;
    match task.kind() {
        TaskKind::Stitch => finish_job(w, task, &out_dir, secs).await?,
        _ => maybe_publish_stitch(w, task).await?,
    }
    Ok(Verdict::Ack)
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Whoever sees every segment/audio checkpoint publishes the stitch; its
/// Msg-Id makes concurrent publishers produce one message.
async fn maybe_publish_stitch(w: &Worker, task: &Task) -> Result<()> {
    let Some((rec, _)) = w.ledger.record(&task.job).await? else {
        return Ok(());
    };
    if rec.state != JobState::Running {
        return Ok(());
    }
    let done = w
        .ledger
        .done_tasks(&task.job)
        .await?
        .into_iter()
        .filter(|t| t != STITCH_TASK_ID)
        .count();
    if done < rec.tasks_total as usize {
        return Ok(());
    }
    let (Some(spec), Some(plan)) = (rec.spec, rec.plan) else {
        return Ok(());
    };
    let stitch = Task {
        job: task.job.clone(),
        id: STITCH_TASK_ID.into(),
        source: task.source.clone(),
        output: task.output.clone(),
        body: TaskBody::Stitch {
            plan,
            renditions: spec.resolved_renditions()?,
            formats: spec.formats.clone(),
        },
    };
    super::planner::publish_task(&w.js, &stitch)
        .await?
        .await
        .map_err(|e| Error::js("publish stitch", e))?;
    tracing::info!(job = %task.job, "all parts done: stitch queued");
    Ok(())
}

/// Stitch succeeded: the job is done.
async fn finish_job(
    w: &Worker,
    task: &Task,
    out_dir: &std::path::Path,
    stitch_secs: f64,
) -> Result<()> {
    let mut changed = false;
    let rec = w
        .ledger
        .update_record(&task.job, |r| {
            changed = r.state == JobState::Running;
            if changed {
                r.state = JobState::Done;
                r.finished_at = Some(now());
            }
            changed
        })
        .await?;
    remove_partials(&out_dir.join("parts"));
    if changed {
        let total = rec.finished_at.unwrap_or_else(now) - rec.created_at;
        w.ledger
            .event(
                &task.job,
                EventKind::Done {
                    output: task.output.clone(),
                    manifest: subjects::MANIFEST_KEY.into(),
                    seconds: total.max(stitch_secs),
                },
            )
            .await?;
        tracing::info!(job = %task.job, seconds = total, "job done");
    }
    Ok(())
}

/// Temp files of attempts that died (killed workers) are litter once the job is done.
fn remove_partials(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            remove_partials(&path);
        } else if name.starts_with('.') && name.contains(".partial") {
            let _ = std::fs::remove_file(&path);
        }
    }
}
