//! Real FUSE mounts (cafsd's root development mode): POSIX operations through the kernel, the control files,
//! commit → unmount → remount with identical bytes, sizes, modes, mtimes and symlinks, commit on unmount, the
//! right errnos, and the Arvados SDK reading what a mount committed. These need root and /dev/fuse; without
//! them they fail.

use std::collections::BTreeMap;
use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use cafs::Manifest;
use cafs::store::LocalDirStore;
use cafs_tests::mount::MountedCafsd;
use cafs_tests::sdk;

/// What `lstat` and a read show of an entry: kind, mode, size, mtime (s, ns), content or symlink target.
type Shown = (String, u32, u64, i64, i64, Vec<u8>);

/// Every entry below `root`, not following symlinks.
fn tree(root: &Path) -> BTreeMap<String, Shown> {
    cafs_tests::lstat_tree(root)
        .into_iter()
        .map(|(p, (m, content))| {
            let kind = if m.is_dir() {
                "dir"
            } else if m.file_type().is_symlink() {
                "symlink"
            } else {
                "file"
            };
            let size = if m.is_dir() { 0 } else { m.len() };
            (p, (kind.to_string(), m.mode() & 0o7777, size, m.mtime(), m.mtime_nsec(), content))
        })
        .collect()
}

fn populate(m: &Path) {
    fs::write(m.join("hello.txt"), b"hello\n").unwrap();
    fs::create_dir_all(m.join("a b/deeper")).unwrap();
    fs::write(m.join("a b/c.txt"), b"foo").unwrap();
    fs::write(m.join("a b/deeper/x:y"), b"colon").unwrap();
    fs::create_dir(m.join("empty dir")).unwrap();
    fs::write(m.join("empty file"), b"").unwrap();
    std::os::unix::fs::symlink("a b/c.txt", m.join("link")).unwrap();
    fs::set_permissions(m.join("hello.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(m.join("a b"), fs::Permissions::from_mode(0o750)).unwrap();
    // Random access: r+ overwrite in the middle, append, sparse extension, truncate.
    let mut f = fs::OpenOptions::new().create(true).truncate(true).write(true).open(m.join("rw.bin")).unwrap();
    f.write_all(&[1u8; 10_000]).unwrap();
    drop(f);
    let mut f = fs::OpenOptions::new().read(true).write(true).open(m.join("rw.bin")).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, &[2u8; 100], 5_000).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, b"tail", 20_000).unwrap();
    f.set_len(19_000).unwrap();
    f.flush().unwrap();
    drop(f);
    let mut a = fs::OpenOptions::new().append(true).open(m.join("hello.txt")).unwrap();
    a.write_all(b"more\n").unwrap();
    drop(a);
    let t = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
    fs::File::options().write(true).open(m.join("a b/c.txt")).unwrap().set_modified(t).unwrap();
}

#[test]
fn write_commit_unmount_remount() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, mnt) = (tmp.path().join("state"), tmp.path().join("mnt"));
    // The development mode's own test: cafsd mounts by itself, and prints only the hash of a commit on unmount.
    let cafsd = MountedCafsd::start_dev(&state, &mnt, &["--ref", "job", "--autocommit", "0"]);
    populate(&mnt);

    // Control files: reachable, not listed, not committed.
    let names: Vec<String> =
        fs::read_dir(&mnt).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(!names.iter().any(|n| n == ".cafs"), "{names:?}");
    assert_eq!(fs::read_to_string(mnt.join(".cafs/dirty")).unwrap(), "1\n");
    fs::write(mnt.join(".cafs/commit"), b"first commit").unwrap();
    assert_eq!(fs::read_to_string(mnt.join(".cafs/dirty")).unwrap(), "0\n");
    let pdh = fs::read_to_string(mnt.join(".cafs/hash")).unwrap().trim().to_string();
    let manifest = fs::read_to_string(mnt.join(".cafs/manifest")).unwrap();
    assert_eq!(Manifest::parse(manifest.as_bytes()).unwrap().pdh().to_string(), pdh);
    assert!(!manifest.contains("cafs") && !manifest.contains("link"), "{manifest}");
    let status: serde_json::Value = serde_json::from_slice(&fs::read(mnt.join(".cafs/status")).unwrap()).unwrap();
    assert_eq!(status["last_commit"], pdh.as_str());

    // Content as written.
    let mut expected_rw = vec![1u8; 10_000];
    expected_rw[5_000..5_100].fill(2);
    expected_rw.resize(19_000, 0);
    assert_eq!(fs::read(mnt.join("rw.bin")).unwrap(), expected_rw);
    assert_eq!(fs::read(mnt.join("hello.txt")).unwrap(), b"hello\nmore\n");
    let before = tree(&mnt);

    let (status, _) = cafsd.stop();
    assert!(status.success(), "{status}");
    let again = MountedCafsd::start_dev(&state, &mnt, &["--ref", "job", "--autocommit", "0"]);
    assert_eq!(tree(&mnt), before, "remount shows the committed tree exactly");
    assert_eq!(fs::read_to_string(mnt.join(".cafs/hash")).unwrap().trim(), pdh);
    assert_eq!(fs::read_to_string(mnt.join(".cafs/dirty")).unwrap(), "0\n");
    let (status, out) = again.stop();
    assert!(status.success());
    assert!(out.is_empty(), "an unchanged tree is not committed on unmount: {out}");
}

#[test]
fn a_changed_tree_is_committed_on_unmount() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, mnt) = (tmp.path().join("state"), tmp.path().join("mnt"));
    let cafsd = MountedCafsd::start(&state, &mnt, &["--ref", "r", "--autocommit", "0"]);
    fs::write(mnt.join("out.txt"), b"result").unwrap();
    let (status, out) = cafsd.stop();
    assert!(status.success());
    let pdh = out.trim().to_string();
    assert!(cafs::Pdh::parse(&pdh).is_ok(), "cafsd prints the PDH of the commit on unmount: {out:?}");
    let again = MountedCafsd::start(&state, &mnt, &["--ref", "r", "--autocommit", "0"]);
    assert_eq!(fs::read(mnt.join("out.txt")).unwrap(), b"result");
    assert_eq!(fs::read_to_string(mnt.join(".cafs/hash")).unwrap().trim(), pdh);
    again.stop();
    // Mounted by hash: read-only.
    let ro = MountedCafsd::start(&state, &mnt, &["--pdh", &pdh]);
    assert_eq!(fs::read(mnt.join("out.txt")).unwrap(), b"result");
    let e = fs::write(mnt.join("new"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    ro.stop();
}

#[test]
fn auto_commit_after_idle_seconds() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, mnt) = (tmp.path().join("state"), tmp.path().join("mnt"));
    let cafsd = MountedCafsd::start(&state, &mnt, &["--ref", "auto", "--autocommit", "1"]);
    fs::write(mnt.join("f"), b"x").unwrap();
    let start = std::time::Instant::now();
    while fs::read_to_string(mnt.join(".cafs/dirty")).unwrap() != "0\n" {
        assert!(start.elapsed() < Duration::from_secs(20), "no auto-commit within 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!fs::read_to_string(mnt.join(".cafs/hash")).unwrap().is_empty());
    cafsd.stop();
}

#[test]
fn errors_are_the_right_errnos() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, mnt) = (tmp.path().join("state"), tmp.path().join("mnt"));
    let cafsd = MountedCafsd::start(&state, &mnt, &["--ref", "e", "--autocommit", "0"]);
    let errno = |r: std::io::Result<()>| r.unwrap_err().raw_os_error();
    fs::create_dir(mnt.join("d")).unwrap();
    fs::write(mnt.join("d/f"), b"x").unwrap();
    assert_eq!(errno(fs::create_dir(mnt.join("d"))), Some(libc::EEXIST));
    assert_eq!(errno(fs::remove_dir(mnt.join("d"))), Some(libc::ENOTEMPTY));
    assert_eq!(errno(fs::remove_file(mnt.join("d"))), Some(libc::EISDIR));
    assert_eq!(errno(fs::remove_file(mnt.join("nope"))), Some(libc::ENOENT));
    assert_eq!(errno(fs::create_dir(mnt.join("d/f/x"))), Some(libc::ENOTDIR));
    assert_eq!(errno(fs::hard_link(mnt.join("d"), mnt.join("h"))), Some(libc::EPERM));
    assert_eq!(errno(fs::hard_link(mnt.join("d/f"), mnt.join("d/f"))), Some(libc::EEXIST));
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    let dev = mknod(&mnt.join("null"), SFlag::S_IFCHR, Mode::from_bits_truncate(0o600), makedev(1, 3));
    assert_eq!(dev, Err(nix::errno::Errno::EPERM), "a device node is refused, even to root");
    assert_eq!(errno(fs::write(mnt.join("n".repeat(256)), b"x")), Some(libc::ENAMETOOLONG));
    assert_eq!(errno(fs::write(mnt.join(".cafs/hash"), b"x")), Some(libc::EACCES));
    assert_eq!(errno(fs::create_dir(mnt.join(".cafs"))), Some(libc::EEXIST));
    assert_eq!(errno(fs::rename(mnt.join("d"), mnt.join("d/inside"))), Some(libc::EINVAL));
    assert_eq!(fs::read(mnt.join("d")).unwrap_err().kind(), ErrorKind::IsADirectory);
    // rename replaces a file; rmdir of an empty directory works.
    fs::write(mnt.join("g"), b"y").unwrap();
    fs::rename(mnt.join("g"), mnt.join("d/f")).unwrap();
    assert_eq!(fs::read(mnt.join("d/f")).unwrap(), b"y");
    fs::remove_file(mnt.join("d/f")).unwrap();
    fs::remove_dir(mnt.join("d")).unwrap();
    cafsd.stop();
}

#[test]
fn the_arvados_sdk_reads_what_a_mount_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, mnt) = (tmp.path().join("state"), tmp.path().join("mnt"));
    let cafsd = MountedCafsd::start(&state, &mnt, &["--ref", "sdk", "--autocommit", "0"]);
    fs::create_dir(mnt.join("dir with spaces")).unwrap();
    fs::write(mnt.join("dir with spaces/a:b c"), b"spaces and colons").unwrap();
    // More than one 64 MiB block, written in 1 MiB chunks as a streaming writer would.
    let big: Vec<u8> = (0..(70u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    let mut f = fs::File::create(mnt.join("big.bin")).unwrap();
    for chunk in big.chunks(1 << 20) {
        f.write_all(chunk).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    fs::write(mnt.join(".cafs/commit"), b"for the sdk").unwrap();
    let manifest_text = fs::read_to_string(mnt.join(".cafs/manifest")).unwrap();
    let pdh = fs::read_to_string(mnt.join(".cafs/hash")).unwrap().trim().to_string();
    let expected = cafs_tests::snapshot(&mnt);
    cafsd.stop();

    let manifest = Manifest::parse(manifest_text.as_bytes()).unwrap();
    assert!(manifest.blocks().len() >= 2, "the big file spans blocks");
    let store = LocalDirStore::open(state.join("blocks")).unwrap();
    let keep = tmp.path().join("keep");
    sdk::export_blocks_for_sdk(&store, &manifest, &keep);
    let out = tmp.path().join("sdk-out");
    let by_sdk = sdk::read_tree(&keep, &manifest_text, &out);
    assert_eq!(by_sdk.pdh, pdh, "the SDK's hash of the committed manifest is cafs's");
    assert_eq!(cafs_tests::snapshot(&out), expected, "the SDK reads identical bytes");
}

/// A listing read while entries are removed returns every entry that was there when it started exactly once:
/// each `opendir` lists the directory once and `readdir` serves pages of that listing. Before, every page listed
/// the directory again and skipped to its offset, so names removed behind the reader shifted the rest forward
/// and entries it had not reached yet were never returned.
#[test]
fn a_listing_survives_removals_behind_the_reader() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, mnt) = (tmp.path().join("state"), tmp.path().join("mnt"));
    let cafsd = MountedCafsd::start(&state, &mnt, &["--ref", "r", "--autocommit", "0"]);
    let dir = mnt.join("many");
    fs::create_dir(&dir).unwrap();
    let names: Vec<String> = (0..6000).map(|i| format!("entry-{i:05}")).collect();
    for n in &names {
        fs::write(dir.join(n), b"").unwrap();
    }
    let mut listing = nix::dir::Dir::open(&dir, nix::fcntl::OFlag::O_RDONLY, nix::sys::stat::Mode::empty()).unwrap();
    let mut seen = Vec::new();
    let mut removed = false;
    for e in listing.iter() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name != "." && name != ".." {
            seen.push(name);
        }
        // One getdents call fills libc's buffer with the first few hundred names; remove them (all behind the
        // reader) before it asks for the next page.
        if seen.len() == 100 && !removed {
            for n in &seen {
                fs::remove_file(dir.join(n)).unwrap();
            }
            removed = true;
        }
    }
    drop(listing);
    assert!(removed);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "no entry is returned twice");
    assert_eq!(sorted, names, "every entry there when the listing started is returned");
    assert_eq!(fs::read_dir(&dir).unwrap().count(), names.len() - 100);
    cafsd.stop();
}

/// A manifest another writer put in the catalog, with names POSIX cannot hold (a `..` component, a NUL byte, a
/// file and a directory of one name), mounts with those names presented as documented, each with a warning
/// in cafsd's log, and every byte of every file readable.
#[test]
fn a_foreign_manifest_with_odd_names_mounts_with_every_byte() {
    use cafs::catalog::{Catalog, CollectionRecord, SqliteCatalog};
    use cafs::store::{Block, BlockStore};
    let tmp = tempfile::tempdir().unwrap();
    let (state, mnt) = (tmp.path().join("state"), tmp.path().join("mnt"));
    let data = b"0123456789".to_vec();
    let block = Block::new(data.clone()).unwrap();
    let loc = block.locator().to_string();
    let text = format!(". {loc} 0:4:x 4:6:\\056\\056 0:10:a\\000b\n./x {loc} 2:3:inner\n./d/../e {loc} 5:5:f\n");
    let pdh = cafs::Pdh::of_text(text.as_bytes());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        LocalDirStore::open(state.join("blocks")).unwrap().put(&block).await.unwrap();
        let catalog = SqliteCatalog::open(state.join("catalog.sqlite")).unwrap();
        catalog.put_collection(&CollectionRecord::from_stored(pdh, text.clone()).unwrap()).await.unwrap();
    });
    assert!(Manifest::parse(text.as_bytes()).is_err(), "the strict parser refuses this manifest");
    let log = tmp.path().join("cafsd.log");
    let ro = MountedCafsd::start_dev_logged(&state, &mnt, &["--pdh", &pdh.to_string()], &log);
    let read = |p: &str| fs::read(mnt.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(read("x.cafs-file"), b"0123", "the file moved aside for the directory x");
    assert_eq!(read("x/inner"), b"234");
    assert_eq!(read("%2E%2E"), b"456789");
    assert_eq!(read("a%00b"), data);
    assert_eq!(read("d/%2E%2E/e/f"), b"56789");
    let mut top: Vec<String> =
        fs::read_dir(&mnt).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    top.sort();
    assert_eq!(top, ["%2E%2E", "a%00b", "d", "x", "x.cafs-file"]);
    ro.stop();
    let logged = fs::read_to_string(&log).unwrap();
    assert_eq!(logged.matches("a name of this collection is shown differently").count(), 4, "{logged}");
}

/// Set-user-ID and set-group-ID are cleared by cafs (the kernel leaves it to cafs: FUSE_HANDLE_KILLPRIV_V2), as
/// Linux clears them: on a change of owner, and on a write or truncate by a user without CAP_FSETID; root's own
/// write keeps them.
#[test]
fn set_user_id_is_cleared_as_linux_clears_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, mnt) = (tmp.path().join("state"), tmp.path().join("mnt"));
    let cafsd = MountedCafsd::start(&state, &mnt, &["--ref", "s", "--autocommit", "0", "--allow-other"]);
    let f = mnt.join("f");
    let mode = || fs::metadata(&f).unwrap().permissions().mode() & 0o7777;
    let chmod = |m: u32| fs::set_permissions(&f, fs::Permissions::from_mode(m)).unwrap();
    fs::write(&f, b"x").unwrap();
    chmod(0o6777);
    fs::OpenOptions::new().append(true).open(&f).unwrap().write_all(b"by root").unwrap();
    assert_eq!(mode(), 0o6777, "root (CAP_FSETID) writes without clearing");
    std::os::unix::fs::chown(&f, Some(65534), Some(65534)).unwrap();
    assert_eq!(mode(), 0o777, "a chown clears both");
    chmod(0o6777);
    let as_nobody = |script: &str| {
        let s = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", script])
            .arg("sh")
            .arg(&f)
            .status()
            .unwrap();
        assert!(s.success(), "{script}");
    };
    as_nobody(r#"echo more >> "$1""#);
    assert_eq!(mode(), 0o777, "a write by the owner without CAP_FSETID clears both");
    chmod(0o6777);
    as_nobody(r#"truncate -s 1 "$1""#);
    assert_eq!(mode(), 0o777, "so does a truncate");
    assert_eq!(fs::read(&f).unwrap(), b"x");
    cafsd.stop();
}

/// `lseek` with `SEEK_DATA` and `SEEK_HOLE` on a mount, with a plain file of the same shape beside it: both find
/// the data and the holes (the plain filesystem rounds holes to its blocks, cafs keeps them to the byte, so the
/// checks are what both must answer).
#[test]
fn seek_data_and_seek_hole_find_the_holes() {
    use std::os::fd::AsRawFd;
    let tmp = tempfile::tempdir().unwrap();
    let (state, mnt) = (tmp.path().join("state"), tmp.path().join("mnt"));
    let cafsd = MountedCafsd::start(&state, &mnt, &["--ref", "sparse", "--autocommit", "0"]);
    let seek = |f: &fs::File, at: i64, whence: i32| {
        // SAFETY: an lseek on an fd the File keeps open; it touches no memory.
        let r = unsafe { libc::lseek(f.as_raw_fd(), at, whence) };
        if r < 0 { Err(std::io::Error::last_os_error().raw_os_error().unwrap()) } else { Ok(r) }
    };
    // 8 KiB of data, a hole to 4 MiB, 8 KiB of data at 4 MiB, a hole to the end at 8 MiB.
    let make = |p: &Path| {
        let f = fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(p).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[7u8; 8192], 0).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[9u8; 8192], 4 << 20).unwrap();
        f.set_len(8 << 20).unwrap();
        f
    };
    let plain = make(&tmp.path().join("plain"));
    let sparse = make(&mnt.join("sparse"));
    for f in [&plain, &sparse] {
        assert_eq!(seek(f, 0, libc::SEEK_DATA), Ok(0));
        assert_eq!(seek(f, 0, libc::SEEK_HOLE), Ok(8192));
        assert_eq!(seek(f, 8192, libc::SEEK_DATA), Ok(4 << 20));
        assert_eq!(seek(f, 100_000, libc::SEEK_DATA), Ok(4 << 20));
        assert_eq!(seek(f, (4 << 20) + 1, libc::SEEK_HOLE), Ok((4 << 20) + 8192));
        assert_eq!(seek(f, (4 << 20) + 8192, libc::SEEK_DATA), Err(libc::ENXIO), "only a hole is left");
        assert_eq!(seek(f, (8 << 20) - 1, libc::SEEK_HOLE), Ok((8 << 20) - 1));
        assert_eq!(seek(f, 8 << 20, libc::SEEK_DATA), Err(libc::ENXIO), "at the end");
        assert_eq!(seek(f, 8 << 20, libc::SEEK_HOLE), Err(libc::ENXIO));
        assert_eq!(seek(f, -1, libc::SEEK_DATA).unwrap_err(), libc::ENXIO);
    }
    // Tools that copy sparse files use it: cp keeps the holes and the bytes.
    std::process::Command::new("cp").arg(mnt.join("sparse")).arg(tmp.path().join("copy")).status().unwrap();
    assert_eq!(fs::read(tmp.path().join("copy")).unwrap(), fs::read(tmp.path().join("plain")).unwrap());
    drop(sparse);
    cafsd.stop();
}

/// Every block file of a local store.
fn block_files(state: &Path) -> usize {
    walk_files(&state.join("blocks"))
}

fn walk_files(dir: &Path) -> usize {
    fs::read_dir(dir)
        .map_or(0, |d| d.flatten().map(|e| if e.path().is_dir() { walk_files(&e.path()) } else { 1 }).sum())
}

/// A copy within a mount shares the source's blocks: no block is stored for it, even at the commit, and the copy
/// and the original then change independently. A copy survives kill -9 once fsynced (its journal record), and
/// bytes still buffered or a range with a hole are copied too (the first stored first, the second by the kernel).
#[test]
fn copies_share_blocks_and_change_independently() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, mnt) = (tmp.path().join("state"), tmp.path().join("mnt"));
    let cafsd = MountedCafsd::start_dev(&state, &mnt, &["--ref", "copies", "--autocommit", "0"]);
    let data: Vec<u8> = (0..150_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    fs::write(mnt.join("orig.bin"), &data).unwrap();
    fs::write(mnt.join(".cafs/commit"), "orig").unwrap();
    let blocks = block_files(&state);

    let t = std::time::Instant::now();
    assert_eq!(cafs_tests::copy_file_range(&mnt.join("orig.bin"), &mnt.join("copy.bin")).unwrap(), data.len() as u64);
    let took = t.elapsed();
    // Shared, not rewritten: nothing of it waits in a buffer (a copy by reads and writes would leave at least the
    // last, unsealed 22 MB there).
    let status: serde_json::Value = serde_json::from_slice(&fs::read(mnt.join(".cafs/status")).unwrap()).unwrap();
    assert_eq!(status["dirty_bytes"], 0, "{status}");
    fs::write(mnt.join(".cafs/commit"), "copied").unwrap();
    assert_eq!(block_files(&state), blocks, "no block stored for the copy, even by the commit");
    assert!(fs::read(mnt.join("copy.bin")).unwrap() == data, "copy.bin");
    assert!(took < Duration::from_secs(5), "150 MB shared, not moved: {took:?}");

    // Independent afterwards.
    let f = fs::OpenOptions::new().write(true).open(mnt.join("copy.bin")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"CHANGED", 1000).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert!(fs::read(mnt.join("orig.bin")).unwrap() == data, "orig.bin: the original is untouched");
    let mut changed = data.clone();
    changed[1000..1007].copy_from_slice(b"CHANGED");
    assert!(fs::read(mnt.join("copy.bin")).unwrap() == changed, "copy.bin");

    // Bytes still in a write buffer are copied (stored first), and so is a file with a hole.
    fs::write(mnt.join("fresh.txt"), b"not yet stored").unwrap();
    cafs_tests::copy_file_range(&mnt.join("fresh.txt"), &mnt.join("fresh.copy")).unwrap();
    assert_eq!(fs::read(mnt.join("fresh.copy")).unwrap(), b"not yet stored");
    let sparse = fs::File::create(mnt.join("sparse")).unwrap();
    sparse.set_len(1 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"end", (1 << 20) - 3).unwrap();
    drop(sparse);
    cafs_tests::copy_file_range(&mnt.join("sparse"), &mnt.join("sparse.copy")).unwrap();
    assert_eq!(fs::read(mnt.join("sparse.copy")).unwrap(), fs::read(mnt.join("sparse")).unwrap());

    // A copy fsynced, then cafsd killed: the copy is there after recovery, sharing the blocks still.
    cafs_tests::copy_file_range(&mnt.join("orig.bin"), &mnt.join("late.bin")).unwrap();
    fs::File::open(mnt.join("late.bin")).unwrap().sync_all().unwrap();
    cafsd.kill(|| {});
    let cafsd = MountedCafsd::start_dev(&state, &mnt, &["--ref", "copies", "--autocommit", "0"]);
    assert!(fs::read(mnt.join("late.bin")).unwrap() == data, "late.bin");
    assert!(fs::read(mnt.join("copy.bin")).unwrap() == changed, "copy.bin");
    fs::write(mnt.join(".cafs/commit"), "after recovery").unwrap();
    let (status, _) = cafsd.stop();
    assert!(status.success());
}

/// `fallocate`: plain allocation extends a file with a hole, `FALLOC_FL_KEEP_SIZE` changes nothing, punching and
/// zeroing make holes `SEEK_HOLE` finds, and the modes a collection does not express are `EOPNOTSUPP` and change
/// nothing; sizes and bytes last through a commit.
#[test]
fn fallocate_extends_punches_zeroes_and_refuses_what_it_cannot_express() {
    use std::os::fd::AsRawFd;
    let tmp = tempfile::tempdir().unwrap();
    let (state, mnt) = (tmp.path().join("state"), tmp.path().join("mnt"));
    let cafsd = MountedCafsd::start(&state, &mnt, &["--ref", "alloc", "--autocommit", "0"]);
    let f = fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(mnt.join("f")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"head", 0).unwrap();
    let alloc = |mode: i32, at: i64, len: i64| {
        // SAFETY: fallocate on an fd the File keeps open; it touches no memory of ours.
        let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, at, len) };
        if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error().raw_os_error().unwrap()) }
    };
    assert_eq!(alloc(0, 0, 1 << 20), Ok(()));
    assert_eq!(f.metadata().unwrap().len(), 1 << 20, "extended");
    assert_eq!(alloc(libc::FALLOC_FL_KEEP_SIZE, 0, 4 << 20), Ok(()));
    assert_eq!(f.metadata().unwrap().len(), 1 << 20, "KEEP_SIZE keeps it");
    assert_eq!(alloc(0, 0, 100), Ok(()), "inside the file: nothing to do");
    // Punching a hole into written bytes, and zeroing a range past the end (which extends the file).
    std::os::unix::fs::FileExt::write_all_at(&f, &[7u8; 300_000], 100_000).unwrap();
    assert_eq!(alloc(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, 150_000, 50_000), Ok(()));
    assert_eq!(alloc(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, 1 << 20, 1 << 20), Ok(()));
    assert_eq!(alloc(libc::FALLOC_FL_ZERO_RANGE, 390_000, (1 << 20) + 10_000 - 390_000), Ok(()));
    assert_eq!(f.metadata().unwrap().len(), (1 << 20) + 10_000, "ZERO_RANGE extends, a punch past the end does not");
    let seek = |at: i64, whence: i32| {
        // SAFETY: lseek on an fd the File keeps open.
        unsafe { libc::lseek(f.as_raw_fd(), at, whence) }
    };
    assert_eq!(seek(100_000, libc::SEEK_HOLE), 150_000, "the punched range is a hole");
    assert_eq!(seek(150_000, libc::SEEK_DATA), 200_000);
    assert_eq!(seek(200_000, libc::SEEK_HOLE), 390_000, "the zeroed range is a hole");
    for mode in [libc::FALLOC_FL_COLLAPSE_RANGE, libc::FALLOC_FL_INSERT_RANGE] {
        assert_eq!(alloc(mode, 0, 4096), Err(libc::EOPNOTSUPP), "mode {mode:#x}");
    }
    assert_eq!(alloc(libc::FALLOC_FL_PUNCH_HOLE, 0, 4096), Err(libc::EOPNOTSUPP), "a punch needs KEEP_SIZE");
    let mut want = vec![0u8; (1 << 20) + 10_000];
    want[..4].copy_from_slice(b"head");
    want[100_000..150_000].fill(7);
    want[200_000..390_000].fill(7);
    assert!(fs::read(mnt.join("f")).unwrap() == want, "the bytes are as punched and zeroed");
    drop(f);
    fs::write(mnt.join(".cafs/commit"), "allocated").unwrap();
    let (status, _) = cafsd.stop();
    assert!(status.success());
    let cafsd = MountedCafsd::start(&state, &mnt, &["--ref", "alloc", "--autocommit", "0"]);
    assert!(fs::read(mnt.join("f")).unwrap() == want, "after a remount");
    cafsd.stop();
}
