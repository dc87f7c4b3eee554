//! Socket activation (`sd_listen_fds(3)`): the fds systemd passed this process, taken over once, for the helper
//! (its listening socket) and cafsd (its sockets and the fd store's mounts) alike.

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The first fd systemd passes.
const LISTEN_FDS_START: RawFd = 3;

/// The fds systemd passed this process, by name. `LISTEN_*` stays in the environment (changing it with threads
/// running is unsound); a child would not take the fds for its own, since `LISTEN_PID` names this process.
pub fn listened_fds() -> Vec<(String, OwnedFd)> {
    let pid = std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok());
    let count = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse::<i32>().ok()).unwrap_or(0);
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    if pid != Some(std::process::id()) || count <= 0 {
        return Vec::new();
    }
    let mut names = names.split(':');
    (0..count)
        .filter_map(|i| {
            let raw = LISTEN_FDS_START + i;
            let name = names.next().unwrap_or("unknown").to_string();
            // Systemd passes the fds without close-on-exec; cafsd's children must not inherit mounts.
            if nix::fcntl::fcntl(
                // SAFETY: the number is open (systemd passed it) and used only for this call.
                unsafe { BorrowedFd::borrow_raw(raw) },
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .is_err()
            {
                return None;
            }
            // SAFETY: systemd passed fds LISTEN_FDS_START.. to this process (LISTEN_PID is ours) and nothing else
            // owns them; each is taken over exactly once, here.
            Some((name, unsafe { OwnedFd::from_raw_fd(raw) }))
        })
        .collect()
}
