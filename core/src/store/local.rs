//! The local-directory block store: the embedded default, one file per block.
//!
//! Layout under the root: `<first 3 hex digits>/<md5>+<size>` (4096 fan-out directories, made and fsynced
//! once when the store opens, keep any one directory small), `.tmp/` for blocks being written (same filesystem,
//! so the final rename is atomic), and `.corrupt/` where blocks that fail verification are moved aside. A put writes a temporary file, fsyncs it, renames it
//! into place and fsyncs the directory, so a block file is either absent or complete, and concurrent puts of the
//! same block (from tasks or processes) simply race to rename identical bytes. A put that finds the block already
//! there fsyncs it before answering, so `Ok` always means durable, even when another writer's fsync has not
//! finished or failed. Every read is verified; a block that fails is moved to `.corrupt/`, so it no longer counts
//! as stored and the next put writes it again. (`exists` checks the size only — hashing every block it is asked
//! about would cost a full read.)
//!
//! Every block file carries the CRC-32 of its bytes, and reads are checked against it (see `blockfile`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Semaphore;

use super::blockfile::{self, BadFile};
use super::{Block, BlockStore, StoreError, check_range};
use crate::locator::Locator;

#[derive(Debug, Clone)]
pub struct LocalDirStoreOptions {
    /// How many blocking file operations may run at once.
    pub max_concurrency: usize,
    /// Temporary files older than this, left by a crashed writer, are removed when the store opens.
    pub stale_tmp_age: Duration,
}

impl Default for LocalDirStoreOptions {
    fn default() -> Self {
        Self { max_concurrency: 8, stale_tmp_age: Duration::from_secs(3600) }
    }
}

#[derive(Debug, Clone)]
pub struct LocalDirStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    limit: Semaphore,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Where blocks are written before they are renamed into place.
const TMP_DIR: &str = ".tmp";
/// Where blocks that failed verification are kept for inspection.
const CORRUPT_DIR: &str = ".corrupt";
/// Present once every fan-out directory has been made durable.
const LAYOUT_MARKER: &str = ".layout-v1";

impl LocalDirStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        Self::open_with(root, LocalDirStoreOptions::default())
    }

    pub fn open_with(root: impl Into<PathBuf>, opts: LocalDirStoreOptions) -> Result<Self, StoreError> {
        let root = root.into();
        let created = !root.exists();
        for dir in [root.clone(), root.join(TMP_DIR), root.join(CORRUPT_DIR)] {
            fs::create_dir_all(&dir).map_err(|e| StoreError::io("create", dir.display(), e))?;
        }
        // The fan-out directories are made once per store (about a second on a disk here), then a marker says so.
        let marker = root.join(LAYOUT_MARKER);
        if !marker.exists() {
            for i in 0..4096u32 {
                let fan = root.join(format!("{i:03x}"));
                match fs::create_dir(&fan) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(StoreError::io("create", fan.display(), e)),
                }
            }
            // The directories (and a new root) are durable before the marker is, and the marker before any block.
            sync_dir(&root).map_err(|e| StoreError::io("fsync", root.display(), e))?;
            if created && let Some(parent) = root.parent() {
                sync_dir(parent).map_err(|e| StoreError::io("fsync", parent.display(), e))?;
            }
            let written = fs::File::create(&marker).and_then(|f| f.sync_all()).and_then(|()| sync_dir(&root));
            written.map_err(|e| StoreError::io("write", marker.display(), e))?;
        }
        remove_stale_tmp(&root.join(TMP_DIR), opts.stale_tmp_age);
        let limit = Semaphore::new(opts.max_concurrency.max(1));
        Ok(Self { inner: Arc::new(Inner { root, limit }) })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Where the block `locator` is (or would be) stored.
    pub fn block_path(&self, locator: &Locator) -> PathBuf {
        self.inner.block_path(locator)
    }

    /// Runs blocking file work on the blocking pool, at most `max_concurrency` at a time.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let _permit = self.inner.limit.acquire().await.map_err(|_| StoreError::Unavailable("store closed".into()))?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Unavailable(format!("blocking task failed: {e}")))?
    }
}

impl Inner {
    fn block_path(&self, locator: &Locator) -> PathBuf {
        let name = locator.stripped_string();
        self.root.join(&name[..3]).join(name)
    }

    fn stored_size(&self, locator: &Locator) -> Result<Option<u64>, StoreError> {
        match fs::metadata(self.block_path(locator)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("stat", locator, e)),
        }
    }

    fn put(&self, block: &Block) -> Result<(), StoreError> {
        let loc = block.locator();
        let final_path = self.block_path(loc);
        let fan_dir = final_path.parent().expect("block paths have a fan-out directory");
        if self.stored_size(loc)? == Some(loc.size()) {
            // Already there, perhaps just renamed by a writer whose fsyncs have not finished (or failed): make it
            // durable before saying so.
            let synced = fs::File::open(&final_path).and_then(|f| f.sync_all()).and_then(|()| sync_dir(fan_dir));
            return synced.map_err(|e| StoreError::io("fsync", loc, e));
        }
        let tmp = self.root.join(TMP_DIR).join(format!(
            "{}.{}.{}",
            loc.stripped_string(),
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            blockfile::write_tmp(&tmp, block.data(), true)?;
            fs::rename(&tmp, &final_path)?;
            sync_dir(fan_dir)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::io("write", loc, e));
        }
        Ok(())
    }

    fn get(&self, locator: &Locator) -> Result<Bytes, StoreError> {
        let file = match fs::File::open(self.block_path(locator)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(locator.clone()));
            }
            Err(e) => return Err(StoreError::io("open", locator, e)),
        };
        match blockfile::read_checked(file, locator) {
            Ok(data) => Ok(data),
            Err(BadFile::Io(e)) => Err(StoreError::io("read", locator, e)),
            Err(BadFile::Corrupt(reason)) => {
                self.quarantine(locator);
                Err(StoreError::Corrupt { locator: locator.clone(), reason })
            }
        }
    }

    /// Moves a block that failed verification out of the way, so that it no longer counts as stored and the next
    /// put writes it again; the bad copy stays in `.corrupt/` for inspection.
    fn quarantine(&self, locator: &Locator) {
        let to = self.root.join(CORRUPT_DIR).join(format!(
            "{}.{}.{}",
            locator.stripped_string(),
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        match fs::rename(self.block_path(locator), &to) {
            Ok(()) => tracing::warn!(%locator, to = %to.display(), "block failed verification; moved aside"),
            Err(e) => tracing::error!(%locator, error = %e, "block failed verification and could not be moved aside"),
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

fn remove_stale_tmp(tmp: &Path, age: Duration) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let old =
            entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| now.duration_since(t).unwrap_or_default() > age);
        if old {
            tracing::info!(path = %entry.path().display(), "removing stale temporary block file");
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[async_trait]
impl BlockStore for LocalDirStore {
    async fn put(&self, block: &Block) -> Result<(), StoreError> {
        let block = block.clone();
        self.run(move |inner| inner.put(&block)).await
    }

    async fn get(&self, locator: &Locator) -> Result<Bytes, StoreError> {
        let locator = locator.clone();
        self.run(move |inner| inner.get(&locator)).await
    }

    async fn get_range(&self, locator: &Locator, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        check_range(locator, offset, len)?;
        // Reading the whole block is what lets a local read be verified; the block cache above asks for whole
        // blocks anyway.
        let data = self.get(locator).await?;
        Ok(data.slice(offset as usize..(offset + len) as usize))
    }

    async fn exists(&self, locator: &Locator) -> Result<bool, StoreError> {
        let locator = locator.clone();
        self.run(move |inner| Ok(inner.stored_size(&locator)? == Some(locator.size()))).await
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::blockfile::{recorded_crc, set_crc};
    use super::*;

    fn store() -> (tempfile::TempDir, LocalDirStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalDirStore::open(dir.path().join("store")).unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn put_get_exists() {
        let (_d, s) = store();
        let b = Block::new(&b"hello"[..]).unwrap();
        assert!(!s.exists(b.locator()).await.unwrap());
        assert!(matches!(s.get(b.locator()).await, Err(StoreError::NotFound(_))));
        s.put(&b).await.unwrap();
        assert!(s.exists(b.locator()).await.unwrap());
        assert_eq!(s.get(b.locator()).await.unwrap(), &b"hello"[..]);
        assert_eq!(s.get_range(b.locator(), 1, 3).await.unwrap(), &b"ell"[..]);
        assert!(matches!(s.get_range(b.locator(), 3, 3).await, Err(StoreError::BadRange { .. })));
        // The file is where the layout says, named by the stripped locator.
        let p = s.block_path(b.locator());
        assert_eq!(p, s.root().join("5d4/5d41402abc4b2a76b9719d911017c592+5"));
        // A second put is a no-op; hints do not change where a block lives.
        s.put(&b).await.unwrap();
        let signed = Locator::parse(&format!("{}+Kabc", b.locator())).unwrap();
        assert_eq!(s.get(&signed).await.unwrap(), &b"hello"[..]);
        let empty = Block::new(Bytes::new()).unwrap();
        s.put(&empty).await.unwrap();
        assert_eq!(s.get(empty.locator()).await.unwrap().len(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_the_conformance_suite() {
        let (_d, s) = store();
        let files = s.clone();
        crate::store::conformance::run_all(Arc::new(s), move |loc, bytes| {
            let path = files.block_path(&loc);
            async move { fs::write(path, bytes).unwrap() }
        })
        .await;
    }

    #[tokio::test]
    async fn corruption_is_detected_never_served() {
        let (_d, s) = store();
        let b = Block::new(vec![7u8; 100_000]).unwrap();
        s.put(&b).await.unwrap();
        let p = s.block_path(b.locator());

        let mut bytes = fs::read(&p).unwrap();
        bytes[50_000] ^= 1;
        fs::write(&p, &bytes).unwrap();
        let e = s.get(b.locator()).await.unwrap_err();
        assert!(matches!(&e, StoreError::Corrupt { reason, .. } if reason.contains("MD5")), "{e}");

        // A block that fails verification (here, same size, one bit flipped) is moved aside: it no longer counts
        // as stored, and putting it again repairs it.
        assert!(!s.exists(b.locator()).await.unwrap());
        assert_eq!(fs::read_dir(s.root().join(CORRUPT_DIR)).unwrap().count(), 1);
        s.put(&b).await.unwrap();
        assert_eq!(s.get(b.locator()).await.unwrap(), b.data());

        fs::write(&p, &bytes[..99_999]).unwrap();
        let e = s.get(b.locator()).await.unwrap_err();
        assert!(matches!(&e, StoreError::Corrupt { reason, .. } if reason.contains("99999 bytes")), "{e}");
        assert!(!s.exists(b.locator()).await.unwrap());
        s.put(&b).await.unwrap();
        assert_eq!(s.get(b.locator()).await.unwrap(), b.data());
    }

    /// A put records the block's CRC-32 on its file and reads are checked with it; a damaged or missing CRC over
    /// good bytes costs nothing (MD5 decides, and the right CRC is recorded), while damaged bytes are caught.
    #[tokio::test]
    async fn reads_are_checked_with_the_crc_recorded_at_put() {
        let (_d, s) = store();
        let b = Block::new(vec![9u8; 200_000]).unwrap();
        s.put(&b).await.unwrap();
        let p = s.block_path(b.locator());
        let crc = || recorded_crc(&fs::File::open(&p).unwrap());
        assert_eq!(crc(), Some(crc32fast::hash(b.data())));
        assert_eq!(s.get(b.locator()).await.unwrap(), b.data());

        set_crc(&fs::File::open(&p).unwrap(), 0xdead_beef).unwrap();
        assert_eq!(s.get(b.locator()).await.unwrap(), b.data(), "a wrong CRC over good bytes");
        assert_eq!(crc(), Some(crc32fast::hash(b.data())), "and the right one recorded again");

        // A block file written without a CRC (by an older cafs): checked with MD5, then given one.
        let c = Block::new(vec![3u8; 1000]).unwrap();
        fs::write(s.block_path(c.locator()), c.data()).unwrap();
        assert_eq!(recorded_crc(&fs::File::open(s.block_path(c.locator())).unwrap()), None);
        assert_eq!(s.get(c.locator()).await.unwrap(), c.data());
        assert_eq!(recorded_crc(&fs::File::open(s.block_path(c.locator())).unwrap()), Some(crc32fast::hash(c.data())));

        // A flipped bit under a recorded CRC is caught, and the block moved aside.
        let mut bytes = fs::read(&p).unwrap();
        bytes[123_456] ^= 0x10;
        fs::OpenOptions::new().write(true).open(&p).unwrap().write_all(&bytes).unwrap();
        assert!(crc().is_some());
        let e = s.get(b.locator()).await.unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
        assert!(!s.exists(b.locator()).await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_puts_of_one_block_are_safe() {
        let (_d, s) = store();
        let b = Block::new(vec![42u8; 3 << 20]).unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (s, b) = (s.clone(), b.clone());
            tasks.spawn(async move { s.put(&b).await });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap().unwrap();
        }
        assert_eq!(s.get(b.locator()).await.unwrap(), b.data());
        assert_eq!(fs::read_dir(s.root().join(TMP_DIR)).unwrap().count(), 0, "no temporary files left behind");
    }

    #[test]
    fn opening_makes_every_fan_out_directory() {
        let (_d, s) = store();
        let fans = fs::read_dir(s.root())
            .unwrap()
            .filter(|e| !e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.'));
        assert_eq!(fans.count(), 4096);
    }

    #[tokio::test]
    async fn a_second_store_on_the_same_directory_sees_the_blocks() {
        let (d, s) = store();
        let b = Block::new(&b"shared"[..]).unwrap();
        s.put(&b).await.unwrap();
        let again = LocalDirStore::open(d.path().join("store")).unwrap();
        assert_eq!(again.get(b.locator()).await.unwrap(), &b"shared"[..]);
    }

    #[tokio::test]
    async fn stale_temporary_files_are_removed_on_open() {
        let (d, s) = store();
        let stale = s.root().join(TMP_DIR).join("leftover");
        fs::write(&stale, b"partial").unwrap();
        let opts = LocalDirStoreOptions { stale_tmp_age: Duration::ZERO, ..Default::default() };
        std::thread::sleep(Duration::from_millis(10));
        LocalDirStore::open_with(d.path().join("store"), opts).unwrap();
        assert!(!stale.exists());
    }

    #[tokio::test]
    async fn write_errors_reach_the_caller_and_leave_nothing() {
        let (_d, s) = store();
        let b = Block::new(&b"x"[..]).unwrap();
        // A file where the fan-out directory should be: the put cannot write the block.
        let fan = s.block_path(b.locator()).parent().unwrap().to_path_buf();
        fs::remove_dir(&fan).unwrap();
        fs::write(&fan, b"in the way").unwrap();
        let e = s.put(&b).await.unwrap_err();
        assert!(matches!(e, StoreError::Io { .. }), "{e}");
        assert!(!e.is_transient());
        assert_eq!(fs::read_dir(s.root().join(TMP_DIR)).unwrap().count(), 0);
    }
}
