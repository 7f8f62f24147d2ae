//! The balancing simulator's table for `just bench`: the fleet shapes of
//! issue 14 under pull dispatch, push-style equal split against
//! `jetcode::balance::chunk_plan` (equal and tapered chunks), makespan /
//! ideal. Pure: no server, no media. The same shapes are asserted in
//! `src/balance.rs`'s tests.

#![allow(dead_code)]

use jetcode::balance::{compare, ChunkRules, SimWorker};

/// The ack deadline of the task consumer (`streams::TASK_ACK_WAIT`).
pub const ACK_WAIT: f64 = 10.0;

/// The shapes on a source of `duration` seconds (speed 1 = one second of
/// source per second); the join and the leave happen halfway through the
/// 4-slot fleet's ideal.
pub fn shapes(duration: f64) -> Vec<(&'static str, Vec<SimWorker>)> {
    let one = SimWorker::steady(1.0, 1);
    let fleet = |speeds: &[f64]| -> Vec<SimWorker> {
        speeds.iter().map(|&s| SimWorker::steady(s, 1)).collect()
    };
    let mid = duration / 4.0 / 2.0;
    vec![
        ("{1,1,1,1}", fleet(&[1.0; 4])),
        ("{1,2,4}", fleet(&[1.0, 2.0, 4.0])),
        ("{1,1,1,8}", fleet(&[1.0, 1.0, 1.0, 8.0])),
        (
            "{1,1,1,1} + 1 joins",
            [
                fleet(&[1.0; 4]),
                vec![SimWorker {
                    joins_at: mid,
                    ..one
                }],
            ]
            .concat(),
        ),
        (
            "{1,1,1,1}, 1 leaves",
            [
                fleet(&[1.0; 3]),
                vec![SimWorker {
                    leaves_at: Some(mid),
                    ..one
                }],
            ]
            .concat(),
        ),
    ]
}

/// A markdown section: one row per (source length, fleet shape).
pub fn markdown(durations: &[f64]) -> String {
    let rules = ChunkRules::default();
    let mut md = String::from("## Balancing (simulator)\n\n");
    md.push_str(&format!(
        "Pull dispatch simulated by `jetcode::balance::simulate` (pure, deterministic; `docs/balancing.md`): one slot per worker, speeds as given (1 = one second of source per second), chunks dispatched longest first, a leaving worker's chunk redelivered after the {ACK_WAIT} s ack deadline; the join / leave happens halfway through the 4-slot ideal. Makespan ÷ ideal (fluid optimum). Equal split: one chunk per slot of the starting fleet (a push scheduler). Ours: `chunk_plan` with a {} s floor, {} s maximum and {:.0} % excess, equal chunks (the default) and tapered.\n\n",
        rules.min_seconds,
        rules.max_seconds,
        rules.excess * 100.0
    ));
    md.push_str("| source, s | fleet | equal split | ours, equal chunks (n) | ours, tapered (n) |\n|---|---|---|---|---|\n");
    for &d in durations {
        for (name, workers) in shapes(d) {
            let c = compare(d, &workers, &rules, ACK_WAIT);
            md.push_str(&format!(
                "| {d:.0} | {name} | {:.3} | {:.3} ({}) | {:.3} ({}) |\n",
                c.equal_split.ratio,
                c.equal_chunks.1.ratio,
                c.equal_chunks.0,
                c.tapered.1.ratio,
                c.tapered.0
            ));
        }
    }
    md
}
