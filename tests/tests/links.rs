//! Hard links, FIFOs and sockets on a real mount, made the way jobs make them: `git clone` of a repository in
//! the mount (git hard-links the objects), `cp -al` and `rsync -aH` snapshots, a named pipe between two
//! processes, a socket bound in the working directory. The tree is committed, cafsd stopped and the ref
//! mounted again: every name, link and node comes back, git still reads its clone, the pipe still pipes; and the
//! Arvados SDK reads every committed file, hard-linked ones included, byte for byte. Needs root and /dev/fuse.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cafs::Manifest;
use cafs::store::LocalDirStore;
use cafs_tests::mount::MountedCafsd;
use cafs_tests::sdk;
use cafs_tests::stack::ok;

/// Runs `script` with `sh` in `dir` (bounded); fails the test, with the output, unless it succeeds. Returns its
/// standard output.
fn sh(dir: &Path, script: &str) -> String {
    ok(&cafs_tests::run_bounded(
        Command::new("sh").arg("-ec").arg(script).current_dir(dir).env("GIT_CONFIG_NOSYSTEM", "1").env("HOME", dir),
        Duration::from_secs(120),
    ))
}

fn ino(p: &Path) -> u64 {
    fs::symlink_metadata(p).unwrap().ino()
}

/// What a job of each kind makes, in the mount `m`.
fn make(m: &Path) {
    // A repository made in the mount, then cloned within it: git hard-links the clone's objects.
    sh(
        m,
        "git init -q -b main src && cd src && git config user.name job && git config user.email job@node \
         && for i in $(seq 1 30); do seq 1 $((i * 100)) > f$i; done && git add . && git commit -qm one \
         && echo more >> f1 && git commit -qam two && git gc -q",
    );
    sh(m, "git clone -q src clone");
    // `cp -al` snapshots a tree as hard links; `rsync -aH` copies one keeping its links.
    sh(m, "mkdir data && seq 1 200000 > data/numbers && ln data/numbers data/again && cp -al data snap");
    sh(m, "rsync -aH data/ synced/");
    // A socket bound in the working directory.
    let listener = UnixListener::bind(m.join("sock")).unwrap();
    let client = std::thread::spawn({
        let path = m.join("sock");
        move || UnixStream::connect(path).unwrap().write_all(b"over the socket").unwrap()
    });
    let mut got = String::new();
    listener.accept().unwrap().0.read_to_string(&mut got).unwrap();
    client.join().unwrap();
    assert_eq!(got, "over the socket");
    drop(listener);
    sh(m, "mkfifo -m 0640 pipe");
}

/// Checks what [`make`] made, in the mount `m` (just made, or committed and mounted again).
fn check(m: &Path) {
    let objects = walk(&m.join("clone/.git/objects"));
    let linked = objects.iter().filter(|p| fs::metadata(p).unwrap().nlink() >= 2).count();
    assert!(linked >= 1, "git hard-linked the clone's objects ({} files)", objects.len());
    sh(m, "git -C clone fsck --strict --no-progress && test \"$(git -C clone log --oneline | wc -l)\" = 2");
    assert_eq!(sh(m, "git -C clone show HEAD:f1 | tail -n 1"), "more\n");
    assert_eq!(ino(&m.join("snap/numbers")), ino(&m.join("data/numbers")));
    assert_eq!(ino(&m.join("data/again")), ino(&m.join("data/numbers")));
    assert_eq!(ino(&m.join("synced/again")), ino(&m.join("synced/numbers")));
    assert_ne!(ino(&m.join("synced/numbers")), ino(&m.join("data/numbers")));
    // data/numbers, data/again and their two names in snap/.
    assert_eq!(fs::metadata(m.join("data/numbers")).unwrap().nlink(), 4);
    // A FIFO between two processes of the node.
    assert_eq!(sh(m, "(seq 1 50000 > pipe &) ; wc -l < pipe").trim(), "50000");
    assert!(fs::symlink_metadata(m.join("sock")).unwrap().file_type().is_socket());
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

#[test]
fn links_pipes_and_sockets_made_by_jobs_survive_commit_and_remount() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, mnt) = (tmp.path().join("state"), tmp.path().join("mnt"));
    let args = ["--ref", "links", "--autocommit", "0"];
    let cafsd = MountedCafsd::start(&state, &mnt, &args);
    make(&mnt);
    check(&mnt);
    // Written through one name, seen through every other.
    sh(&mnt, "echo tail >> snap/numbers && test \"$(tail -n 1 data/again)\" = tail");
    let before = cafs_tests::names_tree(&mnt);

    fs::write(mnt.join(".cafs/commit"), b"links").unwrap();
    let text = fs::read_to_string(mnt.join(".cafs/manifest")).unwrap();
    let manifest = Manifest::parse(text.as_bytes()).unwrap();
    assert!(!text.contains(":pipe") && !text.contains(":sock"), "the manifest cannot hold FIFOs or sockets");
    // Every name of a linked file is in the manifest with the same pieces: its bytes are stored once.
    let numbers_blocks = |t: &str| t.lines().filter(|l| l.contains(":numbers") || l.contains(":again")).count();
    assert_eq!(numbers_blocks(&text), 3, "data/, snap/ and synced/ list them: {text}");
    let (status, _) = cafsd.stop();
    assert!(status.success());

    let again = MountedCafsd::start(&state, &mnt, &args);
    assert_eq!(cafs_tests::names_tree(&mnt), before, "the remounted tree has every name, link and node");
    check(&mnt);
    let (status, _) = again.stop();
    assert!(status.success());

    // The SDK reads every committed file (FIFOs and sockets are not in a manifest) byte for byte.
    let store = LocalDirStore::open(state.join("blocks")).unwrap();
    let keep = tmp.path().join("keep");
    sdk::export_blocks_for_sdk(&store, &manifest, &keep);
    let out = tmp.path().join("sdk-out");
    let by_sdk = sdk::read_tree(&keep, &text, &out);
    assert_eq!(by_sdk.pdh, manifest.pdh().to_string());
    let files = |t: BTreeMap<String, cafs_tests::Named>| -> BTreeMap<String, Vec<u8>> {
        t.into_iter().filter(|(_, e)| e.0 == 'f').map(|(p, e)| (p, e.2)).collect()
    };
    let committed = files(before);
    assert!(committed.len() > 60, "{} files", committed.len());
    assert_eq!(files(cafs_tests::names_tree(&out)), committed, "the SDK reads identical bytes for every name");
}
