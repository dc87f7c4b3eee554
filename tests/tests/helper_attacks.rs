//! The privileged helper's daemon against a local user who attacks the node: a symlink swapped in after the
//! mount so that the clean-up would unmount something else, a flood of idle connections against a small fd
//! limit, a request that trickles in a byte at a time, a 60 KiB path meant to be echoed back, and a socket put
//! where cafsd's user could replace it. Real helper, real mounts, real unprivileged users (1000 and 1001).
//!
//! cafsd is played by the test here ([`FakeCafsd`]): a mount request reaches cafsd's fd socket after the
//! mount is made, which is exactly when an attacker strikes, so the stand-in does the attacker's move and then
//! answers as the case needs (refuse, hang up, accept).

use std::os::fd::AsFd;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cafs_mount::mountinfo;
use cafs_mount::wire::{self, Handoff, Reply};
use cafs_tests::mount::{bin, is_mounted};
use cafs_tests::stack::{NOBODY, Stack, ask, ok};

const JOB: u32 = 1000;
const OTHER: u32 = 1001;

/// How the stand-in answers a hand-over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Refuse,
    HangUp,
    Accept,
}

/// A stand-in for cafsd's fd socket: each hand-over goes to `on_handoff`, which may act (as an attacker
/// would, at that moment) and says how to answer. The device fds of accepted mounts are kept until drop.
struct FakeCafsd {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeCafsd {
    /// Listens on the fd socket that goes with `grpc` (what the helper's `--server` names).
    fn start(grpc: &Path, on_handoff: impl Fn(&Handoff) -> Answer + Send + 'static) -> Self {
        let listener = UnixListener::bind(wire::fd_socket_path(grpc)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut kept = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                let Ok((conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                // The helper's relay check connects and hangs up: nothing to answer.
                let Ok((handoff, fd)) = wire::recv::<Handoff>(&conn) else { continue };
                match on_handoff(&handoff) {
                    Answer::Refuse => wire::send(&conn, &Reply { ok: false, message: "no".into() }, None).unwrap(),
                    Answer::HangUp => drop(conn),
                    Answer::Accept => {
                        wire::send(&conn, &Reply { ok: true, message: String::new() }, None).unwrap();
                        kept.push(fd);
                    }
                }
            }
        });
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for FakeCafsd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `cafs-mount serve` as root, mounts allowed below `base/jobs`, cafsd expected at `base/cafsd/cafsd.sock`; at
/// most `nofile` fds when given. Killed (by PID) on drop, after every mount below `base` is detached.
struct Helper {
    child: Child,
    base: PathBuf,
    socket: PathBuf,
    grpc: PathBuf,
}

impl Helper {
    fn start(base: &Path, nofile: Option<u64>) -> Self {
        std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (jobs, run, cafsd) = (base.join("jobs"), base.join("helper"), base.join("cafsd"));
        for d in [&jobs, &run, &cafsd] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::set_permissions(&jobs, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let (socket, grpc) = (run.join("mount.sock"), cafsd.join("cafsd.sock"));
        let mut cmd = Command::new(bin("cafs-mount"));
        cmd.arg("serve").arg("--listen").arg(&socket).arg("--server").arg(&grpc).arg("--allow-root").arg(&jobs);
        if let Some(n) = nofile {
            // SAFETY: between fork and exec only setrlimit runs, which is async-signal-safe; it touches no memory
            // of the parent.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, n, n)
                        .map_err(std::io::Error::from)
                });
            }
        }
        let mut child = cmd.stdin(Stdio::null()).spawn().unwrap();
        cafs_tests::wait_for("the helper listening", Duration::from_secs(30), || {
            assert!(child.try_wait().unwrap().is_none(), "the helper exited at start");
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        Self { child, base: base.to_path_buf(), socket, grpc }
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// How many `/dev/fuse` fds the helper holds.
    fn fuse_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .filter(|e| {
                e.as_ref().is_ok_and(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == Path::new("/dev/fuse")))
            })
            .count()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        detach_below(&self.base);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// cafs mounts below `base`, as the kernel lists them.
fn cafs_mounts_below(base: &Path) -> Vec<PathBuf> {
    let all = mountinfo::all().unwrap();
    all.into_iter()
        .filter(|m| m.fstype == "fuse.cafs" && m.mount_point.starts_with(base))
        .map(|m| m.mount_point)
        .collect()
}

/// Detaches every mount below `base`, deepest first.
fn detach_below(base: &Path) {
    let mut below: Vec<PathBuf> =
        mountinfo::all().unwrap().into_iter().map(|m| m.mount_point).filter(|p| p.starts_with(base)).collect();
    below.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for m in below {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn mount_request(dir: &Path) -> String {
    serde_json::json!({"mount": {"mountpoint": dir, "origin": {"ref": "r"}}}).to_string()
}

/// A directory `jobs/NAME/out` owned by `uid`, its parent too (the attacker's own tree).
fn job_tree(h: &Helper, name: &str, uid: u32) -> PathBuf {
    let parent = h.base.join("jobs").join(name);
    let out = parent.join("out");
    std::fs::create_dir_all(&out).unwrap();
    for d in [&parent, &out] {
        chown(d, Some(uid), Some(uid)).unwrap();
    }
    out
}

/// The attack: right after `mount(2)`, the user renames the mount point's parent away and puts a symlink to a
/// victim in its place, so that a clean-up by path lands on the victim's mount. Whatever cafsd answers, the
/// victim (a root-owned tmpfs) stays mounted, and a refused mount leaves nothing behind and no fd held.
#[test]
fn a_symlink_swap_after_the_mount_never_turns_the_cleanup_against_another_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = Helper::start(tmp.path(), None);
    let victim = tmp.path().join("victim");
    std::fs::create_dir_all(victim.join("out")).unwrap();
    nix::mount::mount(Some("tmpfs"), &victim.join("out"), Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>)
        .unwrap();
    let victim_id = mountinfo::mount_id_of(std::fs::File::open(victim.join("out")).unwrap().as_fd()).unwrap();
    let victim_target = victim.clone();
    let _cafsd = FakeCafsd::start(&h.grpc, move |handoff| {
        let parent = handoff.request.mountpoint.parent().unwrap().to_path_buf();
        let moved = parent.with_extension("moved");
        std::fs::rename(&parent, &moved).unwrap();
        std::os::unix::fs::symlink(&victim_target, &parent).unwrap();
        match parent.file_name().unwrap().to_str().unwrap().split('-').next().unwrap() {
            "Refuse" => Answer::Refuse,
            "HangUp" => Answer::HangUp,
            _ => Answer::Accept,
        }
    });
    let mut accepted = 0;
    for (i, answer) in [Answer::Refuse, Answer::HangUp, Answer::Accept].into_iter().cycle().take(9).enumerate() {
        let out = job_tree(&h, &format!("{answer:?}-{i}"), JOB);
        let started = Instant::now();
        let r = ask(&h.socket, JOB, &mount_request(&out), None);
        let took = started.elapsed();
        if answer == Answer::Accept {
            accepted += 1;
            assert_eq!(r, r#"{"ok":true,"message":""}"#, "case {i}");
        } else {
            assert!(r.contains(r#""ok":false"#), "case {i}: {r}");
        }
        assert!(took < Duration::from_secs(20), "case {i}: the helper took {took:?}");
        let still = mountinfo::find(victim_id).unwrap();
        assert!(
            still.as_ref().is_some_and(|m| m.mount_point == victim.join("out")),
            "case {i} ({answer:?}): the victim was unmounted"
        );
        assert_eq!(cafs_mounts_below(tmp.path()).len(), accepted, "case {i}: a refused mount was left behind");
        assert!(h.alive());
    }
    // Only the accepted mounts' fds are held; once they are gone, the next request forgets them.
    assert_eq!(h.fuse_fds(), accepted);
    for m in cafs_mounts_below(tmp.path()) {
        nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH).unwrap();
    }
    let r = ask(&h.socket, JOB, r#"{"unmount":{"mountpoint":"/nonexistent"}}"#, None);
    assert!(r.contains(r#""ok":false"#), "{r}");
    assert_eq!(h.fuse_fds(), 0, "fds of mounts that are gone are still held");
    nix::mount::umount2(&victim.join("out"), nix::mount::MntFlags::MNT_DETACH).unwrap();
}

/// The same swap against the other clean-up: a held mount that a restarted cafsd does not take back is
/// detached where it is now (found by its id), never through the path it was made at.
#[test]
fn a_held_mount_cafsd_refuses_is_detached_where_it_is_not_where_its_path_leads() {
    let tmp = tempfile::tempdir().unwrap();
    let h = Helper::start(tmp.path(), None);
    let victim = tmp.path().join("victim");
    std::fs::create_dir_all(victim.join("out")).unwrap();
    nix::mount::mount(Some("tmpfs"), &victim.join("out"), Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>)
        .unwrap();
    let victim_id = mountinfo::mount_id_of(std::fs::File::open(victim.join("out")).unwrap().as_fd()).unwrap();
    // The first hand-over is taken; the resumed one (a restarted cafsd) is refused.
    let cafsd = FakeCafsd::start(&h.grpc, |handoff| if handoff.resume { Answer::Refuse } else { Answer::Accept });
    let out = job_tree(&h, "held", JOB);
    assert_eq!(ask(&h.socket, JOB, &mount_request(&out), None), r#"{"ok":true,"message":""}"#);
    let parent = out.parent().unwrap();
    std::fs::rename(parent, parent.with_extension("moved")).unwrap();
    std::os::unix::fs::symlink(&victim, parent).unwrap();
    // Root may ask the helper to hand its mounts over again, as cafsd does at start.
    let r = ask(&h.socket, 0, r#""reclaim""#, None);
    assert_eq!(r, r#"{"ok":true,"message":"0 mounts handed over"}"#);
    assert!(mountinfo::find(victim_id).unwrap().is_some(), "the victim was unmounted");
    assert_eq!(cafs_mounts_below(tmp.path()), Vec::<PathBuf>::new(), "the refused mount is still there");
    drop(cafsd);
    nix::mount::umount2(&victim.join("out"), nix::mount::MntFlags::MNT_DETACH).unwrap();
}

/// A user holds 80 idle connections open against a helper allowed 64 fds: the helper stays up, and another
/// user's mount request goes through meanwhile.
#[test]
fn a_connection_flood_neither_stops_the_helper_nor_starves_other_users() {
    const FLOOD: &str = r#"
import socket, sys
held = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    held.append(s)
print(len(held), flush=True)
sys.stdin.read()
"#;
    let tmp = tempfile::tempdir().unwrap();
    let mut h = Helper::start(tmp.path(), Some(64));
    let _cafsd = FakeCafsd::start(&h.grpc, |_| Answer::Accept);
    let mut flood = Command::new("python3")
        .args(["-c", FLOOD])
        .arg(&h.socket)
        .arg("80")
        .uid(JOB)
        .gid(JOB)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(flood.stdout.take().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "80", "the flood connected");
    std::thread::sleep(Duration::from_millis(500));
    assert!(h.alive(), "the helper exited under the flood");
    let out = job_tree(&h, "other", OTHER);
    assert_eq!(ask(&h.socket, OTHER, &mount_request(&out), None), r#"{"ok":true,"message":""}"#);
    assert!(is_mounted(&out));
    // The flood ends; the flooding user is served again.
    drop(flood.stdin.take());
    flood.wait().unwrap();
    assert!(h.alive());
    let mine = job_tree(&h, "mine", JOB);
    assert_eq!(ask(&h.socket, JOB, &mount_request(&mine), None), r#"{"ok":true,"message":""}"#);
}

/// A client that sends its request a byte a second keeps no connection past the request deadline (10 s),
/// however long it goes on; another user is served meanwhile.
#[test]
fn a_trickling_client_is_cut_off_at_the_request_deadline() {
    const SLOW: &str = r#"
import socket, struct, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.setblocking(False)
body = b'{"unmount":{"mountpoint":"/tmp/' + b"x" * 40 + b'"}}'
s.send(struct.pack(">I", len(body)))
start = time.monotonic()
for b in body:
    time.sleep(1)
    try:
        s.recv(4096)  # the helper's refusal, or its end of the connection
        print(f"closed after {time.monotonic() - start:.1f} s", flush=True)
        sys.exit(0)
    except BlockingIOError:
        pass
    try:
        s.send(bytes([b]))
    except OSError as e:
        print(f"closed after {time.monotonic() - start:.1f} s ({e})", flush=True)
        sys.exit(0)
    if time.monotonic() - start > 30:
        break
print("still open after 30 s", flush=True)
"#;
    let tmp = tempfile::tempdir().unwrap();
    let mut h = Helper::start(tmp.path(), None);
    let _cafsd = FakeCafsd::start(&h.grpc, |_| Answer::Accept);
    let slow = Command::new("python3")
        .args(["-c", SLOW])
        .arg(&h.socket)
        .uid(JOB)
        .gid(JOB)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = job_tree(&h, "other", OTHER);
    assert_eq!(ask(&h.socket, OTHER, &mount_request(&out), None), r#"{"ok":true,"message":""}"#);
    let said = slow.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&said.stdout), String::from_utf8_lossy(&said.stderr));
    let secs: f64 = said
        .strip_prefix("closed after ")
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("the trickling client was not cut off: {said}"));
    assert!((8.0..16.0).contains(&secs), "cut off after {secs} s, not at the 10 s deadline: {said}");
    assert!(h.alive());
}

/// A refusal quotes a short prefix of a 60 KiB path, not the whole of it.
#[test]
fn a_refusal_quotes_a_short_prefix_of_a_long_path() {
    let tmp = tempfile::tempdir().unwrap();
    let h = Helper::start(tmp.path(), None);
    let long = format!("/tmp/{}", "a".repeat(60_000));
    let r = ask(&h.socket, JOB, &mount_request(Path::new(&long)), None);
    assert!(r.contains(r#""ok":false"#), "{}", &r[..r.len().min(300)]);
    assert!(r.len() < 1024, "a reply of {} bytes quotes the whole path", r.len());
    assert!(r.contains("bytes)"), "the reply says how long the path was: {r}");
}

/// A held mount that someone else unmounted is forgotten at the next request of any kind, not only at the next
/// successful unmount.
#[test]
fn the_fds_of_mounts_gone_are_let_go_at_the_next_request() {
    let tmp = tempfile::tempdir().unwrap();
    let h = Helper::start(tmp.path(), None);
    let _cafsd = FakeCafsd::start(&h.grpc, |_| Answer::Accept);
    let out = job_tree(&h, "gone", JOB);
    assert_eq!(ask(&h.socket, JOB, &mount_request(&out), None), r#"{"ok":true,"message":""}"#);
    assert_eq!(h.fuse_fds(), 1);
    nix::mount::umount2(&out, nix::mount::MntFlags::MNT_DETACH).unwrap();
    let r = ask(&h.socket, OTHER, r#"{"unmount":{"mountpoint":"/nonexistent"}}"#, None);
    assert!(r.contains(r#""ok":false"#), "{r}");
    assert_eq!(h.fuse_fds(), 0, "the fd of a mount that is gone is still held");
}

/// The helper listens only in a directory that no one but root can change: in one cafsd's user owns, that user
/// could put its own socket in the helper's place. The stack's (and a node's) helper directory is root's.
#[test]
fn the_helper_refuses_a_socket_directory_others_can_write() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let theirs = tmp.path().join("run");
    std::fs::create_dir(&theirs).unwrap();
    chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    let mut cmd = Command::new(bin("cafs-mount"));
    cmd.arg("serve").arg("--listen").arg(theirs.join("mount.sock")).arg("--allow-root").arg(tmp.path());
    let r = cafs_tests::run_bounded(&mut cmd, Duration::from_secs(30));
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(err.contains("only root can change"), "{err}");
    // Group-writable is refused too.
    let group = tmp.path().join("group");
    std::fs::create_dir(&group).unwrap();
    std::fs::set_permissions(&group, std::fs::Permissions::from_mode(0o775)).unwrap();
    let mut cmd = Command::new(bin("cafs-mount"));
    cmd.arg("serve").arg("--listen").arg(group.join("mount.sock")).arg("--allow-root").arg(tmp.path());
    assert_eq!(cafs_tests::run_bounded(&mut cmd, Duration::from_secs(30)).status.code(), Some(1));

    // The stack runs as a node does: cafsd's user cannot write where the helper's socket is.
    std::fs::create_dir(tmp.path().join("stack")).unwrap();
    let stack = Stack::start(&tmp.path().join("stack"), &["--autocommit", "0"]);
    let dir = stack.helper_socket.parent().unwrap();
    let r = cafs_tests::stack::sh_as(NOBODY, Path::new("/"), &format!("touch '{}/x'", dir.display()));
    assert!(!r.status.success(), "cafsd's user can write {}", dir.display());
}

/// A mount point whose name holds a space and a backslash (which the mount table escapes) is mounted, used and
/// unmounted through fsctl. (cafsd refuses control characters in mount points, a tab among them: `fsctl ls` and
/// the logs are line- and tab-separated. The helper itself takes them: see the next test.)
#[test]
fn a_mount_point_with_escaped_bytes_mounts_and_unmounts_through_fsctl() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("stack");
    std::fs::create_dir(&base).unwrap();
    let stack = Stack::start(&base, &["--autocommit", "0"]);
    let dir = stack.job_dir("a b\\d", JOB);
    let d = dir.to_str().unwrap();
    ok(&stack.fsctl(JOB, &["mount", "odd", d]));
    assert!(is_mounted(&dir));
    assert_eq!(ok(&cafs_tests::stack::sh_as(JOB, &dir, "echo hi > f && cat f")), "hi\n");
    ok(&stack.fsctl(JOB, &["umount", d]));
    assert!(!is_mounted(&dir), "{d} is still mounted");
}

/// The helper mounts and unmounts (for its owner) a mount point with a space, a tab, a backslash and a newline,
/// all of which the mount table escapes.
#[test]
fn the_helper_unmounts_a_mount_point_the_mount_table_escapes() {
    let tmp = tempfile::tempdir().unwrap();
    let h = Helper::start(tmp.path(), None);
    let _cafsd = FakeCafsd::start(&h.grpc, |_| Answer::Accept);
    let out = job_tree(&h, "a b\tc\\d\ne", JOB);
    assert_eq!(ask(&h.socket, JOB, &mount_request(&out), None), r#"{"ok":true,"message":""}"#);
    assert!(is_mounted(&out));
    let unmount = serde_json::json!({"unmount": {"mountpoint": out}}).to_string();
    let r = ask(&h.socket, OTHER, &unmount, None);
    assert!(r.contains("belongs to uid 1000"), "{r}");
    assert_eq!(ask(&h.socket, JOB, &unmount, None), r#"{"ok":true,"message":""}"#);
    assert!(!is_mounted(&out));
}
