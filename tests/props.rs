//! Property tests over inputs that come from outside: job specs off the
//! wire and probe facts of arbitrary media. No panic on any of them; what
//! is accepted is well formed. The default case count keeps these fast;
//! `just fuzz` runs them with many more (PROPTEST_CASES).

use jetcode::job::{JobSpec, MAX_SPEC_BYTES};
use jetcode::plan::{self, AudioFacts, MediaLimits, PlanOptions, SourceFacts};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN/inf", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            proptest::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// URLs from the plausible to the hostile.
fn url() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("file:///srv/in/a.mp4")),
        Just(json!("file:///srv/out/j/")),
        Just(json!("file:///srv/in/")),
        Just(json!("file:///srv/in/../../etc/passwd")),
        Just(json!("file:///srv/%2e%2E/etc/passwd")),
        Just(json!("file:///srv/.%2e/x")),
        Just(json!("file:///srv/..%2fx")),
        Just(json!("file://host/srv/a.mp4")),
        Just(json!("s3://bucket/key")),
        Just(json!("http://x/a.mp4")),
        Just(json!("/etc/passwd")),
        Just(json!("")),
        "file:///[a-z0-9/._%-]{0,40}".prop_map(Value::from),
        ".{0,60}".prop_map(Value::from),
        any_json(),
    ]
}

fn rendition() -> impl Strategy<Value = Value> {
    let num = prop_oneof![
        any::<u32>().prop_map(Value::from),
        (0u32..5000).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        Just(json!(1.5)),
        Just(Value::Null),
    ];
    prop_oneof![
        prop_oneof![
            Just("h264-720p"),
            Just("h264-240p"),
            Just("hls-ladder"),
            Just("nope"),
            Just("")
        ]
        .prop_map(Value::from),
        (
            "[A-Za-z0-9_-]{0,70}",
            prop_oneof![
                Just("h264"),
                Just("h265"),
                Just("vp9"),
                Just("av1"),
                Just("x")
            ],
            num.clone(),
            num.clone(),
            num.clone(),
            num,
            prop_oneof![Just("veryfast"), Just("medium"), Just("warp")],
            proptest::option::of((".{0,8}", any_json())),
        )
            .prop_map(|(name, codec, w, h, crf, br, preset, extra)| {
                let mut o = json!({
                    "name": name, "codec": codec, "height": h, "preset": preset,
                });
                for (k, v) in [("width", w), ("crf", crf), ("bitrate", br)] {
                    if !v.is_null() {
                        o[k] = v;
                    }
                }
                if let Some((k, v)) = extra {
                    o[k] = v;
                }
                o
            }),
        any_json(),
    ]
}

fn valid_rendition() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop_oneof![
            Just("h264-1080p"),
            Just("h264-720p"),
            Just("h264-480p"),
            Just("h264-240p"),
            Just("hls-ladder"),
        ]
        .prop_map(Value::from),
        (
            "[a-z][a-z0-9_-]{0,10}",
            prop_oneof![Just("h264"), Just("h265")],
            proptest::option::of((8u32..=3840).prop_map(|w| w * 2)),
            (8u32..=2160).prop_map(|h| h * 2),
            proptest::option::of(0u32..=51),
            proptest::option::of(50u32..=200_000),
            prop_oneof![Just("veryfast"), Just("medium"), Just("slow")],
        )
            .prop_map(|(name, codec, w, h, crf, br, preset)| {
                let mut o = json!({"name": name, "codec": codec, "height": h, "preset": preset});
                if let Some(w) = w {
                    o["width"] = json!(w);
                }
                // Needs crf, bitrate or both.
                o["crf"] = json!(crf.unwrap_or(23));
                if let Some(b) = br {
                    o["bitrate"] = json!(b);
                }
                o
            }),
    ]
}

/// Objects shaped like a spec: every field mostly valid, sometimes
/// missing, hostile or of the wrong type, so both the accepting and the
/// refusing paths are walked.
fn spec_json() -> impl Strategy<Value = Value> {
    (
        proptest::option::of(prop_oneof![
            8 => "[A-Za-z0-9_-]{1,64}".prop_map(Value::from),
            1 => "[A-Za-z0-9_-]{0,70}".prop_map(Value::from),
            1 => any_json(),
        ]),
        prop_oneof![8 => "file:///srv/in/[a-z]{1,8}\\.mp4".prop_map(Value::from), 2 => url()],
        prop_oneof![8 => "file:///srv/out/[a-z0-9]{1,8}/".prop_map(Value::from), 2 => url()],
        prop_oneof![
            8 => proptest::collection::vec(valid_rendition(), 1..4),
            2 => proptest::collection::vec(rendition(), 0..10),
        ],
        proptest::option::of(prop_oneof![
            4 => Just(json!(["mp4"])),
            4 => Just(json!(["mp4", "hls"])),
            2 => Just(json!(["hls"])),
            1 => Just(json!([])),
            1 => Just(json!(["avi"])),
        ]),
        proptest::option::of(prop_oneof![
            8 => (2.0f64..=600.0).prop_map(Value::from),
            1 => (-10.0f64..1000.0).prop_map(Value::from),
            1 => any_json()
        ]),
        proptest::option::weighted(
            0.2,
            prop_oneof![(0.0f64..4000.0).prop_map(Value::from), any_json()],
        ),
        proptest::option::of(prop_oneof![8 => 0u8..=9, 1 => any::<u8>()]),
        prop_oneof![
            8 => proptest::collection::btree_map("[a-z]{1,10}", ".{0,40}", 0..4),
            1 => proptest::collection::btree_map(".{0,70}", ".{0,300}", 0..40),
        ],
        proptest::option::weighted(0.1, (".{0,10}", any_json())),
    )
        .prop_map(
            |(id, source, output, renditions, formats, seg, chunk, prio, labels, extra)| {
                let mut o = json!({"source": source, "output": output, "renditions": renditions});
                if let Some(id) = id {
                    o["id"] = id;
                }
                if let Some(f) = formats {
                    o["formats"] = f;
                }
                if let Some(s) = seg {
                    o["segment_seconds"] = s;
                }
                if let Some(c) = chunk {
                    o["chunk_seconds"] = c;
                }
                if let Some(p) = prio {
                    o["priority"] = json!(p);
                }
                if !labels.is_empty() {
                    o["labels"] = json!(labels);
                }
                if let Some((k, v)) = extra {
                    o[k] = v;
                }
                o
            },
        )
}

/// Parse and check one wire payload: never panics; an accepted spec is
/// valid and comes back unchanged through serde; a refusal is one line.
fn check_payload(bytes: &[u8]) -> Result<(), TestCaseError> {
    match JobSpec::from_json(bytes) {
        Ok(spec) => {
            prop_assert!(bytes.len() <= MAX_SPEC_BYTES);
            prop_assert!(spec.validate().is_ok());
            let wire = serde_json::to_vec(&spec).unwrap();
            let again = JobSpec::from_json(&wire)
                .map_err(|e| TestCaseError::fail(format!("re-parse: {e}")))?;
            prop_assert_eq!(&again, &spec);
            prop_assert!(!spec.resolved_renditions().unwrap().is_empty());
        }
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(!msg.contains('\n'), "multi-line: {msg}");
            prop_assert!(!e.problems.is_empty());
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn spec_shaped_json_parses_or_is_refused_in_one_line(v in spec_json()) {
        check_payload(&serde_json::to_vec(&v).unwrap())?;
    }

    #[test]
    fn any_json_parses_or_is_refused_in_one_line(v in any_json()) {
        check_payload(&serde_json::to_vec(&v).unwrap())?;
    }

    #[test]
    fn any_bytes_parse_or_are_refused_in_one_line(b in proptest::collection::vec(any::<u8>(), 0..512)) {
        check_payload(&b)?;
    }
}

/// Probe facts as a damaged or hostile file might produce them, sizes
/// bounded the way the worker's media limits bound them before planning.
fn facts() -> impl Strategy<Value = (SourceFacts, bool)> {
    (
        (
            1u64..200_000,
            prop_oneof![
                Just((30u32, 1u32)),
                Just((30000, 1001)),
                (0u32..300_000, 0u32..3000)
            ],
            any::<u64>(),
            0u32..10_000,
            0u32..10_000,
            (
                proptest::collection::vec(any::<u64>(), 0..64),
                proptest::collection::vec(any::<u64>(), 0..64),
            ),
            prop_oneof![
                Just(0u64),
                0u64..1_000_000_000,
                u64::MAX - 1_000_000_000_000..=u64::MAX,
                any::<u64>()
            ],
            any::<i64>(),
        ),
        (
            proptest::option::of((any::<u32>(), any::<u32>(), any::<u64>())),
            prop_oneof![Just(0u64), u64::MAX - 1_000_000..=u64::MAX, any::<u64>()],
            (0u32..5, 0u32..5),
            proptest::option::of(prop_oneof![
                Just("rotate-90".to_string()),
                Just("flip-rotate-270".to_string()),
                ".{0,12}"
            ]),
            any::<bool>(),
            proptest::option::of(Just("smpte2084".to_string())),
            any::<bool>(),
        ),
    )
        .prop_flat_map(|(a, b)| {
            let frames = a.0;
            // Real frame times for some small sources: ascending gaps,
            // sometimes irregular (variable frame rate).
            let times = if frames <= 3000 && b.6 {
                proptest::collection::vec(1u64..200_000_000, frames as usize)
                    .prop_map(Some)
                    .boxed()
            } else {
                Just(None).boxed()
            };
            (Just(a), Just(b), times)
        })
        .prop_map(|(a, b, gaps)| {
            let (
                frames,
                (num, den),
                duration_ns,
                width,
                height,
                (mut keys, mut scenes),
                first_pts,
                offset,
            ) = a;
            let (audio, end_ns, (pn, pd), orientation, interlaced, hdr, _) = b;
            keys.iter_mut().for_each(|k| *k %= frames);
            keys.sort_unstable();
            keys.dedup();
            scenes.iter_mut().for_each(|s| *s %= frames);
            scenes.sort_unstable();
            scenes.dedup();
            let first = first_pts;
            let frame_times_ns: Vec<u64> = gaps
                .map(|g| {
                    g.iter()
                        .scan(first, |t, gap| {
                            let now = *t;
                            *t = t.saturating_add(*gap);
                            Some(now)
                        })
                        .collect()
                })
                .unwrap_or_default();
            let with_times = !frame_times_ns.is_empty();
            (
                SourceFacts {
                    duration_ns,
                    fps_num: num,
                    fps_den: den,
                    frames,
                    width,
                    height,
                    video_codec: "video/x-h264".into(),
                    keyframes: keys,
                    scene_changes: scenes,
                    first_pts_ns: first_pts,
                    pts_offset_ns: offset,
                    audio: audio.map(|(rate, channels, duration_ns)| AudioFacts {
                        rate,
                        channels,
                        duration_ns,
                        stream: None,
                        tracks: 1,
                        language: None,
                    }),
                    frame_times_ns,
                    end_ns,
                    par_num: pn,
                    par_den: pd,
                    orientation,
                    interlaced,
                    bit_depth: 8,
                    hdr,
                },
                with_times,
            )
        })
}

fn plan_options() -> impl Strategy<Value = PlanOptions> {
    (
        2.0f64..600.0,
        proptest::option::of(2.0f64..1800.0),
        0.0f64..0.5,
    )
        .prop_map(|(target, chunk, balance)| PlanOptions {
            target_seconds: target,
            chunk_seconds: chunk,
            balance,
            ..Default::default()
        })
}

proptest! {
    #[test]
    fn planner_over_arbitrary_facts(facts in facts(), opts in plan_options()) {
        let (facts, _) = facts;
        let within = plan::check_limits(&facts, &MediaLimits::default()).is_ok();
        let renditions = jetcode::job::builtin_preset("hls-ladder").unwrap();
        let (rungs, dropped) = plan::ladder(&renditions, &facts);
        prop_assert_eq!(rungs.len() + dropped.len(), renditions.len());
        prop_assert!(!rungs.is_empty(), "the smallest rung always runs");
        for r in &rungs {
            prop_assert!(r.width >= 2 && r.height >= 2 && r.width % 2 == 0 && r.height % 2 == 0, "{r:?}");
        }
        let Ok(p) = plan::plan(&facts, &opts) else { return Ok(()) };
        let segs = &p.segments;
        prop_assert!(!segs.is_empty());
        prop_assert_eq!(segs[0].start_frame, 0);
        prop_assert_eq!(segs.last().unwrap().end_frame, facts.frames);
        prop_assert_eq!(p.frames, facts.frames);
        for (i, s) in segs.iter().enumerate() {
            prop_assert_eq!(s.index as usize, i);
            prop_assert!(s.start_frame < s.end_frame, "empty segment {s:?}");
            prop_assert!(s.start_ns <= s.end_ns, "time runs backwards in {s:?}");
            // Within the worker's limits (what gets planned for real), no
            // segment time saturates.
            if within {
                prop_assert!(s.end_ns < u64::MAX, "saturated time in {s:?}");
            }
            if let Some(next) = segs.get(i + 1) {
                prop_assert_eq!(s.end_frame, next.start_frame, "gap or overlap");
                prop_assert_eq!(s.end_ns, next.start_ns);
            }
        }
        prop_assert!(p.chunk_segments >= 1 && p.chunk_segments as usize <= segs.len());
        let cuts = p.cuts.keyframe + p.cuts.scene_change + p.cuts.even;
        prop_assert_eq!(cuts as usize, segs.len() - 1, "every boundary counted once: {:?}", p.cuts);
        // The balance bound, wherever the candidates are: cuts are even
        // frame counts when the planner has no frame times (each within a
        // frame of the ideal), and each boundary moves at most half the
        // balance, so a segment is off by at most the balance and a frame.
        if facts.frame_times_ns.is_empty() && opts.balance < 1.0 {
            let ideal = facts.frames as f64 / segs.len() as f64;
            let slack = (ideal * opts.balance / 2.0).floor();
            for s in segs {
                let off = (s.frames() as f64 - ideal).abs();
                prop_assert!(off <= 2.0 * slack + 1.0, "{s:?} is {off} frames off {ideal} (slack {slack})");
            }
        }
    }

    #[test]
    fn chunk_pick_stays_in_range(segments in 0usize..5_000, secs in any::<f64>(), chunk in proptest::option::of(any::<f64>()), fleet in proptest::option::of(proptest::collection::vec((any::<u32>(), any::<f64>()), 0..6))) {
        let fleet: Option<Vec<jetcode::balance::Capacity>> = fleet.map(|f| {
            f.into_iter()
                .map(|(slots, speed)| jetcode::balance::Capacity { slots: slots % 64, speed })
                .collect()
        });
        let k = plan::chunk_segments(&vec![secs; segments], chunk, fleet.as_deref());
        prop_assert!(k >= 1 && k as usize <= segments.max(1));
    }
}

/// The properties above are only as good as their inputs: enough of the
/// generated specs must be accepted (round-trip checked) and enough facts
/// planned (segment invariants checked).
#[test]
fn generators_reach_the_accepting_paths() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut specs, mut plans) = (0, 0);
    for _ in 0..400 {
        let v = spec_json().new_tree(&mut runner).unwrap().current();
        specs += usize::from(JobSpec::from_json(&serde_json::to_vec(&v).unwrap()).is_ok());
        let (f, _) = facts().new_tree(&mut runner).unwrap().current();
        let o = plan_options().new_tree(&mut runner).unwrap().current();
        plans += usize::from(plan::plan(&f, &o).is_ok());
    }
    eprintln!("accepted {specs}/400 specs, planned {plans}/400 sources");
    assert!(specs >= 40, "only {specs} of 400 generated specs accepted");
    assert!(plans >= 80, "only {plans} of 400 generated sources planned");
}
