//! Live restart, on the real stack (helper as root, cafsd as `nobody`): a workload writes, reads back, lists,
//! renames and fsyncs through a mount without pause while cafsd is stopped and started again — gracefully
//! (SIGTERM, start) and brutally (`kill -9`, start). The helper keeps the mount's FUSE connection open; the new
//! cafsd takes the mount over (no INIT), recovers the tree from the journal under the inode numbers the kernel
//! holds, and has the requests the old one never answered sent again (`FUSE_NOTIFY_RESEND`).
//!
//! What must hold: across graceful restarts no system call of the workload fails and every byte reads back as
//! written. Across `kill -9`, no call fails but one: bytes that were written and acknowledged but not yet stored
//! die with the process, and the next `fsync` (or `close`) of such a file — often the very `fsync` that was in
//! flight, resent to the new cafsd — fails with `EIO` instead of claiming them (counted as `lost`; a resent
//! `fsync` that succeeded there would be a lie); everything fsynced reads back as written. The tree commits
//! afterwards. Needs root and /dev/fuse (Linux 6.9+ for resend).

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cafs_tests::Terminate;
use cafs_tests::stack::{Stack, ok, sh_as};

const JOB: u32 = 1000;

/// Runs until `stop` exists: each round makes a file of random size (fsynced every other round, and those
/// recorded in the ledger), reads it back, appends an fsynced line to a file held open the whole run, lists
/// the directory now and then and checks that every file it made is there, and renames or makes directories
/// now and then. Every failed call is counted and printed, never fatal. An `EIO` from `fsync` or `close` is
/// counted apart, as `lost`: cafsd reporting that writes it had acknowledged died with it (kill -9); the file
/// is then taken as it reads. At the end prints its counts.
const WORKLOAD: &str = r#"
import errno, hashlib, os, random, sys, time
d, ledger, stop, tag = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
rnd = random.Random(7)
led = open(ledger, "a")
errors, lost, mismatches, rounds, slowest = 0, 0, 0, 0, 0.0
made = {}
def fail(what, e):
    global errors
    errors += 1
    print(f"FAILED {what}: {e!r}", file=sys.stderr, flush=True)
def sync_or_lost(what, fd):
    # True when synced; False when cafsd said the file lost writes (counted; the caller re-reads).
    global lost
    try:
        os.fsync(fd)
        return True
    except OSError as e:
        if e.errno != errno.EIO:
            raise
        lost += 1
        print(f"LOST {what}: {e!r}", file=sys.stderr, flush=True)
        return False
held = os.open(os.path.join(d, f"{tag}-held.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
held_len = 0
while not os.path.exists(stop):
    t0 = time.monotonic()
    n = rounds
    name = f"{tag}-f{n}"
    data = rnd.randbytes(rnd.choice([0, 10, 4096, 100_000, rnd.randrange(1, 600_000)]))
    synced = n % 2 == 0
    try:
        fd = os.open(os.path.join(d, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        os.write(fd, data)
        if synced and not sync_or_lost(name, fd):
            synced = False
        try:
            os.close(fd)
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            lost += 1
            synced = False
            print(f"LOST {name} at close: {e!r}", file=sys.stderr, flush=True)
        made[name] = data
        if synced:
            led.write(f"{name} {len(data)} {hashlib.md5(data).hexdigest()}\n")
            led.flush()
        else:
            # Whatever cafsd reported lost (or never promised) is what the file holds now.
            with open(os.path.join(d, name), "rb") as f:
                data = made[name] = f.read()
    except OSError as e:
        fail(f"write {name}", e)
    try:
        with open(os.path.join(d, name), "rb") as f:
            if f.read() != data:
                mismatches += 1
                print(f"MISMATCH {name}", file=sys.stderr, flush=True)
    except OSError as e:
        fail(f"read {name}", e)
    try:
        line = f"round {n}\n".encode()
        os.write(held, line)
        if sync_or_lost("held.log", held):
            held_len += len(line)
        else:
            held_len = os.fstat(held).st_size
    except OSError as e:
        fail("append held.log", e)
    if n % 10 == 5:
        try:
            names = set(os.listdir(d))
            missing = [m for m in made if m not in names]
            if missing:
                mismatches += 1
                print(f"MISSING {missing[:5]}", file=sys.stderr, flush=True)
        except OSError as e:
            fail("listdir", e)
    if n % 10 == 7:
        try:
            sub = os.path.join(d, f"{tag}-dir{n}")
            os.mkdir(sub)
            os.rename(os.path.join(d, name), os.path.join(sub, name))
            os.rename(os.path.join(sub, name), os.path.join(d, name))
        except OSError as e:
            fail(f"mkdir/rename {n}", e)
    slowest = max(slowest, time.monotonic() - t0)
    rounds += 1
os.close(held)
try:
    if os.path.getsize(os.path.join(d, f"{tag}-held.log")) != held_len:
        mismatches += 1
        print("held.log has the wrong length", file=sys.stderr, flush=True)
except OSError as e:
    fail("stat held.log", e)
print(f"rounds={rounds} errors={errors} lost={lost} mismatches={mismatches} slowest_round_s={slowest:.3f}", flush=True)
"#;

/// Checks every fsynced file in the ledger. Prints how many.
const CHECK: &str = r#"
import hashlib, os, sys
d, ledger = sys.argv[1], sys.argv[2]
n = 0
for line in open(ledger):
    f = line.split()
    if len(f) != 3:
        continue
    data = open(os.path.join(d, f[0]), "rb").read()
    if (len(data), hashlib.md5(data).hexdigest()) != (int(f[1]), f[2]):
        sys.exit(f"{f[0]}: fsynced as {f[1:]} but reads as {len(data)} bytes")
    n += 1
print(n)
"#;

struct Counts {
    rounds: u64,
    errors: u64,
    lost: u64,
    mismatches: u64,
    line: String,
}

/// Runs the workload in `dir` while `restart` restarts cafsd `times` times, with a second of work between
/// restarts; returns the workload's counts.
fn under_restarts(stack: &mut Stack, dir: &Path, tag: &str, times: usize, restart: fn(&mut Stack)) -> Counts {
    let logs = stack.base.join("ledgers");
    std::fs::create_dir_all(&logs).unwrap();
    std::os::unix::fs::chown(&logs, Some(JOB), Some(JOB)).unwrap();
    let (ledger, stop) = (logs.join(format!("{tag}.ledger")), logs.join(format!("{tag}.stop")));
    let child = Command::new("python3")
        .arg("-c")
        .arg(WORKLOAD)
        .arg(dir)
        .arg(&ledger)
        .arg(&stop)
        .arg(tag)
        .current_dir("/")
        .uid(JOB)
        .gid(JOB)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the workload");
    let mut workload = Terminate(child);
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..times {
        restart(stack);
        assert!(stack.mounts().iter().any(|m| m == dir), "the mount stays while cafsd restarts");
        std::thread::sleep(Duration::from_secs(1));
    }
    std::fs::write(&stop, "").unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = workload.0.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "the workload did not finish");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(workload.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(status.success(), "the workload failed: {out}");
    let line = out.lines().last().unwrap_or_default().to_string();
    let field = |k: &str| -> u64 {
        line.split(' ').find_map(|f| f.strip_prefix(&format!("{k}="))?.parse().ok()).unwrap_or_else(|| panic!("{line}"))
    };
    let counts = Counts {
        rounds: field("rounds"),
        errors: field("errors"),
        lost: field("lost"),
        mismatches: field("mismatches"),
        line,
    };
    let checked = ok(&sh_as(
        JOB,
        dir,
        &format!("python3 -c '{}' {} {}", CHECK.replace('\'', "'\"'\"'"), dir.display(), ledger.display()),
    ));
    eprintln!("{tag}: {} ({} fsynced files checked)", counts.line, checked.trim());
    counts
}

fn graceful(stack: &mut Stack) {
    assert!(stack.stop_cafsd().success(), "cafsd exits cleanly on SIGTERM");
    std::thread::sleep(Duration::from_millis(500));
    stack.start_cafsd(&["--autocommit", "0"]);
}

fn brutal(stack: &mut Stack) {
    stack.kill_cafsd_only();
    std::thread::sleep(Duration::from_millis(500));
    stack.start_cafsd(&["--autocommit", "0"]);
}

#[test]
fn a_workload_sees_no_failed_call_while_cafsd_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let mut stack = Stack::start(tmp.path(), &["--autocommit", "0"]);
    let dir = stack.job_dir("live", JOB);
    let d = dir.to_str().unwrap().to_string();
    ok(&stack.fsctl(JOB, &["mount", "live", &d]));

    let g = under_restarts(&mut stack, &dir, "graceful", 3, graceful);
    assert!(g.rounds > 20, "the workload ran: {}", g.line);
    assert_eq!((g.errors, g.lost, g.mismatches), (0, 0, 0), "graceful restarts: {}", g.line);

    let b = under_restarts(&mut stack, &dir, "kill9", 3, brutal);
    assert!(b.rounds > 20, "the workload ran: {}", b.line);
    assert_eq!(b.errors, 0, "kill -9 restarts: no failed call but lost writes reported: {}", b.line);

    // The tree commits, and the mount unmounts cleanly through the new cafsd.
    let pdh = ok(&stack.fsctl(JOB, &["commit", &d, "-m", "after restarts"]));
    assert!(!pdh.trim().is_empty());
    ok(&stack.fsctl(JOB, &["umount", &d]));
    assert!(stack.mounts().is_empty());
}

/// The same, with systemd's file descriptor store as the only thing holding the mount: a one-shot
/// `cafs-mount` makes it (no helper daemon keeps a duplicate), and cafsd runs as systemd runs it with
/// `FileDescriptorStoreMax=` — it stores the mount's fd (`FDSTORE=1`) and takes it back at start (`LISTEN_FDS`).
/// Without the store, the mount would die with the first cafsd.
#[test]
fn systemds_fd_store_alone_keeps_a_mount_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let manager = cafs_tests::manager::Manager::start(tmp.path());
    let mut stack = Stack::start_managed(tmp.path(), &["--autocommit", "0"], manager);
    let dir = stack.job_dir("stored", JOB);
    let d = dir.to_str().unwrap().to_string();
    let once = Command::new(cafs_tests::mount::bin("cafs-mount"))
        .args([&d, "--ref", "stored", "--server"])
        .arg(&stack.socket)
        .arg("--allow-root")
        .arg(stack.base.join("jobs"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    ok(&once);
    let m = stack.manager().unwrap();
    // cafsd sent the fd before the mount was answered; the manager's thread reads it when it gets to it.
    let want = vec![cafs::daemon::systemd::fd_name(&dir)];
    cafs_tests::wait_for("the fd store message", Duration::from_secs(10), || m.stored() == want);
    assert_eq!(m.stored(), want, "cafsd stored the mount's fd");
    assert!(m.ready_count() >= 1, "cafsd said it is ready");

    let b = under_restarts(&mut stack, &dir, "store-kill9", 2, brutal);
    assert!(b.rounds > 20, "the workload ran: {}", b.line);
    assert_eq!(b.errors, 0, "kill -9 restarts with the fd store: no failed call but lost writes: {}", b.line);
    let g = under_restarts(&mut stack, &dir, "store-graceful", 2, graceful);
    assert!(g.rounds > 20, "the workload ran: {}", g.line);
    assert_eq!((g.errors, g.lost, g.mismatches), (0, 0, 0), "graceful restarts with the fd store: {}", g.line);
    // Each start took the one stored fd back, and none piled up.
    let m = stack.manager().unwrap();
    assert_eq!(m.stored(), vec![cafs::daemon::systemd::fd_name(&dir)]);
    assert!(m.odd().is_empty(), "unexpected notifications: {:?}", m.odd());

    let pdh = ok(&stack.fsctl(JOB, &["commit", &d, "-m", "after restarts"]));
    assert!(!pdh.trim().is_empty());
    ok(&stack.fsctl(JOB, &["umount", &d]));
    assert!(stack.mounts().is_empty());
    // An ended mount is dropped from the store, and its record with it.
    let start = Instant::now();
    while !stack.manager().unwrap().stored().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(10), "the ended mount's fd stays stored");
        std::thread::sleep(Duration::from_millis(50));
    }
    let records = std::fs::read_dir(stack.state().join("fdstore")).unwrap().count();
    assert_eq!(records, 0, "no record is left for an ended mount");
}
