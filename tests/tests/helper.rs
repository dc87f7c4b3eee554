//! The privilege split on real mounts: cafsd running as an unprivileged user (`nobody`), `cafs-mount` run as root
//! mounting a directory for its owner and handing the fd over; the owner writes, commits, unmounts, and a second
//! mount of the same ref shows the committed bytes. And the helper's refusals, through its command line. Needs
//! root and /dev/fuse.

use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cafs_tests::mount::{bin, is_mounted};

const NOBODY: u32 = 65534;
const JOB_USER: u32 = 1000;

/// cafsd as `nobody`, stopped (SIGTERM, then SIGKILL) and every listed mount detached when dropped.
struct Stack {
    cafsd: Child,
    socket: PathBuf,
    mounts: Vec<PathBuf>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        for m in &self.mounts {
            if is_mounted(m) {
                let _ = Command::new("umount").arg("-l").arg(m).status();
            }
        }
        let _ = Command::new("kill").args(["-TERM", &self.cafsd.id().to_string()]).status();
        let start = Instant::now();
        while self.cafsd.try_wait().ok().flatten().is_none() && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.cafsd.kill();
        let _ = self.cafsd.wait();
    }
}

fn start(base: &Path) -> Stack {
    assert!(nix_is_root(), "this test needs root (it starts cafs-mount)");
    let (state, run) = (base.join("state"), base.join("run"));
    for d in [&state, &run] {
        std::fs::create_dir(d).unwrap();
        chown(d, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let socket = run.join("cafsd.sock");
    let cafsd = Command::new(bin("cafsd"))
        .arg("--state-dir")
        .arg(&state)
        .arg("--socket")
        .arg(&socket)
        .args(["--autocommit", "0"])
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start cafsd as nobody");
    let mut stack = Stack { cafsd, socket, mounts: Vec::new() };
    let fd_sock = run.join("cafsd.fd.sock");
    let start = Instant::now();
    while !fd_sock.exists() {
        if let Some(status) = stack.cafsd.try_wait().unwrap() {
            panic!("cafsd exited ({status}) before listening");
        }
        assert!(start.elapsed() < Duration::from_secs(30), "cafsd did not listen within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    stack
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

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
    Command::new("sh").args(["-c", script]).current_dir(dir).uid(JOB_USER).gid(JOB_USER).output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn an_unprivileged_cafsd_serves_what_the_helper_mounts() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut stack = start(tmp.path());
    let jobs = tmp.path().join("jobs");
    let out = jobs.join("out");
    std::fs::create_dir_all(&out).unwrap();
    chown(&out, Some(JOB_USER), Some(JOB_USER)).unwrap();
    stack.mounts.push(out.clone());

    let r = helper(&stack, &[out.to_str().unwrap(), "--ref", "results"], &jobs);
    ok(&r);
    assert!(is_mounted(&out));
    let ps = std::fs::read_to_string(format!("/proc/{}/status", stack.cafsd.id())).unwrap();
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
