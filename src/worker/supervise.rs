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
    /// RLIMIT_CPU of the child in seconds (see [`cpu_seconds`]): a child
    /// spinning without end dies of SIGXCPU even if the worker's own
    /// timers never fire (the worker hung, or was stopped). None: unlimited.
    pub cpu_seconds: Option<u64>,
    /// RLIMIT_NOFILE of the child. None: the worker's own.
    pub open_files: Option<u64>,
}

/// CPU seconds a child may burn: every one of the machine's `cores` busy
/// for its whole wall-clock budget `total`, plus a minute. A child cannot
/// burn more within `total`, so the worker's timers, which name the reason
/// better, always fire first; the rlimit is the backstop for when they
/// cannot (the worker hung or was stopped with SIGSTOP).
pub fn cpu_seconds(total: Duration, cores: u32) -> Option<u64> {
    let secs = total.as_secs_f64().ceil() as u64;
    Some(
        secs.saturating_mul(u64::from(cores.max(1)))
            .saturating_add(60),
    )
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
    match child_program() {
        Ok(program) => run_program(program, spec).await,
        Err(e) => transient(format!("cannot find own executable: {e}")),
    }
}

async fn run_program(program: std::path::PathBuf, spec: ChildSpec<'_>) -> Outcome {
    let started = Instant::now();
    let mut cmd = Command::new(program);
    if let Some(env) = CHILD_ENV.get() {
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
    }
    match stall_failpoint(spec.kind) {
        Some(()) => cmd.args(["media", "stall", "--task", "{}"]),
        // The order goes in on stdin: a long chunk's or a long plan's
        // order outgrows the kernel's 128 KiB limit on one argument.
        None => cmd.arg("media").arg(spec.kind).args(["--task", "-"]),
    };
    // SAFETY: prctl, getrlimit and setrlimit are bare syscall wrappers (no allocation,
    // no locks), safe between fork and exec. The child dies with its worker,
    // even on SIGKILL, so no orphan keeps encoding a task that will be
    // redelivered elsewhere.
    let Limits {
        memory,
        cpu_seconds,
        open_files,
        ..
    } = spec.limits;
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Only ever lowered: raising a hard limit needs privilege.
            let set_limit = |resource, soft: u64, hard: u64| {
                let mut now = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(resource, &mut now) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let hard = (hard as libc::rlim_t).min(now.rlim_max);
                let lim = libc::rlimit {
                    rlim_cur: (soft as libc::rlim_t).min(hard),
                    rlim_max: hard,
                };
                if libc::setrlimit(resource, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            };
            if let Some(bytes) = memory {
                set_limit(libc::RLIMIT_DATA, bytes, bytes)?;
            }
            if let Some(secs) = cpu_seconds {
                // SIGXCPU at the soft limit, SIGKILL 5 s later if caught.
                set_limit(libc::RLIMIT_CPU, secs, secs.saturating_add(5))?;
                // SIGXCPU dumps core by default: not a multi-GiB core per
                // runaway encoder.
                set_limit(libc::RLIMIT_CORE, 0, 0)?;
            }
            if let Some(n) = open_files {
                set_limit(libc::RLIMIT_NOFILE, n, n)?;
            }
            Ok(())
        });
    }
    let limit_note = memory
        .map(|b| format!(" (memory limit {} MiB)", b >> 20))
        .unwrap_or_default();
    let cpu_note = cpu_seconds
        .map(|s| format!(" (CPU time limit {s} s reached)"))
        .unwrap_or_default();
    let mut child = match cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return transient(format!("cannot start media child: {e}")),
    };
    let (Some(stdout), Some(mut stderr), Some(mut stdin)) =
        (child.stdout.take(), child.stderr.take(), child.stdin.take())
    else {
        return transient("media child has no pipes".into());
    };
    // Written while the child reads it (a pipe holds 64 KiB); a child that
    // dies first closes the pipe and its exit tells why.
    let work = spec.work.clone().into_bytes();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let _ = stdin.write_all(&work).await;
        let _ = stdin.shutdown().await;
    });
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
            let signal = status.signal().unwrap_or(0);
            let note = if signal == libc::SIGXCPU {
                cpu_note
            } else {
                limit_note
            };
            transient(format!(
                "media child killed by signal {signal}{note}: {tail}"
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
    fn cpu_budget_covers_every_core_for_the_whole_timeout() {
        let t = |s| Duration::from_secs(s);
        assert_eq!(cpu_seconds(t(300), 1), Some(360));
        assert_eq!(cpu_seconds(t(300), 8), Some(2460));
        assert_eq!(cpu_seconds(t(300), 0), Some(360), "at least one core");
        assert_eq!(
            cpu_seconds(Duration::from_millis(1500), 2),
            Some(64),
            "rounded up"
        );
        assert_eq!(cpu_seconds(Duration::MAX, 64), Some(u64::MAX));
    }

    /// A stand-in child: a shell script run with the usual arguments.
    fn script(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("child.sh");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn limits(cpu_seconds: Option<u64>, open_files: Option<u64>) -> Limits {
        Limits {
            stall: Duration::from_secs(30),
            total: Duration::from_secs(30),
            memory: None,
            cpu_seconds,
            open_files,
        }
    }

    async fn run_script(program: std::path::PathBuf, limits: Limits) -> Outcome {
        run_program(
            program,
            ChildSpec {
                kind: "segment",
                work: "{}".into(),
                limits,
                stop: CancellationToken::new(),
                on_frames: &|_| {},
            },
        )
        .await
    }

    #[tokio::test]
    async fn child_runs_under_its_cpu_and_open_file_limits() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(
            dir.path(),
            r#"echo "cpu $(ulimit -t) files $(ulimit -n) core $(ulimit -c)" >&2; exit 3"#,
        );
        match run_script(p, limits(Some(77), Some(99))).await {
            Outcome::Failed { reason, .. } => {
                assert!(reason.ends_with("cpu 77 files 99 core 0"), "{reason}")
            }
            o => panic!("{o:?}"),
        }
    }

    #[tokio::test]
    async fn spinning_child_dies_at_its_cpu_limit_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(dir.path(), "while :; do :; done");
        let t0 = Instant::now();
        match run_script(p, limits(Some(1), None)).await {
            Outcome::Failed { reason, permanent } => {
                assert!(!permanent, "{reason}");
                assert!(reason.contains("CPU time limit 1 s reached"), "{reason}");
            }
            o => panic!("{o:?}"),
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    }

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
