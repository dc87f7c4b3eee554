//! MD5 throughput of cafs's block hashing (`cafs_core::locator::md5`, OpenSSL's assembly implementation).
//!
//! `cargo bench -p cafs-core --bench md5` hashes 64 MiB blocks (the block size cafs writes) for a few seconds
//! and prints MiB/s. `bench/md5.sh` runs it beside `openssl speed -evp md5 -bytes 1048576`.

use std::time::{Duration, Instant};

fn main() {
    let block: Vec<u8> = (0..64u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 7) as u8).collect();
    let mut hashed = 0u64;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        std::hint::black_box(cafs_core::locator::md5(std::hint::black_box(&block)));
        hashed += block.len() as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "cafs md5 (64 MiB blocks): {:.0} MiB/s ({:.0} MB/s)",
        hashed as f64 / 1048576.0 / secs,
        hashed as f64 / 1e6 / secs
    );
}
