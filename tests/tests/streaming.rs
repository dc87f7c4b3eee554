//! Memory stays bounded while streaming: a 20 GiB file written through a real mount keeps cafsd's peak RSS
//! under its memory budget (512 MiB by default) plus 100 MiB. Every 64 MiB block of the file is different, so
//! each one is hashed, stored and written to disk: nothing is deduplicated away. Needs root and /dev/fuse, and
//! ~21 GB of free disk under the temporary directory.

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Instant;

use cafs_tests::mount::MountedCafsd;

const MIB: usize = 1 << 20;
const FILE_MIB: usize = 20 << 10;
const BUDGET_MIB: u64 = 512;

/// A 1 MiB pattern; chunk number `i` of the file is the pattern with `i` in its first 8 bytes.
fn pattern() -> Vec<u8> {
    (0..MIB).map(|j| (j % 251) as u8).collect()
}

fn stamp(i: usize, buf: &mut [u8]) {
    buf[..8].copy_from_slice(&(i as u64).to_le_bytes());
}

fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib / 1024
}

#[test]
fn writing_20_gib_keeps_peak_rss_within_budget() {
    let tmp = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let (state, mnt) = (tmp.path().join("state"), tmp.path().join("mnt"));
    let cafsd = MountedCafsd::start(&state, &mnt, &["--ref", "stream", "--autocommit", "0"]);
    let before = peak_rss_mib(cafsd.pid());
    let started = Instant::now();
    let path = mnt.join("big");
    let mut f = std::fs::File::create(&path).unwrap();
    let mut buf = pattern();
    for i in 0..FILE_MIB {
        stamp(i, &mut buf);
        f.write_all(&buf).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    let elapsed = started.elapsed();
    let peak = peak_rss_mib(cafsd.pid());
    eprintln!(
        "20 GiB streamed in {elapsed:.1?} ({:.0} MiB/s); cafsd peak RSS {peak} MiB (at start {before} MiB)",
        FILE_MIB as f64 / elapsed.as_secs_f64()
    );
    assert!(peak <= BUDGET_MIB + 100, "peak RSS {peak} MiB is over the {BUDGET_MIB} MiB budget + 100 MiB");

    // The bytes are there: size, and chunks at the start, across a block boundary and at the end.
    assert_eq!(std::fs::metadata(&path).unwrap().len(), (FILE_MIB * MIB) as u64);
    let mut f = std::fs::File::open(&path).unwrap();
    let mut want = pattern();
    for i in [0, 63, 64, 10_000, FILE_MIB - 1] {
        f.seek(SeekFrom::Start((i * MIB) as u64)).unwrap();
        f.read_exact(&mut buf).unwrap();
        stamp(i, &mut want);
        assert!(buf == want, "chunk {i} differs");
    }
    drop(cafsd);
}
