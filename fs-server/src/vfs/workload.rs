//! The operation mix that both the vfs layer's reference-model test and the end-to-end differential test draw
//! from: file operations on a small set of clashing, nesting paths, commits with a fresh mount, and requests
//! that the kernel would send a second time after a restart. One mix, so that the two tests check the same
//! behaviour, below FUSE and through it. The differential test draws from a wider mix as well
//! ([`op_with_links`]): hard links, FIFOs and copies, for which the plain directory it compares with is the
//! reference (the vfs model does not model inodes with several names).

use proptest::prelude::*;

/// Paths the operations pick from: files and directories may take any of them, so names clash and nest.
pub const PATHS: &[&str] = &["a", "b", "d", "d/x", "d/y", "d/e", "d/e/z", "e", "e/x", "name with spaces:and colons"];

/// One operation; paths are indexes into [`PATHS`]. `resend`: the request is sent a second time, as the kernel
/// resends one after a restart (a mount whose server does not restart ignores it).
#[derive(Debug, Clone)]
pub enum Op {
    Write {
        path: usize,
        offset: u64,
        len: usize,
        seed: u8,
        truncate: bool,
    },
    Append {
        path: usize,
        len: usize,
        seed: u8,
    },
    Truncate {
        path: usize,
        size: u64,
    },
    Read {
        path: usize,
        offset: u64,
        len: u32,
    },
    Rename {
        from: usize,
        to: usize,
        resend: bool,
    },
    Unlink {
        path: usize,
        resend: bool,
    },
    Mkdir {
        path: usize,
        resend: bool,
    },
    Rmdir(usize),
    Symlink {
        path: usize,
        target: usize,
    },
    Chmod {
        path: usize,
        mode: u32,
    },
    List(usize),
    CommitAndRemount,
    /// A further name for what `from` names (`link(2)`).
    Link {
        from: usize,
        to: usize,
    },
    Mkfifo {
        path: usize,
    },
    /// `copy_file_range` of a whole file over `to`, as `cp` does.
    Copy {
        from: usize,
        to: usize,
    },
}

/// One operation, weighted towards writes and reads.
pub fn op() -> impl Strategy<Value = Op> {
    let p = 0..PATHS.len();
    prop_oneof![
        6 => (p.clone(), 0u64..200_000, 0usize..70_000, any::<u8>(), any::<bool>())
            .prop_map(|(path, offset, len, seed, truncate)| Op::Write { path, offset, len, seed, truncate }),
        2 => (p.clone(), 0usize..5_000, any::<u8>()).prop_map(|(path, len, seed)| Op::Append { path, len, seed }),
        2 => (p.clone(), 0u64..150_000).prop_map(|(path, size)| Op::Truncate { path, size }),
        3 => (p.clone(), 0u64..200_000, 0u32..100_000).prop_map(|(path, offset, len)| Op::Read { path, offset, len }),
        3 => (p.clone(), p.clone(), any::<bool>()).prop_map(|(from, to, resend)| Op::Rename { from, to, resend }),
        2 => (p.clone(), any::<bool>()).prop_map(|(path, resend)| Op::Unlink { path, resend }),
        3 => (p.clone(), any::<bool>()).prop_map(|(path, resend)| Op::Mkdir { path, resend }),
        1 => p.clone().prop_map(Op::Rmdir),
        1 => (p.clone(), p.clone()).prop_map(|(path, target)| Op::Symlink { path, target }),
        1 => (p.clone(), prop_oneof![Just(0o600u32), Just(0o644), Just(0o755), Just(0o700)])
            .prop_map(|(path, mode)| Op::Chmod { path, mode }),
        2 => p.clone().prop_map(Op::List),
        1 => Just(Op::CommitAndRemount),
    ]
}

/// The bytes a write of `len` with `seed` writes.
pub fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add((i % 251) as u8)).collect()
}

/// [`op`], with hard links, FIFOs and copies among the operations.
pub fn op_with_links() -> impl Strategy<Value = Op> {
    let p = 0..PATHS.len();
    prop_oneof![
        24 => op(),
        3 => (p.clone(), p.clone()).prop_map(|(from, to)| Op::Link { from, to }),
        1 => p.clone().prop_map(|path| Op::Mkfifo { path }),
        2 => (p.clone(), p).prop_map(|(from, to)| Op::Copy { from, to }),
    ]
}
