//! The gate in front of a mount's requests: what lets cafsd stop while keeping its mounts for the next cafsd
//! without cutting a request off halfway.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

/// Lets kernel requests through while cafsd serves the mount; once closed (cafsd stopping with its mounts kept
/// for the next one), holds every request it has read, unanswered, until the process ends. The kernel keeps
/// those requests and sends them again to the next cafsd (`FUSE_NOTIFY_RESEND`), which then does them whole:
/// closing waits for the requests in progress, so none is cut off halfway.
#[derive(Debug, Default)]
pub struct Gate {
    lock: RwLock<()>,
    /// Closed already: the collections of a namespace mount share its gate, and each is kept in turn.
    closed: AtomicBool,
}

impl Gate {
    /// Lets a request of kind `op` in (counted and timed in [`crate::metrics`] until the guard is dropped).
    pub fn enter(&self, op: &'static str) -> Live<'_> {
        let request = crate::metrics::metrics().fuse(op);
        Live { _open: self.lock.read().unwrap_or_else(|p| p.into_inner()), _request: request }
    }

    /// Waits up to `limit` for the requests in progress, then holds all later ones for good. Returns whether
    /// the requests in progress finished in time (true at once when it was closed before).
    pub fn close(self: &Arc<Self>, limit: Duration) -> bool {
        if self.closed.swap(true, Ordering::SeqCst) {
            return true;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let gate = self.clone();
        // A blocking write lock: once it waits, new readers wait behind it, so a busy mount drains.
        std::thread::spawn(move || {
            let held = gate.lock.write().unwrap_or_else(|p| p.into_inner());
            std::mem::forget(held);
            let _ = tx.send(());
        });
        rx.recv_timeout(limit).is_ok()
    }
}

/// A request let in by the [`Gate`]: the gate cannot close on it, and it is counted when it ends.
pub struct Live<'a> {
    _open: RwLockReadGuard<'a, ()>,
    _request: crate::metrics::FuseRequest,
}
