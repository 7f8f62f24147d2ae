//! PURE planner: probe facts in, segment list out. No I/O, no GStreamer.
//!
//! Segments are half-open frame ranges `[start_frame, end_frame)` of equal
//! size. Each boundary (where an IDR is forced) may move by half the
//! balance bound, so every segment stays within it. Within that slack it
//! goes to the source keyframe nearest the even cut (the segment's decode
//! then starts exactly there and wastes no work before it); failing that,
//! to the nearest scene change the probe found ([`crate::scene`]), where
//! an encoder would put an I-frame anyway; failing that, it stays even.
//!
//! VFR sources: frame positions are computed from the nominal (average)
//! frame rate the probe reports. Boundaries are therefore exact for CFR
//! input; for VFR input a boundary may land between two real frames, and the
//! segment encoder's half-frame guard assigns each real frame to exactly one
//! segment (no loss, no duplicate), but segment sizes are only approximately
//! equal.

use serde::{Deserialize, Serialize};

use crate::job::Rendition;

/// What the probe learned about a source, in the units the planner needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// Likely scene changes as frame indices, ascending: candidates for
    /// cut points ([`crate::scene::scene_changes`]). Empty from older
    /// probes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scene_changes: Vec<u64>,
    /// Stream time of the first video frame, nanoseconds (edit lists shift it).
    #[serde(default)]
    pub first_pts_ns: u64,
    /// Demuxer timestamp minus stream time of the video, nanoseconds: one
    /// constant per source, so a segment encoder can place frames by their
    /// timestamps alone (see [`Plan::pts_offset_ns`]).
    #[serde(default)]
    pub pts_offset_ns: i64,
    pub audio: Option<AudioFacts>,
    /// Stream time of every frame in presentation order, nanoseconds
    /// (ascending). Empty from older probes: frame times then come from
    /// the nominal rate, which is exact only for constant-rate sources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frame_times_ns: Vec<u64>,
    /// Stream time where the last frame ends, nanoseconds (0: unknown).
    #[serde(default)]
    pub end_ns: u64,
    /// Pixel aspect ratio (anamorphic sources have non-square pixels).
    #[serde(default = "one")]
    pub par_num: u32,
    #[serde(default = "one")]
    pub par_den: u32,
    /// The `image-orientation` tag of the video (`rotate-90`,
    /// `flip-rotate-0`, ...): how the picture must be turned for display.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orientation: Option<String>,
    /// The source is interlaced (or signals fields).
    #[serde(default)]
    pub interlaced: bool,
    /// Luma bit depth when the stream says (0: unknown, usually 8).
    #[serde(default)]
    pub bit_depth: u32,
    /// Transfer function of an HDR source (`smpte2084` PQ, `arib-std-b67`
    /// HLG), None for SDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hdr: Option<String>,
}

fn one() -> u32 {
    1
}

/// Audio track facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioFacts {
    pub rate: u32,
    pub channels: u32,
    pub duration_ns: u64,
    /// Which of the source's audio tracks this is: the tail of its stream
    /// id (`.../002` -> `002`), the same in every process that opens the
    /// file. None from older probes (first track found).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Audio tracks in the source.
    #[serde(default)]
    pub tracks: u32,
    /// Language tag of the chosen track, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

/// Planner knobs.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanOptions {
    /// Target segment duration, seconds.
    pub target_seconds: f64,
    /// No segment shorter than this, seconds (quality floor), unless the source is.
    pub min_seconds: f64,
    /// Maximum relative deviation of a segment's size from the ideal (0.10 = ±10 %).
    pub balance: f64,
    /// Encode chunk length asked for, seconds (None: the planner picks,
    /// see [`chunk_segments`]).
    pub chunk_seconds: Option<f64>,
    /// The live fleet the job will run on (a slot's speed in seconds of
    /// source per second), for the planner's chunk pick; None: unknown,
    /// chunks of about [`CHUNK_TARGET_SECONDS`] while [`MIN_CHUNKS`] remain.
    pub fleet: Option<Vec<crate::balance::Capacity>>,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            target_seconds: crate::job::DEFAULT_SEGMENT_SECONDS,
            min_seconds: crate::job::MIN_SEGMENT_SECONDS,
            balance: 0.10,
            chunk_seconds: None,
            fleet: None,
        }
    }
}

/// Chunk length the planner aims at when the job names none, seconds: long
/// enough that a chunk's fixed cost (child start, seek, the encoder's
/// ramp-up) is noise, short enough to spread a feature film over a fleet.
pub const CHUNK_TARGET_SECONDS: f64 = 30.0;
/// Fewest chunks the planner leaves a job when it picks the length: a
/// short job keeps one chunk per segment and its parallelism.
pub const MIN_CHUNKS: usize = 8;

/// Segments per encode chunk (one task encodes that many consecutive
/// segments in one run, an IDR forced at each segment start), given each
/// segment's duration in seconds: the job's `chunk_seconds` rounded to
/// whole segments; else, for a known fleet, the chunking that finishes
/// soonest on it with each task's overhead paid and fewest tasks
/// ([`crate::balance::segments_per_chunk`], chunks of at most
/// [`CHUNK_TARGET_SECONDS`]); else chunks of about that while at least
/// [`MIN_CHUNKS`] remain. Never below 1 nor above the segment count. Pure.
pub fn chunk_segments(
    seconds: &[f64],
    chunk_seconds: Option<f64>,
    fleet: Option<&[crate::balance::Capacity]>,
) -> u32 {
    let n = seconds.len();
    let mean = seconds.iter().sum::<f64>() / n.max(1) as f64;
    if n == 0 || !mean.is_finite() || mean <= 0.0 {
        return 1;
    }
    let k = match (chunk_seconds, fleet) {
        (Some(c), _) => (c / mean).round().max(1.0) as usize,
        (None, Some(fleet)) => crate::balance::segments_per_chunk(&crate::balance::ChunkChoice {
            segments: seconds,
            fleet,
            max_seconds: CHUNK_TARGET_SECONDS.max(mean),
            task_overhead: crate::balance::TASK_OVERHEAD_SECONDS,
            jitter: crate::balance::SPEED_JITTER,
        }),
        (None, None) => {
            let by_length = (CHUNK_TARGET_SECONDS / mean).floor().max(1.0) as usize;
            by_length.min((n / MIN_CHUNKS).max(1))
        }
    };
    k.clamp(1, n) as u32
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
    /// Frame spacing varies (phones, screen capture): segment times and
    /// HLS durations come from the real frame times, `fps_*` is the average.
    #[serde(default)]
    pub vfr: bool,
    /// Shortest spacing of two frames, nanoseconds (0: one nominal frame).
    /// Frame selection tolerates half of it around a boundary.
    #[serde(default)]
    pub min_frame_ns: u64,
    /// 5th percentile of the frame spacing, nanoseconds (0: unknown): the
    /// fastest rate the source keeps up, for HLS FRAME-RATE.
    #[serde(default)]
    pub fast_frame_ns: u64,
    /// See [`SourceFacts::orientation`]; applied before scaling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orientation: Option<String>,
    #[serde(default)]
    pub interlaced: bool,
    /// Encoded size of every rendition that runs, in job order. Empty in
    /// plans made before the ladder existed (renditions then run as given).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ladder: Vec<Rung>,
    /// Renditions of the job that do not run, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<DroppedRung>,
    /// Audio channels of the source track (0: unknown or no audio).
    #[serde(default)]
    pub audio_channels: u32,
    /// The source audio track encoded (see [`AudioFacts::stream`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_stream: Option<String>,
    /// Segments per encode task ([`chunk_segments`]); 0 in plans made
    /// before chunking: one.
    #[serde(default)]
    pub chunk_segments: u32,
    /// Where the boundaries between segments landed (all zero in plans
    /// made before it was counted).
    #[serde(default)]
    pub cuts: CutCounts,
}

/// How many segment boundaries (not counting the start and the end) the
/// planner put on a source keyframe, on a scene change that is not a
/// keyframe, or at the even cut.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutCounts {
    #[serde(default)]
    pub keyframe: u32,
    #[serde(default)]
    pub scene_change: u32,
    #[serde(default)]
    pub even: u32,
}

/// Why a boundary is where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CutKind {
    Keyframe,
    SceneChange,
    Even,
}

/// A rendition as it will be encoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rung {
    pub name: String,
    pub width: u32,
    pub height: u32,
}

/// A rendition of the job that is not encoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedRung {
    pub name: String,
    pub reason: String,
}

impl Plan {
    /// Stream time where the video ends, nanoseconds.
    pub fn end_ns(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.end_ns)
    }

    /// Duration of the video, nanoseconds.
    pub fn duration_ns(&self) -> u64 {
        self.end_ns()
            .saturating_sub(self.segments.first().map_or(0, |s| s.start_ns))
    }

    /// Highest sustained frame rate (HLS FRAME-RATE is a maximum): the
    /// rate of the fastest 5 % of frames, so one odd timestamp does not
    /// claim 500 fps and get the variant filtered out by players.
    pub fn max_fps(&self) -> f64 {
        let nominal = self.fps_num as f64 / self.fps_den.max(1) as f64;
        if self.vfr && self.fast_frame_ns > 0 {
            (1e9 / self.fast_frame_ns as f64).max(nominal)
        } else {
            nominal
        }
    }
}

/// Why a source cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("source has no video frames")]
    NoFrames,
    #[error("source frame rate {0}/{1} is not usable")]
    BadFrameRate(u32, u32),
    #[error("HDR source ({0}) is not supported: jetcode encodes 8-bit SDR and has no tone mapping; convert it to SDR first")]
    Hdr(String),
}

/// Does this orientation swap width and height for display?
pub fn orientation_swaps_axes(orientation: Option<&str>) -> bool {
    matches!(
        orientation,
        Some("rotate-90" | "rotate-270" | "flip-rotate-90" | "flip-rotate-270")
    )
}

/// Size of the source as displayed: pixel aspect ratio and rotation applied.
pub fn display_size(facts: &SourceFacts) -> (u32, u32) {
    let w = if facts.par_num > 0 && facts.par_den > 0 {
        (facts.width as u64 * facts.par_num as u64 / facts.par_den as u64) as u32
    } else {
        facts.width
    };
    if orientation_swaps_axes(facts.orientation.as_deref()) {
        (facts.height, w)
    } else {
        (w, facts.height)
    }
}

/// The box a rendition must fit in: `width` x `height` when both are
/// given; otherwise `height` names the short side of a 16:9 box turned like
/// the source (a "720p" rung of a portrait source is 720 wide).
fn rung_box(r: &Rendition, display: (u32, u32)) -> (u32, u32) {
    match r.width {
        Some(w) => (w, r.height),
        None => {
            let long = (r.height as u64 * 16).div_ceil(9) as u32;
            if display.1 > display.0 {
                (r.height, long)
            } else {
                (long, r.height)
            }
        }
    }
}

fn even(x: f64) -> u32 {
    ((x / 2.0).round() as u32 * 2).max(2)
}

/// Fit every rendition inside its box at the source's display aspect,
/// never upscaling: a rung whose box is larger than the source is dropped
/// (the smallest one is kept at the source size when all would be).
pub fn ladder(renditions: &[Rendition], facts: &SourceFacts) -> (Vec<Rung>, Vec<DroppedRung>) {
    let (dw, dh) = display_size(facts);
    let (dw, dh) = (dw.max(2) as f64, dh.max(2) as f64);
    let fits: Vec<(f64, (u32, u32))> = renditions
        .iter()
        .map(|r| {
            let b = rung_box(r, (dw as u32, dh as u32));
            ((b.0 as f64 / dw).min(b.1 as f64 / dh), b)
        })
        .collect();
    let smallest = fits
        .iter()
        .enumerate()
        .min_by_key(|(_, (_, b))| b.0 as u64 * b.1 as u64)
        .map(|(i, _)| i);
    let all_above = fits.iter().all(|(scale, _)| *scale > 1.0);
    let (mut rungs, mut dropped) = (Vec::new(), Vec::new());
    for (i, (r, (scale, b))) in renditions.iter().zip(fits).enumerate() {
        if scale > 1.0 && !(all_above && Some(i) == smallest) {
            dropped.push(DroppedRung {
                name: r.name.clone(),
                reason: format!(
                    "source is {}x{}, smaller than the {}x{} box: not upscaled",
                    dw, dh, b.0, b.1
                ),
            });
            continue;
        }
        let scale = scale.min(1.0);
        rungs.push(Rung {
            name: r.name.clone(),
            width: even(dw * scale),
            height: even(dh * scale),
        });
    }
    (rungs, dropped)
}

/// Stream time of frame `i`, nanoseconds, relative to the first frame.
pub fn frame_time_ns(i: u64, fps_num: u32, fps_den: u32) -> u64 {
    // Rounded, exact in u128: i * 1e9 * den / num.
    let n = i as u128 * 1_000_000_000u128 * fps_den as u128;
    u64::try_from((n + fps_num as u128 / 2) / fps_num.max(1) as u128).unwrap_or(u64::MAX)
}

/// Bounds a worker puts on what a source may decode to, checked against
/// the probe's facts before anything is planned or encoded: a source over
/// one is refused with a one-line reason, never half-encoded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MediaLimits {
    /// Widest coded picture, pixels.
    pub max_width: u32,
    /// Tallest coded picture, pixels.
    pub max_height: u32,
    /// Most video frames.
    pub max_frames: u64,
    /// Longest duration (video, container or audio), seconds.
    pub max_duration_seconds: f64,
    /// Highest nominal frame rate, frames per second.
    pub max_fps: f64,
}

impl Default for MediaLimits {
    /// 8192x8192 (8K DCI and portrait 8K fit), 2 million frames, 12 h,
    /// 240 fps.
    fn default() -> Self {
        MediaLimits {
            max_width: 8192,
            max_height: 8192,
            max_frames: 2_000_000,
            max_duration_seconds: 12.0 * 3600.0,
            max_fps: 240.0,
        }
    }
}

/// Latest stream time a source may carry, nanoseconds (2^62, about 146
/// years): anything later is a damaged or hostile file, or GStreamer's
/// "no time" (u64::MAX) leaking through.
pub const MAX_TIMESTAMP_NS: u64 = 1 << 62;

/// Refuse a source whose facts exceed `limits`; the reason is one line
/// and names every limit crossed. Pure.
pub fn check_limits(facts: &SourceFacts, limits: &MediaLimits) -> Result<(), String> {
    let mut over = Vec::new();
    if facts.width > limits.max_width || facts.height > limits.max_height {
        over.push(format!(
            "picture {}x{} exceeds {}x{} (--max-width/--max-height)",
            facts.width, facts.height, limits.max_width, limits.max_height
        ));
    }
    if facts.frames > limits.max_frames {
        over.push(format!(
            "{} frames exceed {} (--max-frames)",
            facts.frames, limits.max_frames
        ));
    }
    let video_span = facts.end_ns.saturating_sub(facts.first_pts_ns);
    let audio = facts.audio.as_ref().map_or(0, |a| a.duration_ns);
    let longest = facts.duration_ns.max(video_span).max(audio) as f64 / 1e9;
    if longest > limits.max_duration_seconds {
        over.push(format!(
            "duration {longest:.0} s exceeds {:.0} s (--max-duration)",
            limits.max_duration_seconds
        ));
    }
    let latest = facts
        .first_pts_ns
        .max(facts.end_ns)
        .max(facts.frame_times_ns.last().copied().unwrap_or(0));
    if latest > MAX_TIMESTAMP_NS {
        over.push(format!(
            "timestamp {latest} ns is beyond {MAX_TIMESTAMP_NS} ns (damaged source?)"
        ));
    }
    if facts.fps_den > 0 {
        let fps = facts.fps_num as f64 / facts.fps_den as f64;
        if fps > limits.max_fps {
            over.push(format!(
                "frame rate {}/{} ({fps:.1} fps) exceeds {} fps (--max-fps)",
                facts.fps_num, facts.fps_den, limits.max_fps
            ));
        }
    }
    if over.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "source over this worker's limits: {}",
            over.join("; ")
        ))
    }
}

/// Cut `facts` into segments according to `opts`.
pub fn plan(facts: &SourceFacts, opts: &PlanOptions) -> Result<Plan, PlanError> {
    if facts.frames == 0 {
        return Err(PlanError::NoFrames);
    }
    if facts.fps_num == 0 || facts.fps_den == 0 {
        return Err(PlanError::BadFrameRate(facts.fps_num, facts.fps_den));
    }
    if let Some(transfer) = &facts.hdr {
        return Err(PlanError::Hdr(transfer.clone()));
    }
    let timeline = Timeline::of(facts);
    let total = facts.frames;
    let n = segment_count(facts, &timeline, opts);
    let ideal = total as f64 / n as f64;
    // Each boundary may move by half the balance so that any segment, bounded
    // by two moved boundaries, stays within ±balance of the ideal size.
    let slack = (ideal * opts.balance / 2.0).floor() as u64;
    let mut bounds = Vec::with_capacity(n as usize + 1);
    let mut cuts = CutCounts::default();
    bounds.push(0u64);
    for k in 1..n {
        let even = timeline.even_cut(k, n, total);
        let (at, kind) = cut_point(facts, even, slack);
        // A gap in a variable-rate source can put two cuts on one frame.
        if at > *bounds.last().unwrap_or(&0) && at < total {
            bounds.push(at);
            match kind {
                CutKind::Keyframe => cuts.keyframe += 1,
                CutKind::SceneChange => cuts.scene_change += 1,
                CutKind::Even => cuts.even += 1,
            }
        }
    }
    bounds.push(total);

    let segments: Vec<Segment> = bounds
        .windows(2)
        .enumerate()
        .map(|(i, w)| Segment {
            index: i as u32,
            start_frame: w[0],
            end_frame: w[1],
            start_ns: timeline.time(w[0]),
            end_ns: timeline.time(w[1]),
            starts_on_keyframe: facts.keyframes.binary_search(&w[0]).is_ok(),
        })
        .collect();
    let seconds: Vec<f64> = segments
        .iter()
        .map(|s| s.end_ns.saturating_sub(s.start_ns) as f64 / 1e9)
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
        vfr: timeline.vfr,
        min_frame_ns: timeline.min_gap,
        fast_frame_ns: timeline.fast_gap,
        orientation: facts.orientation.clone(),
        interlaced: facts.interlaced,
        ladder: Vec::new(),
        dropped: Vec::new(),
        audio_channels: facts.audio.as_ref().map_or(0, |a| a.channels),
        audio_stream: facts.audio.as_ref().and_then(|a| a.stream.clone()),
        chunk_segments: chunk_segments(&seconds, opts.chunk_seconds, opts.fleet.as_deref()),
        cuts,
    })
}

/// Where the boundary nearest frame `even` goes, `slack` frames either
/// way at most: the nearest source keyframe (an exact seek, nothing
/// decoded before the cut), else the nearest scene change (an I-frame
/// where the encoder wants one anyway), else `even` itself. A tie goes to
/// the earlier frame.
fn cut_point(facts: &SourceFacts, even: u64, slack: u64) -> (u64, CutKind) {
    if let Some(k) = nearest(&facts.keyframes, even, slack) {
        (k, CutKind::Keyframe)
    } else if let Some(s) = nearest(&facts.scene_changes, even, slack) {
        (s, CutKind::SceneChange)
    } else {
        (even, CutKind::Even)
    }
}

/// When each frame is shown: the probe's real frame times, or the nominal
/// rate's for facts without them.
struct Timeline<'a> {
    first: u64,
    /// Where the last frame ends.
    end: u64,
    times: Option<&'a [u64]>,
    fps: (u32, u32),
    vfr: bool,
    min_gap: u64,
    /// 5th percentile of the frame spacing: the fastest sustained rate.
    fast_gap: u64,
}

/// Timestamp rounding of the coarsest common container (Matroska, 1 ms),
/// with some margin.
const CONTAINER_TICK_NS: u64 = 1_500_000;

impl<'a> Timeline<'a> {
    fn of(facts: &'a SourceFacts) -> Self {
        let (num, den) = (facts.fps_num, facts.fps_den);
        let nominal = frame_time_ns(1, num, den).max(1);
        let times = (facts.frame_times_ns.len() as u64 == facts.frames
            && facts.frame_times_ns.windows(2).all(|w| w[0] < w[1]))
        .then_some(facts.frame_times_ns.as_slice());
        let Some(t) = times else {
            return Timeline {
                first: facts.first_pts_ns,
                end: facts
                    .first_pts_ns
                    .saturating_add(frame_time_ns(facts.frames, num, den)),
                times: None,
                fps: (num, den),
                vfr: false,
                min_gap: 0,
                fast_gap: 0,
            };
        };
        let mut gaps: Vec<u64> = t.windows(2).map(|w| w[1] - w[0]).collect();
        gaps.sort_unstable();
        let pct = |p: usize| gaps.get(gaps.len() * p / 100).copied().unwrap_or(nominal);
        let min_gap = gaps.first().copied().unwrap_or(nominal);
        let (fast, median, slow) = (pct(5), pct(50), pct(95));
        let last = *t.last().unwrap_or(&0);
        // The last frame lasts as long as the container says when that is
        // plausible; parsers sometimes give it a made-up duration (1 ms
        // from SPS timing), and then a typical frame is the better guess.
        // At least the shortest frame, always: a segment must end more
        // than half a frame after its last frame.
        let said = facts.end_ns.saturating_sub(last);
        let last_lasts = if said >= median / 2 && said <= median.saturating_mul(2) {
            said
        } else {
            median
        };
        Timeline {
            first: t.first().copied().unwrap_or(0),
            end: last.saturating_add(last_lasts.max(min_gap)),
            times,
            fps: (num, den),
            // Percentiles, so one odd gap (a dropped frame, a glitch) does
            // not make a source variable; and a container tick of slack
            // (Matroska's 1 ms rounds 120 fps to 8 and 9 ms).
            vfr: slow - fast > (fast / 10).max(CONTAINER_TICK_NS),
            min_gap,
            fast_gap: fast,
        }
    }

    /// Stream time of frame `i` (`i == frames` is the end).
    fn time(&self, i: u64) -> u64 {
        match self.times {
            Some(t) => t.get(i as usize).copied().unwrap_or(self.end),
            None => self
                .first
                .saturating_add(frame_time_ns(i, self.fps.0, self.fps.1)),
        }
    }

    /// The frame nearest to the `k`-th of `n` equal cuts: equal durations
    /// (so HLS segments are equally long whatever the frame rate does),
    /// which for a constant rate are equal frame counts.
    fn even_cut(&self, k: u64, n: u64, total: u64) -> u64 {
        let Some(t) = self.times else {
            return ((k as f64) * total as f64 / n as f64).round() as u64;
        };
        let at = self.first + ((self.end - self.first) as u128 * k as u128 / n as u128) as u64;
        let i = t.partition_point(|&x| x < at);
        match i {
            0 => 0,
            i if i >= t.len() => t.len() as u64 - 1,
            i if at - t[i - 1] < t[i] - at => i as u64 - 1,
            i => i as u64,
        }
    }
}

/// Segments for a source: its duration over the target, never shorter than
/// the quality floor.
fn segment_count(facts: &SourceFacts, timeline: &Timeline, opts: &PlanOptions) -> u64 {
    let total = facts.frames;
    let (target, floor) = if timeline.times.is_some() {
        let secs = (timeline.end - timeline.first) as f64 / 1e9;
        let per_frame = if total > 0 { secs / total as f64 } else { 1.0 };
        (
            (opts.target_seconds / per_frame).max(1.0),
            (opts.min_seconds / per_frame).max(1.0),
        )
    } else {
        let fps = facts.fps_num as f64 / facts.fps_den as f64;
        (
            (opts.target_seconds * fps).max(1.0),
            (opts.min_seconds * fps).max(1.0),
        )
    };
    let n = ((total as f64 / target).round() as u64).max(1);
    let max_n = ((total as f64 / floor).floor() as u64).max(1);
    n.min(max_n).min(u32::MAX as u64)
}

/// The candidate (ascending) nearest `frame`, at most `slack` away.
fn nearest(candidates: &[u64], frame: u64, slack: u64) -> Option<u64> {
    let lo = frame.saturating_sub(slack);
    let hi = frame.saturating_add(slack);
    let start = candidates.partition_point(|&k| k < lo);
    candidates[start..]
        .iter()
        .take_while(|&&k| k <= hi)
        .min_by_key(|&&k| k.abs_diff(frame))
        .copied()
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunk_sizes() {
        use super::chunk_segments;
        // No fleet known: (segments, segment seconds, chunk_seconds asked)
        // -> segments per chunk
        let table: &[(usize, f64, Option<f64>, u32)] = &[
            (4, 10.0, None, 1),   // a short job keeps its parallelism
            (10, 6.0, None, 1),   // 60 s: fewer than 2 x MIN_CHUNKS segments
            (16, 6.0, None, 2),   // 96 s: 8 chunks of 12 s
            (100, 6.0, None, 5),  // 10 min: 30 s chunks
            (1200, 6.0, None, 5), // 2 h: still 30 s
            (100, 2.0, None, 12), // 2 s segments: 24 s chunks (whole segments)
            (100, 40.0, None, 1), // segments longer than the target
            (10, 6.0, Some(60.0), 10),
            (10, 6.0, Some(20.0), 3),   // rounded to whole segments
            (10, 6.0, Some(600.0), 10), // never past the job
            (10, 6.0, Some(1.0), 1),
            (0, 6.0, None, 1),
        ];
        for &(n, secs, asked, want) in table {
            assert_eq!(
                chunk_segments(&vec![secs; n], asked, None),
                want,
                "{n} x {secs} s, asked {asked:?}"
            );
        }
        // A known fleet: as many chunks as it finishes soonest with
        // (crate::balance::segments_per_chunk); a job's own chunk_seconds wins.
        use crate::balance::Capacity;
        let workers = |n: usize| {
            vec![
                Capacity {
                    slots: 1,
                    speed: 4.0
                };
                n
            ]
        };
        assert_eq!(chunk_segments(&[10.0; 6], None, Some(&workers(2))), 3);
        assert_eq!(chunk_segments(&[10.0; 6], None, Some(&workers(6))), 1);
        assert_eq!(chunk_segments(&[6.0; 100], None, Some(&workers(100))), 1);
        assert_eq!(
            chunk_segments(&[6.0; 100], Some(60.0), Some(&workers(100))),
            10
        );
        assert_eq!(chunk_segments(&[f64::NAN; 3], None, Some(&workers(2))), 1);
        assert_eq!(chunk_segments(&[], None, Some(&workers(2))), 1);
    }

    use super::*;

    #[test]
    fn media_limits_table() {
        let lim = MediaLimits {
            max_width: 1920,
            max_height: 1080,
            max_frames: 1000,
            max_duration_seconds: 60.0,
            max_fps: 60.0,
        };
        let base = facts(300, 30, 1, vec![0]);
        let with = |f: &dyn Fn(&mut SourceFacts)| {
            let mut x = base.clone();
            x.width = 1280;
            f(&mut x);
            x
        };
        // (what, facts, Some(substring of the reason) | None = accepted)
        let table: Vec<(&str, SourceFacts, Option<&str>)> = vec![
            ("within", with(&|_| {}), None),
            (
                "at the limits",
                with(&|f| {
                    f.width = 1920;
                    f.height = 1080;
                    f.frames = 1000;
                    f.fps_num = 60;
                    f.duration_ns = 60_000_000_000;
                }),
                None,
            ),
            (
                "too wide",
                with(&|f| f.width = 1922),
                Some("picture 1922x720 exceeds 1920x1080"),
            ),
            (
                "too tall",
                with(&|f| f.height = 1082),
                Some("picture 1280x1082"),
            ),
            (
                "absurd size",
                with(&|f| {
                    f.width = u32::MAX;
                    f.height = u32::MAX;
                }),
                Some("--max-width"),
            ),
            (
                "too many frames",
                with(&|f| f.frames = 1001),
                Some("1001 frames exceed 1000"),
            ),
            (
                "long container",
                with(&|f| f.duration_ns = 61_000_000_000),
                Some("duration 61 s"),
            ),
            (
                "long video span",
                with(&|f| f.end_ns = 3_600_000_000_000),
                Some("duration 3600 s"),
            ),
            (
                "long audio",
                with(&|f| {
                    f.audio = Some(AudioFacts {
                        rate: 48000,
                        channels: 2,
                        duration_ns: u64::MAX,
                        stream: None,
                        tracks: 1,
                        language: None,
                    })
                }),
                Some("--max-duration"),
            ),
            (
                "fast",
                with(&|f| {
                    f.fps_num = 120_000;
                    f.fps_den = 1001;
                }),
                Some("frame rate 120000/1001 (119.9 fps) exceeds 60 fps"),
            ),
            (
                "zero denominator is the planner's to refuse",
                with(&|f| f.fps_den = 0),
                None,
            ),
            (
                "no-time first frame",
                with(&|f| f.first_pts_ns = u64::MAX),
                Some("damaged source"),
            ),
            (
                "several at once",
                with(&|f| {
                    f.width = 4000;
                    f.frames = 5000;
                }),
                Some("; 5000 frames"),
            ),
        ];
        for (what, f, want) in table {
            let got = check_limits(&f, &lim);
            match (want, got) {
                (None, Ok(())) => {}
                (Some(w), Err(e)) => {
                    assert!(e.contains(w), "{what}: {e} lacks {w}");
                    assert!(!e.contains('\n'), "{what}: one line");
                }
                (w, g) => panic!("{what}: wanted {w:?}, got {g:?}"),
            }
        }
        assert!(check_limits(&base, &MediaLimits::default()).is_ok());
    }

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
            scene_changes: Vec::new(),
            first_pts_ns: 0,
            pts_offset_ns: 0,
            audio: None,
            frame_times_ns: Vec::new(),
            end_ns: 0,
            par_num: 1,
            par_den: 1,
            orientation: None,
            interlaced: false,
            bit_depth: 8,
            hdr: None,
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
    fn cut_preference_table() {
        // 1000 frames at 25 fps cut in 4 x 10 s: even cuts at 250, 500,
        // 750, slack 12 frames (half of the 10 % balance of 250).
        let at = |keyframes: &[u64], scenes: &[u64]| SourceFacts {
            scene_changes: scenes.to_vec(),
            ..facts(1000, 25, 1, keyframes.to_vec())
        };
        // (what, facts, expected ranges, (keyframe, scene change, even) cuts)
        type Case = (&'static str, SourceFacts, Vec<(u64, u64)>, (u32, u32, u32));
        let cases: Vec<Case> = vec![
            (
                "no candidates: even cuts",
                at(&[0], &[]),
                vec![(0, 250), (250, 500), (500, 750), (750, 1000)],
                (0, 0, 3),
            ),
            (
                "keyframe on the even cut",
                at(&(0..1000).step_by(50).collect::<Vec<_>>(), &[250]),
                vec![(0, 250), (250, 500), (500, 750), (750, 1000)],
                (3, 0, 0),
            ),
            (
                "keyframe beats a nearer scene change",
                at(&[0, 240], &[248]),
                vec![(0, 240), (240, 500), (500, 750), (750, 1000)],
                (1, 0, 2),
            ),
            (
                "scene change used when no keyframe is near",
                at(&[0], &[255, 507, 744]),
                vec![(0, 255), (255, 507), (507, 744), (744, 1000)],
                (0, 3, 0),
            ),
            (
                "candidates outside the slack ignored",
                at(&[0, 237, 513], &[263, 520, 736]),
                vec![(0, 250), (250, 500), (500, 750), (750, 1000)],
                (0, 0, 3),
            ),
            (
                "a scene change at the edge of the slack",
                at(&[0], &[238, 762]),
                vec![(0, 238), (238, 500), (500, 762), (762, 1000)],
                (0, 2, 1),
            ),
            (
                "the nearer of two scene changes",
                at(&[0], &[245, 253]),
                vec![(0, 253), (253, 500), (500, 750), (750, 1000)],
                (0, 1, 2),
            ),
            (
                "a tie goes to the earlier frame",
                at(&[0], &[247, 253]),
                vec![(0, 247), (247, 500), (500, 750), (750, 1000)],
                (0, 1, 2),
            ),
            (
                "far keyframe, near scene change: the scene change",
                at(&[0, 300], &[251]),
                vec![(0, 251), (251, 500), (500, 750), (750, 1000)],
                (0, 1, 2),
            ),
            (
                "mixed",
                at(&[0, 500], &[255, 500, 740]),
                vec![(0, 255), (255, 500), (500, 740), (740, 1000)],
                (1, 2, 0),
            ),
        ];
        for (what, f, want, (k, sc, e)) in cases {
            let p = plan(&f, &opts(10.0)).unwrap();
            assert_eq!(ranges(&p), want, "{what}");
            let want_cuts = CutCounts {
                keyframe: k,
                scene_change: sc,
                even: e,
            };
            assert_eq!(p.cuts, want_cuts, "{what}");
            for s in &p.segments {
                let dev = (s.frames() as f64 - 250.0).abs() / 250.0;
                assert!(dev <= 0.10, "{what}: {s:?} off balance");
                assert_eq!(
                    s.starts_on_keyframe,
                    f.keyframes.contains(&s.start_frame),
                    "{what}"
                );
            }
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

    fn rendition(name: &str, width: Option<u32>, height: u32) -> Rendition {
        serde_json::from_value(serde_json::json!({
            "name": name, "width": width, "height": height, "crf": 23
        }))
        .unwrap()
    }

    fn sized(w: u32, h: u32, par: (u32, u32), orientation: Option<&str>) -> SourceFacts {
        SourceFacts {
            width: w,
            height: h,
            par_num: par.0,
            par_den: par.1,
            orientation: orientation.map(str::to_string),
            ..facts(100, 25, 1, vec![0])
        }
    }

    #[test]
    fn ladder_fits_boxes_and_never_upscales() {
        let hls = [
            rendition("1080", None, 1080),
            rendition("720", None, 720),
            rendition("480", None, 480),
            rendition("360", None, 360),
        ];
        type Case = (
            &'static str,
            SourceFacts,
            Vec<(&'static str, u32, u32)>,
            Vec<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "1080p source: every rung",
                sized(1920, 1080, (1, 1), None),
                vec![
                    ("1080", 1920, 1080),
                    ("720", 1280, 720),
                    ("480", 854, 480),
                    ("360", 640, 360),
                ],
                vec![],
            ),
            (
                "scope 2.39:1: width-bound, level 4.2 safe",
                sized(1920, 804, (1, 1), None),
                vec![
                    ("1080", 1920, 804),
                    ("720", 1280, 536),
                    ("480", 854, 358),
                    ("360", 640, 268),
                ],
                vec![],
            ),
            (
                "240p source: only the smallest rung, at source size",
                sized(320, 240, (1, 1), None),
                vec![("360", 320, 240)],
                vec!["1080", "720", "480"],
            ),
            (
                "anamorphic PAL 4:3 pixels shown 16:9",
                sized(480, 360, (4, 3), None),
                vec![("360", 640, 360)],
                vec!["1080", "720", "480"],
            ),
            (
                "portrait phone video (rotation tag): portrait rungs",
                sized(1920, 1080, (1, 1), Some("rotate-90")),
                vec![
                    ("1080", 1080, 1920),
                    ("720", 720, 1280),
                    ("480", 480, 854),
                    ("360", 360, 640),
                ],
                vec![],
            ),
            (
                "upside down keeps landscape",
                sized(1280, 720, (1, 1), Some("rotate-180")),
                vec![("720", 1280, 720), ("480", 854, 480), ("360", 640, 360)],
                vec!["1080"],
            ),
        ];
        for (name, f, want, want_dropped) in cases {
            let (rungs, dropped) = ladder(&hls, &f);
            let got: Vec<_> = rungs
                .iter()
                .map(|r| (r.name.as_str(), r.width, r.height))
                .collect();
            assert_eq!(got, want, "{name}");
            let got_dropped: Vec<_> = dropped.iter().map(|d| d.name.as_str()).collect();
            assert_eq!(got_dropped, want_dropped, "{name}");
            assert!(
                dropped.iter().all(|d| d.reason.contains("not upscaled")),
                "{name}"
            );
        }
        // An explicit box is a box, not a stretch.
        let (rungs, _) = ladder(
            &[rendition("box", Some(640), 640)],
            &sized(1280, 720, (1, 1), None),
        );
        assert_eq!((rungs[0].width, rungs[0].height), (640, 360));
    }

    /// Frame times of a clip whose rate changes: `(frames, fps)` runs.
    fn vfr_times(runs: &[(u64, u64)]) -> Vec<u64> {
        let mut t = 0u64;
        let mut out = Vec::new();
        for &(n, fps) in runs {
            for _ in 0..n {
                out.push(t);
                t += 1_000_000_000 / fps;
            }
        }
        out
    }

    #[test]
    fn variable_rate_cuts_by_real_time() {
        // 2 s at 24 fps, 2 s at 30, 2 s at 60: 228 frames over 6 s.
        let times = vfr_times(&[(48, 24), (60, 30), (120, 60)]);
        let f = SourceFacts {
            frame_times_ns: times.clone(),
            end_ns: 6_000_000_000,
            ..facts(times.len() as u64, 38, 1, vec![0])
        };
        let p = plan(&f, &opts(2.0)).unwrap();
        assert!(p.vfr);
        assert_eq!(p.min_frame_ns, 16_666_666);
        assert_eq!(ranges(&p), vec![(0, 48), (48, 108), (108, 228)]);
        for s in &p.segments {
            assert_eq!(
                s.start_ns, times[s.start_frame as usize],
                "real frame times"
            );
        }
        assert_eq!(p.end_ns(), 6_000_000_000);
        assert!((p.max_fps() - 60.0).abs() < 0.01, "{}", p.max_fps());
    }

    #[test]
    fn odd_gaps_and_coarse_timestamps_are_not_variable_rate() {
        let timed = |times: Vec<u64>, end_ns: u64, num: u32| SourceFacts {
            end_ns,
            ..SourceFacts {
                frame_times_ns: times.clone(),
                ..facts(times.len() as u64, num, 1, vec![0])
            }
        };
        // 25 fps with one frame 2 ms after the one before (a glitch).
        let mut t: Vec<u64> = (0..100).map(|i| i * 40_000_000).collect();
        t[50] = t[49] + 2_000_000;
        let p = plan(&timed(t, 4_000_000_000, 25), &opts(2.0)).unwrap();
        assert!(!p.vfr);
        assert_eq!(p.max_fps(), 25.0);
        // 120 fps in Matroska: millisecond timestamps, 8 and 9 ms apart.
        let t: Vec<u64> = (0..240)
            .map(|i| i * 1_000_000_000 / 120 / 1_000_000 * 1_000_000)
            .collect();
        let p = plan(&timed(t, 2_000_000_000, 120), &opts(2.0)).unwrap();
        assert!(!p.vfr);
        assert_eq!(p.max_fps(), 120.0);
    }

    #[test]
    fn a_made_up_last_frame_duration_is_replaced_by_a_typical_one() {
        // The parser said the last frame lasts 1 ms; frames are 40 ms apart.
        let t: Vec<u64> = (0..100).map(|i| i * 40_000_000).collect();
        let f = SourceFacts {
            frame_times_ns: t,
            end_ns: 99 * 40_000_000 + 1_000_000,
            ..facts(100, 25, 1, vec![0])
        };
        assert_eq!(plan(&f, &opts(2.0)).unwrap().end_ns(), 4_000_000_000);
    }

    #[test]
    fn constant_rate_with_times_cuts_like_without() {
        for (frames, num, den) in [(1000u64, 25u32, 1u32), (900, 30000, 1001), (1010, 25, 1)] {
            let untimed = facts(frames, num, den, vec![0]);
            let timed = SourceFacts {
                frame_times_ns: (0..frames).map(|i| frame_time_ns(i, num, den)).collect(),
                end_ns: frame_time_ns(frames, num, den),
                ..untimed.clone()
            };
            let (a, b) = (
                plan(&untimed, &opts(10.0)).unwrap(),
                plan(&timed, &opts(10.0)).unwrap(),
            );
            assert_eq!(ranges(&a), ranges(&b), "{frames} @ {num}/{den}");
            assert_eq!(a.segments, b.segments);
            assert!(!b.vfr);
        }
    }

    #[test]
    fn hdr_is_refused_with_the_reason() {
        let f = SourceFacts {
            hdr: Some("PQ, SMPTE ST 2084".into()),
            ..facts(100, 25, 1, vec![0])
        };
        let err = plan(&f, &opts(2.0)).unwrap_err();
        assert!(err.to_string().contains("tone mapping"), "{err}");
    }

    #[test]
    fn no_frames_is_an_error() {
        assert_eq!(
            plan(&facts(0, 25, 1, vec![]), &opts(10.0)),
            Err(PlanError::NoFrames)
        );
    }
}
