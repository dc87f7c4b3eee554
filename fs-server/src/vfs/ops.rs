//! The operations of a mount, one per kernel request, in the kernel's inode numbers: each routes to the view
//! that holds its inode (or to the namespace's own directories), applies the mount's checks (read-only views,
//! the control files, the requester's permissions in a namespace mount) and calls the filesystem core.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use super::routing::{entry, is_control_name, killed_suidgid, may_create, ttl, writable};
use super::*;
use crate::catalog::Need;
use crate::fs::inode::{RenameMode, Special};
use crate::fs::{SetAttr, xattr};

impl Vfs {
    pub fn lookup(&self, c: &Caller, parent: u64, name: &[u8]) -> Result<Entry> {
        let (v, parent) = match self.at(parent)? {
            Node::Dir(d) => {
                let ns = self.ns().expect("a namespace directory");
                // An entry that names a ref is checked for each requester, and not cached by the kernel (a
                // cached name would let the next user in unasked).
                let mut ttl = TTL;
                if let Some(r) = ns.ref_of(d, name) {
                    ns.check(&ns.principal(c.uid, c.gid), &r, Need::Read)?;
                    ttl = Duration::ZERO;
                }
                return Ok(Entry { attr: ns.lookup(d, name)?, ttl });
            }
            Node::In(v, parent) => (v, parent),
        };
        let control = if is_control_name(&v, parent, name) {
            Some(if name == control::ARVADOS_NAME { control_ino(ControlFile::Arvados) } else { CONTROL_DIR })
        } else if parent == CONTROL_DIR {
            Some(ControlFile::from_name(name).map(control_ino).ok_or(FsError::NotFound)?)
        } else {
            None
        };
        if let Some(local) = control {
            return Ok(Entry { attr: self.virtual_attr(&v, local).expect("virtual"), ttl: Duration::ZERO });
        }
        match v.coll.fs_for(parent).lookup(parent, name) {
            Ok(a) => Ok(entry(&v, a)),
            // Not there, and only a request through this mount can make it: the kernel may remember that.
            Err(FsError::NotFound) if v.changes_only_here() => Err(VfsError::Absent(ttl(&v))),
            Err(e) => Err(e.into()),
        }
    }

    pub fn getattr(&self, ino: u64) -> Result<Entry> {
        Ok(self.attributes(ino)?)
    }

    pub fn setattr(&self, c: &Caller, ino: u64, set: &SetAttr) -> Result<Entry> {
        let (v, local) = self.inside(ino)?;
        if let Some(attr) = self.virtual_attr(&v, local) {
            // Truncating `.cafs/commit` (as `echo > .cafs/commit` does) is harmless; nothing else changes.
            return Ok(Entry { attr, ttl: Duration::ZERO });
        }
        writable(&v)?;
        self.may_change(c, &v)?;
        let current = v.coll.fs().getattr(local)?;
        // chown: only root gives a file away; the owner may change the group to one of its own.
        if set.uid.is_some_and(|u| u != current.uid) && c.uid != 0 {
            return Err(FsError::NotPermitted("only root may change a file's owner").into());
        }
        if set.gid.is_some_and(|g| g != current.gid) && c.uid != 0 && (c.uid != current.uid || set.gid != Some(c.gid)) {
            return Err(FsError::NotPermitted("only the owner may change a file's group, to its own").into());
        }
        let mut set = SetAttr { perm: set.perm.map(|m| m & 0o7777), ..set.clone() };
        // The kernel leaves clearing set-user-ID and set-group-ID to cafs (FUSE_HANDLE_KILLPRIV_V2), and cafs
        // clears them as Linux does: when a file other than a directory is given to an owner or group, and when
        // its size is changed by a caller without CAP_FSETID (taken to be every caller but root: the request
        // does not say).
        let chown = set.uid.is_some() || set.gid.is_some();
        if current.kind != Kind::Dir && (chown || (set.size.is_some() && c.uid != 0)) {
            let perm = set.perm.unwrap_or(current.perm);
            set.perm = killed_suidgid(perm).or(set.perm);
        }
        let mut attr = v.coll.fs().setattr(local, &set)?;
        attr.ino = ino;
        Ok(Entry { attr, ttl: ttl(&v) })
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let (v, local) = self.inside(ino).map_err(|_| FsError::Invalid("not a symbolic link"))?;
        Ok(v.coll.fs_for(local).readlink(local)?)
    }

    /// `mknod` of a regular file, a FIFO or a socket (`mode` holds the type bits). Device nodes are refused: a
    /// collection carries its tree to other nodes and other users, where a device node made by whoever could
    /// write the collection would open that node's devices (the mount is `nodev` as well).
    pub fn mknod(&self, c: &Caller, parent: u64, name: &[u8], mode: u32) -> Result<Entry> {
        let node = match mode & libc::S_IFMT {
            libc::S_IFREG => None,
            libc::S_IFIFO => Some(Special::Fifo),
            libc::S_IFSOCK => Some(Special::Socket),
            libc::S_IFCHR | libc::S_IFBLK => {
                return Err(FsError::NotPermitted("device nodes are refused: a collection cannot carry one").into());
            }
            _ => return Err(FsError::Invalid("unknown file type").into()),
        };
        let (v, parent) = self.inside(parent)?;
        may_create(&v, parent, name)?;
        self.may_change(c, &v)?;
        let fs = v.coll.fs();
        let r = match node {
            None => fs.create(parent, name, mode, c.uid, c.gid),
            Some(node) => fs.mknod(parent, name, node, mode, c.uid, c.gid),
        };
        Ok(entry(&v, Self::made_again(&v, c, parent, name, r)?))
    }

    pub fn mkdir(&self, c: &Caller, parent: u64, name: &[u8], mode: u32) -> Result<Entry> {
        let (v, parent) = match self.at(parent)? {
            Node::Dir(d) => {
                let ns = self.ns().expect("a namespace directory");
                return Ok(Entry { attr: ns.make_ref_as(c.uid, c.gid, d, name)?, ttl: TTL });
            }
            Node::In(v, parent) => (v, parent),
        };
        may_create(&v, parent, name)?;
        self.may_change(c, &v)?;
        let r = v.coll.fs().mkdir(parent, name, mode, c.uid, c.gid);
        Ok(entry(&v, Self::made_again(&v, c, parent, name, r)?))
    }

    pub fn unlink(&self, c: &Caller, parent: u64, name: &[u8]) -> Result<()> {
        let (v, parent) = self.inside(parent)?;
        writable(&v)?;
        self.may_change(c, &v)?;
        if is_control_name(&v, parent, name) || parent == CONTROL_DIR {
            return Err(FsError::NotPermitted("the control files cannot be removed").into());
        }
        Ok(Self::removed_again(c, v.coll.fs().unlink(parent, name))?)
    }

    pub fn rmdir(&self, c: &Caller, parent: u64, name: &[u8]) -> Result<()> {
        let (v, parent) = self.inside(parent)?;
        writable(&v)?;
        self.may_change(c, &v)?;
        if is_control_name(&v, parent, name) {
            return Err(FsError::NotPermitted("the control directory cannot be removed").into());
        }
        Ok(Self::removed_again(c, v.coll.fs().rmdir(parent, name))?)
    }

    pub fn symlink(&self, c: &Caller, parent: u64, name: &[u8], target: &[u8]) -> Result<Entry> {
        let (v, parent) = self.inside(parent)?;
        may_create(&v, parent, name)?;
        self.may_change(c, &v)?;
        let r = v.coll.fs().symlink(parent, name, target, c.uid, c.gid);
        Ok(entry(&v, Self::made_again(&v, c, parent, name, r)?))
    }

    pub fn rename(
        &self,
        c: &Caller,
        (parent, name): (u64, &[u8]),
        (newparent, newname): (u64, &[u8]),
        mode: RenameMode,
    ) -> Result<()> {
        let (v, parent) = self.inside(parent)?;
        let (to, newparent) = self.inside(newparent)?;
        if !v.is(&to) {
            return Err(VfsError::CrossView);
        }
        writable(&v)?;
        self.may_change(c, &v)?;
        if is_control_name(&v, parent, name) || is_control_name(&v, newparent, newname) {
            return Err(FsError::NotPermitted("the control directory cannot be renamed").into());
        }
        let fs = v.coll.fs();
        match fs.rename(parent, name, newparent, newname, mode) {
            // Sent again and the source is gone but the target is there: the first attempt moved it.
            Err(FsError::NotFound) if c.resent && fs.lookup(newparent, newname).is_ok() => Ok(()),
            r => Ok(r?),
        }
    }

    /// Gives `ino` the further name `newparent`/`newname`; both must be in one collection (else `EXDEV`).
    pub fn link(&self, c: &Caller, ino: u64, newparent: u64, newname: &[u8]) -> Result<Entry> {
        let (v, local) = self.inside(ino)?;
        let (to, newparent) = self.inside(newparent)?;
        if !v.is(&to) {
            return Err(VfsError::CrossView);
        }
        if self.virtual_attr(&v, local).is_some() {
            return Err(FsError::NotPermitted("the control files cannot have other names").into());
        }
        may_create(&v, newparent, newname)?;
        self.may_change(c, &v)?;
        let fs = v.coll.fs();
        match fs.link(local, newparent, newname) {
            // Sent again, and the name is there: the first attempt made it, if it names this file.
            Err(FsError::Exists) if c.resent => match fs.lookup(newparent, newname) {
                Ok(a) if a.ino == local => Ok(entry(&v, a)),
                _ => Err(FsError::Exists.into()),
            },
            r => Ok(entry(&v, r?)),
        }
    }

    /// Opens `ino` to read, or to write as well.
    pub fn open(&self, c: &Caller, ino: u64, write: bool) -> Result<Opened> {
        let (v, local) = self.inside(ino).map_err(|_| FsError::IsDir)?;
        if control_file(local).is_some() {
            return Ok(Opened { fh: 0, direct_io: true, keep_cache: false });
        }
        if write {
            writable(&v)?;
            self.may_change(c, &v)?;
        }
        let fs = v.coll.fs_for(local);
        let a = fs.open(local)?;
        if a.kind == Kind::Dir {
            let _ = fs.release(local);
            return Err(FsError::IsDir.into());
        }
        // What an inode number of a read-only view holds never changes (a changed file of a followed ref gets
        // a new number), so the kernel may keep its cached pages across opens.
        let read_only = v.coll.is_read_only();
        Ok(Opened { fh: self.handle(write && !read_only), direct_io: false, keep_cache: read_only })
    }

    pub fn read(&self, ino: u64, offset: u64, size: u32) -> Result<Bytes> {
        let (v, local) = self.inside(ino).map_err(|_| FsError::IsDir)?;
        if let Some(f) = control_file(local) {
            let bytes = v.control.read(&v.coll, f).map_err(|error| {
                tracing::warn!(%error, file = f.name(), "control file read failed");
                VfsError::Control { file: f.name(), error }
            })?;
            let start = usize::try_from(offset).unwrap_or(usize::MAX).min(bytes.len());
            let end = start.saturating_add(size as usize).min(bytes.len());
            return Ok(Bytes::from(bytes).slice(start..end));
        }
        let data = v.coll.fs_for(local).read(local, offset, u64::from(size))?;
        crate::metrics::metrics().fuse_read(data.len());
        Ok(data)
    }

    /// `copy_file_range` within one collection: the destination shares the source's stored blocks (see
    /// [`crate::fs::Filesystem::copy_range`]). Between two collections of a namespace mount it is `EXDEV`, and
    /// what cafs does not copy by sharing (a control file, a range with a hole) is `EOPNOTSUPP`: the kernel then
    /// copies by reads and writes.
    pub fn copy_file_range(
        &self,
        c: &Caller,
        (ino_in, at_in): (u64, u64),
        (ino_out, at_out): (u64, u64),
        len: u64,
    ) -> Result<u64> {
        let (v, from) = self.inside(ino_in).map_err(|_| FsError::IsDir)?;
        let (to_view, to) = self.inside(ino_out).map_err(|_| FsError::IsDir)?;
        if !v.is(&to_view) {
            return Err(VfsError::CrossView);
        }
        writable(&v)?;
        self.may_change(c, &v)?;
        if control_file(from).is_some() || control_file(to).is_some() {
            return Err(FsError::NotSupported("the control files are copied by reads and writes").into());
        }
        let fs = v.coll.fs();
        if !fs.has(from) || !fs.has(to) {
            return Err(FsError::NotSupported("a file of an earlier version is copied by reads and writes").into());
        }
        Ok(fs.copy_range(from, at_in, to, at_out, len)?)
    }

    /// `fallocate`: a collection reserves no space, so an allocation only extends the file (with a hole) where it
    /// reaches past the end, and one with `FALLOC_FL_KEEP_SIZE` changes nothing. Punching a hole and zeroing a
    /// range make the range a hole. Collapsing and inserting ranges are `EOPNOTSUPP` (the kernel passes no other
    /// mode to a FUSE filesystem).
    pub fn fallocate(&self, c: &Caller, ino: u64, offset: u64, len: u64, mode: i32) -> Result<()> {
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let zero = match mode & !libc::FALLOC_FL_KEEP_SIZE {
            0 => false,
            libc::FALLOC_FL_PUNCH_HOLE if keep_size => true,
            // As Linux answers it.
            libc::FALLOC_FL_PUNCH_HOLE => return Err(FsError::NotSupported("a hole is punched with KEEP_SIZE").into()),
            libc::FALLOC_FL_ZERO_RANGE => true,
            _ => return Err(FsError::NotSupported("collapsing and inserting ranges").into()),
        };
        let end = offset.checked_add(len).ok_or(FsError::Invalid("an allocation past the largest file offset"))?;
        let (v, local) = self.inside(ino)?;
        if control_file(local).is_some() {
            return Err(FsError::NotPermitted("the control files cannot be allocated").into());
        }
        writable(&v)?;
        self.may_change(c, &v)?;
        if zero {
            return Ok(v.coll.fs().zero_range(local, offset, len, keep_size)?);
        }
        if keep_size || end <= v.coll.fs().getattr(local)?.size {
            return Ok(());
        }
        self.setattr(c, ino, &SetAttr { size: Some(end), ..SetAttr::default() })?;
        Ok(())
    }

    /// `lseek` with `SEEK_DATA` or `SEEK_HOLE` (the kernel answers the other kinds itself): the offset of the next
    /// data or hole at or after `offset`. The control files are data through and through.
    pub fn lseek(&self, ino: u64, offset: i64, whence: i32) -> Result<i64> {
        let data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return Err(FsError::Invalid("only SEEK_DATA and SEEK_HOLE reach the filesystem").into()),
        };
        let offset = u64::try_from(offset).map_err(|_| FsError::NoSuchOffset)?;
        let (v, local) = self.inside(ino).map_err(|_| FsError::IsDir)?;
        let at = if let Some(f) = control_file(local) {
            let size = v.control.read(&v.coll, f).map_err(|error| VfsError::Control { file: f.name(), error })?.len();
            match (offset < size as u64, data) {
                (false, _) => return Err(FsError::NoSuchOffset.into()),
                (true, true) => offset,
                (true, false) => size as u64,
            }
        } else {
            v.coll.fs_for(local).seek(local, offset, data)?
        };
        Ok(i64::try_from(at).map_err(|_| FsError::Invalid("offset beyond what lseek returns"))?)
    }

    /// Writes `data` at `offset`; a write to `.cafs/commit` commits, with `data` as the message. `kill_suidgid`:
    /// the kernel asks for set-user-ID and set-group-ID to be cleared (the writer lacks CAP_FSETID).
    pub fn write(&self, c: &Caller, ino: u64, offset: u64, data: &[u8], kill_suidgid: bool) -> Result<usize> {
        let (v, local) = self.inside(ino).map_err(|_| FsError::IsDir)?;
        if let Some(f) = control_file(local) {
            if f != ControlFile::Commit {
                return Err(VfsError::ControlReadOnly(f.name()));
            }
            let message = control::commit_message(data).inspect_err(|error| {
                tracing::warn!(%error, "write to .cafs/commit refused; nothing committed");
            })?;
            let committer = format!("uid {}", c.uid);
            // In a namespace mount, the requester commits (and must be allowed to write the ref); in a mount of
            // one ref, its owner does, checked now: the ref's permissions may have changed since the mount.
            let by = self.ns().map(|ns| ns.writer(c.uid, c.gid));
            self.rt.block_on(v.control.commit_as(&v.coll, by.as_ref(), &committer, &message)).map_err(|e| {
                tracing::debug!(error = %e, "a commit through .cafs/commit failed");
                VfsError::Commit(e)
            })?;
            return Ok(data.len());
        }
        let fs = v.coll.fs();
        fs.upload_error(local)?;
        if kill_suidgid && let Some(perm) = killed_suidgid(fs.getattr(local)?.perm) {
            fs.setattr(local, &SetAttr { perm: Some(perm), ..SetAttr::default() })?;
        }
        let n = fs.write(local, offset, data)?;
        crate::metrics::metrics().fuse_written(n);
        Ok(n)
    }

    /// close(): a writer hears of a failed upload or of writes lost with a dead cafsd; never a commit. A
    /// reader's close has nothing to report.
    pub fn flush(&self, ino: u64, fh: u64) -> Result<()> {
        if !Self::is_writer(fh) {
            return Ok(());
        }
        let (v, local) = self.inside(ino)?;
        if control_file(local).is_some() {
            return Ok(());
        }
        Ok(v.coll.fs().close_error(local, self.stale(fh))?)
    }

    pub fn release(&self, ino: u64) -> Result<()> {
        let (v, local) = self.inside(ino)?;
        if control_file(local).is_some() {
            return Ok(());
        }
        let r = v.coll.fs_for(local).release(local);
        v.coll.released();
        Ok(r?)
    }

    pub fn fsync(&self, ino: u64, fh: u64) -> Result<()> {
        let (v, local) = self.inside(ino)?;
        if control_file(local).is_some() {
            return Ok(());
        }
        Ok(v.coll.fs_for(local).fsync_handle(local, self.stale(fh))?)
    }

    /// A directory's entries are journal records: makes them (and everything before) durable.
    pub fn fsyncdir(&self, ino: u64) -> Result<()> {
        match self.at(ino)? {
            Node::In(v, _) => Ok(v.coll.fs().sync_journal()?),
            Node::Dir(_) => Ok(()),
        }
    }

    /// Opens a directory: its listing is made now and served from this handle until `releasedir`.
    pub fn opendir(&self, c: &Caller, ino: u64) -> Result<u64> {
        let fh = self.next_dir_handle.fetch_add(1, Ordering::Relaxed);
        let list = self.listing(ino, self.who(c).as_ref())?;
        self.keep_listing(ino, fh, Arc::new(list));
        Ok(fh)
    }

    pub fn releasedir(&self, ino: u64, fh: u64) {
        self.drop_listing(ino, fh);
    }

    /// The listing of the directory `ino` opened as `fh` (the entry at index i has offset i + 1).
    pub fn readdir(&self, c: &Caller, ino: u64, fh: u64) -> Result<Arc<Listing>> {
        Ok(self.opened_listing(c, ino, fh)?)
    }

    /// The entries of the directory `ino` opened as `fh` from `offset` on, with their attributes as they are
    /// now, each given to `add` with its offset until `add` says the reply is full. An entry removed since the
    /// listing was made is skipped.
    pub fn readdirplus(
        &self,
        c: &Caller,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, &[u8], &Entry) -> bool,
    ) -> Result<()> {
        let list = self.opened_listing(c, ino, fh)?;
        // A view's directory holds its entries in the tree that holds it: found once a page, not once an entry.
        let (tree, ns_dir) = match self.at(ino) {
            Ok(Node::In(v, local)) => (Some((v.coll.fs_for(local), v)), None),
            Ok(Node::Dir(d)) => (None, self.ns().map(|ns| (ns, d))),
            Err(_) => (None, None),
        };
        for (i, (name, child, _)) in list.iter().enumerate().skip(usize::try_from(offset).unwrap_or(usize::MAX)) {
            let in_tree = tree.as_ref().and_then(|(fs, v)| {
                let local = v.local(*child).filter(|&l| self.virtual_attr(v, l).is_none())?;
                Some(fs.getattr(local).map(|a| entry(v, a)))
            });
            let Ok(mut e) = in_tree.unwrap_or_else(|| self.attributes(*child)) else { continue };
            // A name that is a ref is not cached, as in lookup: the next user's path walk must ask.
            if ns_dir.is_some_and(|(ns, d)| ns.ref_of(d, name).is_some()) {
                e.ttl = Duration::ZERO;
            }
            if add(i as u64 + 1, name, &e) {
                break;
            }
        }
        Ok(())
    }

    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        let (v, local) = self.inside(ino).map_err(|_| FsError::NoAttr)?;
        if self.virtual_attr(&v, local).is_some() {
            return Err(FsError::NoAttr.into());
        }
        Ok(v.coll.getxattr(local, name)?)
    }

    /// The names of `ino`'s attributes, each ended by a NUL.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        let (v, local) = match self.at(ino)? {
            Node::In(v, local) if self.virtual_attr(&v, local).is_none() => (v, local),
            _ => return Ok(Vec::new()),
        };
        let mut list = Vec::new();
        for n in v.coll.listxattr(local)? {
            list.extend_from_slice(&n);
            list.push(0);
        }
        Ok(list)
    }

    /// Sets an attribute; `flags` are `setxattr(2)`'s (`XATTR_CREATE`, `XATTR_REPLACE`).
    pub fn setxattr(&self, c: &Caller, ino: u64, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        let (v, local) = self.inside(ino)?;
        if self.virtual_attr(&v, local).is_some() {
            return Err(FsError::NotPermitted("the control files have no attributes").into());
        }
        self.may_change(c, &v)?;
        let mode = xattr::SetMode::from_flags(flags)?;
        Ok(v.coll.setxattr(local, name, Some(value), mode)?)
    }

    pub fn removexattr(&self, c: &Caller, ino: u64, name: &[u8]) -> Result<()> {
        let (v, local) = self.inside(ino)?;
        if self.virtual_attr(&v, local).is_some() {
            return Err(FsError::NotPermitted("the control files have no attributes").into());
        }
        self.may_change(c, &v)?;
        match v.coll.setxattr(local, name, None, xattr::SetMode::Any) {
            // Sent again after a restart and already gone: the first attempt removed it.
            Err(FsError::NoAttr) if c.resent => Ok(()),
            r => Ok(r?),
        }
    }

    /// Creates a file and opens it to write.
    pub fn create(&self, c: &Caller, parent: u64, name: &[u8], mode: u32) -> Result<(Entry, Opened)> {
        let (v, parent) = self.inside(parent)?;
        may_create(&v, parent, name)?;
        self.may_change(c, &v)?;
        let fs = v.coll.fs();
        let r = fs.create(parent, name, mode, c.uid, c.gid);
        let a = Self::made_again(&v, c, parent, name, r).and_then(|a| fs.open(a.ino))?;
        Ok((entry(&v, a), Opened { fh: self.handle(true), direct_io: false, keep_cache: false }))
    }
}
