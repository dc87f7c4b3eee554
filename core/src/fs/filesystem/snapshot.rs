//! The committed form of a tree: the manifest and sidecar built from the inode table (normalized, zero runs
//! shared, mostly-dead blocks repacked first), and the checks that tell an unchanged entry from a changed one.

use super::*;

impl Filesystem {
    /// The committed form of the tree: uploads every buffer, then builds the manifest and the sidecar. Holes are
    /// stored as references to a block of zeros.
    pub fn snapshot(&self) -> Result<(Manifest, Vec<u8>), FsError> {
        self.snapshot_at().map(|s| (s.manifest, s.sidecar))
    }

    /// A manifest's text as readers outside cafs must be given it (see [`BlockStore::sign_manifest`]).
    pub fn signed_manifest(&self, text: &str) -> Result<String, FsError> {
        self.shared.rt.block_on(self.shared.store.sign_manifest(text)).map_err(FsError::from)
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
                let zeros = Block::new(vec![0u8; hole.min(MAX_BLOCK_SIZE) as usize]).map_err(FsError::from)?;
                self.shared.rt.block_on(put_with_retry(&self.shared, &zeros)).map_err(FsError::from)?;
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
pub(super) type LivePiece = (Ino, u64, Locator, u64, u64);

/// The pieces of the tree stored in blocks that are mostly garbage (bytes no file reads any more, after
/// overwrites and truncations): at most a quarter of the block live, and at least `min_garbage` bytes dead.
pub(super) fn garbage_pieces(st: &State, min_garbage: u64) -> Vec<LivePiece> {
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

/// Every regular file in the tree (reachable from the root), with its extents; a file of several names once.
pub(super) fn tree_files(st: &State) -> Vec<(Ino, &Extents)> {
    let mut files = Vec::new();
    let mut linked = HashSet::new();
    let mut stack = vec![ROOT];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = st.table.entries(dir) else { continue };
        for (_, ino) in entries {
            match st.table.get(ino) {
                Ok(i) if matches!(i.body, Body::Dir(_)) => stack.push(ino),
                Ok(i @ Inode { body: Body::File(x), .. }) if i.nlink < 2 || linked.insert(ino) => files.push((ino, x)),
                _ => {}
            }
        }
    }
    files
}

pub(super) fn longest_hole(st: &State) -> u64 {
    tree_files(st)
        .iter()
        .flat_map(|(_, x)| x.iter())
        .filter(|e| e.src == Source::Hole)
        .map(|e| e.len)
        .max()
        .unwrap_or(0)
}

/// Builds the manifest and sidecar of a tree whose files are all stored (no buffer references).
pub(super) fn build(st: &State, zeros: Option<&Locator>) -> (Manifest, Vec<u8>) {
    let mut m = Manifest::new();
    let mut sc = Sidecar { version: sidecar::VERSION, entries: Default::default() };
    let zero_id = zeros.map(|z| m.add_block(z.clone()));
    let meta = |i: &Inode, symlink: Option<String>| EntryMeta {
        perm: i.meta.perm,
        uid: i.meta.uid,
        gid: i.meta.gid,
        mtime_ns: to_ns(i.meta.mtime),
        symlink,
        xattrs: EntryMeta::escape_xattrs(i.xattrs.as_deref()),
        special: None,
        link: None,
    };
    if let Ok(root) = st.table.get(ROOT) {
        sc.entries.insert(String::new(), meta(root, None));
    }
    // The key of a file's first name, for each of its other names.
    let first_key = |ino: Ino, key: &str| {
        let path = st.table.path(ino)?;
        let first = sidecar::key(path.split(|&b| b == b'/'));
        (first != key).then_some(first)
    };
    let mut stack: Vec<(Ino, Vec<Vec<u8>>)> = vec![(ROOT, Vec::new())];
    while let Some((dir, path)) = stack.pop() {
        let Ok(entries) = st.table.entries(dir) else { continue };
        for (name, ino) in entries {
            let Ok(inode) = st.table.get(ino) else { continue };
            let mut p = path.clone();
            p.push(name.to_vec());
            let key = sidecar::key(p.iter().map(Vec::as_slice));
            let link = if inode.nlink > 1 && inode.kind() != Kind::Dir { first_key(ino, &key) } else { None };
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
                    sc.entries.insert(key, EntryMeta { link, ..meta(inode, None) });
                }
                Body::Symlink(target) => {
                    sc.entries.insert(key, EntryMeta { link, ..meta(inode, Some(sidecar::escape_target(target))) });
                }
                Body::Special(node) => {
                    sc.entries.insert(key, EntryMeta { link, special: Some(*node), ..meta(inode, None) });
                }
            }
        }
    }
    (m, sc.to_bytes())
}

/// Whether the entry `ino` of `table` at `path` is the same in `manifest` + `sidecar`: a directory still a
/// directory, a file with the same bytes (the same pieces of the same blocks), a symlink with the same target.
pub(super) fn same_entry(table: &Table, ino: Ino, path: &[u8], manifest: &Manifest, sidecar: &sidecar::Index) -> bool {
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
        (Body::Special(node), None) => {
            sidecar.get(&sidecar::key(comps.iter().copied())).and_then(|e| e.special) == Some(*node)
        }
        _ => false,
    }
}

pub(super) fn push_run<'a>(
    runs: &mut Vec<(Option<&'a Locator>, u64, u64)>,
    block: Option<&'a Locator>,
    off: u64,
    len: u64,
) {
    if let Some(last) = runs.last_mut()
        && last.0 == block
        && (block.is_none() || last.1 + last.2 == off)
    {
        last.2 += len;
        return;
    }
    runs.push((block, off, len));
}
