//! Task messages on `jetcode.tasks.<kind>.<job>` and the work orders a
//! worker hands to its media child process.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::job::{OutputFormat, Rendition};
use crate::plan::{Plan, Segment};
use crate::subjects::TaskKind;

/// Version of the task message format this build writes and understands.
/// 2: segment tasks carry the orientation and frame spacing of the source,
/// audio tasks the track, and renditions their planned size; a version 1
/// worker would ignore them and encode sideways, interlaced or upscaled
/// parts, so it must hand version 2 tasks back instead.
/// A newer worker may add fields (ignored here) or bump this for a change
/// an older worker must not guess at: it hands such tasks back for a newer
/// worker instead of failing the job (rolling upgrades).
pub const TASK_VERSION: u32 = 2;

/// A task as published to JETCODE_TASKS. Unlike the user-facing JobSpec,
/// unknown fields are tolerated: they come from newer workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Message format version; absent in messages of the first release.
    #[serde(default = "first_version")]
    pub v: u32,
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
        #[serde(default)]
        min_frame_ns: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        orientation: Option<String>,
    },
    Audio {
        /// The source track to encode ([`crate::plan::Plan::audio_stream`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stream: Option<String>,
    },
    Stitch {
        plan: Plan,
        renditions: Vec<Rendition>,
        formats: Vec<OutputFormat>,
    },
}

fn first_version() -> u32 {
    1
}

/// Why a task message could not be used.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskDecodeError {
    /// Written by a newer jetcode: leave it for a worker that knows it.
    Newer(u32),
    /// Not a task at all.
    Unreadable(String),
}

impl Task {
    /// Decode a task message, telling "too new for me" from "broken".
    pub fn decode(payload: &[u8]) -> Result<Task, TaskDecodeError> {
        #[derive(Deserialize)]
        struct Envelope {
            #[serde(default = "first_version")]
            v: u32,
        }
        if let Ok(env) = serde_json::from_slice::<Envelope>(payload) {
            if env.v > TASK_VERSION {
                return Err(TaskDecodeError::Newer(env.v));
            }
        }
        serde_json::from_slice(payload).map_err(|e| TaskDecodeError::Unreadable(e.to_string()))
    }

    pub fn kind(&self) -> TaskKind {
        match self.body {
            TaskBody::Segment { .. } => TaskKind::Segment,
            TaskBody::Audio { .. } => TaskKind::Audio,
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
    /// [`crate::plan::Plan::min_frame_ns`].
    #[serde(default)]
    pub min_frame_ns: u64,
    /// [`crate::plan::Plan::orientation`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orientation: Option<String>,
    /// Threads for decoder, converter, scaler and encoder (0: each picks).
    #[serde(default)]
    pub threads: u32,
}

impl SegmentWork {
    /// The order for `segment` of `plan`, encoded as `rendition`, with the
    /// plan's timing and orientation; threads left to each element.
    pub fn of_plan(
        plan: &Plan,
        segment: Segment,
        rendition: Rendition,
        input: PathBuf,
        output: PathBuf,
    ) -> Self {
        SegmentWork {
            input,
            output,
            rendition,
            segment,
            fps_num: plan.fps_num,
            fps_den: plan.fps_den,
            pts_offset_ns: plan.pts_offset_ns,
            min_frame_ns: plan.min_frame_ns,
            orientation: plan.orientation.clone(),
            threads: 0,
        }
    }
}

/// Work order for `jetcode media audio`: encode the whole audio track of
/// `input` once to AAC in MPEG-TS at `output`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioWork {
    pub input: PathBuf,
    pub output: PathBuf,
    /// Tail of the stream id of the track to encode; None: the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
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
    /// No frames, but work is moving (a stitch copying, rewriting for
    /// faststart, verifying, hashing): `io_bytes` read + written so far.
    /// Resets the stall timer; counts no frames.
    Alive { io_bytes: u64 },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_unknown_fields() {
        let old = br#"{"job":"j","id":"audio","source":"file:///a","output":"file:///o/","body":{"kind":"audio"}}"#;
        let t = Task::decode(old).unwrap();
        assert_eq!((t.v, t.kind()), (1, TaskKind::Audio));
        let extra = br#"{"v":1,"job":"j","id":"audio","source":"s","output":"o","body":{"kind":"audio"},"hint":3}"#;
        assert!(
            Task::decode(extra).is_ok(),
            "a newer minor field is ignored"
        );
        let v = TASK_VERSION + 1;
        let newer = format!(r#"{{"v":{v},"job":"j","id":"x","body":{{"kind":"teleport"}}}}"#);
        assert_eq!(
            Task::decode(newer.as_bytes()),
            Err(TaskDecodeError::Newer(v))
        );
        assert!(matches!(
            Task::decode(b"{nope"),
            Err(TaskDecodeError::Unreadable(_))
        ));
    }
}
