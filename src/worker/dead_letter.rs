//! Dead-letter role: the safety net for messages JetStream gave up on.
//!
//! Workers enforce the attempt budget themselves (the consumers have no
//! max_deliver, see `streams::TASK_MAX_DELIVER`), and terminate a task
//! only after its job's failure is recorded, so on a current topology the
//! advisories stored in `JETCODE_DEAD` are records, and handling them is
//! a no-op. A topology applied by an older release still has max_deliver
//! on its consumers: there a MAX_DELIVERIES advisory is the only news of
//! a task whose every delivery died with its worker, and this role fails
//! its job (or completes it, if that task was checkpointed after all) and
//! removes the dead task from the queue. Every worker shares one durable
//! consumer on `JETCODE_DEAD`, so each advisory is handled once.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, AckKind};
use serde::Deserialize;

use super::{planner, tasks, Worker};
use crate::error::{Error, ErrorKind, Result};
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
    metrics::counter!(crate::metrics::DEAD_LETTERS).increment(1);
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
        return planner::give_up(w, &dead.payload, a.stream_seq, a.deliveries as i64).await;
    }
    if a.stream != subjects::TASKS_STREAM {
        return Ok(());
    }
    // A checkpointed part's job, to check for completion once its dead
    // message is out of the queue.
    let mut completes = None;
    match Task::decode(&dead.payload) {
        Ok(task) => {
            // Its last delivery may have checkpointed before it died, or
            // finished past its deadline: then the job is not failed, it
            // needs its completion step.
            let record = w.ledger.record(&task.job).await?;
            let checkpointed = w.ledger.task_done(&task).await?;
            match record {
                Some((rec, _)) if checkpointed && !rec.state.is_terminal() => {
                    tracing::info!(job = %task.job, task = %task.id, "dead task was checkpointed: completing instead of failing");
                    if task.kind() == crate::subjects::TaskKind::Stitch {
                        tasks::finish_job(w, &task).await?;
                    } else {
                        completes = Some(task.job.clone());
                    }
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
    if let Some(job) = completes {
        tasks::queue_stitch_if_complete(w, &job).await?;
    }
    Ok(())
}
