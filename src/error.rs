//! The library's typed error: a kind to match on plus a one-line message.

use std::fmt;

/// What went wrong, coarsely, so callers can decide what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Could not connect or authenticate to NATS.
    Connect,
    /// The NATS server is too old or lacks JetStream.
    ServerUnsupported,
    /// The job spec failed validation.
    InvalidSpec,
    /// No such job (or no record yet).
    NotFound,
    /// A JetStream / KV request failed.
    JetStream,
    /// A stored document could not be decoded.
    Decode,
    /// A path or URL is outside the configured roots, or storage failed.
    Storage,
    /// The job ended in failure or was cancelled (from `wait`).
    JobFailed,
    /// Gave up waiting.
    Timeout,
}

/// The error type of the jetcode library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    /// Shorthand for JetStream failures with context.
    pub fn js(context: &str, e: impl fmt::Display) -> Self {
        Error::new(ErrorKind::JetStream, format!("{context}: {e}"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line, always: messages from below may carry newlines.
        let one_line = self.message.replace('\n', " ");
        f.write_str(&one_line)
    }
}

impl std::error::Error for Error {}

impl From<crate::job::InvalidSpec> for Error {
    fn from(e: crate::job::InvalidSpec) -> Self {
        Error::new(ErrorKind::InvalidSpec, e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
