//! Dead-letter role: turn JetStream's "gave up on this message" advisories
//! into failed jobs.
//!
//! A worker fails a job itself when a task fails permanently or on its last
//! delivery. What it cannot report is its own death: a task whose every
//! delivery died with its worker (OOM kill, power loss) is simply never
//! delivered again, and its job would stay `running` forever. The server
//! announces that with a MAX_DELIVERIES advisory, which `JETCODE_DEAD`
//! stores; every worker shares one durable consumer on it, so each advisory
//! is handled once, even if no worker was alive when it was emitted.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, AckKind};
use serde::Deserialize;

use super::{planner, tasks, Worker};
use crate::error::{Error, ErrorKind, Result};
use crate::job::JobSpec;
use crate::lifecycle::{self, End};
use crate::subjects;
use crate::task::Task;

/// The fields we use of `io.nats.jetstream.advisory.v1.max_deliver` and
/// `...terminated`.
#[derive(Debug, Deserialize)]
struct Advisory {
    #[serde(rename = "type")]
    kind: String,
    stream: String,
    stream_seq: u64,
    #[serde(default)]
    deliveries: u64,
}

impl Advisory {
    fn terminated(&self) -> bool {
        self.kind.ends_with(".terminated")
    }
}

/// Tries before an advisory whose job has no record is dropped.
const NO_RECORD_TRIES: i64 = 5;

pub(super) async fn dead_letter_loop(w: Arc<Worker>, consumer: PullConsumer) {
    while let Some(mut batch) = super::next_batch(&w, &consumer, 16, "dead-letter").await {
        while let Some(Ok(msg)) = batch.next(&w.shutdown).await {
            let advisory: Advisory = match serde_json::from_slice(&msg.payload) {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(subject = %msg.subject, "unreadable advisory, dropping it: {e}");
                    let _ = msg.double_ack().await;
                    continue;
                }
            };
            let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
            match handle(&w, &advisory).await {
                Ok(()) => {
                    let _ = msg.double_ack().await;
                }
                Err(e) if e.kind() == ErrorKind::NotFound && delivered >= NO_RECORD_TRIES => {
                    // A dead task of a job that has no record (purged by
                    // hand): nothing to fail, stop asking.
                    tracing::warn!(
                        ?advisory,
                        "dead letter dropped after {delivered} tries: {e}"
                    );
                    let _ = msg.double_ack().await;
                }
                Err(e) => {
                    tracing::warn!(?advisory, "dead letter not handled yet: {e}");
                    let _ = msg
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(2))))
                        .await;
                }
            }
        }
    }
}

/// Fail the job the dead message belonged to. Idempotent: failing a job that
/// is already terminal changes nothing.
async fn handle(w: &Worker, a: &Advisory) -> Result<()> {
    let stream =
        w.js.get_stream_no_info(&a.stream)
            .await
            .map_err(|e| Error::js("open stream of a dead message", e))?;
    let dead = match stream.get_raw_message(a.stream_seq).await {
        Ok(m) => m,
        // Acked in the meantime (a slow worker finished after all) or deleted
        // by an earlier pass over this advisory.
        Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
            return Ok(())
        }
        Err(e) => return Err(Error::js("read dead message", e)),
    };
    if a.stream == subjects::JOBS_STREAM {
        let spec = JobSpec::from_json(&dead.payload).ok();
        let id = spec
            .as_ref()
            .and_then(|s| s.id.clone())
            .or_else(|| planner::raw_id(&dead.payload))
            .unwrap_or_else(|| format!("job-{}", a.stream_seq));
        let reason = format!(
            "planning gave up after {} deliveries (planner crashed or lost NATS each time)",
            a.deliveries
        );
        tracing::error!(job = %id, "{reason}");
        // No record yet: create it failed. A record left `running` (planned,
        // but publishing its tasks kept failing): fail it. Each is a no-op
        // in the other case.
        planner::reject(w, &id, spec, reason.clone()).await?;
        lifecycle::end(&w.ledger, &id, End::Failed(reason)).await?;
        return Ok(());
    }
    if a.stream != subjects::TASKS_STREAM {
        return Ok(());
    }
    match Task::decode(&dead.payload) {
        Ok(task) => {
            // Its last delivery may have checkpointed before it died, or
            // finished past its deadline: then the job is not failed, it
            // needs its completion step.
            let record = w.ledger.record(&task.job).await?;
            let checkpointed = w.ledger.is_done(&task.job, &task.id).await?;
            match record {
                Some((rec, _)) if checkpointed && !rec.state.is_terminal() => {
                    tracing::info!(job = %task.job, task = %task.id, "dead task was checkpointed: completing instead of failing");
                    tasks::after_checkpoint(w, &rec, &task).await?;
                }
                _ => {
                    let reason = if a.terminated() {
                        format!("task {} was terminated", task.id)
                    } else {
                        format!(
                            "task {} was delivered {} times and never finished (its workers died, hung or lost NATS)",
                            task.id, a.deliveries
                        )
                    };
                    lifecycle::end(&w.ledger, &task.job, End::Failed(reason)).await?;
                }
            }
        }
        Err(e) => {
            if let Some(job) = subjects::job_of_task_subject(dead.subject.as_str()) {
                let reason = format!("task {} is unreadable: {e:?}", a.stream_seq);
                lifecycle::end(&w.ledger, job, End::Failed(reason)).await?;
            }
        }
    }
    // Nothing will deliver it again; keep the work queue to live work. The
    // advisory stays in JETCODE_DEAD as the record.
    stream
        .delete_message(a.stream_seq)
        .await
        .map_err(|e| Error::js("delete dead task", e))?;
    Ok(())
}
