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
use crate::record::{Event, EventKind, Heartbeat, JobRecord, JobState};
use crate::subjects;

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

    /// Validate and submit. A spec with an id is published with that id as
    /// Nats-Msg-Id, so resubmitting it within the dedupe window is a no-op;
    /// without one the job is named `job-<stream sequence>`.
    pub async fn submit(&self, spec: &JobSpec) -> Result<JobId> {
        spec.validate()?;
        let body = serde_json::to_vec(spec).unwrap_or_default();
        let mut headers = async_nats::HeaderMap::new();
        if let Some(id) = &spec.id {
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        }
        let ack = self
            .js
            .publish_with_headers(subjects::JOBS_SUBMIT, headers, body.into())
            .await
            .map_err(|e| Error::js("submit", e))?
            .await
            .map_err(|e| Error::js("submit", e))?;
        Ok(JobId(
            spec.id
                .clone()
                .unwrap_or_else(|| format!("job-{}", ack.sequence)),
        ))
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

    /// Wait for the job to end. `Ok` with the record when done; `JobFailed`
    /// when it failed or was cancelled; `Timeout` after `timeout`.
    pub async fn wait(&self, id: &str, timeout: Option<Duration>) -> Result<JobRecord> {
        let id_owned = id.to_string();
        let until_end = async {
            let mut events = Box::pin(self.watch(id).await?);
            while let Some(ev) = events.next().await {
                if ev?.kind.is_terminal() {
                    break;
                }
            }
            self.status(&id_owned).await
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
        match rec.state {
            JobState::Done => Ok(rec),
            JobState::Running => Err(Error::new(
                ErrorKind::JobFailed,
                format!("job {id} ended its events but is still running"),
            )),
            s => Err(Error::new(
                ErrorKind::JobFailed,
                format!(
                    "job {id} {}: {}",
                    format!("{s:?}").to_lowercase(),
                    rec.error.as_deref().unwrap_or("no reason recorded")
                ),
            )),
        }
    }

    /// Cancel a running job: state cancelled (CAS), then tell workers.
    pub async fn cancel(&self, id: &str) -> Result<JobRecord> {
        let mut changed = false;
        let rec = self
            .ledger
            .update_record(id, |r| {
                changed = !r.state.is_terminal();
                if changed {
                    r.state = JobState::Cancelled;
                    r.error = Some("cancelled by request".into());
                    r.finished_at = Some(crate::record::now());
                }
                changed
            })
            .await?;
        if changed {
            self.nats
                .publish(subjects::cancel(id), "cancel".into())
                .await
                .map_err(|e| Error::js("publish cancel", e))?;
            self.nats
                .flush()
                .await
                .map_err(|e| Error::js("publish cancel", e))?;
            self.ledger.event(id, EventKind::Cancelled).await?;
        }
        Ok(rec)
    }

    /// Every job record, oldest first.
    pub async fn jobs(&self) -> Result<Vec<JobRecord>> {
        self.ledger.records().await
    }

    /// Live workers (those with a fresh heartbeat).
    pub async fn workers(&self) -> Result<Vec<Heartbeat>> {
        let kv = self
            .js
            .get_key_value(subjects::WORKERS_BUCKET)
            .await
            .map_err(|e| Error::js("open workers bucket", e))?;
        let mut keys = kv.keys().await.map_err(|e| Error::js("list workers", e))?;
        let mut out = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k.map_err(|e| Error::js("list workers", e))?;
            if let Some(v) = kv.get(&k).await.map_err(|e| Error::js("read worker", e))? {
                if let Ok(hb) = serde_json::from_slice::<Heartbeat>(&v) {
                    out.push(hb);
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}
