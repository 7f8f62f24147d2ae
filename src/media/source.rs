//! Sources read through `appsrc` over object_store with a block cache.
//!
//! Demuxers read in small, scattered requests (an MP4 with the moov at the
//! end, a seek to a segment's keyframe); without a cache each becomes a
//! store round trip. Reads here are served from fixed-size blocks, fetched
//! once and kept in a small LRU, so a segment costs a handful of ranged
//! GETs whatever the demuxer does.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use gstreamer as gst;
use gstreamer_app as gst_app;
use object_store::{local::LocalFileSystem, path::Path as StorePath, ObjectStore, ObjectStoreExt};

use super::MediaError;

/// Bytes per cached block.
pub const BLOCK_SIZE: u64 = 1 << 20;
/// Blocks kept per source.
pub const CACHE_BLOCKS: usize = 32;

/// Random-access reads of one object, served from cached blocks.
pub struct BlockCache {
    store: Arc<dyn ObjectStore>,
    path: StorePath,
    size: u64,
    blocks: Mutex<VecDeque<(u64, Bytes)>>,
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
        let meta = futures::executor::block_on(store.head(&path)).map_err(|e| match e {
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
            fetches: AtomicU64::new(0),
        })
    }

    pub fn size(&self) -> u64 {
        self.size
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
        let data = futures::executor::block_on(self.store.get_range(&self.path, start..end))
            .map_err(|e| MediaError::transient(format!("read {}: {e}", self.path)))?;
        if blocks.len() == CACHE_BLOCKS {
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

/// An `appsrc` in random-access mode serving `cache`; use it where a
/// `filesrc` would go.
pub fn app_source(cache: Arc<BlockCache>) -> Result<gst::Element, MediaError> {
    let position = Arc::new(Mutex::new(0u64));
    let read_pos = position.clone();
    let reader = cache.clone();
    let callbacks = gst_app::AppSrcCallbacks::builder()
        .need_data(move |src, len| {
            let mut pos = read_pos.lock().unwrap_or_else(|p| p.into_inner());
            // Ask for at least 64 KiB: demuxers hint tiny sizes.
            let want = (len as usize).max(64 * 1024);
            match reader.read_at(*pos, want) {
                Ok(data) if data.is_empty() => {
                    let _ = src.end_of_stream();
                }
                Ok(data) => {
                    let n = data.len() as u64;
                    let mut buf = gst::Buffer::from_slice(data);
                    if let Some(b) = buf.get_mut() {
                        b.set_offset(*pos);
                        b.set_offset_end(*pos + n);
                    }
                    *pos += n;
                    let _ = src.push_buffer(buf);
                }
                Err(e) => {
                    gst::element_error!(src, gst::ResourceError::Read, ["{}", e.message]);
                }
            }
        })
        .seek_data(move |_src, offset| {
            *position.lock().unwrap_or_else(|p| p.into_inner()) = offset;
            true
        })
        .build();
    let src = gst_app::AppSrc::builder()
        .name("source")
        .stream_type(gst_app::AppStreamType::RandomAccess)
        .format(gst::Format::Bytes)
        .size(cache.size() as i64)
        .max_bytes(4 * 1024 * 1024)
        .callbacks(callbacks)
        .build();
    Ok(src.upcast())
}

use gstreamer::prelude::*;

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
        match BlockCache::open_local(&dir.path().join("missing")) {
            Err(e) => assert!(e.permanent, "{e}"),
            Ok(_) => panic!("missing source opened"),
        }
    }
}
