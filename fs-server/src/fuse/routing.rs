//! The adapter's own state and routing: which view holds a kernel inode number, attributes as the kernel sees
//! them, directory listings (made at `opendir`, served page by page), and the checks a namespace mount makes
//! for each requester.

use super::*;

impl CafsFuse {
    /// A mount of one collection.
    pub fn new(coll: Arc<Collection>, control: Arc<Control>, rt: tokio::runtime::Handle, uid: u32, gid: u32) -> Self {
        Self::with(Space::One(Arc::new(View::whole(coll, control))), rt, uid, gid)
    }

    /// A mount of the whole catalog.
    pub fn namespace(ns: Arc<Namespace>, rt: tokio::runtime::Handle, uid: u32, gid: u32) -> Self {
        Self::with(Space::Many(ns), rt, uid, gid)
    }

    pub(super) fn with(space: Space, rt: tokio::runtime::Handle, uid: u32, gid: u32) -> Self {
        // Distinct per process start: the time in ms, folded to leave bit 0 for the writer flag; never 0, which
        // older cafsd versions used for every handle.
        let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_millis() as u64);
        let epoch = (ms ^ u64::from(std::process::id()) << 40) & (u64::MAX >> 1) | 1;
        // Directory handles start at a per-process point too, so that one given before a restart is unlikely to
        // meet a new one for the same directory (and then both name a listing of that directory anyway).
        let next_dir_handle = AtomicU64::new(epoch << 20);
        Self { space, rt, uid, gid, gate: Arc::default(), epoch, listings: Mutex::default(), next_dir_handle }
    }

    /// Whether `fh` was given by an earlier cafsd.
    pub(super) fn stale(&self, fh: FileHandle) -> bool {
        fh.0 >> 1 != self.epoch
    }

    /// The gate in front of this mount's requests.
    pub fn gate(&self) -> Arc<Gate> {
        self.gate.clone()
    }

    /// What the kernel's number `ino` names.
    pub(super) fn at(&self, ino: INodeNo) -> Result<Node, Errno> {
        match &self.space {
            Space::One(v) => Ok(Node::In(v.clone(), ino.0)),
            Space::Many(ns) => ns.resolve(ino.0).map_err(|e| errno(&e)),
        }
    }

    /// The view holding `ino`, and its number there; the namespace's own directories cannot be changed.
    pub(super) fn inside(&self, ino: INodeNo) -> Result<(Arc<View>, u64), Errno> {
        match self.at(ino)? {
            Node::In(v, local) => Ok((v, local)),
            Node::Dir(_) => Err(Errno::EPERM),
        }
    }

    pub(super) fn ns(&self) -> Option<&Arc<Namespace>> {
        match &self.space {
            Space::Many(ns) => Some(ns),
            Space::One(_) => None,
        }
    }

    /// The requester, in a namespace mount (where each request is checked against the refs' permissions).
    pub(super) fn who(&self, req: &Request) -> Option<Principal> {
        self.ns().map(|ns| ns.principal(req.uid(), req.gid()))
    }

    /// Whether the requester may change view `v`: in a namespace mount, it needs write permission on the ref.
    pub(super) fn may_change(&self, req: &Request, v: &View) -> Result<(), Errno> {
        let (Some(ns), Some(name)) = (self.ns(), Namespace::ref_of_view(v)) else { return Ok(()) };
        if v.coll.is_read_only() {
            return Ok(());
        }
        ns.check(&ns.principal(req.uid(), req.gid()), &name, Need::Write).map_err(|e| errno(&e))
    }

    /// The attributes of the kernel's `ino`, and how long the kernel may keep them.
    pub(super) fn attributes(&self, ino: INodeNo) -> Result<(FileAttr, Duration), Errno> {
        // The namespace's directories, and the roots of views not opened yet, are answered without opening.
        if let Some(ns) = self.ns()
            && (ino.0 >> SLOT_SHIFT == 0 || ino.0 & ((1 << SLOT_SHIFT) - 1) == ROOT)
        {
            let a = ns.attr(ino.0).map_err(|e| errno(&e))?;
            return Ok((file_attr(ino.0, &a), TTL));
        }
        let Node::In(v, local) = self.at(ino)? else { unreachable!("the namespace's directories are above") };
        if let Some(a) = self.virtual_attr(&v, local) {
            return Ok((a, Duration::ZERO));
        }
        let a = v.coll.fs_for(local).getattr(local).map_err(|e| errno(&e))?;
        Ok((file_attr(ino.0, &a), ttl(&v)))
    }

    /// A name-making request that the kernel sent again after a restart and that finds its name already
    /// there: the first attempt made it (cafsd died before answering), so it succeeded.
    pub(super) fn made_again(
        v: &View,
        req: &Request,
        parent: u64,
        name: &OsStr,
        r: Result<Attr, FsError>,
    ) -> Result<Attr, FsError> {
        match r {
            Err(FsError::Exists) if resent(req) => v.coll.fs().lookup(parent, name.as_bytes()),
            r => r,
        }
    }

    /// A removal sent again that finds its name gone: the first attempt removed it.
    pub(super) fn removed_again(req: &Request, r: Result<(), FsError>) -> Result<(), FsError> {
        match r {
            Err(FsError::NotFound) if resent(req) => Ok(()),
            r => r,
        }
    }

    pub(super) fn virtual_attr(&self, v: &View, local: u64) -> Option<FileAttr> {
        let (kind, perm, size) = if local == CONTROL_DIR {
            (FileType::Directory, 0o755, 0)
        } else {
            let f = control_file(local)?;
            // In a namespace mount every user may ask for a commit: whether it may make one is the ref's
            // write permission, which cafs checks for the requester (the kernel checks these bits first).
            let writable = if self.ns().is_some() { 0o666 } else { 0o644 };
            (FileType::RegularFile, if f.writable() { writable } else { 0o444 }, 0)
        };
        let now = SystemTime::now();
        Some(FileAttr {
            ino: INodeNo(v.global(local)),
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

    pub(super) fn listings(&self) -> std::sync::MutexGuard<'_, HashMap<(u64, u64), Arc<Listing>>> {
        self.listings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A directory's entries, `.` and `..` first, as one `opendir` sees them.
    pub(super) fn listing(&self, ino: INodeNo, who: Option<&Principal>) -> Result<Listing, Errno> {
        let mut entries: Listing = Vec::new();
        let (v, local) = match self.at(ino)? {
            Node::Dir(d) => {
                let ns = self.ns().expect("a namespace directory");
                let list = match who {
                    Some(who) => ns.list_for(who, d),
                    None => ns.list(d),
                }
                .map_err(|e| errno(&e))?;
                entries.push((b".".to_vec(), d, FileType::Directory));
                entries.push((b"..".to_vec(), ns.parent_of(d), FileType::Directory));
                entries.extend(list.into_iter().map(|(name, a)| (name, a.ino, kind(a.kind))));
                return Ok(entries);
            }
            Node::In(v, local) => (v, local),
        };
        if local == CONTROL_DIR {
            entries.push((b".".to_vec(), ino.0, FileType::Directory));
            entries.push((b"..".to_vec(), v.global(ROOT), FileType::Directory));
            for f in ControlFile::ALL {
                entries.push((f.name().as_bytes().to_vec(), v.global(control_ino(f)), FileType::RegularFile));
            }
            return Ok(entries);
        }
        let fs = v.coll.fs_for(local);
        let parent = fs.parent(local).map_err(|e| errno(&e))?;
        let list = fs.readdir(local).map_err(|e| errno(&e))?;
        entries.reserve(list.len() + 2);
        entries.push((b".".to_vec(), ino.0, FileType::Directory));
        entries.push((b"..".to_vec(), if local == ROOT { v.parent } else { v.global(parent) }, FileType::Directory));
        entries.extend(list.into_iter().map(|(name, i, k)| (name, v.global(i), kind(k))));
        Ok(entries)
    }

    /// The listing `opendir` made for this handle; one made now for a handle this process did not give (the
    /// directory was opened before a restart), kept until its `releasedir`.
    pub(super) fn opened_listing(&self, ino: INodeNo, fh: FileHandle, req: &Request) -> Result<Arc<Listing>, Errno> {
        if let Some(l) = self.listings().get(&(ino.0, fh.0)) {
            return Ok(l.clone());
        }
        let list = Arc::new(self.listing(ino, self.who(req).as_ref())?);
        self.listings().insert((ino.0, fh.0), list.clone());
        Ok(list)
    }

    /// An attribute value or name list as `getxattr`/`listxattr` answer: its size when asked for size 0,
    /// `ERANGE` when it does not fit the caller's buffer.
    pub(super) fn sized(reply: ReplyXattr, size: u32, data: &[u8]) {
        if size == 0 {
            reply.size(data.len() as u32)
        } else if data.len() > size as usize {
            reply.error(Errno::ERANGE)
        } else {
            reply.data(data)
        }
    }

    pub(super) fn empty(reply: ReplyEmpty, r: Result<(), FsError>) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }
}
