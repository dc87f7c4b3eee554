//! The Debian package: `scripts/package.sh` builds it from the binaries under test, and it is installed with
//! `dpkg -i` into the distribution's systemd booted in a private container (see `cafs_tests::booted`; the host
//! is not touched). Checked there: the `cafs` system user made; the units verify and run from the packaged
//! paths (the helper's socket and cafsd enabled and started by the package); every binary runs; the manual
//! pages and completions are in place; the default config is a conffile that leaves cafsd on the embedded
//! default; an `/etc/fstab` line mounts a collection through `mount.fuse.cafs`, and `umount` commits it through
//! `umount.fuse.cafs`; `mount -t fuse.cafs -o ro HASH` reads the committed bytes back; `dpkg --purge` stops
//! and removes it all. Needs root, /dev/fuse and systemd; fails, never skips.

use std::path::Path;
use std::time::Duration;

use cafs_tests::booted::Booted;
use cafs_tests::mount::bin;

/// The unprivileged user the mounts are for.
const JOB: u32 = 1000;

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Runs `argv` in the container as root and asserts success; its stdout.
fn ok(sys: &Booted, argv: &[&str]) -> String {
    let out = sys.run(argv, Duration::from_secs(120));
    assert!(out.status.success(), "{argv:?} ({}): {}\n{}", out.status, text(&out), sys.journal(None));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `script` with `sh -c` in the container as `uid` and asserts success; its stdout.
fn sh_as(sys: &Booted, uid: u32, script: &str) -> String {
    let out = cafs_tests::run_bounded(&mut sys.command_as(uid, &["sh", "-c", script]), Duration::from_secs(60));
    assert!(out.status.success(), "{script:?} as {uid} ({}): {}", out.status, text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds the package into `out` from the binaries under test; its path.
fn build_package(out: &Path) -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin_dir = bin("cafsd").parent().unwrap().to_path_buf();
    let mut cmd = std::process::Command::new(root.join("scripts/package.sh"));
    cmd.arg("--bin-dir").arg(&bin_dir).arg("--out").arg(out).stdin(std::process::Stdio::null());
    let built = cafs_tests::run_bounded(&mut cmd, Duration::from_secs(600));
    assert!(built.status.success(), "scripts/package.sh: {}", text(&built));
    let stdout = String::from_utf8_lossy(&built.stdout);
    let deb = std::path::PathBuf::from(stdout.lines().last().expect("the package's path").trim());
    assert!(deb.is_file(), "{} was not written: {}", deb.display(), text(&built));
    deb
}

#[test]
fn the_package_installs_runs_and_goes() {
    let out = tempfile::tempdir().unwrap();
    let deb = build_package(out.path());

    // What the package holds, and what it declares.
    let listing = std::process::Command::new("dpkg-deb").arg("-c").arg(&deb).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    for f in [
        "./usr/sbin/cafsd",
        "./usr/sbin/cafs-mount",
        "./usr/bin/fsctl",
        "./usr/sbin/mount.fuse.cafs",
        "./usr/sbin/umount.fuse.cafs",
        "./usr/lib/systemd/system/cafsd.service",
        "./usr/lib/systemd/system/cafs-mount.socket",
        "./usr/lib/systemd/system/cafs-collection@.service",
        "./etc/cafs/cafsd.toml",
        "./usr/share/man/man1/cafsd.1.gz",
        "./usr/share/man/man1/cafs-mount.1.gz",
        "./usr/share/man/man1/fsctl.1.gz",
        "./usr/share/man/man1/fsctl-mount.1.gz",
        "./usr/share/bash-completion/completions/fsctl",
        "./usr/share/zsh/vendor-completions/_fsctl",
        "./usr/share/fish/vendor_completions.d/fsctl.fish",
        "./usr/share/doc/cafs/copyright",
        "./usr/share/doc/cafs/README.md",
    ] {
        assert!(listing.lines().any(|l| l.ends_with(f)), "{f} is not in the package:\n{listing}");
    }
    let control = std::process::Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Depends").output().unwrap();
    let depends = String::from_utf8_lossy(&control.stdout).into_owned();
    assert!(depends.contains("libc6") && depends.contains("libssl"), "Depends: {depends}");

    let sys = Booted::boot(bin("cafsd").parent().unwrap(), &[]);
    // A host that ran scripts/up.sh has a `cafs` user: the container starts without one, as a fresh node would.
    let _ = sys.run(&["userdel", "cafs"], Duration::from_secs(30));
    // Nor the policy-rc.d of a container image, which forbids packages to start services (the maintainer
    // scripts honour it through deb-systemd-invoke, as Debian's do).
    let _ = std::fs::remove_file(sys.path("/usr/sbin/policy-rc.d"));
    std::fs::copy(&deb, sys.path("/root/cafs.deb")).unwrap();
    ok(&sys, &["dpkg", "-i", "/root/cafs.deb"]);

    // The system user, the units (verified, enabled, running), the binaries.
    let user = ok(&sys, &["getent", "passwd", "cafs"]);
    assert!(user.contains("/usr/sbin/nologin"), "{user}");
    let units: Vec<String> = [
        "cafsd.service",
        "cafs-mount.socket",
        "cafs-mount.service",
        "cafs-collection@.service",
        "cafs-namespace.service",
    ]
    .iter()
    .map(|u| format!("/usr/lib/systemd/system/{u}"))
    .collect();
    let mut verify = vec!["systemd-analyze", "verify"];
    verify.extend(units.iter().map(String::as_str));
    let out = sys.run(&verify, Duration::from_secs(60));
    let complaints: Vec<&str> =
        std::str::from_utf8(&out.stderr).unwrap().lines().filter(|l| l.contains("cafs")).collect();
    assert!(out.status.success() && complaints.is_empty(), "systemd-analyze verify: {}", text(&out));
    for u in ["cafsd.service", "cafs-mount.socket"] {
        assert_eq!(ok(&sys, &["systemctl", "is-enabled", u]).trim(), "enabled", "{u}");
        assert_eq!(sys.is_active(u), "active", "{u} was not started by the package\n{}", sys.journal(None));
    }
    assert!(sys.path("/var/lib/cafs/catalog.sqlite").exists(), "cafsd is not on the embedded default");
    let version = env!("CARGO_PKG_VERSION");
    for b in ["cafsd", "cafs-mount", "fsctl"] {
        let v = ok(&sys, &[b, "--version"]);
        assert_eq!(v.trim(), format!("{b} {version}"), "{b} --version");
    }
    let page = ok(&sys, &["sh", "-c", "zcat /usr/share/man/man1/fsctl-mount.1.gz"]);
    assert!(page.contains(".TH fsctl-mount") && page.contains("read\\-only"), "fsctl-mount(1):\n{page}");
    let completion = ok(&sys, &["cat", "/usr/share/bash-completion/completions/fsctl"]);
    assert!(completion.contains("complete -F _fsctl"), "bash completion:\n{completion}");

    // An /etc/fstab line mounts a ref for the directory's owner; `umount` commits it.
    ok(&sys, &["sh", "-c", "mkdir -p /mnt/pkg && chown 1000:1000 /mnt/pkg"]);
    ok(
        &sys,
        &[
            "sh",
            "-c",
            "echo 'pkgtest /mnt/pkg fuse.cafs noauto,autocommit=0,x-systemd.requires=cafsd.service 0 0' >> /etc/fstab",
        ],
    );
    ok(&sys, &["mount", "/mnt/pkg"]);
    assert!(sys.mounts_of("fuse.cafs").iter().any(|m| m == "/mnt/pkg"), "{:?}", sys.mounts_of("fuse.cafs"));
    sh_as(&sys, JOB, "echo packaged > /mnt/pkg/hello.txt && mkdir /mnt/pkg/d && seq 100000 > /mnt/pkg/d/n");
    ok(&sys, &["umount", "/mnt/pkg"]);
    assert!(!sys.mounts_of("fuse.cafs").iter().any(|m| m == "/mnt/pkg"), "umount left /mnt/pkg mounted");
    let log = ok(&sys, &["fsctl", "log", "--json", "pkgtest"]);
    let log: serde_json::Value = serde_json::from_str(&log).unwrap();
    let versions = log.as_array().expect("a list of versions");
    assert_eq!(versions.len(), 1, "umount did not commit once: {log}");
    let pdh = versions[0]["pdh"].as_str().expect("a hash").to_string();

    // The committed collection by its hash, read-only, with mount(8)'s own syntax; unknown options are refused.
    ok(&sys, &["sh", "-c", "mkdir -p /mnt/ro && chown 1000:1000 /mnt/ro"]);
    let bad = sys.run(&["mount", "-t", "fuse.cafs", "-o", "ro,bogus", &pdh, "/mnt/ro"], Duration::from_secs(60));
    assert!(!bad.status.success() && text(&bad).contains("unknown option bogus"), "{}", text(&bad));
    ok(&sys, &["mount", "-t", "fuse.cafs", "-o", "ro", &pdh, "/mnt/ro"]);
    assert_eq!(sh_as(&sys, JOB, "cat /mnt/ro/hello.txt"), "packaged\n");
    assert_eq!(sh_as(&sys, JOB, "wc -l < /mnt/ro/d/n").trim(), "100000");
    ok(&sys, &["umount", "/mnt/ro"]);

    // Removal stops everything and takes the files; purge the conffile too. The state (data) stays.
    ok(&sys, &["dpkg", "--purge", "cafs"]);
    for u in ["cafsd.service", "cafs-mount.socket", "cafs-mount.service"] {
        assert_eq!(sys.is_active(u), "inactive", "{u} after purge");
    }
    for f in ["/usr/sbin/cafsd", "/usr/bin/fsctl", "/usr/lib/systemd/system/cafsd.service", "/etc/cafs/cafsd.toml"] {
        assert!(!sys.path(f).exists(), "{f} is still there after purge");
    }
    assert!(sys.path("/var/lib/cafs/catalog.sqlite").exists(), "purge removed the state (the data)");
    assert!(sys.mounts_of("fuse.cafs").is_empty(), "mounts left: {:?}", sys.mounts_of("fuse.cafs"));
    assert!(sys.poweroff(Duration::from_secs(30)), "the container did not power off within 30 s");
    let left = Booted::left_behind(&Booted::name_prefix());
    assert!(left.is_empty(), "left on the host: {left:?}");
}
