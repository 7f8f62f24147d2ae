//! Stitch the parts of a job into its outputs: one MP4 per rendition (video
//! parts joined + the audio, remuxed, no re-encode), HLS playlists whose
//! segments are the parts themselves (plus an I-frame playlist per
//! rendition, byte ranges of the parts' keyframes), and `manifest.json`.
//!
//! Verification goes by what the parts hold: each part is read once (its
//! access units counted, its keyframes and SPS found, its bytes hashed) and
//! must hold its segment's frames, or up to
//! [`segment::undecodable_allowance`] fewer (corrupt source frames the
//! decoder skipped), never more; every MP4 is re-probed and must hold
//! exactly the frames of its parts over the plan's real span. Idempotent:
//! every file is written to a temporary name and renamed over the old one.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use sha2::{Digest, Sha256};

use super::segment::{self, output_size};
use super::{probe, ts, util, MediaError};
use crate::job::{Codec, OutputFormat, Rendition};
use crate::manifest::{FileKind, Manifest, ManifestAudio, ManifestFile, ManifestSource};
use crate::plan::{frame_time_ns, Plan, Segment};
use crate::subjects::{part_key, AUDIO_PART_KEY, HLS_MASTER_KEY, MANIFEST_KEY};
use crate::task::StitchWork;

/// Samples per AAC frame; the A/V and audio-duration tolerances are one frame.
const AAC_FRAME_SAMPLES: u64 = 1024;
/// Where MPEG-TS timestamps of our parts start (mpegtsmux adds 3600 s to
/// running time); MP4 timestamps are made relative to this.
const TS_BASE_NS: u64 = 3_590_000_000_000;
/// HLS audio playlist, relative to the output.
const HLS_AUDIO_KEY: &str = "hls/audio.m3u8";

/// HLS media playlist of a rendition, relative to the output.
fn media_playlist_key(rendition: &str) -> String {
    format!("hls/{rendition}.m3u8")
}

/// HLS I-frame playlist of a rendition, relative to the output.
fn iframe_playlist_key(rendition: &str) -> String {
    format!("hls/{rendition}_iframes.m3u8")
}

/// One video part as read by the stitch.
struct Part {
    key: String,
    segment: Segment,
    scan: ts::VideoScan,
    sha256: String,
}

/// A rendition's parts, and the frames they hold together.
struct Parts {
    parts: Vec<Part>,
    frames: u64,
    /// Encoded picture size.
    size: (u32, u32),
}

/// Stitch `work`; `progress` gets (units done, speed) where a unit is one
/// frame muxed into an MP4.
pub fn stitch(
    work: &StitchWork,
    progress: &mut dyn FnMut(u64, f64),
) -> Result<Manifest, MediaError> {
    util::init()?;
    let plan = &work.plan;
    let dir = &work.output_dir;
    if plan.segments.is_empty() || plan.frames == 0 {
        return Err(MediaError::permanent("stitch: plan has no segments"));
    }
    if work.renditions.is_empty() {
        return Err(MediaError::permanent("stitch: no renditions"));
    }
    let hls = work.formats.contains(&OutputFormat::Hls);
    for r in work.renditions.iter().filter(|_| hls) {
        let iframes = iframe_playlist_key(&r.name);
        if let Some(o) = work
            .renditions
            .iter()
            .find(|o| media_playlist_key(&o.name) == iframes)
        {
            return Err(MediaError::permanent(format!(
                "stitch: rendition {} would overwrite the I-frame playlist of {}; rename it",
                o.name, r.name
            )));
        }
    }
    let audio = plan.has_audio.then(|| dir.join(AUDIO_PART_KEY));
    if let Some(a) = &audio {
        if !a.is_file() {
            return Err(MediaError::transient(format!(
                "stitch: missing {AUDIO_PART_KEY}"
            )));
        }
    }
    for r in &work.renditions {
        for s in &plan.segments {
            let key = part_key(&r.name, s.index);
            if !dir.join(&key).is_file() {
                return Err(MediaError::transient(format!("stitch: missing part {key}")));
            }
        }
    }
    let all_parts = work
        .renditions
        .iter()
        .map(|r| read_parts(dir, plan, r))
        .collect::<Result<Vec<_>, _>>()?;
    // Every rendition decodes the same source, so they normally agree; the
    // manifest promises what the poorest one holds.
    let frames = all_parts.iter().map(|p| p.frames).min().unwrap_or(0);
    let audio_info = match &audio {
        Some(a) => Some(ts::audio_info(a).ok_or_else(|| {
            MediaError::permanent(format!("{AUDIO_PART_KEY}: no AAC (ADTS) frames"))
        })?),
        None => None,
    };

    let duration_s = plan.duration_ns() as f64 / 1e9;
    let mut files = Vec::new();
    let started = Instant::now();
    let mut done_frames = 0u64;

    if work.formats.contains(&OutputFormat::Mp4) {
        for (r, parts) in work.renditions.iter().zip(&all_parts) {
            let rel = format!("{}.mp4", r.name);
            let path = dir.join(&rel);
            write_mp4(dir, plan, r, parts, audio.as_deref(), &path, &mut |n| {
                let secs = started.elapsed().as_secs_f64();
                let d = done_frames + n;
                progress(d, if secs > 0.0 { d as f64 / secs } else { 0.0 });
            })?;
            done_frames += parts.frames;
            verify_mp4(&path, plan, parts.frames)?;
            files.push(describe(
                dir,
                &rel,
                FileKind::Mp4,
                Some(&r.name),
                Some(parts.frames),
                duration_s,
            )?);
        }
    }

    if hls {
        let mut variants = Vec::new();
        for (r, parts) in work.renditions.iter().zip(&all_parts) {
            let rel = media_playlist_key(&r.name);
            let (text, peak, avg) = media_playlist(plan, parts);
            util::write_atomic(&dir.join(&rel), text.as_bytes())?;
            files.push(describe(
                dir,
                &rel,
                FileKind::HlsMedia,
                Some(&r.name),
                Some(parts.frames),
                duration_s,
            )?);
            for p in &parts.parts {
                files.push(ManifestFile {
                    path: p.key.clone(),
                    kind: FileKind::HlsSegment,
                    rendition: Some(r.name.clone()),
                    frames: Some(p.scan.frames),
                    duration_s: p.segment.duration_ns() as f64 / 1e9,
                    bytes: p.scan.bytes,
                    sha256: p.sha256.clone(),
                });
            }
            let rel = iframe_playlist_key(&r.name);
            let (text, ipeak, iavg) = iframe_playlist(plan, parts);
            util::write_atomic(&dir.join(&rel), text.as_bytes())?;
            files.push(describe(
                dir,
                &rel,
                FileKind::HlsIframes,
                Some(&r.name),
                None,
                duration_s,
            )?);
            let decode_lead = parts.parts.first().map_or(0, |p| p.scan.first_decode_lead);
            variants.push(Variant {
                name: r.name.clone(),
                size: parts.size,
                decode_lead,
                video_codec: video_codec_string(dir, r),
                peak,
                avg,
                iframe_peak: ipeak,
                iframe_avg: iavg,
            });
        }
        let mut audio_rendition = None;
        if let (Some(a), Some(info)) = (&audio, &audio_info) {
            let ad = audio_duration_s(a, plan);
            let (text, ranges) = audio_playlist(a, plan)?;
            util::write_atomic(&dir.join(HLS_AUDIO_KEY), text.as_bytes())?;
            files.push(describe(
                dir,
                HLS_AUDIO_KEY,
                FileKind::HlsMedia,
                None,
                None,
                ad,
            )?);
            let (peak, avg) = range_bitrates(&ranges);
            audio_rendition = Some(AudioRendition {
                channels: match info.channels {
                    0 => plan.audio_channels,
                    n => n,
                },
                codec: format!("mp4a.40.{}", info.object_type),
                language: info.language.clone(),
                peak,
                avg,
            });
        }
        let master = master_playlist(plan, &variants, audio_rendition.as_ref());
        util::write_atomic(&dir.join(HLS_MASTER_KEY), master.as_bytes())?;
        files.push(describe(
            dir,
            HLS_MASTER_KEY,
            FileKind::HlsMaster,
            None,
            None,
            duration_s,
        )?);
    }

    if let Some(a) = &audio {
        let ad = audio_duration_s(a, plan);
        files.push(describe(
            dir,
            AUDIO_PART_KEY,
            FileKind::Audio,
            None,
            None,
            ad,
        )?);
    }

    let manifest = Manifest {
        frames,
        duration_s,
        undecodable_frames: (frames < plan.frames).then(|| plan.frames - frames),
        dropped: plan.dropped.clone(),
        audio: audio_info.map(|info| ManifestAudio {
            channels: match info.channels {
                0 => plan.audio_channels,
                n => n,
            },
            source_channels: (plan.audio_channels > 0).then_some(plan.audio_channels),
            stream: plan.audio_stream.clone(),
            language: info.language,
        }),
        source: Some(ManifestSource {
            orientation: plan.orientation.clone(),
            interlaced: plan.interlaced,
            vfr: plan.vfr,
        }),
        files,
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| MediaError::transient(format!("manifest: {e}")))?;
    util::write_atomic(&dir.join(MANIFEST_KEY), &json)?;
    let _ = std::fs::remove_dir_all(scratch_dir(dir));
    Ok(manifest)
}

fn scratch_dir(dir: &Path) -> PathBuf {
    dir.join(format!(".stitch-{}", super::util::unique_tag()))
}

/// Read every part of `r` once and check it: the codec of the rendition,
/// an IDR first (each part is an independent HLS segment), the planned
/// picture size, and its segment's frames less at most the undecodable
/// allowance, never more.
fn read_parts(dir: &Path, plan: &Plan, r: &Rendition) -> Result<Parts, MediaError> {
    let want_codec = match r.codec {
        Codec::H264 => ts::VideoCodec::H264,
        Codec::H265 => ts::VideoCodec::H265,
        _ => {
            return Err(MediaError::permanent(format!(
                "stitch: rendition {} has a codec parts cannot have",
                r.name
            )))
        }
    };
    // Plans with a ladder give every rendition its encoded size; older
    // ones leave the width to the source aspect (then the SPS tells).
    let planned = r
        .width
        .map(|_| output_size(r, plan.width, plan.height, (1, 1)));
    let mut parts = Vec::with_capacity(plan.segments.len());
    let mut size = None;
    for s in &plan.segments {
        let key = part_key(&r.name, s.index);
        let path = dir.join(&key);
        let mut hasher = Sha256::new();
        let scan = ts::scan_video(&path, &mut |b| hasher.update(b))
            .map_err(|e| MediaError::transient(format!("read {key}: {e}")))?;
        let bad = |what: String| Err(MediaError::permanent(format!("stitch: {key} {what}")));
        if scan.codec != Some(want_codec) {
            return bad(format!("is not {want_codec:?} ({:?})", scan.codec));
        }
        if scan.frames > s.frames() {
            return bad(format!(
                "holds {} frames, more than its segment's {}",
                scan.frames,
                s.frames()
            ));
        }
        let allowance = segment::undecodable_allowance(s.frames());
        if s.frames() - scan.frames > allowance {
            return bad(format!(
                "holds {} frames, segment has {} (at most {allowance} may be undecodable)",
                scan.frames,
                s.frames()
            ));
        }
        if !scan.starts_with_keyframe || scan.first_pts.is_none() {
            return bad("does not start with a timed IDR frame".into());
        }
        match (scan.size, planned) {
            (Some(got), Some(want)) if got != want => {
                return bad(format!(
                    "is {}x{}, the plan says {}x{}",
                    got.0, got.1, want.0, want.1
                ));
            }
            (Some(got), _) if size.is_some_and(|s| s != got) => {
                return bad(format!("is {}x{}, its first part is not", got.0, got.1));
            }
            _ => {}
        }
        size = size.or(scan.size);
        parts.push(Part {
            key,
            segment: *s,
            scan,
            sha256: hex::encode(hasher.finalize()),
        });
    }
    let size = size
        .or(planned)
        .unwrap_or_else(|| output_size(r, plan.width, plan.height, (1, 1)));
    Ok(Parts {
        frames: parts.iter().map(|p| p.scan.frames).sum(),
        parts,
        size,
    })
}

/// The audio media playlist: byte ranges of the one audio file, cut near
/// the video segment boundaries. One range per video segment keeps a
/// player's first audio download as small as its first video one; a single
/// whole-track segment would make it fetch all the audio before playing.
/// Returns the text and the ranges.
fn audio_playlist(audio: &Path, plan: &Plan) -> Result<(String, Vec<ts::ByteRange>), MediaError> {
    let points = ts::entry_points(audio)
        .map_err(|e| MediaError::transient(format!("read {}: {e}", audio.display())))?;
    let first = points
        .first()
        .ok_or_else(|| MediaError::permanent(format!("{AUDIO_PART_KEY} has no audio")))?
        .pts;
    let size = std::fs::metadata(audio)
        .map_err(|e| MediaError::transient(format!("read {}: {e}", audio.display())))?
        .len();
    let t0 = plan.segments[0].start_ns;
    let ticks = |ns: u64| (ns as u128 * 90_000 / 1_000_000_000) as u64;
    let cuts: Vec<u64> = plan.segments[1..]
        .iter()
        .map(|s| first + ticks(s.start_ns.saturating_sub(t0)))
        .collect();
    let ranges = ts::byte_ranges(&points, &cuts, first + ticks(plan.audio_duration_ns), size);
    // Ranges end at the first PAT after a cut (up to 100 ms late), so ceil
    // would make 4 s segments a target of 5.
    let target = target_duration(ranges.iter().map(|r| r.seconds));
    let mut text = format!(
        "#EXTM3U\n#EXT-X-VERSION:4\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:VOD\n"
    );
    for r in &ranges {
        text.push_str(&format!(
            "#EXTINF:{:.6},\n#EXT-X-BYTERANGE:{}@{}\n../{AUDIO_PART_KEY}\n",
            r.seconds, r.length, r.offset
        ));
    }
    text.push_str("#EXT-X-ENDLIST\n");
    Ok((text, ranges))
}

/// EXT-X-TARGETDURATION for these EXTINF values: RFC 8216 wants every
/// EXTINF, rounded to the nearest integer, at most the target. Rounds the
/// values as written (6 decimals), so a 4.4999996 written as 4.500000 counts
/// as 5.
fn target_duration(seconds: impl Iterator<Item = f64>) -> u64 {
    seconds
        .map(|s| format!("{s:.6}").parse::<f64>().unwrap_or(s).round() as u64)
        .fold(1, u64::max)
}

/// Peak (over the ranges, each about a segment long) and average bitrate
/// of byte ranges, bit/s.
fn range_bitrates(ranges: &[ts::ByteRange]) -> (u64, u64) {
    let peak = ranges
        .iter()
        .filter(|r| r.seconds > 0.0)
        .map(|r| (r.length as f64 * 8.0 / r.seconds).ceil() as u64)
        .max()
        .unwrap_or(0);
    let (bytes, secs) = ranges
        .iter()
        .fold((0u64, 0f64), |(b, s), r| (b + r.length, s + r.seconds));
    let avg = if secs > 0.0 {
        (bytes as f64 * 8.0 / secs).ceil() as u64
    } else {
        0
    };
    (peak, avg)
}

fn audio_duration_s(_audio: &Path, plan: &Plan) -> f64 {
    plan.audio_duration_ns as f64 / 1e9
}

/// Join the parts byte-wise: they share one timeline (each keeps the
/// source's), so the concatenation is one continuous MPEG-TS stream.
fn concat_parts(dir: &Path, plan: &Plan, r: &Rendition) -> Result<PathBuf, MediaError> {
    let scratch = scratch_dir(dir);
    std::fs::create_dir_all(&scratch)
        .map_err(|e| MediaError::transient(format!("cannot create {}: {e}", scratch.display())))?;
    let out = scratch.join(format!("{}.ts", r.name));
    let mut f = std::fs::File::create(&out)
        .map_err(|e| MediaError::transient(format!("cannot create {}: {e}", out.display())))?;
    for s in &plan.segments {
        let p = dir.join(part_key(&r.name, s.index));
        let mut src = std::fs::File::open(&p)
            .map_err(|e| MediaError::transient(format!("cannot open {}: {e}", p.display())))?;
        std::io::copy(&mut src, &mut f)
            .map_err(|e| MediaError::transient(format!("cannot copy {}: {e}", p.display())))?;
    }
    f.flush()
        .map_err(|e| MediaError::transient(format!("cannot write {}: {e}", out.display())))?;
    Ok(out)
}

/// The video input of the MP4 mux: its progress counter, how many frames
/// it holds and how long it must be shown.
struct VideoInput {
    counter: Arc<AtomicU64>,
    frames: u64,
    span_ns: u64,
}

/// Mapped times of the video input so far.
#[derive(Default)]
struct Retime {
    shift: Option<i128>,
    /// DTS of the first buffer.
    first_dts: Option<u64>,
    seen: u64,
}

/// One MPEG-TS input of the MP4 mux: `filesrc ! tsdemux ! parser`, retimed
/// so that buffers carry their original TS time minus [`TS_BASE_NS`].
/// tsdemux rebases each file to its own first PCR, which would lose the
/// offset between the separately written audio and video.
///
/// mp4mux ends the video's edit list at the first frame's PTS plus the
/// track's decode span (last DTS - first DTS + last duration). With
/// B-frames the decode delay is a number of frames, so when frames are
/// further apart at the end than at the start (variable frame rate) that
/// end falls before the last frame is shown and players drop it. The last
/// buffer (the input's known frame count) therefore gets a duration that
/// makes the track last `span_ns` from its first frame.
fn add_ts_input(
    pipeline: &gst::Pipeline,
    file: &Path,
    parser: &str,
    mux: &gst::Element,
    video: Option<VideoInput>,
) -> Result<(), MediaError> {
    let raw_first = ts::first_pts(file)
        .map(ts::ticks_to_ns)
        .ok_or_else(|| MediaError::permanent(format!("{}: no timestamps", file.display())))?;
    let src = util::file_source(file)?;
    let demux = util::make("tsdemux")?;
    let parse = gst::ElementFactory::make(parser).build().map_err(|_| {
        MediaError::transient(format!("GStreamer element {parser} is not installed"))
    })?;
    let queue = util::make("queue")?;
    util::add_chain(pipeline, &[&src, &demux])?;
    util::add_chain(pipeline, &[&parse, &queue])?;
    let muxpad = mux
        .request_pad_simple(if parser == "aacparse" {
            "audio_%u"
        } else {
            "video_%u"
        })
        .ok_or_else(|| MediaError::transient("mp4mux refused a pad"))?;
    let qsrc = queue
        .static_pad("src")
        .ok_or_else(|| MediaError::transient("queue without src pad"))?;
    qsrc.link(&muxpad)
        .map_err(|e| MediaError::transient(format!("link to mp4mux: {e}")))?;

    // Retime after the parser: the first buffer there is the first PES.
    let psrc = parse
        .static_pad("src")
        .ok_or_else(|| MediaError::transient("parser without src pad"))?;
    let state: Mutex<Retime> = Mutex::new(Retime::default());
    psrc.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
        move |_, info| {
            let is_segment = match &info.data {
                Some(gst::PadProbeData::Event(ev)) => {
                    if ev.type_() != gst::EventType::Segment {
                        return gst::PadProbeReturn::Ok;
                    }
                    true
                }
                _ => false,
            };
            if is_segment {
                let zero = gst::FormattedSegment::<gst::ClockTime>::new();
                info.data = Some(gst::PadProbeData::Event(gst::event::Segment::new(&zero)));
                return gst::PadProbeReturn::Ok;
            }
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            let Some(buf) = info.buffer_mut() else {
                return gst::PadProbeReturn::Ok;
            };
            let Some(pts) = buf.pts() else {
                return gst::PadProbeReturn::Ok;
            };
            let shift = *st
                .shift
                .get_or_insert(raw_first as i128 - TS_BASE_NS as i128 - pts.nseconds() as i128);
            let map = |t: gst::ClockTime| {
                let v = t.nseconds() as i128 + shift;
                gst::ClockTime::from_nseconds(v.max(0) as u64)
            };
            let buf = buf.make_mut();
            let (pts, dts) = (map(pts), buf.dts().map(map));
            buf.set_pts(pts);
            buf.set_dts(dts);
            let dts = dts.map_or(pts.nseconds(), |d| d.nseconds());
            let first_dts = *st.first_dts.get_or_insert(dts);
            st.seen += 1;
            if let Some(v) = &video {
                v.counter.fetch_add(1, Ordering::Relaxed);
                if st.seen == v.frames {
                    // Decode span = span: (last DTS + duration) - first DTS.
                    let need = (v.span_ns + first_dts).saturating_sub(dts);
                    if buf.duration().is_none_or(|d| d.nseconds() < need) {
                        buf.set_duration(gst::ClockTime::from_nseconds(need));
                    }
                }
            }
            gst::PadProbeReturn::Ok
        },
    );
    let parse_weak = parse.downgrade();
    demux.connect_pad_added(move |_, pad| {
        let Some(parse) = parse_weak.upgrade() else {
            return;
        };
        let Some(sink) = parse.static_pad("sink") else {
            return;
        };
        if sink.is_linked() {
            util::discard_pad(pad);
            return;
        }
        if pad.link(&sink).is_err() {
            util::discard_pad(pad);
        }
    });
    Ok(())
}

fn write_mp4(
    dir: &Path,
    plan: &Plan,
    r: &Rendition,
    parts: &Parts,
    audio: Option<&Path>,
    path: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<(), MediaError> {
    let video = concat_parts(dir, plan, r)?;
    let tmp = util::tmp_path(path);
    let pipeline = gst::Pipeline::new();
    let mux = gst::ElementFactory::make("mp4mux")
        .property("faststart", true)
        .property(
            "faststart-file",
            scratch_dir(dir)
                .join(format!("{}.moov", r.name))
                .to_string_lossy()
                .as_ref(),
        )
        .build()
        .map_err(|_| MediaError::transient("GStreamer element mp4mux is not installed"))?;
    let sink = util::file_sink(&tmp)?;
    util::add_chain(&pipeline, &[&mux, &sink])?;
    let frames = Arc::new(AtomicU64::new(0));
    let parser = match r.codec {
        Codec::H265 => "h265parse",
        _ => "h264parse",
    };
    add_ts_input(
        &pipeline,
        &video,
        parser,
        &mux,
        Some(VideoInput {
            counter: frames.clone(),
            frames: parts.frames,
            span_ns: plan.duration_ns(),
        }),
    )?;
    if let Some(a) = audio {
        add_ts_input(&pipeline, a, "aacparse", &mux, None)?;
    }
    let size = std::fs::metadata(&video).map(|m| m.len()).unwrap_or(0);
    let timeout = Duration::from_secs(300) + Duration::from_secs(size / (5 << 20));
    let mut last = 0u64;
    let res = util::drive(&pipeline, timeout, &format!("mux {}", r.name), || {
        let n = frames.load(Ordering::Relaxed);
        if n >= last + 250 {
            last = n;
            progress(n);
        }
        Ok(())
    });
    let _ = std::fs::remove_file(&video);
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    progress(frames.load(Ordering::Relaxed));
    util::commit(&tmp, path)
}

/// Check an MP4 against what its parts hold: exactly their `frames`, the
/// plan's real span (frame times, so variable-rate sources are measured
/// right) within one frame plus one per undecodable frame (a skipped first
/// or last frame shortens it), audio start within one AAC frame of video,
/// audio duration within one AAC frame of the source's.
fn verify_mp4(path: &Path, plan: &Plan, frames: u64) -> Result<(), MediaError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let info = probe::probe_full(path)
        .map_err(|e| MediaError::permanent(format!("verify {name}: {}", e.message)))?;
    let f = &info.facts;
    if f.frames != frames {
        return Err(MediaError::permanent(format!(
            "verify {name}: {} frames, its parts hold {frames} (plan {})",
            f.frames, plan.frames
        )));
    }
    let missing = plan.frames.saturating_sub(frames);
    let frame = frame_time_ns(1, plan.fps_num, plan.fps_den);
    let want = plan.duration_ns();
    let got = info.video_end_ns.saturating_sub(info.video_first_ns);
    let slack = frame * (1 + missing);
    if got.abs_diff(want) > slack {
        return Err(MediaError::permanent(format!(
            "verify {name}: video lasts {:.3} s, expected {:.3} s",
            got as f64 / 1e9,
            want as f64 / 1e9
        )));
    }
    if plan.has_audio {
        let (Some(a), Some(a_first)) = (&f.audio, info.audio_first_ns) else {
            return Err(MediaError::permanent(format!(
                "verify {name}: audio missing"
            )));
        };
        let aac_frame = AAC_FRAME_SAMPLES * 1_000_000_000 / a.rate.max(8000) as u64;
        let offset = a_first.abs_diff(info.video_first_ns);
        if offset > aac_frame {
            return Err(MediaError::permanent(format!(
                "verify {name}: audio starts {:.1} ms from video (limit {:.1} ms)",
                offset as f64 / 1e6,
                aac_frame as f64 / 1e6
            )));
        }
        if a.duration_ns.abs_diff(plan.audio_duration_ns) > aac_frame {
            return Err(MediaError::permanent(format!(
                "verify {name}: audio lasts {:.3} s, source {:.3} s",
                a.duration_ns as f64 / 1e9,
                plan.audio_duration_ns as f64 / 1e9
            )));
        }
    }
    Ok(())
}

/// Media playlist of one rendition; its segments are the parts, each as
/// long as its segment's real frame times say. Returns the text and the
/// peak (over parts) and average video bitrates (bit/s).
fn media_playlist(plan: &Plan, parts: &Parts) -> (String, u64, u64) {
    let max = plan
        .segments
        .iter()
        .map(|s| s.duration_ns())
        .max()
        .unwrap_or(0);
    // Ceil is at least the rounded value RFC 8216 asks for.
    let target = (max as f64 / 1e9).ceil().max(1.0) as u64;
    let mut text = format!(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-INDEPENDENT-SEGMENTS\n"
    );
    let (mut peak, mut bytes, mut ns) = (0u64, 0u64, 0u64);
    for p in &parts.parts {
        let size = p.scan.bytes;
        let d = p.segment.duration_ns().max(1);
        peak = peak.max((size as u128 * 8 * 1_000_000_000 / d as u128) as u64);
        bytes += size;
        ns += d;
        text.push_str(&format!("#EXTINF:{:.6},\n../{}\n", d as f64 / 1e9, p.key));
    }
    text.push_str("#EXT-X-ENDLIST\n");
    let avg = (bytes as u128 * 8 * 1_000_000_000 / ns.max(1) as u128) as u64;
    (text, peak, avg)
}

/// I-frame playlist of one rendition: every keyframe that can be cut out
/// with its tables (each part's leading IDR always can) as the byte range
/// from the PAT/PMT before it to the end of its PES, lasting until the next
/// listed keyframe. Returns the text and the peak and average bitrates.
fn iframe_playlist(plan: &Plan, parts: &Parts) -> (String, u64, u64) {
    // (part key, offset, length, stream time).
    let mut entries: Vec<(&str, u64, u64, u64)> = Vec::new();
    for p in &parts.parts {
        let Some(first) = p.scan.first_pts else {
            continue;
        };
        for k in &p.scan.keyframes {
            let Some(at) = k.tables else { continue };
            let d = ts::pts_diff(first, k.pts);
            if d > 1 << 32 {
                continue; // before the part's first frame: not ours to list
            }
            let t = p.segment.start_ns + ts::ticks_to_ns(d);
            entries.push((&p.key, at, k.end - at, t));
        }
    }
    let end = plan.end_ns();
    let seconds: Vec<f64> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let next = entries.get(i + 1).map_or(end, |n| n.3);
            next.saturating_sub(e.3) as f64 / 1e9
        })
        .collect();
    let target = target_duration(seconds.iter().copied());
    let mut text = format!(
        "#EXTM3U\n#EXT-X-VERSION:4\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-I-FRAMES-ONLY\n"
    );
    let mut peak = 0u64;
    for (e, s) in entries.iter().zip(&seconds) {
        text.push_str(&format!(
            "#EXTINF:{s:.6},\n#EXT-X-BYTERANGE:{}@{}\n../{}\n",
            e.2, e.1, e.0
        ));
        if *s > 0.0 {
            peak = peak.max((e.2 as f64 * 8.0 / s).ceil() as u64);
        }
    }
    text.push_str("#EXT-X-ENDLIST\n");
    let bytes: u64 = entries.iter().map(|e| e.2).sum();
    let total = seconds.iter().sum::<f64>();
    let avg = if total > 0.0 {
        (bytes as f64 * 8.0 / total).ceil() as u64
    } else {
        0
    };
    (text, peak, avg)
}

/// HLS CODECS entry of a rendition's video.
fn video_codec_string(dir: &Path, r: &Rendition) -> String {
    match r.codec {
        Codec::H265 => "hvc1.1.6.L120.90".to_string(),
        _ => ts::avc_codec_string(&dir.join(part_key(&r.name, 0)))
            .unwrap_or_else(|| "avc1.640028".into()),
    }
}

/// One video variant of the master playlist.
struct Variant {
    name: String,
    size: (u32, u32),
    /// PTS - DTS of the first frame, 90 kHz ticks (B-frame reorder delay).
    decode_lead: u64,
    video_codec: String,
    /// Video bitrates, bit/s.
    peak: u64,
    avg: u64,
    iframe_peak: u64,
    iframe_avg: u64,
}

/// The audio rendition of the master playlist, as measured in its file.
struct AudioRendition {
    channels: u32,
    codec: String,
    /// ISO 639-2.
    language: Option<String>,
    /// Bitrates over segment-long byte ranges of the audio file, bit/s.
    peak: u64,
    avg: u64,
}

/// Order of the variants in the master playlist, given each one's short
/// side and BANDWIDTH. Players that have measured nothing yet (AVPlayer,
/// hls.js by default) start on the first variant listed: the top rung
/// would stall the start on a slow link and the bottom one looks poor for
/// the first segments, so the first is the highest rung of at most 720
/// lines (the short side, so a portrait 720p rung counts as 720), or the
/// smallest when every rung is taller. The rest follow by BANDWIDTH,
/// highest first. Pure.
fn variant_order(v: &[(u32, u64)]) -> Vec<usize> {
    let first = v
        .iter()
        .enumerate()
        .filter(|(_, (side, _))| *side <= 720)
        .max_by_key(|(_, &(side, bw))| (side, bw))
        .or_else(|| {
            v.iter()
                .enumerate()
                .min_by_key(|(_, &(side, bw))| (side, bw))
        })
        .map(|(i, _)| i);
    let mut rest: Vec<usize> = (0..v.len()).filter(|&i| Some(i) != first).collect();
    rest.sort_by_key(|&i| std::cmp::Reverse(v[i].1));
    first.into_iter().chain(rest).collect()
}

/// RFC 5646 tag for an ISO 639-2 code: the two-letter code where one
/// exists (common languages), else the code itself.
fn language_tag(iso639_2: &str) -> String {
    const TWO: &[(&str, &str)] = &[
        ("ara", "ar"),
        ("chi", "zh"),
        ("zho", "zh"),
        ("cze", "cs"),
        ("ces", "cs"),
        ("dan", "da"),
        ("dut", "nl"),
        ("nld", "nl"),
        ("eng", "en"),
        ("fin", "fi"),
        ("fre", "fr"),
        ("fra", "fr"),
        ("ger", "de"),
        ("deu", "de"),
        ("gre", "el"),
        ("ell", "el"),
        ("heb", "he"),
        ("hin", "hi"),
        ("hun", "hu"),
        ("ind", "id"),
        ("ita", "it"),
        ("jpn", "ja"),
        ("kor", "ko"),
        ("nor", "no"),
        ("per", "fa"),
        ("fas", "fa"),
        ("pol", "pl"),
        ("por", "pt"),
        ("rum", "ro"),
        ("ron", "ro"),
        ("rus", "ru"),
        ("spa", "es"),
        ("swe", "sv"),
        ("tha", "th"),
        ("tur", "tr"),
        ("ukr", "uk"),
        ("vie", "vi"),
    ];
    TWO.iter()
        .find(|(three, _)| *three == iso639_2)
        .map_or_else(|| iso639_2.to_string(), |(_, two)| two.to_string())
}

fn master_playlist(plan: &Plan, variants: &[Variant], audio: Option<&AudioRendition>) -> String {
    let mut text = String::from("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    let (audio_peak, audio_avg) = audio.map_or((0, 0), |a| (a.peak, a.avg));
    if let Some(a) = audio {
        let lang = a.language.as_deref().map_or("und".into(), language_tag);
        let channels = if a.channels > 0 {
            format!(",CHANNELS=\"{}\"", a.channels)
        } else {
            String::new()
        };
        text.push_str(&format!(
            "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aac\",NAME=\"audio\",LANGUAGE=\"{lang}\",DEFAULT=YES,AUTOSELECT=YES{channels},URI=\"audio.m3u8\"\n",
        ));
    }
    // The first frame is shown its B-frame reorder delay after the first
    // decode time, where hls.js puts time zero: starting at 0 it finds a
    // hole, reports bufferSeekOverHole and skips the first frames. The
    // start hint puts the playhead on the first frame. PRECISE=NO: players
    // that honour it start at the beginning of the first segment anyway.
    let lead = variants.iter().map(|v| v.decode_lead).max().unwrap_or(0);
    if lead > 0 {
        text.push_str(&format!(
            "#EXT-X-START:TIME-OFFSET={:.3},PRECISE=NO\n",
            ts::ticks_to_ns(lead) as f64 / 1e9
        ));
    }
    let fps = format!("{:.3}", plan.max_fps());
    let keys: Vec<(u32, u64)> = variants
        .iter()
        .map(|v| (v.size.0.min(v.size.1), v.peak + audio_peak))
        .collect();
    let order = variant_order(&keys);
    for &i in &order {
        let v = &variants[i];
        let (w, h) = v.size;
        let codecs = match audio {
            Some(a) => format!("{},{}", v.video_codec, a.codec),
            None => v.video_codec.clone(),
        };
        text.push_str(&format!(
            "#EXT-X-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH={},RESOLUTION={w}x{h},FRAME-RATE={fps},CODECS=\"{codecs}\"{}\n{}.m3u8\n",
            v.peak + audio_peak,
            v.avg + audio_avg,
            if audio.is_some() { ",AUDIO=\"aac\"" } else { "" },
            v.name
        ));
    }
    for &i in &order {
        let v = &variants[i];
        let (w, h) = v.size;
        text.push_str(&format!(
            "#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH={},RESOLUTION={w}x{h},CODECS=\"{}\",URI=\"{}\"\n",
            v.iframe_peak,
            v.iframe_avg,
            v.video_codec,
            iframe_playlist_key(&v.name).trim_start_matches("hls/"),
        ));
    }
    text
}

/// Manifest entry for `rel` (relative to `dir`), with size and sha256.
fn describe(
    dir: &Path,
    rel: &str,
    kind: FileKind,
    rendition: Option<&str>,
    frames: Option<u64>,
    duration_s: f64,
) -> Result<ManifestFile, MediaError> {
    let path = dir.join(rel);
    let mut f = std::fs::File::open(&path)
        .map_err(|e| MediaError::transient(format!("cannot open {}: {e}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| MediaError::transient(format!("cannot read {}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok(ManifestFile {
        path: rel.to_string(),
        kind,
        rendition: rendition.map(str::to_string),
        frames,
        duration_s,
        bytes,
        sha256: hex::encode(hasher.finalize()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_order_starts_near_720_then_by_bandwidth() {
        // (short side, bandwidth) of each variant -> order
        type Case<'a> = (&'a [(u32, u64)], &'a [usize]);
        let cases: &[Case] = &[
            // 1080, 720, 480, 240: 720 first, then 1080, 480, 240.
            (
                &[(1080, 6_000), (720, 3_000), (480, 1_500), (240, 400)],
                &[1, 0, 2, 3],
            ),
            // Listed bottom-up: same choice.
            (
                &[(240, 400), (480, 1_500), (720, 3_000), (1080, 6_000)],
                &[2, 3, 1, 0],
            ),
            // No rung at or below 720: the smallest first.
            (&[(2160, 16_000), (1080, 6_000)], &[1, 0]),
            // Only small rungs: the highest of them.
            (&[(360, 800), (540, 2_000)], &[1, 0]),
            (&[(240, 400)], &[0]),
            (&[], &[]),
        ];
        for (v, want) in cases {
            assert_eq!(&variant_order(v), want, "{v:?}");
        }
    }

    #[test]
    fn target_duration_rounds_written_values() {
        assert_eq!(target_duration([4.0, 4.4].into_iter()), 4);
        assert_eq!(target_duration([4.4999996].into_iter()), 5);
        assert_eq!(target_duration([0.2].into_iter()), 1);
        assert_eq!(target_duration(std::iter::empty()), 1);
    }

    #[test]
    fn language_tags() {
        assert_eq!(language_tag("fre"), "fr");
        assert_eq!(language_tag("eng"), "en");
        assert_eq!(language_tag("yue"), "yue");
    }
}
