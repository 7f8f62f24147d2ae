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
/// Durable consumer on [`TASKS_STREAM`] shared by all workers: the normal
/// priority class (and task subjects of the shape before classes). Keeps
/// its name so dashboards and autoscalers that watch it keep working.
pub const WORKERS_CONSUMER: &str = "workers";
/// Durable consumer of the high priority class.
pub const WORKERS_HIGH_CONSUMER: &str = "workers-high";
/// Durable consumer of the low priority class.
pub const WORKERS_LOW_CONSUMER: &str = "workers-low";

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

/// Priority class of a job's tasks; each class has its own subjects and
/// its own durable consumer, so workers can choose which class to pull
/// from. A job's class comes from its spec ([`crate::JobSpec::priority_class`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PriorityClass {
    /// Priority 7–9.
    High,
    /// Priority 3–6, and jobs without one.
    Normal,
    /// Priority 0–2.
    Low,
}

impl PriorityClass {
    /// Every class, highest first.
    pub const ALL: [PriorityClass; 3] = [
        PriorityClass::High,
        PriorityClass::Normal,
        PriorityClass::Low,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PriorityClass::High => "high",
            PriorityClass::Normal => "normal",
            PriorityClass::Low => "low",
        }
    }

    /// The durable consumer on [`TASKS_STREAM`] that delivers this class.
    pub fn consumer(self) -> &'static str {
        match self {
            PriorityClass::High => WORKERS_HIGH_CONSUMER,
            PriorityClass::Normal => WORKERS_CONSUMER,
            PriorityClass::Low => WORKERS_LOW_CONSUMER,
        }
    }

    /// The task subjects this class's consumer delivers:
    /// `jetcode.tasks.<class>.>`; the normal class also takes the subjects
    /// without a class (`jetcode.tasks.<kind>.<job>`), which is where its
    /// tasks are published ([`task`]) and where tasks queued before the
    /// upgrade are. The filters of the three consumers never overlap (a
    /// work-queue stream requires that).
    pub fn filter_subjects(self) -> Vec<String> {
        let mut v = vec![format!("jetcode.tasks.{}.>", self.as_str())];
        if self == PriorityClass::Normal {
            for kind in [TaskKind::Segment, TaskKind::Audio, TaskKind::Stitch] {
                v.push(format!("jetcode.tasks.{}.*", kind.as_str()));
            }
        }
        v
    }
}

/// `jetcode.tasks.<kind>.<job>` for the normal class (every job without a
/// priority), `jetcode.tasks.<class>.<kind>.<job>` for high and low. The
/// normal class keeps the subject of the shape before classes so that a
/// worker of an earlier version, mid rolling upgrade, still counts and
/// requeues those tasks correctly (its reconciler would otherwise see no
/// queued task for a running job and requeue them all, again and again).
pub fn task(class: PriorityClass, kind: TaskKind, job: &str) -> String {
    match class {
        PriorityClass::Normal => format!("jetcode.tasks.{}.{job}", kind.as_str()),
        _ => format!("jetcode.tasks.{}.{}.{job}", class.as_str(), kind.as_str()),
    }
}

/// The job of a task subject, `jetcode.tasks.<class>.<kind>.<job>` or the
/// shape before classes, `jetcode.tasks.<kind>.<job>` (job ids have no dots).
pub fn job_of_task_subject(subject: &str) -> Option<&str> {
    let rest = subject.strip_prefix("jetcode.tasks.")?;
    let tokens = rest.split('.').count();
    let job = rest.rsplit('.').next()?;
    ((2..=3).contains(&tokens) && !job.is_empty()).then_some(job)
}

/// The task kind of a task subject (either shape).
pub fn kind_of_task_subject(subject: &str) -> Option<TaskKind> {
    job_of_task_subject(subject)?;
    let mut rev = subject.rsplit('.');
    rev.next();
    match rev.next()? {
        "segment" => Some(TaskKind::Segment),
        "audio" => Some(TaskKind::Audio),
        "stitch" => Some(TaskKind::Stitch),
        _ => None,
    }
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
/// Every task consumer (one per priority class) counts.
pub fn dead_letter_subjects() -> Vec<String> {
    let mut v = Vec::new();
    for class in PriorityClass::ALL {
        let c = class.consumer();
        v.push(format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{TASKS_STREAM}.{c}"
        ));
        v.push(format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{TASKS_STREAM}.{c}"
        ));
    }
    v.push(format!(
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{JOBS_STREAM}.{PLANNER_CONSUMER}"
    ));
    v
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

/// Filters covering every task subject of one job, for counting and
/// purging its queue: every class, and the shape before classes.
pub fn tasks_of_job(job: &str) -> [String; 2] {
    [
        format!("jetcode.tasks.*.*.{job}"),
        format!("jetcode.tasks.*.{job}"),
    ]
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

    #[test]
    fn task_subjects_carry_the_class_and_old_ones_still_parse() {
        let s = task(PriorityClass::High, TaskKind::Segment, "j-1");
        assert_eq!(s, "jetcode.tasks.high.segment.j-1");
        assert_eq!(job_of_task_subject(&s), Some("j-1"));
        assert_eq!(job_of_task_subject("jetcode.tasks.audio.j-2"), Some("j-2"));
        assert_eq!(kind_of_task_subject(&s), Some(TaskKind::Segment));
        assert_eq!(
            kind_of_task_subject("jetcode.tasks.stitch.j-2"),
            Some(TaskKind::Stitch)
        );
        assert_eq!(kind_of_task_subject("jetcode.tasks.low.nope.j"), None);
        assert_eq!(job_of_task_subject("jetcode.tasks.j-3"), None);
        assert_eq!(job_of_task_subject("jetcode.tasks.a.b.c.d"), None);
        assert_eq!(job_of_task_subject("jetcode.tasks.low.stitch."), None);
        assert_eq!(job_of_task_subject("jetcode.events.j"), None);
    }

    /// What a subject filter matches, NATS rules (`*` one token, `>` the rest).
    fn matches(filter: &str, subject: &str) -> bool {
        let (f, s): (Vec<_>, Vec<_>) = (filter.split('.').collect(), subject.split('.').collect());
        for (i, t) in f.iter().enumerate() {
            match *t {
                ">" => return s.len() > i,
                "*" if i < s.len() => {}
                t if s.get(i) == Some(&t) => {}
                _ => return false,
            }
        }
        f.len() == s.len()
    }

    #[test]
    fn normal_tasks_keep_the_subject_without_a_class() {
        // What workers of earlier versions count and requeue by.
        assert_eq!(
            task(PriorityClass::Normal, TaskKind::Segment, "j"),
            "jetcode.tasks.segment.j"
        );
        assert_eq!(
            task(PriorityClass::High, TaskKind::Segment, "j"),
            "jetcode.tasks.high.segment.j"
        );
    }

    #[test]
    fn each_task_subject_goes_to_exactly_one_class_consumer() {
        let subjects = [
            (
                task(PriorityClass::High, TaskKind::Audio, "j"),
                PriorityClass::High,
            ),
            (
                task(PriorityClass::Normal, TaskKind::Stitch, "j"),
                PriorityClass::Normal,
            ),
            (
                task(PriorityClass::Low, TaskKind::Segment, "high"),
                PriorityClass::Low,
            ),
            (
                "jetcode.tasks.segment.low".to_string(),
                PriorityClass::Normal,
            ),
            ("jetcode.tasks.stitch.j".to_string(), PriorityClass::Normal),
        ];
        for (subject, want) in subjects {
            let takers: Vec<_> = PriorityClass::ALL
                .into_iter()
                .filter(|c| c.filter_subjects().iter().any(|f| matches(f, &subject)))
                .collect();
            assert_eq!(takers, vec![want], "{subject}");
            let of_job = tasks_of_job(job_of_task_subject(&subject).unwrap());
            assert_eq!(
                of_job.iter().filter(|f| matches(f, &subject)).count(),
                1,
                "{subject}"
            );
            assert!(matches(TASKS_ALL, &subject));
        }
        assert!(!tasks_of_job("j")
            .iter()
            .any(|f| matches(f, "jetcode.tasks.high.segment.jj")));
    }
}
