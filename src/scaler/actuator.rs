//! Actuators: how a desired worker count becomes running workers. One
//! trait; `local` runs worker processes itself, `systemd` starts and stops
//! `jetcode-worker@N.service`, `command` hands the count to a user hook (any
//! cloud API), `dry-run` only says what it would do. Stopping a worker is
//! always SIGTERM: it drains, handing its tasks back without spending a
//! delivery.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};
use crate::record::Heartbeat;

/// Turns a desired count into workers.
pub trait Actuator: Send {
    /// Workers running and not stopping.
    fn actual(&mut self) -> u32;
    /// Start or stop workers to reach `desired`; `fleet` are the live
    /// heartbeats, to stop idle or least busy workers first.
    fn scale_to(&mut self, desired: u32, fleet: &[Heartbeat]) -> Result<()>;
    /// On the scaler's own exit: stop what it started, within `bound`.
    fn shutdown(&mut self, bound: Duration);
}

/// Busy tasks of a worker by id (unknown: as busy as can be, stopped last).
fn busy_of(fleet: &[Heartbeat], id: &str) -> u32 {
    fleet
        .iter()
        .find(|h| h.id == id)
        .map_or(u32::MAX, |h| h.busy)
}

fn spawn_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Storage, format!("{what}: {e}"))
}

/// Worker processes of this machine, started and drained by the scaler.
pub struct Local {
    program: PathBuf,
    worker_args: Vec<String>,
    prefix: String,
    next: u64,
    running: BTreeMap<String, Child>,
    stopping: Vec<(String, Child)>,
}

impl Local {
    pub fn new(worker_args: Vec<String>) -> Result<Self> {
        let program = std::env::current_exe().map_err(|e| spawn_error("own executable", e))?;
        let host = sysinfo::System::host_name().unwrap_or_else(|| "local".into());
        Ok(Local {
            program,
            worker_args,
            prefix: format!("{host}-{}", std::process::id()),
            next: 0,
            running: BTreeMap::new(),
            stopping: Vec::new(),
        })
    }

    fn reap(&mut self) {
        self.running
            .retain(|_, c| c.try_wait().map(|s| s.is_none()).unwrap_or(false));
        self.stopping
            .retain_mut(|(_, c)| c.try_wait().map(|s| s.is_none()).unwrap_or(false));
    }
}

impl Actuator for Local {
    fn actual(&mut self) -> u32 {
        self.reap();
        self.running.len() as u32
    }

    fn scale_to(&mut self, desired: u32, fleet: &[Heartbeat]) -> Result<()> {
        self.reap();
        while (self.running.len() as u32) < desired {
            self.next += 1;
            let id = format!("{}-{}", self.prefix, self.next);
            let child = Command::new(&self.program)
                .arg("worker")
                .args(["--id", &id])
                .args(&self.worker_args)
                .stdin(Stdio::null())
                .spawn()
                .map_err(|e| spawn_error("start worker", e))?;
            tracing::info!(worker = %id, pid = child.id(), "worker started");
            self.running.insert(id, child);
        }
        while self.running.len() as u32 > desired {
            let Some(id) = self
                .running
                .keys()
                .min_by_key(|id| busy_of(fleet, id))
                .cloned()
            else {
                break;
            };
            if let Some(child) = self.running.remove(&id) {
                // SAFETY: kill(2) on a child we started and have not reaped.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                tracing::info!(worker = %id, busy = busy_of(fleet, &id), "worker draining");
                self.stopping.push((id, child));
            }
        }
        Ok(())
    }

    fn shutdown(&mut self, bound: Duration) {
        for (id, child) in std::mem::take(&mut self.running) {
            // SAFETY: as above.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            self.stopping.push((id, child));
        }
        let deadline = Instant::now() + bound;
        while !self.stopping.is_empty() && Instant::now() < deadline {
            self.reap();
            std::thread::sleep(Duration::from_millis(100));
        }
        for (id, child) in &mut self.stopping {
            tracing::warn!(worker = %id, "did not drain in {bound:?}: killed");
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stopping.clear();
    }
}

/// `jetcode-worker@N.service` units: N = 1.. are started in order and the
/// highest stopped first (systemd's stop is SIGTERM: a drain).
pub struct Systemd {
    unit: String,
    active: u32,
}

impl Systemd {
    pub fn new(unit: String) -> Self {
        Systemd { unit, active: 0 }
    }

    fn systemctl(&self, verb: &str, n: u32) -> Result<()> {
        let name = format!("{}@{n}.service", self.unit);
        let st = Command::new("systemctl")
            .args([verb, "--no-block", &name])
            .status()
            .map_err(|e| spawn_error("systemctl", e))?;
        if !st.success() {
            return Err(spawn_error(&format!("systemctl {verb} {name}"), st));
        }
        tracing::info!(unit = %name, "{verb}");
        Ok(())
    }
}

impl Actuator for Systemd {
    fn actual(&mut self) -> u32 {
        self.active
    }

    fn scale_to(&mut self, desired: u32, _fleet: &[Heartbeat]) -> Result<()> {
        while self.active < desired {
            self.systemctl("start", self.active + 1)?;
            self.active += 1;
        }
        while self.active > desired {
            self.systemctl("stop", self.active)?;
            self.active -= 1;
        }
        Ok(())
    }

    fn shutdown(&mut self, _bound: Duration) {
        // The units outlive the scaler: systemd owns them.
    }
}

/// Runs `sh -c <hook>` with the decision in its environment
/// (`JETCODE_DESIRED`, `JETCODE_ACTUAL`, `JETCODE_WORKERS` as JSON heartbeats).
pub struct Hook {
    hook: String,
    believed: u32,
    running: Option<Child>,
}

impl Hook {
    pub fn new(hook: String, start: u32) -> Self {
        Hook {
            hook,
            believed: start,
            running: None,
        }
    }
}

impl Actuator for Hook {
    fn actual(&mut self) -> u32 {
        self.believed
    }

    fn scale_to(&mut self, desired: u32, fleet: &[Heartbeat]) -> Result<()> {
        if let Some(c) = &mut self.running {
            if c.try_wait().map(|s| s.is_none()).unwrap_or(false) {
                // The last call is still running: do not stack calls.
                return Ok(());
            }
        }
        let child = Command::new("sh")
            .args(["-c", &self.hook])
            .env("JETCODE_DESIRED", desired.to_string())
            .env("JETCODE_ACTUAL", self.believed.to_string())
            .env(
                "JETCODE_WORKERS",
                serde_json::to_string(fleet).unwrap_or_default(),
            )
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| spawn_error("scaling hook", e))?;
        self.running = Some(child);
        self.believed = desired;
        Ok(())
    }

    fn shutdown(&mut self, _bound: Duration) {}
}

/// Says what it would do; counts as if it had.
pub struct DryRun {
    believed: u32,
}

impl DryRun {
    pub fn new(start: u32) -> Self {
        DryRun { believed: start }
    }
}

impl Actuator for DryRun {
    fn actual(&mut self) -> u32 {
        self.believed
    }

    fn scale_to(&mut self, desired: u32, _fleet: &[Heartbeat]) -> Result<()> {
        tracing::info!(from = self.believed, to = desired, "dry run: would scale");
        self.believed = desired;
        Ok(())
    }

    fn shutdown(&mut self, _bound: Duration) {}
}
