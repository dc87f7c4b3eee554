//! Real mounts for tests: cafsd in its root development mode, started as a child process, with a guard that
//! always unmounts and stops it (by PID), also when the test fails. A mount that does not appear fails the test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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
}

impl MountedCafsd {
    /// Starts `cafsd --state-dir STATE --mount DIR` with `extra` arguments and waits (at most 30 s) for the mount.
    pub fn start(state: &Path, dir: &Path, extra: &[&str]) -> Self {
        Self::spawn(state, dir, extra, Stdio::inherit())
    }

    /// [`MountedCafsd::start`], with cafsd's log (its stderr) written to `log`.
    pub fn start_logged(state: &Path, dir: &Path, extra: &[&str], log: &Path) -> Self {
        Self::spawn(state, dir, extra, std::fs::File::create(log).unwrap().into())
    }

    fn spawn(state: &Path, dir: &Path, extra: &[&str], stderr: Stdio) -> Self {
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
        let mut m = Self { dir: dir.to_path_buf(), state: state.to_path_buf(), child: Some(child) };
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

    /// The cafsd process's PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM, then wait (at most 60 s): cafsd unmounts, commits a changed tree and exits. Returns its exit
    /// status and what it printed (the PDH of a commit on unmount).
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        let pid = child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("cafsd did not exit within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut out = String::new();
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
    /// there); then detach the dead mount.
    pub fn kill(mut self, before_detach: impl FnOnce()) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
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
    }
}
