//! PURE planner: probe facts in, segment list out. No I/O, no GStreamer.
//!
//! Segments are half-open frame ranges `[start_frame, end_frame)` of equal
//! size. A boundary moves to a source keyframe when one lies close enough
//! that every segment stays within the balance bound; then a segment's
//! decode starts at a keyframe and wastes no work decoding frames before it.
//!
//! VFR sources: frame positions are computed from the nominal (average)
//! frame rate the probe reports. Boundaries are therefore exact for CFR
//! input; for VFR input a boundary may land between two real frames, and the
//! segment encoder's half-frame guard assigns each real frame to exactly one
//! segment (no loss, no duplicate), but segment sizes are only approximately
//! equal.

use serde::{Deserialize, Serialize};

/// What the probe learned about a source, in the units the planner needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceFacts {
    /// Container duration, nanoseconds.
    pub duration_ns: u64,
    /// Frame rate numerator / denominator (e.g. 30000/1001).
    pub fps_num: u32,
    pub fps_den: u32,
    /// Exact number of video frames.
    pub frames: u64,
    pub width: u32,
    pub height: u32,
    /// Codec name as the demuxer reports it (e.g. `video/x-h264`).
    pub video_codec: String,
    /// Keyframes as frame indices, ascending.
    pub keyframes: Vec<u64>,
    /// Stream time of the first video frame, nanoseconds (edit lists shift it).
    #[serde(default)]
    pub first_pts_ns: u64,
    /// Demuxer timestamp minus stream time of the video, nanoseconds: one
    /// constant per source, so a segment encoder can place frames by their
    /// timestamps alone (see [`Plan::pts_offset_ns`]).
    #[serde(default)]
    pub pts_offset_ns: i64,
    pub audio: Option<AudioFacts>,
}

/// Audio track facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioFacts {
    pub rate: u32,
    pub channels: u32,
    pub duration_ns: u64,
}

/// Planner knobs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanOptions {
    /// Target segment duration, seconds.
    pub target_seconds: f64,
    /// No segment shorter than this, seconds (quality floor), unless the source is.
    pub min_seconds: f64,
    /// Maximum relative deviation of a segment's size from the ideal (0.10 = ±10 %).
    pub balance: f64,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            target_seconds: crate::job::DEFAULT_SEGMENT_SECONDS,
            min_seconds: crate::job::MIN_SEGMENT_SECONDS,
            balance: 0.10,
        }
    }
}

/// One segment: frames `[start_frame, end_frame)` and their exact stream times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub index: u32,
    pub start_frame: u64,
    pub end_frame: u64,
    /// Stream time of `start_frame`, nanoseconds.
    pub start_ns: u64,
    /// Stream time of `end_frame` (exclusive), nanoseconds.
    pub end_ns: u64,
    /// True when `start_frame` is a source keyframe.
    pub starts_on_keyframe: bool,
}

impl Segment {
    pub fn frames(&self) -> u64 {
        self.end_frame - self.start_frame
    }
    pub fn duration_ns(&self) -> u64 {
        self.end_ns - self.start_ns
    }
}

/// The planner's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub fps_num: u32,
    pub fps_den: u32,
    pub frames: u64,
    pub segments: Vec<Segment>,
    pub has_audio: bool,
    /// Audio duration of the source, nanoseconds (0 when no audio).
    pub audio_duration_ns: u64,
    pub width: u32,
    pub height: u32,
    /// Demuxer timestamp minus stream time of the video. Segment encoders
    /// select frames by `pts - pts_offset_ns` instead of mapping through the
    /// demuxer's segment events, because some demuxers (matroskademux after
    /// a seek) send a provisional segment and replace it without a flush,
    /// which shifted the first frames of a part by the stream's start.
    /// None in plans made before it existed: those keep the segment mapping.
    #[serde(default)]
    pub pts_offset_ns: Option<i64>,
}

/// Why a source cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("source has no video frames")]
    NoFrames,
    #[error("source frame rate {0}/{1} is not usable")]
    BadFrameRate(u32, u32),
}

/// Stream time of frame `i`, nanoseconds, relative to the first frame.
pub fn frame_time_ns(i: u64, fps_num: u32, fps_den: u32) -> u64 {
    // Rounded, exact in u128: i * 1e9 * den / num.
    let n = i as u128 * 1_000_000_000u128 * fps_den as u128;
    ((n + fps_num as u128 / 2) / fps_num as u128) as u64
}

/// Cut `facts` into segments according to `opts`.
pub fn plan(facts: &SourceFacts, opts: &PlanOptions) -> Result<Plan, PlanError> {
    if facts.frames == 0 {
        return Err(PlanError::NoFrames);
    }
    if facts.fps_num == 0 || facts.fps_den == 0 {
        return Err(PlanError::BadFrameRate(facts.fps_num, facts.fps_den));
    }
    let fps = facts.fps_num as f64 / facts.fps_den as f64;
    let total = facts.frames;
    let target = (opts.target_seconds * fps).max(1.0);
    let floor = (opts.min_seconds * fps).max(1.0);
    let mut n = ((total as f64 / target).round() as u64).max(1);
    // Never below the quality floor: fewer, longer segments instead.
    let max_n = ((total as f64 / floor).floor() as u64).max(1);
    n = n.min(max_n).min(u32::MAX as u64);

    let ideal = total as f64 / n as f64;
    // Each boundary may move by half the balance so that any segment, bounded
    // by two moved boundaries, stays within ±balance of the ideal size.
    let slack = (ideal * opts.balance / 2.0).floor() as u64;
    let mut bounds = Vec::with_capacity(n as usize + 1);
    bounds.push(0u64);
    for k in 1..n {
        let even = ((k as f64) * ideal).round() as u64;
        let snapped = nearest_keyframe(&facts.keyframes, even, slack).unwrap_or(even);
        bounds.push(snapped);
    }
    bounds.push(total);

    let first = facts.first_pts_ns;
    let segments = bounds
        .windows(2)
        .enumerate()
        .map(|(i, w)| Segment {
            index: i as u32,
            start_frame: w[0],
            end_frame: w[1],
            start_ns: first + frame_time_ns(w[0], facts.fps_num, facts.fps_den),
            end_ns: first + frame_time_ns(w[1], facts.fps_num, facts.fps_den),
            starts_on_keyframe: facts.keyframes.binary_search(&w[0]).is_ok(),
        })
        .collect();
    Ok(Plan {
        fps_num: facts.fps_num,
        fps_den: facts.fps_den,
        frames: total,
        segments,
        has_audio: facts.audio.is_some(),
        audio_duration_ns: facts.audio.as_ref().map_or(0, |a| a.duration_ns),
        width: facts.width,
        height: facts.height,
        pts_offset_ns: Some(facts.pts_offset_ns),
    })
}

fn nearest_keyframe(keyframes: &[u64], frame: u64, slack: u64) -> Option<u64> {
    let lo = frame.saturating_sub(slack);
    let hi = frame + slack;
    let start = keyframes.partition_point(|&k| k < lo);
    keyframes[start..]
        .iter()
        .take_while(|&&k| k <= hi)
        .min_by_key(|&&k| k.abs_diff(frame))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(frames: u64, num: u32, den: u32, keyframes: Vec<u64>) -> SourceFacts {
        SourceFacts {
            duration_ns: frame_time_ns(frames, num, den),
            fps_num: num,
            fps_den: den,
            frames,
            width: 1280,
            height: 720,
            video_codec: "video/x-h264".into(),
            keyframes,
            first_pts_ns: 0,
            pts_offset_ns: 0,
            audio: None,
        }
    }

    fn ranges(p: &Plan) -> Vec<(u64, u64)> {
        p.segments
            .iter()
            .map(|s| (s.start_frame, s.end_frame))
            .collect()
    }

    fn opts(target: f64) -> PlanOptions {
        PlanOptions {
            target_seconds: target,
            ..Default::default()
        }
    }

    #[test]
    fn table() {
        // (frames, fps, keyframes, target s, expected ranges)
        let every = |n: u64, gop: u64| (0..n).step_by(gop as usize).collect::<Vec<_>>();
        type Case = (&'static str, SourceFacts, f64, Vec<(u64, u64)>);
        let cases: Vec<Case> = vec![
            (
                "exact multiple, all-intra",
                facts(1000, 25, 1, every(1000, 1)),
                10.0,
                vec![(0, 250), (250, 500), (500, 750), (750, 1000)],
            ),
            (
                "shorter than one segment",
                facts(100, 25, 1, vec![0]),
                10.0,
                vec![(0, 100)],
            ),
            (
                "single keyframe: even cuts",
                facts(1000, 25, 1, vec![0]),
                10.0,
                vec![(0, 250), (250, 500), (500, 750), (750, 1000)],
            ),
            (
                "gop 48: snaps only within slack",
                facts(1000, 25, 1, every(1000, 48)),
                10.0,
                vec![(0, 240), (240, 500), (500, 750), (750, 1000)],
            ),
            (
                "gop 50: every cut on a keyframe",
                facts(1000, 25, 1, every(1000, 50)),
                10.0,
                vec![(0, 250), (250, 500), (500, 750), (750, 1000)],
            ),
            (
                "gop 40 offset: nearest keyframe",
                facts(1000, 25, 1, (0..1000).step_by(40).collect()),
                10.0,
                vec![(0, 240), (240, 500), (500, 760), (760, 1000)],
            ),
            (
                "gop 300 too far: even",
                facts(1000, 25, 1, every(1000, 300)),
                10.0,
                vec![(0, 250), (250, 500), (500, 750), (750, 1000)],
            ),
            (
                "29.97 rounding",
                facts(900, 30000, 1001, vec![0]),
                10.0,
                vec![(0, 300), (300, 600), (600, 900)],
            ),
            (
                "remainder spread",
                facts(1010, 25, 1, vec![0]),
                10.0,
                vec![(0, 253), (253, 505), (505, 758), (758, 1010)],
            ),
            (
                "floor stops tiny segments",
                facts(125, 25, 1, vec![0]),
                2.0,
                vec![(0, 63), (63, 125)],
            ),
        ];
        for (name, f, target, want) in cases {
            let p = plan(&f, &opts(target)).unwrap();
            assert_eq!(ranges(&p), want, "{name}");
        }
    }

    #[test]
    fn invariants_hold_for_many_shapes() {
        for frames in [1u64, 2, 49, 250, 251, 1799, 7201] {
            for gop in [1u64, 12, 48, 250, 10_000] {
                for target in [2.0, 4.0, 10.0, 60.0] {
                    let kf = (0..frames).step_by(gop as usize).collect();
                    let p = plan(&facts(frames, 24000, 1001, kf), &opts(target)).unwrap();
                    assert_eq!(p.segments.first().unwrap().start_frame, 0);
                    assert_eq!(p.segments.last().unwrap().end_frame, frames);
                    let ideal = frames as f64 / p.segments.len() as f64;
                    for w in p.segments.windows(2) {
                        assert_eq!(w[0].end_frame, w[1].start_frame, "contiguous");
                        assert_eq!(w[0].end_ns, w[1].start_ns);
                    }
                    for s in &p.segments {
                        assert!(s.frames() > 0);
                        let dev = (s.frames() as f64 - ideal).abs() / ideal;
                        assert!(
                            dev <= 0.10 + 1.0 / ideal,
                            "{frames}/{gop}/{target}: {s:?} dev {dev}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn timestamps_are_exact_frame_times() {
        let p = plan(&facts(900, 30000, 1001, vec![0]), &opts(10.0)).unwrap();
        assert_eq!(p.segments[1].start_ns, 10_010_000_000);
        assert_eq!(p.segments[2].end_ns, 30_030_000_000);
    }

    #[test]
    fn no_frames_is_an_error() {
        assert_eq!(
            plan(&facts(0, 25, 1, vec![]), &opts(10.0)),
            Err(PlanError::NoFrames)
        );
    }
}
