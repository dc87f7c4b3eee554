//! Journal replay at scale: how long a restarted cafsd takes to rebuild a tree of many uncommitted files.
//!
//! `cargo bench -p cafs-core --bench journal [-- FILES]` makes FILES (default 100,000) small files in 100
//! directories of a journaled tree on a local block store in a temporary directory (tmpfs when there is one),
//! fsyncs them all (so every file's bytes are stored and its records are durable), then times what recovery
//! does: reading the journal and replaying it onto an empty tree. It checks the replayed tree before printing.

use std::sync::Arc;
use std::time::Instant;

use cafs_core::fs::inode::ROOT;
use cafs_core::fs::{Filesystem, FsOptions, Setup};
use cafs_core::journal::{Header, Journal};
use cafs_core::store::{BlockStore, LocalDirStore};

fn main() {
    let files: usize =
        std::env::args().skip(1).find(|a| !a.starts_with('-')).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let store: Arc<dyn BlockStore> = Arc::new(LocalDirStore::open(dir.path().join("blocks")).unwrap());
    let path = dir.path().join("j.journal");
    let header = Header {
        format: Header::FORMAT,
        ref_name: "bench".into(),
        mount_point: b"/m".to_vec(),
        base_version: 0,
        inos: Vec::new(),
        next_ino: 0,
    };

    let setup = Setup { store, rt: rt.handle().clone(), opts: FsOptions::default(), uid: 1000, gid: 1000 };
    let live = Filesystem::new(setup.clone());
    live.attach_journal(Arc::new(Journal::create(&path, &header).unwrap()));
    let start = Instant::now();
    let dirs: Vec<u64> =
        (0..100).map(|d| live.mkdir(ROOT, format!("d{d:03}").as_bytes(), 0o755, 1000, 1000).unwrap().ino).collect();
    let mut inos = Vec::with_capacity(files);
    for i in 0..files {
        let ino = live.create(dirs[i % 100], format!("file-{i:07}").as_bytes(), 0o644, 1000, 1000).unwrap().ino;
        live.write(ino, 0, format!("contents of file {i}\n").as_bytes()).unwrap();
        inos.push(ino);
    }
    // One fsync stores every buffer (packed) and syncs the journal; the others find nothing left to do.
    live.snapshot().unwrap();
    live.sync_journal().unwrap();
    let made = start.elapsed();
    let bytes = std::fs::metadata(&path).unwrap().len();

    let start = Instant::now();
    let (_, _, records) = Journal::open(&path).unwrap().unwrap();
    let read = start.elapsed();
    let replayed = Filesystem::new(setup);
    replayed.replay(&records).unwrap();
    let total = start.elapsed();

    let probe = replayed.lookup(dirs[7], format!("file-{:07}", files / 2 / 100 * 100 + 7).as_bytes()).unwrap();
    let want = format!("contents of file {}\n", files / 2 / 100 * 100 + 7);
    assert_eq!(&replayed.read(probe.ino, 0, 100).unwrap()[..], want.as_bytes());
    assert_eq!(replayed.readdir(dirs[0]).unwrap().len(), files.div_ceil(100));
    println!(
        "{files} files: made, stored and journaled in {:.2} s; journal {:.1} MiB, {} records",
        made.as_secs_f64(),
        bytes as f64 / (1 << 20) as f64,
        records.len()
    );
    println!(
        "recovery: read {:.3} s + replay {:.3} s = {:.3} s",
        read.as_secs_f64(),
        (total - read).as_secs_f64(),
        total.as_secs_f64()
    );
}
