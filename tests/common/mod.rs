//! Test harness: a REAL nats-server per test (JetStream on, random port,
//! temp store dir), killed on drop; and waiting with deadlines, not sleeps.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;

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

/// A port nothing listens on now (the OS picked it).
pub fn free_port() -> u16 {
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
        Self::launch(store, None, false, &[], &[])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        let store = tempfile::tempdir().expect("tempdir");
        Self::launch(store, None, true, extra, &[])
    }

    /// A server from a config file, with `env` (the variables the file
    /// reads, e.g. passwords). Address and port come from the command line,
    /// which overrides the file; JetStream and its store from the file.
    /// Restarts forget the file.
    pub fn start_config(config: &Path, env: &[(&str, &str)]) -> Self {
        let store = tempfile::tempdir().expect("tempdir");
        let config = config.to_str().expect("utf-8 config path");
        Self::launch(store, None, false, &["-c", config], env)
    }

    fn launch(
        store: tempfile::TempDir,
        port: Option<u16>,
        js: bool,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let port = port.unwrap_or_else(free_port);
        let mut cmd = Command::new(server_bin());
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
        if js {
            cmd.arg("-js").arg("-sd").arg(store.path());
        }
        let child = cmd
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(store.path().join("stderr.log"))
                    .map_or(Stdio::null(), Stdio::from),
            )
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", server_bin().display()));
        let stderr = store.path().join("stderr.log");
        let mut server = NatsServer { child, port, store };
        wait_until(
            Duration::from_secs(10),
            "nats-server accepts connections",
            || {
                if let Ok(Some(status)) = server.child.try_wait() {
                    panic!(
                        "nats-server {extra:?} exited ({status}) before it accepted connections: {}",
                        std::fs::read_to_string(&stderr).unwrap_or_default()
                    );
                }
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            },
        );
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kill the server (as a crash or an operator would) and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start again after [`NatsServer::kill`], on the same port and store.
    pub fn restart_same(mut self) -> Self {
        let port = self.port;
        let store = std::mem::replace(&mut self.store, tempfile::tempdir().expect("tempdir"));
        std::mem::forget(self);
        Self::launch(store, Some(port), true, &[], &[])
    }

    /// Stop and start again on the same port and store (a server restart).
    pub fn restart(mut self) -> Self {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let port = self.port;
        let store = std::mem::replace(&mut self.store, tempfile::tempdir().expect("tempdir"));
        std::mem::forget(self);
        Self::launch(store, Some(port), true, &[], &[])
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
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
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

/// A `jetcode worker` child process, killed on drop.
pub struct WorkerProc {
    pub child: Child,
    pub id: String,
}

impl WorkerProc {
    pub fn start(
        url: &str,
        id: &str,
        root: &std::path::Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_bin(&jetcode_bin(), url, id, root, extra, env)
    }

    /// [`WorkerProc::start`] from another copy of the binary.
    pub fn start_bin(
        bin: &Path,
        url: &str,
        id: &str,
        root: &std::path::Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let log = std::fs::File::create(root.join(format!("{id}.log"))).expect("log file");
        let slots: &[&str] = if extra.contains(&"--slots") {
            &[]
        } else {
            &["--slots", "1"]
        };
        let child = Command::new(bin)
            .args(["worker", "--id", id, "--file-root"])
            .arg(root)
            .args(slots)
            .args(extra)
            .env("NATS_URL", url)
            .env("JETCODE_LOG", "info,async_nats=warn")
            // Inherited by its media children, whose command lines name no
            // path (their orders come on stdin): processes_mentioning finds
            // them by it.
            .env("JETCODE_TEST_ROOT", root)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start worker");
        WorkerProc {
            child,
            id: id.to_string(),
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Wait for exit with a deadline; returns the exit status.
    pub fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        wait_exit(&mut self.child, deadline, "worker exit")
    }
}

/// Wait for `child` to exit, at most `deadline`; its status.
pub fn wait_exit(child: &mut Child, deadline: Duration, what: &str) -> std::process::ExitStatus {
    let mut status = None;
    wait_until(deadline, what, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    status.expect("exited")
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Generate a test clip with the jetcode binary (videotestsrc + audiotestsrc).
pub fn make_clip(path: &std::path::Path, seconds: f64, width: u32, height: u32) {
    let out = Command::new(jetcode_bin())
        .arg("testclip")
        .arg(path)
        .args([
            "--seconds",
            &seconds.to_string(),
            "--width",
            &width.to_string(),
            "--height",
            &height.to_string(),
            "--fps",
            "25",
        ])
        .output()
        .expect("run testclip");
    assert!(
        out.status.success(),
        "testclip: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Video frames in a file, counted by ffprobe (packets of stream v:0).
pub fn ffprobe_frames(path: &std::path::Path) -> u64 {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_packets",
            "-show_entries",
            "stream=nb_read_packets",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("ffprobe");
    // Rotated streams add a side-data column: "75,".
    String::from_utf8_lossy(&out.stdout)
        .split([',', '\n'])
        .next()
        .unwrap_or("")
        .trim()
        .parse()
        .unwrap_or_else(|_| {
            panic!(
                "ffprobe {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// Command lines of the live children of `parent`.
pub fn children_of(parent: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // After the command name: state, then the parent's pid.
            stat.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok())
                == Some(parent)
        })
        .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .collect()
}

/// Pids of live processes whose command line or environment mentions
/// `needle` (e.g. a test's temp root: in a worker's arguments, and in the
/// environment its media children inherit).
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Zombies are dead; they only wait to be reaped.
            let zombie = state
                .rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'));
            let mentions = |file: &str| {
                std::fs::read(format!("/proc/{pid}/{file}"))
                    .map(|c| String::from_utf8_lossy(&c).contains(needle))
                    .unwrap_or(false)
            };
            !zombie && (mentions("cmdline") || mentions("environ"))
        })
        .collect()
}

/// A 3-node (or n-node) JetStream cluster on loopback: real nats-server
/// processes with routes between them, each with its own store and a
/// monitoring port (for `/jsz`: who leads the meta group).
pub struct NatsCluster {
    pub nodes: Vec<Option<Child>>,
    pub ports: Vec<u16>,
    pub monitor_ports: Vec<u16>,
    cluster_ports: Vec<u16>,
    stores: Vec<tempfile::TempDir>,
}

impl NatsCluster {
    pub fn start(n: usize) -> Self {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let monitor_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let stores = (0..n)
            .map(|_| tempfile::tempdir().expect("tempdir"))
            .collect();
        let mut c = NatsCluster {
            nodes: (0..n).map(|_| None).collect(),
            ports,
            monitor_ports,
            cluster_ports,
            stores,
        };
        for i in 0..n {
            c.start_node(i);
        }
        c
    }

    /// Server name of node `i`.
    pub fn name(i: usize) -> String {
        format!("n{i}")
    }

    pub fn start_node(&mut self, i: usize) {
        let routes = self
            .cluster_ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let child = Command::new(server_bin())
            .args(["-a", "127.0.0.1", "-p", &self.ports[i].to_string()])
            .args(["-m", &self.monitor_ports[i].to_string()])
            .args(["-n", &Self::name(i), "--cluster_name", "jetcode-test"])
            .args([
                "--cluster",
                &format!("nats://127.0.0.1:{}", self.cluster_ports[i]),
            ])
            .args(["--routes", &routes])
            .arg("-js")
            .arg("-sd")
            .arg(self.stores[i].path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", server_bin().display()));
        self.nodes[i] = Some(child);
        let port = self.ports[i];
        wait_until(
            Duration::from_secs(10),
            "cluster node accepts connections",
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        );
    }

    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every node's URL, comma separated: a seed list.
    pub fn urls(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Index of the node leading the JetStream meta group, from `/jsz` of
    /// any live node.
    pub fn meta_leader(&self) -> Option<usize> {
        for (i, port) in self.monitor_ports.iter().enumerate() {
            if self.nodes[i].is_none() {
                continue;
            }
            let Some(body) = http_get_body(*port, "/jsz") else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            if let Some(leader) = v["meta_cluster"]["leader"].as_str() {
                return (0..self.nodes.len()).find(|j| Self::name(*j) == leader);
            }
        }
        None
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
    }
}

/// Body of a plain HTTP GET on loopback, or None.
pub fn http_get_body(port: u16, path: &str) -> Option<String> {
    let (code, text) = http_get(port, path);
    (code != 0).then(|| text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()))?
}

/// GET `path` from 127.0.0.1:`port`: (status code, whole response), (0, "")
/// when nothing answers. The request line goes out in two TCP segments on
/// purpose: a server must wait for the whole head.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.set_nodelay(true);
    let _ = s.write_all(b"GET ").and_then(|_| s.flush());
    let _ = write!(
        s,
        "{path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    );
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, buf)
}

/// A real nats-server with the topology applied, a client, and a temp
/// root for media: what a test of the running system starts from.
pub struct Fixture {
    pub server: NatsServer,
    pub client: jetcode::Client,
    pub root: tempfile::TempDir,
}

impl Fixture {
    pub async fn new() -> Self {
        let server = NatsServer::start();
        let nc = connect_applied(&server).await;
        let client = jetcode::Client::from_nats(nc).await.unwrap();
        Fixture {
            server,
            client,
            root: tempfile::tempdir().unwrap(),
        }
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    pub fn clip(&self, name: &str, seconds: f64, w: u32, h: u32) -> PathBuf {
        let p = self.root().join(name);
        make_clip(&p, seconds, w, h);
        p
    }

    pub fn worker(&self, id: &str, extra: &[&str]) -> WorkerProc {
        WorkerProc::start(&self.server.url(), id, self.root(), extra, &[])
    }

    pub fn spec(
        &self,
        id: &str,
        src: &Path,
        renditions: serde_json::Value,
        seg: f64,
    ) -> jetcode::JobSpec {
        serde_json::from_value(serde_json::json!({
            "id": id,
            "source": format!("file://{}", src.display()),
            "output": format!("file://{}/out/{id}/", self.root().display()),
            "renditions": renditions,
            "segment_seconds": seg,
        }))
        .unwrap()
    }

    pub fn out(&self, id: &str) -> PathBuf {
        self.root().join("out").join(id)
    }

    /// Every event of a job so far.
    pub async fn events(&self, id: &str) -> Vec<jetcode::Event> {
        let mut evs = Box::pin(self.client.watch(id).await.unwrap());
        let mut out = Vec::new();
        while let Ok(Some(Ok(e))) =
            tokio::time::timeout(Duration::from_millis(500), evs.next()).await
        {
            out.push(e);
        }
        out
    }

    /// Id of the first segment task that starts.
    pub async fn first_segment_started(&self, id: &str) -> String {
        let e = self
            .wait_event(
                id,
                "a segment started",
                |k| matches!(k, jetcode::EventKind::TaskStarted { task, .. } if task.starts_with("seg-")),
            )
            .await;
        match e.kind {
            jetcode::EventKind::TaskStarted { task, .. } => task,
            _ => unreachable!("filtered above"),
        }
    }

    pub async fn wait_event(
        &self,
        id: &str,
        what: &str,
        pred: impl Fn(&jetcode::EventKind) -> bool,
    ) -> jetcode::Event {
        let mut evs = Box::pin(self.client.watch(id).await.unwrap());
        let found = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(e) = evs.next().await {
                let e = e.unwrap();
                if pred(&e.kind) {
                    return e;
                }
            }
            panic!("event stream ended before {what}");
        })
        .await;
        found.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }
}

/// Run ffmpeg (quiet, overwrite); panics with its stderr if it fails.
pub fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .expect("run ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// ffprobe with `args` (e.g. `-show_entries ...`), as key=value pairs.
pub fn ffprobe_entries(path: &Path, args: &[&str]) -> Vec<(String, String)> {
    let out = Command::new("ffprobe")
        .args(["-v", "error"])
        .args(args)
        .args(["-of", "default=nw=1"])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    assert!(
        out.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// A part holds `frames` video frames and its first is a keyframe (an IDR
/// a player can start on), by ffprobe's packet flags.
pub fn assert_part_starts_with_keyframe(part: &Path, frames: u64) {
    let flags: Vec<String> = ffprobe_entries(
        part,
        &["-select_streams", "v:0", "-show_entries", "packet=flags"],
    )
    .into_iter()
    .map(|(_, v)| v)
    .collect();
    assert_eq!(flags.len() as u64, frames, "{}", part.display());
    assert!(
        flags[0].starts_with('K'),
        "{} starts with {:?}",
        part.display(),
        flags[0]
    );
}
