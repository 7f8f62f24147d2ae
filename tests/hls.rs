//! HLS and manifest tests: the real stitch on real parts, checked with
//! ffprobe. What the parts hold decides the frame checks; playlists carry
//! the real segment times, the measured audio and an I-frame playlist each
//! of whose byte ranges decodes alone.
#![cfg(feature = "media")]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{ffmpeg, ffprobe_entries as ffprobe};
use jetcode::job::{OutputFormat, Rendition};
use jetcode::manifest::{FileKind, Manifest};
use jetcode::media::testsrc::{generate_clip, ClipOptions};
use jetcode::media::{audio, probe, segment, stitch};
use jetcode::plan::{ladder, plan, Plan, PlanOptions, Segment};
use jetcode::subjects::{part_key, AUDIO_PART_KEY};
use jetcode::task::{AudioWork, SegmentWork, StitchWork};

fn rendition(name: &str, height: u32, crf: u32, preset: &str) -> Rendition {
    serde_json::from_value(
        serde_json::json!({"name": name, "height": height, "crf": crf, "preset": preset}),
    )
    .expect("rendition")
}

fn get<'a>(v: &'a [(String, String)], k: &str) -> &'a str {
    v.iter()
        .find(|(key, _)| key == k)
        .map(|(_, val)| val.as_str())
        .unwrap_or_else(|| panic!("no {k} in {v:?}"))
}

fn frames_of(path: &Path) -> u64 {
    let v = ffprobe(
        path,
        &[
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames",
        ],
    );
    get(&v, "nb_read_frames").parse().unwrap()
}

/// Probe and plan `src` as the planner does (ladder included), and the
/// renditions as dispatch hands them to the stitch (at their planned size).
fn plan_job(src: &Path, target_seconds: f64, spec: &[Rendition]) -> (Plan, Vec<Rendition>) {
    let facts = probe::probe(src).expect("probe");
    let mut p = plan(
        &facts,
        &PlanOptions {
            target_seconds,
            ..Default::default()
        },
    )
    .expect("plan");
    (p.ladder, p.dropped) = ladder(spec, &facts);
    let renditions = spec
        .iter()
        .filter_map(|r| {
            let rung = p.ladder.iter().find(|g| g.name == r.name)?;
            let mut r = r.clone();
            r.width = Some(rung.width);
            r.height = rung.height;
            Some(r)
        })
        .collect();
    (p, renditions)
}

fn encode_part(src: &Path, out: &Path, p: &Plan, r: &Rendition, s: Segment) -> u64 {
    segment::encode_segment(
        &SegmentWork::of_plan(
            p,
            s,
            r.clone(),
            src.to_path_buf(),
            out.join(part_key(&r.name, s.index)),
        ),
        &mut |_, _| {},
    )
    .expect("segment")
}

/// Encode every part and the audio of a planned job.
fn encode_job(src: &Path, out: &Path, p: &Plan, renditions: &[Rendition]) {
    for r in renditions {
        for s in &p.segments {
            assert_eq!(encode_part(src, out, p, r, *s), s.frames());
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
}

fn run_stitch(
    out: &Path,
    p: &Plan,
    renditions: &[Rendition],
) -> Result<Manifest, jetcode::media::MediaError> {
    stitch::stitch(
        &StitchWork {
            output_dir: out.to_path_buf(),
            plan: p.clone(),
            renditions: renditions.to_vec(),
            formats: vec![OutputFormat::Mp4, OutputFormat::Hls],
        },
        &mut |_, _| {},
    )
}

/// A playlist's entries: (EXTINF seconds, byte range (length, offset), URI).
type Entry = (f64, Option<(u64, u64)>, String);

fn entries(text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    let (mut dur, mut range) = (None, None);
    for l in text.lines() {
        if let Some(d) = l.strip_prefix("#EXTINF:") {
            dur = Some(d.trim_end_matches(',').parse::<f64>().unwrap());
        } else if let Some(r) = l.strip_prefix("#EXT-X-BYTERANGE:") {
            let (len, off) = r.split_once('@').unwrap();
            range = Some((len.parse().unwrap(), off.parse().unwrap()));
        } else if !l.starts_with('#') && !l.is_empty() {
            // A master playlist's variants have no EXTINF.
            out.push((dur.take().unwrap_or(0.0), range.take(), l.into()));
        }
    }
    out
}

/// RFC 8216: every EXTINF rounded to the nearest integer is at most the
/// target duration.
fn assert_target_duration(text: &str) {
    let target: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-TARGETDURATION:"))
        .expect("target duration")
        .parse()
        .unwrap();
    for (d, _, uri) in entries(text) {
        assert!(
            d.round() as u64 <= target,
            "{uri}: EXTINF {d} > target {target}"
        );
    }
}

/// Attributes of a master playlist tag line.
fn attrs(line: &str) -> HashMap<String, String> {
    let body = line.split_once(':').unwrap().1;
    let mut out = HashMap::new();
    let (mut key, mut val, mut in_key, mut quoted) = (String::new(), String::new(), true, false);
    for c in body.chars().chain(std::iter::once(',')) {
        match c {
            '"' => quoted = !quoted,
            '=' if in_key => in_key = false,
            ',' if !quoted => {
                out.insert(std::mem::take(&mut key), std::mem::take(&mut val));
                in_key = true;
            }
            c if in_key => key.push(c),
            c => val.push(c),
        }
    }
    out
}

/// Variants of a master playlist in order: (attributes, URI).
fn variants(master: &str) -> Vec<(HashMap<String, String>, String)> {
    let lines: Vec<_> = master.lines().collect();
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("#EXT-X-STREAM-INF:"))
        .map(|(i, l)| (attrs(l), lines[i + 1].to_string()))
        .collect()
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A variable-frame-rate source (30 fps for 4 s, then 15 fps) with mono
/// audio: segment times, EXTINF, TARGETDURATION and the MP4 check follow
/// the real frame times; the master names the peak frame rate, the encoded
/// size, the audio's own channel count and bandwidths measured from the
/// files; the manifest lists every delivered file and the source facts.
#[test]
fn vfr_source_playlists_master_and_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("vfr.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240:rate=30:duration=8",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:duration=12",
        "-vf",
        "setpts='if(lt(N,120),N/30,4+(N-120)/15)/TB'",
        "-fps_mode",
        "passthrough",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-g",
        "30",
        "-c:a",
        "aac",
        "-ac",
        "1",
        "-metadata:s:a:0",
        "language=fra",
        src.to_str().unwrap(),
    ]);
    let spec = [
        rendition("r240", 240, 24, "veryfast"),
        rendition("r120", 120, 24, "veryfast"),
        rendition("r480", 480, 24, "veryfast"),
    ];
    let (p, rs) = plan_job(&src, 3.0, &spec);
    assert!(p.vfr, "source is variable rate");
    assert_eq!(p.frames, 240);
    assert_eq!(rs.len(), 2, "r480 is above the source: dropped");
    assert_eq!(p.dropped.len(), 1);
    // 120 frames 1/30 s apart, 120 frames 1/15 s apart: the last frame
    // starts at 11.933 s.
    let real = p.duration_ns() as f64 / 1e9;
    assert!((real - 11.967).abs() < 0.04, "real span {real} s");
    let out = dir.path().join("out");
    encode_job(&src, &out, &p, &rs);
    let m = run_stitch(&out, &p, &rs).expect("stitch");

    // MP4s: every frame, over the real span (the stitch verified it too).
    for r in &rs {
        let mp4 = out.join(format!("{}.mp4", r.name));
        assert_eq!(frames_of(&mp4), 240, "{}", mp4.display());
        let v = ffprobe(
            &mp4,
            &[
                "-select_streams",
                "v:0",
                "-show_entries",
                "stream=width,height,duration",
            ],
        );
        assert_eq!(
            (get(&v, "width"), get(&v, "height")),
            (
                r.width.unwrap().to_string().as_str(),
                r.height.to_string().as_str()
            )
        );
        let d: f64 = get(&v, "duration").parse().unwrap();
        assert!((d - real).abs() < 0.07, "{}: {d} s vs {real} s", r.name);
    }

    // Media playlists: EXTINF are the segment times and add up to the real
    // span; the target covers every rounded EXTINF; ffprobe reads them.
    for r in &rs {
        let text = read(out.join(format!("hls/{}.m3u8", r.name)));
        assert_target_duration(&text);
        let e = entries(&text);
        assert_eq!(e.len(), p.segments.len());
        for (s, (d, _, uri)) in p.segments.iter().zip(&e) {
            assert!((d - s.duration_ns() as f64 / 1e9).abs() < 1e-6);
            assert_eq!(uri, &format!("../{}", part_key(&r.name, s.index)));
        }
        let sum: f64 = e.iter().map(|x| x.0).sum();
        assert!((sum - real).abs() < 1e-3, "EXTINF sum {sum} vs {real}");
        assert_eq!(frames_of(&out.join(format!("hls/{}.m3u8", r.name))), 240);
    }
    assert_target_duration(&read(out.join("hls/audio.m3u8")));

    // Master.
    let master_path = out.join("hls/master.m3u8");
    let master = read(master_path.clone());
    eprintln!("{master}");
    let media = master
        .lines()
        .find(|l| l.starts_with("#EXT-X-MEDIA:"))
        .map(attrs)
        .expect("audio rendition");
    assert_eq!(media["CHANNELS"], "1", "mono source, mono AAC: {master}");
    assert_eq!(media["LANGUAGE"], "fr", "the source's language: {master}");
    let vs = variants(&master);
    assert_eq!(vs.len(), 2);
    let audio_bytes = std::fs::metadata(out.join(AUDIO_PART_KEY)).unwrap().len();
    let audio_s = p.audio_duration_ns as f64 / 1e9;
    for (a, uri) in &vs {
        let name = uri.trim_end_matches(".m3u8");
        let r = rs.iter().find(|r| r.name == name).unwrap();
        assert_eq!(a["FRAME-RATE"], "30.000", "peak rate of a 30/15 fps source");
        assert_eq!(
            a["RESOLUTION"],
            format!("{}x{}", r.width.unwrap(), r.height)
        );
        assert!(a["CODECS"].starts_with("avc1.") && a["CODECS"].ends_with(",mp4a.40.2"));
        let bw: u64 = a["BANDWIDTH"].parse().unwrap();
        let avg: u64 = a["AVERAGE-BANDWIDTH"].parse().unwrap();
        assert!(bw >= avg, "{a:?}");
        // The average is what the files hold: the parts plus the audio.
        let video_bytes: u64 = p
            .segments
            .iter()
            .map(|s| {
                std::fs::metadata(out.join(part_key(name, s.index)))
                    .unwrap()
                    .len()
            })
            .sum();
        let want = video_bytes as f64 * 8.0 / real + audio_bytes as f64 * 8.0 / audio_s;
        assert!(
            (avg as f64 - want).abs() / want < 0.02,
            "{name}: AVERAGE-BANDWIDTH {avg}, files say {want:.0}"
        );
    }
    // The smaller rung is not first only by accident: both are under 720
    // lines, so the higher one leads, then by bandwidth.
    assert_eq!(vs[0].1, "r240.m3u8");
    let hv = ffprobe(
        &master_path,
        &[
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=width,height",
        ],
    );
    assert_eq!(get(&hv, "height"), "240");
    ffprobe(
        &master_path,
        &[
            "-select_streams",
            "a:0",
            "-show_entries",
            "stream=codec_name",
        ],
    );

    // Manifest: every delivered file, with the source facts.
    let on_disk: Manifest =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(on_disk, m);
    assert_eq!((m.frames, m.undecodable_frames), (240, None));
    assert!((m.duration_s - real).abs() < 1e-6);
    let source = m.source.as_ref().expect("source facts");
    assert!(source.vfr && !source.interlaced && source.orientation.is_none());
    let a = m.audio.as_ref().expect("audio facts");
    assert_eq!((a.channels, a.source_channels), (1, Some(1)));
    assert_eq!(a.stream, p.audio_stream);
    assert_eq!(
        a.language.as_deref(),
        Some("fre"),
        "ISO 639-2 as the TS says"
    );
    assert_eq!(m.dropped, p.dropped);
    for r in &rs {
        let segs: Vec<_> = m
            .of_kind(FileKind::HlsSegment)
            .filter(|f| f.rendition.as_deref() == Some(&r.name))
            .collect();
        assert_eq!(segs.len(), p.segments.len());
        assert_eq!(segs.iter().map(|f| f.frames.unwrap()).sum::<u64>(), 240);
        for (f, s) in segs.iter().zip(&p.segments) {
            assert_eq!(f.path, part_key(&r.name, s.index));
            assert_eq!(f.frames, Some(s.frames()));
            assert!((f.duration_s - s.duration_ns() as f64 / 1e9).abs() < 1e-9);
        }
        assert!(m
            .of_kind(FileKind::HlsIframes)
            .any(|f| f.path == format!("hls/{}_iframes.m3u8", r.name)));
    }
    // Everything a playlist names is in the manifest, with its size.
    let listed: HashMap<_, _> = m.files.iter().map(|f| (f.path.clone(), f)).collect();
    for pl in [
        "hls/master.m3u8",
        "hls/audio.m3u8",
        "hls/r240.m3u8",
        "hls/r120_iframes.m3u8",
    ] {
        assert!(listed.contains_key(pl), "{pl} in manifest");
        let text = read(out.join(pl));
        let uris = entries(&text).into_iter().map(|e| e.2).chain(
            text.lines()
                .filter(|l| l.contains("URI=\""))
                .map(|l| attrs(l)["URI"].clone()),
        );
        for uri in uris {
            let rel = match uri.strip_prefix("../") {
                Some(r) => r.to_string(),
                None => format!("hls/{uri}"),
            };
            let f = listed
                .get(&rel)
                .unwrap_or_else(|| panic!("{rel} not in manifest"));
            assert_eq!(std::fs::metadata(out.join(&rel)).unwrap().len(), f.bytes);
        }
    }
    for f in &m.files {
        assert!(out.join(&f.path).is_file(), "{}", f.path);
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(json["dropped"][0]["name"], "r480");
    assert_eq!(json["source"]["vfr"], true);
}

/// Every entry of every I-frame playlist (H.264 and H.265 renditions) is a
/// byte range that decodes alone to exactly one key frame; entries last
/// until the next one and add up to the video; the master points at the
/// I-frame playlists.
#[test]
fn iframe_playlists_decode_one_frame_per_range() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.mp4");
    generate_clip(
        &src,
        &ClipOptions {
            seconds: 8.0,
            gop: 50,
            ..Default::default()
        },
    )
    .unwrap();
    let mut hevc = rendition("c", 240, 30, "ultrafast");
    hevc.codec = jetcode::Codec::H265;
    let spec = [
        rendition("a", 240, 26, "veryfast"),
        rendition("b", 120, 26, "veryfast"),
        hevc,
    ];
    let (p, rs) = plan_job(&src, 2.0, &spec);
    assert_eq!(p.segments.len(), 4);
    let out = dir.path().join("out");
    encode_job(&src, &out, &p, &rs);
    run_stitch(&out, &p, &rs).expect("stitch");
    let master = read(out.join("hls/master.m3u8"));
    let iframe_lines: Vec<_> = master
        .lines()
        .filter(|l| l.starts_with("#EXT-X-I-FRAME-STREAM-INF:"))
        .map(attrs)
        .collect();
    assert_eq!(iframe_lines.len(), rs.len(), "{master}");
    for r in &rs {
        let a = iframe_lines
            .iter()
            .find(|a| a["URI"] == format!("{}_iframes.m3u8", r.name))
            .unwrap_or_else(|| panic!("no I-frame stream for {}: {master}", r.name));
        assert_eq!(
            a["RESOLUTION"],
            format!("{}x{}", r.width.unwrap(), r.height)
        );
        let codec = if r.name == "c" { "hvc1." } else { "avc1." };
        assert!(a["CODECS"].starts_with(codec) && !a["CODECS"].contains("mp4a"));
        let bw: u64 = a["BANDWIDTH"].parse().unwrap();
        assert!(bw > 0);

        let text = read(out.join(format!("hls/{}_iframes.m3u8", r.name)));
        assert!(text.contains("#EXT-X-VERSION:4\n") && text.contains("#EXT-X-I-FRAMES-ONLY\n"));
        assert_target_duration(&text);
        let e = entries(&text);
        assert!(e.len() >= p.segments.len(), "one per part at least: {text}");
        let sum: f64 = e.iter().map(|x| x.0).sum();
        let real = p.duration_ns() as f64 / 1e9;
        assert!((sum - real).abs() < 1e-3, "EXTINF sum {sum} vs {real}");
        // Each part's first entry is at its start, lasting until the next
        // entry.
        for s in &p.segments {
            let uri = format!("../{}", part_key(&r.name, s.index));
            let first = e.iter().find(|x| x.2 == uri).expect("part listed");
            assert_eq!(
                first.1.unwrap().1,
                0,
                "first entry of a part starts at its PAT"
            );
        }
        for (i, (d, range, uri)) in e.iter().enumerate() {
            let (len, off) = range.expect("byte range");
            let part = std::fs::read(out.join(uri.trim_start_matches("../"))).unwrap();
            let piece = &part[off as usize..(off + len) as usize];
            assert_eq!(len % 188, 0);
            assert_eq!(
                &piece[..3],
                &[0x47, 0x40, 0x00],
                "range starts with the PAT"
            );
            let file = dir.path().join(format!("{}-iframe-{i}.ts", r.name));
            std::fs::write(&file, piece).unwrap();
            let v = ffprobe(
                &file,
                &[
                    "-count_frames",
                    "-select_streams",
                    "v:0",
                    "-show_entries",
                    "stream=nb_read_frames:frame=key_frame,pict_type",
                ],
            );
            assert_eq!(get(&v, "nb_read_frames"), "1", "{uri} {len}@{off}: {v:?}");
            assert_eq!((get(&v, "key_frame"), get(&v, "pict_type")), ("1", "I"));
            assert!(*d > 0.0);
        }
    }
}

/// The stitch counts the frames the parts hold: a part one frame short (a
/// corrupt source frame the decoder skipped) is delivered and reported; a
/// part short by more than the allowance, a part with a frame too many, or
/// a part at another size than planned fails the stitch permanently.
#[test]
fn stitch_counts_frames_in_parts() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.mp4");
    generate_clip(
        &src,
        &ClipOptions {
            seconds: 6.0,
            gop: 25,
            ..Default::default()
        },
    )
    .unwrap();
    let r = rendition("r", 240, 28, "ultrafast");
    let (p, rs) = plan_job(&src, 2.0, std::slice::from_ref(&r));
    assert_eq!(p.segments.len(), 3);
    let out = dir.path().join("out");
    encode_job(&src, &out, &p, &rs);
    let r = &rs[0];
    let s = p.segments[1];
    assert_eq!(segment::undecodable_allowance(s.frames()), 1);
    let frame_ns = (s.end_ns - s.start_ns) / s.frames();
    // A part of segment 1 whose last `short` frames are missing.
    let shortened = |short: u64| Segment {
        end_frame: s.end_frame - short,
        end_ns: s.end_ns - short * frame_ns,
        ..s
    };
    let key = part_key(&r.name, s.index);
    let replace = |seg: Segment| {
        std::fs::remove_file(out.join(&key)).unwrap();
        encode_part(&src, &out, &p, r, seg);
    };

    replace(shortened(1));
    let m = run_stitch(&out, &p, &rs).expect("one frame short is delivered");
    assert_eq!((m.frames, m.undecodable_frames), (p.frames - 1, Some(1)));
    assert_eq!(frames_of(&out.join("r.mp4")), p.frames - 1);
    let part = m.files.iter().find(|f| f.path == key).unwrap();
    assert_eq!(part.frames, Some(s.frames() - 1));
    assert_eq!(
        m.of_kind(FileKind::Mp4).next().unwrap().frames,
        Some(p.frames - 1)
    );
    // The media playlist keeps the segment's time (the part keeps its
    // neighbours' timing); ffprobe reads the frames there are.
    assert_eq!(frames_of(&out.join("hls/r.m3u8")), p.frames - 1);

    replace(shortened(2));
    let e = run_stitch(&out, &p, &rs).expect_err("two short");
    assert!(e.permanent && e.message.contains(&key), "{e:?}");
    eprintln!("two short: {}", e.message);

    let longer = Segment {
        end_frame: s.end_frame + 1,
        end_ns: p.segments[2].start_ns + frame_ns,
        ..s
    };
    replace(longer);
    let e = run_stitch(&out, &p, &rs).expect_err("one too many");
    assert!(e.permanent && e.message.contains("more than"), "{e:?}");
    eprintln!("one too many: {}", e.message);

    replace(s);
    let mut wrong = rs.clone();
    wrong[0].width = Some(r.width.unwrap() - 2);
    let e = run_stitch(&out, &p, &wrong).expect_err("size differs from the plan");
    assert!(e.permanent && e.message.contains("plan says"), "{e:?}");
    eprintln!("wrong size: {}", e.message);
    let m = run_stitch(&out, &p, &rs).expect("restored");
    assert_eq!((m.frames, m.undecodable_frames), (p.frames, None));
}

/// With a rung above 720 lines the master leads with the 720 one, then
/// the rest by bandwidth; RESOLUTION is each rung's encoded size.
#[test]
fn master_leads_with_the_720_rung() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.mp4");
    generate_clip(
        &src,
        &ClipOptions {
            seconds: 2.0,
            width: 1600,
            height: 900,
            gop: 50,
            audio: false,
            ..Default::default()
        },
    )
    .unwrap();
    let spec = [
        rendition("low", 360, 30, "ultrafast"),
        rendition("top", 900, 30, "ultrafast"),
        rendition("mid", 720, 30, "ultrafast"),
    ];
    let (p, rs) = plan_job(&src, 2.0, &spec);
    assert_eq!(p.segments.len(), 1);
    let out = dir.path().join("out");
    encode_job(&src, &out, &p, &rs);
    run_stitch(&out, &p, &rs).expect("stitch");
    let master = read(out.join("hls/master.m3u8"));
    eprintln!("{master}");
    let vs = variants(&master);
    let order: Vec<_> = vs.iter().map(|(_, u)| u.as_str()).collect();
    assert_eq!(order, ["mid.m3u8", "top.m3u8", "low.m3u8"], "{master}");
    let res: Vec<_> = vs.iter().map(|(a, _)| a["RESOLUTION"].as_str()).collect();
    assert_eq!(res, ["1280x720", "1600x900", "640x360"]);
    // The probe's rate of this short clip is its own business; the master
    // says what the plan says, with three decimals.
    let fps = format!("{:.3}", p.max_fps());
    assert!(vs
        .iter()
        .all(|(a, _)| a["FRAME-RATE"] == fps && !a.contains_key("AUDIO")));
    let bw: Vec<u64> = vs
        .iter()
        .map(|(a, _)| a["BANDWIDTH"].parse().unwrap())
        .collect();
    assert!(bw[1] > bw[2], "by bandwidth after the first: {bw:?}");
    let iframes: Vec<_> = master
        .lines()
        .filter(|l| l.starts_with("#EXT-X-I-FRAME-STREAM-INF:"))
        .map(|l| attrs(l)["URI"].clone())
        .collect();
    assert_eq!(
        iframes,
        ["mid_iframes.m3u8", "top_iframes.m3u8", "low_iframes.m3u8"]
    );
    // ffmpeg's HLS demuxer opens the first variant.
    let out_null = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(out.join("hls/master.m3u8"))
        .args(["-map", "0:v:0", "-f", "null", "-"])
        .status()
        .unwrap();
    assert!(out_null.success());
}
