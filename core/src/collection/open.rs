//! Opening a collection: a ref (writable, journaled, recovered from its journal when an earlier cafsd left one),
//! a ref followed read-only, a hash, or one version of a ref. [`Collection::open`] with a [`Source`] is the one
//! way to open one (the server, the namespace mount's views, development mode, tests and benchmarks alike); the
//! constructors below it are its steps, and each takes the same [`OpenWith`].

use super::*;

/// What a mount shows.
#[derive(Debug, Clone)]
pub enum Source {
    /// The ref, writable, with its changes journaled at `journal` for the mount at `at` (replayed when an
    /// earlier cafsd left that journal).
    Writable { name: RefName, journal: PathBuf, at: PathBuf },
    /// The ref, writable, without a journal: a tree that a restarted cafsd cannot recover (library use: a copy
    /// into a ref, tests).
    Scratch(RefName),
    /// The ref, read-only: its current version, then each newer one.
    Follow(RefName),
    /// A committed collection by its hash.
    Pdh(Pdh),
    /// One committed version of a ref, with its sidecar.
    Version(Version),
}

/// What every collection is opened with: the backends, the filesystem options and the tree's owner.
#[derive(Clone)]
pub struct OpenWith {
    pub catalog: Arc<dyn Catalog>,
    pub store: Arc<dyn BlockStore>,
    pub opts: FsOptions,
    pub uid: u32,
    pub gid: u32,
}

impl OpenWith {
    /// The backends with default options, owned by root.
    pub fn new(catalog: Arc<dyn Catalog>, store: Arc<dyn BlockStore>) -> Self {
        Self { catalog, store, opts: FsOptions::default(), uid: 0, gid: 0 }
    }

    /// What the tree is built with, on the current runtime.
    fn setup(&self) -> Setup {
        let rt = tokio::runtime::Handle::current();
        Setup { store: self.store.clone(), rt, opts: self.opts.clone(), uid: self.uid, gid: self.gid }
    }
}

impl Collection {
    /// Opens `source` for a mount. A writable ref's recovered journal records are logged (as a warning: what
    /// they hold was not committed).
    pub async fn open(cx: OpenWith, source: Source) -> Result<Self, CollectionError> {
        match source {
            Source::Writable { name, journal, at } => {
                let (c, r) = Self::open_ref_journaled(&cx, name, &journal, &at).await?;
                if r.records > 0 {
                    tracing::warn!(
                        mount = %at.display(),
                        records = r.records,
                        base_version = r.base_version,
                        "recovered uncommitted changes from the journal"
                    );
                }
                Ok(c)
            }
            Source::Scratch(name) => Self::open_ref(&cx, name).await,
            Source::Follow(name) => Self::open_following(&cx, name).await,
            Source::Pdh(pdh) => Self::open_pdh(&cx, pdh).await,
            Source::Version(v) => Self::open_version(&cx, v).await,
        }
    }

    /// Opens the ref `name` (its current version, or an empty tree if it does not exist yet).
    async fn open_ref(cx: &OpenWith, name: RefName) -> Result<Self, CollectionError> {
        let head = cx.catalog.head(&name).await?;
        let fs = match &head {
            Some(v) => Self::load(cx, v.pdh, Some(v.sidecar)).await?,
            None => Filesystem::new(cx.setup()),
        };
        Ok(Self::assemble(fs, Origin::Ref(name), cx.catalog.clone(), head))
    }

    /// Opens the current version of the ref `name` read-only, to follow it: [`Collection::refresh`] moves the
    /// tree to each newer version. Unlike a mount by hash, the version's sidecar (modes, times, symlinks) is
    /// shown.
    async fn open_following(cx: &OpenWith, name: RefName) -> Result<Self, CollectionError> {
        let mut c = Self::open_ref(cx, name.clone()).await?;
        if c.last_version().is_none() {
            return Err(CollectionError::NoVersion(name));
        }
        c.origin = Origin::Follow(name);
        c.owner = (cx.uid, cx.gid);
        Ok(c)
    }

    /// Opens a committed collection by its hash, read-only (with default metadata: a hash names a manifest, not
    /// a sidecar).
    async fn open_pdh(cx: &OpenWith, pdh: Pdh) -> Result<Self, CollectionError> {
        let fs = Self::load(cx, pdh, None).await?;
        Ok(Self::assemble(fs, Origin::Pdh(pdh), cx.catalog.clone(), None))
    }

    /// Opens one committed version of a ref, read-only and immutable like a mount by hash, but with the
    /// version's sidecar (modes, times, symlinks, attributes), which a bare hash does not name.
    async fn open_version(cx: &OpenWith, version: Version) -> Result<Self, CollectionError> {
        let fs = Self::load(cx, version.pdh, Some(version.sidecar)).await?;
        Ok(Self::assemble(fs, Origin::Pdh(version.pdh), cx.catalog.clone(), Some(version)))
    }

    /// Opens the ref `name` for a mount at `mount_point`, journaling its changes in `journal`. If that journal
    /// exists (an earlier cafsd stopped without committing), the tree is its base version with its records
    /// replayed — uncommitted, as it was; otherwise the ref's current version and a new journal.
    pub(super) async fn open_ref_journaled(
        cx: &OpenWith,
        name: RefName,
        journal: &Path,
        mount_point: &Path,
    ) -> Result<(Self, Recovered), CollectionError> {
        use std::os::unix::ffi::OsStrExt;
        let catalog = &cx.catalog;
        let opened = {
            let path = journal.to_path_buf();
            tokio::task::spawn_blocking(move || Journal::open(&path))
                .await
                .map_err(|e| FsError::task("journal", e))??
        };
        let Some((j, header, records)) = opened else {
            let c = Self::open_ref(cx, name.clone()).await?;
            let header = Header {
                format: Header::FORMAT,
                ref_name: name.to_string(),
                mount_point: mount_point.as_os_str().as_bytes().to_vec(),
                base_version: c.last_version().map_or(0, |v| v.version),
                inos: Vec::new(),
                next_ino: 0,
            };
            let j = Journal::create(journal, &header)?;
            c.fs().attach_journal(Arc::new(j));
            let base_version = header.base_version;
            return Ok((c, Recovered { records: 0, base_version }));
        };
        if header.ref_name != name.as_str() {
            return Err(CollectionError::ForeignJournal {
                path: journal.to_path_buf(),
                found: header.ref_name,
                wanted: name.to_string(),
            });
        }
        let history = catalog.history(&name).await?;
        // A commit that landed just before cafsd died, without its checkpoint: that version is the head.
        let landed = |version: u64, pdh: &str| history.iter().any(|h| h.version == version && h.pdh.to_string() == pdh);
        let rebased = crate::journal::rebase(header.base_version, records, landed);
        let find = |v: u64| match v {
            0 => Ok(None),
            v => history.iter().find(|h| h.version == v).cloned().map(Some).ok_or_else(|| {
                CollectionError::UnknownBase { path: journal.to_path_buf(), name: name.clone(), version: v }
            }),
        };
        let (base, head) = (find(header.base_version)?, find(rebased.head_version)?);
        let loaded = match &base {
            Some(v) => Some(Self::fetch(catalog.as_ref(), v.pdh, Some(v.sidecar)).await?),
            None => None,
        };
        let n = rebased.records.len();
        let base_version = rebased.head_version;
        let numbering = Numbering { inos: header.inos, next: header.next_ino };
        let setup = cx.setup();
        // Loading and replaying a large tree is CPU work under the tree's lock: off the async workers.
        let (fs, generation) = tokio::task::spawn_blocking(move || -> Result<_, FsError> {
            let fs = match loaded {
                Some((manifest, sidecar)) => Filesystem::load_numbered(&manifest, &sidecar, &numbering, setup)?,
                None => Filesystem::new(setup),
            };
            let (covered, rest) = rebased.records.split_at(rebased.covered.min(rebased.records.len()));
            fs.replay(covered)?;
            // The head holds what the covered records made: the tree is clean unless more follow.
            let generation = fs.generation();
            fs.replay(rest)?;
            Ok((fs, generation))
        })
        .await
        .map_err(|e| FsError::task("replay", e))??;
        fs.attach_journal(Arc::new(j));
        let recovered = Recovered { records: n, base_version };
        let mut c = Self::assemble(fs, Origin::Ref(name), catalog.clone(), head);
        c.head.get_mut().unwrap_or_else(|p| p.into_inner()).generation = generation;
        Ok((c, recovered))
    }

    /// The tree of collection `pdh` (with the sidecar `sidecar`, if any), numbered afresh.
    async fn load(cx: &OpenWith, pdh: Pdh, sidecar: Option<Pdh>) -> Result<Filesystem, CollectionError> {
        let (manifest, sidecar) = Self::fetch(cx.catalog.as_ref(), pdh, sidecar).await?;
        let fs = Filesystem::load_numbered(&manifest, &sidecar, &Numbering::default(), cx.setup())?;
        drop_later((manifest, sidecar));
        Ok(fs)
    }

    pub(super) async fn fetch(
        catalog: &dyn Catalog,
        pdh: Pdh,
        sidecar: Option<Pdh>,
    ) -> Result<(Manifest, sidecar::Index), CollectionError> {
        let record = catalog.get_collection(&pdh).await?.ok_or(CollectionError::UnknownPdh(pdh))?;
        let sidecar = match sidecar {
            Some(id) => catalog
                .get_sidecar(&id)
                .await?
                .ok_or_else(|| CatalogError::Corrupt(format!("sidecar {id} of collection {pdh} is missing")))?,
            None => Vec::new(),
        };
        // Both are CPU work that grows with the tree (a second each for a million files): side by side, off the
        // async workers.
        let index = tokio::task::spawn_blocking(move || sidecar::Index::from_bytes(&sidecar));
        let manifest = tokio::task::spawn_blocking(move || record.presented_manifest());
        let failed = |e: tokio::task::JoinError| FsError::task("parsing", e);
        let manifest = manifest.await.map_err(failed)??;
        let index = index.await.map_err(failed)?.map_err(|e| FsError::Corrupt(e.to_string()))?;
        Ok((manifest, index))
    }
}
