//! Submit a job from Rust and follow it to the end.
//!
//! ```sh
//! cargo run --example submit -- examples/trailer.json
//! ```
use futures::StreamExt;
use jetcode::{Client, ConnectOptions, EventKind, JobSpec};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "examples/trailer.json".into());
    let spec = JobSpec::from_json(&std::fs::read(&path)?)?;
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let client = Client::connect(&ConnectOptions::new(url)).await?;

    let id = client.submit(&spec).await?;
    println!("submitted {id}");
    let mut events = Box::pin(client.watch(id.as_ref()).await?);
    while let Some(event) = events.next().await {
        let event = event?;
        match &event.kind {
            EventKind::TaskDone {
                task, worker, fps, ..
            } => println!("{task} done on {worker} ({fps:.0} fps)"),
            EventKind::Done { output, .. } => {
                println!("done: {output}");
                break;
            }
            EventKind::Failed { reason } => return Err(reason.clone().into()),
            EventKind::Cancelled => return Err("cancelled".into()),
            _ => {}
        }
    }
    Ok(())
}
