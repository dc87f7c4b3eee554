//! Mount-point validation. A request names a path; the helper runs as root, so a path that is resolved twice
//! (once to check, once to mount) could be swapped in between for a symlink to `/etc`. Instead the path is opened
//! once, as an `O_PATH` directory fd with `openat2(RESOLVE_NO_SYMLINKS)`, every check that concerns the
//! directory is made on that fd, the fd's path is read back from the kernel and checked again, and the mount is
//! moved onto the fd itself (`move_mount` with `MOVE_MOUNT_T_EMPTY_PATH`).
//!
//! Refused: a relative path or one with `.`/`..` components; a system path (`/`, `/etc`, `/usr`, `/proc`,
//! `/sys`, `/dev`, ... or below them); a path outside the configured allowed roots (or an allowed root itself);
//! a symlink anywhere in the path; a missing or non-directory target; a directory the peer does not own (root
//! may mount on any directory the rest allows); a directory that is already a mount point.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};

use crate::shown;

/// Directories that are never mounted on, nor anything below them, whatever the configuration says.
pub const SYSTEM_PATHS: &[&str] = &[
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/run/systemd",
    "/sbin",
    "/sys",
    "/usr",
    "/var/lib",
    "/var/log",
    "/var/spool",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("{}: the mount point must be an absolute path", shown(.0))]
    NotAbsolute(PathBuf),
    #[error("{}: the mount point must not contain '.' or '..' components", shown(.0))]
    DotComponent(PathBuf),
    #[error("{}: refusing to mount on a system path", shown(.0))]
    SystemPath(PathBuf),
    #[error("{}: not below an allowed root ({})", shown(.path), .roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", "))]
    NotAllowed { path: PathBuf, roots: Vec<PathBuf> },
    #[error("{}: a component of the path is a symlink (symlinks are not followed)", shown(.0))]
    Symlink(PathBuf),
    #[error("{}: no such directory", shown(.0))]
    Missing(PathBuf),
    #[error("{}: not a directory", shown(.0))]
    NotADirectory(PathBuf),
    #[error("{}: owned by uid {owner}, not by the requesting uid {uid}", shown(.path))]
    NotOwner { path: PathBuf, owner: u32, uid: u32 },
    #[error("{}: already a mount point", shown(.0))]
    AlreadyMounted(PathBuf),
    #[error("{}: moved while being checked", shown(.0))]
    Moved(PathBuf),
    #[error("{}: {errno}", shown(.path))]
    Os { path: PathBuf, errno: Errno },
}

/// What the helper's configuration allows.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Mount points must lie strictly below one of these.
    pub allowed_roots: Vec<PathBuf>,
}

/// A checked mount point: an `O_PATH` fd of the directory, which the new mount is moved onto.
#[derive(Debug)]
pub struct Target {
    pub path: PathBuf,
    pub fd: OwnedFd,
    /// Mode bits of the directory, for the mount's `rootmode=`.
    pub mode: u32,
    /// The directory's owner and group.
    pub uid: u32,
    pub gid: u32,
}

fn below(path: &Path, root: &Path) -> bool {
    path != root && path.starts_with(root)
}

/// Checks that `uid` may mount at `path` under `policy`, and opens the directory.
pub fn check(path: &Path, uid: u32, policy: &Policy) -> Result<Target, TargetError> {
    let p = path.to_path_buf();
    if !path.is_absolute() {
        return Err(TargetError::NotAbsolute(p));
    }
    // On the bytes: `Path::components` silently drops interior `.` components.
    if path.as_os_str().as_bytes().split(|&b| b == b'/').any(|c| c == b"." || c == b"..") {
        return Err(TargetError::DotComponent(p));
    }
    // `Path` equality ignores repeated and trailing slashes; compare on the components from here on.
    let normal: PathBuf = path.components().collect();
    if normal == Path::new("/") || SYSTEM_PATHS.iter().any(|s| normal.starts_with(s)) {
        return Err(TargetError::SystemPath(p));
    }
    if !policy.allowed_roots.iter().any(|r| below(&normal, r)) {
        return Err(TargetError::NotAllowed { path: p, roots: policy.allowed_roots.clone() });
    }
    let fd = open_dir(&normal)?;
    let st = statx(&fd).map_err(|errno| TargetError::Os { path: p.clone(), errno })?;
    if u32::from(st.stx_mode) & libc::S_IFMT != libc::S_IFDIR {
        return Err(TargetError::NotADirectory(p));
    }
    if uid != 0 && st.stx_uid != uid {
        return Err(TargetError::NotOwner { path: p, owner: st.stx_uid, uid });
    }
    if st.stx_attributes_mask & libc::STATX_ATTR_MOUNT_ROOT as u64 != 0
        && st.stx_attributes & libc::STATX_ATTR_MOUNT_ROOT as u64 != 0
    {
        return Err(TargetError::AlreadyMounted(p));
    }
    // The directory may have been renamed since it was opened: what is mounted on must still be at the path
    // that was checked.
    let now = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|e| TargetError::Os { path: p.clone(), errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)) })?;
    if now != normal {
        return Err(TargetError::Moved(p));
    }
    Ok(Target { path: normal, fd, mode: u32::from(st.stx_mode), uid: st.stx_uid, gid: st.stx_gid })
}

/// Opens the directory at the absolute path `path` as an `O_PATH` fd, refusing symlinks in any component.
pub(crate) fn open_dir(path: &Path) -> Result<OwnedFd, TargetError> {
    open_at(nix::fcntl::AT_FDCWD, path, path, ResolveFlag::empty())
}

/// Opens the entry `name` (one component) of the directory `dir` as an `O_PATH` fd, refusing symlinks and
/// anything that leaves `dir`; `shown_as` names it in errors. When `name` is a mount point, the fd is on the
/// mount's root.
pub(crate) fn open_child(dir: &OwnedFd, name: &std::ffi::OsStr, shown_as: &Path) -> Result<OwnedFd, TargetError> {
    open_at(std::os::fd::AsFd::as_fd(dir), Path::new(name), shown_as, ResolveFlag::RESOLVE_BENEATH)
}

fn open_at<Fd: std::os::fd::AsFd>(
    dir: Fd,
    path: &Path,
    shown_as: &Path,
    extra: ResolveFlag,
) -> Result<OwnedFd, TargetError> {
    let p = shown_as.to_path_buf();
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS | extra);
    openat2(dir, path, how).map_err(|errno| match errno {
        Errno::ELOOP => TargetError::Symlink(p),
        Errno::ENOENT => TargetError::Missing(p),
        Errno::ENOTDIR => TargetError::NotADirectory(p),
        errno => TargetError::Os { path: p, errno },
    })
}

/// `statx` of an fd: type, mode, owner and group.
fn statx(fd: &OwnedFd) -> Result<libc::statx, Errno> {
    let mut st = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `fd` is an open fd, the empty path with AT_EMPTY_PATH names it, and `st` is a writable statx
    // buffer of the right type that the call fills.
    let rc = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_TYPE | libc::STATX_MODE | libc::STATX_UID | libc::STATX_GID,
            st.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(Errno::last());
    }
    // SAFETY: statx returned 0, so it filled the buffer (which was zeroed before anyway).
    Ok(unsafe { st.assume_init() })
}

#[cfg(test)]
mod tests;
