//! The autoscaler: every `--interval` it reads the queue lag (tasks and
//! job specs waiting or in flight, the figure KEDA's JetStream scaler
//! uses) and the fleet's heartbeats, asks the pure [`policy`] for a worker
//! count, and has an [`actuator`] make it so. One decision log line per
//! change, with its reason.

pub mod actuator;
pub mod policy;

use std::time::{Duration, Instant};

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::metrics as m;
use crate::record::Heartbeat;
use crate::subjects;
use actuator::Actuator;
use policy::{Observation, Policy, PolicyConfig};

/// `jetcode scaler` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ScalerArgs {
    /// local (run worker processes here), systemd (jetcode-worker@N units),
    /// command (run --hook with the count), dry-run (log only).
    #[arg(long, default_value = "local")]
    pub actuator: String,
    #[arg(long, default_value_t = 1)]
    pub min: u32,
    #[arg(long, default_value_t = 4)]
    pub max: u32,
    /// Seconds between decisions.
    #[arg(long, default_value_t = 5.0)]
    pub interval: f64,
    /// Waiting or running tasks one worker is expected to take.
    #[arg(long, default_value_t = 2)]
    pub target_tasks_per_worker: u32,
    /// Most workers added by one decision.
    #[arg(long, default_value_t = 4)]
    pub max_step_up: u32,
    /// Seconds the fleet must stay quiet before one worker is stopped.
    #[arg(long, default_value_t = 60.0)]
    pub scale_down_window: f64,
    /// Mean CPU percent above which waiting work adds one worker.
    #[arg(long, default_value_t = 85.0)]
    pub cpu_high: f32,
    /// Mean memory percent above which the fleet does not grow.
    #[arg(long, default_value_t = 85.0)]
    pub mem_high: f32,
    /// The command actuator's hook (`sh -c`), given JETCODE_DESIRED,
    /// JETCODE_ACTUAL and JETCODE_WORKERS.
    #[arg(long)]
    pub hook: Option<String>,
    /// The systemd actuator's template unit.
    #[arg(long, default_value = "jetcode-worker")]
    pub unit: String,
    /// Seconds local workers get to drain when the scaler stops; keep it
    /// above the workers' --drain-timeout + 10 (their own exit bound).
    #[arg(long, default_value_t = 50.0)]
    pub stop_bound: f64,
    /// Arguments for every worker the local actuator starts (after `--`).
    #[arg(last = true)]
    pub worker_args: Vec<String>,
    /// Address of the scaler's /healthz and /metrics (port 0: any free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub metrics_addr: String,
    /// Environment for every local worker (NATS URL and credentials).
    #[arg(skip)]
    pub worker_env: Vec<(String, String)>,
}

/// A duration option: finite, not negative, at most a day.
fn secs(name: &str, v: f64) -> Result<Duration> {
    if v.is_finite() && (0.0..=86_400.0).contains(&v) {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(Error::new(
            crate::error::ErrorKind::InvalidSpec,
            format!("--{name} {v}: want seconds between 0 and 86400"),
        ))
    }
}

impl ScalerArgs {
    /// Every option in range, or the one that is not.
    pub fn validate(&self) -> Result<()> {
        secs("interval", self.interval)?;
        secs("scale-down-window", self.scale_down_window)?;
        secs("stop-bound", self.stop_bound)?;
        if self.max == 0 || self.max < self.min {
            return Err(Error::new(
                crate::error::ErrorKind::InvalidSpec,
                format!(
                    "--max {} must be at least 1 and at least --min {}",
                    self.max, self.min
                ),
            ));
        }
        Ok(())
    }

    pub fn policy(&self) -> PolicyConfig {
        PolicyConfig {
            min: self.min,
            max: self.max,
            target_tasks_per_worker: self.target_tasks_per_worker,
            max_step_up: self.max_step_up,
            scale_down_window: secs("scale-down-window", self.scale_down_window)
                .unwrap_or(Duration::from_secs(60)),
            cpu_high: self.cpu_high,
            mem_high: self.mem_high,
        }
    }

    /// The actuator these options name, or why not.
    pub fn actuator(&self) -> Result<Box<dyn Actuator>> {
        Ok(match self.actuator.as_str() {
            "local" => Box::new(actuator::Local::new(
                self.worker_args.clone(),
                self.worker_env.clone(),
            )?),
            "systemd" => Box::new(actuator::Systemd::new(self.unit.clone())),
            "command" => match &self.hook {
                Some(h) => Box::new(actuator::Hook::new(h.clone(), 0)),
                None => {
                    return Err(Error::new(
                        crate::error::ErrorKind::InvalidSpec,
                        "--actuator command needs --hook",
                    ))
                }
            },
            "dry-run" => Box::new(actuator::DryRun::new(0)),
            other => {
                return Err(Error::new(
                    crate::error::ErrorKind::InvalidSpec,
                    format!("unknown actuator {other:?} (local, systemd, command, dry-run)"),
                ))
            }
        })
    }
}

/// Waiting plus in-flight messages of a durable consumer.
async fn consumer_lag(js: &jetstream::Context, stream: &str, consumer: &str) -> Result<u64> {
    let mut c: jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream(consumer, stream)
        .await
        .map_err(|e| Error::js(&format!("open consumer {consumer}"), e))?;
    let info = c
        .info()
        .await
        .map_err(|e| Error::js(&format!("consumer {consumer} info"), e))?;
    Ok(info.num_pending + info.num_ack_pending as u64)
}

/// Lag of the task queue (every priority class's consumer) plus job specs
/// not yet planned: with the fleet at zero, a submitted job is only
/// visible as a waiting spec.
pub async fn lag(js: &jetstream::Context) -> Result<u64> {
    let mut tasks = 0;
    for class in subjects::PriorityClass::ALL {
        tasks += consumer_lag(js, subjects::TASKS_STREAM, class.consumer()).await?;
    }
    let specs = consumer_lag(js, subjects::JOBS_STREAM, subjects::PLANNER_CONSUMER).await?;
    Ok(tasks + specs)
}

fn observe(at: Duration, lag: u64, actual: u32, fleet: &[Heartbeat]) -> Observation {
    let live: Vec<&Heartbeat> = fleet.iter().filter(|h| !h.draining).collect();
    // An empty fleet is idle: 0, not the -0.0 an empty float sum gives.
    let mean = |f: fn(&Heartbeat) -> f32| match live.len() {
        0 => 0.0,
        n => live.iter().map(|h| f(h)).sum::<f32>() / n as f32,
    };
    Observation {
        at,
        lag,
        actual,
        busy: live.iter().filter(|h| h.busy > 0).count() as u32,
        cpu: mean(|h| h.cpu),
        mem: mean(|h| h.mem),
    }
}

/// Serve /healthz and /metrics on `addr` until `stop` (None when a
/// metrics recorder is already installed in this process).
async fn endpoint(
    addr: &str,
    stop: CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let Ok(prometheus) = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()
    else {
        return Ok(None);
    };
    m::describe();
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Error::new(
            crate::error::ErrorKind::Storage,
            format!("metrics address {addr}: {e}"),
        )
    })?;
    if let Ok(a) = listener.local_addr() {
        tracing::info!("scaler metrics on http://{a}/metrics");
    }
    let router = axum::Router::new()
        .route(
            "/healthz",
            get(|| async { crate::http::text(StatusCode::OK, "ok\n") }),
        )
        .route(
            "/metrics",
            get(move || async move { crate::http::metrics(&prometheus) }),
        );
    Ok(Some(tokio::spawn(crate::http::serve(
        listener, router, stop,
    ))))
}

/// Run until `stop`; then stop what the actuator started, within its bound.
pub async fn run(
    client: crate::Client,
    args: ScalerArgs,
    mut act: Box<dyn Actuator>,
    stop: CancellationToken,
) -> Result<()> {
    args.validate()?;
    let http = endpoint(&args.metrics_addr, stop.clone()).await?;
    let js = jetstream::new(client.nats().clone());
    let mut policy = Policy::new(args.policy());
    let started = Instant::now();
    let interval = secs("interval", args.interval)?.max(Duration::from_millis(200));
    // Each read may take at most this long: a dead server must not stall
    // the loop past its own interval (nor the exit).
    let read_bound = interval.clamp(Duration::from_secs(2), Duration::from_secs(10));
    let mut last_reason = "";
    let (mut seeded, mut fleet_unknown) = (false, false);
    loop {
        let read = async {
            let lag = tokio::time::timeout(read_bound, lag(&js)).await;
            let fleet = tokio::time::timeout(read_bound, client.workers()).await;
            (lag, fleet)
        };
        let (lag, fleet) = tokio::select! {
            _ = stop.cancelled() => break,
            r = read => r,
        };
        // Heartbeats are a hint (who is busy, CPU, memory); the lag is the
        // decision. The heartbeat bucket lives in memory and is gone after
        // a server restart until a worker writes again: with no worker
        // running, nothing would ever recreate it.
        let fleet = match fleet {
            Ok(Ok(f)) => {
                fleet_unknown = false;
                if !seeded {
                    act.seed(f.iter().filter(|h| !h.draining).count() as u32);
                    seeded = true;
                }
                f
            }
            Ok(Err(e)) => {
                if !fleet_unknown {
                    tracing::warn!("no heartbeats ({e}): deciding on the lag alone");
                }
                fleet_unknown = true;
                Vec::new()
            }
            Err(_) => {
                if !fleet_unknown {
                    tracing::warn!(
                        "no heartbeats within {read_bound:?}: deciding on the lag alone"
                    );
                }
                fleet_unknown = true;
                Vec::new()
            }
        };
        match lag {
            Ok(Ok(lag)) => {
                let actual = act.actual();
                let o = observe(started.elapsed(), lag, actual, &fleet);
                let d = policy.decide(&o);
                metrics::gauge!(m::SCALER_LAG).set(lag as f64);
                metrics::gauge!(m::SCALER_ACTUAL).set(actual as f64);
                metrics::gauge!(m::SCALER_DESIRED).set(d.desired as f64);
                if d.desired != actual {
                    metrics::counter!(m::SCALER_DECISIONS, m::LABEL_REASON => d.reason.as_str())
                        .increment(1);
                    tracing::info!(
                        lag,
                        actual,
                        desired = d.desired,
                        busy = o.busy,
                        cpu = %format_args!("{:.0}", o.cpu),
                        mem = %format_args!("{:.0}", o.mem),
                        reason = d.reason.as_str(),
                        "scaling"
                    );
                    if let Err(e) = act.scale_to(d.desired, &fleet) {
                        tracing::warn!("scaling to {} failed: {e}", d.desired);
                    }
                } else if d.reason.as_str() != last_reason {
                    tracing::debug!(lag, actual, reason = d.reason.as_str(), "holding");
                }
                last_reason = d.reason.as_str();
            }
            // No lag, no decision: never scale on a guess.
            Ok(Err(e)) => tracing::warn!("no lag figure this round: {e}"),
            Err(_) => {
                tracing::warn!("no lag figure this round: NATS did not answer in {read_bound:?}")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
    if let Some(h) = http {
        let _ = tokio::time::timeout(Duration::from_secs(2), h).await;
    }
    let bound = secs("stop-bound", args.stop_bound)?;
    tokio::task::spawn_blocking(move || act.shutdown(bound))
        .await
        .map_err(|e| Error::new(crate::error::ErrorKind::Storage, e.to_string()))?;
    Ok(())
}
