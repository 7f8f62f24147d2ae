//! Seeds N running jobs (one queued segment task each, nothing stranded)
//! on the server at NATS_URL, for measuring what one reconciler sweep
//! costs: start `jetcode worker --slots 0 --reconcile-interval 2` next to
//! it and read `jetcode_reconcile_sweep_seconds` from its /metrics.
//!
//! ```sh
//! NATS_URL=nats://127.0.0.1:4222 cargo run --release --example sweep_cost -- 1000
//! ```

use jetcode::plan::{plan, PlanOptions, SourceFacts};
use jetcode::record::{JobRecord, JobState};
use jetcode::{dispatch, ConnectOptions, JobSpec};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[tokio::main]
async fn main() -> Res<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1000);
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let nc = ConnectOptions::new(url).connect().await?;
    let js = async_nats::jetstream::new(nc.clone());
    jetcode::streams::apply(&js).await?;
    let client = jetcode::Client::from_nats(nc).await?;
    let facts = SourceFacts {
        duration_ns: 4_000_000_000,
        fps_num: 25,
        fps_den: 1,
        frames: 100,
        width: 320,
        height: 180,
        video_codec: "video/x-h264".into(),
        keyframes: vec![0, 50],
        first_pts_ns: 0,
        pts_offset_ns: 0,
        audio: None,
        ..Default::default()
    };
    let p = plan(
        &facts,
        &PlanOptions {
            target_seconds: 4.0,
            ..Default::default()
        },
    )?;
    let t0 = std::time::Instant::now();
    for i in 0..n {
        let id = format!("sweep-{i:05}");
        let spec = JobSpec::from_json(
            format!(
                r#"{{"id":"{id}","source":"file:///nowhere/in.mp4","output":"file:///nowhere/{id}/","renditions":["h264-240p"]}}"#
            )
            .as_bytes(),
        )?;
        let mut rec = JobRecord::unplanned(&id, Some(spec.clone()), JobState::Running, "");
        rec.error = None;
        rec.plan = Some(p.clone());
        rec.tasks_total = p.segments.len() as u32;
        client.ledger().create_record(&rec).await?;
        dispatch::publish(
            &js,
            spec.priority_class(),
            &dispatch::work_tasks(&id, &spec, &p)?,
            None,
        )
        .await?;
    }
    println!(
        "seeded {n} running jobs in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
