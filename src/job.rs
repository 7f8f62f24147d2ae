//! The job contract: JobSpec on the wire, renditions and presets, validation.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Largest accepted job spec on the wire, in bytes.
pub const MAX_SPEC_BYTES: usize = 64 * 1024;
/// Most renditions one job may ask for.
pub const MAX_RENDITIONS: usize = 8;
/// Most labels one job may carry.
pub const MAX_LABELS: usize = 32;
/// Longest URL accepted for source/output.
pub const MAX_URL_LEN: usize = 2048;
/// Shortest segment a job may ask for; shorter segments visibly lose quality.
pub const MIN_SEGMENT_SECONDS: f64 = 2.0;
/// Longest segment a job may ask for.
pub const MAX_SEGMENT_SECONDS: f64 = 600.0;
/// Default target segment duration.
pub const DEFAULT_SEGMENT_SECONDS: f64 = 10.0;
/// Longest encode chunk a job may ask for, seconds.
pub const MAX_CHUNK_SECONDS: f64 = 1800.0;
/// URL schemes a source or output may use.
pub const ALLOWED_SCHEMES: &[&str] = &["file", "s3"];

/// A transcoding job as producers submit it. Unknown fields are rejected.
///
/// ```
/// let spec: jetcode::JobSpec = serde_json::from_str(r#"{
///     "source": "file:///srv/media/in/trailer.mp4",
///     "output": "file:///srv/media/out/trailer/",
///     "renditions": ["h264-720p"]
/// }"#).unwrap();
/// spec.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Job id, `[A-Za-z0-9_-]{1,64}`. Omitted: the planner assigns `job-<stream seq>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Source video URL (`file:///...`).
    pub source: String,
    /// Output location URL; everything the job writes lives under it.
    pub output: String,
    /// Preset names (e.g. `h264-720p`, `hls-ladder`) or full rendition objects.
    pub renditions: Vec<RenditionSpec>,
    /// Which kinds of output to make; default both.
    #[serde(default = "default_formats")]
    pub formats: Vec<OutputFormat>,
    /// Target segment duration in seconds (default 10, floor 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_seconds: Option<f64>,
    /// Encode chunk length in seconds, a whole number of segments (default:
    /// the planner's pick, about 30 s for long sources). A chunk is encoded
    /// in one run with an IDR forced at every segment start, so HLS
    /// segments keep `segment_seconds` while the encoder sees long chunks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_seconds: Option<f64>,
    /// 0 (lowest) to 9 (highest); default 5. Sets the job's class: high
    /// (7–9), normal (3–6) or low (0–2). Workers start tasks of the
    /// classes with work in the ratio 4 : 2 : 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// Free-form labels carried into the job record.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn default_formats() -> Vec<OutputFormat> {
    vec![OutputFormat::Mp4, OutputFormat::Hls]
}

/// Output container kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Mp4,
    Hls,
}

/// A rendition as written in a spec: a preset name or a full object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RenditionSpec {
    Preset(String),
    Custom(Rendition),
}

/// Video codecs a rendition may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    H264,
    H265,
    Vp9,
    Av1,
}

/// x264-style speed presets; mapped per encoder.
pub const SPEED_PRESETS: &[&str] = &[
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
];

/// One output rendition, fully resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rendition {
    /// `[A-Za-z0-9_-]{1,64}`; names files and playlists.
    pub name: String,
    #[serde(default = "default_codec")]
    pub codec: Codec,
    /// Output width; omitted keeps the source aspect ratio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Output height in pixels (even, 16..=4320).
    pub height: u32,
    /// Constant rate factor (0..=51). With `bitrate` it becomes capped CRF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crf: Option<u32>,
    /// Target (or, with `crf`, maximum) bitrate in kbit/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitrate: Option<u32>,
    /// Encoder speed preset (x264 names).
    #[serde(default = "default_preset")]
    pub preset: String,
}

fn default_codec() -> Codec {
    Codec::H264
}
fn default_preset() -> String {
    "veryfast".into()
}

fn preset(name: &str, height: u32, crf: u32, max_kbps: u32) -> Rendition {
    Rendition {
        name: name.into(),
        codec: Codec::H264,
        width: None,
        height,
        crf: Some(crf),
        bitrate: Some(max_kbps),
        preset: default_preset(),
    }
}

/// Built-in presets by name. `hls-ladder` expands to four renditions.
pub fn builtin_preset(name: &str) -> Option<Vec<Rendition>> {
    let one = |r: Rendition| Some(vec![r]);
    match name {
        "h264-1080p" => one(preset("h264-1080p", 1080, 22, 6000)),
        "h264-720p" => one(preset("h264-720p", 720, 23, 3500)),
        "h264-480p" => one(preset("h264-480p", 480, 24, 1500)),
        "h264-360p" => one(preset("h264-360p", 360, 25, 800)),
        "h264-240p" => one(preset("h264-240p", 240, 26, 400)),
        "hls-ladder" => Some(
            ["h264-1080p", "h264-720p", "h264-480p", "h264-360p"]
                .iter()
                .flat_map(|n| builtin_preset(n).unwrap_or_default())
                .collect(),
        ),
        _ => None,
    }
}

/// Names of all built-in presets.
pub const PRESET_NAMES: &[&str] = &[
    "h264-1080p",
    "h264-720p",
    "h264-480p",
    "h264-360p",
    "h264-240p",
    "hls-ladder",
];

/// A spec that failed validation; lists every problem in one line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid job spec: {}", problems.join("; "))]
pub struct InvalidSpec {
    pub problems: Vec<String>,
}

impl InvalidSpec {
    fn one(p: impl Into<String>) -> Self {
        InvalidSpec {
            problems: vec![p.into()],
        }
    }
}

/// True for ids matching `[A-Za-z0-9_-]{1,64}`.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl JobSpec {
    /// The priority class the job's tasks are queued in: the one place
    /// that maps `priority` to a class (planner, completion, retry and the
    /// reconciler all queue through it).
    pub fn priority_class(&self) -> crate::subjects::PriorityClass {
        use crate::subjects::PriorityClass;
        match self.priority {
            Some(p) if p >= 7 => PriorityClass::High,
            Some(p) if p <= 2 => PriorityClass::Low,
            _ => PriorityClass::Normal,
        }
    }

    /// Parse and validate a spec from wire bytes (size limit, unknown fields, ranges).
    pub fn from_json(bytes: &[u8]) -> Result<JobSpec, InvalidSpec> {
        if bytes.len() > MAX_SPEC_BYTES {
            return Err(InvalidSpec::one(format!(
                "spec is {} bytes, limit is {MAX_SPEC_BYTES}",
                bytes.len()
            )));
        }
        let spec: JobSpec = serde_json::from_slice(bytes)
            .map_err(|e| InvalidSpec::one(format!("not a job spec: {e}")))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Check every field; returns all problems at once.
    pub fn validate(&self) -> Result<(), InvalidSpec> {
        let mut p = Vec::new();
        if let Some(id) = &self.id {
            if !valid_id(id) {
                p.push(format!("id {id:?} must match [A-Za-z0-9_-]{{1,64}}"));
            }
        }
        check_url("source", &self.source, &mut p);
        check_url("output", &self.output, &mut p);
        if output_holds_source(&self.source, &self.output) {
            p.push("output contains the source: a job must not write where it reads".into());
        }
        if self.renditions.is_empty() {
            p.push("renditions must name at least one rendition".into());
        }
        if self.renditions.len() > MAX_RENDITIONS {
            p.push(format!(
                "{} renditions, limit is {MAX_RENDITIONS}",
                self.renditions.len()
            ));
        } else {
            match self.resolved_renditions() {
                Ok(rs) => {
                    if rs.len() > MAX_RENDITIONS {
                        p.push(format!(
                            "{} renditions after expanding presets, limit is {MAX_RENDITIONS}",
                            rs.len()
                        ));
                    }
                    let mut seen = std::collections::HashSet::new();
                    for r in &rs {
                        r.check(&mut p);
                        if !seen.insert(r.name.clone()) {
                            p.push(format!("rendition name {:?} is used twice", r.name));
                        }
                    }
                }
                Err(e) => p.extend(e.problems),
            }
        }
        if self.formats.is_empty() {
            p.push("formats must name mp4, hls or both".into());
        }
        if self.formats.contains(&OutputFormat::Hls) {
            // Apple's HLS authoring spec requires fMP4 segments for HEVC;
            // jetcode's HLS segments are MPEG-TS, which Safari and hls.js
            // do not play with HEVC.
            if let Ok(rs) = self.resolved_renditions() {
                for r in rs.iter().filter(|r| r.codec == Codec::H265) {
                    p.push(format!(
                        "rendition {:?}: HEVC in HLS needs fMP4 segments, and jetcode writes MPEG-TS; use h264 for HLS or ask for formats [\"mp4\"]",
                        r.name
                    ));
                }
            }
        }
        if let Some(s) = self.segment_seconds {
            if !(MIN_SEGMENT_SECONDS..=MAX_SEGMENT_SECONDS).contains(&s) {
                p.push(format!(
                    "segment_seconds {s} outside {MIN_SEGMENT_SECONDS}..={MAX_SEGMENT_SECONDS}"
                ));
            }
        }
        if let Some(c) = self.chunk_seconds {
            if !(MIN_SEGMENT_SECONDS..=MAX_CHUNK_SECONDS).contains(&c) {
                p.push(format!(
                    "chunk_seconds {c} outside {MIN_SEGMENT_SECONDS}..={MAX_CHUNK_SECONDS}"
                ));
            } else if c < self.segment_seconds() {
                p.push(format!(
                    "chunk_seconds {c} is shorter than segment_seconds {}: a chunk holds whole segments",
                    self.segment_seconds()
                ));
            }
        }
        if let Some(pr) = self.priority {
            if pr > 9 {
                p.push(format!("priority {pr} outside 0..=9"));
            }
        }
        if self.labels.len() > MAX_LABELS {
            p.push(format!(
                "{} labels, limit is {MAX_LABELS}",
                self.labels.len()
            ));
        }
        for (k, v) in &self.labels {
            if k.is_empty() || k.len() > 64 || v.len() > 256 {
                p.push(format!(
                    "label {k:?}: key must be 1..=64 bytes, value at most 256"
                ));
            }
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(InvalidSpec { problems: p })
        }
    }

    /// Presets expanded into full renditions.
    pub fn resolved_renditions(&self) -> Result<Vec<Rendition>, InvalidSpec> {
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for r in &self.renditions {
            match r {
                RenditionSpec::Preset(name) => match builtin_preset(name) {
                    Some(rs) => out.extend(rs),
                    None => problems.push(format!(
                        "unknown preset {name:?} (known: {})",
                        PRESET_NAMES.join(", ")
                    )),
                },
                RenditionSpec::Custom(r) => out.push(r.clone()),
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(InvalidSpec { problems })
        }
    }

    /// Target segment duration in seconds.
    pub fn segment_seconds(&self) -> f64 {
        self.segment_seconds.unwrap_or(DEFAULT_SEGMENT_SECONDS)
    }

    /// True when this output format was asked for.
    pub fn wants(&self, f: OutputFormat) -> bool {
        self.formats.contains(&f)
    }
}

impl Rendition {
    /// Output pixels per frame (a 16:9 width when none is set).
    pub fn area(&self) -> u64 {
        let h = self.height as u64;
        self.width.map_or(h * 16 / 9, u64::from) * h
    }

    fn check(&self, p: &mut Vec<String>) {
        let n = &self.name;
        if !valid_id(n) {
            p.push(format!(
                "rendition name {n:?} must match [A-Za-z0-9_-]{{1,64}}"
            ));
        }
        if !(16..=4320).contains(&self.height) || !self.height.is_multiple_of(2) {
            p.push(format!(
                "rendition {n}: height {} must be even and within 16..=4320",
                self.height
            ));
        }
        if let Some(w) = self.width {
            if !(16..=7680).contains(&w) || !w.is_multiple_of(2) {
                p.push(format!(
                    "rendition {n}: width {w} must be even and within 16..=7680"
                ));
            }
        }
        if let Some(c) = self.crf {
            if c > 51 {
                p.push(format!("rendition {n}: crf {c} outside 0..=51"));
            }
        }
        if let Some(b) = self.bitrate {
            if !(50..=200_000).contains(&b) {
                p.push(format!(
                    "rendition {n}: bitrate {b} kbit/s outside 50..=200000"
                ));
            }
        }
        if self.crf.is_none() && self.bitrate.is_none() {
            p.push(format!("rendition {n}: needs crf, bitrate or both"));
        }
        if matches!(self.codec, Codec::Vp9 | Codec::Av1) {
            // Parts are MPEG-TS (concatenable, HLS-ready); GStreamer 1.22's
            // mpegtsmux carries neither VP9 nor AV1.
            p.push(format!(
                "rendition {n}: codec {} is not supported yet (use h264 or h265)",
                if self.codec == Codec::Vp9 {
                    "vp9"
                } else {
                    "av1"
                }
            ));
        }
        if !SPEED_PRESETS.contains(&self.preset.as_str()) {
            p.push(format!(
                "rendition {n}: preset {:?} unknown (known: {})",
                self.preset,
                SPEED_PRESETS.join(", ")
            ));
        }
    }
}

fn check_url(field: &str, raw: &str, p: &mut Vec<String>) {
    if raw.len() > MAX_URL_LEN {
        p.push(format!("{field} URL longer than {MAX_URL_LEN} bytes"));
        return;
    }
    let url = match url::Url::parse(raw) {
        Ok(u) => u,
        Err(e) => {
            p.push(format!("{field} {raw:?} is not a URL: {e}"));
            return;
        }
    };
    if !ALLOWED_SCHEMES.contains(&url.scheme()) {
        p.push(format!(
            "{field} scheme {:?} not allowed (allowed: {})",
            url.scheme(),
            ALLOWED_SCHEMES.join(", ")
        ));
    }
    // Url::parse normalises dot segments away (`%2e` counts as a dot, `\\`
    // as a slash), so look at the raw text with those decoded. `%2f`
    // stays one segment for Url, but a path decoded later would split it.
    let decoded = raw
        .to_ascii_lowercase()
        .replace("%2e", ".")
        .replace("%2f", "/")
        .replace("%5c", "/");
    if decoded.split(['/', '\\']).any(|s| s == "..") {
        p.push(format!("{field} must not contain '..' segments"));
    }
}

/// An `s3://bucket/key` URL as `s3:/<bucket>/<key segments>`, a relative
/// path that compares component-wise and never meets a local path (see
/// `store::location`). None for other URLs.
pub fn s3_location(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("s3://")?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    let mut p = std::path::PathBuf::from("s3:");
    p.push(bucket);
    // Empty segments and "." add nothing.
    for seg in key.split('/').filter(|s| !s.is_empty() && *s != ".") {
        p.push(seg);
    }
    Some(p)
}

/// True when `output` is, or contains, `source`: a local path (lexically:
/// the worker resolves symlinks and checks again) or an S3 bucket and key
/// prefix (component-wise).
fn output_holds_source(source: &str, output: &str) -> bool {
    let path = |u: &str| s3_location(u).or_else(|| url::Url::parse(u).ok()?.to_file_path().ok());
    match (path(source), path(output)) {
        (Some(s), Some(o)) => s.starts_with(o),
        _ => false,
    }
}

/// JSON Schema of [`JobSpec`], as published in `streams/jobspec.schema.json`.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(JobSpec)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<JobSpec, InvalidSpec> {
        JobSpec::from_json(json.as_bytes())
    }

    #[test]
    fn minimal_spec_defaults_both_formats() {
        let s = spec(
            r#"{"source":"file:///a/b.mp4","output":"file:///o/","renditions":["h264-720p"]}"#,
        )
        .unwrap();
        assert_eq!(s.formats, vec![OutputFormat::Mp4, OutputFormat::Hls]);
        assert_eq!(s.resolved_renditions().unwrap()[0].height, 720);
    }

    #[test]
    fn priority_maps_to_three_classes() {
        use crate::subjects::PriorityClass::*;
        let base = r#"{"source":"file:///a.mp4","output":"file:///o/","renditions":["h264-720p"]"#;
        assert_eq!(spec(&format!("{base}}}")).unwrap().priority_class(), Normal);
        let want = [
            Low, Low, Low, Normal, Normal, Normal, Normal, High, High, High,
        ];
        for (p, class) in want.into_iter().enumerate() {
            let s = spec(&format!(r#"{base},"priority":{p}}}"#)).unwrap();
            assert_eq!(s.priority_class(), class, "priority {p}");
        }
    }

    #[test]
    fn ladder_expands_to_four() {
        let s =
            spec(r#"{"source":"file:///a.mp4","output":"file:///o/","renditions":["hls-ladder"]}"#)
                .unwrap();
        let names: Vec<_> = s
            .resolved_renditions()
            .unwrap()
            .into_iter()
            .map(|r| r.height)
            .collect();
        assert_eq!(names, vec![1080, 720, 480, 360]);
    }

    #[test]
    fn hevc_is_refused_for_hls_and_allowed_for_mp4() {
        let hevc = r#"{"name":"h","codec":"h265","height":360,"crf":28}"#;
        let err = spec(&format!(
            r#"{{"source":"file:///a.mp4","output":"file:///o/","renditions":[{hevc}]}}"#
        ))
        .unwrap_err();
        assert!(err.to_string().contains("fMP4"), "{err}");
        spec(&format!(
            r#"{{"source":"file:///a.mp4","output":"file:///o/","formats":["mp4"],"renditions":[{hevc}]}}"#
        ))
        .expect("HEVC MP4 is fine");
    }

    #[test]
    fn rejections_name_the_problem() {
        let cases = [
            (
                r#"{"source":"file:///a","output":"file:///o/","renditions":["h264-720p"],"colour":"red"}"#,
                "unknown field `colour`",
            ),
            (
                r#"{"id":"a b","source":"file:///a","output":"file:///o/","renditions":["h264-720p"]}"#,
                "id \"a b\"",
            ),
            (
                r#"{"source":"file:///a/../etc/passwd","output":"file:///o/","renditions":["h264-720p"]}"#,
                "'..'",
            ),
            (
                r#"{"source":"http://x/a.mp4","output":"file:///o/","renditions":["h264-720p"]}"#,
                "scheme \"http\"",
            ),
            (
                r#"{"source":"file:///a","output":"file:///o/","renditions":["h264-9k"]}"#,
                "unknown preset",
            ),
            (
                r#"{"source":"file:///a","output":"file:///o/","renditions":[]}"#,
                "at least one",
            ),
            (
                r#"{"source":"file:///a","output":"file:///o/","renditions":[{"name":"x","height":721,"crf":60}]}"#,
                "height 721",
            ),
            (
                r#"{"source":"file:///a","output":"file:///o/","renditions":[{"name":"x","height":720,"crf":30,"codec":"vp9"}]}"#,
                "codec vp9 is not supported yet",
            ),
            (
                r#"{"source":"file:///a","output":"file:///o/","renditions":["h264-720p"],"segment_seconds":0.5}"#,
                "segment_seconds",
            ),
            (
                r#"{"source":"file:///a","output":"file:///o/","renditions":["h264-720p","h264-720p"]}"#,
                "used twice",
            ),
        ];
        for (json, want) in cases {
            let err = spec(json).unwrap_err().to_string();
            assert!(err.contains(want), "{json}: {err} lacks {want}");
            assert!(!err.contains('\n'), "multi-line error: {err}");
        }
    }

    /// Traversal and overlap as the spec check sees them (the worker's
    /// roots check them again with symlinks resolved, in store.rs).
    #[test]
    fn traversal_and_overlap_table() {
        let cases = [
            ("file:///m/in/../../etc/passwd", "file:///o/", "'..'"),
            ("file:///m/%2e%2e/etc/passwd", "file:///o/", "'..'"),
            ("file:///m/%2E%2e/etc/passwd", "file:///o/", "'..'"),
            ("file:///m/.%2E/etc/passwd", "file:///o/", "'..'"),
            ("file:///m/%2e./etc/passwd", "file:///o/", "'..'"),
            ("file:///m/..%2f..%2fetc/passwd", "file:///o/", "'..'"),
            ("file:///m/..%5C..%5Cetc/passwd", "file:///o/", "'..'"),
            ("file:///m\\..\\etc/passwd", "file:///o/", "'..'"),
            (
                "file:///m/a.mp4",
                "file:///o/../../etc/",
                "output must not contain '..'",
            ),
            (
                "file:///m/a.mp4",
                "file:///m/",
                "output contains the source",
            ),
            ("file:///m/a.mp4", "file:///", "output contains the source"),
            (
                "s3://media/out/x/r.mp4",
                "s3://media/out/x/",
                "output contains the source",
            ),
            (
                "s3://media/in/a.mp4",
                "s3://media/",
                "output contains the source",
            ),
            ("s3://media/in/a.mp4", "s3://media/in2/", ""),
            ("s3://media/in/a.mp4", "s3://other/in/", ""),
            (
                "file:///m/sub/a.mp4",
                "file:///m",
                "output contains the source",
            ),
            (
                "file:///m/a.mp4",
                "file:///m/a.mp4",
                "output contains the source",
            ),
            ("file://host/m/a.mp4", "file:///o/", ""),
        ];
        for (source, output, want) in cases {
            let json = format!(
                r#"{{"source":"{}","output":"{}","renditions":["h264-720p"]}}"#,
                source.replace('\\', "\\\\"),
                output
            );
            match (want, spec(&json)) {
                ("", Ok(_)) => {}
                (w, Err(e)) if !w.is_empty() => {
                    let e = e.to_string();
                    assert!(e.contains(w), "{source} -> {output}: {e} lacks {w}");
                }
                (w, got) => panic!("{source} -> {output}: wanted {w:?}, got {got:?}"),
            }
        }
        // Siblings and an output next to the source are fine.
        for (source, output) in [
            ("file:///m/a.mp4", "file:///m/out/"),
            ("file:///m/a.mp4", "file:///ma/"),
            ("file:///m/in/a.mp4", "file:///m/out/"),
        ] {
            let json = format!(
                r#"{{"source":"{source}","output":"{output}","renditions":["h264-720p"]}}"#
            );
            spec(&json).unwrap_or_else(|e| panic!("{source} -> {output}: {e}"));
        }
    }

    #[test]
    fn too_many_renditions_and_oversize() {
        let many = vec!["\"h264-720p\""; 10_000].join(",");
        let err = spec(&format!(
            r#"{{"source":"file:///a","output":"file:///o/","renditions":[{many}]}}"#
        ))
        .unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");
        let big = "x".repeat(MAX_SPEC_BYTES);
        let err = spec(&format!(
            r#"{{"source":"file:///{big}","output":"file:///o/","renditions":["h264-720p"]}}"#
        ))
        .unwrap_err();
        assert!(err.to_string().contains("bytes, limit"), "{err}");
    }

    #[test]
    fn all_problems_reported_together() {
        let err = spec(r#"{"id":"","source":"ftp://a","output":"file:///o/","renditions":["nope"],"priority":12}"#).unwrap_err();
        assert!(err.problems.len() >= 4, "{err}");
    }
}
