//! Mounting: a FUSE session on an fd of `/dev/fuse`. In the development mode cafsd opens the device and calls
//! `mount(2)` itself (through the helper's library, as root); the privileged helper `cafs-mount` does exactly
//! these two steps and hands the fd over, and [`serve_fd`] serves either.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use fuser::{BackgroundSession, Config, Session, SessionACL};

use crate::fuse::CafsFuse;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: not a directory")]
    NotADirectory(PathBuf),
    #[error("{0}: already a mount point")]
    AlreadyMounted(PathBuf),
}

#[derive(Debug, Clone)]
pub struct MountOptions {
    pub read_only: bool,
    /// Let users other than the mount's owner in (permission bits still apply).
    pub allow_other: bool,
    /// Threads serving kernel requests.
    pub threads: usize,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self { read_only: false, allow_other: false, threads: 4 }
    }
}

/// A mounted collection. Unmount it with [`Mounted::unmount`], or wait for someone else to with
/// [`Mounted::wait`].
pub struct Mounted {
    target: PathBuf,
    session: BackgroundSession,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MountError + '_ {
    move |source| MountError::Io { path: path.to_path_buf(), source }
}

/// Whether `dir` is a mount point (/proc/self/mountinfo lists it).
pub fn is_mount_point(dir: &Path) -> bool {
    dir.canonicalize().is_ok_and(|canon| cafs_mount::mountinfo::is_mount_point(&canon))
}

/// Mounts `fs` on `dir` (as root). The mount belongs to `dir`'s owner.
pub fn mount_as_root(dir: &Path, fs: CafsFuse, opts: &MountOptions) -> Result<Mounted, MountError> {
    let meta = std::fs::metadata(dir).map_err(io(dir))?;
    if !meta.is_dir() {
        return Err(MountError::NotADirectory(dir.to_path_buf()));
    }
    if is_mount_point(dir) {
        return Err(MountError::AlreadyMounted(dir.to_path_buf()));
    }
    let o = cafs_mount::mount::FuseOptions {
        uid: meta.uid(),
        gid: meta.gid(),
        root_mode: meta.mode(),
        read_only: opts.read_only,
        allow_other: opts.allow_other,
    };
    let target = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(dir)
        .map_err(io(dir))?;
    let mount = cafs_mount::mount::mount_fuse(target.as_fd(), &o).map_err(|e| io(dir)(std::io::Error::other(e)))?;
    // (The root fd would keep the mount busy.)
    drop(mount.root);
    serve_fd(dir, mount.dev, fs, opts)
}

/// Serves `fs` on `dev`, the `/dev/fuse` fd of a mount already made on `dir` (by [`mount_as_root`] or by the
/// helper, which hands the fd over). On failure the mount is detached.
pub fn serve_fd(dir: &Path, dev: OwnedFd, fs: CafsFuse, opts: &MountOptions) -> Result<Mounted, MountError> {
    let mut config = Config::default();
    config.n_threads = Some(opts.threads.max(1));
    // Access is decided by the kernel (user_id, allow_other, default_permissions): fuser lets every request in.
    let session = Session::from_fd(fs, dev, SessionACL::All, config).and_then(Session::spawn).map_err(|e| {
        let _ = umount(dir, true);
        io(dir)(e)
    })?;
    Ok(Mounted { target: dir.to_path_buf(), session })
}

/// Serves `fs` on `dev`, the fd of a mount on `dir` that an earlier cafsd served (the helper kept a duplicate,
/// so the kernel kept the connection): no INIT handshake — the kernel made it with the earlier cafsd — and then
/// `FUSE_NOTIFY_RESEND`, so that the requests the earlier cafsd had read but not answered come again. On
/// failure the mount is left alone: the helper decides what becomes of it.
pub fn resume_fd(dir: &Path, dev: OwnedFd, fs: CafsFuse, opts: &MountOptions) -> Result<Mounted, MountError> {
    let mut config = Config::default();
    config.n_threads = Some(opts.threads.max(1));
    let notify = dev.try_clone().map_err(io(dir))?;
    let session = Session::resume(fs, dev, SessionACL::All, config).spawn().map_err(io(dir))?;
    if let Err(e) = notify_resend(&notify) {
        // Kernels before 6.9 do not know it: requests in flight at the restart then wait until interrupted.
        tracing::warn!(mount = %dir.display(), error = %e, "FUSE_NOTIFY_RESEND failed");
    }
    Ok(Mounted { target: dir.to_path_buf(), session })
}

/// Asks the kernel to queue again every request of this connection that was read but not answered
/// (`FUSE_NOTIFY_RESEND`, Linux 6.9): a notification is a bare `fuse_out_header` with unique 0 and the code in
/// its error field.
fn notify_resend(dev: &OwnedFd) -> std::io::Result<()> {
    const FUSE_NOTIFY_RESEND: i32 = 7;
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&16u32.to_ne_bytes());
    header[4..8].copy_from_slice(&FUSE_NOTIFY_RESEND.to_ne_bytes());
    let n = nix::unistd::write(dev, &header)?;
    if n != header.len() {
        return Err(std::io::Error::other(format!("short write of a notification: {n} bytes")));
    }
    Ok(())
}

/// Unmounts `dir`; `lazy` detaches it even while in use.
pub fn umount(dir: &Path, lazy: bool) -> std::io::Result<()> {
    cafs_mount::mount::unmount(dir, lazy).map_err(|e| match e {
        cafs_mount::mount::MountError::Unmount { errno, .. } => errno.into(),
        other => std::io::Error::other(other),
    })
}

impl Mounted {
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Unmounts and waits until every request has been answered.
    pub fn unmount(self) -> Result<(), MountError> {
        umount(&self.target, false).map_err(io(&self.target))?;
        self.wait()
    }

    /// Waits until the mount goes away (someone ran `umount`).
    pub fn wait(self) -> Result<(), MountError> {
        let target = self.target;
        self.session.join().map_err(io(&target))
    }
}
