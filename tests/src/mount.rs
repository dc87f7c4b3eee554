//! Real mounts for tests, by default through the production path: the helper `cafs-mount serve` as root, cafsd
//! as `nobody`, and the mount asked for with `fsctl mount`, so that the helper mounts and hands the fd over. The
//! development mode (cafsd mounting by itself, as root) is kept for the test of its own behaviour. A guard always
//! unmounts and stops what it started (by PID), also when the test fails. A mount that does not appear, or a
//! process that does not come up, fails the test.

use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::stack::{NOBODY, ok, spawn_as_nobody, wait_listening};
use crate::{run_bounded, terminate};

/// Path of a workspace binary, built once per test process if needed.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        // What cargo test sets for this test binary describes this package, not the build: left in, it makes
        // build scripts that watch it (ring's) rerun, rebuilding TLS in every test binary.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_BIN_EXE_")
                || ["CARGO_MANIFEST_DIR", "CARGO_MANIFEST_PATH", "CARGO_CRATE_NAME", "CARGO_PRIMARY_PACKAGE"]
                    .contains(&k.as_ref())
                || ["CARGO_TARGET_TMPDIR", "CARGO_RUSTC_CURRENT_DIR", "OUT_DIR"].contains(&k.as_ref())
            {
                cmd.env_remove(k.as_ref());
            }
        }
        let status = cmd
            .args(["build", "-q", "-p", "fs-server", "-p", "mount-helper", "--bins"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the binaries failed");
    });
    super::target_dir().join("debug").join(name)
}

/// Whether `dir` is a mount point now.
pub fn is_mounted(dir: &Path) -> bool {
    dir.canonicalize().is_ok_and(|canon| cafs_mount::mountinfo::is_mount_point(&canon))
}

/// A cafsd serving one mount.
pub struct MountedCafsd {
    pub dir: PathBuf,
    pub state: PathBuf,
    child: Option<Child>,
    /// The production path's helper daemon and cafsd's socket; `None` in the development mode.
    served: Option<Served>,
}

struct Served {
    helper: Child,
    socket: PathBuf,
}

/// What a test's arguments (cafsd's development-mode flags) ask of the production path: the mount's source
/// for `fsctl mount`, its own flags, and whether the helper must allow mounts for every user.
fn production_args(extra: &[&str]) -> (String, Vec<String>, bool) {
    let (mut source, mut mount, mut allow_other) = (None, Vec::new(), false);
    let mut it = extra.iter();
    while let Some(a) = it.next() {
        match *a {
            "--ref" | "--pdh" => source = Some(it.next().expect("a value").to_string()),
            "--autocommit" => mount.extend(["--autocommit".to_string(), it.next().expect("a value").to_string()]),
            "--allow-other" => allow_other = true,
            other => panic!("no production-path equivalent for {other}: use MountedCafsd::start_dev"),
        }
    }
    if allow_other {
        mount.push("--allow-other".into());
    }
    (source.expect("--ref or --pdh"), mount, allow_other)
}

impl MountedCafsd {
    /// Mounts `dir` through the production path with cafsd's state in `state`: the helper (allowed to mount
    /// below `dir`'s parent) and cafsd as `nobody`, each on sockets of its own next to `state`, then
    /// `fsctl mount` as root. `extra` takes the development mode's `--ref NAME` or `--pdh HASH`,
    /// `--autocommit SECS` and `--allow-other`. Waits (at most 30 s) for the mount.
    pub fn start(state: &Path, dir: &Path, extra: &[&str]) -> Self {
        let (source, mount_args, allow_other) = production_args(extra);
        let parent = dir.parent().expect("a mount point with a parent");
        // cafsd runs as nobody: it must reach its state directory through the test's directory.
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        std::fs::create_dir_all(state).unwrap();
        chown(state, Some(NOBODY), Some(NOBODY)).unwrap();
        // Fresh sockets for each start: a restart in the same test never meets the last one's.
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let run = state.with_file_name(format!(".run-{}", STARTS.fetch_add(1, Ordering::SeqCst)));
        let (cafsd_run, helper_run) = (run.join("cafsd"), run.join("helper"));
        for d in [&cafsd_run, &helper_run] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
        chown(&cafsd_run, Some(NOBODY), Some(NOBODY)).unwrap();
        let (socket, helper_socket) = (cafsd_run.join("cafsd.sock"), helper_run.join("mount.sock"));
        let mut helper = Command::new(bin("cafs-mount"));
        helper.arg("serve").arg("--listen").arg(&helper_socket).arg("--server").arg(&socket);
        helper.arg("--allow-root").arg(parent).stdin(Stdio::null());
        if allow_other {
            helper.arg("--allow-other");
        }
        let mut helper = helper.spawn().expect("start cafs-mount serve");
        wait_listening(&helper_socket, &mut helper, "cafs-mount serve");
        let mut m = Self {
            dir: dir.to_path_buf(),
            state: state.to_path_buf(),
            child: None,
            served: Some(Served { helper, socket: socket.clone() }),
        };
        let mut cafsd = spawn_as_nobody(
            Command::new(bin("cafsd"))
                .arg("--state-dir")
                .arg(state)
                .arg("--socket")
                .arg(&socket)
                .arg("--helper")
                .arg(&helper_socket),
        );
        wait_listening(&socket, &mut cafsd, "cafsd");
        m.child = Some(cafsd);
        let mut fsctl = m.fsctl(&["mount", &source]);
        fsctl.arg(dir).args(&mount_args);
        ok(&run_bounded(&mut fsctl, Duration::from_secs(120)));
        assert!(is_mounted(dir), "fsctl mount returned, but {} is not mounted", dir.display());
        m
    }

    /// Starts `cafsd --state-dir STATE --mount DIR` with `extra` arguments, cafsd's development mode (as root,
    /// mounting by itself), and waits (at most 30 s) for the mount.
    pub fn start_dev(state: &Path, dir: &Path, extra: &[&str]) -> Self {
        Self::spawn_dev(state, dir, extra, Stdio::inherit())
    }

    /// [`MountedCafsd::start_dev`], with cafsd's log (its stderr) written to `log`.
    pub fn start_dev_logged(state: &Path, dir: &Path, extra: &[&str], log: &Path) -> Self {
        Self::spawn_dev(state, dir, extra, std::fs::File::create(log).unwrap().into())
    }

    fn spawn_dev(state: &Path, dir: &Path, extra: &[&str], stderr: Stdio) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let child = Command::new(bin("cafsd"))
            .arg("--state-dir")
            .arg(state)
            .arg("--mount")
            .arg(dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start cafsd");
        let mut m = Self { dir: dir.to_path_buf(), state: state.to_path_buf(), child: Some(child), served: None };
        let start = Instant::now();
        while !is_mounted(dir) {
            if let Some(status) = m.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("cafsd exited ({status}) before mounting {}", dir.display());
            }
            assert!(start.elapsed() < Duration::from_secs(30), "{} was not mounted within 30 s", dir.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    /// `fsctl ARGS` aimed at this mount's cafsd, as root (production path only).
    fn fsctl(&self, args: &[&str]) -> Command {
        let served = self.served.as_ref().expect("a mount through the production path");
        let mut cmd = Command::new(bin("fsctl"));
        cmd.arg("--server").arg(&served.socket).args(args).stdin(Stdio::null());
        cmd
    }

    /// The cafsd process's PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Unmounts, committing a changed tree, and stops cafsd (SIGTERM; at most 60 s). Returns cafsd's exit status
    /// and the hash the mount ended at as printed: by `fsctl umount` on the production path, by cafsd itself in
    /// the development mode (which prints only the hash of a commit made on unmount).
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        let mut out = String::new();
        if self.served.is_some() {
            let dir = self.dir.to_str().expect("a UTF-8 mount point").to_string();
            out = ok(&run_bounded(&mut self.fsctl(&["umount", &dir]), Duration::from_secs(300)));
        }
        let mut child = self.child.take().expect("running");
        let status = terminate(&mut child, Duration::from_secs(60)).expect("cafsd exits within 60 s of SIGTERM");
        if let Some(mut o) = child.stdout.take() {
            use std::io::Read;
            o.read_to_string(&mut out).unwrap();
        }
        assert!(!is_mounted(&self.dir), "cafsd exited but {} is still mounted", self.dir.display());
        (status, out)
    }
}

impl MountedCafsd {
    /// SIGKILL (a crash); then `before_detach` (stop whatever still uses the mount: once the dead mount is
    /// detached, its path names the directory underneath, and a process still writing there would write
    /// there); then detach the dead mount. On the production path the helper is killed with cafsd, before
    /// anything waits on the mount: the device fd it holds would keep the connection up with nobody answering,
    /// and a process in a request would wait unkillably. The next start recovers the tree from the journal.
    pub fn kill(mut self, before_detach: impl FnOnce()) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
        if let Some(mut s) = self.served.take() {
            s.helper.kill().unwrap();
            s.helper.wait().unwrap();
        }
        before_detach();
        assert!(Command::new("umount").arg("-l").arg(&self.dir).status().unwrap().success());
    }
}

impl Drop for MountedCafsd {
    fn drop(&mut self) {
        if is_mounted(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(mut s) = self.served.take() {
            let _ = s.helper.kill();
            let _ = s.helper.wait();
        }
    }
}
