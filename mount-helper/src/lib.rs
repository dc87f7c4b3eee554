//! The privileged helper's library: everything `cafs-mount` decides before it touches the system, kept apart
//! from the binary so that each check is tested directly.
//!
//! - [`activation`]: the fds systemd passed (socket activation), shared with cafsd;
//! - [`cli`]: what the three binaries' command lines share (log output, manual pages);
//! - [`target`]: whether a peer may mount at a path, decided on a directory fd opened without following
//!   symlinks, so that the checked directory is the one mounted on.
//! - [`helper`]: the operations for a peer (mount and hand over; unmount its own cafs mount) and the daemon loop;
//! - [`limits`]: what the daemon allows its clients (connections in all and per uid, the time to send a
//!   request), so that no client can take it down;
//! - [`mount`]: opening `/dev/fuse` and mounting onto a checked fd with the one fixed set of options (cafsd's
//!   root development mode uses it too, so there is one place that mounts), and detaching exactly one mount;
//! - [`mountinfo`]: the kernel's mount table, read in one place (mounts known by id, mount points unescaped);
//! - [`wire`]: the messages on the helper's socket and on cafsd's fd socket (length-prefixed JSON, an fd
//!   passed with `SCM_RIGHTS`, the peer known by `SO_PEERCRED`), shared by both ends so that they cannot drift.

pub mod activation;
pub mod cli;
pub mod helper;
pub mod limits;
pub mod mount;
pub mod mountinfo;
pub mod target;
pub mod wire;

use std::ffi::OsStr;

/// The longest prefix of a client's string that replies and logs quote.
pub const SHOWN_BYTES: usize = 160;

/// A client's string (a path, a ref name) for a reply or a log line: at most [`SHOWN_BYTES`] of it (cut on a
/// character boundary), with how long it really was when cut, so that a client cannot make the helper echo
/// 64 KiB back or into its log.
pub fn shown(s: impl AsRef<OsStr>) -> String {
    shown_up_to(s, SHOWN_BYTES)
}

/// [`shown`] with another limit.
pub fn shown_up_to(s: impl AsRef<OsStr>, limit: usize) -> String {
    let (raw, text) = (s.as_ref(), s.as_ref().to_string_lossy());
    if text.len() <= limit {
        return text.into_owned();
    }
    let cut = (0..=limit).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    format!("{}… ({} bytes)", &text[..cut], raw.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_paths_are_cut_short() {
        assert_eq!(shown(std::path::Path::new("/scratch/job 1")), "/scratch/job 1");
        let long = format!("/tmp/{}", "é".repeat(40_000));
        let s = shown(&long);
        assert!(s.len() < SHOWN_BYTES + 40, "{s}");
        assert!(s.starts_with("/tmp/éé") && s.ends_with(&format!("… ({} bytes)", long.len())), "{s}");
    }
}
