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
    // An [fs] that cannot work is refused at start, by name.
    let config = tmp.path().join("cafsd.toml");
    std::fs::write(&config, "[fs]\ncache_size = \"128MiB\"\nreadahead = \"100MiB\"\n").unwrap();
    let out = cafsd().arg("--state-dir").arg(tmp.path()).arg("--config").arg(&config).arg("--check").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fs.readahead"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cafsd().arg("--no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Starts cafsd on a fresh state directory with `envs`, waits until it listens for mounts, stops it with SIGTERM
/// (asserting a clean exit within 10 s) and returns what it logged.
fn run_until_sigterm(envs: &[(&str, &str)]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("stderr");
    let mut child = cafsd()
        .arg("--state-dir")
        .arg(tmp.path())
        .arg("--socket")
        .arg(tmp.path().join("run/cafsd.sock"))
        .envs(envs.iter().copied())
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Wait until it has opened its state and listens for mounts (the fd socket appears), bounded.
    let start = Instant::now();
    while !tmp.path().join("run/cafsd.fd.sock").exists() {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cafsd did not start");
        }
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
            let _ = child.wait();
            panic!("cafsd did not exit within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    std::fs::read_to_string(&log).unwrap()
}

#[test]
fn cafsd_exits_cleanly_on_sigterm() {
    let text = run_until_sigterm(&[("RUST_LOG", "info")]);
    assert!(text.contains("waiting for mounts"), "{text}");
    // The filesystem options every mount gets, the defaults here.
    assert!(text.contains("filesystem options memory_budget=536870912"), "{text}");
}

#[test]
fn cafsd_logs_in_the_format_asked_for() {
    // JSON: every line an object with a level and a message.
    let json = run_until_sigterm(&[("RUST_LOG", "info"), ("CAFS_LOG_FORMAT", "json")]);
    let lines: Vec<serde_json::Value> =
        json.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"))).collect();
    assert!(lines.iter().all(|v| v["level"].is_string() && v["timestamp"].is_string()), "{json}");
    assert!(lines.iter().any(|v| v["fields"]["message"] == "waiting for mounts from cafs-mount"), "{json}");
    // The journal's shape: a syslog priority first (6 for INFO), no timestamp.
    let journal = run_until_sigterm(&[("RUST_LOG", "info"), ("CAFS_LOG_FORMAT", "journal")]);
    assert!(!journal.is_empty());
    for line in journal.lines() {
        let rest = line.strip_prefix("<6>").or_else(|| line.strip_prefix("<4>")).unwrap_or_else(|| panic!("{line:?}"));
        assert!(!rest.trim_start().starts_with(|c: char| c.is_ascii_digit()), "a timestamp in {line:?}");
    }
    assert!(journal.contains("<6> INFO"), "{journal}");
    // RUST_LOG selects what: nothing at INFO when warnings only are asked for.
    let quiet = run_until_sigterm(&[("RUST_LOG", "warn"), ("CAFS_LOG_FORMAT", "text")]);
    assert!(!quiet.contains("INFO"), "{quiet}");
    // A format that does not exist is a usage error.
    let out = cafsd().args(["--log-format", "xml", "--check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
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
    // No verb: the usage, as an error.
    assert_eq!(Command::new(fsctl).output().unwrap().status.code(), Some(2));
    assert_eq!(Command::new(fsctl).args(["--server", "/nowhere"]).output().unwrap().status.code(), Some(2));
    // Completions need no server.
    let out = Command::new(fsctl).args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("_fsctl()"));
    assert_eq!(Command::new(fsctl).args(["completions", "tcsh"]).output().unwrap().status.code(), Some(2));
    // Not served yet: an operation fails (1) and says why.
    let out = Command::new(fsctl).args(["commit", "/nowhere"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!out.stderr.is_empty());
}
