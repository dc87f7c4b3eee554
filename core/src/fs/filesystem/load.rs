//! Building a filesystem from a committed collection: its manifest and sidecar (modes, times, symlinks,
//! xattrs) into the inode table, with inode numbers chosen fresh or kept from an earlier load (a remount, a
//! restart that must keep the numbers the kernel knows), and reloading a newer version of the same ref.

use super::*;

impl Filesystem {
    /// The tree of a committed collection: its manifest and sidecar (an empty sidecar gives defaults: files
    /// `0644`, directories `0755`, owned by `uid`/`gid`, modified now).
    pub fn load(manifest: &Manifest, sidecar: &[u8], setup: Setup) -> Result<Self, FsError> {
        let index = sidecar::Index::from_bytes(sidecar).map_err(|e| FsError::Corrupt(e.to_string()))?;
        Self::load_numbered(manifest, &index, &Numbering::default(), setup)
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
        let setup = Setup { store: sh.store.clone(), rt: sh.rt.clone(), opts: sh.opts.clone(), uid, gid };
        let new = Self::load_numbered(manifest, sidecar, &Numbering { inos, next }, setup)?;
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

    /// [`Filesystem::load`], giving the entries the inode numbers `numbering` names (by path): the numbers a
    /// live tree had when it was committed, which the kernel may still hold after cafsd restarted. Entries it
    /// does not name get numbers from its `next` on.
    pub fn load_numbered(
        manifest: &Manifest,
        sidecar: &sidecar::Index,
        numbering: &Numbering,
        setup: Setup,
    ) -> Result<Self, FsError> {
        let (uid, gid) = (setup.uid, setup.gid);
        let numbers: HashMap<&[u8], Ino> = numbering.inos.iter().map(|(p, i)| (&p[..], *i)).collect();
        // A file of several names has one number, given by `numbering` under one of its names, which need not be
        // the name this sidecar calls first (the live tree's first name went, or another tree wrote the
        // sidecar): the first name, which the file is made under, takes it, and the further names, which become
        // names of that file, take none.
        let mut moved: HashMap<Vec<u8>, Option<Ino>> = HashMap::new();
        if !numbers.is_empty() {
            let path = |key: &str| sidecar::components(key).map(|c| crate::fs::inode::join(c.iter().map(|c| &c[..])));
            for (key, first) in sidecar.links() {
                let (Ok(key), Ok(first)) = (path(key), path(first)) else { continue };
                if let Some(&n) = numbers.get(&key[..])
                    && !numbers.contains_key(&first[..])
                {
                    moved.entry(first).or_insert(Some(n));
                }
                moved.insert(key, None);
            }
        }
        let number = |comps: &[&[u8]]| {
            if numbers.is_empty() {
                return None;
            }
            let path = crate::fs::inode::join(comps.iter().copied());
            moved.get(&path).copied().unwrap_or_else(|| numbers.get(&path[..]).copied())
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
            Some(e) => Ok::<_, FsError>((meta_of(e), e.xattrs().map_err(|e| FsError::Corrupt(e.to_string()))?)),
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
        let corrupt = |e: sidecar::SidecarError| FsError::Corrupt(e.to_string());
        let place = |table: &Table, key: &str| {
            let comps = sidecar::components(key).map_err(corrupt)?;
            let Some((name, dirs)) = comps.split_last() else { return Err(FsError::Invalid("the root as an entry")) };
            let mut parent = ROOT;
            for d in dirs {
                parent = table.lookup(parent, d)?;
            }
            Ok((parent, name.clone(), comps))
        };
        // Symlinks, FIFOs and sockets live only in the sidecar.
        for (key, e) in sidecar.unlisted() {
            let (parent, name, comps) = place(&table, key)?;
            let body = match (&e.symlink, e.special) {
                (Some(target), _) => Body::Symlink(sidecar::unescape_target(target).map_err(corrupt)?.into()),
                (None, Some(node)) => Body::Special(node),
                (None, None) => unreachable!("unlisted entries are symlinks or specials"),
            };
            let comps: Vec<&[u8]> = comps.iter().map(|c| &c[..]).collect();
            table.create_as(parent, &name, body, meta_of(e), number(&comps))?;
        }
        // Further names of one file: the manifest lists each as a file of its own, which becomes a name of the
        // first one's inode if it still has the same pieces (a manifest changed by a writer other than cafs
        // may no longer say so; then the names stay separate files). A further name of a symlink or special is
        // only in the sidecar.
        for (key, first) in sidecar.links() {
            let (Ok((dir, name, _)), Ok((first_dir, first_name, _))) = (place(&table, key), place(&table, first))
            else {
                continue;
            };
            let Ok(ino) = table.lookup(first_dir, &first_name) else { continue };
            match table.lookup(dir, &name) {
                Ok(other) => {
                    let same = match (&table.get(ino)?.body, &table.get(other)?.body) {
                        (Body::File(a), Body::File(b)) => a == b,
                        _ => false,
                    };
                    // A sidecar cafs did not write may chain links, or link past the limit: those names stay
                    // separate files (a refused relink changes nothing).
                    if same {
                        let _ = table.relink(dir, &name, ino);
                    }
                }
                Err(FsError::NotFound) if table.get(ino)?.kind() != Kind::File => {
                    let ctime = table.get(ino)?.meta.ctime;
                    table.link(ino, dir, &name, ctime)?;
                }
                Err(_) => {}
            }
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
        Ok(Self::with_table(table, setup))
    }
}
