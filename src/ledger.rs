//! Job records (CAS-updated) and task checkpoints in NATS KV, plus events.
//! Shared by producers (status, cancel) and workers (plan, checkpoint).

use async_nats::jetstream::{self, kv};
use futures::StreamExt;

use crate::error::{Error, ErrorKind, Result};
use crate::record::{now, Event, EventKind, JobRecord, TaskDone};
use crate::subjects;

/// Handles on the jobs and progress buckets and the event stream.
#[derive(Clone)]
pub struct Ledger {
    js: jetstream::Context,
    jobs: kv::Store,
    progress: kv::Store,
}

impl Ledger {
    /// Open the buckets (they must exist: `jetcode streams apply`).
    pub async fn open(js: jetstream::Context) -> Result<Self> {
        let open = |b: &'static str| {
            let js = js.clone();
            async move {
                js.get_key_value(b).await.map_err(|e| {
                    Error::new(
                        ErrorKind::JetStream,
                        format!("bucket {b} unavailable ({e}); run `jetcode streams apply`"),
                    )
                })
            }
        };
        Ok(Ledger {
            jobs: open(subjects::JOBS_BUCKET).await?,
            progress: open(subjects::PROGRESS_BUCKET).await?,
            js,
        })
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// The record and its revision, if the job has one.
    pub async fn record(&self, id: &str) -> Result<Option<(JobRecord, u64)>> {
        let entry = self
            .jobs
            .entry(id)
            .await
            .map_err(|e| Error::js(&format!("read job {id}"), e))?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let rec = serde_json::from_slice(&e.value).map_err(|err| {
                    Error::new(
                        ErrorKind::Decode,
                        format!("job record {id} unreadable: {err}"),
                    )
                })?;
                Ok(Some((rec, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Create the record; false when one already exists.
    pub async fn create_record(&self, rec: &JobRecord) -> Result<bool> {
        let mut rec = rec.clone();
        rec.bound();
        let rec = &rec;
        let body = serde_json::to_vec(rec).unwrap_or_default();
        match self.jobs.create(&rec.id, body.into()).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::js(&format!("create job {}", rec.id), e)),
        }
    }

    /// Compare-and-set update. `change` returns false to leave the record as
    /// it is. Returns the record as stored afterwards.
    pub async fn update_record(
        &self,
        id: &str,
        mut change: impl FnMut(&mut JobRecord) -> bool,
    ) -> Result<JobRecord> {
        for _ in 0..32 {
            let (mut rec, rev) = self
                .record(id)
                .await?
                .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("job {id} not found")))?;
            if !change(&mut rec) {
                return Ok(rec);
            }
            rec.updated_at = now();
            rec.bound();
            let body = serde_json::to_vec(&rec).unwrap_or_default();
            match self.jobs.update(id, body.into(), rev).await {
                Ok(_) => return Ok(rec),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(Error::js(&format!("update job {id}"), e)),
            }
        }
        Err(Error::new(
            ErrorKind::JetStream,
            format!("job {id}: too many concurrent updates"),
        ))
    }

    /// Every job record.
    pub async fn records(&self) -> Result<Vec<JobRecord>> {
        let mut keys = self
            .jobs
            .keys()
            .await
            .map_err(|e| Error::js("list jobs", e))?;
        let mut out = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k.map_err(|e| Error::js("list jobs", e))?;
            if let Some((r, _)) = self.record(&k).await? {
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.created_at.total_cmp(&b.created_at));
        Ok(out)
    }

    /// Live workers (those with a fresh heartbeat).
    pub async fn workers(&self) -> Result<Vec<crate::record::Heartbeat>> {
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
                if let Ok(hb) = serde_json::from_slice::<crate::record::Heartbeat>(&v) {
                    out.push(hb);
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// True when the checkpoint of `task` (a part's id) exists.
    pub async fn is_done(&self, job: &str, task: &str) -> Result<bool> {
        Ok(self.checkpoint_bytes(job, task).await?.is_some())
    }

    /// True when every part of `task` is checkpointed.
    pub async fn task_done(&self, task: &crate::task::Task) -> Result<bool> {
        Ok(self.parts_done(task).await?.len() == task.parts().len())
    }

    /// Ids of the parts of `task` that are checkpointed.
    pub async fn parts_done(
        &self,
        task: &crate::task::Task,
    ) -> Result<std::collections::HashSet<String>> {
        let mut done = std::collections::HashSet::new();
        for part in task.parts() {
            if self.is_done(&task.job, &part.id).await? {
                done.insert(part.id);
            }
        }
        Ok(done)
    }

    async fn checkpoint_bytes(&self, job: &str, task: &str) -> Result<Option<bytes::Bytes>> {
        let key = subjects::progress_key(job, task);
        self.progress
            .get(&key)
            .await
            .map_err(|e| Error::js(&format!("read checkpoint {key}"), e))
    }

    /// The task's checkpoint, if it has one.
    pub async fn checkpoint_of(&self, job: &str, task: &str) -> Result<Option<TaskDone>> {
        let key = subjects::progress_key(job, task);
        match self.checkpoint_bytes(job, task).await? {
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::new(
                    ErrorKind::Decode,
                    format!("checkpoint {key} unreadable: {e}"),
                )
            }),
            None => Ok(None),
        }
    }

    /// Write the checkpoint once. False when it already existed (someone
    /// else finished the same task): exactly-once completion.
    pub async fn checkpoint(&self, job: &str, task: &str, done: &TaskDone) -> Result<bool> {
        let key = subjects::progress_key(job, task);
        let body = serde_json::to_vec(done).unwrap_or_default();
        match self.progress.create(&key, body.into()).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::js(&format!("write checkpoint {key}"), e)),
        }
    }

    /// Checkpointed task ids of a job.
    pub async fn done_tasks(&self, job: &str) -> Result<Vec<String>> {
        let prefix = format!("$KV.{}.{job}.", subjects::PROGRESS_BUCKET);
        let stream = format!("KV_{}", subjects::PROGRESS_BUCKET);
        let counts = subject_counts(&self.js, &stream, &format!("{prefix}>"))
            .await
            .map_err(|e| Error::js("count checkpoints", e))?;
        Ok(counts
            .into_iter()
            .filter_map(|(subject, _)| subject.strip_prefix(&prefix).map(str::to_string))
            .collect())
    }

    /// Publish an event and wait for the stream to store it.
    pub async fn event(&self, job: &str, kind: EventKind) -> Result<()> {
        self.publish_event(job, kind, None).await
    }

    /// Publish an event that may be announced by several parties (a job's
    /// end): the stream stores one per `msg_id`.
    pub async fn event_once(&self, job: &str, kind: EventKind, msg_id: &str) -> Result<()> {
        self.publish_event(job, kind, Some(msg_id)).await
    }

    /// Progress telemetry: a failure is logged, never fails the work.
    pub async fn event_best_effort(&self, job: &str, kind: EventKind) {
        if let Err(e) = self.event(job, kind).await {
            tracing::warn!(job, "event not published: {e}");
        }
    }

    async fn publish_event(
        &self,
        job: &str,
        mut kind: EventKind,
        msg_id: Option<&str>,
    ) -> Result<()> {
        kind.bound();
        let ev = Event {
            job: job.to_string(),
            time: now(),
            kind,
        };
        let body = serde_json::to_vec(&ev).unwrap_or_default();
        let mut headers = async_nats::HeaderMap::new();
        if let Some(id) = msg_id {
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
        }
        self.js
            .publish_with_headers(subjects::events(job), headers, body.into())
            .await
            .map_err(|e| Error::js("publish event", e))?
            .await
            .map_err(|e| Error::js("publish event", e))?;
        Ok(())
    }

    /// A stream that yields whenever the job's record changes (and once for
    /// its current value). Used to wake followers; they re-read the record.
    pub async fn watch_record(&self, id: &str) -> Result<kv::Watch> {
        self.jobs
            .watch_with_history(id)
            .await
            .map_err(|e| Error::js(&format!("watch job {id}"), e))
    }
}

/// Messages per subject of `stream` among the subjects matching `filter`:
/// one `STREAM.INFO` request per page of subjects, reading only the
/// counts. `Stream::info_with_subjects` (async-nats 0.51) asks for a
/// second page even when the first held every subject, so each count
/// there cost two round trips (three with `get_stream`), and it decodes
/// the whole stream config each time; this runs once per finished task
/// (the completion check), so it is the queue path's hottest request.
pub(crate) async fn subject_counts(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
) -> std::result::Result<Vec<(String, u64)>, String> {
    #[derive(serde::Deserialize)]
    struct Page {
        #[serde(default)]
        error: Option<ApiError>,
        #[serde(default)]
        state: Option<PageState>,
        #[serde(default)]
        total: usize,
    }
    #[derive(serde::Deserialize)]
    struct PageState {
        #[serde(default)]
        subjects: Option<std::collections::HashMap<String, u64>>,
    }
    #[derive(serde::Deserialize)]
    struct ApiError {
        #[serde(default)]
        description: String,
    }
    let mut out = Vec::new();
    loop {
        let request = serde_json::json!({"subjects_filter": filter, "offset": out.len()});
        let page: Page = js
            .request(format!("STREAM.INFO.{stream}"), &request)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(e) = page.error {
            return Err(e.description);
        }
        let subjects = page.state.and_then(|s| s.subjects).unwrap_or_default();
        let got = subjects.len();
        out.extend(subjects);
        if got == 0 || out.len() >= page.total {
            return Ok(out);
        }
    }
}
