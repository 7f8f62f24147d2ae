//! Task messages on `jetcode.tasks.<kind>.<job>` and the work orders a
//! worker hands to its media child process.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::job::{OutputFormat, Rendition};
use crate::plan::{Plan, Segment};
use crate::subjects::TaskKind;

/// A task as published to JETCODE_TASKS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    pub job: String,
    /// Unique within the job: `seg-<rendition>-<index>`, `audio`, `stitch`.
    pub id: String,
    /// Source URL (validated spec).
    pub source: String,
    /// Output URL (validated spec).
    pub output: String,
    pub body: TaskBody,
}

/// What the task does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TaskBody {
    Segment {
        rendition: Rendition,
        segment: Segment,
        fps_num: u32,
        fps_den: u32,
        #[serde(default)]
        pts_offset_ns: Option<i64>,
    },
    Audio,
    Stitch {
        plan: Plan,
        renditions: Vec<Rendition>,
        formats: Vec<OutputFormat>,
    },
}

impl Task {
    pub fn kind(&self) -> TaskKind {
        match self.body {
            TaskBody::Segment { .. } => TaskKind::Segment,
            TaskBody::Audio => TaskKind::Audio,
            TaskBody::Stitch { .. } => TaskKind::Stitch,
        }
    }

    pub fn segment_id(rendition: &str, index: u32) -> String {
        format!("seg-{rendition}-{index:05}")
    }
}

/// Task id of the audio task.
pub const AUDIO_TASK_ID: &str = "audio";
/// Task id of the stitch task.
pub const STITCH_TASK_ID: &str = "stitch";

/// Work order for `jetcode media segment`: decode `[segment.start_ns,
/// segment.end_ns)` of `input`, encode as `rendition`, write an MPEG-TS part
/// that keeps the source timeline to `output`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentWork {
    pub input: PathBuf,
    pub output: PathBuf,
    pub rendition: Rendition,
    pub segment: Segment,
    pub fps_num: u32,
    pub fps_den: u32,
    /// [`crate::plan::Plan::pts_offset_ns`] of the source.
    #[serde(default)]
    pub pts_offset_ns: Option<i64>,
}

/// Work order for `jetcode media audio`: encode the whole audio track of
/// `input` once to AAC in MPEG-TS at `output`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioWork {
    pub input: PathBuf,
    pub output: PathBuf,
}

/// Work order for `jetcode media stitch`: parts already lie under
/// `output_dir` (`parts/<rendition>/<index>.ts`, `parts/audio.ts`); write
/// the MP4s, HLS playlists and `manifest.json` there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StitchWork {
    pub output_dir: PathBuf,
    pub plan: Plan,
    pub renditions: Vec<Rendition>,
    pub formats: Vec<OutputFormat>,
}

/// A line a media child prints on stdout, one JSON object per line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum ChildLine {
    /// Frames (or, for audio, milliseconds) done so far.
    Progress { done: u64, total: u64, fps: f64 },
    /// Finished; `frames` produced (video) and a free-form summary.
    Done {
        frames: u64,
        summary: serde_json::Value,
    },
    /// Failed; `permanent` means retrying cannot help (bad media).
    Failed { reason: String, permanent: bool },
}

/// Exit code of a media child whose failure is permanent (bad media, bad order).
pub const EXIT_PERMANENT: i32 = 3;
/// Exit code of a media child whose failure may succeed on retry.
pub const EXIT_TRANSIENT: i32 = 4;
