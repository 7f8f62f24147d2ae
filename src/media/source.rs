//! Sources read through a pull-mode element over object_store with a block
//! cache.
//!
//! Demuxers read in small, scattered requests (an MP4 with the moov at the
//! end, a seek to a segment's keyframe); without a cache each becomes a
//! store round trip. Reads here are served from fixed-size blocks, fetched
//! once and kept in a small LRU, so a segment costs a handful of ranged
//! GETs whatever the demuxer does.

use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer::subclass::prelude::ObjectSubclassIsExt;
use object_store::{local::LocalFileSystem, path::Path as StorePath, ObjectStore, ObjectStoreExt};

use super::MediaError;

/// Bytes per cached block.
pub const BLOCK_SIZE: u64 = 1 << 20;
/// Blocks kept per source, at least.
pub const CACHE_BLOCKS: usize = 32;
/// Blocks kept per source at most, however large one read is.
pub const MAX_CACHE_BLOCKS: usize = 256;

/// Requests (one HEAD per opened source, then ranged GETs) and bytes
/// fetched by every cache in this process. A media
/// child runs one task, so these are that task's read costs; the child
/// reports them in its summary.
static PROCESS_GETS: AtomicU64 = AtomicU64::new(0);
static PROCESS_BYTES: AtomicU64 = AtomicU64::new(0);
static PROCESS_REFETCHES: AtomicU64 = AtomicU64::new(0);

/// Blocks this process fetched again after the cache had dropped them.
/// A demuxer reads an MP4's index (moov) once in one large request; the
/// cache grows to hold the largest request, so this stays 0 unless a
/// source's working set is larger than [`MAX_CACHE_BLOCKS`].
pub fn process_refetches() -> u64 {
    PROCESS_REFETCHES.load(Ordering::Relaxed)
}

/// (ranged GETs, bytes fetched) by this process so far.
pub fn process_read_stats() -> (u64, u64) {
    (
        PROCESS_GETS.load(Ordering::Relaxed),
        PROCESS_BYTES.load(Ordering::Relaxed),
    )
}

/// The runtime store requests run on. Media children have no async
/// runtime, and the S3 client needs a Tokio one; reads come from GStreamer's
/// streaming threads, which wait here for each block.
static IO_RUNTIME: LazyLock<Option<tokio::runtime::Runtime>> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("store-io")
        .enable_all()
        .build()
        .ok()
});

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    match IO_RUNTIME.as_ref() {
        Some(rt) => rt.block_on(f),
        None => futures::executor::block_on(f),
    }
}

/// Random-access reads of one object, served from cached blocks.
pub struct BlockCache {
    store: Arc<dyn ObjectStore>,
    path: StorePath,
    size: u64,
    blocks: Mutex<VecDeque<(u64, Bytes)>>,
    /// Blocks kept: [`CACHE_BLOCKS`], grown by [`BlockCache::fit_read`].
    capacity: AtomicUsize,
    /// Every block fetched so far, to count refetches.
    fetched: Mutex<HashSet<u64>>,
    fetches: AtomicU64,
}

impl BlockCache {
    /// A local file read through object_store's filesystem backend.
    pub fn open_local(path: &Path) -> Result<Self, MediaError> {
        let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new());
        let p = StorePath::from_absolute_path(path)
            .map_err(|e| MediaError::permanent(format!("source {}: {e}", path.display())))?;
        Self::open(store, p)
    }

    /// Any object in any store.
    pub fn open(store: Arc<dyn ObjectStore>, path: StorePath) -> Result<Self, MediaError> {
        PROCESS_GETS.fetch_add(1, Ordering::Relaxed); // the HEAD
        let meta = block_on(store.head(&path)).map_err(|e| match e {
            object_store::Error::NotFound { .. } => {
                MediaError::permanent(format!("source {path} not found"))
            }
            e => MediaError::transient(format!("source {path}: {e}")),
        })?;
        Ok(BlockCache {
            store,
            path,
            size: meta.size,
            blocks: Mutex::new(VecDeque::with_capacity(CACHE_BLOCKS)),
            capacity: AtomicUsize::new(CACHE_BLOCKS),
            fetched: Mutex::new(HashSet::new()),
            fetches: AtomicU64::new(0),
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Blocks the cache keeps now.
    pub fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Relaxed)
    }

    /// Make room for a read of `len` bytes and the reads around it: a
    /// demuxer reading a large index in one request (an MP4's moov at the
    /// end) must find all of it cached if it looks again, and the media
    /// reads that follow must not evict it. The cache is sized by the
    /// largest read the demuxer makes, up to [`MAX_CACHE_BLOCKS`].
    pub fn fit_read(&self, len: u64) {
        let want = (len.div_ceil(BLOCK_SIZE) as usize + CACHE_BLOCKS).min(MAX_CACHE_BLOCKS);
        self.capacity.fetch_max(want, Ordering::Relaxed);
    }

    /// Ranged GETs issued so far.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    fn block(&self, index: u64) -> Result<Bytes, MediaError> {
        let mut blocks = self.blocks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pos) = blocks.iter().position(|(i, _)| *i == index) {
            let hit = blocks.remove(pos).unwrap_or((index, Bytes::new()));
            let data = hit.1.clone();
            blocks.push_front(hit);
            return Ok(data);
        }
        let start = index * BLOCK_SIZE;
        let end = (start + BLOCK_SIZE).min(self.size);
        self.fetches.fetch_add(1, Ordering::Relaxed);
        if !self
            .fetched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(index)
        {
            PROCESS_REFETCHES.fetch_add(1, Ordering::Relaxed);
        }
        let data = block_on(self.store.get_range(&self.path, start..end))
            .map_err(|e| MediaError::transient(format!("read {}: {e}", self.path)))?;
        PROCESS_GETS.fetch_add(1, Ordering::Relaxed);
        PROCESS_BYTES.fetch_add(data.len() as u64, Ordering::Relaxed);
        while blocks.len() >= self.capacity() {
            blocks.pop_back();
        }
        blocks.push_front((index, data.clone()));
        Ok(data)
    }

    /// Up to `len` bytes at `offset`, never crossing a block; empty at EOF.
    pub fn read_at(&self, offset: u64, len: usize) -> Result<Bytes, MediaError> {
        if offset >= self.size || len == 0 {
            return Ok(Bytes::new());
        }
        let index = offset / BLOCK_SIZE;
        let block = self.block(index)?;
        let within = (offset - index * BLOCK_SIZE) as usize;
        let end = (within + len).min(block.len());
        Ok(block.slice(within.min(end)..end))
    }
}

/// The element a pipeline reads a job's source through: the same checks as
/// for a plain file (one-line permanent errors), then a [`CachedSrc`] over a
/// block cache of the object.
///
/// `path` may be an `s3://bucket/key` URL (a work order names an S3 source
/// so): the object is read with ranged GETs through the same cache, from the
/// server the environment names (the worker passes its settings on).
pub(crate) fn source_element(path: &Path) -> Result<gst::Element, MediaError> {
    let cache = match s3_url(path)? {
        Some(u) => {
            let store = crate::store::s3::store_from_env(&u.bucket)
                .map_err(|e| MediaError::permanent(e.to_string()))?;
            BlockCache::open(store, u.path())?
        }
        None => {
            super::util::check_readable_file(path)?;
            BlockCache::open_local(path)?
        }
    };
    if cache.size() == 0 {
        return Err(MediaError::permanent(format!(
            "{} is empty",
            path.display()
        )));
    }
    Ok(CachedSrc::new(Arc::new(cache)).upcast())
}

/// The S3 object a work order's input names, if it is an `s3://` URL.
fn s3_url(path: &Path) -> Result<Option<crate::store::s3::S3Url>, MediaError> {
    match path.to_str() {
        Some(p) if p.starts_with("s3://") => {
            crate::store::s3::S3Url::parse(p).map_err(|e| MediaError::permanent(e.to_string()))
        }
        _ => Ok(None),
    }
}

/// Size of a work order's input (a file or an `s3://` object); 0 if unknown.
/// For timeouts only.
pub(crate) fn source_size(path: &Path) -> u64 {
    match s3_url(path) {
        Ok(Some(u)) => crate::store::s3::store_from_env(&u.bucket)
            .ok()
            .and_then(|s| block_on(s.head(&u.path())).ok())
            .map_or(0, |m| m.size),
        _ => std::fs::metadata(path).map_or(0, |m| m.len()),
    }
}

gst::glib::wrapper! {
    /// A byte source over a [`BlockCache`] that works in pull mode.
    ///
    /// Why not `appsrc`: appsrc only pushes. Demuxers in push mode turn a
    /// seek into an upstream byte seek and lose accuracy at the edges (we
    /// measured segments one frame long or short, and a 75-frame segment of
    /// an MP4 with moov at the end came out with 43). A `BaseSrc` that is
    /// seekable in bytes lets the demuxer pull at any offset, exactly as
    /// with `filesrc`, so seeks stay frame-exact.
    pub struct CachedSrc(ObjectSubclass<imp::CachedSrc>)
        @extends gstreamer_base::BaseSrc, gst::Element, gst::Object;
}

impl CachedSrc {
    pub fn new(cache: Arc<BlockCache>) -> Self {
        let src: CachedSrc = gst::glib::Object::builder()
            .property("name", "source")
            .build();
        *src.imp().cache.lock().unwrap_or_else(|p| p.into_inner()) = Some(cache);
        src
    }
}

mod imp {
    use std::sync::{Arc, LazyLock, Mutex};

    use gstreamer as gst;
    use gstreamer::glib;
    use gstreamer::subclass::prelude::*;
    use gstreamer_base::prelude::*;
    use gstreamer_base::subclass::prelude::*;

    use super::BlockCache;

    #[derive(Default)]
    pub struct CachedSrc {
        pub(super) cache: Mutex<Option<Arc<BlockCache>>>,
    }

    impl CachedSrc {
        fn cache(&self) -> Option<Arc<BlockCache>> {
            self.cache.lock().unwrap_or_else(|p| p.into_inner()).clone()
        }
    }

    #[glib::object_subclass]
    impl ObjectSubclass for CachedSrc {
        const NAME: &'static str = "JetcodeCachedSrc";
        type Type = super::CachedSrc;
        type ParentType = gstreamer_base::BaseSrc;
    }

    impl ObjectImpl for CachedSrc {
        fn constructed(&self) {
            self.parent_constructed();
            self.obj().set_format(gst::Format::Bytes);
        }
    }

    impl GstObjectImpl for CachedSrc {}

    impl ElementImpl for CachedSrc {
        fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
            static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
                gst::subclass::ElementMetadata::new(
                    "jetcode cached source",
                    "Source/File",
                    "Random-access reads of an object_store object through a block cache",
                    "jetcode",
                )
            });
            Some(&*META)
        }

        fn pad_templates() -> &'static [gst::PadTemplate] {
            static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &gst::Caps::new_any(),
                )
                .map(|t| vec![t])
                .unwrap_or_default()
            });
            TEMPLATES.as_ref()
        }
    }

    impl BaseSrcImpl for CachedSrc {
        fn start(&self) -> Result<(), gst::ErrorMessage> {
            match self.cache() {
                Some(_) => Ok(()),
                None => Err(gst::error_msg!(
                    gst::ResourceError::NotFound,
                    ["no source object set"]
                )),
            }
        }

        fn is_seekable(&self) -> bool {
            true
        }

        fn size(&self) -> Option<u64> {
            self.cache().map(|c| c.size())
        }

        fn fill(
            &self,
            offset: u64,
            length: u32,
            buffer: &mut gst::BufferRef,
        ) -> Result<gst::FlowSuccess, gst::FlowError> {
            let cache = self.cache().ok_or(gst::FlowError::Error)?;
            if offset >= cache.size() {
                return Err(gst::FlowError::Eos);
            }
            cache.fit_read(u64::from(length));
            let mut filled = 0usize;
            {
                let mut map = buffer.map_writable().map_err(|_| gst::FlowError::Error)?;
                let want = (length as usize).min(map.len());
                while filled < want {
                    let chunk = match cache.read_at(offset + filled as u64, want - filled) {
                        Ok(c) => c,
                        Err(e) => {
                            gst::element_imp_error!(
                                self,
                                gst::ResourceError::Read,
                                ["{}", e.message]
                            );
                            return Err(gst::FlowError::Error);
                        }
                    };
                    if chunk.is_empty() {
                        break;
                    }
                    map[filled..filled + chunk.len()].copy_from_slice(&chunk);
                    filled += chunk.len();
                }
            }
            buffer.set_size(filled);
            buffer.set_offset(offset);
            buffer.set_offset_end(offset + filled as u64);
            Ok(gst::FlowSuccess::Ok)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cross_blocks_and_hit_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let data: Vec<u8> = (0..(BLOCK_SIZE * 2 + 1234))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let cache = BlockCache::open_local(&path).unwrap();
        assert_eq!(cache.size(), data.len() as u64);
        let mut pos = BLOCK_SIZE - 10;
        let mut got = Vec::new();
        while got.len() < 5000 {
            let b = cache.read_at(pos, 5000 - got.len()).unwrap();
            assert!(!b.is_empty());
            pos += b.len() as u64;
            got.extend_from_slice(&b);
        }
        assert_eq!(
            &got[..],
            &data[(BLOCK_SIZE - 10) as usize..(BLOCK_SIZE - 10) as usize + 5000]
        );
        assert_eq!(cache.fetches(), 2);
        // Small scattered reads within cached blocks cost nothing more.
        for off in [0u64, 17, BLOCK_SIZE + 5, 900_000] {
            cache.read_at(off, 100).unwrap();
        }
        assert_eq!(cache.fetches(), 2);
        assert!(cache.read_at(data.len() as u64, 10).unwrap().is_empty());
        let tail = cache.read_at(data.len() as u64 - 4, 100).unwrap();
        assert_eq!(tail.len(), 4);
        // One large read grows the cache to hold it (and no more than the cap).
        assert_eq!(cache.capacity(), CACHE_BLOCKS);
        cache.fit_read(40 * BLOCK_SIZE + 1);
        assert_eq!(cache.capacity(), 41 + CACHE_BLOCKS);
        cache.fit_read(10 * BLOCK_SIZE);
        assert_eq!(cache.capacity(), 41 + CACHE_BLOCKS, "never shrinks");
        cache.fit_read(u64::MAX / 2);
        assert_eq!(cache.capacity(), MAX_CACHE_BLOCKS);
        assert_eq!(process_refetches(), 0);

        // A large index read in one request (an MP4's moov of 40 blocks at
        // the end), then nearly a default cache's worth of media blocks,
        // then the index again: sized by that read, the cache still has
        // all of it (a default-sized one would fetch it again).
        let big = dir.path().join("big");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(BLOCK_SIZE * 80).unwrap();
        let cache = BlockCache::open_local(&big).unwrap();
        let moov = 40 * BLOCK_SIZE;
        cache.fit_read(40 * BLOCK_SIZE);
        let mut at = moov;
        while at < 80 * BLOCK_SIZE {
            at += cache.read_at(at, 1 << 20).unwrap().len() as u64;
        }
        for i in 0..(CACHE_BLOCKS as u64 - 1) {
            cache.read_at(i * BLOCK_SIZE, 100).unwrap();
        }
        let fetched = cache.fetches();
        for i in 40..80 {
            cache.read_at(i * BLOCK_SIZE, 100).unwrap();
        }
        assert_eq!(cache.fetches(), fetched, "the index was fetched twice");
        assert_eq!(process_refetches(), 0);
        match BlockCache::open_local(&dir.path().join("missing")) {
            Err(e) => assert!(e.permanent, "{e}"),
            Ok(_) => panic!("missing source opened"),
        }
    }
}
