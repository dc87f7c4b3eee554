//! The journal: a local, per-mount, append-only log of what a writable tree changed since the committed version
//! it was loaded from (its *base*), so that a restarted cafsd can rebuild the uncommitted tree. It records
//! every metadata change (make, unlink, rmdir, rename, setattr) and every range of a file whose bytes landed in
//! the block store (with the block's locator), by path; it never holds file bytes, which live in the store.
//! `fsync` of a file returns once its bytes are stored and the journal, up to and including the records of that
//! landing, is on disk ([`Journal::sync`]): what makes DESIGN.md's first durability promise true.
//!
//! File format: a sequence of frames, each `u32` length (little-endian), `u32` CRC-32 of the payload, payload (a
//! postcard-encoded [`Record`]). The first record is a [`Header`]. A frame cut short or failing its CRC ends the
//! log (a crash mid-append tears at most the last frame); reading stops there and the tail is cut off, so that
//! later appends follow a valid frame. After a commit the log is rewritten to start from the new base
//! ([`Journal::checkpoint`]): temp file, fsync, rename, fsync of the directory.
//!
//! Paths are relative to the mount's root, components joined by `/` (names hold neither `/` nor NUL); the root
//! is the empty path. Records are applied in order on top of the base, so a path always means what it meant when
//! the record was made.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// A frame larger than this is corruption, not a record (the largest real record, a file's stored ranges after
/// one upload, is far smaller).
pub const MAX_RECORD: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("journal {path}: {why}")]
    Corrupt { path: PathBuf, why: String },
    /// An earlier write failed; the journal no longer reflects the tree, and says so until a commit rewrites
    /// it ([`Journal::checkpoint`]).
    #[error("journal {path} failed earlier: {why}")]
    Broken { path: PathBuf, why: String, errno: Option<i32> },
}

impl JournalError {
    /// The OS error behind it, if any (`ENOSPC` for a full disk).
    pub fn errno(&self) -> Option<i32> {
        match self {
            JournalError::Io { source, .. } => source.raw_os_error(),
            JournalError::Broken { errno, .. } => *errno,
            JournalError::Corrupt { .. } => None,
        }
    }
}

/// What a journal belongs to and what its records apply to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Format version of this file.
    pub format: u32,
    pub ref_name: String,
    pub mount_point: Vec<u8>,
    /// The ref's version the records apply to (0: the empty tree of a ref never committed).
    pub base_version: u64,
    /// The inode numbers the base's entries had in the live tree (by path), and the next number it would have
    /// given. Empty for the tree as first loaded, whose numbers loading gives again. A restarted cafsd that takes
    /// over a live mount must answer to the numbers the kernel already holds.
    pub inos: Vec<(Vec<u8>, u64)>,
    pub next_ino: u64,
}

impl Header {
    pub const FORMAT: u32 = 2;
}

/// Metadata of a made entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Made {
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MadeKind {
    Dir,
    File,
    Symlink(Vec<u8>),
    /// (Added after the format's first kinds, as the variants below; older journals decode unchanged.)
    Fifo,
    Socket,
}

/// Bytes of a file that are in a stored block: `len` bytes at `at` in the file are `len` bytes at `offset` in
/// the block named `locator`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRange {
    pub at: u64,
    pub len: u64,
    pub locator: String,
    pub offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    Header(Header),
    Make {
        path: Vec<u8>,
        /// The inode number it was given (see [`Header::inos`]).
        ino: u64,
        kind: MadeKind,
        meta: Made,
    },
    Unlink {
        path: Vec<u8>,
    },
    Rmdir {
        path: Vec<u8>,
    },
    /// `mode`: 0 replace, 1 no-replace, 2 exchange.
    Rename {
        from: Vec<u8>,
        to: Vec<u8>,
        mode: u8,
    },
    SetAttr {
        path: Vec<u8>,
        size: Option<u64>,
        perm: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        mtime_ns: Option<i64>,
    },
    /// Ranges of a file whose upload landed, and the file's mtime then.
    Stored {
        path: Vec<u8>,
        ranges: Vec<StoredRange>,
        mtime_ns: i64,
    },
    /// Written (and synced) just before a commit asks the catalog to make `version` with `pdh`: the tree as of
    /// the record `after` records before this one. If cafsd dies before the checkpoint that follows a commit,
    /// recovery finds whether the commit landed and, if so, starts from that version (see [`rebase`]).
    Committing {
        after: u64,
        version: u64,
        pdh: String,
    },
    /// The file at `path` took writes whose bytes are only in cafsd's memory (written once per change from
    /// "all stored" to "some in memory", not per write). If cafsd dies before the matching [`Record::Synced`],
    /// recovery knows the file may have lost acknowledged writes, and its next `fsync` or `close` says so.
    /// (Added after the format's first records: older journals decode unchanged.)
    Unsynced {
        path: Vec<u8>,
    },
    /// Every byte written to the file at `path` is stored again (its `Stored` records precede this one).
    Synced {
        path: Vec<u8>,
    },
    /// The extended attribute `name` of the entry at `path` was set to `value`, or removed (`None`).
    Xattr {
        path: Vec<u8>,
        name: Vec<u8>,
        value: Option<Vec<u8>>,
    },
    /// The entry at `from` got the further name `to` (a hard link).
    Link {
        from: Vec<u8>,
        to: Vec<u8>,
    },
    /// `len` bytes of the file at `path` from `at` became a hole (punched or zeroed), and its mtime then.
    Zeroed {
        path: Vec<u8>,
        at: u64,
        len: u64,
        mtime_ns: i64,
    },
}

/// What recovery replays and which version the result starts clean at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebased {
    /// The records to replay on the journal's base, markers left out.
    pub records: Vec<Record>,
    /// The ref's version that the first `covered` records (replayed on the base) make: the base itself (and
    /// `covered` 0) unless a commit landed after the last checkpoint.
    pub head_version: u64,
    pub covered: usize,
}

/// Sorts the records of a journal whose base is `base_version`, given `landed` (whether the catalog has
/// `version` of the ref with `pdh`): the last marker whose commit landed tells which records that version
/// already holds. Every record is still replayed on the journal's own base — the tree comes out the same as
/// loading the landed version and replaying the rest, but with the inode numbers of the live tree.
pub fn rebase(base_version: u64, records: Vec<Record>, landed: impl Fn(u64, &str) -> bool) -> Rebased {
    let last_landed = records.iter().enumerate().rev().find_map(|(i, r)| match r {
        Record::Committing { after, version, pdh } if landed(*version, pdh) => Some((i, *after, *version)),
        _ => None,
    });
    let (covered_raw, head_version) = match last_landed {
        Some((i, after, version)) => ((i as u64).saturating_sub(after) as usize, version),
        None => (0, base_version),
    };
    // `covered_raw` counts records (markers too) before the covered point; drop the markers among them.
    let markers = records.iter().take(covered_raw).filter(|r| matches!(r, Record::Committing { .. })).count();
    let records = records.into_iter().filter(|r| !matches!(r, Record::Committing { .. })).collect();
    Rebased { records, head_version, covered: covered_raw - markers }
}

/// Appends `record` as one frame to `out`.
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    let payload = postcard::to_stdvec(record).expect("records serialize");
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
}

/// Decodes the frames of `bytes`: the records, and how many bytes they span (the valid prefix). Stops at the
/// first frame that is cut short, over [`MAX_RECORD`], fails its CRC or does not decode.
pub fn decode(bytes: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some(head) = bytes.get(at..at + 8) {
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        if len > MAX_RECORD {
            break;
        }
        let Some(payload) = bytes.get(at + 8..at + 8 + len) else { break };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Ok(r) = postcard::from_bytes::<Record>(payload) else { break };
        records.push(r);
        at += 8 + len;
    }
    (records, at)
}

#[derive(Debug)]
struct Inner {
    header: Header,
    file: File,
    /// Encoded records not yet written to the file.
    pending: Vec<u8>,
    /// Records appended since the file began (the header not counted), and of those, how many the base the
    /// file starts from already contains (they were dropped by a checkpoint).
    appended: u64,
    dropped: u64,
    /// Why an earlier write failed, and its OS error.
    broken: Option<(String, Option<i32>)>,
}

/// The inode numbers of a tree's entries, by path, and the next free number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Numbering {
    pub inos: Vec<(Vec<u8>, u64)>,
    pub next: u64,
}

/// One mount's journal file, open for appending.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    inner: Mutex<Inner>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io { path: path.to_path_buf(), source }
}

/// Writes `bytes` as the whole content of `path`, atomically and durably (temp file, fsync, rename, fsync of
/// the directory). Returns the file, open for appending.
fn replace_file(path: &Path, bytes: &[u8]) -> Result<File, JournalError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    }
    f.seek(SeekFrom::End(0)).map_err(io(path))?;
    Ok(f)
}

impl Journal {
    /// Starts a new journal at `path` (replacing any file there) with `header` and no records.
    pub fn create(path: &Path, header: &Header) -> Result<Self, JournalError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let mut bytes = Vec::new();
        encode(&Record::Header(header.clone()), &mut bytes);
        let file = replace_file(path, &bytes)?;
        Ok(Self::with(path, header.clone(), file, 0))
    }

    fn with(path: &Path, header: Header, file: File, appended: u64) -> Self {
        let inner = Inner { header, file, pending: Vec::new(), appended, dropped: 0, broken: None };
        Self { path: path.to_path_buf(), inner: Mutex::new(inner) }
    }

    /// Opens an existing journal: its header and records, the journal open for appending after them (a torn
    /// tail is cut off first). `None` if there is no file.
    pub fn open(path: &Path) -> Result<Option<(Self, Header, Vec<Record>)>, JournalError> {
        let mut file = match std::fs::OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(path)(e)),
        };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io(path))?;
        let (mut records, valid) = decode(&bytes);
        let corrupt = |why: &str| JournalError::Corrupt { path: path.to_path_buf(), why: why.to_string() };
        if records.is_empty() {
            return Err(corrupt("no header"));
        }
        let Record::Header(header) = records.remove(0) else { return Err(corrupt("the first record is not a header")) };
        if header.format != Header::FORMAT {
            return Err(corrupt(&format!("format {} (this cafsd reads {})", header.format, Header::FORMAT)));
        }
        if records.iter().any(|r| matches!(r, Record::Header(_))) {
            return Err(corrupt("a second header"));
        }
        if valid < bytes.len() {
            tracing::warn!(journal = %path.display(), kept = valid, cut = bytes.len() - valid, "cutting off a torn tail");
            file.set_len(valid as u64).map_err(io(path))?;
            file.sync_all().map_err(io(path))?;
        }
        file.seek(SeekFrom::End(0)).map_err(io(path))?;
        let n = records.len() as u64;
        Ok(Some((Self::with(path, header.clone(), file, n), header, records)))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a record: written to the file at once, durable at the next [`Journal::sync`]. Returns its sequence
    /// number. Written at once because a record in the page cache outlives a killed cafsd: the cafsd that takes
    /// over a live mount must know every name the kernel was told about, fsynced or not.
    pub fn append(&self, record: &Record) -> u64 {
        let mut j = self.inner();
        j.appended += 1;
        if j.broken.is_some() {
            // It could not follow the lost records anyway; holding it would only grow memory.
            return j.appended;
        }
        encode(record, &mut j.pending);
        Self::write_pending(&self.path, &mut j);
        j.appended
    }

    /// The sequence number of the last record appended.
    pub fn seq(&self) -> u64 {
        self.inner().appended
    }

    fn write_pending(path: &Path, j: &mut Inner) {
        if j.broken.is_some() || j.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut j.pending);
        if let Err(e) = j.file.write_all(&pending) {
            tracing::error!(journal = %path.display(), error = %e, "journal write failed");
            j.broken = Some((e.to_string(), e.raw_os_error()));
        }
    }

    /// Makes every record appended so far durable.
    pub fn sync(&self) -> Result<(), JournalError> {
        let mut j = self.inner();
        Self::write_pending(&self.path, &mut j);
        if let Some((why, errno)) = &j.broken {
            return Err(JournalError::Broken { path: self.path.clone(), why: why.clone(), errno: *errno });
        }
        if let Err(e) = j.file.sync_data() {
            j.broken = Some((e.to_string(), e.raw_os_error()));
            return Err(io(&self.path)(e));
        }
        Ok(())
    }

    pub fn header(&self) -> Header {
        self.inner().header.clone()
    }

    /// Records that a commit of the tree as of record `seq` is about to make `version` with `pdh`, durably.
    /// A marker that cannot be written is not counted: the file then ends with the records before it (and
    /// perhaps a torn frame, cut off when read).
    pub fn mark_commit(&self, seq: u64, version: u64, pdh: &str) -> Result<(), JournalError> {
        {
            let mut j = self.inner();
            if let Some((why, errno)) = &j.broken {
                return Err(JournalError::Broken { path: self.path.clone(), why: why.clone(), errno: *errno });
            }
            let after = j.appended.saturating_sub(seq);
            encode(&Record::Committing { after, version, pdh: pdh.to_string() }, &mut j.pending);
            j.appended += 1;
        }
        let synced = self.sync();
        if synced.is_err() {
            let mut j = self.inner();
            j.appended -= 1;
        }
        synced
    }

    /// After a commit of the tree as it was at record `seq`, as version `base_version`, whose entries had the
    /// inode numbers `inos` then: rewrites the journal to start from that version, keeping only the records
    /// made after `seq`.
    pub fn checkpoint(&self, base_version: u64, seq: u64, inos: Numbering) -> Result<(), JournalError> {
        let mut j = self.inner();
        let mut header = j.header.clone();
        header.base_version = base_version;
        header.inos = inos.inos;
        header.next_ino = inos.next;
        // Records after `seq` may be pending or already in the file: read the file's records, add the pending.
        Self::write_pending(&self.path, &mut j);
        if let Some((why, errno)) = &j.broken {
            // Records were lost, but a commit of the tree as of the last record needs none of them: start
            // afresh from it. With records after the commit's snapshot, the journal stays broken (the next
            // commit tries again).
            if seq < j.appended {
                return Err(JournalError::Broken { path: self.path.clone(), why: why.clone(), errno: *errno });
            }
            header.format = Header::FORMAT;
            let mut out = Vec::new();
            encode(&Record::Header(header.clone()), &mut out);
            j.file = replace_file(&self.path, &out)?;
            j.pending.clear();
            tracing::info!(journal = %self.path.display(), "journal rewritten after a failed write");
            j.dropped = j.appended;
            j.header = header;
            j.broken = None;
            return Ok(());
        }
        let mut bytes = Vec::new();
        let mut file = File::open(&self.path).map_err(io(&self.path))?;
        file.read_to_end(&mut bytes).map_err(io(&self.path))?;
        let (records, _) = decode(&bytes);
        // records[0] is the header; record k (k ≥ 1) has sequence number dropped + k.
        let keep_from = (seq.saturating_sub(j.dropped) + 1) as usize;
        header.format = Header::FORMAT;
        let mut out = Vec::new();
        encode(&Record::Header(header.clone()), &mut out);
        for r in records.iter().skip(keep_from) {
            encode(r, &mut out);
        }
        j.file = replace_file(&self.path, &out)?;
        j.dropped = seq.max(j.dropped);
        j.header = header;
        Ok(())
    }

    /// Deletes the journal file (the tree it recorded was committed or discarded).
    pub fn remove(&self) -> Result<(), JournalError> {
        let mut j = self.inner();
        j.pending.clear();
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&self.path)(e)),
        }
    }
}

/// The journal file for the ref `ref_name` mounted at `mount_point`, under `dir`: one per pair, so two mounts of
/// one ref keep separate journals, and a remount of the same ref at the same place finds its own.
pub fn path_for(dir: &Path, ref_name: &str, mount_point: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let mut key = ref_name.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(mount_point.as_os_str().as_bytes());
    let name = crate::Locator::of(&key).to_string();
    let hex = name.split('+').next().unwrap_or(&name);
    dir.join(format!("{hex}.journal"))
}

#[cfg(test)]
mod tests;
