//! The unit files in `systemd/` pass `systemd-analyze verify`: syntax, known keys, dependencies between them,
//! and executables that exist — the units name `/usr/local/bin/…`, so a copy names the binaries just built.

use std::path::Path;
use std::process::Command;

use cafs_tests::mount::bin;

#[test]
fn unit_files_verify() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd");
    let tmp = tempfile::tempdir().unwrap();
    let bin_dir = bin("cafsd").parent().unwrap().to_path_buf();
    let mut units = Vec::new();
    for e in std::fs::read_dir(&src).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // A template is verified as an instance.
        let name = name.replace("@.", "@example.");
        let text =
            std::fs::read_to_string(&path).unwrap().replace("/usr/local/bin/", &format!("{}/", bin_dir.display()));
        std::fs::write(tmp.path().join(&name), text).unwrap();
        units.push(name);
    }
    units.sort();
    assert_eq!(
        units,
        [
            "cafs-collection@example.service",
            "cafs-mount.service",
            "cafs-mount.socket",
            "cafs-namespace.service",
            "cafsd.service"
        ],
        "the units this test knows"
    );
    let analyze = cafs_tests::tool("systemd-analyze");
    let out = Command::new(analyze).arg("verify").args(&units).current_dir(tmp.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed:\n{stderr}");
    assert!(!stderr.contains("Unknown") && !stderr.contains("not executable"), "{stderr}");
}

/// `Type=notify`: cafsd says READY=1 on `$NOTIFY_SOCKET`, and only once its gRPC socket accepts connections.
#[test]
fn cafsd_notifies_systemd_when_ready() {
    let tmp = tempfile::tempdir().unwrap();
    let notify = tmp.path().join("notify");
    let listener = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    listener.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
    let socket = tmp.path().join("run/cafsd.sock");
    let child = Command::new(bin("cafsd"))
        .arg("--state-dir")
        .arg(tmp.path().join("state"))
        .arg("--socket")
        .arg(&socket)
        .env("NOTIFY_SOCKET", &notify)
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _child = cafs_tests::Terminate(child);
    let mut buf = [0u8; 64];
    let n = listener.recv(&mut buf).expect("READY=1 within 60 s");
    assert_eq!(&buf[..n], b"READY=1");
    std::os::unix::net::UnixStream::connect(&socket).expect("the gRPC socket accepts once ready");
}

/// The helper's socket is not in a directory cafsd's user owns: systemd gives cafsd its `RuntimeDirectory`,
/// where cafsd could put its own socket in the helper's place. The socket unit makes the helper's directory,
/// writable by root alone.
#[test]
fn the_helper_socket_lives_where_cafsd_cannot_write() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd");
    let value = |unit: &str, key: &str| -> Vec<String> {
        let text = std::fs::read_to_string(src.join(unit)).unwrap();
        text.lines().filter_map(|l| l.strip_prefix(key)?.strip_prefix('=')).map(|v| v.trim().to_string()).collect()
    };
    let listen = value("cafs-mount.socket", "ListenStream");
    assert_eq!(listen.len(), 1, "{listen:?}");
    let socket_dir = Path::new(&listen[0]).parent().unwrap().to_path_buf();
    for dir in value("cafsd.service", "RuntimeDirectory") {
        let cafsd_dir = Path::new("/run").join(dir);
        assert!(
            !socket_dir.starts_with(&cafsd_dir),
            "the helper's socket {} is in cafsd's {}",
            listen[0],
            cafsd_dir.display()
        );
    }
    for paths in value("cafsd.service", "ReadWritePaths") {
        assert!(!paths.split(' ').any(|p| socket_dir.starts_with(p)), "cafsd may write {paths}");
    }
    let mode = value("cafs-mount.socket", "DirectoryMode");
    let mode = u32::from_str_radix(mode.first().map_or("0755", String::as_str), 8).unwrap();
    assert_eq!(mode & 0o022, 0, "the socket's directory is writable by others: {mode:o}");
    // cafsd looks for the helper there by default, and the helper listens there when systemd passes no socket.
    for (bin_name, args) in [("cafsd", &["--help"][..]), ("cafs-mount", &["serve", "--help"][..])] {
        let help = Command::new(bin(bin_name)).args(args).output().unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        assert!(help.contains(&listen[0]), "{bin_name}'s default is not {}:\n{help}", listen[0]);
    }
}
