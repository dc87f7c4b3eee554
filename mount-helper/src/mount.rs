//! The two privileged steps: open `/dev/fuse` and `mount(2)` a FUSE filesystem on a directory with that fd, and
//! unmounting. The options are fixed here — `nosuid`, `nodev`, `default_permissions` (the kernel checks
//! permission bits), the owner's uid and gid — so that no caller can ask for more; `allow_other` is the one
//! choice, and the helper makes it from its configuration, not from the request.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("opening /dev/fuse: {0}")]
    Device(#[source] std::io::Error),
    #[error("mounting on {path}: {errno}")]
    Mount { path: PathBuf, errno: nix::errno::Errno },
    #[error("unmounting {path}: {errno}")]
    Unmount { path: PathBuf, errno: nix::errno::Errno },
}

/// How to mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FuseOptions {
    /// The mount's owner: only this user gets in, unless `allow_other`.
    pub uid: u32,
    pub gid: u32,
    /// Mode bits of the directory mounted on (its type bits are what the kernel checks).
    pub root_mode: u32,
    pub read_only: bool,
    pub allow_other: bool,
}

/// The data string `mount(2)` gets for a FUSE mount on `fd`.
pub fn mount_data(fd: i32, o: &FuseOptions) -> String {
    let mut data = format!(
        "fd={fd},rootmode={:o},user_id={},group_id={},default_permissions",
        o.root_mode & libc::S_IFMT,
        o.uid,
        o.gid
    );
    if o.allow_other {
        data.push_str(",allow_other");
    }
    data
}

/// Opens `/dev/fuse` and mounts a FUSE filesystem (type `fuse.cafs`) on `dir`, which may be a
/// `/proc/self/fd/N` path of a checked directory. Returns the device fd that serves the mount.
pub fn mount_fuse(dir: &Path, o: &FuseOptions) -> Result<OwnedFd, MountError> {
    let dev: OwnedFd = OpenOptions::new().read(true).write(true).open("/dev/fuse").map_err(MountError::Device)?.into();
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if o.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    let data = mount_data(dev.as_raw_fd(), o);
    nix::mount::mount(Some("cafs"), dir, Some("fuse.cafs"), flags, Some(data.as_str()))
        .map_err(|errno| MountError::Mount { path: dir.to_path_buf(), errno })?;
    Ok(dev)
}

/// Unmounts `dir`; `lazy` detaches it even while in use.
pub fn unmount(dir: &Path, lazy: bool) -> Result<(), MountError> {
    let flags = if lazy { MntFlags::MNT_DETACH } else { MntFlags::empty() };
    nix::mount::umount2(dir, flags).map_err(|errno| MountError::Unmount { path: dir.to_path_buf(), errno })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{Policy, check};

    #[test]
    fn options_are_the_fixed_set() {
        let o = FuseOptions { uid: 1000, gid: 100, root_mode: 0o40755, read_only: false, allow_other: false };
        assert_eq!(mount_data(5, &o), "fd=5,rootmode=40000,user_id=1000,group_id=100,default_permissions");
        let o = FuseOptions { allow_other: true, ..o };
        assert!(mount_data(5, &o).ends_with(",default_permissions,allow_other"));
    }

    #[test]
    fn mounts_on_a_checked_directory_with_those_options() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root (mount)");
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("jobs");
        let dir = root.join("out");
        std::fs::create_dir_all(&dir).unwrap();
        let t = check(&dir, 0, &Policy { allowed_roots: vec![root] }).unwrap();
        let o = FuseOptions { uid: 1000, gid: 1000, root_mode: t.mode, read_only: true, allow_other: false };
        let dev = mount_fuse(&t.proc_path(), &o).unwrap();
        struct Guard<'a>(&'a Path);
        impl Drop for Guard<'_> {
            fn drop(&mut self) {
                let _ = unmount(self.0, true);
            }
        }
        let guard = Guard(&dir);
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let line = mounts
            .lines()
            .find(|l| l.split(' ').nth(1) == dir.to_str())
            .unwrap_or_else(|| panic!("{} not in /proc/self/mounts", dir.display()));
        assert!(line.starts_with("cafs ") && line.contains(" fuse.cafs "), "{line}");
        for opt in ["ro", "nosuid", "nodev", "user_id=1000", "group_id=1000", "default_permissions"] {
            assert!(line.split([' ', ',']).any(|w| w == opt), "{opt} missing in {line}");
        }
        assert!(!line.contains("allow_other"), "{line}");
        // No server answers on `dev`; closing it aborts the connection, and the mount comes off.
        drop(dev);
        unmount(&dir, false).unwrap();
        std::mem::forget(guard);
        assert!(!std::fs::read_to_string("/proc/self/mounts").unwrap().contains(dir.to_str().unwrap()));
    }
}
