//! Runs one media task in a child process of this binary and watches it:
//! progress lines in, progress acks out, kill on stall, timeout or cancel.

use std::process::Stdio;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::task::{ChildLine, EXIT_PERMANENT};

use crate::streams::PROGRESS_ACK_EVERY;

/// Bytes of a child's stderr kept for its failure reason.
const STDERR_KEEP: usize = 64 * 1024;

/// Limits on one child.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Kill when progress has not advanced for this long.
    pub stall: Duration,
    /// Kill when the child runs longer than this in total.
    pub total: Duration,
    /// RLIMIT_DATA of the child in bytes (heap and private writable maps; a
    /// leak or a huge frame ends in a failed allocation, not in the OOM
    /// killer picking the worker). None: unlimited.
    pub memory: Option<u64>,
}

/// How a child ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Done {
        frames: u64,
        summary: serde_json::Value,
        seconds: f64,
    },
    Failed {
        reason: String,
        permanent: bool,
    },
    /// Killed because `stop` was cancelled (job cancelled, or drain ran out).
    Stopped,
}

/// What the child is and how to watch it.
pub struct ChildSpec<'a> {
    /// `segment`, `audio`, `stitch`, `probe`.
    pub kind: &'a str,
    /// The work order JSON passed as `--task`.
    pub work: String,
    pub limits: Limits,
    pub stop: CancellationToken,
    /// Called with each increase in frames done.
    pub on_frames: &'a (dyn Fn(u64) + Send + Sync),
}

/// The program run as a child: this executable, unless overridden for tests.
fn child_program() -> std::io::Result<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("JETCODE_CHILD_BIN") {
        return Ok(p.into());
    }
    // The running binary itself, even after an upgrade replaced the file
    // on disk (its path then names the new one, or nothing while it is
    // being written): children always match their worker's version.
    let running = std::path::Path::new("/proc/self/exe");
    if running.exists() {
        return Ok(running.to_path_buf());
    }
    std::env::current_exe()
}

/// Extra environment of every media child (the worker's S3 settings).
static CHILD_ENV: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();

/// Set [`CHILD_ENV`] once, at worker start.
pub(crate) fn set_child_env(env: Vec<(String, String)>) {
    let _ = CHILD_ENV.set(env);
}

/// Spawn and supervise. Never panics; every failure is an [`Outcome`].
pub async fn run(spec: ChildSpec<'_>) -> Outcome {
    let started = Instant::now();
    let program = match child_program() {
        Ok(p) => p,
        Err(e) => return transient(format!("cannot find own executable: {e}")),
    };
    let mut cmd = Command::new(program);
    if let Some(env) = CHILD_ENV.get() {
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
    }
    match stall_failpoint(spec.kind) {
        Some(()) => cmd.args(["media", "stall", "--task", "{}"]),
        None => cmd
            .arg("media")
            .arg(spec.kind)
            .arg("--task")
            .arg(&spec.work),
    };
    // SAFETY: prctl and setrlimit are bare syscall wrappers (no allocation,
    // no locks), safe between fork and exec. The child dies with its worker,
    // even on SIGKILL, so no orphan keeps encoding a task that will be
    // redelivered elsewhere.
    let memory = spec.limits.memory;
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(bytes) = memory {
                let lim = libc::rlimit {
                    rlim_cur: bytes as libc::rlim_t,
                    rlim_max: bytes as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_DATA, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let limit_note = memory
        .map(|b| format!(" (memory limit {} MiB)", b >> 20))
        .unwrap_or_default();
    let mut child = match cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return transient(format!("cannot start media child: {e}")),
    };
    let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return transient("media child has no pipes".into());
    };
    // The last line of stderr is the failure reason.
    let stderr_tail = tokio::spawn(async move {
        let mut tail = StderrTail::default();
        let mut chunk = [0u8; 8192];
        loop {
            match stderr.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => tail.push(&chunk[..n]),
            }
        }
        tail.last_line()
    });

    let mut lines = BufReader::new(stdout).lines();
    let mut last: Option<ChildLine> = None;
    let mut done_so_far = 0u64;
    let mut last_advance = Instant::now();
    let deadline = tokio::time::Instant::now() + spec.limits.total;
    let killed_for = loop {
        let stall_at = tokio::time::Instant::from_std(last_advance + spec.limits.stall);
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(l)) => {
                    let Ok(parsed) = serde_json::from_str::<ChildLine>(&l) else { continue };
                    match parsed {
                        ChildLine::Progress { done, .. } if done > done_so_far => {
                            (spec.on_frames)(done - done_so_far);
                            done_so_far = done;
                            last_advance = Instant::now();
                        }
                        ChildLine::Alive { .. } => {
                            last_advance = Instant::now();
                            continue;
                        }
                        _ => {}
                    }
                    last = Some(parsed);
                }
                // stdout closed: the child is exiting.
                Ok(None) | Err(_) => break None,
            },
            _ = tokio::time::sleep_until(stall_at) => {
                metrics::counter!(crate::metrics::STALLS).increment(1);
                break Some(format!("stalled: no progress for {:?}", spec.limits.stall));
            }
            _ = tokio::time::sleep_until(deadline) => {
                break Some(format!("timed out after {:?}", spec.limits.total));
            }
            _ = spec.stop.cancelled() => break Some(String::new()),
        }
    };
    if let Some(reason) = killed_for {
        let _ = child.kill().await;
        if reason.is_empty() {
            return Outcome::Stopped;
        }
        return transient(reason);
    }
    let status = match tokio::time::timeout(spec.limits.stall, child.wait()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return transient(format!("waiting for media child: {e}")),
        Err(_) => {
            let _ = child.kill().await;
            return transient("media child closed its output but did not exit".into());
        }
    };
    let tail = stderr_tail.await.unwrap_or_default();
    match (last, status.code()) {
        (Some(ChildLine::Done { frames, summary }), Some(0)) => Outcome::Done {
            frames,
            summary,
            seconds: started.elapsed().as_secs_f64(),
        },
        (Some(ChildLine::Failed { reason, permanent }), _) => Outcome::Failed { reason, permanent },
        (_, Some(code)) => Outcome::Failed {
            reason: format!("media child exited with {code}{limit_note}: {tail}"),
            permanent: code == EXIT_PERMANENT,
        },
        (_, None) => {
            use std::os::unix::process::ExitStatusExt;
            transient(format!(
                "media child killed by signal {}{limit_note}: {tail}",
                status.signal().unwrap_or(0)
            ))
        }
    }
}

/// Run `work` while telling the server every [`PROGRESS_ACK_EVERY`] that
/// `msg` is still being worked on, so its ack deadline (10 s) measures
/// whether this worker is alive, not how long the work takes: a child
/// whose first frame is slow, a probe that reports no frames, a stitch
/// verifying parts, a task held before it is handed on. Hangs are the
/// stall and total timers' job.
pub async fn keep_ours<T>(
    msg: &jetstream::Message,
    work: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tokio::time::sleep(PROGRESS_ACK_EVERY) => {
                let _ = msg.ack_with(AckKind::Progress).await;
            }
        }
    }
}

/// The end of a child's stderr. Only the last [`STDERR_KEEP`] bytes are
/// kept: a chatty or looping child must not grow the worker's memory
/// without bound.
#[derive(Default)]
struct StderrTail {
    buf: Vec<u8>,
}

impl StderrTail {
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > STDERR_KEEP {
            self.buf.drain(..self.buf.len() - STDERR_KEEP);
        }
    }

    /// The last non-empty line, at most 300 characters.
    fn last_line(&self) -> String {
        String::from_utf8_lossy(&self.buf)
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .chars()
            .take(300)
            .collect()
    }
}

/// Fault injection for tests: `JETCODE_FAILPOINT_STALL_ONCE=<kind>:<marker
/// file>` makes the first child of that kind (the one that creates the
/// marker) hang without progress, as a stuck decoder would.
fn stall_failpoint(kind: &str) -> Option<()> {
    let v = std::env::var("JETCODE_FAILPOINT_STALL_ONCE").ok()?;
    let (k, marker) = v.split_once(':')?;
    if k != kind {
        return None;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(marker)
        .ok()
        .map(|_| ())
}

fn transient(reason: String) -> Outcome {
    Outcome::Failed {
        reason,
        permanent: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_tail_is_bounded_and_keeps_the_last_line() {
        let mut tail = StderrTail::default();
        let noise = "0:00:01.000 WARN  chatty element: still here\n".repeat(200);
        for _ in 0..200 {
            tail.push(noise.as_bytes());
            assert!(
                tail.buf.len() <= STDERR_KEEP,
                "{} bytes kept",
                tail.buf.len()
            );
        }
        tail.push(b"ERROR: decoder gave up\n\n   \n");
        assert_eq!(tail.last_line(), "ERROR: decoder gave up");
        tail.push(&[b'x'; 1000]);
        assert_eq!(tail.last_line().len(), 300);
    }
}
