//! The job record kept in `jetcode-jobs` and the events on `jetcode.events.<job>`.

use serde::{Deserialize, Serialize};

use crate::job::JobSpec;
use crate::plan::Plan;

/// Lifecycle state of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Planned; tasks are queued or running.
    Running,
    /// Outputs written and verified.
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    /// The state's name as records spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// True when nothing more will happen to the job.
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobState::Running)
    }
}

/// What `jetcode-jobs` holds per job. Updated only by compare-and-set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    /// The spec as submitted; absent when it could not be parsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<JobSpec>,
    pub state: JobState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
    /// Number of segment + audio tasks (the stitch comes after them).
    #[serde(default)]
    pub tasks_total: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Output location URL (from the spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Unix seconds.
    pub created_at: f64,
    pub updated_at: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<f64>,
    /// How many times `retry` resumed this job (0: never). Tags the
    /// Msg-Ids of republished tasks and of the job's end event, so the
    /// dedupe window never swallows a later run's messages.
    #[serde(default)]
    pub generation: u32,
    /// How many times the reconciler republished vanished work in this
    /// generation; a job that keeps losing it fails instead of looping.
    #[serde(default)]
    pub repairs: u32,
}

impl JobRecord {
    /// A record in `state` with nothing planned (rejected, or cancelled
    /// before planning).
    pub fn unplanned(id: &str, spec: Option<JobSpec>, state: JobState, reason: &str) -> Self {
        let t = now();
        JobRecord {
            id: id.to_string(),
            output: spec.as_ref().map(|s| s.output.clone()),
            spec,
            state,
            plan: None,
            tasks_total: 0,
            error: Some(reason.to_string()),
            created_at: t,
            updated_at: t,
            finished_at: state.is_terminal().then_some(t),
            generation: 0,
            repairs: 0,
        }
    }
}

/// An event on `jetcode.events.<job>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub job: String,
    /// Unix seconds.
    pub time: f64,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    Planned {
        segments: u32,
        renditions: u32,
        tasks: u32,
        frames: u64,
        /// Renditions of the spec that are not encoded, and why.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        dropped: Vec<crate::plan::DroppedRung>,
    },
    TaskStarted {
        task: String,
        worker: String,
        /// JetStream delivery count of this task message (1 = first try).
        #[serde(default)]
        attempt: u64,
    },
    /// One checkpointed part: `task` is the part's id (`seg-<rendition>-<i>`,
    /// `audio`, `stitch`), so a segment task of a ladder reports one per
    /// rendition; `Planned.tasks` counts these.
    TaskDone {
        task: String,
        worker: String,
        seconds: f64,
        fps: f64,
        frames: u64,
    },
    Retried {
        task: String,
        worker: String,
        reason: String,
    },
    Done {
        output: String,
        manifest: String,
        seconds: f64,
    },
    Failed {
        reason: String,
    },
    Cancelled,
    /// `retry` resumed a failed or cancelled job: `tasks` unfinished tasks
    /// were queued again, every checkpoint is reused.
    Resumed {
        generation: u32,
        tasks: u32,
    },
    /// The reconciler found the job stranded and moved it on.
    Repaired {
        action: String,
    },
}

impl EventKind {
    /// True for the last event a job emits.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            EventKind::Done { .. } | EventKind::Failed { .. } | EventKind::Cancelled
        )
    }
}

/// Seconds since the Unix epoch, as a float.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A task's checkpoint in `jetcode-progress`; its existence means "done".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDone {
    pub worker: String,
    pub seconds: f64,
    pub frames: u64,
    pub at: f64,
    /// Size of the task's output part; absent for the stitch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// SHA-256 of the part as checkpointed; the stitch refuses a part that
    /// no longer matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Frames the task's child decoded for all its parts together (a
    /// segment's renditions share one decode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoded: Option<u64>,
}

/// A worker's heartbeat in `jetcode-workers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub id: String,
    pub host: String,
    pub version: String,
    pub slots: u32,
    pub busy: u32,
    /// Whole-machine CPU use, percent.
    pub cpu: f32,
    /// Resident memory of the worker and its children, bytes.
    pub rss: u64,
    /// Machine memory in use, percent.
    pub mem: f32,
    /// Frames encoded per second over the last interval, all slots.
    pub fps: f64,
    pub tasks_done: u64,
    pub started_at: f64,
    pub at: f64,
    pub draining: bool,
    /// Address of /healthz, /readyz, /metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
}
