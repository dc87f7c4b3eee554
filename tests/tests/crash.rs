//! Durability across crashes, on the real stack (cafsd as `nobody`, the helper as root): what a job fsynced
//! survives `kill -9` of cafsd and a simulated node crash (the state directory as it was at the crash, used by a
//! new cafsd), and comes back uncommitted when the ref is mounted at the same place again; a commit then works.
//! Needs root and /dev/fuse.

use std::path::Path;

use cafs_tests::stack::{Stack, ok, sh_as};

const JOB: u32 = 1000;

/// Writes and fsyncs, as the job user, in the mount `dir`: a 5 MB file, small files in a subdirectory, a
/// symlink, a chmod and an explicit mtime; then prints the view of what was fsynced. Writes `unsynced` without
/// fsync last.
const WRITER: &str = r#"
import os, sys, hashlib
d = sys.argv[1]
def put(p, data, mode=None, mtime=None):
    fd = os.open(os.path.join(d, p), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, data)
    if mode is not None:
        os.fchmod(fd, mode)
    if mtime is not None:
        os.utime(fd, ns=(mtime, mtime))
    os.fsync(fd)
    os.close(fd)
os.mkdir(os.path.join(d, "sub"))
put("big", os.urandom(5_000_000))
for i in range(50):
    put(f"sub/f{i}", f"file {i}\n".encode(), mode=0o600 if i % 2 else None)
put("dated", b"old", mtime=1_600_000_000_123_456_789)
os.symlink("sub/f1", os.path.join(d, "link"))
os.rename(os.path.join(d, "sub/f0"), os.path.join(d, "moved"))
fd = os.open(os.path.join(d, "sub"), os.O_RDONLY)
os.fsync(fd)
os.close(fd)
with open(os.path.join(d, "unsynced"), "wb") as f:
    f.write(b"maybe")
"#;

/// Prints path, kind, size, mode, mtime and content hash of everything in the tree but `unsynced`, sorted.
const VIEW: &str = r#"
import os, sys, hashlib
d = sys.argv[1]
out = []
for root, dirs, files in os.walk(d):
    for n in sorted(dirs + files):
        p = os.path.join(root, n)
        rel = os.path.relpath(p, d)
        if rel == "unsynced":
            continue
        st = os.lstat(p)
        if os.path.islink(p):
            out.append(f"{rel} link {os.readlink(p)}")
        elif os.path.isdir(p):
            out.append(f"{rel} dir {oct(st.st_mode & 0o7777)}")
        else:
            h = hashlib.md5(open(p, "rb").read()).hexdigest()
            out.append(f"{rel} file {st.st_size} {oct(st.st_mode & 0o7777)} {st.st_mtime_ns} {h}")
print("\n".join(sorted(out)))
"#;

fn python(dir: &Path, script: &str) -> String {
    ok(&sh_as(JOB, dir, &format!("python3 -c '{}' {}", script.replace('\'', "'\"'\"'"), dir.display())))
}

fn status_dirty(stack: &Stack, dir: &Path) -> bool {
    let out = ok(&stack.fsctl(JOB, &["status", dir.to_str().unwrap(), "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["mounts"][0]["dirty"].as_bool().unwrap()
}

#[test]
fn fsynced_files_survive_kill_9_and_a_node_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let mut stack = Stack::start(tmp.path(), &["--autocommit", "0"]);
    let dir = stack.job_dir("out", JOB);
    let d = dir.to_str().unwrap();
    ok(&stack.fsctl(JOB, &["mount", "crashy", d]));
    python(&dir, WRITER);
    let expected = python(&dir, VIEW);
    assert!(expected.lines().count() >= 54, "{expected}");

    // kill -9: a new cafsd, the same ref at the same place: the fsynced tree, uncommitted.
    stack.kill_cafsd();
    stack.start_cafsd(&["--autocommit", "0"]);
    ok(&stack.fsctl(JOB, &["mount", "crashy", d]));
    assert_eq!(python(&dir, VIEW), expected);
    assert!(status_dirty(&stack, &dir), "recovered changes are uncommitted");
    assert!(!stack.fsctl(JOB, &["log", "crashy"]).status.success(), "nothing was committed");
    // A commit works, and more fsynced work on top of it survives the next crash too.
    let pdh = ok(&stack.fsctl(JOB, &["commit", d, "-m", "after recovery"])).trim().to_string();
    ok(&sh_as(
        JOB,
        &dir,
        "echo after > after && python3 -c 'import os; fd=os.open(\"after\", os.O_RDONLY); os.fsync(fd)'",
    ));
    let expected2 = python(&dir, VIEW);

    // A node crash: the state directory as it was (copied while cafsd ran), then cafsd gone.
    let crashed = tmp.path().join("state-at-crash");
    assert!(std::process::Command::new("cp").arg("-a").arg(stack.state()).arg(&crashed).status().unwrap().success());
    stack.kill_cafsd();
    std::fs::remove_dir_all(stack.state()).unwrap();
    std::fs::rename(&crashed, stack.state()).unwrap();
    stack.start_cafsd(&["--autocommit", "0"]);
    ok(&stack.fsctl(JOB, &["mount", "crashy", d]));
    assert_eq!(python(&dir, VIEW), expected2);
    assert!(status_dirty(&stack, &dir));
    let log = ok(&stack.fsctl(JOB, &["log", "crashy"]));
    assert!(log.contains(&pdh) && log.lines().count() == 1, "{log}");

    // A clean unmount commits, and the journal is gone: the next mount is the ref's head, unchanged.
    ok(&stack.fsctl(JOB, &["umount", d]));
    assert_eq!(std::fs::read_dir(stack.state().join("journal")).unwrap().count(), 0, "no journal left");
    ok(&stack.fsctl(JOB, &["mount", "crashy", d]));
    assert!(!status_dirty(&stack, &dir));
    assert_eq!(python(&dir, VIEW), expected2);
    ok(&stack.fsctl(JOB, &["umount", d]));
}
