//! The unit files in `systemd/` pass `systemd-analyze verify`: syntax, known keys, dependencies between them,
//! and executables that exist — the units name `/usr/local/bin/…`, so a copy names the binaries just built.

use std::path::Path;
use std::process::Command;

use cafs_tests::mount::bin;

#[test]
fn unit_files_verify() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd");
    let tmp = tempfile::tempdir().unwrap();
    let bin_dir = bin("cafsd").parent().unwrap().to_path_buf();
    let mut units = Vec::new();
    for e in std::fs::read_dir(&src).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // A template is verified as an instance.
        let name = name.replace("@.", "@example.");
        let text =
            std::fs::read_to_string(&path).unwrap().replace("/usr/local/bin/", &format!("{}/", bin_dir.display()));
        std::fs::write(tmp.path().join(&name), text).unwrap();
        units.push(name);
    }
    units.sort();
    assert_eq!(
        units,
        ["cafs-collection@example.service", "cafs-mount.service", "cafs-mount.socket", "cafsd.service"],
        "the units this test knows"
    );
    let analyze = cafs_tests::tool("systemd-analyze");
    let out = Command::new(analyze).arg("verify").args(&units).current_dir(tmp.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed:\n{stderr}");
    assert!(!stderr.contains("Unknown") && !stderr.contains("not executable"), "{stderr}");
}
