//! Minimal MPEG-TS reading: the first PES timestamp of a file and the H.264
//! SPS profile/level for HLS CODECS strings. Enough for the files this crate
//! writes itself (one elementary stream per file).

use std::io::Read;
use std::path::Path;

const PACKET: usize = 188;

/// First PES presentation timestamp in `path`, 90 kHz units. For a video
/// part this is the PTS of its leading IDR (the earliest in display order),
/// for the audio part that of its first AAC frame.
pub(crate) fn first_pts(path: &Path) -> Option<u64> {
    let data = read_head(path, 1 << 20)?;
    for pkt in data.chunks_exact(PACKET) {
        if pkt[0] != 0x47 || pkt[1] & 0x40 == 0 {
            continue;
        }
        let afc = (pkt[3] >> 4) & 3;
        let mut off = 4;
        if afc & 2 != 0 {
            off += 1 + pkt[4] as usize;
        }
        if afc & 1 == 0 || off + 14 > PACKET {
            continue;
        }
        let p = &pkt[off..];
        // PES start code and an audio/video stream id.
        if p[0] != 0 || p[1] != 0 || p[2] != 1 || p[3] < 0xC0 || p[3] > 0xEF {
            continue;
        }
        if p[7] & 0x80 == 0 {
            continue;
        }
        let b = &p[9..14];
        let pts = (((b[0] as u64) >> 1) & 7) << 30
            | (b[1] as u64) << 22
            | ((b[2] as u64) >> 1) << 15
            | (b[3] as u64) << 7
            | (b[4] as u64) >> 1;
        return Some(pts);
    }
    None
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
