//! The FUSE adapter: a thin translation of kernel requests (through `fuser`) into calls on the filesystem core
//! and the control files, and of [`FsError`]s into errnos. No filesystem logic lives here.
//!
//! Inode numbers are the core's; the control directory `.cafs` and its files take reserved numbers at the top
//! of the range. `.cafs` answers lookups in the root of a writable mount but is never listed and cannot be
//! created or removed. Hard links are refused with `EPERM` (a collection has no way to say two names share
//! bytes that later change together).

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

use crate::collection::Collection;
use crate::control::{self, Control, ControlFile};
use crate::fs::inode::{Kind, ROOT, RenameMode};
use crate::fs::{Attr, FsError, SetAttr, xattr};

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

const CONTROL_DIR: u64 = u64::MAX - 1;

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

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
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
pub struct Gate(RwLock<()>);

impl Gate {
    fn enter(&self) -> RwLockReadGuard<'_, ()> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits up to `limit` for the requests in progress, then holds all later ones for good. Returns whether
    /// the requests in progress finished in time.
    pub fn close(self: &Arc<Self>, limit: Duration) -> bool {
        let (tx, rx) = std::sync::mpsc::channel();
        let gate = self.clone();
        // A blocking write lock: once it waits, new readers wait behind it, so a busy mount drains.
        std::thread::spawn(move || {
            let held = gate.0.write().unwrap_or_else(|p| p.into_inner());
            std::mem::forget(held);
            let _ = tx.send(());
        });
        rx.recv_timeout(limit).is_ok()
    }
}

/// Whether the kernel sends this request a second time (`FUSE_UNIQUE_RESEND`): it was read by a cafsd that
/// stopped before answering, and may have been done, in part or whole, before it died.
fn resent(req: &Request) -> bool {
    req.unique().0 & (1 << 63) != 0
}

/// One mounted collection, as the kernel sees it.
pub struct CafsFuse {
    coll: Arc<Collection>,
    control: Arc<Control>,
    rt: tokio::runtime::Handle,
    /// Owner of the mount (the control files belong to it).
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

/// A directory's entries for `readdir`: name, inode, kind.
type Listing = Vec<(Vec<u8>, u64, FileType)>;

impl CafsFuse {
    pub fn new(coll: Arc<Collection>, control: Arc<Control>, rt: tokio::runtime::Handle, uid: u32, gid: u32) -> Self {
        // Distinct per process start: the time in ms, folded to leave bit 0 for the writer flag; never 0, which
        // older cafsd versions used for every handle.
        let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_millis() as u64);
        let epoch = (ms ^ u64::from(std::process::id()) << 40) & (u64::MAX >> 1) | 1;
        // Directory handles start at a per-process point too, so that one given before a restart is unlikely to
        // meet a new one for the same directory (and then both name a listing of that directory anyway).
        let next_dir_handle = AtomicU64::new(epoch << 20);
        Self { coll, control, rt, uid, gid, gate: Arc::default(), epoch, listings: Mutex::default(), next_dir_handle }
    }

    /// Whether `fh` was given by an earlier cafsd.
    fn stale(&self, fh: FileHandle) -> bool {
        fh.0 >> 1 != self.epoch
    }

    /// The gate in front of this mount's requests.
    pub fn gate(&self) -> Arc<Gate> {
        self.gate.clone()
    }

    /// A name-making request that the kernel sent again after a restart and that finds its name already
    /// there: the first attempt made it (cafsd died before answering), so it succeeded.
    fn made_again(&self, req: &Request, parent: u64, name: &OsStr, r: Result<Attr, FsError>) -> Result<Attr, FsError> {
        match r {
            Err(FsError::Exists) if resent(req) => self.coll.fs().lookup(parent, name.as_bytes()),
            r => r,
        }
    }

    /// A removal sent again that finds its name gone: the first attempt removed it.
    fn removed_again(req: &Request, r: Result<(), FsError>) -> Result<(), FsError> {
        match r {
            Err(FsError::NotFound) if resent(req) => Ok(()),
            r => r,
        }
    }

    fn writable(&self) -> Result<(), Errno> {
        if self.coll.is_read_only() { Err(Errno::EROFS) } else { Ok(()) }
    }

    fn virtual_attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, perm, size) = if ino == CONTROL_DIR {
            (FileType::Directory, 0o755, 0)
        } else {
            let f = control_file(ino)?;
            (FileType::RegularFile, if f.writable() { 0o644 } else { 0o444 }, 0)
        };
        let now = SystemTime::now();
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    /// Whether a new entry may be made as `parent/name`: the mount is writable and the name is not the control
    /// directory's (nor inside it).
    fn may_create(&self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        self.writable()?;
        if self.is_control_name(parent, name) || parent == CONTROL_DIR {
            return Err(Errno::EEXIST);
        }
        Ok(())
    }

    fn is_control_name(&self, parent: u64, name: &OsStr) -> bool {
        parent == ROOT && name.as_bytes() == control::DIR_NAME && !self.coll.is_read_only()
    }

    fn listings(&self) -> std::sync::MutexGuard<'_, HashMap<(u64, u64), Arc<Listing>>> {
        self.listings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A directory's entries, `.` and `..` first, as one `opendir` sees them.
    fn listing(&self, ino: u64) -> Result<Listing, Errno> {
        let mut entries: Listing = Vec::new();
        if ino == CONTROL_DIR {
            entries.push((b".".to_vec(), CONTROL_DIR, FileType::Directory));
            entries.push((b"..".to_vec(), ROOT, FileType::Directory));
            for f in ControlFile::ALL {
                entries.push((f.name().as_bytes().to_vec(), control_ino(f), FileType::RegularFile));
            }
            return Ok(entries);
        }
        let fs = self.coll.fs_for(ino);
        let parent = fs.parent(ino).map_err(|e| errno(&e))?;
        let list = fs.readdir(ino).map_err(|e| errno(&e))?;
        entries.reserve(list.len() + 2);
        entries.push((b".".to_vec(), ino, FileType::Directory));
        entries.push((b"..".to_vec(), parent, FileType::Directory));
        entries.extend(list.into_iter().map(|(name, i, k)| (name, i, kind(k))));
        Ok(entries)
    }

    /// The listing `opendir` made for this handle; one made now for a handle this process did not give (the
    /// directory was opened before a restart), kept until its `releasedir`.
    fn opened_listing(&self, ino: u64, fh: FileHandle) -> Result<Arc<Listing>, Errno> {
        if let Some(l) = self.listings().get(&(ino, fh.0)) {
            return Ok(l.clone());
        }
        let list = Arc::new(self.listing(ino)?);
        self.listings().insert((ino, fh.0), list.clone());
        Ok(list)
    }

    /// How long the kernel may keep names and attributes: a mount by hash never changes, so for long.
    fn ttl(&self) -> Duration {
        if matches!(self.coll.origin(), crate::collection::Origin::Pdh(_)) { IMMUTABLE_TTL } else { TTL }
    }

    fn entry(&self, reply: ReplyEntry, r: Result<Attr, FsError>) {
        match r {
            Ok(a) => reply.entry(&self.ttl(), &file_attr(&a), Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// An attribute value or name list as `getxattr`/`listxattr` answer: its size when asked for size 0,
    /// `ERANGE` when it does not fit the caller's buffer.
    fn sized(reply: ReplyXattr, size: u32, data: &[u8]) {
        if size == 0 {
            reply.size(data.len() as u32)
        } else if data.len() > size as usize {
            reply.error(Errno::ERANGE)
        } else {
            reply.data(data)
        }
    }

    fn empty(&self, reply: ReplyEmpty, r: Result<(), FsError>) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }
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

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _live = self.gate.enter();
        if self.is_control_name(parent.0, name) {
            return reply.entry(&Duration::ZERO, &self.virtual_attr(CONTROL_DIR).expect("virtual"), Generation(0));
        }
        if parent.0 == CONTROL_DIR {
            return match ControlFile::from_name(name.as_bytes()) {
                Some(f) => {
                    reply.entry(&Duration::ZERO, &self.virtual_attr(control_ino(f)).expect("virtual"), Generation(0))
                }
                None => reply.error(Errno::ENOENT),
            };
        }
        self.entry(reply, self.coll.fs_for(parent.0).lookup(parent.0, name.as_bytes()));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _live = self.gate.enter();
        if let Some(a) = self.virtual_attr(ino.0) {
            return reply.attr(&Duration::ZERO, &a);
        }
        match self.coll.fs_for(ino.0).getattr(ino.0) {
            Ok(a) => reply.attr(&self.ttl(), &file_attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
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
        let _live = self.gate.enter();
        if let Some(a) = self.virtual_attr(ino.0) {
            // Truncating `.cafs/commit` (as `echo > .cafs/commit` does) is harmless; nothing else changes.
            return reply.attr(&Duration::ZERO, &a);
        }
        if let Err(e) = self.writable() {
            return reply.error(e);
        }
        let current = match self.coll.fs().getattr(ino.0) {
            Ok(a) => a,
            Err(e) => return reply.error(errno(&e)),
        };
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
        match self.coll.fs().setattr(ino.0, &set) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _live = self.gate.enter();
        match self.coll.fs_for(ino.0).readlink(ino.0) {
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
        let _live = self.gate.enter();
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        self.mkfile(req, parent, name, mode & !umask, reply);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let _live = self.gate.enter();
        if let Err(e) = self.may_create(parent.0, name) {
            return reply.error(e);
        }
        let r = self.coll.fs().mkdir(parent.0, name.as_bytes(), mode & !umask, req.uid(), req.gid());
        self.entry(reply, self.made_again(req, parent.0, name, r));
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _live = self.gate.enter();
        if let Err(e) = self.writable() {
            return reply.error(e);
        }
        if self.is_control_name(parent.0, name) || parent.0 == CONTROL_DIR {
            return reply.error(Errno::EPERM);
        }
        self.empty(reply, Self::removed_again(req, self.coll.fs().unlink(parent.0, name.as_bytes())));
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _live = self.gate.enter();
        if let Err(e) = self.writable() {
            return reply.error(e);
        }
        if self.is_control_name(parent.0, name) {
            return reply.error(Errno::EPERM);
        }
        self.empty(reply, Self::removed_again(req, self.coll.fs().rmdir(parent.0, name.as_bytes())));
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &std::path::Path, reply: ReplyEntry) {
        let _live = self.gate.enter();
        if let Err(e) = self.may_create(parent.0, link_name) {
            return reply.error(e);
        }
        let r =
            self.coll.fs().symlink(parent.0, link_name.as_bytes(), target.as_os_str().as_bytes(), req.uid(), req.gid());
        self.entry(reply, self.made_again(req, parent.0, link_name, r));
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
        let _live = self.gate.enter();
        if let Err(e) = self.writable() {
            return reply.error(e);
        }
        if self.is_control_name(parent.0, name) || self.is_control_name(newparent.0, newname) {
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
        let r = self.coll.fs().rename(parent.0, name.as_bytes(), newparent.0, newname.as_bytes(), mode);
        // Sent again and the source is gone but the target is there: the first attempt moved it.
        let r = match r {
            Err(FsError::NotFound) if resent(req) && self.coll.fs().lookup(newparent.0, newname.as_bytes()).is_ok() => {
                Ok(())
            }
            r => r,
        };
        self.empty(reply, r);
    }

    fn link(&self, _req: &Request, _ino: INodeNo, _newparent: INodeNo, _newname: &OsStr, reply: ReplyEntry) {
        let _live = self.gate.enter();
        reply.error(Errno::EPERM);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _live = self.gate.enter();
        if control_file(ino.0).is_some() {
            return reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
        }
        let wants_write = flags.acc_mode() != fuser::OpenAccMode::O_RDONLY;
        if wants_write && let Err(e) = self.writable() {
            return reply.error(e);
        }
        let fs = self.coll.fs_for(ino.0);
        match fs.open(ino.0) {
            Ok(a) if a.kind == Kind::Dir => {
                let _ = fs.release(ino.0);
                reply.error(Errno::EISDIR)
            }
            // What an inode number of a read-only mount holds never changes (a changed file of a followed ref
            // gets a new number), so the kernel may keep its cached pages across opens.
            Ok(_) if self.coll.is_read_only() => reply.opened(handle(self.epoch, false), FopenFlags::FOPEN_KEEP_CACHE),
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
        let _live = self.gate.enter();
        if let Some(f) = control_file(ino.0) {
            return match self.control.read(&self.coll, f) {
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
        match self.coll.fs_for(ino.0).read(ino.0, offset, u64::from(size)) {
            Ok(data) => reply.data(&data),
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
        let _live = self.gate.enter();
        if let Some(f) = control_file(ino.0) {
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
            return match self.rt.block_on(self.control.commit(&self.coll, &committer, &message)) {
                Ok(_) => reply.written(data.len() as u32),
                Err(_) => reply.error(Errno::EIO),
            };
        }
        if let Err(e) = self.coll.fs().upload_error(ino.0) {
            return reply.error(errno(&e));
        }
        match self.coll.fs().write(ino.0, offset, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        let _live = self.gate.enter();
        // close(): a writer hears of a failed upload or of writes lost with a dead cafsd; never a commit. A
        // reader's close has nothing to report.
        if control_file(ino.0).is_some() || !is_writer(fh) {
            return reply.ok();
        }
        self.empty(reply, self.coll.fs().close_error(ino.0, self.stale(fh)));
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
        let _live = self.gate.enter();
        if control_file(ino.0).is_some() {
            return reply.ok();
        }
        let r = self.coll.fs_for(ino.0).release(ino.0);
        self.coll.released();
        self.empty(reply, r);
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let _live = self.gate.enter();
        if control_file(ino.0).is_some() {
            return reply.ok();
        }
        self.empty(reply, self.coll.fs_for(ino.0).fsync_handle(ino.0, self.stale(fh)));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _live = self.gate.enter();
        let fh = self.next_dir_handle.fetch_add(1, Ordering::Relaxed);
        match self.listing(ino.0) {
            Ok(list) => {
                self.listings().insert((ino.0, fh), Arc::new(list));
                reply.opened(FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        let _live = self.gate.enter();
        self.listings().remove(&(ino.0, fh.0));
        reply.ok();
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let _live = self.gate.enter();
        let list = match self.opened_listing(ino.0, fh) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        for (i, (name, child, kind)) in list.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*child), i as u64 + 1, *kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let _live = self.gate.enter();
        let list = match self.opened_listing(ino.0, fh) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        let fs = self.coll.fs_for(ino.0);
        for (i, (name, child, _)) in list.iter().enumerate().skip(offset as usize) {
            // Attributes as they are now, page by page: an entry removed since the listing was made is skipped.
            let (attr, ttl) = match self.virtual_attr(*child) {
                Some(a) => (a, Duration::ZERO),
                None => match fs.getattr(*child) {
                    Ok(a) => (file_attr(&a), self.ttl()),
                    Err(_) => continue,
                },
            };
            if reply.add(attr.ino, i as u64 + 1, OsStr::from_bytes(name), &ttl, &attr, Generation(0)) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _live = self.gate.enter();
        if self.virtual_attr(ino.0).is_some() {
            return reply.error(Errno::ENODATA);
        }
        match self.coll.getxattr(ino.0, name.as_bytes()) {
            Ok(v) => Self::sized(reply, size, &v),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _live = self.gate.enter();
        if self.virtual_attr(ino.0).is_some() {
            return Self::sized(reply, size, &[]);
        }
        match self.coll.listxattr(ino.0) {
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
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _live = self.gate.enter();
        if self.virtual_attr(ino.0).is_some() {
            return reply.error(Errno::EPERM);
        }
        let r = xattr::SetMode::from_flags(flags)
            .and_then(|mode| self.coll.setxattr(ino.0, name.as_bytes(), Some(value), mode));
        self.empty(reply, r);
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _live = self.gate.enter();
        if self.virtual_attr(ino.0).is_some() {
            return reply.error(Errno::EPERM);
        }
        let r = self.coll.setxattr(ino.0, name.as_bytes(), None, xattr::SetMode::Any);
        // Sent again after a restart and already gone: the first attempt removed it.
        let r = match r {
            Err(FsError::NoAttr) if resent(req) => Ok(()),
            r => r,
        };
        self.empty(reply, r);
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let _live = self.gate.enter();
        // A directory's entries are journal records: make them (and everything before) durable.
        self.empty(reply, self.coll.fs().sync_journal());
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _live = self.gate.enter();
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
        let _live = self.gate.enter();
        if let Err(e) = self.may_create(parent.0, name) {
            return reply.error(e);
        }
        let r = self.coll.fs().create(parent.0, name.as_bytes(), mode & !umask, req.uid(), req.gid());
        match self.made_again(req, parent.0, name, r).and_then(|a| self.coll.fs().open(a.ino)) {
            Ok(a) => reply.created(&TTL, &file_attr(&a), Generation(0), handle(self.epoch, true), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

impl CafsFuse {
    fn mkfile(&self, req: &Request, parent: INodeNo, name: &OsStr, perm: u32, reply: ReplyEntry) {
        if let Err(e) = self.may_create(parent.0, name) {
            return reply.error(e);
        }
        let r = self.coll.fs().create(parent.0, name.as_bytes(), perm, req.uid(), req.gid());
        self.entry(reply, self.made_again(req, parent.0, name, r));
    }
}
