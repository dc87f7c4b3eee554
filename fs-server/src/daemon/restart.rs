//! Mounts across cafsd restarts: leaving each mount for the next cafsd at a stop, and taking over at start
//! the mounts systemd's fd store or the helper kept.

use super::*;

impl Server {
    /// Leaves a namespace mount for the next cafsd: holds its requests (see [`Server::keep`]; its collections
    /// are kept one by one as mounts of their own).
    pub async fn keep_namespace(&self, n: &NamespaceServed, limit: Duration) -> Result<(), ServerError> {
        let gate = n.at.gate.clone();
        tokio::task::spawn_blocking(move || gate.close(limit))
            .await
            .map_err(|e| ServerError::Internal(format!("gate task failed: {e}")))?;
        Ok(())
    }

    /// Serves again the mounts systemd's fd store handed back at start (see [`FdStore::restore`]). A mount that
    /// cannot be served is dropped from the store and detached. Blocking. Returns how many are served.
    pub fn restore_stored(self: &Arc<Self>) -> usize {
        let Some(store) = &self.fdstore else { return 0 };
        let mut served = 0;
        for Restored { name, handoff, fd } in store.restore() {
            let dir = handoff.request.mountpoint.clone();
            match self.serve(handoff, fd) {
                Ok(_) => {
                    tracing::info!(mount = %dir.display(), "took over a mount from systemd's fd store");
                    served += 1;
                }
                Err(message) => {
                    tracing::error!(mount = %dir.display(), %message, "cannot serve a mount from the fd store; detaching it");
                    store.forget(&name);
                    let _ = crate::daemon::mount::umount(&dir, true);
                }
            }
        }
        served
    }

    /// Asks the helper for the mounts it holds from an earlier cafsd (after a restart): each comes back through
    /// the fd socket and is served on, its journal recovered. Blocking. Returns the helper's account.
    pub fn reclaim(&self) -> Result<String, ServerError> {
        let stream = UnixStream::connect(&self.helper)
            .map_err(|source| ServerError::HelperUnreachable { path: self.helper.clone(), source })?;
        stream.set_read_timeout(Some(Duration::from_secs(600))).map_err(|e| ServerError::Internal(e.to_string()))?;
        wire::send(&stream, &HelperRequest::Reclaim, None).map_err(|e| ServerError::Helper(e.to_string()))?;
        match wire::recv::<Reply>(&stream).map_err(|e| ServerError::Helper(e.to_string()))? {
            (Reply { ok: true, message }, _) => Ok(message),
            (Reply { message, .. }, _) => Err(ServerError::Helper(message)),
        }
    }

    /// Leaves the mount for the next cafsd: waits (up to `limit`) for the requests in progress, holds every
    /// later one unanswered, stores every buffer, commits a changed tree if the mount commits by itself, and
    /// syncs the journal. The kernel keeps the held requests and sends them to the next cafsd.
    pub async fn keep(&self, s: &Served, limit: Duration) -> Result<(), ServerError> {
        let gate = s.at.gate.clone();
        let drained = tokio::task::spawn_blocking(move || gate.close(limit))
            .await
            .map_err(|e| ServerError::Internal(format!("gate task failed: {e}")))?;
        if !drained {
            tracing::warn!(mount = %s.at.dir.display(), "requests still in progress at the deadline");
        }
        if !s.autocommit.is_zero() && s.coll.is_dirty() {
            s.control.commit(&s.coll, "cafsd", "stop").await?;
        }
        let fs = s.coll.fs().clone();
        tokio::task::spawn_blocking(move || fs.flush_all().and_then(|()| fs.sync_journal()))
            .await
            .map_err(|e| ServerError::Internal(format!("flush task failed: {e}")))?
            .map_err(|e: FsError| ServerError::Collection(e.into()))
    }
}
