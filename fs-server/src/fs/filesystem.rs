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

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::Semaphore;

use super::FsError;
use super::cache::BlockCache;
use super::extents::{BufId, Extents, Source};
use super::inode::{Body, Ino, Kind, Meta, ROOT, RenameMode, Table};
use super::sidecar::{self, EntryMeta, Sidecar};
use super::xattr::{self, SetMode};
use crate::journal::{Journal, Made, MadeKind, Numbering, Record, StoredRange};
use crate::locator::{Locator, MAX_BLOCK_SIZE};
use crate::manifest::{Dir, Entry, Manifest, Segment};
use crate::store::{Block, BlockStore, StoreError};

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
    Sealed { data: Bytes, uploading: bool, error: Option<String> },
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
    pub fn new(store: Arc<dyn BlockStore>, rt: tokio::runtime::Handle, opts: FsOptions, uid: u32, gid: u32) -> Self {
        let t = now();
        let root = Meta { perm: 0o755, uid, gid, mtime: t, ctime: t, atime: t };
        Self::with_table(Table::new(root), store, rt, opts)
    }

    fn with_table(table: Table, store: Arc<dyn BlockStore>, rt: tokio::runtime::Handle, opts: FsOptions) -> Self {
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

    /// The tree of a committed collection: its manifest and sidecar (an empty sidecar gives defaults: files
    /// `0644`, directories `0755`, owned by `uid`/`gid`, modified now).
    pub fn load(
        manifest: &Manifest,
        sidecar: &[u8],
        store: Arc<dyn BlockStore>,
        rt: tokio::runtime::Handle,
        opts: FsOptions,
        uid: u32,
        gid: u32,
    ) -> Result<Self, FsError> {
        let index = sidecar::Index::from_bytes(sidecar).map_err(|e| FsError::Io(e.to_string()))?;
        Self::load_numbered(manifest, &index, &Numbering::default(), store, rt, opts, uid, gid)
    }

    /// A tree of another version of the same collection, with this tree's store and options. Whatever is the
    /// same in both keeps its inode number (and its count of open handles): directories, and files and symlinks
    /// with the same bytes or target. A file whose bytes changed gets a number this tree never gave, so that a
    /// handle opened on the old number (which stays with this tree, see [`Filesystem::open_elsewhere`]) keeps
    /// reading the version it opened, and the kernel's cached pages of the old number never stand for the new
    /// bytes.
    pub fn reload(&self, manifest: &Manifest, sidecar: &sidecar::Index, uid: u32, gid: u32) -> Result<Self, FsError> {
        let (inos, next) = {
            let st = self.lock();
            let (inos, next) = st.table.numbering();
            let inos = inos.into_iter().filter(|(path, ino)| same_entry(&st.table, *ino, path, manifest, sidecar));
            (inos.collect(), next)
        };
        let sh = &self.shared;
        let new = Self::load_numbered(
            manifest,
            sidecar,
            &Numbering { inos, next },
            sh.store.clone(),
            sh.rt.clone(),
            sh.opts.clone(),
            uid,
            gid,
        )?;
        {
            let old = self.lock();
            let mut st = new.lock();
            for (ino, opens) in old.table.open_inodes() {
                if let Ok(i) = st.table.get_mut(ino) {
                    i.opens = opens;
                }
            }
        }
        Ok(new)
    }

    /// Whether an inode open here is not in `newer` (its file changed or went): then this tree must stay for
    /// as long as that handle lives.
    pub fn open_elsewhere(&self, newer: &Filesystem) -> bool {
        let open = self.lock().table.open_inodes();
        let st = newer.lock();
        open.iter().any(|(ino, _)| st.table.get(*ino).is_err())
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

    /// [`Filesystem::load`], giving the entries the inode numbers `numbering` names (by path): the numbers a
    /// live tree had when it was committed, which the kernel may still hold after cafsd restarted. Entries it
    /// does not name get numbers from its `next` on.
    #[allow(clippy::too_many_arguments)]
    pub fn load_numbered(
        manifest: &Manifest,
        sidecar: &sidecar::Index,
        numbering: &Numbering,
        store: Arc<dyn BlockStore>,
        rt: tokio::runtime::Handle,
        opts: FsOptions,
        uid: u32,
        gid: u32,
    ) -> Result<Self, FsError> {
        let numbers: HashMap<&[u8], Ino> = numbering.inos.iter().map(|(p, i)| (&p[..], *i)).collect();
        let number = |comps: &[&[u8]]| {
            if numbers.is_empty() {
                return None;
            }
            numbers.get(&super::inode::join(comps.iter().copied())[..]).copied()
        };
        let t = now();
        let meta_of = |e: &EntryMeta| {
            let m = from_ns(e.mtime_ns);
            Meta { perm: e.perm & 0o7777, uid: e.uid, gid: e.gid, mtime: m, ctime: m, atime: m }
        };
        let default_meta = |perm: u32| Meta { perm, uid, gid, mtime: t, ctime: t, atime: t };
        let meta_for =
            |key: &str, default_perm: u32| sidecar.get(key).map_or_else(|| default_meta(default_perm), meta_of);
        // Metadata and attributes from one lookup: on a million entries each lookup is a cache miss.
        let entry_for = |key: &str, default_perm: u32| match sidecar.get(key) {
            Some(e) => Ok((meta_of(e), e.xattrs().map_err(|e| FsError::Io(e.to_string()))?)),
            None => Ok((default_meta(default_perm), None)),
        };
        let (root_meta, root_xattrs) = entry_for("", 0o755)?;
        let mut table = Table::new(root_meta);
        table.get_mut(ROOT)?.xattrs = root_xattrs;
        table.reserve_below(numbering.next);
        table.reserve(manifest.entries());
        // (directory, its inode, its path, its sidecar key)
        let mut stack: Vec<(&Dir, Ino, Vec<&[u8]>, String)> = vec![(manifest.root(), ROOT, Vec::new(), String::new())];
        let mut key = String::new();
        let mut name_buf = Vec::new();
        while let Some((dir, ino, path, dir_key)) = stack.pop() {
            let mut made = Vec::with_capacity(dir.len());
            for (name, entry) in dir.iter() {
                key.clear();
                // A sidecar-less tree (a mount by hash) has no key to look up; only directories need theirs.
                if !sidecar.is_empty() || matches!(entry, Entry::Dir(_)) {
                    if !dir_key.is_empty() {
                        key.push_str(&dir_key);
                        key.push('/');
                    }
                    name_buf.clear();
                    crate::manifest::escape_into(&mut name_buf, name);
                    key.push_str(std::str::from_utf8(&name_buf).expect("escaping leaves only valid UTF-8"));
                }
                let path_of = || {
                    let mut p = path.clone();
                    p.push(&name[..]);
                    p
                };
                let number_of = || if numbers.is_empty() { None } else { number(&path_of()) };
                match entry {
                    Entry::Dir(d) => {
                        let (meta, xattrs) = entry_for(&key, 0o755)?;
                        made.push((&name[..], Body::Dir(Default::default()), meta, number_of(), xattrs));
                        stack.push((d, 0, path_of(), key.clone()));
                    }
                    Entry::File(f) => {
                        let mut x = Extents::new();
                        for s in f.segments() {
                            x.push(s.len, Source::Stored { block: manifest.block(s.block).clone(), offset: s.offset });
                        }
                        let (meta, xattrs) = entry_for(&key, 0o644)?;
                        made.push((&name[..], Body::File(x), meta, number_of(), xattrs));
                    }
                }
            }
            // The directories just pushed learn their inode numbers now.
            let first_new_dir = stack.len() - made.iter().filter(|m| matches!(m.1, Body::Dir(_))).count();
            let inos = table.create_sorted(ino, made)?;
            let mut next_dir = first_new_dir;
            for (child, is_dir) in inos {
                if is_dir {
                    stack[next_dir].1 = child;
                    next_dir += 1;
                }
            }
        }
        // Symlinks live only in the sidecar.
        for (key, target) in sidecar.symlinks() {
            let comps = sidecar::components(key).map_err(|e| FsError::Io(e.to_string()))?;
            let Some((name, dirs)) = comps.split_last() else { continue };
            let mut parent = ROOT;
            for d in dirs {
                parent = table.lookup(parent, d)?;
            }
            let target = sidecar::unescape_target(target).map_err(|e| FsError::Io(e.to_string()))?;
            let comps: Vec<&[u8]> = comps.iter().map(|c| &c[..]).collect();
            table.create_as(parent, name, Body::Symlink(target.into()), meta_for(key, 0o777), number(&comps))?;
        }
        // Creating entries touched their directories: put back the committed times.
        let dirs: Vec<(Ino, String)> = {
            let mut out = vec![(ROOT, String::new())];
            let mut i = 0;
            while i < out.len() {
                let (ino, key) = out[i].clone();
                for (name, child) in table.entries(ino)?.collect::<Vec<_>>() {
                    if table.get(child)?.kind() == Kind::Dir {
                        let k = if key.is_empty() {
                            sidecar::key([name])
                        } else {
                            format!("{key}/{}", sidecar::key([name]))
                        };
                        out.push((child, k));
                    }
                }
                i += 1;
            }
            out
        };
        for (ino, key) in dirs {
            table.get_mut(ino)?.meta = meta_for(&key, 0o755);
        }
        Ok(Self::with_table(table, store, rt, opts))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes held in buffers (not yet stored), and uploads in flight.
    pub fn buffered(&self) -> (u64, usize) {
        let st = self.lock();
        (st.memory, st.uploading)
    }

    /// Where the mount's buffered bytes are on their way to the store.
    pub fn upload_stats(&self) -> UploadStats {
        let st = self.lock();
        let mut s = UploadStats { held_bytes: st.memory, uploaded_bytes: st.uploaded_bytes, ..UploadStats::default() };
        for b in st.buffers.values() {
            match &b.data {
                BufData::Open(v) if !v.is_empty() => s.open_buffers += 1,
                BufData::Sealed { uploading: true, .. } => s.queued += 1,
                BufData::Sealed { error: Some(e), .. } => {
                    s.failed += 1;
                    s.last_error = Some(e.clone());
                }
                BufData::Sealed { .. } => s.queued += 1,
                _ => {}
            }
        }
        // An upload task holds a slot while it hashes and stores; the others wait for one.
        let busy = self.shared.opts.max_uploads.saturating_sub(self.shared.slots.available_permits());
        s.in_flight = busy.min(s.queued);
        s.queued -= s.in_flight;
        s
    }

    /// Uploads everything buffered and waits for it: what `fsctl flush --wait` asks for. Fails with the store's
    /// error if an upload fails after its retries (the data stays held).
    pub fn flush_all(&self) -> Result<(), FsError> {
        let st = self.lock();
        let all = st.buffers.keys().copied().collect();
        self.flush(st, all)
    }

    /// Bytes of memory the open buffers have reserved (their capacity, which can exceed what they hold).
    pub fn reserved(&self) -> u64 {
        let st = self.lock();
        st.buffers.values().map(|b| if let BufData::Open(v) = &b.data { v.capacity() as u64 } else { 0 }).sum()
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
                Body::Symlink(_) => return Err(FsError::Invalid("cannot truncate a symlink")),
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

    /// Writes `data` at `offset`. Returns once the bytes are in the file's buffer (not yet durable: see
    /// [`Filesystem::fsync`]); waits while buffers are over the memory budget.
    pub fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<usize, FsError> {
        let mut st = self.lock();
        match st.table.get(ino)?.body {
            Body::File(_) => {}
            Body::Dir(_) => return Err(FsError::IsDir),
            Body::Symlink(_) => return Err(FsError::Invalid("not a regular file")),
        }
        offset.checked_add(data.len() as u64).ok_or(FsError::Invalid("write past the largest file offset"))?;
        self.buffer_bytes(&mut st, ino, offset, data)?;
        if self.shared.journal.get().is_some() && st.unsynced.insert(ino) {
            self.shared.log(&st.table, |table| Some(Record::Unsynced { path: table.path(ino)? }));
        }
        let t = now();
        let i = st.table.get_mut(ino)?;
        i.meta.mtime = t;
        i.meta.ctime = t;
        st.generation += 1;
        drop(self.within_budget(st));
        Ok(data.len())
    }

    /// Copies `data` into the file's buffer(s) and points its extents at them (a file's bytes, not its times).
    fn buffer_bytes(&self, st: &mut State, ino: Ino, offset: u64, data: &[u8]) -> Result<(), FsError> {
        let mut done = 0;
        while done < data.len() {
            let id = match st.open_buffer.get(&ino) {
                Some(&id) => id,
                None => {
                    let id = BufId(st.next_buf);
                    st.next_buf += 1;
                    // A large first write looks like streaming: take the whole buffer at once instead of growing
                    // it by copies. A small one gets exactly its size, so many small files cost what they hold.
                    let first = data.len() - done;
                    let v = if first >= 128 << 10 {
                        st.spare.take().unwrap_or_else(|| crate::bigbuf::with_capacity(self.shared.opts.buffer_size))
                    } else {
                        Vec::with_capacity(first)
                    };
                    st.add_buffer(id, Buffer { owner: ino, data: BufData::Open(v), members: Vec::new() });
                    st.open_buffer.insert(ino, id);
                    id
                }
            };
            let room = self.shared.opts.buffer_size - st.buffers[&id].len();
            if room == 0 {
                if !Self::compact(st, id) {
                    self.seal(st, id);
                }
                continue;
            }
            let State { buffers, table, memory, .. } = st;
            let buf = buffers.get_mut(&id).expect("open buffers exist");
            let BufData::Open(v) = &mut buf.data else { unreachable!("open_buffer names an open buffer") };
            let n = room.min(data.len() - done);
            let at = v.len() as u64;
            v.extend_from_slice(&data[done..done + n]);
            *memory += n as u64;
            let Body::File(x) = &mut table.get_mut(ino)?.body else { unreachable!("checked above") };
            x.write(offset + done as u64, n as u64, Source::Buffer { id, offset: at });
            done += n;
        }
        Ok(())
    }

    /// Back-pressure: past the budget, waits for uploads to free memory.
    fn within_budget<'a>(&self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        while st.memory + st.spare.as_ref().map_or(0, |v| v.capacity() as u64) > self.shared.opts.memory_budget {
            if st.spare.take().is_some() {
                continue;
            }
            if st.uploading == 0 {
                let largest =
                    st.open_buffer.values().copied().max_by_key(|id| st.buffers.get(id).map_or(0, Buffer::len));
                match largest {
                    Some(id) => {
                        if !Self::compact(&mut st, id) {
                            self.seal(&mut st, id)
                        }
                    }
                    // Everything is sealed and nothing uploads: failed uploads hold the memory.
                    None => break,
                }
            }
            st = self.wait(st);
        }
        st
    }

    /// Drops the bytes of an open buffer that its file no longer reads (overwritten or truncated away), when
    /// they are at least half of it, by moving the live bytes down. Returns whether it did; the buffer then has
    /// room again. A file rewritten in place (a database, `fsx`) thus never stores its garbage.
    fn compact(st: &mut State, id: BufId) -> bool {
        let State { buffers, table, memory, .. } = st;
        let Some(buf) = buffers.get_mut(&id) else { return false };
        let BufData::Open(v) = &mut buf.data else { return false };
        let Ok(inode) = table.get_mut(buf.owner) else { return false };
        let Body::File(x) = &mut inode.body else { return false };
        let live = x.buffer_ranges(id);
        let live_bytes: u64 = live.iter().map(|r| r.1).sum();
        if v.is_empty() || live_bytes * 2 > v.len() as u64 {
            return false;
        }
        // (old offset, new offset) of each live range, in buffer order: ranges only move down.
        let mut moves = Vec::with_capacity(live.len());
        let mut at = 0u64;
        for &(off, len) in &live {
            v.copy_within(off as usize..(off + len) as usize, at as usize);
            moves.push((off, at));
            at += len;
        }
        *memory -= v.len() as u64 - at;
        v.truncate(at as usize);
        x.remap_buffer(id, |o| {
            let i = moves.partition_point(|&(off, _)| off <= o) - 1;
            let (off, new) = moves[i];
            new + (o - off)
        });
        true
    }

    fn wait<'a>(&self, st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let (st, _) =
            self.shared.uploaded.wait_timeout(st, Duration::from_millis(100)).unwrap_or_else(|p| p.into_inner());
        st
    }

    /// Seals buffer `id` (if open) and starts its upload.
    fn seal(&self, st: &mut State, id: BufId) {
        let Some(buf) = st.buffers.get_mut(&id) else { return };
        if let BufData::Open(v) = &mut buf.data {
            let data = Bytes::from(std::mem::take(v));
            buf.data = BufData::Sealed { data, uploading: false, error: None };
            st.open_buffer.remove(&buf.owner);
        }
        self.start_upload(st, id);
    }

    fn start_upload(&self, st: &mut State, id: BufId) {
        let Some(Buffer { data: BufData::Sealed { data, uploading, error }, .. }) = st.buffers.get_mut(&id) else {
            return;
        };
        if *uploading {
            return;
        }
        *uploading = true;
        *error = None;
        st.uploading += 1;
        let data = data.clone();
        let shared = self.shared.clone();
        self.shared.rt.spawn(async move {
            let result = upload(&shared, data).await;
            let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            st.uploading -= 1;
            match result {
                Ok(locator) => {
                    st.uploaded_bytes += locator.size();
                    if let Some(buf) = st.remove_buffer(id) {
                        st.memory -= buf.len() as u64;
                        let Buffer { owner: buf_owner, data, members } = buf;
                        if let BufData::Sealed { data, .. } = data {
                            shared.keep_spare(&mut st, data);
                        }
                        // A plain buffer is its own block; a pack holds each member at its offset.
                        let moves: Vec<(BufId, u64)> = if buf_owner == PACK {
                            members
                                .iter()
                                .filter_map(|m| match st.buffers.get(m).map(|b| &b.data) {
                                    Some(BufData::InPack { at, .. }) => Some((*m, *at)),
                                    _ => None,
                                })
                                .collect()
                        } else {
                            vec![(id, 0)]
                        };
                        for (member, at) in moves {
                            let owner = if member == id {
                                buf_owner
                            } else {
                                let Some(m) = st.remove_buffer(member) else { continue };
                                st.memory -= m.len() as u64;
                                m.owner
                            };
                            if let Ok(i) = st.table.get_mut(owner)
                                && let Body::File(x) = &mut i.body
                            {
                                let changed = x.buffer_stored_at(member, &locator, at);
                                let mtime_ns = to_ns(i.meta.mtime);
                                shared.log(&st.table, |table| {
                                    let ranges = changed
                                        .into_iter()
                                        .map(|(at, len, offset)| StoredRange {
                                            at,
                                            len,
                                            locator: locator.to_string(),
                                            offset,
                                        })
                                        .collect::<Vec<_>>();
                                    if ranges.is_empty() {
                                        return None;
                                    }
                                    Some(Record::Stored { path: table.path(owner)?, ranges, mtime_ns })
                                });
                            }
                            if !st.holds_unstored(owner) && st.unsynced.remove(&owner) {
                                shared.log(&st.table, |table| Some(Record::Synced { path: table.path(owner)? }));
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "upload failed; the data stays in memory for a later retry");
                    if let Some(Buffer { data: BufData::Sealed { uploading, error, .. }, .. }) = st.buffers.get_mut(&id)
                    {
                        *uploading = false;
                        *error = Some(e.to_string());
                    }
                }
            }
            shared.uploaded.notify_all();
        });
    }

    /// The error of a failed upload of this file's bytes, if any (they are still held; `fsync` retries). What
    /// `write` and `close` report, so that a store failure reaches the writer.
    pub fn upload_error(&self, ino: Ino) -> Result<(), FsError> {
        let st = self.lock();
        for b in st.owned_by(ino).iter().filter_map(|id| st.buffers.get(id)) {
            let sealed = match &b.data {
                BufData::InPack { pack, .. } => st.buffers.get(pack).map(|p| &p.data),
                data => Some(data),
            };
            if let Some(BufData::Sealed { error: Some(e), .. }) = sealed {
                return Err(FsError::Io(e.clone()));
            }
        }
        Ok(())
    }

    /// What `close` of a writer reports: writes lost with a cafsd that died (once, and only to a handle opened
    /// before the restart: `stale`; see [`Filesystem::fsync_handle`]), or a failed upload of this file's bytes.
    pub fn close_error(&self, ino: Ino, stale: bool) -> Result<(), FsError> {
        if stale {
            self.take_lost(&mut self.lock(), ino)?;
        }
        self.upload_error(ino)
    }

    /// Reports, once, that a recovery found this file holding bytes only in the memory of the cafsd that died:
    /// writes that cafsd acknowledged may be missing. Once reported, the journal says the file is whole as it
    /// stands (so a later recovery does not report it again); until then a recovery reports it again.
    fn take_lost(&self, st: &mut State, ino: Ino) -> Result<(), FsError> {
        if st.lost.remove(&ino) {
            // (Written to since: its own `Synced` comes when those bytes land.)
            if !st.unsynced.contains(&ino) {
                self.shared.log(&st.table, |table| Some(Record::Synced { path: table.path(ino)? }));
            }
            return Err(FsError::Io(
                "writes to this file that were not yet stored were lost when cafsd stopped abruptly (kill -9 or a \
                 crash); what was fsynced is intact"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Makes the file's bytes durable in the block store: seals its buffer, (re)starts its uploads and waits for
    /// them. Fails with the store's error if an upload fails after retries; the data stays held.
    pub fn fsync(&self, ino: Ino) -> Result<(), FsError> {
        self.fsync_handle(ino, false)
    }

    /// [`Filesystem::fsync`] through a file handle; `stale` when the handle was opened before cafsd restarted.
    /// After a recovery, the first `fsync` (or `close`) through such a handle of a file whose unstored writes
    /// died with the old cafsd fails with `EIO`: a resent `fsync` must not claim bytes that are gone. A handle
    /// opened since never held those writes and is not told; its successful `fsync` makes the journal say the
    /// file is whole as it stands.
    pub fn fsync_handle(&self, ino: Ino, stale: bool) -> Result<(), FsError> {
        let mut st = self.lock();
        st.table.get(ino)?;
        let lost = if stale { self.take_lost(&mut st, ino) } else { Ok(()) };
        let mine = st.owned_by(ino).to_vec();
        self.flush(st, mine)?;
        lost?;
        let st = self.lock();
        if st.lost.contains(&ino) && !st.unsynced.contains(&ino) {
            self.shared.log(&st.table, |table| Some(Record::Synced { path: table.path(ino)? }));
        }
        drop(st);
        // The landing of each upload was journaled when it landed: now make that (and all before it) durable.
        self.sync_journal()
    }

    /// Makes every change recorded so far durable in the journal (a no-op without one).
    pub fn sync_journal(&self) -> Result<(), FsError> {
        match self.shared.journal.get() {
            Some(j) => j.sync().map_err(|e| match e.errno() {
                Some(libc::ENOSPC) => FsError::NoSpace(e.to_string()),
                _ => FsError::Io(e.to_string()),
            }),
            None => Ok(()),
        }
    }

    /// Records every later change in `journal`. At most one journal per tree; attach it after any replay.
    pub fn attach_journal(&self, journal: Arc<Journal>) {
        let _st = self.lock();
        if self.shared.journal.set(journal).is_err() {
            tracing::error!("a journal is already attached; keeping the first");
        }
    }

    pub fn journal(&self) -> Option<&Arc<Journal>> {
        self.shared.journal.get()
    }

    /// Applies journal records on top of this tree (loaded from the journal's base), in order. Fails on a
    /// record that does not apply, naming it.
    ///
    /// Files the records leave unsynced (see [`Record::Unsynced`]) come out marked as having lost writes.
    pub fn replay(&self, records: &[Record]) -> Result<(), FsError> {
        let mut st = self.lock();
        assert!(self.shared.journal.get().is_none(), "replay before attaching a journal");
        for (n, r) in records.iter().enumerate() {
            Self::apply(&mut st, r).map_err(|e| FsError::Io(format!("journal record {} ({r:?}): {e}", n + 1)))?;
            Self::reap(&mut st);
        }
        let unsynced = std::mem::take(&mut st.unsynced);
        let mut named = Vec::new();
        for ino in unsynced {
            if let Some(path) = st.table.path(ino) {
                if named.len() < 5 {
                    named.push(String::from_utf8_lossy(&path).into_owned());
                }
                st.lost.insert(ino);
            }
        }
        if !st.lost.is_empty() {
            tracing::warn!(
                files = st.lost.len(),
                some = ?named,
                "bytes written to these files but not yet stored died with the previous cafsd; the next fsync or \
                 close of each fails with EIO"
            );
        }
        Ok(())
    }

    /// Files a recovery marked as having lost writes (paths), for status and tests.
    pub fn lost_writes(&self) -> Vec<Vec<u8>> {
        let st = self.lock();
        st.lost.iter().filter_map(|&ino| st.table.path(ino)).collect()
    }

    fn apply(st: &mut State, r: &Record) -> Result<(), FsError> {
        let t = now();
        match r {
            Record::Header(_) => return Err(FsError::Invalid("a header inside the records")),
            // A commit marker changes nothing in the tree (see `journal::rebase`).
            Record::Committing { .. } => return Ok(()),
            Record::Unsynced { path } => {
                let (ino, ..) = st.table.resolve(path)?;
                st.unsynced.insert(ino);
                return Ok(());
            }
            Record::Synced { path } => {
                let (ino, ..) = st.table.resolve(path)?;
                st.unsynced.remove(&ino);
                return Ok(());
            }
            Record::Xattr { path, name, value } => {
                let (ino, ..) = st.table.resolve(path)?;
                let i = st.table.get_mut(ino)?;
                match xattr::change(&mut i.xattrs, name, value.as_deref(), SetMode::Any) {
                    // A removal of what is not there leaves what replay wants.
                    Err(FsError::NoAttr) if value.is_none() => {}
                    r => r?,
                }
            }
            Record::Make { path, ino, kind, meta } => {
                let (dir, name) = st.table.resolve_parent(path)?;
                let body = match kind {
                    MadeKind::Dir => Body::Dir(Default::default()),
                    MadeKind::File => Body::File(Extents::new()),
                    MadeKind::Symlink(target) => Body::Symlink(target.clone().into()),
                };
                let m = from_ns(meta.mtime_ns);
                let meta =
                    Meta { perm: meta.perm & 0o7777, uid: meta.uid, gid: meta.gid, mtime: m, ctime: m, atime: m };
                st.table.create_as(dir, &name, body, meta, Some(*ino))?;
            }
            Record::Unlink { path } => {
                let (dir, name) = st.table.resolve_parent(path)?;
                st.table.unlink(dir, &name, t)?;
            }
            Record::Rmdir { path } => {
                let (dir, name) = st.table.resolve_parent(path)?;
                st.table.rmdir(dir, &name, t)?;
            }
            Record::Rename { from, to, mode } => {
                let (a, an) = st.table.resolve_parent(from)?;
                let (b, bn) = st.table.resolve_parent(to)?;
                let mode = match mode {
                    0 => RenameMode::Replace,
                    1 => RenameMode::NoReplace,
                    2 => RenameMode::Exchange,
                    _ => return Err(FsError::Invalid("unknown rename mode")),
                };
                st.table.rename(a, &an, b, &bn, mode, t)?;
            }
            Record::SetAttr { path, size, perm, uid, gid, mtime_ns } => {
                let (ino, ..) = st.table.resolve(path)?;
                let set = SetAttr {
                    size: *size,
                    perm: *perm,
                    uid: *uid,
                    gid: *gid,
                    mtime: mtime_ns.map(from_ns),
                    ..SetAttr::default()
                };
                Self::set_attr(st, ino, &set, t)?;
            }
            Record::Stored { path, ranges, mtime_ns } => {
                let (ino, ..) = st.table.resolve(path)?;
                let i = st.table.get_mut(ino)?;
                let Body::File(x) = &mut i.body else { return Err(FsError::Invalid("stored bytes for a non-file")) };
                for r in ranges {
                    r.at.checked_add(r.len).ok_or(FsError::Invalid("a stored range past the largest offset"))?;
                    let block = Locator::parse(&r.locator).map_err(|e| FsError::Io(e.to_string()))?;
                    if r.offset.checked_add(r.len).is_none_or(|end| end > block.size()) {
                        return Err(FsError::Invalid("a stored range beyond its block"));
                    }
                    x.write(r.at, r.len, Source::Stored { block, offset: r.offset });
                }
                i.meta.mtime = from_ns(*mtime_ns);
            }
        }
        st.generation += 1;
        Ok(())
    }

    /// Packs small open buffers into shared buffers of up to `buffer_size`, and starts their uploads. Returns
    /// the packs.
    fn pack(&self, st: &mut State, small: Vec<BufId>) -> Vec<BufId> {
        let mut packs = Vec::new();
        let mut group: Vec<BufId> = Vec::new();
        let mut size = 0;
        let mut flush_group = |st: &mut State, group: &mut Vec<BufId>| {
            if group.is_empty() {
                return;
            }
            let pack_id = BufId(st.next_buf);
            st.next_buf += 1;
            let mut data = Vec::with_capacity(group.iter().map(|id| st.buffers[id].len()).sum());
            for id in group.iter() {
                let b = st.buffers.get_mut(id).expect("picked from the map");
                let BufData::Open(v) = std::mem::replace(&mut b.data, BufData::Open(Vec::new())) else {
                    unreachable!("only open buffers are packed")
                };
                let at = data.len() as u64;
                data.extend_from_slice(&v);
                b.data = BufData::InPack { data: Bytes::from(v), pack: pack_id, at };
                let owner = b.owner;
                st.open_buffer.remove(&owner);
            }
            st.memory += data.len() as u64;
            let members = std::mem::take(group);
            st.add_buffer(
                pack_id,
                Buffer {
                    owner: PACK,
                    data: BufData::Sealed { data: Bytes::from(data), uploading: false, error: None },
                    members,
                },
            );
            self.start_upload(st, pack_id);
            packs.push(pack_id);
        };
        for id in small {
            let len = st.buffers[&id].len();
            if size + len > self.shared.opts.buffer_size {
                flush_group(st, &mut group);
                size = 0;
            }
            group.push(id);
            size += len;
        }
        flush_group(st, &mut group);
        packs
    }

    /// Seals and uploads the buffers `picked` (packing the small ones together), and waits for them.
    fn flush(&self, mut st: MutexGuard<'_, State>, picked: Vec<BufId>) -> Result<(), FsError> {
        let mut ids = Vec::new();
        let mut small = Vec::new();
        for id in picked {
            match &st.buffers[&id].data {
                BufData::Open(v) if v.is_empty() => {}
                BufData::Open(v) if v.len() < PACK_BELOW => small.push(id),
                BufData::InPack { pack, .. } => ids.push(*pack),
                _ => ids.push(id),
            }
        }
        small.sort();
        ids.sort();
        ids.dedup();
        // Uploads already in flight were started before this call, perhaps while the store was failing: one of
        // them that fails gets a fresh attempt here rather than making this call report an old failure.
        let mut inherited: Vec<BufId> = ids
            .iter()
            .copied()
            .filter(|id| matches!(st.buffers.get(id).map(|b| &b.data), Some(BufData::Sealed { uploading: true, .. })))
            .collect();
        for &id in &ids {
            self.seal(&mut st, id);
        }
        let packs = self.pack(&mut st, small);
        ids.extend(packs);
        loop {
            let mut pending = false;
            let mut failed = None;
            for id in &ids {
                match st.buffers.get(id).map(|b| &b.data) {
                    Some(BufData::Sealed { uploading: true, .. }) => pending = true,
                    Some(BufData::Sealed { error: Some(e), .. }) => {
                        if let Some(i) = inherited.iter().position(|x| x == id) {
                            inherited.swap_remove(i);
                            self.start_upload(&mut st, *id);
                            pending = true;
                        } else {
                            failed.get_or_insert_with(|| e.clone());
                        }
                    }
                    _ => {}
                }
            }
            if !pending {
                return failed.map_or(Ok(()), |e| Err(FsError::Io(e)));
            }
            st = self.wait(st);
        }
    }

    /// Reads up to `len` bytes at `offset`. A read that continues the file's previous one also starts fetches
    /// of the blocks within `readahead` past it, so that a sequential reader finds them fetched (and verified).
    /// A read within one stored block is a view of the cached block, not a copy.
    pub fn read(&self, ino: Ino, offset: u64, len: u64) -> Result<Bytes, FsError> {
        enum Piece {
            Zeros(usize),
            Copied(Bytes),
            Stored(Locator, usize, usize),
        }
        let mut pieces = Vec::new();
        let mut total = 0u64;
        let mut ahead: Vec<Locator> = Vec::new();
        {
            let mut st = self.lock();
            let State { table, buffers, read_ends, .. } = &mut *st;
            let x = match &table.get(ino)?.body {
                Body::File(x) => x,
                Body::Dir(_) => return Err(FsError::IsDir),
                Body::Symlink(_) => return Err(FsError::Invalid("not a regular file")),
            };
            for piece in x.read_plan(offset, len) {
                total += piece.len;
                pieces.push(match piece.src {
                    Source::Hole => Piece::Zeros(piece.len as usize),
                    Source::Buffer { id, offset } => {
                        let buf = buffers.get(&id).ok_or_else(|| FsError::Io("buffer vanished".into()))?;
                        Piece::Copied(Bytes::copy_from_slice(buf.bytes(offset, piece.len)))
                    }
                    Source::Stored { block, offset } => Piece::Stored(block, offset as usize, piece.len as usize),
                });
            }
            let end = offset + total;
            // Several kernel threads read ahead at once, so a sequential stream arrives slightly out of order.
            let previous = read_ends.insert(ino, end);
            let sequential = offset == 0 || previous.is_some_and(|p| p.abs_diff(offset) <= READ_ORDER_SLACK);
            if sequential && self.shared.opts.readahead > 0 && total > 0 {
                for piece in x.read_plan(end, self.shared.opts.readahead) {
                    if let Source::Stored { block, .. } = piece.src
                        && !ahead.contains(&block)
                        && !pieces.iter().any(|p| matches!(p, Piece::Stored(b, ..) if *b == block))
                    {
                        ahead.push(block);
                    }
                }
            }
        }
        for block in ahead {
            if self.shared.cache.has(&block) {
                continue;
            }
            let shared = self.shared.clone();
            self.shared.rt.spawn(async move {
                // A failure here is reported by the read that needs the block (which fetches it again).
                if let Err(e) = shared.cache.get(shared.store.as_ref(), &block).await {
                    tracing::debug!(error = %e, %block, "read-ahead failed");
                }
            });
        }
        // Stored pieces are fetched without the lock.
        let fetch = |block: &Locator| {
            self.shared
                .rt
                .block_on(self.shared.cache.get(self.shared.store.as_ref(), block))
                .map_err(|e| FsError::Io(e.to_string()))
        };
        if let [Piece::Stored(block, off, n)] = pieces.as_slice() {
            return Ok(fetch(block)?.slice(*off..off + n));
        }
        let mut out = Vec::with_capacity(total as usize);
        for piece in pieces {
            match piece {
                Piece::Zeros(n) => out.resize(out.len() + n, 0),
                Piece::Copied(b) => out.extend_from_slice(&b),
                Piece::Stored(block, off, n) => out.extend_from_slice(&fetch(&block)?[off..off + n]),
            }
        }
        Ok(Bytes::from(out))
    }

    /// Rewrites stored pieces into new buffers (which the next flush packs into new blocks), so that a commit
    /// no longer refers to blocks that are mostly garbage. A piece the tree changed meanwhile is left alone.
    /// Contents and times stay as they are.
    fn repack(&self, pieces: Vec<LivePiece>) -> Result<(), FsError> {
        let mut by_block: HashMap<Locator, Vec<(Ino, u64, u64, u64)>> = HashMap::new();
        for (ino, at, block, offset, len) in pieces {
            by_block.entry(block).or_default().push((ino, at, offset, len));
        }
        tracing::info!(blocks = by_block.len(), "repacking blocks that are mostly garbage");
        for (block, pieces) in by_block {
            let data = self
                .shared
                .rt
                .block_on(self.shared.cache.get(self.shared.store.as_ref(), &block))
                .map_err(|e| FsError::Io(e.to_string()))?;
            for (ino, at, offset, len) in pieces {
                let mut st = self.lock();
                let unchanged = match st.table.get(ino).map(|i| &i.body) {
                    Ok(Body::File(x)) => {
                        let plan = x.read_plan(at, len);
                        plan.len() == 1
                            && plan[0].len == len
                            && plan[0].src == Source::Stored { block: block.clone(), offset }
                    }
                    _ => false,
                };
                if unchanged {
                    self.buffer_bytes(&mut st, ino, at, &data[offset as usize..(offset + len) as usize])?;
                    drop(self.within_budget(st));
                }
            }
        }
        Ok(())
    }

    /// The committed form of the tree: uploads every buffer, then builds the manifest and the sidecar. Holes are
    /// stored as references to a block of zeros.
    pub fn snapshot(&self) -> Result<(Manifest, Vec<u8>), FsError> {
        self.snapshot_at().map(|s| (s.manifest, s.sidecar))
    }

    /// [`Filesystem::snapshot`], with the sequence number of the last journal record the snapshot reflects (0
    /// without a journal) and the entries' inode numbers then.
    pub fn snapshot_at(&self) -> Result<Snapshot, FsError> {
        let seq = |_st: &State| self.shared.journal.get().map_or(0, |j| j.seq());
        let done = |st: &mut State, (manifest, sidecar): (Manifest, Vec<u8>)| {
            // Everything is stored now: a file still marked unsynced (a buffer emptied without landing) is not,
            // and must say so before the checkpoint drops its `Unsynced` record, or its next writes would go
            // unjournaled as such.
            for ino in std::mem::take(&mut st.unsynced) {
                self.shared.log(&st.table, |table| Some(Record::Synced { path: table.path(ino)? }));
            }
            let (inos, next) = st.table.numbering();
            Ok(Snapshot { manifest, sidecar, seq: seq(st), numbering: Numbering { inos, next } })
        };
        let mut repacked = false;
        loop {
            let st = self.lock();
            let all = st.buffers.keys().copied().collect();
            self.flush(st, all)?;
            let mut st = self.lock();
            if st.buffers.values().any(|b| !matches!(&b.data, BufData::Open(v) if v.is_empty())) {
                // Written meanwhile: flush again.
                continue;
            }
            if !repacked {
                repacked = true;
                let pieces = garbage_pieces(&st, self.shared.opts.buffer_size as u64 / 16);
                if !pieces.is_empty() {
                    drop(st);
                    self.repack(pieces)?;
                    continue;
                }
            }
            let hole = longest_hole(&st);
            if hole > 0 {
                drop(st);
                let zeros =
                    Block::new(vec![0u8; hole.min(MAX_BLOCK_SIZE) as usize]).map_err(|e| FsError::Io(e.to_string()))?;
                self.shared
                    .rt
                    .block_on(put_with_retry(&self.shared, &zeros))
                    .map_err(|e| FsError::Io(e.to_string()))?;
                let mut st = self.lock();
                // Holes of any length map onto the zero block in pieces; only new writes send us round again.
                if st.buffers.values().any(|b| b.len() > 0) {
                    continue;
                }
                let built = build(&st, Some(zeros.locator()));
                return done(&mut st, built);
            }
            let built = build(&st, None);
            return done(&mut st, built);
        }
    }
}

/// The committed form of a tree, and where it stands in the journal.
#[derive(Debug)]
pub struct Snapshot {
    pub manifest: Manifest,
    pub sidecar: Vec<u8>,
    /// The last journal record the snapshot reflects.
    pub seq: u64,
    pub numbering: Numbering,
}

/// A stored piece of a file that is to be rewritten: file, offset in it, block, offset in the block, length.
type LivePiece = (Ino, u64, Locator, u64, u64);

/// The pieces of the tree stored in blocks that are mostly garbage (bytes no file reads any more, after
/// overwrites and truncations): at most a quarter of the block live, and at least `min_garbage` bytes dead.
fn garbage_pieces(st: &State, min_garbage: u64) -> Vec<LivePiece> {
    let files = tree_files(st);
    let mut live: HashMap<&Locator, u64> = HashMap::new();
    for (_, x) in &files {
        for e in x.iter() {
            if let Source::Stored { block, .. } = &e.src {
                *live.entry(block).or_default() += e.len;
            }
        }
    }
    let mostly_garbage = |b: &Locator| {
        let l = live.get(b).copied().unwrap_or(0);
        l * 4 <= b.size() && b.size() - l >= min_garbage.max(1)
    };
    let mut pieces = Vec::new();
    for (ino, x) in files {
        let mut at = 0;
        for e in x.iter() {
            if let Source::Stored { block, offset } = &e.src
                && mostly_garbage(block)
            {
                pieces.push((ino, at, block.clone(), *offset, e.len));
            }
            at += e.len;
        }
    }
    pieces
}

/// Every regular file in the tree (reachable from the root), with its extents.
fn tree_files(st: &State) -> Vec<(Ino, &Extents)> {
    let mut files = Vec::new();
    let mut stack = vec![ROOT];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = st.table.entries(dir) else { continue };
        for (_, ino) in entries {
            match st.table.get(ino).map(|i| &i.body) {
                Ok(Body::Dir(_)) => stack.push(ino),
                Ok(Body::File(x)) => files.push((ino, x)),
                _ => {}
            }
        }
    }
    files
}

fn longest_hole(st: &State) -> u64 {
    tree_files(st)
        .iter()
        .flat_map(|(_, x)| x.iter())
        .filter(|e| e.src == Source::Hole)
        .map(|e| e.len)
        .max()
        .unwrap_or(0)
}

/// Builds the manifest and sidecar of a tree whose files are all stored (no buffer references).
fn build(st: &State, zeros: Option<&Locator>) -> (Manifest, Vec<u8>) {
    let mut m = Manifest::new();
    let mut sc = Sidecar { version: sidecar::VERSION, entries: Default::default() };
    let zero_id = zeros.map(|z| m.add_block(z.clone()));
    let meta = |i: &super::inode::Inode, symlink: Option<String>| EntryMeta {
        perm: i.meta.perm,
        uid: i.meta.uid,
        gid: i.meta.gid,
        mtime_ns: to_ns(i.meta.mtime),
        symlink,
        xattrs: EntryMeta::escape_xattrs(i.xattrs.as_deref()),
    };
    if let Ok(root) = st.table.get(ROOT) {
        sc.entries.insert(String::new(), meta(root, None));
    }
    let mut stack: Vec<(Ino, Vec<Vec<u8>>)> = vec![(ROOT, Vec::new())];
    while let Some((dir, path)) = stack.pop() {
        let Ok(entries) = st.table.entries(dir) else { continue };
        for (name, ino) in entries {
            let Ok(inode) = st.table.get(ino) else { continue };
            let mut p = path.clone();
            p.push(name.to_vec());
            let key = sidecar::key(p.iter().map(Vec::as_slice));
            let mut mdir = m.root_mut();
            for c in &path {
                mdir = mdir.subdir(c).expect("directories of the tree are valid manifest directories");
            }
            match &inode.body {
                Body::Dir(_) => {
                    mdir.subdir(name).expect("valid directory name");
                    sc.entries.insert(key, meta(inode, None));
                    stack.push((ino, p));
                }
                Body::File(x) => {
                    let mut segs = Vec::new();
                    for e in x.iter() {
                        match &e.src {
                            Source::Stored { block, offset } => segs.push((Some(block.clone()), *offset, e.len)),
                            Source::Hole => {
                                let z = zeros.expect("holes were measured").size();
                                let mut left = e.len;
                                while left > 0 {
                                    let n = left.min(z);
                                    segs.push((None, 0, n));
                                    left -= n;
                                }
                            }
                            Source::Buffer { .. } => unreachable!("snapshot flushed every buffer"),
                        }
                    }
                    let ids: Vec<_> = segs
                        .into_iter()
                        .map(|(b, o, n)| (b.map_or_else(|| zero_id.expect("zero block"), |b| m.add_block(b)), o, n))
                        .collect();
                    let mut mdir = m.root_mut();
                    for c in &path {
                        mdir = mdir.subdir(c).expect("valid");
                    }
                    let f = mdir.file(name).expect("valid file name");
                    for (block, offset, len) in ids {
                        f.push(Segment { block, offset, len });
                    }
                    sc.entries.insert(key, meta(inode, None));
                }
                Body::Symlink(target) => {
                    sc.entries.insert(key, meta(inode, Some(sidecar::escape_target(target))));
                }
            }
        }
    }
    (m, sc.to_bytes())
}

/// Whether the entry `ino` of `table` at `path` is the same in `manifest` + `sidecar`: a directory still a
/// directory, a file with the same bytes (the same pieces of the same blocks), a symlink with the same target.
fn same_entry(table: &Table, ino: Ino, path: &[u8], manifest: &Manifest, sidecar: &sidecar::Index) -> bool {
    let Ok(inode) = table.get(ino) else { return false };
    let comps: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
    let mut dir = manifest.root();
    let mut found = None;
    for (i, c) in comps.iter().enumerate() {
        match dir.get(c) {
            Some(Entry::Dir(d)) if i + 1 < comps.len() => dir = d,
            Some(e) if i + 1 == comps.len() => found = Some(e),
            _ => break,
        }
    }
    match (&inode.body, found) {
        (Body::Dir(_), Some(Entry::Dir(_))) => true,
        (Body::File(x), Some(Entry::File(f))) => {
            // Both as (block, offset, length) runs, adjacent pieces of one block merged.
            let mut old: Vec<(Option<&Locator>, u64, u64)> = Vec::new();
            let plan = x.read_plan(0, x.size());
            for piece in &plan {
                let (block, off) = match &piece.src {
                    Source::Stored { block, offset } => (Some(block), *offset),
                    Source::Hole => (None, 0),
                    Source::Buffer { .. } => return false,
                };
                push_run(&mut old, block, off, piece.len);
            }
            let mut new: Vec<(Option<&Locator>, u64, u64)> = Vec::new();
            for seg in f.segments() {
                push_run(&mut new, Some(manifest.block(seg.block)), seg.offset, seg.len);
            }
            old == new
        }
        (Body::Symlink(target), None) => {
            let key = sidecar::key(comps.iter().copied());
            sidecar.get(&key).and_then(|e| e.symlink.as_deref()).and_then(|t| sidecar::unescape_target(t).ok())
                == Some(target.to_vec())
        }
        _ => false,
    }
}

fn push_run<'a>(runs: &mut Vec<(Option<&'a Locator>, u64, u64)>, block: Option<&'a Locator>, off: u64, len: u64) {
    if let Some(last) = runs.last_mut()
        && last.0 == block
        && (block.is_none() || last.1 + last.2 == off)
    {
        last.2 += len;
        return;
    }
    runs.push((block, off, len));
}

/// Hashes and stores one sealed buffer, with retries.
async fn upload(shared: &Shared, data: Bytes) -> Result<Locator, StoreError> {
    let _slot = shared.slots.acquire().await.map_err(|_| StoreError::Unavailable("shutting down".into()))?;
    let block = tokio::task::spawn_blocking(move || Block::new(data))
        .await
        .map_err(|e| StoreError::Unavailable(format!("hashing task failed: {e}")))??;
    put_with_retry(shared, &block).await?;
    Ok(block.locator().clone())
}

/// A retry's wait: `delay` less up to half of it at random, so that many uploads failing together (a store
/// that went down) do not come back at the same instant.
pub(crate) fn jittered(delay: Duration) -> Duration {
    delay.saturating_sub(delay.mul_f64(fastrand::f64() / 2.0))
}

/// Puts a block, retrying errors that may go away with exponential backoff and jitter.
async fn put_with_retry(shared: &Shared, block: &Block) -> Result<(), StoreError> {
    let mut delay = shared.opts.retry_delay;
    let mut attempt = 1;
    loop {
        let limit = shared.opts.upload_timeout;
        let attempt_result = match tokio::time::timeout(limit, shared.store.put(block)).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!("the upload took over {} s", limit.as_secs_f64()))),
        };
        match attempt_result {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() && attempt < shared.opts.upload_attempts => {
                tracing::info!(attempt, error = %e, "upload failed; retrying");
                tokio::time::sleep(jittered(delay)).await;
                delay *= 2;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests;
