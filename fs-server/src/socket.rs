//! Binding cafsd's own Unix sockets (the gRPC socket, the fd socket, the metrics socket) without stealing one
//! that another live process serves.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

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
