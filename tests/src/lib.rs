//! Shared harness for the end-to-end tests.
//!
//! [`sdk`] runs the Arvados Python SDK (a pinned `arvados-python-client` in a virtualenv that the harness makes
//! on first use) as an independent oracle. Nothing here skips: when the SDK cannot be installed, the tests that
//! need it fail and say why.

pub mod arvados;
pub mod booted;
pub mod manager;
pub mod mount;
pub mod sdk;
pub mod servers;
pub mod stack;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Waits (polling every 0.1 s) until `f` holds; fails the test, naming `what`, after `limit`.
pub fn wait_for(what: &str, limit: std::time::Duration, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The workspace's `target/` directory, where the harness keeps what it installs.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Every entry below `root`, not following symlinks: relative path → its `lstat` metadata and its content (a
/// file's bytes, a symlink's target, nothing for a directory).
pub fn lstat_tree(root: &Path) -> BTreeMap<String, (std::fs::Metadata, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let content = if m.is_dir() {
                stack.push(p.clone());
                Vec::new()
            } else if m.file_type().is_symlink() {
                std::fs::read_link(&p).unwrap().into_os_string().into_encoded_bytes()
            } else if m.is_file() {
                std::fs::read(&p).unwrap()
            } else {
                // A FIFO or a socket holds no bytes (and opening a FIFO would wait for a writer).
                Vec::new()
            };
            out.insert(rel, (m, content));
        }
    }
    out
}

/// An entry as [`names_tree`] shows it: kind (`d`, `f`, `l`, `p` for a FIFO, `s` for a socket), permission bits,
/// content or symlink target, number of names (0 for a directory, whose count differs between filesystems),
/// and the first path (in path order) of the file it is.
pub type Named = (char, u32, Vec<u8>, u64, String);

/// Every entry below `root`, with which names are one file: two trees with equal views have the same names,
/// kinds, modes, bytes and hard links.
pub fn names_tree(root: &Path) -> BTreeMap<String, Named> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let all = lstat_tree(root);
    let mut first: BTreeMap<u64, String> = BTreeMap::new();
    for (p, (m, _)) in &all {
        first.entry(m.ino()).or_insert_with(|| p.clone());
    }
    all.into_iter()
        .map(|(p, (m, content))| {
            let t = m.file_type();
            let kind = match () {
                _ if t.is_dir() => 'd',
                _ if t.is_symlink() => 'l',
                _ if t.is_fifo() => 'p',
                _ if t.is_socket() => 's',
                _ => 'f',
            };
            let perm = if t.is_symlink() { 0 } else { m.permissions().mode() & 0o7777 };
            let nlink = if t.is_dir() { 0 } else { m.nlink() };
            (p, (kind, perm, content, nlink, first[&m.ino()].clone()))
        })
        .collect()
}

/// Every entry below `root`: relative path → `Some(bytes)` for a file, `None` for a directory. Two trees with
/// equal snapshots have the same names, kinds and bytes.
pub fn snapshot(root: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    lstat_tree(root).into_iter().map(|(p, (m, c))| (p, (!m.is_dir()).then_some(c))).collect()
}

/// Path of an external test tool that `scripts/test.sh` installs (`cargo install`): on `PATH` or in Cargo's
/// `bin` directory. Panics, saying how to get it, when it is missing.
pub fn tool(name: &str) -> PathBuf {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|c| c.join("bin"));
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain(cargo_bin)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is not installed: scripts/test.sh installs it (cargo install --locked {name})")
        })
}

/// Runs `cmd` to completion with its output captured, killing it (and failing the test) after `limit`.
pub fn run_bounded(cmd: &mut std::process::Command, limit: std::time::Duration) -> std::process::Output {
    use std::process::Stdio;
    let started = std::time::Instant::now();
    let mut child =
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    // The pipes are drained by threads, so that a chatty child never blocks on a full pipe.
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|s| Box::new(s) as _));
    let err = drain(child.stderr.take().map(|s| Box::new(s) as _));
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    std::process::Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

/// SIGTERM, then waits up to `limit` for the exit; past it, SIGKILL and `None`.
pub fn terminate(child: &mut std::process::Child, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A child process that is stopped when dropped (also when a test fails): SIGTERM, up to 20 s, then SIGKILL.
pub struct Terminate(pub std::process::Child);

impl Drop for Terminate {
    fn drop(&mut self) {
        let _ = terminate(&mut self.0, std::time::Duration::from_secs(20));
    }
}

/// `copy_file_range(2)` from `src` to `dst` (whole file; `dst` made or truncated), as `cp` of coreutils 9
/// does: returns what was copied.
pub fn copy_file_range(src: &Path, dst: &Path) -> std::io::Result<u64> {
    let (from, to) = (std::fs::File::open(src)?, std::fs::File::create(dst)?);
    let mut total = 0u64;
    loop {
        match nix::fcntl::copy_file_range(&from, None, &to, None, 1 << 30)? {
            0 => return Ok(total),
            n => total += n as u64,
        }
    }
}
