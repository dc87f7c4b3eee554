//! The binaries as an operator runs them: exit codes (0 ok, 1 failed, 2 usage), cafsd's state directory
//! handling, and its shutdown on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn cafsd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cafsd"))
}

#[test]
fn cafsd_check_creates_and_reports_the_embedded_state() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let out = cafsd().arg("--state-dir").arg(&state).arg("--check").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 refs"));
    assert!(state.join("blocks").is_dir());
    assert!(state.join("catalog.sqlite").is_file());
}

#[test]
fn cafsd_refuses_what_it_cannot_do() {
    let tmp = tempfile::tempdir().unwrap();
    let out = cafsd().arg("--state-dir").arg(tmp.path()).arg("--config").arg("/nonexistent.toml").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
    // A state directory that cannot be created is a clear failure.
    let blocker = tmp.path().join("file");
    std::fs::write(&blocker, b"").unwrap();
    let out = cafsd().arg("--state-dir").arg(blocker.join("sub")).arg("--check").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("block store"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cafsd().arg("--no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn cafsd_exits_cleanly_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = cafsd()
        .arg("--state-dir")
        .arg(tmp.path())
        .arg("--socket")
        .arg(tmp.path().join("run/cafsd.sock"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it has opened its state and listens for mounts (the fd socket appears), bounded.
    let start = Instant::now();
    while !tmp.path().join("run/cafsd.fd.sock").exists() {
        assert!(start.elapsed() < Duration::from_secs(30), "cafsd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("cafsd did not exit within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn fsctl_and_usage_errors() {
    let fsctl = env!("CARGO_BIN_EXE_fsctl");
    let out = Command::new(fsctl).arg("--help").output().unwrap();
    assert!(out.status.success());
    for verb in ["mount", "umount", "commit", "flush", "status", "ls", "log", "run"] {
        assert!(String::from_utf8_lossy(&out.stdout).contains(verb), "--help lists {verb}");
    }
    assert_eq!(Command::new(fsctl).arg("frobnicate").output().unwrap().status.code(), Some(2));
    assert_eq!(Command::new(fsctl).args(["run"]).output().unwrap().status.code(), Some(2));
    // Not served yet: an operation fails (1) and says why.
    let out = Command::new(fsctl).args(["commit", "/nowhere"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!out.stderr.is_empty());
}
