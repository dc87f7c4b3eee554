use crate::catalog::SqliteCatalog;
use crate::store::LocalDirStore;

use super::*;

pub(crate) struct Env {
    pub dir: tempfile::TempDir,
    pub rt: tokio::runtime::Runtime,
    pub catalog: Arc<dyn Catalog>,
    pub store: Arc<dyn BlockStore>,
}

pub(crate) fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let catalog: Arc<dyn Catalog> = Arc::new(SqliteCatalog::open(dir.path().join("catalog.sqlite")).unwrap());
    let store: Arc<dyn BlockStore> = Arc::new(LocalDirStore::open(dir.path().join("blocks")).unwrap());
    Env { dir, rt, catalog, store }
}

/// Commits `files` (name, bytes) as the next version of `name`; returns its hash.
pub(crate) fn commit(e: &Env, name: &str, files: &[(&str, &[u8])]) -> Pdh {
    let name = RefName::new(name).unwrap();
    let c =
        e.rt.block_on(Collection::open(OpenWith::new(e.catalog.clone(), e.store.clone()), Source::Scratch(name)))
            .unwrap();
    for (f, data) in files {
        let fs = c.fs();
        let ino = match fs.lookup(ROOT, f.as_bytes()) {
            Ok(a) => a.ino,
            Err(_) => fs.create(ROOT, f.as_bytes(), 0o644, 0, 0).unwrap().ino,
        };
        fs.setattr(ino, &crate::fs::SetAttr { size: Some(0), ..Default::default() }).unwrap();
        fs.write(ino, 0, data).unwrap();
    }
    e.rt.block_on(c.commit("t", "test")).unwrap().pdh
}

/// Sets the mode of `name` as root.
pub(crate) fn chmod(e: &Env, name: &str, mode: u32) {
    let change = crate::catalog::AccessChange { mode: Some(mode), ..Default::default() };
    let root = crate::catalog::Principal::root();
    e.rt.block_on(e.catalog.change_access(&RefName::new(name).unwrap(), &change, &root)).unwrap();
}

pub(crate) fn namespace(e: &Env, writable: &[&str]) -> Arc<Namespace> {
    namespace_with(e, writable, false).unwrap()
}

fn namespace_with(e: &Env, writable: &[&str], resume: bool) -> Result<Arc<Namespace>, NamespaceError> {
    let opts = NamespaceOptions {
        mount_point: "/cafs".into(),
        writable: writable.iter().map(|s| s.to_string()).collect(),
        journals: e.dir.path().join("journal"),
        refresh: Duration::ZERO,
        autocommit: Duration::ZERO,
        fs: FsOptions::default(),
        keep_immutable: 2,
        slots_file: Some(e.dir.path().join("ns.slots")),
        resume,
        policy: Arc::default(),
    };
    Namespace::new(e.catalog.clone(), e.store.clone(), e.rt.handle().clone(), 1000, 1000, opts)
}

fn names(ns: &Namespace, dir: u64) -> Vec<String> {
    ns.list(dir).unwrap().into_iter().map(|(n, _)| String::from_utf8(n).unwrap()).collect()
}

/// The bytes of `file` in the view whose root is the kernel's number `root`.
fn read(ns: &Namespace, root: u64, file: &str) -> Vec<u8> {
    let Node::In(view, local) = ns.resolve(root).unwrap() else { panic!("not a view") };
    let fs = view.coll.fs();
    let a = fs.lookup(local, file.as_bytes()).unwrap();
    fs.read(a.ino, 0, 1 << 20).unwrap().to_vec()
}

#[test]
fn the_layout_shows_refs_hashes_and_history() {
    let e = env();
    let v1 = commit(&e, "proj/results", &[("f", b"one")]);
    let v2 = commit(&e, "proj/results", &[("f", b"two")]);
    commit(&e, "other", &[("g", b"g")]);
    let ns = namespace(&e, &[]);
    assert_eq!(names(&ns, ROOT), ["by_ref", "by_pdh", "history"]);
    let by_ref = ns.lookup(ROOT, BY_REF).unwrap();
    assert_eq!(by_ref.perm, 0o555, "nothing writable: no new refs");
    let by_ref = by_ref.ino;
    assert!(matches!(ns.make_ref(by_ref, b"new"), Err(FsError::NotPermitted(_))));
    assert_eq!(names(&ns, by_ref), ["other", "proj%2Fresults"]);
    assert!(names(&ns, ns.lookup(ROOT, BY_PDH).unwrap().ino).is_empty(), "nothing looked up yet");

    // A ref shows its current version, read-only; opening it is left to its first use.
    let root = ns.lookup(by_ref, b"proj%2Fresults").unwrap();
    assert_eq!((root.kind, root.perm), (Kind::Dir, 0o555));
    assert!(ns.views().is_empty(), "a lookup opens nothing");
    assert_eq!(read(&ns, root.ino, "f"), b"two");
    let view = &ns.views()[0];
    assert!(view.coll.is_read_only());
    assert_eq!(view.path, std::path::Path::new("by_ref/proj%2Fresults"));
    assert_eq!(view.parent, by_ref);
    // Only one spelling per ref.
    for bad in [&b"proj/results"[..], b"proj%2fresults", b"missing", b"", b".."] {
        assert!(matches!(ns.lookup(by_ref, bad), Err(FsError::NotFound)), "{bad:?}");
    }

    // Any hash in the catalog is found by lookup, listed once looked up; unknown or misspelt ones are not.
    let by_pdh = ns.lookup(ROOT, BY_PDH).unwrap().ino;
    let old = ns.lookup(by_pdh, v1.to_string().as_bytes()).unwrap();
    assert_eq!(read(&ns, old.ino, "f"), b"one");
    assert_eq!(names(&ns, by_pdh), [v1.to_string()]);
    assert!(ns.views().iter().any(|v| v.immutable()));
    let unknown = crate::Locator::of(b"not a manifest").to_string();
    assert!(matches!(ns.lookup(by_pdh, unknown.as_bytes()), Err(FsError::NotFound)));
    assert!(matches!(ns.lookup(by_pdh, v1.to_string().to_uppercase().as_bytes()), Err(FsError::NotFound)));

    // history/NAME/N-HASH for every version.
    let history = ns.lookup(ROOT, HISTORY).unwrap().ino;
    assert_eq!(names(&ns, history), ["other", "proj%2Fresults"]);
    let versions = ns.lookup(history, b"proj%2Fresults").unwrap().ino;
    assert_eq!(names(&ns, versions), [format!("1-{v1}"), format!("2-{v2}")]);
    let first = ns.lookup(versions, format!("1-{v1}").as_bytes()).unwrap();
    assert_eq!(read(&ns, first.ino, "f"), b"one");
    for bad in [format!("1-{v2}"), format!("01-{v1}"), format!("3-{v1}"), v1.to_string()] {
        assert!(matches!(ns.lookup(versions, bad.as_bytes()), Err(FsError::NotFound)), "{bad}");
    }

    // Each place is its own view with its own numbers, so that no directory has two parents.
    assert_ne!(first.ino, old.ino);
    assert_eq!(ns.lookup(versions, format!("1-{v1}").as_bytes()).unwrap().ino, first.ino, "numbers stay");
    assert!(matches!(ns.resolve(99 << SLOT_SHIFT | ROOT), Err(FsError::NotFound)));
    assert!(matches!(ns.resolve(77), Err(FsError::NotFound)));
}

#[test]
fn configured_refs_are_writable_views_that_commit() {
    let e = env();
    commit(&e, "scratch/a", &[("f", b"one")]);
    commit(&e, "results", &[("f", b"one")]);
    // The refs were made by root (0644); the mount's owner, uid 1000, commits, so it must be let write.
    chmod(&e, "scratch/a", 0o666);
    let ns = namespace(&e, &["scratch/*"]);
    assert!(matches(&ns.options().writable, "scratch/b") && !matches(&ns.options().writable, "scratchy"));
    let by_ref = ns.lookup(ROOT, BY_REF).unwrap();
    assert_eq!(by_ref.perm, 0o755, "new writable refs may be made");
    let by_ref = by_ref.ino;
    let w = ns.lookup(by_ref, b"scratch%2Fa").unwrap();
    assert_eq!(w.perm, 0o755);
    let Node::In(view, root) = ns.resolve(w.ino).unwrap() else { panic!() };
    assert!(!view.coll.is_read_only());
    let fs = view.coll.fs();
    let f = fs.create(root, b"new", 0o644, 1000, 1000).unwrap();
    fs.write(f.ino, 0, b"written in the namespace").unwrap();
    let c = e.rt.block_on(view.control.commit(&view.coll, "t", "from the namespace")).unwrap();
    assert_eq!(c.version, 2);
    let ro = ns.lookup(by_ref, b"results").unwrap();
    let Node::In(ro, _) = ns.resolve(ro.ino).unwrap() else { panic!() };
    assert!(ro.coll.is_read_only());

    // The commit shows in the history of the same namespace.
    let history = ns.lookup(ROOT, HISTORY).unwrap().ino;
    let versions = ns.lookup(history, b"scratch%2Fa").unwrap().ino;
    let latest = format!("2-{}", c.pdh);
    assert_eq!(names(&ns, versions).last().unwrap(), &latest);
    let v2 = ns.lookup(versions, latest.as_bytes()).unwrap();
    assert_eq!(read(&ns, v2.ino, "new"), b"written in the namespace");
}

#[test]
fn a_resumed_namespace_gives_every_number_the_same_meaning() {
    let e = env();
    let v1 = commit(&e, "a", &[("f", b"one")]);
    let v2 = commit(&e, "a", &[("f", b"two")]);
    commit(&e, "b", &[("g", b"g")]);
    let before = namespace(&e, &[]);
    let history = before.lookup(ROOT, HISTORY).unwrap().ino;
    // Numbers given in an order a fresh start would not repeat: b's history first, then hashes, then refs.
    let b_versions = before.lookup(history, b"b").unwrap().ino;
    let a_versions = before.lookup(history, b"a").unwrap().ino;
    let by_pdh = before.lookup(ROOT, BY_PDH).unwrap().ino;
    let given = [
        before.lookup(by_pdh, v2.to_string().as_bytes()).unwrap().ino,
        before.lookup(a_versions, format!("1-{v1}").as_bytes()).unwrap().ino,
        before.lookup(by_pdh, v1.to_string().as_bytes()).unwrap().ino,
    ];
    let by_ref = before.lookup(ROOT, BY_REF).unwrap().ino;
    names(&before, by_ref);
    let a = before.lookup(by_ref, b"a").unwrap().ino;
    drop(before);

    let after = namespace_with(&e, &[], true).unwrap();
    // Resolved straight from the numbers, with no lookup first: as the kernel does for an open file.
    assert_eq!(read(&after, given[0], "f"), b"two");
    assert_eq!(read(&after, given[1], "f"), b"one");
    assert_eq!(read(&after, given[2], "f"), b"one");
    assert_eq!(read(&after, a, "f"), b"two");
    assert_eq!(names(&after, b_versions).len(), 1, "history/b keeps its number");
    assert_eq!(after.lookup(history, b"a").unwrap().ino, a_versions);
    assert_eq!(after.lookup(by_pdh, v1.to_string().as_bytes()).unwrap().ino, given[2]);
    // New numbers continue after the old ones.
    let new = after.lookup(a_versions, format!("2-{v2}").as_bytes()).unwrap().ino;
    assert!(new >> SLOT_SHIFT > given.iter().map(|i| i >> SLOT_SHIFT).max().unwrap());
    drop(after);

    // A fresh mount (not a resumed one) starts afresh.
    let fresh = namespace(&e, &[]);
    assert!(matches!(fresh.resolve(given[0]), Err(FsError::NotFound)));
    drop(fresh);

    // A slot file that is not one refuses the resume, loudly.
    std::fs::write(e.dir.path().join("ns.slots"), "slot 1 ref a\nslot 3 ref b\n").unwrap();
    assert!(matches!(namespace_with(&e, &[], true), Err(NamespaceError::Corrupt { line: 2, .. })));
    std::fs::write(e.dir.path().join("ns.slots"), "slot 1 rof a\n").unwrap();
    assert!(matches!(namespace_with(&e, &[], true), Err(NamespaceError::Corrupt { line: 1, .. })));
}

#[test]
fn immutable_views_beyond_the_limit_are_let_go_and_come_back_the_same() {
    let e = env();
    let hashes: Vec<Pdh> = (0..4).map(|i| commit(&e, "a", &[("f", format!("v{i}").as_bytes())])).collect();
    let ns = namespace(&e, &[]);
    let by_pdh = ns.lookup(ROOT, BY_PDH).unwrap().ino;
    let roots: Vec<u64> = hashes.iter().map(|h| ns.lookup(by_pdh, h.to_string().as_bytes()).unwrap().ino).collect();
    let file_of = |root: u64| {
        let Node::In(v, local) = ns.resolve(root).unwrap() else { panic!() };
        v.global(v.coll.fs().lookup(local, b"f").unwrap().ino)
    };
    let first = file_of(roots[0]);
    // Holding a file open keeps its view, whatever the limit.
    let Node::In(held, local) = ns.resolve(first).unwrap() else { panic!() };
    held.coll.fs().open(local).unwrap();
    for &r in &roots[1..] {
        assert_eq!(read(&ns, r, "f").len(), 2);
    }
    let loaded = ns.views();
    assert_eq!(loaded.len(), 2, "at most keep_immutable views stay loaded");
    assert!(loaded.iter().any(|v| Arc::ptr_eq(v, &held)), "not the one with an open file");
    held.coll.fs().release(local).unwrap();

    // One let go comes back when used, with the same numbers, so the kernel's numbers still mean the same.
    let Node::In(_, again) = ns.resolve(file_of(roots[1])).unwrap() else { panic!() };
    assert_eq!(file_of(roots[1]) & ((1 << SLOT_SHIFT) - 1), again);
    assert_eq!(read(&ns, roots[1], "f"), b"v1");
    assert_eq!(file_of(roots[0]), first);
    assert!(ns.views().len() <= 2);
}

#[test]
fn mkdir_in_by_ref_makes_a_writable_ref() {
    let e = env();
    commit(&e, "scratch/a", &[("f", b"one")]);
    commit(&e, "results", &[("f", b"one")]);
    let ns = namespace(&e, &["scratch/*"]);
    let by_ref = ns.lookup(ROOT, BY_REF).unwrap().ino;
    assert!(matches!(ns.make_ref(by_ref, b"results%2Fx"), Err(FsError::NotPermitted(_))), "not writable");
    assert!(matches!(ns.make_ref(by_ref, b"scratch%2Fa"), Err(FsError::Exists)));
    assert!(matches!(ns.make_ref(by_ref, b"scratch%2F%2Fb"), Err(FsError::Invalid(_))));
    assert!(matches!(ns.make_ref(ROOT, b"scratch%2Fb"), Err(FsError::NotPermitted(_))), "only in by_ref/");
    assert!(matches!(ns.lookup(by_ref, b"scratch%2Fb"), Err(FsError::NotFound)));

    let made = ns.make_ref(by_ref, b"scratch%2Fb").unwrap();
    assert!(matches!(ns.make_ref(by_ref, b"scratch%2Fb"), Err(FsError::Exists)));
    assert_eq!(ns.lookup(by_ref, b"scratch%2Fb").unwrap().ino, made.ino);
    assert_eq!(names(&ns, by_ref), ["results", "scratch%2Fa", "scratch%2Fb"], "listed before its first commit");
    let Node::In(view, root) = ns.resolve(made.ino).unwrap() else { panic!() };
    assert!(!view.coll.is_read_only() && view.coll.last_version().is_none());
    let fs = view.coll.fs();
    let f = fs.create(root, b"out", 0o644, 1000, 1000).unwrap();
    fs.write(f.ino, 0, b"made in the namespace").unwrap();
    let c = e.rt.block_on(view.control.commit(&view.coll, "t", "first")).unwrap();
    assert_eq!(c.version, 1);
    let head = e.rt.block_on(e.catalog.head(&RefName::new("scratch/b").unwrap())).unwrap().unwrap();
    assert_eq!(head.pdh, c.pdh);
}

/// Each requester sees the refs it may read, in `by_ref/` and `history/`; the others are refused with
/// `EACCES`; a writable ref's changes need write permission; a ref made by `mkdir` is its maker's.
#[test]
fn each_requester_sees_and_changes_what_the_refs_allow() {
    let e = env();
    for name in ["public", "secret", "mine"] {
        commit(&e, name, &[("f", name.as_bytes())]);
    }
    chmod(&e, "secret", 0o600);
    let give = crate::catalog::AccessChange { owner: Some(1000), gid: Some(1000), mode: Some(0o600) };
    let root = crate::catalog::Principal::root();
    e.rt.block_on(e.catalog.change_access(&RefName::new("mine").unwrap(), &give, &root)).unwrap();
    let ns = namespace(&e, &["*"]);
    let (owner, other, root) = (ns.principal(1000, 1000), ns.principal(1001, 1001), ns.principal(0, 0));
    let names_for = |who: &crate::catalog::Principal, dir: u64| -> Vec<String> {
        ns.list_for(who, dir).unwrap().into_iter().map(|(n, _)| String::from_utf8(n).unwrap()).collect()
    };
    let by_ref = ns.lookup(ROOT, BY_REF).unwrap().ino;
    let history = ns.lookup(ROOT, HISTORY).unwrap().ino;
    for dir in [by_ref, history] {
        assert_eq!(names_for(&root, dir), ["mine", "public", "secret"]);
        assert_eq!(names_for(&owner, dir), ["mine", "public"]);
        assert_eq!(names_for(&other, dir), ["public"]);
    }
    let read = crate::catalog::Need::Read;
    let secret = RefName::new("secret").unwrap();
    let mine = RefName::new("mine").unwrap();
    let e1 = ns.check(&other, &mine, read).unwrap_err();
    assert_eq!(e1.errno(), libc::EACCES, "{e1}");
    assert!(ns.check(&owner, &secret, read).is_err() && ns.check(&root, &secret, read).is_ok());
    assert!(ns.check(&owner, &mine, crate::catalog::Need::Write).is_ok());
    assert_eq!(ns.ref_of(by_ref, b"mine"), Some(mine.clone()));
    assert_eq!(ns.ref_of(ROOT, BY_REF), None);
    // history/mine/ itself: its versions are listed for whoever may read the ref.
    let versions = ns.lookup(history, b"mine").unwrap().ino;
    assert_eq!(ns.ref_of_dir(versions), Some(mine));
    assert_eq!(names_for(&owner, versions).len(), 1);
    assert_eq!(ns.list_for(&other, versions).unwrap_err().errno(), libc::EACCES);

    // mkdir by_ref/NAME by uid 1001 makes a ref uid 1001 owns.
    ns.make_ref_as(1001, 1001, by_ref, b"made").unwrap();
    let made = e.rt.block_on(e.catalog.access(&RefName::new("made").unwrap())).unwrap().unwrap();
    assert_eq!((made.owner, made.gid, made.mode), (1001, 1001, 0o644));
    assert_eq!(ns.make_ref_as(1000, 1000, by_ref, b"made").unwrap_err(), FsError::Exists);
}

#[test]
fn a_commit_by_a_user_who_may_not_write_is_refused_as_denied() {
    let e = env();
    commit(&e, "scratch/a", &[("f", b"one")]);
    let ns = namespace(&e, &["scratch/*"]);
    let by_ref = ns.lookup(ROOT, BY_REF).unwrap().ino;
    let w = ns.lookup(by_ref, b"scratch%2Fa").unwrap();
    let Node::In(view, root) = ns.resolve(w.ino).unwrap() else { panic!() };
    let f = view.coll.fs().create(root, b"new", 0o644, 0, 0).unwrap();
    view.coll.fs().write(f.ino, 0, b"x").unwrap();
    let e1 = e.rt.block_on(view.control.commit_as(&view.coll, Some(&ns.writer(1001, 1001)), "t", "m")).unwrap_err();
    assert!(matches!(e1, CollectionError::Catalog(crate::catalog::CatalogError::Denied(_))), "{e1:?}");
}
