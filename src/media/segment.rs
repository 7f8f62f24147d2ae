//! Encode one segment: decode exactly the frames of `[start_ns, end_ns)`
//! once, scale and encode them for every rendition of the ladder, and write
//! one MPEG-TS part per rendition on the SOURCE timeline, so the parts of a
//! rendition concatenate into one continuous stream.
//!
//! Pipeline: `CachedSrc (block cache, pull mode) ! parsebin` -> (video pad, blocked until we seek)
//! `decodebin` -> guard probe -> `videoconvert ! deinterlace ! videoflip !
//! tee`, then per rendition `queue ! videoscale ! capsfilter ! encoder !
//! parser ! mpegtsmux ! filesink`.
//!
//! Frame selection: an ACCURATE flushing seek sent from the parsed video pad
//! starts decoding near `start_ns` (the demuxer begins at the keyframe
//! before it); a half-frame guard on the decoded pad then keeps exactly the
//! frames whose stream time lies in `[start - half, end - half)`, and sends
//! EOS at the first frame past the end. The guard also retimes: buffers get
//! PTS = stream time under a zero-based segment, so running time equals
//! source stream time and mpegtsmux writes the source timeline (plus its
//! constant base) whatever the seek did.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_video as gst_video;

use super::util;
use super::MediaError;
use crate::job::{Codec, Rendition};
use crate::plan::{frame_time_ns, Segment};
use crate::task::SegmentWork;

/// CRF used when a rendition names neither crf nor bitrate.
const DEFAULT_CRF: u32 = 23;
/// Extra distance before a segment's start the seek aims at, nanoseconds.
const SEEK_MARGIN_NS: u64 = 250_000_000;
/// Slack before a keyframe-aligned segment's first frame, nanoseconds:
/// timestamp rounding of the coarsest containers (Matroska's 1 ms).
const START_SLACK_NS: u64 = 1_000_000;
/// VBV buffer for capped CRF / bitrate modes, milliseconds.
const VBV_MS: u32 = 2000;

/// What a segment encode did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SegmentStats {
    /// Frames written to each part (every rendition gets the same frames).
    pub frames: u64,
    /// Parts written, one per rendition.
    pub parts: u64,
    /// Frames the decoder produced, the segment's own included: above
    /// `frames` by what decoding from the previous keyframe cost.
    pub decoded: u64,
    /// Compressed frames the demuxer delivered with a time in the
    /// segment's range (0 when the source's timestamps cannot tell).
    pub parsed_in_range: u64,
}

/// Encode `work`; returns frames written to each part
/// (`work.segment.frames()`, less at most [`undecodable_allowance`] frames
/// the decoder could not decode).
pub fn encode_segment(
    work: &SegmentWork,
    progress: &mut dyn FnMut(u64, f64),
) -> Result<u64, MediaError> {
    encode_segment_stats(work, progress).map(|s| s.frames)
}

/// [`encode_segment`], with the decoder's count.
pub fn encode_segment_stats(
    work: &SegmentWork,
    progress: &mut dyn FnMut(u64, f64),
) -> Result<SegmentStats, MediaError> {
    util::init()?;
    let seg = chunk_span(&work.segments)?;
    if work.fps_num == 0 || work.fps_den == 0 {
        return Err(MediaError::permanent("segment work without frame rate"));
    }
    if work.outputs.is_empty() {
        return Err(MediaError::permanent("segment work without outputs"));
    }
    if let Some(o) = work
        .outputs
        .iter()
        .find(|o| o.parts.len() != work.segments.len())
    {
        return Err(MediaError::permanent(format!(
            "rendition {} has {} parts for {} segments",
            o.rendition.name,
            o.parts.len(),
            work.segments.len()
        )));
    }
    // The encoders share the child's threads; decoding and converting
    // happen once, upstream of them.
    let encoder_threads = match work.threads {
        0 => 0,
        t => (t / work.outputs.len() as u32).max(1),
    };
    let longest = work.segments.iter().map(|s| s.frames()).max().unwrap_or(1);
    let mut branches = Vec::with_capacity(work.outputs.len());
    for o in &work.outputs {
        let (encoder, parser) = make_encoder(&o.rendition, longest, encoder_threads)?;
        for part in &o.parts {
            util::ensure_parent(part)?;
        }
        branches.push(Branch {
            rendition: o.rendition.clone(),
            encoder,
            parser,
            tmps: o.parts.iter().map(|p| util::tmp_path(p)).collect(),
        });
    }
    let tmps: Vec<Vec<std::path::PathBuf>> = branches.iter().map(|b| b.tmps.clone()).collect();
    let remove_tmps = || {
        for t in tmps.iter().flatten() {
            let _ = std::fs::remove_file(t);
        }
        // Fragments past the expected ones (see Branch::fragment_path).
        for t in tmps.iter().filter_map(|t| t.last()) {
            for extra in 0..4 {
                let _ = std::fs::remove_file(extra_fragment(t, extra));
            }
        }
    };
    let res =
        run(work, seg, branches, progress).and_then(|stats| check_parts(work, seg, &tmps, stats));
    match res {
        Ok(stats) => {
            for (tmps, o) in tmps.iter().zip(&work.outputs) {
                for (tmp, part) in tmps.iter().zip(&o.parts) {
                    if let Err(e) = util::commit_once(tmp, part) {
                        remove_tmps();
                        return Err(e);
                    }
                }
            }
            Ok(stats)
        }
        Err(e) => {
            remove_tmps();
            Err(e)
        }
    }
}

/// The range a chunk of consecutive segments covers, named by its first.
fn chunk_span(segments: &[Segment]) -> Result<Segment, MediaError> {
    let (Some(first), Some(last)) = (segments.first(), segments.last()) else {
        return Err(MediaError::permanent("segment work without segments"));
    };
    for s in segments {
        if s.end_ns <= s.start_ns || s.frames() == 0 {
            return Err(MediaError::permanent(format!(
                "segment {} is empty",
                s.index
            )));
        }
    }
    if let Some(w) = segments
        .windows(2)
        .find(|w| w[1].start_frame != w[0].end_frame || w[1].start_ns != w[0].end_ns)
    {
        return Err(MediaError::permanent(format!(
            "segments {} and {} of one chunk are not consecutive",
            w[0].index, w[1].index
        )));
    }
    Ok(Segment {
        end_frame: last.end_frame,
        end_ns: last.end_ns,
        ..*first
    })
}

/// Every part holds its segment's frames and starts with an IDR; the
/// whole chunk may be short only with evidence that the decoder, not a
/// boundary, lost frames (the demuxer delivered every frame of the range).
fn check_parts(
    work: &SegmentWork,
    seg: Segment,
    tmps: &[Vec<std::path::PathBuf>],
    stats: SegmentStats,
) -> Result<SegmentStats, MediaError> {
    let n = stats.frames;
    let short_with_evidence = n < seg.frames()
        && seg.frames() - n <= undecodable_allowance(seg.frames())
        && stats.parsed_in_range >= seg.frames();
    if n != seg.frames() && !short_with_evidence {
        return Err(MediaError::permanent(format!(
            "segment {} wrote {n} frames, expected {} (frames {}..{}; the source delivered {} in range)",
            seg.index,
            seg.frames(),
            seg.start_frame,
            seg.end_frame,
            stats.parsed_in_range
        )));
    }
    for parts in tmps {
        let mut total = 0;
        for (tmp, s) in parts.iter().zip(&work.segments) {
            let scan = super::ts::scan_video(tmp, &mut |_| {}).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    // The splitter cut fewer parts than segments: the same
                    // input would do the same again.
                    MediaError::permanent(format!(
                        "segment {}: no part was cut for it (no keyframe at its start)",
                        s.index
                    ))
                } else {
                    MediaError::transient(format!("cannot read part {}: {e}", tmp.display()))
                }
            })?;
            let exact =
                scan.frames == s.frames() || (short_with_evidence && scan.frames < s.frames());
            if !exact || !scan.starts_with_keyframe {
                return Err(MediaError::permanent(format!(
                    "segment {}: its part holds {} frames (expected {}){}",
                    s.index,
                    scan.frames,
                    s.frames(),
                    if scan.starts_with_keyframe {
                        ""
                    } else {
                        " and does not start with a keyframe"
                    }
                )));
            }
            total += scan.frames;
        }
        if total != n {
            return Err(MediaError::permanent(format!(
                "segment {}: parts hold {total} frames, the encoder wrote {n}",
                seg.index
            )));
        }
    }
    if n < seg.frames() {
        // A corrupt frame the decoder could not decode: the part keeps its
        // neighbours' timing, the stitch counts what the parts hold, and
        // the manifest reports the shortfall.
        eprintln!(
            "segment {}: {} undecodable source frame(s) skipped",
            seg.index,
            seg.frames() - n
        );
    }
    Ok(stats)
}

/// Where a fragment past the expected ones goes (an encoder keyframe the
/// splitter cut at by mistake): the part check then refuses the work.
fn extra_fragment(last: &std::path::Path, i: u32) -> std::path::PathBuf {
    let mut name = last.as_os_str().to_owned();
    name.push(format!(".extra{i}"));
    name.into()
}

/// One rendition's scale-and-encode branch after the tee, cut into one
/// temporary part per segment.
struct Branch {
    rendition: Rendition,
    encoder: gst::Element,
    parser: gst::Element,
    tmps: Vec<std::path::PathBuf>,
}

/// Source frames of a segment the decoder may fail to decode (corrupt
/// data) before the part is refused: one, or 0.5 % of a long segment.
pub fn undecodable_allowance(frames: u64) -> u64 {
    (frames / 200).max(1).min(frames.saturating_sub(1))
}

/// GStreamer `videoflip` direction that shows a picture tagged with
/// `image-orientation` upright.
pub(crate) fn flip_direction(orientation: Option<&str>) -> &'static str {
    match orientation {
        Some("rotate-90") => "90r",
        Some("rotate-180") => "180",
        Some("rotate-270") => "90l",
        Some("flip-rotate-0") => "horiz",
        Some("flip-rotate-90") => "ul-lr",
        Some("flip-rotate-180") => "vert",
        Some("flip-rotate-270") => "ur-ll",
        _ => "identity",
    }
}

/// Encoder and matching parser for a rendition.
fn make_encoder(
    r: &Rendition,
    frames: u64,
    threads: u32,
) -> Result<(gst::Element, gst::Element), MediaError> {
    // Longer than the segment: the only IDR of a part is its first frame
    // (scene cuts may still add I-frames, which is harmless).
    let keyint = (frames + 1).min(u32::MAX as u64) as u32;
    match r.codec {
        Codec::H264 => {
            let mut b = gst::ElementFactory::make("x264enc")
                .property("key-int-max", keyint)
                .property("threads", threads);
            b = b.property_from_str("speed-preset", &r.preset);
            b = match (r.crf, r.bitrate) {
                // Capped CRF: quality target, VBV-limited peak.
                (Some(crf), Some(kbps)) => b
                    .property_from_str("pass", "qual")
                    .property("quantizer", crf)
                    .property("bitrate", kbps)
                    .property("vbv-buf-capacity", VBV_MS),
                (None, Some(kbps)) => b
                    .property_from_str("pass", "cbr")
                    .property("bitrate", kbps)
                    .property("vbv-buf-capacity", VBV_MS),
                // Pure CRF: x264enc's pass=qual otherwise caps at its default
                // 2 Mbit/s bitrate; an empty VBV buffer disables that cap.
                (crf, None) => b
                    .property_from_str("pass", "qual")
                    .property("quantizer", crf.unwrap_or(DEFAULT_CRF))
                    .property("vbv-buf-capacity", 0u32),
            };
            let enc = b
                .build()
                .map_err(|_| MediaError::transient("GStreamer element x264enc is not installed"))?;
            let parse = gst::ElementFactory::make("h264parse")
                .property("config-interval", -1i32)
                .build()
                .map_err(|_| {
                    MediaError::transient("GStreamer element h264parse is not installed")
                })?;
            Ok((enc, parse))
        }
        Codec::H265 => {
            let crf = r.crf.unwrap_or(if r.bitrate.is_some() {
                0
            } else {
                DEFAULT_CRF + 5
            });
            let mut opts = vec![format!("keyint={keyint}"), "open-gop=0".to_string()];
            if threads > 0 {
                opts.push(format!("pools={threads}"));
            }
            match (r.crf, r.bitrate) {
                (_, None) => opts.push(format!("crf={crf}")),
                (Some(_), Some(kbps)) => {
                    opts.push(format!("crf={crf}"));
                    opts.push(format!("vbv-maxrate={kbps}"));
                    opts.push(format!("vbv-bufsize={}", kbps * VBV_MS / 1000));
                }
                (None, Some(kbps)) => opts.push(format!("bitrate={kbps}")),
            }
            let enc = gst::ElementFactory::make("x265enc")
                .property("key-int-max", keyint.min(i32::MAX as u32) as i32)
                .property_from_str("speed-preset", &r.preset)
                .property("option-string", opts.join(":"))
                .build()
                .map_err(|_| MediaError::transient("GStreamer element x265enc is not installed"))?;
            let parse = gst::ElementFactory::make("h265parse")
                .property("config-interval", -1i32)
                .build()
                .map_err(|_| {
                    MediaError::transient("GStreamer element h265parse is not installed")
                })?;
            Ok((enc, parse))
        }
        Codec::Vp9 | Codec::Av1 => Err(MediaError::permanent(format!(
            "codec {} not supported by this worker",
            match r.codec {
                Codec::Vp9 => "vp9",
                _ => "av1",
            }
        ))),
    }
}

/// The colorimetry every rendition keeps: the source's as its parser
/// states it, else the one GStreamer assumes for an untagged picture of
/// the source's size (what the decoder's frames are taken to be). Left
/// to itself the scaler would fixate each rendition to the default for
/// *its* size, converting a 720p source's BT.709 into BT.601 for a 240p
/// rung: a lossy matrix conversion no single-pass encoder does, and rungs
/// of one ladder in different colour spaces.
fn source_colorimetry(s: &gst::StructureRef, w: u32, h: u32) -> Option<String> {
    if let Ok(c) = s.get::<&str>("colorimetry") {
        return Some(c.to_string());
    }
    gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, w.max(2), h.max(2))
        .build()
        .ok()
        .map(|i| i.colorimetry().to_string())
}

/// Output size: the rendition's width, or the source display aspect at the
/// rendition's height; always even (4:2:0 chroma).
pub(crate) fn output_size(r: &Rendition, src_w: u32, src_h: u32, par: (i32, i32)) -> (u32, u32) {
    let h = (r.height / 2 * 2).max(2);
    let w = match r.width {
        Some(w) => w,
        None if src_h > 0 && par.0 > 0 && par.1 > 0 => {
            let dar = src_w as f64 * par.0 as f64 / (src_h as f64 * par.1 as f64);
            (h as f64 * dar / 2.0).round() as u32 * 2
        }
        None => h * 16 / 9,
    };
    ((w / 2 * 2).max(2), h)
}

/// What the blocked parsed-video pad tells the driving thread.
struct Blocked {
    pad: gst::Pad,
    probe: gst::PadProbeId,
    segment: Option<gst::Segment>,
    caps: Option<gst::Caps>,
}

/// State of the half-frame guard.
struct Guard {
    segment: Option<gst::Segment>,
    ended: bool,
    kept: u64,
}

fn run(
    work: &SegmentWork,
    seg: Segment,
    branches: Vec<Branch>,
    progress: &mut dyn FnMut(u64, f64),
) -> Result<SegmentStats, MediaError> {
    let frame_ns = frame_time_ns(1, work.fps_num, work.fps_den).max(1);
    // Boundaries are real frame times: any tolerance below half the
    // shortest frame spacing assigns every frame to exactly one segment.
    let half = match work.min_frame_ns {
        0 => frame_ns / 2,
        m => (m / 2).min(frame_ns / 2),
    };
    // Decoding starts at the segment's own keyframe when it has one (see
    // seek_to_start); a decoder may then emit a frame with an interpolated
    // timestamp just before it, which is no source frame. The real first
    // frame's time is exact (the probe read the same timestamps), so only
    // a rounding tick of slack is left before it.
    let keep_from = if seg.starts_on_keyframe && work.pts_offset_ns.is_some() {
        seg.start_ns.saturating_sub(half.min(START_SLACK_NS))
    } else {
        seg.start_ns.saturating_sub(half)
    };
    let keep_until = seg.end_ns.saturating_sub(half);
    let pts_offset_ns = work.pts_offset_ns;

    let pipeline = gst::Pipeline::new();
    let src = super::source::source_element(&work.input)?;
    let parsebin = util::make("parsebin")?;
    util::add_chain(&pipeline, &[&src, &parsebin])?;

    // Static tail: everything after the decoder. Interlaced frames are
    // deinterlaced (browsers do not), one output frame per input frame;
    // progressive ones pass through. Then the picture is turned upright.
    let convert = util::make("videoconvert")?;
    if work.threads > 0 {
        convert.set_property("n-threads", work.threads);
    }
    let deinterlace = gst::ElementFactory::make("deinterlace")
        .property_from_str("mode", "auto")
        .property_from_str("method", "linear")
        .property_from_str("fields", "top")
        .build()
        .map_err(|_| MediaError::transient("GStreamer element deinterlace is not installed"))?;
    let flip = gst::ElementFactory::make("videoflip")
        .property_from_str(
            "video-direction",
            flip_direction(work.orientation.as_deref()),
        )
        .build()
        .map_err(|_| MediaError::transient("GStreamer element videoflip is not installed"))?;
    let tee = util::make("tee")?;
    util::add_chain(&pipeline, &[&convert, &deinterlace, &flip, &tee])?;

    // An IDR at the start of every segment after the chunk's first: the
    // encoders get a force-key-unit event just before that frame, and
    // each rendition's splitter starts a new part there.
    let cuts: Vec<u64> = work.segments.iter().skip(1).map(|s| s.start_ns).collect();
    if let Some(pad) = flip.static_pad("src") {
        let next = Mutex::new(0usize);
        let cuts = cuts.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            let Some(pts) = info.buffer().and_then(|b| b.pts()) else {
                return gst::PadProbeReturn::Ok;
            };
            let mut next = next.lock().unwrap_or_else(|e| e.into_inner());
            // Frames carry their exact source times (the guard retimed
            // them), so the first frame at or past a cut starts its segment.
            // Every cut this frame reaches (a segment whose frames the
            // decoder lost entirely has no frame of its own).
            let mut reached = false;
            while cuts.get(*next).is_some_and(|&c| pts.nseconds() + half >= c) {
                *next += 1;
                reached = true;
            }
            if reached {
                let ev = gstreamer_video::DownstreamForceKeyUnitEvent::builder()
                    .running_time(pts)
                    .all_headers(true)
                    .build();
                pad.push_event(ev);
            }
            gst::PadProbeReturn::Ok
        });
    }

    // One branch per rendition, each behind its own queue so the encoders
    // run in parallel on the shared decode.
    let mut capsfilters = Vec::with_capacity(branches.len());
    let mut splitters = Vec::with_capacity(branches.len());
    let mut written = Vec::with_capacity(branches.len());
    let mut renditions = Vec::with_capacity(branches.len());
    for b in branches {
        let queue = util::make("queue")?;
        // Multi-tap Catmull-Rom, like ffmpeg's bicubic: the default 2-tap
        // bilinear skips most source pixels on a big downscale and
        // aliases. 1080p zone plate to 180p, PSNR against an area-averaged
        // reference: bilinear 18.3 dB, bilinear2 27.0, catrom 37.3; it
        // costs about 7 ms a 1080p frame on one core (bilinear 2.3 ms).
        // No borders: a rung is the source's shape rounded to even
        // pixels (426x240 for 16:9 is 0.2 % off), and with square pixels
        // asked for the scaler would keep the exact ratio by squeezing the
        // picture a line and painting the last row black, on every frame.
        let scale = gst::ElementFactory::make("videoscale")
            .property_from_str("method", "catrom")
            .property("add-borders", false)
            .build()
            .map_err(|_| MediaError::transient("GStreamer element videoscale is not installed"))?;
        if work.threads > 0 {
            scale.set_property("n-threads", work.threads);
        }
        let capsfilter = util::make("capsfilter")?;
        let split = splitter(&b.tmps)?;
        util::add_chain(
            &pipeline,
            &[&queue, &scale, &capsfilter, &b.encoder, &b.parser],
        )?;
        pipeline
            .add(&split)
            .map_err(|e| MediaError::transient(format!("cannot add splitmuxsink: {e}")))?;
        let into_split = split
            .request_pad_simple("video")
            .ok_or_else(|| MediaError::transient("splitmuxsink has no video pad"))?;
        b.parser
            .static_pad("src")
            .ok_or_else(|| MediaError::transient("parser without src pad"))?
            .link(&into_split)
            .map_err(|e| MediaError::transient(format!("cannot link splitmuxsink: {e}")))?;
        tee.link(&queue)
            .map_err(|e| MediaError::transient(format!("cannot link tee: {e}")))?;
        // Encoded frames, counted after the parser (one buffer per access unit).
        let count = Arc::new(AtomicU64::new(0));
        if let Some(pad) = b.parser.static_pad("src") {
            let w = count.clone();
            pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                w.fetch_add(1, Ordering::Relaxed);
                gst::PadProbeReturn::Ok
            });
        }
        capsfilters.push(capsfilter);
        splitters.push(split);
        written.push(count);
        renditions.push(b.rendition);
    }
    let parts_expected = renditions.len() * work.segments.len();
    // Frames every part has (the slowest branch's count).
    let written_by_all = || {
        written
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    };

    let decoder_threads = work.threads;
    let decoded = Arc::new(AtomicU64::new(0));
    let decoded_in_pad = decoded.clone();
    let parsed = Arc::new(AtomicU64::new(0));
    let parsed_in_pad = parsed.clone();
    let (tx, rx) = mpsc::channel::<Blocked>();
    let tx = Mutex::new(tx);
    let have_video = Arc::new(Mutex::new(false));
    // Set by the guard once the last frame is out; then the discarded
    // streams stop accepting data too, so the demuxer stops reading.
    let video_done = Arc::new(AtomicBool::new(false));
    let video_done_in_pad = video_done.clone();
    let pipeline_weak = pipeline.downgrade();
    let convert_weak = convert.downgrade();
    parsebin.connect_pad_added(move |_, pad| {
        let Some(pipeline) = pipeline_weak.upgrade() else {
            return;
        };
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let is_video = caps
            .structure(0)
            .is_some_and(|s| s.name().starts_with("video/"));
        let first_video = {
            let mut hv = have_video.lock().unwrap_or_else(|e| e.into_inner());
            let first = is_video && !*hv;
            *hv |= is_video;
            first
        };
        if !first_video {
            // Other streams (audio, a second video) are parsed and
            // discarded until the video is done, then answered with EOS.
            // Dropping a buffer tells the demuxer all is well, so it read
            // on through the interleaved audio to the end of the file long
            // after the segment's last frame (a task at the start of a
            // source fetched all of it from the store); with EOS on every
            // stream it stops at the segment's end.
            let done = video_done_in_pad.clone();
            pad.add_probe(
                gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
                move |_, info| {
                    if done.load(Ordering::Relaxed) {
                        info.flow_res = Err(gst::FlowError::Eos);
                        gst::PadProbeReturn::Handled
                    } else {
                        gst::PadProbeReturn::Drop
                    }
                },
            );
            return;
        }
        let Ok(decodebin) = util::make("decodebin") else {
            util::post_error(pipeline.upcast_ref(), "decodebin is not installed");
            return;
        };
        // The decoder shares the child's thread budget too (libav's
        // decoders default to one thread per core).
        if let (Some(bin), true) = (decodebin.downcast_ref::<gst::Bin>(), decoder_threads > 0) {
            let threads = decoder_threads.min(i32::MAX as u32) as i32;
            bin.connect_deep_element_added(move |_, _, element| {
                let is_int = element
                    .find_property("max-threads")
                    .is_some_and(|p| p.value_type() == i32::static_type());
                if is_int {
                    element.set_property("max-threads", threads);
                }
            });
        }
        // Count what the demuxer delivers in range: the evidence that a
        // short part is the decoder's doing (see encode_segment).
        if let Some(off) = pts_offset_ns {
            let parsed = parsed_in_pad.clone();
            pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                let st = info
                    .buffer()
                    .and_then(|b| b.pts())
                    .map(|pts| pts.nseconds() as i64 - off);
                if st.is_some_and(|st| st >= keep_from as i64 && st < keep_until as i64) {
                    parsed.fetch_add(1, Ordering::Relaxed);
                }
                gst::PadProbeReturn::Ok
            });
        }
        // Hold the first parsed buffer until the driving thread has seeked.
        let tx = Mutex::new(tx.lock().unwrap_or_else(|e| e.into_inner()).clone());
        let blocked_once = Mutex::new(false);
        let wake = pipeline.downgrade();
        let id = pad.add_probe(
            gst::PadProbeType::BLOCK | gst::PadProbeType::BUFFER,
            move |pad, info| {
                let mut once = blocked_once.lock().unwrap_or_else(|e| e.into_inner());
                if !*once {
                    *once = true;
                    let segment = pad
                        .sticky_event::<gst::event::Segment>(0)
                        .map(|e| e.segment().clone());
                    if let Some(id) = info.id.take() {
                        let _ = tx.lock().unwrap_or_else(|e| e.into_inner()).send(Blocked {
                            pad: pad.clone(),
                            probe: id,
                            segment,
                            caps: pad.current_caps(),
                        });
                        // Wake the driving thread now: it would otherwise
                        // seek at its next 100 ms tick, a tenth of a second
                        // of every task spent waiting.
                        if let Some(p) = wake.upgrade() {
                            let _ = p.post_message(gst::message::Application::new(
                                gst::Structure::new_empty("jetcode-seek-now"),
                            ));
                        }
                    }
                }
                gst::PadProbeReturn::Ok
            },
        );
        if id.is_none() {
            util::post_error(pipeline.upcast_ref(), "cannot block the video pad");
            return;
        }
        let convert_weak = convert_weak.clone();
        let decoded_by_guard = decoded_in_pad.clone();
        let video_done = video_done_in_pad.clone();
        decodebin.connect_pad_added(move |_, dpad| {
            let caps = dpad.current_caps().unwrap_or_else(|| dpad.query_caps(None));
            if caps.structure(0).is_none_or(|s| s.name() != "video/x-raw") {
                return;
            }
            install_guard(
                dpad,
                keep_from,
                keep_until,
                pts_offset_ns,
                decoded_by_guard.clone(),
                video_done.clone(),
            );
            if let Some(sinkpad) = convert_weak.upgrade().and_then(|c| c.static_pad("sink")) {
                let _ = dpad.link(&sinkpad);
            }
        });
        if pipeline.add(&decodebin).is_err() {
            return;
        }
        let _ = decodebin.sync_state_with_parent();
        if let Some(sinkpad) = decodebin.static_pad("sink") {
            if pad.link(&sinkpad).is_err() {
                util::post_error(pipeline.upcast_ref(), "cannot link video stream to decoder");
            }
        }
    });

    let total = seg.frames();
    let started = Instant::now();
    let mut last_reported = 0u64;
    // A second per frame and encoder: far above any real encode, a bound
    // for a child whose pipeline hangs without failing (the worker's own
    // stall and task timers usually act first).
    let timeout = Duration::from_secs(300 + total * written.len() as u64);
    let what = format!("segment {}", seg.index);
    let streams = util::FirstStreamWatch::new(&parsebin);
    let mut parts_closed = 0;
    let finished = |msg: &gst::Message| {
        let closed = matches!(msg.view(), gst::MessageView::Element(el)
            if el.structure().is_some_and(|s| s.name() == "splitmuxsink-fragment-closed"));
        parts_closed += usize::from(closed);
        parts_closed >= parts_expected
    };
    util::drive_until(&pipeline, timeout, &what, finished, || {
        streams.check(&what)?;
        if let Ok(b) = rx.try_recv() {
            if let Some(s) = b.caps.as_ref().and_then(|c| c.structure(0)) {
                let w = s.get::<i32>("width").unwrap_or(0).max(0) as u32;
                let h = s.get::<i32>("height").unwrap_or(0).max(0) as u32;
                let par = s
                    .get::<gst::Fraction>("pixel-aspect-ratio")
                    .map(|f| (f.numer(), f.denom()))
                    .unwrap_or((1, 1));
                let colorimetry = source_colorimetry(s, w, h);
                for (capsfilter, rendition) in capsfilters.iter().zip(&renditions) {
                    let (ow, oh) = output_size(rendition, w, h, par);
                    let mut caps = gst::Caps::builder("video/x-raw")
                        .field("format", "I420")
                        .field("width", ow as i32)
                        .field("height", oh as i32)
                        .field("pixel-aspect-ratio", gst::Fraction::new(1, 1));
                    if let Some(c) = &colorimetry {
                        caps = caps.field("colorimetry", c.as_str());
                    }
                    capsfilter.set_property("caps", caps.build());
                }
            }
            // The cuts, now that the splitters are running (a state
            // change clears them) and before the first frame flows.
            for split in &splitters {
                for &c in &cuts {
                    split.emit_by_name::<()>(
                        "split-at-running-time",
                        &[&gst::ClockTime::from_nseconds(c.saturating_sub(half))],
                    );
                }
            }
            let exact = seg.starts_on_keyframe && seeks_by_index(&parsebin);
            seek_to_start(&b, &seg, exact, pts_offset_ns, frame_ns, half)?;
            b.pad.remove_probe(b.probe);
        }
        // Progress follows the fastest branch: it shows the decode moving
        // (the worker's stall timer) while a slower branch, with its share
        // of the threads, still fills its lookahead.
        let done = written
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        if done >= last_reported + 25 {
            last_reported = done;
            let secs = started.elapsed().as_secs_f64();
            progress(done, if secs > 0.0 { done as f64 / secs } else { 0.0 });
        }
        Ok(())
    })?;
    let done = written_by_all();
    let most = written
        .iter()
        .map(|w| w.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    if most != done {
        // The same frames entered every branch: an encoder that wrote
        // fewer lost some.
        return Err(MediaError::permanent(format!(
            "segment {}: renditions wrote {done} to {most} frames from one decode",
            seg.index
        )));
    }
    let secs = started.elapsed().as_secs_f64();
    progress(done, if secs > 0.0 { done as f64 / secs } else { 0.0 });
    Ok(SegmentStats {
        frames: done,
        parts: written.len() as u64,
        decoded: decoded.load(Ordering::Relaxed),
        parsed_in_range: parsed.load(Ordering::Relaxed),
    })
}

/// A `splitmuxsink` writing MPEG-TS parts to `tmps` in order, a new part
/// at each keyframe past a requested split time.
fn splitter(tmps: &[std::path::PathBuf]) -> Result<gst::Element, MediaError> {
    let mux = util::make("mpegtsmux")?;
    let sink = gst::ElementFactory::make("filesink")
        .property("sync", false)
        .property("async", false)
        .build()
        .map_err(|_| MediaError::transient("GStreamer element filesink is not installed"))?;
    let split = gst::ElementFactory::make("splitmuxsink")
        .property("muxer", &mux)
        .property("sink", &sink)
        .property("async-finalize", false)
        .build()
        .map_err(|_| MediaError::transient("GStreamer element splitmuxsink is not installed"))?;
    let tmps = tmps.to_vec();
    split.connect("format-location", false, move |args| {
        let id = args.get(1).and_then(|v| v.get::<u32>().ok()).unwrap_or(0);
        let path = match tmps.get(id as usize) {
            Some(p) => p.clone(),
            None => extra_fragment(tmps.last()?, id - tmps.len() as u32),
        };
        Some(path.to_string_lossy().to_value())
    });
    Ok(split)
}

/// Seek the blocked parsed-video pad so decoding starts one frame before
/// `start_ns` (the guard trims the rest). Also done for the first segment:
/// after a flushing seek every demuxer sends one consistent segment, while
/// some (matroskademux) start with a provisional one they replace without a
/// flush, which would shift the first frames' stream time.
/// Does the source's demuxer seek through an index, snapping a position
/// back to the keyframe before it? (MPEG-PS and -TS demuxers estimate a
/// byte offset instead, and may start decoding after the aim.)
fn seeks_by_index(parsebin: &gst::Element) -> bool {
    let Some(bin) = parsebin.downcast_ref::<gst::Bin>() else {
        return false;
    };
    bin.iterate_recurse().into_iter().flatten().any(|e| {
        e.factory()
            .is_some_and(|f| matches!(f.name().as_str(), "qtdemux" | "matroskademux"))
    })
}

fn seek_to_start(
    b: &Blocked,
    segment: &crate::plan::Segment,
    exact: bool,
    pts_offset_ns: Option<i64>,
    frame_ns: u64,
    half: u64,
) -> Result<(), MediaError> {
    let start_ns = segment.start_ns;
    let Some(seg) = b
        .segment
        .as_ref()
        .and_then(|s| s.downcast_ref::<gst::ClockTime>())
    else {
        return Err(MediaError::permanent(
            "video stream has no time segment; cannot seek",
        ));
    };
    // Seek positions should live in the pad's segment space, which may differ
    // from buffer timestamps (MP4 edit lists), but demuxers disagree on that
    // (qtdemux takes presentation time). Take the earlier of both, minus a
    // margin, and snap back to a keyframe: decoding a little more is
    // harmless, the guard trims to the exact frames. (An ACCURATE seek lets
    // the decoder clip at a position that may be past `start_ns` and lose
    // frames.)
    //
    // A segment that starts on a source keyframe of an indexed container
    // aims a quarter frame past it: snapping back lands on that keyframe,
    // so decoding starts exactly there instead of a whole GOP earlier. If
    // a demuxer's seek space puts the aim before the keyframe, it snaps to
    // the previous one: a GOP of wasted decoding, never a lost frame.
    let target_st = if exact {
        start_ns + half / 2
    } else {
        start_ns.saturating_sub(frame_ns + half + SEEK_MARGIN_NS)
    };
    let raw = gst::ClockTime::from_nseconds(target_st);
    // The same instant as a demuxer timestamp, for demuxers that seek in it.
    let as_pts = pts_offset_ns.map_or(raw, |off| {
        gst::ClockTime::from_nseconds((target_st as i64 + off.min(0)).max(0) as u64)
    });
    let pos = if target_st >= seg.time().map_or(0, |t| t.nseconds()) {
        seg.position_from_stream_time(raw)
            .map_or(raw, |p| p.min(raw))
    } else {
        raw
    }
    .min(as_pts);
    let seek = gst::event::Seek::new(
        1.0,
        gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT | gst::SeekFlags::SNAP_BEFORE,
        gst::SeekType::Set,
        pos,
        gst::SeekType::None,
        gst::ClockTime::NONE,
    );
    if !b.pad.send_event(seek) {
        return Err(MediaError::permanent(format!(
            "source does not support seeking to {:.3} s",
            start_ns as f64 / 1e9
        )));
    }
    Ok(())
}

/// Keep decoded frames with stream time in `[keep_from, keep_until)`,
/// retimed to stream time under a zero-based segment; send EOS downstream at
/// the first frame past the end.
fn install_guard(
    pad: &gst::Pad,
    keep_from: u64,
    keep_until: u64,
    pts_offset_ns: Option<i64>,
    decoded: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
) {
    let guard = Mutex::new(Guard {
        segment: None,
        ended: false,
        kept: 0,
    });
    pad.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
        move |pad, info| {
            let mut g = guard.lock().unwrap_or_else(|e| e.into_inner());
            let event_segment = match &info.data {
                Some(gst::PadProbeData::Event(ev)) => match ev.view() {
                    gst::EventView::Segment(s) => Some(Some(s.segment().clone())),
                    _ => Some(None),
                },
                _ => None,
            };
            match event_segment {
                Some(Some(s)) => {
                    g.segment = Some(s);
                    // Running time must equal stream time: replace the
                    // decoder's segment by a zero-based one (PTS are rewritten below).
                    let zero = gst::FormattedSegment::<gst::ClockTime>::new();
                    info.data = Some(gst::PadProbeData::Event(gst::event::Segment::new(&zero)));
                    return gst::PadProbeReturn::Ok;
                }
                Some(None) => return gst::PadProbeReturn::Ok,
                None => {}
            }
            if g.ended {
                // Let it through: the downstream pad is EOS and answers with
                // FlowError::Eos, which stops the decoder and demuxer.
                return gst::PadProbeReturn::Ok;
            }
            let Some(buf) = info.buffer() else {
                return gst::PadProbeReturn::Ok;
            };
            decoded.fetch_add(1, Ordering::Relaxed);
            // Select and output on the stream-time timeline (the probe's and
            // the audio's).
            let Some(pts) = buf.pts() else {
                // Without a time we cannot place the frame; drop it (the
                // final frame count check reports the loss).
                return gst::PadProbeReturn::Drop;
            };
            // Stream time from the timestamp and the probe's per-source
            // offset, not from the segment event (see Plan::pts_offset_ns);
            // orders from older plans have no offset and use the segment.
            let st = match pts_offset_ns {
                Some(off) => (pts.nseconds() as i64 - off).max(0) as u64,
                None => g
                    .segment
                    .as_ref()
                    .and_then(|s| util::stream_time(s, pts))
                    .unwrap_or(pts.nseconds()),
            };
            if st < keep_from {
                return gst::PadProbeReturn::Drop;
            }
            if st >= keep_until {
                g.ended = true;
                done.store(true, Ordering::Relaxed);
                if let Some(peer) = pad.peer() {
                    peer.send_event(gst::event::Eos::new());
                }
                return gst::PadProbeReturn::Ok;
            }
            g.kept += 1;
            if let Some(buf) = info.buffer_mut() {
                let buf = buf.make_mut();
                buf.set_pts(gst::ClockTime::from_nseconds(st));
                buf.set_dts(gst::ClockTime::NONE);
            }
            gst::PadProbeReturn::Ok
        },
    );
}
