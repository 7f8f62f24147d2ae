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
            error: Some(bounded(reason, MAX_REASON_BYTES)),
            created_at: t,
            updated_at: t,
            finished_at: state.is_terminal().then_some(t),
            generation: 0,
            repairs: 0,
        }
    }
}

/// Longest failure reason (or other free text) a record or event keeps,
/// bytes: a reason can quote its input (a spec's bad field, a child's
/// stderr), and nothing input-sized is echoed into KV or the event stream.
pub const MAX_REASON_BYTES: usize = 1024;

/// `text` cut to at most `max` bytes (for any `max` of 32 or more) on a
/// character boundary, with a marker saying how much was cut. Unchanged
/// when it fits.
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let marker = |cut: usize| format!(" ...[{cut} bytes cut]");
    let mut keep = max.saturating_sub(marker(text.len()).len());
    while !text.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}{}", &text[..keep], marker(text.len() - keep))
}

fn bound_in_place(text: &mut String) {
    if text.len() > MAX_REASON_BYTES {
        *text = bounded(text, MAX_REASON_BYTES);
    }
}

impl JobRecord {
    /// Cap its free text (the failure reason) at [`MAX_REASON_BYTES`].
    pub fn bound(&mut self) {
        if let Some(e) = &mut self.error {
            bound_in_place(e);
        }
    }
}

impl EventKind {
    /// Cap its free text (reasons, actions) at [`MAX_REASON_BYTES`].
    pub fn bound(&mut self) {
        match self {
            EventKind::Retried { reason, .. } | EventKind::Failed { reason } => {
                bound_in_place(reason)
            }
            EventKind::Repaired { action } => bound_in_place(action),
            EventKind::Planned { dropped, .. } => {
                for d in dropped {
                    bound_in_place(&mut d.reason);
                }
            }
            _ => {}
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
    /// Output pixels one slot encodes per second (every rendition of its
    /// segment tasks), smoothed over recent tasks and kept while idle (0:
    /// none yet): the planner divides it by a job's pixels per second of
    /// source to size chunks, so a pace measured on small renditions
    /// carries over to big ones.
    #[serde(default)]
    pub speed: f64,
    pub tasks_done: u64,
    pub started_at: f64,
    pub at: f64,
    pub draining: bool,
    /// Address of /healthz, /readyz, /metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_text_keeps_short_and_cuts_long_on_a_char_boundary() {
        assert_eq!(bounded("short", 1024), "short");
        let exact = "x".repeat(1024);
        assert_eq!(bounded(&exact, 1024), exact);
        let long = "é".repeat(100_000); // 2 bytes a char
        let b = bounded(&long, MAX_REASON_BYTES);
        assert!(b.len() <= MAX_REASON_BYTES, "{}", b.len());
        assert!(b.ends_with("bytes cut]"), "{b}");
        assert!(b.starts_with("éé"));
        let cut: usize = b
            .rsplit_once('[')
            .and_then(|(_, n)| n.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        let kept = b.len() - format!(" ...[{cut} bytes cut]").len();
        assert_eq!(kept + cut, long.len(), "the marker counts what was cut");
        assert_eq!(bounded("abcdef", 2), " ...[6 bytes cut]", "tiny max");
    }

    #[test]
    fn records_and_events_never_echo_unbounded_input() {
        let huge = format!("invalid job spec: id {:?}", "A".repeat(70_000));
        let rec = JobRecord::unplanned("j", None, JobState::Failed, &huge);
        assert!(rec.error.as_ref().unwrap().len() <= MAX_REASON_BYTES);
        let mut rec2 = rec.clone();
        rec2.error = Some(huge.clone());
        rec2.bound();
        assert!(rec2.error.unwrap().len() <= MAX_REASON_BYTES);
        for mut k in [
            EventKind::Failed {
                reason: huge.clone(),
            },
            EventKind::Retried {
                task: "seg-0".into(),
                worker: "w".into(),
                reason: huge.clone(),
            },
            EventKind::Repaired {
                action: huge.clone(),
            },
        ] {
            k.bound();
            let json = serde_json::to_string(&k).unwrap();
            assert!(json.len() < MAX_REASON_BYTES + 200, "{}", json.len());
        }
    }
}
