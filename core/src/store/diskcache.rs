//! The node's disk cache of blocks from a remote store (S3): [`CachedStore`] wraps the store and keeps what it
//! fetches (and, with write-through, what it uploads) as files under one directory, so that a block read once on
//! a node is read from local disk afterwards, across mounts and restarts of cafsd.
//!
//! Blocks are immutable and named by their content, so a cached block never goes stale: the cache needs no
//! invalidation, only a bound. A block enters only after its MD5 matched (the store checked it), is written to a
//! temporary file and renamed (a crash leaves no half block under a block's name), and is checked on every read
//! against the CRC recorded when it entered; a file that fails is deleted and the block fetched again, never
//! served. Nothing here is made durable with fsync: a file a crash damaged fails its check and is fetched again.
//!
//! The bound: at most `max_size` bytes of blocks, least recently used first out, and no fill that would leave less
//! than `min_free` free on the cache's filesystem. A fill that fails (a full disk, a directory removed while
//! mounted) is skipped, never an error for the reader: the cache can only make reads cheaper.
//!
//! Layout under the directory: `<first 2 hex digits>/<md5>+<size>`, and `.tmp/` for files being written.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Semaphore;

use super::blockfile::{self, BadFile};
use super::{Block, BlockStore, StoreError, check_range};
use crate::locator::Locator;

/// Where files are written before they are renamed into place.
const TMP_DIR: &str = ".tmp";
/// Fills written at once in the background; a fetch that finds that many under way waits for one.
const FILLS: usize = 4;

/// How a disk cache is bounded.
#[derive(Debug, Clone)]
pub struct DiskCacheOptions {
    pub dir: PathBuf,
    /// Bytes of blocks kept at most.
    pub max_size: u64,
    /// Bytes left free on the cache's filesystem: no fill goes below it.
    pub min_free: u64,
    /// Keep blocks as they are uploaded, not only as they are fetched.
    pub write_through: bool,
}

/// What a disk cache has done since it opened, and what it holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskCacheStats {
    /// Reads served from the cache.
    pub hits: u64,
    /// Reads that went to the store.
    pub misses: u64,
    /// Blocks put in.
    pub fills: u64,
    /// Blocks not put in: no room above `min_free`, or a write that failed.
    pub skipped: u64,
    /// Blocks let go to stay within `max_size`.
    pub evictions: u64,
    /// Files that failed their check and were deleted.
    pub corrupt: u64,
    /// Blocks held now, and their bytes.
    pub blocks: u64,
    pub bytes: u64,
}

/// The blocks held, by recency.
#[derive(Debug, Default)]
struct Index {
    /// Block name → (bytes, last use).
    blocks: HashMap<String, (u64, u64)>,
    /// Last use → block name: the least recently used first.
    order: BTreeMap<u64, String>,
    bytes: u64,
    clock: u64,
}

impl Index {
    fn touch(&mut self, name: &str) {
        self.clock += 1;
        let clock = self.clock;
        if let Some((_, used)) = self.blocks.get_mut(name) {
            self.order.remove(used);
            *used = clock;
            self.order.insert(clock, name.to_string());
        }
    }

    fn add(&mut self, name: String, size: u64) {
        if self.blocks.contains_key(&name) {
            return self.touch(&name);
        }
        self.clock += 1;
        self.order.insert(self.clock, name.clone());
        self.blocks.insert(name, (size, self.clock));
        self.bytes += size;
    }

    fn remove(&mut self, name: &str) {
        if let Some((size, used)) = self.blocks.remove(name) {
            self.order.remove(&used);
            self.bytes -= size;
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    fills: AtomicU64,
    skipped: AtomicU64,
    evictions: AtomicU64,
    corrupt: AtomicU64,
}

/// Blocks kept as files under one directory, within a bound. Blocking: call it off the async threads.
#[derive(Debug)]
pub struct DiskCache {
    opts: DiskCacheOptions,
    index: Mutex<Index>,
    counters: Counters,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn name_of(locator: &Locator) -> String {
    locator.stripped_string()
}

impl DiskCache {
    /// Opens (creating if needed) the cache in `opts.dir`, taking in the blocks already there, oldest use first,
    /// and evicting beyond the bound (which may have shrunk since).
    pub fn open(opts: DiskCacheOptions) -> Result<Self, StoreError> {
        let tmp = opts.dir.join(TMP_DIR);
        fs::create_dir_all(&tmp).map_err(|e| StoreError::io("create", tmp.display(), e))?;
        // Files being written when an earlier cafsd stopped: nobody finishes them.
        if let Ok(entries) = fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        let mut found = Vec::new();
        let fans = fs::read_dir(&opts.dir).map_err(|e| StoreError::io("list", opts.dir.display(), e))?;
        for fan in fans.flatten().filter(|f| f.file_name().len() == 2) {
            for file in fs::read_dir(fan.path()).into_iter().flatten().flatten() {
                let name = file.file_name().to_string_lossy().into_owned();
                let Ok(locator) = name.parse::<Locator>() else { continue };
                let Ok(meta) = file.metadata() else { continue };
                if name_of(&locator) != name || meta.len() != locator.size() {
                    let _ = fs::remove_file(file.path());
                    continue;
                }
                found.push((meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), name, meta.len()));
            }
        }
        found.sort();
        let mut index = Index::default();
        for (_, name, size) in found {
            index.add(name, size);
        }
        let cache = Self { opts, index: Mutex::new(index), counters: Counters::default() };
        cache.evict(&mut cache.lock());
        Ok(cache)
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.opts.dir.join(&name[..2]).join(name)
    }

    /// The block, if the cache holds it and it passes its check. A file that fails is deleted.
    pub fn get(&self, locator: &Locator) -> Option<Bytes> {
        let name = name_of(locator);
        let known = self.lock().blocks.contains_key(&name);
        let found = known.then(|| fs::File::open(self.path(&name)));
        let data = match found {
            Some(Ok(file)) => match blockfile::read_checked(file, locator) {
                Ok(data) => {
                    // The file's time is its last use, for the order after a restart.
                    if let Ok(f) = fs::File::options().write(true).open(self.path(&name)) {
                        let _ = f.set_modified(SystemTime::now());
                    }
                    self.lock().touch(&name);
                    Some(data)
                }
                Err(BadFile::Corrupt(reason)) => {
                    tracing::warn!(%locator, %reason, "cached block failed its check; deleted, fetching it again");
                    self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
                    self.forget(&name);
                    None
                }
                Err(BadFile::Io(e)) => {
                    tracing::warn!(%locator, error = %e, "cached block could not be read; fetching it again");
                    self.forget(&name);
                    None
                }
            },
            // Deleted behind the cache's back: the directory is the truth.
            Some(Err(_)) => {
                self.lock().remove(&name);
                None
            }
            None => None,
        };
        let counter = if data.is_some() { &self.counters.hits } else { &self.counters.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        data
    }

    fn forget(&self, name: &str) {
        let _ = fs::remove_file(self.path(name));
        self.lock().remove(name);
    }

    /// Keeps `data`, the bytes of `locator` (already checked against it), if the bound has room.
    pub fn fill(&self, locator: &Locator, data: &[u8]) {
        let name = name_of(locator);
        let size = data.len() as u64;
        if size > self.opts.max_size || self.lock().blocks.contains_key(&name) {
            return;
        }
        if let Err(e) = self.write(&name, data) {
            tracing::debug!(%locator, error = %e, "block not kept in the disk cache");
            self.counters.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.counters.fills.fetch_add(1, Ordering::Relaxed);
        let mut index = self.lock();
        index.add(name, size);
        self.evict(&mut index);
    }

    fn write(&self, name: &str, data: &[u8]) -> io::Result<()> {
        // Made again if the directory was removed while in use: the cache fills again from the next block on.
        fs::create_dir_all(self.opts.dir.join(TMP_DIR))?;
        let free = free_bytes(&self.opts.dir)?;
        if free < data.len() as u64 + self.opts.min_free {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "the cache's filesystem is at min_free"));
        }
        let path = self.path(name);
        fs::create_dir_all(path.parent().expect("cache paths have a fan-out directory"))?;
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self.opts.dir.join(TMP_DIR).join(format!("{name}.{}.{n}", std::process::id()));
        let written = blockfile::write_tmp(&tmp, data, false).and_then(|()| fs::rename(&tmp, &path));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }

    fn evict(&self, index: &mut Index) {
        while index.bytes > self.opts.max_size {
            let Some((_, name)) = index.order.pop_first() else { break };
            let (size, _) = index.blocks.remove(&name).expect("the order names held blocks");
            index.bytes -= size;
            let _ = fs::remove_file(self.path(&name));
            self.counters.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Deletes every cached block (for operators: `fsctl cache drop`). Returns how many blocks and bytes it held.
    pub fn drop_all(&self) -> (u64, u64) {
        let mut index = self.lock();
        let held = (index.blocks.len() as u64, index.bytes);
        for name in index.blocks.keys() {
            let _ = fs::remove_file(self.path(name));
        }
        *index = Index { clock: index.clock, ..Index::default() };
        held
    }

    pub fn stats(&self) -> DiskCacheStats {
        let c = &self.counters;
        let index = self.lock();
        DiskCacheStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            fills: c.fills.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            corrupt: c.corrupt.load(Ordering::Relaxed),
            blocks: index.blocks.len() as u64,
            bytes: index.bytes,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.opts.dir
    }

    pub fn options(&self) -> &DiskCacheOptions {
        &self.opts
    }
}

/// Bytes an unprivileged writer can still use on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    let s = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
    Ok(s.blocks_available() * s.fragment_size())
}

/// A remote store with the node's disk cache in front of its reads.
#[derive(Debug)]
pub struct CachedStore {
    inner: Arc<dyn BlockStore>,
    cache: Arc<DiskCache>,
    fills: Arc<Semaphore>,
}

impl CachedStore {
    pub fn new(inner: Arc<dyn BlockStore>, cache: Arc<DiskCache>) -> Self {
        Self { inner, cache, fills: Arc::new(Semaphore::new(FILLS)) }
    }

    pub fn cache(&self) -> &Arc<DiskCache> {
        &self.cache
    }

    async fn cached(&self, locator: &Locator) -> Option<Bytes> {
        let (cache, locator) = (self.cache.clone(), locator.clone());
        tokio::task::spawn_blocking(move || cache.get(&locator)).await.ok().flatten()
    }

    /// Keeps the block in the background. At most [`FILLS`] are written at once: a fetch that finds them all
    /// under way waits for one to finish, so that every block read is kept (a reader runs at the pace of the
    /// slower of the store and the cache's disk) and no more than a few blocks are held for the cache.
    async fn fill(&self, locator: &Locator, data: Bytes) {
        let Ok(permit) = self.fills.clone().acquire_owned().await else { return };
        let (cache, locator) = (self.cache.clone(), locator.clone());
        tokio::task::spawn_blocking(move || {
            cache.fill(&locator, &data);
            drop(permit);
        });
    }
}

#[async_trait]
impl BlockStore for CachedStore {
    async fn put(&self, block: &Block) -> Result<(), StoreError> {
        self.inner.put(block).await?;
        if self.cache.opts.write_through {
            self.fill(block.locator(), block.data().clone()).await;
        }
        Ok(())
    }

    async fn get(&self, locator: &Locator) -> Result<Bytes, StoreError> {
        if let Some(data) = self.cached(locator).await {
            return Ok(data);
        }
        let data = self.inner.get(locator).await?;
        self.fill(locator, data.clone()).await;
        Ok(data)
    }

    async fn get_range(&self, locator: &Locator, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        check_range(locator, offset, len)?;
        match self.cached(locator).await {
            Some(data) => Ok(data.slice(offset as usize..(offset + len) as usize)),
            None => self.inner.get_range(locator, offset, len).await,
        }
    }

    async fn sign_manifest(&self, text: &str) -> Result<String, StoreError> {
        self.inner.sign_manifest(text).await
    }

    /// Asks the store: what decides whether a block must be uploaded is the store, not this node's copy.
    async fn exists(&self, locator: &Locator) -> Result<bool, StoreError> {
        self.inner.exists(locator).await
    }
}

#[cfg(test)]
mod tests;
