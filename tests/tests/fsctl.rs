//! fsctl against the real stack (cafsd as `nobody`, the helper as root, real mounts): every verb end to end, the
//! job wrapper, who may drive whose mount, the TCP listener's refusals, and mounts that outlive their clients.
//! Needs root and /dev/fuse.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use cafs_tests::mount::{bin, is_mounted};
use cafs_tests::stack::{Stack, ask, fails, ok, sh_as};

const JOB: u32 = 1000;
const OTHER: u32 = 1001;

fn json(o: &std::process::Output) -> serde_json::Value {
    let text = ok(o);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?} is not JSON: {e}"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn every_verb_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let stack = Stack::start(tmp.path(), &["--autocommit", "0"]);
    let dir = stack.job_dir("out", JOB);

    // --help for every verb, and usage errors exit 2.
    for verb in [
        "mount", "umount", "commit", "flush", "status", "ls", "log", "refs", "get", "put", "ref", "chown", "chmod",
        "run",
    ] {
        ok(&stack.fsctl(JOB, &[verb, "--help"]));
    }
    fails(&stack.fsctl(JOB, &["commit"]), 2);
    fails(&stack.fsctl(JOB, &["mount", "bad ref!", s(&dir)]), 2);

    // mount
    let m = json(&stack.fsctl(JOB, &["mount", "results", s(&dir), "--json"]));
    assert_eq!(
        (m["ref"].as_str(), m["owner_uid"].as_u64(), m["read_only"].as_bool()),
        (Some("results"), Some(1000), Some(false))
    );
    assert!(is_mounted(&dir));
    ok(&sh_as(
        JOB,
        &dir,
        "mkdir -p a/b && echo small > a/b/s.txt && head -c 20000000 /dev/urandom > big && cp big ../big.copy",
    ));

    // status: the tree changed; the server counts the mount.
    let st = json(&stack.fsctl(JOB, &["status", "--json"]));
    assert_eq!(st["server"]["mounts"], 1);
    let mine = &st["mounts"][0];
    assert_eq!((mine["mount"]["mount_point"].as_str(), mine["dirty"].as_bool()), (Some(s(&dir)), Some(true)));
    let one = json(&stack.fsctl(JOB, &["status", s(&dir), "--json"]));
    assert_eq!(one["mounts"].as_array().unwrap().len(), 1);
    assert!(ok(&stack.fsctl(JOB, &["status"])).contains("changed since the last commit"));

    // flush --wait: nothing is held afterwards, and the bytes were stored.
    let f = json(&stack.fsctl(JOB, &["flush", s(&dir), "--wait", "--json"]));
    assert_eq!(f["dirty_bytes"], 0, "{f}");
    assert!(f["bytes_uploaded"].as_u64().unwrap() >= 20_000_000, "{f}");
    assert_eq!(f["failed_blocks"], 0);
    ok(&stack.fsctl(JOB, &["flush", s(&dir)]));

    // commit -m prints the hash; an unchanged tree commits to the same hash without a new version.
    let pdh = ok(&stack.fsctl(JOB, &["commit", s(&dir), "-m", "first results"])).trim().to_string();
    cafs::Pdh::parse(&pdh).unwrap_or_else(|e| panic!("{pdh:?}: {e}"));
    let again = json(&stack.fsctl(JOB, &["commit", s(&dir), "--json"]));
    assert_eq!(
        (again["pdh"].as_str(), again["changed"].as_bool(), again["version"].as_u64()),
        (Some(pdh.as_str()), Some(false), Some(1))
    );

    // ls and log
    let ls = json(&stack.fsctl(JOB, &["ls", "--json"]));
    assert_eq!(ls.as_array().unwrap().len(), 1);
    assert_eq!(ls[0]["pdh"].as_str(), Some(pdh.as_str()));
    assert!(ok(&stack.fsctl(JOB, &["ls"])).contains(s(&dir)));
    let log = json(&stack.fsctl(JOB, &["log", "results", "--json"]));
    assert_eq!(log.as_array().unwrap().len(), 1);
    assert_eq!((log[0]["pdh"].as_str(), log[0]["message"].as_str()), (Some(pdh.as_str()), Some("first results")));
    assert!(ok(&stack.fsctl(JOB, &["log", "results"])).contains("first results"));
    assert!(fails(&stack.fsctl(JOB, &["log", "no-such-ref"]), 1).contains("no versions"));

    // umount commits the change made since, and prints the hash it ended at.
    ok(&sh_as(JOB, &dir, "echo later > later.txt"));
    let last = ok(&stack.fsctl(JOB, &["umount", s(&dir)])).trim().to_string();
    assert_ne!(last, pdh);
    assert!(!is_mounted(&dir));
    assert_eq!(json(&stack.fsctl(JOB, &["log", "results", "--json"])).as_array().unwrap().len(), 2);
    assert!(fails(&stack.fsctl(JOB, &["commit", s(&dir)]), 1).contains("not a mount of this cafsd"));

    // The first hash, read-only elsewhere: byte for byte what was written, and nothing written later.
    let ro = stack.job_dir("ro", JOB);
    let m = json(&stack.fsctl(JOB, &["mount", &pdh, s(&ro), "--json"]));
    assert_eq!(m["read_only"], true);
    ok(&sh_as(JOB, &ro, "cmp big ../big.copy && test \"$(cat a/b/s.txt)\" = small && test ! -e later.txt"));
    let w = sh_as(JOB, &ro, "echo x > new");
    assert!(!w.status.success() && String::from_utf8_lossy(&w.stderr).contains("Read-only"), "{w:?}");
    assert!(fails(&stack.fsctl(JOB, &["commit", s(&ro)]), 1).contains("read-only"));
    ok(&stack.fsctl(JOB, &["umount", s(&ro)]));
    // A ref mounted --ro shows its latest version.
    ok(&stack.fsctl(JOB, &["mount", "results", s(&ro), "--ro"]));
    ok(&sh_as(JOB, &ro, "test \"$(cat later.txt)\" = later"));
    // umount --discard drops nothing here (read-only), and a writable mount's discarded change is gone.
    ok(&stack.fsctl(JOB, &["umount", s(&ro)]));
    ok(&stack.fsctl(JOB, &["mount", "results", s(&dir)]));
    ok(&sh_as(JOB, &dir, "echo dropped > dropped.txt"));
    assert_eq!(ok(&stack.fsctl(JOB, &["umount", "--discard", s(&dir)])).trim(), last);
    ok(&stack.fsctl(JOB, &["mount", "results", s(&dir)]));
    ok(&sh_as(JOB, &dir, "test ! -e dropped.txt && test -e later.txt"));
    ok(&stack.fsctl(JOB, &["umount", s(&dir)]));
    assert!(stack.mounts().is_empty());
}

#[test]
fn run_commits_a_job_and_its_hash_reads_back_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let stack = Stack::start(tmp.path(), &["--autocommit", "0"]);
    let work = stack.job_dir("work", JOB);
    let job = work.join("job");
    // 3,000 small files in 30 directories and one 300 MiB file; a copy of the large one is kept outside.
    let script = "for d in $(seq 30); do mkdir d$d; for f in $(seq 100); do echo \"$d/$f\" > d$d/f$f; done; done; \
                  head -c 314572800 /dev/urandom | tee large > ../large.copy; echo job says hi";
    let out = stack.fsctl(JOB, &["run", "--ref", "job-1", "--dir", s(&job), "--", "sh", "-c", script]);
    let printed = ok(&out);
    let mut lines = printed.lines();
    assert_eq!(lines.next(), Some("job says hi"), "the command's own output comes first");
    let pdh = lines.next().expect("the hash").to_string();
    cafs::Pdh::parse(&pdh).unwrap();
    assert!(!is_mounted(&job), "unmounted after the job");
    assert!(stack.mounts().is_empty());

    let check = stack.job_dir("check", JOB);
    ok(&stack.fsctl(JOB, &["mount", &pdh, s(&check), "--ro"]));
    ok(&sh_as(
        JOB,
        &check,
        "cmp large ../work/large.copy && n=0; for d in $(seq 30); do for f in $(seq 100); do \
         test \"$(cat d$d/f$f)\" = \"$d/$f\" || exit 1; n=$((n+1)); done; done; test $n = 3000 && \
         test $(ls | wc -l) = 31",
    ));
    ok(&stack.fsctl(JOB, &["umount", s(&check)]));
    let log = json(&stack.fsctl(JOB, &["log", "job-1", "--json"]));
    assert_eq!(log[0]["pdh"].as_str(), Some(pdh.as_str()));

    // An existing ref is refused: a job gets a fresh collection.
    // fsctl's own failures exit 125, as env's do: a scheduler tells them from the job's.
    let r = stack.fsctl(JOB, &["run", "--ref", "job-1", "--dir", s(&job), "--", "true"]);
    assert!(fails(&r, 125).contains("exists already"));

    // A failing job: its exit code, its partial output under job-2.failed, job-2 itself never made.
    let r =
        stack.fsctl(JOB, &["run", "--ref", "job-2", "--dir", s(&job), "--", "sh", "-c", "echo half > part; exit 7"]);
    let err = fails(&r, 7);
    assert!(err.contains("job-2.failed"), "{err}");
    assert!(fails(&stack.fsctl(JOB, &["log", "job-2"]), 1).contains("no versions"));
    let failed = json(&stack.fsctl(JOB, &["log", "job-2.failed", "--json"]));
    let partial = failed[0]["pdh"].as_str().unwrap().to_string();
    assert!(err.contains(&partial), "the partial hash is on stderr: {err}");
    ok(&stack.fsctl(JOB, &["mount", &partial, s(&check)]));
    ok(&sh_as(JOB, &check, "test \"$(cat part)\" = half"));
    ok(&stack.fsctl(JOB, &["umount", s(&check)]));
    // A command that cannot start commits nothing: 127 when it is not found, 126 when it cannot be executed.
    fails(&stack.fsctl(JOB, &["run", "--ref", "job-3", "--dir", s(&job), "--", "/no/such/command"]), 127);
    fails(&stack.fsctl(JOB, &["log", "job-3"]), 1);
    let plain = work.join("not-a-program");
    std::fs::write(&plain, "echo never\n").unwrap();
    fails(&stack.fsctl(JOB, &["run", "--ref", "job-3", "--dir", s(&job), "--", s(&plain)]), 126);
    fails(&stack.fsctl(JOB, &["log", "job-3"]), 1);
    // --pdh-file: stdout is the job's alone, and the hash is in the file.
    let pdh_file = work.join("pdh");
    let r = stack.fsctl(
        JOB,
        &[
            "run",
            "--ref",
            "job-4",
            "--dir",
            s(&job),
            "--pdh-file",
            s(&pdh_file),
            "--",
            "sh",
            "-c",
            "echo out; echo 1 > f",
        ],
    );
    assert_eq!(ok(&r), "out\n");
    let written = std::fs::read_to_string(&pdh_file).unwrap();
    let log = json(&stack.fsctl(JOB, &["log", "job-4", "--json"]));
    assert_eq!(Some(written.trim()), log[0]["pdh"].as_str());
    assert!(stack.mounts().is_empty());
}

#[test]
fn only_the_owner_and_root_drive_a_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let stack = Stack::start(tmp.path(), &["--autocommit", "0"]);
    let dir = stack.job_dir("mine", JOB);
    let theirs = stack.job_dir("theirs", OTHER);
    ok(&stack.fsctl(JOB, &["mount", "mine", s(&dir)]));
    ok(&sh_as(JOB, &dir, "echo secret > f"));

    for args in [
        vec!["commit", s(&dir)],
        vec!["flush", s(&dir), "--wait"],
        vec!["umount", s(&dir)],
        vec!["umount", "--discard", s(&dir)],
        vec!["status", s(&dir)],
        vec!["commit", s(&dir), "--into", "stolen"],
    ] {
        let err = fails(&stack.fsctl(OTHER, &args), 1);
        assert!(err.contains("belongs to uid 1000; uid 1001 may not"), "{args:?}: {err}");
    }
    assert!(is_mounted(&dir));
    // Others do not see it in their listing.
    assert_eq!(json(&stack.fsctl(OTHER, &["ls", "--json"])), serde_json::json!([]));
    let theirs_status = json(&stack.fsctl(OTHER, &["status", "--json"]));
    assert_eq!(theirs_status["mounts"], serde_json::json!([]));
    assert_eq!(theirs_status["server"]["mounts"], 0, "others learn how many mounts the node has: {theirs_status}");
    assert_eq!(json(&stack.fsctl(0, &["status", "--json"]))["server"]["mounts"], 1);
    // Nor mount over someone else's directory (the helper checks, for the uid cafsd names).
    let err = fails(&stack.fsctl(JOB, &["mount", "x", s(&theirs)]), 1);
    assert!(err.contains("owned by uid 1001"), "{err}");
    assert!(!is_mounted(&theirs));
    // Nobody but cafsd may relay requests to the helper for another uid.
    let relay = format!(
        r#"{{"relay":{{"uid":{OTHER},"request":{{"mount":{{"mountpoint":"{}","origin":{{"ref":"r"}}}}}}}}}}"#,
        s(&theirs)
    );
    let r = ask(&stack.helper_socket, JOB, &relay, None);
    assert!(r.contains(r#""ok":false"#) && r.contains("only cafsd"), "{r}");
    assert!(!is_mounted(&theirs));

    // Root drives every mount.
    assert_eq!(json(&stack.fsctl(0, &["ls", "--json"])).as_array().unwrap().len(), 1);
    let pdh = ok(&stack.fsctl(0, &["commit", s(&dir), "-m", "by root"])).trim().to_string();
    let log = json(&stack.fsctl(JOB, &["log", "mine", "--json"]));
    assert_eq!((log[0]["pdh"].as_str(), log[0]["committer"].as_str()), (Some(pdh.as_str()), Some("root")));
    ok(&stack.fsctl(JOB, &["umount", s(&dir)]));
}

#[test]
fn a_mount_outlives_a_killed_client_and_cafsd_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    // `--on-stop unmount`: this test is about stopping for good (tests/tests/restart.rs keeps mounts).
    let mut stack = Stack::start(tmp.path(), &["--autocommit", "0", "--on-stop", "unmount"]);
    let work = stack.job_dir("work", JOB);
    let job = work.join("job");
    let marker = work.join("started");
    // A job wrapper killed (SIGKILL) while its command runs: the mount and what the job wrote stay.
    let script = format!(
        "head -c 50000000 /dev/urandom > data && cp data ../data.copy && echo $$ > {}.tmp && mv {0}.tmp {0} && exec sleep 300",
        s(&marker)
    );
    let mut wrapper = stack
        .fsctl_cmd(JOB, &["run", "--ref", "killed", "--dir", s(&job), "--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !marker.exists() {
        assert!(wrapper.try_wait().unwrap().is_none(), "fsctl run ended early");
        assert!(start.elapsed() < Duration::from_secs(120), "the job did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    wrapper.kill().unwrap();
    wrapper.wait().unwrap();
    let job_pid = std::fs::read_to_string(&marker).unwrap().trim().to_string();
    assert!(std::process::Command::new("kill").arg(&job_pid).status().unwrap().success());

    // A new client sees the same mount and state, and finishes the job's commit.
    assert!(is_mounted(&job));
    let ls = json(&stack.fsctl(JOB, &["ls", "--json"]));
    assert_eq!((ls[0]["mount_point"].as_str(), ls[0]["ref"].as_str()), (Some(s(&job)), Some("killed")));
    assert_eq!(json(&stack.fsctl(JOB, &["status", s(&job), "--json"]))["mounts"][0]["dirty"], true);
    ok(&sh_as(JOB, &job, "cmp data ../data.copy"));
    let pdh = ok(&stack.fsctl(JOB, &["commit", s(&job), "-m", "after the wrapper died"])).trim().to_string();

    // Many mounts in one cafsd, of two users; SIGTERM commits each changed tree and unmounts them all.
    let other = stack.job_dir("other", OTHER);
    ok(&stack.fsctl(OTHER, &["mount", "other", s(&other)]));
    ok(&sh_as(OTHER, &other, "echo theirs > t"));
    ok(&sh_as(JOB, &job, "echo more > more"));
    assert_eq!(stack.mounts().len(), 2);
    assert!(stack.stop_cafsd().success());
    assert!(stack.mounts().is_empty(), "cafsd unmounted everything through the helper");

    // Restarted on the same state: both commits are there.
    stack.start_cafsd(&["--autocommit", "0"]);
    let log = json(&stack.fsctl(JOB, &["log", "killed", "--json"]));
    assert_eq!(log.as_array().unwrap().len(), 2);
    assert_eq!(log[0]["pdh"].as_str(), Some(pdh.as_str()));
    ok(&stack.fsctl(OTHER, &["mount", "other", s(&other), "--ro"]));
    ok(&sh_as(OTHER, &other, "test \"$(cat t)\" = theirs"));
    ok(&stack.fsctl(OTHER, &["umount", s(&other)]));
}

#[test]
fn the_tcp_listener_needs_tls_and_a_token() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (cert, key, token, wrong) = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("token"), dir.join("wrong"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    ok(&made);
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::write(&wrong, "fedcba9876543210fedcba9876543210\n").unwrap();
    for f in [&token, &wrong] {
        std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    // cafsd refuses to serve TCP without all of TLS and a token, or with a token file others can read.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let cafsd = |extra: &[&str]| {
        let mut c = std::process::Command::new(bin("cafsd"));
        c.arg("--state-dir").arg(dir.join("state")).arg("--socket").arg(dir.join("run/cafsd.sock"));
        c.args(["--listen-tcp", &addr]).args(extra).stdin(Stdio::null());
        c
    };
    let no_token =
        cafs_tests::run_bounded(&mut cafsd(&["--tls-cert", s(&cert), "--tls-key", s(&key)]), Duration::from_secs(60));
    assert!(fails(&no_token, 1).contains("never served remotely without TLS and a token"));
    let no_tls = cafs_tests::run_bounded(&mut cafsd(&["--token-file", s(&token)]), Duration::from_secs(60));
    assert!(fails(&no_tls, 1).contains("--tls-cert"));
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let readable = cafs_tests::run_bounded(
        &mut cafsd(&["--tls-cert", s(&cert), "--tls-key", s(&key), "--token-file", s(&token)]),
        Duration::from_secs(60),
    );
    assert!(fails(&readable, 1).contains("chmod 600"));
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    let mut server = cafs_tests::Terminate(
        cafsd(&["--tls-cert", s(&cert), "--tls-key", s(&key), "--token-file", s(&token)]).spawn().unwrap(),
    );
    let start = Instant::now();
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(server.0.try_wait().unwrap().is_none(), "cafsd exited");
        assert!(start.elapsed() < Duration::from_secs(30), "cafsd did not listen on TCP");
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("https://127.0.0.1:{port}");
    let fsctl = |extra: &[&str]| {
        let mut c = std::process::Command::new(bin("fsctl"));
        c.args(["--server", &url]).args(extra).stdin(Stdio::null());
        cafs_tests::run_bounded(&mut c, Duration::from_secs(60))
    };
    assert!(fails(&fsctl(&["--ca", s(&cert), "status"]), 1).contains("a bearer token is required"));
    assert!(fails(&fsctl(&["--ca", s(&cert), "--token-file", s(&wrong), "ls"]), 1).contains("wrong token"));
    // Without trusting the certificate there is no connection at all.
    fails(&fsctl(&["--token-file", s(&token), "ls"]), 1);
    // Plain HTTP is refused by fsctl.
    let mut plain = std::process::Command::new(bin("fsctl"));
    plain.args(["--server", &format!("http://127.0.0.1:{port}"), "ls"]).stdin(Stdio::null());
    assert!(fails(&cafs_tests::run_bounded(&mut plain, Duration::from_secs(60)), 1).contains("https"));
    let status = ok(&fsctl(&["--ca", s(&cert), "--token-file", s(&token), "status"]));
    assert!(status.contains("0 mounts"), "{status}");
}

/// `fsctl put DIR REF` then `fsctl get`, with `TMPDIR` (where their scratch mounts go) in `scratch`.
fn copy_verb(stack: &Stack, uid: u32, scratch: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = stack.fsctl_cmd(uid, args);
    cmd.env("TMPDIR", scratch);
    cafs_tests::run_bounded(&mut cmd, Duration::from_secs(300))
}

#[test]
fn put_and_get_copy_trees_and_refs_lists_what_a_user_may_read() {
    let tmp = tempfile::tempdir().unwrap();
    let stack = Stack::start(tmp.path(), &["--autocommit", "0"]);
    let scratch = stack.job_dir("scratch", JOB);
    let src = stack.job_dir("src", JOB);
    let out = stack.job_dir("out", JOB);
    ok(&sh_as(
        JOB,
        &src,
        "mkdir -p a/b e && echo hi > a/b/x && chmod 640 a/b/x && head -c 3000000 /dev/urandom > big && \
         touch -d @1000000000 big && ln -s a/b/x link && chmod 750 a && touch -d @1100000000 a",
    ));

    // put: a new ref's first version, with its message; the hash on stdout.
    let p = copy_verb(&stack, JOB, &scratch, &["put", s(&src), "data", "-m", "first put", "--json"]);
    let p = json(&p);
    let pdh = p["pdh"].as_str().unwrap().to_string();
    assert_eq!(p["version"], 1);
    let log = json(&stack.fsctl(JOB, &["log", "data", "--json"]));
    assert_eq!((log[0]["pdh"].as_str(), log[0]["message"].as_str()), (Some(pdh.as_str()), Some("first put")));

    // get by hash: a hash names the manifest alone, so the files' bytes and the directories.
    let bytes = out.join("bytes");
    ok(&copy_verb(&stack, JOB, &scratch, &["get", &pdh, s(&bytes)]));
    ok(&sh_as(JOB, &bytes, "cmp big ../../src/big && cmp a/b/x ../../src/a/b/x && test -d e && test ! -e link"));
    // get by ref into a missing directory: the same bytes, modes, times and symlink.
    let got = out.join("one");
    ok(&copy_verb(&stack, JOB, &scratch, &["get", "data", s(&got)]));
    let check = "diff -r --no-dereference ../../src . && test \"$(stat -c %a a/b/x)\" = 640 && \
                 test \"$(stat -c %a a)\" = 750 && test \"$(stat -c %Y big)\" = 1000000000 && \
                 test \"$(stat -c %Y a)\" = 1100000000 && test \"$(readlink link)\" = a/b/x && test -d e";
    ok(&sh_as(JOB, &got, check));
    // A directory with something in it is refused, and keeps what it had.
    assert!(fails(&copy_verb(&stack, JOB, &scratch, &["get", "data", s(&got)]), 2).contains("not empty"));
    ok(&sh_as(JOB, &got, check));

    // A second put is DIR's tree alone: what was removed from DIR is gone from the new version.
    ok(&sh_as(JOB, &src, "rm big && echo new > a/new"));
    let second = ok(&copy_verb(&stack, JOB, &scratch, &["put", s(&src), "data"])).trim().to_string();
    assert_ne!(second, pdh);
    let got2 = out.join("two");
    ok(&copy_verb(&stack, JOB, &scratch, &["get", "data", s(&got2)]));
    ok(&sh_as(JOB, &got2, "test ! -e big && test \"$(cat a/new)\" = new && diff -r --no-dereference ../../src ."));

    // A device node is refused by name before anything changes.
    let dev = src.join("a/null");
    assert!(std::process::Command::new("mknod").arg(&dev).args(["c", "1", "3"]).status().unwrap().success());
    let err = fails(&copy_verb(&stack, JOB, &scratch, &["put", s(&src), "data"]), 1);
    assert!(err.contains("a/null") && err.contains("a device node"), "{err}");
    assert_eq!(json(&stack.fsctl(JOB, &["log", "data", "--json"])).as_array().unwrap().len(), 2);
    std::fs::remove_file(&dev).unwrap();
    // FIFOs, sockets and hard links go in and come out as they were (modes and times of the nodes too).
    ok(&sh_as(
        JOB,
        &src,
        "mkfifo -m 0620 a/pipe && touch -h -d @1200000000 a/pipe && ln a/b/x a/x-again && ln a/pipe pipe-again && \
         python3 -c 'import socket; socket.socket(socket.AF_UNIX).bind(\"a/sock\")'",
    ));
    let third = ok(&copy_verb(&stack, JOB, &scratch, &["put", s(&src), "data"])).trim().to_string();
    let got3 = out.join("three");
    ok(&copy_verb(&stack, JOB, &scratch, &["get", "data", s(&got3)]));
    assert_eq!(cafs_tests::names_tree(&got3), cafs_tests::names_tree(&src));
    ok(&sh_as(JOB, &got3, "test \"$(stat -c %Y a/pipe)\" = 1200000000 && test -S a/sock"));
    // The scratch mounts are gone, and so are their directories.
    assert!(stack.mounts().is_empty());
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0, "scratch directories left behind");

    // refs: what the caller may read. Another user's private ref is not listed; root sees it.
    let theirs = stack.job_dir("theirs", OTHER);
    ok(&sh_as(OTHER, &theirs, "echo mine > f"));
    let scratch_other = stack.job_dir("scratch-other", OTHER);
    ok(&copy_verb(&stack, OTHER, &scratch_other, &["put", s(&theirs), "private"]));
    ok(&stack.fsctl(OTHER, &["chmod", "private", "600"]));
    let names = |uid: u32, args: &[&str]| -> Vec<String> {
        let all = json(&stack.fsctl(uid, args));
        all.as_array().unwrap().iter().map(|r| r["ref"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(names(JOB, &["refs", "--json"]), ["data"]);
    assert_eq!(names(OTHER, &["refs", "--json"]), ["data", "private"]);
    assert_eq!(names(0, &["refs", "--json"]), ["data", "private"]);
    assert_eq!(names(0, &["refs", "pri", "--json"]), ["private"]);
    assert!(fails(&stack.fsctl(JOB, &["refs", "no spaces"]), 2).contains("invalid ref prefix"));
    let one = &json(&stack.fsctl(JOB, &["refs", "--json"]))[0];
    assert_eq!(
        (one["owner_uid"].as_u64(), one["version"].as_u64(), one["pdh"].as_str()),
        (Some(1000), Some(3), Some(third.as_str()))
    );
    assert!(ok(&stack.fsctl(JOB, &["refs"])).contains("version 3"));

    // CAFS_SERVER stands for --server; --read-only (alias --ro); umount --json.
    let d = out.join("view");
    std::fs::create_dir(&d).unwrap();
    std::os::unix::fs::chown(&d, Some(JOB), Some(JOB)).unwrap();
    let mut cmd = std::process::Command::new(bin("fsctl"));
    std::os::unix::process::CommandExt::uid(&mut cmd, JOB);
    cmd.env("CAFS_SERVER", &stack.socket).args(["mount", "data", s(&d), "--read-only", "--json"]);
    let m = json(&cafs_tests::run_bounded(&mut cmd, Duration::from_secs(60)));
    assert_eq!(m["read_only"], true);
    // Unmounting prints the hash the mount ended at: for a read-only view, the one it showed.
    assert_eq!(json(&stack.fsctl(JOB, &["umount", s(&d), "--json"]))["pdh"].as_str(), Some(third.as_str()));
    ok(&stack.fsctl(JOB, &["mount", "data", s(&d)]));
    ok(&sh_as(JOB, &d, "echo fourth > fourth"));
    let u = json(&stack.fsctl(JOB, &["umount", s(&d), "--json"]));
    let log = json(&stack.fsctl(JOB, &["log", "data", "--json"]));
    let fourth = log.as_array().unwrap().iter().find(|v| v["version"] == 4).expect("version 4");
    assert_eq!(u["pdh"].as_str(), fourth["pdh"].as_str());
    assert!(stack.mounts().is_empty());
}
