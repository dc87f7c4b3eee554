//! The filesystem core tested directly, without FUSE: against a model, under a slow and a failing store, and
//! through snapshot → load.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use proptest::prelude::*;

use super::*;
use crate::fs::inode::ROOT;
use crate::store::LocalDirStore;
use crate::store::faulty::FaultyStore;

struct Env {
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    store: Arc<FaultyStore<LocalDirStore>>,
}

/// A store on tmpfs when there is one: these tests are about the core's logic, and a disk's fsyncs would make
/// them slow without testing anything more (the store's own tests use the disk).
fn env() -> Env {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.unwrap();
    let store = Arc::new(FaultyStore::new(LocalDirStore::open(dir.path().join("blocks")).unwrap()));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    Env { _dir: dir, rt, store }
}

fn small(buffer_size: usize) -> FsOptions {
    FsOptions { buffer_size, retry_delay: Duration::from_millis(5), upload_attempts: 2, ..FsOptions::default() }
}

/// The test store and runtime, owned by `owner` (uid and gid).
fn setup(e: &Env, opts: FsOptions, owner: u32) -> Setup {
    Setup { store: e.store.clone(), rt: e.rt.handle().clone(), opts, uid: owner, gid: owner }
}

fn fs(e: &Env, opts: FsOptions) -> Filesystem {
    Filesystem::new(setup(e, opts, 1000))
}

fn all_stored(f: &Filesystem, ino: Ino) -> bool {
    let st = f.lock();
    let Body::File(x) = &st.table.get(ino).unwrap().body else { panic!() };
    x.iter().all(|e| !matches!(e.src, Source::Buffer { .. }))
}

#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, len: usize, seed: u8 },
    Truncate(u64),
    Fsync,
    Read { offset: u64, len: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u64..20_000, 1usize..9_000, any::<u8>()).prop_map(|(offset, len, seed)| Op::Write { offset, len, seed }),
        1 => (0u64..20_000).prop_map(Op::Truncate),
        1 => Just(Op::Fsync),
        2 => (0u64..22_000, 0u64..10_000).prop_map(|(offset, len)| Op::Read { offset, len }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random writes (crossing 4 KiB buffer blocks), truncates, fsyncs and reads give what a byte vector gives,
    /// whether the bytes are still in buffers or already stored.
    #[test]
    fn file_contents_follow_the_model(ops in proptest::collection::vec(op(), 1..30)) {
        let e = env();
        let f = fs(&e, small(4096));
        let ino = f.create(ROOT, b"f", 0o644, 1000, 1000).unwrap().ino;
        let mut model: Vec<u8> = Vec::new();
        for op in ops {
            match op {
                Op::Write { offset, len, seed } => {
                    let data: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
                    prop_assert_eq!(f.write(ino, offset, &data).unwrap(), len);
                    let end = offset as usize + len;
                    if model.len() < end { model.resize(end, 0); }
                    model[offset as usize..end].copy_from_slice(&data);
                }
                Op::Truncate(size) => {
                    f.setattr(ino, &SetAttr { size: Some(size), ..Default::default() }).unwrap();
                    model.resize(size as usize, 0);
                }
                Op::Fsync => {
                    f.fsync(ino).unwrap();
                    prop_assert!(all_stored(&f, ino));
                }
                Op::Read { offset, len } => {
                    let got = f.read(ino, offset, len).unwrap();
                    let start = (offset as usize).min(model.len());
                    let end = (offset as usize + len as usize).min(model.len());
                    prop_assert_eq!(got, model[start..end].to_vec());
                }
            }
            prop_assert_eq!(f.getattr(ino).unwrap().size, model.len() as u64);
        }
        prop_assert_eq!(f.read(ino, 0, u64::MAX).unwrap(), model);
    }
}

#[test]
fn fsync_stores_the_bytes_and_frees_the_memory() {
    let e = env();
    let f = fs(&e, small(1 << 20));
    let ino = f.create(ROOT, b"f", 0o644, 0, 0).unwrap().ino;
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    for (i, chunk) in data.chunks(128 << 10).enumerate() {
        f.write(ino, (i * (128 << 10)) as u64, chunk).unwrap();
    }
    f.fsync(ino).unwrap();
    assert!(all_stored(&f, ino));
    assert_eq!(f.buffered(), (0, 0));
    // Three 1 MiB blocks' worth, each stored and verified on the way back.
    assert_eq!(f.read(ino, 0, u64::MAX).unwrap(), data);
    assert!(e.store.puts.load(Ordering::SeqCst) >= 3);
}

#[test]
fn writers_wait_for_uploads_within_the_memory_budget() {
    let e = env();
    e.store.set_put_delay(Duration::from_millis(30));
    let budget = 256 << 10;
    let f = fs(&e, FsOptions { memory_budget: budget, max_uploads: 2, ..small(64 << 10) });
    let ino = f.create(ROOT, b"big", 0o644, 0, 0).unwrap().ino;
    let chunk = vec![7u8; 32 << 10];
    let mut peak = 0;
    for i in 0..320u64 {
        f.write(ino, i * chunk.len() as u64, &chunk).unwrap();
        peak = peak.max(f.buffered().0);
    }
    // Ten MiB went through 256 KiB of buffers: at most one write beyond the budget at any time.
    assert!(peak <= budget + chunk.len() as u64, "peak {peak} over budget {budget}");
    f.fsync(ino).unwrap();
    assert_eq!(&f.read(ino, 5 << 20, 4).unwrap()[..], [7, 7, 7, 7]);
}

#[test]
fn a_failing_store_reaches_fsync_and_loses_nothing() {
    let e = env();
    let f = fs(&e, small(4096));
    let ino = f.create(ROOT, b"f", 0o644, 0, 0).unwrap().ino;
    e.store.fail_puts.store(true, Ordering::SeqCst);
    let data = vec![42u8; 10_000];
    f.write(ino, 0, &data).unwrap();
    let err = f.fsync(ino).unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
    // Still readable from memory, still held.
    assert_eq!(f.read(ino, 0, u64::MAX).unwrap(), data);
    assert!(f.buffered().0 >= data.len() as u64);
    // The store comes back: the next fsync retries and succeeds.
    e.store.fail_puts.store(false, Ordering::SeqCst);
    f.fsync(ino).unwrap();
    assert!(all_stored(&f, ino));
    assert_eq!(f.read(ino, 0, u64::MAX).unwrap(), data);
}

#[test]
fn a_store_that_hangs_times_out_into_eio_and_loses_nothing() {
    let e = env();
    let f = fs(&e, FsOptions { upload_timeout: Duration::from_millis(100), ..small(4096) });
    let ino = f.create(ROOT, b"f", 0o644, 0, 0).unwrap().ino;
    // Every put takes an hour: without a limit, fsync would wait as long.
    e.store.set_put_delay(Duration::from_secs(3600));
    let data = vec![7u8; 10_000];
    f.write(ino, 0, &data).unwrap();
    let started = std::time::Instant::now();
    let err = f.fsync(ino).unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
    assert!(err.to_string().contains("took over"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30), "bounded: {:?}", started.elapsed());
    assert_eq!(f.read(ino, 0, u64::MAX).unwrap(), data, "held");
    // The store answers again: the next fsync stores it.
    e.store.set_put_delay(Duration::ZERO);
    f.fsync(ino).unwrap();
    assert!(all_stored(&f, ino));
}

#[test]
fn corrupted_store_reads_are_errors_not_bytes() {
    let e = env();
    let f = fs(&e, FsOptions { cache_size: 0, ..small(4096) });
    let ino = f.create(ROOT, b"f", 0o644, 0, 0).unwrap().ino;
    f.write(ino, 0, b"precious").unwrap();
    f.fsync(ino).unwrap();
    e.store.corrupt_gets.store(true, Ordering::SeqCst);
    assert_eq!(f.read(ino, 0, 8).unwrap_err().errno(), libc::EIO);
    e.store.corrupt_gets.store(false, Ordering::SeqCst);
    assert_eq!(&f.read(ino, 0, 8).unwrap()[..], b"precious");
}

#[test]
fn store_failures_keep_their_kind() {
    // A store that is down is worth another try; a block that comes back corrupt is not. Both are EIO to the
    // kernel, and the API tells them apart by the kind the error keeps.
    let e = env();
    let f = fs(&e, FsOptions { cache_size: 0, ..small(4096) });
    let ino = f.create(ROOT, b"f", 0o644, 0, 0).unwrap().ino;
    e.store.fail_puts.store(true, Ordering::SeqCst);
    f.write(ino, 0, b"precious").unwrap();
    let down = f.fsync(ino).unwrap_err();
    assert!(matches!(&down, FsError::Store(s) if matches!(s.get(), StoreError::Unavailable(_))), "{down:?}");
    assert!(down.is_transient(), "{down}");
    assert_eq!(f.upload_error(ino).unwrap_err(), down, "write and close report the same failure");
    e.store.fail_puts.store(false, Ordering::SeqCst);
    f.fsync(ino).unwrap();
    e.store.corrupt_gets.store(true, Ordering::SeqCst);
    let corrupt = f.read(ino, 0, 8).unwrap_err();
    assert!(matches!(&corrupt, FsError::Store(s) if matches!(s.get(), StoreError::Corrupt { .. })), "{corrupt:?}");
    assert!(!corrupt.is_transient(), "{corrupt}");
}

#[test]
fn a_torn_put_is_repaired_by_the_retry_and_never_read() {
    let e = env();
    let f = fs(&e, FsOptions { cache_size: 0, ..small(4096) });
    // The part a torn put leaves lands where the local store keeps the block: same name, half the bytes.
    let blocks = e.store.inner().clone();
    e.store.on_tear(move |loc, part| std::fs::write(blocks.block_path(loc), part).unwrap());
    e.store.tear_next_puts.store(1, Ordering::SeqCst);
    let ino = f.create(ROOT, b"f", 0o644, 0, 0).unwrap().ino;
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
    f.write(ino, 0, &data).unwrap();
    // The first put tears; the retry must replace the part, not take it for the block.
    f.fsync(ino).unwrap();
    assert_eq!(e.store.tear_next_puts.load(Ordering::SeqCst), 0, "a put was torn");
    assert!(all_stored(&f, ino));
    assert_eq!(&f.read(ino, 0, data.len() as u64).unwrap()[..], &data[..]);
    // Every block the file names verifies in the store itself.
    let st = f.lock();
    let Body::File(x) = &st.table.get(ino).unwrap().body else { panic!() };
    let locators: Vec<Locator> = x
        .iter()
        .filter_map(|e| if let Source::Stored { block, .. } = &e.src { Some(block.clone()) } else { None })
        .collect();
    drop(st);
    assert!(!locators.is_empty());
    for l in locators {
        e.rt.block_on(e.store.inner().get(&l)).unwrap();
    }
}

#[test]
fn a_slow_store_delays_reads_but_serves_them() {
    let e = env();
    let f = fs(&e, FsOptions { cache_size: 0, ..small(4096) });
    let ino = f.create(ROOT, b"f", 0o644, 0, 0).unwrap().ino;
    f.write(ino, 0, b"slowly but surely").unwrap();
    f.fsync(ino).unwrap();
    e.store.set_get_delay(Duration::from_millis(300));
    let t = std::time::Instant::now();
    assert_eq!(&f.read(ino, 0, 17).unwrap()[..], b"slowly but surely");
    assert!(t.elapsed() >= Duration::from_millis(300), "the read went to the store");
}

#[test]
fn unlinked_open_files_stay_usable_then_go() {
    let e = env();
    let f = fs(&e, small(4096));
    let ino = f.create(ROOT, b"tmp", 0o600, 0, 0).unwrap().ino;
    f.open(ino).unwrap();
    f.write(ino, 0, b"scratch").unwrap();
    f.unlink(ROOT, b"tmp").unwrap();
    assert_eq!(f.lookup(ROOT, b"tmp").unwrap_err(), FsError::NotFound);
    assert_eq!(&f.read(ino, 0, 100).unwrap()[..], b"scratch");
    f.release(ino).unwrap();
    assert_eq!(f.getattr(ino).unwrap_err(), FsError::NotFound);
    assert_eq!(f.buffered().0, 0, "its buffer was freed");
}

/// What `stat` and `read`/`readlink` show of an entry: kind, perm, uid, gid, mtime, bytes or symlink target,
/// and its number of names.
type Shown = (Kind, u32, u32, u32, SystemTime, Vec<u8>, u32);

/// Every entry by path.
fn describe(f: &Filesystem) -> BTreeMap<Vec<u8>, Shown> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(ROOT, Vec::new())];
    while let Some((dir, path)) = stack.pop() {
        let a = f.getattr(dir).unwrap();
        out.insert(path.clone(), (a.kind, a.perm, a.uid, a.gid, a.mtime, Vec::new(), 0));
        for (name, ino, kind) in f.readdir(dir).unwrap() {
            let mut p = path.clone();
            p.push(b'/');
            p.extend_from_slice(&name);
            match kind {
                Kind::Dir => stack.push((ino, p)),
                _ => {
                    let a = f.getattr(ino).unwrap();
                    let content = match kind {
                        Kind::File => f.read(ino, 0, u64::MAX).unwrap().to_vec(),
                        Kind::Symlink => f.readlink(ino).unwrap(),
                        _ => Vec::new(),
                    };
                    out.insert(p, (a.kind, a.perm, a.uid, a.gid, a.mtime, content, a.nlink));
                }
            }
        }
    }
    out
}

#[test]
fn snapshot_and_load_keep_bytes_modes_times_symlinks_and_holes() {
    let e = env();
    let f = fs(&e, small(4096));
    let d = f.mkdir(ROOT, b"dir with space", 0o750, 1000, 1000).unwrap().ino;
    f.mkdir(d, b"empty", 0o700, 1000, 1000).unwrap();
    let a = f.create(d, b"a:b", 0o640, 1000, 1000).unwrap().ino;
    f.write(a, 0, b"hello\n").unwrap();
    let sparse = f.create(ROOT, b"sparse", 0o600, 1000, 1000).unwrap().ino;
    f.write(sparse, 100_000, b"end").unwrap();
    f.setattr(sparse, &SetAttr { size: Some(300_000), ..Default::default() }).unwrap();
    f.create(ROOT, b"empty file", 0o444, 1000, 1000).unwrap();
    f.symlink(ROOT, b"link", b"dir with space/a:b", 1000, 1000).unwrap();
    f.setattr(
        a,
        &SetAttr { mtime: Some(UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789)), ..Default::default() },
    )
    .unwrap();
    let before = describe(&f);

    let (manifest, sidecar) = f.snapshot().unwrap();
    // The manifest alone is a valid Arvados manifest: no symlink, holes as zeros.
    let text = manifest.to_text();
    assert!(!text.contains("link"), "{text}");
    assert_eq!(Manifest::parse(text.as_bytes()).unwrap().pdh(), manifest.pdh());
    for loc in manifest.blocks() {
        assert!(e.rt.block_on(e.store.inner().exists(loc)).unwrap(), "{loc} stored");
    }

    let g = Filesystem::load(&manifest, &sidecar, setup(&e, small(4096), 0)).unwrap();
    assert_eq!(describe(&g), before);
    // A second snapshot of the loaded tree is the same collection.
    let (again, sidecar2) = g.snapshot().unwrap();
    assert_eq!(again.pdh(), manifest.pdh());
    assert_eq!(sidecar2, sidecar);
}

#[test]
fn namespace_errors_reach_the_caller() {
    let e = env();
    let f = fs(&e, small(4096));
    let d = f.mkdir(ROOT, b"d", 0o755, 0, 0).unwrap().ino;
    let file = f.create(d, b"f", 0o644, 0, 0).unwrap().ino;
    assert_eq!(f.mkdir(ROOT, b"d", 0o755, 0, 0).unwrap_err().errno(), libc::EEXIST);
    assert_eq!(f.rmdir(ROOT, b"d").unwrap_err().errno(), libc::ENOTEMPTY);
    assert_eq!(f.write(d, 0, b"x").unwrap_err().errno(), libc::EISDIR);
    assert_eq!(f.read(d, 0, 1).unwrap_err().errno(), libc::EISDIR);
    assert_eq!(f.create(file, b"x", 0o644, 0, 0).unwrap_err().errno(), libc::ENOTDIR);
    assert_eq!(f.lookup(ROOT, &[b'x'; 256]).unwrap_err().errno(), libc::ENAMETOOLONG);
    assert_eq!(f.readlink(file).unwrap_err().errno(), libc::EINVAL);
    assert_eq!(f.symlink(ROOT, b"l", b"", 0, 0).unwrap_err().errno(), libc::EINVAL);
    let g0 = f.generation();
    f.rename(d, b"f", ROOT, b"moved", RenameMode::NoReplace).unwrap();
    assert!(f.generation() > g0, "changes move the generation");
    assert_eq!(f.lookup(ROOT, b"moved").unwrap().ino, file);
}

#[test]
fn small_files_share_blocks() {
    let e = env();
    let f = fs(&e, FsOptions::default());
    let d = f.mkdir(ROOT, b"many", 0o755, 0, 0).unwrap().ino;
    for i in 0..1000u32 {
        let ino = f.create(d, format!("f{i:04}").as_bytes(), 0o644, 0, 0).unwrap().ino;
        f.write(ino, 0, format!("small file number {i}\n").as_bytes()).unwrap();
    }
    let puts_before = e.store.puts.load(Ordering::SeqCst);
    let (manifest, _) = f.snapshot().unwrap();
    assert_eq!(manifest.blocks().len(), 1, "1000 small files, one block");
    assert_eq!(e.store.puts.load(Ordering::SeqCst) - puts_before, 1);
    assert_eq!(f.buffered(), (0, 0));
    let ino = f.lookup(d, b"f0500").unwrap().ino;
    assert_eq!(&f.read(ino, 0, 100).unwrap()[..], b"small file number 500\n");
    // Read back from the stored pack after a reload, too.
    let g = Filesystem::load(&manifest, &[], setup(&e, FsOptions::default(), 0)).unwrap();
    let d = g.lookup(ROOT, b"many").unwrap().ino;
    let ino = g.lookup(d, b"f0999").unwrap().ino;
    assert_eq!(&g.read(ino, 0, 100).unwrap()[..], b"small file number 999\n");
}

#[test]
fn small_files_reserve_only_what_they_hold() {
    let e = env();
    let f = fs(&e, FsOptions::default());
    for i in 0..1000u32 {
        let ino = f.create(ROOT, format!("f{i}").as_bytes(), 0o644, 0, 0).unwrap().ino;
        f.write(ino, 0, b"0123456789").unwrap();
    }
    assert_eq!(f.buffered().0, 10_000);
    // Before the fix every small file reserved 64 KiB (64 MB here) while the budget counted 10 bytes each.
    assert!(f.reserved() <= 20_000, "reserved {} bytes for 10,000 bytes of data", f.reserved());
}

#[test]
fn fsync_retries_an_upload_that_failed_before_it_was_called() {
    // Before the fix, fsync reported the failure of an upload that was already in flight when it was called, even
    // though the store worked again by then; and on a first failure it returned while other uploads still ran.
    let e = env();
    let f = fs(&e, FsOptions { upload_attempts: 1, ..small(4096) });
    e.store.set_put_delay(Duration::from_millis(300));
    e.store.fail_next_puts.store(1, Ordering::SeqCst);
    let ino = f.create(ROOT, b"f", 0o644, 0, 0).unwrap().ino;
    // The second write seals the first buffer: its upload starts now and is the one that fails.
    f.write(ino, 0, &[1u8; 4096]).unwrap();
    f.write(ino, 4096, &[2u8; 100]).unwrap();
    assert_eq!(f.buffered().1, 1, "one upload in flight");
    // Let that upload reach the store well before fsync's own upload does.
    std::thread::sleep(Duration::from_millis(100));
    f.fsync(ino).unwrap();
    assert!(all_stored(&f, ino));
    assert_eq!(f.buffered(), (0, 0));
}

#[test]
fn sequential_reads_fetch_ahead_and_random_reads_do_not() {
    let e = env();
    let f = fs(&e, FsOptions { readahead: 8192, ..small(4096) });
    let ino = f.create(ROOT, b"f", 0o644, 0, 0).unwrap().ino;
    let data: Vec<u8> = (0..6 * 4096u32).map(|i| (i % 251) as u8).collect();
    f.write(ino, 0, &data).unwrap();
    f.fsync(ino).unwrap();
    let gets = || e.store.gets.load(Ordering::SeqCst);
    let settle = |want: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while gets() < want && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    // A read far into the file is random: only its own block is fetched.
    assert_eq!(&f.read(ino, 4 * 4096 + 10, 10).unwrap()[..], &data[4 * 4096 + 10..4 * 4096 + 20]);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(gets(), 1);
    // A read from the start is sequential: blocks 1 and 2 are fetched ahead of it.
    assert_eq!(&f.read(ino, 0, 100).unwrap()[..], &data[..100]);
    settle(4);
    assert_eq!(gets(), 4);
    // Continuing the stream finds them in the cache, and fetches further ahead (block 3; block 4 is cached).
    assert_eq!(&f.read(ino, 100, 2 * 4096).unwrap()[..], &data[100..100 + 2 * 4096]);
    settle(5);
    assert_eq!(&f.read(ino, 0, u64::MAX).unwrap()[..], &data[..]);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(gets(), 6, "every block fetched once");
}

#[test]
fn rewriting_in_place_keeps_garbage_out_of_memory_and_the_store() {
    // Before the fix, every full buffer was sealed and uploaded, however little of it the file still read: a
    // 1 KiB region rewritten 1,000 times uploaded six 4 KiB blocks, nearly all garbage.
    let e = env();
    let f = fs(&e, small(4096));
    let ino = f.create(ROOT, b"db", 0o644, 0, 0).unwrap().ino;
    let mut model = vec![0u8; 1024];
    for round in 0..1000u32 {
        let off = (round * 37 % 1000) as usize;
        let len = 24;
        let bytes: Vec<u8> = (0..len).map(|i| (round as usize + i) as u8).collect();
        f.write(ino, off as u64, &bytes).unwrap();
        model[off..off + len].copy_from_slice(&bytes);
        if round == 0 {
            f.write(ino, 0, &model).unwrap();
        }
    }
    assert_eq!(&f.read(ino, 0, u64::MAX).unwrap()[..], &model[..]);
    assert_eq!(e.store.puts.load(Ordering::SeqCst), 0, "nothing uploaded before fsync");
    assert!(f.buffered().0 <= 4096, "{} bytes buffered for a 1 KiB file", f.buffered().0);
    f.fsync(ino).unwrap();
    assert_eq!(e.store.puts.load(Ordering::SeqCst), 1);
    assert_eq!(&f.read(ino, 0, u64::MAX).unwrap()[..], &model[..]);
}

#[test]
fn commits_repack_blocks_that_are_mostly_garbage() {
    // Before repacking, a file cut down to 100 bytes still referred to its whole first 4 KiB block (and a
    // reader fetched all of it); a block still mostly read is kept as it is.
    let e = env();
    let f = fs(&e, small(4096));
    let a = f.create(ROOT, b"a", 0o644, 0, 0).unwrap().ino;
    let b = f.create(ROOT, b"b", 0o644, 0, 0).unwrap().ino;
    let bytes_a: Vec<u8> = (0..4 * 4096u32).map(|i| (i % 253) as u8).collect();
    let bytes_b: Vec<u8> = (0..4096u32).map(|i| (i % 7) as u8).collect();
    f.write(a, 0, &bytes_a).unwrap();
    f.write(b, 0, &bytes_b).unwrap();
    f.fsync(a).unwrap();
    f.fsync(b).unwrap();
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    f.setattr(a, &SetAttr { size: Some(100), mtime: Some(t), ..SetAttr::default() }).unwrap();
    f.setattr(b, &SetAttr { size: Some(3500), ..SetAttr::default() }).unwrap();
    let (m, _) = f.snapshot().unwrap();
    let sizes = |name: &[u8]| -> Vec<u64> {
        let Some(Entry::File(file)) = m.root().get(name) else { panic!("no file") };
        file.segments().iter().map(|s| m.block(s.block).size()).collect()
    };
    assert_eq!(sizes(b"a"), [100], "a's 100 bytes moved out of the mostly-dead 4 KiB block");
    assert_eq!(sizes(b"b"), [4096], "b still reads most of its block");
    assert_eq!(&f.read(a, 0, u64::MAX).unwrap()[..], &bytes_a[..100]);
    assert_eq!(&f.read(b, 0, u64::MAX).unwrap()[..], &bytes_b[..3500]);
    assert_eq!(f.getattr(a).unwrap().mtime, t, "repacking leaves times alone");
}

/// An entry: path, inode, parent, name, kind.
type Listed = (Vec<u8>, Ino, Ino, Vec<u8>, Kind);

/// Every entry (the root first).
fn entries(f: &Filesystem) -> Vec<Listed> {
    let mut out = vec![(Vec::new(), ROOT, ROOT, Vec::new(), Kind::Dir)];
    let mut i = 0;
    while i < out.len() {
        let (path, ino, kind) = (out[i].0.clone(), out[i].1, out[i].4);
        if kind == Kind::Dir {
            for (name, child, k) in f.readdir(ino).unwrap() {
                let mut p = path.clone();
                p.push(b'/');
                p.extend_from_slice(&name);
                out.push((p, child, ino, name, k));
            }
        }
        i += 1;
    }
    out
}

#[derive(Debug, Clone)]
enum NsOp {
    Mkdir(usize, u8),
    Create(usize, u8),
    Symlink(usize, u8),
    Write(usize, u64, usize, u8),
    Truncate(usize, u64),
    Rename(usize, usize, u8, u8),
    Unlink(usize),
    Rmdir(usize),
    Chmod(usize, u32),
    Touch(usize, u32),
    Fsync(usize),
    Link(usize, usize, u8),
    Fifo(usize, u8),
    Zero(usize, u64, u64, bool),
}

fn ns_op() -> impl Strategy<Value = NsOp> {
    let pick = 0usize..64;
    prop_oneof![
        2 => (pick.clone(), 0u8..6).prop_map(|(d, n)| NsOp::Mkdir(d, n)),
        3 => (pick.clone(), 0u8..6).prop_map(|(d, n)| NsOp::Create(d, n)),
        1 => (pick.clone(), 0u8..6).prop_map(|(d, n)| NsOp::Symlink(d, n)),
        5 => (pick.clone(), 0u64..12_000, 1usize..6_000, any::<u8>()).prop_map(|(f, o, l, s)| NsOp::Write(f, o, l, s)),
        1 => (pick.clone(), 0u64..12_000).prop_map(|(f, s)| NsOp::Truncate(f, s)),
        2 => (pick.clone(), pick.clone(), 0u8..6, 0u8..3).prop_map(|(a, d, n, m)| NsOp::Rename(a, d, n, m)),
        1 => pick.clone().prop_map(NsOp::Unlink),
        1 => pick.clone().prop_map(NsOp::Rmdir),
        1 => (pick.clone(), 0u32..0o1000).prop_map(|(p, m)| NsOp::Chmod(p, m)),
        1 => (pick.clone(), any::<u32>()).prop_map(|(p, t)| NsOp::Touch(p, t)),
        1 => pick.clone().prop_map(NsOp::Fsync),
        2 => (pick.clone(), pick.clone(), 0u8..6).prop_map(|(a, d, n)| NsOp::Link(a, d, n)),
        1 => (pick.clone(), 0u8..6).prop_map(|(d, n)| NsOp::Fifo(d, n)),
        1 => (pick, 0u64..12_000, 0u64..6_000, any::<bool>()).prop_map(|(f, o, l, k)| NsOp::Zero(f, o, l, k)),
    ]
}

/// What a replayed tree must show: everything but directory times (which every entry change moves to "now").
fn replay_view(f: &Filesystem) -> BTreeMap<Vec<u8>, Shown> {
    describe(f)
        .into_iter()
        .map(|(p, (k, perm, u, g, m, c, n))| (p, (k, perm, u, g, if k == Kind::Dir { UNIX_EPOCH } else { m }, c, n)))
        .collect()
}

/// The sets of paths that name one inode, for the inodes with more than one name.
fn link_groups(f: &Filesystem) -> Vec<Vec<Vec<u8>>> {
    let mut by_ino: BTreeMap<Ino, Vec<Vec<u8>>> = BTreeMap::new();
    for (path, ino, _, _, kind) in entries(f) {
        if kind != Kind::Dir {
            by_ino.entry(ino).or_default().push(path);
        }
    }
    let mut groups: Vec<_> = by_ino.into_values().filter(|g| g.len() > 1).collect();
    groups.iter_mut().for_each(|g| g.sort());
    groups.sort();
    groups
}

fn apply_ns(f: &Filesystem, op: &NsOp) {
    let all = entries(f);
    let at = |i: usize| &all[i % all.len()];
    let dir_at = |i: usize| {
        let dirs: Vec<_> = all.iter().filter(|e| e.4 == Kind::Dir).collect();
        dirs[i % dirs.len()].1
    };
    let name = |n: u8| format!("n{n}").into_bytes();
    let _ = match op {
        NsOp::Mkdir(d, n) => f.mkdir(dir_at(*d), &name(*n), 0o750, 7, 8).map(drop),
        NsOp::Create(d, n) => f.create(dir_at(*d), &name(*n), 0o640, 7, 8).map(drop),
        NsOp::Symlink(d, n) => f.symlink(dir_at(*d), &name(*n), b"../somewhere", 7, 8).map(drop),
        NsOp::Write(i, off, len, seed) => {
            let data: Vec<u8> = (0..*len).map(|k| seed.wrapping_add(k as u8)).collect();
            f.write(at(*i).1, *off, &data).map(drop)
        }
        NsOp::Truncate(i, size) => f.setattr(at(*i).1, &SetAttr { size: Some(*size), ..Default::default() }).map(drop),
        NsOp::Rename(a, d, n, m) => {
            let mode = [RenameMode::Replace, RenameMode::NoReplace, RenameMode::Exchange][*m as usize];
            let e = at(*a);
            f.rename(e.2, &e.3, dir_at(*d), &name(*n), mode)
        }
        NsOp::Unlink(i) => f.unlink(at(*i).2, &at(*i).3),
        NsOp::Rmdir(i) => f.rmdir(at(*i).2, &at(*i).3),
        NsOp::Chmod(i, m) => f.setattr(at(*i).1, &SetAttr { perm: Some(*m), ..Default::default() }).map(drop),
        NsOp::Touch(i, t) => {
            let mtime = UNIX_EPOCH + Duration::from_secs((*t).into());
            f.setattr(at(*i).1, &SetAttr { mtime: Some(mtime), ..Default::default() }).map(drop)
        }
        NsOp::Fsync(i) => f.fsync(at(*i).1),
        NsOp::Link(a, d, n) => f.link(at(*a).1, dir_at(*d), &name(*n)).map(drop),
        NsOp::Fifo(d, n) => f.mknod(dir_at(*d), &name(*n), Special::Fifo, 0o640, 7, 8).map(drop),
        NsOp::Zero(i, off, len, keep) => f.zero_range(at(*i).1, *off, *len, *keep),
    };
}

/// Attaches a journal (its header carrying `numbering`) to `live`, applies `ops`, fsyncs every file, and returns
/// the journal's records as a restart reads them.
fn journaled(e: &Env, live: &Filesystem, numbering: &Numbering, ops: &[NsOp]) -> Vec<Record> {
    let path = e._dir.path().join("j.journal");
    let header = crate::journal::Header {
        format: crate::journal::Header::FORMAT,
        ref_name: "r".into(),
        mount_point: b"/m".to_vec(),
        base_version: 1,
        inos: numbering.inos.clone(),
        next_ino: numbering.next,
    };
    live.attach_journal(Arc::new(Journal::create(&path, &header).unwrap()));
    for op in ops {
        apply_ns(live, op);
    }
    for (_, ino, _, _, kind) in entries(live) {
        if kind == Kind::File {
            live.fsync(ino).unwrap();
        }
    }
    live.sync_journal().unwrap();
    let (_, h, records) = Journal::open(&path).unwrap().unwrap();
    assert_eq!(h, header);
    records
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    /// The journal reproduces the tree: random namespace changes and writes on top of a committed base, every
    /// file fsynced at the end; the base loaded again plus the journal's records shows the same tree.
    #[test]
    fn a_journal_replays_to_the_same_tree(ops in proptest::collection::vec(ns_op(), 1..60)) {
        let e = env();
        let base = fs(&e, small(4096));
        let d = base.mkdir(ROOT, b"n1", 0o755, 1, 1).unwrap().ino;
        let x = base.create(d, b"n2", 0o644, 1, 1).unwrap().ino;
        base.write(x, 0, &[9u8; 10_000]).unwrap();
        let (manifest, sidecar) = base.snapshot().unwrap();
        let load = || Filesystem::load(&manifest, &sidecar, setup(&e, small(4096), 1)).unwrap();

        let live = load();
        let records = journaled(&e, &live, &Numbering::default(), &ops);
        let replayed = load();
        replayed.replay(&records).unwrap();
        prop_assert_eq!(replay_view(&replayed), replay_view(&live));
        prop_assert_eq!(link_groups(&replayed), link_groups(&live));
        prop_assert_eq!(replayed.generation() > 0, !records.is_empty());
    }
}

#[test]
fn fsync_makes_the_journal_durable_and_unsynced_bytes_may_be_lost() {
    let e = env();
    let f = fs(&e, small(4096));
    let path = e._dir.path().join("j.journal");
    let header = crate::journal::Header {
        format: crate::journal::Header::FORMAT,
        ref_name: "r".into(),
        mount_point: b"/m".to_vec(),
        base_version: 0,
        inos: Vec::new(),
        next_ino: 0,
    };
    f.attach_journal(Arc::new(Journal::create(&path, &header).unwrap()));
    let a = f.create(ROOT, b"a", 0o600, 1, 1).unwrap().ino;
    f.write(a, 0, b"durable").unwrap();
    f.fsync(a).unwrap();
    let b = f.create(ROOT, b"b", 0o600, 1, 1).unwrap().ino;
    f.write(b, 0, b"not yet").unwrap();
    // What a crash of cafsd now leaves: a, whole; b's name (records are written at once, for a cafsd that takes
    // over the live mount), but not its unsynced bytes, which were only in memory.
    let (_, _, records) = Journal::open(&path).unwrap().unwrap();
    let g = fs(&e, small(4096));
    g.replay(&records).unwrap();
    let shown = describe(&g);
    assert_eq!(shown[&b"/a".to_vec()].5, b"durable");
    assert_eq!(shown[&b"/a".to_vec()].1, 0o600);
    assert_eq!(shown[&b"/b".to_vec()].5, b"");
    // Under the inode numbers the live tree gave them.
    assert_eq!((g.lookup(ROOT, b"a").unwrap().ino, g.lookup(ROOT, b"b").unwrap().ino), (a, b));
    // A record that does not apply is an error naming it, not a silently different tree.
    let h = fs(&e, small(4096));
    let err = h.replay(&[Record::Unlink { path: b"missing".to_vec() }]).unwrap_err();
    assert!(err.to_string().contains("journal record 1"), "{err}");
}

#[test]
fn retry_waits_are_jittered_within_half_the_delay() {
    let d = Duration::from_millis(400);
    let waits: Vec<Duration> = (0..200).map(|_| super::jittered(d)).collect();
    assert!(waits.iter().all(|w| *w >= d / 2 && *w <= d), "{waits:?}");
    let distinct: std::collections::HashSet<_> = waits.iter().collect();
    assert!(distinct.len() > 100, "not spread: {} distinct of 200", distinct.len());
}

mod links;
