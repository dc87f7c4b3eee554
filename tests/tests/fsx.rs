//! fsx (the File System eXerciser, from crates.io) on a real writable mount: 100,000 pseudorandom reads, writes,
//! mmap reads and writes, truncations, fsyncs and close/reopens of one file, every read checked against fsx's
//! model of the file. Its default operation mix; a fixed seed so that a failure can be replayed
//! (`fsx -N 100000 -S 20261122 FILE`). Needs root and /dev/fuse.

use std::process::Command;
use std::time::{Duration, Instant};

use cafs_tests::mount::MountedCafsd;

const OPS: &str = "100000";
const SEED: &str = "20261122";

#[test]
fn fsx_runs_100k_operations_without_a_failure() {
    let fsx = cafs_tests::tool("fsx");
    let tmp = tempfile::tempdir().unwrap();
    let (state, mnt, artifacts) = (tmp.path().join("state"), tmp.path().join("mnt"), tmp.path().join("fsx"));
    std::fs::create_dir(&artifacts).unwrap();
    let cafsd = MountedCafsd::start(&state, &mnt, &["--ref", "fsx", "--autocommit", "0"]);
    let started = Instant::now();
    // fsx itself slows down as it goes (its mappings pile up in the kernel): ~3 minutes here, ~2 on ext4.
    let out = cafs_tests::run_bounded(
        Command::new(&fsx).args(["-N", OPS, "-S", SEED, "-P"]).arg(&artifacts).arg(mnt.join("fsx.file")),
        Duration::from_secs(1200),
    );
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "fsx failed ({}):\n{}", out.status, tail(&text, 80));
    assert!(text.contains("All operations completed A-OK!"), "{}", tail(&text, 40));
    eprintln!("fsx: {OPS} operations (seed {SEED}) in {:.0?}", started.elapsed());
    // Committing what fsx left proves the tree is whole.
    std::fs::write(mnt.join(".cafs/commit"), b"after fsx").unwrap();
    drop(cafsd);
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
