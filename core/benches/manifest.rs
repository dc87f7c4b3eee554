//! Manifest codec at scale: parse + normalize + write of a 1,000,000-file manifest.
//!
//! `cargo bench -p cafs-core --bench manifest [-- FILES]` generates a non-normalized manifest (streams and files
//! in reverse order, each directory split over two lines, small files packed into 64 MiB blocks), then times
//! parsing it into a tree, writing the normalized text, and computing the PDH. Peak RSS is the process's VmHWM,
//! which includes the generated input text.

use std::time::Instant;

use cafs_core::Manifest;
use cafs_core::locator::Locator;

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    let files: usize =
        std::env::args().skip(1).find(|a| !a.starts_with('-')).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let per_dir = 1000;
    let dirs = files.div_ceil(per_dir);

    // Files of 1..=128 KiB, packed back to back into 64 MiB blocks.
    let mut blocks: Vec<String> = Vec::new();
    let mut placements = Vec::with_capacity(files); // (block index, offset, len)
    let (mut block, mut used) = (0usize, 0u64);
    for i in 0..files {
        let len = 1 + (i as u64 * 7919 % (128 << 10));
        if used + len > 64 << 20 {
            block += 1;
            used = 0;
        }
        placements.push((block, used, len));
        used += len;
    }
    for b in 0..=block {
        let seed = format!("block {b}");
        blocks.push(Locator::from_parts(cafs_core::locator::md5(seed.as_bytes()), 64 << 20).to_string());
    }
    let mut text = String::with_capacity(files * 64);
    for d in (0..dirs).rev() {
        let range = d * per_dir..((d + 1) * per_dir).min(files);
        let half = range.start + (range.end - range.start) / 2;
        for part in [half..range.end, range.start..half] {
            if part.is_empty() {
                continue;
            }
            // One stream line: the blocks this part touches, then its files in reverse order.
            let first_block = placements[part.start].0;
            let last_block = placements[part.end - 1].0;
            text.push_str(&format!("./dir{d:05}"));
            for b in &blocks[first_block..=last_block] {
                text.push(' ');
                text.push_str(b);
            }
            for i in part.rev() {
                let (b, off, len) = placements[i];
                let pos = (b - first_block) as u64 * (64 << 20) + off;
                text.push_str(&format!(" {pos}:{len}:file\\040{i:07}.dat"));
            }
            text.push('\n');
        }
    }
    println!(
        "input: {files} files in {dirs} directories, {} blocks, {:.1} MiB of text",
        blocks.len(),
        text.len() as f64 / 1048576.0
    );

    let t0 = Instant::now();
    let m = Manifest::parse(text.as_bytes()).expect("generated manifest parses");
    let t_parse = t0.elapsed();
    let t1 = Instant::now();
    let normalized = m.to_text();
    let t_write = t1.elapsed();
    let t2 = Instant::now();
    let pdh = m.pdh();
    let t_pdh = t2.elapsed();
    let total = t0.elapsed();
    println!("parse:                 {:>8.3} s", t_parse.as_secs_f64());
    println!(
        "normalize + write:     {:>8.3} s  ({:.1} MiB normalized)",
        t_write.as_secs_f64(),
        normalized.len() as f64 / 1048576.0
    );
    println!("pdh (strip+write+md5): {:>8.3} s  {pdh}", t_pdh.as_secs_f64());
    println!("total:                 {:>8.3} s", total.as_secs_f64());
    println!("peak RSS:              {:>8.0} MiB", peak_rss_mib());
    assert_eq!(m.files().len(), files);
}
