//! Body of the hidden CLI verb `jetcode media <segment|audio|stitch|probe>
//! --task <json>`: run one work order in this (child) process and report on
//! stdout as JSON lines ([`ChildLine`]). A crash or hang of GStreamer then
//! only takes this process down, never the worker.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use serde::de::DeserializeOwned;

use super::{audio, probe, segment, stitch, util, MediaError};
use crate::task::{AudioWork, ChildLine, SegmentWork, StitchWork, EXIT_PERMANENT, EXIT_TRANSIENT};

/// Run work order `task_json` of kind `kind`; returns the process exit code
/// (0, [`EXIT_PERMANENT`] or [`EXIT_TRANSIENT`]).
pub fn run(kind: &str, task_json: &str) -> i32 {
    let started = Instant::now();
    let res = util::init().and_then(|()| dispatch(kind, task_json));
    match res {
        Ok((frames, mut summary)) => {
            if let Some(obj) = summary.as_object_mut() {
                obj.insert("seconds".into(), started.elapsed().as_secs_f64().into());
                let (gets, bytes) = super::source::process_read_stats();
                obj.insert("source_gets".into(), gets.into());
                obj.insert("source_bytes".into(), bytes.into());
                obj.insert(
                    "source_refetches".into(),
                    super::source::process_refetches().into(),
                );
            }
            emit(&ChildLine::Done { frames, summary });
            0
        }
        Err(mut e) => {
            if let Some(note) = near_memory_limit() {
                // A failed allocation looks like bad media to GStreamer
                // (a STREAM or LIBRARY error); it is not: retry, maybe on
                // a worker with more memory.
                e.permanent = false;
                e.message = format!("{} ({note})", e.message);
            }
            emit(&ChildLine::Failed {
                reason: util::one_line(&e.message),
                permanent: e.permanent,
            });
            if e.permanent {
                EXIT_PERMANENT
            } else {
                EXIT_TRANSIENT
            }
        }
    }
}

/// Some("memory limit N MiB reached") when this process runs under an
/// RLIMIT_DATA and uses at least 3/4 of it.
fn near_memory_limit() -> Option<String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_DATA, &mut lim) } != 0
        || lim.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    let limit: u64 = lim.rlim_cur;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let data_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmData:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    (data_kib * 1024 >= limit / 4 * 3).then(|| format!("memory limit {} MiB reached", limit >> 20))
}

fn dispatch(kind: &str, task_json: &str) -> Result<(u64, serde_json::Value), MediaError> {
    match kind {
        "segment" => {
            let work: SegmentWork = parse(task_json)?;
            let total = work.segments.iter().map(|s| s.frames()).sum();
            let stats = segment::encode_segment_stats(&work, &mut |done, fps| {
                emit(&ChildLine::Progress { done, total, fps })
            })?;
            Ok((
                stats.frames,
                serde_json::json!({
                    "segments": work.segments.iter().map(|s| s.index).collect::<Vec<_>>(),
                    "renditions": work.outputs.iter().map(|o| &o.rendition.name).collect::<Vec<_>>(),
                    "decoded": stats.decoded,
                }),
            ))
        }
        "audio" => {
            let work: AudioWork = parse(task_json)?;
            // The duration is unknown to the order; total 0 means "unknown".
            let summary = audio::encode_audio(&work, &mut |done, fps| {
                emit(&ChildLine::Progress {
                    done,
                    total: 0,
                    fps,
                })
            })?;
            Ok((0, to_value(&summary)?))
        }
        "stitch" => {
            // Its copy, faststart, verify and hash phases mux no frames:
            // report liveness from this process's I/O instead.
            report_io_liveness();
            let work: StitchWork = parse(task_json)?;
            slow_failpoint("stitch", Some(&work.output_dir));
            let total = work.plan.frames * work.renditions.len() as u64;
            let manifest = stitch::stitch(&work, &mut |done, fps| {
                emit(&ChildLine::Progress { done, total, fps })
            })?;
            Ok((manifest.frames, to_value(&manifest)?))
        }
        "probe" => {
            let path: PathBuf = parse(task_json)?;
            slow_failpoint("probe", None);
            let facts = probe::probe(&path)?;
            Ok((facts.frames, to_value(&facts)?))
        }
        other => Err(MediaError::permanent(format!(
            "unknown media task kind {other:?}"
        ))),
    }
}

fn parse<T: DeserializeOwned>(json: &str) -> Result<T, MediaError> {
    serde_json::from_str(json).map_err(|e| MediaError::permanent(format!("bad work order: {e}")))
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<serde_json::Value, MediaError> {
    serde_json::to_value(v)
        .map_err(|e| MediaError::transient(format!("cannot encode summary: {e}")))
}

/// Every 2 s, tell the worker this process is alive if it read or wrote
/// anything since the last look (`/proc/self/io`). A hung child does no
/// I/O and is still killed by the stall timer.
fn report_io_liveness() {
    fn io_bytes() -> Option<u64> {
        let text = std::fs::read_to_string("/proc/self/io").ok()?;
        let field = |name: &str| -> Option<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
        };
        Some(field("rchar:")? + field("wchar:")?)
    }
    // Reading /proc/self/io and printing the report are I/O too (about
    // 150 bytes a look): only a change well above that since the previous
    // look counts, or a hung child would keep itself alive.
    const MOVED: u64 = 64 * 1024;
    let _ = std::thread::Builder::new()
        .name("io-liveness".into())
        .spawn(|| {
            let mut last = io_bytes().unwrap_or(0);
            loop {
                std::thread::sleep(std::time::Duration::from_secs(2));
                let Some(now) = io_bytes() else { return };
                if now >= last + MOVED {
                    emit(&ChildLine::Alive { io_bytes: now });
                }
                last = io_bytes().unwrap_or(now);
            }
        });
}

/// Fault injection for tests: `JETCODE_FAILPOINT_SLOW=<kind>:<seconds>`
/// makes a child of that kind spend that long before its real work: a
/// stitch writes scratch data meanwhile in `dir`, as a faststart rewrite or
/// a hash of a huge output does (I/O, but no frames); a probe just waits,
/// as one reading a huge file over a slow mount does.
fn slow_failpoint(kind: &str, dir: Option<&std::path::Path>) {
    let Some(secs) = std::env::var("JETCODE_FAILPOINT_SLOW").ok().and_then(|v| {
        let (k, secs) = v.split_once(':')?;
        (k == kind).then(|| secs.parse::<f64>().ok())?
    }) else {
        return;
    };
    let until = Instant::now() + std::time::Duration::from_secs_f64(secs);
    let path = dir.map(|d| d.join(format!(".slow-io-{}", util::unique_tag())));
    let block = vec![0u8; 64 * 1024];
    while Instant::now() < until {
        if let Some(path) = &path {
            let _ = std::fs::write(path, &block);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if let Some(path) = &path {
        let _ = std::fs::remove_file(path);
    }
}

/// Print one line; stdout is the channel to the worker, flush per line.
fn emit(line: &ChildLine) {
    if let Ok(s) = serde_json::to_string(line) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{s}");
        let _ = out.flush();
    }
}
