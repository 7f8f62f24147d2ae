//! Every subject, stream, consumer and bucket name. Nothing else spells them.

/// Work-queue stream of submitted job specs.
pub const JOBS_STREAM: &str = "JETCODE_JOBS";
/// Subject producers publish job specs to.
pub const JOBS_SUBMIT: &str = "jetcode.jobs.submit";
/// Durable consumer on [`JOBS_STREAM`] run by every worker's planner role.
pub const PLANNER_CONSUMER: &str = "planner";

/// Work-queue stream of segment, audio and stitch tasks.
pub const TASKS_STREAM: &str = "JETCODE_TASKS";
/// Wildcard covering every task subject.
pub const TASKS_ALL: &str = "jetcode.tasks.>";
/// Durable consumer on [`TASKS_STREAM`] shared by all workers.
pub const WORKERS_CONSUMER: &str = "workers";

/// Lifecycle and progress events, retained by age.
pub const EVENTS_STREAM: &str = "JETCODE_EVENTS";
/// Wildcard covering every job's events.
pub const EVENTS_ALL: &str = "jetcode.events.>";

/// Dead-letter stream: advisories for tasks that exhausted deliveries or were terminated.
pub const DEAD_STREAM: &str = "JETCODE_DEAD";
/// Durable consumer on [`DEAD_STREAM`] run by every worker's dead-letter role.
pub const DEAD_LETTER_CONSUMER: &str = "dead-letter";

/// KV bucket: job id -> JobRecord.
pub const JOBS_BUCKET: &str = "jetcode-jobs";
/// KV bucket: `<job>.<task>` -> TaskDone; the checkpoint.
pub const PROGRESS_BUCKET: &str = "jetcode-progress";
/// KV bucket: worker id -> Heartbeat, short max_age.
pub const WORKERS_BUCKET: &str = "jetcode-workers";

/// Name of the `nats micro` service each worker registers.
pub const SERVICE_NAME: &str = "jetcode-worker";

/// Kinds of task, as they appear in task subjects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    Segment,
    Audio,
    Stitch,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Segment => "segment",
            TaskKind::Audio => "audio",
            TaskKind::Stitch => "stitch",
        }
    }
}

/// `jetcode.tasks.<kind>.<job>`
pub fn task(kind: TaskKind, job: &str) -> String {
    format!("jetcode.tasks.{}.{job}", kind.as_str())
}

/// The job of a task subject `jetcode.tasks.<kind>.<job>` (job ids have no dots).
pub fn job_of_task_subject(subject: &str) -> Option<&str> {
    subject
        .strip_prefix("jetcode.tasks.")?
        .split_once('.')
        .map(|(_, job)| job)
        .filter(|j| !j.is_empty() && !j.contains('.'))
}

/// `jetcode.events.<job>`
pub fn events(job: &str) -> String {
    format!("jetcode.events.{job}")
}

/// `jetcode.control.cancel.<job>`
pub fn cancel(job: &str) -> String {
    format!("jetcode.control.cancel.{job}")
}

/// Wildcard of every cancel message.
pub const CANCEL_ALL: &str = "jetcode.control.cancel.*";

/// Advisory subjects the dead-letter stream captures: tasks that exhausted
/// their deliveries or were terminated, and specs the planner gave up on.
pub fn dead_letter_subjects() -> Vec<String> {
    vec![
        format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{TASKS_STREAM}.{WORKERS_CONSUMER}"),
        format!("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{TASKS_STREAM}.{WORKERS_CONSUMER}"),
        format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{JOBS_STREAM}.{PLANNER_CONSUMER}"),
    ]
}

/// Msg-Id of a task's fresh copy, published when a worker hands the task
/// back (drain) so the hand-back does not spend one of its deliveries:
/// `<original Msg-Id>.h<stream seq of the message handed back>`.
pub fn handback_msg_id(original: &str, seq: u64) -> String {
    format!("{original}.h{seq}")
}

/// The Msg-Id a hand-back copy was made from: `id` without its trailing
/// `.h<seq>` parts, so copies of copies do not grow their Msg-Id.
pub fn handback_base(id: &str) -> &str {
    let mut base = id;
    while let Some((head, tail)) = base.rsplit_once(".h") {
        if tail.is_empty() || !tail.bytes().all(|b| b.is_ascii_digit()) {
            break;
        }
        base = head;
    }
    base
}

/// Key of a task's checkpoint in [`PROGRESS_BUCKET`]: `<job>.<task>`.
pub fn progress_key(job: &str, task: &str) -> String {
    format!("{job}.{task}")
}

/// Msg-Id of a task message: `<job>.<task>`, or `<job>.<task>.<tag>` for
/// a later copy (a retry generation `g<n>`, a reconciler repair `g<n>r<m>`)
/// that the 1 h dedupe window must not swallow.
pub fn task_msg_id(job: &str, task: &str, tag: Option<&str>) -> String {
    match tag {
        Some(t) => format!("{job}.{task}.{t}"),
        None => format!("{job}.{task}"),
    }
}

/// Msg-Id of a job's end event (done, failed, cancelled) in one
/// generation: whoever sees the end may announce it; one event is stored.
pub fn end_event_msg_id(job: &str, generation: u32) -> String {
    format!("{job}.end.g{generation}")
}

/// Every task subject of one job, for counting and purging its queue.
pub fn tasks_of_job(job: &str) -> String {
    format!("jetcode.tasks.*.{job}")
}

/// KV bucket of leases (one active reconciler in the fleet), short max_age.
pub const LEASES_BUCKET: &str = "jetcode-leases";
/// Key of the reconciler's lease in [`LEASES_BUCKET`].
pub const RECONCILER_LEASE: &str = "reconciler";

/// Object key of an encoded part, relative to the job's output.
pub fn part_key(rendition: &str, index: u32) -> String {
    format!("parts/{rendition}/{index:05}.ts")
}

/// Object key of the job's encoded audio, relative to the job's output.
pub const AUDIO_PART_KEY: &str = "parts/audio.ts";
/// Object key of the manifest, relative to the job's output.
pub const MANIFEST_KEY: &str = "manifest.json";
/// Object key of the HLS master playlist, relative to the job's output.
pub const HLS_MASTER_KEY: &str = "hls/master.m3u8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handback_ids_do_not_grow() {
        assert_eq!(handback_base("job.seg-a-00001"), "job.seg-a-00001");
        assert_eq!(handback_base("job.seg-a-00001.h12.h40"), "job.seg-a-00001");
        assert_eq!(handback_base("job.stitch.g1r2.h7"), "job.stitch.g1r2");
        assert_eq!(handback_base("job-h.hls.hx"), "job-h.hls.hx");
    }
}
