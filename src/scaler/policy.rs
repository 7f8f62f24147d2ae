//! PURE scaling policy: figures in, desired worker count out. No I/O, no
//! clock: the caller passes the time, so tests drive it through bursts,
//! drains and sawtooths without waiting.
//!
//! Fast up, slow down, never flapping:
//! * work waiting (lag: queued plus in-flight tasks and specs) asks for
//!   `ceil(lag / target_tasks_per_worker)` workers, granted at once up to
//!   `max_step_up` more per decision;
//! * a hot fleet (mean CPU above `cpu_high`) with work waiting gets one
//!   more worker even if the lag alone would not ask for it, unless memory
//!   is the bottleneck (mean memory above `mem_high`): more workers on the
//!   same hosts would only make that worse, so the count holds;
//! * shrinking needs more workers than the lag and the busy workers need
//!   for a whole `scale_down_window`, and then removes one worker (a
//!   trickle of retries does not pin the fleet at its peak);
//!   the window starts again after every change, so a sawtooth load whose
//!   quiet spells are shorter than the window never shrinks the fleet;
//! * never below `min`, never above `max`; `min = 0` scales to zero when
//!   quiet, and any lag brings one worker back at the next decision.

use std::time::Duration;

/// Policy knobs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyConfig {
    pub min: u32,
    pub max: u32,
    /// Queued or running tasks one worker is expected to take.
    pub target_tasks_per_worker: u32,
    /// Most workers added by one decision.
    pub max_step_up: u32,
    /// How long the fleet must stay quiet before one worker is removed.
    pub scale_down_window: Duration,
    /// Mean CPU percent above which waiting work asks for one more worker.
    pub cpu_high: f32,
    /// Mean memory percent above which the fleet does not grow.
    pub mem_high: f32,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            min: 1,
            max: 4,
            target_tasks_per_worker: 2,
            max_step_up: 4,
            scale_down_window: Duration::from_secs(60),
            cpu_high: 85.0,
            mem_high: 85.0,
        }
    }
}

/// What the scaler saw at one instant.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observation {
    /// Time since the scaler started.
    pub at: Duration,
    /// Tasks and specs waiting or in flight.
    pub lag: u64,
    /// Workers the actuator runs now.
    pub actual: u32,
    /// Workers with at least one task running.
    pub busy: u32,
    /// Mean CPU and memory use of the fleet's hosts, percent (0 if unknown).
    pub cpu: f32,
    pub mem: f32,
}

/// Why the desired count is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Work is waiting: grow to what the lag asks for.
    Backlog,
    /// Work is waiting on a hot fleet: one more.
    HotCpu,
    /// Memory is the bottleneck: hold instead of growing.
    MemoryBound,
    /// Quiet for the whole window: one fewer.
    Idle,
    /// Quiet, but not yet for the whole window.
    Settling,
    /// Nothing to change.
    Steady,
    /// Outside `min..=max`: brought back inside.
    Bounds,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Backlog => "backlog",
            Reason::HotCpu => "hot-cpu",
            Reason::MemoryBound => "memory-bound",
            Reason::Idle => "idle",
            Reason::Settling => "settling",
            Reason::Steady => "steady",
            Reason::Bounds => "bounds",
        }
    }
}

/// A decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub desired: u32,
    pub reason: Reason,
}

/// The policy and the little it remembers: since when the fleet is quiet.
#[derive(Debug, Clone)]
pub struct Policy {
    cfg: PolicyConfig,
    quiet_since: Option<Duration>,
}

impl Policy {
    pub fn new(cfg: PolicyConfig) -> Self {
        let max = cfg.max.max(cfg.min);
        Policy {
            cfg: PolicyConfig { max, ..cfg },
            quiet_since: None,
        }
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    /// The worker count to aim for now.
    pub fn decide(&mut self, o: &Observation) -> Decision {
        let c = &self.cfg;
        let clamp = |n: u32| n.clamp(c.min, c.max);
        if o.actual < c.min || o.actual > c.max {
            self.quiet_since = None;
            return Decision {
                desired: clamp(o.actual),
                reason: Reason::Bounds,
            };
        }
        let per = c.target_tasks_per_worker.max(1) as u64;
        let wanted = o.lag.div_ceil(per).min(u32::MAX as u64) as u32;
        // What the fleet needs now: the lag's share, and every busy worker
        // (never stop one that is working).
        let need = clamp(wanted.max(o.busy));
        let hot = o.lag > 0 && c.cpu_high > 0.0 && o.cpu >= c.cpu_high && o.busy >= o.actual;
        if need > o.actual || hot {
            self.quiet_since = None;
            if c.mem_high > 0.0 && o.mem >= c.mem_high && o.actual > 0 {
                return Decision {
                    desired: o.actual,
                    reason: Reason::MemoryBound,
                };
            }
            let (target, reason) = if need > o.actual {
                (need, Reason::Backlog)
            } else {
                (o.actual + 1, Reason::HotCpu)
            };
            let desired = clamp(target.min(o.actual.saturating_add(c.max_step_up.max(1))));
            return Decision {
                desired,
                reason: if desired == o.actual {
                    Reason::Steady
                } else {
                    reason
                },
            };
        }
        if need == o.actual {
            self.quiet_since = None;
            return Decision {
                desired: o.actual,
                reason: Reason::Steady,
            };
        }
        // More workers than the lag and the busy ones need (a trickle of
        // retries keeps lag above zero for minutes: it must not pin the
        // fleet at its peak): one fewer after a whole window of that.
        let since = *self.quiet_since.get_or_insert(o.at);
        if o.at.saturating_sub(since) < c.scale_down_window {
            return Decision {
                desired: o.actual,
                reason: Reason::Settling,
            };
        }
        // One at a time; the next one needs a new window.
        self.quiet_since = Some(o.at);
        Decision {
            desired: clamp(o.actual - 1),
            reason: Reason::Idle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PolicyConfig {
        PolicyConfig {
            min: 1,
            max: 5,
            target_tasks_per_worker: 2,
            max_step_up: 3,
            scale_down_window: Duration::from_secs(30),
            cpu_high: 85.0,
            mem_high: 90.0,
        }
    }

    fn obs(t: u64, lag: u64, actual: u32, busy: u32) -> Observation {
        Observation {
            at: Duration::from_secs(t),
            lag,
            actual,
            busy,
            cpu: 50.0,
            mem: 40.0,
        }
    }

    /// Run a script of observations, each at the count the previous
    /// decision asked for (the actuator is instant here).
    fn run(cfg: PolicyConfig, start: u32, script: &[(u64, u64, u32)]) -> Vec<(u32, Reason)> {
        let mut p = Policy::new(cfg);
        let mut actual = start;
        let mut out = Vec::new();
        for &(t, lag, busy) in script {
            let d = p.decide(&obs(t, lag, actual, busy.min(actual)));
            out.push((d.desired, d.reason));
            actual = d.desired;
        }
        out
    }

    #[test]
    fn table() {
        use Reason::*;
        // (name, config, workers at the start, (time s, lag, busy workers)
        // per decision, (desired, reason) per decision)
        type Case = (
            &'static str,
            PolicyConfig,
            u32,
            Vec<(u64, u64, u32)>,
            Vec<(u32, Reason)>,
        );
        let cases: Vec<Case> = vec![
            (
                "burst: up at once, bounded step, capped at max",
                cfg(),
                1,
                vec![(0, 0, 1), (5, 20, 1), (10, 20, 4), (15, 20, 5)],
                vec![(1, Steady), (4, Backlog), (5, Backlog), (5, Steady)],
            ),
            (
                "drain to min: one at a time, a full window each",
                cfg(),
                3,
                vec![
                    (0, 8, 3),
                    (5, 0, 0),
                    (20, 0, 0),
                    (35, 0, 0),
                    (40, 0, 0),
                    (66, 0, 0),
                    (100, 0, 0),
                ],
                vec![
                    (4, Backlog),
                    (4, Settling),
                    (4, Settling),
                    (3, Idle),
                    (3, Settling),
                    (2, Idle),
                    (1, Idle),
                ],
            ),
            (
                "sawtooth shorter than the window never shrinks the fleet",
                cfg(),
                1,
                vec![
                    (0, 6, 1),
                    (10, 0, 0),
                    (25, 6, 3),
                    (35, 0, 0),
                    (50, 6, 3),
                    (60, 0, 0),
                    (75, 6, 3),
                ],
                vec![
                    (3, Backlog),
                    (3, Settling),
                    (3, Steady),
                    (3, Settling),
                    (3, Steady),
                    (3, Settling),
                    (3, Steady),
                ],
            ),
            (
                "busy workers are not stopped while quiet",
                cfg(),
                3,
                vec![(0, 6, 3), (5, 0, 3), (40, 0, 3), (80, 0, 2), (115, 0, 2)],
                vec![
                    (3, Steady),
                    (3, Steady),
                    (3, Steady),
                    (3, Settling),
                    (2, Idle),
                ],
            ),
            (
                "a trickle of lag after a burst still shrinks to what it needs",
                cfg(),
                5,
                vec![(0, 2, 1), (20, 1, 1), (31, 2, 1), (62, 1, 1), (93, 2, 0)],
                vec![
                    (5, Settling),
                    (5, Settling),
                    (4, Idle),
                    (3, Idle),
                    (2, Idle),
                ],
            ),
            (
                "scale to zero and back within one decision",
                PolicyConfig { min: 0, ..cfg() },
                1,
                vec![(0, 0, 0), (31, 0, 0), (40, 1, 0)],
                vec![(1, Settling), (0, Idle), (1, Backlog)],
            ),
        ];
        for (name, c, start, script, want) in cases {
            assert_eq!(run(c, start, &script), want, "{name}");
        }
    }

    #[test]
    fn hot_cpu_with_backlog_adds_one_memory_pressure_holds() {
        let mut p = Policy::new(cfg());
        let hot = Observation {
            cpu: 95.0,
            ..obs(0, 2, 2, 2)
        };
        // Lag 2 alone asks for one worker; the hot, fully busy fleet gets one more.
        assert_eq!(
            p.decide(&hot),
            Decision {
                desired: 3,
                reason: Reason::HotCpu
            }
        );
        let swapping = Observation {
            mem: 95.0,
            ..obs(5, 20, 3, 3)
        };
        assert_eq!(
            p.decide(&swapping),
            Decision {
                desired: 3,
                reason: Reason::MemoryBound
            }
        );
    }

    #[test]
    fn bounds_are_restored_first() {
        let mut p = Policy::new(cfg());
        assert_eq!(p.decide(&obs(0, 0, 0, 0)).desired, 1);
        assert_eq!(p.decide(&obs(1, 50, 9, 9)).desired, 5);
        // max below min is read as max = min.
        let mut q = Policy::new(PolicyConfig {
            min: 3,
            max: 1,
            ..cfg()
        });
        assert_eq!(q.decide(&obs(0, 100, 3, 3)).desired, 3);
    }
}
