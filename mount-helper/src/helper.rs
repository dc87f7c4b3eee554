//! The helper's two operations on behalf of a peer (the uid that ran the one-shot command, or that connected to
//! the daemon): mount — check the mount point, `mount(2)`, hand the fd to cafsd, wait for its answer — and
//! unmount, of a cafs mount that belongs to the peer (root: any cafs mount). Nothing else is ever unmounted.
//! And the daemon loop that serves them on a socket.
//!
//! The daemon keeps a duplicate of every mount's `/dev/fuse` fd ([`Held`]). A FUSE connection lives while any
//! fd of it is open, so when cafsd stops (an upgrade, a crash, `kill -9`) the kernel keeps the mount and queues
//! its requests; the next cafsd asks for the mounts back ([`HelperRequest::Reclaim`]) and serves them on.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::mount::MntFlags;

use crate::limits::{Admission, Limits, Ticket};
use crate::mount::{FuseOptions, MountError, detach, mount_fuse};
use crate::mountinfo::{self, MountEntry};
use crate::target::{Policy, TargetError, check, open_child, open_dir};
use crate::wire::{self, Handoff, HelperRequest, MountRequest, Origin, Reply, WireError};
use crate::{shown, shown_up_to};

/// Why the helper refused or could not do a request. Its text is what the client reads in the reply (cut to a
/// short prefix there), so every variant names what it is about.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// The mount point failed its checks.
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The request is well-formed, but not one this peer may have done.
    #[error("{0}")]
    Refused(String),
    #[error("{}: not a cafs mount", shown(.0))]
    NotCafs(PathBuf),
    #[error("{}: a cafs mount without an owner", shown(.0))]
    NoOwner(PathBuf),
    #[error("{}: the mount belongs to uid {owner}, not to uid {peer}", shown(.path))]
    NotOwner { path: PathBuf, owner: u32, peer: u32 },
    #[error("{}: moved while being mounted", shown(.0))]
    Moved(PathBuf),
    /// A held mount that is gone, or whose mount point now holds another mount.
    #[error("{0}")]
    Gone(String),
    #[error("cannot reach cafsd at {}: {source}", .path.display())]
    Unreachable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cafsd refused the mount: {0}")]
    CafsdRefused(String),
    #[error("handing the mount to cafsd: {0}")]
    Handover(#[source] WireError),
    #[error("reading the mount table: {0}")]
    MountTable(#[source] std::io::Error),
    #[error("{}: {source}", shown(.path))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unmounting {}: {errno}", shown(.path))]
    Unmount { path: PathBuf, errno: nix::errno::Errno },
}

/// A connection to cafsd's fd socket, with a bound on how long cafsd may take to answer.
fn connect_cafsd(cfg: &Config) -> Result<UnixStream, HelperError> {
    let path = wire::fd_socket_path(&cfg.cafsd);
    let stream =
        UnixStream::connect(&path).map_err(|source| HelperError::Unreachable { path: path.clone(), source })?;
    stream.set_read_timeout(Some(Duration::from_secs(120))).map_err(|source| HelperError::Io { path, source })?;
    Ok(stream)
}

/// The filesystem type of every mount the helper makes; nothing of another type is ever unmounted.
const FSTYPE: &str = "fuse.cafs";
/// The longest reply the daemon sends (cafsd's refusals quote what the client sent).
const REPLY_BYTES: usize = 512;

/// What the helper needs to act.
#[derive(Debug, Clone)]
pub struct Config {
    pub policy: Policy,
    /// Root may ask for `allow_other` mounts.
    pub allow_other: bool,
    /// cafsd's gRPC socket; mounts are handed to the fd socket beside it.
    pub cafsd: PathBuf,
}

/// A mount the daemon holds the device fd of, with what was handed over and what identifies the mount.
#[derive(Debug)]
struct HeldMount {
    handoff: Handoff,
    dev: OwnedFd,
    /// The mount's id and its superblock's device: together they tell this mount from any other, also after
    /// its mount point has been renamed.
    id: u64,
    sb: (u32, u32),
}

/// The mounts the daemon holds a duplicate fd of, by mount id (a path can be mounted on again once the first
/// mount has been moved away with its parent), with what was handed over.
#[derive(Debug, Default)]
pub struct Held {
    mounts: std::sync::Mutex<HashMap<u64, HeldMount>>,
}

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, HeldMount>> {
        self.mounts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many mounts are held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets mounts whose connection ended (unmounted by anyone, or aborted): the device reports an error
    /// once the kernel has torn the connection down. Runs before every request.
    pub fn prune(&self) {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        self.lock().retain(|_, m| {
            let mut p = [PollFd::new(m.dev.as_fd(), PollFlags::empty())];
            let dead = matches!(poll(&mut p, PollTimeout::ZERO), Ok(n) if n > 0
                && p[0].revents().is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL)));
            if dead {
                tracing::info!(mount = %shown(&m.handoff.request.mountpoint), "mount gone; no longer held");
            }
            !dead
        });
    }
}

/// Mounts `req` for `peer` (a uid) and hands it to cafsd. The mount is made onto the checked directory's fd,
/// and on any failure after that it is detached through the fd of its own root, so a refused request leaves
/// nothing behind and no path is resolved again. With `held`, the device fd is kept for later hand-overs.
pub fn mount_for(peer: u32, req: &MountRequest, cfg: &Config, held: Option<&Held>) -> Result<(), HelperError> {
    let target = check(&req.mountpoint, peer, &cfg.policy)?;
    let read_only = req.read_only || matches!(req.origin, Origin::Pdh(_));
    if req.allow_other && !(cfg.allow_other && peer == 0) {
        return Err(HelperError::Refused(if cfg.allow_other {
            format!("only root may mount for every user (allow_other); uid {peer} asked")
        } else {
            "this helper does not make mounts for every user (allow_other): start it with --allow-other".into()
        }));
    }
    let allow_other = req.allow_other;
    let request = MountRequest { mountpoint: target.path.clone(), origin: req.origin.clone(), read_only, allow_other };
    // The mount belongs to the directory's owner: the peer itself, or the job user when root asks.
    let fuse = FuseOptions { uid: target.uid, gid: target.gid, root_mode: target.mode, read_only, allow_other };
    let stream = connect_cafsd(cfg)?;
    let mount = mount_fuse(target.fd.as_fd(), &fuse)?;
    let fail = |e: HelperError| {
        if let Err(e) = detach(mount.root.as_fd()) {
            tracing::error!(error = %e, "detaching a mount that failed");
        }
        Err(e)
    };
    // The directory was checked at its path; renamed in between, the mount would be where nobody expects it.
    let entry = match mountinfo::find(mount.id) {
        Ok(Some(e)) if e.mount_point == target.path => e,
        Ok(_) => return fail(HelperError::Moved(target.path.clone())),
        Err(e) => return fail(HelperError::MountTable(e)),
    };
    let handoff = Handoff { request, uid: target.uid, gid: target.gid, resume: false, held: held.is_some() };
    let answer = wire::send(&stream, &handoff, Some(mount.dev.as_fd())).and_then(|()| wire::recv::<Reply>(&stream));
    match answer {
        Ok((Reply { ok: true, .. }, _)) => {}
        Ok((Reply { message, .. }, _)) => return fail(HelperError::CafsdRefused(message)),
        Err(e) => return fail(HelperError::Handover(e)),
    }
    // cafsd serves it from here on. The root fd is closed (it would keep the mount busy for a plain unmount).
    let crate::mount::FuseMount { dev, root, id } = mount;
    drop(root);
    if let Some(h) = held {
        h.lock().insert(id, HeldMount { handoff, dev, id, sb: entry.dev });
    }
    Ok(())
}

/// The cafs mount with id `id`, if it exists.
fn cafs_mount(id: u64) -> Result<Option<MountEntry>, HelperError> {
    Ok(mountinfo::find(id).map_err(HelperError::MountTable)?.filter(|m| m.fstype == FSTYPE))
}

/// Unmounts the cafs mount at `dir` for `peer`: only its owner or root may. The parent is opened without
/// following symlinks, and the mount point is opened and unmounted relative to that fd, so that swapping a
/// path component between the check and the unmount cannot redirect it to another mount. The mount is
/// identified by its id, and must be a cafs mount whose mount point is `dir` itself.
pub fn unmount_for(peer: u32, dir: &Path) -> Result<(), HelperError> {
    if !dir.is_absolute() {
        return Err(TargetError::NotAbsolute(dir.to_path_buf()).into());
    }
    let dir: PathBuf = dir.components().collect();
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(HelperError::NotCafs(dir));
    };
    let parent_fd = open_dir(parent)?;
    {
        let root = open_child(&parent_fd, name, &dir)?;
        let id = mountinfo::mount_id_of(&root).map_err(|source| HelperError::Io { path: dir.clone(), source })?;
        let Some(entry) = cafs_mount(id)?.filter(|m| m.mount_point == dir) else {
            return Err(HelperError::NotCafs(dir));
        };
        let Some(owner) = entry.fuse_owner() else { return Err(HelperError::NoOwner(dir)) };
        if peer != 0 && peer != owner {
            return Err(HelperError::NotOwner { path: dir, owner, peer });
        }
        // (The fd on the mount itself would keep it busy: it is closed here.)
    }
    let via = PathBuf::from(format!("/proc/self/fd/{}", parent_fd.as_raw_fd())).join(name);
    nix::mount::umount2(&via, MntFlags::UMOUNT_NOFOLLOW).map_err(|errno| HelperError::Unmount { path: dir, errno })
}

/// Detaches a held mount that cafsd would not take back, found by its id wherever it is mounted now, and
/// only if it is still the mount that was made (same id, same superblock, a cafs mount).
fn detach_held(m: &HeldMount) -> Result<(), HelperError> {
    let Some(entry) = cafs_mount(m.id)?.filter(|e| e.dev == m.sb) else {
        return Err(HelperError::Gone("it is no longer mounted".into()));
    };
    let root = open_dir(&entry.mount_point)?;
    let id =
        mountinfo::mount_id_of(&root).map_err(|source| HelperError::Io { path: entry.mount_point.clone(), source })?;
    if id != m.id {
        return Err(HelperError::Gone(format!("{} is now another mount", shown(&entry.mount_point))));
    }
    Ok(detach(root.as_fd())?)
}

/// Whether the peer (`uid`, `pid`) may relay requests for other users: root, or the very process that listens
/// on cafsd's fd socket (the kernel records the listener's credentials when it calls `listen`, and reports
/// them to whoever connects).
pub fn relay_allowed(uid: u32, pid: i32, cfg: &Config) -> Result<(), HelperError> {
    if uid == 0 {
        return Ok(());
    }
    let sock = wire::fd_socket_path(&cfg.cafsd);
    let probe = UnixStream::connect(&sock).map_err(|source| HelperError::Unreachable { path: sock.clone(), source })?;
    let (server_uid, _, server_pid) = wire::peer(&probe)?;
    if (server_uid, server_pid) != (uid, pid) {
        return Err(HelperError::Refused(format!(
            "only cafsd (uid {server_uid}, pid {server_pid}, serving {}) may relay requests; uid {uid} pid {pid} \
             may not",
            sock.display()
        )));
    }
    Ok(())
}

/// Hands every held mount to cafsd again, marked as resumed. A mount cafsd refuses is detached (lazily): a
/// mount nobody serves would leave its users waiting forever. Returns how many were handed over.
pub fn reclaim(cfg: &Config, held: &Held) -> Result<usize, HelperError> {
    held.prune();
    let mounts: Vec<(u64, Handoff, OwnedFd)> =
        held.lock().iter().filter_map(|(id, m)| Some((*id, m.handoff.clone(), m.dev.try_clone().ok()?))).collect();
    let mut handed = 0;
    for (id, mut h, fd) in mounts {
        let dir = h.request.mountpoint.clone();
        h.resume = true;
        let answer = connect_cafsd(cfg).and_then(|stream| {
            wire::send(&stream, &h, Some(fd.as_fd()))?;
            Ok(wire::recv::<Reply>(&stream)?)
        });
        match answer {
            Ok((Reply { ok: true, .. }, _)) => {
                tracing::info!(mount = %shown(&dir), "handed to cafsd again");
                handed += 1;
            }
            refused => {
                let message = match refused {
                    Ok((Reply { message, .. }, _)) => message,
                    Err(e) => e.to_string(),
                };
                let message = shown_up_to(&message, REPLY_BYTES);
                tracing::error!(mount = %shown(&dir), %message, "cafsd did not take the mount back; detaching it");
                if let Some(m) = held.lock().remove(&id)
                    && let Err(e) = detach_held(&m)
                {
                    tracing::warn!(mount = %shown(&dir), error = %e, "not detached");
                }
            }
        }
    }
    Ok(handed)
}

/// Serves requests on `listener` until the process ends: one thread per admitted connection, one request
/// each. Nothing a client does ends the loop: an `accept` error (out of fds, say) is logged and waited out
/// with a growing pause, and a connection over the caps gets its refusal at once and is closed.
pub fn serve(listener: UnixListener, cfg: Arc<Config>, limits: Limits) {
    let held = Arc::new(Held::default());
    let admission = Admission::new(limits);
    let mut pause = Duration::ZERO;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                pause = Duration::ZERO;
                admit(stream, &admission, &cfg, &held);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                pause = (pause * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                tracing::warn!(error = %e, pause = ?pause, "accepting a connection failed; waiting");
                std::thread::sleep(pause);
            }
        }
    }
}

/// Admits a connection against the caps and starts its thread, or refuses it without blocking.
fn admit(stream: UnixStream, admission: &Arc<Admission>, cfg: &Arc<Config>, held: &Arc<Held>) {
    let deadline = Instant::now() + admission.limits().request_time;
    let (uid, pid) = match wire::peer(&stream) {
        Ok((uid, _, pid)) => (uid, pid),
        Err(e) => return tracing::warn!(error = %e, "a connection without peer credentials; closed"),
    };
    let ticket = match admission.admit(uid) {
        Ok(t) => t,
        Err(refused) => {
            tracing::warn!(uid, pid, %refused, "connection refused");
            // Never block the accepting thread on a client: the refusal fits an empty socket buffer.
            let _ = stream.set_nonblocking(true);
            let _ = wire::send(&stream, &Reply { ok: false, message: refused.to_string() }, None);
            return;
        }
    };
    let (cfg, held) = (cfg.clone(), held.clone());
    let spawned = std::thread::Builder::new()
        .name(format!("client-{uid}"))
        .spawn(move || handle(&stream, uid, pid, deadline, &cfg, &held, ticket));
    if let Err(e) = spawned {
        tracing::warn!(uid, pid, error = %e, "no thread for a connection; closed");
    }
}

/// What a request asks, for the log: its kind and a short prefix of what it names.
fn summary(req: &HelperRequest) -> String {
    shown(format!("{req:?}"))
}

fn handle(stream: &UnixStream, uid: u32, pid: i32, deadline: Instant, cfg: &Config, held: &Held, _ticket: Ticket) {
    let result =
        wire::recv_within::<HelperRequest>(stream, deadline).map_err(HelperError::from).and_then(|(req, fd)| {
            if fd.is_some() {
                return Err(HelperError::Refused("requests carry no file descriptors".into()));
            }
            tracing::info!(uid, pid, request = %summary(&req), "request");
            held.prune();
            let (uid, req) = match req {
                HelperRequest::Relay { uid: client, request } => {
                    relay_allowed(uid, pid, cfg)?;
                    (client, *request)
                }
                HelperRequest::Reclaim => {
                    relay_allowed(uid, pid, cfg)?;
                    return reclaim(cfg, held).map(|n| format!("{n} mounts handed over"));
                }
                req => (uid, req),
            };
            match req {
                HelperRequest::Mount(m) => mount_for(uid, &m, cfg, Some(held)).map(|()| String::new()),
                HelperRequest::Unmount { mountpoint } => unmount_for(uid, &mountpoint).map(|()| {
                    held.prune();
                    String::new()
                }),
                HelperRequest::Relay { .. } | HelperRequest::Reclaim => {
                    Err(HelperError::Refused("a relayed request cannot relay another".into()))
                }
            }
        });
    let reply = match result {
        Ok(message) => Reply { ok: true, message },
        Err(e) => {
            let message = shown_up_to(e.to_string(), REPLY_BYTES);
            tracing::warn!(%message, "refused");
            Reply { ok: false, message }
        }
    };
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let _ = wire::send(stream, &reply, None);
}
