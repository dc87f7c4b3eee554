use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use super::*;
use crate::store::LocalDirStore;
use crate::store::faulty::FaultyStore;

struct Env {
    dir: tempfile::TempDir,
    /// The remote store; it counts the reads that reach it.
    remote: Arc<FaultyStore<LocalDirStore>>,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let remote = Arc::new(FaultyStore::new(LocalDirStore::open(dir.path().join("remote")).unwrap()));
        Self { dir, remote }
    }

    fn opts(&self, max_size: u64) -> DiskCacheOptions {
        DiskCacheOptions { dir: self.dir.path().join("cache"), max_size, min_free: 0, write_through: false }
    }

    fn cached(&self, opts: DiskCacheOptions) -> CachedStore {
        CachedStore::new(self.remote.clone(), Arc::new(DiskCache::open(opts).unwrap()))
    }

    fn remote_reads(&self) -> usize {
        self.remote.gets.load(Ordering::SeqCst)
    }
}

fn block(i: u32) -> Block {
    Block::new(format!("block {i} ").repeat(100).into_bytes()).unwrap()
}

/// Fills run in the background: waits until `n` have landed.
async fn filled(s: &CachedStore, n: u64) {
    let t = Instant::now();
    while s.cache().stats().fills < n {
        assert!(t.elapsed() < Duration::from_secs(10), "fills: {:?}", s.cache().stats());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_read_once_is_read_from_disk_after_and_after_a_reopen() {
    let e = Env::new();
    let b = block(1);
    e.remote.put(&b).await.unwrap();
    let s = e.cached(e.opts(1 << 20));
    assert_eq!(s.get(b.locator()).await.unwrap(), b.data());
    filled(&s, 1).await;
    assert_eq!(e.remote_reads(), 1);
    assert_eq!(s.get(b.locator()).await.unwrap(), b.data());
    assert_eq!(s.get_range(b.locator(), 6, 3).await.unwrap(), &b.data()[6..9]);
    assert_eq!(e.remote_reads(), 1, "both reads came from the cache");
    let st = s.cache().stats();
    assert_eq!((st.hits, st.misses, st.blocks, st.bytes), (2, 1, 1, b.data().len() as u64));
    drop(s);

    let s = e.cached(e.opts(1 << 20));
    assert_eq!(s.cache().stats().blocks, 1, "the blocks already there are taken in");
    assert_eq!(s.get(b.locator()).await.unwrap(), b.data());
    assert_eq!(e.remote_reads(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_cache_file_is_deleted_and_the_block_fetched_again() {
    let e = Env::new();
    let s = e.cached(e.opts(1 << 20));
    let (b, c) = (block(1), block(2));
    for x in [&b, &c] {
        e.remote.put(x).await.unwrap();
        s.get(x.locator()).await.unwrap();
    }
    filled(&s, 2).await;
    // One flipped byte (its CRC left as it was), one truncated file.
    let path = |l: &Locator| s.cache().path(&name_of(l));
    let mut bytes = fs::read(path(b.locator())).unwrap();
    bytes[10] ^= 1;
    fs::OpenOptions::new().write(true).open(path(b.locator())).unwrap().write_all_at(&bytes, 0).unwrap();
    fs::OpenOptions::new().write(true).open(path(c.locator())).unwrap().set_len(5).unwrap();
    for x in [&b, &c] {
        assert_eq!(s.get(x.locator()).await.unwrap(), x.data(), "the good bytes, from the store");
    }
    assert_eq!(e.remote_reads(), 4);
    assert_eq!(s.cache().stats().corrupt, 2);
    filled(&s, 4).await;
    assert_eq!(s.get(b.locator()).await.unwrap(), b.data());
    assert_eq!(e.remote_reads(), 4, "kept again once fetched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bound_holds_and_the_least_recently_used_go_first() {
    let e = Env::new();
    let size = block(0).data().len() as u64;
    let s = e.cached(e.opts(3 * size));
    let blocks: Vec<Block> = (0..8).map(block).collect();
    for (i, b) in blocks.iter().enumerate() {
        e.remote.put(b).await.unwrap();
        s.get(b.locator()).await.unwrap();
        filled(&s, i as u64 + 1).await;
        // Block 0 is read again before each new one: it stays.
        s.get(blocks[0].locator()).await.unwrap();
    }
    let st = s.cache().stats();
    assert_eq!((st.blocks, st.bytes, st.evictions), (3, 3 * size, 5));
    let on_disk = fs::read_dir(s.cache().dir()).unwrap().flatten().filter(|f| f.file_name().len() == 2);
    let files: usize = on_disk.map(|fan| fs::read_dir(fan.path()).unwrap().count()).sum();
    assert_eq!(files, 3, "evicted blocks leave the disk");
    let reads = e.remote_reads();
    for b in [&blocks[0], &blocks[6], &blocks[7]] {
        s.get(b.locator()).await.unwrap();
    }
    assert_eq!(e.remote_reads(), reads, "the three most recently used are held");

    // Reopened with a smaller bound, the cache sheds down to it, oldest use first.
    drop(s);
    let s = e.cached(e.opts(size));
    assert_eq!(s.cache().stats().blocks, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_room_or_a_failing_disk_only_means_uncached_reads() {
    let e = Env::new();
    let b = block(1);
    e.remote.put(&b).await.unwrap();
    let s = e.cached(DiskCacheOptions { min_free: u64::MAX / 2, ..e.opts(1 << 20) });
    for _ in 0..2 {
        assert_eq!(s.get(b.locator()).await.unwrap(), b.data());
    }
    let t = Instant::now();
    while s.cache().stats().skipped < 2 {
        assert!(t.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(s.cache().stats().blocks, 0);

    // The cache's directory removed while in use: reads go on, and the cache fills again.
    let s = e.cached(e.opts(1 << 20));
    s.get(b.locator()).await.unwrap();
    filled(&s, 1).await;
    fs::remove_dir_all(s.cache().dir()).unwrap();
    let reads = e.remote_reads();
    assert_eq!(s.get(b.locator()).await.unwrap(), b.data());
    assert_eq!(e.remote_reads(), reads + 1, "fetched again");
    filled(&s, 2).await;
    assert_eq!(s.get(b.locator()).await.unwrap(), b.data());
    assert_eq!(e.remote_reads(), reads + 1, "kept again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_keeps_uploads_and_drop_all_empties_the_cache() {
    let e = Env::new();
    let s = e.cached(DiskCacheOptions { write_through: true, ..e.opts(1 << 20) });
    let b = block(1);
    s.put(&b).await.unwrap();
    assert!(e.remote.exists(b.locator()).await.unwrap(), "the upload reached the store");
    filled(&s, 1).await;
    assert_eq!(s.get(b.locator()).await.unwrap(), b.data());
    assert_eq!(e.remote_reads(), 0);
    assert_eq!(s.cache().drop_all(), (1, b.data().len() as u64));
    assert_eq!(s.cache().stats().blocks, 0);
    assert_eq!(s.get(b.locator()).await.unwrap(), b.data());
    assert_eq!(e.remote_reads(), 1);
}
