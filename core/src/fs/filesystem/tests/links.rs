//! Hard links, FIFOs and sockets in the core: through a commit and a load, a restart (load + journal) and a
//! reload of a newer version, with the links, the nodes and the inode numbers kept.

use super::*;

/// Hard links, FIFOs and sockets through a commit: every name of a file is in the manifest with the same pieces
/// (its bytes stored once), the sidecar says which names are one file, and loading restores one inode with
/// every name, also after the first name was removed. A manifest whose names no longer hold the same bytes (a
/// writer other than cafs changed one) loads them as separate files.
#[test]
fn hard_links_fifos_and_sockets_survive_snapshot_and_load() {
    let e = env();
    let f = fs(&e, small(4096));
    let d = f.mkdir(ROOT, b"d", 0o755, 1000, 1000).unwrap().ino;
    let a = f.create(ROOT, b"a", 0o640, 1000, 1000).unwrap().ino;
    f.write(a, 0, &[7u8; 10_000]).unwrap();
    for (dir, name) in [(d, &b"b"[..]), (ROOT, b"c"), (d, b"gone")] {
        assert_eq!(f.link(a, dir, name).unwrap().ino, a);
    }
    assert_eq!(f.getattr(a).unwrap().nlink, 4);
    // The first name goes: another takes its place.
    f.unlink(ROOT, b"a").unwrap();
    f.unlink(d, b"gone").unwrap();
    assert_eq!(f.getattr(a).unwrap().nlink, 2);
    let p = f.mknod(ROOT, b"pipe", Special::Fifo, 0o600, 1000, 1000).unwrap().ino;
    f.link(p, d, b"pipe2").unwrap();
    f.mknod(d, b"sock", Special::Socket, 0o755, 1000, 1000).unwrap();
    let l = f.symlink(ROOT, b"l", b"c", 1000, 1000).unwrap().ino;
    f.link(l, d, b"l2").unwrap();
    // Errors: a directory, an existing name, an invalid name.
    assert_eq!(f.link(d, ROOT, b"dd").unwrap_err().errno(), libc::EPERM);
    assert_eq!(f.link(a, ROOT, b"pipe").unwrap_err(), FsError::Exists);
    assert!(matches!(f.link(a, ROOT, b"x/y"), Err(FsError::Invalid(_))));
    assert_eq!(f.link(a, a, b"x").unwrap_err(), FsError::NotDir);
    let before = (describe(&f), link_groups(&f));
    assert_eq!(before.1.len(), 3, "{:?}", before.1);

    let (manifest, sidecar) = f.snapshot().unwrap();
    let text = manifest.to_text();
    // 10 000 bytes of 7s in 4 KiB buffers: two distinct blocks, whichever name is listed.
    assert_eq!(manifest.blocks().len(), 2, "the linked bytes are stored once: {text}");
    assert!(text.contains(":c") && text.contains(":b") && !text.contains("pipe") && !text.contains("sock"), "{text}");
    let g = Filesystem::load(&manifest, &sidecar, setup(&e, small(4096), 0)).unwrap();
    assert_eq!((describe(&g), link_groups(&g)), before);
    assert_eq!(g.snapshot().unwrap().1, sidecar, "the loaded tree commits the same sidecar");
    // Loaded, the names are one file: a write through one shows through the other, and unlinking one keeps it.
    let c = g.lookup(ROOT, b"c").unwrap().ino;
    g.write(c, 0, b"changed").unwrap();
    assert_eq!(g.read(g.lookup(d_of(&g), b"b").unwrap().ino, 0, 7).unwrap().to_vec(), b"changed");
    g.unlink(ROOT, b"c").unwrap();
    assert_eq!(g.getattr(g.lookup(d_of(&g), b"b").unwrap().ino).unwrap().nlink, 1);

    // A manifest in which `c` was changed by another writer: `c` and `d/b` load as two files.
    let other = f.create(ROOT, b"other", 0o644, 1000, 1000).unwrap().ino;
    f.write(other, 0, b"other bytes").unwrap();
    let (m2, _) = f.snapshot().unwrap();
    let text = m2.to_text();
    let (root, rest) = text.split_once('\n').unwrap();
    let mut root: Vec<String> = root.split(' ').filter(|t| !t.ends_with(":c")).map(str::to_string).collect();
    let as_c: Vec<String> = root.iter().filter(|t| t.ends_with(":other")).map(|t| t.replace(":other", ":c")).collect();
    root.extend(as_c);
    let changed = format!("{}\n{rest}", root.join(" "));
    let changed = Manifest::parse(changed.as_bytes()).unwrap();
    let h = Filesystem::load(&changed, &sidecar, setup(&e, small(4096), 0)).unwrap();
    assert_eq!(h.read(h.lookup(ROOT, b"c").unwrap().ino, 0, 100).unwrap().to_vec(), b"other bytes");
    assert_eq!(h.getattr(h.lookup(ROOT, b"c").unwrap().ino).unwrap().nlink, 1);
    assert_eq!(link_groups(&h).len(), 2, "the FIFO's and the symlink's names stay linked");
}

fn d_of(f: &Filesystem) -> Ino {
    f.lookup(ROOT, b"d").unwrap().ino
}

/// Every path's inode number.
fn numbers(f: &Filesystem) -> BTreeMap<Vec<u8>, Ino> {
    entries(f).into_iter().map(|e| (e.0, e.1)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    /// random namespace changes (links, unlinks of first names, renames and exchanges over names of one
    /// file), then a commit and a load numbered as the commit says: the same tree, the same link groups, the
    /// same inode number at every path, and a second commit gives the same sidecar.
    #[test]
    fn a_commit_loads_to_the_same_tree_and_numbers(ops in proptest::collection::vec(ns_op(), 1..60)) {
        let e = env();
        let live = fs(&e, small(4096));
        for op in &ops {
            apply_ns(&live, op);
        }
        let s = live.snapshot_at().unwrap();
        let idx = sidecar::Index::from_bytes(&s.sidecar).unwrap();
        // As a restart reads it: the manifest's text.
        let manifest = Manifest::parse(s.manifest.to_text().as_bytes()).unwrap();
        let g = Filesystem::load_numbered(&manifest, &idx, &s.numbering, setup(&e, small(4096), 1000)).unwrap();
        prop_assert_eq!(describe(&g), describe(&live));
        prop_assert_eq!(link_groups(&g), link_groups(&live));
        prop_assert_eq!(numbers(&g), numbers(&live));
        prop_assert_eq!(g.snapshot().unwrap().1, s.sidecar);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    /// what a restart does. A live tree changed at random is committed and goes on changing with a journal
    /// attached; the commit loaded with the commit's numbering, plus the journal, is the live tree: same entries,
    /// link groups and inode numbers.
    #[test]
    fn a_restart_gives_the_live_tree_with_its_links_and_numbers(
        before in proptest::collection::vec(ns_op(), 1..50),
        after in proptest::collection::vec(ns_op(), 1..50),
    ) {
        let e = env();
        let live = fs(&e, small(4096));
        for op in &before {
            apply_ns(&live, op);
        }
        let s = live.snapshot_at().unwrap();
        let records = journaled(&e, &live, &s.numbering, &after);
        let idx = sidecar::Index::from_bytes(&s.sidecar).unwrap();
        let manifest = Manifest::parse(s.manifest.to_text().as_bytes()).unwrap();
        let replayed = Filesystem::load_numbered(&manifest, &idx, &s.numbering, setup(&e, small(4096), 1000)).unwrap();
        replayed.replay(&records).unwrap();
        prop_assert_eq!(replay_view(&replayed), replay_view(&live));
        prop_assert_eq!(link_groups(&replayed), link_groups(&live));
        prop_assert_eq!(numbers(&replayed), numbers(&live));
    }
}

/// a reload keeps the number of a file whose bytes and names did not change, even when the newer
/// version names its names in another order (its first name is another one).
#[test]
fn a_reload_keeps_a_linked_files_number_when_its_first_name_differs() {
    let e = env();
    let f = fs(&e, small(4096));
    let a = f.create(ROOT, b"a", 0o644, 1000, 1000).unwrap().ino;
    f.write(a, 0, b"same bytes").unwrap();
    f.link(a, ROOT, b"b").unwrap();
    let p = f.mknod(ROOT, b"p", Special::Fifo, 0o600, 1000, 1000).unwrap().ino;
    f.link(p, ROOT, b"q").unwrap();
    let (m1, s1) = f.snapshot().unwrap();
    // Another node loads that version, and ends with the same tree, whose first names are now `b` and `q`.
    let g = Filesystem::load(&m1, &s1, setup(&e, small(4096), 1000)).unwrap();
    for (first, other) in [(&b"a"[..], &b"b"[..]), (b"p", b"q")] {
        let ino = g.lookup(ROOT, other).unwrap().ino;
        g.unlink(ROOT, first).unwrap();
        g.link(ino, ROOT, first).unwrap();
    }
    let (m2, s2) = g.snapshot().unwrap();
    assert_eq!(m2.pdh(), m1.pdh(), "the same manifest");
    let idx = sidecar::Index::from_bytes(&s2).unwrap();
    let r = f.reload(&m2, &idx, 1000, 1000).unwrap();
    assert_eq!(link_groups(&r), link_groups(&f));
    assert_eq!(r.lookup(ROOT, b"a").unwrap().ino, a, "a's number kept");
    assert_eq!(r.lookup(ROOT, b"b").unwrap().ino, a, "b's number kept");
    assert_eq!((r.lookup(ROOT, b"p").unwrap().ino, r.lookup(ROOT, b"q").unwrap().ino), (p, p), "the FIFO's too");
    assert!(!f.open_elsewhere(&r));
}

/// link groups whose names need escaping (space, backslash, colon, newline, a non-UTF-8 byte) come back
/// from a commit's text.
#[test]
fn links_with_names_that_need_escaping_survive_a_commit() {
    let e = env();
    let f = fs(&e, small(4096));
    let d = f.mkdir(ROOT, b"d e\\", 0o755, 1000, 1000).unwrap().ino;
    let a = f.create(d, b"a b\\c:", 0o644, 1000, 1000).unwrap().ino;
    f.write(a, 0, b"bytes").unwrap();
    f.link(a, ROOT, b"x\ny\xff").unwrap();
    f.link(a, d, b"\\040").unwrap();
    let p = f.mknod(d, b"p\\q r", Special::Fifo, 0o600, 1000, 1000).unwrap().ino;
    f.link(p, ROOT, b"p 2\xfe").unwrap();
    f.unlink(d, b"a b\\c:").unwrap();
    let before = (describe(&f), link_groups(&f));
    let s = f.snapshot_at().unwrap();
    let m = Manifest::parse(s.manifest.to_text().as_bytes()).unwrap();
    let idx = sidecar::Index::from_bytes(&s.sidecar).unwrap();
    let g = Filesystem::load_numbered(&m, &idx, &s.numbering, setup(&e, small(4096), 1000)).unwrap();
    assert_eq!((describe(&g), link_groups(&g)), before);
    assert_eq!(numbers(&g), numbers(&f));
}

/// A sidecar cafs never writes, chaining links (`a` a link to `b`, itself a link to `c`): the mount loads, every
/// name keeps its bytes, and the names it cannot join stay separate files.
#[test]
fn a_sidecar_that_chains_links_still_loads_every_name() {
    let e = env();
    let f = fs(&e, small(4096));
    let c = f.create(ROOT, b"c", 0o644, 1000, 1000).unwrap().ino;
    f.write(c, 0, b"one file").unwrap();
    f.link(c, ROOT, b"a").unwrap();
    f.link(c, ROOT, b"b").unwrap();
    let (manifest, sidecar) = f.snapshot().unwrap();
    let mut sc = Sidecar::from_bytes(&sidecar).unwrap();
    for (name, first) in [("a", Some("b")), ("b", Some("c")), ("c", None)] {
        sc.entries.get_mut(name).unwrap().link = first.map(str::to_string);
    }
    let g = Filesystem::load(&manifest, &sc.to_bytes(), setup(&e, small(4096), 0)).unwrap();
    for name in [&b"a"[..], b"b", b"c"] {
        assert_eq!(g.read(g.lookup(ROOT, name).unwrap().ino, 0, 100).unwrap().to_vec(), b"one file");
    }
    assert_eq!(g.lookup(ROOT, b"a").unwrap().ino, g.lookup(ROOT, b"b").unwrap().ino, "a joined to b");
    assert_ne!(g.lookup(ROOT, b"b").unwrap().ino, g.lookup(ROOT, b"c").unwrap().ino, "b, linked already, is not");
}
