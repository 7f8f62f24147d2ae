//! Probe a source: exact frame count and keyframe positions by scanning the
//! demuxed, parsed (not decoded) video stream, plus audio facts.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;

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
    /// Coded size of each video buffer, bytes, decode order: a u32 each
    /// (a 12 h 60 fps source has 2.6M), dropped once summarized into
    /// scene-change candidates.
    video_sizes: Vec<u32>,
    /// The latest segment of each branch. Timestamps are mapped to stream
    /// time with it at the end: some demuxers (matroskademux) start with a
    /// provisional segment and replace it without a flush, and the last
    /// one is the one a seek will use too.
    video_segment: Option<gst::Segment>,
    video_caps: Option<gst::Caps>,
    /// The `image-orientation` tag of the video stream.
    orientation: Option<String>,
    has_video_pad: bool,
    /// Every audio track, by stream id tail (the track's name in the file).
    audio: BTreeMap<String, AudioScan>,
}

#[derive(Default, Clone)]
struct AudioScan {
    segment: Option<gst::Segment>,
    caps: Option<gst::Caps>,
    first: Option<gst::ClockTime>,
    end: Option<gst::ClockTime>,
    /// The container marks the track as not to be played by default.
    unselected: bool,
    language: Option<String>,
}

pub(crate) fn probe_full(path: &Path) -> Result<ProbeInfo, MediaError> {
    util::init()?;
    let size = super::source::source_size(path);
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
                watch_orientation(pad, scan_pads.clone());
                video_sink(scan_pads.clone())
            } else if name.starts_with("audio/") {
                let key =
                    util::stream_tail(pad).unwrap_or_else(|| format!("pad{}", st.audio.len()));
                let track = st.audio.entry(key.clone()).or_default();
                track.caps = Some(caps.clone());
                track.unselected = util::stream_unselected(pad);
                watch_language(pad, scan_pads.clone(), key.clone());
                audio_sink(scan_pads.clone(), key)
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
    let scan = match Arc::try_unwrap(scan) {
        Ok(m) => m.into_inner().unwrap_or_else(|e| e.into_inner()),
        Err(arc) => std::mem::take(&mut *arc.lock().unwrap_or_else(|e| e.into_inner())),
    };
    summarize(path, scan, duration)
}

/// Record the video's `image-orientation` tag (phones store rotation so).
fn watch_orientation(pad: &gst::Pad, scan: Arc<Mutex<Scan>>) {
    pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
        if let Some(gst::PadProbeData::Event(ev)) = &info.data {
            if let gst::EventView::Tag(t) = ev.view() {
                if let Some(o) = t.tag().get::<gst::tags::ImageOrientation>() {
                    let mut g = scan.lock().unwrap_or_else(|e| e.into_inner());
                    g.orientation = Some(o.get().to_string());
                }
            }
        }
        gst::PadProbeReturn::Ok
    });
}

/// Record an audio track's language tag.
fn watch_language(pad: &gst::Pad, scan: Arc<Mutex<Scan>>, key: String) {
    pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
        if let Some(gst::PadProbeData::Event(ev)) = &info.data {
            if let gst::EventView::Tag(t) = ev.view() {
                if let Some(l) = t.tag().get::<gst::tags::LanguageCode>() {
                    let mut g = scan.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(track) = g.audio.get_mut(&key) {
                        track.language = Some(l.get().to_string());
                    }
                }
            }
        }
        gst::PadProbeReturn::Ok
    });
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
                    let size = u32::try_from(buf.size()).unwrap_or(u32::MAX);
                    let mut g = scan.lock().unwrap_or_else(|e| e.into_inner());
                    g.video.push((ts, key, dur));
                    g.video_sizes.push(size);
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

fn audio_sink(scan: Arc<Mutex<Scan>>, key: String) -> Option<gst::Element> {
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
                    let Some(a) = g.audio.get_mut(&key) else {
                        return Ok(gst::FlowSuccess::Ok);
                    };
                    a.first = Some(a.first.map_or(pts, |f| f.min(pts)));
                    a.end = Some(a.end.map_or(end, |e| e.max(end)));
                    a.segment = Some(seg.clone());
                    if let Some(c) = sample.caps() {
                        a.caps = Some(c.to_owned());
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

fn summarize(path: &Path, mut scan: Scan, duration: Option<u64>) -> Result<ProbeInfo, MediaError> {
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
    // Frame index = rank in presentation order (buffers arrive in decode
    // order); the sort is stable, so equal times keep decode order.
    let order: Vec<(u64, bool)> = raw
        .iter()
        .enumerate()
        .map(|(i, (t, key, _))| (t.unwrap_or(i as u64), *key))
        .collect();
    // Decode positions in presentation order: the frame ranks for the
    // scene detector, then the order itself.
    let mut by_time: Vec<u32> = (0..order.len() as u32).collect();
    by_time.sort_by_key(|&i| order[i as usize].0);
    let scene_changes = {
        let mut rank = vec![0u32; order.len()];
        for (r, &i) in by_time.iter().enumerate() {
            rank[i as usize] = r as u32;
        }
        let sizes = std::mem::take(&mut scan.video_sizes);
        let coded: Vec<crate::scene::CodedFrame> = order
            .iter()
            .zip(&rank)
            .enumerate()
            .map(|(i, ((_, key), &rank))| crate::scene::CodedFrame {
                rank,
                size: sizes.get(i).copied().unwrap_or(0),
                key: *key,
            })
            .collect();
        drop((rank, sizes));
        crate::scene::scene_changes(&coded, crate::scene::sizes_are_meaningful(&codec))
    };
    let order: Vec<(u64, bool)> = by_time.iter().map(|&i| order[i as usize]).collect();
    drop(by_time);
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

    let span = last.saturating_sub(first_pts_ns);
    let total = duration.filter(|d| *d > 0).unwrap_or(span);
    // Frame times are trustworthy when every frame has its own: some
    // demuxers (MPEG-PS) leave frames without a timestamp or give two the
    // same, and a rate measured over those is wrong.
    let times_real = raw.iter().all(|v| v.0.is_some()) && order.windows(2).all(|w| w[0].0 < w[1].0);
    // From the first frame's start to the last one's: frames - 1 gaps.
    let starts_span = match (order.first(), order.last()) {
        (Some(a), Some(b)) if times_real => b.0.saturating_sub(a.0),
        _ => 0,
    };
    let (fps_num, fps_den) = frame_rate(s, frames, starts_span, total)
        .ok_or_else(|| MediaError::permanent(format!("{name}: frame rate unknown")))?;
    let par = s
        .get::<gst::Fraction>("pixel-aspect-ratio")
        .ok()
        .filter(|f| f.numer() > 0 && f.denom() > 0)
        .map_or((1, 1), |f| (f.numer() as u32, f.denom() as u32));
    // Parsers say so in their caps; h264parse names field-coded pictures.
    let interlaced = s
        .get::<&str>("interlace-mode")
        .is_ok_and(|m| m != "progressive")
        || s.get::<&str>("coded-picture-structure")
            .is_ok_and(|m| m == "field");
    let bit_depth = s.get::<u32>("bit-depth-luma").unwrap_or(0);
    let hdr = s
        .get::<&str>("colorimetry")
        .ok()
        .and_then(|c| c.parse::<gst_video::VideoColorimetry>().ok())
        .and_then(|c| match c.transfer() {
            gst_video::VideoTransferFunction::Smpte2084 => Some("PQ, SMPTE ST 2084"),
            gst_video::VideoTransferFunction::AribStdB67 => Some("HLG, ARIB STD-B67"),
            _ => None,
        })
        .map(str::to_string);

    let (audio, audio_first_ns) = match choose_audio(&scan.audio) {
        Some((key, track)) => {
            let tracks = scan.audio.len() as u32;
            audio_facts(key, track, tracks)
        }
        None => (None, None),
    };
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
            scene_changes,
            first_pts_ns,
            pts_offset_ns,
            audio,
            // Only real times: a frame before an edit list's start (a
            // trimmed upload) has no stream time, and a placeholder would
            // be taken for a frame time.
            frame_times_ns: if times_real {
                order.iter().map(|(t, _)| *t).collect()
            } else {
                Vec::new()
            },
            end_ns: last,
            par_num: par.0,
            par_den: par.1,
            orientation: scan.orientation,
            interlaced,
            bit_depth,
            hdr,
        },
        audio_first_ns,
        video_first_ns: video_first_st,
        video_end_ns: video_end_st,
    })
}

/// The caps' frame rate, unless the frames say otherwise: variable-rate
/// sources carry a nominal (often the highest) rate or none at all; then
/// the average over the real frames is the useful one.
fn frame_rate(
    s: &gst::StructureRef,
    frames: u64,
    starts_span: u64,
    duration: u64,
) -> Option<(u32, u32)> {
    let caps = s
        .get::<gst::Fraction>("framerate")
        .ok()
        .filter(|f| f.numer() > 0 && f.denom() > 0)
        .map(|f| (f.numer() as u32, f.denom() as u32));
    let measured =
        (frames > 1 && starts_span > 0).then(|| (frames - 1) as f64 * 1e9 / starts_span as f64);
    match (caps, measured) {
        (Some((n, d)), Some(m)) if ((n as f64 / d as f64) - m).abs() > m * 0.01 => {
            Some(((m * 1000.0).round() as u32, 1000))
        }
        (Some(c), _) => Some(c),
        (None, Some(m)) => Some(((m * 1000.0).round() as u32, 1000)),
        // One frame and no rate: frames over the container's duration.
        (None, None) if duration > 0 => Some((
            ((frames as f64 * 1e12) / duration as f64).round() as u32,
            1000,
        )),
        (None, None) => None,
    }
}

/// The audio track to encode: the first the container marks for default
/// playback (in track order), else the first.
fn choose_audio(tracks: &BTreeMap<String, AudioScan>) -> Option<(&String, &AudioScan)> {
    let with_data = || tracks.iter().filter(|(_, t)| t.first.is_some());
    with_data()
        .find(|(_, t)| !t.unselected)
        .or_else(|| with_data().next())
}

fn audio_facts(key: &str, a: &AudioScan, tracks: u32) -> (Option<AudioFacts>, Option<u64>) {
    // Clamped into the segment first: an MP4 edit list trims AAC priming at
    // the start and padding at the end, and decoders clip to the segment,
    // so the audio that plays is only what the segment covers.
    let a_st = |ts: Option<gst::ClockTime>| match (&a.segment, ts) {
        (Some(seg), Some(ts)) => {
            let ts = seg
                .downcast_ref::<gst::ClockTime>()
                .map_or(ts, |s| clamp_to(s, ts));
            util::stream_time(seg, ts).or(Some(ts.nseconds()))
        }
        (None, Some(ts)) => Some(ts.nseconds()),
        _ => None,
    };
    let (Some(first), Some(end), Some(caps)) = (a_st(a.first), a_st(a.end), &a.caps) else {
        return (None, None);
    };
    let st = caps.structure(0);
    let int = |f: &str| st.and_then(|s| s.get::<i32>(f).ok()).unwrap_or(0).max(0) as u32;
    let facts = AudioFacts {
        rate: int("rate"),
        channels: int("channels"),
        duration_ns: end.saturating_sub(first),
        stream: (!key.starts_with("pad")).then(|| key.to_string()),
        tracks,
        language: a.language.clone(),
    };
    (Some(facts), Some(first))
}
