//! The namespace mount: one mount that shows the whole catalog, as a worker node mounts cafs at boot.
//!
//! ```text
//! by_ref/NAME/           the current version of every ref: read-only, following new commits; writable for
//!                        the names the configuration lists
//! by_pdh/HASH/           any committed collection by its portable data hash: read-only and immutable; not
//!                        listed until looked up (there are too many), found by lookup
//! history/NAME/N-HASH/   every version of every ref, N counting from 1: read-only and immutable
//! ```
//! A ref name's `/` shows as `%2F` (ref names cannot hold `%`, so the name maps back unambiguously).
//!
//! Each collection shown is a [`View`], opened on first use (a lookup inside it, or opening it) and kept for
//! the life of the mount. Kernel inode numbers are a view's number above [`SLOT_SHIFT`] bits and the view's own
//! inode number below; view 0 is the namespace's own directories. FUSE-free: the vfs routes requests here.
//!
//! Each ref's owner, group and mode decide who sees it: the vfs asks [`access`] on every request that
//! reaches a ref (by its uid), so one node-wide mount shows each user what that user may read, and lets a
//! writable ref be written only by whoever may write it.
//!
//! The kernel keeps those numbers across a cafsd restart (the mount outlives cafsd), so each number given is
//! written, before the kernel hears of it, to a slot file that the next cafsd reads back: `slot N ref NAME`,
//! `slot N pdh HASH`, `slot N version NAME V HASH`, `dir INO NAME`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, SystemTime};

use crate::catalog::{Catalog, RefName};
use crate::collection::{Collection, CollectionError, OpenWith, Origin, Source};
use crate::fs::inode::{Kind, ROOT};
use crate::fs::{Attr, FsError, FsOptions, SharedError};
use crate::journal;
use crate::manifest::Pdh;
use crate::policy::Policy;
use crate::store::BlockStore;
use crate::vfs::control::Control;
use crate::vfs::view::{LOCAL_MASK, Node, SLOT_SHIFT, View};

pub mod access;

/// Views a mount may open in its life; numbers are never reused, so that a number the kernel still holds
/// never comes to mean something else.
const MAX_SLOTS: u64 = (1 << (64 - SLOT_SHIFT)) - 1;

pub const BY_REF: &[u8] = b"by_ref";
pub const BY_PDH: &[u8] = b"by_pdh";
pub const HISTORY: &[u8] = b"history";
const BY_REF_INO: u64 = 2;
const BY_PDH_INO: u64 = 3;
const HISTORY_INO: u64 = 4;

/// How a namespace mount shows the catalog.
#[derive(Debug, Clone)]
pub struct NamespaceOptions {
    /// Where it is mounted (the journals of writable views are keyed by their path below it).
    pub mount_point: PathBuf,
    /// Refs shown writable in `by_ref/`: exact names, or a prefix ending in `*` (`*` alone: every ref).
    pub writable: Vec<String>,
    /// Where writable views keep their journals.
    pub journals: PathBuf,
    /// How often a read-only `by_ref/` view looks for a newer version (zero: never).
    pub refresh: Duration,
    /// Commit a changed writable view after this long without changes (zero: never).
    pub autocommit: Duration,
    pub fs: FsOptions,
    /// How many immutable views (`by_pdh/`, `history/`) stay loaded; the least recently used beyond that
    /// are let go, and loaded again when used.
    pub keep_immutable: usize,
    /// Where the numbers given are kept for a restarted cafsd (none: not kept).
    pub slots_file: Option<PathBuf>,
    /// Taking over a live mount from an earlier cafsd: read the slot file back instead of starting it afresh.
    pub resume: bool,
    /// Who may use which ref.
    pub policy: Arc<Policy>,
}

/// Whether `name` matches one of `patterns` (exact, or a prefix ending in `*`).
pub fn matches(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => p == name,
    })
}

/// A ref name as one directory entry: `/` shows as `%2F`.
pub fn ref_entry(name: &RefName) -> Vec<u8> {
    name.as_str().replace('/', "%2F").into_bytes()
}

fn ref_of_entry(entry: &[u8]) -> Option<RefName> {
    let text = std::str::from_utf8(entry).ok()?;
    let name = RefName::new(text.replace("%2F", "/")).ok()?;
    // One spelling per ref: `a/b` is reachable as `a%2Fb` only.
    (ref_entry(&name) == entry).then_some(name)
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Ref(RefName),
    Pdh(Pdh),
    /// Version N (from 1) of a ref, and its hash.
    Version(RefName, u64, Pdh),
}

/// A view's place: reserved when its name is first listed or looked up, opened on first use.
struct Slot {
    n: u64,
    key: Key,
    parent: u64,
    path: PathBuf,
    /// None until first used, and again once let go (an immutable view only: opened again, it gives every
    /// inode the same number, so the kernel's numbers keep their meaning).
    view: RwLock<Option<Arc<View>>>,
    /// When it was last used, on the namespace's clock.
    used: AtomicU64,
    /// Held while the view is opened, so that a second user waits for the first opening.
    opening: Mutex<()>,
}

/// The namespace's own directories beyond the fixed three: `history/NAME`, numbered as first seen.
#[derive(Default)]
struct Dirs {
    by_ino: HashMap<u64, RefName>,
    by_name: HashMap<RefName, u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("slot file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("slot file {path}, line {line}: not a slot this cafsd wrote")]
    Corrupt { path: PathBuf, line: usize },
}

type OnOpen = Box<dyn Fn(&Arc<View>) + Send + Sync>;

pub struct Namespace {
    catalog: Arc<dyn Catalog>,
    store: Arc<dyn BlockStore>,
    rt: tokio::runtime::Handle,
    uid: u32,
    gid: u32,
    opts: NamespaceOptions,
    /// Slot n at index n − 1.
    slots: RwLock<Vec<Arc<Slot>>>,
    keys: Mutex<HashMap<Key, u64>>,
    dirs: Mutex<Dirs>,
    /// Cleared when the mount ends: the views' background tasks stop.
    alive: AtomicBool,
    on_open: OnceLock<OnOpen>,
    started: SystemTime,
    /// Ticks once per use of a view (see [`Slot::used`]).
    clock: AtomicU64,
    me: Weak<Namespace>,
    /// Appended to with each number given (see the module doc), and whether that is not synced yet.
    slots_file: Option<Mutex<(std::fs::File, bool)>>,
}

fn opening_failed(e: CollectionError) -> FsError {
    match e {
        CollectionError::UnknownPdh(_) | CollectionError::NoVersion(_) => FsError::NotFound,
        CollectionError::Fs(e) => e,
        CollectionError::Catalog(e) => e.into(),
        CollectionError::Journal(e) => e.into(),
        e => FsError::Internal(e.to_string()),
    }
}

impl Namespace {
    pub fn new(
        catalog: Arc<dyn Catalog>,
        store: Arc<dyn BlockStore>,
        rt: tokio::runtime::Handle,
        uid: u32,
        gid: u32,
        opts: NamespaceOptions,
    ) -> Result<Arc<Self>, NamespaceError> {
        let mut slots = Vec::new();
        let mut keys = HashMap::new();
        let mut dirs = Dirs::default();
        let slots_file = match &opts.slots_file {
            None => None,
            Some(path) => {
                let io = |source| NamespaceError::Io { path: path.clone(), source };
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                if opts.resume && path.exists() {
                    let text = std::fs::read_to_string(path).map_err(io)?;
                    for (i, line) in text.lines().enumerate() {
                        let bad = || NamespaceError::Corrupt { path: path.clone(), line: i + 1 };
                        match parse_slot_line(line).ok_or_else(bad)? {
                            Saved::Dir(ino, name) => {
                                dirs.by_ino.insert(ino, name.clone());
                                dirs.by_name.insert(name, ino);
                            }
                            Saved::Slot(n, key) => {
                                if n != slots.len() as u64 + 1 {
                                    return Err(bad());
                                }
                                let (parent, path) = place(&key, &dirs).ok_or_else(bad)?;
                                slots.push(Arc::new(Slot::new(n, key.clone(), parent, path)));
                                keys.insert(key, n);
                            }
                        }
                    }
                }
                let file =
                    std::fs::OpenOptions::new().create(true).append(true).truncate(false).open(path).map_err(io)?;
                if !opts.resume {
                    file.set_len(0).map_err(io)?;
                }
                Some(Mutex::new((file, false)))
            }
        };
        Ok(Arc::new_cyclic(|me| Self {
            catalog,
            store,
            rt,
            uid,
            gid,
            opts,
            slots: RwLock::new(slots),
            keys: Mutex::new(keys),
            dirs: Mutex::new(dirs),
            alive: AtomicBool::new(true),
            on_open: OnceLock::new(),
            started: SystemTime::now(),
            clock: AtomicU64::new(1),
            me: me.clone(),
            slots_file,
        }))
    }

    /// Writes `line` to the slot file; [`Namespace::synced`] makes it durable before the number in it
    /// reaches the kernel (once for a whole listing).
    fn save(&self, line: String) -> Result<(), FsError> {
        use std::io::Write;
        let Some(file) = &self.slots_file else { return Ok(()) };
        let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
        file.1 = true;
        file.0
            .write_all(format!("{line}\n").as_bytes())
            .map_err(|e| FsError::State { what: "namespace slot file", error: SharedError::new(e) })
    }

    /// Makes what [`Namespace::save`] wrote durable.
    fn synced(&self) -> Result<(), FsError> {
        let Some(file) = &self.slots_file else { return Ok(()) };
        let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
        if file.1 {
            file.0
                .sync_data()
                .map_err(|e| FsError::State { what: "namespace slot file", error: SharedError::new(e) })?;
            file.1 = false;
        }
        Ok(())
    }

    /// Calls `f` with each view once it is opened (cafsd registers it as a mount of its own, so that `fsctl`
    /// can commit, flush and show it by its path). Set once.
    pub fn on_open(&self, f: impl Fn(&Arc<View>) + Send + Sync + 'static) {
        let _ = self.on_open.set(Box::new(f));
    }

    pub fn options(&self) -> &NamespaceOptions {
        &self.opts
    }

    /// Whether any view may be written (the mount is then mounted read-write).
    pub fn has_writable(&self) -> bool {
        !self.opts.writable.is_empty()
    }

    /// Every view opened so far.
    pub fn views(&self) -> Vec<Arc<View>> {
        self.slots().iter().filter_map(|s| s.view()).collect()
    }

    /// The mount ended: the views' background tasks stop.
    pub fn stop(&self) {
        self.alive.store(false, Ordering::SeqCst);
    }

    fn slots(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Slot>>> {
        self.slots.read().unwrap_or_else(|p| p.into_inner())
    }

    fn slot(&self, n: u64) -> Option<Arc<Slot>> {
        self.slots().get(usize::try_from(n.checked_sub(1)?).ok()?).cloned()
    }

    /// What the kernel's number `ino` names; opens its view on first use.
    pub fn resolve(&self, ino: u64) -> Result<Node, FsError> {
        let (n, local) = (ino >> SLOT_SHIFT, ino & LOCAL_MASK);
        if n == 0 {
            return if self.is_dir(ino) { Ok(Node::Dir(ino)) } else { Err(FsError::NotFound) };
        }
        let slot = self.slot(n).ok_or(FsError::NotFound)?;
        Ok(Node::In(self.open(&slot)?, local))
    }

    fn is_dir(&self, ino: u64) -> bool {
        matches!(ino, ROOT | BY_REF_INO | BY_PDH_INO | HISTORY_INO)
            || self.dirs.lock().unwrap_or_else(|p| p.into_inner()).by_ino.contains_key(&ino)
    }

    /// Attributes without opening anything: a view not opened yet shows as a plain directory.
    pub fn attr(&self, ino: u64) -> Result<Attr, FsError> {
        let n = ino >> SLOT_SHIFT;
        if n == 0 {
            // by_ref/ takes new refs when some are writable.
            let writable = ino == BY_REF_INO && self.has_writable();
            return if self.is_dir(ino) { Ok(self.dir_attr(ino, writable)) } else { Err(FsError::NotFound) };
        }
        let slot = self.slot(n).ok_or(FsError::NotFound)?;
        match slot.view() {
            Some(v) => {
                let local = ino & LOCAL_MASK;
                let mut a = v.coll.fs_for(local).getattr(local)?;
                a.ino = ino;
                Ok(a)
            }
            None if ino & LOCAL_MASK == ROOT => Ok(self.dir_attr(ino, self.writable_key(&slot.key))),
            None => Err(FsError::NotFound),
        }
    }

    fn dir_attr(&self, ino: u64, writable: bool) -> Attr {
        let t = self.started;
        Attr {
            ino,
            kind: Kind::Dir,
            size: 0,
            perm: if writable { 0o755 } else { 0o555 },
            nlink: 2,
            uid: self.uid,
            gid: self.gid,
            atime: t,
            mtime: t,
            ctime: t,
        }
    }

    fn writable_key(&self, key: &Key) -> bool {
        matches!(key, Key::Ref(name) if matches(&self.opts.writable, name.as_str()))
    }

    /// The parent of a namespace directory.
    pub fn parent_of(&self, dir: u64) -> u64 {
        match dir {
            BY_REF_INO | BY_PDH_INO | HISTORY_INO | ROOT => ROOT,
            _ => HISTORY_INO,
        }
    }

    /// `name` in the namespace directory `dir`: its attributes (a view is not opened by being looked up).
    pub fn lookup(&self, dir: u64, name: &[u8]) -> Result<Attr, FsError> {
        let ino = match dir {
            ROOT => match name {
                BY_REF => BY_REF_INO,
                BY_PDH => BY_PDH_INO,
                HISTORY => HISTORY_INO,
                _ => return Err(FsError::NotFound),
            },
            BY_REF_INO => {
                let name = ref_of_entry(name).ok_or(FsError::NotFound)?;
                // A ref shown once stays (refs are never deleted; a made one has no version yet).
                if !self.keys().contains_key(&Key::Ref(name.clone())) {
                    self.rt.block_on(self.catalog.head(&name)).map_err(FsError::from)?.ok_or(FsError::NotFound)?;
                }
                self.reserve(Key::Ref(name))?
            }
            BY_PDH_INO => {
                let text = std::str::from_utf8(name).map_err(|_| FsError::NotFound)?;
                let pdh = Pdh::parse(text).map_err(|_| FsError::NotFound)?;
                if pdh.to_string() != text {
                    return Err(FsError::NotFound);
                }
                if !self.keys().contains_key(&Key::Pdh(pdh)) {
                    self.rt
                        .block_on(self.catalog.get_collection(&pdh))
                        .map_err(FsError::from)?
                        .ok_or(FsError::NotFound)?;
                }
                self.reserve(Key::Pdh(pdh))?
            }
            HISTORY_INO => {
                let name = ref_of_entry(name).ok_or(FsError::NotFound)?;
                // As in by_ref/: a history shown once stays.
                let known = self.dirs.lock().unwrap_or_else(|p| p.into_inner()).by_name.contains_key(&name);
                if !known {
                    self.rt.block_on(self.catalog.head(&name)).map_err(FsError::from)?.ok_or(FsError::NotFound)?;
                }
                self.history_dir(name)?
            }
            _ => {
                let r = self.history_ref(dir).ok_or(FsError::NotFound)?;
                let (n, pdh) = version_entry(name).ok_or(FsError::NotFound)?;
                let key = Key::Version(r.clone(), n, pdh);
                if !self.keys().contains_key(&key) {
                    let versions = self.rt.block_on(self.catalog.history(&r)).map_err(FsError::from)?;
                    versions.iter().find(|v| v.version == n && v.pdh == pdh).ok_or(FsError::NotFound)?;
                }
                self.reserve(key)?
            }
        };
        self.synced()?;
        self.attr(ino)
    }

    /// `mkdir by_ref/NAME` by the mount's owner (see [`Namespace::make_ref_as`]).
    pub fn make_ref(&self, dir: u64, name: &[u8]) -> Result<Attr, FsError> {
        self.make_ref_as(self.uid, self.gid, dir, name)
    }

    /// `mkdir by_ref/NAME` by `uid`: a new ref, if the configuration makes NAME writable; owned by `uid` (and
    /// `gid`) from now on, empty, and with a version from its first commit on.
    pub fn make_ref_as(&self, uid: u32, gid: u32, dir: u64, name: &[u8]) -> Result<Attr, FsError> {
        if dir != BY_REF_INO {
            return Err(FsError::NotPermitted("the namespace's directories are fixed; new refs go in by_ref/"));
        }
        let r = ref_of_entry(name).ok_or(FsError::Invalid("not a ref name (a '/' in one is written %2F)"))?;
        if !matches(&self.opts.writable, r.as_str()) {
            return Err(FsError::NotPermitted("the configuration does not make this ref writable"));
        }
        let key = Key::Ref(r.clone());
        if self.keys().contains_key(&key) || self.rt.block_on(self.catalog.head(&r)).map_err(FsError::from)?.is_some() {
            return Err(FsError::Exists);
        }
        // Made by someone else (a writable mount before its first commit): theirs, not made here.
        let mine = self.opts.policy.new_ref(uid, gid);
        let made = self.rt.block_on(self.catalog.create_ref(&r, &mine)).map_err(FsError::from)?;
        if made != mine {
            return Err(FsError::Exists);
        }
        let ino = self.reserve(key)?;
        self.synced()?;
        // Opened at once: until its first commit, the view is all there is of the new ref.
        self.resolve(ino)?;
        self.attr(ino)
    }

    /// A namespace directory's entries, with attributes (views are not opened by being listed).
    pub fn list(&self, dir: u64) -> Result<Vec<(Vec<u8>, Attr)>, FsError> {
        let names: Vec<(Vec<u8>, u64)> = match dir {
            ROOT => vec![(BY_REF.to_vec(), BY_REF_INO), (BY_PDH.to_vec(), BY_PDH_INO), (HISTORY.to_vec(), HISTORY_INO)],
            BY_REF_INO => {
                let refs = self.rt.block_on(self.catalog.list_refs()).map_err(FsError::from)?;
                let mut out = Vec::with_capacity(refs.len());
                for v in refs {
                    out.push((ref_entry(&v.name), self.reserve(Key::Ref(v.name))?));
                }
                // And the refs made here that have no version yet.
                let made: Vec<(Vec<u8>, u64)> = self
                    .keys()
                    .iter()
                    .filter_map(|(k, &n)| match k {
                        Key::Ref(name) => Some((ref_entry(name), n << SLOT_SHIFT | ROOT)),
                        _ => None,
                    })
                    .filter(|(entry, _)| !out.iter().any(|(e, _)| e == entry))
                    .collect();
                out.extend(made);
                out.sort();
                out
            }
            // Only what has been looked up: every collection ever committed is too many to list.
            BY_PDH_INO => {
                let mut out: Vec<_> = self
                    .keys()
                    .iter()
                    .filter_map(|(k, &n)| match k {
                        Key::Pdh(p) => Some((p.to_string().into_bytes(), n << SLOT_SHIFT | ROOT)),
                        _ => None,
                    })
                    .collect();
                out.sort();
                out
            }
            HISTORY_INO => {
                let refs = self.rt.block_on(self.catalog.list_refs()).map_err(FsError::from)?;
                let mut out = Vec::with_capacity(refs.len());
                for v in refs {
                    out.push((ref_entry(&v.name), self.history_dir(v.name)?));
                }
                out
            }
            _ => {
                let r = self.history_ref(dir).ok_or(FsError::NotFound)?;
                let versions = self.rt.block_on(self.catalog.history(&r)).map_err(FsError::from)?;
                let mut out = Vec::with_capacity(versions.len());
                for v in versions {
                    let entry = format!("{}-{}", v.version, v.pdh).into_bytes();
                    out.push((entry, self.reserve(Key::Version(r.clone(), v.version, v.pdh))?));
                }
                out
            }
        };
        self.synced()?;
        names.into_iter().map(|(name, ino)| Ok((name, self.attr(ino)?))).collect()
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<Key, u64>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn history_ref(&self, dir: u64) -> Option<RefName> {
        self.dirs.lock().unwrap_or_else(|p| p.into_inner()).by_ino.get(&dir).cloned()
    }

    fn history_dir(&self, name: RefName) -> Result<u64, FsError> {
        let mut dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&ino) = dirs.by_name.get(&name) {
            return Ok(ino);
        }
        let ino = HISTORY_INO + 1 + dirs.by_ino.len() as u64;
        if ino >= 1 << SLOT_SHIFT {
            return Err(FsError::NoSpace("this mount has shown as many histories as it can".into()));
        }
        self.save(format!("dir {ino} {name}"))?;
        dirs.by_ino.insert(ino, name.clone());
        dirs.by_name.insert(name, ino);
        Ok(ino)
    }

    /// The kernel number of the root of the view for `key`, given a slot now if it has none.
    fn reserve(&self, key: Key) -> Result<u64, FsError> {
        let mut keys = self.keys();
        if let Some(&n) = keys.get(&key) {
            return Ok(n << SLOT_SHIFT | ROOT);
        }
        if let Key::Version(name, ..) = &key {
            self.history_dir(name.clone())?;
        }
        let (parent, path) = place(&key, &self.dirs.lock().unwrap_or_else(|p| p.into_inner())).expect("made above");
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        let n = slots.len() as u64 + 1;
        if n > MAX_SLOTS {
            return Err(FsError::NoSpace("this mount has shown as many collections as it can".into()));
        }
        self.save(format!("slot {n} {}", key_text(&key)))?;
        slots.push(Arc::new(Slot::new(n, key.clone(), parent, path)));
        keys.insert(key, n);
        Ok(n << SLOT_SHIFT | ROOT)
    }

    /// Keeps at most [`NamespaceOptions::keep_immutable`] immutable views in memory: lets go of the least
    /// recently used ones that have no file open (not `keep`, just opened).
    fn let_go(&self, keep: u64) {
        let mut open: Vec<(u64, Arc<Slot>)> = self
            .slots()
            .iter()
            .filter(|s| s.n != keep && s.view().is_some_and(|v| v.immutable()))
            .map(|s| (s.used.load(Ordering::Relaxed), s.clone()))
            .collect();
        let mut excess = (open.len() + 1).saturating_sub(self.opts.keep_immutable.max(1));
        open.sort_by_key(|(used, _)| *used);
        for (_, slot) in open {
            if excess == 0 {
                break;
            }
            // Never waits for another opening: two openings letting go of each other's views would deadlock.
            let Ok(_one) = slot.opening.try_lock() else { continue };
            let mut view = slot.view.write().unwrap_or_else(|p| p.into_inner());
            if view.as_ref().is_some_and(|v| !v.coll.fs().any_open()) {
                tracing::debug!(view = %slot.path.display(), "let go (opened again when used)");
                *view = None;
                excess -= 1;
            }
        }
    }

    /// The slot's view, opened now if it is not yet.
    fn open(&self, slot: &Slot) -> Result<Arc<View>, FsError> {
        slot.used.store(self.clock.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        if let Some(v) = slot.view() {
            return Ok(v);
        }
        let _one = slot.opening.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = slot.view() {
            return Ok(v);
        }
        let (uid, gid) = (self.uid, self.gid);
        let cx =
            OpenWith { catalog: self.catalog.clone(), store: self.store.clone(), opts: self.opts.fs.clone(), uid, gid };
        let catalog = cx.catalog.clone();
        let path = &slot.path;
        let coll = self
            .rt
            .block_on(async {
                let source = match &slot.key {
                    Key::Ref(name) if self.writable_key(&slot.key) => {
                        let at = self.opts.mount_point.join(path);
                        let journal = journal::path_for(&self.opts.journals, name.as_str(), &at);
                        Source::Writable { name: name.clone(), journal, at }
                    }
                    Key::Ref(name) => Source::Follow(name.clone()),
                    Key::Pdh(pdh) => Source::Pdh(*pdh),
                    Key::Version(name, n, pdh) => {
                        let versions = catalog.history(name).await?;
                        let v = versions
                            .into_iter()
                            .find(|v| v.version == *n && v.pdh == *pdh)
                            .ok_or(CollectionError::UnknownPdh(*pdh))?;
                        Source::Version(v)
                    }
                };
                let writable = matches!(source, Source::Writable { .. });
                let c = Collection::open(cx, source).await?;
                if writable {
                    // Commits nobody asks for (auto-commit, unmount) are the mount's owner's; a user's
                    // `.cafs/commit` is checked as that user (see the vfs).
                    c.set_writer(Some(self.opts.policy.writer(uid, gid)));
                }
                Ok::<_, CollectionError>(c)
            })
            .map_err(opening_failed)?;
        let view = Arc::new(View {
            coll: Arc::new(coll),
            control: Arc::new(Control::default()),
            slot: slot.n,
            parent: slot.parent,
            path: slot.path.clone(),
        });
        tracing::info!(view = %view.path.display(), "opened");
        let me = self.me.clone();
        let alive = move || me.upgrade().is_some_and(|ns| ns.alive.load(Ordering::SeqCst));
        crate::vfs::control::start_tasks(
            &self.rt,
            &view.coll,
            &view.control,
            self.opts.autocommit,
            self.opts.refresh,
            alive,
        );
        *slot.view.write().unwrap_or_else(|p| p.into_inner()) = Some(view.clone());
        if view.immutable() {
            self.let_go(slot.n);
        }
        if let Some(f) = self.on_open.get() {
            f(&view);
        }
        Ok(view)
    }
}

impl Slot {
    fn new(n: u64, key: Key, parent: u64, path: PathBuf) -> Self {
        Self { n, key, parent, path, view: RwLock::new(None), used: AtomicU64::new(0), opening: Mutex::new(()) }
    }

    fn view(&self) -> Option<Arc<View>> {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Where the view for `key` shows: its directory's number and its path below the mount point (None: a
/// version whose history directory has no number yet).
fn place(key: &Key, dirs: &Dirs) -> Option<(u64, PathBuf)> {
    Some(match key {
        Key::Ref(name) => (BY_REF_INO, PathBuf::from("by_ref").join(entry_path(&ref_entry(name)))),
        Key::Pdh(pdh) => (BY_PDH_INO, PathBuf::from("by_pdh").join(pdh.to_string())),
        Key::Version(name, v, pdh) => (
            *dirs.by_name.get(name)?,
            PathBuf::from("history").join(entry_path(&ref_entry(name))).join(format!("{v}-{pdh}")),
        ),
    })
}

fn key_text(key: &Key) -> String {
    match key {
        Key::Ref(name) => format!("ref {name}"),
        Key::Pdh(pdh) => format!("pdh {pdh}"),
        Key::Version(name, v, pdh) => format!("version {name} {v} {pdh}"),
    }
}

/// A line of the slot file.
enum Saved {
    Slot(u64, Key),
    Dir(u64, RefName),
}

fn parse_slot_line(line: &str) -> Option<Saved> {
    let words: Vec<&str> = line.split(' ').collect();
    let name = |s: &str| RefName::new(s).ok();
    let pdh = |s: &str| Pdh::parse(s).ok();
    Some(match words[..] {
        ["dir", ino, n] => Saved::Dir(ino.parse().ok().filter(|&i| i > HISTORY_INO)?, name(n)?),
        ["slot", n, "ref", r] => Saved::Slot(n.parse().ok()?, Key::Ref(name(r)?)),
        ["slot", n, "pdh", p] => Saved::Slot(n.parse().ok()?, Key::Pdh(pdh(p)?)),
        ["slot", n, "version", r, v, p] => {
            Saved::Slot(n.parse().ok()?, Key::Version(name(r)?, v.parse().ok()?, pdh(p)?))
        }
        _ => return None,
    })
}

fn entry_path(entry: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(entry))
}

/// `N-HASH`, as `history/NAME/` names a version.
fn version_entry(name: &[u8]) -> Option<(u64, Pdh)> {
    let text = std::str::from_utf8(name).ok()?;
    let (n, hash) = text.split_once('-')?;
    let pdh = Pdh::parse(hash).ok()?;
    let v: u64 = n.parse().ok()?;
    // One spelling per version: no leading zeros or `+`, the hash as cafs writes it.
    (format!("{v}-{pdh}") == text).then_some((v, pdh))
}

#[cfg(test)]
pub(crate) mod tests;
