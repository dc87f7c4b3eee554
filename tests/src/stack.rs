//! The real stack for tests, in the shape a worker node runs it: `cafs-mount serve` as root and cafsd as
//! `nobody`, each on sockets under a test directory, driven with the real `fsctl` as whichever user a test
//! chooses. Dropping the stack detaches every mount under its directory and stops both processes by PID, also
//! when the test fails. A process that does not come up fails the test.

use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::manager::Manager;
use crate::mount::bin;
use crate::{run_bounded, terminate};

/// The unprivileged user cafsd runs as.
pub const NOBODY: u32 = 65534;

pub struct Stack {
    /// Everything the stack makes lives below this directory.
    pub base: PathBuf,
    /// cafsd's gRPC socket.
    pub socket: PathBuf,
    /// The helper daemon's socket.
    pub helper_socket: PathBuf,
    state: PathBuf,
    cafsd: Option<Child>,
    helper: Option<Child>,
    /// When set, cafsd is started as systemd starts it with a file descriptor store.
    manager: Option<Manager>,
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Starts cafsd's command `cmd` as `nobody`, as a node runs it, with no input and its output dropped.
pub(crate) fn spawn_as_nobody(cmd: &mut Command) -> Child {
    cmd.uid(NOBODY).gid(NOBODY).stdin(Stdio::null()).stdout(Stdio::null()).spawn().expect("start cafsd as nobody")
}

/// Waits (at most 30 s) until `child`, called `what` in failures, listens on the Unix socket `path`.
pub(crate) fn wait_listening(path: &Path, child: &mut Child, what: &str) {
    let start = Instant::now();
    // Connect, not just exists: a crashed cafsd leaves its socket file behind.
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited ({status}) before listening on {}", path.display());
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{what} did not listen within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Stack {
    /// Starts the helper (mounts allowed below `base`/jobs, which it creates world-writable with the sticky
    /// bit, like /tmp) and cafsd with `cafsd_args` added.
    pub fn start(base: &Path, cafsd_args: &[&str]) -> Self {
        Self::start_with(base, cafsd_args, None, &[])
    }

    /// A stack in `tmp/stack` whose cafsd reads `config` (TOML, written to `tmp/cafsd.toml`) and commits only when
    /// asked (`--autocommit 0`); with `allow_other`, the helper lets root ask for mounts every user can enter.
    pub fn start_configured(tmp: &Path, config: &str, allow_other: bool) -> Self {
        std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        let conf = tmp.join("cafsd.toml");
        std::fs::write(&conf, config).unwrap();
        std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::create_dir(tmp.join("stack")).unwrap();
        let args = ["--autocommit", "0", "--config", conf.to_str().unwrap()];
        let helper_args: &[&str] = if allow_other { &["--allow-other"] } else { &[] };
        Self::start_with(&tmp.join("stack"), &args, None, helper_args)
    }

    /// As [`Stack::start`], with cafsd started (every time) as systemd starts it with a file descriptor store
    /// that `manager` keeps.
    pub fn start_managed(base: &Path, cafsd_args: &[&str], manager: Manager) -> Self {
        Self::start_with(base, cafsd_args, Some(manager), &[])
    }

    fn start_with(base: &Path, cafsd_args: &[&str], manager: Option<Manager>, helper_args: &[&str]) -> Self {
        assert!(is_root(), "the stack needs root (it starts cafs-mount)");
        std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (state, run, jobs) = (base.join("state"), base.join("run"), base.join("jobs"));
        for d in [&state, &run] {
            std::fs::create_dir_all(d).unwrap();
            chown(d, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        std::fs::create_dir_all(&jobs).unwrap();
        std::fs::set_permissions(&jobs, std::fs::Permissions::from_mode(0o1777)).unwrap();
        // The helper's socket in a directory of root's alone, as on a node (cafsd's user owns `run`).
        let helper_run = base.join("helper");
        std::fs::create_dir_all(&helper_run).unwrap();
        let mut stack = Self {
            base: base.to_path_buf(),
            socket: run.join("cafsd.sock"),
            helper_socket: helper_run.join("mount.sock"),
            state,
            cafsd: None,
            helper: None,
            manager,
        };
        let mut helper = Command::new(bin("cafs-mount"))
            .arg("serve")
            .arg("--listen")
            .arg(&stack.helper_socket)
            .arg("--server")
            .arg(&stack.socket)
            .arg("--allow-root")
            .arg(&jobs)
            .args(helper_args)
            .stdin(Stdio::null())
            .spawn()
            .expect("start cafs-mount serve");
        wait_listening(&stack.helper_socket, &mut helper, "cafs-mount serve");
        stack.helper = Some(helper);
        stack.start_cafsd(cafsd_args);
        stack
    }

    /// (Re)starts cafsd as `nobody` on the stack's state directory.
    pub fn start_cafsd(&mut self, args: &[&str]) {
        assert!(self.cafsd.is_none(), "cafsd is running");
        let mut argv: Vec<std::ffi::OsString> = vec!["--state-dir".into(), self.state.clone().into()];
        argv.extend([
            "--socket".into(),
            self.socket.clone().into(),
            "--helper".into(),
            self.helper_socket.clone().into(),
        ]);
        argv.extend(args.iter().map(Into::into));
        let (mut cmd, passed) = match &self.manager {
            Some(m) => {
                let mut cmd = Manager::service_command(&bin("cafsd"), &argv);
                let passed = m.prepare(&mut cmd, 64);
                (cmd, passed)
            }
            None => {
                let mut cmd = Command::new(bin("cafsd"));
                cmd.args(&argv);
                (cmd, Vec::new())
            }
        };
        let mut cafsd = spawn_as_nobody(&mut cmd);
        drop(passed);
        wait_listening(&self.socket, &mut cafsd, "cafsd");
        self.cafsd = Some(cafsd);
    }

    pub fn cafsd_pid(&self) -> u32 {
        self.cafsd.as_ref().expect("cafsd runs").id()
    }

    /// SIGTERM to cafsd, and its exit status (it must exit within 60 s).
    pub fn stop_cafsd(&mut self) -> ExitStatus {
        let mut child = self.cafsd.take().expect("cafsd runs");
        terminate(&mut child, Duration::from_secs(60)).expect("cafsd exits within 60 s of SIGTERM")
    }

    /// SIGKILL to cafsd (a crash): its mounts are left dead (`ENOTCONN`) until detached, which this does.
    pub fn kill_cafsd(&mut self) {
        let mut child = self.cafsd.take().expect("cafsd runs");
        child.kill().unwrap();
        child.wait().unwrap();
        for m in self.mounts() {
            assert!(Command::new("umount").arg("-l").arg(&m).status().unwrap().success(), "detaching {}", m.display());
        }
    }

    /// SIGKILL to cafsd, leaving its mounts as they are (the helper holds them for the next cafsd).
    pub fn kill_cafsd_only(&mut self) {
        let mut child = self.cafsd.take().expect("cafsd runs");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// The service manager cafsd runs under, if any.
    pub fn manager(&self) -> Option<&Manager> {
        self.manager.as_ref()
    }

    /// cafsd's state directory.
    pub fn state(&self) -> &Path {
        &self.state
    }

    /// A directory for mounts below the helper's allowed root, owned by `uid`.
    pub fn job_dir(&self, name: &str, uid: u32) -> PathBuf {
        let d = self.base.join("jobs").join(name);
        std::fs::create_dir_all(&d).unwrap();
        chown(&d, Some(uid), Some(uid)).unwrap();
        d
    }

    /// A `fsctl` command aimed at this stack's cafsd, run as `uid`.
    pub fn fsctl_cmd(&self, uid: u32, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("fsctl"));
        cmd.arg("--server").arg(&self.socket).args(args).uid(uid).gid(uid).stdin(Stdio::null());
        cmd
    }

    /// Runs `fsctl ARGS` as `uid` (at most 5 minutes).
    pub fn fsctl(&self, uid: u32, args: &[&str]) -> Output {
        run_bounded(&mut self.fsctl_cmd(uid, args), Duration::from_secs(300))
    }

    /// Mount points below the stack's directory, newest first (so that detaching them in this order reaches a
    /// mount that a later one was mounted over).
    pub fn mounts(&self) -> Vec<PathBuf> {
        let mounts = cafs_mount::mountinfo::all().unwrap_or_default();
        mounts.into_iter().rev().map(|m| m.mount_point).filter(|p| p.starts_with(&self.base)).collect()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // A few rounds: a mount hidden under another is reachable once the one above is gone.
        for _ in 0..3 {
            for m in self.mounts() {
                let _ = Command::new("umount").arg("-l").arg(&m).status();
            }
        }
        if let Some(mut c) = self.cafsd.take() {
            let _ = terminate(&mut c, Duration::from_secs(20));
        }
        if let Some(mut h) = self.helper.take() {
            let _ = h.kill();
            let _ = h.wait();
        }
    }
}

/// Runs a shell script as `uid` in `dir` (at most 5 minutes).
pub fn sh_as(uid: u32, dir: &Path, script: &str) -> Output {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script]).current_dir(dir).uid(uid).gid(uid).stdin(Stdio::null());
    run_bounded(&mut cmd, Duration::from_secs(300))
}

/// The output's stdout, asserting that it succeeded (its stderr in the message if not).
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed ({}): {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The output's stderr, asserting that it failed with `code`.
pub fn fails(o: &Output, code: i32) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(code), "expected exit {code}: {err}\n{}", String::from_utf8_lossy(&o.stdout));
    err
}

/// A client of the helper's daemon, as `uid` (python3, a client independent of ours): sends one framed request
/// (`length` overrides the header's length) and returns the reply's JSON text, or what went wrong (at most 60 s).
pub fn ask(socket: &Path, uid: u32, request: &str, length: Option<u32>) -> String {
    const CLIENT: &str = r#"
import json, socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
body = sys.argv[2].encode()
n = int(sys.argv[3]) if len(sys.argv) > 3 else len(body)
s.sendall(struct.pack(">I", n) + body)
def read(k):
    out = b""
    while len(out) < k:
        chunk = s.recv(k - len(out))
        if not chunk:
            sys.exit("connection closed")
        out += chunk
    return out
(m,) = struct.unpack(">I", read(4))
print(read(m).decode())
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", CLIENT]).arg(socket).arg(request).uid(uid).gid(uid);
    if let Some(n) = length {
        cmd.arg(n.to_string());
    }
    let out = run_bounded(&mut cmd, Duration::from_secs(60));
    format!("{}{}", String::from_utf8_lossy(&out.stdout).trim(), String::from_utf8_lossy(&out.stderr).trim())
}
