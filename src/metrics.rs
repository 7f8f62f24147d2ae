//! Every metric name and label in one place.

/// Tasks finished, by `kind` and `outcome` (ok, retried, failed, cancelled, skipped).
pub const TASKS_TOTAL: &str = "jetcode_tasks_total";
/// Seconds a task's child ran, by `kind`.
pub const TASK_SECONDS: &str = "jetcode_task_seconds";
/// Video frames encoded.
pub const FRAMES_ENCODED: &str = "jetcode_frames_encoded_total";
/// Slots configured on this worker.
pub const SLOTS: &str = "jetcode_slots";
/// Slots busy right now.
pub const SLOTS_BUSY: &str = "jetcode_slots_busy";
/// Task deliveries that were redeliveries (delivered > 1).
pub const REDELIVERIES: &str = "jetcode_redeliveries_total";
/// Children killed because their progress stopped.
pub const STALLS: &str = "jetcode_stalls_total";
/// Jobs planned, by `outcome` (planned, rejected).
pub const JOBS_PLANNED: &str = "jetcode_jobs_planned_total";
/// Seconds one reconciler sweep took (only the lease holder sweeps).
pub const RECONCILE_SECONDS: &str = "jetcode_reconcile_sweep_seconds";
/// Stranded jobs the reconciler moved on by requeueing work.
pub const RECONCILE_REPAIRS: &str = "jetcode_reconcile_repairs_total";
/// Times a worker listed a job's checkpoints to see whether its parts are
/// all done. Kept to about one per job by counting its queued tasks first.
pub const COMPLETION_SCANS: &str = "jetcode_completion_scans_total";
/// The scaler's last lag reading: tasks and specs waiting or in flight.
pub const SCALER_LAG: &str = "jetcode_scaler_lag";
/// Workers the scaler's policy asks for.
pub const SCALER_DESIRED: &str = "jetcode_scaler_workers_desired";
/// Workers the scaler's actuator runs.
pub const SCALER_ACTUAL: &str = "jetcode_scaler_workers_actual";
/// Scaling changes, by `reason`.
pub const SCALER_DECISIONS: &str = "jetcode_scaler_decisions_total";

/// Jobs ended, by state (done, failed, cancelled).
pub const JOBS_ENDED: &str = "jetcode_jobs_ended_total";
/// Dead-letter advisories handled (a message that ran out of deliveries).
pub const DEAD_LETTERS: &str = "jetcode_dead_letters_total";
/// Requests a media child made to read its source (one HEAD, then ranged
/// GETs of cache blocks), by task `kind` (probe, segment, audio).
pub const SOURCE_REQUESTS: &str = "jetcode_source_requests_total";
/// Bytes a media child read from its source, by task `kind`.
pub const SOURCE_BYTES: &str = "jetcode_source_bytes_total";
/// Source blocks a media child fetched again after its cache dropped them
/// (0 unless a source's working set outgrows the cache), by task `kind`.
pub const SOURCE_REFETCHES: &str = "jetcode_source_refetches_total";
/// Requests this worker made to S3 (part and output uploads, downloads,
/// digests), counted by the worker; media children's source reads are in
/// [`SOURCE_REQUESTS`].
pub const S3_REQUESTS: &str = "jetcode_s3_requests_total";

pub const LABEL_REASON: &str = "reason";
pub const LABEL_STATE: &str = "state";
pub const LABEL_KIND: &str = "kind";
pub const LABEL_OUTCOME: &str = "outcome";

/// Describe every metric once, so /metrics carries HELP lines.
pub fn describe() {
    metrics::describe_counter!(TASKS_TOTAL, "Tasks finished by kind and outcome");
    metrics::describe_histogram!(
        TASK_SECONDS,
        metrics::Unit::Seconds,
        "Task run time by kind"
    );
    metrics::describe_counter!(FRAMES_ENCODED, "Video frames encoded");
    metrics::describe_gauge!(SLOTS, "Task slots of this worker");
    metrics::describe_gauge!(SLOTS_BUSY, "Task slots in use");
    metrics::describe_counter!(REDELIVERIES, "Task deliveries that were redeliveries");
    metrics::describe_counter!(STALLS, "Children killed for stalled progress");
    metrics::describe_counter!(JOBS_PLANNED, "Job specs handled by the planner, by outcome");
    metrics::describe_counter!(JOBS_ENDED, "Jobs ended by this process, by state");
    metrics::describe_counter!(DEAD_LETTERS, "Dead-letter advisories handled");
    metrics::describe_counter!(
        SOURCE_REQUESTS,
        "Requests media children made to read sources, by task kind"
    );
    metrics::describe_counter!(
        SOURCE_BYTES,
        metrics::Unit::Bytes,
        "Bytes media children read from sources, by task kind"
    );
    metrics::describe_counter!(
        SOURCE_REFETCHES,
        "Source blocks fetched again after the block cache dropped them"
    );
    metrics::describe_counter!(S3_REQUESTS, "Requests this worker made to S3");
    metrics::describe_histogram!(
        RECONCILE_SECONDS,
        metrics::Unit::Seconds,
        "Duration of a reconciler sweep over running jobs"
    );
    metrics::describe_gauge!(SCALER_LAG, "Tasks and job specs waiting or in flight");
    metrics::describe_gauge!(SCALER_DESIRED, "Workers the scaling policy asks for");
    metrics::describe_gauge!(SCALER_ACTUAL, "Workers the actuator runs");
    metrics::describe_counter!(SCALER_DECISIONS, "Scaling changes by reason");
    metrics::describe_counter!(
        COMPLETION_SCANS,
        "Listings of a job's checkpoints to check for completion"
    );
    metrics::describe_counter!(
        RECONCILE_REPAIRS,
        "Stranded jobs requeued by the reconciler"
    );
}
