//! `manifest.json`: every file a job wrote, relative to its output.
//!
//! The manifest is an output that outlives the build that wrote it: readers
//! ignore fields they do not know (no `deny_unknown_fields`) and read kinds
//! they do not know as [`FileKind::Other`], and every field added after the
//! first release has a default, so older manifests still parse.

use serde::{Deserialize, Serialize};

use crate::plan::DroppedRung;

/// The manifest at the root of a job's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Video frames delivered (counted in the parts and verified in every
    /// MP4). The plan's count less `undecodable_frames`.
    pub frames: u64,
    /// Duration of the outputs, seconds.
    pub duration_s: f64,
    /// Source frames the decoder could not decode (corrupt data) and the
    /// outputs therefore lack; absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undecodable_frames: Option<u64>,
    /// Renditions of the job that were not encoded, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<DroppedRung>,
    /// The audio delivered; absent when the source has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<ManifestAudio>,
    /// What the source was like, as far as it shaped the outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ManifestSource>,
    pub files: Vec<ManifestFile>,
}

/// The audio track of the outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestAudio {
    /// Channels of the delivered AAC (read from the audio itself).
    pub channels: u32,
    /// Channels of the source track when known (the encoder may downmix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_channels: Option<u32>,
    /// Which source track was encoded (tail of its stream id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// ISO 639-2 language code of the track, when the source names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

/// Facts of the source that the outputs reflect.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ManifestSource {
    /// `image-orientation` of the source; the outputs are turned upright.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orientation: Option<String>,
    /// The source was interlaced; the outputs are deinterlaced.
    #[serde(default)]
    pub interlaced: bool,
    /// The source has a variable frame rate; so do the outputs.
    #[serde(default)]
    pub vfr: bool,
}

/// One output file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Path relative to the job's output, `/`-separated.
    pub path: String,
    pub kind: FileKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rendition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames: Option<u64>,
    pub duration_s: f64,
    pub bytes: u64,
    pub sha256: String,
}

/// Kinds of output file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileKind {
    Mp4,
    HlsMaster,
    HlsMedia,
    /// A video part that HLS media playlists list as a segment.
    HlsSegment,
    /// An I-frame-only playlist (trick play, thumbnails while seeking).
    HlsIframes,
    Audio,
    /// A kind written by a newer jetcode (only ever read, never written).
    #[serde(other)]
    Other,
}

impl Manifest {
    /// Files of one kind.
    pub fn of_kind(&self, kind: FileKind) -> impl Iterator<Item = &ManifestFile> {
        self.files.iter().filter(move |f| f.kind == kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_manifests_parse_and_new_fields_are_ignored() {
        let old = r#"{"frames":10,"duration_s":0.4,"files":[
            {"path":"a.mp4","kind":"mp4","rendition":"a","frames":10,"duration_s":0.4,"bytes":5,"sha256":"00"}]}"#;
        let m: Manifest = serde_json::from_str(old).unwrap();
        assert_eq!((m.frames, m.undecodable_frames, m.audio), (10, None, None));
        assert!(m.dropped.is_empty() && m.source.is_none());
        let newer = r#"{"frames":10,"duration_s":0.4,"subtitles":[],"files":[
            {"path":"x.vtt","kind":"webvtt","duration_s":0.4,"bytes":5,"sha256":"00","lang":"en"}]}"#;
        let m: Manifest = serde_json::from_str(newer).unwrap();
        assert_eq!(m.files[0].kind, FileKind::Other);
        let s = serde_json::to_string(&FileKind::HlsSegment).unwrap();
        assert_eq!(s, "\"hls-segment\"");
    }
}
