//! The queue path of one task with no media work: publish the task (with
//! its Msg-Id), fetch it, create its checkpoint, double-ack it; serially,
//! against the server at NATS_URL, on a scratch subject of the real
//! topology. Prints tasks/s and per-task p50/p99.
//!
//! ```sh
//! NATS_URL=nats://127.0.0.1:4222 cargo run --release --example queue_path -- 2000
//! ```
//! ops/README.md uses it to measure what `sync_interval: always` costs.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use jetcode::{subjects, ConnectOptions};

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
    let js = jetstream::new(nc);
    jetcode::streams::apply(&js).await?;
    let consumer: PullConsumer = js
        .get_consumer_from_stream(subjects::WORKERS_CONSUMER, subjects::TASKS_STREAM)
        .await?;
    let progress = js.get_key_value(subjects::PROGRESS_BUCKET).await?;
    let run = format!("qp{}", std::process::id());
    let body = vec![b'x'; 600]; // about the size of a segment task message
    let mut lat = Vec::with_capacity(n);
    let t0 = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            subjects::task_msg_id(&run, &format!("t{i}"), None).as_str(),
        );
        js.publish_with_headers(
            subjects::task(
                subjects::PriorityClass::Normal,
                subjects::TaskKind::Segment,
                &run,
            ),
            headers,
            body.clone().into(),
        )
        .await?
        .await?;
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .expires(Duration::from_secs(5))
            .messages()
            .await?;
        let msg = batch.next().await.ok_or("no message")??;
        progress
            .create(subjects::progress_key(&run, &format!("t{i}")), "{}".into())
            .await?;
        msg.double_ack().await?;
        lat.push(t.elapsed());
    }
    let wall = t0.elapsed();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "{n} tasks serially in {:.2}s: {:.0} tasks/s, p50 {:.2} ms, p99 {:.2} ms",
        wall.as_secs_f64(),
        n as f64 / wall.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3
    );
    Ok(())
}
