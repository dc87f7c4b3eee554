//! The service manager's side of systemd's notification protocol (`sd_notify(3)`, `sd_listen_fds(3)`), for
//! tests of cafsd under a file descriptor store where no systemd runs: a datagram socket that takes `READY=1`,
//! `FDSTORE=1` (with the fd attached, kept under its `FDNAME`) and `FDSTOREREMOVE=1`, and a way to start a
//! process as systemd starts a service with a store — `$NOTIFY_SOCKET`, `$FDSTORE`, and the stored fds passed
//! from fd 3 on with `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID`.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixAddr, recvmsg};

#[derive(Default)]
struct Held {
    ready: usize,
    /// Stored fds in the order they came, by name (systemd keeps that order when it passes them back).
    fds: Vec<(String, OwnedFd)>,
    /// Anything the manager could not make sense of.
    odd: Vec<String>,
}

pub struct Manager {
    pub socket: PathBuf,
    held: Arc<Mutex<Held>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Takes one datagram: its text and the fds attached.
fn receive(sock: &UnixDatagram) -> std::io::Result<(String, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; 4096];
    let mut space = nix::cmsg_space!([RawFd; 8]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<UnixAddr>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel installed these fds in this process for this message; nothing else owns them.
            fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
        }
    }
    let n = msg.bytes;
    Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), fds))
}

impl Manager {
    /// Listens on `dir/notify` (writable by anyone: the service may run as any user).
    pub fn start(dir: &Path) -> Self {
        let socket = dir.join("notify");
        let sock = UnixDatagram::bind(&socket).expect("bind the notification socket");
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let (held, stop) = (Arc::new(Mutex::new(Held::default())), Arc::new(AtomicBool::new(false)));
        let thread = {
            let (held, stop) = (held.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let Ok((text, mut fds)) = receive(&sock) else { continue };
                    let fields: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once('=')).collect();
                    let get = |k: &str| fields.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
                    let mut h = held.lock().unwrap();
                    if get("READY") == Some("1") {
                        h.ready += 1;
                    }
                    if get("FDSTORE") == Some("1") {
                        let name = get("FDNAME").unwrap_or("stored").to_string();
                        h.fds.extend(fds.drain(..).map(|fd| (name.clone(), fd)));
                    }
                    if get("FDSTOREREMOVE") == Some("1") {
                        let name = get("FDNAME").unwrap_or_default().to_string();
                        h.fds.retain(|(n, _)| *n != name);
                    }
                    if fields.is_empty() || !fds.is_empty() {
                        h.odd.push(text);
                    }
                }
            })
        };
        Self { socket, held, stop, thread: Some(thread) }
    }

    /// The names of the fds held now, in order.
    pub fn stored(&self) -> Vec<String> {
        self.held.lock().unwrap().fds.iter().map(|(n, _)| n.clone()).collect()
    }

    pub fn ready_count(&self) -> usize {
        self.held.lock().unwrap().ready
    }

    /// Messages that were neither readiness nor the store's, or fds sent without `FDSTORE=1`.
    pub fn odd(&self) -> Vec<String> {
        self.held.lock().unwrap().odd.clone()
    }

    /// Makes `cmd` start as systemd starts a service with a file descriptor store of `max` fds: the stored fds
    /// become 3, 4, … of the new process (and only of it), named in `LISTEN_FDNAMES`. `LISTEN_PID` must be the
    /// service's own pid, which only the started process knows: so `cmd` must be a `sh -c` that exports
    /// `LISTEN_PID=$$` and `exec`s the service (see [`Manager::service_command`]). Returns copies of the fds that
    /// must stay open until `cmd` is spawned, then be dropped.
    #[must_use]
    pub fn prepare(&self, cmd: &mut Command, max: usize) -> Vec<OwnedFd> {
        let h = self.held.lock().unwrap();
        // Copies far above the numbers they will get, close-on-exec here (the test's other children must not
        // inherit them); the child moves each down with dup2, which clears close-on-exec on the new number.
        let copies: Vec<OwnedFd> = h
            .fds
            .iter()
            .enumerate()
            .map(|(i, (_, fd))| {
                // SAFETY: fcntl(F_DUPFD_CLOEXEC) on an fd this manager owns; the result is a new fd owned here.
                let raw = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 1000 + i as RawFd) };
                assert!(raw >= 0, "dup: {}", std::io::Error::last_os_error());
                // SAFETY: `raw` was just returned by fcntl and nothing else owns it.
                unsafe { OwnedFd::from_raw_fd(raw) }
            })
            .collect();
        let names: Vec<&str> = h.fds.iter().map(|(n, _)| n.as_str()).collect();
        cmd.env("NOTIFY_SOCKET", &self.socket).env("FDSTORE", max.to_string());
        if copies.is_empty() {
            cmd.env_remove("LISTEN_FDS").env_remove("LISTEN_FDNAMES");
            return copies;
        }
        cmd.env("LISTEN_FDS", copies.len().to_string()).env("LISTEN_FDNAMES", names.join(":"));
        let raws: Vec<RawFd> = copies.iter().map(|f| f.as_raw_fd()).collect();
        // SAFETY: the closure only calls dup2, which is async-signal-safe, on fds open in the forked child.
        unsafe {
            cmd.pre_exec(move || {
                for (i, &raw) in raws.iter().enumerate() {
                    if libc::dup2(raw, 3 + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        copies
    }

    /// `sh -c 'export LISTEN_PID=$$; exec PROGRAM "$@"'` with `args`: the process started is `program`, under the
    /// shell's pid, so `LISTEN_PID` names it.
    pub fn service_command(program: &Path, args: &[std::ffi::OsString]) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("export LISTEN_PID=$$; exec \"$0\" \"$@\"").arg(program).args(args);
        cmd
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
