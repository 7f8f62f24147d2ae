//! Probe a source: exact frame count and keyframe positions by scanning the
//! demuxed, parsed (not decoded) video stream, plus audio facts.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::util;
use super::MediaError;
use crate::plan::{AudioFacts, SourceFacts};

/// Everything the probe saw; `facts` is what the planner needs, the rest
/// serves the stitcher's verification.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProbeInfo {
    pub facts: SourceFacts,
    /// Stream time of the first audio sample, nanoseconds.
    pub audio_first_ns: Option<u64>,
    /// Stream time of the first video frame, nanoseconds.
    pub video_first_ns: u64,
    /// Stream time where the last video frame ends, nanoseconds.
    pub video_end_ns: u64,
}

/// Probe `path`. Corrupt, truncated or video-less input is a permanent error.
pub fn probe(path: &Path) -> Result<SourceFacts, MediaError> {
    probe_full(path).map(|p| p.facts)
}

#[derive(Default)]
struct Scan {
    /// (raw timestamp, is keyframe, duration) per video buffer, decode order.
    video: Vec<(Option<gst::ClockTime>, bool, Option<u64>)>,
    /// The latest segment of each branch. Timestamps are mapped to stream
    /// time with it at the end: some demuxers (matroskademux) start with a
    /// provisional segment and replace it without a flush, and the last
    /// one is the one a seek will use too.
    video_segment: Option<gst::Segment>,
    audio_segment: Option<gst::Segment>,
    video_caps: Option<gst::Caps>,
    audio_caps: Option<gst::Caps>,
    audio_first: Option<gst::ClockTime>,
    audio_end: Option<gst::ClockTime>,
    has_video_pad: bool,
    has_audio_pad: bool,
}

pub(crate) fn probe_full(path: &Path) -> Result<ProbeInfo, MediaError> {
    util::init()?;
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let src = super::source::source_element(path)?;
    let parsebin = util::make("parsebin")?;
    let pipeline = gst::Pipeline::new();
    util::add_chain(&pipeline, &[&src, &parsebin])?;
    let scan = Arc::new(Mutex::new(Scan::default()));

    let pipeline_weak = pipeline.downgrade();
    let scan_pads = scan.clone();
    parsebin.connect_pad_added(move |_, pad| {
        let Some(pipeline) = pipeline_weak.upgrade() else {
            return;
        };
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let name = caps
            .structure(0)
            .map(|s| s.name().to_string())
            .unwrap_or_default();
        let sink = {
            let mut st = scan_pads.lock().unwrap_or_else(|e| e.into_inner());
            if name.starts_with("video/") && !st.has_video_pad {
                st.has_video_pad = true;
                st.video_caps = Some(caps.clone());
                video_sink(scan_pads.clone())
            } else if name.starts_with("audio/") && !st.has_audio_pad {
                st.has_audio_pad = true;
                st.audio_caps = Some(caps.clone());
                audio_sink(scan_pads.clone())
            } else {
                util::fake_sink().ok()
            }
        };
        let Some(sink) = sink else { return };
        if pipeline.add(&sink).is_err() {
            return;
        }
        let _ = sink.sync_state_with_parent();
        if let Some(sinkpad) = sink.static_pad("sink") {
            let _ = pad.link(&sinkpad);
        }
    });

    let timeout = Duration::from_secs(120) + Duration::from_secs(size / (20 << 20));
    let mut duration: Option<u64> = None;
    let what = format!("probe {}", path.display());
    let streams = util::FirstStreamWatch::new(&parsebin);
    util::drive(&pipeline, timeout, &what, || {
        streams.check(&what)?;
        if duration.is_none() {
            duration = pipeline
                .query_duration::<gst::ClockTime>()
                .map(|d| d.nseconds());
        }
        Ok(())
    })?;
    let scan = Arc::try_unwrap(scan)
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .unwrap_or_else(|arc| {
            let g = arc.lock().unwrap_or_else(|e| e.into_inner());
            Scan {
                video: g.video.clone(),
                video_caps: g.video_caps.clone(),
                video_segment: g.video_segment.clone(),
                audio_segment: g.audio_segment.clone(),
                audio_caps: g.audio_caps.clone(),
                audio_first: g.audio_first,
                audio_end: g.audio_end,
                has_video_pad: g.has_video_pad,
                has_audio_pad: g.has_audio_pad,
            }
        });
    summarize(path, scan, duration)
}

fn video_sink(scan: Arc<Mutex<Scan>>) -> Option<gst::Element> {
    let sink = gst_app::AppSink::builder()
        .sync(false)
        .async_(false)
        .callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |s| {
                    let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let Some(buf) = sample.buffer() else {
                        return Ok(gst::FlowSuccess::Ok);
                    };
                    // Some demuxers leave PTS unset on reordered frames;
                    // DTS then is the best stream position we have.
                    let ts = buf.pts().or(buf.dts());
                    let key = !buf.flags().contains(gst::BufferFlags::DELTA_UNIT);
                    let dur = buf.duration().map(|d| d.nseconds());
                    let mut g = scan.lock().unwrap_or_else(|e| e.into_inner());
                    g.video.push((ts, key, dur));
                    if let Some(seg) = sample.segment() {
                        g.video_segment = Some(seg.clone());
                    }
                    // Caps at pad-added time may be provisional (tsdemux):
                    // the first sample's caps are complete.
                    if g.video.len() == 1 {
                        if let Some(c) = sample.caps() {
                            g.video_caps = Some(c.to_owned());
                        }
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        )
        .build();
    Some(sink.upcast())
}

fn audio_sink(scan: Arc<Mutex<Scan>>) -> Option<gst::Element> {
    let sink = gst_app::AppSink::builder()
        .sync(false)
        .async_(false)
        .callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |s| {
                    let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let (Some(buf), Some(seg)) = (sample.buffer(), sample.segment()) else {
                        return Ok(gst::FlowSuccess::Ok);
                    };
                    let Some(pts) = buf.pts() else {
                        return Ok(gst::FlowSuccess::Ok);
                    };
                    let end = pts + buf.duration().unwrap_or(gst::ClockTime::ZERO);
                    let mut g = scan.lock().unwrap_or_else(|e| e.into_inner());
                    g.audio_first = Some(g.audio_first.map_or(pts, |f| f.min(pts)));
                    g.audio_end = Some(g.audio_end.map_or(end, |e| e.max(end)));
                    g.audio_segment = Some(seg.clone());
                    if let Some(c) = sample.caps() {
                        g.audio_caps = Some(c.to_owned());
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        )
        .build();
    Some(sink.upcast())
}

/// `ts` moved into `[seg.start, seg.stop]`.
fn clamp_to(seg: &gst::FormattedSegment<gst::ClockTime>, ts: gst::ClockTime) -> gst::ClockTime {
    let lo = seg.start().map_or(ts, |s| ts.max(s));
    seg.stop().map_or(lo, |s| lo.min(s))
}

fn summarize(path: &Path, scan: Scan, duration: Option<u64>) -> Result<ProbeInfo, MediaError> {
    let name = path.display();
    if scan.video.is_empty() {
        return Err(MediaError::permanent(if scan.has_video_pad {
            format!("{name}: video stream has no frames")
        } else {
            format!("{name}: no video stream")
        }));
    }
    let caps = scan
        .video_caps
        .ok_or_else(|| MediaError::permanent(format!("{name}: video stream without caps")))?;
    let s = caps
        .structure(0)
        .ok_or_else(|| MediaError::permanent(format!("{name}: video stream without caps")))?;
    let width = s.get::<i32>("width").unwrap_or(0).max(0) as u32;
    let height = s.get::<i32>("height").unwrap_or(0).max(0) as u32;
    if width == 0 || height == 0 {
        return Err(MediaError::permanent(format!("{name}: video size unknown")));
    }
    let codec = s.name().to_string();

    let frames = scan.video.len() as u64;
    // Stream time under the last segment seen: some demuxers (matroskademux)
    // start with a provisional segment and replace it without a flush. The
    // constant raw-minus-stream offset lets the segment encoder select by
    // raw timestamps, the one thing that stays the same across seeks.
    let raw: Vec<(Option<u64>, bool, Option<u64>)> = scan
        .video
        .iter()
        .map(|(ts, key, dur)| {
            let st = match (&scan.video_segment, ts) {
                (Some(seg), Some(t)) => util::stream_time(seg, *t),
                _ => ts.map(|t| t.nseconds()),
            };
            (st, *key, *dur)
        })
        .collect();
    // Frame index = rank in presentation order (buffers arrive in decode order).
    let mut order: Vec<(u64, bool)> = raw
        .iter()
        .enumerate()
        .map(|(i, (t, key, _))| (t.unwrap_or(i as u64), *key))
        .collect();
    order.sort_by_key(|(t, _)| *t);
    let first_pts_ns = raw.iter().filter_map(|v| v.0).min().unwrap_or(0);
    let first_raw_ns = scan
        .video
        .iter()
        .filter_map(|v| v.0.map(|t| t.nseconds()))
        .min()
        .unwrap_or(first_pts_ns);
    let pts_offset_ns = first_raw_ns as i64 - first_pts_ns as i64;
    let last = raw
        .iter()
        .filter_map(|v| v.0.map(|t| t + v.2.unwrap_or(0)))
        .max()
        .unwrap_or(0);
    // Stream time (the output timeline) of the first frame and of the end.
    let video_first_st = first_pts_ns;
    let video_end_st = last;
    let keyframes: Vec<u64> = order
        .iter()
        .enumerate()
        .filter(|(_, (_, key))| *key)
        .map(|(i, _)| i as u64)
        .collect();

    let (mut fps_num, mut fps_den) = s
        .get::<gst::Fraction>("framerate")
        .map(|f| (f.numer().max(0) as u32, f.denom().max(0) as u32))
        .unwrap_or((0, 1));
    let span = last.saturating_sub(first_pts_ns);
    let total = duration.filter(|d| *d > 0).unwrap_or(span);
    if fps_num == 0 || fps_den == 0 {
        // Variable frame rate: nominal rate from the average frame spacing.
        if total == 0 {
            return Err(MediaError::permanent(format!("{name}: frame rate unknown")));
        }
        fps_num = ((frames as f64 * 1e12) / total as f64).round() as u32;
        fps_den = 1000;
    }

    let aseg = scan.audio_segment.clone();
    // Clamped into the segment first: an MP4 edit list trims AAC priming at
    // the start and padding at the end, and decoders clip to the segment,
    // so the audio that plays is only what the segment covers.
    let a_st = |ts: Option<gst::ClockTime>| match (&aseg, ts) {
        (Some(seg), Some(ts)) => {
            let ts = seg
                .downcast_ref::<gst::ClockTime>()
                .map_or(ts, |s| clamp_to(s, ts));
            util::stream_time(seg, ts).or(Some(ts.nseconds()))
        }
        (None, Some(ts)) => Some(ts.nseconds()),
        _ => None,
    };
    let (a_first, a_end) = (a_st(scan.audio_first), a_st(scan.audio_end));
    let audio = match (scan.audio_caps, a_first, a_end) {
        (Some(c), Some(first), Some(end)) => {
            let a = c.structure(0);
            let rate = a
                .and_then(|a| a.get::<i32>("rate").ok())
                .unwrap_or(0)
                .max(0) as u32;
            let channels = a
                .and_then(|a| a.get::<i32>("channels").ok())
                .unwrap_or(0)
                .max(0) as u32;
            Some(AudioFacts {
                rate,
                channels,
                duration_ns: end.saturating_sub(first),
            })
        }
        _ => None,
    };
    let audio_first_ns = if audio.is_some() { a_first } else { None };
    Ok(ProbeInfo {
        facts: SourceFacts {
            duration_ns: total,
            fps_num,
            fps_den,
            frames,
            width,
            height,
            video_codec: codec,
            keyframes,
            first_pts_ns,
            pts_offset_ns,
            audio,
        },
        audio_first_ns,
        video_first_ns: video_first_st,
        video_end_ns: video_end_st,
    })
}
