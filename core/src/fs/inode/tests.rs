use super::*;

fn meta() -> Meta {
    let t = SystemTime::UNIX_EPOCH;
    Meta { perm: 0o755, uid: 0, gid: 0, mtime: t, ctime: t, atime: t }
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn file() -> Body {
    Body::File(Extents::new())
}

fn dir() -> Body {
    Body::Dir(BTreeMap::new())
}

#[test]
fn create_lookup_and_errors() {
    let mut t = Table::new(meta());
    let a = t.create(ROOT, b"a", dir(), meta()).unwrap();
    let f = t.create(a, b"f", file(), meta()).unwrap();
    assert_eq!(t.lookup(ROOT, b"a"), Ok(a));
    assert_eq!(t.lookup(a, b"f"), Ok(f));
    assert_eq!(t.get(ROOT).unwrap().nlink, 3);
    assert_eq!(t.create(a, b"f", file(), meta()), Err(FsError::Exists));
    assert_eq!(t.create(f, b"x", file(), meta()), Err(FsError::NotDir));
    assert_eq!(t.lookup(f, b"x"), Err(FsError::NotDir));
    assert_eq!(t.lookup(a, b"nope"), Err(FsError::NotFound));
    assert_eq!(t.create(a, &[b'n'; 256], file(), meta()), Err(FsError::NameTooLong));
    assert_eq!(t.lookup(a, &[b'n'; 256]), Err(FsError::NameTooLong));
    assert!(t.create(a, &[b'n'; 255], file(), meta()).is_ok());
    for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
        assert!(matches!(t.create(a, bad, file(), meta()), Err(FsError::Invalid(_))), "{bad:?}");
    }
}

#[test]
fn unlink_and_rmdir() {
    let mut t = Table::new(meta());
    let d = t.create(ROOT, b"d", dir(), meta()).unwrap();
    let f = t.create(d, b"f", file(), meta()).unwrap();
    assert_eq!(t.unlink(ROOT, b"d", now()), Err(FsError::IsDir));
    assert_eq!(t.rmdir(ROOT, b"d", now()), Err(FsError::NotEmpty));
    assert_eq!(t.rmdir(d, b"f", now()), Err(FsError::NotDir));
    // An open file outlives its name.
    t.get_mut(f).unwrap().opens = 1;
    t.unlink(d, b"f", now()).unwrap();
    assert_eq!(t.lookup(d, b"f"), Err(FsError::NotFound));
    assert!(t.get(f).is_ok());
    t.get_mut(f).unwrap().opens = 0;
    assert!(t.release_if_unused(f).is_some());
    t.rmdir(ROOT, b"d", now()).unwrap();
    assert_eq!(t.get(ROOT).unwrap().nlink, 2);
    assert!(t.get(d).is_err());
    assert_eq!(t.unlink(ROOT, b"d", now()), Err(FsError::NotFound));
}

#[test]
fn rename_replaces_and_checks_types() {
    let mut t = Table::new(meta());
    let a = t.create(ROOT, b"a", file(), meta()).unwrap();
    let b = t.create(ROOT, b"b", file(), meta()).unwrap();
    let d = t.create(ROOT, b"d", dir(), meta()).unwrap();
    let e = t.create(ROOT, b"e", dir(), meta()).unwrap();
    t.create(e, b"x", file(), meta()).unwrap();
    assert_eq!(t.rename(ROOT, b"a", ROOT, b"d", RenameMode::Replace, now()), Err(FsError::IsDir));
    assert_eq!(t.rename(ROOT, b"d", ROOT, b"a", RenameMode::Replace, now()), Err(FsError::NotDir));
    assert_eq!(t.rename(ROOT, b"d", ROOT, b"e", RenameMode::Replace, now()), Err(FsError::NotEmpty));
    assert_eq!(t.rename(ROOT, b"a", ROOT, b"b", RenameMode::NoReplace, now()), Err(FsError::Exists));
    assert_eq!(t.rename(ROOT, b"zz", ROOT, b"b", RenameMode::Replace, now()), Err(FsError::NotFound));
    t.rename(ROOT, b"a", ROOT, b"b", RenameMode::Replace, now()).unwrap();
    assert_eq!(t.lookup(ROOT, b"b"), Ok(a));
    assert!(t.get(b).is_err(), "the replaced file is freed");
    // A directory over an empty directory.
    let f = t.create(ROOT, b"f", dir(), meta()).unwrap();
    t.rename(ROOT, b"d", ROOT, b"f", RenameMode::Replace, now()).unwrap();
    assert_eq!(t.lookup(ROOT, b"f"), Ok(d));
    assert!(t.get(f).is_err());
    // Into itself.
    let inner = t.create(d, b"inner", dir(), meta()).unwrap();
    assert!(matches!(t.rename(ROOT, b"f", inner, b"x", RenameMode::Replace, now()), Err(FsError::Invalid(_))));
    assert!(matches!(t.rename(ROOT, b"f", d, b"x", RenameMode::Replace, now()), Err(FsError::Invalid(_))));
    // Across directories: link counts follow.
    t.rename(d, b"inner", e, b"moved", RenameMode::Replace, now()).unwrap();
    assert_eq!(t.parent(inner), Some(e));
    assert_eq!((t.get(d).unwrap().nlink, t.get(e).unwrap().nlink), (2, 3));
    // To itself: nothing happens.
    t.rename(ROOT, b"b", ROOT, b"b", RenameMode::Replace, now()).unwrap();
    assert_eq!(t.lookup(ROOT, b"b"), Ok(a));
}

#[test]
fn rename_exchange() {
    let mut t = Table::new(meta());
    let a = t.create(ROOT, b"a", file(), meta()).unwrap();
    let d = t.create(ROOT, b"d", dir(), meta()).unwrap();
    let sub = t.create(d, b"sub", dir(), meta()).unwrap();
    assert_eq!(t.rename(ROOT, b"a", ROOT, b"none", RenameMode::Exchange, now()), Err(FsError::NotFound));
    t.rename(ROOT, b"a", d, b"sub", RenameMode::Exchange, now()).unwrap();
    assert_eq!(t.lookup(d, b"sub"), Ok(a));
    assert_eq!(t.lookup(ROOT, b"a"), Ok(sub));
    assert_eq!(t.parent(sub), Some(ROOT));
    assert_eq!((t.get(ROOT).unwrap().nlink, t.get(d).unwrap().nlink), (4, 2));
    assert!(matches!(t.rename(ROOT, b"d", d, b"sub", RenameMode::Exchange, now()), Err(FsError::Invalid(_))));
}

#[test]
fn paths_follow_renames_exchanges_and_unlinks() {
    let mut t = Table::new(meta());
    let d = t.create(ROOT, b"d", dir(), meta()).unwrap();
    let e = t.create(d, b"e", dir(), meta()).unwrap();
    let f = t.create(e, b"f", file(), meta()).unwrap();
    let g = t.create(ROOT, b"g", file(), meta()).unwrap();
    assert_eq!(t.path(ROOT), Some(Vec::new()));
    assert_eq!(t.path(f).unwrap(), b"d/e/f");
    assert_eq!(t.child_path(ROOT, b"x").unwrap(), b"x");
    assert_eq!(t.child_path(e, b"x").unwrap(), b"d/e/x");
    assert_eq!(t.resolve(b"d/e/f").unwrap(), (f, e, b"f".to_vec()));
    assert_eq!(t.resolve(b"").unwrap().0, ROOT);
    assert_eq!(t.resolve(b"d/none/f"), Err(FsError::NotFound));
    // Moving a directory moves every path below it.
    t.rename(d, b"e", ROOT, b"top", RenameMode::Replace, now()).unwrap();
    assert_eq!(t.path(f).unwrap(), b"top/f");
    t.rename(ROOT, b"g", e, b"f", RenameMode::Exchange, now()).unwrap();
    assert_eq!((t.path(f).unwrap(), t.path(g).unwrap()), (b"g".to_vec(), b"top/f".to_vec()));
    // A replaced target and an unlinked open file have no path.
    t.get_mut(g).unwrap().opens += 1;
    t.rename(ROOT, b"g", e, b"f", RenameMode::Replace, now()).unwrap();
    assert_eq!((t.path(f).unwrap(), t.path(g)), (b"top/f".to_vec(), None));
    t.get_mut(f).unwrap().opens += 1;
    t.unlink(e, b"f", now()).unwrap();
    assert_eq!(t.path(f), None);
    t.rmdir(ROOT, b"top", now()).unwrap();
    assert_eq!(t.path(e), None);
}

#[test]
fn links_count_names_and_paths_follow_every_name() {
    let mut t = Table::new(meta());
    let d = t.create(ROOT, b"d", dir(), meta()).unwrap();
    let f = t.create(ROOT, b"f", file(), meta()).unwrap();
    t.link(f, d, b"g", now()).unwrap();
    t.link(f, ROOT, b"h", now()).unwrap();
    assert_eq!(t.get(f).unwrap().nlink, 3);
    assert_eq!(t.paths(f), [b"f".to_vec(), b"d/g".to_vec(), b"h".to_vec()]);
    assert_eq!(t.link(d, ROOT, b"d2", now()).unwrap_err().errno(), libc::EPERM);
    assert_eq!(t.link(f, ROOT, b"h", now()), Err(FsError::Exists));
    // A no-replace rename onto another name of the same file is refused, as Linux refuses it.
    assert_eq!(t.rename(ROOT, b"f", ROOT, b"h", RenameMode::NoReplace, now()), Err(FsError::Exists));
    // Renaming a further name moves that name only; renaming one name onto another of the same file does
    // nothing (as POSIX says).
    t.rename(d, b"g", ROOT, b"g", RenameMode::Replace, now()).unwrap();
    t.rename(ROOT, b"g", ROOT, b"h", RenameMode::Replace, now()).unwrap();
    assert_eq!(t.paths(f), [b"f".to_vec(), b"g".to_vec(), b"h".to_vec()]);
    // The first name goes: another becomes first; the file lives while it has a name.
    t.unlink(ROOT, b"f", now()).unwrap();
    assert_eq!(t.path(f).map(|p| p != b"f"), Some(true));
    assert_eq!(t.get(f).unwrap().nlink, 2);
    // A replaced name and an exchanged one.
    let other = t.create(ROOT, b"o", file(), meta()).unwrap();
    t.rename(ROOT, b"o", ROOT, b"g", RenameMode::Replace, now()).unwrap();
    assert_eq!((t.paths(f), t.get(f).unwrap().nlink), (vec![b"h".to_vec()], 1));
    t.link(f, d, b"x", now()).unwrap();
    t.rename(ROOT, b"g", d, b"x", RenameMode::Exchange, now()).unwrap();
    assert_eq!(t.paths(f), [b"h".to_vec(), b"g".to_vec()]);
    assert_eq!(t.paths(other), [b"d/x".to_vec()]);
    t.unlink(ROOT, b"h", now()).unwrap();
    t.unlink(ROOT, b"g", now()).unwrap();
    assert!(t.get(f).is_err(), "the last name gone, the file is freed");
    assert_eq!(t.link(other, ROOT, b"n", now()), Ok(()));
    assert!(t.links.values().all(|v| !v.is_empty()));
}

#[test]
fn a_file_with_the_most_names_takes_no_more() {
    let mut t = Table::new(meta());
    let f = t.create(ROOT, b"f", file(), meta()).unwrap();
    t.get_mut(f).unwrap().nlink = LINK_MAX - 1;
    t.link(f, ROOT, b"last", now()).unwrap();
    assert_eq!(t.link(f, ROOT, b"one too many", now()).unwrap_err().errno(), libc::EMLINK);
    assert_eq!(t.lookup(ROOT, b"one too many"), Err(FsError::NotFound));
}

// Invariants between directory entries, `names`, `links` and `nlink`, after any sequence of operations.

#[derive(Debug, Clone)]
enum Op {
    Mkdir(usize, u8),
    Create(usize, u8),
    Link(usize, usize, u8),
    Unlink(usize),
    Rmdir(usize),
    Rename(usize, usize, u8, u8),
    RenameOnto(usize, usize, u8),
    Open(usize),
    Close(usize),
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    let pick = 0usize..64;
    prop_oneof![
        2 => (pick.clone(), 0u8..4).prop_map(|(d, n)| Op::Mkdir(d, n)),
        3 => (pick.clone(), 0u8..4).prop_map(|(d, n)| Op::Create(d, n)),
        4 => (pick.clone(), pick.clone(), 0u8..4).prop_map(|(a, d, n)| Op::Link(a, d, n)),
        2 => pick.clone().prop_map(Op::Unlink),
        1 => pick.clone().prop_map(Op::Rmdir),
        4 => (pick.clone(), pick.clone(), 0u8..4, 0u8..3).prop_map(|(a, d, n, m)| Op::Rename(a, d, n, m)),
        3 => (pick.clone(), pick.clone(), 0u8..3).prop_map(|(a, b, m)| Op::RenameOnto(a, b, m)),
        1 => pick.clone().prop_map(Op::Open),
        1 => pick.prop_map(Op::Close),
    ]
}

/// Every entry reachable from the root: (path, ino, parent, name).
fn walk(t: &Table) -> Vec<(Vec<u8>, Ino, Ino, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![(ROOT, Vec::new())];
    while let Some((d, p)) = stack.pop() {
        for (name, ino) in t.entries(d).unwrap() {
            let mut path = p.clone();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(name);
            if t.get(ino).unwrap().kind() == Kind::Dir {
                stack.push((ino, path.clone()));
            }
            out.push((path, ino, d, name.to_vec()));
        }
    }
    out
}

fn check(t: &Table) -> Result<(), String> {
    use std::collections::{BTreeMap as M, BTreeSet};
    let all = walk(t);
    let mut by_ino: M<Ino, Vec<Vec<u8>>> = M::new();
    for (p, ino, parent, _) in &all {
        by_ino.entry(*ino).or_default().push(p.clone());
        if t.get(*ino).unwrap().kind() == Kind::Dir && t.parent(*ino) != Some(*parent) {
            return Err(format!("parent of dir {ino}"));
        }
    }
    for (&ino, ps) in &by_ino {
        let i = t.get(ino).unwrap();
        let expect: BTreeSet<_> = ps.iter().cloned().collect();
        let got = t.paths(ino);
        let got_set: BTreeSet<_> = got.iter().cloned().collect();
        if got.len() != got_set.len() {
            return Err(format!("ino {ino}: duplicate paths {got:?}"));
        }
        if got_set != expect {
            return Err(format!("ino {ino}: paths() {got:?} but entries {ps:?}"));
        }
        let first = t.path(ino).ok_or(format!("ino {ino}: no path"))?;
        if !expect.contains(&first) {
            return Err(format!("ino {ino}: path() {first:?} not among {ps:?}"));
        }
        if i.kind() == Kind::Dir {
            if ps.len() != 1 {
                return Err(format!("dir {ino} with names {ps:?}"));
            }
            let subdirs = t.entries(ino).unwrap().filter(|(_, c)| t.get(*c).unwrap().kind() == Kind::Dir).count();
            if i.nlink as usize != 2 + subdirs {
                return Err(format!("dir {ino}: nlink {} subdirs {subdirs}", i.nlink));
            }
        } else if i.nlink as usize != ps.len() {
            return Err(format!("ino {ino}: nlink {} but names {ps:?}", i.nlink));
        }
    }
    for (&ino, i) in &t.inodes {
        if ino == ROOT || by_ino.contains_key(&ino) {
            continue;
        }
        if i.nlink != 0 || i.opens == 0 {
            return Err(format!("unreachable ino {ino} kept: nlink {} opens {}", i.nlink, i.opens));
        }
        if t.path(ino).is_some() || !t.paths(ino).is_empty() {
            return Err(format!("unreachable ino {ino} has a path"));
        }
    }
    for ino in t.names.keys().chain(t.links.keys()) {
        if !by_ino.contains_key(ino) {
            return Err(format!("names/links keep the unreachable ino {ino}"));
        }
    }
    if t.links.values().any(|v| v.is_empty()) {
        return Err("an empty links list".into());
    }
    Ok(())
}

fn apply(t: &mut Table, op: &Op) -> Result<(), FsError> {
    let all = walk(t);
    let mut dirs: Vec<Ino> = vec![ROOT];
    dirs.extend(all.iter().filter(|e| t.get(e.1).unwrap().kind() == Kind::Dir).map(|e| e.1));
    let at = |i: usize| all.get(i % all.len().max(1)).cloned();
    let dir_at = |i: usize| dirs[i % dirs.len()];
    let name = |n: u8| format!("n{n}").into_bytes();
    let modes = [RenameMode::Replace, RenameMode::NoReplace, RenameMode::Exchange];
    match op {
        Op::Mkdir(d, n) => t.create(dir_at(*d), &name(*n), dir(), meta()).map(drop),
        Op::Create(d, n) => t.create(dir_at(*d), &name(*n), file(), meta()).map(drop),
        Op::Link(a, d, n) => {
            let Some(e) = at(*a) else { return Ok(()) };
            t.link(e.1, dir_at(*d), &name(*n), now())
        }
        Op::Unlink(a) => {
            let Some(e) = at(*a) else { return Ok(()) };
            t.unlink(e.2, &e.3, now())
        }
        Op::Rmdir(a) => {
            let Some(e) = at(*a) else { return Ok(()) };
            t.rmdir(e.2, &e.3, now())
        }
        Op::Rename(a, d, n, m) => {
            let Some(e) = at(*a) else { return Ok(()) };
            t.rename(e.2, &e.3, dir_at(*d), &name(*n), modes[*m as usize], now())
        }
        Op::RenameOnto(a, b, m) => {
            let (Some(e), Some(f)) = (at(*a), at(*b)) else { return Ok(()) };
            t.rename(e.2, &e.3, f.2, &f.3, modes[*m as usize], now())
        }
        Op::Open(a) => {
            let Some(e) = at(*a) else { return Ok(()) };
            t.get_mut(e.1)?.opens += 1;
            Ok(())
        }
        Op::Close(a) => {
            // Close some open inode (possibly unlinked).
            let mut open: Vec<Ino> = t.inodes.iter().filter(|(_, i)| i.opens > 0).map(|(&n, _)| n).collect();
            open.sort();
            if open.is_empty() {
                return Ok(());
            }
            let ino = open[*a % open.len()];
            t.get_mut(ino)?.opens -= 1;
            t.release_if_unused(ino);
            Ok(())
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, ..Default::default() })]
    #[test]
    fn the_tables_names_and_counts_agree_after_any_operations(ops in proptest::collection::vec(op(), 1..80)) {
        let mut t = Table::new(meta());
        for (k, o) in ops.iter().enumerate() {
            let _ = apply(&mut t, o);
            if let Err(e) = check(&t) {
                proptest::prop_assert!(false, "after op {k} {o:?}: {e}\nops: {:?}", &ops[..=k]);
            }
        }
    }
}
