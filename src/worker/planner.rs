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

/// A probe may take this long (it scans the whole file's packets).
const PROBE_TIMEOUT: Duration = Duration::from_secs(600);

pub(super) async fn planner_loop(w: Arc<Worker>, consumer: PullConsumer) {
    while let Some(mut batch) = super::next_batch(&w, &consumer, 1, "planner").await {
        while let Some(Ok(msg)) = batch.next(&w.shutdown).await {
            if w.shutdown.is_cancelled() {
                let _ = msg.ack_with(AckKind::Nak(None)).await;
                continue;
            }
            let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
            let handled = if delivered > crate::streams::TASK_MAX_DELIVER {
                let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
                give_up(&w, &msg.payload, seq, delivered - 1).await
            } else {
                supervise::keep_ours(&msg, plan_one(&w, &msg)).await
            };
            match handled {
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
    let id = match &spec.id {
        Some(id) => id.clone(),
        None => unused_seq_id(w, seq, &spec).await?,
    };

    if resume_recorded(w, &id, &spec).await? {
        return Ok(());
    }

    let source = match w.source_input(&spec.source) {
        Ok(p) => p,
        Err(e) => return reject(w, &id, Some(spec), e.to_string()).await,
    };
    // Before output_dir creates anything inside another job's output.
    if let Some(planned) = crate::store::location(&spec.output) {
        if let Some(reason) = output_taken(w, &id, &planned).await? {
            return reject(w, &id, Some(spec), reason).await;
        }
    }
    let out_dir = match w.check_output(&spec.output) {
        Ok(d) => d,
        Err(e) => return reject(w, &id, Some(spec), e.to_string()).await,
    };
    // Symlinks resolved: the spec's own check is lexical. (Object stores
    // have no links: the spec's check, which knows s3:// URLs, covers them.)
    if out_dir.is_some_and(|d| source.starts_with(d)) {
        let reason = format!(
            "output {} contains the source {}: a job must not write where it reads",
            spec.output, spec.source
        );
        return reject(w, &id, Some(spec), reason).await;
    }
    let work = serde_json::to_string(&source).unwrap_or_default();
    let outcome = supervise::run(ChildSpec {
        kind: "probe",
        work,
        limits: Limits {
            stall: PROBE_TIMEOUT,
            total: PROBE_TIMEOUT,
            memory: w.args.child_memory(),
            cpu_seconds: supervise::cpu_seconds(PROBE_TIMEOUT, super::cores()),
            open_files: w.args.child_open_files(),
        },
        stop: w.abort.child_token(),
        on_frames: &|_| {},
    })
    .await;
    if let Outcome::Done { summary, .. } = &outcome {
        super::tasks::count_source_reads("probe", "probe", summary);
    }
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
    if let Err(reason) = plan::check_limits(&facts, &w.args.media_limits()) {
        metrics::counter!(crate::metrics::JOBS_PLANNED, crate::metrics::LABEL_OUTCOME => "rejected").increment(1);
        tracing::warn!(job = %id, "rejected: {reason}");
        return reject(w, &id, Some(spec), reason).await;
    }
    let (ladder, dropped) = plan::ladder(&spec.resolved_renditions()?, &facts);
    let pixels: u64 = ladder
        .iter()
        .map(|r| r.width as u64 * r.height as u64)
        .sum();
    let opts = PlanOptions {
        target_seconds: spec.segment_seconds(),
        chunk_seconds: spec.chunk_seconds,
        fleet: live_fleet(w, &facts, pixels).await,
        ..Default::default()
    };
    let mut p = match plan::plan(&facts, &opts) {
        Ok(p) => p,
        Err(e) => return reject(w, &id, Some(spec), e.to_string()).await,
    };
    (p.ladder, p.dropped) = (ladder, dropped);
    for d in &p.dropped {
        tracing::info!(job = %id, rendition = %d.name, "rendition dropped: {}", d.reason);
    }
    let renditions = p.ladder.len() as u32;
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
        generation: 0,
        repairs: 0,
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
                dropped: p.dropped.clone(),
            },
        )
        .await?;
    metrics::counter!(crate::metrics::JOBS_PLANNED, crate::metrics::LABEL_OUTCOME => "planned")
        .increment(1);
    tracing::info!(
        job = %id,
        segments = p.segments.len(),
        tasks = tasks_total,
        scene_candidates = facts.scene_changes.len(),
        cuts_on_keyframe = p.cuts.keyframe,
        cuts_on_scene_change = p.cuts.scene_change,
        cuts_even = p.cuts.even,
        "planned"
    );
    Ok(())
}

/// If `id` already has a record, make sure a running one has its tasks
/// published and return true. Redelivered after a crash mid-plan, or a
/// resubmit: publishing the same tasks again is harmless (Msg-Id dedupe,
/// checkpoints). A record with another spec under the same id is left
/// alone: the producer's `submit` refuses that case, so only a raw publish
/// gets here, and it must not hijack a job.
async fn resume_recorded(w: &Worker, id: &str, spec: &JobSpec) -> Result<bool> {
    let Some((rec, _)) = w.ledger.record(id).await? else {
        return Ok(false);
    };
    if rec.spec.as_ref().is_some_and(|s| s != spec) {
        tracing::warn!(job = %id, "a different spec was submitted under an existing job id; ignored");
        return Ok(true);
    }
    if rec.state == JobState::Running {
        if let Some(p) = &rec.plan {
            let tag = crate::dispatch::generation_tag(rec.generation);
            crate::dispatch::publish(
                &w.js,
                spec.priority_class(),
                &crate::dispatch::work_tasks(id, spec, p)?,
                tag.as_deref(),
            )
            .await?;
        }
    }
    Ok(true)
}

/// `job-<seq>` for a spec published without an id (e.g. `nats req`), unless
/// that id belongs to another job (the stream was recreated and its
/// sequence restarted): then `job-<seq>-<ULID>`, never a hijack.
async fn unused_seq_id(w: &Worker, seq: u64, spec: &JobSpec) -> Result<String> {
    let id = format!("job-{seq}");
    match w.ledger.record(&id).await? {
        Some((rec, _)) if rec.spec.as_ref().is_some_and(|s| s != spec) => {
            let fresh = format!("{id}-{}", ulid::Ulid::new().to_string().to_lowercase());
            tracing::warn!(job = %fresh, "{id} is taken by an older job (was the stream recreated?)");
            Ok(fresh)
        }
        _ => Ok(id),
    }
}

/// A spec whose planning died `attempts` times (planner crashed or lost
/// NATS each time): record its job failed with the reason.
pub(super) async fn give_up(w: &Worker, payload: &[u8], seq: u64, attempts: i64) -> Result<()> {
    let spec = JobSpec::from_json(payload).ok();
    let id = spec
        .as_ref()
        .and_then(|s| s.id.clone())
        .or_else(|| raw_id(payload))
        .unwrap_or_else(|| format!("job-{seq}"));
    // Planned after all (only the acks were lost): resume, never fail it.
    if let Some((rec, _)) = w.ledger.record(&id).await? {
        if rec.state == JobState::Running && rec.plan.is_some() {
            if let Some(recorded) = &rec.spec {
                resume_recorded(w, &id, recorded).await?;
            }
            return Ok(());
        }
    }
    let reason = format!(
        "planning gave up after {attempts} deliveries (planner crashed or lost NATS each time)"
    );
    tracing::error!(job = %id, "{reason}");
    // No record yet: create it failed. A record left running (planned, but
    // publishing its tasks kept failing): fail it.
    reject(w, &id, spec, reason.clone()).await?;
    crate::lifecycle::end(&w.ledger, &id, crate::lifecycle::End::Failed(reason)).await?;
    Ok(())
}

/// The id a malformed spec asked for, if it is a valid one.
pub(super) fn raw_id(payload: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let id = v.get("id")?.as_str()?;
    valid_id(id).then(|| id.to_string())
}

/// The reason `out_dir` may not be used, if another running job writes
/// inside it, or it lies inside another running job's output. Looks only
/// at jobs with work in the task queue (O(running jobs), not O(every job
/// ever recorded)); two specs planned at the same moment can still race.
async fn output_taken(w: &Worker, id: &str, out_dir: &std::path::Path) -> Result<Option<String>> {
    let stream =
        w.js.get_stream(crate::subjects::TASKS_STREAM)
            .await
            .map_err(|e| Error::js("open task stream", e))?;
    let mut subjects = stream
        .info_with_subjects(crate::subjects::TASKS_ALL)
        .await
        .map_err(|e| Error::js("list queued jobs", e))?;
    let mut jobs = std::collections::BTreeSet::new();
    while let Some(s) = futures::StreamExt::next(&mut subjects).await {
        let (subject, _count) = s.map_err(|e| Error::js("list queued jobs", e))?;
        if let Some(job) = crate::subjects::job_of_task_subject(&subject) {
            if job != id {
                jobs.insert(job.to_string());
            }
        }
    }
    for job in jobs {
        let Some((rec, _)) = w.ledger.record(&job).await? else {
            continue;
        };
        if rec.state != JobState::Running {
            continue;
        }
        let Some(theirs) = rec.output.as_deref().and_then(crate::store::location) else {
            continue;
        };
        if let Some(how) = crate::store::overlap(out_dir, &theirs) {
            return Ok(Some(format!(
                "output {how} the output of running job {job} ({})",
                theirs.display()
            )));
        }
    }
    Ok(None)
}

/// Record a refused job as failed with its reason, and tell watchers.
pub(super) async fn reject(
    w: &Worker,
    id: &str,
    spec: Option<JobSpec>,
    reason: String,
) -> Result<()> {
    let rec = JobRecord::unplanned(id, spec, JobState::Failed, &reason);
    // An existing record (e.g. a bad resubmit of a good job's id) is left alone.
    if w.ledger.create_record(&rec).await? {
        crate::lifecycle::announce(&w.ledger, &rec).await?;
    }
    Ok(())
}

/// Queue every segment and audio task of a freshly planned job, in its
/// priority class.
async fn publish_tasks(w: &Worker, id: &str, spec: &JobSpec, p: &plan::Plan) -> Result<()> {
    let tasks = crate::dispatch::work_tasks(id, spec, p)?;
    crate::dispatch::publish(&w.js, spec.priority_class(), &tasks, None).await
}

/// The live fleet for the planner's chunk pick: each worker's slots and
/// speed in seconds of source per second per slot: its heartbeat's
/// smoothed per-slot pace in output pixels per second ÷ the job's
/// (`pixels` per frame of its whole ladder × the source's frame rate). A
/// worker that has not encoded yet counts at the fleet's median; with no
/// pace known at all, real time. None without heartbeats (within 2 s):
/// the default pick.
async fn live_fleet(
    w: &Worker,
    facts: &SourceFacts,
    pixels: u64,
) -> Option<Vec<crate::balance::Capacity>> {
    let fleet = tokio::time::timeout(Duration::from_secs(2), w.ledger.workers())
        .await
        .ok()?
        .ok()?;
    let source_fps = if facts.fps_den > 0 && facts.fps_num > 0 {
        facts.fps_num as f64 / facts.fps_den as f64
    } else {
        return None;
    };
    let live = fleet_capacity(&fleet, pixels as f64 * source_fps);
    (!live.is_empty()).then_some(live)
}

/// Slots and speed (seconds of source per second per slot) of every live
/// worker for a job of `per_source_second` output pixels per second of
/// source; see [`live_fleet`]. Pure.
fn fleet_capacity(
    fleet: &[crate::record::Heartbeat],
    per_source_second: f64,
) -> Vec<crate::balance::Capacity> {
    let live: Vec<_> = fleet
        .iter()
        .filter(|h| !h.draining && h.slots > 0)
        .collect();
    let speed = |h: &crate::record::Heartbeat| {
        Some(h.speed / per_source_second).filter(|v| v.is_finite() && *v > 0.0)
    };
    let mut known: Vec<f64> = live.iter().filter_map(|h| speed(h)).collect();
    known.sort_by(f64::total_cmp);
    let median = known.get(known.len() / 2).copied().unwrap_or(1.0);
    live.iter()
        .map(|h| crate::balance::Capacity {
            slots: h.slots,
            speed: speed(h).unwrap_or(median),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::fleet_capacity;
    use crate::balance::Capacity;
    use crate::record::Heartbeat;

    fn hb(slots: u32, speed: f64, draining: bool) -> Heartbeat {
        Heartbeat {
            id: "w".into(),
            host: "h".into(),
            version: "0".into(),
            slots,
            busy: 0,
            cpu: 0.0,
            rss: 0,
            mem: 0.0,
            fps: 0.0,
            speed,
            tasks_done: 0,
            started_at: 0.0,
            at: 0.0,
            draining,
            health: None,
        }
    }

    #[test]
    fn fleet_speed_is_source_seconds_per_second_per_slot() {
        // A 1280x720 job at 25 fps: 23.04 Mpx per second of source.
        let per_s = 1280.0 * 720.0 * 25.0;
        let cap = |slots, speed| Capacity { slots, speed };
        let table: Vec<(&str, Vec<Heartbeat>, Vec<Capacity>)> = vec![
            ("nobody", vec![], vec![]),
            (
                "paces become seconds of source per second",
                vec![hb(2, 2.0 * per_s, false), hb(1, 0.5 * per_s, false)],
                vec![cap(2, 2.0), cap(1, 0.5)],
            ),
            (
                "no pace yet: the median of the known",
                vec![
                    hb(1, per_s, false),
                    hb(1, 3.0 * per_s, false),
                    hb(4, 0.0, false),
                ],
                vec![cap(1, 1.0), cap(1, 3.0), cap(4, 3.0)],
            ),
            (
                "nothing known: real time",
                vec![hb(1, 0.0, false)],
                vec![cap(1, 1.0)],
            ),
            (
                "draining and slotless workers take nothing",
                vec![hb(1, per_s, true), hb(0, per_s, false), hb(1, per_s, false)],
                vec![cap(1, 1.0)],
            ),
            (
                "garbage pace",
                vec![hb(1, f64::NAN, false)],
                vec![cap(1, 1.0)],
            ),
        ];
        for (what, fleet, want) in table {
            assert_eq!(fleet_capacity(&fleet, per_s), want, "{what}");
        }
        // A job of no pixels (cannot happen) does not divide by zero into
        // a fleet of infinitely fast workers.
        assert_eq!(
            fleet_capacity(&[hb(1, per_s, false)], 0.0),
            vec![cap(1, 1.0)]
        );
    }
}
