//! Opening a collection: a ref (writable, journaled, recovered from its journal when an earlier cafsd left one),
//! a ref followed read-only, a hash, or one version of a ref. [`Collection::open`] with a [`Source`] is the one
//! way mounts open them (the server, the namespace mount's views and development mode alike); the constructors
//! below it are its steps.

use super::*;

/// What a mount shows.
#[derive(Debug, Clone)]
pub enum Source {
    /// The ref, writable, with its changes journaled at `journal` for the mount at `at` (replayed when an
    /// earlier cafsd left that journal).
    Writable { name: RefName, journal: PathBuf, at: PathBuf },
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

impl Collection {
    /// Opens `source` for a mount. A writable ref's recovered journal records are logged (as a warning: what
    /// they hold was not committed).
    pub async fn open(cx: OpenWith, source: Source) -> Result<Self, CollectionError> {
        let OpenWith { catalog, store, opts, uid, gid } = cx;
        match source {
            Source::Writable { name, journal, at } => {
                let (c, r) = Self::open_ref_journaled(catalog, store, name, opts, uid, gid, &journal, &at).await?;
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
            Source::Follow(name) => Self::open_following(catalog, store, name, opts, uid, gid).await,
            Source::Pdh(pdh) => Self::open_pdh(catalog, store, pdh, opts, uid, gid).await,
            Source::Version(v) => Self::open_version(catalog, store, v, opts, uid, gid).await,
        }
    }

    /// Opens the ref `name` (its current version, or an empty tree if it does not exist yet).
    pub async fn open_ref(
        catalog: Arc<dyn Catalog>,
        store: Arc<dyn BlockStore>,
        name: RefName,
        opts: FsOptions,
        uid: u32,
        gid: u32,
    ) -> Result<Self, CollectionError> {
        let head = catalog.head(&name).await?;
        let fs = match &head {
            Some(v) => Self::load(catalog.as_ref(), store, v.pdh, Some(v.sidecar), opts, uid, gid).await?,
            None => Filesystem::new(store, tokio::runtime::Handle::current(), opts, uid, gid),
        };
        Ok(Self::assemble(fs, Origin::Ref(name), catalog, head))
    }

    /// Opens the current version of the ref `name` read-only, to follow it: [`Collection::refresh`] moves the
    /// tree to each newer version. Unlike a mount by hash, the version's sidecar (modes, times, symlinks) is
    /// shown.
    pub async fn open_following(
        catalog: Arc<dyn Catalog>,
        store: Arc<dyn BlockStore>,
        name: RefName,
        opts: FsOptions,
        uid: u32,
        gid: u32,
    ) -> Result<Self, CollectionError> {
        let mut c = Self::open_ref(catalog, store, name.clone(), opts, uid, gid).await?;
        if c.last_version().is_none() {
            return Err(CollectionError::NoVersion(name));
        }
        c.origin = Origin::Follow(name);
        c.owner = (uid, gid);
        Ok(c)
    }

    /// Opens a committed collection by its hash, read-only (with default metadata: a hash names a manifest, not
    /// a sidecar).
    pub async fn open_pdh(
        catalog: Arc<dyn Catalog>,
        store: Arc<dyn BlockStore>,
        pdh: Pdh,
        opts: FsOptions,
        uid: u32,
        gid: u32,
    ) -> Result<Self, CollectionError> {
        let fs = Self::load(catalog.as_ref(), store, pdh, None, opts, uid, gid).await?;
        Ok(Self::assemble(fs, Origin::Pdh(pdh), catalog, None))
    }

    /// Opens one committed version of a ref, read-only and immutable like a mount by hash, but with the
    /// version's sidecar (modes, times, symlinks, attributes), which a bare hash does not name.
    pub async fn open_version(
        catalog: Arc<dyn Catalog>,
        store: Arc<dyn BlockStore>,
        version: Version,
        opts: FsOptions,
        uid: u32,
        gid: u32,
    ) -> Result<Self, CollectionError> {
        let fs = Self::load(catalog.as_ref(), store, version.pdh, Some(version.sidecar), opts, uid, gid).await?;
        Ok(Self::assemble(fs, Origin::Pdh(version.pdh), catalog, Some(version)))
    }

    /// Opens the ref `name` for a mount at `mount_point`, journaling its changes in `journal`. If that journal
    /// exists (an earlier cafsd stopped without committing), the tree is its base version with its records
    /// replayed — uncommitted, as it was; otherwise the ref's current version and a new journal.
    #[allow(clippy::too_many_arguments)]
    pub async fn open_ref_journaled(
        catalog: Arc<dyn Catalog>,
        store: Arc<dyn BlockStore>,
        name: RefName,
        opts: FsOptions,
        uid: u32,
        gid: u32,
        journal: &Path,
        mount_point: &Path,
    ) -> Result<(Self, Recovered), CollectionError> {
        use std::os::unix::ffi::OsStrExt;
        let rt = tokio::runtime::Handle::current();
        let opened = {
            let path = journal.to_path_buf();
            tokio::task::spawn_blocking(move || Journal::open(&path))
                .await
                .map_err(|e| FsError::task("journal", e))??
        };
        let Some((j, header, records)) = opened else {
            let c = Self::open_ref(catalog, store, name.clone(), opts, uid, gid).await?;
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
        // Loading and replaying a large tree is CPU work under the tree's lock: off the async workers.
        let (fs, generation) = tokio::task::spawn_blocking(move || -> Result<_, FsError> {
            let fs = match loaded {
                Some((manifest, sidecar)) => {
                    Filesystem::load_numbered(&manifest, &sidecar, &numbering, store, rt, opts, uid, gid)?
                }
                None => Filesystem::new(store, rt, opts, uid, gid),
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
        let mut c = Self::assemble(fs, Origin::Ref(name), catalog, head);
        c.head.get_mut().unwrap_or_else(|p| p.into_inner()).generation = generation;
        Ok((c, recovered))
    }

    /// The tree of collection `pdh` (with the sidecar `sidecar`, if any), numbered afresh.
    pub(super) async fn load(
        catalog: &dyn Catalog,
        store: Arc<dyn BlockStore>,
        pdh: Pdh,
        sidecar: Option<Pdh>,
        opts: FsOptions,
        uid: u32,
        gid: u32,
    ) -> Result<Filesystem, CollectionError> {
        let rt = tokio::runtime::Handle::current();
        let (manifest, sidecar) = Self::fetch(catalog, pdh, sidecar).await?;
        let fs = Filesystem::load_numbered(&manifest, &sidecar, &Numbering::default(), store, rt, opts, uid, gid)?;
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
