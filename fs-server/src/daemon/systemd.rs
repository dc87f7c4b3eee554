//! cafsd's side of the systemd service protocol: readiness (`READY=1`) and the **file descriptor store**.
//!
//! A FUSE connection lives as long as any fd of its `/dev/fuse` file is open. Under systemd with
//! `FileDescriptorStoreMax=` set, cafsd hands a duplicate of every mount's fd to systemd (`FDSTORE=1` with the fd
//! attached, named `FDNAME=cafs-<hash of the mount point>`), so the mount survives cafsd exiting — crashed,
//! restarted or upgraded — without the helper daemon holding it (a mount made by the one-shot `cafs-mount`, say).
//! The next cafsd gets the fds back from systemd at start (`LISTEN_FDS`, `LISTEN_FDNAMES`) and serves each again.
//!
//! The fd alone does not say what it is a mount of, so each stored fd has a record in `STATE/fdstore/NAME.json`:
//! the helper's hand-over (mount point, ref or hash, owner). A record is written (and synced) before its fd is
//! stored and removed after the fd is dropped from the store (`FDSTOREREMOVE=1`), so an fd never comes back
//! without its record; a record without an fd is stale and removed at start.
//!
//! The protocol is in systemd's `sd_notify(3)` and `sd_listen_fds(3)`; `$FDSTORE` (systemd 254+) says that the
//! store is on and how many fds it takes.

use std::collections::HashSet;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cafs_mount::wire::Handoff;
use nix::sys::socket::{self, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr};

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("$NOTIFY_SOCKET {0:?} is not a socket address")]
    BadAddress(String),
    #[error("sending to systemd: {0}")]
    Send(#[source] nix::Error),
    #[error("fd store record {path}: {source}")]
    Record {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Every name cafsd gives a stored fd starts so; fds under other names are not cafsd's to take.
const PREFIX: &str = "cafs-";

/// Where systemd listens for notifications (`$NOTIFY_SOCKET`): a path, or an abstract name after `@`.
fn notify_addr() -> Result<Option<UnixAddr>, SystemdError> {
    let Some(raw) = std::env::var_os("NOTIFY_SOCKET") else { return Ok(None) };
    let bytes = raw.as_bytes();
    let bad = || SystemdError::BadAddress(raw.to_string_lossy().into_owned());
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => UnixAddr::new_abstract(name).map_err(|_| bad())?,
        None if bytes.starts_with(b"/") => UnixAddr::new(bytes).map_err(|_| bad())?,
        None => return Err(bad()),
    };
    Ok(Some(addr))
}

/// Sends one notification (`KEY=value` lines) to `addr`, with `fd` attached when given.
fn send(addr: &UnixAddr, text: &str, fd: Option<BorrowedFd<'_>>) -> Result<(), SystemdError> {
    let sock = socket::socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
        .map_err(SystemdError::Send)?;
    let fds = fd.map(|f| [f.as_raw_fd()]);
    let cmsgs: Vec<ControlMessage<'_>> = fds.as_ref().map(|f| ControlMessage::ScmRights(f)).into_iter().collect();
    socket::sendmsg(sock.as_raw_fd(), &[IoSlice::new(text.as_bytes())], &cmsgs, MsgFlags::empty(), Some(addr))
        .map_err(SystemdError::Send)?;
    Ok(())
}

/// Tells systemd (`Type=notify`) that cafsd is ready, when it runs under systemd (or anything that sets
/// `$NOTIFY_SOCKET`).
pub fn notify_ready() -> Result<(), SystemdError> {
    match notify_addr()? {
        Some(addr) => send(&addr, "READY=1", None),
        None => Ok(()),
    }
}

/// The name a mount's fd is stored under: the same for a mount point every time, so a record is found again.
pub fn fd_name(mount_point: &Path) -> String {
    let hash = crate::Locator::of(mount_point.as_os_str().as_bytes()).to_string();
    format!("{PREFIX}{}", hash.split('+').next().unwrap_or(&hash))
}

/// A mount handed back by systemd at start: the hand-over it was made with (marked resumed) and its fd.
pub struct Restored {
    pub name: String,
    pub handoff: Handoff,
    pub fd: OwnedFd,
}

/// systemd's file descriptor store, when cafsd runs with one.
#[derive(Debug)]
pub struct FdStore {
    addr: UnixAddr,
    records: PathBuf,
    /// Names whose fd systemd holds now.
    stored: Mutex<HashSet<String>>,
}

impl FdStore {
    /// The store, when there is one: `$NOTIFY_SOCKET` is set, and a non-zero `$FDSTORE` (systemd 254 and later
    /// set it from `FileDescriptorStoreMax=`) or `force` (for older systemd) says the store is on. Records go
    /// under `records`.
    pub fn from_env(records: &Path, force: bool) -> Result<Option<Self>, SystemdError> {
        let on =
            force || std::env::var("FDSTORE").ok().and_then(|n| n.trim().parse::<u64>().ok()).is_some_and(|n| n > 0);
        let Some(addr) = notify_addr()? else { return Ok(None) };
        if !on {
            return Ok(None);
        }
        Self::at(addr, records).map(Some)
    }

    /// The store behind the notification socket `addr`, with records under `records`.
    pub fn at(addr: UnixAddr, records: &Path) -> Result<Self, SystemdError> {
        std::fs::create_dir_all(records)
            .map_err(|source| SystemdError::Record { path: records.to_path_buf(), source })?;
        Ok(Self { addr, records: records.to_path_buf(), stored: Mutex::new(HashSet::new()) })
    }

    fn stored(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.stored.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.records.join(format!("{name}.json"))
    }

    /// Whether systemd holds the fd of the mount on `mount_point`.
    pub fn holds(&self, mount_point: &Path) -> bool {
        self.stored().contains(&fd_name(mount_point))
    }

    /// Gives systemd a duplicate of `fd`, the mount made by `handoff`, unless it holds one already. Returns the
    /// name it is stored under.
    pub fn keep(&self, handoff: &Handoff, fd: BorrowedFd<'_>) -> Result<String, SystemdError> {
        let name = fd_name(&handoff.request.mountpoint);
        if self.stored().contains(&name) {
            return Ok(name);
        }
        let path = self.record_path(&name);
        let record = Handoff { resume: false, ..handoff.clone() };
        let body = serde_json::to_vec(&record)
            .map_err(|e| SystemdError::Record { path: path.clone(), source: std::io::Error::other(e) })?;
        write_synced(&path, &body).map_err(|source| SystemdError::Record { path: path.clone(), source })?;
        send(&self.addr, &format!("FDSTORE=1\nFDNAME={name}"), Some(fd))?;
        self.stored().insert(name.clone());
        Ok(name)
    }

    /// Has systemd drop the fd stored under `name` (the mount is gone), then removes its record.
    pub fn forget(&self, name: &str) {
        if !self.stored().remove(name) {
            return;
        }
        if let Err(e) = send(&self.addr, &format!("FDSTOREREMOVE=1\nFDNAME={name}"), None) {
            tracing::warn!(name, error = %e, "could not drop a stored fd");
        }
        let _ = std::fs::remove_file(self.record_path(name));
    }

    /// Takes the fds systemd passed at start (`LISTEN_FDS` for this process): every fd stored under a cafs name
    /// with a record comes back as a mount to resume. A cafs fd without a record is dropped from the store and
    /// closed; a record without an fd is removed. Fds under other names are left alone. Call it once, early:
    /// the fds are taken over by number.
    pub fn restore(&self) -> Vec<Restored> {
        let mut restored = Vec::new();
        for (name, fd) in cafs_mount::activation::listened_fds() {
            if !name.starts_with(PREFIX) {
                // Not ours: leave the number open, as it was given.
                std::mem::forget(fd);
                continue;
            }
            let path = self.record_path(&name);
            let record = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Handoff>(&b).map_err(|e| e.to_string()));
            self.stored().insert(name.clone());
            match record {
                Ok(h) if fd_name(&h.request.mountpoint) == name => {
                    restored.push(Restored { name, handoff: Handoff { resume: true, ..h }, fd })
                }
                Ok(_) | Err(_) => {
                    tracing::warn!(%name, record = %path.display(), "a stored fd without a usable record: dropped");
                    self.forget(&name);
                }
            }
        }
        // Records whose fd did not come back (systemd dropped it, or the store was off): stale.
        if let Ok(dir) = std::fs::read_dir(&self.records) {
            let live: HashSet<String> = self.stored().clone();
            for e in dir.flatten() {
                let file = e.file_name().to_string_lossy().into_owned();
                let name = file.strip_suffix(".json").unwrap_or(&file);
                if !live.contains(name) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        restored
    }
}

/// Writes `body` to `path` durably: a temporary file, fsynced, renamed over, and the directory fsynced.
fn write_synced(path: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
