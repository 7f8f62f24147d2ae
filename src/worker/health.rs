//! Liveness for operators and the scaler: heartbeats in KV, HTTP
//! /healthz /readyz /metrics, systemd notify, and a `nats micro` service.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::service::ServiceExt;
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Worker;
use crate::record::{now, Heartbeat};
use crate::subjects;

/// How often a heartbeat is written; well inside the bucket's max_age.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(3);

/// Resource readings of this worker and its children.
struct Sampler {
    sys: sysinfo::System,
    pid: sysinfo::Pid,
}

impl Sampler {
    fn new() -> Self {
        Sampler {
            sys: sysinfo::System::new(),
            pid: sysinfo::Pid::from_u32(std::process::id()),
        }
    }

    /// (cpu %, rss bytes of self + children, machine memory %).
    fn sample(&mut self) -> (f32, u64, f32) {
        self.sys.refresh_cpu_usage();
        self.sys.refresh_memory();
        self.sys
            .refresh_processes(sysinfo::ProcessesToUpdate::All, true);
        let rss = self
            .sys
            .processes()
            .values()
            .filter(|p| p.pid() == self.pid || p.parent() == Some(self.pid))
            .map(|p| p.memory())
            .sum();
        let total = self.sys.total_memory().max(1);
        let mem = self.sys.used_memory() as f32 * 100.0 / total as f32;
        (self.sys.global_cpu_usage(), rss, mem)
    }
}

impl Worker {
    /// Fold one segment task's pace (output pixels per second of its
    /// slot) into [`Heartbeat::speed`]: an exponential average, so one
    /// odd task (a cold cache, a busy neighbour) moves it a third.
    pub(super) fn record_speed(&self, pixels: f64, seconds: f64) {
        if !(pixels > 0.0 && pixels.is_finite() && seconds.is_finite() && seconds > 0.0) {
            return;
        }
        let sample = pixels / seconds;
        let _ = self
            .speed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let old = f64::from_bits(bits);
                let new = if old > 0.0 {
                    old + (sample - old) / 3.0
                } else {
                    sample
                };
                Some(new.to_bits())
            });
    }

    pub(super) fn heartbeat(&self, cpu: f32, rss: u64, mem: f32, fps: f64) -> Heartbeat {
        let slots = self.args.slots();
        Heartbeat {
            id: self.id.clone(),
            host: self.host.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            slots,
            busy: self.busy.load(Ordering::Relaxed),
            cpu,
            rss,
            mem,
            fps,
            speed: f64::from_bits(self.speed.load(Ordering::Relaxed)),
            tasks_done: self.tasks_done.load(Ordering::Relaxed),
            started_at: self.started_at,
            at: now(),
            draining: self.shutdown.is_cancelled(),
            health: self.health_addr.clone(),
        }
    }
}

/// Write heartbeats until `stop`, then delete ours.
pub async fn heartbeat_loop(w: Arc<Worker>, stop: CancellationToken) {
    // Opened lazily and re-opened (re-created if need be) after a failure:
    // the bucket lives in memory and vanishes when nats-server restarts.
    let mut kv: Option<async_nats::jetstream::kv::Store> = None;
    let mut sampler = Sampler::new();
    let mut last_frames = w.frames.load(Ordering::Relaxed);
    let mut last_at = std::time::Instant::now();
    let mut watchdog_usec = 0u64;
    let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec);
    let mut failing = false;
    loop {
        let (cpu, rss, mem) = sampler.sample();
        let frames = w.frames.load(Ordering::Relaxed);
        let fps = (frames - last_frames) as f64 / last_at.elapsed().as_secs_f64().max(0.001);
        last_frames = frames;
        last_at = std::time::Instant::now();
        let hb = w.heartbeat(cpu, rss, mem, fps);
        *w.last_heartbeat.lock().unwrap_or_else(|p| p.into_inner()) = Some(hb.clone());
        let body = serde_json::to_vec(&hb).unwrap_or_default();
        // Liveness is this process being able to run this loop, not NATS
        // being reachable: a NATS outage must not get systemd to kill
        // every worker mid-encode.
        if watchdog {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        }
        let put = async {
            if kv.is_none() {
                kv = Some(
                    crate::streams::ensure_bucket(&w.js, subjects::WORKERS_BUCKET)
                        .await
                        .map_err(|e| e.to_string())?,
                );
            }
            match &kv {
                Some(store) => store
                    .put(&w.id, body.into())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                None => Ok(()),
            }
        };
        let result = tokio::select! {
            r = tokio::time::timeout(NATS_OP_BOUND, put) => r.unwrap_or_else(|_| Err("timed out".into())),
            // Shutting down: a put stuck on a dead server must not hold it.
            _ = stop.cancelled() => break,
        };
        match result {
            Ok(()) => {
                if failing {
                    tracing::info!("heartbeats resumed");
                    failing = false;
                }
            }
            Err(e) => {
                kv = None;
                heartbeat_failed(&mut failing, &e);
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(HEARTBEAT_EVERY) => {}
            _ = w.busy_changed.notified() => {}
        }
    }
    let Some(kv) = kv else { return };
    if !super::connected(&w.nats) {
        tracing::info!("heartbeat not deleted (NATS unreachable); it expires by itself");
        return;
    }
    match tokio::time::timeout(NATS_OP_BOUND, kv.delete(&w.id)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!("could not delete heartbeat (it expires by itself): {e}"),
        Err(_) => tracing::warn!("could not delete heartbeat (it expires by itself): timed out"),
    }
}

/// Bound on one heartbeat put/delete or service stop.
const NATS_OP_BOUND: Duration = Duration::from_secs(2);

/// Log the first failure of a streak; the rest only at debug level.
fn heartbeat_failed(failing: &mut bool, e: &str) {
    if *failing {
        tracing::debug!("heartbeat: {e}");
    } else {
        tracing::warn!("heartbeat: {e} (logged once until heartbeats resume)");
        *failing = true;
    }
}

/// Serve /healthz, /readyz and /metrics until `stop`.
pub async fn http_loop(
    w: Arc<Worker>,
    listener: TcpListener,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
    stop: CancellationToken,
) {
    use axum::http::StatusCode;
    use axum::routing::get;
    let live = w.clone();
    let ready = w;
    let router = axum::Router::new()
        // Liveness: this process answers. A NATS outage is a readiness
        // matter; restarting the worker would not fix it and would kill
        // its encodes.
        .route(
            "/healthz",
            get(move || async move {
                let body = if super::connected(&live.nats) {
                    "ok\n"
                } else {
                    "ok (nats disconnected)\n"
                };
                crate::http::text(StatusCode::OK, body)
            }),
        )
        .route(
            "/readyz",
            get(move || async move {
                let w = &ready;
                if super::connected(&w.nats)
                    && w.ready.load(Ordering::Relaxed)
                    && !w.shutdown.is_cancelled()
                    && w.local_failures.load(Ordering::Relaxed) < super::LOCAL_FAILURES_UNREADY
                {
                    crate::http::text(StatusCode::OK, "ready\n")
                } else {
                    crate::http::text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }),
        )
        .route(
            "/metrics",
            get({
                let prometheus = prometheus.clone();
                move || async move { crate::http::metrics(&prometheus) }
            }),
        );
    let upkeep = tokio::spawn(metrics_upkeep(
        METRICS_UPKEEP_EVERY,
        stop.clone(),
        move || prometheus.run_upkeep(),
    ));
    crate::http::serve(listener, router, stop).await;
    upkeep.abort();
}

/// How often the worker folds recorded histogram samples into their
/// summaries.
pub(crate) const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Run `upkeep` every `every` until `stop`. The Prometheus recorder of
/// `install_recorder` keeps every histogram sample (one per task, one per
/// reconciler sweep) until something drains it, and nothing did but a
/// scrape of /metrics: a worker nobody scraped grew for its whole life.
/// `PrometheusHandle::run_upkeep` folds them into bounded summaries.
pub(crate) async fn metrics_upkeep(every: Duration, stop: CancellationToken, upkeep: impl Fn()) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => upkeep(),
        }
    }
}

/// Register the `nats micro` service: PING/INFO/STATS for free, plus a
/// `status` endpoint answering with this worker's latest heartbeat.
pub async fn micro_service(w: Arc<Worker>, stop: CancellationToken) {
    let service = match w
        .nats
        .service_builder()
        .description("jetcode transcoding worker")
        .start(subjects::SERVICE_NAME, env!("CARGO_PKG_VERSION"))
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("nats micro service not registered: {e}");
            return;
        }
    };
    let mut status = match service.endpoint("status").await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!("micro status endpoint: {e}");
            return;
        }
    };
    loop {
        let req = tokio::select! {
            _ = stop.cancelled() => break,
            r = status.next() => r,
        };
        let Some(req) = req else { break };
        let hb = w
            .last_heartbeat
            .lock()
            .map(|h| h.clone())
            .unwrap_or_default();
        let body = serde_json::to_vec(&hb).unwrap_or_default();
        let _ = req.respond(Ok(body.into())).await;
    }
    if super::connected(&w.nats) {
        let _ = tokio::time::timeout(NATS_OP_BOUND, service.stop()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn metrics_upkeep_runs_until_stopped() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let task = tokio::spawn(metrics_upkeep(
            Duration::from_millis(1),
            stop.clone(),
            move || {
                let _ = tx.send(());
            },
        ));
        // Upkeep keeps coming, not once.
        tokio::time::timeout(Duration::from_secs(10), async {
            for _ in 0..3 {
                rx.recv().await.expect("upkeep");
            }
        })
        .await
        .expect("three upkeeps");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("stops when told")
            .expect("no panic");
        // Stopped: the closure (and its sender) is gone.
        while rx.try_recv().is_ok() {}
        assert!(rx.recv().await.is_none());
    }

    #[test]
    fn metrics_upkeep_keeps_every_sample_for_the_rendering() {
        // A real recorder: samples folded into the summary by upkeep are
        // all counted when /metrics renders.
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            for i in 0..1000 {
                metrics::histogram!(crate::metrics::TASK_SECONDS, crate::metrics::LABEL_KIND => "segment")
                    .record(i as f64);
            }
        });
        handle.run_upkeep();
        let text = handle.render();
        assert!(
            text.contains("jetcode_task_seconds_count{kind=\"segment\"} 1000"),
            "{text}"
        );
    }
}
