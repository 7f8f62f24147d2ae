//! The job state machine: the one place that ends a job (done, failed,
//! cancelled), announces the end, and resumes a failed job. Workers, the
//! dead-letter role, the reconciler and producers all go through here.
//!
//! ```text
//!   (no record) --plan--> running --finish--> done
//!        |                  |  \--fail----> failed ----retry--> running
//!        \----cancel--------+---cancel----> cancelled --retry--> running
//! ```
//!
//! Every transition is a compare-and-set on the record, so it is safe to
//! repeat and to race; the end event carries a Msg-Id per job end, so
//! whoever sees an end may announce it and one event is stored.

use std::time::Duration;

use crate::dispatch;
use crate::error::{Error, ErrorKind, Result};
use crate::ledger::Ledger;
use crate::record::{now, EventKind, JobRecord, JobState};
use crate::subjects;

/// How a job ends.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// Every output written and verified.
    Done,
    Failed(String),
    Cancelled(String),
}

impl End {
    fn state(&self) -> JobState {
        match self {
            End::Done => JobState::Done,
            End::Failed(_) => JobState::Failed,
            End::Cancelled(_) => JobState::Cancelled,
        }
    }
}

/// Bound on the best-effort cleanup after a failure or cancel.
const CLEANUP_BOUND: Duration = Duration::from_secs(5);

/// End a running job (a job already ended keeps its end) and announce how
/// it ended. A job cancelled before it was planned gets a `cancelled`
/// record, which the planner respects. Returns the record as stored.
///
/// `Err` means the end may not be recorded or announced yet: the caller
/// retries (a nak), and repeating is harmless.
pub async fn end(ledger: &Ledger, job: &str, how: End) -> Result<JobRecord> {
    let reason = match &how {
        End::Done => None,
        End::Failed(r) | End::Cancelled(r) => Some(r.clone()),
    };
    let state = how.state();
    // Whether the write that landed was this call's transition (the
    // closure runs again on a compare-and-set conflict).
    let ended_here = std::sync::atomic::AtomicBool::new(false);
    let rec = loop {
        let updated = ledger
            .update_record(job, |r| {
                let change = r.state == JobState::Running;
                ended_here.store(change, std::sync::atomic::Ordering::Relaxed);
                if change {
                    r.state = state;
                    r.error = reason.clone();
                    r.finished_at = Some(now());
                }
                change
            })
            .await;
        match updated {
            Ok(rec) => break rec,
            Err(e) if e.kind() == ErrorKind::NotFound && state == JobState::Cancelled => {
                let rec = JobRecord::unplanned(job, None, state, reason.as_deref().unwrap_or(""));
                if ledger.create_record(&rec).await? {
                    break rec;
                }
                // Planned meanwhile: cancel that record.
            }
            Err(e) => return Err(e),
        }
    };
    if ended_here.load(std::sync::atomic::Ordering::Relaxed) {
        metrics::counter!(crate::metrics::JOBS_ENDED, crate::metrics::LABEL_STATE => state.as_str())
            .increment(1);
    }
    if rec.state.is_terminal() {
        announce(ledger, &rec).await?;
    }
    if matches!(rec.state, JobState::Failed | JobState::Cancelled) {
        stop_work(ledger, job).await;
    }
    Ok(rec)
}

/// Publish the end event of a terminal record. Idempotent within the
/// event stream's dedupe window; clients follow the record, so an event
/// that is lost or expired never leaves them waiting.
pub async fn announce(ledger: &Ledger, rec: &JobRecord) -> Result<()> {
    let kind = match rec.state {
        JobState::Running => return Ok(()),
        JobState::Done => EventKind::Done {
            output: rec.output.clone().unwrap_or_default(),
            manifest: subjects::MANIFEST_KEY.into(),
            seconds: rec.finished_at.unwrap_or_else(now) - rec.created_at,
        },
        JobState::Failed => EventKind::Failed {
            reason: rec.error.clone().unwrap_or_default(),
        },
        JobState::Cancelled => EventKind::Cancelled,
    };
    ledger
        .event_once(
            &rec.id,
            kind,
            &subjects::end_event_msg_id(&rec.id, rec.generation),
        )
        .await
}

/// A failed or cancelled job's work is pointless: tell workers to kill its
/// children and drop its queued tasks. Best effort and bounded: a worker
/// that misses the message still finds the record terminal.
async fn stop_work(ledger: &Ledger, job: &str) {
    let js = ledger.jetstream();
    let client = js.client();
    let work = async {
        if let Err(e) = client.publish(subjects::cancel(job), "cancel".into()).await {
            tracing::warn!(job, "cancel message not sent: {e}");
        }
        if let Err(e) = client.flush().await {
            tracing::warn!(job, "cancel message not flushed: {e}");
        }
        if let Err(e) = dispatch::purge(js, job).await {
            tracing::warn!(job, "queued tasks not purged: {e}");
        }
    };
    if tokio::time::timeout(CLEANUP_BOUND, work).await.is_err() {
        tracing::warn!(
            job,
            "stopping the job's work timed out; workers will see the record"
        );
    }
}

/// Resume a failed or cancelled job from its checkpoints: running again in
/// a new generation, only unfinished tasks queued (or the stitch, when
/// every part is done). Returns the record and the number of tasks queued.
pub async fn retry(ledger: &Ledger, job: &str) -> Result<(JobRecord, u32)> {
    let mut refusal = None;
    let rec = ledger
        .update_record(job, |r| {
            refusal = match r.state {
                JobState::Failed | JobState::Cancelled if r.plan.is_some() => None,
                JobState::Failed | JobState::Cancelled => Some(format!(
                    "job {job} was never planned ({}); submit it again",
                    r.error.as_deref().unwrap_or("no reason recorded")
                )),
                s => Some(format!(
                    "job {job} is {}; only failed or cancelled jobs can be retried",
                    format!("{s:?}").to_lowercase()
                )),
            };
            if refusal.is_some() {
                return false;
            }
            r.state = JobState::Running;
            r.generation += 1;
            r.repairs = 0;
            r.error = None;
            r.finished_at = None;
            true
        })
        .await?;
    if let Some(why) = refusal {
        return Err(Error::new(ErrorKind::InvalidSpec, why));
    }
    let queued = queue_unfinished(ledger, &rec, dispatch::generation_tag(rec.generation)).await?;
    ledger
        .event_best_effort(
            job,
            EventKind::Resumed {
                generation: rec.generation,
                tasks: queued,
            },
        )
        .await;
    Ok((rec, queued))
}

/// Queue every task of a running job that has no checkpoint, or its
/// stitch when every part has one, with Msg-Id tag `tag`. Returns how many
/// were queued.
pub async fn queue_unfinished(
    ledger: &Ledger,
    rec: &JobRecord,
    tag: Option<String>,
) -> Result<u32> {
    let (spec, plan) = dispatch::planned(rec)?;
    let done: std::collections::HashSet<String> =
        ledger.done_tasks(&rec.id).await?.into_iter().collect();
    let mut todo = dispatch::unfinished(dispatch::work_tasks(&rec.id, spec, plan)?, &done);
    if todo.is_empty() {
        todo.push(dispatch::stitch_task(&rec.id, spec, plan)?);
    }
    dispatch::publish(
        ledger.jetstream(),
        spec.priority_class(),
        &todo,
        tag.as_deref(),
    )
    .await?;
    Ok(todo.len() as u32)
}
