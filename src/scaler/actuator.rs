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
    /// The first live fleet the scaler saw: actuators that cannot count
    /// their workers start from it instead of from zero.
    fn seed(&mut self, _live: u32) {}
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
    env: Vec<(String, String)>,
    prefix: String,
    next: u64,
    running: BTreeMap<String, (Child, Instant)>,
    stopping: Vec<(String, Child)>,
    /// No new worker before this: one that exits soon after its start
    /// (bad arguments, no server) must not be restarted in a tight loop.
    hold_until: Option<Instant>,
}

/// A worker that exits sooner than this after its start crashed.
const CRASH_WINDOW: Duration = Duration::from_secs(10);
/// Pause before starting workers again after such a crash.
const CRASH_BACKOFF: Duration = Duration::from_secs(10);

impl Local {
    /// `env` reaches every worker (the NATS URL and credentials: not on
    /// the command line, where `ps` would show them).
    pub fn new(worker_args: Vec<String>, env: Vec<(String, String)>) -> Result<Self> {
        let program = std::env::current_exe().map_err(|e| spawn_error("own executable", e))?;
        let host = sysinfo::System::host_name().unwrap_or_else(|| "local".into());
        Ok(Local {
            program,
            worker_args,
            env,
            prefix: format!("{host}-{}", std::process::id()),
            next: 0,
            running: BTreeMap::new(),
            stopping: Vec::new(),
            hold_until: None,
        })
    }

    fn reap(&mut self) {
        let mut crashed = false;
        self.running.retain(|id, (c, started)| match c.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                tracing::warn!(worker = %id, "worker exited by itself: {status}");
                crashed |= started.elapsed() < CRASH_WINDOW;
                false
            }
            Err(_) => false,
        });
        if crashed {
            tracing::warn!("a worker exited within {CRASH_WINDOW:?} of its start: holding new starts for {CRASH_BACKOFF:?}");
            self.hold_until = Some(Instant::now() + CRASH_BACKOFF);
        }
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
        let held = self.hold_until.is_some_and(|t| Instant::now() < t);
        while !held && (self.running.len() as u32) < desired {
            self.next += 1;
            let id = format!("{}-{}", self.prefix, self.next);
            let mut cmd = Command::new(&self.program);
            cmd.arg("worker")
                .args(["--id", &id])
                .args(&self.worker_args)
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null());
            // SAFETY: prctl is a bare syscall, safe between fork and exec.
            // A scaler killed outright takes its workers along (SIGTERM:
            // they drain) instead of leaving them to init, where a new
            // scaler would neither see nor stop them.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = cmd.spawn().map_err(|e| spawn_error("start worker", e))?;
            tracing::info!(worker = %id, pid = child.id(), "worker started");
            self.running.insert(id, (child, Instant::now()));
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
            if let Some((child, _)) = self.running.remove(&id) {
                // SAFETY: kill(2) on a child we started and have not reaped.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                tracing::info!(worker = %id, busy = busy_of(fleet, &id), "worker draining");
                self.stopping.push((id, child));
            }
        }
        Ok(())
    }

    fn shutdown(&mut self, bound: Duration) {
        for (id, (child, _)) in std::mem::take(&mut self.running) {
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
    /// Starts from the highest active instance: a restarted scaler must
    /// still stop the units it started before.
    pub fn new(unit: String) -> Self {
        let active = Command::new("systemctl")
            .args(["list-units", "--state=active", "--no-legend", "--plain"])
            .arg(format!("{unit}@*.service"))
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter_map(|l| {
                        let name = l.split_whitespace().next()?;
                        name.strip_prefix(&format!("{unit}@"))?
                            .strip_suffix(".service")?
                            .parse::<u32>()
                            .ok()
                    })
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        Systemd { unit, active }
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
    /// The last call, and the count believed before it.
    running: Option<(Child, u32)>,
}

impl Hook {
    pub fn new(hook: String, start: u32) -> Self {
        Hook {
            hook,
            believed: start,
            running: None,
        }
    }

    /// True while the last call runs; a failed call is undone (the count
    /// it promised did not happen) so the next decision tries again.
    fn last_call_running(&mut self) -> bool {
        let Some((child, before)) = &mut self.running else {
            return false;
        };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                if !status.success() {
                    tracing::warn!("scaling hook failed ({status}): still {before} workers");
                    self.believed = *before;
                }
                self.running = None;
                false
            }
            Err(_) => {
                self.running = None;
                false
            }
        }
    }
}

impl Actuator for Hook {
    fn actual(&mut self) -> u32 {
        self.believed
    }

    fn scale_to(&mut self, desired: u32, fleet: &[Heartbeat]) -> Result<()> {
        if self.last_call_running() {
            // Do not stack calls.
            return Ok(());
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
        self.running = Some((child, self.believed));
        self.believed = desired;
        Ok(())
    }

    fn shutdown(&mut self, bound: Duration) {
        let deadline = Instant::now() + bound;
        while self.last_call_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn seed(&mut self, live: u32) {
        self.believed = live;
    }
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

    fn seed(&mut self, live: u32) {
        self.believed = live;
    }
}
