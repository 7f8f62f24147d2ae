//! Synthetic test clips (H.264 + AAC in MP4) for tests, the demo and
//! benchmarks. Exact frame counts: the sources stop after `num-buffers`.

use std::path::Path;
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;

use super::util;
use super::MediaError;

/// Shape of a generated clip.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipOptions {
    pub seconds: f64,
    pub fps_num: u32,
    pub fps_den: u32,
    pub width: u32,
    pub height: u32,
    /// Maximum GOP length in frames (x264 `key-int-max`).
    pub gop: u32,
    pub audio: bool,
    /// Random noise instead of a moving ball: nearly incompressible, so a
    /// short clip is megabytes (to measure source reads).
    pub noise: bool,
}

impl Default for ClipOptions {
    fn default() -> Self {
        ClipOptions {
            seconds: 10.0,
            fps_num: 25,
            fps_den: 1,
            width: 320,
            height: 240,
            gop: 50,
            audio: true,
            noise: false,
        }
    }
}

impl ClipOptions {
    /// Video frames the clip will have.
    pub fn frames(&self) -> u64 {
        (self.seconds * self.fps_num as f64 / self.fps_den as f64).round() as u64
    }
}

/// Audio sample rate of generated clips.
pub const CLIP_AUDIO_RATE: u32 = 48_000;
const SAMPLES_PER_BUFFER: u32 = 1024;

/// Write an MP4 test clip to `path`: a moving ball with a running clock
/// (so every frame differs), and optionally a 440 Hz stereo tone.
pub fn generate_clip(path: &Path, o: &ClipOptions) -> Result<(), MediaError> {
    util::init()?;
    if o.fps_num == 0 || o.fps_den == 0 || o.width < 16 || o.height < 16 || o.seconds <= 0.0 {
        return Err(MediaError::permanent(format!("bad clip options {o:?}")));
    }
    util::ensure_parent(path)?;
    let pipeline = gst::Pipeline::new();
    let vsrc = gst::ElementFactory::make("videotestsrc")
        .property("num-buffers", o.frames() as i32)
        .property_from_str("pattern", if o.noise { "snow" } else { "ball" })
        .build()
        .map_err(|_| MediaError::transient("videotestsrc missing"))?;
    // I420 explicitly: videotestsrc would otherwise negotiate 4:4:4, which
    // many decoders cannot play.
    let vcaps = gst::ElementFactory::make("capsfilter")
        .property(
            "caps",
            gst::Caps::builder("video/x-raw")
                .field("format", "I420")
                .field("width", o.width as i32)
                .field("height", o.height as i32)
                .field(
                    "framerate",
                    gst::Fraction::new(o.fps_num as i32, o.fps_den as i32),
                )
                .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
                .build(),
        )
        .build()
        .map_err(|_| MediaError::transient("capsfilter missing"))?;
    let enc = gst::ElementFactory::make("x264enc")
        .property("key-int-max", o.gop)
        .property_from_str("speed-preset", "veryfast")
        .property_from_str("pass", "qual")
        .property("quantizer", 20u32)
        .property("vbv-buf-capacity", 0u32)
        .build()
        .map_err(|_| MediaError::transient("x264enc missing"))?;
    let parse = util::make("h264parse")?;
    let vq = util::make("queue")?;
    let mux = util::make("mp4mux")?;
    let sink = util::file_sink(path)?;

    // The clock overlay is cosmetic; clips still work without pango.
    let mut vchain: Vec<gst::Element> = vec![vsrc, vcaps];
    if let Ok(ov) = gst::ElementFactory::make("timeoverlay")
        .property_from_str("halignment", "center")
        .property_from_str("valignment", "center")
        .build()
    {
        vchain.push(ov);
    }
    vchain.extend([enc, parse, vq]);
    let refs: Vec<&gst::Element> = vchain.iter().collect();
    util::add_chain(&pipeline, &refs)?;
    util::add_chain(&pipeline, &[&mux, &sink])?;
    vchain
        .last()
        .ok_or_else(|| MediaError::transient("empty chain"))?
        .link(&mux)
        .map_err(|e| MediaError::transient(format!("link video to mux: {e}")))?;

    if o.audio {
        let buffers =
            (o.seconds * CLIP_AUDIO_RATE as f64 / SAMPLES_PER_BUFFER as f64).ceil() as i32;
        let asrc = gst::ElementFactory::make("audiotestsrc")
            .property("num-buffers", buffers)
            .property("samplesperbuffer", SAMPLES_PER_BUFFER as i32)
            .property("volume", 0.3f64)
            .build()
            .map_err(|_| MediaError::transient("audiotestsrc missing"))?;
        let acaps = gst::ElementFactory::make("capsfilter")
            .property(
                "caps",
                gst::Caps::builder("audio/x-raw")
                    .field("rate", CLIP_AUDIO_RATE as i32)
                    .field("channels", 2i32)
                    .build(),
            )
            .build()
            .map_err(|_| MediaError::transient("capsfilter missing"))?;
        let conv = util::make("audioconvert")?;
        let aenc = util::make("voaacenc")?;
        let aparse = util::make("aacparse")?;
        let aq = util::make("queue")?;
        util::add_chain(&pipeline, &[&asrc, &acaps, &conv, &aenc, &aparse, &aq])?;
        aq.link(&mux)
            .map_err(|e| MediaError::transient(format!("link audio to mux: {e}")))?;
    }
    let timeout = Duration::from_secs(60) + Duration::from_secs_f64(o.seconds * 2.0);
    util::drive(&pipeline, timeout, "generate clip", || Ok(())).map(|_| ())
}
