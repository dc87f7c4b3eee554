use crate::catalog::SqliteCatalog;
use crate::fs::SetAttr;
use crate::fs::inode::{ROOT, RenameMode};
use crate::store::LocalDirStore;

use super::*;

struct Env {
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    catalog: Arc<dyn Catalog>,
    store: Arc<dyn BlockStore>,
}

fn env() -> Env {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let catalog: Arc<dyn Catalog> = Arc::new(SqliteCatalog::open(dir.path().join("catalog.sqlite")).unwrap());
    let store: Arc<dyn BlockStore> = Arc::new(LocalDirStore::open(dir.path().join("blocks")).unwrap());
    Env { _dir: dir, rt, catalog, store }
}

fn with(e: &Env) -> OpenWith {
    OpenWith::new(e.catalog.clone(), e.store.clone())
}

fn open(e: &Env, name: &str) -> Collection {
    let name = RefName::new(name).unwrap();
    e.rt.block_on(Collection::open(with(e), Source::Scratch(name))).unwrap()
}

fn write(c: &Collection, name: &[u8], data: &[u8]) {
    let ino = match c.fs().lookup(ROOT, name) {
        Ok(a) => a.ino,
        Err(_) => c.fs().create(ROOT, name, 0o644, 0, 0).unwrap().ino,
    };
    c.fs().write(ino, 0, data).unwrap();
}

#[test]
fn commits_versions_and_skips_unchanged_trees() {
    let e = env();
    let c = open(&e, "job");
    assert!(c.last_pdh().is_none());
    // Even an empty tree can be committed once: the ref then exists.
    let first = e.rt.block_on(c.commit("t", "empty")).unwrap();
    assert_eq!((first.version, first.changed, first.pdh), (1, true, Pdh::empty()));
    write(&c, b"out.txt", b"result\n");
    assert!(c.is_dirty());
    let second = e.rt.block_on(c.commit("t", "output")).unwrap();
    assert_eq!((second.version, second.changed), (2, true));
    assert!(!c.is_dirty());
    let again = e.rt.block_on(c.commit("t", "nothing new")).unwrap();
    assert_eq!(again, Committed { pdh: second.pdh, version: 2, changed: false });
    // A metadata-only change is a new version of the same manifest.
    let ino = c.fs().lookup(ROOT, b"out.txt").unwrap().ino;
    c.fs().setattr(ino, &SetAttr { perm: Some(0o600), ..Default::default() }).unwrap();
    let third = e.rt.block_on(c.commit("t", "chmod")).unwrap();
    assert_eq!((third.version, third.changed, third.pdh), (3, true, second.pdh));
    let history = e.rt.block_on(e.catalog.history(&RefName::new("job").unwrap())).unwrap();
    assert_eq!(history.iter().map(|v| v.message.as_str()).collect::<Vec<_>>(), ["empty", "output", "chmod"]);

    // Reopening the ref shows the last commit, metadata included.
    let reopened = open(&e, "job");
    let a = reopened.fs().lookup(ROOT, b"out.txt").unwrap();
    assert_eq!((a.perm, a.size), (0o600, 7));
    assert_eq!(&reopened.fs().read(a.ino, 0, 100).unwrap()[..], b"result\n");
    assert!(!reopened.is_dirty());
    assert_eq!(reopened.last_version().unwrap().version, 3);
}

#[test]
fn a_conflicting_commit_fails_and_keeps_the_tree() {
    let e = env();
    let a = open(&e, "shared");
    let b = open(&e, "shared");
    write(&a, b"a", b"from a");
    write(&b, b"b", b"from b");
    e.rt.block_on(a.commit("a", "a wins")).unwrap();
    let err = e.rt.block_on(b.commit("b", "b loses")).unwrap_err();
    assert!(matches!(err, CollectionError::Catalog(CatalogError::Conflict { .. })), "{err}");
    assert!(b.is_dirty(), "the loser's tree is still there, uncommitted");
    let ino = b.fs().lookup(ROOT, b"b").unwrap().ino;
    assert_eq!(&b.fs().read(ino, 0, 100).unwrap()[..], b"from b");
    let head = e.rt.block_on(e.catalog.head(&RefName::new("shared").unwrap())).unwrap().unwrap();
    assert_eq!(head.message, "a wins");
}

#[test]
fn a_followed_ref_moves_to_each_new_version_and_open_files_keep_theirs() {
    let e = env();
    let name = RefName::new("shared").unwrap();
    let follow =
        || e.rt.block_on(Collection::open(OpenWith { uid: 7, gid: 7, ..with(&e) }, Source::Follow(name.clone())));
    assert!(matches!(follow(), Err(CollectionError::NoVersion(_))), "nothing to show before a commit");
    let w = open(&e, "shared");
    write(&w, b"same", b"in both versions");
    write(&w, b"changed", b"v1 changed");
    write(&w, b"gone", b"v1 only");
    w.fs().mkdir(ROOT, b"dir", 0o755, 7, 7).unwrap();
    e.rt.block_on(w.commit("t", "v1")).unwrap();
    let f = follow().unwrap();
    assert!(f.is_read_only() && !f.is_dirty());
    assert!(matches!(e.rt.block_on(f.commit("t", "no")), Err(CollectionError::ReadOnly)));
    let ino = |name: &[u8]| f.fs().lookup(ROOT, name).unwrap().ino;
    let (same, changed, gone, dir) = (ino(b"same"), ino(b"changed"), ino(b"gone"), ino(b"dir"));
    assert!(e.rt.block_on(f.refresh()).unwrap().is_none(), "no newer version yet");
    // Handles open across the refresh: on a file that changes, one that goes, one that stays.
    for i in [changed, gone, same] {
        f.fs_for(i).open(i).unwrap();
    }

    write(&w, b"changed", b"v2 changed, longer");
    w.fs().unlink(ROOT, b"gone").unwrap();
    write(&w, b"new", b"v2 new");
    e.rt.block_on(w.commit("t", "v2")).unwrap();
    let v = e.rt.block_on(f.refresh()).unwrap().expect("moved to v2");
    assert_eq!(v.version, 2);
    assert_eq!(f.last_pdh(), Some(v.pdh));
    assert_eq!(ino(b"same"), same, "an unchanged file keeps its number");
    assert_eq!(ino(b"dir"), dir, "so does a directory");
    let changed2 = ino(b"changed");
    assert_ne!(changed2, changed, "a changed file gets a new number");
    assert_eq!(&f.fs().read(changed2, 0, 100).unwrap()[..], b"v2 changed, longer");
    assert!(f.fs().lookup(ROOT, b"gone").is_err());
    let new = ino(b"new");
    assert!(![same, changed, gone, dir, changed2].contains(&new), "a new path never takes an old number");
    // The handles opened before read what they opened.
    let read = |i: u64| f.fs_for(i).read(i, 0, 100).unwrap();
    assert_eq!(&read(changed)[..], b"v1 changed");
    assert_eq!(&read(gone)[..], b"v1 only");
    assert_eq!(&read(same)[..], b"in both versions");
    assert_eq!(f.fs_for(changed).getattr(changed).unwrap().size, 10);
    // Closing them lets the old tree go; the unchanged file's handle moved to the new tree.
    for i in [changed, gone] {
        f.fs_for(i).release(i).unwrap();
        f.released();
    }
    assert!(f.retired.read().unwrap().is_empty(), "nothing holds the old tree");
    assert!(f.fs_for(changed).getattr(changed).is_err());
    f.fs_for(same).release(same).unwrap();
    assert!(!f.is_dirty());
}

#[test]
fn committing_into_another_ref_leaves_the_own_ref_alone() {
    let e = env();
    let c = open(&e, "job");
    write(&c, b"partial", b"half done");
    let failed = RefName::new("job.failed").unwrap();
    let kept = e.rt.block_on(c.commit_into(&failed, "t", "exit 3")).unwrap();
    assert_eq!((kept.version, kept.changed), (1, true));
    assert!(c.is_dirty(), "the job's own ref did not move");
    assert!(e.rt.block_on(e.catalog.head(&RefName::new("job").unwrap())).unwrap().is_none());
    // The same tree again makes no new version there; a changed one does.
    assert!(!e.rt.block_on(c.commit_into(&failed, "t", "again")).unwrap().changed);
    write(&c, b"partial", b"more");
    assert_eq!(e.rt.block_on(c.commit_into(&failed, "t", "retry")).unwrap().version, 2);
    let reopened = open(&e, "job.failed");
    let ino = reopened.fs().lookup(ROOT, b"partial").unwrap().ino;
    assert_eq!(&reopened.fs().read(ino, 0, 100).unwrap()[..], b"more done");
    // Into its own name it is a plain commit.
    let own = e.rt.block_on(c.commit_into(&RefName::new("job").unwrap(), "t", "done")).unwrap();
    assert_eq!(own.version, 1);
    assert!(!c.is_dirty());
}

fn open_journaled(e: &Env, name: &str) -> (Collection, Recovered) {
    open_journaled_at(e, name, &e._dir.path().join("journal/j.journal"))
}

fn open_journaled_at(e: &Env, name: &str, journal: &Path) -> (Collection, Recovered) {
    let name = RefName::new(name).unwrap();
    let (c, r) = e.rt.block_on(Collection::open_ref_journaled(&with(e), name, journal, Path::new("/mnt/job"))).unwrap();
    (c, r)
}

fn read(c: &Collection, name: &[u8]) -> Vec<u8> {
    let ino = c.fs().lookup(ROOT, name).unwrap().ino;
    c.fs().read(ino, 0, 1 << 20).unwrap().to_vec()
}

#[test]
fn a_journaled_tree_comes_back_uncommitted_after_a_crash() {
    let e = env();
    // Before any commit: the base is the empty tree.
    let (c, r) = open_journaled(&e, "job");
    assert_eq!(r, Recovered { records: 0, base_version: 0 });
    write(&c, b"first", b"one");
    c.fs().fsync(c.fs().lookup(ROOT, b"first").unwrap().ino).unwrap();
    drop(c); // cafsd killed: nothing committed, the journal stays
    let (c, r) = open_journaled(&e, "job");
    assert!(r.records > 0 && r.base_version == 0, "{r:?}");
    assert_eq!(read(&c, b"first"), b"one");
    assert!(c.is_dirty());
    // A commit moves the journal's base; later changes are journaled on top of it.
    assert_eq!(e.rt.block_on(c.commit("t", "v1")).unwrap().version, 1);
    write(&c, b"second", b"two");
    c.fs().fsync(c.fs().lookup(ROOT, b"second").unwrap().ino).unwrap();
    drop(c);
    let (c, r) = open_journaled(&e, "job");
    assert_eq!(r.base_version, 1);
    assert_eq!((read(&c, b"first"), read(&c, b"second")), (b"one".to_vec(), b"two".to_vec()));
    assert!(c.is_dirty());
    assert_eq!(e.rt.block_on(c.commit("t", "v2")).unwrap().version, 2, "the recovered tree commits on its base");
    // Committed and unmounted cleanly: the journal goes, and the next mount is the ref's head.
    c.remove_journal();
    drop(c);
    let (c, r) = open_journaled(&e, "job");
    assert_eq!(r, Recovered { records: 0, base_version: 2 });
    assert!(!c.is_dirty());
    assert_eq!(read(&c, b"second"), b"two");
}

#[test]
fn writes_that_died_unstored_fail_the_next_fsync_or_close_once() {
    let e = env();
    let (c, _) = open_journaled(&e, "job");
    let ino = |c: &Collection, n: &[u8]| c.fs().lookup(ROOT, n).unwrap().ino;
    write(&c, b"synced", b"safe");
    c.fs().fsync(ino(&c, b"synced")).unwrap();
    write(&c, b"memory", b"only in memory");
    write(&c, b"grown", b"v1");
    c.fs().fsync(ino(&c, b"grown")).unwrap();
    let g = ino(&c, b"grown");
    c.fs().write(g, 2, b" and more, unsynced").unwrap();
    write(&c, b"committed", b"stored by the commit");
    e.rt.block_on(c.commit("t", "v1")).unwrap();
    write(&c, b"late", b"after the commit, in memory");
    drop(c); // cafsd killed: what was only in memory is gone
    let (c, _) = open_journaled(&e, "job");
    let mut lost = c.fs().lost_writes();
    lost.sort();
    assert_eq!(lost, vec![b"late".to_vec()], "the commit stored everything written before it");
    // Only to a handle opened before the restart; once reported, it is reported no more.
    let late = ino(&c, b"late");
    c.fs().fsync_handle(late, false).unwrap();
    c.fs().close_error(late, false).unwrap();
    assert_eq!(c.fs().fsync_handle(late, true).unwrap_err().errno(), libc::EIO);
    c.fs().fsync_handle(late, true).unwrap();
    c.fs().close_error(late, true).unwrap();
    assert_eq!(read(&c, b"synced"), b"safe");
    assert_eq!(read(&c, b"committed"), b"stored by the commit");

    // Without a commit in between: the unsynced files are reported, by close too.
    write(&c, b"memory2", b"only in memory");
    let s = ino(&c, b"synced");
    c.fs().write(s, 4, b", then more").unwrap();
    c.fs().fsync(s).unwrap();
    drop(c);
    let (c, _) = open_journaled(&e, "job");
    assert_eq!(c.fs().lost_writes(), vec![b"memory2".to_vec()], "a file fsynced again is whole");
    let m = ino(&c, b"memory2");
    assert_eq!(c.fs().close_error(m, true).unwrap_err().errno(), libc::EIO);
    c.fs().close_error(m, true).unwrap();
    c.fs().fsync(m).unwrap();
    assert_eq!(read(&c, b"synced"), b"safe, then more");

    // A file fsynced through a handle opened since is whole as it stands: a later recovery does not report
    // it, though an old handle would have been told.
    write(&c, b"memory3", b"only in memory");
    drop(c);
    let (c, _) = open_journaled(&e, "job");
    assert_eq!(c.fs().lost_writes(), vec![b"memory3".to_vec()]);
    c.fs().fsync(ino(&c, b"memory3")).unwrap();
    drop(c);
    let (c, _) = open_journaled(&e, "job");
    assert!(c.fs().lost_writes().is_empty(), "{:?}", c.fs().lost_writes());
}

/// Every entry's path and inode number.
fn numbers(c: &Collection) -> Vec<(Vec<u8>, u64)> {
    let mut out = Vec::new();
    let mut dirs = vec![(ROOT, Vec::new())];
    while let Some((dir, path)) = dirs.pop() {
        for (name, ino, kind) in c.fs().readdir(dir).unwrap() {
            let mut p = path.clone();
            p.extend_from_slice(b"/");
            p.extend_from_slice(&name);
            if kind == crate::fs::inode::Kind::Dir {
                dirs.push((ino, p.clone()));
            }
            out.push((p, ino));
        }
    }
    out.sort();
    out
}

#[test]
fn a_recovered_tree_keeps_the_inode_numbers_of_the_live_one() {
    // A cafsd that takes over a live mount answers to the numbers the kernel holds: the recovered tree must
    // give every entry the number the dead cafsd gave it, across commits (which restart the journal from
    // the committed version) and the changes after them.
    let e = env();
    let (c, _) = open_journaled(&e, "job");
    let fs = c.fs().clone();
    let d = fs.mkdir(ROOT, b"d", 0o755, 0, 0).unwrap().ino;
    for n in 0..20u8 {
        let f = fs.create(if n % 2 == 0 { ROOT } else { d }, &[b'f', b'a' + n], 0o644, 0, 0).unwrap().ino;
        fs.write(f, 0, &[n; 100]).unwrap();
    }
    fs.symlink(d, b"link", b"../fa", 0, 0).unwrap();
    e.rt.block_on(c.commit("t", "v1")).unwrap();
    // After the commit: renames across directories, removals, new entries.
    fs.rename(ROOT, b"fa", d, b"moved", RenameMode::Replace).unwrap();
    fs.unlink(d, b"fb").unwrap();
    let e2 = fs.mkdir(d, b"e", 0o755, 0, 0).unwrap().ino;
    fs.create(e2, b"new", 0o600, 0, 0).unwrap();
    fs.sync_journal().unwrap();
    let live = numbers(&c);
    assert!(live.len() > 20);
    drop((c, fs));
    let (c, r) = open_journaled(&e, "job");
    assert_eq!(r.base_version, 1);
    assert_eq!(numbers(&c), live);
    // New entries get numbers no live entry had.
    let n = c.fs().create(ROOT, b"later", 0o644, 0, 0).unwrap().ino;
    assert!(live.iter().all(|(_, i)| *i < n));
}

#[test]
fn a_commit_that_landed_just_before_a_crash_is_the_recovered_base() {
    let e = env();
    let journal = e._dir.path().join("journal/j.journal");
    let (c, _) = open_journaled(&e, "job");
    write(&c, b"a", b"one");
    c.fs().fsync(c.fs().lookup(ROOT, b"a").unwrap().ino).unwrap();
    // The journal as it is when the commit's marker is written, then the commit lands and cafsd dies
    // before its checkpoint: rebuild exactly that journal.
    let before = std::fs::read(&journal).unwrap();
    let done = e.rt.block_on(c.commit("t", "v1")).unwrap();
    let live = numbers(&c);
    drop(c);
    std::fs::write(&journal, before).unwrap();
    {
        let (j, _, records) = Journal::open(&journal).unwrap().unwrap();
        j.mark_commit(records.len() as u64, 1, &done.pdh.to_string()).unwrap();
    }
    let (c, r) = open_journaled(&e, "job");
    assert_eq!(r.base_version, 1, "{r:?}");
    assert!(!c.is_dirty(), "nothing after the commit");
    assert_eq!(numbers(&c), live, "the live tree's inode numbers");
    assert_eq!(read(&c, b"a"), b"one");
    write(&c, b"b", b"two");
    assert_eq!(e.rt.block_on(c.commit("t", "v2")).unwrap().version, 2, "no conflict with its own commit");
}

fn faulty_env() -> (Env, Arc<crate::catalog::faulty::FaultyCatalog<SqliteCatalog>>) {
    let mut e = env();
    let inner = SqliteCatalog::open(e._dir.path().join("faulty.sqlite")).unwrap();
    let faulty = Arc::new(crate::catalog::faulty::FaultyCatalog::new(inner));
    e.catalog = faulty.clone();
    (e, faulty)
}

#[test]
fn a_catalog_that_is_down_fails_the_commit_and_keeps_the_tree() {
    use std::sync::atomic::Ordering;
    let (e, cat) = faulty_env();
    let c = open(&e, "job");
    write(&c, b"a", b"one");
    cat.down.store(true, Ordering::SeqCst);
    let err = e.rt.block_on(c.commit("t", "v1")).unwrap_err();
    assert!(err.to_string().contains("down"), "{err}");
    assert!(c.is_dirty() && c.last_version().is_none(), "nothing changed");
    assert_eq!(read(&c, b"a"), b"one");
    // Back, and slow: the commit works.
    cat.down.store(false, Ordering::SeqCst);
    cat.set_delay(std::time::Duration::from_millis(50));
    assert_eq!(e.rt.block_on(c.commit("t", "v1")).unwrap().version, 1);
    assert!(!c.is_dirty());
    // A commit that fails before it reaches the catalog: an error, and the next one works.
    write(&c, b"b", b"two");
    cat.fail_next_commits.store(1, Ordering::SeqCst);
    assert!(e.rt.block_on(c.commit("t", "v2")).is_err());
    assert_eq!(e.rt.block_on(c.commit("t", "v2")).unwrap().version, 2);
}

#[test]
fn a_commit_whose_reply_was_lost_is_not_a_conflict() {
    use std::sync::atomic::Ordering;
    let (e, cat) = faulty_env();
    let c = open(&e, "job");
    write(&c, b"a", b"one");
    // The reply is lost but the catalog answers the question right after: the commit stands.
    cat.lose_next_commit_replies.store(1, Ordering::SeqCst);
    let done = e.rt.block_on(c.commit("t", "v1")).unwrap();
    assert_eq!((done.version, done.changed), (1, true));
    assert!(!c.is_dirty());
    // The reply is lost and the catalog goes down at once: the commit reports the error; once the
    // catalog is back, the next commit finds that version 2 was its own and makes version 3 on it.
    write(&c, b"b", b"two");
    cat.lose_next_commit_replies.store(1, Ordering::SeqCst);
    cat.down_after_lost_reply.store(true, Ordering::SeqCst);
    assert!(e.rt.block_on(c.commit("t", "v2")).is_err());
    cat.down.store(false, Ordering::SeqCst);
    write(&c, b"c", b"three");
    let done = e.rt.block_on(c.commit("t", "v3")).unwrap();
    assert_eq!(done.version, 3, "no conflict with its own version 2");
    let history = e.rt.block_on(e.catalog.history(&RefName::new("job").unwrap())).unwrap();
    assert_eq!(history.len(), 3);
    // Had the lost commit not landed (it failed before the catalog), the next commit makes that version.
    write(&c, b"d", b"four");
    cat.fail_next_commits.store(1, Ordering::SeqCst);
    assert!(e.rt.block_on(c.commit("t", "v4")).is_err());
    assert_eq!(e.rt.block_on(c.commit("t", "v4")).unwrap().version, 4);
}

/// A tmpfs of `size` bytes mounted on `dir` (root only), detached when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size}").as_str()),
        )
        .expect("mounting a small tmpfs (the test needs root)");
        Self(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn a_full_state_disk_fails_fsync_with_enospc_and_corrupts_nothing() {
    let e = env();
    let disk = e._dir.path().join("small");
    let _small = SmallDisk::mount(&disk, "512k");
    // Room for the checkpoint once this goes: it lists every entry's inode number, so it needs about as
    // much room as the journal had.
    std::fs::write(disk.join("filler"), vec![1u8; 320 << 10]).unwrap();
    let journal = disk.join("journal/j.journal");
    let (c, _) = open_journaled_at(&e, "job", &journal);
    let fs = c.fs().clone();
    // Make entries with long names, syncing the journal after each, until the disk is full.
    let mut made = 0;
    let err = loop {
        let n = format!("{made:06}-{}", "x".repeat(200));
        fs.create(ROOT, n.as_bytes(), 0o644, 0, 0).unwrap();
        made += 1;
        if let Err(e) = fs.sync_journal() {
            break e;
        }
        assert!(made < 100_000, "the disk never filled");
    };
    assert_eq!(err.errno(), libc::ENOSPC, "{err}");
    assert!(err.to_string().contains("No space left"), "a clear error: {err}");
    // The tree itself is whole; later syncs keep saying so rather than pretending.
    assert_eq!(fs.readdir(ROOT).unwrap().len(), made);
    assert_eq!(fs.sync_journal().unwrap_err().errno(), libc::ENOSPC);
    // What is on disk is a valid journal (a prefix of the changes) that replays cleanly.
    let (_, _, records) = Journal::open(&journal).unwrap().unwrap();
    assert!(!records.is_empty() && records.len() < made);
    let replayed = Filesystem::new(Setup {
        store: e.store.clone(),
        rt: e.rt.handle().clone(),
        opts: FsOptions::default(),
        uid: 0,
        gid: 0,
    });
    replayed.replay(&records).unwrap();
    // Room again, and a commit: the journal starts afresh from it and works again.
    std::fs::remove_file(disk.join("filler")).unwrap();
    assert_eq!(e.rt.block_on(c.commit("t", "v1")).unwrap().version, 1);
    fs.create(ROOT, b"after", 0o644, 0, 0).unwrap();
    fs.sync_journal().unwrap();
    let (_, h, records) = Journal::open(&journal).unwrap().unwrap();
    assert_eq!((h.base_version, records.len()), (1, 1));
}

#[test]
fn collections_opened_by_hash_are_read_only() {
    let e = env();
    let c = open(&e, "src");
    write(&c, b"f", b"bytes");
    let done = e.rt.block_on(c.commit("t", "m")).unwrap();
    let ro = e.rt.block_on(Collection::open(with(&e), Source::Pdh(done.pdh))).unwrap();
    assert!(ro.is_read_only());
    assert_eq!(ro.last_pdh(), Some(done.pdh));
    let ino = ro.fs().lookup(ROOT, b"f").unwrap().ino;
    assert_eq!(&ro.fs().read(ino, 0, 10).unwrap()[..], b"bytes");
    assert!(matches!(e.rt.block_on(ro.commit("t", "m")), Err(CollectionError::ReadOnly)));
    let unknown = Pdh::of_text(b"nothing");
    let err = e.rt.block_on(Collection::open(with(&e), Source::Pdh(unknown))).unwrap_err();
    assert!(matches!(err, CollectionError::UnknownPdh(p) if p == unknown));
}
