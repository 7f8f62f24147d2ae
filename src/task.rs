//! Task messages on `jetcode.tasks.[<class>.]<kind>.<job>` and the work orders a
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
/// 3: a segment task encodes every rendition of its segment from one
/// decode (`renditions`); each rendition's part keeps its own checkpoint.
/// A version 2 worker would encode only `rendition` (absent) and fail.
pub const TASK_VERSION: u32 = 3;

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
        /// Every rendition of the segment, encoded from one decode.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        renditions: Vec<Rendition>,
        /// The one rendition of a version 2 task.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rendition: Option<Rendition>,
        segment: Segment,
        /// The chunk's further segments, encoded in the same run (an IDR
        /// forced at each boundary, one part per segment).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        following: Vec<Segment>,
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

    /// Checkpoint id of one rendition's part of a segment.
    pub fn segment_id(rendition: &str, index: u32) -> String {
        format!("seg-{rendition}-{index:05}")
    }

    /// Task id of a segment's task (all its renditions).
    pub fn ladder_id(index: u32) -> String {
        format!("seg-{index:05}")
    }

    /// What the task produces, each with its own checkpoint: one part per
    /// rendition of a segment task; the task itself for audio and stitch.
    pub fn parts(&self) -> Vec<Part> {
        match &self.body {
            TaskBody::Segment { .. } => self
                .renditions()
                .into_iter()
                .flat_map(|r| {
                    self.segments().into_iter().map(move |s| Part {
                        id: Task::segment_id(&r.name, s.index),
                        key: Some(crate::subjects::part_key(&r.name, s.index)),
                        rendition: Some(r.clone()),
                    })
                })
                .collect(),
            TaskBody::Audio { .. } => vec![Part {
                id: self.id.clone(),
                key: Some(crate::subjects::AUDIO_PART_KEY.to_string()),
                rendition: None,
            }],
            TaskBody::Stitch { .. } => vec![Part {
                id: self.id.clone(),
                key: None,
                rendition: None,
            }],
        }
    }

    /// A segment task's segments, in order; empty for others.
    pub fn segments(&self) -> Vec<Segment> {
        match &self.body {
            TaskBody::Segment {
                segment, following, ..
            } => std::iter::once(*segment)
                .chain(following.iter().copied())
                .collect(),
            _ => Vec::new(),
        }
    }

    /// A segment task's renditions (either version); empty for others.
    pub fn renditions(&self) -> Vec<&Rendition> {
        match &self.body {
            TaskBody::Segment {
                renditions,
                rendition,
                ..
            } => renditions.iter().chain(rendition).collect(),
            _ => Vec::new(),
        }
    }
}

/// One checkpointed output of a task.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// Checkpoint id (`seg-<rendition>-<index>`, `audio`, `stitch`).
    pub id: String,
    /// Where the part lies under the job's output; None for the stitch
    /// (its outputs are the job's).
    pub key: Option<String>,
    /// The rendition a segment part is encoded as.
    pub rendition: Option<Rendition>,
}

/// Task id of the audio task.
pub const AUDIO_TASK_ID: &str = "audio";
/// Task id of the stitch task.
pub const STITCH_TASK_ID: &str = "stitch";

/// Work order for `jetcode media segment`: decode the frames of
/// `segments` (consecutive: one chunk) from `input` once, encode them as
/// every output's rendition with an IDR at each segment's start, and write
/// one MPEG-TS part per segment and rendition on the source timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentWork {
    pub input: PathBuf,
    pub outputs: Vec<SegmentOutput>,
    pub segments: Vec<Segment>,
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
    /// Threads for decoder, converter and scalers; the encoders share
    /// them (0: each element picks).
    #[serde(default)]
    pub threads: u32,
}

/// One rendition of a chunk and where its parts go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentOutput {
    pub rendition: Rendition,
    /// One part per segment of the work, in order.
    pub parts: Vec<PathBuf>,
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
        SegmentWork::of_chunk(plan, vec![segment], input).with_output(rendition, output)
    }

    /// The order for consecutive `segments` of `plan` (a chunk), without
    /// outputs yet (see [`SegmentWork::with_parts`]).
    pub fn of_chunk(plan: &Plan, segments: Vec<Segment>, input: PathBuf) -> Self {
        SegmentWork {
            input,
            outputs: Vec::new(),
            segments,
            fps_num: plan.fps_num,
            fps_den: plan.fps_den,
            pts_offset_ns: plan.pts_offset_ns,
            min_frame_ns: plan.min_frame_ns,
            orientation: plan.orientation.clone(),
            threads: 0,
        }
    }

    /// The same (single) segment also encoded as `rendition` into
    /// `output`, from the same decode.
    pub fn with_output(self, rendition: Rendition, output: PathBuf) -> Self {
        self.with_parts(rendition, vec![output])
    }

    /// The chunk also encoded as `rendition`, one part per segment.
    pub fn with_parts(mut self, rendition: Rendition, parts: Vec<PathBuf>) -> Self {
        self.outputs.push(SegmentOutput { rendition, parts });
        self
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
