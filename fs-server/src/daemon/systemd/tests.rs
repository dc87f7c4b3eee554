use std::io::{IoSliceMut, Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;

use cafs_mount::wire::{MountRequest, Origin};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixAddr, recvmsg};

use super::*;

/// What systemd would receive: the text of one datagram and the fds attached to it.
fn receive(sock: &UnixDatagram) -> Option<(String, Vec<OwnedFd>)> {
    let mut buf = [0u8; 4096];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = match recvmsg::<UnixAddr>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_DONTWAIT) {
        Ok(m) => m,
        Err(nix::errno::Errno::EAGAIN) => return None,
        Err(e) => panic!("recvmsg: {e}"),
    };
    let mut fds = Vec::new();
    for c in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel installed these fds in this process for this message; nothing else owns them.
            fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
        }
    }
    let n = msg.bytes;
    Some((String::from_utf8(buf[..n].to_vec()).unwrap(), fds))
}

fn handoff(dir: &str) -> Handoff {
    Handoff {
        request: MountRequest {
            mountpoint: dir.into(),
            origin: Origin::Ref("job".into()),
            read_only: false,
            allow_other: false,
        },
        uid: 1000,
        gid: 1000,
        resume: false,
        held: false,
    }
}

#[test]
fn keep_stores_a_duplicate_with_its_record_and_forget_drops_both() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify");
    let systemd = UnixDatagram::bind(&sock_path).unwrap();
    let store = FdStore::at(UnixAddr::new(&sock_path).unwrap(), &dir.path().join("records")).unwrap();

    let mut file = tempfile::tempfile().unwrap();
    let h = handoff("/scratch/job");
    let name = store.keep(&h, file.as_fd()).unwrap();
    assert_eq!(name, fd_name(Path::new("/scratch/job")));
    assert!(name.starts_with("cafs-") && name.len() == 5 + 32, "{name}");
    assert!(store.holds(Path::new("/scratch/job")));

    let (text, fds) = receive(&systemd).expect("systemd got the fd");
    assert_eq!(text, format!("FDSTORE=1\nFDNAME={name}"));
    assert_eq!(fds.len(), 1);
    // The stored fd is the same open file: what is written through one is read through the other.
    let mut theirs = std::fs::File::from(fds.into_iter().next().unwrap());
    theirs.write_all(b"same file").unwrap();
    file.rewind().unwrap();
    let mut read = String::new();
    file.read_to_string(&mut read).unwrap();
    assert_eq!(read, "same file");

    // The record says what the fd is a mount of (never "resumed": that is decided when it comes back).
    let record: Handoff =
        serde_json::from_slice(&std::fs::read(dir.path().join("records").join(format!("{name}.json"))).unwrap())
            .unwrap();
    assert_eq!(record, h);

    // Kept once: a second keep of the same mount sends nothing.
    store.keep(&h, file.as_fd()).unwrap();
    assert!(receive(&systemd).is_none());

    store.forget(&name);
    let (text, fds) = receive(&systemd).expect("systemd told to drop it");
    assert_eq!(text, format!("FDSTOREREMOVE=1\nFDNAME={name}"));
    assert!(fds.is_empty());
    assert!(!dir.path().join("records").join(format!("{name}.json")).exists());
    assert!(!store.holds(Path::new("/scratch/job")));
    // Forgetting what is not stored sends nothing.
    store.forget(&name);
    assert!(receive(&systemd).is_none());
}

#[test]
fn a_failed_send_leaves_nothing_claimed() {
    let dir = tempfile::tempdir().unwrap();
    // Nobody listens there.
    let store = FdStore::at(UnixAddr::new(&dir.path().join("gone")).unwrap(), &dir.path().join("records")).unwrap();
    let file = tempfile::tempfile().unwrap();
    assert!(matches!(store.keep(&handoff("/scratch/a"), file.as_fd()), Err(SystemdError::Send(_))));
    assert!(!store.holds(Path::new("/scratch/a")));
}

#[test]
fn names_are_stable_and_distinct_per_mount_point() {
    assert_eq!(fd_name(Path::new("/a/b")), fd_name(Path::new("/a/b")));
    assert_ne!(fd_name(Path::new("/a/b")), fd_name(Path::new("/a/c")));
    // Valid systemd fd names: at most 255 characters, no ':' and nothing outside printable ASCII.
    let n = fd_name(Path::new("/x"));
    assert!(n.len() <= 255 && n.bytes().all(|b| b.is_ascii_graphic() && b != b':'));
}
