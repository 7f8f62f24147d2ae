//! `s3://bucket/key` sources and outputs on S3 or an S3-compatible server.
//!
//! Connection settings come from the usual AWS environment variables
//! (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_ALLOW_HTTP`), which the
//! worker's `--s3-*` flags override; requests are path-style unless
//! `--s3-virtual-hosted`. A worker only touches the buckets it is given
//! (`--s3-bucket`, repeatable), like `--file-root` for files.
//!
//! Writes: parts are placed with a conditional put (`If-None-Match: *`):
//! the first complete copy wins and is never replaced, as with the no-replace
//! link of the file store. Outputs of the stitch are plain puts, multipart
//! above [`MULTIPART_THRESHOLD`], each with its content type.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::path::Path as StorePath;
use object_store::{
    Attribute, Attributes, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{Error, ErrorKind, Result};

/// The URL scheme.
pub const SCHEME: &str = "s3";

/// Files at least this big are uploaded in parts of this size.
pub const MULTIPART_THRESHOLD: usize = 8 << 20;

fn storage(msg: String) -> Error {
    Error::new(ErrorKind::Storage, msg)
}

/// Requests this process made to S3 through [`S3Access`] (puts, gets, heads,
/// lists; a multipart upload counts its parts), and bytes uploaded.
static REQUESTS: AtomicU64 = AtomicU64::new(0);
static BYTES_UP: AtomicU64 = AtomicU64::new(0);
static BYTES_DOWN: AtomicU64 = AtomicU64::new(0);

/// (requests, bytes uploaded, bytes downloaded) by this process so far.
pub fn request_stats() -> (u64, u64, u64) {
    (
        REQUESTS.load(Ordering::Relaxed),
        BYTES_UP.load(Ordering::Relaxed),
        BYTES_DOWN.load(Ordering::Relaxed),
    )
}

fn count(requests: u64) {
    REQUESTS.fetch_add(requests, Ordering::Relaxed);
}

/// A parsed `s3://bucket/key` URL. `key` has no leading slash; an output
/// prefix may end with one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    pub key: String,
}

impl S3Url {
    /// `None` when `url` is not an `s3://` URL.
    pub fn parse(url: &str) -> Result<Option<S3Url>> {
        let Some(rest) = url.strip_prefix("s3://") else {
            return Ok(None);
        };
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            return Err(storage(format!("{url}: not a valid S3 bucket name")));
        }
        let trimmed = key.trim_end_matches('/');
        if !trimmed.is_empty() {
            // No empty, "." or ".." segments: a key maps to one object.
            StorePath::parse(trimmed).map_err(|e| storage(format!("{url}: {e}")))?;
            if trimmed.split('/').any(|s| s == "." || s == "..") {
                return Err(storage(format!("{url}: '.' and '..' are not allowed")));
            }
        }
        Ok(Some(S3Url {
            bucket: bucket.to_string(),
            key: key.to_string(),
        }))
    }

    /// The object path of this URL.
    pub fn path(&self) -> StorePath {
        StorePath::from(self.key.trim_end_matches('/'))
    }

    /// The object path of `rel` under this URL taken as a prefix.
    pub fn join(&self, rel: &str) -> StorePath {
        let prefix = self.key.trim_end_matches('/');
        if prefix.is_empty() {
            StorePath::from(rel)
        } else {
            StorePath::from(format!("{prefix}/{rel}"))
        }
    }
}

impl std::fmt::Display for S3Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// `jetcode worker` S3 options.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct S3Args {
    /// Bucket that s3:// sources and outputs may use (repeatable or comma
    /// separated). None: s3:// URLs are refused.
    #[arg(long = "s3-bucket", env = "JETCODE_S3_BUCKETS", value_delimiter = ',')]
    pub buckets: Vec<String>,
    /// S3 endpoint, e.g. http://127.0.0.1:8333 for an S3-compatible server.
    /// Default: AWS_ENDPOINT_URL, else AWS itself.
    #[arg(long = "s3-endpoint")]
    pub endpoint: Option<String>,
    /// Region (default: AWS_REGION, else us-east-1).
    #[arg(long = "s3-region")]
    pub region: Option<String>,
    /// Allow plain http:// endpoints (as AWS_ALLOW_HTTP=true).
    #[arg(long = "s3-allow-http")]
    pub allow_http: bool,
    /// Address buckets as <bucket>.<endpoint host> instead of the default
    /// path style (<endpoint>/<bucket>) that S3-compatible servers expect.
    #[arg(long = "s3-virtual-hosted")]
    pub virtual_hosted: bool,
    /// Local scratch directory for the parts and outputs of s3:// jobs
    /// before they are uploaded. Default: a directory under the system temp dir.
    #[arg(long = "s3-scratch", env = "JETCODE_S3_SCRATCH")]
    pub scratch: Option<PathBuf>,
}

impl S3Args {
    /// Environment for a media child, so it reaches the same server as the
    /// worker (credentials are inherited from the worker's environment,
    /// never put on a command line).
    pub fn child_env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if let Some(e) = &self.endpoint {
            env.push(("AWS_ENDPOINT_URL".into(), e.clone()));
        }
        if let Some(r) = &self.region {
            env.push(("AWS_REGION".into(), r.clone()));
        }
        if self.allow_http {
            env.push(("AWS_ALLOW_HTTP".into(), "true".into()));
        }
        if self.virtual_hosted {
            env.push(("AWS_VIRTUAL_HOSTED_STYLE_REQUEST".into(), "true".into()));
        }
        env
    }
}

/// A store for `bucket` from the environment (as a media child sees it).
pub fn store_from_env(bucket: &str) -> Result<Arc<dyn ObjectStore>> {
    let s3 = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()
        .map_err(|e| storage(format!("s3://{bucket}: {e}")))?;
    Ok(Arc::new(s3))
}

/// The buckets a worker may use, and a store per bucket.
pub struct S3Access {
    args: S3Args,
    stores: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl S3Access {
    pub fn new(args: S3Args) -> Self {
        S3Access {
            args,
            stores: Mutex::new(HashMap::new()),
        }
    }

    pub fn args(&self) -> &S3Args {
        &self.args
    }

    /// Parse `url` and check its bucket is allowed; `None` if not s3://.
    pub fn check(&self, url: &str) -> Result<Option<S3Url>> {
        let Some(u) = S3Url::parse(url)? else {
            return Ok(None);
        };
        if !self.args.buckets.contains(&u.bucket) {
            return Err(storage(if self.args.buckets.is_empty() {
                format!("{url}: this worker allows no S3 bucket (--s3-bucket)")
            } else {
                format!(
                    "{url}: bucket {} is not one this worker may use ({})",
                    u.bucket,
                    self.args.buckets.join(", ")
                )
            }));
        }
        Ok(Some(u))
    }

    /// The store of an allowed bucket.
    pub fn store(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>> {
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = stores.get(bucket) {
            return Ok(s.clone());
        }
        // Every upload carries its SHA-256 (x-amz-checksum-sha256): the
        // server refuses a body damaged on the way.
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_checksum_algorithm(object_store::aws::Checksum::SHA256);
        if let Some(e) = &self.args.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some(r) = &self.args.region {
            b = b.with_region(r);
        }
        if self.args.allow_http {
            b = b.with_allow_http(true);
        }
        if self.args.virtual_hosted {
            b = b.with_virtual_hosted_style_request(true);
        }
        let s: Arc<dyn ObjectStore> = Arc::new(
            b.build()
                .map_err(|e| storage(format!("s3://{bucket}: {e}")))?,
        );
        stores.insert(bucket.to_string(), s.clone());
        Ok(s)
    }

    /// The scratch directory of `job` (created).
    pub fn scratch_dir(&self, worker: &str, job: &str) -> Result<PathBuf> {
        let root = self
            .args
            .scratch
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join(format!("jetcode-s3-{worker}")));
        let dir = root.join(job);
        std::fs::create_dir_all(&dir)
            .map_err(|e| storage(format!("scratch {}: {e}", dir.display())))?;
        Ok(dir)
    }
}

/// The content type of an output by its name.
pub fn content_type(key: &str) -> &'static str {
    match key.rsplit_once('.').map(|(_, ext)| ext) {
        Some("mp4") => "video/mp4",
        Some("m3u8") => "application/vnd.apple.mpegurl",
        Some("ts") => "video/mp2t",
        Some("json") => "application/json",
        Some("m4a") => "audio/mp4",
        Some("aac") => "audio/aac",
        _ => "application/octet-stream",
    }
}

fn attributes(key: &str) -> Attributes {
    let mut a = Attributes::new();
    a.insert(Attribute::ContentType, content_type(key).into());
    a
}

/// Upload `file` to `key` unless an object is already there: the first
/// writer wins. Returns false when an earlier copy was kept. One request.
pub async fn put_once(store: &dyn ObjectStore, key: &StorePath, file: &Path) -> Result<bool> {
    let data = tokio::fs::read(file)
        .await
        .map_err(|e| storage(format!("read {}: {e}", file.display())))?;
    let len = data.len() as u64;
    let opts = PutOptions {
        mode: PutMode::Create,
        attributes: attributes(key.as_ref()),
        ..Default::default()
    };
    count(1);
    match store.put_opts(key, PutPayload::from(data), opts).await {
        Ok(_) => {
            BYTES_UP.fetch_add(len, Ordering::Relaxed);
            Ok(true)
        }
        Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(storage(format!("put {key}: {e}"))),
    }
}

/// Upload `file` to `key`, replacing what is there: one put for a small
/// file, a multipart upload (parts of [`MULTIPART_THRESHOLD`]) for a large one.
pub async fn put_file(store: Arc<dyn ObjectStore>, key: &StorePath, file: &Path) -> Result<u64> {
    let err = |e: std::io::Error| storage(format!("upload {} to {key}: {e}", file.display()));
    let mut f = tokio::fs::File::open(file).await.map_err(err)?;
    let size = f.metadata().await.map_err(err)?.len();
    let mut w = BufWriter::with_capacity(store, key.clone(), MULTIPART_THRESHOLD)
        .with_attributes(attributes(key.as_ref()));
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).await.map_err(err)?;
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n]).await.map_err(err)?;
    }
    w.shutdown().await.map_err(err)?;
    // A put, or create + parts + complete.
    let parts = (size as usize).div_ceil(MULTIPART_THRESHOLD) as u64;
    count(if size as usize >= MULTIPART_THRESHOLD {
        parts + 2
    } else {
        1
    });
    BYTES_UP.fetch_add(size, Ordering::Relaxed);
    Ok(size)
}

/// Size and SHA-256 (hex) of an object, streamed.
pub async fn digest(store: &dyn ObjectStore, key: &StorePath) -> Result<(u64, String)> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let size = stream(store, key, |chunk| {
        hasher.update(chunk);
        Ok(())
    })
    .await?;
    Ok((size, hex::encode(hasher.finalize())))
}

/// Download an object to `dest` (temp file, then rename); its size.
pub async fn download(store: &dyn ObjectStore, key: &StorePath, dest: &Path) -> Result<u64> {
    use std::io::Write;
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(|e| storage(format!("{}: {e}", dir.display())))?;
    }
    let tmp = super::partial_path(dest, "dl");
    let mut f = std::fs::File::create(&tmp)
        .map_err(|e| storage(format!("create {}: {e}", tmp.display())))?;
    let size = stream(store, key, |chunk| {
        f.write_all(chunk)
            .map_err(|e| storage(format!("write {}: {e}", tmp.display())))
    })
    .await?;
    drop(f);
    super::commit_file(&tmp, dest)?;
    Ok(size)
}

async fn stream(
    store: &dyn ObjectStore,
    key: &StorePath,
    mut each: impl FnMut(&[u8]) -> Result<()>,
) -> Result<u64> {
    count(1);
    let got = store.get(key).await.map_err(|e| match e {
        object_store::Error::NotFound { .. } => {
            Error::new(ErrorKind::NotFound, format!("{key}: not found"))
        }
        e => storage(format!("get {key}: {e}")),
    })?;
    let mut body = got.into_stream();
    let mut size = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| storage(format!("get {key}: {e}")))?;
        size += chunk.len() as u64;
        each(&chunk)?;
    }
    BYTES_DOWN.fetch_add(size, Ordering::Relaxed);
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_buckets() {
        let u = S3Url::parse("s3://media/in/a.mp4").unwrap().unwrap();
        assert_eq!((u.bucket.as_str(), u.key.as_str()), ("media", "in/a.mp4"));
        assert_eq!(u.path().as_ref(), "in/a.mp4");
        let o = S3Url::parse("s3://media/out/j1/").unwrap().unwrap();
        assert_eq!(o.join("parts/r/0.ts").as_ref(), "out/j1/parts/r/0.ts");
        assert!(S3Url::parse("file:///a").unwrap().is_none());
        for bad in [
            "s3://a/x",
            "s3://Media/x",
            "s3://media/a/../b",
            "s3://media/a//b",
        ] {
            assert!(S3Url::parse(bad).is_err(), "{bad}");
        }
        let access = S3Access::new(S3Args {
            buckets: vec!["media".into()],
            ..Default::default()
        });
        assert!(access.check("s3://media/x.mp4").unwrap().is_some());
        let e = access.check("s3://other/x.mp4").unwrap_err();
        assert!(e.to_string().contains("not one this worker may use"), "{e}");
        let none = S3Access::new(S3Args::default());
        let e = none.check("s3://media/x.mp4").unwrap_err();
        assert!(e.to_string().contains("--s3-bucket"), "{e}");
        assert_eq!(
            content_type("hls/master.m3u8"),
            "application/vnd.apple.mpegurl"
        );
        assert_eq!(content_type("r240.mp4"), "video/mp4");
        assert_eq!(content_type("parts/r/0.ts"), "video/mp2t");
        assert_eq!(content_type("manifest.json"), "application/json");
    }
}
