//! The filesystem: the inode table, each file's buffer block, the upload pool and the block cache, behind one
//! lock for metadata.
//!
//! Write path: a write copies its bytes into the file's own buffer block and patches the file's extents at once.
//! A full buffer is sealed and uploaded in the background (hashing on the blocking pool, at most
//! `max_uploads` at a time); when the upload lands, the extents that pointed into the buffer point at the stored
//! block and the memory is released. All buffers together stay within `memory_budget`: a writer that goes over
//! waits for uploads to land (sealing the largest open buffer if nothing is in flight). An upload that fails
//! after retries keeps its buffer (nothing is dropped) and makes the owner's `fsync` fail with the error; the
//! next `fsync` tries again.
//!
//! Read path: bytes still in a buffer are copied under the lock; stored bytes are fetched through the block
//! cache without holding it, so a slow store never blocks unrelated operations.
//!
//! Methods block the calling thread (they are called from FUSE worker threads); they must not be called from
//! inside the tokio runtime whose handle the filesystem was given.
//!
//! This file holds the state and the metadata operations (lookup, make, unlink, rename, attributes, xattrs);
//! the rest of [`Filesystem`] is split by concern: `load` (a tree from a committed collection), `buffers` (the
//! write path, the memory budget, uploads, fsync), `read` (the read path, repacking), `replay` (the journal)
//! and `snapshot` (the committed form of the tree).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::Semaphore;

use super::cache::BlockCache;
use super::extents::{BufId, Extents, Source};
use super::inode::{Body, Ino, Inode, Kind, Meta, ROOT, RenameMode, Special, Table};
use super::sidecar::{self, EntryMeta, Sidecar};
use super::xattr::{self, SetMode};
use super::{FsError, SharedError};
use crate::journal::{Journal, Made, MadeKind, Numbering, Record, StoredRange};
use crate::locator::{Locator, MAX_BLOCK_SIZE};
use crate::manifest::{Dir, Entry, Manifest, Segment};
use crate::store::{Block, BlockStore, StoreError};

mod buffers;
mod copy;
mod load;
mod read;
mod replay;
mod snapshot;

#[cfg(test)]
use buffers::jittered;
use buffers::put_with_retry;
pub use snapshot::Snapshot;
use snapshot::{LivePiece, same_entry};

/// What a tree is built with: where its blocks go, the runtime its uploads and fetches run on, its options, and
/// the owner of what records none (the root of a new tree, entries a sidecar does not name).
#[derive(Clone)]
pub struct Setup {
    pub store: Arc<dyn BlockStore>,
    pub rt: tokio::runtime::Handle,
    pub opts: FsOptions,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone)]
pub struct FsOptions {
    /// Size of a buffer block (at most 64 MiB).
    pub buffer_size: usize,
    /// Bytes all buffers together may hold before writers wait.
    pub memory_budget: u64,
    /// Uploads in flight at once.
    pub max_uploads: usize,
    /// Bytes of stored blocks the read cache keeps.
    pub cache_size: u64,
    /// Bytes past a sequential read whose blocks are fetched ahead (kept well under `cache_size`, so that
    /// fetched-ahead blocks are not evicted before they are read).
    pub readahead: u64,
    /// Attempts per upload for errors that may go away (the store down, a timeout).
    pub upload_attempts: u32,
    /// Wait before the second attempt; doubles for each further one.
    pub retry_delay: Duration,
    /// An upload attempt that takes longer has failed (a store that hangs is a store that is down): it is
    /// abandoned and retried like any transient error.
    pub upload_timeout: Duration,
}

impl Default for FsOptions {
    fn default() -> Self {
        Self {
            buffer_size: MAX_BLOCK_SIZE as usize,
            memory_budget: 512 << 20,
            max_uploads: 4,
            cache_size: 256 << 20,
            readahead: 128 << 20,
            upload_attempts: 4,
            retry_delay: Duration::from_millis(200),
            upload_timeout: Duration::from_secs(120),
        }
    }
}

/// Where a piece of a file's bytes is (see [`Filesystem::pieces`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// In a stored block, at this offset within it.
    Stored(Locator, u64),
    /// In a buffer, not stored yet.
    Buffered,
    /// A hole.
    Zeros,
}

/// Attributes of an inode, as `stat` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: Kind,
    pub size: u64,
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

/// Changes `setattr` can make; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    pub perm: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SystemTime>,
    pub mtime: Option<SystemTime>,
}

#[derive(Debug)]
enum BufData {
    /// Still being written.
    Open(Vec<u8>),
    /// Sealed: being uploaded, or waiting to be retried after `error`.
    Sealed { data: Bytes, uploading: bool, error: Option<SharedError<StoreError>> },
    /// A small buffer copied into the pack buffer `pack` at offset `at`; kept (for reads) until the pack lands.
    InPack { data: Bytes, pack: BufId, at: u64 },
}

#[derive(Debug)]
struct Buffer {
    /// The file whose bytes these are; [`PACK`] for a pack of several files' buffers.
    owner: Ino,
    data: BufData,
    /// For a pack: the buffers packed into it.
    members: Vec<BufId>,
}

/// How far out of order a read may arrive and still count as continuing a sequential stream.
const READ_ORDER_SLACK: u64 = 4 << 20;

/// Owner of pack buffers (no inode has this number).
const PACK: Ino = 0;

/// Open buffers smaller than this are packed together when flushed, so that many small files make few blocks.
const PACK_BELOW: usize = 4 << 20;

impl Buffer {
    fn len(&self) -> usize {
        match &self.data {
            BufData::Open(v) => v.len(),
            BufData::Sealed { data, .. } | BufData::InPack { data, .. } => data.len(),
        }
    }

    fn bytes(&self, offset: u64, len: u64) -> &[u8] {
        let all: &[u8] = match &self.data {
            BufData::Open(v) => v,
            BufData::Sealed { data, .. } | BufData::InPack { data, .. } => data,
        };
        &all[offset as usize..(offset + len) as usize]
    }
}

/// See [`Filesystem::upload_stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadStats {
    /// Bytes held in memory that the store does not have yet.
    pub held_bytes: u64,
    /// Buffers still being written into.
    pub open_buffers: usize,
    /// Sealed blocks waiting for an upload slot.
    pub queued: usize,
    pub in_flight: usize,
    /// Blocks whose upload failed after its retries; their bytes are held for the next flush.
    pub failed: usize,
    pub last_error: Option<String>,
    pub uploaded_bytes: u64,
}

#[derive(Debug)]
struct State {
    table: Table,
    buffers: HashMap<BufId, Buffer>,
    /// The buffer each file is writing into.
    open_buffer: HashMap<Ino, BufId>,
    /// Every buffer of each owner, so that per-file questions (`fsync`, a failed upload) cost what that file
    /// holds rather than what the whole mount holds.
    by_owner: HashMap<Ino, Vec<BufId>>,
    next_buf: u64,
    /// Bytes held by all buffers.
    memory: u64,
    /// One emptied full-size buffer kept for the next streaming writer: a fresh 64 MiB allocation costs a page
    /// fault per 4 KiB touched, a measurable share of a streaming write's CPU. Counted against the budget.
    spare: Option<Vec<u8>>,
    uploading: usize,
    /// Bytes of blocks stored by finished uploads since the mount was opened (for progress and throughput).
    uploaded_bytes: u64,
    /// Where each file's last read ended, to tell sequential reads (which get read-ahead) from random ones.
    read_ends: HashMap<Ino, u64>,
    /// Bumped by every change to the tree; see [`Filesystem::generation`].
    generation: u64,
    /// Files journaled as holding bytes only in memory ([`Record::Unsynced`] written, its `Synced` not yet).
    unsynced: HashSet<Ino>,
    /// Files a recovery found unsynced: they may have lost writes acknowledged by the cafsd that died. Their
    /// next `fsync` or `close` fails with `EIO`, once (as a disk that lost its write cache reports it).
    lost: HashSet<Ino>,
}

impl State {
    fn add_buffer(&mut self, id: BufId, buf: Buffer) {
        self.by_owner.entry(buf.owner).or_default().push(id);
        self.buffers.insert(id, buf);
    }

    fn remove_buffer(&mut self, id: BufId) -> Option<Buffer> {
        let buf = self.buffers.remove(&id)?;
        if let Some(ids) = self.by_owner.get_mut(&buf.owner) {
            ids.retain(|&b| b != id);
            if ids.is_empty() {
                self.by_owner.remove(&buf.owner);
            }
        }
        Some(buf)
    }

    fn owned_by(&self, ino: Ino) -> &[BufId] {
        self.by_owner.get(&ino).map_or(&[], Vec::as_slice)
    }

    /// Whether some of the file's bytes are only in memory.
    fn holds_unstored(&self, ino: Ino) -> bool {
        self.owned_by(ino).iter().any(|id| self.buffers.get(id).is_some_and(|b| b.len() > 0))
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Signalled whenever an upload ends.
    uploaded: Condvar,
    store: Arc<dyn BlockStore>,
    cache: BlockCache,
    rt: tokio::runtime::Handle,
    slots: Arc<Semaphore>,
    opts: FsOptions,
    /// Where changes are recorded, once attached (see [`Filesystem::attach_journal`]).
    journal: std::sync::OnceLock<Arc<Journal>>,
}

impl Shared {
    /// Appends the record `make` builds, if there is a journal. Called with the state lock held, so records are
    /// in the order of the changes.
    fn log(&self, table: &Table, make: impl FnOnce(&Table) -> Option<Record>) {
        if let Some(j) = self.journal.get()
            && let Some(r) = make(table)
        {
            j.append(&r);
        }
    }

    /// Keeps the memory of a landed full-size buffer for the next streaming writer, when nothing else holds it
    /// and the budget has room.
    fn keep_spare(&self, st: &mut State, data: Bytes) {
        if st.spare.is_some() || data.len() != self.opts.buffer_size {
            return;
        }
        if st.memory + self.opts.buffer_size as u64 > self.opts.memory_budget {
            return;
        }
        if let Ok(m) = data.try_into_mut() {
            let mut v = Vec::from(m);
            if v.capacity() == self.opts.buffer_size {
                v.clear();
                st.spare = Some(v);
            }
        }
    }
}

/// A writable collection tree. Cheap to clone (a handle).
#[derive(Debug, Clone)]
pub struct Filesystem {
    shared: Arc<Shared>,
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn to_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

fn from_ns(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

impl Filesystem {
    /// An empty tree whose root belongs to `uid`/`gid`.
    pub fn new(setup: Setup) -> Self {
        let t = now();
        let root = Meta { perm: 0o755, uid: setup.uid, gid: setup.gid, mtime: t, ctime: t, atime: t };
        Self::with_table(Table::new(root), setup)
    }

    fn with_table(table: Table, Setup { store, rt, opts, .. }: Setup) -> Self {
        assert!(opts.buffer_size > 0 && opts.buffer_size as u64 <= MAX_BLOCK_SIZE, "buffer size 1..=64 MiB");
        let state = State {
            table,
            buffers: HashMap::new(),
            open_buffer: HashMap::new(),
            by_owner: HashMap::new(),
            next_buf: 1,
            memory: 0,
            spare: None,
            uploading: 0,
            uploaded_bytes: 0,
            read_ends: HashMap::new(),
            generation: 0,
            unsynced: HashSet::new(),
            lost: HashSet::new(),
        };
        let shared = Shared {
            state: Mutex::new(state),
            uploaded: Condvar::new(),
            cache: BlockCache::new(opts.cache_size),
            slots: Arc::new(Semaphore::new(opts.max_uploads.max(1))),
            store,
            rt,
            opts,
            journal: std::sync::OnceLock::new(),
        };
        Self { shared: Arc::new(shared) }
    }

    /// Whether any file of this tree is open.
    pub fn any_open(&self) -> bool {
        !self.lock().table.open_inodes().is_empty()
    }

    /// Whether `ino` is an inode of this tree.
    pub fn has(&self, ino: Ino) -> bool {
        self.lock().table.get(ino).is_ok()
    }

    /// Who owns the root directory.
    pub fn root_owner(&self) -> (u32, u32) {
        let st = self.lock();
        st.table.get(crate::fs::inode::ROOT).map_or((0, 0), |i| (i.meta.uid, i.meta.gid))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bumped by every change; equal generations mean an unchanged tree.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    fn attr(st: &State, ino: Ino) -> Result<Attr, FsError> {
        let i = st.table.get(ino)?;
        Ok(Attr {
            ino,
            kind: i.kind(),
            size: i.size(),
            perm: i.meta.perm,
            nlink: i.nlink,
            uid: i.meta.uid,
            gid: i.meta.gid,
            atime: i.meta.atime,
            mtime: i.meta.mtime,
            ctime: i.meta.ctime,
        })
    }

    pub fn getattr(&self, ino: Ino) -> Result<Attr, FsError> {
        Self::attr(&self.lock(), ino)
    }

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr, FsError> {
        let st = self.lock();
        let ino = st.table.lookup(parent, name)?;
        Self::attr(&st, ino)
    }

    /// The parent of a directory (the root's is itself).
    pub fn parent(&self, dir: Ino) -> Result<Ino, FsError> {
        self.lock().table.parent(dir).ok_or(FsError::NotFound)
    }

    fn make(&self, parent: Ino, name: &[u8], body: Body, perm: u32, uid: u32, gid: u32) -> Result<Attr, FsError> {
        let t = now();
        let kind = match &body {
            Body::Dir(_) => MadeKind::Dir,
            Body::File(_) => MadeKind::File,
            Body::Symlink(target) => MadeKind::Symlink(target.to_vec()),
            Body::Special(Special::Fifo) => MadeKind::Fifo,
            Body::Special(Special::Socket) => MadeKind::Socket,
        };
        let mut st = self.lock();
        let meta = Meta { perm: perm & 0o7777, uid, gid, mtime: t, ctime: t, atime: t };
        let ino = st.table.create(parent, name, body, meta)?;
        st.generation += 1;
        self.shared.log(&st.table, |table| {
            let meta = Made { perm: perm & 0o7777, uid, gid, mtime_ns: to_ns(t) };
            Some(Record::Make { path: table.path(ino)?, ino, kind, meta })
        });
        Self::attr(&st, ino)
    }

    pub fn mkdir(&self, parent: Ino, name: &[u8], perm: u32, uid: u32, gid: u32) -> Result<Attr, FsError> {
        self.make(parent, name, Body::Dir(Default::default()), perm, uid, gid)
    }

    /// Creates an empty regular file (not opened; see [`Filesystem::open`]).
    pub fn create(&self, parent: Ino, name: &[u8], perm: u32, uid: u32, gid: u32) -> Result<Attr, FsError> {
        self.make(parent, name, Body::File(Extents::new()), perm, uid, gid)
    }

    pub fn symlink(&self, parent: Ino, name: &[u8], target: &[u8], uid: u32, gid: u32) -> Result<Attr, FsError> {
        if target.is_empty() || target.len() > 4096 || target.contains(&0) {
            return Err(FsError::Invalid("symlink target must be 1 to 4096 bytes without NUL"));
        }
        self.make(parent, name, Body::Symlink(target.into()), 0o777, uid, gid)
    }

    /// Makes a FIFO or a socket (the kernel gives them their behaviour; cafs keeps the entry).
    pub fn mknod(
        &self,
        parent: Ino,
        name: &[u8],
        node: Special,
        perm: u32,
        uid: u32,
        gid: u32,
    ) -> Result<Attr, FsError> {
        self.make(parent, name, Body::Special(node), perm, uid, gid)
    }

    /// Gives `ino` the further name `name` in `parent` (`link(2)`).
    pub fn link(&self, ino: Ino, parent: Ino, name: &[u8]) -> Result<Attr, FsError> {
        let mut st = self.lock();
        let from = st.table.path(ino);
        st.table.link(ino, parent, name, now())?;
        st.generation += 1;
        self.shared.log(&st.table, |table| Some(Record::Link { from: from?, to: table.child_path(parent, name)? }));
        Self::attr(&st, ino)
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>, FsError> {
        match &self.lock().table.get(ino)?.body {
            Body::Symlink(t) => Ok(t.to_vec()),
            _ => Err(FsError::Invalid("not a symlink")),
        }
    }

    /// Entries of a directory in name order, with their inode numbers and kinds.
    pub fn readdir(&self, dir: Ino) -> Result<Vec<(Vec<u8>, Ino, Kind)>, FsError> {
        let st = self.lock();
        st.table.entries(dir)?.map(|(name, ino)| Ok((name.to_vec(), ino, st.table.get(ino)?.kind()))).collect()
    }

    /// Drops the open buffers of files just freed. (Sealed buffers of a freed file finish their upload and are
    /// dropped when it lands; nothing refers to them any more.)
    fn reap(st: &mut State) {
        for ino in st.table.take_freed() {
            st.read_ends.remove(&ino);
            if let Some(id) = st.open_buffer.remove(&ino)
                && let Some(b) = st.remove_buffer(id)
            {
                st.memory -= b.len() as u64;
            }
        }
    }

    pub fn unlink(&self, parent: Ino, name: &[u8]) -> Result<(), FsError> {
        let mut st = self.lock();
        let path = st.table.child_path(parent, name);
        st.table.unlink(parent, name, now())?;
        st.generation += 1;
        self.shared.log(&st.table, |_| Some(Record::Unlink { path: path? }));
        Self::reap(&mut st);
        Ok(())
    }

    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<(), FsError> {
        let mut st = self.lock();
        let path = st.table.child_path(parent, name);
        st.table.rmdir(parent, name, now())?;
        st.generation += 1;
        self.shared.log(&st.table, |_| Some(Record::Rmdir { path: path? }));
        Self::reap(&mut st);
        Ok(())
    }

    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        mode: RenameMode,
    ) -> Result<(), FsError> {
        let mut st = self.lock();
        let (from, to) = (st.table.child_path(parent, name), st.table.child_path(new_parent, new_name));
        st.table.rename(parent, name, new_parent, new_name, mode, now())?;
        st.generation += 1;
        let mode = match mode {
            RenameMode::Replace => 0,
            RenameMode::NoReplace => 1,
            RenameMode::Exchange => 2,
        };
        self.shared.log(&st.table, |_| Some(Record::Rename { from: from?, to: to?, mode }));
        Self::reap(&mut st);
        Ok(())
    }

    /// Counts an open handle (an unlinked file lives while it is open).
    pub fn open(&self, ino: Ino) -> Result<Attr, FsError> {
        let mut st = self.lock();
        st.table.get_mut(ino)?.opens += 1;
        Self::attr(&st, ino)
    }

    /// Ends an open handle.
    pub fn release(&self, ino: Ino) -> Result<(), FsError> {
        let mut st = self.lock();
        let i = st.table.get_mut(ino)?;
        i.opens = i.opens.saturating_sub(1);
        st.table.release_if_unused(ino);
        Self::reap(&mut st);
        Ok(())
    }

    /// The stored attribute `name` of `ino` (see [`xattr`] for which names are stored).
    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>, FsError> {
        let st = self.lock();
        let i = st.table.get(ino)?;
        i.xattrs.as_ref().and_then(|a| a.get(name)).map(|v| v.to_vec()).ok_or(FsError::NoAttr)
    }

    /// The names of `ino`'s stored attributes, in order.
    pub fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>, FsError> {
        let st = self.lock();
        let i = st.table.get(ino)?;
        Ok(i.xattrs.as_ref().map_or_else(Vec::new, |a| a.keys().map(|k| k.to_vec()).collect()))
    }

    /// Where a file's bytes are, piece by piece in file order, with each piece's length.
    pub fn pieces(&self, ino: Ino) -> Result<Vec<(Piece, u64)>, FsError> {
        let st = self.lock();
        let Body::File(x) = &st.table.get(ino)?.body else { return Err(FsError::IsDir) };
        Ok(x.read_plan(0, x.size())
            .into_iter()
            .map(|p| {
                let at = match p.src {
                    Source::Stored { block, offset } => Piece::Stored(block, offset),
                    Source::Buffer { .. } => Piece::Buffered,
                    Source::Hole => Piece::Zeros,
                };
                (at, p.len)
            })
            .collect())
    }

    /// Sets (`Some`) or removes (`None`) the attribute `name` of `ino`; journaled, and committed with the tree.
    pub fn setxattr(&self, ino: Ino, name: &[u8], value: Option<&[u8]>, mode: SetMode) -> Result<(), FsError> {
        let mut st = self.lock();
        let i = st.table.get_mut(ino)?;
        xattr::change(&mut i.xattrs, name, value, mode)?;
        i.meta.ctime = now();
        st.generation += 1;
        self.shared.log(&st.table, |table| {
            Some(Record::Xattr { path: table.path(ino)?, name: name.to_vec(), value: value.map(<[u8]>::to_vec) })
        });
        Ok(())
    }

    pub fn setattr(&self, ino: Ino, set: &SetAttr) -> Result<Attr, FsError> {
        let mut st = self.lock();
        Self::set_attr(&mut st, ino, set, now())?;
        self.shared.log(&st.table, |table| {
            let mtime = table.get(ino).ok()?.meta.mtime;
            Some(Record::SetAttr {
                path: table.path(ino)?,
                size: set.size,
                perm: set.perm,
                uid: set.uid,
                gid: set.gid,
                mtime_ns: (set.mtime.is_some() || set.size.is_some()).then(|| to_ns(mtime)),
            })
        });
        Self::attr(&st, ino)
    }

    fn set_attr(st: &mut State, ino: Ino, set: &SetAttr, t: SystemTime) -> Result<(), FsError> {
        let i = st.table.get_mut(ino)?;
        if let Some(size) = set.size {
            match &mut i.body {
                Body::File(x) => {
                    x.truncate(size);
                    i.meta.mtime = t;
                }
                Body::Dir(_) => return Err(FsError::IsDir),
                Body::Symlink(_) | Body::Special(_) => return Err(FsError::Invalid("only a regular file has a size")),
            }
        }
        if let Some(p) = set.perm {
            i.meta.perm = p & 0o7777;
        }
        if let Some(u) = set.uid {
            i.meta.uid = u;
        }
        if let Some(g) = set.gid {
            i.meta.gid = g;
        }
        if let Some(a) = set.atime {
            i.meta.atime = a;
        }
        if let Some(m) = set.mtime {
            i.meta.mtime = m;
        }
        i.meta.ctime = t;
        st.generation += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
