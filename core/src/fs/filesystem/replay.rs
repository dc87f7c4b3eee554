//! The journal side of the filesystem: attaching a mount's journal, syncing it, and rebuilding a tree by
//! replaying its records on the last commit (after a crash or a restart).

use super::*;

impl Filesystem {
    /// Makes every change recorded so far durable in the journal (a no-op without one).
    pub fn sync_journal(&self) -> Result<(), FsError> {
        match self.shared.journal.get() {
            Some(j) => j.sync().map_err(FsError::from),
            None => Ok(()),
        }
    }

    /// Records every later change in `journal`. At most one journal per tree; attach it after any replay.
    pub fn attach_journal(&self, journal: Arc<Journal>) {
        let _st = self.lock();
        if self.shared.journal.set(journal).is_err() {
            tracing::error!("a journal is already attached; keeping the first");
        }
    }

    pub fn journal(&self) -> Option<&Arc<Journal>> {
        self.shared.journal.get()
    }

    /// Applies journal records on top of this tree (loaded from the journal's base), in order. Fails on a
    /// record that does not apply, naming it.
    ///
    /// Files the records leave unsynced (see [`Record::Unsynced`]) come out marked as having lost writes.
    pub fn replay(&self, records: &[Record]) -> Result<(), FsError> {
        let mut st = self.lock();
        assert!(self.shared.journal.get().is_none(), "replay before attaching a journal");
        for (n, r) in records.iter().enumerate() {
            Self::apply(&mut st, r).map_err(|e| FsError::Corrupt(format!("journal record {} ({r:?}): {e}", n + 1)))?;
            Self::reap(&mut st);
        }
        let unsynced = std::mem::take(&mut st.unsynced);
        let mut named = Vec::new();
        for ino in unsynced {
            if let Some(path) = st.table.path(ino) {
                if named.len() < 5 {
                    named.push(String::from_utf8_lossy(&path).into_owned());
                }
                st.lost.insert(ino);
            }
        }
        if !st.lost.is_empty() {
            tracing::warn!(
                files = st.lost.len(),
                some = ?named,
                "bytes written to these files but not yet stored died with the previous cafsd; the next fsync or \
                 close of each fails with EIO"
            );
        }
        Ok(())
    }

    /// Files a recovery marked as having lost writes (paths), for status and tests.
    pub fn lost_writes(&self) -> Vec<Vec<u8>> {
        let st = self.lock();
        st.lost.iter().filter_map(|&ino| st.table.path(ino)).collect()
    }

    pub(super) fn apply(st: &mut State, r: &Record) -> Result<(), FsError> {
        let t = now();
        match r {
            Record::Header(_) => return Err(FsError::Invalid("a header inside the records")),
            // A commit marker changes nothing in the tree (see `journal::rebase`).
            Record::Committing { .. } => return Ok(()),
            Record::Unsynced { path } => {
                let (ino, ..) = st.table.resolve(path)?;
                st.unsynced.insert(ino);
                return Ok(());
            }
            Record::Synced { path } => {
                let (ino, ..) = st.table.resolve(path)?;
                st.unsynced.remove(&ino);
                return Ok(());
            }
            Record::Xattr { path, name, value } => {
                let (ino, ..) = st.table.resolve(path)?;
                let i = st.table.get_mut(ino)?;
                match xattr::change(&mut i.xattrs, name, value.as_deref(), SetMode::Any) {
                    // A removal of what is not there leaves what replay wants.
                    Err(FsError::NoAttr) if value.is_none() => {}
                    r => r?,
                }
            }
            Record::Make { path, ino, kind, meta } => {
                let (dir, name) = st.table.resolve_parent(path)?;
                let body = match kind {
                    MadeKind::Dir => Body::Dir(Default::default()),
                    MadeKind::File => Body::File(Extents::new()),
                    MadeKind::Symlink(target) => Body::Symlink(target.clone().into()),
                    MadeKind::Fifo => Body::Special(Special::Fifo),
                    MadeKind::Socket => Body::Special(Special::Socket),
                };
                let m = from_ns(meta.mtime_ns);
                let meta =
                    Meta { perm: meta.perm & 0o7777, uid: meta.uid, gid: meta.gid, mtime: m, ctime: m, atime: m };
                st.table.create_as(dir, &name, body, meta, Some(*ino))?;
            }
            Record::Unlink { path } => {
                let (dir, name) = st.table.resolve_parent(path)?;
                st.table.unlink(dir, &name, t)?;
            }
            Record::Link { from, to } => {
                let (ino, ..) = st.table.resolve(from)?;
                let (dir, name) = st.table.resolve_parent(to)?;
                st.table.link(ino, dir, &name, t)?;
            }
            Record::Zeroed { path, at, len, mtime_ns } => {
                let (ino, ..) = st.table.resolve(path)?;
                let i = st.table.get_mut(ino)?;
                let Body::File(x) = &mut i.body else { return Err(FsError::Invalid("zeros for a non-file")) };
                at.checked_add(*len).ok_or(FsError::Invalid("zeros past the largest offset"))?;
                x.write(*at, *len, Source::Hole);
                i.meta.mtime = from_ns(*mtime_ns);
            }
            Record::Rmdir { path } => {
                let (dir, name) = st.table.resolve_parent(path)?;
                st.table.rmdir(dir, &name, t)?;
            }
            Record::Rename { from, to, mode } => {
                let (a, an) = st.table.resolve_parent(from)?;
                let (b, bn) = st.table.resolve_parent(to)?;
                let mode = match mode {
                    0 => RenameMode::Replace,
                    1 => RenameMode::NoReplace,
                    2 => RenameMode::Exchange,
                    _ => return Err(FsError::Invalid("unknown rename mode")),
                };
                st.table.rename(a, &an, b, &bn, mode, t)?;
            }
            Record::SetAttr { path, size, perm, uid, gid, mtime_ns } => {
                let (ino, ..) = st.table.resolve(path)?;
                let set = SetAttr {
                    size: *size,
                    perm: *perm,
                    uid: *uid,
                    gid: *gid,
                    mtime: mtime_ns.map(from_ns),
                    ..SetAttr::default()
                };
                Self::set_attr(st, ino, &set, t)?;
            }
            Record::Stored { path, ranges, mtime_ns } => {
                let (ino, ..) = st.table.resolve(path)?;
                let i = st.table.get_mut(ino)?;
                let Body::File(x) = &mut i.body else { return Err(FsError::Invalid("stored bytes for a non-file")) };
                for r in ranges {
                    r.at.checked_add(r.len).ok_or(FsError::Invalid("a stored range past the largest offset"))?;
                    let block = Locator::parse(&r.locator).map_err(|e| FsError::Corrupt(e.to_string()))?;
                    if r.offset.checked_add(r.len).is_none_or(|end| end > block.size()) {
                        return Err(FsError::Invalid("a stored range beyond its block"));
                    }
                    x.write(r.at, r.len, Source::Stored { block, offset: r.offset });
                }
                i.meta.mtime = from_ns(*mtime_ns);
            }
        }
        st.generation += 1;
        Ok(())
    }
}
