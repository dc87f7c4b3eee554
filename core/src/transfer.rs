//! Moving a directory tree on disk into a collection (blocks + manifest) and a collection back onto disk.
//!
//! Import streams every file's bytes, in path order, into a sequence of 64 MiB blocks — small files packed
//! together, large ones split — as `arv-put` does, hashing on the blocking pool and keeping a bounded number of
//! uploads in flight, so memory stays at a few blocks whatever the tree's size. Export fetches each block once
//! (verified by the store) and writes the files. Only regular files and directories can be moved this way;
//! anything else is refused by name rather than skipped.

use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::task::JoinSet;

use crate::locator::MAX_BLOCK_SIZE;
use crate::manifest::{BlockId, Dir, Entry, MAX_DEPTH, Manifest, Segment, TreeError};
use crate::store::{Block, BlockStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {what} cannot be stored in a collection")]
    Unsupported { path: PathBuf, what: &'static str },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Tree(#[from] TreeError),
    #[error("{path}: file changed while it was read")]
    Changed { path: PathBuf },
    #[error("{path}: directories nest deeper than {MAX_DEPTH}")]
    TooDeep { path: PathBuf },
    #[error("invalid transfer options: {0}")]
    InvalidOptions(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TransferError + '_ {
    move |source| TransferError::Io { path: path.to_path_buf(), source }
}

#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Block size (at most 64 MiB); smaller values make tests exercise block boundaries.
    pub block_size: usize,
    /// Uploads in flight at once; memory is about (this + 1) blocks.
    pub max_in_flight: usize,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self { block_size: MAX_BLOCK_SIZE as usize, max_in_flight: 2 }
    }
}

/// A file's place in the tree, as path components below the root.
type TreePath = Vec<Box<[u8]>>;

fn dir_at<'a>(root: &'a mut Dir, dirs: &[Box<[u8]>]) -> Result<&'a mut Dir, TreeError> {
    let mut d = root;
    for c in dirs {
        d = d.subdir(c)?;
    }
    Ok(d)
}

struct Importer {
    manifest: Manifest,
    store: Arc<dyn BlockStore>,
    opts: ImportOptions,
    buf: BytesMut,
    /// Pieces of files that sit in `buf`, waiting for its locator: (file, offset in buf, length).
    pending: Vec<(usize, u64, u64)>,
    files: Vec<TreePath>,
    uploads: JoinSet<Result<(), StoreError>>,
}

impl Importer {
    async fn flush(&mut self) -> Result<(), TransferError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, BytesMut::with_capacity(self.opts.block_size)).freeze();
        let block = tokio::task::spawn_blocking(move || Block::new(data))
            .await
            .map_err(|e| StoreError::Unavailable(format!("hashing task failed: {e}")))??;
        let id = self.manifest.add_block(block.locator().clone());
        for (file, offset, len) in std::mem::take(&mut self.pending) {
            self.push_segment(file, Segment { block: id, offset, len })?;
        }
        while self.uploads.len() >= self.opts.max_in_flight {
            self.join_one().await?;
        }
        let store = self.store.clone();
        self.uploads.spawn(async move { store.put(&block).await });
        Ok(())
    }

    async fn join_one(&mut self) -> Result<(), TransferError> {
        if let Some(r) = self.uploads.join_next().await {
            r.map_err(|e| StoreError::Unavailable(format!("upload task failed: {e}")))??;
        }
        Ok(())
    }

    fn push_segment(&mut self, file: usize, seg: Segment) -> Result<(), TransferError> {
        let path = &self.files[file];
        let (name, dirs) = path.split_last().expect("file paths are non-empty");
        dir_at(self.manifest.root_mut(), dirs)?.file(name)?.push(seg);
        Ok(())
    }

    async fn add_file(&mut self, fs_path: &Path, tree_path: TreePath) -> Result<(), TransferError> {
        let (file, before) = open_regular(fs_path).await?;
        let mut file = tokio::fs::File::from_std(file);
        let index = self.files.len();
        {
            let (name, dirs) = tree_path.split_last().expect("file paths are non-empty");
            dir_at(self.manifest.root_mut(), dirs)?.file(name)?;
        }
        self.files.push(tree_path);
        let mut total = 0u64;
        loop {
            if self.buf.len() == self.opts.block_size {
                self.flush().await?;
            }
            let room = self.opts.block_size - self.buf.len();
            let start = self.buf.len();
            let n = read_some(&mut file, &mut self.buf, room).await.map_err(io_err(fs_path))?;
            if n == 0 {
                break;
            }
            self.pending.push((index, start as u64, n as u64));
            total += n as u64;
        }
        // A file rewritten while it was read (even to the same size) would be stored torn: refuse it.
        let after = file.metadata().await.map_err(io_err(fs_path))?;
        if total != before.len() || !same_version(&before, &after) {
            return Err(TransferError::Changed { path: fs_path.to_path_buf() });
        }
        Ok(())
    }
}

/// Opens `path` for reading only if it is a regular file: without following a symlink, and without blocking on
/// a FIFO that replaced the file after the directory was listed; the check is made on what was opened.
async fn open_regular(path: &Path) -> Result<(std::fs::File, Metadata), TransferError> {
    let p = path.to_path_buf();
    let opened = tokio::task::spawn_blocking(move || {
        let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(&p)?;
        let m = f.metadata()?;
        Ok::<_, std::io::Error>((f, m))
    })
    .await
    .map_err(|e| StoreError::Unavailable(format!("open task failed: {e}")))?;
    match opened {
        Ok((f, m)) if m.is_file() => Ok((f, m)),
        Ok(_) => Err(TransferError::Unsupported { path: path.to_path_buf(), what: "a special file" }),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            Err(TransferError::Unsupported { path: path.to_path_buf(), what: "a symbolic link" })
        }
        Err(e) => Err(TransferError::Io { path: path.to_path_buf(), source: e }),
    }
}

/// Whether two stats of one open file show the same contents version (size, modification and change times).
fn same_version(a: &Metadata, b: &Metadata) -> bool {
    (a.len(), a.mtime(), a.mtime_nsec(), a.ctime(), a.ctime_nsec())
        == (b.len(), b.mtime(), b.mtime_nsec(), b.ctime(), b.ctime_nsec())
}

async fn read_some(file: &mut tokio::fs::File, buf: &mut BytesMut, max: usize) -> std::io::Result<usize> {
    use tokio::io::AsyncReadExt;
    let before = buf.len();
    let mut limited = file.take(max as u64);
    // Read until the block is full or the file ends, in large chunks.
    while buf.len() - before < max {
        let n = limited.read_buf(buf).await?;
        if n == 0 {
            break;
        }
    }
    Ok(buf.len() - before)
}

/// Stores every file below `src` as blocks in `store` and returns the collection's manifest.
pub async fn import_dir(
    src: &Path,
    store: Arc<dyn BlockStore>,
    opts: ImportOptions,
) -> Result<Manifest, TransferError> {
    if opts.block_size == 0 || opts.block_size as u64 > MAX_BLOCK_SIZE {
        return Err(TransferError::InvalidOptions(format!("block size {} is not in 1..=64 MiB", opts.block_size)));
    }
    if opts.max_in_flight == 0 {
        return Err(TransferError::InvalidOptions("max_in_flight must be at least 1".into()));
    }
    let mut imp = Importer {
        manifest: Manifest::new(),
        store,
        buf: BytesMut::with_capacity(opts.block_size),
        opts,
        pending: Vec::new(),
        files: Vec::new(),
        uploads: JoinSet::new(),
    };
    // Depth-first in name order, without recursion.
    let mut stack: Vec<(PathBuf, TreePath)> = vec![(src.to_path_buf(), Vec::new())];
    while let Some((dir, tree_dir)) = stack.pop() {
        let mut entries = Vec::new();
        let mut rd = tokio::fs::read_dir(&dir).await.map_err(io_err(&dir))?;
        while let Some(e) = rd.next_entry().await.map_err(io_err(&dir))? {
            entries.push(e);
        }
        entries.sort_by_key(|e| e.file_name());
        if entries.is_empty() && !tree_dir.is_empty() {
            dir_at(imp.manifest.root_mut(), &tree_dir)?;
        }
        let mut subdirs = Vec::new();
        for e in entries {
            let path = e.path();
            let meta = tokio::fs::symlink_metadata(&path).await.map_err(io_err(&path))?;
            let mut tree_path = tree_dir.clone();
            tree_path.push(e.file_name().as_bytes().into());
            let ft = meta.file_type();
            if ft.is_dir() {
                if tree_path.len() > MAX_DEPTH {
                    return Err(TransferError::TooDeep { path });
                }
                subdirs.push((path, tree_path));
            } else if ft.is_file() {
                imp.add_file(&path, tree_path).await?;
            } else {
                let what = if ft.is_symlink() { "a symbolic link" } else { "a special file" };
                return Err(TransferError::Unsupported { path, what });
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    imp.flush().await?;
    while !imp.uploads.is_empty() {
        imp.join_one().await?;
    }
    Ok(imp.manifest)
}

/// Writes the collection's files below `dest` (created if needed). Each piece is written as soon as its block
/// is at hand, and only the two most recent blocks are kept, so memory stays at two blocks whatever the file
/// sizes; files whose pieces alternate between two blocks fetch each block once.
pub async fn export(manifest: &Manifest, store: &dyn BlockStore, dest: &Path) -> Result<(), TransferError> {
    use tokio::io::AsyncWriteExt;
    tokio::fs::create_dir_all(dest).await.map_err(io_err(dest))?;
    let mut cache = BlockCache::default();
    let mut stack: Vec<(PathBuf, &Dir)> = vec![(dest.to_path_buf(), manifest.root())];
    while let Some((dir_path, dir)) = stack.pop() {
        for (name, entry) in dir.iter() {
            let path = dir_path.join(std::ffi::OsStr::from_bytes(name));
            match entry {
                Entry::Dir(d) => {
                    tokio::fs::create_dir(&path).await.map_err(io_err(&path))?;
                    stack.push((path, d));
                }
                Entry::File(f) => {
                    let mut out = tokio::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&path)
                        .await
                        .map_err(io_err(&path))?;
                    for seg in f.segments() {
                        let block = cache.get(manifest, store, seg.block).await?;
                        let piece = &block[seg.offset as usize..(seg.offset + seg.len) as usize];
                        out.write_all(piece).await.map_err(io_err(&path))?;
                    }
                    out.sync_all().await.map_err(io_err(&path))?;
                }
            }
        }
    }
    Ok(())
}

/// The two most recently used blocks.
#[derive(Default)]
struct BlockCache {
    recent: Vec<(BlockId, Bytes)>,
}

impl BlockCache {
    async fn get(&mut self, m: &Manifest, store: &dyn BlockStore, id: BlockId) -> Result<Bytes, StoreError> {
        if let Some(i) = self.recent.iter().position(|(b, _)| *b == id) {
            let hit = self.recent.remove(i);
            self.recent.push(hit);
        } else {
            let data = store.get(m.block(id)).await?;
            if self.recent.len() == 2 {
                self.recent.remove(0);
            }
            self.recent.push((id, data));
        }
        Ok(self.recent.last().expect("just pushed").1.clone())
    }
}
