//! cafsd's mounts: the registry of the collections it serves, and the fd socket on which the privileged helper
//! hands over the `/dev/fuse` fd of each mount it made. A mount belongs to cafsd, not to the client that asked
//! for it: it lives until it is unmounted or cafsd stops.
//!
//! Only root may hand an fd over (the helper runs as root; `SO_PEERCRED` says who connected). Each hand-over
//! is answered with a [`Reply`]: the collection could be opened and is being served, or why not (the helper
//! then unmounts).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use cafs_mount::wire::fd_socket_path;
use cafs_mount::wire::{self, Handoff, Origin, Reply};

use crate::catalog::{Catalog, RefName};
use crate::collection::Collection;
use crate::control::Control;
use crate::fs::FsOptions;
use crate::fuse::CafsFuse;
use crate::manifest::Pdh;
use crate::mount::{MountOptions, serve_fd};
use crate::store::BlockStore;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("fd socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One served mount.
pub struct Served {
    pub coll: Arc<Collection>,
    pub control: Arc<Control>,
}

/// The mounts one cafsd serves.
pub struct Server {
    catalog: Arc<dyn Catalog>,
    store: Arc<dyn BlockStore>,
    rt: tokio::runtime::Handle,
    /// Commit a changed tree after this long without changes (zero: never).
    autocommit: Duration,
    mounts: Mutex<HashMap<PathBuf, Served>>,
}

impl Server {
    pub fn new(
        catalog: Arc<dyn Catalog>,
        store: Arc<dyn BlockStore>,
        rt: tokio::runtime::Handle,
        autocommit: Duration,
    ) -> Arc<Self> {
        Arc::new(Self { catalog, store, rt, autocommit, mounts: Mutex::new(HashMap::new()) })
    }

    /// Whether `dir` is served now.
    pub fn serves(&self, dir: &Path) -> bool {
        self.mounts.lock().unwrap_or_else(|p| p.into_inner()).contains_key(dir)
    }

    /// Mount points served now.
    pub fn mount_points(&self) -> Vec<PathBuf> {
        self.mounts.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    /// Listens on `path` (replacing a stale socket file) and handles hand-overs on a thread of its own, until
    /// the process ends.
    pub fn listen(self: &Arc<Self>, path: &Path) -> Result<(), ServerError> {
        let err = |source| ServerError::Socket { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let listener = UnixListener::bind(path).map_err(err)?;
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
            Ok(dir) => {
                tracing::info!(mount = %dir.display(), "mounted");
                Reply { ok: true, message: String::new() }
            }
            Err(message) => {
                tracing::warn!(%message, "hand-over refused");
                Reply { ok: false, message }
            }
        };
        if let Err(e) = wire::send(&stream, &reply, None) {
            tracing::warn!(error = %e, "could not answer a hand-over");
        }
    }

    fn accept(self: &Arc<Self>, stream: &UnixStream) -> Result<PathBuf, String> {
        let (uid, _, pid) = wire::peer(stream).map_err(|e| e.to_string())?;
        if uid != 0 {
            return Err(format!("only root hands over mounts (peer uid {uid}, pid {pid})"));
        }
        let (h, fd): (Handoff, _) = wire::recv(stream).map_err(|e| e.to_string())?;
        let fd = fd.ok_or("a hand-over must carry the /dev/fuse fd")?;
        self.serve(h, fd).map_err(|e| format!("{e:#}"))
    }

    fn serve(self: &Arc<Self>, h: Handoff, dev: OwnedFd) -> Result<PathBuf, String> {
        let dir = h.request.mountpoint.clone();
        if self.serves(&dir) {
            return Err(format!("{} is already served", dir.display()));
        }
        let opts = FsOptions::default();
        let (catalog, store) = (self.catalog.clone(), self.store.clone());
        let coll = self
            .rt
            .block_on(async {
                match &h.request.origin {
                    Origin::Ref(name) => {
                        let name = RefName::new(name.clone()).map_err(|e| e.to_string())?;
                        Collection::open_ref(catalog, store, name, opts, h.uid, h.gid).await.map_err(|e| e.to_string())
                    }
                    Origin::Pdh(pdh) => {
                        let pdh = Pdh::parse(pdh).map_err(|e| e.to_string())?;
                        Collection::open_pdh(catalog, store, pdh, opts, h.uid, h.gid).await.map_err(|e| e.to_string())
                    }
                }
            })
            .map(Arc::new)?;
        if h.request.read_only && !coll.is_read_only() {
            return Err("read-only mounts of a ref are not supported yet; mount its hash".into());
        }
        let control = Arc::new(Control::default());
        let fuse = CafsFuse::new(coll.clone(), control.clone(), self.rt.clone(), h.uid, h.gid);
        let opts = MountOptions { read_only: coll.is_read_only(), ..MountOptions::default() };
        let mounted = serve_fd(&dir, dev, fuse, &opts).map_err(|e| e.to_string())?;
        self.mounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(dir.clone(), Served { coll: coll.clone(), control: control.clone() });
        if !self.autocommit.is_zero() && !coll.is_read_only() {
            let (server, at) = (Arc::downgrade(self), dir.clone());
            let alive = move || server.upgrade().is_some_and(|s| s.serves(&at));
            self.rt.spawn(autocommit(coll.clone(), control.clone(), self.autocommit, alive));
        }
        // When the mount goes away (whoever unmounts it), commit a changed tree and forget the mount.
        let server = self.clone();
        let at = dir.clone();
        std::thread::spawn(move || {
            if let Err(e) = mounted.wait() {
                tracing::warn!(mount = %at.display(), error = %e, "FUSE session ended with an error");
            }
            server.ended(&at);
        });
        Ok(dir)
    }

    fn ended(&self, dir: &Path) {
        let Some(s) = self.mounts.lock().unwrap_or_else(|p| p.into_inner()).remove(dir) else { return };
        if s.coll.is_dirty() {
            match self.rt.block_on(s.control.commit(&s.coll, "cafsd", "unmount")) {
                Ok(c) => tracing::info!(mount = %dir.display(), pdh = %c.pdh, "committed on unmount"),
                Err(e) => tracing::error!(mount = %dir.display(), error = %e, "commit on unmount failed"),
            }
        }
        tracing::info!(mount = %dir.display(), "unmounted");
    }
}

/// Commits a changed tree once it has been left alone for `idle`; stops once `alive` says the mount is gone.
pub async fn autocommit(coll: Arc<Collection>, control: Arc<Control>, idle: Duration, alive: impl Fn() -> bool) {
    let mut seen = coll.fs().generation();
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1).min(idle)).await;
        if !alive() {
            return;
        }
        let now = coll.fs().generation();
        if now != seen {
            (seen, since) = (now, Instant::now());
        } else if coll.is_dirty() && since.elapsed() >= idle {
            let _ = control.commit(&coll, "cafsd", "auto-commit").await;
            since = Instant::now();
        }
    }
}
