//! The FUSE adapter: a thin translation of kernel requests (through `fuser`) into calls on the filesystem core,
//! the namespace and the control files, and of [`FsError`]s into errnos. No filesystem logic lives here.
//!
//! A mount shows one collection (one [`View`], whose inode numbers the kernel sees unchanged) or the whole
//! catalog (a [`Namespace`]: its own directories, and a view per collection shown, each with its own range of
//! numbers). Every request is routed to the view that holds its inode and answered in that view's numbers,
//! turned back into the kernel's on the way out.
//!
//! The control directory `.cafs` and its files take reserved numbers at the top of a view's range. `.cafs`
//! answers lookups in the root of a writable view but is never listed and cannot be created or removed. Hard
//! links are refused with `EPERM` (a collection has no way to say two names share bytes that later change
//! together), and so is a change to the namespace's own directories; a rename between two views is `EXDEV`.
//!
//! In a namespace mount every request that reaches a ref is checked against the ref's permissions for the
//! requesting uid (see [`crate::namespace::access`]); a refusal is `EACCES`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::catalog::{CatalogError, Need, Principal};
use crate::collection::{Collection, CollectionError};
use crate::control::{self, Control, ControlFile};
use crate::fs::inode::{INO_LIMIT, Kind, ROOT, RenameMode};
use crate::fs::{Attr, FsError, SetAttr, xattr};
use crate::namespace::{Namespace, Node, SLOT_SHIFT, View};

mod routing;

/// How long the kernel may cache names and attributes. Every change goes through this mount, so the kernel's
/// cache stays right; the control files are exempt (their contents change by themselves).
const TTL: Duration = Duration::from_secs(1);
/// For a mount by hash, whose names and attributes never change.
const IMMUTABLE_TTL: Duration = Duration::from_secs(3600);
/// File handles say how a file was opened and by which cafsd (cafs keeps no per-handle state): bit 0 is set
/// for a writer (only a writer's `close` reports write errors), the rest is the serving process's epoch. The
/// kernel keeps handles across a restart, so a handle from another epoch was opened before it: only such a
/// handle hears, from `fsync` or `close`, of writes that died unstored with that cafsd — a file opened since
/// never held them (as Linux reports a writeback error only to files open when it happened).
fn handle(epoch: u64, writer: bool) -> FileHandle {
    FileHandle(epoch << 1 | u64::from(writer))
}

fn is_writer(fh: FileHandle) -> bool {
    fh.0 & 1 == 1
}

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

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

fn kind(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
    }
}

/// `a` as the kernel sees it: `ino` is the kernel's number for it.
fn file_attr(ino: u64, a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: kind(a.kind),
        perm: (a.perm & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 64 << 10,
        flags: 0,
    }
}

fn when(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

/// Lets kernel requests through while cafsd serves the mount; once closed (cafsd stopping with its mounts kept
/// for the next one), holds every request it has read, unanswered, until the process ends. The kernel keeps
/// those requests and sends them again to the next cafsd (`FUSE_NOTIFY_RESEND`), which then does them whole:
/// closing waits for the requests in progress, so none is cut off halfway.
#[derive(Debug, Default)]
pub struct Gate {
    lock: RwLock<()>,
    /// Closed already: the collections of a namespace mount share its gate, and each is kept in turn.
    closed: std::sync::atomic::AtomicBool,
}

impl Gate {
    /// Lets a request of kind `op` in (counted and timed in [`crate::metrics`] until the guard is dropped).
    fn enter(&self, op: &'static str) -> Live<'_> {
        let request = crate::metrics::metrics().fuse(op);
        Live { _open: self.lock.read().unwrap_or_else(|p| p.into_inner()), _request: request }
    }

    /// Waits up to `limit` for the requests in progress, then holds all later ones for good. Returns whether
    /// the requests in progress finished in time (true at once when it was closed before).
    pub fn close(self: &Arc<Self>, limit: Duration) -> bool {
        if self.closed.swap(true, Ordering::SeqCst) {
            return true;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let gate = self.clone();
        // A blocking write lock: once it waits, new readers wait behind it, so a busy mount drains.
        std::thread::spawn(move || {
            let held = gate.lock.write().unwrap_or_else(|p| p.into_inner());
            std::mem::forget(held);
            let _ = tx.send(());
        });
        rx.recv_timeout(limit).is_ok()
    }
}

/// A request let in by the [`Gate`]: the gate cannot close on it, and it is counted when it ends.
struct Live<'a> {
    _open: RwLockReadGuard<'a, ()>,
    _request: crate::metrics::FuseRequest,
}

/// Whether the kernel sends this request a second time (`FUSE_UNIQUE_RESEND`): it was read by a cafsd that
/// stopped before answering, and may have been done, in part or whole, before it died.
fn resent(req: &Request) -> bool {
    req.unique().0 & (1 << 63) != 0
}

/// What a mount shows.
enum Space {
    /// One collection: the kernel's numbers are the tree's.
    One(Arc<View>),
    /// The whole catalog.
    Many(Arc<Namespace>),
}

/// A mount, as the kernel sees it.
pub struct CafsFuse {
    space: Space,
    rt: tokio::runtime::Handle,
    /// Owner of the mount (the control files and the namespace's directories belong to it).
    uid: u32,
    gid: u32,
    gate: Arc<Gate>,
    /// This process's mark in the file handles it gives (see [`handle`]).
    epoch: u64,
    /// Directory listings by (directory, handle), made at `opendir`: `readdir` then serves a page from the
    /// offset it is given instead of listing the directory again, which made listing a directory of n entries
    /// cost n²/page. Also what makes a listing stable while it is read.
    listings: Mutex<HashMap<(u64, u64), Arc<Listing>>>,
    next_dir_handle: AtomicU64,
}

/// A directory's entries for `readdir`: name, the kernel's inode number, kind.
type Listing = Vec<(Vec<u8>, u64, FileType)>;

/// How long the kernel may keep names and attributes of a view: what a hash names never changes, so for long.
fn ttl(v: &View) -> Duration {
    if v.immutable() { IMMUTABLE_TTL } else { TTL }
}

fn entry(v: &View, reply: ReplyEntry, r: Result<Attr, FsError>) {
    match r {
        Ok(a) => reply.entry(&ttl(v), &file_attr(v.global(a.ino), &a), Generation(0)),
        Err(e) => reply.error(errno(&e)),
    }
}

fn writable(v: &View) -> Result<(), Errno> {
    if v.coll.is_read_only() { Err(Errno::EROFS) } else { Ok(()) }
}

fn is_control_name(v: &View, parent: u64, name: &OsStr) -> bool {
    parent == ROOT && name.as_bytes() == control::DIR_NAME && !v.coll.is_read_only()
}

/// Whether a new entry may be made as `parent/name`: the view is writable and the name is not the control
/// directory's (nor inside it).
fn may_create(v: &View, parent: u64, name: &OsStr) -> Result<(), Errno> {
    writable(v)?;
    if is_control_name(v, parent, name) || parent == CONTROL_DIR {
        return Err(Errno::EEXIST);
    }
    Ok(())
}

/// Answers with `Err`'s errno, or goes on with the value.
macro_rules! or_reply {
    ($reply:ident, $r:expr) => {
        match $r {
            Ok(x) => x,
            Err(e) => return $reply.error(e),
        }
    };
}

impl fuser::Filesystem for CafsFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // 1 MiB writes and parallel directory operations; no writeback cache, so that every write reaches the
        // core in order and errors reach the writer.
        let _ = config.set_max_write(1 << 20);
        // readdirplus answers `ls -l` and `find` with the attributes in the listing, saving a lookup per entry;
        // "auto" lets the kernel fall back to plain readdir when nobody looks at the attributes.
        let _ = config.add_capabilities(
            InitFlags::FUSE_ASYNC_READ
                | InitFlags::FUSE_PARALLEL_DIROPS
                | InitFlags::FUSE_DO_READDIRPLUS
                | InitFlags::FUSE_READDIRPLUS_AUTO,
        );
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _live = self.gate.enter("lookup");
        let (v, parent) = match or_reply!(reply, self.at(parent)) {
            Node::Dir(d) => {
                let ns = self.ns().expect("a namespace directory");
                // An entry that names a ref is checked for each requester, and not cached by the kernel (a
                // cached name would let the next user in unasked).
                let mut ttl = TTL;
                if let Some(r) = ns.ref_of(d, name.as_bytes()) {
                    let who = ns.principal(req.uid(), req.gid());
                    or_reply!(reply, ns.check(&who, &r, Need::Read).map_err(|e| errno(&e)));
                    ttl = Duration::ZERO;
                }
                return match ns.lookup(d, name.as_bytes()) {
                    Ok(a) => reply.entry(&ttl, &file_attr(a.ino, &a), Generation(0)),
                    Err(e) => reply.error(errno(&e)),
                };
            }
            Node::In(v, parent) => (v, parent),
        };
        if is_control_name(&v, parent, name) {
            return reply.entry(&Duration::ZERO, &self.virtual_attr(&v, CONTROL_DIR).expect("virtual"), Generation(0));
        }
        if parent == CONTROL_DIR {
            return match ControlFile::from_name(name.as_bytes()) {
                Some(f) => reply.entry(
                    &Duration::ZERO,
                    &self.virtual_attr(&v, control_ino(f)).expect("virtual"),
                    Generation(0),
                ),
                None => reply.error(Errno::ENOENT),
            };
        }
        entry(&v, reply, v.coll.fs_for(parent).lookup(parent, name.as_bytes()));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _live = self.gate.enter("getattr");
        let (a, ttl) = or_reply!(reply, self.attributes(ino));
        reply.attr(&ttl, &a);
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _live = self.gate.enter("setattr");
        let (v, local) = or_reply!(reply, self.inside(ino));
        if let Some(a) = self.virtual_attr(&v, local) {
            // Truncating `.cafs/commit` (as `echo > .cafs/commit` does) is harmless; nothing else changes.
            return reply.attr(&Duration::ZERO, &a);
        }
        or_reply!(reply, writable(&v));
        or_reply!(reply, self.may_change(req, &v));
        let current = or_reply!(reply, v.coll.fs().getattr(local).map_err(|e| errno(&e)));
        // chown: only root gives a file away; the owner may change the group to one of its own.
        if uid.is_some_and(|u| u != current.uid) && req.uid() != 0 {
            return reply.error(Errno::EPERM);
        }
        if gid.is_some_and(|g| g != current.gid)
            && req.uid() != 0
            && (req.uid() != current.uid || gid != Some(req.gid()))
        {
            return reply.error(Errno::EPERM);
        }
        let set =
            SetAttr { perm: mode.map(|m| m & 0o7777), uid, gid, size, atime: atime.map(when), mtime: mtime.map(when) };
        match v.coll.fs().setattr(local, &set) {
            Ok(a) => reply.attr(&TTL, &file_attr(ino.0, &a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _live = self.gate.enter("readlink");
        let (v, local) = or_reply!(reply, self.inside(ino).map_err(|_| Errno::EINVAL));
        match v.coll.fs_for(local).readlink(local) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let _live = self.gate.enter("mknod");
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let (v, parent) = or_reply!(reply, self.inside(parent));
        or_reply!(reply, may_create(&v, parent, name));
        or_reply!(reply, self.may_change(req, &v));
        let r = v.coll.fs().create(parent, name.as_bytes(), mode & !umask, req.uid(), req.gid());
        entry(&v, reply, Self::made_again(&v, req, parent, name, r));
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let _live = self.gate.enter("mkdir");
        let (v, parent) = match or_reply!(reply, self.at(parent)) {
            Node::Dir(d) => {
                let ns = self.ns().expect("a namespace directory");
                return match ns.make_ref_as(req.uid(), req.gid(), d, name.as_bytes()) {
                    Ok(a) => reply.entry(&TTL, &file_attr(a.ino, &a), Generation(0)),
                    Err(e) => reply.error(errno(&e)),
                };
            }
            Node::In(v, parent) => (v, parent),
        };
        or_reply!(reply, may_create(&v, parent, name));
        or_reply!(reply, self.may_change(req, &v));
        let r = v.coll.fs().mkdir(parent, name.as_bytes(), mode & !umask, req.uid(), req.gid());
        entry(&v, reply, Self::made_again(&v, req, parent, name, r));
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _live = self.gate.enter("unlink");
        let (v, parent) = or_reply!(reply, self.inside(parent));
        or_reply!(reply, writable(&v));
        or_reply!(reply, self.may_change(req, &v));
        if is_control_name(&v, parent, name) || parent == CONTROL_DIR {
            return reply.error(Errno::EPERM);
        }
        Self::empty(reply, Self::removed_again(req, v.coll.fs().unlink(parent, name.as_bytes())));
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _live = self.gate.enter("rmdir");
        let (v, parent) = or_reply!(reply, self.inside(parent));
        or_reply!(reply, writable(&v));
        or_reply!(reply, self.may_change(req, &v));
        if is_control_name(&v, parent, name) {
            return reply.error(Errno::EPERM);
        }
        Self::empty(reply, Self::removed_again(req, v.coll.fs().rmdir(parent, name.as_bytes())));
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &std::path::Path, reply: ReplyEntry) {
        let _live = self.gate.enter("symlink");
        let (v, parent) = or_reply!(reply, self.inside(parent));
        or_reply!(reply, may_create(&v, parent, link_name));
        or_reply!(reply, self.may_change(req, &v));
        let r = v.coll.fs().symlink(parent, link_name.as_bytes(), target.as_os_str().as_bytes(), req.uid(), req.gid());
        entry(&v, reply, Self::made_again(&v, req, parent, link_name, r));
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _live = self.gate.enter("rename");
        let (v, parent) = or_reply!(reply, self.inside(parent));
        let (to, newparent) = or_reply!(reply, self.inside(newparent));
        if !v.is(&to) {
            return reply.error(Errno::EXDEV);
        }
        or_reply!(reply, writable(&v));
        or_reply!(reply, self.may_change(req, &v));
        if is_control_name(&v, parent, name) || is_control_name(&v, newparent, newname) {
            return reply.error(Errno::EPERM);
        }
        let mode = if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            RenameMode::Exchange
        } else if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            RenameMode::NoReplace
        } else if flags.is_empty() {
            RenameMode::Replace
        } else {
            return reply.error(Errno::EINVAL);
        };
        let fs = v.coll.fs();
        let r = fs.rename(parent, name.as_bytes(), newparent, newname.as_bytes(), mode);
        // Sent again and the source is gone but the target is there: the first attempt moved it.
        let r = match r {
            Err(FsError::NotFound) if resent(req) && fs.lookup(newparent, newname.as_bytes()).is_ok() => Ok(()),
            r => r,
        };
        Self::empty(reply, r);
    }

    fn link(&self, _req: &Request, _ino: INodeNo, _newparent: INodeNo, _newname: &OsStr, reply: ReplyEntry) {
        let _live = self.gate.enter("link");
        reply.error(Errno::EPERM);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _live = self.gate.enter("open");
        let (v, local) = or_reply!(reply, self.inside(ino).map_err(|_| Errno::EISDIR));
        if control_file(local).is_some() {
            return reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
        }
        let wants_write = flags.acc_mode() != fuser::OpenAccMode::O_RDONLY;
        if wants_write {
            or_reply!(reply, writable(&v));
            or_reply!(reply, self.may_change(req, &v));
        }
        let fs = v.coll.fs_for(local);
        match fs.open(local) {
            Ok(a) if a.kind == Kind::Dir => {
                let _ = fs.release(local);
                reply.error(Errno::EISDIR)
            }
            // What an inode number of a read-only view holds never changes (a changed file of a followed ref
            // gets a new number), so the kernel may keep its cached pages across opens.
            Ok(_) if v.coll.is_read_only() => reply.opened(handle(self.epoch, false), FopenFlags::FOPEN_KEEP_CACHE),
            Ok(_) => reply.opened(handle(self.epoch, wants_write), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _live = self.gate.enter("read");
        let (v, local) = or_reply!(reply, self.inside(ino).map_err(|_| Errno::EISDIR));
        if let Some(f) = control_file(local) {
            return match v.control.read(&v.coll, f) {
                Ok(bytes) => {
                    let start = (offset as usize).min(bytes.len());
                    let end = start.saturating_add(size as usize).min(bytes.len());
                    reply.data(&bytes[start..end])
                }
                Err(e) => {
                    tracing::warn!(error = %e, file = f.name(), "control file read failed");
                    reply.error(Errno::EIO)
                }
            };
        }
        match v.coll.fs_for(local).read(local, offset, u64::from(size)) {
            Ok(data) => {
                crate::metrics::metrics().fuse_read(data.len());
                reply.data(&data)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _live = self.gate.enter("write");
        let (v, local) = or_reply!(reply, self.inside(ino).map_err(|_| Errno::EISDIR));
        if let Some(f) = control_file(local) {
            if f != ControlFile::Commit {
                return reply.error(Errno::EACCES);
            }
            let message = match control::commit_message(data) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "write to .cafs/commit refused; nothing committed");
                    return reply.error(Errno::from_i32(e.errno()));
                }
            };
            let committer = format!("uid {}", req.uid());
            // In a namespace mount, the requester commits (and must be allowed to write the ref); in a mount of
            // one ref, its owner does, checked now: the ref's permissions may have changed since the mount.
            let by = self.ns().map(|ns| ns.writer(req.uid(), req.gid()));
            return match self.rt.block_on(v.control.commit_as(&v.coll, by.as_ref(), &committer, &message)) {
                Ok(_) => reply.written(data.len() as u32),
                Err(CollectionError::Catalog(CatalogError::Denied(_))) => reply.error(Errno::EACCES),
                Err(e) => {
                    tracing::debug!(error = %e, "a commit through .cafs/commit failed");
                    reply.error(Errno::EIO)
                }
            };
        }
        let fs = v.coll.fs();
        if let Err(e) = fs.upload_error(local) {
            return reply.error(errno(&e));
        }
        match fs.write(local, offset, data) {
            Ok(n) => {
                crate::metrics::metrics().fuse_written(n);
                reply.written(n as u32)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        let _live = self.gate.enter("flush");
        // close(): a writer hears of a failed upload or of writes lost with a dead cafsd; never a commit. A
        // reader's close has nothing to report.
        if !is_writer(fh) {
            return reply.ok();
        }
        let (v, local) = or_reply!(reply, self.inside(ino));
        if control_file(local).is_some() {
            return reply.ok();
        }
        Self::empty(reply, v.coll.fs().close_error(local, self.stale(fh)));
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _live = self.gate.enter("release");
        let (v, local) = or_reply!(reply, self.inside(ino));
        if control_file(local).is_some() {
            return reply.ok();
        }
        let r = v.coll.fs_for(local).release(local);
        v.coll.released();
        Self::empty(reply, r);
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let _live = self.gate.enter("fsync");
        let (v, local) = or_reply!(reply, self.inside(ino));
        if control_file(local).is_some() {
            return reply.ok();
        }
        Self::empty(reply, v.coll.fs_for(local).fsync_handle(local, self.stale(fh)));
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _live = self.gate.enter("opendir");
        let fh = self.next_dir_handle.fetch_add(1, Ordering::Relaxed);
        let list = or_reply!(reply, self.listing(ino, self.who(req).as_ref()));
        self.listings().insert((ino.0, fh), Arc::new(list));
        reply.opened(FileHandle(fh), FopenFlags::empty())
    }

    fn releasedir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        let _live = self.gate.enter("releasedir");
        self.listings().remove(&(ino.0, fh.0));
        reply.ok();
    }

    fn readdir(&self, req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let _live = self.gate.enter("readdir");
        let list = or_reply!(reply, self.opened_listing(ino, fh, req));
        for (i, (name, child, kind)) in list.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*child), i as u64 + 1, *kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(&self, req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let _live = self.gate.enter("readdirplus");
        let list = or_reply!(reply, self.opened_listing(ino, fh, req));
        // A view's directory holds its entries in the tree that holds it: found once a page, not once an entry.
        let (tree, ns_dir) = match self.at(ino) {
            Ok(Node::In(v, local)) => (Some((v.coll.fs_for(local), v)), None),
            Ok(Node::Dir(d)) => (None, self.ns().map(|ns| (ns, d))),
            Err(_) => (None, None),
        };
        for (i, (name, child, _)) in list.iter().enumerate().skip(offset as usize) {
            let in_tree = tree.as_ref().and_then(|(fs, v)| {
                let local = v.local(*child).filter(|&l| self.virtual_attr(v, l).is_none())?;
                Some(fs.getattr(local).map(|a| (file_attr(*child, &a), ttl(v))).map_err(|e| errno(&e)))
            });
            // Attributes as they are now, page by page: an entry removed since the listing was made is skipped.
            let Ok((attr, mut ttl)) = in_tree.unwrap_or_else(|| self.attributes(INodeNo(*child))) else { continue };
            // A name that is a ref is not cached, as in lookup: the next user's path walk must ask.
            if ns_dir.is_some_and(|(ns, d)| ns.ref_of(d, name).is_some()) {
                ttl = Duration::ZERO;
            }
            if reply.add(attr.ino, i as u64 + 1, OsStr::from_bytes(name), &ttl, &attr, Generation(0)) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _live = self.gate.enter("getxattr");
        let (v, local) = or_reply!(reply, self.inside(ino).map_err(|_| Errno::ENODATA));
        if self.virtual_attr(&v, local).is_some() {
            return reply.error(Errno::ENODATA);
        }
        match v.coll.getxattr(local, name.as_bytes()) {
            Ok(value) => Self::sized(reply, size, &value),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _live = self.gate.enter("listxattr");
        let (v, local) = match self.at(ino) {
            Ok(Node::In(v, local)) if self.virtual_attr(&v, local).is_none() => (v, local),
            Ok(_) => return Self::sized(reply, size, &[]),
            Err(e) => return reply.error(e),
        };
        match v.coll.listxattr(local) {
            Ok(names) => {
                let mut list = Vec::new();
                for n in names {
                    list.extend_from_slice(&n);
                    list.push(0);
                }
                Self::sized(reply, size, &list)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _live = self.gate.enter("setxattr");
        let (v, local) = or_reply!(reply, self.inside(ino));
        if self.virtual_attr(&v, local).is_some() {
            return reply.error(Errno::EPERM);
        }
        or_reply!(reply, self.may_change(req, &v));
        let r = xattr::SetMode::from_flags(flags)
            .and_then(|mode| v.coll.setxattr(local, name.as_bytes(), Some(value), mode));
        Self::empty(reply, r);
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _live = self.gate.enter("removexattr");
        let (v, local) = or_reply!(reply, self.inside(ino));
        if self.virtual_attr(&v, local).is_some() {
            return reply.error(Errno::EPERM);
        }
        or_reply!(reply, self.may_change(req, &v));
        let r = v.coll.setxattr(local, name.as_bytes(), None, xattr::SetMode::Any);
        // Sent again after a restart and already gone: the first attempt removed it.
        let r = match r {
            Err(FsError::NoAttr) if resent(req) => Ok(()),
            r => r,
        };
        Self::empty(reply, r);
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let _live = self.gate.enter("fsyncdir");
        // A directory's entries are journal records: make them (and everything before) durable.
        match or_reply!(reply, self.at(ino)) {
            Node::In(v, _) => Self::empty(reply, v.coll.fs().sync_journal()),
            Node::Dir(_) => reply.ok(),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _live = self.gate.enter("statfs");
        // A block store has no fixed size: report plenty of room.
        let blocks = u64::MAX / 2 / 4096;
        reply.statfs(blocks, blocks, blocks, u64::MAX / 2, u64::MAX / 2, 4096, 255, 4096);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let _live = self.gate.enter("create");
        let (v, parent) = or_reply!(reply, self.inside(parent));
        or_reply!(reply, may_create(&v, parent, name));
        or_reply!(reply, self.may_change(req, &v));
        let fs = v.coll.fs();
        let r = fs.create(parent, name.as_bytes(), mode & !umask, req.uid(), req.gid());
        match Self::made_again(&v, req, parent, name, r).and_then(|a| fs.open(a.ino)) {
            Ok(a) => reply.created(
                &TTL,
                &file_attr(v.global(a.ino), &a),
                Generation(0),
                handle(self.epoch, true),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }
}
