//! `manifest.json`: every file a job wrote, relative to its output.

use serde::{Deserialize, Serialize};

/// The manifest at the root of a job's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Frames the plan promised (and every video output was verified to have).
    pub frames: u64,
    /// Duration of the outputs, seconds.
    pub duration_s: f64,
    pub files: Vec<ManifestFile>,
}

/// One output file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    Audio,
}

impl Manifest {
    /// Files of one kind.
    pub fn of_kind(&self, kind: FileKind) -> impl Iterator<Item = &ManifestFile> {
        self.files.iter().filter(move |f| f.kind == kind)
    }
}
