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

use crate::mount::{FuseOptions, mount_fuse, unmount};
use crate::target::{Policy, check, open_dir};
use crate::wire::{self, Handoff, HelperRequest, MountRequest, Origin, Reply};

/// What the helper needs to act.
#[derive(Debug, Clone)]
pub struct Config {
    pub policy: Policy,
    /// Root may ask for `allow_other` mounts.
    pub allow_other: bool,
    /// cafsd's gRPC socket; mounts are handed to the fd socket beside it.
    pub cafsd: PathBuf,
}

/// The mounts the daemon holds a duplicate fd of, by mount point, with what was handed over.
#[derive(Debug, Default)]
pub struct Held {
    mounts: std::sync::Mutex<HashMap<PathBuf, (Handoff, OwnedFd)>>,
}

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, (Handoff, OwnedFd)>> {
        self.mounts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets mounts whose connection ended (unmounted by anyone, or aborted): the device reports an error
    /// once the kernel has torn the connection down.
    fn prune(&self) {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        self.lock().retain(|dir, (_, fd)| {
            let mut p = [PollFd::new(fd.as_fd(), PollFlags::empty())];
            let dead = matches!(poll(&mut p, PollTimeout::ZERO), Ok(n) if n > 0
                && p[0].revents().is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL)));
            if dead {
                tracing::info!(mount = %dir.display(), "mount gone; no longer held");
            }
            !dead
        });
    }
}

/// Mounts `req` for `peer` (a uid) and hands it to cafsd. On any failure after `mount(2)` the mount is
/// detached again, so a refused request leaves nothing behind. With `held`, the fd is kept for later
/// hand-overs.
pub fn mount_for(peer: u32, req: &MountRequest, cfg: &Config, held: Option<&Held>) -> Result<(), String> {
    let target = check(&req.mountpoint, peer, &cfg.policy).map_err(|e| e.to_string())?;
    let read_only = req.read_only || matches!(req.origin, Origin::Pdh(_));
    if req.allow_other && !(cfg.allow_other && peer == 0) {
        return Err(if cfg.allow_other {
            format!("only root may mount for every user (allow_other); uid {peer} asked")
        } else {
            "this helper does not make mounts for every user (allow_other): start it with --allow-other".into()
        });
    }
    let allow_other = req.allow_other;
    let request = MountRequest { mountpoint: target.path.clone(), origin: req.origin.clone(), read_only, allow_other };
    // The mount belongs to the directory's owner: the peer itself, or the job user when root asks.
    let fuse = FuseOptions { uid: target.uid, gid: target.gid, root_mode: target.mode, read_only, allow_other };
    let sock_path = wire::fd_socket_path(&cfg.cafsd);
    let stream =
        UnixStream::connect(&sock_path).map_err(|e| format!("cannot reach cafsd at {}: {e}", sock_path.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| e.to_string())?;
    let dev = mount_fuse(&target.proc_path(), &fuse).map_err(|e| e.to_string())?;
    let handoff = Handoff { request, uid: target.uid, gid: target.gid, resume: false, held: held.is_some() };
    let answer = wire::send(&stream, &handoff, Some(dev.as_fd())).and_then(|()| wire::recv::<Reply>(&stream));
    let fail = |message: String| {
        let _ = unmount(&target.path, true);
        Err(message)
    };
    match answer {
        Ok((Reply { ok: true, .. }, _)) => {}
        Ok((Reply { message, .. }, _)) => return fail(format!("cafsd refused the mount: {message}")),
        Err(e) => return fail(format!("handing the mount to cafsd: {e}")),
    }
    match held {
        Some(h) => {
            h.lock().insert(target.path.clone(), (handoff, dev));
        }
        None => drop(dev),
    }
    let start = Instant::now();
    loop {
        match nix::sys::statfs::statfs(&target.path) {
            Ok(s) if s.filesystem_type() == nix::sys::statfs::FUSE_SUPER_MAGIC => return Ok(()),
            _ if start.elapsed() > Duration::from_secs(30) => {
                return fail(format!("{} did not answer within 30 s", target.path.display()));
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The owner (`user_id=`) of the cafs mount whose id is `mnt_id` and whose mount point is `dir`, if there is one.
fn cafs_mount_owner(mnt_id: u64, dir: &Path) -> Option<u32> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fields: Vec<&str> = left.split(' ').collect();
        if fields.first()?.parse::<u64>().ok()? != mnt_id || *fields.get(4)? != dir.to_str()? {
            return None;
        }
        let mut r = right.split(' ');
        if r.next()? != "fuse.cafs" {
            return None;
        }
        r.nth(1)?.split(',').find_map(|o| o.strip_prefix("user_id=")?.parse().ok())
    })
}

/// Unmounts the cafs mount at `dir` for `peer`: only its owner or root may. Paths are opened without following
/// symlinks, and the unmount goes through an fd of the parent directory, so that swapping a path component for
/// a symlink between the check and the unmount cannot redirect it to another mount.
pub fn unmount_for(peer: u32, dir: &Path) -> Result<(), String> {
    if !dir.is_absolute() {
        return Err(format!("{}: the mount point must be an absolute path", dir.display()));
    }
    let dir: PathBuf = dir.components().collect();
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(format!("{}: not a cafs mount", dir.display()));
    };
    let parent_fd = open_dir(parent).map_err(|e| e.to_string())?;
    {
        let fd = open_dir(&dir).map_err(|e| e.to_string())?;
        // The mount id from fdinfo, not statx: a FUSE mount answers nobody but its owner (not even root), and
        // the kernel knows the id without asking it.
        let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let mnt_id: u64 = fdinfo
            .lines()
            .find_map(|l| l.strip_prefix("mnt_id:")?.trim().parse().ok())
            .ok_or_else(|| format!("{}: no mount id in fdinfo", dir.display()))?;
        let owner = cafs_mount_owner(mnt_id, &dir).ok_or_else(|| format!("{}: not a cafs mount", dir.display()))?;
        if peer != 0 && peer != owner {
            return Err(format!("{}: the mount belongs to uid {owner}, not to uid {peer}", dir.display()));
        }
        // (The fd on the mount itself would keep it busy: it is closed here.)
    }
    let via = PathBuf::from(format!("/proc/self/fd/{}", parent_fd.as_raw_fd())).join(name);
    nix::mount::umount2(&via, MntFlags::UMOUNT_NOFOLLOW)
        .map_err(|errno| format!("unmounting {}: {errno}", dir.display()))
}

/// Whether the peer (`uid`, `pid`) may relay requests for other users: root, or the very process that listens
/// on cafsd's fd socket (the kernel records the listener's credentials when it calls `listen`, and reports
/// them to whoever connects).
pub fn relay_allowed(uid: u32, pid: i32, cfg: &Config) -> Result<(), String> {
    if uid == 0 {
        return Ok(());
    }
    let sock = wire::fd_socket_path(&cfg.cafsd);
    let probe = UnixStream::connect(&sock).map_err(|e| format!("cannot reach cafsd at {}: {e}", sock.display()))?;
    let (server_uid, _, server_pid) = wire::peer(&probe).map_err(|e| e.to_string())?;
    if (server_uid, server_pid) != (uid, pid) {
        return Err(format!(
            "only cafsd (uid {server_uid}, pid {server_pid}, serving {}) may relay requests; uid {uid} pid {pid} \
             may not",
            sock.display()
        ));
    }
    Ok(())
}

/// Hands every held mount to cafsd again, marked as resumed. A mount cafsd refuses is detached (lazily): a
/// mount nobody serves would leave its users waiting forever. Returns how many were handed over.
pub fn reclaim(cfg: &Config, held: &Held) -> Result<usize, String> {
    held.prune();
    let sock_path = wire::fd_socket_path(&cfg.cafsd);
    let mounts: Vec<(PathBuf, Handoff, OwnedFd)> =
        held.lock().iter().filter_map(|(dir, (h, fd))| Some((dir.clone(), h.clone(), fd.try_clone().ok()?))).collect();
    let mut handed = 0;
    for (dir, mut h, fd) in mounts {
        h.resume = true;
        let answer = UnixStream::connect(&sock_path)
            .map_err(|e| format!("cannot reach cafsd at {}: {e}", sock_path.display()))
            .and_then(|stream| {
                stream.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| e.to_string())?;
                wire::send(&stream, &h, Some(fd.as_fd())).map_err(|e| e.to_string())?;
                wire::recv::<Reply>(&stream).map_err(|e| e.to_string())
            });
        match answer {
            Ok((Reply { ok: true, .. }, _)) => {
                tracing::info!(mount = %dir.display(), "handed to cafsd again");
                handed += 1;
            }
            Ok((Reply { message, .. }, _)) | Err(message) => {
                tracing::error!(mount = %dir.display(), %message, "cafsd did not take the mount back; detaching it");
                held.lock().remove(&dir);
                let _ = unmount(&dir, true);
            }
        }
    }
    Ok(handed)
}

/// Serves requests on `listener` until the process ends: one thread per connection, one request each.
pub fn serve(listener: UnixListener, cfg: Arc<Config>) -> std::io::Result<()> {
    let held = Arc::new(Held::default());
    for conn in listener.incoming() {
        let stream = conn?;
        let (cfg, held) = (cfg.clone(), held.clone());
        std::thread::spawn(move || handle(&stream, &cfg, &held));
    }
    Ok(())
}

fn handle(stream: &UnixStream, cfg: &Config, held: &Held) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let result = wire::peer(stream).map_err(|e| e.to_string()).and_then(|(uid, _, pid)| {
        let (req, fd) = wire::recv::<HelperRequest>(stream).map_err(|e| e.to_string())?;
        if fd.is_some() {
            return Err("requests carry no file descriptors".to_string());
        }
        tracing::info!(uid, pid, request = ?req, "request");
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
                Err("a relayed request cannot relay another".into())
            }
        }
    });
    let reply = match result {
        Ok(message) => Reply { ok: true, message },
        Err(message) => {
            tracing::warn!(%message, "refused");
            Reply { ok: false, message }
        }
    };
    let _ = wire::send(stream, &reply, None);
}
