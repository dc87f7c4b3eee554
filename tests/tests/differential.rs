//! Differential test on a real mount: random sequences of file operations applied to a cafs mount and to a
//! plain directory, with each operation's outcome (value or errno) and then the whole trees compared after every
//! step. Commits followed by a remount are among the operations, so what survives a remount is checked too.
//! Hard links, FIFOs and whole-file `copy_file_range` copies are among the operations as well, and the trees
//! compare which names are one file and how many names each has.

use std::cell::RefCell;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cafs::vfs::workload::{Op, PATHS, data, op_with_links};
use cafs_tests::mount::MountedCafsd;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// An operation's observable outcome: a value, or the errno it failed with.
type Outcome = Result<Vec<u8>, i32>;

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn apply(root: &Path, op: &Op) -> Outcome {
    let at = |i: usize| root.join(PATHS[i]);
    // Opening a FIFO waits for the other end: operations that open a path leave FIFOs alone, in both trees.
    let fifo = |i: usize| fs::symlink_metadata(at(i)).is_ok_and(|m| m.file_type().is_fifo());
    let opens = match op {
        Op::Write { path, .. } | Op::Append { path, .. } | Op::Truncate { path, .. } | Op::Read { path, .. } => {
            vec![*path]
        }
        Op::Copy { from, to } => vec![*from, *to],
        _ => Vec::new(),
    };
    if opens.into_iter().any(fifo) {
        return Ok(Vec::new());
    }
    let r: std::io::Result<Vec<u8>> = (|| match op {
        Op::Write { path, offset, len, seed, truncate } => {
            let mut f = fs::OpenOptions::new().write(true).create(true).truncate(*truncate).open(at(*path))?;
            f.seek(SeekFrom::Start(*offset))?;
            f.write_all(&data(*len, *seed))?;
            Ok(Vec::new())
        }
        Op::Append { path, len, seed } => {
            let mut f = fs::OpenOptions::new().append(true).create(true).open(at(*path))?;
            f.write_all(&data(*len, *seed))?;
            Ok(Vec::new())
        }
        Op::Truncate { path, size } => {
            fs::OpenOptions::new().write(true).open(at(*path))?.set_len(*size)?;
            Ok(Vec::new())
        }
        Op::Read { path, offset, len } => {
            let mut f = fs::File::open(at(*path))?;
            f.seek(SeekFrom::Start(*offset))?;
            let mut buf = Vec::new();
            f.take(u64::from(*len)).read_to_end(&mut buf)?;
            Ok(buf)
        }
        // A mount whose cafsd does not restart gets no request twice: `resend` is the vfs model test's.
        Op::Rename { from, to, .. } => fs::rename(at(*from), at(*to)).map(|_| Vec::new()),
        Op::Unlink { path, .. } => fs::remove_file(at(*path)).map(|_| Vec::new()),
        Op::Mkdir { path, .. } => fs::create_dir(at(*path)).map(|_| Vec::new()),
        Op::Rmdir(p) => fs::remove_dir(at(*p)).map(|_| Vec::new()),
        Op::Symlink { path, target } => {
            // Relative to the link's directory, so it resolves the same way in both trees.
            let depth = PATHS[*path].matches('/').count();
            let target = format!("{}{}", "../".repeat(depth), PATHS[*target]);
            std::os::unix::fs::symlink(target, at(*path)).map(|_| Vec::new())
        }
        Op::Chmod { path, mode } => {
            // Not through a symlink (chmod would follow it): only on what is there.
            let m = fs::symlink_metadata(at(*path))?;
            if m.file_type().is_symlink() {
                return Ok(Vec::new());
            }
            fs::set_permissions(at(*path), fs::Permissions::from_mode(*mode)).map(|_| Vec::new())
        }
        Op::List(p) => {
            let mut names = fs::read_dir(at(*p))?
                .map(|e| e.map(|e| e.file_name().into_string().expect("UTF-8 names")))
                .collect::<std::io::Result<Vec<_>>>()?;
            names.sort();
            Ok(names.join("\0").into_bytes())
        }
        Op::CommitAndRemount => Ok(Vec::new()),
        Op::Link { from, to } => fs::hard_link(at(*from), at(*to)).map(|_| Vec::new()),
        Op::Mkfifo { path } => {
            nix::unistd::mkfifo(&at(*path), nix::sys::stat::Mode::from_bits_truncate(0o640))?;
            Ok(Vec::new())
        }
        Op::Copy { from, to } => {
            let copied = cafs_tests::copy_file_range(&at(*from), &at(*to))?;
            Ok(copied.to_string().into_bytes())
        }
    })();
    r.map_err(errno)
}

struct World {
    state: PathBuf,
    mnt: PathBuf,
    plain: PathBuf,
    cafsd: Option<MountedCafsd>,
    case: usize,
}

impl World {
    fn run_case(&mut self, ops: &[Op]) -> Result<(), TestCaseError> {
        self.case += 1;
        // Each case works in fresh directories, so cases do not see each other's leftovers.
        let name = format!("case{}", self.case);
        fs::create_dir(self.mnt.join(&name)).unwrap();
        fs::create_dir(self.plain.join(&name)).unwrap();
        for op in ops {
            if let Op::CommitAndRemount = op {
                fs::write(self.mnt.join(".cafs/commit"), b"differential").unwrap();
                let (status, _) = self.cafsd.take().expect("mounted").stop();
                prop_assert!(status.success());
                self.cafsd = Some(MountedCafsd::start(&self.state, &self.mnt, &["--ref", "diff", "--autocommit", "0"]));
            }
            let (m, p) = (self.mnt.join(&name), self.plain.join(&name));
            let got = apply(&m, op);
            let want = apply(&p, op);
            prop_assert_eq!(&got, &want, "outcome of {:?}", op);
            prop_assert_eq!(cafs_tests::names_tree(&m), cafs_tests::names_tree(&p), "trees after {:?}", op);
        }
        Ok(())
    }
}

/// One mount for all cases (mounting per case would dominate the run time); the test owns it, so it is
/// unmounted whatever happens.
#[test]
fn a_mount_behaves_like_a_local_directory() {
    use proptest::test_runner::{Config, TestRunner};
    let tmp = tempfile::tempdir().unwrap();
    let (state, mnt, plain) = (tmp.path().join("state"), tmp.path().join("mnt"), tmp.path().join("plain"));
    fs::create_dir_all(&plain).unwrap();
    let cafsd = MountedCafsd::start(&state, &mnt, &["--ref", "diff", "--autocommit", "0"]);
    let world = RefCell::new(World { state, mnt, plain, cafsd: Some(cafsd), case: 0 });
    let mut runner = TestRunner::new(Config { cases: 64, max_shrink_iters: 300, ..Config::default() });
    let result =
        runner.run(&proptest::collection::vec(op_with_links(), 1..60), |ops| world.borrow_mut().run_case(&ops));
    let w = world.into_inner();
    if let Some(cafsd) = w.cafsd {
        let (status, _) = cafsd.stop();
        assert!(status.success());
    }
    if let Err(e) = result {
        panic!("{e}");
    }
}
