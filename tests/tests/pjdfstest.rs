//! pjdfstest (the POSIX filesystem test suite, from crates.io) on a real writable mount. Every test must pass or
//! be one of the expected failures that `tests/pjdfstest.toml` lists with its reason (device nodes, which cafs
//! refuses on purpose); an expected failure that passes fails this test too, so the list
//! stays true. Needs root (the suite switches users) and /dev/fuse.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cafs_tests::mount::MountedCafsd;

#[test]
fn pjdfstest_passes_on_a_writable_mount() {
    let pjdfstest = cafs_tests::tool("pjdfstest");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("pjdfstest.toml");
    let tmp = tempfile::tempdir().unwrap();
    // The suite acts as unprivileged users too: they must reach the mount (allow_other) and its parents.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (state, mnt) = (tmp.path().join("state"), tmp.path().join("mnt"));
    let cafsd = MountedCafsd::start(&state, &mnt, &["--ref", "pjdfstest", "--autocommit", "0", "--allow-other"]);
    let base = mnt.join("pjd");
    std::fs::create_dir(&base).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();

    // Bounded: the suite takes well under a minute here.
    let out = cafs_tests::run_bounded(
        Command::new(&pjdfstest).arg("-c").arg(&config).arg("-p").arg(&base).current_dir(&base).env("NO_COLOR", "1"),
        Duration::from_secs(600),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("Summary:"))
        .unwrap_or_else(|| panic!("no summary from pjdfstest:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    eprintln!("pjdfstest on cafs: {summary}");
    for skipped in stdout.lines().filter(|l| l.to_lowercase().contains("skip")) {
        eprintln!("  {skipped}");
    }
    let failed: Vec<&str> = stdout.lines().filter(|l| l.trim_end().ends_with(" FAILED")).collect();
    let unexpected: Vec<&str> = stdout.lines().filter(|l| l.contains("PASSED UNEXPECTEDLY")).collect();
    assert!(failed.is_empty(), "unexpected pjdfstest failures:\n{}\n\n{stdout}", failed.join("\n"));
    assert!(
        unexpected.is_empty(),
        "expected failures that now pass (update tests/pjdfstest.toml):\n{}",
        unexpected.join("\n")
    );
    assert!(out.status.success(), "pjdfstest exited with {}:\n{stdout}", out.status);
    // The suite ran for real: most of it passed.
    let passed: usize = summary
        .split(',')
        .find_map(|p| p.trim().strip_suffix(" passed").and_then(|n| n.trim().parse().ok()))
        .unwrap_or_else(|| panic!("cannot read the passed count in {summary:?}"));
    assert!(passed >= 190, "{summary}");
    drop(cafsd);
}
