//! Which priority class a free slot pulls from: smooth weighted round robin
//! over the classes that have work. Pure; the pull loop asks, fetches, and
//! tells it what it got.
//!
//! Weights high 4 : normal 2 : low 1. With all three backlogged the starts
//! repeat `high normal high low high normal high`: low gets exactly 1 of
//! every 7 and never waits more than 6 starts. A class only competes while
//! it has work, so an idle class neither builds up credit nor blocks one
//! that has work (the fall-through).
//!
//! The loop cannot know a class is empty before asking it, so a class not
//! yet asked in a round counts as competing: the first starts after a
//! class runs dry can differ from the exact order by a start or so (with
//! high and low queued and normal empty the first starts are `H L H H H L`
//! instead of `H H L H H`), and the shares settle at the weights at once
//! (`pull_loop_with_fall_through_table`).

use crate::subjects::PriorityClass;

/// Relative share of slot starts of a backlogged class.
pub fn weight(class: PriorityClass) -> i64 {
    match class {
        PriorityClass::High => 4,
        PriorityClass::Normal => 2,
        PriorityClass::Low => 1,
    }
}

fn index(class: PriorityClass) -> usize {
    match class {
        PriorityClass::High => 0,
        PriorityClass::Normal => 1,
        PriorityClass::Low => 2,
    }
}

/// Smooth weighted round robin (as nginx balances upstreams) over the
/// classes that have work. `choose` only looks; `commit` records a start,
/// so a class chosen but found empty costs nothing and the next choice
/// among the rest is the fall-through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Picker {
    /// Credit of each class; sums to zero.
    current: [i64; 3],
}

impl Picker {
    /// The class the next start should come from, among those `has_work`
    /// says have some; `None` when none has. Ties go to the higher class.
    pub fn choose(&self, has_work: impl Fn(PriorityClass) -> bool) -> Option<PriorityClass> {
        PriorityClass::ALL
            .into_iter()
            .filter(|&c| has_work(c))
            // max_by_key keeps the last maximum: reverse so the highest
            // class wins ties.
            .rev()
            .max_by_key(|&c| self.current[index(c)] + weight(c))
    }

    /// A task of `class` started while the classes `has_work` says had
    /// work competed (`class` among them).
    pub fn commit(&mut self, class: PriorityClass, has_work: impl Fn(PriorityClass) -> bool) {
        let mut total = 0;
        for c in PriorityClass::ALL {
            if has_work(c) || c == class {
                self.current[index(c)] += weight(c);
                total += weight(c);
            }
        }
        self.current[index(class)] -= total;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PriorityClass::*;

    fn letters(seq: &[PriorityClass]) -> String {
        seq.iter()
            .map(|c| match c {
                High => 'H',
                Normal => 'N',
                Low => 'L',
            })
            .collect()
    }

    /// Choose among `has_work` and commit the choice, as the pull loop
    /// does when the chosen class has a task.
    fn next(
        p: &mut Picker,
        has_work: impl Fn(PriorityClass) -> bool + Copy,
    ) -> Option<PriorityClass> {
        let c = p.choose(has_work)?;
        p.commit(c, has_work);
        Some(c)
    }

    /// `n` starts with the classes in `backlog` always having work.
    fn run(p: &mut Picker, backlog: &[PriorityClass], n: usize) -> Vec<PriorityClass> {
        (0..n)
            .map(|_| next(p, |c| backlog.contains(&c)).unwrap())
            .collect()
    }

    #[test]
    fn weighted_choice_table() {
        // (classes with work, starts, expected order)
        let table: &[(&[PriorityClass], usize, &str)] = &[
            (&[High, Normal, Low], 14, "HNHLHNHHNHLHNH"),
            (&[High, Normal], 6, "HNHHNH"),
            (&[High, Low], 10, "HHLHHHHLHH"),
            (&[Normal, Low], 6, "NLNNLN"),
            (&[Low], 3, "LLL"),
            (&[Normal], 2, "NN"),
        ];
        for (backlog, n, want) in table {
            let mut p = Picker::default();
            assert_eq!(letters(&run(&mut p, backlog, *n)), *want, "{backlog:?}");
        }
    }

    #[test]
    fn nothing_to_choose_when_no_class_has_work() {
        let mut p = Picker::default();
        assert_eq!(p.choose(|_| false), None);
        assert_eq!(next(&mut p, |_| false), None);
        assert_eq!(p, Picker::default());
    }

    #[test]
    fn an_empty_choice_falls_through_without_spending_credit() {
        // The loop's view: every class may have work; high turns out empty.
        let mut p = Picker::default();
        let mut empty = vec![];
        let mut got = vec![];
        // A server that has only normal and low work.
        let has = |c: PriorityClass| c != High;
        for _ in 0..6 {
            let avail = |c: PriorityClass| !empty.contains(&c);
            let c = p.choose(avail).unwrap();
            if !has(c) {
                empty.push(c);
                let avail = |c: PriorityClass| !empty.contains(&c);
                let c = p.choose(avail).unwrap();
                assert_ne!(c, High);
                p.commit(c, avail);
                got.push(c);
            } else {
                p.commit(c, avail);
                got.push(c);
            }
        }
        // Exactly what normal and low alone would get: high's absence
        // neither starves low nor hands normal its share.
        assert_eq!(letters(&got), "NLNNLN");
    }

    /// The pull loop's use, against a server whose queued classes are
    /// `queued`: each round fills `slots` slots; a class chosen but empty
    /// drops out for the round (the loop cannot know a class is empty
    /// before asking, so every class starts a round as a candidate).
    fn pull_rounds(queued: &[PriorityClass], slots: usize, starts: usize) -> Vec<PriorityClass> {
        let mut p = Picker::default();
        let mut out = Vec::new();
        while out.len() < starts {
            let mut empty = Vec::new();
            let mut filled = 0;
            while filled < slots {
                let avail = |c: PriorityClass| !empty.contains(&c);
                let Some(c) = p.choose(avail) else { break };
                if queued.contains(&c) {
                    p.commit(c, avail);
                    out.push(c);
                    filled += 1;
                } else {
                    empty.push(c);
                }
            }
            assert!(filled > 0, "nothing started with {queued:?} queued");
        }
        out
    }

    /// Longest run of starts between two starts of `class`.
    fn max_gap(seq: &[PriorityClass], class: PriorityClass) -> usize {
        let at: Vec<_> = (0..seq.len()).filter(|&i| seq[i] == class).collect();
        at.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0)
    }

    #[test]
    fn pull_loop_with_fall_through_table() {
        // (queued classes, slots per round, share of each over 700 starts
        // (high, normal, low), longest gap of the lowest class queued)
        type Row = (
            &'static [PriorityClass],
            usize,
            (usize, usize, usize),
            usize,
        );
        let table: &[Row] = &[
            (&[High, Normal, Low], 1, (400, 200, 100), 7),
            (&[High, Normal, Low], 3, (400, 200, 100), 7),
            (&[High, Low], 1, (560, 0, 140), 5),
            (&[High, Low], 4, (560, 0, 140), 5),
            (&[High, Normal], 1, (467, 233, 0), 3),
            (&[Normal, Low], 2, (0, 467, 233), 3),
            (&[Low], 1, (0, 0, 700), 1),
        ];
        for (queued, slots, (h, n, l), gap) in table {
            let seq = pull_rounds(queued, *slots, 700);
            let seq = &seq[..700];
            let count = |c| seq.iter().filter(|&&x| x == c).count() as i64;
            for (class, want) in [(High, *h), (Normal, *n), (Low, *l)] {
                assert!(
                    (count(class) - want as i64).abs() <= 1,
                    "{queued:?} x{slots}: {class:?} started {} times, want {want}",
                    count(class)
                );
            }
            let lowest = *queued.last().unwrap();
            assert!(
                max_gap(seq, lowest) <= *gap,
                "{queued:?} x{slots}: {lowest:?} waited {} starts",
                max_gap(seq, lowest)
            );
            // The first start always goes to the highest class queued.
            assert_eq!(seq[0], queued[0], "{queued:?} x{slots}");
        }
    }

    #[test]
    fn low_is_never_starved_while_higher_classes_are_backlogged() {
        let mut p = Picker::default();
        let seq = run(&mut p, &[High, Normal, Low], 7 * 100);
        let count = |c| seq.iter().filter(|&&x| x == c).count();
        assert_eq!((count(High), count(Normal), count(Low)), (400, 200, 100));
        // Every window of 7 consecutive starts has exactly one low.
        for w in seq.windows(7) {
            assert_eq!(w.iter().filter(|&&c| c == Low).count(), 1, "{w:?}");
        }
        // With only high competing, low still gets one start in five.
        let seq = run(&mut p, &[High, Low], 500);
        for w in seq.windows(5) {
            assert_eq!(w.iter().filter(|&&c| c == Low).count(), 1, "{w:?}");
        }
    }

    #[test]
    fn a_class_that_comes_back_has_no_hoarded_credit() {
        // High alone for a long time, then all three: the shares are the
        // weighted ones at once, high does not get a burst.
        let mut p = Picker::default();
        run(&mut p, &[High], 1000);
        let seq = run(&mut p, &[High, Normal, Low], 7);
        let lows = seq.iter().filter(|&&c| c == Low).count();
        let highs = seq.iter().filter(|&&c| c == High).count();
        assert_eq!((highs, lows), (4, 1), "{}", letters(&seq));
        // Normal alone for long, then all three: normal is not owed a run.
        let mut p = Picker::default();
        run(&mut p, &[Normal], 1000);
        let seq = run(&mut p, &[High, Normal, Low], 7);
        assert_eq!(letters(&seq).matches('N').count(), 2, "{}", letters(&seq));
    }
}
