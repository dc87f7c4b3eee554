//! Routing: which view holds a kernel inode number, attributes as the kernel sees them (the control files'
//! made up here), the checks a namespace mount makes for each requester, resent requests that find their own
//! effect, and directory listings (made at `opendir`, served page by page).

use std::time::{Duration, SystemTime};

use super::*;
use crate::catalog::{Need, Principal};
use crate::fs::inode::ROOT;
use crate::vfs::view::LOCAL_MASK;

/// How long the kernel may keep names and attributes of a view (see [`LONG_TTL`]).
pub(super) fn ttl(v: &View) -> Duration {
    if v.changes_only_here() { LONG_TTL } else { TTL }
}

/// Clears set-user-ID, and set-group-ID where the group may execute, as Linux does when a file is written,
/// truncated or given away; none when neither is set.
pub(super) fn killed_suidgid(perm: u32) -> Option<u32> {
    let sgid = if perm & 0o010 != 0 { 0o2000 } else { 0 };
    let kill = perm & (0o4000 | sgid);
    (kill != 0).then_some(perm & !kill)
}

/// `a` of view `v`, in the kernel's numbers.
pub(super) fn entry(v: &View, mut a: Attr) -> Entry {
    a.ino = v.global(a.ino);
    Entry { ttl: ttl(v), attr: a }
}

pub(super) fn writable(v: &View) -> Result<(), FsError> {
    if v.coll.is_read_only() { Err(FsError::ReadOnly) } else { Ok(()) }
}

/// Whether `parent/name` is the control directory or `.arvados#collection`, which a writable mount's root has.
pub(super) fn is_control_name(v: &View, parent: u64, name: &[u8]) -> bool {
    parent == ROOT && (name == control::DIR_NAME || name == control::ARVADOS_NAME) && !v.coll.is_read_only()
}

/// Whether a new entry may be made as `parent/name`: the view is writable and the name is not the control
/// directory's (nor inside it).
pub(super) fn may_create(v: &View, parent: u64, name: &[u8]) -> Result<(), FsError> {
    writable(v)?;
    if is_control_name(v, parent, name) || parent == CONTROL_DIR {
        return Err(FsError::Exists);
    }
    Ok(())
}

impl Vfs {
    /// What the kernel's number `ino` names.
    pub(super) fn at(&self, ino: u64) -> Result<Node, FsError> {
        match &self.space {
            Space::One(v) => Ok(Node::In(v.clone(), ino)),
            Space::Many(ns) => ns.resolve(ino),
        }
    }

    /// The view holding `ino`, and its number there; the namespace's own directories cannot be changed.
    pub(super) fn inside(&self, ino: u64) -> Result<(Arc<View>, u64), FsError> {
        match self.at(ino)? {
            Node::In(v, local) => Ok((v, local)),
            Node::Dir(_) => Err(FsError::NotPermitted("the namespace's directories are fixed")),
        }
    }

    pub(super) fn ns(&self) -> Option<&Arc<Namespace>> {
        match &self.space {
            Space::Many(ns) => Some(ns),
            Space::One(_) => None,
        }
    }

    /// The requester, in a namespace mount (where each request is checked against the refs' permissions).
    pub(super) fn who(&self, c: &Caller) -> Option<Principal> {
        self.ns().map(|ns| ns.principal(c.uid, c.gid))
    }

    /// Whether the requester may change view `v`: in a namespace mount, it needs write permission on the ref.
    pub(super) fn may_change(&self, c: &Caller, v: &View) -> Result<(), FsError> {
        let (Some(ns), Some(name)) = (self.ns(), Namespace::ref_of_view(v)) else { return Ok(()) };
        if v.coll.is_read_only() {
            return Ok(());
        }
        ns.check(&ns.principal(c.uid, c.gid), &name, Need::Write)
    }

    /// The attributes of the kernel's `ino`, and how long the kernel may keep them.
    pub(super) fn attributes(&self, ino: u64) -> Result<Entry, FsError> {
        // The namespace's directories, and the roots of views not opened yet, are answered without opening.
        if let Some(ns) = self.ns()
            && (ino >> SLOT_SHIFT == 0 || ino & LOCAL_MASK == ROOT)
        {
            return Ok(Entry { attr: ns.attr(ino)?, ttl: TTL });
        }
        let Node::In(v, local) = self.at(ino)? else { unreachable!("the namespace's directories are above") };
        if let Some(attr) = self.virtual_attr(&v, local) {
            return Ok(Entry { attr, ttl: Duration::ZERO });
        }
        Ok(entry(&v, v.coll.fs_for(local).getattr(local)?))
    }

    /// A name-making request that the kernel sent again after a restart and that finds its name already
    /// there: the first attempt made it (cafsd died before answering), so it succeeded.
    pub(super) fn made_again(
        v: &View,
        c: &Caller,
        parent: u64,
        name: &[u8],
        r: Result<Attr, FsError>,
    ) -> Result<Attr, FsError> {
        match r {
            Err(FsError::Exists) if c.resent => v.coll.fs().lookup(parent, name),
            r => r,
        }
    }

    /// A removal sent again that finds its name gone: the first attempt removed it.
    pub(super) fn removed_again(c: &Caller, r: Result<(), FsError>) -> Result<(), FsError> {
        match r {
            Err(FsError::NotFound) if c.resent => Ok(()),
            r => r,
        }
    }

    /// The attributes of `.cafs` and its files (the mount's owner's), or none for an inode of the tree.
    pub(super) fn virtual_attr(&self, v: &View, local: u64) -> Option<Attr> {
        let (kind, perm) = if local == CONTROL_DIR {
            (Kind::Dir, 0o755)
        } else {
            let f = control_file(local)?;
            // In a namespace mount every user may ask for a commit: whether it may make one is the ref's
            // write permission, which cafs checks for the requester (the kernel checks these bits first).
            let writable = if self.ns().is_some() { 0o666 } else { 0o644 };
            (Kind::File, if f.writable() { writable } else { 0o444 })
        };
        let now = SystemTime::now();
        Some(Attr {
            ino: v.global(local),
            kind,
            size: 0,
            perm,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            atime: now,
            mtime: now,
            ctime: now,
        })
    }

    fn listings(&self) -> std::sync::MutexGuard<'_, HashMap<(u64, u64), Arc<Listing>>> {
        self.listings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `list` for the directory `ino` opened as `fh`.
    pub(super) fn keep_listing(&self, ino: u64, fh: u64, list: Arc<Listing>) {
        self.listings().insert((ino, fh), list);
    }

    pub(super) fn drop_listing(&self, ino: u64, fh: u64) {
        self.listings().remove(&(ino, fh));
    }

    /// A directory's entries, `.` and `..` first, as one `opendir` sees them.
    pub(super) fn listing(&self, ino: u64, who: Option<&Principal>) -> Result<Listing, FsError> {
        let mut entries: Listing = Vec::new();
        let (v, local) = match self.at(ino)? {
            Node::Dir(d) => {
                let ns = self.ns().expect("a namespace directory");
                let list = match who {
                    Some(who) => ns.list_for(who, d),
                    None => ns.list(d),
                }?;
                entries.push((b".".to_vec(), d, Kind::Dir));
                entries.push((b"..".to_vec(), ns.parent_of(d), Kind::Dir));
                entries.extend(list.into_iter().map(|(name, a)| (name, a.ino, a.kind)));
                return Ok(entries);
            }
            Node::In(v, local) => (v, local),
        };
        if local == CONTROL_DIR {
            entries.push((b".".to_vec(), ino, Kind::Dir));
            entries.push((b"..".to_vec(), v.global(ROOT), Kind::Dir));
            for f in ControlFile::ALL.into_iter().filter(|f| *f != ControlFile::Arvados) {
                entries.push((f.name().as_bytes().to_vec(), v.global(control_ino(f)), Kind::File));
            }
            return Ok(entries);
        }
        let fs = v.coll.fs_for(local);
        let parent = fs.parent(local)?;
        let list = fs.readdir(local)?;
        entries.reserve(list.len() + 2);
        entries.push((b".".to_vec(), ino, Kind::Dir));
        entries.push((b"..".to_vec(), if local == ROOT { v.parent } else { v.global(parent) }, Kind::Dir));
        entries.extend(list.into_iter().map(|(name, i, k)| (name, v.global(i), k)));
        Ok(entries)
    }

    /// The listing `opendir` made for this handle; one made now for a handle this process did not give (the
    /// directory was opened before a restart), kept until its `releasedir`.
    pub(super) fn opened_listing(&self, c: &Caller, ino: u64, fh: u64) -> Result<Arc<Listing>, FsError> {
        if let Some(l) = self.listings().get(&(ino, fh)) {
            return Ok(l.clone());
        }
        let list = Arc::new(self.listing(ino, self.who(c).as_ref())?);
        self.keep_listing(ino, fh, list.clone());
        Ok(list)
    }
}
