//! Test harness: a REAL nats-server per test (JetStream on, random port,
//! temp store dir), killed on drop; and waiting with deadlines, not sleeps.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A nats-server child process with its own store directory.
pub struct NatsServer {
    child: Child,
    pub port: u16,
    pub store: tempfile::TempDir,
}

/// The nats-server binary: `NATS_SERVER_BIN`, else the project's tools dir, else PATH.
pub fn server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/nats-server");
    if local.exists() {
        return local;
    }
    PathBuf::from("nats-server")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

impl NatsServer {
    /// Start a JetStream server and wait until it accepts connections.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server without JetStream (to test refusal).
    pub fn start_plain() -> Self {
        let store = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let child = Command::new(server_bin())
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", server_bin().display()));
        let server = NatsServer { child, port, store };
        wait_until(Duration::from_secs(10), "nats-server accepts connections", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        server
    }

    pub fn start_with(extra: &[&str]) -> Self {
        let store = tempfile::tempdir().expect("tempdir");
        Self::start_in(store, None, extra)
    }

    fn start_in(store: tempfile::TempDir, port: Option<u16>, extra: &[&str]) -> Self {
        let port = port.unwrap_or_else(free_port);
        let child = Command::new(server_bin())
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store.path())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", server_bin().display()));
        let server = NatsServer { child, port, store };
        wait_until(Duration::from_secs(10), "nats-server accepts connections", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stop and start again on the same port and store (a server restart).
    pub fn restart(mut self) -> Self {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let port = self.port;
        let store = std::mem::replace(&mut self.store, tempfile::tempdir().expect("tempdir"));
        std::mem::forget(self);
        Self::start_in(store, Some(port), &[])
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `cond` until true; panic naming `what` after `deadline`.
pub fn wait_until(deadline: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_millis(5);
    while !cond() {
        assert!(Instant::now() < end, "timed out after {deadline:?} waiting for {what}");
        std::thread::park_timeout(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Async twin of [`wait_until`].
pub async fn wait_for<F, Fut>(deadline: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    let mut pause = Duration::from_millis(10);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// Connect and apply the topology.
pub async fn connect_applied(server: &NatsServer) -> async_nats::Client {
    let nc = jetcode::ConnectOptions::new(server.url())
        .connect()
        .await
        .expect("connect");
    jetcode::streams::apply(&async_nats::jetstream::new(nc.clone()))
        .await
        .expect("apply");
    nc
}

/// Path of the built `jetcode` binary.
pub fn jetcode_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_jetcode"))
}
