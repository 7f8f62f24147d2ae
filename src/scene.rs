//! PURE scene-change candidates from coded frame sizes: no decoding, no
//! I/O. The probe already reads every packet of the video once; this turns
//! the packets' sizes, keyframe flags and order into the frames where a new
//! shot likely starts, for the planner to cut at (see
//! [`crate::plan::plan`]).
//!
//! Two signals, both free once the packets are read:
//!
//! * **A non-key anchor frame far above its neighbours.** Inter prediction
//!   fails across a cut, so the first P-frame of a new shot is coded almost
//!   all intra and is several times larger than the P-frames around it.
//!   Only *anchors* are compared (frames decoded after every frame shown
//!   before them: I- and P-frames); B-frames are reordered, much smaller
//!   and would make every P-frame of an `IBBP` pattern a "spike". A frame
//!   is a candidate when it is more than [`SPIKE_FACTOR`] times the median
//!   of the [`SPIKE_WINDOW`] non-key anchors on either side. With B-frames
//!   the cut may lie in the B-frames shown before that anchor (they are
//!   decoded after it): the first of them that is more than
//!   [`B_FACTOR`] times the 90th percentile of the B-frames before them (a
//!   B-frame after a cut can only predict from one side; the percentile
//!   keeps a B-pyramid's larger reference B-frames from counting) is taken
//!   instead.
//! * **A keyframe off the source's GOP cadence.** Encoders with scene-cut
//!   detection (x264/x265 default) put an I-frame at a cut before the
//!   keyframe interval ends. When most keyframe intervals are one length
//!   (the cadence), a keyframe that comes earlier and is not on the
//!   cadence's grid is a cut; when there is no cadence at all (a long
//!   keyframe interval, every keyframe placed by the content) every
//!   keyframe after the first counts.
//!
//! Chosen on real footage (Big Buck Bunny, a 10 s bikes clip with four
//! cuts, and re-encodes of both without scene-cut I-frames, with 0, 3 and
//! 7 B-frames, H.264 and HEVC) against ffmpeg's `scene > 0.3`: a factor of
//! 3 over the median of 8 anchors each side found every cut of the bikes
//! clip in its H.264 encodes without scene-cut I-frames (with 0 or 3
//! B-frames; 2 of 4 with 7 B-frames or in HEVC), within a frame, and no
//! false candidate but one x264 itself calls a cut (scene score 0.27); a
//! factor of 2 or a 75th-percentile reference let B-pyramid patterns and
//! pans through, larger windows blurred cuts a few seconds apart. Missed
//! are cuts into a scene whose P-frames cost about as much as intra ones
//! (noise, grain, trivially flat pictures), where a forced IDR costs
//! little anyway. VP8/VP9/AV1 pack hidden reference frames (altref,
//! golden) into packets, so their sizes spike on a schedule: the probe
//! asks for size spikes only where sizes mean what they say
//! ([`sizes_are_meaningful`]).

/// One coded video frame as the demuxer delivered it (decode order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodedFrame {
    /// Index in presentation order.
    pub rank: u32,
    /// Coded size, bytes (saturated at `u32::MAX`).
    pub size: u32,
    /// A keyframe (sync point).
    pub key: bool,
}

/// A non-key anchor is a candidate when it exceeds this times the median
/// of its neighbours.
pub const SPIKE_FACTOR: f64 = 3.0;
/// Non-key anchors compared on each side.
pub const SPIKE_WINDOW: usize = 8;
/// Fewest neighbours a spike is judged against (a short clip has few).
const MIN_NEIGHBOURS: usize = 4;
/// A B-frame before a spiking anchor starts the cut when it exceeds this
/// times the 90th percentile of the B-frames before the anchor's group.
pub const B_FACTOR: f64 = 1.5;

/// Do packet sizes of this codec (caps name) track picture content? Not
/// for codecs that hide reference frames inside packets.
pub fn sizes_are_meaningful(codec: &str) -> bool {
    !matches!(codec, "video/x-vp8" | "video/x-vp9" | "video/x-av1")
}

/// Scene-change candidates as frame indexes in presentation order,
/// ascending, never frame 0. `frames` is in decode order; `spikes` turns
/// the size rule on (see [`sizes_are_meaningful`]).
pub fn scene_changes(frames: &[CodedFrame], spikes: bool) -> Vec<u64> {
    let n = frames.len();
    let mut size_at = vec![0u32; n];
    let mut anchor_at = vec![false; n];
    let mut key_at = vec![false; n];
    let mut shown_before: Option<u32> = None;
    for f in frames {
        let r = f.rank as usize;
        if r >= n {
            continue; // not a permutation: ignore the stray
        }
        size_at[r] = f.size;
        key_at[r] = f.key;
        anchor_at[r] = shown_before.is_none_or(|m| f.rank > m);
        shown_before = Some(shown_before.map_or(f.rank, |m| m.max(f.rank)));
    }
    let mut out = keyframes_off_cadence(&key_at);
    if spikes {
        out.extend(size_spikes(&size_at, &anchor_at, &key_at));
    }
    out.sort_unstable();
    out.dedup();
    out.retain(|&f| f > 0);
    out
}

fn median(xs: &mut [u32]) -> f64 {
    let mid = xs.len() / 2;
    let (_, m, _) = xs.select_nth_unstable(mid);
    *m as f64
}

fn size_spikes(size_at: &[u32], anchor_at: &[bool], key_at: &[bool]) -> Vec<u64> {
    // Non-key anchors and B-frames, presentation order.
    // u32 indexes: a 12 h 60 fps source has 2.6M frames.
    let pool: Vec<u32> = (0..size_at.len() as u32)
        .filter(|&r| anchor_at[r as usize] && !key_at[r as usize])
        .collect();
    let bees: Vec<u32> = (0..size_at.len() as u32)
        .filter(|&r| !anchor_at[r as usize])
        .collect();
    let mut out = Vec::new();
    let mut buf = Vec::with_capacity(2 * SPIKE_WINDOW);
    for (i, &r) in pool.iter().enumerate() {
        buf.clear();
        let lo = i.saturating_sub(SPIKE_WINDOW);
        let hi = (i + 1 + SPIKE_WINDOW).min(pool.len());
        buf.extend(
            pool[lo..i]
                .iter()
                .chain(&pool[i + 1..hi])
                .map(|&p| size_at[p as usize]),
        );
        let r = r as usize;
        if buf.len() < MIN_NEIGHBOURS {
            continue;
        }
        let reference = median(&mut buf).max(1.0);
        if size_at[r] as f64 <= SPIKE_FACTOR * reference {
            continue;
        }
        // The anchor shown last before this one: frames between them are
        // B-frames decoded after it, and the cut may be among them.
        let prev = (0..r).rev().find(|&p| anchor_at[p]).unwrap_or(0);
        let mut cut = r;
        if r > prev + 1 {
            let before = bees.partition_point(|&b| b as usize <= prev);
            buf.clear();
            buf.extend(
                bees[before.saturating_sub(2 * SPIKE_WINDOW)..before]
                    .iter()
                    .map(|&b| size_at[b as usize]),
            );
            if !buf.is_empty() {
                // The upper B-frames: a B-pyramid's reference B-frames are
                // always larger than the rest and are no cut.
                let at = (buf.len() - 1) * 9 / 10;
                let b_ref = (*buf.select_nth_unstable(at).1 as f64).max(1.0);
                if let Some(t) = (prev + 1..r).find(|&t| size_at[t] as f64 > B_FACTOR * b_ref) {
                    cut = t;
                }
            }
        }
        out.push(cut as u64);
    }
    out
}

/// Keyframes an encoder put at a cut: see the module docs.
fn keyframes_off_cadence(key_at: &[bool]) -> Vec<u64> {
    let keys: Vec<usize> = (0..key_at.len()).filter(|&r| key_at[r]).collect();
    let gaps: Vec<usize> = keys.windows(2).map(|w| w[1] - w[0]).collect();
    if gaps.is_empty() {
        return Vec::new();
    }
    let mut counts = std::collections::BTreeMap::<usize, usize>::new();
    for &g in &gaps {
        *counts.entry(g).or_default() += 1;
    }
    // Most frequent gap, the longer on a tie (regular GOPs are the longest).
    let (&cadence, _) = counts
        .iter()
        .max_by_key(|(g, c)| (**c, **g))
        .expect("gaps is not empty");
    let tol = (cadence / 50).max(1);
    let regular = gaps.iter().filter(|g| g.abs_diff(cadence) <= tol).count();
    if 2 * regular < gaps.len() {
        // No cadence: the encoder placed every keyframe by content.
        return keys[1..].iter().map(|&k| k as u64).collect();
    }
    keys.windows(2)
        .filter(|w| w[1] - w[0] + tol < cadence && !(w[1] - keys[0]).is_multiple_of(cadence))
        .map(|w| w[1] as u64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames with no reordering: presentation order is decode order;
    /// `keys` are the keyframes.
    fn plain(sizes: &[u32], keys: &[usize]) -> Vec<CodedFrame> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| CodedFrame {
                rank: i as u32,
                size,
                key: keys.contains(&i),
            })
            .collect()
    }

    /// An `I B B P B B P ...` stream: `anchor(r)` and `bframe(r)` give the
    /// size of the frame shown at `r`; decode order puts each anchor before
    /// the B-frames shown before it.
    fn with_bframes(
        n: usize,
        gop: usize,
        anchor: impl Fn(usize) -> u32,
        bframe: impl Fn(usize) -> u32,
    ) -> Vec<CodedFrame> {
        let frame = |r: usize, size: u32| CodedFrame {
            rank: r as u32,
            size,
            key: r.is_multiple_of(gop),
        };
        let mut out = vec![frame(0, anchor(0))];
        let mut prev = 0;
        while prev + 1 < n {
            let next = (prev + 3).min(n - 1);
            out.push(frame(next, anchor(next)));
            for b in prev + 1..next {
                out.push(frame(b, bframe(b)));
            }
            prev = next;
        }
        out
    }

    #[test]
    fn table() {
        let flat = vec![1000u32; 300];
        let mut spike = flat.clone();
        spike[137] = 9000;
        let ramp: Vec<u32> = (0..300).map(|i| 500 + i * 60).collect();
        let fade: Vec<u32> = (0..300)
            .map(|i| {
                if (100..160).contains(&i) {
                    1000 + (i - 100) * 100
                } else {
                    1000
                }
            })
            .collect();
        let alternating: Vec<u32> = (0..300)
            .map(|i| if i % 2 == 0 { 2500 } else { 1000 })
            .collect();
        let mut flash = flat.clone();
        flash[200] = 2900; // under 3x: a busy frame, not a cut
        let cases: Vec<(&str, Vec<CodedFrame>, bool, Vec<u64>)> = vec![
            ("empty", vec![], true, vec![]),
            ("one frame", plain(&[5000], &[0]), true, vec![]),
            ("flat", plain(&flat, &[0]), true, vec![]),
            ("a spike", plain(&spike, &[0]), true, vec![137]),
            (
                "a spike, sizes not trusted",
                plain(&spike, &[0]),
                false,
                vec![],
            ),
            ("slow ramp", plain(&ramp, &[0]), true, vec![]),
            ("fade in and out", plain(&fade, &[0]), true, vec![]),
            (
                "alternating big/small",
                plain(&alternating, &[0]),
                true,
                vec![],
            ),
            ("just under the factor", plain(&flash, &[0]), true, vec![]),
            (
                "B-frames: P ten times B, no cut",
                with_bframes(300, 300, |_| 10_000, |_| 1000),
                true,
                vec![],
            ),
            (
                "B-frames: cut on an anchor",
                with_bframes(
                    300,
                    300,
                    |r| if r == 150 { 90_000 } else { 10_000 },
                    |_| 1000,
                ),
                true,
                vec![150],
            ),
            (
                "B-frames: cut on the B-frame before the anchor",
                with_bframes(
                    300,
                    300,
                    |r| if r == 150 { 90_000 } else { 10_000 },
                    |r| if r == 149 { 4000 } else { 1000 },
                ),
                true,
                vec![149],
            ),
            (
                "regular GOP of 50",
                plain(&flat, &[0, 50, 100, 150, 200, 250]),
                true,
                vec![],
            ),
            (
                "all intra",
                plain(&flat, &(0..300).collect::<Vec<_>>()),
                true,
                vec![],
            ),
            (
                "GOP 48 with a scene-cut I-frame (counter restarts)",
                plain(&flat, &[0, 48, 96, 130, 178, 226, 274]),
                true,
                vec![130],
            ),
            (
                "fixed grid plus an extra I-frame",
                plain(&flat, &[0, 50, 70, 100, 150, 200, 250]),
                true,
                vec![70],
            ),
            (
                "no cadence: every keyframe is the content's",
                plain(&flat, &[0, 30, 76, 137, 187, 242]),
                true,
                vec![30, 76, 137, 187, 242],
            ),
            (
                "one GOP and a tail: nothing to compare",
                plain(&flat, &[0, 250]),
                true,
                vec![],
            ),
        ];
        for (what, frames, spikes, want) in cases {
            assert_eq!(scene_changes(&frames, spikes), want, "{what}");
        }
    }

    #[test]
    fn codecs_with_hidden_frames_are_not_sized() {
        assert!(sizes_are_meaningful("video/x-h264"));
        assert!(sizes_are_meaningful("video/x-h265"));
        assert!(!sizes_are_meaningful("video/x-vp9"));
        assert!(!sizes_are_meaningful("video/x-av1"));
    }

    #[test]
    fn a_bad_rank_is_ignored() {
        let mut f = plain(&[1000; 20], &[0]);
        f[5].rank = 999;
        assert_eq!(scene_changes(&f, true), Vec::<u64>::new());
    }
}
