//! The vfs layer against a reference model, with no kernel and no FUSE: random sequences of the differential
//! test's operations are applied through [`Vfs`] (walking paths by `lookup`, opening, writing and releasing as
//! the kernel would) and to an in-memory model of a POSIX directory tree, and each operation's outcome (value or
//! errno) and then the whole trees are compared. Commits through `.cafs/commit` followed by a fresh mount of
//! the ref are among the operations, and so are requests the kernel sends a second time after a restart.
//!
//! Beside it, unit tests of what only the vfs decides: the control directory, a namespace mount's permissions
//! and its boundaries between collections.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::*;
use crate::catalog::RefName;
use crate::collection::{OpenWith, Source};
use crate::fs::SetAttr;
use crate::fs::inode::{ROOT, RenameMode};
use crate::vfs::namespace::tests::{Env, chmod, commit, env, namespace};
use crate::vfs::workload::{Op, PATHS, data, op};

const UID: u32 = 1000;

/// What an operation gave: bytes read, names listed, or nothing; or an errno.
type Outcome = Result<Vec<u8>, i32>;

/// An inode of the model: kind, permission bits, and content or symlink target.
#[derive(Debug, Clone, PartialEq, Eq)]
enum M {
    File(u32, Vec<u8>),
    Dir(u32),
    Link(Vec<u8>),
}

/// A POSIX directory tree as Linux answers these calls, by path ("" is the root).
#[derive(Default)]
struct Model {
    tree: BTreeMap<String, M>,
}

impl Model {
    /// What `p` is, after its directories are walked: `ENOENT` or `ENOTDIR` on the way.
    fn walk(&self, p: &str) -> Result<Option<&M>, i32> {
        let mut at = String::new();
        for part in p.split('/').collect::<Vec<_>>().split_last().expect("a path").1 {
            at = if at.is_empty() { part.to_string() } else { format!("{at}/{part}") };
            match self.tree.get(&at) {
                None => return Err(libc::ENOENT),
                Some(M::Dir(_)) => {}
                Some(_) => return Err(libc::ENOTDIR),
            }
        }
        Ok(self.tree.get(p))
    }

    fn children(&self, p: &str) -> Vec<String> {
        let prefix = if p.is_empty() { String::new() } else { format!("{p}/") };
        self.tree
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix).filter(|rest| !rest.contains('/')).map(str::to_string))
            .collect()
    }

    fn file(&mut self, p: &str) -> &mut Vec<u8> {
        match self.tree.get_mut(p) {
            Some(M::File(_, d)) => d,
            _ => unreachable!("checked to be a file"),
        }
    }

    fn apply(&mut self, op: &Op) -> Outcome {
        let at = |i: usize| PATHS[i];
        match op {
            Op::Write { path, offset, len, seed, truncate } => {
                let p = at(*path);
                match self.walk(p)? {
                    None => {
                        self.tree.insert(p.into(), M::File(0o644, Vec::new()));
                    }
                    Some(M::Dir(_)) => return Err(libc::EISDIR),
                    Some(M::Link(_)) => return Ok(Vec::new()),
                    Some(M::File(..)) if *truncate => self.file(p).clear(),
                    Some(M::File(..)) => {}
                }
                let (offset, bytes) = (*offset as usize, data(*len, *seed));
                let f = self.file(p);
                if f.len() < offset + bytes.len() {
                    f.resize(offset + bytes.len(), 0);
                }
                f[offset..offset + bytes.len()].copy_from_slice(&bytes);
                Ok(Vec::new())
            }
            Op::Append { path, len, seed } => {
                let end = match self.walk(at(*path))? {
                    Some(M::File(_, d)) => d.len() as u64,
                    _ => 0,
                };
                self.apply(&Op::Write { path: *path, offset: end, len: *len, seed: *seed, truncate: false })
            }
            Op::Truncate { path, size } => match self.walk(at(*path))? {
                None => Err(libc::ENOENT),
                Some(M::Dir(_)) => Err(libc::EISDIR),
                Some(M::Link(_)) => Ok(Vec::new()),
                Some(M::File(..)) => {
                    self.file(at(*path)).resize(*size as usize, 0);
                    Ok(Vec::new())
                }
            },
            Op::Read { path, offset, len } => match self.walk(at(*path))? {
                None => Err(libc::ENOENT),
                Some(M::Dir(_)) => Err(libc::EISDIR),
                Some(M::Link(_)) => Ok(Vec::new()),
                Some(M::File(_, d)) => {
                    let start = (*offset as usize).min(d.len());
                    Ok(d[start..(start + *len as usize).min(d.len())].to_vec())
                }
            },
            Op::Rename { from, to, .. } => self.rename(at(*from), at(*to)),
            Op::Unlink { path, .. } => match self.walk(at(*path))? {
                None => Err(libc::ENOENT),
                Some(M::Dir(_)) => Err(libc::EISDIR),
                Some(_) => {
                    self.tree.remove(at(*path));
                    Ok(Vec::new())
                }
            },
            Op::Mkdir { path, .. } => match self.walk(at(*path))? {
                Some(_) => Err(libc::EEXIST),
                None => {
                    self.tree.insert(at(*path).into(), M::Dir(0o755));
                    Ok(Vec::new())
                }
            },
            Op::Rmdir(path) => match self.walk(at(*path))? {
                None => Err(libc::ENOENT),
                Some(M::Dir(_)) if !self.children(at(*path)).is_empty() => Err(libc::ENOTEMPTY),
                Some(M::Dir(_)) => {
                    self.tree.remove(at(*path));
                    Ok(Vec::new())
                }
                Some(_) => Err(libc::ENOTDIR),
            },
            Op::Symlink { path, target } => match self.walk(at(*path))? {
                Some(_) => Err(libc::EEXIST),
                None => {
                    self.tree.insert(at(*path).into(), M::Link(at(*target).as_bytes().to_vec()));
                    Ok(Vec::new())
                }
            },
            Op::Chmod { path, mode } => match self.walk(at(*path))? {
                None => Err(libc::ENOENT),
                Some(M::Link(_)) => Ok(Vec::new()),
                Some(_) => {
                    match self.tree.get_mut(at(*path)) {
                        Some(M::File(perm, _) | M::Dir(perm)) => *perm = *mode,
                        _ => unreachable!(),
                    }
                    Ok(Vec::new())
                }
            },
            Op::List(path) => match self.walk(at(*path))? {
                None => Err(libc::ENOENT),
                Some(M::Dir(_)) => Ok(self.children(at(*path)).join("\0").into_bytes()),
                Some(_) => Err(libc::ENOTDIR),
            },
            Op::CommitAndRemount => Ok(Vec::new()),
            Op::Link { .. } | Op::Mkfifo { .. } | Op::Copy { .. } => unreachable!("not in this mix"),
        }
    }

    /// `rename(2)` as Linux checks it: both paths' directories, then the source, then ancestry (source above target: `EINVAL`; target above source: `ENOTEMPTY`), then kinds.
    fn rename(&mut self, from: &str, to: &str) -> Outcome {
        let src = self.walk(from)?.cloned();
        let dst = self.walk(to)?.cloned();
        let src = src.ok_or(libc::ENOENT)?;
        if from == to {
            return Ok(Vec::new());
        }
        if to.starts_with(&format!("{from}/")) {
            return Err(libc::EINVAL);
        }
        if from.starts_with(&format!("{to}/")) {
            return Err(libc::ENOTEMPTY);
        }
        match (&src, &dst) {
            (M::Dir(_), Some(M::Dir(_))) if !self.children(to).is_empty() => return Err(libc::ENOTEMPTY),
            (M::Dir(_), Some(M::File(..) | M::Link(_))) => return Err(libc::ENOTDIR),
            (M::File(..) | M::Link(_), Some(M::Dir(_))) => return Err(libc::EISDIR),
            _ => {}
        }
        self.tree.remove(to);
        let moved: Vec<String> =
            self.tree.keys().filter(|k| *k == from || k.starts_with(&format!("{from}/"))).cloned().collect();
        for k in moved {
            let m = self.tree.remove(&k).expect("listed");
            self.tree.insert(format!("{to}{}", &k[from.len()..]), m);
        }
        Ok(Vec::new())
    }
}

/// A mount of the ref `name` (writable; its current version, or empty), as its owner serves it.
fn mount(e: &Env, name: &str) -> Vfs {
    let with = OpenWith::new(e.catalog.clone(), e.store.clone());
    let coll = e.rt.block_on(Collection::open(with, Source::Scratch(RefName::new(name).unwrap()))).unwrap();
    Vfs::new(Arc::new(coll), Arc::default(), e.rt.handle().clone(), UID, UID)
}

const ME: Caller = Caller { uid: UID, gid: UID, resent: false };
const AGAIN: Caller = Caller { uid: UID, gid: UID, resent: true };

fn no<T>(r: Result<T>) -> Result<T, i32> {
    r.map_err(|e| e.errno())
}

/// Walks `p` by lookups from the root, as the kernel does: the parent's number and the last name.
fn walk<'a>(vfs: &Vfs, p: &'a str) -> Result<(u64, &'a [u8]), i32> {
    let (dirs, last) = p.rsplit_once('/').map_or(("", p), |(d, l)| (d, l));
    let mut at = ROOT;
    for part in dirs.split('/').filter(|s| !s.is_empty()) {
        let e = no(vfs.lookup(&ME, at, part.as_bytes()))?;
        if e.attr.kind != Kind::Dir {
            return Err(libc::ENOTDIR);
        }
        at = e.attr.ino;
    }
    Ok((at, last.as_bytes()))
}

/// What `p` is, if it is there.
fn stat(vfs: &Vfs, p: &str) -> Result<Option<Attr>, i32> {
    let (dir, name) = walk(vfs, p)?;
    match no(vfs.lookup(&ME, dir, name)) {
        Ok(e) => Ok(Some(e.attr)),
        Err(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens, writes and closes, as `write(2)` on a file opened with `O_CREAT` does.
fn write(vfs: &Vfs, p: &str, offset: Option<u64>, bytes: &[u8], truncate: bool) -> Result<(), i32> {
    let (dir, name) = walk(vfs, p)?;
    let (ino, fh) = match stat(vfs, p)? {
        None => no(vfs.create(&ME, dir, name, 0o644)).map(|(e, o)| (e.attr.ino, o.fh))?,
        Some(a) if a.kind == Kind::Dir => return Err(libc::EISDIR),
        Some(a) => (a.ino, no(vfs.open(&ME, a.ino, true))?.fh),
    };
    let r = (|| {
        if truncate {
            no(vfs.setattr(&ME, ino, &SetAttr { size: Some(0), ..Default::default() }))?;
        }
        let offset = match offset {
            Some(o) => o,
            None => no(vfs.getattr(ino))?.attr.size,
        };
        let n = no(vfs.write(&ME, ino, offset, bytes, false))?;
        assert_eq!(n, bytes.len());
        no(vfs.flush(ino, fh))
    })();
    no(vfs.release(ino))?;
    r
}

/// The names in a directory, read a page of two entries at a time with `readdirplus`, checked against a
/// `readdir` of the same handle and against each entry's own attributes.
fn list(vfs: &Vfs, ino: u64) -> Result<Vec<u8>, i32> {
    let fh = no(vfs.opendir(&ME, ino))?;
    let plain = no(vfs.readdir(&ME, ino, fh))?;
    let mut names = Vec::new();
    let mut offset = 0;
    loop {
        let mut page = Vec::new();
        no(vfs.readdirplus(&ME, ino, fh, offset, |next, name, e| {
            page.push((next, name.to_vec(), e.clone()));
            page.len() == 2
        }))?;
        let Some((last, ..)) = page.last() else { break };
        offset = *last;
        for (next, name, e) in page {
            assert_eq!(plain[next as usize - 1].0, name, "readdir and readdirplus agree");
            assert_eq!(plain[next as usize - 1].1, e.attr.ino);
            if name != b"." && name != b".." {
                assert_eq!(no(vfs.getattr(e.attr.ino))?.attr.ino, e.attr.ino);
                names.push(String::from_utf8(name).unwrap());
            }
        }
    }
    vfs.releasedir(ino, fh);
    Ok(names.join("\0").into_bytes())
}

/// One operation through the vfs; a request marked `resend` is sent a second time as the kernel resends it
/// after a restart, and must then find its own effect and succeed.
fn apply(vfs: &Vfs, op: &Op) -> Outcome {
    let at = |i: usize| PATHS[i];
    let twice = |resend: bool, f: &dyn Fn(&Caller) -> Result<(), i32>| {
        f(&ME)?;
        if resend {
            f(&AGAIN).expect("a resent request finds its own effect");
        }
        Ok(Vec::new())
    };
    match op {
        Op::Write { path, offset, len, seed, truncate } => match stat(vfs, at(*path))? {
            Some(a) if a.kind == Kind::Symlink => Ok(Vec::new()),
            _ => write(vfs, at(*path), Some(*offset), &data(*len, *seed), *truncate).map(|_| Vec::new()),
        },
        Op::Append { path, len, seed } => match stat(vfs, at(*path))? {
            Some(a) if a.kind == Kind::Symlink => Ok(Vec::new()),
            _ => write(vfs, at(*path), None, &data(*len, *seed), false).map(|_| Vec::new()),
        },
        Op::Truncate { path, size } => match stat(vfs, at(*path))?.ok_or(libc::ENOENT)? {
            a if a.kind == Kind::Symlink => Ok(Vec::new()),
            a if a.kind == Kind::Dir => Err(libc::EISDIR),
            a => {
                let o = no(vfs.open(&ME, a.ino, true))?;
                no(vfs.setattr(&ME, a.ino, &SetAttr { size: Some(*size), ..Default::default() }))?;
                no(vfs.flush(a.ino, o.fh))?;
                no(vfs.release(a.ino)).map(|_| Vec::new())
            }
        },
        Op::Read { path, offset, len } => match stat(vfs, at(*path))?.ok_or(libc::ENOENT)? {
            a if a.kind == Kind::Symlink => Ok(Vec::new()),
            a => {
                no(vfs.open(&ME, a.ino, false))?;
                let r = no(vfs.read(a.ino, *offset, *len));
                no(vfs.release(a.ino))?;
                r.map(|b| b.to_vec())
            }
        },
        Op::Rename { from, to, resend } => {
            let (f, t) = (walk(vfs, at(*from))?, walk(vfs, at(*to))?);
            // The kernel refuses a rename onto an ancestor of its source before asking the filesystem (the
            // trap of `lock_rename`), and it has looked the source up by then.
            stat(vfs, at(*from))?.ok_or(libc::ENOENT)?;
            if at(*from).starts_with(&format!("{}/", at(*to))) {
                return Err(libc::ENOTEMPTY);
            }
            twice(*resend, &|c| no(vfs.rename(c, f, t, RenameMode::Replace)))
        }
        Op::Unlink { path, resend } => {
            let (dir, name) = walk(vfs, at(*path))?;
            twice(*resend, &|c| no(vfs.unlink(c, dir, name)))
        }
        Op::Mkdir { path, resend } => {
            let (dir, name) = walk(vfs, at(*path))?;
            twice(*resend, &|c| no(vfs.mkdir(c, dir, name, 0o755)).map(|_| ()))
        }
        Op::Rmdir(path) => {
            let (dir, name) = walk(vfs, at(*path))?;
            no(vfs.rmdir(&ME, dir, name)).map(|_| Vec::new())
        }
        Op::Symlink { path, target } => {
            let (dir, name) = walk(vfs, at(*path))?;
            no(vfs.symlink(&ME, dir, name, at(*target).as_bytes())).map(|_| Vec::new())
        }
        Op::Chmod { path, mode } => match stat(vfs, at(*path))?.ok_or(libc::ENOENT)? {
            a if a.kind == Kind::Symlink => Ok(Vec::new()),
            a => no(vfs.setattr(&ME, a.ino, &SetAttr { perm: Some(*mode), ..Default::default() })).map(|_| Vec::new()),
        },
        Op::List(path) => match stat(vfs, at(*path))?.ok_or(libc::ENOENT)? {
            a if a.kind != Kind::Dir => Err(libc::ENOTDIR),
            a => list(vfs, a.ino),
        },
        Op::CommitAndRemount => Ok(Vec::new()),
        Op::Link { .. } | Op::Mkfifo { .. } | Op::Copy { .. } => unreachable!("not in this mix"),
    }
}

/// The whole tree through the vfs, as the model holds it.
fn tree(vfs: &Vfs) -> BTreeMap<String, M> {
    fn walk_dir(vfs: &Vfs, ino: u64, prefix: &str, out: &mut BTreeMap<String, M>) {
        for name in String::from_utf8(list(vfs, ino).unwrap()).unwrap().split('\0').filter(|n| !n.is_empty()) {
            let a = vfs.lookup(&ME, ino, name.as_bytes()).unwrap().attr;
            let p = if prefix.is_empty() { name.to_string() } else { format!("{prefix}/{name}") };
            match a.kind {
                Kind::Dir => {
                    out.insert(p.clone(), M::Dir(a.perm & 0o7777));
                    walk_dir(vfs, a.ino, &p, out);
                }
                Kind::Symlink => {
                    out.insert(p, M::Link(vfs.readlink(a.ino).unwrap()));
                }
                Kind::Fifo | Kind::Socket => unreachable!("the workload makes no FIFO or socket"),
                Kind::File => {
                    vfs.open(&ME, a.ino, false).unwrap();
                    let bytes = vfs.read(a.ino, 0, u32::MAX).unwrap().to_vec();
                    vfs.release(a.ino).unwrap();
                    assert_eq!(bytes.len() as u64, a.size, "{p}: size and bytes agree");
                    out.insert(p, M::File(a.perm & 0o7777, bytes));
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk_dir(vfs, ROOT, "", &mut out);
    out
}

fn run_case(e: &Env, name: &str, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut vfs = mount(e, name);
    let mut model = Model::default();
    for op in ops {
        if let Op::CommitAndRemount = op {
            let ctl = vfs.lookup(&ME, ROOT, control::DIR_NAME).unwrap().attr.ino;
            let commit = vfs.lookup(&ME, ctl, b"commit").unwrap().attr.ino;
            prop_assert_eq!(vfs.write(&ME, commit, 0, b"model", false).unwrap(), 5);
            vfs = mount(e, name);
        }
        let want = model.apply(op);
        let got = apply(&vfs, op);
        prop_assert_eq!(&got, &want, "outcome of {:?}", op);
        prop_assert_eq!(&tree(&vfs), &model.tree, "trees after {:?}", op);
    }
    Ok(())
}

#[test]
fn the_vfs_behaves_like_the_model() {
    use proptest::test_runner::{Config, TestRunner};
    let e = env();
    let case = std::cell::Cell::new(0);
    let mut runner = TestRunner::new(Config { cases: 96, max_shrink_iters: 500, ..Config::default() });
    let result = runner.run(&proptest::collection::vec(op(), 1..60), |ops| {
        case.set(case.get() + 1);
        run_case(&e, &format!("case{}", case.get()), &ops)
    });
    if let Err(err) = result {
        panic!("{err}");
    }
}

#[track_caller]
fn errno<T: std::fmt::Debug>(r: Result<T>) -> i32 {
    r.unwrap_err().errno()
}

/// `.cafs` is looked up but never listed, cannot be made, removed or renamed, and its files are the mount
/// owner's; only `commit` takes writes, a refused message commits nothing, and a good one commits.
#[test]
fn the_control_directory_answers_but_cannot_be_changed() {
    let e = env();
    let vfs = mount(&e, "r");
    let ctl = vfs.lookup(&ME, ROOT, control::DIR_NAME).unwrap();
    assert_eq!((ctl.attr.kind, ctl.attr.uid, ctl.ttl), (Kind::Dir, UID, Duration::ZERO));
    let ctl = ctl.attr.ino;
    assert_eq!(list(&vfs, ROOT).unwrap(), b"");
    assert_eq!(String::from_utf8(list(&vfs, ctl).unwrap()).unwrap(), "commit\0dirty\0hash\0manifest\0status");
    assert_eq!(errno(vfs.mkdir(&ME, ROOT, control::DIR_NAME, 0o755)), libc::EEXIST);
    assert_eq!(errno(vfs.create(&ME, ctl, b"new", 0o644)), libc::EEXIST);
    assert_eq!(errno(vfs.rmdir(&ME, ROOT, control::DIR_NAME)), libc::EPERM);
    assert_eq!(errno(vfs.unlink(&ME, ctl, b"hash")), libc::EPERM);
    assert_eq!(errno(vfs.rename(&ME, (ROOT, control::DIR_NAME), (ROOT, b"x"), RenameMode::Replace)), libc::EPERM);
    assert_eq!(errno(vfs.lookup(&ME, ctl, b"nope")), libc::ENOENT);
    let commit = vfs.lookup(&ME, ctl, b"commit").unwrap().attr.ino;
    assert_eq!(errno(vfs.link(&ME, commit, ROOT, b"alias")), libc::EPERM);

    let (f, o) = vfs.create(&ME, ROOT, b"f", 0o644).unwrap();
    vfs.write(&ME, f.attr.ino, 0, b"bytes", false).unwrap();
    vfs.flush(f.attr.ino, o.fh).unwrap();
    vfs.release(f.attr.ino).unwrap();
    let hash = vfs.lookup(&ME, ctl, b"hash").unwrap().attr.ino;
    assert_eq!(errno(vfs.write(&ME, hash, 0, b"x", false)), libc::EACCES);
    assert_eq!(errno(vfs.getxattr(hash, b"user.x")), libc::ENODATA);
    assert_eq!(errno(vfs.setxattr(&ME, hash, b"user.x", b"1", 0)), libc::EPERM);
    let commit = vfs.lookup(&ME, ctl, b"commit").unwrap().attr.ino;
    assert_eq!(vfs.open(&ME, commit, true).unwrap(), Opened { fh: 0, direct_io: true, keep_cache: false });
    assert_eq!(errno(vfs.write(&ME, commit, 0, b"a\0b", false)), libc::EINVAL);
    assert_eq!(&vfs.read(hash, 0, 100).unwrap()[..], b"", "a refused message commits nothing");
    vfs.write(&ME, commit, 0, b"first", false).unwrap();
    let head = e.rt.block_on(e.catalog.head(&RefName::new("r").unwrap())).unwrap().unwrap();
    assert_eq!(vfs.read(hash, 0, 100).unwrap(), format!("{}\n", head.pdh).into_bytes());
    assert_eq!(&vfs.read(hash, 3, 2).unwrap()[..], &format!("{}\n", head.pdh).as_bytes()[3..5]);
}

/// `.arvados#collection` in a writable mount's root: the current tree's manifest (uploaded first) and PDH as
/// JSON, as arv-mount gives it; never listed, never removed, renamed over or made.
#[test]
fn the_arvados_collection_file_gives_the_current_tree() {
    let e = env();
    let vfs = mount(&e, "r");
    let (f, o) = vfs.create(&ME, ROOT, b"a b", 0o644).unwrap();
    vfs.write(&ME, f.attr.ino, 0, b"data", false).unwrap();
    vfs.flush(f.attr.ino, o.fh).unwrap();
    vfs.release(f.attr.ino).unwrap();
    let file = vfs.lookup(&ME, ROOT, control::ARVADOS_NAME).unwrap();
    assert_eq!((file.attr.kind, file.ttl), (Kind::File, Duration::ZERO));
    let json: serde_json::Value = serde_json::from_slice(&vfs.read(file.attr.ino, 0, 1 << 20).unwrap()).unwrap();
    assert_eq!(json["manifest_text"], ". 8d777f385d3dfec8815d20f7496026dc+4 0:4:a\\040b\n");
    assert_eq!(
        json["portable_data_hash"],
        crate::Pdh::of_text(json["manifest_text"].as_str().unwrap().as_bytes()).to_string()
    );
    assert_eq!(list(&vfs, ROOT).unwrap(), b"a b", "not listed");
    assert_eq!(errno(vfs.unlink(&ME, ROOT, control::ARVADOS_NAME)), libc::EPERM);
    assert_eq!(errno(vfs.create(&ME, ROOT, control::ARVADOS_NAME, 0o644)), libc::EEXIST);
    let to = (ROOT, control::ARVADOS_NAME);
    assert_eq!(errno(vfs.rename(&ME, (ROOT, b"a b"), to, RenameMode::Replace)), libc::EPERM);
    assert_eq!(errno(vfs.write(&ME, file.attr.ino, 0, b"x", false)), libc::EACCES);
}

/// A namespace mount checks each requester against the ref's permissions (names that are refs are not cached
/// by the kernel), keeps its own directories fixed, and refuses a rename between two collections.
#[test]
fn a_namespace_mount_routes_and_checks_each_request() {
    let e: Env = env();
    for name in ["w1", "w2", "secret"] {
        commit(&e, name, &[("f", name.as_bytes())]);
    }
    for name in ["w1", "w2"] {
        chmod(&e, name, 0o666);
    }
    chmod(&e, "secret", 0o600);
    let vfs = Vfs::namespace(namespace(&e, &["w*"]), e.rt.handle().clone(), UID, UID);
    let by_ref = vfs.lookup(&ME, ROOT, namespace::BY_REF).unwrap();
    assert_eq!(by_ref.ttl, TTL);
    let by_ref = by_ref.attr.ino;
    assert_eq!(String::from_utf8(list(&vfs, by_ref).unwrap()).unwrap(), "w1\0w2");
    let root = Caller { uid: 0, gid: 0, resent: false };
    assert_eq!(errno(vfs.lookup(&ME, by_ref, b"secret")), libc::EACCES);
    assert_eq!(vfs.lookup(&root, by_ref, b"secret").unwrap().ttl, Duration::ZERO);
    let w1 = vfs.lookup(&ME, by_ref, b"w1").unwrap();
    assert_eq!(w1.ttl, Duration::ZERO, "a ref's name is asked again by each requester");
    let w2 = vfs.lookup(&ME, by_ref, b"w2").unwrap().attr.ino;
    let (w1, w2) = (w1.attr.ino, w2);
    assert_ne!(w1 >> SLOT_SHIFT, w2 >> SLOT_SHIFT, "each collection has its own range of numbers");

    let f = vfs.lookup(&ME, w1, b"f").unwrap().attr.ino;
    assert_eq!(&vfs.read(f, 0, 10).unwrap()[..], b"w1");
    let cross = vfs.rename(&ME, (w1, b"f"), (w2, b"g"), RenameMode::Replace);
    assert!(matches!(cross, Err(VfsError::CrossView)), "{cross:?}");
    assert_eq!(errno(cross), libc::EXDEV);
    vfs.rename(&ME, (w1, b"f"), (w1, b"g"), RenameMode::Replace).unwrap();
    // A hard link likewise: within a collection, not between two.
    assert_eq!(errno(vfs.link(&ME, f, w2, b"h")), libc::EXDEV);
    assert_eq!(vfs.link(&ME, f, w1, b"h").unwrap().attr.nlink, 2);
    // Sent again, the link finds its own work done; a link onto another file's name is still refused.
    assert_eq!(vfs.link(&AGAIN, f, w1, b"h").unwrap().attr.nlink, 2);
    let (other, _) = vfs.create(&ME, w1, b"other", 0o644).unwrap();
    assert_eq!(errno(vfs.link(&AGAIN, other.attr.ino, w1, b"h")), libc::EEXIST);
    assert_eq!(errno(vfs.mkdir(&ME, ROOT, b"mine", 0o755)), libc::EPERM);
    assert_eq!(errno(vfs.unlink(&ME, by_ref, b"w1")), libc::EPERM);
    assert_eq!(vfs.listxattr(by_ref).unwrap(), b"");

    // A ref the requester may read but not write: its view refuses changes with EACCES.
    chmod(&e, "w2", 0o644);
    std::thread::sleep(crate::policy::RECENT);
    let other = Caller { uid: 1001, gid: 1001, resent: false };
    assert_eq!(errno(vfs.create(&other, w2, b"new", 0o644)), libc::EACCES);
    let ctl = vfs.lookup(&other, w2, control::DIR_NAME).unwrap().attr;
    assert_eq!(ctl.perm, 0o755);
    let commit = vfs.lookup(&other, ctl.ino, b"commit").unwrap().attr;
    assert_eq!(commit.perm, 0o666, "every user may ask; the ref's permissions decide");
    let (f, o) = vfs.create(&root, w2, b"new", 0o644).unwrap();
    vfs.flush(f.attr.ino, o.fh).unwrap();
    vfs.release(f.attr.ino).unwrap();
    assert_eq!(errno(vfs.write(&other, commit.ino, 0, b"m", false)), libc::EACCES);
    assert_eq!(vfs.write(&root, commit.ino, 0, b"m", false).unwrap(), 1);
}

/// cafs clears set-user-ID and set-group-ID itself (the kernel asks it to, with FUSE_HANDLE_KILLPRIV_V2): on a
/// write the kernel marks, on a change of owner or group, and on a truncate by anyone but root.
#[test]
fn set_user_and_group_ids_are_cleared_as_linux_clears_them() {
    assert_eq!(routing::killed_suidgid(0o6755), Some(0o755));
    assert_eq!(routing::killed_suidgid(0o4700), Some(0o700));
    assert_eq!(routing::killed_suidgid(0o2745), None, "set-group-ID without group execute is kept");
    assert_eq!(routing::killed_suidgid(0o6745), Some(0o2745));
    assert_eq!(routing::killed_suidgid(0o755), None);

    let e = env();
    let vfs = mount(&e, "r");
    let root = Caller { uid: 0, gid: 0, resent: false };
    let (f, o) = vfs.create(&ME, ROOT, b"f", 0o644).unwrap();
    let f = f.attr.ino;
    let perm = |vfs: &Vfs| vfs.getattr(f).unwrap().attr.perm;
    let chmod = |m: u32| vfs.setattr(&ME, f, &SetAttr { perm: Some(m), ..Default::default() }).unwrap();
    chmod(0o6755);
    vfs.write(&ME, f, 0, b"x", false).unwrap();
    assert_eq!(perm(&vfs), 0o6755, "a write the kernel does not mark keeps them");
    vfs.write(&ME, f, 0, b"x", true).unwrap();
    assert_eq!(perm(&vfs), 0o755);

    chmod(0o6755);
    vfs.setattr(&root, f, &SetAttr { size: Some(0), ..Default::default() }).unwrap();
    assert_eq!(perm(&vfs), 0o6755, "root truncates without clearing");
    vfs.setattr(&ME, f, &SetAttr { size: Some(0), ..Default::default() }).unwrap();
    assert_eq!(perm(&vfs), 0o755);

    chmod(0o6755);
    vfs.setattr(&root, f, &SetAttr { uid: Some(UID), gid: Some(UID), ..Default::default() }).unwrap();
    assert_eq!(perm(&vfs), 0o755, "a chown clears them, even root's and even to the same owner");
    chmod(0o6755);
    let a = vfs.setattr(&root, f, &SetAttr { uid: Some(7), perm: Some(0o4711), ..Default::default() }).unwrap();
    assert_eq!((a.attr.perm, a.attr.uid), (0o711, 7));
    vfs.flush(f, o.fh).unwrap();
    vfs.release(f).unwrap();

    let d = vfs.mkdir(&ME, ROOT, b"d", 0o2775).unwrap().attr.ino;
    let a = vfs.setattr(&root, d, &SetAttr { gid: Some(5), ..Default::default() }).unwrap();
    assert_eq!(a.attr.perm, 0o2775, "a directory keeps set-group-ID (its new entries inherit the group)");
}

/// What changes only through the mount (a writable collection, a collection by hash) is cached by the kernel
/// for long, and so is a name looked up and not found there; a followed ref and the namespace's directories,
/// which change elsewhere, are not.
#[test]
fn only_what_changes_only_here_is_cached_for_long() {
    let e = env();
    let vfs = mount(&e, "r");
    let (f, _) = vfs.create(&ME, ROOT, b"f", 0o644).unwrap();
    assert_eq!(f.ttl, LONG_TTL);
    assert_eq!(vfs.lookup(&ME, ROOT, b"f").unwrap().ttl, LONG_TTL);
    let absent = vfs.lookup(&ME, ROOT, b"nope");
    assert!(matches!(absent, Err(VfsError::Absent(t)) if t == LONG_TTL), "{absent:?}");
    assert_eq!(errno(vfs.lookup(&ME, ROOT, b"nope")), libc::ENOENT);

    commit(&e, "followed", &[("f", b"1")]);
    let ns = Vfs::namespace(namespace(&e, &[]), e.rt.handle().clone(), UID, UID);
    let by_ref = ns.lookup(&ME, ROOT, namespace::BY_REF).unwrap().attr.ino;
    let absent = ns.lookup(&ME, by_ref, b"nope");
    assert!(matches!(absent, Err(VfsError::Fs(FsError::NotFound))), "{absent:?}");
    let followed = ns.lookup(&ME, by_ref, b"followed").unwrap().attr.ino;
    assert_eq!(ns.lookup(&ME, followed, b"f").unwrap().ttl, TTL, "a followed ref moves with commits elsewhere");
    let absent = ns.lookup(&ME, followed, b"nope");
    assert!(matches!(absent, Err(VfsError::Fs(FsError::NotFound))), "{absent:?}");
}
