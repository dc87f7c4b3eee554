//! Ref owners and permissions on the real stack (helper as root, cafsd as `nobody`), through fsctl and through
//! real mounts: another user's ref cannot be mounted writable, committed to (by `fsctl commit`, `--into` or
//! `.cafs/commit`), read (`log`, a read-only mount) or seen in a node-wide namespace mount unless its mode lets
//! them; its owner, root and an operator can; `chmod` and `chown` change who passes, at once.

use std::path::Path;
use std::time::Duration;

use cafs_tests::stack::{Stack, fails, ok, sh_as};
use cafs_tests::wait_for;

/// The ref's creator.
const OWNER: u32 = 1000;
/// Another user, in none of the owner's groups.
const OTHER: u32 = 1001;
/// An operator, by the configuration.
const OPERATOR: u32 = 1002;

fn stack(tmp: &Path, allow_other: bool) -> Stack {
    Stack::start_configured(
        tmp,
        &format!(
            "ref_refresh_seconds = 1\n[namespace]\nwritable = [\"scratch/*\"]\n[refs]\noperators = [{OPERATOR}]\n"
        ),
        allow_other,
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The ref's versions, as root sees them.
fn versions(stack: &Stack, name: &str) -> usize {
    ok(&stack.fsctl(0, &["log", name])).lines().count()
}

/// `fsctl ref show --json` as root.
fn show(stack: &Stack, name: &str) -> serde_json::Value {
    serde_json::from_str(&ok(&stack.fsctl(0, &["ref", "show", name, "--json"]))).unwrap()
}

/// Mounts `name` writable at a fresh directory of `uid`, writes a file, commits, unmounts.
fn write_as(stack: &Stack, uid: u32, name: &str, dir: &str) {
    let d = stack.job_dir(dir, uid);
    ok(&stack.fsctl(uid, &["mount", name, s(&d)]));
    // Into a directory every user may write in as far as file modes go (the kernel checks those; the ref's
    // mode is what this is about).
    ok(&sh_as(uid, &d, &format!("mkdir -p -m 777 shared && echo by {uid} > shared/by-{uid}.txt")));
    ok(&stack.fsctl(uid, &["commit", s(&d), "-m", &format!("by {uid}")]));
    ok(&stack.fsctl(uid, &["umount", s(&d)]));
}

#[test]
fn another_users_ref_is_refused_until_chmod_or_chown_lets_them() {
    let tmp = tempfile::tempdir().unwrap();
    let stack = stack(tmp.path(), false);

    // The owner makes the ref by mounting it; it records the owner, its group and the default mode.
    let mine = stack.job_dir("mine", OWNER);
    ok(&stack.fsctl(OWNER, &["mount", "owned", s(&mine)]));
    let made = show(&stack, "owned");
    assert_eq!((made["owner_uid"].as_u64(), made["gid"].as_u64()), (Some(1000), Some(1000)), "{made}");
    assert_eq!((made["mode"].as_str(), made["version"].as_u64()), (Some("0644"), Some(0)), "{made}");
    ok(&sh_as(OWNER, &mine, "echo one > f.txt"));
    ok(&stack.fsctl(OWNER, &["commit", s(&mine), "-m", "first"]));
    let text = ok(&stack.fsctl(OWNER, &["ref", "show", "owned"]));
    assert!(text.contains("(1000)\tgroup") && text.contains("mode 0644 rw-r--r--"), "{text}");

    // Another user: no writable mount (nothing is mounted), no commit --into; reading is allowed by 0644.
    let theirs = stack.job_dir("theirs", OTHER);
    let err = fails(&stack.fsctl(OTHER, &["mount", "owned", s(&theirs)]), 1);
    assert!(err.contains("uid 1001 may not write ref \"owned\""), "{err}");
    assert!(!stack.mounts().contains(&theirs), "a refused mount leaves nothing mounted");
    ok(&stack.fsctl(OTHER, &["mount", "scratch-1001", s(&theirs)]));
    ok(&sh_as(OTHER, &theirs, "echo theirs > t.txt"));
    let err = fails(&stack.fsctl(OTHER, &["commit", s(&theirs), "--into", "owned"]), 1);
    assert!(err.contains("may not write ref \"owned\""), "{err}");
    assert_eq!(versions(&stack, "owned"), 1, "a refused commit --into makes no version");
    assert!(ok(&stack.fsctl(OTHER, &["log", "owned"])).contains("first"), "0644: others read the history");
    let ro = stack.job_dir("ro", OTHER);
    ok(&stack.fsctl(OTHER, &["mount", "owned", s(&ro), "--ro"]));
    ok(&sh_as(OTHER, &ro, "test \"$(cat f.txt)\" = one"));
    ok(&stack.fsctl(OTHER, &["umount", s(&ro)]));

    // Mode 0600: no history and no read-only mount for others; the owner still reads.
    fails(&stack.fsctl(OTHER, &["chmod", "owned", "666"]), 1);
    ok(&stack.fsctl(OWNER, &["chmod", "owned", "600"]));
    let err = fails(&stack.fsctl(OTHER, &["log", "owned"]), 1);
    assert!(err.contains("uid 1001 may not read ref \"owned\""), "{err}");
    assert!(fails(&stack.fsctl(OTHER, &["ref", "show", "owned"]), 1).contains("may not read"));
    fails(&stack.fsctl(OTHER, &["mount", "owned", s(&ro), "--ro"]), 1);
    assert!(!stack.mounts().contains(&ro));
    assert!(ok(&stack.fsctl(OWNER, &["log", "owned"])).contains("first"));

    // The mount's owner is checked again at each commit: permissions taken away after the mount are felt.
    ok(&sh_as(OWNER, &mine, "echo two > f.txt"));
    ok(&stack.fsctl(0, &["chmod", "owned", "400"]));
    // coreutils' echo, not the shell's: the shell reports any failed write as an I/O error.
    let refused = sh_as(OWNER, &mine, "/bin/echo no > .cafs/commit");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("Permission denied"), "{refused:?}");
    let err = fails(&stack.fsctl(OWNER, &["commit", s(&mine), "-m", "no"]), 1);
    assert!(err.contains("may not write"), "{err}");
    assert_eq!(versions(&stack, "owned"), 1, "refused commits make no version");
    assert_eq!(ok(&sh_as(OWNER, &mine, "cat .cafs/dirty")), "1\n", "and the tree keeps its changes");
    ok(&stack.fsctl(OWNER, &["chmod", "owned", "600"]));
    ok(&sh_as(OWNER, &mine, "echo allowed again > .cafs/commit"));
    assert_eq!(versions(&stack, "owned"), 2);

    // Root and an operator pass every check: history, writable mounts, commits, chmod.
    assert!(ok(&stack.fsctl(OPERATOR, &["log", "owned"])).contains("first"));
    write_as(&stack, 0, "owned", "root");
    write_as(&stack, OPERATOR, "owned", "operator");
    assert_eq!(versions(&stack, "owned"), 4);
    ok(&stack.fsctl(OPERATOR, &["chmod", "owned", "600"]));
    assert_eq!(show(&stack, "owned")["owner_uid"].as_u64(), Some(1000), "writers other than the owner own nothing");

    // chmod 0666 lets others write: a writable mount, a commit and --into.
    ok(&stack.fsctl(OWNER, &["chmod", "owned", "666"]));
    ok(&stack.fsctl(OTHER, &["commit", s(&theirs), "--into", "owned", "-m", "into"]));
    write_as(&stack, OTHER, "owned", "other");
    assert_eq!(versions(&stack, "owned"), 6);

    // chown: only root and operators; the new owner then decides, the old one no longer does.
    assert!(fails(&stack.fsctl(OWNER, &["chown", "owned", "1001"]), 1).contains("may not chown"));
    ok(&stack.fsctl(OPERATOR, &["chown", "owned", "1001:1001"]));
    ok(&stack.fsctl(OTHER, &["chmod", "owned", "600"]));
    assert!(fails(&stack.fsctl(OWNER, &["chmod", "owned", "666"]), 1).contains("may not chmod"));
    let again = stack.job_dir("again", OWNER);
    fails(&stack.fsctl(OWNER, &["mount", "owned", s(&again)]), 1);
    fails(&stack.fsctl(OWNER, &["log", "owned"]), 1);
    ok(&stack.fsctl(OWNER, &["umount", s(&mine), "--discard"]));
    ok(&stack.fsctl(OTHER, &["umount", s(&theirs)]));
    assert_eq!(versions(&stack, "owned"), 6);
    let last = show(&stack, "owned");
    assert_eq!((last["owner_uid"].as_u64(), last["mode"].as_str()), (Some(1001), Some("0600")), "{last}");
}

#[test]
fn a_node_wide_namespace_shows_each_user_what_it_may_read_and_write() {
    let tmp = tempfile::tempdir().unwrap();
    let stack = stack(tmp.path(), true);
    write_as(&stack, OWNER, "public", "p");
    write_as(&stack, OWNER, "private", "q");
    ok(&stack.fsctl(OWNER, &["chmod", "private", "600"]));
    // A writable ref with a directory every user may write in, as far as file modes go (the kernel checks
    // those): what keeps others out of it is the ref's mode.
    let m = stack.job_dir("m", OWNER);
    ok(&stack.fsctl(OWNER, &["mount", "scratch/mine", s(&m)]));
    ok(&sh_as(OWNER, &m, "mkdir -m 777 shared && echo s > shared/s.txt && chmod 666 shared/s.txt"));
    ok(&stack.fsctl(OWNER, &["umount", s(&m)]));

    let node = stack.job_dir("node", 0);
    ok(&stack.fsctl(0, &["mount", "--namespace", "--allow-other", s(&node)]));
    let as_user = |uid: u32, script: &str| sh_as(uid, &node, script);
    let out = |uid: u32, script: &str| String::from_utf8_lossy(&as_user(uid, script).stdout).into_owned();

    // The owner, root and the operator see and read the private ref; the owner reads it first, so the kernel
    // has its names cached when the other user tries.
    for uid in [OWNER, 0, OPERATOR] {
        assert_eq!(out(uid, "ls by_ref"), "private\npublic\nscratch%2Fmine\n", "uid {uid}");
        assert_eq!(out(uid, "cat by_ref/private/shared/by-1000.txt"), "by 1000\n", "uid {uid}");
        assert!(out(uid, "ls history/private").starts_with("1-"), "uid {uid}");
    }
    let version = out(OWNER, "ls history/private").trim().to_string();
    // Another user sees neither by_ref/private nor history/private, and cannot enter them by name.
    assert_eq!(out(OTHER, "ls by_ref"), "public\nscratch%2Fmine\n");
    assert_eq!(out(OTHER, "ls history"), "public\nscratch%2Fmine\n");
    for path in [
        "by_ref/private/shared/by-1000.txt",
        "by_ref/private",
        "history/private",
        &format!("history/private/{version}"),
    ] {
        // The owner walks the same path just before: the kernel must not let the next user in on its names.
        ok(&as_user(OWNER, &format!("ls {path}")));
        let r = as_user(OTHER, &format!("ls {path}"));
        assert!(String::from_utf8_lossy(&r.stderr).contains("Permission denied"), "{path}: {r:?}");
    }
    assert_eq!(out(OTHER, "cat by_ref/public/shared/by-1000.txt"), "by 1000\n", "0644: others read");

    // A writable ref (by the configuration) is written only by whoever may write it.
    for change in ["echo x > shared/x.txt", "echo x >> shared/s.txt", "rm shared/s.txt", "mkdir shared/d"] {
        let refused = as_user(OTHER, &format!("cd by_ref/scratch%2Fmine && {change}"));
        assert!(String::from_utf8_lossy(&refused.stderr).contains("Permission denied"), "{change}: {refused:?}");
    }
    assert_eq!(out(OTHER, "cat by_ref/scratch%2Fmine/shared/s.txt"), "s\n", "and nothing changed");
    ok(&as_user(OWNER, "echo owner > by_ref/scratch%2Fmine/o.txt"));
    let refused = as_user(OTHER, "/bin/echo steal > by_ref/scratch%2Fmine/.cafs/commit");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("Permission denied"), "{refused:?}");
    assert_eq!(versions(&stack, "scratch/mine"), 1, "another user's commit makes no version");
    ok(&as_user(OWNER, "echo by the owner > by_ref/scratch%2Fmine/.cafs/commit"));
    assert_eq!(versions(&stack, "scratch/mine"), 2);
    ok(&as_user(OPERATOR, "echo operator > by_ref/scratch%2Fmine/shared/op.txt"));
    ok(&as_user(0, "echo root > by_ref/scratch%2Fmine/root.txt"));

    // chmod lets the other user in (within the namespace's one-second memory of permissions).
    ok(&stack.fsctl(OWNER, &["chmod", "private", "644"]));
    wait_for("chmod reaches the namespace", Duration::from_secs(10), || {
        out(OTHER, "cat by_ref/private/shared/by-1000.txt") == "by 1000\n"
    });
    assert!(out(OTHER, "ls by_ref").contains("private"));
    // chown to the other user with 0600: now the first owner is out.
    ok(&stack.fsctl(0, &["chown", "private", "1001:1001"]));
    ok(&stack.fsctl(OTHER, &["chmod", "private", "600"]));
    wait_for("chown reaches the namespace", Duration::from_secs(10), || {
        !as_user(OWNER, "cat by_ref/private/shared/by-1000.txt").status.success()
    });
    assert!(!out(OWNER, "ls by_ref").contains("private"));
    assert_eq!(out(OTHER, "cat by_ref/private/shared/by-1000.txt"), "by 1000\n");

    ok(&stack.fsctl(0, &["umount", s(&node)]));
    assert!(!stack.mounts().contains(&node));
}
