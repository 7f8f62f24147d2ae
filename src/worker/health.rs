//! Liveness for operators and the scaler: heartbeats in KV, HTTP
//! /healthz /readyz /metrics, systemd notify, and a `nats micro` service.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::service::ServiceExt;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    loop {
        let conn = tokio::select! {
            _ = stop.cancelled() => return,
            c = listener.accept() => c,
        };
        let Ok((mut sock, _)) = conn else { continue };
        let w = w.clone();
        let prometheus = prometheus.clone();
        tokio::spawn(async move {
            let Ok(Some(head)) =
                tokio::time::timeout(Duration::from_secs(5), read_request_head(&mut sock)).await
            else {
                return;
            };
            let req = String::from_utf8_lossy(&head);
            let path = req.split_whitespace().nth(1).unwrap_or("/");
            let connected = super::connected(&w.nats);
            let (code, body, ctype) = match path {
                // Liveness: this process answers. A NATS outage is a
                // readiness matter; restarting the worker would not fix it
                // and would kill its encodes.
                "/healthz" if connected => (200, "ok\n".to_string(), "text/plain"),
                "/healthz" => (200, "ok (nats disconnected)\n".to_string(), "text/plain"),
                "/readyz"
                    if connected
                        && w.ready.load(Ordering::Relaxed)
                        && !w.shutdown.is_cancelled()
                        && w.local_failures.load(Ordering::Relaxed)
                            < super::LOCAL_FAILURES_UNREADY =>
                {
                    (200, "ready\n".to_string(), "text/plain")
                }
                "/readyz" => (503, "not ready\n".to_string(), "text/plain"),
                "/metrics" => (200, prometheus.render(), "text/plain; version=0.0.4"),
                _ => (404, "not found\n".to_string(), "text/plain"),
            };
            let reason = match code {
                200 => "OK",
                404 => "Not Found",
                _ => "Service Unavailable",
            };
            let head = format!(
                "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

/// Read until the blank line that ends an HTTP request head. A client may
/// send the request line in several TCP segments; answering after the first
/// one and closing with unread bytes makes the kernel reset the connection.
async fn read_request_head(sock: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    const MAX_HEAD: usize = 8 * 1024;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut buf).await.ok()?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Some(head)
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
