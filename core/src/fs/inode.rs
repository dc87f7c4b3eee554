//! The inode table: directories, regular files, symlinks, FIFOs and sockets with POSIX metadata, and the
//! namespace operations (create, link, unlink, rmdir, rename with its flags) with POSIX's errors. No I/O and no
//! locking here: the filesystem calls in with its lock held.
//!
//! An inode other than a directory may have several names (hard links). Each inode has one *first* name, the
//! one its path is given by (journal records, inode numbering, the sidecar's link groups); the others are kept
//! apart, only for the inodes that have them, so a tree without links pays nothing for them. When the first
//! name goes, another takes its place.

use std::collections::BTreeMap;

/// Maps keyed by inode number: hashed fast (the keys are ours, not an attacker's).
pub type InoMap<V> = std::collections::HashMap<Ino, V, foldhash::fast::RandomState>;
use std::time::SystemTime;

use super::FsError;
use super::extents::Extents;

pub type Ino = u64;

/// The root directory's inode number (FUSE's `FUSE_ROOT_ID`).
pub const ROOT: Ino = 1;
/// Inode numbers stay below this, so that an adapter can put a number of its own above them (the namespace
/// mount puts a view's number there, and the control files sit just below the limit).
pub const INO_LIMIT: Ino = (1 << 40) - 64;

/// Longest name a directory entry may have (Linux's `NAME_MAX`).
pub const NAME_MAX: usize = 255;

/// Most names one inode may have (ext4's limit): `link` past it fails with `EMLINK`.
pub const LINK_MAX: u32 = 65_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
}

/// A node that holds no data of its own: the kernel gives it its behaviour (a pipe, a socket's rendezvous).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Special {
    Fifo,
    Socket,
}

/// POSIX metadata of an inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits (`0o7777`), without the file type.
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub atime: SystemTime,
}

#[derive(Debug)]
pub enum Body {
    File(Extents),
    Dir(BTreeMap<Box<[u8]>, Ino>),
    Symlink(Box<[u8]>),
    Special(Special),
}

impl Body {
    /// A regular file's extents; `EISDIR` for a directory, `EINVAL` for anything else.
    pub fn file(&self) -> Result<&Extents, FsError> {
        match self {
            Body::File(x) => Ok(x),
            Body::Dir(_) => Err(FsError::IsDir),
            Body::Symlink(_) | Body::Special(_) => Err(FsError::Invalid("not a regular file")),
        }
    }

    /// [`Body::file`], to change.
    pub fn file_mut(&mut self) -> Result<&mut Extents, FsError> {
        match self {
            Body::File(x) => Ok(x),
            Body::Dir(_) => Err(FsError::IsDir),
            Body::Symlink(_) | Body::Special(_) => Err(FsError::Invalid("not a regular file")),
        }
    }
}

/// An entry for [`Table::create_sorted`]: name, body, metadata, the inode number to give it (if any) and its
/// extended attributes.
pub type NewEntry<'a> = (&'a [u8], Body, Meta, Option<Ino>, Option<Box<super::xattr::Xattrs>>);

#[derive(Debug)]
pub struct Inode {
    pub meta: Meta,
    pub body: Body,
    /// Directory entries naming this inode (0 once unlinked; the inode lives on while it is open).
    pub nlink: u32,
    /// Open handles.
    pub opens: u32,
    /// Stored extended attributes (boxed: most entries have none, and a million-entry tree pays a word each).
    pub xattrs: Option<Box<super::xattr::Xattrs>>,
}

impl Inode {
    pub fn kind(&self) -> Kind {
        match self.body {
            Body::File(_) => Kind::File,
            Body::Dir(_) => Kind::Dir,
            Body::Symlink(_) => Kind::Symlink,
            Body::Special(Special::Fifo) => Kind::Fifo,
            Body::Special(Special::Socket) => Kind::Socket,
        }
    }

    pub fn size(&self) -> u64 {
        match &self.body {
            Body::File(x) => x.size(),
            Body::Dir(entries) => entries.len() as u64,
            Body::Symlink(t) => t.len() as u64,
            Body::Special(_) => 0,
        }
    }
}

/// Whether `name` may name a directory entry; the error says why not.
pub fn check_name(name: &[u8]) -> Result<(), FsError> {
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.iter().any(|&b| b == b'/' || b == 0) {
        return Err(FsError::Invalid("invalid file name"));
    }
    Ok(())
}

/// What `rename` may do to an existing target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RenameMode {
    /// Replace the target if there is one (POSIX `rename`).
    #[default]
    Replace,
    /// Fail with `EEXIST` if the target exists (`RENAME_NOREPLACE`).
    NoReplace,
    /// Swap source and target, which must both exist (`RENAME_EXCHANGE`).
    Exchange,
}

#[derive(Debug)]
pub struct Table {
    inodes: InoMap<Inode>,
    /// Inodes freed since the last [`Table::take_freed`], so their owners can drop what they hold.
    freed: Vec<Ino>,
    /// Parent of each directory (the root is its own parent), for `..` and the rename-into-itself check.
    parents: InoMap<Ino>,
    /// The first name of each linked inode but the root: for its path.
    names: InoMap<(Ino, Box<[u8]>)>,
    /// The other names of inodes that have more than one.
    links: InoMap<Vec<(Ino, Box<[u8]>)>>,
    next: Ino,
}

impl Table {
    pub fn new(root_meta: Meta) -> Self {
        let mut inodes = InoMap::default();
        inodes.insert(
            ROOT,
            Inode { meta: root_meta, body: Body::Dir(BTreeMap::new()), nlink: 2, opens: 0, xattrs: None },
        );
        Self {
            inodes,
            freed: Vec::new(),
            parents: InoMap::from_iter([(ROOT, ROOT)]),
            names: InoMap::default(),
            links: InoMap::default(),
            next: ROOT + 1,
        }
    }

    pub fn get(&self, ino: Ino) -> Result<&Inode, FsError> {
        self.inodes.get(&ino).ok_or(FsError::NotFound)
    }

    pub fn get_mut(&mut self, ino: Ino) -> Result<&mut Inode, FsError> {
        self.inodes.get_mut(&ino).ok_or(FsError::NotFound)
    }

    pub fn parent(&self, dir: Ino) -> Option<Ino> {
        self.parents.get(&dir).copied()
    }

    /// The path of a linked inode from the root, components joined by `/` (the root's is empty); `None` for an
    /// inode no entry names (unlinked, still open).
    pub fn path(&self, ino: Ino) -> Option<Vec<u8>> {
        let mut names = Vec::new();
        let mut at = ino;
        while at != ROOT {
            let (parent, name) = self.names.get(&at)?;
            names.push(&name[..]);
            at = *parent;
        }
        Some(join(names.into_iter().rev()))
    }

    /// The paths of every name of `ino`, its first name's first (empty for an unlinked inode).
    pub fn paths(&self, ino: Ino) -> Vec<Vec<u8>> {
        let first = self.path(ino);
        let others = self.links.get(&ino).into_iter().flatten();
        first.into_iter().chain(others.filter_map(|(dir, name)| self.child_path(*dir, name))).collect()
    }

    /// Every linked inode's number by the path of its first name, and the next number to give: what a restarted cafsd needs to answer
    /// to the numbers the kernel holds.
    pub fn numbering(&self) -> (Vec<(Vec<u8>, Ino)>, Ino) {
        let inos = self.names.keys().filter_map(|&ino| Some((self.path(ino)?, ino))).collect();
        (inos, self.next)
    }

    /// Inodes with open handles, and how many each.
    pub fn open_inodes(&self) -> Vec<(Ino, u32)> {
        self.inodes.iter().filter(|(_, i)| i.opens > 0).map(|(&n, i)| (n, i.opens)).collect()
    }

    /// Numbers from now on start at `next` at least.
    pub fn reserve_below(&mut self, next: Ino) {
        self.next = self.next.max(next);
    }

    /// Makes room for `more` inodes at once (a tree about to be loaded), instead of growing step by step.
    pub fn reserve(&mut self, more: usize) {
        self.inodes.reserve(more);
        self.names.reserve(more);
    }

    /// The path `name` in `dir` has (or would have).
    pub fn child_path(&self, dir: Ino, name: &[u8]) -> Option<Vec<u8>> {
        let mut p = self.path(dir)?;
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(name);
        Some(p)
    }

    /// The inode at `path` (as [`Table::path`] writes it), and its parent and name.
    pub fn resolve(&self, path: &[u8]) -> Result<(Ino, Ino, Vec<u8>), FsError> {
        if path.is_empty() {
            return Ok((ROOT, ROOT, Vec::new()));
        }
        let (dir, name) = self.resolve_parent(path)?;
        Ok((self.lookup(dir, &name)?, dir, name))
    }

    /// The directory that holds `path`, and the last component.
    pub fn resolve_parent(&self, path: &[u8]) -> Result<(Ino, Vec<u8>), FsError> {
        let mut comps = path.split(|&b| b == b'/');
        let last = comps.next_back().ok_or(FsError::NotFound)?;
        let mut dir = ROOT;
        for c in comps {
            dir = self.lookup(dir, c)?;
        }
        Ok((dir, last.to_vec()))
    }

    fn dir(&self, ino: Ino) -> Result<&BTreeMap<Box<[u8]>, Ino>, FsError> {
        match &self.get(ino)?.body {
            Body::Dir(entries) => Ok(entries),
            _ => Err(FsError::NotDir),
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> Result<&mut BTreeMap<Box<[u8]>, Ino>, FsError> {
        match &mut self.get_mut(ino)?.body {
            Body::Dir(entries) => Ok(entries),
            _ => Err(FsError::NotDir),
        }
    }

    /// Entries of a directory in name order.
    pub fn entries(&self, dir: Ino) -> Result<impl Iterator<Item = (&[u8], Ino)>, FsError> {
        Ok(self.dir(dir)?.iter().map(|(n, &i)| (&n[..], i)))
    }

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Ino, FsError> {
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        self.dir(parent)?.get(name).copied().ok_or(FsError::NotFound)
    }

    /// Creates `name` in `parent`.
    pub fn create(&mut self, parent: Ino, name: &[u8], body: Body, meta: Meta) -> Result<Ino, FsError> {
        self.create_as(parent, name, body, meta, None)
    }

    /// The number for a new inode: `ino` when given (and free), else the next one; numbers after it come later.
    fn take_number(&mut self, ino: Option<Ino>) -> Result<Ino, FsError> {
        let ino = match ino {
            Some(n) if n <= ROOT || self.inodes.contains_key(&n) => {
                return Err(FsError::Invalid("an inode number given twice"));
            }
            Some(n) => n,
            None => self.next,
        };
        if ino >= INO_LIMIT {
            return Err(FsError::NoSpace("every inode number of this tree has been used".into()));
        }
        self.next = self.next.max(ino + 1);
        Ok(ino)
    }

    /// Creates `name` in `parent` with the inode number `ino` when given (the number a live tree gave it before
    /// cafsd restarted), else the next free one.
    pub fn create_as(
        &mut self,
        parent: Ino,
        name: &[u8],
        body: Body,
        meta: Meta,
        ino: Option<Ino>,
    ) -> Result<Ino, FsError> {
        check_name(name)?;
        if self.dir(parent)?.contains_key(name) {
            return Err(FsError::Exists);
        }
        let ino = self.take_number(ino)?;
        let is_dir = matches!(body, Body::Dir(_));
        let now = meta.mtime;
        self.inodes.insert(ino, Inode { meta, body, nlink: if is_dir { 2 } else { 1 }, opens: 0, xattrs: None });
        if is_dir {
            self.parents.insert(ino, parent);
            self.get_mut(parent)?.nlink += 1;
        }
        self.dir_mut(parent)?.insert(name.into(), ino);
        self.names.insert(ino, (parent, name.into()));
        self.touch(parent, now);
        Ok(ino)
    }

    /// Fills the empty directory `parent` with `entries`, given in strictly increasing name order (as a
    /// manifest's directory iterates), each with the inode number to give it if any; built in one pass rather
    /// than entry by entry, which for a directory of a million entries is two tree searches each saved.
    /// Returns each entry's inode number and whether it is a directory.
    pub fn create_sorted(&mut self, parent: Ino, entries: Vec<NewEntry<'_>>) -> Result<Vec<(Ino, bool)>, FsError> {
        if !self.dir(parent)?.is_empty() {
            return Err(FsError::Invalid("bulk creation into a directory that has entries"));
        }
        if entries.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(FsError::Invalid("entries out of order"));
        }
        let mut made = Vec::with_capacity(entries.len());
        let mut children = Vec::with_capacity(entries.len());
        let mut subdirs = 0;
        let mut latest = None;
        for (name, body, meta, ino, xattrs) in entries {
            check_name(name)?;
            let ino = self.take_number(ino)?;
            let is_dir = matches!(body, Body::Dir(_));
            latest = Some(meta.mtime);
            self.inodes.insert(ino, Inode { meta, body, nlink: if is_dir { 2 } else { 1 }, opens: 0, xattrs });
            if is_dir {
                self.parents.insert(ino, parent);
                subdirs += 1;
            }
            let name: Box<[u8]> = name.into();
            self.names.insert(ino, (parent, name.clone()));
            children.push((name, ino));
            made.push((ino, is_dir));
        }
        // From sorted input, `collect` builds the tree in one pass.
        *self.dir_mut(parent)? = children.into_iter().collect();
        self.get_mut(parent)?.nlink += subdirs;
        if let Some(t) = latest {
            self.touch(parent, t);
        }
        Ok(made)
    }

    /// Updates a directory's mtime and ctime after its entries changed.
    fn touch(&mut self, dir: Ino, now: SystemTime) {
        if let Some(i) = self.inodes.get_mut(&dir) {
            i.meta.mtime = now;
            i.meta.ctime = now;
        }
    }

    /// Removes a non-directory entry.
    pub fn unlink(&mut self, parent: Ino, name: &[u8], now: SystemTime) -> Result<(), FsError> {
        let ino = self.lookup(parent, name)?;
        if self.get(ino)?.kind() == Kind::Dir {
            return Err(FsError::IsDir);
        }
        self.dir_mut(parent)?.remove(name);
        self.forget_name(ino, parent, name);
        self.touch(parent, now);
        self.drop_link(ino, now);
        Ok(())
    }

    /// Gives the existing non-directory `ino` the further name `name` in `parent` (`link(2)`).
    pub fn link(&mut self, ino: Ino, parent: Ino, name: &[u8], now: SystemTime) -> Result<(), FsError> {
        check_name(name)?;
        let inode = self.get(ino)?;
        if inode.kind() == Kind::Dir {
            return Err(FsError::NotPermitted("a directory cannot have a second name"));
        }
        if inode.nlink == 0 {
            return Err(FsError::NotFound);
        }
        if inode.nlink >= LINK_MAX {
            return Err(FsError::TooManyLinks);
        }
        if self.dir(parent)?.contains_key(name) {
            return Err(FsError::Exists);
        }
        self.dir_mut(parent)?.insert(name.into(), ino);
        self.links.entry(ino).or_default().push((parent, name.into()));
        let inode = self.get_mut(ino)?;
        inode.nlink += 1;
        inode.meta.ctime = now;
        self.touch(parent, now);
        Ok(())
    }

    /// Makes the entry `name` in `parent`, a file of one name, another name of `ino` instead (loading a
    /// committed tree, whose manifest lists every name of a file as a file of its own). The file it named is
    /// freed.
    pub fn relink(&mut self, parent: Ino, name: &[u8], ino: Ino) -> Result<(), FsError> {
        let old = self.lookup(parent, name)?;
        if old == ino {
            return Ok(());
        }
        let (old_inode, inode) = (self.get(old)?, self.get(ino)?);
        if old_inode.kind() == Kind::Dir || old_inode.nlink != 1 || inode.kind() == Kind::Dir {
            return Err(FsError::Invalid("only a file of one name can become a link"));
        }
        // Checked before anything changes: past here, the link cannot fail.
        if inode.nlink == 0 || inode.nlink >= LINK_MAX {
            return Err(FsError::TooManyLinks);
        }
        // The times given are the file's own: loading puts back the directory's afterwards.
        let ctime = self.get(ino)?.meta.ctime;
        self.unlink(parent, name, ctime)?;
        self.link(ino, parent, name, ctime)
    }

    /// Forgets that `name` in `parent` names `ino`; if that was its first name, another becomes first.
    fn forget_name(&mut self, ino: Ino, parent: Ino, name: &[u8]) {
        let is_first = self.names.get(&ino).is_some_and(|(p, n)| *p == parent && &n[..] == name);
        let Some(others) = self.links.get_mut(&ino) else {
            if is_first {
                self.names.remove(&ino);
            }
            return;
        };
        if is_first {
            let next = others.pop().expect("kept only while not empty");
            self.names.insert(ino, next);
        } else if let Some(at) = others.iter().position(|(p, n)| *p == parent && &n[..] == name) {
            others.swap_remove(at);
        }
        if others.is_empty() {
            self.links.remove(&ino);
        }
    }

    /// Records that the name `from` of `ino` is now `to`.
    fn move_name(&mut self, ino: Ino, from: (Ino, &[u8]), to: (Ino, &[u8])) {
        let first = self.names.get_mut(&ino);
        if let Some(f) = first
            && f.0 == from.0
            && &f.1[..] == from.1
        {
            *f = (to.0, to.1.into());
            return;
        }
        if let Some(n) =
            self.links.get_mut(&ino).and_then(|v| v.iter_mut().find(|(p, n)| *p == from.0 && &n[..] == from.1))
        {
            *n = (to.0, to.1.into());
        }
    }

    /// Removes an empty directory.
    pub fn rmdir(&mut self, parent: Ino, name: &[u8], now: SystemTime) -> Result<(), FsError> {
        let ino = self.lookup(parent, name)?;
        if !self.dir(ino)?.is_empty() {
            return Err(FsError::NotEmpty);
        }
        self.dir_mut(parent)?.remove(name);
        self.get_mut(parent)?.nlink -= 1;
        self.touch(parent, now);
        self.parents.remove(&ino);
        self.names.remove(&ino);
        let inode = self.get_mut(ino)?;
        inode.nlink = 0;
        self.release_if_unused(ino);
        Ok(())
    }

    fn drop_link(&mut self, ino: Ino, now: SystemTime) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.nlink = i.nlink.saturating_sub(1);
            i.meta.ctime = now;
        }
        self.release_if_unused(ino);
    }

    /// Frees an inode that has no name and no open handle.
    pub fn release_if_unused(&mut self, ino: Ino) -> Option<Inode> {
        let i = self.inodes.get(&ino)?;
        if ino != ROOT && i.opens == 0 && (i.nlink == 0 || (i.kind() == Kind::Dir && !self.parents.contains_key(&ino)))
        {
            self.freed.push(ino);
            return self.inodes.remove(&ino);
        }
        None
    }

    /// The inodes freed since the last call.
    pub fn take_freed(&mut self) -> Vec<Ino> {
        std::mem::take(&mut self.freed)
    }

    /// Whether `ancestor` is `dir` or one of its ancestors.
    fn is_ancestor(&self, ancestor: Ino, mut dir: Ino) -> bool {
        loop {
            if dir == ancestor {
                return true;
            }
            match self.parents.get(&dir) {
                Some(&p) if p != dir => dir = p,
                _ => return false,
            }
        }
    }

    /// Moves `parent/name` to `new_parent/new_name`, as `rename(2)`/`renameat2(2)` do.
    pub fn rename(
        &mut self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        mode: RenameMode,
        now: SystemTime,
    ) -> Result<(), FsError> {
        check_name(new_name)?;
        let src = self.lookup(parent, name)?;
        self.dir(new_parent)?;
        let src_is_dir = self.get(src)?.kind() == Kind::Dir;
        let target = self.dir(new_parent)?.get(new_name).copied();
        if src_is_dir && self.is_ancestor(src, new_parent) {
            return Err(FsError::Invalid("cannot move a directory into itself"));
        }
        // Linux refuses a no-replace rename onto any entry, another name of the same file included, before it
        // finds a rename onto the same file a no-op.
        if let (RenameMode::NoReplace, Some(_)) = (mode, target) {
            return Err(FsError::Exists);
        }
        if target == Some(src) {
            return Ok(());
        }
        match (mode, target) {
            (RenameMode::Exchange, None) => return Err(FsError::NotFound),
            (RenameMode::Exchange, Some(t)) => {
                let t_is_dir = self.get(t)?.kind() == Kind::Dir;
                if t_is_dir && self.is_ancestor(t, parent) {
                    return Err(FsError::Invalid("cannot move a directory into itself"));
                }
                self.dir_mut(parent)?.insert(name.into(), t);
                self.dir_mut(new_parent)?.insert(new_name.into(), src);
                self.move_name(t, (new_parent, new_name), (parent, name));
                self.move_name(src, (parent, name), (new_parent, new_name));
                for (ino, is_dir, from, to) in
                    [(src, src_is_dir, parent, new_parent), (t, t_is_dir, new_parent, parent)]
                {
                    if is_dir && from != to {
                        self.parents.insert(ino, to);
                        self.get_mut(from)?.nlink -= 1;
                        self.get_mut(to)?.nlink += 1;
                    }
                    self.get_mut(ino)?.meta.ctime = now;
                }
                self.touch(parent, now);
                self.touch(new_parent, now);
                return Ok(());
            }
            _ => {}
        }
        if let Some(t) = target {
            let t_is_dir = self.get(t)?.kind() == Kind::Dir;
            match (src_is_dir, t_is_dir) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) if !self.dir(t)?.is_empty() => return Err(FsError::NotEmpty),
                _ => {}
            }
            if t_is_dir {
                self.rmdir(new_parent, new_name, now)?;
            } else {
                self.dir_mut(new_parent)?.remove(new_name);
                self.forget_name(t, new_parent, new_name);
                self.drop_link(t, now);
            }
        }
        self.dir_mut(parent)?.remove(name);
        self.dir_mut(new_parent)?.insert(new_name.into(), src);
        self.move_name(src, (parent, name), (new_parent, new_name));
        if src_is_dir && parent != new_parent {
            self.parents.insert(src, new_parent);
            self.get_mut(parent)?.nlink -= 1;
            self.get_mut(new_parent)?.nlink += 1;
        }
        self.get_mut(src)?.meta.ctime = now;
        self.touch(parent, now);
        self.touch(new_parent, now);
        Ok(())
    }
}

/// Components joined by `/`.
pub(crate) fn join<'a>(names: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut p = Vec::new();
    for n in names {
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(n);
    }
    p
}

#[cfg(test)]
mod tests;
