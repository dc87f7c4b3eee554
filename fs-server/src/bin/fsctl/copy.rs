//! `fsctl get` and `fsctl put`: a collection copied out to a directory, and a directory committed as a ref's
//! next version: the `arv-get` and `arv-put` of cafs.
//!
//! Both go through a mount of the caller's own (made by cafsd and the helper, as any mount is, in a fresh
//! directory under `$TMPDIR`), so they need no access to the block store or the catalog beyond what the
//! caller's mounts have, and they obey the same ref permissions. Regular files, directories, symlinks, FIFOs and
//! sockets are copied with their modes and modification times, and names of one file (hard links) stay one
//! file; a device node in a tree to put is refused by name before anything is changed. A progress bar shows the
//! bytes on a terminal.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink};

use super::*;

/// The buffer of one copy: the FUSE mount takes writes of up to 1 MiB at a time.
const CHUNK: usize = 1 << 20;

/// A tree's entries, parents before children; a device node in it is an error.
struct Tree {
    entries: Vec<(PathBuf, fs::Metadata)>,
    bytes: u64,
}

fn scan(root: &Path) -> anyhow::Result<Tree> {
    let mut tree = Tree { entries: Vec::new(), bytes: 0 };
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .with_context(|| dir.display().to_string())?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .with_context(|| dir.display().to_string())?;
        names.sort();
        for name in names {
            let rel = rel.join(&name);
            let path = root.join(&rel);
            let meta = fs::symlink_metadata(&path).with_context(|| path.display().to_string())?;
            let kind = meta.file_type();
            if kind.is_dir() {
                todo.push(rel.clone());
            } else if kind.is_file() {
                tree.bytes += meta.len();
            } else if kind.is_char_device() || kind.is_block_device() {
                bail!("{}: a device node cannot be copied into a collection", path.display());
            }
            tree.entries.push((rel, meta));
        }
    }
    Ok(tree)
}

/// A progress bar of bytes on stderr, drawn only on a terminal.
fn bar(total: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {bytes}/{total_bytes} {msg} [{bar:30}] {bytes_per_sec}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Copies `tree` from `from` into the existing directory `to`.
fn copy_tree(tree: &Tree, from: &Path, to: &Path, bar: &indicatif::ProgressBar) -> anyhow::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    // The first copy of each file with several names, by the source's (device, inode).
    let mut linked: HashMap<(u64, u64), PathBuf> = HashMap::new();
    for (rel, meta) in &tree.entries {
        let (src, dst) = (from.join(rel), to.join(rel));
        let kind = meta.file_type();
        let fail = || format!("{} -> {}", src.display(), dst.display());
        if !kind.is_dir() && meta.nlink() > 1 {
            if let Some(first) = linked.get(&(meta.dev(), meta.ino())) {
                fs::hard_link(first, &dst).with_context(fail)?;
                continue;
            }
            linked.insert((meta.dev(), meta.ino()), dst.clone());
        }
        if kind.is_dir() {
            fs::create_dir(&dst).with_context(fail)?;
        } else if kind.is_symlink() {
            symlink(fs::read_link(&src).with_context(fail)?, &dst).with_context(fail)?;
        } else if kind.is_fifo() || kind.is_socket() {
            use nix::sys::stat::{Mode, SFlag, mknod};
            let node = if kind.is_fifo() { SFlag::S_IFIFO } else { SFlag::S_IFSOCK };
            let mode = Mode::from_bits_truncate(meta.permissions().mode() & 0o7777);
            mknod(&dst, node, mode, 0).with_context(fail)?;
            // mknod's mode passed the umask: set it as it was.
            fs::set_permissions(&dst, fs::Permissions::from_mode(mode.bits())).with_context(fail)?;
            // Not through an open (a FIFO's would wait for the other end).
            let mtime = nix::sys::time::TimeSpec::new(meta.mtime(), meta.mtime_nsec());
            let at = nix::sys::stat::UtimensatFlags::NoFollowSymlink;
            nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, &dst, &nix::sys::time::TimeSpec::UTIME_OMIT, &mtime, at)
                .with_context(fail)?;
        } else {
            let mut r = fs::File::open(&src).with_context(fail)?;
            let mut w = fs::File::create_new(&dst).with_context(fail)?;
            loop {
                let n = r.read(&mut buf).with_context(fail)?;
                if n == 0 {
                    break;
                }
                w.write_all(&buf[..n]).with_context(fail)?;
                bar.inc(n as u64);
            }
            w.set_permissions(fs::Permissions::from_mode(meta.permissions().mode() & 0o7777)).with_context(fail)?;
            w.set_modified(meta.modified()?).with_context(fail)?;
        }
    }
    // Directories last, deepest first: adding their entries changed their times.
    for (rel, meta) in tree.entries.iter().rev().filter(|(_, m)| m.is_dir()) {
        let dst = to.join(rel);
        fs::set_permissions(&dst, fs::Permissions::from_mode(meta.permissions().mode() & 0o7777))
            .with_context(|| dst.display().to_string())?;
        let times = fs::FileTimes::new().set_modified(meta.modified()?);
        fs::File::open(&dst).and_then(|d| d.set_times(times)).with_context(|| dst.display().to_string())?;
    }
    Ok(())
}

/// A fresh directory under `$TMPDIR` (or `/tmp`) for a mount of fsctl's own, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> anyhow::Result<Self> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let d = std::env::temp_dir().join(format!("cafs-{what}-{}-{}", now.as_nanos(), std::process::id()));
        fs::create_dir(&d).with_context(|| d.display().to_string())?;
        Ok(Self(d))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

/// Mounts `source` at a scratch directory, runs `work` on it, and unmounts (`discard` drops what is not
/// committed). The mount goes away whether `work` succeeds or not.
async fn with_mount<T>(
    c: &mut Client,
    source: Source,
    read_only: bool,
    discard: bool,
    work: impl AsyncFnOnce(&mut Client, &str) -> anyhow::Result<T>,
) -> Result<T, Failure> {
    let scratch = Scratch::new(if read_only { "get" } else { "put" })?;
    let mount_point = absolute(&scratch.0)?;
    let req = pb::MountRequest {
        mount_point: mount_point.clone(),
        source: Some(source),
        read_only,
        autocommit_secs: Some(0),
        allow_other: false,
    };
    c.mount(req).await?;
    let done = work(c, &mount_point).await;
    let unmounted = c.unmount(pb::UnmountRequest { mount_point: mount_point.clone(), discard }).await;
    let value = done?;
    unmounted.with_context(|| format!("unmounting {mount_point}"))?;
    Ok(value)
}

/// `fsctl get SOURCE DIR`: the collection (a ref's current version, or a hash) copied into DIR, which must be
/// missing or empty.
pub async fn get(mut c: Client, source: String, dir: PathBuf) -> Result<(), Failure> {
    match fs::read_dir(&dir) {
        Ok(mut d) => {
            if d.next().is_some() {
                return Err(usage(&format!("{}: not empty", dir.display())));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir(&dir).with_context(|| dir.display().to_string())?
        }
        Err(e) => return Err(anyhow::Error::new(e).context(dir.display().to_string()).into()),
    }
    let source = match cafs::Pdh::parse(&source) {
        Ok(_) => Source::Pdh(source),
        Err(_) => Source::RefName(source),
    };
    with_mount(&mut c, source, true, true, async |_, mount_point| {
        let from = Path::new(mount_point);
        let tree = scan(from)?;
        let bar = bar(tree.bytes, "copied");
        let copied = copy_tree(&tree, from, &dir, &bar);
        bar.finish_and_clear();
        copied.with_context(|| format!("copying into {} (what was copied stays)", dir.display()))
    })
    .await
}

/// `fsctl put DIR REF`: DIR's tree committed as the next version of REF (made when missing); prints the hash.
pub async fn put(mut c: Client, dir: PathBuf, name: String, message: String, json: bool) -> Result<(), Failure> {
    let tree = scan(&dir)?;
    if let Some((rel, _)) = tree.entries.iter().find(|(rel, _)| rel.as_os_str().as_encoded_bytes() == b".cafs") {
        return Err(usage(&format!(
            "{}: .cafs is the name of a mount's control directory and cannot be put",
            dir.join(rel).display()
        )));
    }
    let r = with_mount(&mut c, Source::RefName(name), false, true, async |c, mount_point| {
        let to = Path::new(mount_point);
        // The mount shows the ref's current version: the new one is DIR's tree alone.
        for e in fs::read_dir(to)? {
            let p = e?.path();
            let gone = if fs::symlink_metadata(&p)?.is_dir() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
            gone.with_context(|| p.display().to_string())?;
        }
        let bar = bar(tree.bytes, "written");
        let copied = copy_tree(&tree, &dir, to, &bar);
        bar.finish_and_clear();
        copied?;
        commit_with_progress(c, mount_point, message).await
    })
    .await?;
    if json {
        println!("{}", json!({"pdh": r.pdh, "version": r.version, "changed": r.changed}));
    } else {
        println!("{}", r.pdh);
    }
    Ok(())
}

/// A commit, with a progress bar of the uploads it waits for.
async fn commit_with_progress(c: &mut Client, mount_point: &str, message: String) -> anyhow::Result<pb::CommitReply> {
    let req = pb::CommitRequest { mount_point: mount_point.to_string(), message, into_ref: String::new() };
    Ok(with_progress(Some(c.clone()), mount_point, c.commit(req)).await?.into_inner())
}
