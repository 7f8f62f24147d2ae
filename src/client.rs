//! The producer library: submit jobs and follow them.
//!
//! ```no_run
//! # async fn demo() -> Result<(), jetcode::Error> {
//! use jetcode::{Client, ConnectOptions, JobSpec};
//! let client = Client::connect(&ConnectOptions::new("nats://127.0.0.1:4222")).await?;
//! let spec: JobSpec = serde_json::from_str(r#"{
//!     "source": "file:///srv/media/in/trailer.mp4",
//!     "output": "file:///srv/media/out/trailer/",
//!     "renditions": ["h264-720p"]
//! }"#).expect("valid JSON");
//! let id = client.submit(&spec).await?;
//! let record = client.wait(id.as_ref(), None).await?;
//! println!("{id}: {:?}", record.state);
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::{Stream, StreamExt};

use crate::connect::ConnectOptions;
use crate::error::{Error, ErrorKind, Result};
use crate::job::JobSpec;
use crate::ledger::Ledger;
use crate::lifecycle::{self, End};
use crate::record::{Event, Heartbeat, JobRecord, JobState};
use crate::subjects;

/// How often [`Client::wait`] re-reads the record besides its KV watch.
pub const RECHECK_EVERY: Duration = Duration::from_secs(2);

/// `Ok` for a done record, `JobFailed` (with the reason) otherwise.
pub fn outcome(rec: JobRecord) -> Result<JobRecord> {
    match rec.state {
        JobState::Done => Ok(rec),
        JobState::Running => Err(Error::new(
            ErrorKind::JobFailed,
            format!("job {} is still running", rec.id),
        )),
        s => Err(Error::new(
            ErrorKind::JobFailed,
            format!(
                "job {} {}: {}",
                rec.id,
                format!("{s:?}").to_lowercase(),
                rec.error.as_deref().unwrap_or("no reason recorded")
            ),
        )),
    }
}

/// A job's id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobId(pub String);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for JobId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A producer's handle on jetcode.
#[derive(Clone)]
pub struct Client {
    nats: async_nats::Client,
    js: jetstream::Context,
    ledger: Ledger,
}

impl Client {
    /// Connect with the given options; checks the server version.
    pub async fn connect(opts: &ConnectOptions) -> Result<Self> {
        Self::from_nats(opts.connect().await?).await
    }

    /// Wrap an existing connection (streams must be applied).
    pub async fn from_nats(nats: async_nats::Client) -> Result<Self> {
        let js = jetstream::new(nats.clone());
        let ledger = Ledger::open(js.clone()).await?;
        Ok(Client { nats, js, ledger })
    }

    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Validate and submit. Without an id the spec gets a fresh,
    /// time-ordered one (`job-<ULID>`), so ids never repeat, even after the
    /// streams are recreated. The id is the Nats-Msg-Id: resubmitting the
    /// same spec is a no-op; reusing an id with a different spec is refused.
    pub async fn submit(&self, spec: &JobSpec) -> Result<JobId> {
        spec.validate()?;
        let mut spec = spec.clone();
        let id = spec
            .id
            .get_or_insert_with(|| format!("job-{}", ulid::Ulid::new().to_string().to_lowercase()))
            .clone();
        if let Some((existing, _)) = self.ledger.record(&id).await? {
            return match &existing.spec {
                Some(s) if *s == spec => Ok(JobId(id)),
                // Cancelled before it was planned: the cancel wins.
                None if existing.state == JobState::Cancelled => Ok(JobId(id)),
                _ => Err(Error::new(
                    ErrorKind::InvalidSpec,
                    format!(
                        "job {id} already exists with a different spec ({}); use another id",
                        format!("{:?}", existing.state).to_lowercase()
                    ),
                )),
            };
        }
        let body = serde_json::to_vec(&spec).unwrap_or_default();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        self.js
            .publish_with_headers(subjects::JOBS_SUBMIT, headers, body.into())
            .await
            .map_err(|e| Error::js("submit", e))?
            .await
            .map_err(|e| match e.kind() {
                // A publish the server refuses gets no answer at all.
                jetstream::context::PublishErrorKind::TimedOut => Error::js(
                    "submit",
                    format!(
                        "{e} (is this NATS user allowed to publish to {}?)",
                        subjects::JOBS_SUBMIT
                    ),
                ),
                _ => Error::js("submit", e),
            })?;
        Ok(JobId(id))
    }

    /// The job's record; `NotFound` until the planner has seen it.
    pub async fn status(&self, id: &str) -> Result<JobRecord> {
        self.ledger
            .record(id)
            .await?
            .map(|(r, _)| r)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("job {id} has no record (unknown, or still queued for planning)"),
                )
            })
    }

    /// The job's events from its first, live until the stream is dropped.
    /// Events are telemetry (progress bars, logs); to learn how a job
    /// ended, follow its record ([`Client::wait`], [`Client::ended`]).
    pub async fn watch(&self, id: &str) -> Result<impl Stream<Item = Result<Event>> + use<>> {
        let stream = self
            .js
            .get_stream(subjects::EVENTS_STREAM)
            .await
            .map_err(|e| Error::js("open event stream", e))?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subjects::events(id),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::js("watch", e))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| Error::js("watch", e))?;
        Ok(messages.map(|m| {
            let m = m.map_err(|e| Error::js("watch", e))?;
            serde_json::from_slice::<Event>(&m.payload)
                .map_err(|e| Error::new(ErrorKind::Decode, format!("bad event: {e}")))
        }))
    }

    /// The record if the job has ended, `None` while it runs or has no
    /// record yet. NATS trouble is an error the caller may retry.
    pub async fn ended(&self, id: &str) -> Result<Option<JobRecord>> {
        Ok(self
            .ledger
            .record(id)
            .await?
            .map(|(r, _)| r)
            .filter(|r| r.state.is_terminal()))
    }

    /// Wait for the job to end by following its record (a KV watch wakes
    /// us; a re-read every [`RECHECK_EVERY`] covers a lost watch or a
    /// server restart). `Ok` with the record when done; `JobFailed` when it
    /// failed or was cancelled; `Timeout` after `timeout`.
    pub async fn wait(&self, id: &str, timeout: Option<Duration>) -> Result<JobRecord> {
        let until_end = async {
            let mut changes = self.ledger.watch_record(id).await.ok();
            loop {
                match self.ended(id).await {
                    Ok(Some(rec)) => return Ok::<_, Error>(rec),
                    Ok(None) => {}
                    Err(e) if e.kind() == ErrorKind::Decode => return Err(e),
                    // A server restart or leader election: read again soon.
                    Err(e) => tracing::debug!("wait {id}: {e}"),
                }
                let change = async {
                    match changes.as_mut() {
                        Some(w) => {
                            if w.next().await.is_none() {
                                changes = None;
                            }
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = change => {}
                    _ = tokio::time::sleep(RECHECK_EVERY) => {
                        if changes.is_none() {
                            changes = self.ledger.watch_record(id).await.ok();
                        }
                    }
                }
            }
        };
        let rec = match timeout {
            Some(t) => tokio::time::timeout(t, until_end).await.map_err(|_| {
                Error::new(
                    ErrorKind::Timeout,
                    format!("job {id} still running after {t:?}"),
                )
            })??,
            None => until_end.await?,
        };
        outcome(rec)
    }

    /// Cancel a job: state cancelled (CAS), its queued tasks dropped,
    /// workers told to kill its children. A job not planned yet gets a
    /// `cancelled` record, so it never runs. A job that already ended
    /// keeps its end.
    pub async fn cancel(&self, id: &str) -> Result<JobRecord> {
        lifecycle::end(
            &self.ledger,
            id,
            End::Cancelled("cancelled by request".into()),
        )
        .await
    }

    /// Resume a failed or cancelled job from its checkpoints: only the
    /// unfinished tasks run again. Returns the record and the number of
    /// tasks queued.
    pub async fn retry(&self, id: &str) -> Result<(JobRecord, u32)> {
        lifecycle::retry(&self.ledger, id).await
    }

    /// Every job record, oldest first.
    pub async fn jobs(&self) -> Result<Vec<JobRecord>> {
        self.ledger.records().await
    }

    /// Live workers (those with a fresh heartbeat).
    pub async fn workers(&self) -> Result<Vec<Heartbeat>> {
        self.ledger.workers().await
    }
}
