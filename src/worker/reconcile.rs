//! Reconciler role: finds running jobs that cannot move on by themselves
//! and moves them. Tasks can vanish (a stream restored from an old
//! snapshot, acknowledged writes lost on power failure under lazy fsync),
//! a stitch can be lost between its last checkpoint and its publish, a
//! job can be left running by a crash after its stitch's checkpoint.
//! Without this role any of those leaves a job `running` forever. (A task
//! whose attempts all died is not this role's: the consumers have no
//! max_deliver, so its next delivery reaches a worker that ends it.)
//!
//! One worker in the fleet runs it at a time: it holds a lease in
//! `jetcode-leases`, a key created once and renewed by compare-and-set;
//! the bucket's max_age frees a dead holder's lease after `LEASE_TTL`.
//! Every repair is also safe to run twice or concurrently with normal
//! work (Msg-Ids, checkpoints, CAS), so a split brain costs duplicate
//! work at worst, never a wrong result.
//!
//! A sweep reads, per running job: the task messages still queued or in
//! flight (a work queue keeps a message until it is acked, and a worker
//! checkpoints before it acks), then the checkpoints, in that order, so a
//! task finishing between the two reads is never taken for lost. A
//! diagnosis other than "finish" must be seen in two sweeps in a row
//! before it is acted on, so work in transit (a stitch being published
//! right now) is not duplicated.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use tokio_util::sync::CancellationToken;

use super::Worker;
use crate::dispatch;
use crate::error::Result;
use crate::lifecycle::{self, End};
use crate::record::{now, EventKind, JobRecord, JobState};
use crate::subjects;

/// A job younger than this (since planning or its last change) is left
/// alone: its tasks may still be on their way into the queue. Shorter
/// with a short sweep interval (twice the interval).
const GRACE_SECONDS: f64 = 20.0;
/// Repairs per job generation before the job is failed instead.
pub const MAX_REPAIRS: u32 = 3;

/// What a stranded job needs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Repair {
    /// Its stitch is checkpointed: record it done.
    Finish,
    /// Every part is done and no stitch is queued.
    QueueStitch,
    /// Unfinished tasks are missing from the queue.
    Requeue { missing: u64 },
    /// It can never move (no plan to run).
    Fail(String),
}

pub(super) async fn reconcile_loop(w: Arc<Worker>, interval: Duration, stop: CancellationToken) {
    // Renewals must come well inside the lease's lifetime.
    let interval = interval.min(crate::streams::LEASE_TTL / 3);
    let mut lease = Lease::new(w.id.clone());
    let mut suspects: HashMap<String, Repair> = HashMap::new();
    loop {
        match lease.hold(&w).await {
            Ok(true) => {
                let t0 = std::time::Instant::now();
                let grace = GRACE_SECONDS.min(2.0 * interval.as_secs_f64());
                match sweep(&w, &mut suspects, grace).await {
                    Ok(n) => {
                        metrics::histogram!(crate::metrics::RECONCILE_SECONDS)
                            .record(t0.elapsed().as_secs_f64());
                        tracing::debug!(running = n, elapsed = ?t0.elapsed(), "reconcile sweep");
                    }
                    Err(e) => tracing::warn!("reconcile sweep: {e}"),
                }
            }
            Ok(false) => suspects.clear(),
            Err(e) => {
                suspects.clear();
                tracing::debug!("reconciler lease: {e}");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
    lease.release(&w).await;
}

/// The fleet-wide reconciler lease, as seen by one worker.
struct Lease {
    holder: String,
    revision: Option<u64>,
    store: Option<kv::Store>,
}

impl Lease {
    fn new(holder: String) -> Self {
        Lease {
            holder,
            revision: None,
            store: None,
        }
    }

    /// Take or renew the lease; true while we hold it.
    async fn hold(&mut self, w: &Worker) -> Result<bool> {
        let store = match &self.store {
            Some(s) => s.clone(),
            None => {
                let s = crate::streams::ensure_bucket(&w.js, subjects::LEASES_BUCKET).await?;
                self.store = Some(s.clone());
                s
            }
        };
        let body: bytes::Bytes = self.holder.clone().into();
        let result = match self.revision {
            Some(rev) => store
                .update(subjects::RECONCILER_LEASE, body, rev)
                .await
                .map_err(|e| e.to_string()),
            None => store
                .create(subjects::RECONCILER_LEASE, body)
                .await
                .map_err(|e| e.to_string()),
        };
        let result = match (result, self.revision) {
            // Our lease expired (a long sweep, a NATS blip): take it again
            // if nobody else did, keeping what this holder has seen.
            (Err(_), Some(_)) => store
                .create(subjects::RECONCILER_LEASE, self.holder.clone().into())
                .await
                .map_err(|e| e.to_string()),
            (r, _) => r,
        };
        match result {
            Ok(rev) => {
                if self.revision.is_none() {
                    tracing::info!("reconciler lease taken: this worker reconciles the fleet");
                }
                self.revision = Some(rev);
                Ok(true)
            }
            Err(e) => {
                if self.revision.take().is_some() {
                    tracing::warn!("reconciler lease lost: {e}");
                }
                // Someone else holds it (or NATS trouble): not us.
                Ok(false)
            }
        }
    }

    /// Hand the lease over at once on shutdown (bounded: it expires anyway).
    async fn release(&self, w: &Worker) {
        if !super::connected(&w.nats) {
            return; // it expires by itself
        }
        if let (Some(store), Some(rev)) = (&self.store, self.revision) {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                store.delete_expect_revision(subjects::RECONCILER_LEASE, Some(rev)),
            )
            .await;
        }
    }
}

/// One pass over every running job; returns how many were running.
async fn sweep(w: &Worker, suspects: &mut HashMap<String, Repair>, grace: f64) -> Result<usize> {
    let running: Vec<JobRecord> = w
        .ledger
        .records()
        .await?
        .into_iter()
        .filter(|r| r.state == JobState::Running)
        .collect();
    let mut seen = HashSet::new();
    for rec in &running {
        if now() - rec.updated_at < grace {
            continue;
        }
        let repair = match diagnose(w, rec).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(job = %rec.id, "reconcile: {e}");
                continue;
            }
        };
        let Some(repair) = repair else { continue };
        seen.insert(rec.id.clone());
        let confirmed = matches!(repair, Repair::Finish | Repair::Fail(_))
            || suspects.get(&rec.id) == Some(&repair);
        if !confirmed {
            suspects.insert(rec.id.clone(), repair);
            continue;
        }
        suspects.remove(&rec.id);
        if let Err(e) = apply(w, rec, &repair).await {
            tracing::warn!(job = %rec.id, ?repair, "repair failed, will try again: {e}");
        }
    }
    suspects.retain(|job, _| seen.contains(job));
    Ok(running.len())
}

/// What, if anything, a running job needs to move on.
async fn diagnose(w: &Worker, rec: &JobRecord) -> Result<Option<Repair>> {
    let (spec, plan) = match dispatch::planned(rec) {
        Ok(sp) => sp,
        Err(e) => return Ok(Some(Repair::Fail(e.to_string()))),
    };
    // Queue first, then checkpoints (see the module comment).
    let (queued_work, queued_stitch) = dispatch::queued(&w.js, &rec.id).await?;
    let done: HashSet<String> = w.ledger.done_tasks(&rec.id).await?.into_iter().collect();
    if done.contains(crate::task::STITCH_TASK_ID) {
        return Ok(Some(Repair::Finish));
    }
    let unfinished =
        dispatch::unfinished(dispatch::work_tasks(&rec.id, spec, plan)?, &done).len() as u64;
    if unfinished == 0 {
        return Ok((queued_stitch == 0).then_some(Repair::QueueStitch));
    }
    Ok((queued_work < unfinished).then(|| Repair::Requeue {
        missing: unfinished - queued_work,
    }))
}

async fn apply(w: &Worker, rec: &JobRecord, repair: &Repair) -> Result<()> {
    match repair {
        Repair::Finish => {
            tracing::warn!(job = %rec.id, "stitch checkpointed but job still running: finishing it");
            lifecycle::end(&w.ledger, &rec.id, End::Done).await?;
        }
        Repair::Fail(reason) => {
            lifecycle::end(&w.ledger, &rec.id, End::Failed(reason.clone())).await?;
        }
        Repair::QueueStitch | Repair::Requeue { .. } => {
            if rec.repairs >= MAX_REPAIRS {
                let reason = format!(
                    "its queued work vanished {} times (is the task stream being purged or lost?)",
                    rec.repairs + 1
                );
                lifecycle::end(&w.ledger, &rec.id, End::Failed(reason)).await?;
                return Ok(());
            }
            // Count the repair first: a crash after queueing must not
            // allow unbounded repairs.
            let rec = w
                .ledger
                .update_record(&rec.id, |r| {
                    let ok = r.state == JobState::Running;
                    if ok {
                        r.repairs += 1;
                    }
                    ok
                })
                .await?;
            if rec.state != JobState::Running {
                return Ok(());
            }
            let tag = format!("g{}r{}", rec.generation, rec.repairs);
            let queued = lifecycle::queue_unfinished(&w.ledger, &rec, Some(tag)).await?;
            let action = match repair {
                Repair::Requeue { missing } => {
                    format!("{missing} task(s) had vanished from the queue: requeued {queued} unfinished")
                }
                _ => "every part was done but no stitch was queued: queued it".into(),
            };
            tracing::warn!(job = %rec.id, "reconciled: {action}");
            metrics::counter!(crate::metrics::RECONCILE_REPAIRS).increment(1);
            w.ledger
                .event_best_effort(&rec.id, EventKind::Repaired { action })
                .await;
        }
    }
    Ok(())
}
