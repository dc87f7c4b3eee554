//! The daemon: the mounts one cafsd serves. Here are their registry, the fd socket on which the privileged
//! helper hands over the `/dev/fuse` fd of each mount it made, and the operations the gRPC API drives on them
//! (mount and unmount go through the helper; commit, flush and status act here). A mount belongs to cafsd, not
//! to the client that asked for it: it lives until it is unmounted or cafsd stops, whatever happens to that
//! client.
//!
//! Only root may hand an fd over (the helper runs as root; `SO_PEERCRED` says who connected). Each hand-over
//! is answered with a [`Reply`]: the collection could be opened and is being served, or why not (the helper
//! then unmounts).
//!
//! Its parts: [`mount`] (the kernel mount a cafsd serves, from the helper's fd or its own), [`systemd`]
//! (readiness, and the fd store that keeps mounts across cafsd restarts), and, private, what one served mount is, keeping
//! mounts across a restart, and the background tasks of the hand-over.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

pub use cafs_mount::wire::fd_socket_path;
use cafs_mount::wire::{self, Handoff, HelperRequest, MountRequest, Origin, Reply, WireError};

use crate::catalog::access::check;
use crate::catalog::{Catalog, Need, RefName, Writer};
use crate::collection::{Collection, CollectionError, Committed, OpenWith, Source};
use crate::fs::{FsError, FsOptions};
use crate::fuse::CafsFuse;
use crate::journal;
use crate::manifest::{Pdh, PdhError};
use crate::policy::{CheckError, Policy};
use crate::store::{BlockStore, DiskCache};
use crate::vfs::Gate;
use crate::vfs::control::Control;
use crate::vfs::namespace::{Namespace, NamespaceError, NamespaceOptions};
use mount::{MountError, MountOptions, resume_fd, serve_fd};
use systemd::{FdStore, Restored};

pub mod mount;
mod restart;
mod served;
pub mod systemd;
mod tasks;

use served::{Ending, Throughput};
pub use served::{NamespaceServed, Point, Served};

use crate::socket::bind_unix;
use crate::vfs::control::start_tasks;
use tasks::{relay, sample_throughput};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("fd socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: the mount point must be an absolute path")]
    NotAbsolute(PathBuf),
    #[error("{0} is not a mount of this cafsd")]
    NotServed(PathBuf),
    #[error("{path} belongs to uid {owner}; uid {uid} may not {what} it")]
    NotOwner { path: PathBuf, owner: u32, uid: u32, what: &'static str },
    #[error("cannot reach the mount helper at {path}: {source}")]
    HelperUnreachable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the mount helper: {0}")]
    Helper(String),
    #[error(transparent)]
    Collection(#[from] CollectionError),
    #[error("cafsd is shutting down; it takes no new mounts")]
    Stopping,
    /// A hand-over that cannot be served as sent (not from root, no fd, a mount point already served).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Denied(#[from] CheckError),
    #[error(transparent)]
    BadHash(#[from] PdhError),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    #[error("{0}")]
    Internal(String),
}

/// How many collections by hash a namespace mount keeps loaded (each costs its tree's inodes in memory).
const KEEP_IMMUTABLE: usize = 32;

/// A served mount, of either kind: what the registry holds at each path, and what [`Server::mount`] made.
#[derive(Clone)]
pub enum Mount {
    /// One collection: a mount of its own, or a collection opened in a namespace mount (at its path there).
    Collection(Arc<Served>),
    /// The whole catalog.
    Namespace(Arc<NamespaceServed>),
}

impl Mount {
    fn collection(&self) -> Option<Arc<Served>> {
        match self {
            Mount::Collection(s) => Some(s.clone()),
            Mount::Namespace(_) => None,
        }
    }

    fn namespace(&self) -> Option<Arc<NamespaceServed>> {
        match self {
            Mount::Namespace(n) => Some(n.clone()),
            Mount::Collection(_) => None,
        }
    }
}

/// What a gRPC Mount asked for that the helper's hand-over does not carry.
#[derive(Debug, Clone, Copy)]
struct Prefs {
    autocommit: Duration,
}

/// The mounts one cafsd serves.
pub struct Server {
    catalog: Arc<dyn Catalog>,
    store: Arc<dyn BlockStore>,
    rt: tokio::runtime::Handle,
    /// Commit a changed tree after this long without changes (zero: never), unless a mount asks otherwise.
    autocommit: Duration,
    /// The helper's socket (`cafs-mount serve`), through which cafsd mounts and unmounts for its clients.
    helper: PathBuf,
    /// Where writable mounts keep their journals.
    journals: PathBuf,
    /// How often a read-only mount of a ref looks for a newer version (zero: never).
    refresh: Duration,
    started: Instant,
    /// Every served mount by its path: mounts of a collection, namespace mounts, and the collections opened
    /// in a namespace mount (so that `fsctl commit`, `flush` and `status` reach them by their path).
    mounts: Mutex<BTreeMap<PathBuf, Mount>>,
    /// Refs a namespace mount shows writable (see [`NamespaceOptions::writable`]).
    namespace_writable: Vec<String>,
    prefs: Mutex<HashMap<PathBuf, Prefs>>,
    /// Set once cafsd is shutting down: no new mounts.
    stopping: AtomicBool,
    /// systemd's file descriptor store, when cafsd runs under systemd with one: every mount's fd is kept there
    /// too, so mounts outlive cafsd even when no helper daemon holds them.
    fdstore: Option<FdStore>,
    /// Who may use which ref.
    policy: Arc<Policy>,
    /// Every mount's filesystem options.
    fs: FsOptions,
    /// The node's disk cache of blocks from a remote store, if it has one.
    disk_cache: Option<Arc<DiskCache>>,
}

/// `dir` as the helper names it: absolute, its components normalized.
pub fn normalize(dir: &Path) -> Result<PathBuf, ServerError> {
    if !dir.is_absolute() {
        return Err(ServerError::NotAbsolute(dir.to_path_buf()));
    }
    Ok(dir.components().collect())
}

/// How a [`Server`] runs its mounts.
#[derive(Debug)]
pub struct ServerOptions {
    /// The helper's socket (`cafs-mount serve`).
    pub helper: PathBuf,
    /// Where writable mounts keep their journals.
    pub journals: PathBuf,
    /// Commit a changed tree after this long without changes (zero: never), unless a mount asks otherwise.
    pub autocommit: Duration,
    /// How often a read-only mount of a ref looks for a newer version (zero: never).
    pub ref_refresh: Duration,
    /// systemd's file descriptor store, when cafsd runs under systemd with one.
    pub fdstore: Option<FdStore>,
    /// Refs a namespace mount shows writable (see [`NamespaceOptions::writable`]).
    pub namespace_writable: Vec<String>,
    /// Who may use which ref.
    pub policy: Arc<Policy>,
    /// Every mount's filesystem core: memory budget, uploads, cache, read-ahead (`[fs]`).
    pub fs: FsOptions,
    /// The node's disk cache in front of a remote store (`[cache]`), for status and `fsctl cache drop`.
    pub disk_cache: Option<Arc<DiskCache>>,
}

impl Server {
    pub fn new(
        catalog: Arc<dyn Catalog>,
        store: Arc<dyn BlockStore>,
        rt: tokio::runtime::Handle,
        opts: ServerOptions,
    ) -> Arc<Self> {
        let ServerOptions {
            helper,
            journals,
            autocommit,
            ref_refresh: refresh,
            fdstore,
            namespace_writable,
            policy,
            fs,
            disk_cache,
        } = opts;
        let server = Arc::new(Self {
            catalog,
            store,
            rt: rt.clone(),
            autocommit,
            helper,
            journals,
            refresh,
            started: Instant::now(),
            mounts: Mutex::default(),
            namespace_writable,
            prefs: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
            fdstore,
            policy,
            fs,
            disk_cache,
        });
        rt.spawn(sample_throughput(Arc::downgrade(&server)));
        server
    }

    pub fn catalog(&self) -> &Arc<dyn Catalog> {
        &self.catalog
    }

    pub fn disk_cache(&self) -> Option<&Arc<DiskCache>> {
        self.disk_cache.as_ref()
    }

    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn helper_socket(&self) -> &Path {
        &self.helper
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, BTreeMap<PathBuf, Mount>> {
        self.mounts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `dir` is served now (a mount of either kind, or a collection of a namespace mount).
    pub fn serves(&self, dir: &Path) -> bool {
        self.registry().contains_key(dir)
    }

    /// The namespace mount at `dir`, if it is one.
    pub fn namespace(&self, dir: &Path) -> Option<Arc<NamespaceServed>> {
        self.registry().get(&normalize(dir).ok()?)?.namespace()
    }

    /// The collections open in the namespace mount at `dir`.
    pub fn parts(&self, dir: &Path) -> Vec<Arc<Served>> {
        self.list().into_iter().filter(|s| s.part_of.as_deref() == Some(dir)).collect()
    }

    /// Every namespace mount, by mount point.
    pub fn namespace_list(&self) -> Vec<Arc<NamespaceServed>> {
        self.registry().values().filter_map(Mount::namespace).collect()
    }

    /// The collection served at `dir`.
    pub fn get(&self, dir: &Path) -> Result<Arc<Served>, ServerError> {
        let dir = normalize(dir)?;
        self.registry().get(&dir).and_then(Mount::collection).ok_or(ServerError::NotServed(dir))
    }

    /// Every collection served, by path.
    pub fn list(&self) -> Vec<Arc<Served>> {
        self.registry().values().filter_map(Mount::collection).collect()
    }

    /// Forgets `dir` if `is_it` says what is registered there is the mount that ended.
    fn forget(&self, dir: &Path, is_it: impl Fn(&Mount) -> bool) {
        let mut registry = self.registry();
        if registry.get(dir).is_some_and(is_it) {
            registry.remove(dir);
        }
    }

    /// The levels the metrics report, read from every mount now (blocking: each mount's lock briefly).
    pub fn levels(&self) -> crate::metrics::Levels {
        let mounts = self.list();
        let mut l = crate::metrics::Levels { mounts: mounts.len() as u64, ..Default::default() };
        for s in &mounts {
            let up = s.coll.fs().upload_stats();
            l.held_bytes += up.held_bytes;
            l.queued_blocks += up.queued as u64;
            l.in_flight_blocks += up.in_flight as u64;
            l.failed_blocks += up.failed as u64;
            if let Some(j) = s.coll.fs().journal() {
                l.journal_bytes += std::fs::metadata(j.path()).map_or(0, |m| m.len());
            }
        }
        l
    }

    /// Listens on `path` (replacing a stale socket file) and handles hand-overs on a thread of its own, until
    /// the process ends.
    pub fn listen(self: &Arc<Self>, path: &Path) -> Result<(), ServerError> {
        let err = |source| ServerError::Socket { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let listener = bind_unix(path).map_err(err)?;
        tracing::info!(socket = %path.display(), "waiting for mounts from cafs-mount");
        let server = self.clone();
        std::thread::Builder::new()
            .name("cafsd-fd".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    match conn {
                        Ok(stream) => {
                            let server = server.clone();
                            // One thread per hand-over: opening a large collection must not hold up the next.
                            std::thread::spawn(move || server.handle(stream));
                        }
                        Err(e) => tracing::warn!(error = %e, "fd socket accept failed"),
                    }
                }
            })
            .map_err(err)?;
        Ok(())
    }

    fn handle(self: Arc<Self>, stream: UnixStream) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        let reply = match self.accept(&stream) {
            Ok(Some(dir)) => {
                tracing::info!(mount = %dir.display(), "mounted");
                Reply { ok: true, message: String::new() }
            }
            // The helper checking who listens here (to trust relayed requests) connects and hangs up.
            Ok(None) => return,
            Err(e) => {
                let message = e.to_string();
                tracing::warn!(%message, "hand-over refused");
                Reply { ok: false, message }
            }
        };
        if let Err(e) = wire::send(&stream, &reply, None) {
            tracing::warn!(error = %e, "could not answer a hand-over");
        }
    }

    fn accept(self: &Arc<Self>, stream: &UnixStream) -> Result<Option<PathBuf>, ServerError> {
        let (uid, _, pid) = wire::peer(stream)?;
        if uid != 0 {
            return Err(ServerError::Refused(format!("only root hands over mounts (peer uid {uid}, pid {pid})")));
        }
        let (h, fd): (Handoff, _) = match wire::recv(stream) {
            Ok(m) => m,
            Err(WireError::Closed) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let fd = fd.ok_or_else(|| ServerError::Refused("a hand-over must carry the /dev/fuse fd".into()))?;
        self.serve(h, fd).map(Some)
    }

    /// Stops taking new mounts (the first step of a shutdown).
    pub fn begin_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn serve(self: &Arc<Self>, mut h: Handoff, dev: OwnedFd) -> Result<PathBuf, ServerError> {
        if self.is_stopping() {
            return Err(ServerError::Stopping);
        }
        let dir = normalize(&h.request.mountpoint)?;
        h.request.mountpoint = dir.clone();
        let prefs = self.prefs.lock().unwrap_or_else(|p| p.into_inner()).remove(&dir);
        if self.serves(&dir) {
            // The helper handing back a mount that systemd's fd store already gave back: the same connection,
            // taken over once. Refusing would have the helper detach a live mount.
            if h.resume {
                return Ok(dir);
            }
            return Err(ServerError::Refused(format!("{} is already served", dir.display())));
        }
        if h.request.origin == Origin::Namespace {
            return self.serve_namespace(h, dev, prefs);
        }
        let cx = OpenWith {
            catalog: self.catalog.clone(),
            store: self.store.clone(),
            opts: self.fs.clone(),
            uid: h.uid,
            gid: h.gid,
        };
        let catalog = cx.catalog.clone();
        let coll = self
            .rt
            .block_on(async {
                let pdh: Pdh = match &h.request.origin {
                    Origin::Ref(name) => {
                        let name = RefName::new(name.clone()).map_err(CollectionError::from)?;
                        // Checked for the mount's owner, however the mount was asked for (the API, or the
                        // helper directly). A mount taken over from an earlier cafsd is served on whatever its
                        // ref's permissions are now: refusing would detach a live mount and strand its journal,
                        // and its commits are checked anyway.
                        let writer = self.policy.writer(h.uid, h.gid);
                        if !h.request.read_only {
                            // A ref mounted writable before its first commit is created now, owned by the mount's
                            // owner, so that nobody else takes it before that commit.
                            let access =
                                catalog.create_ref(&name, &writer.new_ref).await.map_err(CollectionError::from)?;
                            if let Err(e) = check(name.as_str(), &access, &writer.principal, Need::Write) {
                                if !h.resume {
                                    return Err(ServerError::Denied(e.into()));
                                }
                                tracing::warn!(mount = %dir.display(), error = %e, "taking over a mount whose owner may no longer write its ref");
                            }
                            let journal = journal::path_for(&self.journals, name.as_str(), &dir);
                            let source = Source::Writable { name, journal, at: dir.clone() };
                            let c = Collection::open(cx, source).await?;
                            c.set_writer(Some(writer));
                            return Ok(c);
                        }
                        if let Err(e) = self.policy.check(catalog.as_ref(), &name, &writer.principal, Need::Read).await
                        {
                            if !h.resume {
                                return Err(e.into());
                            }
                            tracing::warn!(mount = %dir.display(), error = %e, "taking over a mount whose owner may no longer read its ref");
                        }
                        // A ref mounted read-only shows its current version, and then each newer one.
                        return Ok(Collection::open(cx, Source::Follow(name)).await?);
                    }
                    Origin::Pdh(pdh) => Pdh::parse(pdh)?,
                    Origin::Namespace => unreachable!("served above"),
                };
                Ok(Collection::open(cx, Source::Pdh(pdh)).await?)
            })
            .map(Arc::new)?;
        let control = Arc::new(Control::default());
        let fuse = CafsFuse::new(coll.clone(), control.clone(), self.rt.clone(), h.uid, h.gid);
        let gate = fuse.gate();
        let (mounted, fdname) = self.attach(&h, dev, fuse, coll.is_read_only())?;
        let autocommit =
            if coll.is_read_only() { Duration::ZERO } else { prefs.map_or(self.autocommit, |p| p.autocommit) };
        let at = Point { dir: dir.clone(), uid: h.uid, gid: h.gid, held: h.held || fdname.is_some(), fdname, gate };
        let served = Arc::new(Served {
            at,
            coll: coll.clone(),
            control: control.clone(),
            autocommit,
            discard: AtomicBool::new(false),
            throughput: Mutex::new(Throughput::default()),
            ended: Ending::new(),
            part_of: None,
        });
        self.registry().insert(dir.clone(), Mount::Collection(served.clone()));
        let (server, at) = (Arc::downgrade(self), dir.clone());
        let alive = move || server.upgrade().is_some_and(|s| s.serves(&at));
        start_tasks(&self.rt, &coll, &control, autocommit, self.refresh, alive);
        // When the mount goes away (whoever unmounts it), commit a changed tree and forget the mount.
        let server = self.clone();
        std::thread::spawn(move || {
            if let Err(e) = mounted.wait() {
                tracing::warn!(mount = %served.at.dir.display(), error = %e, "FUSE session ended with an error");
            }
            server.ended(&served);
        });
        Ok(dir)
    }

    /// Serves `fuse` on the mount's fd (taking over a live one when resuming), keeping the fd in systemd's
    /// store first when there is one. Returns the session and the name the store keeps the fd under.
    fn attach(
        &self,
        h: &Handoff,
        dev: OwnedFd,
        fuse: CafsFuse,
        read_only: bool,
    ) -> Result<(mount::Mounted, Option<String>), ServerError> {
        let dir = &h.request.mountpoint;
        let opts = MountOptions { read_only, ..MountOptions::default() };
        // Kept in systemd's store before it is served: a mount is never served without a holder that outlives
        // this cafsd, once there is a store.
        let fdname = self.fdstore.as_ref().and_then(|store| match store.keep(h, dev.as_fd()) {
            Ok(name) => Some(name),
            Err(e) => {
                tracing::warn!(mount = %dir.display(), error = %e, "could not keep the mount in systemd's fd store");
                None
            }
        });
        let mounted = if h.resume {
            tracing::info!(mount = %dir.display(), "taking over a live mount");
            resume_fd(dir, dev, fuse, &opts)
        } else {
            serve_fd(dir, dev, fuse, &opts)
        }
        .inspect_err(|_| {
            if let (Some(store), Some(name)) = (&self.fdstore, &fdname) {
                store.forget(name);
            }
        })?;
        Ok((mounted, fdname))
    }

    /// Serves a namespace mount (see [`crate::vfs::namespace`]).
    fn serve_namespace(
        self: &Arc<Self>,
        h: Handoff,
        dev: OwnedFd,
        prefs: Option<Prefs>,
    ) -> Result<PathBuf, ServerError> {
        let dir = h.request.mountpoint.clone();
        let autocommit = prefs.map_or(self.autocommit, |p| p.autocommit);
        let opts = NamespaceOptions {
            mount_point: dir.clone(),
            writable: if h.request.read_only { Vec::new() } else { self.namespace_writable.clone() },
            journals: self.journals.clone(),
            refresh: self.refresh,
            autocommit,
            fs: self.fs.clone(),
            keep_immutable: KEEP_IMMUTABLE,
            slots_file: Some(journal::path_for(&self.journals, "", &dir).with_extension("slots")),
            resume: h.resume,
            policy: self.policy.clone(),
        };
        let ns = Namespace::new(self.catalog.clone(), self.store.clone(), self.rt.clone(), h.uid, h.gid, opts)?;
        let fuse = CafsFuse::namespace(ns.clone(), self.rt.clone(), h.uid, h.gid);
        let gate = fuse.gate();
        let (mounted, fdname) = self.attach(&h, dev, fuse, !ns.has_writable())?;
        let held = h.held || fdname.is_some();
        let (server, at, view_gate) = (Arc::downgrade(self), dir.clone(), gate.clone());
        let (uid, gid) = (h.uid, h.gid);
        ns.on_open(move |view| {
            // A view by hash has nothing to commit or flush, and may be let go and opened again.
            if view.immutable() {
                return;
            }
            let Some(server) = server.upgrade() else { return };
            let point = Point { dir: at.join(&view.path), uid, gid, held, fdname: None, gate: view_gate.clone() };
            let served = Arc::new(Served {
                at: point,
                coll: view.coll.clone(),
                control: view.control.clone(),
                autocommit: if view.coll.is_read_only() { Duration::ZERO } else { autocommit },
                discard: AtomicBool::new(false),
                throughput: Mutex::new(Throughput::default()),
                ended: Ending::new(),
                part_of: Some(at.clone()),
            });
            // A view never takes the place of another mount registered at its path (one mounted there before
            // the namespace was mounted over it): that mount's owner would lose commit and unmount through fsctl.
            let mut registry = server.registry();
            match registry.get(&served.at.dir) {
                Some(Mount::Collection(other)) if other.part_of.as_ref() == Some(&at) => {}
                Some(_) => {
                    tracing::warn!(view = %served.at.dir.display(), "another mount is registered at this path; the view is not");
                    return;
                }
                None => {}
            }
            registry.insert(served.at.dir.clone(), Mount::Collection(served));
        });
        let served = Arc::new(NamespaceServed {
            at: Point { dir: dir.clone(), uid, gid, held, fdname, gate },
            ns,
            ended: Ending::new(),
        });
        self.registry().insert(dir.clone(), Mount::Namespace(served.clone()));
        let server = self.clone();
        std::thread::spawn(move || {
            if let Err(e) = mounted.wait() {
                tracing::warn!(mount = %served.at.dir.display(), error = %e, "FUSE session ended with an error");
            }
            server.namespace_ended(&served);
        });
        Ok(dir)
    }

    /// After a namespace mount is gone: commits each changed collection in it and forgets them.
    fn namespace_ended(&self, n: &NamespaceServed) {
        n.ns.stop();
        let views = self.parts(&n.at.dir);
        let mut outcome = Ok(());
        for s in views {
            self.ended(&s);
            if let Some(Err(e)) = s.ended.get() {
                outcome = Err(format!("{}: {e}", s.at.dir.display()));
            }
        }
        if let Some(path) = &n.ns.options().slots_file {
            let _ = std::fs::remove_file(path);
        }
        self.forget(&n.at.dir, |m| matches!(m, Mount::Namespace(o) if std::ptr::eq(o.as_ref(), n)));
        if let (Some(store), Some(name)) = (&self.fdstore, &n.at.fdname) {
            store.forget(name);
        }
        tracing::info!(mount = %n.at.dir.display(), "namespace unmounted");
        n.ended.set(outcome);
    }

    /// Unmounts a namespace mount: commits every changed collection in it first (a failed commit leaves the
    /// mount in place), then asks the helper to unmount and waits until the session is gone.
    pub async fn unmount_namespace(&self, n: &NamespaceServed) -> Result<(), ServerError> {
        for s in self.parts(&n.at.dir) {
            if s.coll.is_dirty() {
                s.control.commit(&s.coll, "cafsd", "unmount").await?;
            }
        }
        let (helper, request) = (self.helper.clone(), HelperRequest::Unmount { mountpoint: n.at.dir.clone() });
        let uid = n.at.uid;
        tokio::task::spawn_blocking(move || relay(&helper, uid, request))
            .await
            .map_err(|e| ServerError::Internal(format!("unmount task failed: {e}")))??;
        n.ended().await.map_err(ServerError::Internal)
    }

    fn ended(&self, s: &Served) {
        self.forget(&s.at.dir, |m| matches!(m, Mount::Collection(o) if std::ptr::eq(o.as_ref(), s)));
        let mut outcome = Ok(s.coll.last_pdh());
        if s.coll.is_dirty() && !s.discard.load(Ordering::SeqCst) {
            match self.rt.block_on(s.control.commit(&s.coll, "cafsd", "unmount")) {
                Ok(c) => {
                    tracing::info!(mount = %s.at.dir.display(), pdh = %c.pdh, "committed on unmount");
                    outcome = Ok(Some(c.pdh));
                }
                Err(e) => {
                    tracing::error!(
                        mount = %s.at.dir.display(),
                        error = %e,
                        "commit on unmount failed; what was fsynced stays in the journal, recovered when the ref is \
                         mounted there again"
                    );
                    outcome = Err(format!("commit on unmount failed: {e}"));
                }
            }
        }
        if outcome.is_ok() {
            s.coll.remove_journal();
        }
        if let (Some(store), Some(name)) = (&self.fdstore, &s.at.fdname) {
            store.forget(name);
        }
        tracing::info!(mount = %s.at.dir.display(), "unmounted");
        s.ended.set(outcome);
    }

    /// Asks the helper to mount `request` for `uid` (who must own the mount point, unless root) and hand it
    /// here. Blocking: call it from a blocking context.
    pub fn mount(&self, uid: u32, request: MountRequest, autocommit: Option<Duration>) -> Result<Mount, ServerError> {
        let dir = normalize(&request.mountpoint)?;
        if self.is_stopping() {
            return Err(ServerError::Stopping);
        }
        if let Some(autocommit) = autocommit {
            self.prefs.lock().unwrap_or_else(|p| p.into_inner()).insert(dir.clone(), Prefs { autocommit });
        }
        let result =
            relay(&self.helper, uid, HelperRequest::Mount(MountRequest { mountpoint: dir.clone(), ..request }));
        self.prefs.lock().unwrap_or_else(|p| p.into_inner()).remove(&dir);
        result?;
        // The hand-over registered the mount before the helper answered.
        self.registry()
            .get(&dir)
            .cloned()
            .ok_or_else(|| ServerError::Internal(format!("{} mounted, but not here", dir.display())))
    }

    /// Commits the mount's tree (into its own ref, or `into` another) as `by`, who must be allowed to write
    /// that ref (the catalog checks it in the commit's transaction); `committer` is the name the history shows.
    pub async fn commit(
        &self,
        s: &Served,
        into: Option<&RefName>,
        by: &Writer,
        committer: &str,
        message: &str,
    ) -> Result<Committed, ServerError> {
        Ok(match into {
            Some(name) => s.coll.commit_into_as(name, Some(by), committer, message).await?,
            None => s.control.commit_as(&s.coll, Some(by), committer, message).await?,
        })
    }

    /// Uploads everything the mount buffers; with `wait`, returns when it is stored (or an upload failed).
    pub async fn flush(&self, s: &Served, wait: bool) -> Result<(), ServerError> {
        let fs = s.coll.fs().clone();
        let task = tokio::task::spawn_blocking(move || fs.flush_all());
        if !wait {
            return Ok(());
        }
        task.await
            .map_err(|e| ServerError::Internal(format!("flush task failed: {e}")))?
            .map_err(|e: FsError| ServerError::Collection(e.into()))
    }

    /// Unmounts `s`: commits a changed tree first (unless `discard`: changes since the last commit are dropped),
    /// so that a commit that fails leaves the mount and its data in place; then asks the helper to unmount and
    /// waits until the session is gone. Returns the hash the mount ended at.
    pub async fn unmount(&self, s: &Arc<Served>, discard: bool) -> Result<Option<Pdh>, ServerError> {
        if discard {
            s.discard.store(true, Ordering::SeqCst);
        } else if s.coll.is_dirty() {
            s.control.commit(&s.coll, "cafsd", "unmount").await?;
        }
        let (helper, request) = (self.helper.clone(), HelperRequest::Unmount { mountpoint: s.at.dir.clone() });
        let uid = s.at.uid;
        match tokio::task::spawn_blocking(move || relay(&helper, uid, request))
            .await
            .map_err(|e| ServerError::Internal(format!("unmount task failed: {e}")))?
        {
            Ok(()) => {}
            Err(e) => {
                s.discard.store(false, Ordering::SeqCst);
                return Err(e);
            }
        }
        s.ended().await.map_err(ServerError::Internal)
    }
}
