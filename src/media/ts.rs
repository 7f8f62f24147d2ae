//! Minimal MPEG-TS reading: PES timestamps, the places a player can start
//! reading, the access units and keyframes of a video part, the H.264/H.265
//! SPS (profile and level for HLS CODECS strings, the coded picture size)
//! and the ADTS header of the audio. Enough for the files this crate writes
//! itself (one elementary stream per file, PAT/PMT in single packets).

use std::io::Read;
use std::path::Path;

const PACKET: usize = 188;
/// PTS and DTS are 33-bit counters.
const PTS_MASK: u64 = (1 << 33) - 1;

/// Header fields and payload of one TS packet.
struct Packet<'a> {
    pid: u16,
    /// payload_unit_start_indicator: a PES or a section starts here.
    start: bool,
    payload: &'a [u8],
}

fn packet(pkt: &[u8]) -> Option<Packet<'_>> {
    if pkt.len() < PACKET || pkt[0] != 0x47 {
        return None;
    }
    let afc = (pkt[3] >> 4) & 3;
    let mut off = 4;
    if afc & 2 != 0 {
        off += 1 + pkt[4] as usize;
    }
    let payload = if afc & 1 != 0 && off < PACKET {
        &pkt[off..PACKET]
    } else {
        &[]
    };
    Some(Packet {
        pid: ((pkt[1] as u16 & 0x1f) << 8) | pkt[2] as u16,
        start: pkt[1] & 0x40 != 0,
        payload,
    })
}

/// A PES header at the start of `p`: stream id, PTS, and where the
/// elementary stream data begins.
fn pes_header(p: &[u8]) -> Option<(u8, Option<u64>, usize)> {
    if p.len() < 9 || p[0] != 0 || p[1] != 0 || p[2] != 1 {
        return None;
    }
    let pts = (p[7] & 0x80 != 0 && p.len() >= 14).then(|| timestamp(&p[9..14]));
    Some((p[3], pts, (9 + p[8] as usize).min(p.len())))
}

/// A 33-bit PES timestamp from its 5 marker-interleaved bytes.
fn timestamp(b: &[u8]) -> u64 {
    (((b[0] as u64) >> 1) & 7) << 30
        | (b[1] as u64) << 22
        | ((b[2] as u64) >> 1) << 15
        | (b[3] as u64) << 7
        | (b[4] as u64) >> 1
}

fn is_av_stream(id: u8) -> bool {
    (0xC0..=0xEF).contains(&id)
}

fn is_video_stream(id: u8) -> bool {
    (0xE0..=0xEF).contains(&id)
}

/// PTS of the PES starting in `pkt`, if a PES with a PTS starts there.
fn pes_pts(pkt: &[u8]) -> Option<u64> {
    let p = packet(pkt)?;
    if !p.start {
        return None;
    }
    let (id, pts, _) = pes_header(p.payload)?;
    if is_av_stream(id) {
        pts
    } else {
        None
    }
}

/// `b - a` on the 33-bit PTS clock.
pub(crate) fn pts_diff(a: u64, b: u64) -> u64 {
    b.wrapping_sub(a) & PTS_MASK
}

/// The PSI section starting in the payload of a unit-start packet
/// (pointer field skipped, CRC included).
fn section(payload: &[u8]) -> Option<&[u8]> {
    let ptr = *payload.first()? as usize;
    let s = payload.get(1 + ptr..)?;
    if s.len() < 3 {
        return None;
    }
    let len = (((s[1] & 0x0f) as usize) << 8) | s[2] as usize;
    s.get(..3 + len)
}

/// PID of the first program's PMT in a PAT section.
fn pat_pmt_pid(s: &[u8]) -> Option<u16> {
    if s.first() != Some(&0) || s.len() < 12 {
        return None;
    }
    let end = s.len() - 4;
    (8..).step_by(4).take_while(|i| i + 4 <= end).find_map(|i| {
        let e = s.get(i..i + 4)?;
        let program = u16::from_be_bytes([e[0], e[1]]);
        (program != 0).then_some(((e[2] as u16 & 0x1f) << 8) | e[3] as u16)
    })
}

/// One elementary stream of a PMT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EsInfo {
    pub pid: u16,
    pub stream_type: u8,
    /// From an ISO 639 language descriptor (mpegtsmux writes one from the
    /// stream's language tag).
    pub language: Option<String>,
}

/// Elementary streams of a PMT section.
fn pmt_streams(s: &[u8]) -> Vec<EsInfo> {
    let mut out = Vec::new();
    if s.first() != Some(&2) || s.len() < 16 {
        return out;
    }
    let end = s.len() - 4;
    let info_len = (((s[10] & 0x0f) as usize) << 8) | s[11] as usize;
    let mut i = 12 + info_len;
    while i + 5 <= end {
        let pid = ((s[i + 1] as u16 & 0x1f) << 8) | s[i + 2] as u16;
        let es_len = (((s[i + 3] & 0x0f) as usize) << 8) | s[i + 4] as usize;
        let desc = s.get(i + 5..(i + 5 + es_len).min(end)).unwrap_or(&[]);
        let mut language = None;
        let mut d = 0;
        while d + 2 <= desc.len() {
            let (tag, len) = (desc[d], desc[d + 1] as usize);
            if let Some(v) = desc.get(d + 2..d + 2 + len) {
                if tag == 0x0A && len >= 3 && v[..3].iter().all(u8::is_ascii_alphabetic) {
                    language = Some(String::from_utf8_lossy(&v[..3]).to_ascii_lowercase());
                }
            }
            d += 2 + len;
        }
        out.push(EsInfo {
            pid,
            stream_type: s[i],
            language,
        });
        i += 5 + es_len;
    }
    out
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
    let mut points = Vec::new();
    let mut pending: Option<u64> = None;
    for_each_packet(path, &mut |_| {}, &mut |offset, pkt| {
        let pid = ((pkt[1] as u16 & 0x1f) << 8) | pkt[2] as u16;
        if pid == 0 && pkt[1] & 0x40 != 0 && pending.is_none() {
            pending = Some(offset);
        } else if let (Some(at), Some(pts)) = (pending, pes_pts(pkt)) {
            points.push(EntryPoint { offset: at, pts });
            pending = None;
        }
    })?;
    Ok(points)
}

/// Read `path` once: every chunk read goes to `bytes` (to hash it), every
/// whole packet to `each` with its offset. Returns the file size.
fn for_each_packet(
    path: &Path,
    bytes: &mut dyn FnMut(&[u8]),
    each: &mut dyn FnMut(u64, &[u8]),
) -> std::io::Result<u64> {
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut filled, mut offset) = (0usize, 0u64);
    loop {
        let n = match f.read(&mut buf[filled..]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        bytes(&buf[filled..filled + n]);
        filled += n;
        let whole = filled / PACKET * PACKET;
        for pkt in buf[..whole].chunks_exact(PACKET) {
            each(offset, pkt);
            offset += PACKET as u64;
        }
        buf.copy_within(whole..filled, 0);
        filled -= whole;
    }
    Ok(offset + filled as u64)
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
            // Saturating: `points` from a damaged file need not fit `size`.
            ByteRange {
                offset: s.offset,
                length: next_off.saturating_sub(s.offset),
                seconds: next_pts.saturating_sub(s.pts) as f64 / 90_000.0,
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

/// PTS minus DTS of a PES header with PTS `pts` (0 without a DTS).
fn decode_lead(h: &[u8], pts: u64) -> u64 {
    // PTS_DTS_flags == 0b11: a DTS follows the PTS.
    if h.len() < 19 || h[7] & 0xC0 != 0xC0 {
        return 0;
    }
    pts_diff(timestamp(&h[14..19]), pts)
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

/// Video codecs of the parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VideoCodec {
    H264,
    H265,
}

impl VideoCodec {
    fn of_stream_type(t: u8) -> Option<Self> {
        match t {
            0x1B => Some(VideoCodec::H264),
            0x24 => Some(VideoCodec::H265),
            _ => None,
        }
    }
}

/// A keyframe (IDR) of a video part, as a player would cut it out to
/// decode it alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyFrame {
    pub pts: u64,
    /// Offset of the PAT packet of a PAT and PMT repeated after the
    /// previous frame began and before this one: from there the keyframe
    /// can be read on its own. None when the tables lie further back
    /// (mpegtsmux repeats them every 100 ms, not at every keyframe).
    pub tables: Option<u64>,
    /// First packet of the keyframe's PES.
    pub offset: u64,
    /// End of the last packet of its PES.
    pub end: u64,
}

/// What a video part holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct VideoScan {
    /// From the PMT; None when it names no H.264/H.265 stream.
    pub codec: Option<VideoCodec>,
    /// Access units (mpegtsmux writes one per PES): the part's frames.
    pub frames: u64,
    /// The first access unit in the file is a keyframe.
    pub starts_with_keyframe: bool,
    /// PTS of the first access unit in the file.
    pub first_pts: Option<u64>,
    /// How long the first frame is presented after it is decoded (PTS
    /// minus DTS, 90 kHz ticks): the reorder delay of B-frames. Players
    /// that put time zero at the first decode time see nothing until then.
    pub first_decode_lead: u64,
    pub keyframes: Vec<KeyFrame>,
    /// Picture size from the first SPS (cropping applied).
    pub size: Option<(u32, u32)>,
    pub bytes: u64,
}

/// The access unit being read.
struct Unit {
    pts: Option<u64>,
    tables: Option<u64>,
    offset: u64,
    end: u64,
    /// Its elementary stream bytes until its first slice was seen.
    es: Vec<u8>,
    key: Option<bool>,
}

/// Bytes of an access unit looked at to find its first slice (SEI before
/// it is well under this).
const UNIT_HEAD_MAX: usize = 256 << 10;

/// Read a video part once: count its access units, find its keyframes
/// and their surrounding tables, read the first SPS. Every chunk read goes
/// to `bytes` (to hash the file in the same pass).
pub(crate) fn scan_video(path: &Path, bytes: &mut dyn FnMut(&[u8])) -> std::io::Result<VideoScan> {
    let mut scan = VideoScan::default();
    let (mut pmt_pid, mut video_pid) = (None, None);
    // PAT offset, and whether the PMT followed, since the last video PES began.
    let (mut pat_at, mut pmt_seen) = (None::<u64>, false);
    let mut unit: Option<Unit> = None;
    let finish = |u: Unit, scan: &mut VideoScan| {
        let key = u.key.unwrap_or(false);
        if scan.frames == 0 {
            scan.starts_with_keyframe = key;
            scan.first_pts = u.pts;
        }
        scan.frames += 1;
        if let (true, Some(pts)) = (key, u.pts) {
            scan.keyframes.push(KeyFrame {
                pts,
                tables: u.tables,
                offset: u.offset,
                end: u.end,
            });
        }
    };
    scan.bytes = for_each_packet(path, bytes, &mut |offset, pkt| {
        let Some(p) = packet(pkt) else { return };
        if p.pid == 0 {
            if p.start {
                pmt_pid = section(p.payload).and_then(pat_pmt_pid).or(pmt_pid);
                if pat_at.is_none() {
                    pat_at = Some(offset);
                }
            }
            return;
        }
        if Some(p.pid) == pmt_pid {
            if p.start {
                if scan.codec.is_none() {
                    let streams = section(p.payload).map(pmt_streams).unwrap_or_default();
                    scan.codec = streams
                        .iter()
                        .find_map(|s| VideoCodec::of_stream_type(s.stream_type));
                }
                pmt_seen |= pat_at.is_some();
            }
            return;
        }
        let es = if p.start {
            match pes_header(p.payload) {
                Some((id, pts, at))
                    if is_video_stream(id) && video_pid.is_none_or(|v| v == p.pid) =>
                {
                    video_pid = Some(p.pid);
                    if let Some(u) = unit.take() {
                        finish(u, &mut scan);
                    } else if let Some(pts) = pts {
                        scan.first_decode_lead = decode_lead(p.payload, pts);
                    }
                    unit = Some(Unit {
                        pts,
                        tables: if pmt_seen { pat_at } else { None },
                        offset,
                        end: offset + PACKET as u64,
                        es: Vec::new(),
                        key: None,
                    });
                    (pat_at, pmt_seen) = (None, false);
                    &p.payload[at..]
                }
                _ => return,
            }
        } else if Some(p.pid) == video_pid {
            p.payload
        } else {
            return;
        };
        let Some(u) = unit.as_mut() else { return };
        u.end = offset + PACKET as u64;
        if u.key.is_none() {
            u.es.extend_from_slice(es);
            let (key, sps) = first_slice(&u.es, scan.codec, scan.size.is_none());
            if scan.size.is_none() {
                scan.size = sps;
            }
            u.key = key.or((u.es.len() > UNIT_HEAD_MAX).then_some(false));
            if u.key.is_some() {
                u.es = Vec::new();
            }
        }
    })?;
    if let Some(u) = unit.take() {
        finish(u, &mut scan);
    }
    Ok(scan)
}

/// NAL units in an Annex B byte stream: (header offset, end) pairs; the
/// last one's end is None when no start code follows it yet.
fn nal_units(es: &[u8]) -> Vec<(usize, Option<usize>)> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= es.len() {
        if es[i] == 0 && es[i + 1] == 0 && es[i + 2] == 1 {
            starts.push((i, i + 3));
            i += 3;
        } else {
            i += 1;
        }
    }
    starts
        .iter()
        .enumerate()
        .map(|(k, &(_, header))| {
            let end = starts.get(k + 1).map(|&(sc, _)| {
                // A four-byte start code's leading zero is not payload.
                if sc > header && es[sc - 1] == 0 {
                    sc - 1
                } else {
                    sc
                }
            });
            (header, end)
        })
        .collect()
}

/// Look at the start of an access unit: Some(is an IDR) once its first
/// slice is in `es`, and the picture size from an SPS before it (when
/// `want_sps` and the SPS is complete).
fn first_slice(
    es: &[u8],
    codec: Option<VideoCodec>,
    want_sps: bool,
) -> (Option<bool>, Option<(u32, u32)>) {
    let codec = codec.unwrap_or(VideoCodec::H264);
    let mut size = None;
    for (at, end) in nal_units(es) {
        let Some(&h) = es.get(at) else { break };
        match codec {
            VideoCodec::H264 => {
                let t = h & 0x1f;
                if (1..=5).contains(&t) {
                    return (Some(t == 5), size);
                }
                if t == 7 && want_sps && size.is_none() {
                    size = end.and_then(|e| h264_sps_size(&rbsp(&es[at + 1..e])));
                }
            }
            VideoCodec::H265 => {
                let t = (h >> 1) & 0x3f;
                if t <= 31 {
                    // IDR_W_RADL, IDR_N_LP, CRA and BLA pictures.
                    return (Some((16..=21).contains(&t)), size);
                }
                if t == 33 && want_sps && size.is_none() {
                    size = end
                        .and_then(|e| es.get(at + 2..e))
                        .and_then(|b| h265_sps_size(&rbsp(b)));
                }
            }
        }
    }
    (None, size)
}

/// NAL payload with emulation prevention bytes (00 00 03) removed.
fn rbsp(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// Exp-Golomb bit reader.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn bit(&mut self) -> Option<u32> {
        let b = self.data.get(self.pos / 8)?;
        let v = (b >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(v as u32)
    }
    fn bits(&mut self, n: u32) -> Option<u32> {
        (0..n).try_fold(0u32, |acc, _| Some(acc << 1 | self.bit()?))
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.pos += n;
        (self.pos <= self.data.len() * 8).then_some(())
    }
    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        Some(((1u64 << zeros) - 1 + self.bits(zeros)? as u64) as u32)
    }
    fn se(&mut self) -> Option<i32> {
        let k = self.ue()? as i64;
        Some(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) } as i32)
    }
}

/// Coded picture size (cropping applied) of an H.264 SPS, RBSP after the
/// NAL header byte.
fn h264_sps_size(sps: &[u8]) -> Option<(u32, u32)> {
    let mut b = Bits { data: sps, pos: 0 };
    let profile = b.bits(8)?;
    b.skip(16)?; // constraint flags, level
    b.ue()?; // seq_parameter_set_id
    let mut chroma = 1;
    if matches!(
        profile,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma = b.ue()?;
        if chroma == 3 {
            b.bit()?; // separate_colour_plane_flag
        }
        b.ue()?; // bit_depth_luma_minus8
        b.ue()?; // bit_depth_chroma_minus8
        b.bit()?; // qpprime_y_zero_transform_bypass_flag
        if b.bit()? == 1 {
            for i in 0..if chroma == 3 { 12 } else { 8 } {
                if b.bit()? == 1 {
                    let n = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i32, 8i32);
                    for _ in 0..n {
                        if next != 0 {
                            next = (last + b.se()? + 256) % 256;
                        }
                        if next != 0 {
                            last = next;
                        }
                    }
                }
            }
        }
    }
    b.ue()?; // log2_max_frame_num_minus4
    match b.ue()? {
        0 => {
            b.ue()?;
        }
        1 => {
            b.bit()?;
            b.se()?;
            b.se()?;
            for _ in 0..b.ue()? {
                b.se()?;
            }
        }
        _ => {}
    }
    b.ue()?; // max_num_ref_frames
    b.bit()?; // gaps_in_frame_num_value_allowed_flag
              // Checked: a corrupt SPS must give "unknown", not an overflow.
    let w_mbs = b.ue()?.checked_add(1)?;
    let h_units = b.ue()?.checked_add(1)?;
    let frame_mbs_only = b.bit()?;
    if frame_mbs_only == 0 {
        b.bit()?;
    }
    b.bit()?; // direct_8x8_inference_flag
    let fields = 2 - frame_mbs_only;
    let (mut w, mut h) = (
        w_mbs.checked_mul(16)?,
        fields.checked_mul(h_units)?.checked_mul(16)?,
    );
    if b.bit()? == 1 {
        let (l, r, t, bo) = (b.ue()?, b.ue()?, b.ue()?, b.ue()?);
        let (sub_w, sub_h) = match chroma {
            0 => (1, 1),
            1 => (2, 2),
            2 => (2, 1),
            _ => (1, 1),
        };
        w = w.checked_sub(l.checked_add(r)?.checked_mul(sub_w)?)?;
        h = h.checked_sub(t.checked_add(bo)?.checked_mul(sub_h)?.checked_mul(fields)?)?;
    }
    Some((w, h))
}

/// Picture size (conformance window applied) of an H.265 SPS, RBSP after
/// the two-byte NAL header.
fn h265_sps_size(sps: &[u8]) -> Option<(u32, u32)> {
    let mut b = Bits { data: sps, pos: 0 };
    b.skip(4)?; // sps_video_parameter_set_id
    let sub_layers = b.bits(3)? as usize;
    b.skip(1)?; // temporal_id_nesting
                // profile_tier_level: general profile (88 bits) and level (8 bits).
    b.skip(96)?;
    let mut present = Vec::with_capacity(sub_layers);
    for _ in 0..sub_layers {
        present.push((b.bit()?, b.bit()?));
    }
    if sub_layers > 0 {
        b.skip(2 * (8 - sub_layers))?;
    }
    for (profile, level) in present {
        b.skip(88 * profile as usize + 8 * level as usize)?;
    }
    b.ue()?; // sps_seq_parameter_set_id
    let chroma = b.ue()?;
    if chroma == 3 {
        b.bit()?;
    }
    let (mut w, mut h) = (b.ue()?, b.ue()?);
    if b.bit()? == 1 {
        let (l, r, t, bo) = (b.ue()?, b.ue()?, b.ue()?, b.ue()?);
        let (sub_w, sub_h) = match chroma {
            1 => (2, 2),
            2 => (2, 1),
            _ => (1, 1),
        };
        w = w.checked_sub(l.checked_add(r)?.checked_mul(sub_w)?)?;
        h = h.checked_sub(t.checked_add(bo)?.checked_mul(sub_h)?)?;
    }
    Some((w, h))
}

/// The AAC of the audio part, from its PMT and first ADTS header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AudioInfo {
    /// ADTS channel_configuration (0: defined in-band, unknown here).
    pub channels: u32,
    /// MPEG-4 audio object type (2: AAC-LC), for `mp4a.40.<type>`.
    pub object_type: u32,
    pub rate: u32,
    /// ISO 639-2 code from the PMT, if the source named one.
    pub language: Option<String>,
}

/// Read the head of an AAC-in-TS file for its ADTS parameters.
pub(crate) fn audio_info(path: &Path) -> Option<AudioInfo> {
    let data = read_head(path, 1 << 20)?;
    let (mut pmt_pid, mut language) = (None, None);
    for pkt in data.chunks_exact(PACKET) {
        let Some(p) = packet(pkt) else { continue };
        if !p.start {
            continue;
        }
        if p.pid == 0 {
            pmt_pid = section(p.payload).and_then(pat_pmt_pid).or(pmt_pid);
        } else if Some(p.pid) == pmt_pid {
            let streams = section(p.payload).map(pmt_streams).unwrap_or_default();
            language = streams.iter().find_map(|s| s.language.clone()).or(language);
        } else if let Some((id, _, at)) = pes_header(p.payload) {
            if !(0xC0..=0xDF).contains(&id) {
                continue;
            }
            let a = &p.payload[at..];
            if a.len() < 7 || a[0] != 0xFF || a[1] & 0xF6 != 0xF0 {
                return None;
            }
            const RATES: [u32; 13] = [
                96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000,
                7350,
            ];
            return Some(AudioInfo {
                channels: ((a[2] as u32 & 1) << 2) | (a[3] as u32 >> 6),
                object_type: (a[2] as u32 >> 6) + 1,
                rate: RATES
                    .get(((a[2] >> 2) & 0x0f) as usize)
                    .copied()
                    .unwrap_or(0),
                language,
            });
        }
    }
    None
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

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn sps_sizes() {
        // x264 1920x1080 (1088 coded, cropped) and x265 426x240 (conformance
        // window), both as h264parse/h265parse wrote them into a TS.
        let avc = unhex("6742c028da01e0089f97016a02020280000003008000001e478c1950");
        assert_eq!(h264_sps_size(&rbsp(&avc[1..])), Some((1920, 1080)));
        let hevc = unhex("42010101600000030090000003000003003fa00d880f1c9e595952930bffc00040005a830303020000030002000003003c10");
        assert_eq!(h265_sps_size(&rbsp(&hevc[2..])), Some((426, 240)));
        assert_eq!(h264_sps_size(&[0x42]), None, "truncated");
    }

    #[test]
    fn first_slice_finds_idr_across_nals() {
        let sps = "6742c028da01e0089f97016a02020280000003008000001e478c1950";
        // AUD, SPS, PPS, IDR slice.
        let es = unhex(&format!(
            "0000000109f000000001{sps}0000000168ce3c80000001658884"
        ));
        assert_eq!(
            first_slice(&es, Some(VideoCodec::H264), true),
            (Some(true), Some((1920, 1080)))
        );
        // A non-IDR slice; and a unit whose slice has not arrived yet.
        let p = unhex("00000001419a");
        assert_eq!(
            first_slice(&p, Some(VideoCodec::H264), false),
            (Some(false), None)
        );
        assert_eq!(
            first_slice(&es[..44], Some(VideoCodec::H264), true),
            (None, Some((1920, 1080)))
        );
        // HEVC IDR_W_RADL (type 19) and TRAIL_R (type 1).
        assert_eq!(
            first_slice(&unhex("000001260180"), Some(VideoCodec::H265), false).0,
            Some(true)
        );
        assert_eq!(
            first_slice(&unhex("000001020180"), Some(VideoCodec::H265), false).0,
            Some(false)
        );
    }

    #[test]
    fn rbsp_drops_emulation_prevention() {
        assert_eq!(
            rbsp(&[0, 0, 3, 1, 0, 0, 3, 0, 3]),
            vec![0, 0, 1, 0, 0, 0, 3]
        );
    }
}

/// Property tests: every reader here takes bytes from files on disk, so
/// none may panic on any input. `just fuzz` runs them longer.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// A 188-byte packet that looks enough like TS to get past the sync
    /// byte and the PID checks: PAT, a PMT-ish PID, video and audio PIDs,
    /// payloads that start like a PES or a PSI section about half the time.
    fn ts_packet() -> impl Strategy<Value = Vec<u8>> {
        (
            prop_oneof![Just(0u16), Just(0x20), Just(0x41), Just(0x44), 0u16..0x2000],
            any::<bool>(),
            any::<u8>(),
            0u8..4,
            proptest::collection::vec(any::<u8>(), 184),
        )
            .prop_map(|(pid, start, cc, head, mut payload)| {
                match head {
                    0 => payload[..4].copy_from_slice(&[0, 0, 1, 0xE0]),
                    1 => payload[..4].copy_from_slice(&[0, 0, 1, 0xC0]),
                    2 => payload[..3].copy_from_slice(&[0, 0x02, 0xB0]),
                    _ => {}
                }
                let mut p = vec![
                    0x47,
                    (u8::from(start) << 6) | (pid >> 8) as u8,
                    pid as u8,
                    cc,
                ];
                p.extend(payload);
                p
            })
    }

    fn ts_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..2048),
            proptest::collection::vec(ts_packet(), 0..48).prop_map(|ps| ps.concat()),
            // Whole packets with a torn tail.
            (proptest::collection::vec(ts_packet(), 1..16), 0usize..188).prop_map(|(ps, cut)| {
                let mut b = ps.concat();
                b.truncate(b.len() - cut);
                b
            }),
        ]
    }

    /// Annex B-ish: NAL start codes among random bytes.
    fn es_bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..64),
                any::<u8>().prop_map(|h| vec![0, 0, 1, h]),
                any::<u8>().prop_map(|h| vec![0, 0, 0, 1, h]),
                Just(vec![0, 0, 3]),
            ],
            0..24,
        )
        .prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn byte_parsers_never_panic(b in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = packet(&b);
            let _ = pes_header(&b);
            let _ = pes_pts(&b);
            if b.len() >= 5 {
                let _ = timestamp(&b[..5]);
            }
            let _ = decode_lead(&b, 0);
            if let Some(s) = section(&b) {
                let _ = pat_pmt_pid(s);
                let _ = pmt_streams(s);
            }
            let _ = pat_pmt_pid(&b);
            let _ = pmt_streams(&b);
            let _ = h264_sps_size(&b);
            let _ = h265_sps_size(&b);
            let _ = rbsp(&b);
        }

        #[test]
        fn nal_scanning_never_panics(es in es_bytes(), sps in any::<bool>()) {
            for (at, end) in nal_units(&es) {
                prop_assert!(at <= es.len());
                if let Some(e) = end {
                    prop_assert!(at <= e && e <= es.len(), "{at}..{e} of {}", es.len());
                }
            }
            for codec in [None, Some(VideoCodec::H264), Some(VideoCodec::H265)] {
                let _ = first_slice(&es, codec, sps);
            }
        }

        #[test]
        fn file_readers_never_panic(data in ts_bytes(), cuts in proptest::collection::vec(any::<u64>(), 0..6), end in any::<u64>()) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("part.ts");
            std::fs::write(&path, &data).unwrap();
            let mut hashed = 0usize;
            let scan = scan_video(&path, &mut |b| hashed += b.len()).unwrap();
            prop_assert_eq!(hashed, data.len());
            prop_assert_eq!(scan.bytes, data.len() as u64);
            let _ = audio_info(&path);
            let _ = first_pts(&path);
            let _ = avc_codec_string(&path);
            let points = entry_points(&path).unwrap();
            let mut cuts = cuts;
            cuts.sort_unstable();
            let ranges = byte_ranges(&points, &cuts, end, data.len() as u64);
            // The ranges tile the file.
            let mut at = 0;
            for r in &ranges {
                prop_assert_eq!(r.offset, at);
                at += r.length;
            }
            prop_assert!(ranges.is_empty() || at == data.len() as u64);
        }

        #[test]
        fn byte_ranges_never_panic_on_any_points(
            points in proptest::collection::vec((any::<u64>(), any::<u64>()), 0..12),
            cuts in proptest::collection::vec(any::<u64>(), 0..6),
            end in any::<u64>(),
            size in any::<u64>(),
        ) {
            let points: Vec<_> = points.into_iter().map(|(offset, pts)| EntryPoint { offset, pts }).collect();
            let _ = byte_ranges(&points, &cuts, end, size);
        }
    }
}
