//! The `helper_request` fuzz target's seeds (`fuzz/seeds/`) and the inputs it found (`fuzz/regressions/`),
//! replayed on every test run with the target's own checks (`fuzz/fuzz_targets/helper_checks.rs`).

use std::fs;
use std::os::unix::net::UnixStream;
use std::os::unix::thread::JoinHandleExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cafs_mount::wire::{self, HelperRequest};
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};

#[path = "../fuzz/fuzz_targets/helper_checks.rs"]
mod helper_checks;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// An input that sends `body` as one frame, `how` being the first byte (see `helper_checks.rs`).
fn framed(how: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![how];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The seeds: each kind of request (one with an fd and the header in pieces), and the edges of the framing.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let mount = br#"{"mount":{"mountpoint":"/scratch/job 1","origin":{"ref":"results"},"read_only":false}}"#;
    let mut relays = br#"{"unmount":{"mountpoint":"/scratch/j"}}"#.to_vec();
    for uid in 0..3 {
        relays = [format!(r#"{{"relay":{{"uid":{uid},"request":"#).as_bytes(), &relays[..], b"}}"].concat();
    }
    // Deeper than serde_json's recursion limit (128): refused, not a stack overflow.
    let deep = [br#"{"relay":{"uid":1,"request":"#.repeat(200), b"\"reclaim\"".to_vec(), b"}}".repeat(200)].concat();
    // Exactly MAX_MESSAGE bytes without `read_only`: received, but too long to send once the default is written.
    let head = br#"{"mount":{"mountpoint":"/scratch/x","origin":{"pdh":""#;
    let tail = br#""}}}"#;
    let pad = "a".repeat(cafs_mount::wire::MAX_MESSAGE - head.len() - tail.len());
    let full = [&head[..], pad.as_bytes(), tail].concat();
    let mut two_frames = framed(0, mount);
    two_frames.extend_from_slice(&framed(0, b"\"reclaim\"")[1..]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("mount", framed(0, mount)),
        ("mount-with-fd-header-in-pieces", framed(1 | 2 << 2, mount)),
        ("mount-with-two-fds", framed(2, mount)),
        ("unmount-relayed-thrice", framed(4 << 2, &relays)),
        ("reclaim", framed(0, b"\"reclaim\"")),
        ("two-frames", two_frames),
        ("deep-relay", framed(0, &deep)),
        ("full-size-pdh", framed(0, &full)),
        ("over-the-limit", framed(0, &vec![b' '; cafs_mount::wire::MAX_MESSAGE + 1])),
        ("unknown-field", framed(0, br#"{"unmount":{"mountpoint":"/x","y":1}}"#)),
        ("cut-short", framed(0, mount)[..40].to_vec()),
    ];
    cases.into_iter().map(|(name, bytes)| (format!("{name}.bin"), bytes)).collect()
}

/// The seeds on disk are what `seeds` makes (`CAFS_WRITE_FUZZ_SEEDS=1 cargo test -p mount-helper --test
/// fuzz_regressions` rewrites them).
#[test]
fn seeds_are_current() {
    let dir = fuzz_dir().join("seeds");
    let write = std::env::var_os("CAFS_WRITE_FUZZ_SEEDS").is_some();
    for (name, bytes) in seeds() {
        let path = dir.join(name);
        if write {
            fs::create_dir_all(&dir).unwrap();
            fs::write(&path, &bytes).unwrap();
        }
        let on_disk = fs::read(&path).unwrap_or_default();
        assert!(
            on_disk == bytes,
            "{} is not what the seed generator makes (CAFS_WRITE_FUZZ_SEEDS=1 rewrites it)",
            path.display()
        );
    }
}

#[test]
fn fuzz_inputs_replay_cleanly() {
    let mut count = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = fs::read_dir(fuzz_dir().join(dir)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = fs::read(&path).unwrap();
            eprintln!("{}", path.display());
            helper_checks::check(&data);
            count += 1;
        }
    }
    assert!(count >= seeds().len(), "the seeds are present");
}

extern "C" fn nothing(_: libc::c_int) {}

/// The fuzzer's run was once stopped by `recv` failing with EINTR: its timer's signal had landed while `recv`
/// waited for a header (a handler without `SA_RESTART`; a socket with a receive timeout, as the helper's have,
/// is never restarted). Such a signal says nothing about the peer: `recv` waits on.
#[test]
fn a_signal_while_waiting_for_a_message_is_not_an_error() {
    let action = SigAction::new(SigHandler::Handler(nothing), SaFlags::empty(), SigSet::empty());
    // SAFETY: the handler does nothing at all, which is async-signal-safe.
    unsafe { signal::sigaction(Signal::SIGUSR2, &action) }.unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    b.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let receiver = std::thread::spawn(move || wire::recv::<HelperRequest>(&b).map(|(r, _)| r));
    // The receiver is blocked in recv for nearly all of this time: one of the signals lands there.
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(10));
        // SAFETY: the thread is alive (it has not returned: nothing was sent yet) and not joined.
        assert_eq!(unsafe { libc::pthread_kill(receiver.as_pthread_t(), libc::SIGUSR2) }, 0);
    }
    let request = HelperRequest::Unmount { mountpoint: "/scratch/j".into() };
    // (Fails with a broken pipe if recv gave up: what it returned is the point.)
    let sent = wire::send(&a, &request, None);
    assert_eq!(receiver.join().unwrap().expect("recv"), request);
    sent.unwrap();
}
