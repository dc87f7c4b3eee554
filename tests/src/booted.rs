//! The distribution's systemd booted as PID 1 of a private container, for tests of the unit files under the real
//! service manager: new mount, UTS, IPC, network, PID and cgroup namespaces, a root that is an overlay of the
//! host's `/` (writes land in a tmpfs that dies with the namespace), and cafs's binaries bound into the
//! container's `/usr/local/bin`, where the units name them. The test drives it from outside with `nsenter`.
//!
//! Never on the host's own `/`: systemd's tmpfiles rules would clean the host's `/tmp` and its sysctl rules
//! would change the host. The container gets its own cgroup (a child of the host's cgroup v2 root), and
//! `sys-fs-fuse-connections.mount` is masked: its control files would let the container abort the host's FUSE
//! mounts. Dropping [`Booted`] powers the container off (or kills it), then removes its cgroup directories and
//! the directory the overlay lived in, by path and PID only, also when the test fails. Every wait is bounded,
//! and a container that does not come up fails the test.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::run_bounded;

/// The distribution's systemd.
pub const SYSTEMD: &str = "/lib/systemd/systemd";

/// Units that must not run in the container: gettys (no terminals), time sync (the host's clock), and the FUSE
/// control filesystem (it reaches the host's FUSE connections).
const MASKED: &[&str] = &[
    "console-getty.service",
    "getty@.service",
    "serial-getty@.service",
    "sys-fs-fuse-connections.mount",
    "systemd-timesyncd.service",
];

/// Runs as PID 1 of the new namespaces: moves itself into the payload cgroup and makes that the root of a new
/// cgroup namespace (a second pass of the same script), builds the container's root (an overlay of `/` with
/// its own `/dev`, `/proc`, read-only `/sys`, a cgroup2 mount and fresh `/tmp` and `/var/tmp`), masks units,
/// binds the binaries in, switches root, makes every mount shared (private to this namespace's peer groups: the
/// host's mounts were made private copies by `unshare --propagation private`) and becomes systemd. The
/// `/.oldroot` detach keeps no host mount inside.
const INNER: &str = r#"
set -eu
if [ -z "${CAFS_BOOT_CGNS:-}" ]; then
    echo 0 > "$CAFS_BOOT_CG/payload/cgroup.procs"
    CAFS_BOOT_CGNS=1 exec unshare --cgroup sh -c "$CAFS_BOOT_SCRIPT"
fi
B=$CAFS_BOOT_BASE
R=$B/root
mount -t tmpfs ns-rw "$B"
mkdir "$B/upper" "$B/work" "$R"
mount -t overlay overlay -o "lowerdir=/,upperdir=$B/upper,workdir=$B/work" "$R"
mount -t tmpfs -o mode=755,nosuid dev "$R/dev"
for d in null zero full random urandom tty fuse; do
    touch "$R/dev/$d"
    mount --bind "/dev/$d" "$R/dev/$d"
done
mkdir "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=666 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mount -t proc proc "$R/proc"
mount --bind "$R/proc/sys" "$R/proc/sys"
mount -o remount,bind,ro "$R/proc/sys"
mount -t sysfs -o ro sysfs "$R/sys"
mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup"
mount -t tmpfs tmp "$R/tmp"
mount -t tmpfs vartmp "$R/var/tmp"
mkdir -p "$R/etc/systemd/system" "$R/usr/local/bin"
for u in $CAFS_BOOT_MASK; do ln -sfn /dev/null "$R/etc/systemd/system/$u"; done
# Bound in, not linked: the binaries may live under /tmp, which the container's own tmpfs hides.
for b in $CAFS_BOOT_BINS; do
    rm -f "$R/usr/local/bin/$b"
    touch "$R/usr/local/bin/$b"
    mount --bind "$CAFS_BOOT_BIN_DIR/$b" "$R/usr/local/bin/$b"
done
cd "$R"
mkdir .oldroot
pivot_root . .oldroot
umount -l /.oldroot
rmdir /.oldroot
# Shared, as a container manager leaves it: systemd makes / shared only on a host, and without it a mount made in
# a service's set-up namespace (the credentials directory) never reaches the service.
mount --make-rshared /
exec setpriv --bounding-set=-sys_module,-sys_time,-sys_rawio env -i container=other /lib/systemd/systemd --unit=basic.target
"#;

/// A booted container. See the module documentation.
pub struct Booted {
    /// The container's cgroup on the host (`supervisor/` holds the host-side `unshare`, `payload/` the container).
    cgroup: PathBuf,
    /// Where the container's tmpfs (overlay upper layer and work directory) is mounted, inside only.
    base: PathBuf,
    /// What the container's boot printed (the script's errors; systemd logs to its journal).
    log: PathBuf,
    /// The host-side `unshare`: killing it takes the whole PID namespace down (`--kill-child`).
    unshare: Option<Child>,
    /// systemd's PID on the host.
    init: u32,
}

fn cgroup2_root() -> PathBuf {
    // A pure cgroup v2 host has it at /sys/fs/cgroup; a hybrid one at /sys/fs/cgroup/unified.
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.max.depth").exists())
        .expect("no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified")
}

/// The PIDs in `dir` and every cgroup below it.
fn cgroup_pids(dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            stack.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
    }
    out
}

/// Removes what containers of test processes that no longer exist left behind (a test killed outright has no
/// Drop): their empty cgroup directories, empty overlay directories and boot logs. Names carry the test's PID.
fn sweep_stale() {
    let stale = |name: &str| {
        let pid = name.strip_prefix("cafs-boot-").and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok());
        pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists())
    };
    let names = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|rd| rd.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| stale(&n.to_string_lossy())))
            .collect()
    };
    for cg in names(&cgroup2_root()) {
        if cgroup_pids(&cg).is_empty() {
            remove_cgroup(&cg);
        }
    }
    for p in names(Path::new("/var/tmp")) {
        // rmdir, never a recursive delete: the overlay's directory is empty once its namespace is gone.
        let _ = if p.is_dir() { std::fs::remove_dir(&p) } else { std::fs::remove_file(&p) };
    }
}

/// Removes the cgroup directory `dir` and every one below it, deepest first (a cgroup directory goes only once
/// its children have).
fn remove_cgroup(dir: &Path) {
    let mut dirs = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(entries) = std::fs::read_dir(&d) {
            stack.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
        dirs.push(d);
    }
    for d in dirs.iter().rev() {
        let _ = std::fs::remove_dir(d);
    }
}

/// Whether host PID `pid` is PID 1 of a PID namespace below the host's, running systemd.
fn is_container_init(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let nspid = status.lines().find_map(|l| l.strip_prefix("NSpid:")).unwrap_or("");
    let ids: Vec<&str> = nspid.split_whitespace().collect();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    ids.len() == 2 && ids[1] == "1" && comm.trim() == "systemd"
}

impl Booted {
    /// Boots systemd to `basic.target` with `bins` (names in `bin_dir`) bound onto files in `/usr/local/bin`, and
    /// waits (at most 60 s) for `systemctl is-system-running --wait`. Fails the test when the container does not come
    /// up, with what its boot printed.
    pub fn boot(bin_dir: &Path, bins: &[&str]) -> Self {
        assert!(nix::unistd::geteuid().is_root(), "booting systemd in a namespace needs root");
        assert!(Path::new(SYSTEMD).is_file(), "{SYSTEMD} is missing: install the distribution's systemd");
        sweep_stale();
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("cafs-boot-{}-{seq}", std::process::id());
        let cgroup = cgroup2_root().join(&name);
        let base = PathBuf::from("/var/tmp").join(format!("{name}.ns"));
        let log_path = PathBuf::from("/var/tmp").join(format!("{name}.log"));
        for d in [cgroup.join("supervisor"), cgroup.join("payload"), base.clone()] {
            std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        }
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut me = Self { cgroup, base, log: log_path, unshare: None, init: 0 };
        let log = std::fs::File::create(&me.log).unwrap();
        // The shell moves itself into the supervisor cgroup first, so that the host-side `unshare` is not in
        // the cgroup that becomes the container's root.
        let mut cmd = Command::new("sh");
        // SAFETY: the closure only calls prctl(2), which is async-signal-safe, in the forked child. A test process
        // killed outright (no Drop) then takes the container with it: the signal reaches `unshare`, whose death
        // kills PID 1 of the namespace (`--kill-child`).
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .arg("-c")
            .arg(concat!(
                r#"echo 0 > "$CAFS_BOOT_CG/supervisor/cgroup.procs" && "#,
                "exec unshare --mount --uts --ipc --net --pid --fork --kill-child --propagation private ",
                r#"sh -c "$CAFS_BOOT_SCRIPT""#
            ))
            .env("CAFS_BOOT_CG", &me.cgroup)
            .env("CAFS_BOOT_BASE", &me.base)
            .env("CAFS_BOOT_SCRIPT", INNER)
            .env("CAFS_BOOT_MASK", MASKED.join(" "))
            .env("CAFS_BOOT_BINS", bins.join(" "))
            .env("CAFS_BOOT_BIN_DIR", bin_dir)
            .env_remove("CAFS_BOOT_CGNS")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start unshare");
        me.unshare = Some(child);
        let start = Instant::now();
        let limit = Duration::from_secs(30);
        loop {
            if let Some(status) = me.unshare.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("the container exited ({status}) while booting:\n{}", me.boot_log());
            }
            let init = cgroup_pids(&me.cgroup.join("payload")).into_iter().find(|&p| is_container_init(p));
            if let Some(init) = init.filter(|p| Path::new(&format!("/proc/{p}/root/run/systemd/private")).exists()) {
                me.init = init;
                break;
            }
            assert!(start.elapsed() < limit, "systemd did not start within {limit:?}:\n{}", me.boot_log());
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = me.run(&["systemctl", "is-system-running", "--wait"], Duration::from_secs(60));
        let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
        // `degraded` is a unit of the distribution's that cannot run in a container; the units under test are
        // checked one by one.
        assert!(
            state == "running" || state == "degraded",
            "the container's systemd is {state:?}:\n{}\n{}",
            me.journal(None),
            me.boot_log()
        );
        me
    }

    /// systemd's PID on the host.
    pub fn init(&self) -> u32 {
        self.init
    }

    /// The container's root as the host reaches it (`/proc/INIT/root`): a path inside is `root().join(rel)`.
    pub fn root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.init))
    }

    /// The host path of the container's absolute path `path`.
    pub fn path(&self, path: &str) -> PathBuf {
        self.root().join(path.trim_start_matches('/'))
    }

    /// A command run inside the container (every namespace of its systemd, its root and working directory), as
    /// root, with a plain environment.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.init.to_string(), "-a", "-r", "-w", "--"])
            .args(argv)
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C.UTF-8")
            .env("SYSTEMD_PAGER", "cat")
            .stdin(Stdio::null());
        cmd
    }

    /// As [`Booted::command`], as `uid` (its group the same number, no supplementary groups).
    pub fn command_as(&self, uid: u32, argv: &[&str]) -> Command {
        let (u, g) = (format!("--reuid={uid}"), format!("--regid={uid}"));
        let mut full = vec!["setpriv", u.as_str(), g.as_str(), "--clear-groups", "--"];
        full.extend_from_slice(argv);
        self.command(&full)
    }

    /// Runs `argv` inside to completion (at most `limit`).
    pub fn run(&self, argv: &[&str], limit: Duration) -> Output {
        run_bounded(&mut self.command(argv), limit)
    }

    /// `systemctl ARGS` inside (at most 120 s: a stop may take cafsd's own stop time), asserting success; its
    /// stdout. On failure the message carries the journal.
    pub fn systemctl(&self, args: &[&str]) -> String {
        let mut argv = vec!["systemctl"];
        argv.extend_from_slice(args);
        let out = self.run(&argv, Duration::from_secs(120));
        assert!(
            out.status.success(),
            "systemctl {args:?} failed ({}): {}{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.journal(None)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A unit's property (`systemctl show -P`).
    pub fn property(&self, unit: &str, name: &str) -> String {
        self.systemctl(&["show", "-P", name, unit]).trim().to_string()
    }

    /// `systemctl is-active UNIT` (it exits non-zero for anything but `active`, so it is not asserted).
    pub fn is_active(&self, unit: &str) -> String {
        let out = self.run(&["systemctl", "is-active", unit], Duration::from_secs(30));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The journal of `unit` (all of it without one), last 300 lines, for failure messages.
    pub fn journal(&self, unit: Option<&str>) -> String {
        let mut argv = vec!["journalctl", "--no-pager", "-o", "short-monotonic", "-n", "300"];
        if let Some(u) = unit {
            argv.extend(["-u", u]);
        }
        let out = self.run(&argv, Duration::from_secs(30));
        format!("--- journal {}:\n{}", unit.unwrap_or("(all)"), String::from_utf8_lossy(&out.stdout))
    }

    /// Every line of `unit`'s journal (message text only) that contains `needle`.
    pub fn journal_grep(&self, unit: &str, needle: &str) -> Vec<String> {
        let out = self.run(&["journalctl", "--no-pager", "-o", "cat", "-u", unit], Duration::from_secs(30));
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(needle)).map(str::to_string).collect()
    }

    /// The container's mount points of filesystem type `fstype` (its mount table, read from the host).
    pub fn mounts_of(&self, fstype: &str) -> Vec<String> {
        let table = std::fs::read_to_string(format!("/proc/{}/mounts", self.init)).unwrap_or_default();
        table
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f.len() > 2 && f[2] == fstype).then(|| f[1].to_string())
            })
            .collect()
    }

    fn boot_log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        format!("--- boot output:\n{s}")
    }

    /// Powers the container off (`SIGRTMIN+4`, systemd's request for a clean poweroff) and waits for it to end
    /// (at most `limit`). Returns whether it ended by itself; past the limit it is killed. Then cleans up.
    pub fn poweroff(mut self, limit: Duration) -> bool {
        self.shut_down(limit)
    }

    fn shut_down(&mut self, limit: Duration) -> bool {
        let Some(mut child) = self.unshare.take() else { return true };
        let mut clean = false;
        if self.init != 0 && is_container_init(self.init) {
            // SAFETY: kill(2) sends a signal to the container's init, checked just above to be that process.
            unsafe { libc::kill(self.init as libc::pid_t, libc::SIGRTMIN() + 4) };
            let start = Instant::now();
            while start.elapsed() < limit {
                if let Ok(Some(_)) = child.try_wait() {
                    clean = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if !clean {
            // `unshare --kill-child`: its death takes PID 1 of the namespace, and with it every process inside.
            let _ = child.kill();
            let _ = child.wait();
        }
        self.remove_dirs();
        clean
    }

    /// Removes the cgroup directories (once the processes in them are gone, at most 10 s) and the base and log.
    fn remove_dirs(&self) {
        let start = Instant::now();
        while !cgroup_pids(&self.cgroup).is_empty() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        remove_cgroup(&self.cgroup);
        // The overlay's tmpfs was mounted in the container's mount namespace only: here this is an empty directory.
        let _ = std::fs::remove_dir(&self.base);
        let _ = std::fs::remove_file(&self.log);
    }

    /// What containers left on the host: entries of the cgroup root and of /var/tmp whose names start with
    /// `prefix` (none once each [`Booted`] of this process has powered off or been dropped).
    pub fn left_behind(prefix: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for dir in [cgroup2_root(), PathBuf::from("/var/tmp")] {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                out.extend(
                    entries
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix))),
                );
            }
        }
        out
    }

    /// The prefix of everything this process's containers make on the host.
    pub fn name_prefix() -> String {
        format!("cafs-boot-{}-", std::process::id())
    }
}

impl Drop for Booted {
    fn drop(&mut self) {
        self.shut_down(Duration::from_secs(15));
    }
}
