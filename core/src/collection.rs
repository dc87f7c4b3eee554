//! A collection open for use: a [`Filesystem`] tree bound to where it came from — a named ref (writable), a
//! portable data hash (read-only), or a ref followed read-only (the tree is replaced by each new version the
//! ref gets, see [`Collection::refresh`]) — and the commit logic that the control file `.cafs/commit`, unmount,
//! auto-commit and the gRPC API all call.
//!
//! A commit snapshots the tree (every buffer uploaded, so every block it names is stored), stores the manifest
//! and sidecar, and moves the ref by compare-and-swap from the version the tree was loaded from or last
//! committed. A tree equal to the ref's head (same manifest, same sidecar) makes no new version. If another
//! writer moved the ref meanwhile, the commit fails with a conflict and the tree is kept as it is.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::path::{Path, PathBuf};

use crate::catalog::{Catalog, CatalogError, CollectionRecord, Commit, RefName, Version, Writer};
use crate::fs::inode::Kind;
use crate::fs::{Filesystem, FsError, FsOptions, Piece, Setup};
use crate::fs::{sidecar, xattr};
use crate::journal::{Header, Journal, JournalError, Numbering};
use crate::manifest::{Manifest, Pdh};
use crate::store::BlockStore;

mod open;

pub use open::{OpenWith, Source};

#[derive(Debug, thiserror::Error)]
pub enum CollectionError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("collection {0} is not in the catalog")]
    UnknownPdh(Pdh),
    #[error("this collection is read-only (mounted by hash, or a ref mounted read-only)")]
    ReadOnly,
    #[error("ref {0} has no committed version to mount read-only")]
    NoVersion(RefName),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("journal {path} belongs to ref {found}, not {wanted}")]
    ForeignJournal { path: PathBuf, found: String, wanted: String },
    #[error("journal {path} applies to version {version} of ref {name}, which the catalog does not have")]
    UnknownBase { path: PathBuf, name: RefName, version: u64 },
}

/// How a journaled collection was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Records replayed from a journal left by an earlier cafsd (0: a fresh journal).
    pub records: usize,
    /// The version they were applied to.
    pub base_version: u64,
}

/// Where a tree came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Ref(RefName),
    Pdh(Pdh),
    /// A ref's current version, read-only, following new versions.
    Follow(RefName),
}

/// The outcome of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub pdh: Pdh,
    /// The ref's version after the commit.
    pub version: u64,
    /// False when the tree equalled the head and no version was made.
    pub changed: bool,
}

#[derive(Debug)]
struct Head {
    version: Option<Version>,
    /// The filesystem generation that `version` reflects.
    generation: u64,
}

#[derive(Debug)]
pub struct Collection {
    /// Replaced only when a followed ref gets a new version; everything else keeps one tree.
    fs: std::sync::RwLock<Filesystem>,
    origin: Origin,
    /// Whose tree it is (defaults for entries a sidecar does not describe).
    owner: (u32, u32),
    catalog: Arc<dyn Catalog>,
    head: Mutex<Head>,
    /// Serializes commits of this collection, so that two triggers at once make one version after the other.
    committing: tokio::sync::Mutex<()>,
    /// A commit whose outcome is unknown: the catalog failed after it may have made the version (a timeout,
    /// a lost reply). The next commit first looks whether it landed; else that one would conflict with it.
    uncertain: Mutex<Option<Uncertain>>,
    /// Earlier trees of a followed ref that still have files open whose bytes changed since: those handles
    /// keep reading the version they opened, from here, until they close.
    retired: std::sync::RwLock<Vec<Filesystem>>,
    /// Who commits when a commit names nobody (`.cafs/commit`, auto-commit, commit on unmount): the mount's
    /// owner, checked by the catalog at each commit, since the ref's permissions may change while mounted.
    writer: std::sync::RwLock<Option<Writer>>,
}

#[derive(Debug)]
struct Uncertain {
    version: u64,
    pdh: Pdh,
    sidecar: Pdh,
    generation: u64,
    seq: u64,
    numbering: Numbering,
}

/// Frees a loaded tree's manifest and sidecar on a thread of their own: for a million files, a few tenths of a
/// second that the mount need not wait for.
fn drop_later<T: Send + 'static>(x: T) {
    if std::thread::Builder::new().name("cafs-free".into()).spawn(move || drop(x)).is_err() {
        tracing::debug!("no thread to free a loaded tree on; freed in place");
    }
}

impl Collection {
    /// For a followed ref: if the ref has a newer version, loads it and makes it the tree, keeping the inode
    /// number of every path that is in both (so the kernel's cached numbers still mean the same names). Returns
    /// the version now shown when it changed. Anything else: nothing to do.
    pub async fn refresh(&self) -> Result<Option<Version>, CollectionError> {
        let Origin::Follow(name) = &self.origin else { return Ok(None) };
        let Some(head) = self.catalog.head(name).await? else { return Ok(None) };
        if self.head().version.as_ref().is_some_and(|v| v.version >= head.version) {
            return Ok(None);
        }
        let (manifest, sidecar) = Self::fetch(self.catalog.as_ref(), head.pdh, Some(head.sidecar)).await?;
        let (old, (uid, gid)) = (self.fs(), self.owner);
        let fs = tokio::task::spawn_blocking(move || old.reload(&manifest, &sidecar, uid, gid))
            .await
            .map_err(|e| FsError::task("load", e))??;
        let generation = fs.generation();
        {
            // Retired before the swap is visible, so that an open of an old number racing the swap finds its
            // tree; kept only if a handle on a changed or removed file holds it (checked after the swap, so
            // that a file opened on the old tree meanwhile counts too).
            let mut retired = self.retired.write().unwrap_or_else(|p| p.into_inner());
            let old = std::mem::replace(&mut *self.fs.write().unwrap_or_else(|p| p.into_inner()), fs.clone());
            retired.push(old);
            retired.retain(|t| t.open_elsewhere(&fs));
        }
        *self.head() = Head { version: Some(head.clone()), generation };
        Ok(Some(head))
    }

    /// The tree that holds inode `ino`: the current one, or an earlier one of a followed ref where a handle
    /// opened before a refresh still reads a file that has changed since.
    pub fn fs_for(&self, ino: u64) -> Filesystem {
        let current = self.fs();
        let retired = self.retired.read().unwrap_or_else(|p| p.into_inner());
        if retired.is_empty() || current.has(ino) {
            return current;
        }
        retired.iter().rev().find(|t| t.has(ino)).cloned().unwrap_or(current)
    }

    /// After a handle closed: lets go of earlier trees that nothing has open any more.
    pub fn released(&self) {
        if self.retired.read().unwrap_or_else(|p| p.into_inner()).is_empty() {
            return;
        }
        let current = self.fs();
        self.retired.write().unwrap_or_else(|p| p.into_inner()).retain(|t| t.open_elsewhere(&current));
    }

    /// Deletes the journal (after the tree was committed or deliberately dropped).
    pub fn remove_journal(&self) {
        if let Some(j) = self.fs().journal()
            && let Err(e) = j.remove()
        {
            tracing::warn!(error = %e, "cannot delete the journal");
        }
    }

    /// A collection whose tree `fs` is at the ref's `version` (None: never committed, or mounted by hash).
    fn assemble(fs: Filesystem, origin: Origin, catalog: Arc<dyn Catalog>, version: Option<Version>) -> Self {
        let generation = fs.generation();
        let owner = fs.root_owner();
        Self {
            fs: std::sync::RwLock::new(fs),
            origin,
            owner,
            catalog,
            head: Mutex::new(Head { version, generation }),
            committing: tokio::sync::Mutex::new(()),
            uncertain: Mutex::new(None),
            retired: Default::default(),
            writer: Default::default(),
        }
    }

    /// Sets who commits when a commit names nobody (see [`Collection::commit_as`]).
    pub fn set_writer(&self, writer: Option<Writer>) {
        *self.writer.write().unwrap_or_else(|p| p.into_inner()) = writer;
    }

    fn writer(&self, by: Option<&Writer>) -> Option<Writer> {
        by.cloned().or_else(|| self.writer.read().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// The tree (a handle: a followed ref's tree may be replaced after this returns; the handle keeps the one
    /// it got, as an open file keeps reading the version it opened).
    pub fn fs(&self) -> Filesystem {
        self.fs.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    pub fn is_read_only(&self) -> bool {
        matches!(self.origin, Origin::Pdh(_) | Origin::Follow(_))
    }

    fn head(&self) -> std::sync::MutexGuard<'_, Head> {
        self.head.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the tree changed since it was loaded or last committed.
    pub fn is_dirty(&self) -> bool {
        !self.is_read_only() && self.fs().generation() != self.head().generation
    }

    /// The extended attribute `name` of `ino`: computed for `user.cafs.*` (see [`xattr`]), else stored.
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>, FsError> {
        let fs = self.fs_for(ino);
        match xattr::classify(name) {
            xattr::Class::Cafs => {
                let kind = fs.getattr(ino)?.kind;
                let value = match &name[xattr::CAFS_PREFIX.len()..] {
                    b"hash" => self.last_pdh().ok_or(FsError::NoAttr)?.to_string(),
                    b"state" => if self.is_dirty() { "dirty" } else { "committed" }.to_string(),
                    // A line a piece: `LOCATOR OFFSET LENGTH`, `buffered - LENGTH`, `zeros - LENGTH`.
                    b"segments" if kind == Kind::File => fs
                        .pieces(ino)?
                        .into_iter()
                        .map(|(at, len)| match at {
                            Piece::Stored(block, offset) => format!("{block} {offset} {len}\n"),
                            Piece::Buffered => format!("buffered - {len}\n"),
                            Piece::Zeros => format!("zeros - {len}\n"),
                        })
                        .collect(),
                    b"locators" if kind == Kind::File => {
                        let mut seen: Vec<crate::locator::Locator> = Vec::new();
                        for (at, _) in fs.pieces(ino)? {
                            if let Piece::Stored(block, _) = at
                                && !seen.contains(&block)
                            {
                                seen.push(block);
                            }
                        }
                        seen.iter().map(|l| format!("{l}\n")).collect()
                    }
                    _ => return Err(FsError::NoAttr),
                };
                Ok(value.into_bytes())
            }
            xattr::Class::User => fs.getxattr(ino, name),
            xattr::Class::Other => Err(FsError::NoAttr),
        }
    }

    /// The names `listxattr` shows for `ino`: cafs's own that apply, then the stored ones.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<Vec<u8>>, FsError> {
        let fs = self.fs_for(ino);
        let kind = fs.getattr(ino)?.kind;
        let mut names: Vec<&[u8]> = Vec::new();
        if self.last_pdh().is_some() {
            names.push(b"hash");
        }
        names.push(b"state");
        if kind == Kind::File {
            names.extend([&b"locators"[..], b"segments"]);
        }
        let mut out: Vec<Vec<u8>> = names.into_iter().map(|n| [xattr::CAFS_PREFIX, n].concat()).collect();
        out.extend(fs.listxattr(ino)?);
        Ok(out)
    }

    /// Sets or removes (`None`) a stored attribute: only on a writable collection.
    pub fn setxattr(&self, ino: u64, name: &[u8], value: Option<&[u8]>, mode: xattr::SetMode) -> Result<(), FsError> {
        if self.is_read_only() {
            return Err(FsError::ReadOnly);
        }
        self.fs().setxattr(ino, name, value, mode)
    }

    /// The hash of the last committed version (or of the collection mounted by hash); `None` for a ref that
    /// has never been committed.
    pub fn last_pdh(&self) -> Option<Pdh> {
        match &self.origin {
            Origin::Pdh(p) => Some(*p),
            Origin::Ref(_) | Origin::Follow(_) => self.head().version.as_ref().map(|v| v.pdh),
        }
    }

    /// The ref's version this tree is based on.
    pub fn last_version(&self) -> Option<Version> {
        self.head().version.clone()
    }

    /// Commits the tree (waiting for its uploads on the blocking pool), as the collection's writer.
    pub async fn commit(&self, committer: &str, message: &str) -> Result<Committed, CollectionError> {
        self.commit_as(None, committer, message).await
    }

    /// Commits the tree as `by` (the collection's writer when `None`): the catalog refuses the commit, and
    /// nothing changes, if that writer may not write the ref.
    pub async fn commit_as(
        &self,
        by: Option<&Writer>,
        committer: &str,
        message: &str,
    ) -> Result<Committed, CollectionError> {
        let Origin::Ref(name) = &self.origin else { return Err(CollectionError::ReadOnly) };
        let _one_at_a_time = self.committing.lock().await;
        self.settle_uncertain(name).await;
        let generation = self.fs().generation();
        let (expected, head_pdh, head_sidecar, unchanged) = {
            let h = self.head();
            let v = h.version.as_ref();
            (v.map(|v| v.version), v.map(|v| v.pdh), v.map(|v| v.sidecar), h.generation == generation)
        };
        if unchanged && let (Some(version), Some(pdh)) = (expected, head_pdh) {
            return Ok(Committed { pdh, version, changed: false });
        }
        let (record, sidecar, seq, numbering) = self.snapshot().await?;
        if let (Some(version), Some(pdh), Some(sc)) = (expected, head_pdh, head_sidecar)
            && pdh == record.pdh()
            && sc == Pdh::of_text(&sidecar)
        {
            self.head().generation = generation;
            self.checkpoint(version, seq, numbering).await;
            return Ok(Committed { pdh, version, changed: false });
        }
        // If cafsd dies between the catalog's commit and the journal's checkpoint, recovery must know that the
        // commit landed (or the journal's old base would make every later commit a conflict).
        if let Some(j) = self.fs().journal().cloned() {
            let (version, pdh) = (expected.unwrap_or(0) + 1, record.pdh().to_string());
            let marked = tokio::task::spawn_blocking(move || j.mark_commit(seq, version, &pdh))
                .await
                .map_err(|e| FsError::task("journal", e))?;
            // A journal that cannot be written (a full disk) must not stop the commit: the commit is what
            // makes the tree safe, and its checkpoint then starts the journal afresh.
            if let Err(e) = marked {
                tracing::warn!(error = %e, "cannot write the commit marker to the journal; committing anyway");
            }
        }
        let (pdh, sidecar_id, version) = (record.pdh(), Pdh::of_text(&sidecar), expected.unwrap_or(0) + 1);
        let commit = Commit {
            name: name.clone(),
            expected,
            record,
            sidecar,
            committer: committer.to_string(),
            message: message.to_string(),
            writer: self.writer(by),
        };
        let v = match self.catalog.commit(&commit).await {
            Ok(v) => v,
            Err(e @ CatalogError::Conflict { .. }) => return Err(e.into()),
            // The catalog failed: the version may have been made all the same. Ask; if the catalog cannot
            // say either, the next commit asks again before it tries.
            Err(e) => match self.catalog.head(name).await {
                Ok(Some(h)) if h.version == version && h.pdh == pdh && h.sidecar == sidecar_id => {
                    tracing::warn!(error = %e, version, "the catalog failed, but the commit landed");
                    h
                }
                Ok(_) => return Err(e.into()),
                Err(_) => {
                    let u = Uncertain { version, pdh, sidecar: sidecar_id, generation, seq, numbering };
                    *self.uncertain.lock().unwrap_or_else(|p| p.into_inner()) = Some(u);
                    return Err(e.into());
                }
            },
        };
        let out = Committed { pdh: v.pdh, version: v.version, changed: true };
        {
            let mut h = self.head();
            h.version = Some(v);
            h.generation = generation;
        }
        self.checkpoint(out.version, seq, numbering).await;
        Ok(out)
    }

    /// Finds out whether a commit whose outcome was unknown landed: if the ref's head is that very version, it
    /// becomes this tree's base (at the generation it was made from). If the catalog still cannot say, the
    /// question stays for the next commit.
    async fn settle_uncertain(&self, name: &RefName) {
        let Some(u) = self.uncertain.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
        let Ok(history) = self.catalog.history(name).await else {
            *self.uncertain.lock().unwrap_or_else(|p| p.into_inner()) = Some(u);
            return;
        };
        let Some(v) = history.into_iter().find(|h| h.version == u.version) else { return };
        if v.pdh != u.pdh || v.sidecar != u.sidecar {
            return; // another writer made that version: a conflict, as it should be
        }
        tracing::warn!(version = v.version, pdh = %v.pdh, "a commit whose reply was lost had landed");
        {
            let mut h = self.head();
            if h.version.as_ref().is_some_and(|cur| cur.version >= v.version) {
                return;
            }
            h.version = Some(v);
            h.generation = u.generation;
        }
        self.checkpoint(u.version, u.seq, u.numbering).await;
    }

    /// Starts the journal from `version`, which holds the tree as of record `seq`, numbered `numbering`. If that
    /// rewrite fails, the old journal still rebuilds the same tree (its base plus every record), so the commit
    /// stands.
    async fn checkpoint(&self, version: u64, seq: u64, numbering: Numbering) {
        let Some(j) = self.fs().journal().cloned() else { return };
        match tokio::task::spawn_blocking(move || j.checkpoint(version, seq, numbering)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "journal checkpoint failed; keeping the longer journal"),
            Err(e) => tracing::warn!(error = %e, "journal checkpoint task failed"),
        }
    }

    /// Commits the tree as the next version of another ref, `name` (created when absent), leaving this
    /// collection's own ref and dirty state as they are: how `fsctl run` keeps the partial output of a failed
    /// job reachable without making it the job's result.
    pub async fn commit_into(
        &self,
        name: &RefName,
        committer: &str,
        message: &str,
    ) -> Result<Committed, CollectionError> {
        self.commit_into_as(name, None, committer, message).await
    }

    /// [`Collection::commit_into`] as `by` (see [`Collection::commit_as`]).
    pub async fn commit_into_as(
        &self,
        name: &RefName,
        by: Option<&Writer>,
        committer: &str,
        message: &str,
    ) -> Result<Committed, CollectionError> {
        match &self.origin {
            Origin::Pdh(_) | Origin::Follow(_) => return Err(CollectionError::ReadOnly),
            Origin::Ref(own) if own == name => return self.commit_as(by, committer, message).await,
            Origin::Ref(_) => {}
        }
        let _one_at_a_time = self.committing.lock().await;
        let (record, sidecar, ..) = self.snapshot().await?;
        let head = self.catalog.head(name).await?;
        if let Some(h) = &head
            && h.pdh == record.pdh()
            && h.sidecar == Pdh::of_text(&sidecar)
        {
            return Ok(Committed { pdh: h.pdh, version: h.version, changed: false });
        }
        let commit = Commit {
            name: name.clone(),
            expected: head.map(|h| h.version),
            record,
            sidecar,
            committer: committer.to_string(),
            message: message.to_string(),
            writer: self.writer(by),
        };
        let v = self.catalog.commit(&commit).await?;
        Ok(Committed { pdh: v.pdh, version: v.version, changed: true })
    }

    /// The tree's manifest record and sidecar, every block stored. The snapshot waits for uploads: it runs off
    /// the async workers.
    async fn snapshot(&self) -> Result<(CollectionRecord, Vec<u8>, u64, Numbering), CollectionError> {
        let fs = self.fs();
        let s =
            tokio::task::spawn_blocking(move || fs.snapshot_at()).await.map_err(|e| FsError::task("snapshot", e))??;
        Ok((CollectionRecord::new(&s.manifest)?, s.sidecar, s.seq, s.numbering))
    }
}

/// Moves a followed ref's tree to each newer version, looking every `every`; stops once `alive` says the mount
/// is gone. A failed look (the catalog or store is down) is logged and tried again at the next tick.
pub async fn follow(coll: Arc<Collection>, every: Duration, alive: impl Fn() -> bool) {
    loop {
        tokio::time::sleep(every).await;
        if !alive() {
            return;
        }
        match coll.refresh().await {
            Ok(Some(v)) => {
                tracing::info!(r#ref = %v.name, version = v.version, pdh = %v.pdh, "showing a newer version")
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot look for a newer version; trying again later"),
        }
    }
}

#[cfg(test)]
mod tests;
