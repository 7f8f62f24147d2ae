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
    },
    TaskStarted {
        task: String,
        worker: String,
        /// JetStream delivery count of this task message (1 = first try).
        #[serde(default)]
        attempt: u64,
    },
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
