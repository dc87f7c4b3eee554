//! The virtual filesystem a mount shows, in the kernel's inode numbers, with no FUSE in it: what each kernel
//! request does, and which typed error it ends in. The `fuser` adapter ([`crate::fuse`]) only translates
//! requests into these calls and results into replies.
//!
//! A mount shows one collection (one [`View`], whose inode numbers the kernel sees unchanged) or the whole
//! catalog (a [`Namespace`]: its own directories, and a view per collection shown, each with its own range of
//! numbers). Every request is routed to the view that holds its inode and answered in the kernel's numbers.
//!
//! The control directory `.cafs` and its files take reserved numbers at the top of a view's range. `.cafs`
//! answers lookups in the root of a writable view but is never listed and cannot be created or removed. Hard
//! links are refused with `EPERM` (a collection has no way to say two names share bytes that later change
//! together), and so is a change to the namespace's own directories; a rename between two views is `EXDEV`.
//!
//! In a namespace mount every request that reaches a ref is checked against the ref's permissions for the
//! requesting uid (see [`namespace::access`]); a refusal is `EACCES`.
//!
//! The kernel may send a request a second time after a cafsd restart (it was read by a cafsd that died before
//! answering, and may have been done): such a request finds its own effect and succeeds (see [`Caller`]).

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::catalog::CatalogError;
use crate::collection::{Collection, CollectionError};
use crate::fs::inode::{INO_LIMIT, Kind};
use crate::fs::{Attr, FsError};

pub mod control;
mod gate;
pub mod namespace;
mod ops;
mod routing;
#[cfg(test)]
mod tests;
pub mod view;
#[cfg(any(test, feature = "test-suite"))]
pub mod workload;

pub use gate::{Gate, Live};
pub use namespace::Namespace;
pub use view::{Node, SLOT_SHIFT, View};

use control::{Control, ControlFile, MessageError};

/// How long the kernel may cache names and attributes that can change outside this mount: a followed ref's (a
/// commit elsewhere moves it), the namespace's own directories (refs are made elsewhere). The control files are
/// not cached at all (their contents change by themselves).
pub const TTL: Duration = Duration::from_secs(1);
/// For what changes only through this mount, so that the kernel's cache stays right however long it keeps it:
/// a writable collection (every change to it is a request the kernel sends, cafsd being its only writer) and a
/// collection by hash (it never changes). Names looked up and not found there are cached as long.
pub const LONG_TTL: Duration = Duration::from_secs(3600);

/// In a view's own numbers, above any the tree gives (and below where the view's number starts).
const CONTROL_DIR: u64 = (1 << SLOT_SHIFT) - 2;
const _: () = assert!(CONTROL_DIR - 16 > INO_LIMIT);

fn control_ino(f: ControlFile) -> u64 {
    CONTROL_DIR - 1 - ControlFile::ALL.iter().position(|&c| c == f).expect("listed") as u64
}

fn control_file(ino: u64) -> Option<ControlFile> {
    let i = CONTROL_DIR.checked_sub(ino)?.checked_sub(1)?;
    ControlFile::ALL.get(usize::try_from(i).ok()?).copied()
}

/// Why a request failed, with its kind kept; [`VfsError::errno`] is what the kernel hears.
#[derive(Debug, thiserror::Error)]
pub enum VfsError {
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A rename between two collections of a namespace mount (`EXDEV`: `mv` then copies).
    #[error("a rename between two collections")]
    CrossView,
    /// A rename flag cafs does not know.
    #[error("unknown rename flags")]
    RenameFlags,
    /// What was written to `.cafs/commit` is not a commit message.
    #[error("commit message refused: {0}")]
    Message(#[from] MessageError),
    /// A commit through `.cafs/commit` failed.
    #[error("commit through .cafs/commit: {0}")]
    Commit(#[source] CollectionError),
    /// A control file could not be read (its contents are made on read).
    #[error(".cafs/{file}: {error}")]
    Control { file: &'static str, error: CollectionError },
    /// The name is not there, and the kernel may remember that for this long (a negative entry): the
    /// directory changes only through this mount.
    #[error("no such file or directory")]
    Absent(Duration),
    /// A control file takes no writes (only `.cafs/commit` does).
    #[error(".cafs/{0} is read-only")]
    ControlReadOnly(&'static str),
}

impl VfsError {
    pub fn errno(&self) -> i32 {
        match self {
            VfsError::Fs(e) => e.errno(),
            VfsError::CrossView => libc::EXDEV,
            VfsError::RenameFlags => libc::EINVAL,
            VfsError::Message(e) => e.errno(),
            VfsError::Commit(CollectionError::Catalog(CatalogError::Denied(_))) => libc::EACCES,
            VfsError::Commit(_) | VfsError::Control { .. } => libc::EIO,
            VfsError::ControlReadOnly(_) => libc::EACCES,
            VfsError::Absent(_) => libc::ENOENT,
        }
    }
}

pub type Result<T, E = VfsError> = std::result::Result<T, E>;

/// Who sent a request, and whether the kernel sends it a second time (`FUSE_UNIQUE_RESEND`): read by a cafsd
/// that stopped before answering, it may have been done, in part or whole, before that cafsd died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub resent: bool,
}

/// An inode as the kernel is told of it: its attributes (`attr.ino` is the kernel's number), and how long the
/// kernel may keep them (and the name that led to it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub attr: Attr,
    pub ttl: Duration,
}

/// An opened file: its handle, and how the kernel should cache it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub fh: u64,
    /// Bypass the page cache (a control file, whose contents are made on each read).
    pub direct_io: bool,
    /// Keep cached pages across opens (what the inode holds never changes).
    pub keep_cache: bool,
}

/// A directory's entries for `readdir`, `.` and `..` first: name, the kernel's inode number, kind. An entry's
/// offset is its index + 1.
pub type Listing = Vec<(Vec<u8>, u64, Kind)>;

/// What a mount shows.
enum Space {
    /// One collection: the kernel's numbers are the tree's.
    One(Arc<View>),
    /// The whole catalog.
    Many(Arc<Namespace>),
}

/// A mount, FUSE-free: its views, its control files, its directory listings and its gate.
pub struct Vfs {
    space: Space,
    rt: tokio::runtime::Handle,
    /// Owner of the mount (the control files and the namespace's directories belong to it).
    uid: u32,
    gid: u32,
    gate: Arc<Gate>,
    /// This process's mark in the file handles it gives (see [`Vfs::handle`]).
    epoch: u64,
    /// Directory listings by (directory, handle), made at `opendir`: `readdir` then serves a page from the
    /// offset it is given instead of listing the directory again, which made listing a directory of n entries
    /// cost n²/page. Also what makes a listing stable while it is read.
    listings: Mutex<HashMap<(u64, u64), Arc<Listing>>>,
    next_dir_handle: AtomicU64,
}

impl Vfs {
    /// A mount of one collection.
    pub fn new(coll: Arc<Collection>, control: Arc<Control>, rt: tokio::runtime::Handle, uid: u32, gid: u32) -> Self {
        Self::with(Space::One(Arc::new(View::whole(coll, control))), rt, uid, gid)
    }

    /// A mount of the whole catalog.
    pub fn namespace(ns: Arc<Namespace>, rt: tokio::runtime::Handle, uid: u32, gid: u32) -> Self {
        Self::with(Space::Many(ns), rt, uid, gid)
    }

    fn with(space: Space, rt: tokio::runtime::Handle, uid: u32, gid: u32) -> Self {
        // Distinct per process start: the time in ms, folded to leave bit 0 for the writer flag; never 0, which
        // older cafsd versions used for every handle.
        let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_millis() as u64);
        let epoch = (ms ^ u64::from(std::process::id()) << 40) & (u64::MAX >> 1) | 1;
        // Directory handles start at a per-process point too, so that one given before a restart is unlikely to
        // meet a new one for the same directory (and then both name a listing of that directory anyway).
        let next_dir_handle = AtomicU64::new(epoch << 20);
        Self { space, rt, uid, gid, gate: Arc::default(), epoch, listings: Mutex::default(), next_dir_handle }
    }

    /// The gate in front of this mount's requests.
    pub fn gate(&self) -> Arc<Gate> {
        self.gate.clone()
    }

    /// Lets a request of kind `op` in (see [`Gate::enter`]).
    pub fn enter(&self, op: &'static str) -> Live<'_> {
        self.gate.enter(op)
    }

    /// File handles say how a file was opened and by which cafsd (cafs keeps no per-handle state): bit 0 is
    /// set for a writer (only a writer's `close` reports write errors), the rest is the serving process's
    /// epoch. The kernel keeps handles across a restart, so a handle from another epoch was opened before it:
    /// only such a handle hears, from `fsync` or `close`, of writes that died unstored with that cafsd — a file
    /// opened since never held them (as Linux reports a writeback error only to files open when it happened).
    fn handle(&self, writer: bool) -> u64 {
        self.epoch << 1 | u64::from(writer)
    }

    fn is_writer(fh: u64) -> bool {
        fh & 1 == 1
    }

    /// Whether `fh` was given by an earlier cafsd.
    fn stale(&self, fh: u64) -> bool {
        fh >> 1 != self.epoch
    }
}
