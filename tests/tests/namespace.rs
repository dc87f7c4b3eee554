//! The namespace mount, on the real stack (helper as root, cafsd as `nobody`): `by_ref/`, `by_pdh/` and
//! `history/` show the catalog, configured refs are writable and commit, read-only refs follow new commits, and
//! numbers the kernel holds keep their meaning across cafsd restarts.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use cafs_tests::stack::{Stack, ok, sh_as};
use cafs_tests::wait_for;

const JOB: u32 = 1000;

/// What `script` prints, run as the job user in `dir` (its failure is not checked).
fn out(dir: &Path, script: &str) -> String {
    String::from_utf8_lossy(&sh_as(JOB, dir, script).stdout).into_owned()
}

fn stack(tmp: &Path, allow_other: bool) -> Stack {
    Stack::start_configured(tmp, "ref_refresh_seconds = 1\n[namespace]\nwritable = [\"scratch/*\"]\n", allow_other)
}

/// Commits the mount at `dir` and returns the new hash.
fn commit(stack: &Stack, dir: &Path, message: &str) -> String {
    ok(&stack.fsctl(JOB, &["commit", dir.to_str().unwrap(), "-m", message])).trim().to_string()
}

#[test]
fn the_namespace_shows_refs_hashes_and_history_and_commits_writable_refs() {
    let tmp = tempfile::tempdir().unwrap();
    let stack = stack(tmp.path(), true);
    let results = stack.job_dir("results", JOB);
    ok(&stack.fsctl(JOB, &["mount", "results", results.to_str().unwrap()]));
    ok(&sh_as(JOB, &results, "echo v1 > f.txt"));
    let v1 = commit(&stack, &results, "v1");
    ok(&sh_as(JOB, &results, "echo v2 > f.txt"));
    let v2 = commit(&stack, &results, "v2");
    let scratch = stack.job_dir("scratch", JOB);
    ok(&stack.fsctl(JOB, &["mount", "scratch/job1", scratch.to_str().unwrap()]));
    ok(&sh_as(JOB, &scratch, "echo a > a.txt"));
    commit(&stack, &scratch, "first");
    ok(&stack.fsctl(JOB, &["umount", scratch.to_str().unwrap()]));

    let ns = stack.job_dir("cafs", JOB);
    let n = ns.to_str().unwrap();
    let mounted = ok(&stack.fsctl(JOB, &["mount", "--namespace", n]));
    assert!(mounted.contains("namespace"), "{mounted}");
    assert_eq!(out(&ns, "ls"), "by_pdh\nby_ref\nhistory\n");
    assert_eq!(out(&ns, "ls by_ref"), "results\nscratch%2Fjob1\n");

    // by_ref: the current version, read-only.
    assert_eq!(out(&ns, "cat by_ref/results/f.txt"), "v2\n");
    let refused = sh_as(JOB, &ns, "echo x > by_ref/results/new.txt");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("Read-only"), "{refused:?}");
    assert!(!sh_as(JOB, &ns, "mkdir by_ref/made-up").status.success(), "the namespace's directories are fixed");
    assert!(!sh_as(JOB, &ns, "ls by_ref/missing").status.success());

    // by_pdh: any committed version, found by lookup though not listed before.
    assert_eq!(out(&ns, "ls by_pdh"), "");
    assert_eq!(out(&ns, &format!("cat by_pdh/{v1}/f.txt")), "v1\n");
    assert_eq!(out(&ns, "ls by_pdh"), format!("{v1}\n"));
    assert_eq!(out(&ns, &format!("getfattr --only-values -n user.cafs.hash by_pdh/{v1}")), v1);
    assert!(!sh_as(JOB, &ns, "ls by_pdh/d41d8cd98f00b204e9800998ecf8427e+1").status.success());

    // history: every version as N-HASH.
    assert_eq!(out(&ns, "ls history/results"), format!("1-{v1}\n2-{v2}\n"));
    assert_eq!(out(&ns, &format!("cat history/results/1-{v1}/f.txt")), "v1\n");
    assert!(!sh_as(JOB, &ns, &format!("ls history/results/1-{v2}")).status.success(), "a wrong pairing");

    // A writable ref commits through fsctl by its path, and through its control file.
    let w = ns.join("by_ref/scratch%2Fjob1");
    ok(&sh_as(JOB, &w, "echo b > b.txt && cat a.txt"));
    // Hard links within one collection; between two, EXDEV.
    ok(&sh_as(JOB, &w, "ln a.txt a-linked.txt && test \"$(stat -c %h a.txt)\" = 2"));
    let cross = sh_as(JOB, &ns, "ln by_ref/scratch%2Fjob1/a.txt by_ref/results/a.txt");
    assert!(String::from_utf8_lossy(&cross.stderr).contains("cross-device"), "{cross:?}");
    let c = commit(&stack, &w, "in the namespace");
    let status = ok(&stack.fsctl(JOB, &["status", n]));
    assert!(status.contains("by_ref/scratch%2Fjob1") && status.contains("by_ref/results"), "{status}");
    assert!(!status.contains("by_pdh/"), "views by hash have nothing to show: {status}");
    let ls = ok(&stack.fsctl(JOB, &["ls"]));
    assert!(ls.contains("the namespace") && ls.contains("by_ref/scratch%2Fjob1"), "{ls}");
    assert!(out(&ns, "ls history/scratch%2Fjob1").contains(&format!("2-{c}")));
    ok(&sh_as(JOB, &w, "echo c > c.txt && echo by-control > .cafs/commit"));
    let log = ok(&stack.fsctl(JOB, &["log", "scratch/job1"]));
    assert!(log.contains("in the namespace") && log.contains("by-control"), "{log}");
    // mkdir in by_ref/ makes a new ref, if the config makes it writable.
    ok(&sh_as(JOB, &ns, "mkdir by_ref/scratch%2Fjob2 && echo new > by_ref/scratch%2Fjob2/n.txt"));
    assert!(out(&ns, "ls by_ref").contains("scratch%2Fjob2"));
    commit(&stack, &ns.join("by_ref/scratch%2Fjob2"), "made by mkdir");
    assert!(ok(&stack.fsctl(JOB, &["log", "scratch/job2"])).contains("made by mkdir"));
    assert!(!sh_as(JOB, &ns, "mkdir by_ref/results2").status.success(), "not a writable ref");
    assert!(!sh_as(JOB, &ns, "mkdir by_ref/scratch%2Fjob1").status.success(), "there already");
    let refused = sh_as(JOB, &ns, "mv by_ref/scratch%2Fjob1/b.txt by_ref/results/b.txt");
    assert!(!refused.status.success(), "no rename between collections");
    assert_eq!(out(&w, "cat b.txt"), "b\n", "and nothing moved");

    // A read-only ref follows new commits.
    ok(&sh_as(JOB, &results, "echo v3 > f.txt"));
    let v3 = commit(&stack, &results, "v3");
    wait_for("by_ref follows the ref", Duration::from_secs(15), || out(&ns, "cat by_ref/results/f.txt") == "v3\n");
    assert!(out(&ns, "ls history/results").ends_with(&format!("3-{v3}\n")));

    // A node-wide mount (as the boot-time unit makes) lets every user in: only root may ask for one.
    let node = stack.job_dir("node", 0);
    let nd = node.to_str().unwrap();
    let mine = stack.job_dir("mine", JOB);
    let refused = stack.fsctl(JOB, &["mount", "--namespace", "--allow-other", mine.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("only root"), "{refused:?}");
    ok(&stack.fsctl(0, &["mount", "--namespace", "--allow-other", "--ro", nd]));
    assert_eq!(out(&node, "cat by_ref/results/f.txt"), "v3\n", "the job user reads a mount root owns");
    ok(&stack.fsctl(0, &["umount", nd]));

    // A part cannot be unmounted alone; unmounting the whole commits what changed.
    assert!(!stack.fsctl(JOB, &["umount", w.to_str().unwrap()]).status.success());
    ok(&sh_as(JOB, &w, "echo d > d.txt"));
    ok(&stack.fsctl(JOB, &["umount", n]));
    assert!(!stack.mounts().contains(&ns), "unmounted");
    let log = ok(&stack.fsctl(JOB, &["log", "scratch/job1"]));
    assert_eq!(log.lines().filter(|l| l.contains("unmount")).count(), 1, "{log}");
    ok(&stack.fsctl(JOB, &["umount", results.to_str().unwrap()]));
}

#[test]
fn open_files_and_numbers_survive_a_cafsd_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut stack = stack(tmp.path(), false);
    let results = stack.job_dir("results", JOB);
    ok(&stack.fsctl(JOB, &["mount", "results", results.to_str().unwrap()]));
    ok(&sh_as(JOB, &results, "seq 1 100000 > big.txt && echo one > small.txt"));
    let v1 = commit(&stack, &results, "v1");
    ok(&stack.fsctl(JOB, &["umount", results.to_str().unwrap()]));
    let ns = stack.job_dir("cafs", JOB);
    ok(&stack.fsctl(JOB, &["mount", "--namespace", ns.to_str().unwrap()]));
    // This helper was not started with --allow-other: not even root gets a mount for every user.
    let node = stack.job_dir("node", 0);
    let refused = stack.fsctl(0, &["mount", "--namespace", "--allow-other", node.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--allow-other"), "{refused:?}");
    assert!(!stack.mounts().contains(&node));

    // Opened in this order, the views get numbers 1, 2, 3; a restarted cafsd must give each the same.
    let before = out(
        &ns,
        &format!("stat -c %i by_ref/results/small.txt history/results/1-{v1}/small.txt by_pdh/{v1}/small.txt"),
    );
    let sync = tmp.path().join("sync");
    std::fs::create_dir(&sync).unwrap();
    std::fs::set_permissions(&sync, std::fs::Permissions::from_mode(0o777)).unwrap();
    let s = sync.display();
    let reader = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 3< by_pdh/{v1}/big.txt; cd history/results/1-{v1}; touch {s}/opened; \
             while [ ! -e {s}/go ]; do sleep 0.05; done; md5sum <&3; cat small.txt"
        ))
        .current_dir(&ns)
        .uid(JOB)
        .gid(JOB)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let reader = Reader(Some(reader));
    wait_for("the reader opened its file", Duration::from_secs(10), || sync.join("opened").exists());

    assert!(stack.stop_cafsd().success(), "cafsd exits cleanly on SIGTERM");
    stack.start_cafsd(&["--autocommit", "0", "--config", tmp.path().join("cafsd.toml").to_str().unwrap()]);
    stack.kill_cafsd_only();
    stack.start_cafsd(&["--autocommit", "0", "--config", tmp.path().join("cafsd.toml").to_str().unwrap()]);
    std::fs::write(sync.join("go"), b"").unwrap();
    let done = reader.wait();
    assert!(done.status.success(), "{done:?}");
    let expected = out(&results, "seq 1 100000 | md5sum");
    assert_eq!(String::from_utf8_lossy(&done.stdout), format!("{expected}one\n"), "the open file and the cwd");
    let after = out(
        &ns,
        &format!("stat -c %i by_ref/results/small.txt history/results/1-{v1}/small.txt by_pdh/{v1}/small.txt"),
    );
    assert_eq!(after, before, "the same numbers after two restarts");
    ok(&stack.fsctl(JOB, &["umount", ns.to_str().unwrap()]));
}

/// Kills the reader if the test fails before it ends by itself.
struct Reader(Option<std::process::Child>);

impl Reader {
    fn wait(mut self) -> std::process::Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A collection a namespace opens is registered at its path only when no other mount is: a mount made at
/// `NS/by_ref/n` before the namespace was mounted over `NS` keeps its place in `fsctl ls` (and so its commit and
/// unmount through fsctl) when the namespace's view of `n` opens.
#[test]
fn a_view_never_takes_the_place_of_another_mount_at_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let stack = stack(tmp.path(), false);
    let w = stack.job_dir("w", JOB);
    ok(&stack.fsctl(JOB, &["mount", "n", w.to_str().unwrap()]));
    ok(&sh_as(JOB, &w, "echo n > f.txt"));
    commit(&stack, &w, "n");
    ok(&stack.fsctl(JOB, &["umount", w.to_str().unwrap()]));

    let ns = stack.job_dir("ns", JOB);
    let inner = ns.join("by_ref/n");
    std::fs::create_dir_all(&inner).unwrap();
    for d in [ns.join("by_ref"), inner.clone()] {
        std::os::unix::fs::chown(&d, Some(JOB), Some(JOB)).unwrap();
    }
    ok(&stack.fsctl(JOB, &["mount", "plain", inner.to_str().unwrap()]));
    ok(&stack.fsctl(JOB, &["mount", "--namespace", ns.to_str().unwrap()]));
    assert_eq!(out(&ns, "cat by_ref/n/f.txt"), "n\n", "the view of n opens");
    let ls: serde_json::Value = serde_json::from_str(&ok(&stack.fsctl(JOB, &["ls", "--json"]))).unwrap();
    let at_inner: Vec<_> =
        ls.as_array().unwrap().iter().filter(|m| m["mount_point"] == inner.to_str().unwrap()).collect();
    assert_eq!(at_inner.len(), 1, "{ls}");
    assert_eq!(at_inner[0]["ref"], "plain", "the view took the place of the mount made there first: {ls}");
}
