//! Encode the whole audio track once to AAC in MPEG-TS, on the source
//! timeline (never per segment: per-segment audio drifts and clicks).
//!
//! Encoder: voaacenc. avenc_aac was measured to start 21.3 ms (one AAC
//! frame at 48 kHz) late because of its encoder priming; voaacenc starts at
//! the source's first sample.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use serde::{Deserialize, Serialize};

use super::util;
use super::MediaError;
use crate::task::AudioWork;

/// AAC bitrate, bit/s.
pub const AAC_BITRATE: i32 = 128_000;

/// What the audio task produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioSummary {
    /// Stream time of the first encoded sample, nanoseconds.
    pub first_ns: u64,
    /// Encoded duration, nanoseconds.
    pub duration_ns: u64,
    /// AAC frames written.
    pub frames: u64,
    pub rate: u32,
    pub channels: u32,
    pub bitrate: u32,
    pub encoder: String,
}

#[derive(Default)]
struct Seen {
    first: Option<u64>,
    end: u64,
    frames: u64,
    rate: u32,
    channels: u32,
}

/// Encode the audio of `work.input` to `work.output`. `progress` gets
/// milliseconds of audio done and the speed (ms per second).
pub fn encode_audio(
    work: &AudioWork,
    progress: &mut dyn FnMut(u64, f64),
) -> Result<AudioSummary, MediaError> {
    util::init()?;
    util::ensure_parent(&work.output)?;
    let tmp = util::tmp_path(&work.output);
    match run(&work.input, work.stream.as_deref(), &tmp, progress) {
        Ok(s) => {
            util::commit_once(&tmp, &work.output)?;
            Ok(s)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Samples per AAC-LC frame.
const AAC_FRAME_SAMPLES: u64 = 1024;

/// Complete the last AAC frame with silence at EOS. voaacenc drops a final
/// partial frame, which cut up to 21 ms off the end of sources whose length
/// is not a whole number of frames (most AAC from ffmpeg: 4.010 s came out
/// 3.989 s).
fn pad_last_frame(enc: &gst::Element) -> Result<(), MediaError> {
    #[derive(Default)]
    struct Fed {
        samples: u64,
        end: Option<gst::ClockTime>,
    }
    // On the encoder's sink pad: its EOS probe runs before the pad turns
    // EOS, so the silence can still be chained in ahead of the EOS.
    let pad = enc
        .static_pad("sink")
        .ok_or_else(|| MediaError::transient("audio encoder without sink pad"))?;
    let fed = Arc::new(Mutex::new(Fed::default()));
    pad.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
        move |pad, info| {
            let Some((rate, bpf)) = raw_format(pad) else {
                return gst::PadProbeReturn::Ok;
            };
            if let Some(buf) = info.buffer() {
                let mut f = fed.lock().unwrap_or_else(|e| e.into_inner());
                f.samples += buf.size() as u64 / bpf;
                if let (Some(pts), Some(d)) = (buf.pts(), buf.duration()) {
                    f.end = Some(pts + d);
                }
                return gst::PadProbeReturn::Ok;
            }
            let is_eos = info
                .event()
                .is_some_and(|e| e.type_() == gst::EventType::Eos);
            if !is_eos {
                return gst::PadProbeReturn::Ok;
            }
            let (missing, end) = {
                let f = fed.lock().unwrap_or_else(|e| e.into_inner());
                let left = f.samples % AAC_FRAME_SAMPLES;
                (
                    if left == 0 {
                        0
                    } else {
                        AAC_FRAME_SAMPLES - left
                    },
                    f.end,
                )
            };
            if missing > 0 {
                // Zero bytes are silence in every signed and float format.
                let mut silence = gst::Buffer::from_mut_slice(vec![0u8; (missing * bpf) as usize]);
                if let Some(b) = silence.get_mut() {
                    b.set_pts(end);
                    b.set_duration(gst::ClockTime::from_nseconds(
                        missing * 1_000_000_000 / rate,
                    ));
                }
                if let Err(e) = pad.chain(silence) {
                    tracing::debug!("audio padding not taken: {e:?}");
                }
            }
            gst::PadProbeReturn::Ok
        },
    );
    Ok(())
}

/// (rate, bytes per frame) of the raw audio on `pad`.
fn raw_format(pad: &gst::Pad) -> Option<(u64, u64)> {
    let caps = pad.current_caps()?;
    let s = caps.structure(0)?;
    let rate = s.get::<i32>("rate").ok()?.max(0) as u64;
    let channels = s.get::<i32>("channels").ok()?.max(0) as u64;
    let format = s.get::<&str>("format").ok()?;
    let width = match format.get(1..3) {
        Some("8") | Some("8L") | Some("8B") => 1,
        Some("16") => 2,
        Some("24") => 3,
        Some("32") => 4,
        Some("64") => 8,
        _ => return None,
    };
    (rate > 0 && channels > 0).then_some((rate, width * channels))
}

fn run(
    input: &Path,
    stream: Option<&str>,
    out: &Path,
    progress: &mut dyn FnMut(u64, f64),
) -> Result<AudioSummary, MediaError> {
    let pipeline = gst::Pipeline::new();
    let src = super::source::source_element(input)?;
    let parsebin = util::make("parsebin")?;
    util::add_chain(&pipeline, &[&src, &parsebin])?;

    let convert = util::make("audioconvert")?;
    let resample = util::make("audioresample")?;
    let enc = gst::ElementFactory::make("voaacenc")
        .property("bitrate", AAC_BITRATE)
        .build()
        .map_err(|_| MediaError::transient("GStreamer element voaacenc is not installed"))?;
    let parse = util::make("aacparse")?;
    let mux = util::make("mpegtsmux")?;
    let sink = util::done_file_sink(&pipeline, out)?;
    // Mono stays mono, stereo and surround become stereo: AAC-LC in HLS is
    // 1 or 2 channels, and left to itself audioconvert would pick mono.
    let channels = util::make("capsfilter")?;
    util::add_chain(
        &pipeline,
        &[&convert, &resample, &channels, &enc, &parse, &mux, &sink],
    )?;

    pad_last_frame(&enc)?;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let done_ms = Arc::new(AtomicU64::new(0));
    if let Some(pad) = parse.static_pad("src") {
        let seen = seen.clone();
        let done_ms = done_ms.clone();
        pad.add_probe(
            gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
            move |pad, info| {
                let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(buf) = info.buffer() {
                    // Running time == stream time here (see retime below).
                    if let Some(pts) = buf.pts() {
                        let pts = pts.nseconds();
                        let end = pts + buf.duration().map_or(0, |d| d.nseconds());
                        s.first = Some(s.first.map_or(pts, |f| f.min(pts)));
                        s.end = s.end.max(end);
                        s.frames += 1;
                        done_ms.store(end / 1_000_000, Ordering::Relaxed);
                    }
                } else if s.rate == 0 {
                    if let Some(st) = pad
                        .current_caps()
                        .and_then(|c| c.structure(0).map(|s| s.to_owned()))
                    {
                        s.rate = st.get::<i32>("rate").unwrap_or(0).max(0) as u32;
                        s.channels = st.get::<i32>("channels").unwrap_or(0).max(0) as u32;
                    }
                }
                gst::PadProbeReturn::Ok
            },
        );
    }

    let have_audio = Arc::new(Mutex::new(false));
    let pipeline_weak = pipeline.downgrade();
    let convert_weak = convert.downgrade();
    let have = have_audio.clone();
    let wanted_stream = stream.map(str::to_string);
    let channels_weak = channels.downgrade();
    parsebin.connect_pad_added(move |_, pad| {
        let Some(pipeline) = pipeline_weak.upgrade() else {
            return;
        };
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let is_audio = caps
            .structure(0)
            .is_some_and(|s| s.name().starts_with("audio/"));
        // The track the probe chose (by its stream id tail), or the first.
        let wanted = is_audio
            && wanted_stream
                .as_ref()
                .is_none_or(|want| util::stream_tail(pad).as_deref() == Some(want.as_str()));
        let first = {
            let mut h = have.lock().unwrap_or_else(|e| e.into_inner());
            let first = wanted && !*h;
            *h |= wanted;
            first
        };
        let next = if first {
            let Ok(decodebin) = util::make("decodebin") else {
                util::post_error(pipeline.upcast_ref(), "decodebin is not installed");
                return;
            };
            let convert_weak = convert_weak.clone();
            let channels_weak = channels_weak.clone();
            decodebin.connect_pad_added(move |_, dpad| {
                let caps = dpad.current_caps().unwrap_or_else(|| dpad.query_caps(None));
                let Some(s) = caps.structure(0).filter(|s| s.name() == "audio/x-raw") else {
                    return;
                };
                // What the decoder outputs, not what the parser read: an
                // HE-AACv2 stream parses as mono and decodes as stereo.
                let decoded_channels = s.get::<i32>("channels").unwrap_or(2);
                if let Some(c) = channels_weak.upgrade() {
                    c.set_property(
                        "caps",
                        gst::Caps::builder("audio/x-raw")
                            .field("channels", decoded_channels.clamp(1, 2))
                            .build(),
                    );
                }
                retime_to_stream_time(dpad);
                if let Some(sinkpad) = convert_weak.upgrade().and_then(|c| c.static_pad("sink")) {
                    let _ = dpad.link(&sinkpad);
                }
            });
            decodebin
        } else {
            // Video and other streams are parsed and discarded.
            util::discard_pad(pad);
            return;
        };
        if pipeline.add(&next).is_err() {
            return;
        }
        let _ = next.sync_state_with_parent();
        if let Some(sinkpad) = next.static_pad("sink") {
            let _ = pad.link(&sinkpad);
        }
    });

    let size = super::source::source_size(input);
    let timeout = Duration::from_secs(600) + Duration::from_secs(size / (1 << 20));
    let started = Instant::now();
    let mut last = 0u64;
    let what = format!("audio of {}", input.display());
    let streams = util::FirstStreamWatch::new(&parsebin);
    let ended = util::drive(&pipeline, timeout, &what, || {
        streams.check(&what)?;
        let ms = done_ms.load(Ordering::Relaxed);
        if ms >= last + 1000 {
            last = ms;
            let secs = started.elapsed().as_secs_f64();
            progress(ms, if secs > 0.0 { ms as f64 / secs } else { 0.0 });
        }
        Ok(())
    });
    // EOS without an audio stream: the pipeline ran out without us linking.
    let any_audio = *have_audio.lock().unwrap_or_else(|e| e.into_inner());
    if !any_audio {
        ended?;
        return Err(MediaError::permanent(match stream {
            Some(s) => format!("{}: audio track {s} not found", input.display()),
            None => format!("{}: no audio stream", input.display()),
        }));
    }
    ended?;
    let s = seen.lock().unwrap_or_else(|e| e.into_inner());
    let Some(first) = s.first else {
        return Err(MediaError::permanent(format!(
            "{}: audio stream has no samples",
            input.display()
        )));
    };
    let ms = s.end / 1_000_000;
    let secs = started.elapsed().as_secs_f64();
    progress(ms, if secs > 0.0 { ms as f64 / secs } else { 0.0 });
    Ok(AudioSummary {
        first_ns: first,
        duration_ns: s.end - first,
        frames: s.frames,
        rate: s.rate,
        channels: s.channels,
        bitrate: AAC_BITRATE as u32,
        encoder: "voaacenc".into(),
    })
}

/// Make running time equal source stream time: replace segments with a
/// zero-based one and rewrite each buffer's PTS to its stream time.
pub(crate) fn retime_to_stream_time(pad: &gst::Pad) {
    let current: Mutex<Option<gst::Segment>> = Mutex::new(None);
    pad.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
        move |_, info| {
            let mut cur = current.lock().unwrap_or_else(|e| e.into_inner());
            let seg = match &info.data {
                Some(gst::PadProbeData::Event(ev)) => match ev.view() {
                    gst::EventView::Segment(s) => Some(s.segment().clone()),
                    _ => return gst::PadProbeReturn::Ok,
                },
                _ => None,
            };
            if let Some(seg) = seg {
                *cur = Some(seg);
                let zero = gst::FormattedSegment::<gst::ClockTime>::new();
                info.data = Some(gst::PadProbeData::Event(gst::event::Segment::new(&zero)));
                return gst::PadProbeReturn::Ok;
            }
            let st = match (cur.as_ref(), info.buffer().and_then(|b| b.pts())) {
                (Some(s), Some(pts)) => util::stream_time(s, pts),
                _ => None,
            };
            let Some(st) = st else {
                // Outside the segment (clipped audio) or untimed: drop.
                return gst::PadProbeReturn::Drop;
            };
            if let Some(buf) = info.buffer_mut() {
                let buf = buf.make_mut();
                buf.set_pts(gst::ClockTime::from_nseconds(st));
                buf.set_dts(gst::ClockTime::NONE);
            }
            gst::PadProbeReturn::Ok
        },
    );
}
