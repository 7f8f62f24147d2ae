//! Stitch the parts of a job into its outputs: one MP4 per rendition (video
//! parts joined + the audio, remuxed, no re-encode), HLS playlists whose
//! segments are the parts themselves, and `manifest.json`. Every MP4 is
//! re-probed and checked against the plan before success. Idempotent: every
//! file is written to a temporary name and renamed over the old one.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use sha2::{Digest, Sha256};

use super::audio::AAC_BITRATE;
use super::segment::output_size;
use super::{probe, ts, util, MediaError};
use crate::job::{Codec, OutputFormat, Rendition};
use crate::manifest::{FileKind, Manifest, ManifestFile};
use crate::plan::{frame_time_ns, Plan};
use crate::subjects::{part_key, AUDIO_PART_KEY, HLS_MASTER_KEY, MANIFEST_KEY};
use crate::task::StitchWork;

/// Samples per AAC frame; the A/V and audio-duration tolerances are one frame.
const AAC_FRAME_SAMPLES: u64 = 1024;
/// Where MPEG-TS timestamps of our parts start (mpegtsmux adds 3600 s to
/// running time); MP4 timestamps are made relative to this.
const TS_BASE_NS: u64 = 3_590_000_000_000;
/// HLS audio playlist, relative to the output.
const HLS_AUDIO_KEY: &str = "hls/audio.m3u8";

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

    let duration_ns = frame_time_ns(plan.frames, plan.fps_num, plan.fps_den);
    let duration_s = duration_ns as f64 / 1e9;
    let mut files = Vec::new();
    let started = Instant::now();
    let mut done_frames = 0u64;

    if work.formats.contains(&OutputFormat::Mp4) {
        for r in &work.renditions {
            let rel = format!("{}.mp4", r.name);
            let path = dir.join(&rel);
            write_mp4(dir, plan, r, audio.as_deref(), &path, &mut |n| {
                let secs = started.elapsed().as_secs_f64();
                let d = done_frames + n;
                progress(d, if secs > 0.0 { d as f64 / secs } else { 0.0 });
            })?;
            done_frames += plan.frames;
            verify_mp4(&path, plan)?;
            files.push(describe(
                dir,
                &rel,
                FileKind::Mp4,
                Some(&r.name),
                Some(plan.frames),
                duration_s,
            )?);
        }
    }

    if work.formats.contains(&OutputFormat::Hls) {
        let mut variants = Vec::new();
        for r in &work.renditions {
            let rel = format!("hls/{}.m3u8", r.name);
            let (text, peak, avg) = media_playlist(dir, plan, r)?;
            util::write_atomic(&dir.join(&rel), text.as_bytes())?;
            files.push(describe(
                dir,
                &rel,
                FileKind::HlsMedia,
                Some(&r.name),
                Some(plan.frames),
                duration_s,
            )?);
            variants.push((r, peak, avg));
        }
        if let Some(a) = &audio {
            let ad = audio_duration_s(a, plan);
            let text = audio_playlist(a, plan)?;
            util::write_atomic(&dir.join(HLS_AUDIO_KEY), text.as_bytes())?;
            files.push(describe(
                dir,
                HLS_AUDIO_KEY,
                FileKind::HlsMedia,
                None,
                None,
                ad,
            )?);
        }
        let master = master_playlist(dir, plan, &variants, audio.is_some());
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
        frames: plan.frames,
        duration_s,
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

/// The audio media playlist: byte ranges of the one audio file, cut near
/// the video segment boundaries. One range per video segment keeps a
/// player's first audio download as small as its first video one; a single
/// whole-track segment would make it fetch all the audio before playing.
fn audio_playlist(audio: &Path, plan: &Plan) -> Result<String, MediaError> {
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
    // HLS: every EXTINF rounded to the nearest integer must be <= this.
    // Ranges end at the first PAT after a cut (up to 100 ms late), so ceil
    // would make 4 s segments a target of 5.
    let target = ranges
        .iter()
        .map(|r| r.seconds)
        .fold(1.0f64, f64::max)
        .round() as u64;
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
    Ok(text)
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

/// One MPEG-TS input of the MP4 mux: `filesrc ! tsdemux ! parser`, retimed
/// so that buffers carry their original TS time minus [`TS_BASE_NS`].
/// tsdemux rebases each file to its own first PCR, which would lose the
/// offset between the separately written audio and video.
fn add_ts_input(
    pipeline: &gst::Pipeline,
    file: &Path,
    parser: &str,
    mux: &gst::Element,
    counter: Option<Arc<AtomicU64>>,
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
    let shift: Mutex<Option<i128>> = Mutex::new(None);
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
            let mut sh = shift.lock().unwrap_or_else(|e| e.into_inner());
            let Some(buf) = info.buffer_mut() else {
                return gst::PadProbeReturn::Ok;
            };
            let Some(pts) = buf.pts() else {
                return gst::PadProbeReturn::Ok;
            };
            let shift =
                *sh.get_or_insert(raw_first as i128 - TS_BASE_NS as i128 - pts.nseconds() as i128);
            let map = |t: gst::ClockTime| {
                let v = t.nseconds() as i128 + shift;
                gst::ClockTime::from_nseconds(v.max(0) as u64)
            };
            let buf = buf.make_mut();
            let dts = buf.dts();
            buf.set_pts(map(pts));
            buf.set_dts(dts.map(map));
            if let Some(c) = &counter {
                c.fetch_add(1, Ordering::Relaxed);
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
    add_ts_input(&pipeline, &video, parser, &mux, Some(frames.clone()))?;
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

/// Check an MP4 against the plan: exact frame count, duration within one
/// frame, audio start within one AAC frame of video, audio duration within
/// one AAC frame.
fn verify_mp4(path: &Path, plan: &Plan) -> Result<(), MediaError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let info = probe::probe_full(path)
        .map_err(|e| MediaError::permanent(format!("verify {name}: {}", e.message)))?;
    let f = &info.facts;
    if f.frames != plan.frames {
        return Err(MediaError::permanent(format!(
            "verify {name}: {} frames, plan has {}",
            f.frames, plan.frames
        )));
    }
    let frame = frame_time_ns(1, plan.fps_num, plan.fps_den);
    let want = frame_time_ns(plan.frames, plan.fps_num, plan.fps_den);
    let got = info.video_end_ns.saturating_sub(info.video_first_ns);
    if got.abs_diff(want) > frame {
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

/// Media playlist of one rendition; its segments are the parts. Returns the
/// text and the peak and average video bitrates (bit/s).
fn media_playlist(
    dir: &Path,
    plan: &Plan,
    r: &Rendition,
) -> Result<(String, u64, u64), MediaError> {
    let max = plan
        .segments
        .iter()
        .map(|s| s.duration_ns())
        .max()
        .unwrap_or(0);
    let target = (max as f64 / 1e9).ceil().max(1.0) as u64;
    let mut text = format!(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-INDEPENDENT-SEGMENTS\n"
    );
    let (mut peak, mut bytes, mut ns) = (0u64, 0u64, 0u64);
    for s in &plan.segments {
        let key = part_key(&r.name, s.index);
        let size = std::fs::metadata(dir.join(&key))
            .map_err(|e| MediaError::transient(format!("{key}: {e}")))?
            .len();
        let d = s.duration_ns().max(1);
        peak = peak.max((size as u128 * 8 * 1_000_000_000 / d as u128) as u64);
        bytes += size;
        ns += d;
        text.push_str(&format!("#EXTINF:{:.6},\n../{key}\n", d as f64 / 1e9));
    }
    text.push_str("#EXT-X-ENDLIST\n");
    let avg = (bytes as u128 * 8 * 1_000_000_000 / ns.max(1) as u128) as u64;
    Ok((text, peak, avg))
}

fn master_playlist(
    dir: &Path,
    plan: &Plan,
    variants: &[(&Rendition, u64, u64)],
    audio: bool,
) -> String {
    let mut text = String::from("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    let audio_bps = if audio {
        AAC_BITRATE as u64 * 11 / 10
    } else {
        0
    };
    if audio {
        text.push_str(
            "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aac\",NAME=\"audio\",LANGUAGE=\"und\",DEFAULT=YES,AUTOSELECT=YES,CHANNELS=\"2\",URI=\"audio.m3u8\"\n",
        );
    }
    for (r, peak, avg) in variants {
        let (w, h) = output_size(r, plan.width, plan.height, (1, 1));
        let first = dir.join(part_key(&r.name, 0));
        let vcodec = match r.codec {
            Codec::H265 => "hvc1.1.6.L120.90".to_string(),
            _ => ts::avc_codec_string(&first).unwrap_or_else(|| "avc1.640028".into()),
        };
        let codecs = if audio {
            format!("{vcodec},mp4a.40.2")
        } else {
            vcodec
        };
        text.push_str(&format!(
            "#EXT-X-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH={},RESOLUTION={w}x{h},CODECS=\"{codecs}\"{}\n{}.m3u8\n",
            peak + audio_bps,
            avg + audio_bps,
            if audio { ",AUDIO=\"aac\"" } else { "" },
            r.name
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
