//! Everything that touches GStreamer. Independent of NATS.

pub mod audio;
pub mod child;
pub mod probe;
pub mod segment;
pub mod source;
pub mod stitch;
pub mod testsrc;
pub(crate) mod ts;
pub(crate) mod util;

/// Why a media operation failed; `permanent` means retrying cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct MediaError {
    pub permanent: bool,
    pub message: String,
}

impl MediaError {
    pub fn permanent(m: impl Into<String>) -> Self {
        MediaError {
            permanent: true,
            message: m.into(),
        }
    }
    pub fn transient(m: impl Into<String>) -> Self {
        MediaError {
            permanent: false,
            message: m.into(),
        }
    }
}
