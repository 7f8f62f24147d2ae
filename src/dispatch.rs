//! A job's tasks, derived from its record, and publishing them. The planner
//! queues them first, `retry` queues the unfinished ones again, the
//! reconciler queues what vanished: all three build the same tasks here.

use async_nats::jetstream;

use crate::error::{Error, ErrorKind, Result};
use crate::job::{JobSpec, Rendition};
use crate::plan::Plan;
use crate::record::JobRecord;
use crate::subjects;
use crate::task::{Task, TaskBody, AUDIO_TASK_ID, STITCH_TASK_ID, TASK_VERSION};

/// The segment and audio tasks of a planned job, audio first (it is one
/// long task: queued last it would be the tail of the critical path), then
/// one task per chunk of [`Plan::chunk_segments`] segments in time order,
/// each encoding every rendition from one decode (a ladder decoded per
/// rendition would decode the source once per rung). Each rendition's part
/// of each segment keeps its own checkpoint.
pub fn work_tasks(id: &str, spec: &JobSpec, plan: &Plan) -> Result<Vec<Task>> {
    let renditions = renditions(spec, plan)?;
    let mut tasks = Vec::with_capacity(plan.segments.len() + 1);
    let task = |tid: String, body: TaskBody| Task {
        v: TASK_VERSION,
        job: id.to_string(),
        id: tid,
        source: spec.source.clone(),
        output: spec.output.clone(),
        body,
    };
    if plan.has_audio {
        tasks.push(task(
            AUDIO_TASK_ID.into(),
            TaskBody::Audio {
                stream: plan.audio_stream.clone(),
            },
        ));
    }
    let per_chunk = plan.chunk_segments.max(1) as usize;
    for chunk in plan.segments.chunks(per_chunk) {
        let s = &chunk[0];
        tasks.push(task(
            Task::ladder_id(s.index),
            TaskBody::Segment {
                renditions: renditions.clone(),
                rendition: None,
                segment: *s,
                following: chunk[1..].to_vec(),
                fps_num: plan.fps_num,
                fps_den: plan.fps_den,
                pts_offset_ns: plan.pts_offset_ns,
                min_frame_ns: plan.min_frame_ns,
                orientation: plan.orientation.clone(),
            },
        ));
    }
    Ok(tasks)
}

/// Checkpointed parts (`done`, by id) do not make a task finished unless
/// all of its parts are there.
pub fn unfinished(tasks: Vec<Task>, done: &std::collections::HashSet<String>) -> Vec<Task> {
    tasks
        .into_iter()
        .filter(|t| t.parts().iter().any(|p| !done.contains(&p.id)))
        .collect()
}

/// The stitch task of a planned job.
pub fn stitch_task(id: &str, spec: &JobSpec, plan: &Plan) -> Result<Task> {
    Ok(Task {
        v: TASK_VERSION,
        job: id.to_string(),
        id: STITCH_TASK_ID.into(),
        source: spec.source.clone(),
        output: spec.output.clone(),
        body: TaskBody::Stitch {
            plan: plan.clone(),
            renditions: renditions(spec, plan)?,
            formats: spec.formats.clone(),
        },
    })
}

/// The renditions that run, each at its planned size (the plan's ladder
/// drops rungs above the source and fits the rest in their boxes). Plans
/// from before the ladder run the spec's renditions as given.
pub fn renditions(spec: &JobSpec, plan: &Plan) -> Result<Vec<Rendition>> {
    let all = spec.resolved_renditions()?;
    if plan.ladder.is_empty() {
        return Ok(all);
    }
    Ok(all
        .into_iter()
        .filter_map(|mut r| {
            let rung = plan.ladder.iter().find(|g| g.name == r.name)?;
            r.width = Some(rung.width);
            r.height = rung.height;
            Some(r)
        })
        .collect())
}

/// Spec and plan of a record, or why it has none.
pub fn planned(rec: &JobRecord) -> Result<(&JobSpec, &Plan)> {
    match (&rec.spec, &rec.plan) {
        (Some(s), Some(p)) => Ok((s, p)),
        _ => Err(Error::new(
            ErrorKind::InvalidSpec,
            format!("job {} has no plan to run", rec.id),
        )),
    }
}

/// Msg-Id tag of copies queued in a generation after the first (`retry`).
pub fn generation_tag(generation: u32) -> Option<String> {
    (generation > 0).then(|| format!("g{generation}"))
}

/// Publish tasks in priority class `class` (a job's, from
/// [`JobSpec::priority_class`]) with their Msg-Ids (`tag` distinguishes
/// later copies) and wait until the stream stored every one.
pub async fn publish(
    js: &jetstream::Context,
    class: subjects::PriorityClass,
    tasks: &[Task],
    tag: Option<&str>,
) -> Result<()> {
    let mut acks = Vec::with_capacity(tasks.len());
    for t in tasks {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            subjects::task_msg_id(&t.job, &t.id, tag).as_str(),
        );
        let body = serde_json::to_vec(t).unwrap_or_default();
        acks.push(
            js.publish_with_headers(
                subjects::task(class, t.kind(), &t.job),
                headers,
                body.into(),
            )
            .await
            .map_err(|e| Error::js("publish task", e))?,
        );
    }
    for a in acks {
        a.await.map_err(|e| Error::js("publish task", e))?;
    }
    Ok(())
}

/// Queued (or in-flight: a work queue keeps a message until it is acked)
/// task messages of one job, by task kind: (work, stitch). Counts every
/// class and the subject shape before classes (two concurrent requests).
pub async fn queued(js: &jetstream::Context, job: &str) -> Result<(u64, u64)> {
    let [classed, legacy] = subjects::tasks_of_job(job);
    let (a, b) = futures::future::join(
        crate::ledger::subject_counts(js, subjects::TASKS_STREAM, &classed),
        crate::ledger::subject_counts(js, subjects::TASKS_STREAM, &legacy),
    )
    .await;
    let counts = [a, b]
        .into_iter()
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::js("count queued tasks", e))?;
    let (mut work, mut stitch) = (0, 0);
    for (subject, count) in counts.into_iter().flatten() {
        if subjects::kind_of_task_subject(&subject) == Some(subjects::TaskKind::Stitch) {
            stitch += count;
        } else {
            work += count;
        }
    }
    Ok((work, stitch))
}

/// Remove a job's queued tasks (it ended: they would only be fetched to be
/// dropped). In-flight copies go too; their workers learn from the cancel
/// message or the record.
pub async fn purge(js: &jetstream::Context, job: &str) -> Result<()> {
    let stream = js
        .get_stream_no_info(subjects::TASKS_STREAM)
        .await
        .map_err(|e| Error::js("open task stream", e))?;
    for filter in subjects::tasks_of_job(job) {
        stream
            .purge()
            .filter(filter)
            .await
            .map_err(|e| Error::js("purge queued tasks", e))?;
    }
    Ok(())
}
