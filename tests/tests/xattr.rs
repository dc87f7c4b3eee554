//! Extended attributes on real mounts, through the tools users have (`setfattr`, `getfattr`, `attr`) and the
//! system calls: stored `user.*` attributes (properties, tags, plain ones) committed in the sidecar and back
//! after a remount or a crash, cafs's computed `user.cafs.*` ones, and the errnos for what is refused.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use cafs_tests::mount::MountedCafsd;

fn run(cmd: &str, args: &[&str], dir: &Path) -> String {
    let out = Command::new(cmd).args(args).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn get(path: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 1 << 17];
    // SAFETY: both strings are NUL-terminated and live across the call; the buffer is as long as we say.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

fn set(path: &Path, name: &str, value: &[u8], flags: i32) -> Result<(), i32> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: both strings are NUL-terminated and live across the call; the value is `value.len()` bytes.
    let r = unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), flags) };
    if r < 0 { Err(std::io::Error::last_os_error().raw_os_error().unwrap()) } else { Ok(()) }
}

fn text(v: Result<Vec<u8>, i32>) -> String {
    String::from_utf8(v.expect("the attribute is there")).unwrap()
}

#[test]
fn attributes_are_stored_committed_and_computed() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, mnt) = (tmp.path().join("state"), tmp.path().join("mnt"));
    let w = MountedCafsd::start(&state, &mnt, &["--ref", "x", "--autocommit", "0"]);
    fs::write(mnt.join("f.txt"), b"some bytes\n").unwrap();
    fs::create_dir(mnt.join("d")).unwrap();
    // Through the tools: a property and a tag on a file, a plain attribute on a directory, a property of the
    // collection (its root), and `attr`, which works in the user namespace.
    run("setfattr", &["-n", "user.prop.sample", "-v", "S1", "f.txt"], &mnt);
    run("setfattr", &["-n", "user.tag.final", "f.txt"], &mnt);
    run("setfattr", &["-n", "user.note", "-v", "0x00ff10", "d"], &mnt);
    run("setfattr", &["-n", "user.prop.project", "-v", "demo", "."], &mnt);
    run("attr", &["-q", "-s", "prop.owner", "-V", "pipeline-7", "f.txt"], &mnt);
    let dump = run("getfattr", &["-d", "f.txt"], &mnt);
    for want in ["user.prop.sample=\"S1\"", "user.tag.final", "user.prop.owner=\"pipeline-7\""] {
        assert!(dump.contains(want), "getfattr -d shows {want}: {dump}");
    }
    assert_eq!(run("attr", &["-q", "-g", "prop.sample", "f.txt"], &mnt), "S1");
    assert_eq!(get(&mnt.join("d"), "user.note"), Ok(vec![0, 0xff, 0x10]), "binary values survive");
    // Computed ones, read-only.
    assert_eq!(text(get(&mnt.join("f.txt"), "user.cafs.state")), "dirty");
    assert_eq!(get(&mnt.join("f.txt"), "user.cafs.hash"), Err(libc::ENODATA), "never committed: no hash");
    let listed = run("getfattr", &["-m", "-", "f.txt"], &mnt);
    for want in ["user.cafs.state", "user.cafs.locators", "user.cafs.segments", "user.prop.sample"] {
        assert!(listed.contains(want), "listed {want}: {listed}");
    }
    // What is refused, and with which errno; nothing changes.
    let f = mnt.join("f.txt");
    assert_eq!(set(&f, "user.cafs.state", b"committed", 0), Err(libc::EPERM));
    assert_eq!(set(&f, "trusted.x", b"1", 0), Err(libc::EOPNOTSUPP));
    assert_eq!(set(&f, "security.x", b"1", 0), Err(libc::EOPNOTSUPP));
    assert_eq!(get(&f, "trusted.x"), Err(libc::ENODATA));
    assert_eq!(set(&f, "user.big", &vec![7; 65 << 10], 0), Err(libc::E2BIG));
    assert_eq!(set(&f, "user.prop.sample", b"S2", libc::XATTR_CREATE), Err(libc::EEXIST));
    assert_eq!(set(&f, "user.none", b"x", libc::XATTR_REPLACE), Err(libc::ENODATA));
    assert_eq!(get(&f, "user.none"), Err(libc::ENODATA));
    assert_eq!(text(get(&f, "user.prop.sample")), "S1");
    run("setfattr", &["-n", "user.gone", "-v", "soon", "f.txt"], &mnt);
    run("setfattr", &["-x", "user.gone", "f.txt"], &mnt);
    assert_eq!(get(&f, "user.gone"), Err(libc::ENODATA));

    // Committed: the hash and state, and where the bytes are.
    fs::write(mnt.join(".cafs/commit"), b"with attributes").unwrap();
    let pdh = fs::read_to_string(mnt.join(".cafs/hash")).unwrap().trim().to_string();
    assert_eq!(text(get(&f, "user.cafs.hash")), pdh);
    assert_eq!(text(get(&mnt, "user.cafs.hash")), pdh);
    assert_eq!(text(get(&f, "user.cafs.state")), "committed");
    let locators = text(get(&f, "user.cafs.locators"));
    assert_eq!(locators.lines().count(), 1, "{locators}");
    let loc = locators.trim();
    // The file's bytes are the only ones in their block.
    let want = cafs::store::Block::new(b"some bytes\n".to_vec()).unwrap().locator().to_string();
    assert_eq!(loc, want);
    let segments = text(get(&f, "user.cafs.segments"));
    assert_eq!(segments, format!("{loc} 0 11\n"));
    let (status, _) = w.stop();
    assert!(status.success());

    // A remount of the ref shows what was committed.
    let again = MountedCafsd::start(&state, &mnt, &["--ref", "x", "--autocommit", "0"]);
    assert_eq!(text(get(&mnt.join("f.txt"), "user.prop.sample")), "S1");
    assert_eq!(get(&mnt.join("f.txt"), "user.tag.final"), Ok(Vec::new()));
    assert_eq!(get(&mnt.join("d"), "user.note"), Ok(vec![0, 0xff, 0x10]));
    assert_eq!(text(get(&mnt, "user.prop.project")), "demo");
    assert_eq!(get(&mnt.join("f.txt"), "user.gone"), Err(libc::ENODATA));
    // Set, synced (the journal), then a crash: the restarted cafsd has it, uncommitted.
    run("setfattr", &["-n", "user.prop.sample", "-v", "S3", "f.txt"], &mnt);
    let dir = fs::File::open(&mnt).unwrap();
    dir.sync_all().unwrap();
    drop(dir);
    again.kill(|| {});
    let after = MountedCafsd::start(&state, &mnt, &["--ref", "x", "--autocommit", "0"]);
    assert_eq!(text(get(&mnt.join("f.txt"), "user.prop.sample")), "S3", "journaled across kill -9");
    assert_eq!(text(get(&mnt.join("f.txt"), "user.cafs.state")), "dirty");
    after.stop();

    // Read-only mounts refuse changes.
    let ro = MountedCafsd::start(&state, &mnt, &["--pdh", &pdh]);
    assert_eq!(set(&mnt.join("f.txt"), "user.prop.sample", b"no", 0), Err(libc::EROFS));
    ro.stop();
}
