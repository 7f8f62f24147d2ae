//! Coordination cost of the queue path, by itself: starts a nats-server
//! ($NATS_SERVER_BIN, random port, file store in a temp dir), runs
//! `common/coord.rs` serially and with concurrency, prints the markdown
//! table and stops the server.
//!
//! ```sh
//! cargo run --release --example coord              # 2000 serial, 10000 at 16 and 64 slots
//! cargo run --release --example coord -- 5000 1 64 # tasks, then slot counts
//! ```

#[path = "common/coord.rs"]
mod coord;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() -> Res<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let tasks = args.first().copied();
    let slots = if args.len() > 1 {
        args[1..].to_vec()
    } else {
        vec![1, 16, 64]
    };
    let bin = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
    let store = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let _server = Server(
        Command::new(&bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{bin}: {e} (set NATS_SERVER_BIN)"))?,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("nats-server did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("nats://127.0.0.1:{port}");
    let mut runs = Vec::new();
    for &c in &slots {
        let n = tasks.unwrap_or(if c <= 1 { 2000 } else { 10_000 });
        eprintln!("[coord] {n} tasks, {c} slots");
        let f = coord::run_measured(&url, n, c, Some(_server.0.id())).await?;
        eprintln!(
            "[coord] {:.0} tasks/s, p50 {:.3} ms, p99 {:.3} ms",
            f.tasks_per_s, f.p50_ms, f.p99_ms
        );
        runs.push(f);
    }
    println!("{}", coord::markdown(&runs));
    Ok(())
}
