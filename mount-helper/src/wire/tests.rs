use std::io::Write;

use super::*;

fn request() -> MountRequest {
    MountRequest {
        mountpoint: "/scratch/job 1".into(),
        origin: Origin::Ref("results".into()),
        read_only: false,
        allow_other: false,
    }
}

#[test]
fn a_message_and_its_fd_arrive_together() {
    let (a, b) = UnixStream::pair().unwrap();
    let (r, w) = std::io::pipe().unwrap();
    let h = Handoff { request: request(), uid: 1000, gid: 1000, resume: false, held: true };
    send(&a, &h, Some(std::os::fd::AsFd::as_fd(&w))).unwrap();
    drop(w);
    let (got, fd): (Handoff, _) = recv(&b).unwrap();
    assert_eq!(got, h);
    // The received fd is the pipe's write end: what is written to it comes out of the read end.
    let mut out = std::fs::File::from(fd.expect("an fd came along"));
    out.write_all(b"through the fd").unwrap();
    drop(out);
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(OwnedFd::from(r)), &mut text).unwrap();
    assert_eq!(text, "through the fd");
}

#[test]
fn messages_without_fds_and_peer_credentials() {
    let (a, b) = UnixStream::pair().unwrap();
    send(&a, &Reply { ok: false, message: "no".into() }, None).unwrap();
    let (got, fd): (Reply, _) = recv(&b).unwrap();
    assert_eq!(got, Reply { ok: false, message: "no".into() });
    assert!(fd.is_none());
    let (uid, gid, pid) = peer(&b).unwrap();
    assert_eq!((uid, gid), (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw()));
    assert_eq!(pid, std::process::id() as i32);
}

#[test]
fn oversized_frames_are_refused_before_their_body_is_read() {
    let (a, b) = UnixStream::pair().unwrap();
    (&a).write_all(&(16u32 << 20).to_be_bytes()).unwrap();
    assert!(matches!(recv::<MountRequest>(&b), Err(WireError::TooLarge(n)) if n == 16 << 20));
    // And the sender refuses to make one.
    let huge = MountRequest { mountpoint: "x".repeat(MAX_MESSAGE + 1).into(), ..request() };
    assert!(matches!(send(&a, &huge, None), Err(WireError::TooLarge(_))));
}

#[test]
fn malformed_and_truncated_messages_are_refused() {
    let (a, b) = UnixStream::pair().unwrap();
    for body in [&b"not json"[..], br#"{"mountpoint":"/x"}"#, br#"{"mountpoint":"/x","origin":{"ref":"r"},"extra":1}"#]
    {
        (&a).write_all(&(body.len() as u32).to_be_bytes()).unwrap();
        (&a).write_all(body).unwrap();
        assert!(matches!(recv::<MountRequest>(&b), Err(WireError::Malformed(_))), "{}", String::from_utf8_lossy(body));
    }
    // A peer that hangs up mid-frame.
    (&a).write_all(&100u32.to_be_bytes()).unwrap();
    (&a).write_all(b"{\"mount").unwrap();
    drop(a);
    assert!(matches!(recv::<MountRequest>(&b), Err(WireError::Closed)));
    assert!(matches!(recv::<MountRequest>(&b), Err(WireError::Closed)));
}

#[test]
fn the_json_is_the_documented_shape() {
    let text =
        serde_json::to_string(&Handoff { request: request(), uid: 7, gid: 8, resume: false, held: false }).unwrap();
    assert_eq!(
        text,
        r#"{"request":{"mountpoint":"/scratch/job 1","origin":{"ref":"results"},"read_only":false,"allow_other":false},"uid":7,"gid":8,"resume":false,"held":false}"#
    );
    // A hand-over from a helper that predates live restart: a fresh mount nobody holds.
    let old: Handoff = serde_json::from_str(
        r#"{"request":{"mountpoint":"/m","origin":{"ref":"r"},"read_only":false},"uid":7,"gid":8}"#,
    )
    .unwrap();
    assert!(!old.resume && !old.held);
    let pdh: MountRequest =
        serde_json::from_str(r#"{"mountpoint":"/m","origin":{"pdh":"d41d8cd98f00b204e9800998ecf8427e+0"}}"#).unwrap();
    assert_eq!(pdh.origin, Origin::Pdh("d41d8cd98f00b204e9800998ecf8427e+0".into()));
    assert!(!pdh.read_only && !pdh.allow_other);
    let ns: MountRequest =
        serde_json::from_str(r#"{"mountpoint":"/cafs","origin":"namespace","allow_other":true}"#).unwrap();
    assert_eq!((ns.origin, ns.allow_other), (Origin::Namespace, true));
}

#[test]
fn the_fd_socket_sits_beside_the_grpc_socket() {
    assert_eq!(
        fd_socket_path(std::path::Path::new("/run/cafs/cafsd.sock")),
        std::path::Path::new("/run/cafs/cafsd.fd.sock")
    );
    assert_eq!(fd_socket_path(std::path::Path::new("/tmp/x/api")), std::path::Path::new("/tmp/x/api.fd.sock"));
}

/// The deadline is for the whole frame: a peer that sends a byte now and then, each well within any per-read
/// timeout, is cut off when the deadline passes, not when it stops sending.
#[test]
fn a_trickling_peer_is_cut_off_at_the_deadline() {
    let (a, b) = UnixStream::pair().unwrap();
    let frame = [&60u32.to_be_bytes()[..], &[b' '; 60]].concat();
    let writer = std::thread::spawn(move || {
        for byte in frame {
            if (&a).write_all(&[byte]).is_err() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    });
    let start = Instant::now();
    let got = recv_within::<Reply>(&b, start + std::time::Duration::from_millis(800));
    let took = start.elapsed();
    assert!(matches!(got, Err(WireError::TimedOut)), "{got:?}");
    assert!(took < std::time::Duration::from_secs(2), "cut off after {took:?}, not at the deadline");
    drop(b);
    writer.join().unwrap();
}

#[test]
fn a_whole_frame_within_the_deadline_arrives() {
    let (a, b) = UnixStream::pair().unwrap();
    send(&a, &Reply { ok: true, message: "yes".into() }, None).unwrap();
    let (got, _): (Reply, _) = recv_within(&b, Instant::now() + std::time::Duration::from_secs(5)).unwrap();
    assert_eq!(got.message, "yes");
}
