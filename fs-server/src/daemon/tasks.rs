//! Relaying requests to the helper's socket, and the throughput samples every mount keeps.

use super::*;

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
