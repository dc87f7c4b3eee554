//! The unit files in `systemd/`, installed as they are, under the distribution's real systemd booted as PID 1 of a
//! private container (see `cafs_tests::booted`): socket activation of the helper; cafsd's `Type=notify`
//! readiness, dynamic user, fd limit, stop timeout and optional config (passed as a credential, root's 0600 file);
//! every holder of the mounts while cafsd goes away under a running workload of an unprivileged user (`systemctl
//! restart` with the fd store and the helper daemon, stop then start with the helper alone, `systemctl restart`
//! with the store alone, then `kill -9` and the automatic restart); the boot-time mounts (`cafs-collection@NAME`,
//! `cafs-namespace`) left alone by those restarts and committing at stop; a clean stop of everything and
//! poweroff. Needs root, /dev/fuse and systemd (`/lib/systemd/systemd`); it fails, never skips, when the
//! container cannot boot.

use std::os::unix::fs::{PermissionsExt, chown};
use std::path::Path;
use std::time::{Duration, Instant};

use cafs_tests::booted::Booted;
use cafs_tests::mount::bin;
use cafs_tests::wait_for;

/// The unprivileged user whose mounts and workload these are.
const JOB: u32 = 1000;

const UNITS: &[&str] =
    &["cafs-collection@.service", "cafs-mount.service", "cafs-mount.socket", "cafs-namespace.service", "cafsd.service"];

/// Writes, fsyncs, reads back and lists files in a directory until the stop file appears; every failed call and
/// every wrong byte is counted (never fatal) and printed. Prints `rounds errors mismatches` at the end.
const WORKLOAD: &str = r#"
import os, random, sys
d, stop = sys.argv[1], sys.argv[2]
rnd = random.Random(5)
rounds = errors = mismatches = 0
while not os.path.exists(stop):
    name = os.path.join(d, f"w{rounds % 40}")
    data = rnd.randbytes(rnd.choice([0, 100, 4096, 70_000, rnd.randrange(1, 300_000)]))
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, data)
        if rounds % 2 == 0:
            os.fsync(fd)
        os.close(fd)
        # os.open, not open(): Python's open() asks every file whether it is a terminal (an ioctl cafs does not
        # implement, logged each time).
        fd = os.open(name, os.O_RDONLY)
        got = b""
        while chunk := os.read(fd, 1 << 20):
            got += chunk
        os.close(fd)
        if got != data:
            mismatches += 1
            print(f"MISMATCH {name}", file=sys.stderr, flush=True)
        if rounds % 10 == 0:
            os.listdir(d)
    except OSError as e:
        errors += 1
        print(f"FAILED {name}: {e!r}", file=sys.stderr, flush=True)
    rounds += 1
print(rounds, errors, mismatches, flush=True)
"#;

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Writes `content` at the container's `path` (from the host, through its root) with `mode`.
fn put(sys: &Booted, path: &str, content: &str, mode: u32) {
    let p = sys.path(path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, content).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A directory in the container owned by `uid`.
fn dir_for(sys: &Booted, path: &str, uid: u32) {
    let p = sys.path(path);
    std::fs::create_dir_all(&p).unwrap();
    chown(&p, Some(uid), Some(uid)).unwrap();
}

/// `fsctl ARGS` in the container as `uid`, asserting success; its stdout.
fn fsctl(sys: &Booted, uid: u32, args: &[&str]) -> String {
    let mut argv = vec!["fsctl", "--server", "/run/cafs/cafsd.sock"];
    argv.extend_from_slice(args);
    let out = cafs_tests::run_bounded(&mut sys.command_as(uid, &argv), Duration::from_secs(60));
    assert!(out.status.success(), "fsctl {args:?} as {uid}: {}\n{}", text(&out), sys.journal(Some("cafsd.service")));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The versions `fsctl log REF` lists (0 for a ref that does not exist yet).
fn versions(sys: &Booted, r: &str) -> usize {
    let out = cafs_tests::run_bounded(
        &mut sys.command(&["fsctl", "--server", "/run/cafs/cafsd.sock", "log", "--json", r]),
        Duration::from_secs(60),
    );
    if !out.status.success() {
        return 0;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    v.as_array().map_or(0, Vec::len)
}

/// cafsd's own stop timeout in seconds: `--stop-timeout` in the unit's ExecStart=, else the default its `--help`
/// gives.
fn stop_timeout(unit: &str) -> f64 {
    let exec = unit.lines().find(|l| l.starts_with("ExecStart=")).expect("ExecStart=");
    let args: Vec<&str> = exec.split_whitespace().collect();
    if let Some(i) = args.iter().position(|a| *a == "--stop-timeout") {
        return args[i + 1].parse().unwrap();
    }
    let help = std::process::Command::new(bin("cafsd")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let line = help.lines().find(|l| l.contains("--stop-timeout")).expect("--stop-timeout in cafsd --help");
    line.split("[default: ").nth(1).and_then(|d| d.split(']').next()).unwrap().parse().unwrap()
}

/// A systemd time span as `systemctl show` prints it (`2min`, `1min 30s`, `500ms`), in seconds.
fn seconds(span: &str) -> f64 {
    span.split_whitespace()
        .map(|part| {
            let at = part.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(part.len());
            let (n, unit) = part.split_at(at);
            let n: f64 = n.parse().unwrap_or_else(|_| panic!("time span {span:?}"));
            n * match unit {
                "h" => 3600.0,
                "min" => 60.0,
                "s" | "" => 1.0,
                "ms" => 0.001,
                "us" => 0.000_001,
                _ => panic!("time span {span:?}"),
            }
        })
        .sum()
}

#[test]
fn the_units_work_under_a_booted_systemd() {
    let started = Instant::now();
    let bin_dir = bin("cafsd").parent().unwrap().to_path_buf();
    let sys = Booted::boot(&bin_dir, &["cafsd", "cafs-mount", "fsctl"]);
    eprintln!("booted in {:?}", started.elapsed());
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd");
    for u in UNITS {
        let unit = std::fs::read_to_string(src.join(u)).unwrap();
        put(&sys, &format!("/etc/systemd/system/{u}"), &unit, 0o644);
    }
    // A config only root can read, as a node's would be: the unit must hand it to the dynamic user.
    put(&sys, "/etc/cafs/cafsd.toml", "[namespace]\nwritable = [\"shared\"]\n", 0o600);
    sys.systemctl(&["daemon-reload"]);

    // 1. Socket activation: the helper runs from the first connection on, not before.
    sys.systemctl(&["start", "cafs-mount.socket"]);
    assert_eq!(sys.is_active("cafs-mount.service"), "inactive", "the helper started before any connection");
    let sock = sys.path("/run/cafs-mount/mount.sock");
    let meta = std::fs::metadata(sock.parent().unwrap()).unwrap();
    assert_eq!((meta.permissions().mode() & 0o7777, std::os::unix::fs::MetadataExt::uid(&meta)), (0o755, 0));
    let conn = std::os::unix::net::UnixStream::connect(&sock).expect("connect to the helper's socket");
    wait_for("the helper activated by a connection", Duration::from_secs(20), || {
        sys.is_active("cafs-mount.service") == "active"
    });
    drop(conn);

    // 2. cafsd: `systemctl start` returns once it said READY=1, and then both its sockets accept; it runs as a
    // dynamic user that owns its state directory.
    sys.systemctl(&["start", "cafsd.service"]);
    assert_eq!(sys.property("cafsd.service", "Type"), "notify");
    assert_eq!(sys.property("cafsd.service", "SubState"), "running");
    for s in ["/run/cafs/cafsd.sock", "/run/cafs/cafsd.fd.sock"] {
        std::os::unix::net::UnixStream::connect(sys.path(s)).unwrap_or_else(|e| panic!("{s} once ready: {e}"));
    }
    let pid = sys.property("cafsd.service", "MainPID");
    let status = std::fs::read_to_string(sys.path(&format!("/proc/{pid}/status"))).unwrap();
    let uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((61184..=65519).contains(&uid), "cafsd runs as uid {uid}, not a dynamic one");
    let state = std::fs::metadata(sys.path("/var/lib/cafs/")).expect("the state directory");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&state), uid, "/var/lib/cafs is not the dynamic user's");
    assert!(sys.path("/var/lib/cafs/catalog.sqlite").exists(), "cafsd's catalog is not in /var/lib/cafs");
    let limits = std::fs::read_to_string(sys.path(&format!("/proc/{pid}/limits"))).unwrap();
    let nofile: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse().ok())
        .unwrap();
    let store_max: u64 = sys.property("cafsd.service", "FileDescriptorStoreMax").parse().unwrap();
    assert!(nofile > store_max, "cafsd's fd limit {nofile} does not hold the {store_max} fds its store may pass back");
    // systemd's stop timeout leaves cafsd its own (`--stop-timeout`, from the unit or cafsd's default) and more.
    let own = stop_timeout(&std::fs::read_to_string(src.join("cafsd.service")).unwrap());
    let systemds = seconds(&sys.property("cafsd.service", "TimeoutStopUSec"));
    assert!(systemds > own, "TimeoutStopSec= ({systemds} s) would kill cafsd within its own stop timeout ({own} s)");

    // 4 (first half). The boot-time mounts start.
    dir_for(&sys, "/mnt/results", JOB);
    put(&sys, "/etc/cafs/collection-results.env", "CAFS_MOUNTPOINT=/mnt/results\nCAFS_REF=results\n", 0o644);
    sys.systemctl(&["start", "cafs-collection@results.service", "cafs-namespace.service"]);
    let fuse = sys.mounts_of("fuse.cafs");
    for m in ["/mnt/results", "/mnt/cafs"] {
        assert!(fuse.iter().any(|f| f == m), "{m} not mounted: {fuse:?}\n{}", sys.journal(None));
    }
    let out = cafs_tests::run_bounded(
        &mut sys.command_as(JOB, &["sh", "-c", "echo result > /mnt/results/out.txt"]),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "writing to the collection: {}", text(&out));
    let entered = |u: &str| sys.property(u, "ActiveEnterTimestampMonotonic");
    let boot_units = ["cafs-collection@results.service", "cafs-namespace.service"];
    let entered_before: Vec<String> = boot_units.iter().map(|u| entered(u)).collect();

    // 3. The fd store: a mount of the job's, a workload in it, and cafsd taken down three times under it —
    // `systemctl restart` with the helper daemon holding the mounts too, stop then start (the store emptied: the
    // helper alone carries them), and `systemctl restart` with the helper restarted first (its copies gone), so
    // that only systemd's store carries them.
    dir_for(&sys, "/mnt/job", JOB);
    fsctl(&sys, JOB, &["mount", "work", "/mnt/job"]);
    let stop = sys.path("/tmp/workload.stop");
    let _ = std::fs::remove_file(&stop);
    // Its output goes to a file: a pipe nobody reads until the end could fill up and stall it.
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut workload = sys
        .command_as(JOB, &["python3", "-c", WORKLOAD, "/mnt/job", "/tmp/workload.stop"])
        .stdout(log.reopen().unwrap())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let main_pid = || sys.property("cafsd.service", "MainPID");
    let store_lines = || sys.journal_grep("cafsd.service", "took over the mounts systemd's fd store held");
    let helper_lines = || sys.journal_grep("cafsd.service", "took over the mounts the helper held");
    let first = main_pid();
    std::thread::sleep(Duration::from_millis(1500));
    // Restart: the store and the helper both hold the mounts; the store gives them back first.
    sys.systemctl(&["restart", "cafsd.service"]);
    assert_eq!(store_lines().len(), 1, "the fd store did not give the mounts back at the restart");
    std::thread::sleep(Duration::from_millis(1500));
    // Stop, then start: systemd 252 empties the store at the stop, and the helper alone gives the mounts back.
    sys.systemctl(&["stop", "cafsd.service"]);
    std::thread::sleep(Duration::from_millis(500));
    sys.systemctl(&["start", "cafsd.service"]);
    assert_eq!(store_lines().len(), 1, "the fd store outlived a stop: README says systemd 252 empties it");
    let last = helper_lines().pop().unwrap_or_default();
    assert!(last.contains("3 mounts handed over"), "the helper did not give the three mounts back: {last}");
    std::thread::sleep(Duration::from_millis(1500));
    // A new helper holds nothing (it does not get the mounts back): now only systemd's store keeps them.
    sys.systemctl(&["restart", "cafs-mount.service"]);
    sys.systemctl(&["restart", "cafsd.service"]);
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(&stop, "").unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = workload.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = workload.kill();
            let _ = workload.wait();
            panic!("the workload did not stop within 60 s\n{}", sys.journal(Some("cafsd.service")));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let report = std::fs::read_to_string(log.path()).unwrap();
    assert!(status.success(), "the workload ({status}): {report}");
    // The last line is the counts; anything before it names a failure.
    let counts: Vec<u64> =
        report.lines().last().unwrap_or("").split_whitespace().filter_map(|n| n.parse().ok()).collect();
    eprintln!("workload across three restarts of cafsd: rounds, failed calls, wrong reads = {counts:?}");
    assert_eq!(counts.len(), 3, "{report}");
    assert_eq!((counts[1], counts[2]), (0, 0), "failed calls or wrong reads across the restarts:\n{report}");
    assert!(counts[0] > 10, "the workload hardly ran: {report}");
    assert_ne!(main_pid(), first, "cafsd was not restarted");
    let taken = store_lines();
    assert!(
        taken.len() == 2 && taken.iter().all(|l| l.contains("mounts=3")),
        "cafsd did not get the three mounts back from the fd store at each restart: {taken:?}\n{}",
        sys.journal(Some("cafsd.service"))
    );
    assert!(sys.mounts_of("fuse.cafs").iter().any(|m| m == "/mnt/job"), "the job's mount went away");

    // A crash, with the helper restarted first so that again only the store holds the mounts: systemd restarts
    // cafsd (Restart=on-failure) and keeps the store across that automatic restart.
    sys.systemctl(&["restart", "cafs-mount.service"]);
    let before = main_pid();
    sys.systemctl(&["kill", "--signal=SIGKILL", "cafsd.service"]);
    wait_for("cafsd restarted by systemd after SIGKILL", Duration::from_secs(30), || {
        let now = main_pid();
        now != before && now != "0" && sys.property("cafsd.service", "SubState") == "running"
    });
    let taken = store_lines();
    assert_eq!(taken.len(), 3, "the fd store did not survive the automatic restart: {taken:?}");
    let out = cafs_tests::run_bounded(
        &mut sys.command_as(JOB, &["sh", "-c", "ls /mnt/job >/dev/null && echo crash > /mnt/job/c && cat /mnt/job/c"]),
        Duration::from_secs(30),
    );
    assert_eq!(text(&out).trim(), "crash", "the job's mount after cafsd was killed and restarted");

    // 4 (second half). The restarts left the boot-time mounts alone: the same units' runs, still mounted.
    let entered_after: Vec<String> = boot_units.iter().map(|u| entered(u)).collect();
    assert_eq!(entered_before, entered_after, "restarting cafsd restarted the boot-time mounts' units");
    // (cafsd commits a mount that commits by itself when it stops, so the ref may have moved: counted from here.)
    let results_before = versions(&sys, "results");
    let out = cafs_tests::run_bounded(
        &mut sys.command_as(JOB, &["sh", "-c", "echo after > /mnt/results/after.txt"]),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "writing to the collection after the restarts: {}", text(&out));
    let fuse = sys.mounts_of("fuse.cafs");
    assert!(["/mnt/results", "/mnt/cafs"].iter().all(|m| fuse.iter().any(|f| f == m)), "{fuse:?}");
    // The namespace's writable ref comes from the config: the dynamic user read it.
    let out = cafs_tests::run_bounded(
        &mut sys.command(&["sh", "-c", "mkdir /mnt/cafs/by_ref/shared && echo shared > /mnt/cafs/by_ref/shared/s.txt"]),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "writing a ref the config makes writable: {}", text(&out));
    sys.systemctl(&["stop", "cafs-collection@results.service", "cafs-namespace.service"]);
    assert_eq!(versions(&sys, "results"), results_before + 1, "stopping cafs-collection@results did not commit");
    assert_eq!(versions(&sys, "shared"), 1, "stopping cafs-namespace did not commit the writable ref");
    fsctl(&sys, JOB, &["umount", "/mnt/job"]);
    assert!(versions(&sys, "work") >= 1, "unmounting the job's mount did not commit");

    // Without /etc/cafs/cafsd.toml cafsd starts on the embedded default (the unit's fallback credential).
    sys.systemctl(&["stop", "cafsd.service"]);
    std::fs::remove_file(sys.path("/etc/cafs/cafsd.toml")).unwrap();
    sys.systemctl(&["start", "cafsd.service"]);
    assert_eq!(sys.property("cafsd.service", "SubState"), "running");
    fsctl(&sys, JOB, &["status"]);

    // 5. Everything stops cleanly, and the container powers off by itself.
    sys.systemctl(&["stop", "cafsd.service", "cafs-mount.service", "cafs-mount.socket"]);
    for u in ["cafsd.service", "cafs-mount.service", "cafs-mount.socket"] {
        let state = sys.is_active(u);
        assert_eq!(state, "inactive", "{u} is {state}");
    }
    let fuse = sys.mounts_of("fuse.cafs");
    assert!(fuse.is_empty(), "mounts left after stopping everything: {fuse:?}");
    assert!(sys.poweroff(Duration::from_secs(30)), "the container did not power off within 30 s");
    let left = Booted::left_behind(&Booted::name_prefix());
    assert!(left.is_empty(), "left on the host: {left:?}");
    eprintln!("the whole run took {:?}", started.elapsed());
}
