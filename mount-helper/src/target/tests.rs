//! Each refusal, and the accepted case, on real directories. Run as root (as CI does): the ownership and
//! mount-point cases need `chown` and `mount`.

use std::os::unix::fs::symlink;

use super::*;

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    policy: Policy,
}

fn env() -> Env {
    assert!(nix::unistd::geteuid().is_root(), "these tests need root (chown, mount)");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("jobs");
    std::fs::create_dir(&root).unwrap();
    let policy = Policy { allowed_roots: vec![root.clone()] };
    Env { _tmp: tmp, root, policy }
}

fn owned_dir(e: &Env, name: &str, uid: u32) -> PathBuf {
    let d = e.root.join(name);
    std::fs::create_dir(&d).unwrap();
    std::os::unix::fs::chown(&d, Some(uid), Some(uid)).unwrap();
    d
}

#[test]
fn the_owner_may_mount_on_its_directory() {
    let e = env();
    let d = owned_dir(&e, "out", 1000);
    let t = check(&d, 1000, &e.policy).unwrap();
    assert_eq!(t.path, d);
    assert_eq!(t.mode & libc::S_IFMT, libc::S_IFDIR);
    // The fd is the directory.
    assert_eq!(std::fs::read_link(format!("/proc/self/fd/{}", t.fd.as_raw_fd())).unwrap(), d);
    // Root may mount on anyone's directory within the policy.
    check(&d, 0, &e.policy).unwrap();
    // Trailing and doubled slashes name the same directory.
    let odd = PathBuf::from(format!("{}//out/", e.root.display()));
    assert_eq!(check(&odd, 1000, &e.policy).unwrap().path, d);
}

#[test]
fn malformed_paths_are_refused() {
    let e = env();
    owned_dir(&e, "out", 1000);
    assert!(matches!(check(Path::new("jobs/out"), 1000, &e.policy), Err(TargetError::NotAbsolute(_))));
    let dotdot = e.root.join("out/../out");
    assert!(matches!(check(&dotdot, 1000, &e.policy), Err(TargetError::DotComponent(_))));
    let dot = PathBuf::from(format!("{}/./out", e.root.display()));
    assert!(matches!(check(&dot, 1000, &e.policy), Err(TargetError::DotComponent(_))));
}

#[test]
fn system_paths_are_refused_whatever_the_policy() {
    let anything = Policy { allowed_roots: vec![PathBuf::from("/")] };
    for p in ["/", "/etc", "/etc/cron.d", "/usr/lib", "/proc/1", "/sys", "/dev/shm", "/var/lib/cafs", "//etc/"] {
        assert!(matches!(check(Path::new(p), 0, &anything), Err(TargetError::SystemPath(_))), "{p}");
    }
}

#[test]
fn paths_outside_the_allowed_roots_are_refused() {
    let e = env();
    let elsewhere = e._tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let err = check(&elsewhere, 0, &e.policy).unwrap_err();
    assert!(matches!(err, TargetError::NotAllowed { .. }), "{err}");
    assert!(err.to_string().contains(&e.root.display().to_string()), "names the allowed roots: {err}");
    // An allowed root itself is not a mount point either.
    assert!(matches!(check(&e.root, 0, &e.policy), Err(TargetError::NotAllowed { .. })));
}

#[test]
fn symlinks_are_not_followed_anywhere_in_the_path() {
    let e = env();
    let real = owned_dir(&e, "real", 1000);
    std::fs::create_dir(real.join("inner")).unwrap();
    std::os::unix::fs::chown(real.join("inner"), Some(1000), Some(1000)).unwrap();
    symlink(&real, e.root.join("link")).unwrap();
    assert!(matches!(check(&e.root.join("link"), 1000, &e.policy), Err(TargetError::Symlink(_))));
    assert!(matches!(check(&e.root.join("link/inner"), 1000, &e.policy), Err(TargetError::Symlink(_))));
    // A symlink to a system directory, inside an allowed root, is refused the same way.
    symlink("/etc", e.root.join("etc")).unwrap();
    assert!(matches!(check(&e.root.join("etc"), 0, &e.policy), Err(TargetError::Symlink(_))));
}

#[test]
fn missing_targets_and_files_are_refused() {
    let e = env();
    assert!(matches!(check(&e.root.join("nope"), 0, &e.policy), Err(TargetError::Missing(_))));
    std::fs::write(e.root.join("file"), b"x").unwrap();
    assert!(matches!(check(&e.root.join("file"), 0, &e.policy), Err(TargetError::NotADirectory(_))));
}

#[test]
fn another_users_directory_is_refused() {
    let e = env();
    let d = owned_dir(&e, "theirs", 2000);
    let err = check(&d, 1000, &e.policy).unwrap_err();
    assert_eq!(err, TargetError::NotOwner { path: d, owner: 2000, uid: 1000 });
}

#[test]
fn an_existing_mount_point_is_refused() {
    let e = env();
    let d = owned_dir(&e, "busy", 1000);
    nix::mount::mount(Some("tmpfs"), &d, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=1m")).unwrap();
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _guard = Unmount(&d);
    assert!(matches!(check(&d, 0, &e.policy), Err(TargetError::AlreadyMounted(_))));
}
