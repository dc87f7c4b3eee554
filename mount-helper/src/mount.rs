//! The two privileged steps: open `/dev/fuse` and mount a FUSE filesystem on a directory with that fd, and
//! taking a mount off again. The options are fixed here — `nosuid`, `nodev`, `default_permissions` (the kernel
//! checks permission bits), the owner's uid and gid — so that no caller can ask for more; `allow_other` is the
//! one choice, and the helper makes it from its configuration, not from the request.
//!
//! Mounting uses the kernel's fd-based mount API (`fsopen`, `fsmount`, `move_mount`): the filesystem is made
//! detached, then attached onto the `O_PATH` fd of the directory that was checked, never onto a path. The fd of
//! the new mount's root ([`FuseMount::root`]) names exactly that mount, so a mount that must come off again is
//! detached through it ([`detach`]), whatever has become of the path since. [`unmount`] is for callers that
//! own their path (cafsd's root development mode); the helper never unmounts by a path a client controls.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::MntFlags;
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("opening /dev/fuse: {0}")]
    Device(#[source] std::io::Error),
    #[error("mounting: {step}: {errno}")]
    Mount { step: &'static str, errno: rustix::io::Errno },
    #[error("unmounting {path}: {errno}")]
    Unmount { path: PathBuf, errno: nix::errno::Errno },
    #[error("the new mount has no mount id: {0}")]
    NoMountId(#[source] std::io::Error),
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

/// The filesystem parameters a FUSE mount on device fd `fd` gets, as `(key, value)`; a flag has no value.
pub fn mount_params(fd: i32, o: &FuseOptions) -> Vec<(&'static str, Option<String>)> {
    let mut params = vec![
        ("source", Some("cafs".to_string())),
        ("subtype", Some("cafs".to_string())),
        ("fd", Some(fd.to_string())),
        ("rootmode", Some(format!("{:o}", o.root_mode & libc::S_IFMT))),
        ("user_id", Some(o.uid.to_string())),
        ("group_id", Some(o.gid.to_string())),
        ("default_permissions", None),
    ];
    if o.allow_other {
        params.push(("allow_other", None));
    }
    if o.read_only {
        params.push(("ro", None));
    }
    params
}

/// A FUSE mount just made.
#[derive(Debug)]
pub struct FuseMount {
    /// The device fd that serves the mount.
    pub dev: OwnedFd,
    /// An fd on the mount's root: it names this mount and no other. While it is open the mount is busy, so
    /// close it once the mount is handed over.
    pub root: OwnedFd,
    /// The mount's id, as `/proc/self/mountinfo` lists it.
    pub id: u64,
}

/// Opens `/dev/fuse` and mounts a FUSE filesystem (type `fuse.cafs`) onto the directory `target` is an fd of
/// (an `O_PATH` fd is enough). The mount is made detached and attached onto the fd, so no path is resolved.
pub fn mount_fuse(target: BorrowedFd<'_>, o: &FuseOptions) -> Result<FuseMount, MountError> {
    let dev: OwnedFd = OpenOptions::new().read(true).write(true).open("/dev/fuse").map_err(MountError::Device)?.into();
    let step = |step| move |errno| MountError::Mount { step, errno };
    let fs = rustix::mount::fsopen("fuse", FsOpenFlags::FSOPEN_CLOEXEC).map_err(step("fsopen"))?;
    for (key, value) in mount_params(dev.as_raw_fd(), o) {
        match value {
            Some(v) => rustix::mount::fsconfig_set_string(&fs, key, v.as_str()),
            None => rustix::mount::fsconfig_set_flag(&fs, key),
        }
        .map_err(step(key))?;
    }
    rustix::mount::fsconfig_create(&fs).map_err(step("creating the superblock"))?;
    let mut attrs = MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV;
    if o.read_only {
        attrs |= MountAttrFlags::MOUNT_ATTR_RDONLY;
    }
    let root = rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(step("fsmount"))?;
    rustix::mount::move_mount(
        &root,
        c"",
        target,
        c"",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(step("attaching onto the directory"))?;
    let id = match crate::mountinfo::mount_id_of(&root) {
        Ok(id) => id,
        Err(e) => {
            let _ = detach(root.as_fd());
            return Err(MountError::NoMountId(e));
        }
    };
    Ok(FuseMount { dev, root, id })
}

/// Detaches (lazily) exactly the mount whose root `root` is an fd of: the kernel follows `/proc/self/fd/N` to
/// the fd's own mount, not to whatever a path names now.
pub fn detach(root: BorrowedFd<'_>) -> Result<(), MountError> {
    let via = PathBuf::from(format!("/proc/self/fd/{}", root.as_raw_fd()));
    nix::mount::umount2(&via, MntFlags::MNT_DETACH).map_err(|errno| MountError::Unmount { path: via, errno })
}

/// Unmounts `dir`; `lazy` detaches it even while in use. For paths the caller controls (not a client's).
pub fn unmount(dir: &Path, lazy: bool) -> Result<(), MountError> {
    let flags = if lazy { MntFlags::MNT_DETACH } else { MntFlags::empty() };
    nix::mount::umount2(dir, flags).map_err(|errno| MountError::Unmount { path: dir.to_path_buf(), errno })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mountinfo;
    use crate::target::{Policy, check};

    #[test]
    fn options_are_the_fixed_set() {
        let o = FuseOptions { uid: 1000, gid: 100, root_mode: 0o40755, read_only: false, allow_other: false };
        let shown = |o: &FuseOptions| {
            mount_params(5, o)
                .into_iter()
                .map(|(k, v)| v.map_or(k.to_string(), |v| format!("{k}={v}")))
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(
            shown(&o),
            "source=cafs,subtype=cafs,fd=5,rootmode=40000,user_id=1000,group_id=100,default_permissions"
        );
        let o = FuseOptions { allow_other: true, read_only: true, ..o };
        assert!(shown(&o).ends_with(",default_permissions,allow_other,ro"), "{}", shown(&o));
    }

    /// Detaches lazily on drop (a test that fails leaves no mount behind).
    struct Guard(PathBuf);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = unmount(&self.0, true);
        }
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
        let m = mount_fuse(t.fd.as_fd(), &o).unwrap();
        let guard = Guard(dir.clone());
        let entry = mountinfo::find(m.id).unwrap().expect("the new mount is listed");
        assert_eq!(entry.mount_point, dir);
        assert_eq!(entry.fstype, "fuse.cafs");
        assert_eq!(entry.fuse_owner(), Some(1000));
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
        drop(m);
        unmount(&dir, false).unwrap();
        std::mem::forget(guard);
        assert!(!mountinfo::is_mount_point(&dir));
    }

    /// The root fd detaches its own mount even when the path that led to it now leads to another mount: the
    /// parent renamed away and a symlink to a victim put in its place.
    #[test]
    fn detach_acts_on_the_mount_not_on_its_old_path() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root (mount)");
        let tmp = tempfile::tempdir().unwrap();
        let (jobs, victim) = (tmp.path().join("jobs"), tmp.path().join("victim"));
        let (parent, dir) = (jobs.join("p"), jobs.join("p/out"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(victim.join("out")).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &victim.join("out"),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let _victim_guard = Guard(victim.join("out"));
        let t = check(&dir, 0, &Policy { allowed_roots: vec![jobs.clone()] }).unwrap();
        let o = FuseOptions { uid: 1000, gid: 1000, root_mode: t.mode, read_only: false, allow_other: false };
        let m = mount_fuse(t.fd.as_fd(), &o).unwrap();
        std::fs::rename(&parent, jobs.join("moved")).unwrap();
        std::os::unix::fs::symlink(&victim, &parent).unwrap();
        let _guard = Guard(jobs.join("moved/out"));
        detach(m.root.as_fd()).unwrap();
        assert!(mountinfo::find(m.id).unwrap().is_none(), "the FUSE mount is gone");
        assert!(mountinfo::is_mount_point(&victim.join("out")), "the victim stays mounted");
    }
}
