//! The checks of the `helper_request` fuzz target, shared with `mount-helper/tests/fuzz_regressions.rs` so that
//! the replayed inputs go through exactly what the fuzzer ran.
//!
//! An input is a byte that says how to send, then the bytes a peer writes on the socket (at most [`MAX_INPUT`]).
//! The first byte's bits 0–1 are how many fds (copies of a pipe's write end) ride on the first chunk, bits 2–4
//! that chunk's length (0: one chunk). The kernel hands over a chunk that carries fds in a read of its own, so
//! the 4-byte header then arrives in pieces.

use std::io::{IoSlice, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use cafs_mount::target::{self, Policy, SYSTEM_PATHS, TargetError};
use cafs_mount::wire::{self, HelperRequest, MAX_MESSAGE, WireError};
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::socket::{self, ControlMessage, MsgFlags};

/// Bytes sent after the first; more than a frame can use, less than would make a run slow.
pub const MAX_INPUT: usize = 200_000;

/// The only allowed root in the path checks; it must not exist, so that `target::check` stops at opening the
/// directory and no path is ever resolved on this machine beyond it.
const ROOT: &str = "/nonexistent-cafs-fuzz-root";

/// Generous for a socket pair: only a hang in `recv` would reach it.
const TIMEOUT: Duration = Duration::from_secs(10);

pub fn check(data: &[u8]) {
    let Some((&how, bytes)) = data.split_first() else { return };
    let bytes = &bytes[..bytes.len().min(MAX_INPUT)];
    // Fds need a byte to ride on.
    let fds = if bytes.is_empty() { 0 } else { usize::from(how & 3) };
    let first = usize::from((how >> 2) & 7);

    let (probe, pipe_w) = std::io::pipe().unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    let got = std::thread::scope(|s| {
        let pipe_w = &pipe_w;
        let peer = s.spawn(move || write_as_peer(a, bytes, pipe_w, fds, first));
        // As the helper's daemon receives: the whole frame by a deadline.
        let got = wire::recv_within::<HelperRequest>(&b, Instant::now() + TIMEOUT);
        // The peer may still be writing what recv left unread: closing our end ends that.
        drop(b);
        // Joined, not left to the scope: the scope's end does not wait for the thread to exit, and the leak
        // checker would count what the exiting thread still holds.
        peer.join().unwrap();
        got
    });
    drop(pipe_w);

    let expected = model(bytes, fds);
    match (got, expected) {
        (Ok((request, fd)), Ok(model_request)) => {
            assert_eq!(request, model_request, "recv returned another request than the frame holds");
            assert_eq!(fd.is_some(), fds == 1, "the fd did not come with the request");
            round_trip(&request, fd.as_ref());
            each_mountpoint(&request, &mut |p| check_path(p));
        }
        (Err(e), Err(model_e)) => assert_eq!(kind(&e), model_e, "recv failed with {e}"),
        (got, expected) => panic!("recv gave {got:?}, the framing says {expected:?}"),
    }
    // Every copy of the pipe's write end that was sent is closed now, whether recv took the message or not.
    fcntl(&probe, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
    match (&probe).read(&mut [0]) {
        Ok(0) => {}
        other => panic!("a received fd was left open (a read of the pipe gave {other:?} instead of its end)"),
    }

    check_path(Path::new(std::ffi::OsStr::from_bytes(&bytes[..bytes.len().min(8192)])));
}

/// Writes `bytes` as a peer would, `fds` copies of `fd` on the first chunk, then ends the stream. Stops early if
/// the reader hangs up (no SIGPIPE: the fuzzer's process does not ignore it).
fn write_as_peer(a: UnixStream, bytes: &[u8], fd: &impl AsFd, fds: usize, first: usize) {
    let mut at = 0;
    if fds > 0 || first > 0 {
        let n = first.max(1).min(bytes.len());
        let raw = [fd.as_fd().as_raw_fd(); 3];
        let cmsgs: Vec<ControlMessage<'_>> =
            if fds > 0 { vec![ControlMessage::ScmRights(&raw[..fds])] } else { Vec::new() };
        let iov = [IoSlice::new(&bytes[..n])];
        match socket::sendmsg::<()>(a.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(sent) => at = sent,
            Err(_) => return,
        }
    }
    while at < bytes.len() {
        match socket::send(a.as_raw_fd(), &bytes[at..], MsgFlags::MSG_NOSIGNAL) {
            Ok(n) => at += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// The errors of `recv`, without their payloads where those are not from the frame.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    TooLarge(usize),
    Malformed,
    TooManyFds,
    Closed,
    TimedOut,
    Io,
}

fn kind(e: &WireError) -> Kind {
    match e {
        WireError::TooLarge(n) => Kind::TooLarge(*n),
        WireError::Malformed(_) => Kind::Malformed,
        WireError::TooManyFds => Kind::TooManyFds,
        WireError::Closed => Kind::Closed,
        WireError::TimedOut => Kind::TimedOut,
        WireError::Io(_) => Kind::Io,
    }
}

/// What `recv` must make of a peer that sent `bytes` with `fds` fds, from the framing rules alone.
fn model(bytes: &[u8], fds: usize) -> Result<HelperRequest, Kind> {
    let Some((header, body)) = bytes.split_first_chunk::<4>() else { return Err(Kind::Closed) };
    if fds > 1 {
        return Err(Kind::TooManyFds);
    }
    let len = u32::from_be_bytes(*header) as usize;
    if len > MAX_MESSAGE {
        return Err(Kind::TooLarge(len));
    }
    let body = body.get(..len).ok_or(Kind::Closed)?;
    serde_json::from_slice(body).map_err(|_| Kind::Malformed)
}

/// `request` (and `fd`) sent with `wire::send` come out of `wire::recv` the same. Its encoding may be longer
/// than the frame it came in (a field left to its default is written out): past [`MAX_MESSAGE`], `send`
/// refuses it and writes nothing.
fn round_trip(request: &HelperRequest, fd: Option<&OwnedFd>) {
    let body = serde_json::to_vec(request).expect("a received request serializes");
    let (c, d) = UnixStream::pair().unwrap();
    d.set_read_timeout(Some(TIMEOUT)).unwrap();
    let (sent, back) = std::thread::scope(|s| {
        let sender = s.spawn(move || wire::send(&c, request, fd.map(|f| f.as_fd())));
        let back = wire::recv::<HelperRequest>(&d);
        (sender.join().unwrap(), back)
    });
    if body.len() > MAX_MESSAGE {
        assert!(
            matches!(sent, Err(WireError::TooLarge(n)) if n == body.len()),
            "send of {} bytes: {sent:?}",
            body.len()
        );
        assert!(matches!(back, Err(WireError::Closed)), "a refused send wrote something: {back:?}");
        return;
    }
    sent.expect("send");
    let (again, fd_again) = back.expect("recv of what send wrote");
    assert_eq!(&again, request, "the request changed on its way through send and recv");
    match (fd, fd_again) {
        (None, None) => {}
        (Some(fd), Some(fd_again)) => {
            let meta = |f: &OwnedFd| std::fs::File::from(f.try_clone().unwrap()).metadata().unwrap();
            let (m, n) = (meta(fd), meta(&fd_again));
            assert_eq!((m.dev(), m.ino()), (n.dev(), n.ino()), "another file came back");
        }
        (fd, fd_again) => panic!("sent fd {fd:?}, received {fd_again:?}"),
    }
}

fn each_mountpoint(request: &HelperRequest, f: &mut impl FnMut(&Path)) {
    match request {
        HelperRequest::Mount(m) => f(&m.mountpoint),
        HelperRequest::Unmount { mountpoint } => f(mountpoint),
        HelperRequest::Relay { request, .. } => each_mountpoint(request, f),
        HelperRequest::Reclaim => {}
    }
}

/// `target::check` refuses `path` before opening anything exactly when its rules, applied here to the path's
/// bytes, say so, and for the same reason; a path it goes on to open lies strictly below [`ROOT`].
pub fn check_path(path: &Path) {
    assert!(std::fs::symlink_metadata(ROOT).is_err(), "{ROOT} must not exist");
    let bytes = path.as_os_str().as_bytes();
    let parts: Vec<&[u8]> = bytes.split(|&b| b == b'/').filter(|p| !p.is_empty()).collect();
    let starts_with = |prefix: &str| {
        let prefix: Vec<&[u8]> = prefix.as_bytes().split(|&b| b == b'/').filter(|p| !p.is_empty()).collect();
        parts.starts_with(&prefix)
    };
    // The verdict before any directory is opened, with no allowed root at all.
    let refusal = if bytes.first() != Some(&b'/') {
        "not absolute"
    } else if bytes.split(|&b| b == b'/').any(|c| c == b"." || c == b"..") {
        "dot component"
    } else if parts.is_empty() || SYSTEM_PATHS.iter().any(|s| starts_with(s)) {
        "system path"
    } else {
        "not allowed"
    };
    let reason = |r: &Result<target::Target, TargetError>| match r {
        Err(TargetError::NotAbsolute(_)) => "not absolute",
        Err(TargetError::DotComponent(_)) => "dot component",
        Err(TargetError::SystemPath(_)) => "system path",
        Err(TargetError::NotAllowed { .. }) => "not allowed",
        Ok(_) => panic!("{}: accepted as a mount point", path.display()),
        Err(_) => "opened",
    };
    let none = target::check(path, 1000, &Policy { allowed_roots: Vec::new() });
    assert_eq!(reason(&none), refusal, "{:?}: {none:?}", path);
    let under_root = target::check(path, 1000, &Policy { allowed_roots: vec![ROOT.into()] });
    let below_root = refusal == "not allowed" && parts.len() > 1 && starts_with(ROOT);
    let expected = if below_root { "opened" } else { refusal };
    assert_eq!(reason(&under_root), expected, "{:?} with {ROOT} allowed: {under_root:?}", path);
}
