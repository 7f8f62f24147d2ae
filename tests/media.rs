//! Media engine tests: probe, segment, audio and stitch on generated clips,
//! verified with ffprobe/ffmpeg. Small resolutions and short clips keep the
//! whole file well under a few minutes on two cores.
#![cfg(feature = "media")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use jetcode::job::{OutputFormat, Rendition};
use jetcode::manifest::{FileKind, Manifest};
use jetcode::media::testsrc::{generate_clip, ClipOptions};
use jetcode::media::{audio, probe, segment, stitch};
use jetcode::plan::{plan, Plan, PlanOptions};
use jetcode::subjects::{part_key, AUDIO_PART_KEY};
use jetcode::task::{AudioWork, SegmentWork, StitchWork};

fn clip(dir: &Path, name: &str, o: &ClipOptions) -> PathBuf {
    let p = dir.join(name);
    generate_clip(&p, o).expect("generate clip");
    p
}

fn rendition(name: &str, height: u32, crf: u32) -> Rendition {
    serde_json::from_value(
        serde_json::json!({"name": name, "height": height, "crf": crf, "preset": "veryfast"}),
    )
    .expect("rendition")
}

/// ffprobe `-show_entries` of one stream as key=value pairs.
fn ffprobe(path: &Path, stream: &str, entries: &str, count: bool) -> Vec<(String, String)> {
    let mut args = vec!["-select_streams", stream, "-show_entries", entries];
    if count {
        args.push("-count_frames");
    }
    common::ffprobe_entries(path, &args)
}

fn field(v: &[(String, String)], k: &str) -> f64 {
    v.iter()
        .find(|(key, _)| key == k)
        .and_then(|(_, val)| val.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {k} in {v:?}"))
}

/// (start, duration) in seconds of one stream: first presentation time to
/// the end of the last video packet or decoded audio frame. Works the same
/// for every container (Matroska has no stream duration field), and audio is
/// measured after decoding so codec delay (Opus pre-skip) is not counted.
fn span(path: &Path, stream: &str) -> (f64, f64) {
    let entries = if stream.starts_with('a') {
        // ffmpeg 5 names it pkt_duration_time, later ones duration_time.
        "frame=pts_time,pkt_duration_time,duration_time"
    } else {
        "packet=pts_time,duration_time"
    };
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", stream])
        .args(["-show_entries", entries, "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    assert!(out.status.success(), "ffprobe {}", path.display());
    let (mut start, mut end) = (f64::MAX, f64::MIN);
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let mut it = l.split(',').map(|x| x.trim().parse::<f64>());
        let pts = it.next().and_then(|x| x.ok());
        if let (Some(pts), Some(dur)) = (pts, it.find_map(|x| x.ok())) {
            start = start.min(pts);
            end = end.max(pts + dur);
        }
    }
    assert!(start < end, "no packets in {} {stream}", path.display());
    (start, end - start)
}

fn ffprobe_frames(path: &Path) -> u64 {
    field(
        &ffprobe(path, "v:0", "stream=nb_read_frames", true),
        "nb_read_frames",
    ) as u64
}

/// Average PSNR (dB) of `a` against `b`, both rebased to start at 0.
fn psnr(a: &Path, b: &Path) -> f64 {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostats", "-i"])
        .arg(a)
        .arg("-i")
        .arg(b)
        .args([
            "-lavfi",
            "[0:v]setpts=PTS-STARTPTS[a];[1:v]setpts=PTS-STARTPTS[b];[a][b]psnr",
            "-f",
            "null",
            "-",
        ])
        .output()
        .expect("ffmpeg runs");
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("PSNR"))
        .unwrap_or_else(|| panic!("no PSNR: {err}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("average:"))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("bad PSNR line {line}"))
}

/// The plan of `src` (probed) cut into segments of about `target_seconds`.
fn plan_of(src: &Path, target_seconds: f64) -> Plan {
    let facts = probe::probe(src).expect("probe");
    plan(
        &facts,
        &PlanOptions {
            target_seconds,
            ..Default::default()
        },
    )
    .expect("plan")
}

/// Probe, plan, encode every segment and the audio, stitch: the whole job
/// as the workers would run it, in one process.
fn run_job(
    src: &Path,
    out: &Path,
    target_seconds: f64,
    renditions: &[Rendition],
) -> (Plan, Manifest) {
    let p = plan_of(src, target_seconds);
    for r in renditions {
        for s in &p.segments {
            let work = SegmentWork::of_plan(
                &p,
                *s,
                r.clone(),
                src.to_path_buf(),
                out.join(part_key(&r.name, s.index)),
            );
            let mut calls = 0;
            let n = segment::encode_segment(&work, &mut |_, _| calls += 1).expect("segment");
            assert_eq!(n, s.frames());
            assert!(calls > 0, "progress reported");
        }
    }
    if p.has_audio {
        audio::encode_audio(
            &AudioWork {
                input: src.to_path_buf(),
                output: out.join(AUDIO_PART_KEY),
                stream: p.audio_stream.clone(),
            },
            &mut |_, _| {},
        )
        .expect("audio");
    }
    let m = stitch::stitch(
        &StitchWork {
            output_dir: out.to_path_buf(),
            plan: p.clone(),
            renditions: renditions.to_vec(),
            formats: vec![OutputFormat::Mp4, OutputFormat::Hls],
        },
        &mut |_, _| {},
    )
    .expect("stitch");
    (p, m)
}

#[test]
fn probe_counts_frames_and_keyframes_25fps() {
    let dir = tempfile::tempdir().unwrap();
    let o = ClipOptions {
        seconds: 8.0,
        gop: 25,
        ..Default::default()
    };
    let src = clip(dir.path(), "a.mp4", &o);
    let f = probe::probe(&src).unwrap();
    assert_eq!(f.frames, 200);
    assert_eq!(f.frames, ffprobe_frames(&src));
    assert_eq!((f.fps_num, f.fps_den), (25, 1));
    assert_eq!((f.width, f.height), (320, 240));
    assert_eq!(f.video_codec, "video/x-h264");
    assert_eq!(f.first_pts_ns, 0);
    assert!(
        (f.duration_ns as f64 / 1e9 - 8.0).abs() < 0.05,
        "{}",
        f.duration_ns
    );
    // x264 may add scene-cut keyframes, never drop the periodic ones.
    for k in (0..200).step_by(25) {
        assert!(
            f.keyframes.contains(&k),
            "keyframe {k} missing in {:?}",
            f.keyframes
        );
    }
    let a = f.audio.expect("audio");
    assert_eq!((a.rate, a.channels), (48000, 2));
    assert!((a.duration_ns as f64 / 1e9 - 8.0).abs() < 0.03);
}

#[test]
fn probe_ntsc_rate_long_gop() {
    let dir = tempfile::tempdir().unwrap();
    let o = ClipOptions {
        seconds: 10.0,
        fps_num: 30000,
        fps_den: 1001,
        gop: 250,
        audio: false,
        ..Default::default()
    };
    let src = clip(dir.path(), "ntsc.mp4", &o);
    let f = probe::probe(&src).unwrap();
    assert_eq!(f.frames, 300);
    assert_eq!(f.frames, ffprobe_frames(&src));
    assert_eq!((f.fps_num, f.fps_den), (30000, 1001));
    assert!(
        f.keyframes.starts_with(&[0]) && f.keyframes.contains(&250),
        "{:?}",
        f.keyframes
    );
    assert!(f.audio.is_none());
}

/// Check one stitched job: frame count, durations, A/V offset, HLS.
fn check_job(src: &Path, out: &Path, p: &Plan, m: &Manifest) {
    let facts = probe::probe(src).unwrap();
    let frame_s = p.fps_den as f64 / p.fps_num as f64;
    let aac_frame_s = 1024.0 / 48000.0;
    let mp4s: Vec<_> = m.of_kind(FileKind::Mp4).collect();
    assert_eq!(mp4s.len(), 1);
    let mp4 = out.join(&mp4s[0].path);
    assert_eq!(mp4s[0].frames, Some(facts.frames));

    let v = ffprobe(
        &mp4,
        "v:0",
        "stream=nb_read_frames,duration,start_time",
        true,
    );
    assert_eq!(
        field(&v, "nb_read_frames") as u64,
        facts.frames,
        "frame count of {}",
        mp4.display()
    );
    let (v_start, v_dur) = span(&mp4, "v:0");
    let (src_v_start, src_v_dur) = span(src, "v:0");
    let dv = v_dur - src_v_dur;
    assert!(dv.abs() <= frame_s + 1e-6, "video duration off by {dv} s");

    // Sync is kept when the output's A/V offset equals the source's.
    let (a_start, a_dur) = span(&mp4, "a:0");
    let (src_a_start, src_a_dur) = span(src, "a:0");
    let av = (a_start - v_start) - (src_a_start - src_v_start);
    assert!(av.abs() <= aac_frame_s, "A/V start offset {av} s");
    let da = a_dur - src_a_dur;
    // One AAC frame, plus 0.1 ms for ffprobe's microsecond printing and MP4
    // timescale rounding: on ffmpeg-made MP4s GStreamer 1.22's qtdemux drops
    // the last AAC packet of the edit list, so those come out a frame short
    // (measured -21.355 ms; see the media engine notes).
    assert!(
        da.abs() <= aac_frame_s + 1e-4,
        "audio duration off by {da} s"
    );
    eprintln!(
        "job {}: {} segments, frames {} (source {}), video duration diff {dv:.6} s, A/V offset change vs source {:.3} ms, audio duration diff {:.3} ms",
        out.display(),
        p.segments.len(),
        field(&v, "nb_read_frames"),
        facts.frames,
        av * 1e3,
        da * 1e3
    );

    // HLS: every part listed, durations sum to the total, ffprobe reads it.
    let name = mp4s[0].rendition.clone().unwrap();
    let media = std::fs::read_to_string(out.join(format!("hls/{name}.m3u8"))).unwrap();
    let mut sum = 0.0;
    let mut uris = vec![];
    for l in media.lines() {
        if let Some(d) = l.strip_prefix("#EXTINF:") {
            sum += d.trim_end_matches(',').parse::<f64>().unwrap();
        } else if !l.starts_with('#') && !l.is_empty() {
            uris.push(l.to_string());
        }
    }
    let want: Vec<_> = p
        .segments
        .iter()
        .map(|s| format!("../{}", part_key(&name, s.index)))
        .collect();
    assert_eq!(uris, want);
    assert!(
        (sum - facts.frames as f64 * frame_s).abs() < 1e-3,
        "EXTINF sum {sum}"
    );
    let target: f64 = media
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-TARGETDURATION:"))
        .unwrap()
        .parse()
        .unwrap();
    let max = p.segments.iter().map(|s| s.duration_ns()).max().unwrap() as f64 / 1e9;
    assert_eq!(target, max.ceil());
    let master_path = out.join("hls/master.m3u8");
    let master = std::fs::read_to_string(&master_path).unwrap();
    assert!(master.contains("RESOLUTION=320x240"), "{master}");
    assert!(
        master.contains("CODECS=\"avc1.") && master.contains("mp4a.40.2"),
        "{master}"
    );
    assert!(
        master.contains("TYPE=AUDIO") && master.contains("AUDIO=\"aac\""),
        "{master}"
    );
    let hv = ffprobe(&master_path, "v:0", "stream=width,height", false);
    assert_eq!((field(&hv, "width"), field(&hv, "height")), (320.0, 240.0));
    assert_eq!(
        ffprobe_frames(&out.join(format!("hls/{name}.m3u8"))),
        facts.frames
    );
    ffprobe(&master_path, "a:0", "stream=codec_name", false);

    // The audio playlist: one byte range of the audio file per video
    // segment, tiling it, each a TS a player can start decoding on its own.
    let audio_pl = std::fs::read_to_string(out.join("hls/audio.m3u8")).unwrap();
    let audio_file = std::fs::read(out.join(AUDIO_PART_KEY)).unwrap();
    let mut next = 0usize;
    let mut asum = 0.0;
    let mut ranges = 0;
    for l in audio_pl.lines() {
        if let Some(d) = l.strip_prefix("#EXTINF:") {
            asum += d.trim_end_matches(',').parse::<f64>().unwrap();
        } else if let Some(r) = l.strip_prefix("#EXT-X-BYTERANGE:") {
            let (len, off) = r.split_once('@').unwrap();
            let (len, off): (usize, usize) = (len.parse().unwrap(), off.parse().unwrap());
            assert_eq!(off, next, "ranges tile the file\n{audio_pl}");
            let piece = out.join(format!("audio-range-{ranges}.ts"));
            std::fs::write(&piece, &audio_file[off..off + len]).unwrap();
            let c = ffprobe(&piece, "a:0", "stream=codec_name", false);
            assert!(c.iter().any(|(_, v)| v == "aac"), "range {ranges}: {c:?}");
            std::fs::remove_file(&piece).unwrap();
            next = off + len;
            ranges += 1;
        }
    }
    assert_eq!(next, audio_file.len(), "ranges cover the file");
    assert_eq!(ranges, p.segments.len(), "{audio_pl}");
    assert!(
        (asum - src_a_dur).abs() <= aac_frame_s + 1e-4,
        "audio EXTINF sum {asum} vs {src_a_dur}"
    );

    // Manifest: every file exists with the recorded size and hash.
    let on_disk: Manifest =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(&on_disk, m);
    for f in &m.files {
        let len = std::fs::metadata(out.join(&f.path)).unwrap().len();
        assert_eq!(len, f.bytes, "{}", f.path);
    }
    for kind in [
        FileKind::Mp4,
        FileKind::HlsMaster,
        FileKind::HlsMedia,
        FileKind::Audio,
    ] {
        assert!(m.of_kind(kind).count() > 0, "{kind:?} in manifest");
    }
}

#[test]
fn segmented_job_is_frame_exact_for_two_segment_counts() {
    let dir = tempfile::tempdir().unwrap();
    let o = ClipOptions {
        seconds: 12.0,
        gop: 50,
        ..Default::default()
    };
    let src = clip(dir.path(), "src.mp4", &o);
    let r = rendition("r240", 240, 20);
    for (target, want_segments) in [(3.0, 4), (2.0, 6)] {
        let out = dir.path().join(format!("out-{target}"));
        let (p, m) = run_job(&src, &out, target, std::slice::from_ref(&r));
        assert_eq!(p.segments.len(), want_segments);
        check_job(&src, &out, &p, &m);
        // Each part starts at its segment's start on the source timeline
        // (plus mpegtsmux's constant base).
        let base = field(
            &ffprobe(
                &out.join(part_key("r240", 0)),
                "v:0",
                "stream=start_time",
                false,
            ),
            "start_time",
        );
        for s in &p.segments {
            let st = field(
                &ffprobe(
                    &out.join(part_key("r240", s.index)),
                    "v:0",
                    "stream=start_time",
                    false,
                ),
                "start_time",
            );
            assert!(
                (st - base - s.start_ns as f64 / 1e9).abs() < 1e-4,
                "part {} starts at {st}",
                s.index
            );
        }
    }
}

#[test]
fn ntsc_job_is_frame_exact_and_stitch_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let o = ClipOptions {
        seconds: 9.0,
        fps_num: 30000,
        fps_den: 1001,
        gop: 60,
        ..Default::default()
    };
    let src = clip(dir.path(), "src.mp4", &o);
    let out = dir.path().join("out");
    let r = rendition("ntsc", 240, 22);
    let (p, m) = run_job(&src, &out, 3.0, std::slice::from_ref(&r));
    assert_eq!(p.segments.len(), 3);
    check_job(&src, &out, &p, &m);
    // A second stitch overwrites everything with identical results.
    let again = stitch::stitch(
        &StitchWork {
            output_dir: out.clone(),
            plan: p.clone(),
            renditions: vec![r],
            formats: vec![OutputFormat::Mp4, OutputFormat::Hls],
        },
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(again.files.len(), m.files.len());
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("tmp") || n.starts_with(".stitch"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Encode `src` as 4 segments joined by `cat`, and as one single-pass
/// segment with the same rendition: (joined parts, single pass).
fn segmented_and_single_pass(dir: &Path, src: &Path, r: &Rendition) -> (PathBuf, PathBuf) {
    let facts = probe::probe(src).unwrap();
    let p = plan(
        &facts,
        &PlanOptions {
            target_seconds: 3.0,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(p.segments.len(), 4);
    let mut parts = vec![];
    for s in &p.segments {
        let output = dir.join(part_key(&r.name, s.index));
        let w = SegmentWork::of_plan(&p, *s, r.clone(), src.to_path_buf(), output.clone());
        segment::encode_segment(&w, &mut |_, _| {}).unwrap();
        parts.push(std::fs::read(output).unwrap());
    }
    let joined = dir.join(format!("{}-joined.ts", r.name));
    std::fs::write(&joined, parts.concat()).unwrap();
    let whole = plan(
        &facts,
        &PlanOptions {
            target_seconds: 1000.0,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(whole.segments.len(), 1);
    let single = dir.join(format!("{}-single.ts", r.name));
    segment::encode_segment(
        &SegmentWork::of_plan(
            &p,
            whole.segments[0],
            r.clone(),
            src.to_path_buf(),
            single.clone(),
        ),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(ffprobe_frames(&joined), facts.frames);
    (joined, single)
}

/// 12 s of video only, 2 s GOP: the clip the quality tests encode.
fn quality_clip(dir: &Path) -> (PathBuf, ClipOptions) {
    let o = ClipOptions {
        seconds: 12.0,
        gop: 50,
        audio: false,
        ..Default::default()
    };
    (clip(dir, "src.mp4", &o), o)
}

#[test]
fn segmented_quality_matches_single_pass() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = quality_clip(dir.path());
    let (joined, single) = segmented_and_single_pass(dir.path(), &src, &rendition("q", 240, 20));
    let seg_psnr = psnr(&joined, &src);
    let single_psnr = psnr(&single, &src);
    eprintln!("PSNR vs source: segmented {seg_psnr:.3} dB, single pass {single_psnr:.3} dB");
    // The bar: segmenting may not cost more than 0.05 dB against a
    // single-pass encode with the same settings (it may well gain: each
    // part starts with an IDR).
    assert!(
        seg_psnr >= single_psnr - 0.05,
        "segmented {seg_psnr} dB vs single pass {single_psnr} dB"
    );
}

/// MD5 of every decoded video frame, in presentation order. Timestamps are
/// left out: parts keep the source timeline, the source starts at 0.
fn frame_md5s(path: &Path) -> Vec<String> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args([
            "-map", "0:v:0", "-pix_fmt", "yuv420p", "-f", "framemd5", "-",
        ])
        .output()
        .expect("ffmpeg runs");
    assert!(out.status.success(), "framemd5 {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit(',').next().map(|m| m.trim().to_string()))
        .collect()
}

/// Lossless (CRF 0): every stitched frame equals the single-pass frame, and
/// both equal the decoded source: segmenting adds, drops or alters nothing.
#[test]
fn lossless_segmented_frames_equal_single_pass_and_source() {
    let dir = tempfile::tempdir().unwrap();
    let (src, o) = quality_clip(dir.path());
    let (joined, single) = segmented_and_single_pass(dir.path(), &src, &rendition("ll", 240, 0));
    let want = frame_md5s(&src);
    assert_eq!(want.len() as u64, o.frames());
    let got_single = frame_md5s(&single);
    let got_joined = frame_md5s(&joined);
    let diff = |got: &[String]| got.iter().zip(&want).filter(|(a, b)| a != b).count();
    assert_eq!(got_single.len(), want.len());
    assert_eq!(got_joined.len(), want.len());
    assert_eq!(
        diff(&got_single),
        0,
        "single pass frames differ from source"
    );
    assert_eq!(diff(&got_joined), 0, "segmented frames differ from source");
    eprintln!(
        "lossless: {} of {} frames identical (segmented, single pass, source)",
        want.len(),
        want.len()
    );
}

/// A failure must be permanent, one line, and quick.
fn assert_permanent<T: std::fmt::Debug>(
    what: &str,
    started: Instant,
    r: Result<T, jetcode::media::MediaError>,
) {
    let e = r.expect_err(what);
    assert!(e.permanent, "{what}: {e:?}");
    assert!(
        !e.message.contains('\n') && !e.message.is_empty(),
        "{what}: {e:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{what} took {:?}",
        started.elapsed()
    );
    eprintln!("{what}: {}", e.message);
}

#[test]
fn bad_input_fails_permanently_and_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let good = clip(
        dir.path(),
        "good.mp4",
        &ClipOptions {
            seconds: 4.0,
            ..Default::default()
        },
    );
    let bytes = std::fs::read(&good).unwrap();
    // mp4mux writes moov at the end: half a file has no index at all.
    let truncated = dir.path().join("truncated.mp4");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let garbage = dir.path().join("garbage.mp4");
    std::fs::write(
        &garbage,
        (0..200_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let text = dir.path().join("notes.mkv");
    std::fs::write(&text, "this is not a video\n".repeat(100)).unwrap();
    let empty = dir.path().join("empty.ts");
    std::fs::write(&empty, b"").unwrap();
    let audio_only = dir.path().join("audio.m4a");
    let st = Command::new("ffmpeg")
        .args([
            "-v", "error", "-f", "lavfi", "-i", "sine=d=1", "-c:a", "aac", "-y",
        ])
        .arg(&audio_only)
        .status()
        .unwrap();
    assert!(st.success());

    for bad in [
        &truncated,
        &garbage,
        &text,
        &empty,
        &audio_only,
        &dir.path().join("missing.mp4"),
    ] {
        let t = Instant::now();
        assert_permanent(&format!("probe {}", bad.display()), t, probe::probe(bad));
    }
    // A segment task on a broken source fails the same way.
    let facts = probe::probe(&good).unwrap();
    let p = plan(&facts, &PlanOptions::default()).unwrap();
    let t = Instant::now();
    let r = segment::encode_segment(
        &SegmentWork::of_plan(
            &p,
            p.segments[0],
            rendition("x", 240, 23),
            garbage.clone(),
            dir.path().join("x.ts"),
        ),
        &mut |_, _| {},
    );
    assert_permanent("segment of garbage", t, r);
    assert!(!dir.path().join("x.ts").exists());
    // Unsupported codec is refused up front.
    let mut vp9 = rendition("v", 240, 30);
    vp9.codec = jetcode::Codec::Vp9;
    let t = Instant::now();
    let r = segment::encode_segment(
        &SegmentWork::of_plan(
            &p,
            p.segments[0],
            vp9,
            good.clone(),
            dir.path().join("v.ts"),
        ),
        &mut |_, _| {},
    );
    assert_permanent("vp9", t, r);
    // The child verb reports it as a permanent exit code.
    assert_eq!(
        jetcode::media::child::run("probe", &serde_json::to_string(&garbage).unwrap()),
        jetcode::task::EXIT_PERMANENT
    );
    assert_eq!(
        jetcode::media::child::run("probe", "{not json"),
        jetcode::task::EXIT_PERMANENT
    );
    assert_eq!(
        jetcode::media::child::run("probe", &serde_json::to_string(&good).unwrap()),
        0
    );
}

#[test]
fn h265_segment_keeps_timeline() {
    if Command::new("gst-inspect-1.0")
        .arg("x265enc")
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        eprintln!("x265enc missing; skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = clip(
        dir.path(),
        "src.mp4",
        &ClipOptions {
            seconds: 4.0,
            audio: false,
            ..Default::default()
        },
    );
    let p = plan_of(&src, 2.0);
    let mut r = rendition("hevc", 240, 28);
    r.codec = jetcode::Codec::H265;
    r.preset = "ultrafast".into();
    let s = p.segments[1];
    let out = dir.path().join("p.ts");
    let n = segment::encode_segment(
        &SegmentWork::of_plan(&p, s, r, src.clone(), out.clone()),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(n, s.frames());
    assert_eq!(ffprobe_frames(&out), s.frames());
    let v = ffprobe(&out, "v:0", "stream=codec_name", false);
    assert!(v.iter().any(|(_, c)| c == "hevc"), "{v:?}");
}

/// A chunk of three segments encoded to H.265 in one run (x265 with
/// B-frames: IDRs whose decode time precedes their presentation) is cut
/// into three parts, each exactly its segment's frames and starting with
/// an IDR; and to H.264 alongside from the same decode.
#[test]
fn chunk_is_cut_into_parts_at_forced_idrs_for_h265_and_h264() {
    let dir = tempfile::tempdir().unwrap();
    let src = clip(
        dir.path(),
        "src.mp4",
        &ClipOptions {
            seconds: 6.0,
            audio: false,
            ..Default::default()
        },
    );
    let p = plan_of(&src, 2.0);
    assert_eq!(p.segments.len(), 3);
    let mut hevc = rendition("hevc", 240, 28);
    hevc.codec = jetcode::Codec::H265;
    hevc.preset = "veryfast".into();
    let mut avc = rendition("avc", 180, 26);
    avc.preset = "veryfast".into();
    let parts = |name: &str| -> Vec<PathBuf> {
        (0..3)
            .map(|i| dir.path().join(format!("{name}-{i}.ts")))
            .collect()
    };
    let work = SegmentWork::of_chunk(&p, p.segments.clone(), src.clone())
        .with_parts(hevc, parts("hevc"))
        .with_parts(avc, parts("avc"));
    let stats = segment::encode_segment_stats(&work, &mut |_, _| {}).unwrap();
    assert_eq!(stats.frames, p.frames);
    for name in ["hevc", "avc"] {
        for (part, s) in parts(name).iter().zip(&p.segments) {
            common::assert_part_starts_with_keyframe(part, s.frames());
        }
    }
}

/// A segment reads its source through the block cache, and only the part it
/// needs: the moov at the end plus its own frames, each block once. With
/// audio interleaved: the discarded audio must not keep the demuxer
/// reading to the end of the file after the segment's last frame.
#[test]
fn segment_child_reads_only_its_range_through_the_block_cache() {
    use jetcode::media::source::BLOCK_SIZE;
    let dir = tempfile::tempdir().unwrap();
    let src = clip(
        dir.path(),
        "noise.mp4",
        &ClipOptions {
            seconds: 32.0,
            audio: true,
            noise: true,
            ..Default::default()
        },
    );
    let size = std::fs::metadata(&src).unwrap().len();
    let blocks = size.div_ceil(BLOCK_SIZE);
    assert!(
        blocks >= 20,
        "clip too small to measure reads: {size} bytes"
    );
    let p = plan_of(&src, 4.0);
    assert_eq!(p.segments.len(), 8);
    let s = p.segments[4];
    let work = SegmentWork::of_plan(
        &p,
        s,
        rendition("r", 120, 30),
        src.clone(),
        dir.path().join("p.ts"),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_jetcode"))
        .args(["media", "segment", "--task"])
        .arg(serde_json::to_string(&work).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let done: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v.get("summary").is_some())
        .unwrap_or_else(|| panic!("no summary in {stdout}"));
    assert_eq!(done["frames"], s.frames());
    let gets = done["summary"]["source_gets"].as_u64().unwrap();
    let bytes = done["summary"]["source_bytes"].as_u64().unwrap();
    eprintln!("segment 5/8 read {bytes} of {size} bytes in {gets} GETs ({blocks} blocks)");
    assert!(gets >= 2, "moov and media were read: {gets}");
    // An eighth of the clip, plus the head and the moov, in whole blocks.
    assert!(
        bytes < size / 3,
        "an eighth of the clip needs well under a third of it: {bytes} of {size}"
    );
    assert!(
        gets <= blocks,
        "at most one GET per block of the file: {gets} > {blocks}"
    );
    assert_eq!(ffprobe_frames(&work.outputs[0].parts[0]), s.frames());
}

/// The containers sources come in: Matroska (also starting 23 ms late, as
/// after an audio-primed remux) and MPEG-TS (starting at 1.4 s) remuxed by
/// ffmpeg, and WebM with VP9 + Opus.
#[test]
fn mkv_ts_and_webm_sources_are_frame_exact() {
    let dir = tempfile::tempdir().unwrap();
    let o = ClipOptions {
        seconds: 6.0,
        gop: 25,
        ..Default::default()
    };
    let mp4 = clip(dir.path(), "src.mp4", &o);
    let copy: &[&str] = &["-c", "copy"];
    let vp9: &[&str] = &[
        "-c:v",
        "libvpx-vp9",
        "-deadline",
        "realtime",
        "-cpu-used",
        "8",
        "-g",
        "25",
        "-b:v",
        "0",
        "-crf",
        "30",
        "-c:a",
        "libopus",
    ];
    let late: &[&str] = &["-c", "copy", "-output_ts_offset", "0.023"];
    // What most real sources are: libx264 with B-frames (PTS != DTS, an MP4
    // edit list) and ffmpeg's AAC with priming.
    let bframes: &[&str] = &[
        "-c:v", "libx264", "-preset", "veryfast", "-bf", "3", "-g", "25", "-c:a", "aac",
    ];
    for (name, args) in [
        ("bframes.mp4", bframes),
        ("bframes.mkv", bframes),
        ("src.mkv", copy),
        ("late.mkv", late),
        ("src.ts", copy),
        ("src.webm", vp9),
    ] {
        let src = dir.path().join(name);
        let st = Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-i"])
            .arg(&mp4)
            .args(args)
            .arg(&src)
            .status()
            .unwrap();
        assert!(st.success(), "ffmpeg {name}");
        let facts = probe::probe(&src).unwrap_or_else(|e| panic!("probe {name}: {e:?}"));
        assert_eq!(facts.frames, o.frames(), "{name}");
        let out = dir.path().join(format!("out-{name}"));
        let (p, m) = run_job(&src, &out, 2.0, &[rendition("r240", 240, 26)]);
        assert_eq!(p.segments.len(), 3, "{name}");
        check_job(&src, &out, &p, &m);
    }
}

/// A segment that starts on a source keyframe seeks to that keyframe, not
/// to the one before: its decoder produces its own frames and the one that
/// ends it, not a whole extra GOP (counted by the child itself).
#[test]
fn keyframe_aligned_segments_decode_only_their_own_frames() {
    let dir = tempfile::tempdir().unwrap();
    let o = ClipOptions {
        seconds: 12.0,
        gop: 50,
        ..Default::default()
    };
    let src = clip(dir.path(), "src.mp4", &o);
    let p = plan_of(&src, 2.0);
    let r = rendition("r120", 120, 30);
    assert!(p.segments.iter().all(|s| s.starts_on_keyframe));
    for s in &p.segments {
        let work = SegmentWork::of_plan(
            &p,
            *s,
            r.clone(),
            src.clone(),
            dir.path().join(part_key(&r.name, s.index)),
        );
        let stats = segment::encode_segment_stats(&work, &mut |_, _| {}).unwrap();
        assert_eq!(stats.frames, s.frames());
        assert!(
            stats.decoded <= s.frames() + 3,
            "segment {} decoded {} frames for {}",
            s.index,
            stats.decoded,
            s.frames()
        );
    }
}

/// A cut the encoder coded as an ordinary P-frame (scene-cut detection
/// off, B-frames on, one keyframe) is found from packet sizes alone, and
/// the planner moves the nearest boundary onto it: 4.2 s of a moving test
/// pattern, then a detailed picture, 8 s in all cut in two 4 s halves.
/// Sizes place a cut within the B-frames shown just before the first
/// P-frame of the new scene (frames 102-105 here, with 3 B-frames): with
/// some cell patterns the pyramid's middle B-frame, 103, is the big one.
/// The pattern's seed is fixed so a run is reproducible.
#[test]
fn probe_finds_a_cut_without_a_keyframe_and_the_plan_cuts_there() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("cut.mp4");
    let ok = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc2=s=320x240:r=25:d=4.2")
        .args([
            "-f",
            "lavfi",
            "-i",
            "cellauto=s=320x240:r=25:rule=110:seed=1",
        ])
        .args(["-filter_complex"])
        .arg("[1:v]trim=end_frame=95,setpts=PTS-STARTPTS[m];[0:v][m]concat=n=2:v=1,format=yuv420p")
        .args(["-c:v", "libx264", "-preset", "veryfast", "-bf", "3"])
        .args(["-x264-params", "scenecut=0:keyint=250"])
        .arg(&src)
        .status()
        .expect("ffmpeg")
        .success();
    assert!(ok, "ffmpeg");
    let f = probe::probe(&src).unwrap();
    assert_eq!(f.frames, 200);
    assert_eq!(f.keyframes, vec![0]);
    assert_eq!(f.scene_changes.len(), 1, "{:?}", f.scene_changes);
    let found = f.scene_changes[0];
    assert!((102..=105).contains(&found), "cut at 105, found {found}");
    let p = plan(
        &f,
        &PlanOptions {
            target_seconds: 4.0,
            ..Default::default()
        },
    )
    .unwrap();
    let cuts: Vec<u64> = p.segments.iter().map(|s| s.start_frame).collect();
    assert_eq!(cuts, vec![0, found]);
    assert_eq!(p.cuts.scene_change, 1);
}
