//! The FUSE adapter: kernel requests, as `fuser` hands them over, turned into calls on the mount's [`Vfs`],
//! and the results into replies ([`VfsError::errno`] for a failure). What a request does, and what it checks,
//! is the vfs layer's; here is only the translation, and the session options the kernel is offered.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};

use crate::collection::Collection;
use crate::fs::inode::{Kind, RenameMode};
use crate::fs::{Attr, SetAttr};
use crate::vfs::control::Control;
use crate::vfs::{Caller, Entry, Gate, Namespace, Opened, Vfs, VfsError};

/// A mount, as the kernel sees it.
pub struct CafsFuse {
    vfs: Vfs,
}

impl CafsFuse {
    /// A mount of one collection.
    pub fn new(coll: Arc<Collection>, control: Arc<Control>, rt: tokio::runtime::Handle, uid: u32, gid: u32) -> Self {
        Self { vfs: Vfs::new(coll, control, rt, uid, gid) }
    }

    /// A mount of the whole catalog.
    pub fn namespace(ns: Arc<Namespace>, rt: tokio::runtime::Handle, uid: u32, gid: u32) -> Self {
        Self { vfs: Vfs::namespace(ns, rt, uid, gid) }
    }

    /// The gate in front of this mount's requests.
    pub fn gate(&self) -> Arc<Gate> {
        self.vfs.gate()
    }
}

fn errno(e: &VfsError) -> Errno {
    Errno::from_i32(e.errno())
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
    }
}

/// `a` as the kernel sees it (`a.ino` is already the kernel's number).
fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a.kind),
        perm: (a.perm & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 64 << 10,
        flags: 0,
    }
}

/// The attributes sent with a negative entry, which the kernel does not read.
const ABSENT: FileAttr = FileAttr {
    ino: INodeNo(0),
    size: 0,
    blocks: 0,
    atime: SystemTime::UNIX_EPOCH,
    mtime: SystemTime::UNIX_EPOCH,
    ctime: SystemTime::UNIX_EPOCH,
    crtime: SystemTime::UNIX_EPOCH,
    kind: FileType::RegularFile,
    perm: 0,
    nlink: 0,
    uid: 0,
    gid: 0,
    rdev: 0,
    blksize: 0,
    flags: 0,
};

fn when(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

/// Who sent `req`, and whether the kernel sends it a second time (`FUSE_UNIQUE_RESEND`, bit 63).
fn caller(req: &Request) -> Caller {
    Caller { uid: req.uid(), gid: req.gid(), resent: req.unique().0 & (1 << 63) != 0 }
}

fn open_flags(o: &Opened) -> FopenFlags {
    let mut f = FopenFlags::empty();
    if o.direct_io {
        f |= FopenFlags::FOPEN_DIRECT_IO;
    }
    if o.keep_cache {
        f |= FopenFlags::FOPEN_KEEP_CACHE;
    }
    f
}

fn entry(reply: ReplyEntry, r: Result<Entry, VfsError>) {
    match r {
        Ok(e) => reply.entry(&e.ttl, &file_attr(&e.attr), Generation(0)),
        Err(e) => reply.error(errno(&e)),
    }
}

fn empty(reply: ReplyEmpty, r: Result<(), VfsError>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

/// An attribute value or name list as `getxattr`/`listxattr` answer: its size when asked for size 0, `ERANGE`
/// when it does not fit the caller's buffer.
fn sized(reply: ReplyXattr, size: u32, r: Result<Vec<u8>, VfsError>) {
    match r {
        Ok(data) if size == 0 => reply.size(data.len() as u32),
        Ok(data) if data.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(data) => reply.data(&data),
        Err(e) => reply.error(errno(&e)),
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
                | InitFlags::FUSE_READDIRPLUS_AUTO
                // cafs clears set-user-ID and set-group-ID itself (see the vfs's setattr and write), which
                // spares the kernel a getattr at each chown and a `security.capability` ask at later writes
                // (the first write of each opened file and each chown still ask: docs/benchmarks.md).
                | InitFlags::FUSE_HANDLE_KILLPRIV_V2,
        );
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _live = self.vfs.enter("lookup");
        match self.vfs.lookup(&caller(req), parent.0, name.as_bytes()) {
            // A negative entry: inode number 0 with a timeout (the attributes are not read).
            Err(VfsError::Absent(ttl)) => reply.entry(&ttl, &ABSENT, Generation(0)),
            r => entry(reply, r),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _live = self.vfs.enter("getattr");
        match self.vfs.getattr(ino.0) {
            Ok(e) => reply.attr(&e.ttl, &file_attr(&e.attr)),
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
        let _live = self.vfs.enter("setattr");
        let set = SetAttr { perm: mode, uid, gid, size, atime: atime.map(when), mtime: mtime.map(when) };
        match self.vfs.setattr(&caller(req), ino.0, &set) {
            Ok(e) => reply.attr(&e.ttl, &file_attr(&e.attr)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _live = self.vfs.enter("readlink");
        match self.vfs.readlink(ino.0) {
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
        let _live = self.vfs.enter("mknod");
        entry(reply, self.vfs.mknod(&caller(req), parent.0, name.as_bytes(), mode & !umask));
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let _live = self.vfs.enter("mkdir");
        entry(reply, self.vfs.mkdir(&caller(req), parent.0, name.as_bytes(), mode & !umask));
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _live = self.vfs.enter("unlink");
        empty(reply, self.vfs.unlink(&caller(req), parent.0, name.as_bytes()));
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _live = self.vfs.enter("rmdir");
        empty(reply, self.vfs.rmdir(&caller(req), parent.0, name.as_bytes()));
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &std::path::Path, reply: ReplyEntry) {
        let _live = self.vfs.enter("symlink");
        let target = target.as_os_str().as_bytes();
        entry(reply, self.vfs.symlink(&caller(req), parent.0, link_name.as_bytes(), target));
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
        let _live = self.vfs.enter("rename");
        let mode = if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            Ok(RenameMode::Exchange)
        } else if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            Ok(RenameMode::NoReplace)
        } else if flags.is_empty() {
            Ok(RenameMode::Replace)
        } else {
            Err(VfsError::RenameFlags)
        };
        let from = (parent.0, name.as_bytes());
        let to = (newparent.0, newname.as_bytes());
        empty(reply, mode.and_then(|mode| self.vfs.rename(&caller(req), from, to, mode)));
    }

    fn link(&self, req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let _live = self.vfs.enter("link");
        entry(reply, self.vfs.link(&caller(req), ino.0, newparent.0, newname.as_bytes()));
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _live = self.vfs.enter("open");
        let write = flags.acc_mode() != fuser::OpenAccMode::O_RDONLY;
        match self.vfs.open(&caller(req), ino.0, write) {
            Ok(o) => reply.opened(FileHandle(o.fh), open_flags(&o)),
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
        let _live = self.vfs.enter("read");
        match self.vfs.read(ino.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn copy_file_range(
        &self,
        req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let _live = self.vfs.enter("copy_file_range");
        match self.vfs.copy_file_range(&caller(req), (ino_in.0, offset_in), (ino_out.0, offset_out), len) {
            // At most `u32::MAX` rounded down to 4 KiB (see `copy_range`).
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _live = self.vfs.enter("fallocate");
        match self.vfs.fallocate(&caller(req), ino.0, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn lseek(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        let _live = self.vfs.enter("lseek");
        match self.vfs.lseek(ino.0, offset, whence) {
            Ok(at) => reply.offset(at),
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
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _live = self.vfs.enter("write");
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        match self.vfs.write(&caller(req), ino.0, offset, data, kill) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        let _live = self.vfs.enter("flush");
        empty(reply, self.vfs.flush(ino.0, fh.0));
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
        let _live = self.vfs.enter("release");
        empty(reply, self.vfs.release(ino.0));
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let _live = self.vfs.enter("fsync");
        empty(reply, self.vfs.fsync(ino.0, fh.0));
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _live = self.vfs.enter("opendir");
        match self.vfs.opendir(&caller(req), ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn releasedir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        let _live = self.vfs.enter("releasedir");
        self.vfs.releasedir(ino.0, fh.0);
        reply.ok();
    }

    fn readdir(&self, req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let _live = self.vfs.enter("readdir");
        let list = match self.vfs.readdir(&caller(req), ino.0, fh.0) {
            Ok(list) => list,
            Err(e) => return reply.error(errno(&e)),
        };
        for (i, (name, child, kind)) in list.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*child), i as u64 + 1, file_type(*kind), OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(&self, req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let _live = self.vfs.enter("readdirplus");
        let r = self.vfs.readdirplus(&caller(req), ino.0, fh.0, offset, |next, name, e| {
            let attr = file_attr(&e.attr);
            reply.add(attr.ino, next, OsStr::from_bytes(name), &e.ttl, &attr, Generation(0))
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _live = self.vfs.enter("getxattr");
        sized(reply, size, self.vfs.getxattr(ino.0, name.as_bytes()));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _live = self.vfs.enter("listxattr");
        sized(reply, size, self.vfs.listxattr(ino.0));
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
        let _live = self.vfs.enter("setxattr");
        empty(reply, self.vfs.setxattr(&caller(req), ino.0, name.as_bytes(), value, flags));
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _live = self.vfs.enter("removexattr");
        empty(reply, self.vfs.removexattr(&caller(req), ino.0, name.as_bytes()));
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let _live = self.vfs.enter("fsyncdir");
        empty(reply, self.vfs.fsyncdir(ino.0));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _live = self.vfs.enter("statfs");
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
        let _live = self.vfs.enter("create");
        match self.vfs.create(&caller(req), parent.0, name.as_bytes(), mode & !umask) {
            Ok((e, o)) => reply.created(&e.ttl, &file_attr(&e.attr), Generation(0), FileHandle(o.fh), open_flags(&o)),
            Err(e) => reply.error(errno(&e)),
        }
    }
}
