//! jetcode: a distributed video transcoder on NATS JetStream and GStreamer.
//!
//! Producers use [`Client`] to submit [`JobSpec`]s and follow them; workers
//! (the `jetcode worker` binary) plan, encode and stitch them.

pub mod balance;
pub mod client;
pub mod connect;
pub mod dispatch;
pub mod error;
pub mod http;
pub mod job;
pub mod ledger;
pub mod lifecycle;
pub mod manifest;
pub mod metrics;
pub mod plan;
pub mod record;
pub mod scaler;
pub mod scene;
#[cfg(feature = "media")]
pub mod store;
pub mod streams;
pub mod subjects;
pub mod task;

#[cfg(feature = "media")]
pub mod media;
#[cfg(feature = "media")]
pub mod worker;

pub use client::{Client, JobId};
pub use connect::ConnectOptions;
pub use error::{Error, ErrorKind};
pub use job::{Codec, JobSpec, OutputFormat, Rendition, RenditionSpec};
pub use manifest::{FileKind, Manifest, ManifestFile};
pub use record::{Event, EventKind, JobRecord, JobState};
