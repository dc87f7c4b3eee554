//! A read-only mount of a ref follows the ref's new versions (one node, the embedded default), and a file open
//! across a refresh keeps reading the version it opened, as a file replaced by `rename` would.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use cafs_tests::stack::{Stack, ok, sh_as};
use cafs_tests::wait_for;

const JOB: u32 = 1000;

fn read_as_job(dir: &Path, script: &str) -> String {
    String::from_utf8_lossy(&sh_as(JOB, dir, script).stdout).into_owned()
}

#[test]
fn an_open_file_keeps_its_version_while_the_view_follows_the_ref() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = tmp.path().join("cafsd.toml");
    std::fs::write(&conf, "ref_refresh_seconds = 1\n").unwrap();
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();
    let sync = tmp.path().join("sync");
    std::fs::create_dir(&sync).unwrap();
    std::fs::set_permissions(&sync, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::create_dir(tmp.path().join("stack")).unwrap();
    let stack = Stack::start(&tmp.path().join("stack"), &["--autocommit", "0", "--config", conf.to_str().unwrap()]);

    let out = stack.job_dir("out", JOB);
    let view = stack.job_dir("view", JOB);
    let (o, v) = (out.to_str().unwrap(), view.to_str().unwrap());
    ok(&stack.fsctl(JOB, &["mount", "results", o]));
    ok(&sh_as(JOB, &out, "head -c 300000 /dev/zero | tr '\\0' a > data.txt && echo one > same.txt"));
    ok(&stack.fsctl(JOB, &["commit", o, "-m", "v1"]));
    ok(&stack.fsctl(JOB, &["mount", "results", v, "--ro"]));
    assert_eq!(read_as_job(&view, "wc -c < data.txt").trim(), "300000");

    // A reader opens data.txt now and reads it only after the view has moved on.
    let script = format!(
        "exec 3< data.txt; touch {s}/opened; while [ ! -e {s}/go ]; do sleep 0.05; done; md5sum <&3",
        s = sync.display()
    );
    let reader = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .current_dir(&view)
        .uid(JOB)
        .gid(JOB)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = scopeguard(reader);
    wait_for("the reader opened the file", Duration::from_secs(10), || sync.join("opened").exists());

    ok(&sh_as(JOB, &out, "head -c 100000 /dev/zero | tr '\\0' b > data.txt"));
    ok(&stack.fsctl(JOB, &["commit", o, "-m", "v2"]));
    wait_for("the view shows v2", Duration::from_secs(15), || {
        read_as_job(&view, "wc -c < data.txt").trim() == "100000"
    });
    assert_eq!(read_as_job(&view, "tr -d b < data.txt | wc -c").trim(), "0", "a new open reads v2");
    assert_eq!(read_as_job(&view, "cat same.txt"), "one\n");

    std::fs::write(sync.join("go"), b"").unwrap();
    let child = reader.0.take().unwrap();
    let done = child.wait_with_output().unwrap();
    assert!(done.status.success());
    let v1 = read_as_job(&out, "head -c 300000 /dev/zero | tr '\\0' a | md5sum");
    assert_eq!(String::from_utf8_lossy(&done.stdout), v1, "the handle opened before the refresh read v1");
    ok(&stack.fsctl(JOB, &["umount", v]));
    ok(&stack.fsctl(JOB, &["umount", o]));
}

/// Kills the reader if the test fails before it ends by itself.
struct Guard(Option<std::process::Child>);

fn scopeguard(c: std::process::Child) -> Guard {
    Guard(Some(c))
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
