//! Minimal MPEG-TS reading: PES timestamps, the places a player can start
//! reading, and the H.264 SPS profile/level for HLS CODECS strings. Enough
//! for the files this crate writes itself (one elementary stream per file).

use std::io::Read;
use std::path::Path;

const PACKET: usize = 188;

/// PTS of the PES starting in `pkt`, if a PES with a PTS starts there.
fn pes_pts(pkt: &[u8]) -> Option<u64> {
    if pkt.len() < PACKET || pkt[0] != 0x47 || pkt[1] & 0x40 == 0 {
        return None;
    }
    let afc = (pkt[3] >> 4) & 3;
    let mut off = 4;
    if afc & 2 != 0 {
        off += 1 + pkt[4] as usize;
    }
    if afc & 1 == 0 || off + 14 > PACKET {
        return None;
    }
    let p = &pkt[off..];
    // PES start code and an audio/video stream id.
    if p[0] != 0 || p[1] != 0 || p[2] != 1 || p[3] < 0xC0 || p[3] > 0xEF {
        return None;
    }
    if p[7] & 0x80 == 0 {
        return None;
    }
    let b = &p[9..14];
    Some(
        (((b[0] as u64) >> 1) & 7) << 30
            | (b[1] as u64) << 22
            | ((b[2] as u64) >> 1) << 15
            | (b[3] as u64) << 7
            | (b[4] as u64) >> 1,
    )
}

/// A place a player can start reading a TS file: a PAT packet (so PAT and
/// PMT come first), and the PTS of the first PES after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryPoint {
    pub offset: u64,
    pub pts: u64,
}

/// Every entry point of `path`, in file order. mpegtsmux repeats PAT/PMT
/// every 100 ms, so entry points are at most that far apart.
pub(crate) fn entry_points(path: &Path) -> std::io::Result<Vec<EntryPoint>> {
    let mut r = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let mut pkt = [0u8; PACKET];
    let mut points = Vec::new();
    let mut pending: Option<u64> = None;
    let mut offset = 0u64;
    loop {
        match r.read_exact(&mut pkt) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        let pid = ((pkt[1] as u16 & 0x1f) << 8) | pkt[2] as u16;
        if pid == 0 && pkt[1] & 0x40 != 0 && pending.is_none() {
            pending = Some(offset);
        } else if let (Some(at), Some(pts)) = (pending, pes_pts(&pkt)) {
            points.push(EntryPoint { offset: at, pts });
            pending = None;
        }
        offset += PACKET as u64;
    }
    Ok(points)
}

/// One HLS media segment as a byte range of a file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ByteRange {
    pub offset: u64,
    pub length: u64,
    pub seconds: f64,
}

/// Cut a file of `size` bytes with `points` into byte ranges that start as
/// close after each `cut` (PTS, 90 kHz) as an entry point allows and tile
/// the file. `end_pts` is where the stream's last frame ends. Pure.
pub(crate) fn byte_ranges(
    points: &[EntryPoint],
    cuts: &[u64],
    end_pts: u64,
    size: u64,
) -> Vec<ByteRange> {
    let Some(first) = points.first() else {
        return Vec::new();
    };
    let mut starts = vec![EntryPoint {
        offset: 0,
        pts: first.pts,
    }];
    for &cut in cuts {
        let last = starts[starts.len() - 1];
        if cut <= last.pts {
            continue;
        }
        if let Some(p) = points
            .iter()
            .find(|p| p.pts >= cut && p.offset > last.offset && p.pts > last.pts)
        {
            starts.push(*p);
        }
    }
    starts
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (next_off, next_pts) = starts
                .get(i + 1)
                .map_or((size, end_pts.max(s.pts)), |n| (n.offset, n.pts));
            ByteRange {
                offset: s.offset,
                length: next_off - s.offset,
                seconds: (next_pts - s.pts) as f64 / 90_000.0,
            }
        })
        .collect()
}

/// First PES presentation timestamp in `path`, 90 kHz units. For a video
/// part this is the PTS of its leading IDR (the earliest in display order),
/// for the audio part that of its first AAC frame.
pub(crate) fn first_pts(path: &Path) -> Option<u64> {
    let data = read_head(path, 1 << 20)?;
    data.chunks_exact(PACKET).find_map(pes_pts)
}

/// 90 kHz ticks to nanoseconds.
pub(crate) fn ticks_to_ns(t: u64) -> u64 {
    (t as u128 * 1_000_000_000 / 90_000) as u64
}

/// `avc1.PPCCLL` from the first SPS in `path`, if one is found.
pub(crate) fn avc_codec_string(path: &Path) -> Option<String> {
    let data = read_head(path, 1 << 18)?;
    data.windows(7)
        .find(|w| w[0] == 0 && w[1] == 0 && w[2] == 1 && w[3] & 0x1f == 7)
        .map(|w| format!("avc1.{:02x}{:02x}{:02x}", w[4], w[5], w[6]))
}

fn read_head(path: &Path, max: u64) -> Option<Vec<u8>> {
    let f = std::fs::File::open(path).ok()?;
    let mut data = Vec::new();
    f.take(max).read_to_end(&mut data).ok()?;
    Some(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(offset: u64, pts: u64) -> EntryPoint {
        EntryPoint { offset, pts }
    }

    #[test]
    fn byte_ranges_table() {
        // Entry points every 9000 ticks (100 ms), 1880 bytes apart.
        let points: Vec<_> = (0..40).map(|i| ep(i * 1880, 1000 + i * 9000)).collect();
        let size = 40 * 1880;
        let end = 1000 + 40 * 9000;
        struct Case {
            cuts: Vec<u64>,
            want: Vec<(u64, u64, f64)>,
        }
        let cases = [
            // No cuts: one range over the whole file.
            Case {
                cuts: vec![],
                want: vec![(0, size, 4.0)],
            },
            // Cuts on entry points.
            Case {
                cuts: vec![1000 + 10 * 9000, 1000 + 30 * 9000],
                want: vec![(0, 18800, 1.0), (18800, 37600, 2.0), (56400, 18800, 1.0)],
            },
            // A cut between entry points moves to the next one.
            Case {
                cuts: vec![1000 + 10 * 9000 + 1],
                want: vec![(0, 20680, 1.1), (20680, size - 20680, 2.9)],
            },
            // Cuts past the end or not increasing are dropped.
            Case {
                cuts: vec![1000 + 20 * 9000, 1000 + 5 * 9000, 1000 + 99 * 9000],
                want: vec![(0, 37600, 2.0), (37600, 37600, 2.0)],
            },
        ];
        for c in cases {
            let got: Vec<_> = byte_ranges(&points, &c.cuts, end, size)
                .iter()
                .map(|r| (r.offset, r.length, (r.seconds * 1e6).round() / 1e6))
                .collect();
            assert_eq!(got, c.want, "cuts {:?}", c.cuts);
            let total: u64 = got.iter().map(|r| r.1).sum();
            assert_eq!(total, size, "ranges tile the file");
        }
        assert!(byte_ranges(&[], &[5], 10, 100).is_empty());
    }
}
