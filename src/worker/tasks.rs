//! One task, start to finish: skip if checkpointed, run the child, place
//! the output durably, checkpoint, ack; then the completion step.
//!
//! Order is the invariant: output durable -> checkpoint `create` -> ack. A
//! crash anywhere redoes the task into the same key or skips it; the
//! completion step after a checkpoint runs again on every redelivery, so a
//! checkpointed job always moves on.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};

use super::supervise::{self, ChildSpec, Limits, Outcome};
use super::Worker;
use crate::dispatch;
use crate::error::{Error, ErrorKind, Result};
use crate::lifecycle::{self, End};
use crate::metrics as m;
use crate::record::{now, EventKind, JobRecord, JobState, TaskDone};
use crate::subjects::{self, TaskKind};
use crate::task::{
    AudioWork, SegmentOutput, SegmentWork, StitchWork, Task, TaskBody, TaskDecodeError,
    STITCH_TASK_ID,
};

/// What to do with the message after the task ran.
enum Verdict {
    Ack,
    /// Retry later (transient failure), with backoff.
    Retry(String),
    /// This worker cannot run it (a source or output outside its roots, a
    /// missing mount): let another worker take it soon.
    NotForMe(String),
    /// Never retry; fail the job with this reason.
    Fail(String),
    /// Handed back: another worker should take it now.
    HandBack,
}

/// How often a running task re-reads its job's record, so a worker that
/// missed the cancel message (disconnected) still stops a dead job's work.
const JOB_RECHECK_EVERY: Duration = Duration::from_secs(15);

pub(super) async fn handle(w: &Worker, msg: jetstream::Message) {
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
    if delivered > 1 {
        metrics::counter!(m::REDELIVERIES).increment(1);
    }
    let task = match Task::decode(&msg.payload) {
        Ok(t) => t,
        Err(TaskDecodeError::Newer(v)) => {
            // Rolling upgrade: a newer worker published it; leave it to one.
            tracing::warn!(subject = %msg.subject, version = v, "task from a newer jetcode; handing it back");
            let reason = format!("task message version {v} is newer than this worker's");
            let job = subjects::job_of_task_subject(msg.subject.as_str());
            pass_on(w, &msg, job, NEWER_TASK_DELAY, &reason).await;
            return;
        }
        Err(TaskDecodeError::Unreadable(e)) => {
            // The job id is the last subject token: fail it, or it would
            // wait for this task forever.
            let reason = format!("unreadable task on {}: {e}", msg.subject);
            tracing::error!("{reason}");
            match subjects::job_of_task_subject(msg.subject.as_str()) {
                Some(job) => fail_then_term(w, &msg, job, &reason, delivered).await,
                None => {
                    let _ = msg.ack_with(AckKind::Term).await;
                }
            }
            return;
        }
    };
    let kind = task.kind();
    let token = w.job_token(&task.job);
    // Ours for the whole task, not only while a child runs: verifying a
    // long job's parts or hashing a big part can take longer than ack_wait.
    let result = supervise::keep_ours(&msg, run_task(w, &msg, &task, token.clone())).await;
    let verdict = match result {
        Ok(v) => v,
        Err(e) => Verdict::Retry(e.to_string()),
    };
    w.release_job(&task.job);
    metrics::counter!(m::S3_REQUESTS).absolute(crate::store::s3::request_stats().0);
    if !matches!(verdict, Verdict::NotForMe(_)) {
        w.local_failures.store(0, Ordering::Relaxed);
    }
    let outcome = match verdict {
        Verdict::Ack => {
            if msg.double_ack().await.is_ok() && kind != TaskKind::Stitch {
                if let Err(e) = queue_stitch_if_complete(w, &task.job).await {
                    tracing::warn!(job = %task.job, "completion check: {e}");
                }
            }
            "ok"
        }
        Verdict::HandBack => {
            hand_back(&w.js, &msg).await;
            "handed_back"
        }
        Verdict::NotForMe(reason) => {
            let n = w.local_failures.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(job = %task.job, task = %task.id, "cannot run here, leaving it to another worker: {reason}");
            if n == super::LOCAL_FAILURES_UNREADY {
                tracing::error!("{n} tasks in a row could not run on this worker (check --file-root and mounts); /readyz reports not ready");
            }
            pass_on(w, &msg, Some(&task.job), NOT_FOR_ME_DELAY, &reason).await;
            "not_for_me"
        }
        Verdict::Retry(reason) if delivered < crate::streams::TASK_MAX_DELIVER => {
            let delay = retry_delay(w, delivered);
            tracing::warn!(job = %task.job, task = %task.id, delivered, ?delay, "retrying: {reason}");
            let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
            w.ledger
                .event_best_effort(
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
        Verdict::Retry(reason) if matches!(w.ledger.task_done(&task).await, Ok(true) | Err(_)) => {
            // Checkpointed (only its completion step failed), or we cannot
            // tell: never fail finished work. Its next delivery runs the
            // completion step again (so does the reconciler).
            tracing::warn!(job = %task.job, task = %task.id, "completion step failed on the last delivery: {reason}");
            let _ = msg
                .ack_with(AckKind::Nak(Some(retry_delay(w, delivered))))
                .await;
            "retried"
        }
        Verdict::Retry(reason) => {
            let reason = format!(
                "task {} gave up after {delivered} attempts: {reason}",
                task.id
            );
            fail_then_term(w, &msg, &task.job, &reason, delivered).await;
            "failed"
        }
        Verdict::Fail(reason) => {
            let reason = format!("task {}: {reason}", task.id);
            fail_then_term(w, &msg, &task.job, &reason, delivered).await;
            "failed"
        }
    };
    metrics::counter!(m::TASKS_TOTAL, m::LABEL_KIND => kind.as_str(), m::LABEL_OUTCOME => outcome)
        .increment(1);
}

/// A task from a newer worker waits this long before it is offered again.
const NEWER_TASK_DELAY: Duration = Duration::from_secs(30);
/// A task this worker cannot run is offered to others after about this long.
const NOT_FOR_ME_DELAY: Duration = Duration::from_secs(5);

/// Header with the Unix time a task was first passed on by a worker that
/// could not run it; kept on every later copy.
const PASSED_SINCE_HEADER: &str = "Jetcode-Passed-Since";
/// How long a task may be passed around before its job fails: long enough
/// for the workers that can run it to finish long encodes in between.
const PASS_ON_LIMIT: Duration = Duration::from_secs(3600);

/// Offer a task this worker cannot run to the others without spending one
/// of its deliveries (a nak would: five "not for me" naks would fail the
/// job). Holds the slot for about `delay` (so this worker does not take it
/// back at once), then hands it back as a fresh copy stamped with when it
/// was first passed on; after [`PASS_ON_LIMIT`] of that, no worker of the
/// fleet can run it and the job fails with the reason.
async fn pass_on(
    w: &Worker,
    msg: &jetstream::Message,
    job: Option<&str>,
    delay: Duration,
    reason: &str,
) {
    let since = passed_since(msg).unwrap_or_else(now);
    if now() - since > PASS_ON_LIMIT.as_secs_f64() {
        if let Some(job) = job {
            let why = format!(
                "no worker could run task for {} min: {reason}",
                PASS_ON_LIMIT.as_secs() / 60
            );
            let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
            fail_then_term(w, msg, job, &why, delivered).await;
            return;
        }
    }
    // Hold it (kept ours: the hold may exceed ack_wait).
    let hold = async {
        tokio::select! {
            _ = tokio::time::sleep(jitter(delay)) => {}
            _ = w.shutdown.cancelled() => {}
        }
    };
    supervise::keep_ours(msg, hold).await;
    hand_back_with(&w.js, msg, Some(since)).await;
}

/// When the task was first passed on, from its header.
fn passed_since(msg: &jetstream::Message) -> Option<f64> {
    msg.headers
        .as_ref()
        .and_then(|h| h.get(PASSED_SINCE_HEADER))
        .and_then(|v| v.as_str().parse().ok())
}

/// Backoff before retry `delivered + 1`: `--retry-backoff` (10 s) doubling
/// to at most 5 min, with ±25 % jitter, so with 5 attempts a task rides
/// out about two and a half minutes of trouble (a restarting server, a
/// full disk being cleaned) and a fleet's retries do not arrive in
/// lockstep.
fn retry_delay(w: &Worker, delivered: i64) -> Duration {
    let exp = delivered.clamp(1, 6) as u32 - 1;
    let base = Duration::from_secs_f64(w.args.retry_backoff.clamp(0.01, 300.0));
    jitter((base * 2u32.pow(exp)).min(Duration::from_secs(300)))
}

/// `d` scaled by a factor in [0.75, 1.25).
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d.mul_f64(0.75 + (nanos % 1000) as f64 / 2000.0)
}

/// Fail the job, and only once that is recorded terminate the message.
/// The server drops a terminated message from the work queue before its
/// advisory is handled, so terminating an unrecorded failure would leave
/// the job running with no task left. Otherwise nak: the next delivery
/// records it.
async fn fail_then_term(
    w: &Worker,
    msg: &jetstream::Message,
    job: &str,
    reason: &str,
    delivered: i64,
) {
    let recorded = if record_failure_failpoint() {
        Err(Error::new(
            ErrorKind::JetStream,
            "failpoint: the failure record write failed",
        ))
    } else {
        lifecycle::end(&w.ledger, job, End::Failed(reason.to_string())).await
    };
    match recorded {
        Ok(_) => {
            tracing::error!(job, "job failed: {reason}");
            let _ = msg.ack_with(AckKind::Term).await;
        }
        Err(e) => {
            tracing::warn!(
                job,
                "could not record the failure yet ({e}); will retry: {reason}"
            );
            let _ = msg
                .ack_with(AckKind::Nak(Some(retry_delay(w, delivered))))
                .await;
        }
    }
}

/// Fault injection for tests: `JETCODE_FAILPOINT_RECORD_FAILURE_ONCE=<marker
/// file>` makes the first attempt to record a job's failure (the one that
/// creates the marker) fail, as a KV write during a leader election does.
fn record_failure_failpoint() -> bool {
    std::env::var("JETCODE_FAILPOINT_RECORD_FAILURE_ONCE")
        .ok()
        .is_some_and(|marker| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(marker)
                .is_ok()
        })
}

/// Give a task to another worker now, without spending one of its
/// deliveries. JetStream counts a nak as a delivery, so a task handed back
/// by draining workers (scale-down) 5 times would use up its attempt
/// budget although it never failed. A fresh copy starts at zero; the
/// original is acked only once the copy is stored. A crash in between
/// leaves both, and running a task twice is harmless (checkpoints).
pub(super) async fn hand_back(js: &jetstream::Context, msg: &jetstream::Message) {
    hand_back_with(js, msg, None).await
}

/// [`hand_back`], stamping when the task was first passed on, if it was.
async fn hand_back_with(
    js: &jetstream::Context,
    msg: &jetstream::Message,
    passed_since: Option<f64>,
) {
    if !super::connected(&js.client()) {
        // Nothing can be stored now; the ack deadline hands it to another
        // worker. Waiting out the timeouts would only delay a shutdown.
        tracing::warn!(subject = %msg.subject, "not handed back (NATS unreachable); its ack deadline will redeliver it");
        return;
    }
    let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
    let original = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|v| subjects::handback_base(v.as_str()).to_string())
        .unwrap_or_else(|| msg.subject.to_string());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        subjects::handback_msg_id(&original, seq).as_str(),
    );
    if let Some(t) = passed_since.or_else(|| self::passed_since(msg)) {
        headers.insert(PASSED_SINCE_HEADER, format!("{t:.0}").as_str());
    }
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

async fn run_task(
    w: &Worker,
    msg: &jetstream::Message,
    task: &Task,
    token: tokio_util::sync::CancellationToken,
) -> Result<Verdict> {
    let Some((rec, _)) = w.ledger.record(&task.job).await? else {
        tracing::warn!(job = %task.job, task = %task.id, "task of a job without a record: dropping it");
        return Ok(Verdict::Ack);
    };
    if rec.state.is_terminal() {
        // Ended: drop its remaining work. A stitch redelivered after the
        // job was recorded done re-announces the end (the announcement may
        // be what failed last time; it is idempotent).
        if rec.state == JobState::Done && task.kind() == TaskKind::Stitch {
            lifecycle::announce(&w.ledger, &rec).await?;
        }
        return Ok(Verdict::Ack);
    }
    let parts_done = w.ledger.parts_done(task).await?;
    if parts_done.len() == task.parts().len() {
        // Already checkpointed (a redelivery after a crash before the ack,
        // or a late duplicate): nothing to redo, but the completion step
        // after it may never have run (for a part it runs after the ack).
        if task.kind() == TaskKind::Stitch {
            finish_job(w, task).await?;
        }
        return Ok(Verdict::Ack);
    }
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
    if delivered > crate::streams::TASK_MAX_DELIVER {
        // Every attempt so far died with its worker, hung, or lost NATS
        // (a failure that could report itself was handled at its attempt).
        return Ok(Verdict::Fail(format!(
            "delivered {} times and never finished (its workers died, hung or lost NATS)",
            delivered - 1
        )));
    }
    w.ledger
        .event_best_effort(
            &task.job,
            EventKind::TaskStarted {
                task: task.id.clone(),
                worker: w.id.clone(),
                attempt: msg.info().map(|i| i.delivered as u64).unwrap_or(1),
            },
        )
        .await;
    let target = match Target::of(w, &task.job, &task.output) {
        Ok(t) => t,
        Err(e) => return Ok(Verdict::NotForMe(e.to_string())),
    };
    let out_dir = target.dir.clone();
    let input = match &task.body {
        TaskBody::Stitch { .. } => None,
        _ => match w.source_input(&task.source) {
            Ok(p) => Some(p),
            Err(e) => return Ok(Verdict::NotForMe(e.to_string())),
        },
    };
    // The child writes each output atomically (temp file, fsync, link) to
    // its deterministic key; the first complete copy stays there. `parts`:
    // what to checkpoint afterwards, with the file each checkpoint covers.
    // Output pixels this run encodes (segment tasks), for the worker's pace.
    let mut pixels = 0.0;
    let (kind, work, seconds, parts): (&str, String, f64, PartFiles) = match &task.body {
        TaskBody::Segment {
            fps_num,
            fps_den,
            pts_offset_ns,
            min_frame_ns,
            orientation,
            ..
        } => {
            // A redelivery encodes only the renditions with a part not yet
            // checkpointed (still from one decode); a checkpointed part
            // encoded again is kept as it was (first writer wins).
            if task.renditions().is_empty() {
                return Ok(Verdict::Fail(format!(
                    "segment task {} names no rendition",
                    task.id
                )));
            }
            let segments = task.segments();
            let mut outputs: Vec<SegmentOutput> = Vec::new();
            let mut parts = Vec::new();
            for r in task.renditions() {
                let mut pending = false;
                let mut files = Vec::new();
                for s in &segments {
                    let id = Task::segment_id(&r.name, s.index);
                    pending |= !parts_done.contains(&id);
                    let file = out_dir.join(subjects::part_key(&r.name, s.index));
                    files.push((id, Some(file), Some(s.frames())));
                }
                if pending {
                    outputs.push(SegmentOutput {
                        rendition: r.clone(),
                        parts: files.iter().filter_map(|(_, f, _)| f.clone()).collect(),
                    });
                    parts.extend(files);
                }
            }
            let secs = segments.iter().map(|s| s.duration_ns()).sum::<u64>() as f64
                * outputs.len() as f64
                / 1e9;
            let frames: u64 = segments.iter().map(|s| s.frames()).sum();
            pixels = outputs
                .iter()
                .map(|o| o.rendition.area() as f64 * frames as f64)
                .sum();
            let work = SegmentWork {
                input: input.clone().unwrap_or_default(),
                outputs,
                segments,
                fps_num: *fps_num,
                fps_den: *fps_den,
                pts_offset_ns: *pts_offset_ns,
                min_frame_ns: *min_frame_ns,
                orientation: orientation.clone(),
                threads: w.args.child_threads(),
            };
            ("segment", json(&work), secs, parts)
        }
        TaskBody::Audio { stream } => {
            let output = out_dir.join(subjects::AUDIO_PART_KEY);
            let work = AudioWork {
                input: input.clone().unwrap_or_default(),
                output: output.clone(),
                stream: stream.clone(),
            };
            let secs = rec
                .plan
                .as_ref()
                .map_or(60.0, |p| p.audio_duration_ns as f64 / 1e9);
            (
                "audio",
                json(&work),
                secs,
                vec![(task.id.clone(), Some(output), None)],
            )
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
            (
                "stitch",
                json(&work),
                secs,
                vec![(task.id.clone(), None, None)],
            )
        }
    };
    let total = Duration::from_secs_f64((seconds * w.args.task_timeout_factor).max(300.0));
    let limits = Limits {
        stall: w.args.stall(),
        total,
        memory: w.args.child_memory(),
        cpu_seconds: super::supervise::cpu_seconds(total, super::cores()),
        open_files: w.args.child_open_files(),
    };
    if kind == "stitch" {
        // Bounded like the child: hung storage must not hold the stitch
        // (kept ours by progress acks) forever.
        match tokio::time::timeout(limits.total, verify_parts(w, &rec, &target)).await {
            Ok(verified) => {
                if let Err(reason) = verified? {
                    return Ok(Verdict::Fail(reason));
                }
            }
            Err(_) => {
                return Ok(Verdict::Retry(format!(
                    "verifying the parts took over {:?}",
                    limits.total
                )))
            }
        }
    }
    // Only segment children encode video frames: the audio child reports
    // milliseconds and the stitch muxed frames, which counted as encoded
    // made idle workers show tens of thousands of fps.
    let frames_counter = &w.frames;
    let encodes = kind == "segment";
    let on_frames = move |n: u64| {
        if encodes {
            frames_counter.fetch_add(n, Ordering::Relaxed);
            metrics::counter!(m::FRAMES_ENCODED).increment(n);
        }
    };
    // A worker that missed the cancel message still stops a dead job.
    let stop = token.child_token();
    let recheck = tokio::spawn(stop_when_job_ends(
        w.ledger.clone(),
        task.job.clone(),
        stop.clone(),
    ));
    let outcome = supervise::run(ChildSpec {
        kind,
        work,
        limits,
        stop: stop.clone(),
        on_frames: &on_frames,
    })
    .await;
    recheck.abort();
    let (frames, secs, decoded) = match outcome {
        Outcome::Done {
            frames,
            seconds,
            summary,
        } => {
            count_source_reads(kind, &task.id, &summary);
            let decoded = summary.get("decoded").and_then(|d| d.as_u64());
            if encodes {
                // The renditions this run encoded (a redelivery only those
                // with a part missing), their frames: not the frames
                // decoded before the first cut.
                w.record_speed(pixels, seconds);
            }
            (frames, seconds, decoded)
        }
        Outcome::Failed { reason, permanent } => {
            return Ok(if permanent {
                Verdict::Fail(reason)
            } else {
                Verdict::Retry(reason)
            });
        }
        Outcome::Stopped => {
            // Job ended: drop the task. Worker aborting: hand it back.
            return Ok(if w.abort.is_cancelled() {
                Verdict::HandBack
            } else {
                Verdict::Ack
            });
        }
    };
    metrics::histogram!(m::TASK_SECONDS, m::LABEL_KIND => kind).record(secs);
    if kind == "stitch" {
        // The outputs are in the scratch directory: upload them (the
        // manifest last) before the checkpoint says they exist.
        target.upload_outputs().await?;
    }
    // Each part: durable in its store, its digest, then its checkpoint
    // (`create`: once).
    for (part, path, part_frames) in &parts {
        let frames = part_frames.unwrap_or(frames);
        let (bytes, sha256) = match path {
            Some(p) => {
                let (size, digest) = target.place_part(p).await?;
                (Some(size), Some(digest))
            }
            None => (None, None),
        };
        let done = TaskDone {
            worker: w.id.clone(),
            seconds: secs,
            frames,
            at: now(),
            bytes,
            sha256,
            decoded,
        };
        let first = w.ledger.checkpoint(&task.job, part, &done).await?;
        // Placed and checkpointed (by us or an earlier copy): the local
        // scratch copy of an uploaded part has served either way.
        if let Some(p) = path {
            target.drop_local_part(p);
        }
        if !first {
            // Another copy, or this task's earlier attempt, got there
            // first: its event was sent then.
            tracing::info!(job = %task.job, task = %part, "already checkpointed");
            continue;
        }
        w.tasks_done.fetch_add(1, Ordering::Relaxed);
        w.ledger
            .event_best_effort(
                &task.job,
                EventKind::TaskDone {
                    task: part.clone(),
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
            .await;
    }
    if task.kind() == TaskKind::Stitch {
        finish_job(w, task).await?;
    }
    Ok(Verdict::Ack)
}

/// A task's parts to checkpoint, by id, with the file each one covers and
/// its frames (None: what the child reported for the task).
type PartFiles = Vec<(String, Option<std::path::PathBuf>, Option<u64>)>;

/// Cancel `stop` once the job's record is terminal.
async fn stop_when_job_ends(
    ledger: crate::ledger::Ledger,
    job: String,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::time::sleep(JOB_RECHECK_EVERY).await;
        if let Ok(Some((rec, _))) = ledger.record(&job).await {
            if rec.state.is_terminal() {
                tracing::info!(job, "job ended elsewhere: stopping its task here");
                stop.cancel();
                return;
            }
        }
    }
}

/// Every part still is what its checkpoint recorded. A part replaced after
/// its checkpoint (by hand, or a bug) must not be stitched silently.
/// `Ok(Err(reason))`: a part is missing or changed. For an S3 output each
/// part is first downloaded into the scratch directory, where the stitch
/// reads it.
async fn verify_parts(
    w: &Worker,
    rec: &JobRecord,
    target: &Target,
) -> Result<std::result::Result<(), String>> {
    let out_dir = &target.dir;
    let (spec, plan) = dispatch::planned(rec)?;
    let parts = dispatch::work_tasks(&rec.id, spec, plan)?
        .iter()
        .flat_map(Task::parts)
        .collect::<Vec<_>>();
    for part in parts {
        let Some(key) = &part.key else { continue };
        let path = out_dir.join(key);
        match target.fetch(key, &path).await {
            Ok(_) => {}
            // Gone from the bucket: a part the stitch cannot have.
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Ok(Err(format!("part {key}: {e}")));
            }
            // A storage blip (5xx, reset, a full scratch disk): retry.
            Err(e) => return Err(e),
        }
        let Some(done) = w.ledger.checkpoint_of(&rec.id, &part.id).await? else {
            return Ok(Err(format!("part {} has no checkpoint", part.id)));
        };
        let Some(want) = done.sha256 else {
            continue; // checkpointed by an older worker
        };
        match digest_blocking(&path).await {
            Ok((_, got)) if got == want => {}
            Ok((_, got)) => {
                return Ok(Err(format!(
                    "part {} changed after its checkpoint (sha256 {got}, checkpointed {want})",
                    path.display()
                )))
            }
            // A read error may be a storage blip: retry, do not fail.
            Err(e) => return Err(e),
        }
    }
    Ok(Ok(()))
}

/// [`crate::store::digest_file`] on the blocking pool: a big part on slow
/// storage must not stall the runtime (and with it the progress acks).
async fn digest_blocking(path: &std::path::Path) -> Result<(u64, String)> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || crate::store::digest_file(&path))
        .await
        .map_err(|e| crate::error::Error::new(ErrorKind::Storage, e.to_string()))?
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// After the stitch's checkpoint: the job is done (a compare-and-set, then
/// an idempotent announcement). Safe to repeat; a redelivered stitch whose
/// checkpoint exists runs it again, so a job never stays running behind a
/// finished stitch.
pub(super) async fn finish_job(w: &Worker, task: &Task) -> Result<()> {
    if let Ok(Some(_)) = w.s3.check(&task.output) {
        // Everything is in the bucket: the scratch copy is litter.
        if let Ok(dir) = w.s3.scratch_dir(&w.id, &task.job) {
            let _ = std::fs::remove_dir_all(dir);
        }
    } else if let Ok(dir) = w.roots.output_dir(&task.output) {
        remove_partials(&dir.join("parts"));
    }
    let rec = lifecycle::end(&w.ledger, &task.job, End::Done).await?;
    if rec.state == JobState::Done {
        tracing::info!(job = %task.job, seconds = rec.finished_at.unwrap_or_else(now) - rec.created_at, "job done");
    }
    Ok(())
}

/// After a part's message left the queue (acked, or deleted as dead):
/// when no task message of the job is left and every part is checkpointed,
/// queue the stitch (its Msg-Id makes one message of concurrent calls).
/// O(1) on the common path: while other messages of the job are queued or
/// in flight it cannot be complete, and listing every checkpoint per
/// checkpoint would make a job O(tasks^2). Checking after the message is
/// gone means the last of two parts finishing together always sees the
/// end. A failure here is covered by the next copy of any task of the job,
/// or by the reconciler.
pub(super) async fn queue_stitch_if_complete(w: &Worker, job: &str) -> Result<()> {
    let (queued_work, _) = dispatch::queued(&w.js, job).await?;
    if queued_work > 0 {
        return Ok(());
    }
    let Some((rec, _)) = w.ledger.record(job).await? else {
        return Ok(());
    };
    if rec.state != JobState::Running {
        return Ok(());
    }
    metrics::counter!(m::COMPLETION_SCANS).increment(1);
    let done = w
        .ledger
        .done_tasks(job)
        .await?
        .into_iter()
        .filter(|t| t != STITCH_TASK_ID)
        .count();
    if done < rec.tasks_total as usize {
        return Ok(());
    }
    let (spec, plan) = dispatch::planned(&rec)?;
    let stitch = dispatch::stitch_task(job, spec, plan)?;
    let tag = dispatch::generation_tag(rec.generation);
    dispatch::publish(&w.js, spec.priority_class(), &[stitch], tag.as_deref()).await?;
    tracing::info!(job, "all parts done: stitch queued");
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

/// Count a child's source reads (requests, bytes) into the worker's metrics.
pub(super) fn count_source_reads(kind: &str, task: &str, summary: &serde_json::Value) {
    if kind == "stitch" {
        return; // it reads its own parts and outputs, not the source
    }
    let get = |k: &str| summary.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    let (requests, bytes) = (get("source_gets"), get("source_bytes"));
    let refetches = get("source_refetches");
    if requests > 0 {
        metrics::counter!(m::SOURCE_REQUESTS, m::LABEL_KIND => kind.to_string())
            .increment(requests);
        metrics::counter!(m::SOURCE_BYTES, m::LABEL_KIND => kind.to_string()).increment(bytes);
        metrics::counter!(m::SOURCE_REFETCHES, m::LABEL_KIND => kind.to_string())
            .increment(refetches);
        tracing::info!(task, kind, requests, bytes, refetches, "source reads");
    }
}

/// Where a task's outputs go. `dir` is where its child writes them: the
/// output directory itself for `file://`, this worker's scratch directory
/// of the job for `s3://` (uploaded from there).
pub(super) struct Target {
    pub(super) dir: std::path::PathBuf,
    s3: Option<(
        crate::store::s3::S3Url,
        std::sync::Arc<dyn object_store::ObjectStore>,
    )>,
}

impl Target {
    pub(super) fn of(w: &Worker, job: &str, output: &str) -> Result<Target> {
        match w.s3.check(output)? {
            Some(url) => Ok(Target {
                dir: w.s3.scratch_dir(&w.id, job)?,
                s3: Some((url.clone(), w.s3.store(&url.bucket)?)),
            }),
            None => Ok(Target {
                dir: w.roots.output_dir(output)?,
                s3: None,
            }),
        }
    }

    fn rel<'a>(&self, path: &'a std::path::Path) -> Result<&'a str> {
        path.strip_prefix(&self.dir)
            .ok()
            .and_then(|p| p.to_str())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Storage,
                    format!("{} is outside the task's directory", path.display()),
                )
            })
    }

    /// Make the part the child wrote at `path` durable at its
    /// deterministic key, first writer wins; size and SHA-256 of the copy
    /// that stays (which, for a late duplicate, is the earlier one).
    async fn place_part(&self, path: &std::path::Path) -> Result<(u64, String)> {
        let Some((url, store)) = &self.s3 else {
            return digest_blocking(path).await;
        };
        let key = url.join(self.rel(path)?);
        if crate::store::s3::put_once(store.as_ref(), &key, path).await? {
            digest_blocking(path).await
        } else {
            tracing::info!(%key, "part already in the bucket: keeping the first copy");
            crate::store::s3::digest(store.as_ref(), &key).await
        }
    }

    /// After its checkpoint an uploaded part's local copy is not needed.
    /// (Its directory stays: another slot's child may be writing there.)
    fn drop_local_part(&self, path: &std::path::Path) {
        if self.s3.is_some() {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Bring the object `rel` to `path` (S3 only; a file is already there).
    async fn fetch(&self, rel: &str, path: &std::path::Path) -> Result<()> {
        if let Some((url, store)) = &self.s3 {
            crate::store::s3::download(store.as_ref(), &url.join(rel), path).await?;
        }
        Ok(())
    }

    /// Upload what the stitch wrote (everything but the parts, which are
    /// in the bucket already, and temp files), `manifest.json` last, so a
    /// reader that finds the manifest finds every file it lists.
    async fn upload_outputs(&self) -> Result<()> {
        let Some((url, store)) = &self.s3 else {
            return Ok(());
        };
        let mut files = Vec::new();
        collect_outputs(&self.dir, &mut files);
        files.sort_by_key(|p| p.ends_with(crate::subjects::MANIFEST_KEY));
        for f in files {
            let key = url.join(self.rel(&f)?);
            let size = crate::store::s3::put_file(store.clone(), &key, &f).await?;
            tracing::info!(%key, size, "output uploaded");
        }
        Ok(())
    }
}

/// Files under `dir` but not under its `parts/`, skipping hidden temp files.
fn collect_outputs(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            if name != "parts" {
                collect_outputs(&path, out);
            }
        } else {
            out.push(path);
        }
    }
}
