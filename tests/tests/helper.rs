//! The privilege split on real mounts: cafsd running as an unprivileged user (`nobody`), `cafs-mount` run as root
//! mounting a directory for its owner and handing the fd over; the owner writes, commits, unmounts, and a second
//! mount of the same ref shows the committed bytes. And the helper's refusals, through its command line. Needs
//! root and /dev/fuse.

use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cafs_tests::mount::{bin, is_mounted};
use cafs_tests::stack::{NOBODY, Stack, ask, ok, sh_as};

const JOB_USER: u32 = 1000;

fn helper(stack: &Stack, args: &[&str], roots: &Path) -> Output {
    Command::new(bin("cafs-mount"))
        .args(args)
        .arg("--server")
        .arg(&stack.socket)
        .arg("--allow-root")
        .arg(roots)
        .output()
        .unwrap()
}

/// Runs a shell command as the job user, in `dir`.
fn as_job_user(dir: &Path, script: &str) -> Output {
    sh_as(JOB_USER, dir, script)
}

/// A stack on `base` with cafsd as nobody (and the helper daemon, which the one-shot tests leave alone).
fn start(base: &Path) -> Stack {
    Stack::start(base, &["--autocommit", "0"])
}

#[test]
fn an_unprivileged_cafsd_serves_what_the_helper_mounts() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let stack = start(tmp.path());
    let jobs = tmp.path().join("jobs");
    let out = jobs.join("out");
    std::fs::create_dir_all(&out).unwrap();
    chown(&out, Some(JOB_USER), Some(JOB_USER)).unwrap();

    let r = helper(&stack, &[out.to_str().unwrap(), "--ref", "results"], &jobs);
    ok(&r);
    assert!(is_mounted(&out));
    let ps = std::fs::read_to_string(format!("/proc/{}/status", stack.cafsd_pid())).unwrap();
    assert!(ps.lines().any(|l| l.starts_with("Uid:") && l.contains(&NOBODY.to_string())), "cafsd runs as nobody");

    let pdh = ok(&as_job_user(&out, "printf 'job output' > result.txt && echo done > .cafs/commit && cat .cafs/hash"));
    cafs::Pdh::parse(pdh.trim()).unwrap_or_else(|e| panic!("{pdh:?} is not a hash: {e}"));
    // Root is not the mount's owner: without allow_other the kernel keeps it out.
    assert!(std::fs::read(out.join("result.txt")).is_err());

    // Unmount (as root, as the helper will on request); the same ref mounted again shows the commit.
    assert!(Command::new("umount").arg(&out).status().unwrap().success());
    let start = Instant::now();
    while is_mounted(&out) {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    ok(&helper(&stack, &[out.to_str().unwrap(), "--ref", "results"], &jobs));
    assert_eq!(ok(&as_job_user(&out, "cat result.txt; echo; cat .cafs/hash")), format!("job output\n{pdh}"));
}

#[test]
fn the_helper_refuses_bad_requests_with_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let stack = start(tmp.path());
    let jobs = tmp.path().join("jobs");
    std::fs::create_dir_all(jobs.join("d")).unwrap();
    std::fs::write(jobs.join("file"), b"").unwrap();
    std::os::unix::fs::symlink("/etc", jobs.join("etc")).unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let cases: Vec<(PathBuf, &str)> = vec![
        ("/etc".into(), "system path"),
        (elsewhere.clone(), "not below an allowed root"),
        (jobs.join("etc"), "symlink"),
        (jobs.join("missing"), "no such directory"),
        (jobs.join("file"), "not a directory"),
        ("relative/dir".into(), "absolute"),
    ];
    for (path, why) in cases {
        let r = helper(&stack, &[path.to_str().unwrap(), "--ref", "x"], &jobs);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{}: {err}", path.display());
        assert!(err.contains(why), "{}: expected {why:?} in {err}", path.display());
        assert!(!is_mounted(&path));
    }
    // A bad ref name: the helper mounts, cafsd refuses, the helper unmounts and says why.
    let r = helper(&stack, &[jobs.join("d").to_str().unwrap(), "--ref", "bad/ref name"], &jobs);
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("cafsd refused"), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(!is_mounted(&jobs.join("d")));
    // Not root: refused before anything happens.
    let r = Command::new(bin("cafs-mount"))
        .args([jobs.join("d").to_str().unwrap(), "--ref", "x"])
        .uid(JOB_USER)
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("root"));
    // Usage errors exit 2.
    let r = Command::new(bin("cafs-mount")).arg(jobs.join("d")).output().unwrap();
    assert_eq!(r.status.code(), Some(2));
}

#[test]
fn the_helper_daemon_acts_for_the_connecting_uid_only() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let stack = start(tmp.path());
    let jobs = tmp.path().join("jobs");
    let (mine, theirs) = (jobs.join("mine"), jobs.join("theirs"));
    for (d, uid) in [(&mine, JOB_USER), (&theirs, JOB_USER + 1)] {
        std::fs::create_dir_all(d).unwrap();
        chown(d, Some(uid), Some(uid)).unwrap();
    }
    // The stack's helper daemon, allowed below `jobs`.
    let listen = stack.helper_socket.clone();
    let mount = |d: &Path| format!(r#"{{"mount":{{"mountpoint":"{}","origin":{{"ref":"r"}}}}}}"#, d.display());
    let umount = |d: &Path| format!(r#"{{"unmount":{{"mountpoint":"{}"}}}}"#, d.display());

    // A user mounts on its own directory, and uses the mount.
    assert_eq!(ask(&listen, JOB_USER, &mount(&mine), None), r#"{"ok":true,"message":""}"#);
    assert!(is_mounted(&mine));
    assert_eq!(ok(&as_job_user(&mine, "echo hi > f && cat f")), "hi\n");
    // Not on someone else's.
    let r = ask(&listen, JOB_USER, &mount(&theirs), None);
    assert!(r.contains(r#""ok":false"#) && r.contains("owned by uid 1001"), "{r}");
    assert!(!is_mounted(&theirs));
    // Someone else cannot unmount it; its owner can.
    let r = ask(&listen, JOB_USER + 1, &umount(&mine), None);
    assert!(r.contains("belongs to uid 1000"), "{r}");
    assert!(is_mounted(&mine));
    let r = ask(&listen, JOB_USER, &umount(&jobs), None);
    assert!(r.contains("not a cafs mount"), "{r}");
    // A path through a symlink is refused, not followed.
    std::os::unix::fs::symlink(&jobs, tmp.path().join("via")).unwrap();
    let r = ask(&listen, JOB_USER, &umount(&tmp.path().join("via/mine")), None);
    assert!(r.contains("symlink"), "{r}");
    assert!(is_mounted(&mine));
    assert_eq!(ask(&listen, JOB_USER, &umount(&mine), None), r#"{"ok":true,"message":""}"#);
    assert!(!is_mounted(&mine));
    // Malformed and oversized requests get a clear refusal and change nothing.
    let r = ask(&listen, JOB_USER, r#"{"mount":{"mountpoint":"/x"}}"#, None);
    assert!(r.contains("malformed"), "{r}");
    let r = ask(&listen, JOB_USER, "{}", Some(1 << 30));
    assert!(r.contains("over the"), "{r}");
    assert!(!is_mounted(&mine) && !is_mounted(&theirs));
}
