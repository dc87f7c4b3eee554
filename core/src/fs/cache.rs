//! The block cache: whole blocks, verified by the store on fetch, kept in memory up to a byte budget and evicted
//! least-recently-used first. Concurrent misses on one block share a single fetch, so a burst of readers of a
//! cold file costs one store request per block. What all of a process's caches did is counted in [`totals`]
//! (for cafsd's metrics).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::OnceCell;

use crate::locator::Locator;
use crate::store::{BlockStore, StoreError};

type Key = ([u8; 16], u64);

fn key(l: &Locator) -> Key {
    (*l.md5(), l.size())
}

/// One fetch of a block, awaited by every reader that missed on it meanwhile.
type Fetch = OnceCell<Result<Bytes, Arc<StoreError>>>;

#[derive(Debug, Default)]
struct Lru {
    blocks: HashMap<Key, (Bytes, u64)>,
    bytes: u64,
    tick: u64,
    /// Fetches in progress, shared by everyone who misses on the same block meanwhile.
    fetching: HashMap<Key, Arc<Fetch>>,
}

/// Counts over every block cache of the process, only ever growing.
#[derive(Debug)]
pub struct CacheTotals {
    /// Reads of a block served from memory.
    pub hits: AtomicU64,
    /// Reads that waited for the block to be fetched (their own fetch, or one already under way).
    pub misses: AtomicU64,
    /// Blocks let go to stay within the byte budget.
    pub evicted: AtomicU64,
}

static TOTALS: CacheTotals =
    CacheTotals { hits: AtomicU64::new(0), misses: AtomicU64::new(0), evicted: AtomicU64::new(0) };

/// What the process's block caches have done so far.
pub fn totals() -> &'static CacheTotals {
    &TOTALS
}

#[derive(Debug)]
pub struct BlockCache {
    capacity: u64,
    lru: Mutex<Lru>,
}

impl BlockCache {
    pub fn new(capacity: u64) -> Self {
        Self { capacity, lru: Mutex::new(Lru::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.lru.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The block, from memory or fetched (and verified) from `store`.
    pub async fn get(&self, store: &dyn BlockStore, locator: &Locator) -> Result<Bytes, StoreError> {
        let k = key(locator);
        let cell = {
            let mut lru = self.lock();
            lru.tick += 1;
            let tick = lru.tick;
            if let Some((data, used)) = lru.blocks.get_mut(&k) {
                *used = tick;
                TOTALS.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(data.clone());
            }
            TOTALS.misses.fetch_add(1, Ordering::Relaxed);
            lru.fetching.entry(k).or_default().clone()
        };
        let result = cell.get_or_init(|| async { store.get(locator).await.map_err(Arc::new) }).await.clone();
        let mut lru = self.lock();
        lru.fetching.remove(&k);
        let data = result.map_err(|e| e.duplicate())?;
        if !lru.blocks.contains_key(&k) && data.len() as u64 <= self.capacity {
            lru.bytes += data.len() as u64;
            let tick = lru.tick;
            lru.blocks.insert(k, (data.clone(), tick));
            while lru.bytes > self.capacity {
                let Some((&old, _)) = lru.blocks.iter().min_by_key(|(_, (_, used))| *used) else { break };
                let (gone, _) = lru.blocks.remove(&old).expect("present");
                lru.bytes -= gone.len() as u64;
                TOTALS.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(data)
    }

    /// Whether the block is held or being fetched (a read of it will not start another fetch).
    pub fn has(&self, locator: &Locator) -> bool {
        let k = key(locator);
        let lru = self.lock();
        lru.blocks.contains_key(&k) || lru.fetching.contains_key(&k)
    }

    /// Bytes held.
    pub fn held(&self) -> u64 {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::store::{Block, LocalDirStore};

    #[derive(Debug)]
    struct Counting(LocalDirStore, AtomicUsize);

    #[async_trait]
    impl BlockStore for Counting {
        async fn put(&self, b: &Block) -> Result<(), StoreError> {
            self.0.put(b).await
        }
        async fn get(&self, l: &Locator) -> Result<Bytes, StoreError> {
            self.1.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            self.0.get(l).await
        }
        async fn get_range(&self, l: &Locator, o: u64, n: u64) -> Result<Bytes, StoreError> {
            self.0.get_range(l, o, n).await
        }
        async fn exists(&self, l: &Locator) -> Result<bool, StoreError> {
            self.0.exists(l).await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hits_share_fetches_and_evict_lru() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Counting(LocalDirStore::open(dir.path()).unwrap(), AtomicUsize::new(0)));
        let blocks: Vec<Block> = (0..3u8).map(|i| Block::new(vec![i; 1000]).unwrap()).collect();
        for b in &blocks {
            store.put(b).await.unwrap();
        }
        let cache = Arc::new(BlockCache::new(2500));
        // Eight concurrent misses on one block: one fetch.
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (cache, store, l) = (cache.clone(), store.clone(), blocks[0].locator().clone());
            tasks.spawn(async move { cache.get(store.as_ref(), &l).await.unwrap() });
        }
        while let Some(r) = tasks.join_next().await {
            assert_eq!(r.unwrap(), blocks[0].data());
        }
        assert_eq!(store.1.load(Ordering::SeqCst), 1);
        cache.get(store.as_ref(), blocks[1].locator()).await.unwrap();
        cache.get(store.as_ref(), blocks[0].locator()).await.unwrap(); // 0 is now the most recent
        cache.get(store.as_ref(), blocks[2].locator()).await.unwrap(); // evicts 1
        assert_eq!(store.1.load(Ordering::SeqCst), 3);
        assert!(cache.held() <= 2500);
        cache.get(store.as_ref(), blocks[0].locator()).await.unwrap();
        assert_eq!(store.1.load(Ordering::SeqCst), 3, "block 0 stayed");
        cache.get(store.as_ref(), blocks[1].locator()).await.unwrap();
        assert_eq!(store.1.load(Ordering::SeqCst), 4, "block 1 was evicted");
    }

    #[tokio::test]
    async fn failures_are_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::open(dir.path()).unwrap();
        let cache = BlockCache::new(1 << 20);
        let b = Block::new(&b"later"[..]).unwrap();
        assert!(matches!(cache.get(&store, b.locator()).await, Err(StoreError::NotFound(_))), "kind is kept");
        store.put(&b).await.unwrap();
        assert_eq!(cache.get(&store, b.locator()).await.unwrap(), &b"later"[..]);
    }
}
