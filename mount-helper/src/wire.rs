//! Framing on the Unix sockets between fsctl/cafsd, the helper, and cafsd's fd socket: each message is a 4-byte
//! big-endian length and that many bytes of JSON, at most [`MAX_MESSAGE`]; a message may carry one file
//! descriptor (`SCM_RIGHTS`), attached to its first byte. Anything else — a longer frame, bytes that are not the
//! expected JSON, more than one fd, a peer that hangs up mid-frame — is an error, and the fd of a refused message
//! is closed.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Instant;

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags, sockopt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The largest message body accepted.
pub const MAX_MESSAGE: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("message of {0} bytes is over the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("more than one file descriptor in a message")]
    TooManyFds,
    #[error("the peer closed the connection")]
    Closed,
    #[error("the request did not arrive whole in time")]
    TimedOut,
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

impl From<nix::errno::Errno> for WireError {
    fn from(e: nix::errno::Errno) -> Self {
        WireError::Io(e.into())
    }
}

/// Where a mount's tree comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A named ref: writable, created when absent.
    Ref(String),
    /// A portable data hash: read-only.
    Pdh(String),
    /// The whole catalog: `by_ref/`, `by_pdh/` and `history/` (cafsd decides which refs are writable).
    Namespace,
}

/// A request to mount, as a client sends it to the helper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountRequest {
    pub mountpoint: PathBuf,
    pub origin: Origin,
    #[serde(default)]
    pub read_only: bool,
    /// Let every user in, not only the mount's owner (for a node-wide mount such as the boot-time namespace):
    /// only root may ask, and only of a helper started with `--allow-other`.
    #[serde(default)]
    pub allow_other: bool,
}

/// What a client asks the helper's daemon (`cafs-mount serve`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HelperRequest {
    Mount(MountRequest),
    Unmount {
        mountpoint: PathBuf,
    },
    /// cafsd passing on a request of one of its gRPC clients, acting for `uid` (what the kernel reported for
    /// that client). Honoured only from root or from the process that serves cafsd's fd socket: that process
    /// is handed the fd of every mount anyway, so trusting it to name the user grants it nothing more.
    Relay {
        uid: u32,
        request: Box<HelperRequest>,
    },
    /// A (re)started cafsd asking for the mounts the helper holds: each is handed over again, with
    /// [`Handoff::resume`] set. Honoured only from root or from the process serving cafsd's fd socket.
    Reclaim,
}

/// What the helper sends cafsd with the `/dev/fuse` fd of a mount it made: the request and whose mount it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handoff {
    pub request: MountRequest,
    /// The requesting peer, who owns the mount.
    pub uid: u32,
    pub gid: u32,
    /// The mount was served before, by a cafsd that has stopped: its FUSE connection is live and initialized,
    /// and the kernel may hold requests that were read but never answered.
    #[serde(default)]
    pub resume: bool,
    /// The helper keeps a duplicate of the fd, so the mount outlives cafsd and can be handed over again.
    #[serde(default)]
    pub held: bool,
}

/// The answer to a request: success, or why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reply {
    pub ok: bool,
    #[serde(default)]
    pub message: String,
}

/// cafsd's gRPC socket on a node (the units' and the helper's default).
pub const CAFSD_SOCKET: &str = "/run/cafs/cafsd.sock";

/// cafsd's gRPC socket for a user's own cafsd: `$XDG_RUNTIME_DIR/cafs/cafsd.sock`, when that variable is set.
pub fn user_cafsd_socket() -> Option<PathBuf> {
    std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()).map(|d| PathBuf::from(d).join("cafs/cafsd.sock"))
}

/// The fd socket that goes with cafsd's gRPC socket path: `cafsd.sock` → `cafsd.fd.sock` (DESIGN.md).
pub fn fd_socket_path(grpc: &std::path::Path) -> PathBuf {
    let name = grpc.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = name.strip_suffix(".sock").unwrap_or(&name);
    grpc.with_file_name(format!("{stem}.fd.sock"))
}

/// The connected peer's uid, gid and pid, as the kernel recorded them when it connected.
pub fn peer(stream: &UnixStream) -> Result<(u32, u32, i32), WireError> {
    let cred = socket::getsockopt(stream, sockopt::PeerCredentials)?;
    Ok((cred.uid(), cred.gid(), cred.pid()))
}

/// Sends `msg`, with `fd` attached when given.
pub fn send(stream: &UnixStream, msg: &impl Serialize, fd: Option<BorrowedFd<'_>>) -> Result<(), WireError> {
    let body = serde_json::to_vec(msg).map_err(|e| WireError::Malformed(e.to_string()))?;
    if body.len() > MAX_MESSAGE {
        return Err(WireError::TooLarge(body.len()));
    }
    let header = (body.len() as u32).to_be_bytes();
    let raw = fd.map(|f| [f.as_raw_fd()]);
    let cmsgs: Vec<ControlMessage<'_>> = raw.as_ref().map(|r| ControlMessage::ScmRights(r)).into_iter().collect();
    // The fd rides on the header; the header goes whole or the call fails (4 bytes fit any socket buffer).
    let sent = socket::sendmsg::<()>(stream.as_raw_fd(), &[IoSlice::new(&header)], &cmsgs, MsgFlags::empty(), None)?;
    if sent != header.len() {
        (&*stream).write_all(&header[sent..])?;
    }
    (&*stream).write_all(&body)?;
    Ok(())
}

/// Receives one message and the fd it carries, if any (each read waits as long as the socket's read timeout).
pub fn recv<T: DeserializeOwned>(stream: &UnixStream) -> Result<(T, Option<OwnedFd>), WireError> {
    recv_by(stream, None)
}

/// Receives one message, which must arrive whole by `deadline`: a peer that sends a byte now and then cannot
/// hold the connection longer. (It sets the socket's read timeout as it goes.)
pub fn recv_within<T: DeserializeOwned>(
    stream: &UnixStream,
    deadline: Instant,
) -> Result<(T, Option<OwnedFd>), WireError> {
    recv_by(stream, Some(deadline))
}

/// Before each read: the time left until `deadline` becomes the socket's read timeout.
fn time_left(stream: &UnixStream, deadline: Option<Instant>) -> Result<(), WireError> {
    let Some(deadline) = deadline else { return Ok(()) };
    match deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
        Some(left) => Ok(stream.set_read_timeout(Some(left))?),
        None => Err(WireError::TimedOut),
    }
}

/// A read that ended because the read timeout passed.
fn timed_out(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

fn recv_by<T: DeserializeOwned>(
    stream: &UnixStream,
    deadline: Option<Instant>,
) -> Result<(T, Option<OwnedFd>), WireError> {
    let mut header = [0u8; 4];
    let mut fds: Vec<OwnedFd> = Vec::new();
    // Room for every fd one read can bring: a sendmsg carries at most SCM_MAX_FD (253), and one read takes the
    // fds of one sendmsg at most. With less room the kernel installs the fds that fit and flags the message
    // truncated, and nix then refuses to list them: they were left open (2 per message of 3 fds; found by the
    // helper_request fuzz target).
    let mut cmsg_buf = nix::cmsg_space!([std::os::fd::RawFd; 253]);
    let got = loop {
        time_left(stream, deadline)?;
        let mut iov = [IoSliceMut::new(&mut header)];
        let msg = socket::recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut cmsg_buf), MsgFlags::MSG_CMSG_CLOEXEC);
        let msg = match msg {
            // A signal handled while waiting, nothing received (a socket with a read timeout is never restarted,
            // whatever the handler's flags): wait on, as `read_full` does (found by the helper_request fuzz target).
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) if deadline.is_some() => return Err(WireError::TimedOut),
            msg => msg?,
        };
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for r in raw {
                    // SAFETY: the kernel just installed `r` in this process for us (SCM_RIGHTS); nothing else
                    // owns it, so wrapping it closes it exactly once.
                    fds.push(unsafe { OwnedFd::from_raw_fd(r) });
                }
            }
        }
        break msg.bytes;
    };
    if got == 0 {
        return Err(WireError::Closed);
    }
    read_full(stream, &mut header[got..], deadline)?;
    if fds.len() > 1 {
        return Err(WireError::TooManyFds);
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_MESSAGE {
        return Err(WireError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    read_full(stream, &mut body, deadline)?;
    let msg = serde_json::from_slice(&body).map_err(|e| WireError::Malformed(e.to_string()))?;
    Ok((msg, fds.pop()))
}

fn read_full(stream: &UnixStream, mut buf: &mut [u8], deadline: Option<Instant>) -> Result<(), WireError> {
    while !buf.is_empty() {
        time_left(stream, deadline)?;
        match (&*stream).read(buf) {
            Ok(0) => return Err(WireError::Closed),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if deadline.is_some() && timed_out(&e) => return Err(WireError::TimedOut),
            Err(e) => return Err(WireError::Io(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
