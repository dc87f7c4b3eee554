//! The helper's socket as cafsd uses it (binding its own sockets, relaying requests), and the background tasks
//! of every mount (throughput samples, auto-commit).

use super::*;

/// Binds a Unix socket at `path`, replacing a stale socket file, but never one that a live process still
/// serves (a second cafsd on the same socket would otherwise silently take it over).
pub fn bind_unix(path: &Path) -> std::io::Result<UnixListener> {
    if UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, "another process is serving this socket"));
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(path)
}

/// Sends `request` to the helper at `helper`, acting for `uid`, and waits for its answer. Blocking.
pub(super) fn relay(helper: &Path, uid: u32, request: HelperRequest) -> Result<(), ServerError> {
    let unreachable = |source| ServerError::HelperUnreachable { path: helper.to_path_buf(), source };
    let stream = UnixStream::connect(helper).map_err(unreachable)?;
    // The helper waits up to 120 s for a hand-over's answer and 30 s for the mount to appear.
    stream.set_read_timeout(Some(Duration::from_secs(180))).map_err(unreachable)?;
    let request = HelperRequest::Relay { uid, request: Box::new(request) };
    wire::send(&stream, &request, None).map_err(|e| ServerError::Helper(e.to_string()))?;
    match wire::recv::<Reply>(&stream) {
        Ok((Reply { ok: true, .. }, _)) => Ok(()),
        Ok((Reply { message, .. }, _)) => Err(ServerError::Helper(message)),
        Err(e) => Err(ServerError::Helper(e.to_string())),
    }
}

/// Samples every mount's uploaded bytes once a second, until the server is gone.
pub(super) async fn sample_throughput(server: Weak<Server>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(server) = server.upgrade() else { return };
        let now = Instant::now();
        for s in server.list() {
            let bytes = s.coll.fs().upload_stats().uploaded_bytes;
            s.throughput.lock().unwrap_or_else(|p| p.into_inner()).sample(now, bytes);
        }
    }
}

/// Commits a changed tree once it has been left alone for `idle`; stops once `alive` says the mount is gone.
pub async fn autocommit(coll: Arc<Collection>, control: Arc<Control>, idle: Duration, alive: impl Fn() -> bool) {
    let mut seen = coll.fs().generation();
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1).min(idle)).await;
        if !alive() {
            return;
        }
        let now = coll.fs().generation();
        if now != seen {
            (seen, since) = (now, Instant::now());
        } else if coll.is_dirty() && since.elapsed() >= idle {
            let _ = control.commit(&coll, "cafsd", "auto-commit").await;
            since = Instant::now();
        }
    }
}
