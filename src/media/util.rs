//! Small GStreamer helpers shared by the media operations: element creation,
//! bounded bus waiting, error classification, atomic file writes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;

use super::MediaError;

/// Name of the file sink whose own EOS ends a pipeline ([`Ended::Done`]).
/// Used where other branches (e.g. an ignored audio track) would otherwise
/// keep the pipeline running after the wanted output is complete.
const DONE_SINK: &str = "jetcode-done-sink";

/// Initialise GStreamer once; a failure here is an installation problem.
pub(crate) fn init() -> Result<(), MediaError> {
    gst::init().map_err(|e| MediaError::transient(format!("GStreamer init failed: {e}")))
}

/// Create an element; a missing element is a worker installation problem
/// (another worker may have it), hence transient.
pub(crate) fn make(factory: &str) -> Result<gst::Element, MediaError> {
    gst::ElementFactory::make(factory)
        .build()
        .map_err(|_| MediaError::transient(format!("GStreamer element {factory} is not installed")))
}

/// A source whose demuxer shows no stream this long after start is not
/// playable media.
pub(crate) const NO_STREAM_TIMEOUT: Duration = Duration::from_secs(15);

/// Notices a `parsebin` that never exposes a stream.
///
/// Why: in GStreamer 1.22 parsebin filters errors from an element it is
/// still trying out. qtdemux on a truncated MP4 (no moov) can post "no
/// playable streams" inside that window; the error is dropped, and with no
/// source pads its EOS goes nowhere, so the pipeline would sit silent until
/// its deadline (we saw it in 4 of 200 probes under load).
pub(crate) struct FirstStreamWatch {
    seen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    started: Instant,
}

impl FirstStreamWatch {
    pub(crate) fn new(parsebin: &gst::Element) -> Self {
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = seen.clone();
        parsebin.connect_pad_added(move |_, _| {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        FirstStreamWatch {
            seen,
            started: Instant::now(),
        }
    }

    /// Call from a [`drive`] tick: fails permanently once the source has
    /// shown no stream for [`NO_STREAM_TIMEOUT`].
    pub(crate) fn check(&self, what: &str) -> Result<(), MediaError> {
        if !self.seen.load(std::sync::atomic::Ordering::Relaxed)
            && self.started.elapsed() > NO_STREAM_TIMEOUT
        {
            return Err(MediaError::permanent(format!(
                "{what}: no playable stream found in {} s (truncated, or not a media file)",
                NO_STREAM_TIMEOUT.as_secs()
            )));
        }
        Ok(())
    }
}

/// Map a GStreamer error message to a one-line MediaError. Resource errors
/// on writing may be fixed by a retry elsewhere; everything about the data
/// itself is permanent.
pub(crate) fn from_gst_error(err: &gst::message::Error) -> MediaError {
    let src = err
        .src()
        .map(|s| s.name().to_string())
        .unwrap_or_else(|| "pipeline".into());
    let e = err.error();
    let line = one_line(&format!("{src}: {e}"));
    let transient = matches!(
        e.kind::<gst::ResourceError>(),
        Some(
            gst::ResourceError::Write
                | gst::ResourceError::OpenWrite
                | gst::ResourceError::NoSpaceLeft
                | gst::ResourceError::Busy
        )
    ) || matches!(
        e.kind::<gst::CoreError>(),
        Some(gst::CoreError::MissingPlugin)
    );
    if transient {
        MediaError::transient(line)
    } else {
        MediaError::permanent(line)
    }
}

/// Collapse whitespace so every reason fits one line.
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What ended a bus wait.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    Eos,
    Done,
}

/// Drive `pipeline` (already set to PLAYING by the caller) until EOS, an
/// application "done" message, an error, or `timeout`. `tick` runs at least
/// every 100 ms on this thread: it reports progress and performs actions the
/// streaming threads asked for (such as a seek). The pipeline is always set
/// to NULL before returning, so no streaming thread outlives the call.
pub(crate) fn drive(
    pipeline: &gst::Pipeline,
    timeout: Duration,
    what: &str,
    tick: impl FnMut() -> Result<(), MediaError>,
) -> Result<Ended, MediaError> {
    drive_until(pipeline, timeout, what, is_done_sink_eos, tick)
}

/// [`drive`], ending ([`Ended::Done`]) once `finished` says so of a bus
/// message it was shown instead of at the done sink's EOS.
pub(crate) fn drive_until(
    pipeline: &gst::Pipeline,
    timeout: Duration,
    what: &str,
    mut finished: impl FnMut(&gst::Message) -> bool,
    mut tick: impl FnMut() -> Result<(), MediaError>,
) -> Result<Ended, MediaError> {
    let res = drive_inner(pipeline, timeout, what, &mut finished, &mut tick);
    let _ = pipeline.set_state(gst::State::Null);
    res
}

fn drive_inner(
    pipeline: &gst::Pipeline,
    timeout: Duration,
    what: &str,
    finished: &mut dyn FnMut(&gst::Message) -> bool,
    tick: &mut dyn FnMut() -> Result<(), MediaError>,
) -> Result<Ended, MediaError> {
    let bus = pipeline
        .bus()
        .ok_or_else(|| MediaError::transient("pipeline without bus"))?;
    if let Err(e) = pipeline.set_state(gst::State::Playing) {
        // The bus usually holds the reason.
        if let Some(msg) = bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(500),
            &[gst::MessageType::Error],
        ) {
            if let gst::MessageView::Error(err) = msg.view() {
                return Err(from_gst_error(err));
            }
        }
        return Err(MediaError::permanent(format!(
            "{what}: cannot start pipeline: {e}"
        )));
    }
    let deadline = Instant::now() + timeout;
    loop {
        tick()?;
        let now = Instant::now();
        if now >= deadline {
            return Err(MediaError::transient(format!(
                "{what}: timed out after {} s",
                timeout.as_secs()
            )));
        }
        let wait = (deadline - now).min(Duration::from_millis(100));
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_nseconds(wait.as_nanos() as u64)) else {
            continue;
        };
        if finished(&msg) {
            return Ok(Ended::Done);
        }
        match msg.view() {
            gst::MessageView::Eos(_) => return Ok(Ended::Eos),
            gst::MessageView::Error(err) => return Err(from_gst_error(err)),
            _ => {}
        }
    }
}

/// A file sink for `path` whose EOS ends `pipeline` ([`Ended::Done`]) even
/// while other branches still run.
///
/// Why the sink's own EOS message, forwarded by the bin, and not a probe on
/// its sink pad: filesink batches up to 64 KiB and writes the batch when it
/// handles EOS. A pad probe fires before that; stopping the pipeline then
/// dropped the batch, and under load parts came out short or empty.
pub(crate) fn done_file_sink(
    pipeline: &gst::Pipeline,
    path: &Path,
) -> Result<gst::Element, MediaError> {
    pipeline.set_property("message-forward", true);
    gst::ElementFactory::make("filesink")
        .name(DONE_SINK)
        .property("location", path.to_string_lossy().as_ref())
        .property("sync", false)
        .property("async", false)
        .build()
        .map_err(|_| MediaError::transient("GStreamer element filesink is not installed"))
}

/// A child's EOS message, forwarded by the pipeline, from the done sink:
/// the sink has handled EOS, so everything is written.
fn is_done_sink_eos(msg: &gst::Message) -> bool {
    let gst::MessageView::Element(el) = msg.view() else {
        return false;
    };
    let Some(s) = el.structure() else {
        return false;
    };
    if s.name() != "GstBinForwarded" {
        return false;
    }
    let Ok(inner) = s.get::<gst::Message>("message") else {
        return false;
    };
    inner.type_() == gst::MessageType::Eos && inner.src().is_some_and(|src| src.name() == DONE_SINK)
}

/// Stream time of `pts` under `seg`, nanoseconds.
pub(crate) fn stream_time(seg: &gst::Segment, pts: gst::ClockTime) -> Option<u64> {
    seg.downcast_ref::<gst::ClockTime>()?
        .to_stream_time(pts)
        .map(|t| t.nseconds())
}

/// A tag no other process uses, the same for this whole process (a media
/// child runs one task): two containers writing to shared storage can
/// have children with the same pid.
pub(crate) fn unique_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        format!(
            "{}-{}",
            std::process::id(),
            ulid::Ulid::new().to_string().to_lowercase()
        )
    })
}

/// A temporary sibling of `path` for atomic writes.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    crate::store::partial_path(path, unique_tag())
}

/// Create the parent directory of `path`.
pub(crate) fn ensure_parent(path: &Path) -> Result<(), MediaError> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| {
                MediaError::transient(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
    }
    Ok(())
}

/// Make `tmp` durable and rename it over `path`.
pub(crate) fn commit(tmp: &Path, path: &Path) -> Result<(), MediaError> {
    crate::store::commit_file(tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(tmp);
        MediaError::transient(e.to_string())
    })
}

/// Make `tmp` durable and place it at `path` unless a part is already
/// there (first writer wins; see [`crate::store::commit_file_once`]).
pub(crate) fn commit_once(tmp: &Path, path: &Path) -> Result<(), MediaError> {
    match crate::store::commit_file_once(tmp, path) {
        Ok(true) => Ok(()),
        Ok(false) => {
            tracing::info!(path = %path.display(), "an earlier attempt already placed this part; kept it");
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(tmp);
            Err(MediaError::transient(e.to_string()))
        }
    }
}

/// Write `bytes` to `path` atomically.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), MediaError> {
    ensure_parent(path)?;
    let tmp = tmp_path(path);
    std::fs::write(&tmp, bytes)
        .map_err(|e| MediaError::transient(format!("cannot write {}: {e}", tmp.display())))?;
    commit(&tmp, path)
}

/// Fail early (permanently, in one line) when `path` is not a readable,
/// non-empty file.
pub(crate) fn check_readable_file(path: &Path) -> Result<(), MediaError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| MediaError::permanent(format!("cannot read {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(MediaError::permanent(format!(
            "{} is not a file",
            path.display()
        )));
    }
    if meta.len() == 0 {
        return Err(MediaError::permanent(format!(
            "{} is empty",
            path.display()
        )));
    }
    Ok(())
}

/// A `filesrc` for `path`, failing early (permanently) when it is unreadable.
pub(crate) fn file_source(path: &Path) -> Result<gst::Element, MediaError> {
    check_readable_file(path)?;
    gst::ElementFactory::make("filesrc")
        .property("location", path.to_string_lossy().as_ref())
        .build()
        .map_err(|_| MediaError::transient("GStreamer element filesrc is not installed"))
}

/// A `filesink` writing `path` without clock sync or preroll waits.
pub(crate) fn file_sink(path: &Path) -> Result<gst::Element, MediaError> {
    gst::ElementFactory::make("filesink")
        .property("location", path.to_string_lossy().as_ref())
        .property("sync", false)
        .property("async", false)
        .build()
        .map_err(|_| MediaError::transient("GStreamer element filesink is not installed"))
}

/// A sink that swallows a branch we do not want (async=false: a single
/// demuxer thread must never block in its preroll).
pub(crate) fn fake_sink() -> Result<gst::Element, MediaError> {
    gst::ElementFactory::make("fakesink")
        .property("sync", false)
        .property("async", false)
        .build()
        .map_err(|_| MediaError::transient("GStreamer element fakesink is not installed"))
}

/// Discard everything a pad we do not want pushes. Buffers are dropped by
/// a probe instead of linking a sink: a sink would take part in preroll and
/// could block the demuxer's only streaming thread while the pipeline waits
/// for the wanted branch.
pub(crate) fn discard_pad(pad: &gst::Pad) {
    pad.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
        |_, _| gst::PadProbeReturn::Drop,
    );
}

/// Add `elements` to `pipeline`, link them in order and sync their states.
pub(crate) fn add_chain(
    pipeline: &gst::Pipeline,
    elements: &[&gst::Element],
) -> Result<(), MediaError> {
    pipeline
        .add_many(elements.iter().copied())
        .map_err(|e| MediaError::transient(format!("cannot add elements: {e}")))?;
    gst::Element::link_many(elements.iter().copied())
        .map_err(|e| MediaError::transient(format!("cannot link elements: {e}")))?;
    Ok(())
}

/// Report a failure from a streaming thread on the bus as an error message,
/// so the driving loop sees it.
pub(crate) fn post_error(el: &gst::Element, msg: &str) {
    let _ = el.post_message(
        gst::message::Error::builder(gst::StreamError::Failed, msg)
            .src(el)
            .build(),
    );
}

/// The tail of a pad's stream id (`<hash>/002` -> `002`): names a track
/// of the file the same way in every process that opens it (the hash
/// part need not be).
pub(crate) fn stream_tail(pad: &gst::Pad) -> Option<String> {
    let ev = pad.sticky_event::<gst::event::StreamStart>(0)?;
    let id = ev.stream_id().to_string();
    let tail = id.rsplit('/').next().unwrap_or(&id);
    (!tail.is_empty() && tail != id).then(|| tail.to_string())
}

/// The container marks this stream as not played by default (a second
/// audio language, a commentary track).
pub(crate) fn stream_unselected(pad: &gst::Pad) -> bool {
    pad.sticky_event::<gst::event::StreamStart>(0)
        .is_some_and(|ev| ev.stream_flags().contains(gst::StreamFlags::UNSELECT))
}
