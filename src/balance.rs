//! PURE capacity-aware balancing: how many chunks (and how long) a job
//! should be cut into for the live fleet, the makespan bound that choice
//! guarantees, and a deterministic simulator of pull-based dispatch to
//! check it. No I/O. See `docs/balancing.md` for the derivation.
//!
//! Model: a job is `W` units of work (seconds of source; a slot of speed
//! `v` does `v` units per second). Workers pull: a free slot takes the
//! next queued chunk, so no slot idles while work is queued. The ideal
//! makespan is the fluid one, `W / V` for a fleet of total speed `V`.
//!
//! The bound (any greedy pull, chunks taken in queue order, static fleet):
//! chunk `i` is taken at `s_i <= P_i / V` (`P_i`: the work queued ahead of
//! it; every slot was busy until then) and ends by `s_i + p_i / v_min`, so
//!
//! ```text
//! makespan / ideal <= max_i (P_i + p_i * V / v_min) / W
//! ```
//!
//! which for `n` equal chunks is `1 + (V / v_min - 1) / n` (tight when
//! `n = m * slots + 1` on a uniform fleet). [`chunk_plan`] picks chunks
//! that keep it at `1 + excess`: equal ones (`n >= (V / v_min - 1) /
//! excess`, the default), or, tapered, each as long as the bound allows
//! given the work ahead of it, longest first (fewer chunks for the same
//! bound, but its long first chunks adapt worse when the fleet changes).
//! The quality floor can stop either short of the target; the plan says
//! so ([`ChunkPlan::floor_limited`]) and carries the bound it does keep.

use std::collections::VecDeque;

/// One worker of the live fleet as the planner sees it (from heartbeats).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    /// Task slots (concurrent chunks).
    pub slots: u32,
    /// Work per second of one slot, in any unit (only ratios matter), e.g.
    /// the heartbeat's frames per second divided by its slots. Workers
    /// with no slots or a speed that is not positive are ignored.
    pub speed: f64,
}

/// Chunk-length rules and the balance target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChunkRules {
    /// Quality floor: no chunk shorter, seconds (unless the source is).
    pub min_seconds: f64,
    /// Longest chunk, seconds (the job's segment length: long chunks
    /// encode better and force fewer IDR frames).
    pub max_seconds: f64,
    /// Allowed makespan excess over the ideal (0.10: within 10 %).
    pub excess: f64,
    /// Shrink the last waves' chunks (longest first) instead of cutting
    /// equal chunks: the same static bound with fewer chunks, but a worker
    /// that joins or leaves mid-job costs more (the simulator's figures
    /// are in `docs/balancing.md`). Off by default.
    pub taper: bool,
}

impl Default for ChunkRules {
    fn default() -> Self {
        ChunkRules {
            min_seconds: crate::job::MIN_SEGMENT_SECONDS,
            max_seconds: crate::job::DEFAULT_SEGMENT_SECONDS,
            excess: 0.10,
            taper: false,
        }
    }
}

/// The chunks of a job: lengths in seconds, in time order, which is also
/// the dispatch order (longest first: a tapered plan only shrinks).
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkPlan {
    pub seconds: Vec<f64>,
    /// Guaranteed makespan / ideal on the fleet it was planned for
    /// ([`makespan_bound`]).
    pub bound: f64,
    /// The quality floor (or a source shorter than it) kept the bound
    /// above `1 + excess`: more chunks would be shorter than the floor.
    pub floor_limited: bool,
}

/// Total speed `V` and slowest slot speed `v_min` of a fleet; an empty
/// (or unusable) fleet counts as one slot of speed 1.
fn fleet_speeds(fleet: &[Capacity]) -> (f64, f64, u32) {
    let usable = fleet
        .iter()
        .filter(|c| c.slots > 0 && c.speed > 0.0 && c.speed.is_finite());
    let (mut total, mut slowest, mut slots) = (0.0, f64::INFINITY, 0u32);
    for c in usable {
        total += c.slots as f64 * c.speed;
        slowest = slowest.min(c.speed);
        slots = slots.saturating_add(c.slots);
    }
    if slots == 0 {
        (1.0, 1.0, 1)
    } else {
        (total, slowest, slots)
    }
}

/// Cut `duration` seconds of source into chunks for `fleet` so that pull
/// dispatch finishes within `1 + rules.excess` of the ideal, without
/// chunks shorter than the floor or longer than the maximum.
///
/// Equal chunks (`taper: false`): the fewest `n` with
/// `1 + (V / v_min - 1) / n <= 1 + excess`, at least `duration / max`,
/// at most `duration / min`. Tapered: each chunk as long as the bound
/// allows after the work ahead of it,
/// `p_i = v_min / V * ((1 + excess) * W - P_i)`, clamped to
/// `[min, max]`; the tail never leaves a piece shorter than the floor.
pub fn chunk_plan(duration: f64, fleet: &[Capacity], rules: &ChunkRules) -> ChunkPlan {
    if duration.is_nan() || duration <= 0.0 {
        return ChunkPlan {
            seconds: Vec::new(),
            bound: 1.0,
            floor_limited: false,
        };
    }
    let (v_total, v_min, _) = fleet_speeds(fleet);
    let min = rules.min_seconds.max(0.0);
    let max = rules.max_seconds.max(min).max(f64::MIN_POSITIVE);
    let excess = rules.excess.max(0.0);
    let rel = v_total / v_min; // V / v_min >= 1
    let seconds = if rules.taper {
        tapered(duration, rel, min, max, excess)
    } else {
        let by_len = (duration / max).ceil();
        let by_bound = if excess > 0.0 {
            ((rel - 1.0) / excess - 1e-9).ceil()
        } else {
            f64::INFINITY
        };
        let by_floor = if min > 0.0 {
            (duration / min).floor()
        } else {
            f64::INFINITY
        };
        // Not rounded to a multiple of the slots: on a uniform fleet that
        // finishes together only if every chunk costs the same, and the
        // simulator shows it hurts when a worker joins.
        let n = by_len.max(by_bound).min(by_floor).clamp(1.0, 1e6) as usize;
        vec![duration / n as f64; n]
    };
    let bound = makespan_bound(&seconds, fleet);
    ChunkPlan {
        floor_limited: bound > 1.0 + excess + 1e-9,
        seconds,
        bound,
    }
}

fn tapered(duration: f64, rel: f64, min: f64, max: f64, excess: f64) -> Vec<f64> {
    let budget = (1.0 + excess) * duration;
    let mut out = Vec::new();
    let mut ahead = 0.0;
    // Each step takes at least `min` (> 0) or the rest, so this ends; the
    // cap guards a zero floor with a zero excess.
    while duration - ahead > 1e-9 && out.len() < 1_000_000 {
        let rest = duration - ahead;
        let mut p = ((budget - ahead) / rel).clamp(min, max);
        if rest - p > 1e-9 && rest - p < min {
            // Never leave a piece shorter than the floor: split the rest
            // into (rest - min, min) when both fit, else take all of it.
            p = if rest >= 2.0 * min && rest - min <= max {
                rest - min
            } else {
                rest
            };
        }
        let p = p.min(rest).max(1e-9);
        out.push(p);
        ahead += p;
    }
    // A floor-limited tail can end on a piece longer than the one before
    // it. Longest first never raises the bound (swapping a shorter chunk
    // ahead of a longer one cannot lower any finish term), so sort.
    out.sort_by(|a, b| b.total_cmp(a));
    out
}

/// The makespan / ideal that pull dispatch of `chunks` (in this order) on
/// `fleet` cannot exceed when chunk work is proportional to length and the
/// fleet does not change: `max_i (P_i + p_i V / v_min) / W`.
pub fn makespan_bound(chunks: &[f64], fleet: &[Capacity]) -> f64 {
    let total: f64 = chunks.iter().sum();
    if total <= 0.0 {
        return 1.0;
    }
    let (v_total, v_min, _) = fleet_speeds(fleet);
    let mut ahead = 0.0;
    let mut worst: f64 = 0.0;
    for &p in chunks {
        worst = worst.max(ahead + p * v_total / v_min);
        ahead += p;
    }
    worst / total
}

/// What a push scheduler does: one equal chunk per slot of the fleet it
/// knows when the job starts.
pub fn equal_split(duration: f64, fleet: &[Capacity]) -> Vec<f64> {
    let (_, _, slots) = fleet_speeds(fleet);
    vec![duration / slots as f64; slots as usize]
}

/// A worker in the simulator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimWorker {
    /// Work per second of each slot.
    pub speed: f64,
    pub slots: u32,
    /// When it starts pulling (0: from the start).
    pub joins_at: f64,
    /// When it dies (None: never). Its unfinished chunks are redelivered
    /// one ack deadline later; work done on them is lost.
    pub leaves_at: Option<f64>,
}

impl SimWorker {
    /// A worker present for the whole job.
    pub fn steady(speed: f64, slots: u32) -> Self {
        SimWorker {
            speed,
            slots,
            joins_at: 0.0,
            leaves_at: None,
        }
    }
}

/// Queue order of the chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    AsGiven,
    /// Longest first (stable among equals).
    LongestFirst,
}

/// Outcome of a simulated job.
#[derive(Debug, Clone, PartialEq)]
pub struct SimResult {
    /// When the last chunk finished (infinite if the fleet died first).
    pub makespan: f64,
    /// Fluid optimum: the time the fleet's capacity over time, fully
    /// used, does the work once (no chunking, no lost work).
    pub ideal: f64,
    pub ratio: f64,
    /// Chunks redelivered after their worker left.
    pub redelivered: u32,
    /// Chunks each worker started (a redelivered chunk counts again).
    pub started: Vec<u32>,
}

/// Deterministic event simulation of pull dispatch: whenever a slot is
/// free (worker index order, then slot order) it takes the head of the
/// queue; a chunk of work `p` on a slot of speed `v` takes `p / v`. A
/// chunk whose worker leaves before it ends goes back to the head of the
/// queue `ack_wait` seconds after the leave (JetStream redelivers it once
/// the ack deadline passes, ahead of new messages). Completions at the
/// instant of a leave count as done.
pub fn simulate(workers: &[SimWorker], chunks: &[f64], order: Order, ack_wait: f64) -> SimResult {
    let total: f64 = chunks.iter().sum();
    let ideal = fluid_ideal(workers, total);
    let mut queue: VecDeque<usize> = (0..chunks.len()).collect();
    if order == Order::LongestFirst {
        let mut v: Vec<usize> = queue.into_iter().collect();
        v.sort_by(|&a, &b| chunks[b].total_cmp(&chunks[a]));
        queue = v.into();
    }
    // Slots: (worker, busy with (chunk, finish)).
    let mut slots: Vec<(usize, Option<(usize, f64)>)> = workers
        .iter()
        .enumerate()
        .flat_map(|(w, k)| std::iter::repeat_n((w, None), k.slots as usize))
        .collect();
    let active = |w: usize, t: f64| {
        let k = &workers[w];
        k.speed > 0.0 && k.joins_at <= t && k.leaves_at.is_none_or(|l| t < l)
    };
    let mut redeliver: Vec<(f64, usize)> = Vec::new();
    let mut left = vec![false; workers.len()];
    let (mut t, mut done, mut makespan, mut redelivered) = (0.0f64, 0usize, 0.0f64, 0u32);
    let mut started = vec![0u32; workers.len()];
    while done < chunks.len() {
        // Completions up to now (a chunk ending at its worker's leave counts).
        for s in slots.iter_mut() {
            if let Some((_, f)) = s.1 {
                if f <= t {
                    s.1 = None;
                    done += 1;
                    makespan = makespan.max(f);
                }
            }
        }
        // Leaves: in-flight chunks come back after the ack deadline.
        for (w, k) in workers.iter().enumerate() {
            if !left[w] && k.leaves_at.is_some_and(|l| l <= t) {
                left[w] = true;
                for s in slots.iter_mut().filter(|s| s.0 == w) {
                    if let Some((c, _)) = s.1.take() {
                        redeliver.push((k.leaves_at.unwrap_or(t) + ack_wait.max(0.0), c));
                        redelivered += 1;
                    }
                }
            }
        }
        // Redeliveries due: to the head of the queue, oldest first.
        redeliver.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let due: Vec<usize> = redeliver.iter().filter(|r| r.0 <= t).map(|r| r.1).collect();
        redeliver.retain(|r| r.0 > t);
        for c in due.into_iter().rev() {
            queue.push_front(c);
        }
        // Free active slots pull.
        for s in slots.iter_mut() {
            if s.1.is_none() && active(s.0, t) {
                match queue.pop_front() {
                    Some(c) => {
                        started[s.0] += 1;
                        s.1 = Some((c, t + chunks[c] / workers[s.0].speed));
                    }
                    None => break,
                }
            }
        }
        if done == chunks.len() {
            break;
        }
        // Next event.
        let next = slots
            .iter()
            .filter_map(|s| s.1.map(|(_, f)| f))
            .chain(redeliver.iter().map(|r| r.0))
            .chain(workers.iter().map(|k| k.joins_at))
            .chain(workers.iter().filter_map(|k| k.leaves_at))
            .filter(|&x| x > t)
            .fold(f64::INFINITY, f64::min);
        if !next.is_finite() {
            makespan = f64::INFINITY;
            break;
        }
        t = next;
    }
    SimResult {
        makespan,
        ideal,
        ratio: if ideal > 0.0 { makespan / ideal } else { 1.0 },
        redelivered,
        started,
    }
}

/// The earliest time the fleet's capacity, used fully, does `work`.
fn fluid_ideal(workers: &[SimWorker], work: f64) -> f64 {
    let mut points: Vec<f64> = workers
        .iter()
        .flat_map(|k| std::iter::once(k.joins_at).chain(k.leaves_at))
        .filter(|x| *x > 0.0)
        .collect();
    points.push(f64::INFINITY);
    points.sort_by(f64::total_cmp);
    let capacity = |t: f64| -> f64 {
        workers
            .iter()
            .filter(|k| k.speed > 0.0 && k.joins_at <= t && k.leaves_at.is_none_or(|l| t < l))
            .map(|k| k.slots as f64 * k.speed)
            .sum()
    };
    let (mut from, mut rest) = (0.0, work);
    for to in points {
        if to <= from {
            continue;
        }
        let c = capacity(from);
        if c > 0.0 && c * (to - from) >= rest {
            return from + rest / c;
        }
        rest -= c * (to - from);
        from = to;
    }
    f64::INFINITY
}

/// Figures of one fleet shape: push-style equal split against
/// [`chunk_plan`] with equal and with tapered chunks, dispatched longest
/// first.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub equal_split: SimResult,
    pub equal_chunks: (usize, SimResult),
    pub tapered: (usize, SimResult),
}

/// Simulate one fleet shape both ways. The plan sees the workers present
/// at the start (a joining worker is unknown to the planner; a leaving one
/// is still planned for), as the real planner would.
pub fn compare(
    duration: f64,
    workers: &[SimWorker],
    rules: &ChunkRules,
    ack_wait: f64,
) -> Comparison {
    let fleet: Vec<Capacity> = workers
        .iter()
        .filter(|w| w.joins_at <= 0.0)
        .map(|w| Capacity {
            slots: w.slots,
            speed: w.speed,
        })
        .collect();
    let run = |chunks: &[f64]| simulate(workers, chunks, Order::LongestFirst, ack_wait);
    let equal = chunk_plan(
        duration,
        &fleet,
        &ChunkRules {
            taper: false,
            ..*rules
        },
    );
    let taper = chunk_plan(
        duration,
        &fleet,
        &ChunkRules {
            taper: true,
            ..*rules
        },
    );
    Comparison {
        equal_split: run(&equal_split(duration, &fleet)),
        equal_chunks: (equal.seconds.len(), run(&equal.seconds)),
        tapered: (taper.seconds.len(), run(&taper.seconds)),
    }
}

/// What a task costs a slot beyond its encoding, seconds: child start,
/// dynamic loading, fresh memory, the encoder's ramp-up and its flush,
/// the part check. Measured (BENCHMARKS.md, "Fixed cost of a task" and
/// "Where the CPU of the 720p job goes"): 0.13 slot-seconds per task at
/// 144p, 0.19 CPU-seconds (two threads) per chunk at 720p.
pub const TASK_OVERHEAD_SECONDS: f64 = 0.15;
/// How far a worker's real speed may differ from the one its heartbeat
/// reported, for [`segments_per_chunk`]'s robustness check.
pub const SPEED_JITTER: f64 = 0.2;

/// Most segments [`segments_per_chunk`] puts in one chunk (it simulates
/// every count up to this; a 30 s chunk of 1 s segments is 30).
pub const MAX_SEGMENTS_PER_CHUNK: usize = 64;

/// The inputs of [`segments_per_chunk`].
#[derive(Debug, Clone, Copy)]
pub struct ChunkChoice<'a> {
    /// Duration of each delivery segment in time order, seconds.
    pub segments: &'a [f64],
    /// The live fleet; a slot's speed in seconds of source per second.
    pub fleet: &'a [Capacity],
    /// Longest chunk, seconds (whole segments; at least one segment).
    pub max_seconds: f64,
    /// Slot-seconds each task costs beyond its encoding.
    pub task_overhead: f64,
    /// A worker may run this much slower or faster than reported (0.2: 20 %).
    pub jitter: f64,
}

/// How many consecutive segments one task should encode: the chunking
/// whose pull-dispatch makespan on the live fleet, each task paying
/// `task_overhead`, is shortest on average while each worker's speed
/// wanders up to `jitter` from its heartbeat's; among those within 1 % of
/// the best, the one with the fewest tasks (each task costs CPU: its overhead and an extra
/// IDR frame). The worst-case bound of [`chunk_plan`] asks for about
/// `(V / v_min - 1) / excess` chunks whatever the overhead (10 chunks for
/// two equal slots); simulating the fleet it has shows when fewer do as
/// well (two 30 s chunks for two equal slots and a 60 s clip). Pure.
pub fn segments_per_chunk(c: &ChunkChoice) -> usize {
    let n = c.segments.len();
    if n <= 1 {
        return 1;
    }
    let total: f64 = c.segments.iter().sum();
    let mean = total / n as f64;
    let k_max = if mean > 0.0 && mean.is_finite() && c.max_seconds.is_finite() {
        ((c.max_seconds / mean + 1e-9).floor() as usize).clamp(1, n.min(MAX_SEGMENTS_PER_CHUNK))
    } else {
        1
    };
    let mut fleet: Vec<Capacity> = c
        .fleet
        .iter()
        .copied()
        .filter(|f| f.slots > 0 && f.speed > 0.0 && f.speed.is_finite())
        .collect();
    if fleet.is_empty() {
        fleet.push(Capacity {
            slots: 1,
            speed: 1.0,
        });
    }
    // Only the first `n` slots can ever take a chunk (every slot starts
    // free, ties go to the lowest index): a heartbeat claiming millions of
    // slots must not make the simulation allocate for them.
    for f in fleet.iter_mut() {
        f.slots = f.slots.min(n.min(u32::MAX as usize) as u32);
    }
    let slots: u64 = fleet.iter().map(|f| f.slots as u64).sum();
    // Many chunks per slot: the tail is noise next to the job, and the
    // fewest tasks win. Also keeps the simulation below cheap.
    if n.div_ceil(k_max) as u64 >= 32 * slots {
        return k_max;
    }
    let overhead = c.task_overhead.max(0.0);
    let jitter = c.jitter.clamp(0.0, 0.95);
    // The fleet as reported and 15 variations of it, every worker's speed
    // off by up to `jitter` either way (a fixed pseudo-random sequence:
    // the pick is deterministic). Averaging over them keeps the pick from
    // trusting a lucky alignment of chunk ends that a real fleet, whose
    // speeds wander, would not reproduce.
    let mut unit = unit_sequence(0x9e37_79b9_7f4a_7c15);
    let scenarios: Vec<Vec<f64>> = (0..16)
        .map(|s| {
            fleet
                .iter()
                .flat_map(|f| {
                    let factor = if s == 0 {
                        1.0
                    } else {
                        1.0 + jitter * (2.0 * unit() - 1.0)
                    };
                    std::iter::repeat_n(f.speed * factor, f.slots as usize)
                })
                .take(n)
                .collect()
        })
        .collect();
    let estimate = |k: usize| -> f64 {
        let chunks: Vec<f64> = c.segments.chunks(k).map(|g| g.iter().sum()).collect();
        scenarios
            .iter()
            .map(|speeds| pull_makespan(speeds, &chunks, overhead))
            .sum::<f64>()
            / scenarios.len() as f64
    };
    let est: Vec<(usize, f64)> = (1..=k_max).map(|k| (k, estimate(k))).collect();
    let best = est.iter().map(|e| e.1).fold(f64::INFINITY, f64::min);
    est.iter()
        .rev()
        .find(|e| e.1 <= best * 1.01)
        .map_or(k_max, |e| e.0)
}

/// A fixed pseudo-random sequence in `[0, 1)` from `seed` (xorshift64):
/// the speed variations a deterministic estimate averages over.
pub fn unit_sequence(seed: u64) -> impl FnMut() -> f64 {
    let mut rng = seed.max(1);
    move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Makespan of pull dispatch of `chunks` (seconds of source, in queue
/// order) over slots of the given speeds, each task also costing
/// `overhead` seconds: the earliest free slot (lowest index on a tie)
/// takes the next chunk.
fn pull_makespan(speeds: &[f64], chunks: &[f64], overhead: f64) -> f64 {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    #[derive(PartialEq)]
    struct At(f64);
    impl Eq for At {}
    impl PartialOrd for At {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    impl Ord for At {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            self.0.total_cmp(&o.0)
        }
    }
    let mut free: BinaryHeap<Reverse<(At, usize)>> =
        (0..speeds.len()).map(|i| Reverse((At(0.0), i))).collect();
    let mut end: f64 = 0.0;
    for &p in chunks {
        let Some(Reverse((At(t), i))) = free.pop() else {
            return f64::INFINITY;
        };
        let done = t + overhead + p / speeds[i];
        end = end.max(done);
        free.push(Reverse((At(done), i)));
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACK_WAIT: f64 = 10.0; // streams::TASK_ACK_WAIT

    fn fleet(speeds: &[f64]) -> Vec<SimWorker> {
        speeds.iter().map(|&s| SimWorker::steady(s, 1)).collect()
    }

    fn caps(speeds: &[f64]) -> Vec<Capacity> {
        speeds
            .iter()
            .map(|&s| Capacity { slots: 1, speed: s })
            .collect()
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn balance_segments_per_chunk() {
        let uniform = |slots: u32, speed: f64| vec![Capacity { slots, speed }];
        let pick = |segs: &[f64], fleet: &[Capacity], max: f64| {
            segments_per_chunk(&ChunkChoice {
                segments: segs,
                fleet,
                max_seconds: max,
                task_overhead: TASK_OVERHEAD_SECONDS,
                jitter: SPEED_JITTER,
            })
        };
        let tens = [10.0; 6]; // a 60 s clip in 10 s segments
        let sixes = [6.0; 100]; // 10 min in 6 s segments
        let twos = [2.0; 150]; // 300 s in 2 s segments
        let mixed = vec![
            Capacity {
                slots: 1,
                speed: 1.0,
            },
            Capacity {
                slots: 1,
                speed: 2.0,
            },
            Capacity {
                slots: 1,
                speed: 4.0,
            },
        ];
        let one_big = vec![
            Capacity {
                slots: 3,
                speed: 1.0,
            },
            Capacity {
                slots: 1,
                speed: 8.0,
            },
        ];
        // (what, segments, fleet, max chunk s) -> segments per chunk
        type Row<'a> = (&'a str, &'a [f64], Vec<Capacity>, f64, usize);
        let table: Vec<Row> = vec![
            (
                "two equal slots: one 30 s chunk each",
                &tens,
                uniform(2, 6.0),
                30.0,
                3,
            ),
            (
                "one slot: the longest chunks",
                &tens,
                uniform(1, 6.0),
                30.0,
                3,
            ),
            (
                "ten slots: every segment its own task",
                &tens,
                uniform(10, 1.0),
                30.0,
                1,
            ),
            (
                "three slots: two segments each",
                &tens,
                uniform(3, 1.0),
                30.0,
                2,
            ),
            (
                "10 min on two slots: 30 s chunks",
                &sixes,
                uniform(2, 1.0),
                30.0,
                5,
            ),
            (
                "10 min on 40 workers: one segment each",
                &sixes,
                vec![
                    Capacity {
                        slots: 1,
                        speed: 1.0
                    };
                    40
                ],
                30.0,
                1,
            ),
            // One 40-slot machine 20 % slow delays every chunk alike: one
            // wave of 18 s chunks is as good as three of 6 s, with fewer tasks.
            (
                "10 min on one 40-slot machine",
                &sixes,
                uniform(40, 1.0),
                30.0,
                3,
            ),
            ("speeds 1, 2, 4", &sixes, mixed.clone(), 30.0, 3),
            ("speeds 1, 1, 1, 8", &sixes, one_big.clone(), 30.0, 5),
            (
                "fast encodes pay the overhead: long chunks",
                &twos,
                uniform(2, 50.0),
                30.0,
                15,
            ),
            ("no fleet known: one slot", &tens, vec![], 30.0, 3),
            ("the chunk cap wins", &sixes, uniform(1, 1.0), 12.0, 2),
            ("one segment", &[10.0], uniform(4, 1.0), 30.0, 1),
            // A heartbeat claiming billions of slots: only as many as
            // there are segments are simulated.
            ("absurd slot count", &tens, uniform(u32::MAX, 1.0), 30.0, 1),
            ("none", &[], uniform(4, 1.0), 30.0, 1),
            (
                "segments longer than the cap",
                &tens,
                uniform(1, 1.0),
                5.0,
                1,
            ),
        ];
        for (what, segs, fleet, max, want) in table {
            assert_eq!(pick(segs, &fleet, max), want, "{what}");
        }
        // Many chunks per slot: no simulation, the longest chunks.
        let long = vec![6.0; 10_000];
        assert_eq!(pick(&long, &uniform(4, 1.0), 30.0), 5);
        // Garbage speeds are ignored, not trusted.
        let bad = vec![Capacity {
            slots: 2,
            speed: f64::NAN,
        }];
        assert_eq!(pick(&tens, &bad, 30.0), 3);
    }

    #[test]
    fn balance_unit_sequence() {
        let (mut a, mut b) = (unit_sequence(7), unit_sequence(7));
        let xs: Vec<f64> = (0..1000).map(|_| a()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(xs.iter().zip((0..1000).map(|_| b())).all(|(x, y)| *x == y));
        let mean = xs.iter().sum::<f64>() / 1000.0;
        assert!((0.4..0.6).contains(&mean), "{mean}");
        // A zero seed would stay zero in xorshift: it does not.
        let mut z = unit_sequence(0);
        assert!((0..10).map(|_| z()).any(|x| x > 0.0));
    }

    #[test]
    fn balance_pull_makespan() {
        // Two slots, speeds 1 and 2, chunks 4, 4, 4, overhead 0:
        // slot 0 takes the first (ends 4), slot 1 the second (2) and third (4).
        assert!(close(
            pull_makespan(&[1.0, 2.0], &[4.0, 4.0, 4.0], 0.0),
            4.0,
            1e-12
        ));
        // Each task also pays the overhead.
        assert!(close(pull_makespan(&[1.0], &[1.0, 1.0], 0.5), 3.0, 1e-12));
        assert_eq!(pull_makespan(&[], &[1.0], 0.0), f64::INFINITY);
        assert_eq!(pull_makespan(&[1.0], &[], 0.0), 0.0);
    }

    #[test]
    fn balance_equal_chunk_counts() {
        let rules = ChunkRules {
            taper: false,
            ..Default::default()
        };
        // (duration, speeds, chunks, bound, floor limited)
        let table: &[(f64, &[f64], usize, f64, bool)] = &[
            // One slot: the chunk length rule alone (today's planner).
            (120.0, &[1.0], 12, 1.0, false),
            // 4 equal slots: (4 - 1) / 0.1 = 30 chunks of 4 s.
            (120.0, &[1.0; 4], 30, 1.1, false),
            // Long source: 10 s chunks are already enough.
            (600.0, &[1.0; 4], 60, 1.05, false),
            // {1,2,4}: V / v_min = 7, 60 chunks of 2 s.
            (120.0, &[1.0, 2.0, 4.0], 60, 1.1, false),
            // {1,1,1,8}: needs 100 chunks, the 2 s floor allows 60.
            (120.0, &[1.0, 1.0, 1.0, 8.0], 60, 1.0 + 10.0 / 60.0, true),
            (600.0, &[1.0, 1.0, 1.0, 8.0], 100, 1.1, false),
            // Shorter than the floor: one chunk.
            (1.5, &[1.0; 4], 1, 4.0, true),
        ];
        for &(d, speeds, n, bound, limited) in table {
            let p = chunk_plan(d, &caps(speeds), &rules);
            assert_eq!(p.seconds.len(), n, "{d} s on {speeds:?}");
            assert!(
                close(p.bound, bound, 1e-9),
                "{d} s on {speeds:?}: {}",
                p.bound
            );
            assert_eq!(p.floor_limited, limited, "{d} s on {speeds:?}");
            assert!(close(p.seconds.iter().sum(), d, 1e-9));
            if n > 1 {
                assert!(p
                    .seconds
                    .iter()
                    .all(|&s| (2.0 - 1e-9..=10.0 + 1e-9).contains(&s)));
            }
        }
    }

    #[test]
    fn balance_tapered_plans() {
        let rules = ChunkRules {
            taper: true,
            ..Default::default()
        };
        // (duration, speeds, chunks, bound when the floor limits it)
        let table: &[(f64, &[f64], usize, Option<f64>)] = &[
            (120.0, &[1.0], 12, None),
            (120.0, &[1.0; 4], 14, None),
            // The 2 s floor stops the taper early on short sources.
            (120.0, &[1.0, 2.0, 4.0], 17, Some(1.1290)),
            (120.0, &[1.0, 1.0, 1.0, 8.0], 24, Some(1.1667)),
            (600.0, &[1.0, 2.0, 4.0], 60, None),
            (600.0, &[1.0, 1.0, 1.0, 8.0], 62, None),
        ];
        for &(d, speeds, n, limited) in table {
            let p = chunk_plan(d, &caps(speeds), &rules);
            assert_eq!(p.seconds.len(), n, "{d} s on {speeds:?}: {:?}", p.seconds);
            match limited {
                None => assert!(
                    !p.floor_limited && p.bound <= 1.1 + 1e-9,
                    "{d} s on {speeds:?}: {}",
                    p.bound
                ),
                Some(b) => assert!(
                    p.floor_limited && close(p.bound, b, 1e-4),
                    "{d} s on {speeds:?}: {}",
                    p.bound
                ),
            }
            assert!(close(p.seconds.iter().sum(), d, 1e-6));
            assert!(
                p.seconds.windows(2).all(|w| w[0] >= w[1] - 1e-9),
                "longest first"
            );
            assert!(p
                .seconds
                .iter()
                .all(|&s| (2.0 - 1e-9..=10.0 + 1e-9).contains(&s)));
            // Never more chunks than equal ones for the same bound.
            let eq = chunk_plan(
                d,
                &caps(speeds),
                &ChunkRules {
                    taper: false,
                    ..rules
                },
            );
            assert!(p.seconds.len() <= eq.seconds.len());
        }
        // A fleet too fast for the source: the floor wins, honestly reported.
        let p = chunk_plan(20.0, &caps(&[1.0; 16]), &rules);
        assert_eq!(p.seconds.len(), 10);
        assert!(p.floor_limited && p.bound > 1.5, "{}", p.bound);
    }

    #[test]
    fn balance_bound_holds_in_the_simulator() {
        // The theorem, checked: any static fleet, any chunk list, queue order.
        let fleets: &[&[f64]] = &[
            &[1.0],
            &[1.0; 4],
            &[1.0, 2.0, 4.0],
            &[1.0, 1.0, 1.0, 8.0],
            &[3.0, 0.5],
        ];
        let lists: Vec<Vec<f64>> = vec![
            vec![5.0; 7],
            vec![9.0, 1.0, 1.0, 1.0, 1.0, 1.0],
            vec![1.0, 1.0, 1.0, 9.0],
            (1..=20).map(|i| (i * 7 % 11) as f64 + 1.0).collect(),
        ];
        for speeds in fleets {
            for chunks in &lists {
                let r = simulate(&fleet(speeds), chunks, Order::AsGiven, ACK_WAIT);
                let b = makespan_bound(chunks, &caps(speeds));
                assert!(
                    r.ratio <= b + 1e-9,
                    "{speeds:?} {chunks:?}: {} > {b}",
                    r.ratio
                );
            }
        }
        // Tight case: uniform fleet, n = slots + 1 equal chunks.
        let r = simulate(&fleet(&[1.0; 4]), &[1.0; 5], Order::AsGiven, ACK_WAIT);
        assert!(close(
            r.ratio,
            makespan_bound(&[1.0; 5], &caps(&[1.0; 4])),
            1e-9
        ));
    }

    #[test]
    fn balance_simulator_basics() {
        let r = simulate(&fleet(&[2.0]), &[4.0, 6.0], Order::AsGiven, ACK_WAIT);
        assert_eq!((r.makespan, r.ideal, r.ratio), (5.0, 5.0, 1.0));
        // Longest first: 6 then 4 and 2 on two unit slots: 6 / 6 = 1.
        let r = simulate(
            &fleet(&[1.0, 1.0]),
            &[2.0, 4.0, 6.0],
            Order::LongestFirst,
            ACK_WAIT,
        );
        assert_eq!(r.makespan, 6.0);
        // As given: 2 | 4, then 6 after 2: ends at 8.
        let r = simulate(
            &fleet(&[1.0, 1.0]),
            &[2.0, 4.0, 6.0],
            Order::AsGiven,
            ACK_WAIT,
        );
        assert_eq!(r.makespan, 8.0);
        assert_eq!(r.started, vec![2, 1]);
        // A leave: the chunk comes back after the ack deadline, work lost.
        let w = [
            SimWorker::steady(1.0, 1),
            SimWorker {
                leaves_at: Some(3.0),
                ..SimWorker::steady(1.0, 1)
            },
        ];
        let r = simulate(&w, &[5.0, 5.0], Order::AsGiven, 10.0);
        assert_eq!(r.redelivered, 1);
        assert_eq!(r.makespan, 18.0); // back at 13, 5 more
        assert_eq!(r.started, vec![2, 1]); // the redelivered chunk counts again
        assert_eq!(r.ideal, 3.0 + 4.0); // 6 done by 3, 4 more at speed 1
                                        // A join: it pulls what is still queued.
        let w = [
            SimWorker::steady(1.0, 1),
            SimWorker {
                joins_at: 2.0,
                ..SimWorker::steady(1.0, 1)
            },
        ];
        let r = simulate(&w, &[2.0; 4], Order::AsGiven, 10.0);
        assert_eq!(r.makespan, 6.0);
        assert_eq!(r.ideal, 5.0);
        // Everyone gone with work left: never ends.
        let w = [SimWorker {
            leaves_at: Some(1.0),
            ..SimWorker::steady(1.0, 1)
        }];
        assert!(simulate(&w, &[5.0], Order::AsGiven, 1.0)
            .makespan
            .is_infinite());
    }

    /// The fleet shapes of issue 14 on a source of `d` seconds (speed 1 =
    /// one second of source per second), 10 s ack deadline; the join and
    /// the leave happen halfway through the 4-slot fleet's ideal.
    fn shapes(d: f64) -> Vec<(&'static str, Vec<SimWorker>)> {
        let mid = d / 4.0 / 2.0;
        let join = SimWorker {
            joins_at: mid,
            ..SimWorker::steady(1.0, 1)
        };
        let leave = SimWorker {
            leaves_at: Some(mid),
            ..SimWorker::steady(1.0, 1)
        };
        vec![
            ("{1,1,1,1}", fleet(&[1.0; 4])),
            ("{1,2,4}", fleet(&[1.0, 2.0, 4.0])),
            ("{1,1,1,8}", fleet(&[1.0, 1.0, 1.0, 8.0])),
            (
                "{1,1,1,1} + 1 joins",
                [fleet(&[1.0; 4]), vec![join]].concat(),
            ),
            (
                "{1,1,1,1}, 1 leaves",
                [fleet(&[1.0; 3]), vec![leave]].concat(),
            ),
        ]
    }

    #[test]
    fn balance_fleet_shapes() {
        // (duration, shape, equal split, equal chunks, tapered): makespan
        // / ideal. Equal split = one chunk per slot of the starting fleet.
        let want: &[(f64, &str, f64, f64, f64)] = &[
            (120.0, "{1,1,1,1}", 1.0000, 1.0667, 1.0000),
            (120.0, "{1,2,4}", 2.3333, 1.0500, 1.1000),
            (120.0, "{1,1,1,8}", 2.7500, 1.1000, 1.1017),
            (120.0, "{1,1,1,1} + 1 joins", 1.1111, 1.0370, 1.1111),
            (120.0, "{1,1,1,1}, 1 leaves", 1.7143, 1.0286, 1.0857),
            (600.0, "{1,1,1,1}", 1.0000, 1.0000, 1.0000),
            (600.0, "{1,2,4}", 2.3333, 1.0500, 1.0500),
            (600.0, "{1,1,1,8}", 2.7500, 1.1000, 1.1000),
            (600.0, "{1,1,1,1} + 1 joins", 1.1111, 1.0370, 1.0370),
            (600.0, "{1,1,1,1}, 1 leaves", 1.7143, 1.0286, 1.0286),
        ];
        let rules = ChunkRules::default();
        let mut seen = 0;
        for d in [120.0, 600.0] {
            for (name, workers) in shapes(d) {
                let c = compare(d, &workers, &rules, ACK_WAIT);
                let got = (
                    c.equal_split.ratio,
                    c.equal_chunks.1.ratio,
                    c.tapered.1.ratio,
                );
                let &(_, _, split, eq, tap) = want
                    .iter()
                    .find(|w| w.0 == d && w.1 == name)
                    .expect("shape in table");
                assert!(
                    close(got.0, split, 1e-4) && close(got.1, eq, 1e-4) && close(got.2, tap, 1e-4),
                    "{d} s {name}: {got:?}"
                );
                // The target: within 10 % wherever equal split is much worse.
                if got.0 >= 1.2 {
                    assert!(got.1 <= 1.1 + 1e-9, "{d} s {name}: {}", got.1);
                }
                seen += 1;
            }
        }
        assert_eq!(seen, want.len());
    }
}
