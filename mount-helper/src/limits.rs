//! What the helper's daemon allows its clients. Any local user may connect to it, and it holds every mount's
//! fd for live restart, so no client may be able to stop it or starve the others:
//!
//! - connections are admitted against a cap in all and a smaller cap per uid ([`Admission`]), both derived
//!   from the process's fd limit (each connection may hold a handful of fds while it mounts), so one user's
//!   flood never takes the fds or threads that another user's request needs;
//! - a request must arrive whole within [`Limits::request_time`] of the connection, however the bytes
//!   trickle in (the deadline is for the frame, not for each read);
//! - an error from `accept` is logged and waited out, never fatal (see [`crate::helper::serve`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The fds one connection may hold at once: its socket, the checked directory, `/dev/fuse`, the new mount's
/// root, cafsd's fd socket, and room for /proc reads.
const FDS_PER_CONNECTION: u64 = 8;
/// Fds kept for everything else: stdio, the listener, logging, and the mounts' held device fds are counted
/// apart (see [`Limits::from_fd_limit`]).
const FDS_RESERVED: u64 = 32;

/// The daemon's caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once, from all users.
    pub total: usize,
    /// Connections served at once for one uid (root's and the relaying cafsd's included).
    pub per_uid: usize,
    /// How long a client has to send its whole request.
    pub request_time: Duration,
}

impl Limits {
    /// Caps for a process allowed `nofile` fds: at most 256 connections, at most 16 per uid, each a quarter
    /// of the total at most, so that four users' floods still leave room.
    pub fn from_fd_limit(nofile: u64) -> Self {
        let total = (nofile.saturating_sub(FDS_RESERVED) / FDS_PER_CONNECTION).clamp(4, 256) as usize;
        Self { total, per_uid: (total / 4).clamp(1, 16), request_time: Duration::from_secs(10) }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("too many connections to the helper ({0} at once); try again")]
    Total(usize),
    #[error("too many connections to the helper from uid {uid} ({cap} at once); try again")]
    PerUid { uid: u32, cap: usize },
}

/// Counts the connections being served, in all and per uid.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    counts: Mutex<(usize, HashMap<u32, usize>)>,
}

/// A connection admitted: it counts against the caps until dropped.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    uid: u32,
}

impl Admission {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self { limits, counts: Mutex::new((0, HashMap::new())) })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, (usize, HashMap<u32, usize>)> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection from `uid`, or says which cap it is over.
    pub fn admit(self: &Arc<Self>, uid: u32) -> Result<Ticket, Refused> {
        let mut c = self.counts();
        if c.0 >= self.limits.total {
            return Err(Refused::Total(self.limits.total));
        }
        let mine = c.1.entry(uid).or_insert(0);
        if *mine >= self.limits.per_uid {
            return Err(Refused::PerUid { uid, cap: self.limits.per_uid });
        }
        *mine += 1;
        c.0 += 1;
        Ok(Ticket { admission: self.clone(), uid })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut c = self.admission.counts();
        c.0 -= 1;
        if let Some(n) = c.1.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                c.1.remove(&self.uid);
            }
        }
    }
}

/// Raises the soft fd limit to the hard one, and returns the limit in force.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(_) => soft,
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_follow_the_fd_limit() {
        assert_eq!(Limits::from_fd_limit(64).total, 4);
        assert_eq!(Limits::from_fd_limit(64).per_uid, 1);
        assert_eq!(Limits::from_fd_limit(1024).total, 124);
        assert_eq!(Limits::from_fd_limit(1024).per_uid, 16);
        assert_eq!(Limits::from_fd_limit(1 << 20).total, 256);
        assert_eq!(Limits::from_fd_limit(0).total, 4);
    }

    #[test]
    fn admission_counts_in_all_and_per_uid_and_gives_back_on_drop() {
        let a = Admission::new(Limits { total: 3, per_uid: 2, request_time: Duration::from_secs(1) });
        let t1 = a.admit(1000).unwrap();
        let t2 = a.admit(1000).unwrap();
        assert_eq!(a.admit(1000).unwrap_err(), Refused::PerUid { uid: 1000, cap: 2 });
        let t3 = a.admit(1001).unwrap();
        assert_eq!(a.admit(1002).unwrap_err(), Refused::Total(3));
        drop(t1);
        let t4 = a.admit(1002).unwrap();
        drop((t2, t3, t4));
        assert_eq!(a.counts().0, 0);
        assert!(a.counts().1.is_empty());
    }
}
