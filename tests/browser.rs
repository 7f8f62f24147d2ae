//! HLS is for browsers and phones, so it is tested the way they use it: a
//! real 2-rendition job with audio (real nats-server, real worker), then
//! `tests/browser/play.mjs` plays its outputs in headless Chromium (Debian's
//! `chromium`, H.264/AAC through its FFmpeg) with hls.js over loopback HTTP:
//!
//! * linear pass: master.m3u8 start to end, no seeks asked for, levels
//!   alternating fragment by fragment (`hls.loadLevel`: a switch without a
//!   flush). Both renditions must have been on screen and every source
//!   frame presented: distinct `requestVideoFrameCallback` media times,
//!   plus callbacks skipped when two frames fell in one rendering update
//!   (`presentedFrames` tells), plus frames Chromium dropped as late on a
//!   loaded machine. Chromium's decoded count (`getVideoPlaybackQuality`)
//!   is exactly the source's when the player never moves the playhead; but
//!   hls.js does at start when video is not buffered at 0 (a start position
//!   or a hole skip), and Chromium then decodes again the frames it had
//!   prerolled, at most 4 (its video renderer's queue) per such seek:
//!   measured 300..304 for 300. (hls.js may also load a fragment again from
//!   the new level, as it schedules main fragments on `video.buffered`,
//!   which ends where the audio buffer does; those frames are replaced
//!   seconds ahead of the playhead and never decoded twice.)
//! * seek pass: `nextLevel`/`currentLevel` switches (buffer flushes) and
//!   seeks forward, back and near the end; playback must move on after each
//!   and reach `ended` (frames are not counted: a seek decodes from the
//!   previous keyframe again);
//! * every MP4 in a plain `<video>` to `ended`, source's frame count decoded;
//! * no hls.js ERROR event of any kind, fatal or not, in either HLS pass,
//!   except a `bufferAppendNoProgress` proven false (see
//!   [`is_hlsjs_false_no_progress`]: an hls.js 1.7.4 bug).
//!
//! Needs `/usr/bin/chromium` (or `CHROMIUM_BIN`), `node` and
//! `tests/browser/node_modules` (`bin/dev` installs all three). Without them
//! the test says so and passes, unless `CI` is set: then it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use jetcode::JobState;
use serde_json::Value;

const CLIP_SECONDS: f64 = 12.0;

fn harness_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn chromium_bin() -> PathBuf {
    std::env::var_os("CHROMIUM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// What is missing to run the browser test, if anything.
fn missing_tools() -> Vec<String> {
    let mut missing = Vec::new();
    if !chromium_bin().is_file() {
        missing.push(format!(
            "{} (apt install chromium)",
            chromium_bin().display()
        ));
    }
    let node_ok = std::process::Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !node_ok {
        missing.push("node (apt install nodejs npm)".into());
    }
    let modules = harness_dir().join("node_modules");
    for m in ["hls.js/dist/hls.js", "puppeteer-core/package.json"] {
        if !modules.join(m).is_file() {
            missing.push(format!(
                "{} (npm ci in tests/browser)",
                modules.join(m).display()
            ));
        }
    }
    missing
}

/// True if the test should run; prints why not otherwise. Under CI a
/// missing tool is a failure, not a skip.
fn tools_present() -> bool {
    let missing = missing_tools();
    if missing.is_empty() {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty());
    assert!(
        !ci,
        "CI is set but the browser test cannot run: missing {}; bin/dev installs them",
        missing.join(", ")
    );
    println!(
        "SKIPPED browser test: missing {}. Run bin/dev (installs chromium, node and \
         tests/browser/node_modules); set CI=1 to make this a failure.",
        missing.join(", ")
    );
    false
}

/// Run `node play.mjs <out>` with a deadline; its JSON result.
async fn play(out: &Path, root: &Path) -> Value {
    // play.mjs gives itself media duration x 3 + 60 s; this is the backstop.
    let deadline = Duration::from_secs_f64(CLIP_SECONDS * 3.0 + 90.0);
    let stdout_path = root.join("play.json");
    let stderr_path = root.join("play.err");
    let mut child = tokio::process::Command::new("node")
        .arg(harness_dir().join("play.mjs"))
        .arg(out)
        // Chromium's profile goes under the test's root, so that a
        // leftover browser is found by its command line below.
        .env("TMPDIR", root)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("run node");
    let started = Instant::now();
    let status = match tokio::time::timeout(deadline, child.wait()).await {
        Ok(s) => s.expect("wait for node"),
        Err(_) => {
            let _ = child.kill().await;
            let profile = root.join("jetcode-chromium-");
            for pid in processes_mentioning(&profile.display().to_string()) {
                // SAFETY: kill(2) on a browser process this test started.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
            panic!(
                "play.mjs did not finish within {deadline:?}; stderr:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
    };
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    // Kept after the test (its temp root is not): what the player saw.
    let kept = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-play.json");
    let _ = std::fs::write(&kept, &stdout);
    println!(
        "play.mjs: {status} after {:.1} s; result in {}",
        started.elapsed().as_secs_f64(),
        kept.display()
    );
    assert!(
        status.success(),
        "play.mjs failed ({status}):\nstderr: {stderr}\nstdout: {stdout}"
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("play.mjs printed no JSON ({e}):\n{stdout}\n{stderr}"))
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// Seconds of `[start, end)` that `ranges` ([[s, e], ...]) cover.
fn coverage(ranges: &Value, start: f64, end: f64) -> f64 {
    ranges
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| (num(&r[1]).min(end) - num(&r[0]).max(start)).max(0.0))
        .sum()
}

/// hls.js 1.7.4 reports `bufferAppendNoProgress` for an audio fragment
/// whose append did grow the buffer: when a main fragment's FRAG_PARSED
/// blocker resolves, `stepOperationQueue` shifts the head of EVERY queue
/// whose SourceBuffer is not `updating`, assuming it is a blocker; if the
/// audio append has finished but its `updateend` is not yet dispatched, the
/// append op is dropped without its `onComplete` (which records growth),
/// the audio blocker runs and `checkAppendProgress` sees no growth. Such an
/// error is recognised only with proof: the fragment's whole interval is in
/// the audio SourceBuffer at the moment of the error. Anything else counts.
fn is_hlsjs_false_no_progress(e: &Value) -> bool {
    if e["details"] != "bufferAppendNoProgress" || e["fatal"] != false {
        return false;
    }
    let frag = &e["frag"];
    let (start, end) = (
        num(&frag["start"]),
        num(&frag["start"]) + num(&frag["duration"]),
    );
    let kind = match frag["type"].as_str() {
        Some("audio") => "audio/",
        Some("main") => "video/",
        _ => return false,
    };
    let Some(buffers) = e["source_buffers"].as_object() else {
        return false;
    };
    let mut held = buffers.iter().filter(|(mime, _)| mime.starts_with(kind));
    // hls.js's own tolerance for "fully buffered" is 50 ms.
    held.next()
        .is_some_and(|(_, r)| end - start - coverage(r, start, end) <= 0.05)
        && held.next().is_none()
}

#[tokio::test(flavor = "multi_thread")]
async fn hls_and_mp4_play_in_chromium_with_hlsjs() {
    if !tools_present() {
        return;
    }
    let f = Fixture::new().await;
    let root = f.root();
    let src = f.clip("in.mp4", CLIP_SECONDS, 640, 360);
    let frames = ffprobe_frames(&src);
    let _worker = f.worker("wb", &["--slots", "2"]);
    let spec = f.spec(
        "web",
        &src,
        serde_json::json!([
            {"name": "r360", "height": 360, "crf": 26, "preset": "veryfast"},
            {"name": "r240", "height": 240, "crf": 26, "preset": "veryfast"},
        ]),
        4.0,
    );
    let id = f.client.submit(&spec).await.unwrap();
    let rec = f
        .client
        .wait(&id.0, Some(Duration::from_secs(240)))
        .await
        .unwrap();
    assert_eq!(rec.state, JobState::Done, "{rec:?}");
    assert!(
        rec.plan.as_ref().is_some_and(|p| p.has_audio),
        "clip has audio"
    );
    let out = f.out("web");

    let r = play(&out, root).await;
    let mut problems: Vec<String> = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };

    // Debian's chromium decodes H.264 and AAC (MSE and plain <video>).
    for (ty, ok) in r["support"]["mse"].as_object().into_iter().flatten() {
        if ty.starts_with("video/mp4") {
            check(ok == true, format!("MSE cannot play {ty}"));
        }
    }

    let mut known = Vec::new();
    for pass in ["linear", "seeks"] {
        let p = &r[pass];
        check(p["failure"].is_null(), format!("{pass}: {}", p["failure"]));
        check(p["ended"] == true, format!("{pass}: did not reach `ended`"));
        check(
            p["media_errors"].as_array().is_some_and(|a| a.is_empty()),
            format!("{pass}: <video> errors {}", p["media_errors"]),
        );
        for e in p["errors"].as_array().into_iter().flatten() {
            if is_hlsjs_false_no_progress(e) {
                known.push(format!("{pass}: {e}"));
            } else {
                check(false, format!("{pass}: hls.js error {e}"));
            }
        }
        check(
            num(&p["audio_decoded_bytes"]) > 0.0,
            format!("{pass}: no audio decoded"),
        );
    }

    let lin = &r["linear"];
    let player_seeks = lin["player_seeks"].as_array().map_or(0, |a| a.len()) as u64;
    let decoded = lin["decoded"].as_u64().unwrap_or(0);
    check(
        decoded >= frames && decoded <= frames + 4 * player_seeks,
        format!(
            "linear: decoded {decoded} frames (dropped {}), source has {frames}, \
             hls.js moved the playhead {player_seeks} time(s): {}",
            lin["dropped"], lin["player_seeks"]
        ),
    );
    let shown = lin["rvfc_unique_media_times"].as_u64().unwrap_or(0);
    let skipped = lin["rvfc_missed_callbacks"].as_u64().unwrap_or(0);
    let late = lin["dropped"].as_u64().unwrap_or(0);
    check(
        shown <= frames && shown + skipped + late >= frames,
        format!(
            "linear: {shown} distinct frames presented (+{skipped} callbacks skipped, \
             {late} dropped late), source has {frames}; gaps {}; hls.js moved the playhead: {}",
            lin["rvfc_gaps"], lin["player_seeks"]
        ),
    );
    let sizes = lin["sizes_presented"].as_object().map_or(0, |m| m.len());
    let levels = lin["levels_buffered"].as_array().map_or(0, |a| a.len());
    check(
        sizes >= 2 && levels >= 2,
        format!(
            "linear: levels buffered {}, sizes on screen {}",
            lin["levels_buffered"], lin["sizes_presented"]
        ),
    );

    let seeks = r["seeks"]["seeks"].as_array().cloned().unwrap_or_default();
    check(
        seeks.len() == 3,
        format!("seeks: {} of 3 done", seeks.len()),
    );
    for s in &seeks {
        check(
            s["seeked"] == true && s["resumed"] == true,
            format!("seek did not resume: {s}"),
        );
    }

    let mp4s = r["mp4"].as_array().cloned().unwrap_or_default();
    check(
        mp4s.len() == 2,
        format!("{} MP4s played, want 2", mp4s.len()),
    );
    for m in &mp4s {
        let name = m["src"].as_str().unwrap_or("?");
        check(m["failure"].is_null(), format!("{name}: {}", m["failure"]));
        check(m["ended"] == true, format!("{name}: did not reach `ended`"));
        check(
            m["decoded"].as_u64() == Some(frames),
            format!(
                "{name}: decoded {} frames, source has {frames}",
                m["decoded"]
            ),
        );
        check(
            num(&m["audio_decoded_bytes"]) > 0.0,
            format!("{name}: no audio decoded"),
        );
    }
    check(
        r["http"]["failed"].as_array().is_some_and(|a| a.is_empty()),
        format!("HTTP failures {}", r["http"]["failed"]),
    );

    println!(
        "browser: {} ; linear {} s, decoded {}/{frames}, presented {shown}+{skipped}, sizes {}; \
         seeks {}; mp4 ended {:?}",
        r["browser"],
        lin["wall_s"],
        lin["decoded"],
        lin["sizes_presented"],
        r["seeks"]["seeks"],
        mp4s.iter().map(|m| &m["ended"]).collect::<Vec<_>>()
    );
    for k in &known {
        println!(
            "NOTE: ignored a false hls.js 1.7.4 bufferAppendNoProgress (buffer had grown): {k}"
        );
    }
    assert!(
        problems.is_empty(),
        "{} problem(s) playing the outputs in Chromium:\n  {}\nfull result: {}",
        problems.len(),
        problems.join("\n  "),
        PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("browser-play.json")
            .display()
    );
}
