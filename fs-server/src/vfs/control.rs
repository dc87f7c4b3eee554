//! The control files of a writable mount, reachable by path under `.cafs/` but never listed and never
//! committed: `commit` (write a message: commit, and the write returns when the commit is durable or fails with
//! its error), `dirty` (`0` or `1`), `hash` (the last commit's PDH), `manifest` (the current tree's manifest
//! text, which uploads what is buffered), `status` (JSON). FUSE-free: the vfs routes names and bytes here.
//!
//! Also `.arvados#collection` in the root, as arv-mount gives it in a writable collection: JSON with the current
//! tree's `manifest_text` (uploading what is buffered, and with Keep's permission signatures when the store is
//! Keep) and its `portable_data_hash`. Job runners read it to save a writable mount's tree as an Arvados
//! collection (crunch-run saves a container's output so).
//!
//! Each write to `commit` is one commit request and its bytes are the message: at most [`MAX_MESSAGE`] bytes
//! (else `EFBIG`) of UTF-8 text without NUL (else `EINVAL`); a refused write commits nothing.
//!
//! Also the background tasks of a served collection ([`start_tasks`]): auto-commit, the commit nobody asks for
//! (a changed tree left alone for a while is committed, by the same path as a write to `commit`), and following
//! a ref's new versions.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::catalog::Writer;
use crate::collection::{Collection, CollectionError, Committed, Origin, follow};

/// The directory that holds the control files, in the mount's root.
pub const DIR_NAME: &[u8] = b".cafs";

/// arv-mount's file of the collection's record, in the mount's root.
pub const ARVADOS_NAME: &[u8] = b".arvados#collection";

/// The longest commit message, in bytes, however the commit is asked for. A message describes a version;
/// anything longer is data sent to the wrong place, and it would be repeated in every listing of the history.
pub const MAX_MESSAGE: usize = 64 << 10;

/// Why a commit message is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("the commit message is {0} bytes; the limit is {MAX_MESSAGE}")]
    TooLong(usize),
    #[error("the commit message is not UTF-8 text")]
    NotText,
    #[error("the commit message contains a NUL byte")]
    Nul,
}

impl MessageError {
    /// The errno a write to `.cafs/commit` fails with.
    pub fn errno(&self) -> i32 {
        match self {
            MessageError::TooLong(_) => libc::EFBIG,
            MessageError::NotText | MessageError::Nul => libc::EINVAL,
        }
    }
}

/// Checks a commit message (from any client) against [`MAX_MESSAGE`]; NUL is refused because the C tools that
/// read the catalog and the terminals that show `fsctl log` stop or misbehave at it.
pub fn check_message(message: &str) -> Result<(), MessageError> {
    if message.len() > MAX_MESSAGE {
        return Err(MessageError::TooLong(message.len()));
    }
    if message.contains('\0') {
        return Err(MessageError::Nul);
    }
    Ok(())
}

/// The message one write of `data` to `commit` carries: the bytes as text, trimmed. Judged write by write,
/// not by offset: a writer may keep the file open and commit through it again and again.
pub fn commit_message(data: &[u8]) -> Result<String, MessageError> {
    if data.len() > MAX_MESSAGE {
        return Err(MessageError::TooLong(data.len()));
    }
    let text = std::str::from_utf8(data).map_err(|_| MessageError::NotText)?;
    check_message(text)?;
    Ok(text.trim().to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlFile {
    Commit,
    Dirty,
    Hash,
    Manifest,
    Status,
    /// `.arvados#collection`, in the root rather than in `.cafs/`.
    Arvados,
}

impl ControlFile {
    pub const ALL: [ControlFile; 6] = [
        ControlFile::Commit,
        ControlFile::Dirty,
        ControlFile::Hash,
        ControlFile::Manifest,
        ControlFile::Status,
        ControlFile::Arvados,
    ];

    /// The control file named `name` in `.cafs/`.
    pub fn from_name(name: &[u8]) -> Option<Self> {
        Self::ALL.into_iter().find(|c| *c != ControlFile::Arvados && c.name().as_bytes() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            ControlFile::Commit => "commit",
            ControlFile::Dirty => "dirty",
            ControlFile::Hash => "hash",
            ControlFile::Manifest => "manifest",
            ControlFile::Status => "status",
            ControlFile::Arvados => ".arvados#collection",
        }
    }

    pub fn writable(self) -> bool {
        self == ControlFile::Commit
    }
}

/// What `.cafs/status` shows.
#[derive(Debug, Serialize)]
pub struct Status {
    pub dirty: bool,
    pub dirty_bytes: u64,
    pub uploads_in_flight: usize,
    pub last_commit: Option<String>,
    pub last_version: Option<u64>,
    pub last_error: Option<String>,
    pub read_only: bool,
}

/// The control state of one mounted collection: the last error any trigger of a commit met.
#[derive(Debug, Default)]
pub struct Control {
    last_error: Mutex<Option<String>>,
}

impl Control {
    fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    /// Commits `coll` as its writer, recording the outcome for `status`.
    pub async fn commit(
        &self,
        coll: &Collection,
        committer: &str,
        message: &str,
    ) -> Result<Committed, CollectionError> {
        self.commit_as(coll, None, committer, message).await
    }

    /// Commits `coll` as `by` (see [`Collection::commit_as`]), recording the outcome for `status`.
    pub async fn commit_as(
        &self,
        coll: &Collection,
        by: Option<&Writer>,
        committer: &str,
        message: &str,
    ) -> Result<Committed, CollectionError> {
        let result = coll.commit_as(by, committer, message).await;
        match &result {
            Ok(c) => {
                tracing::info!(pdh = %c.pdh, version = c.version, changed = c.changed, "committed");
                self.set_error(None);
            }
            Err(e) => {
                tracing::warn!(error = %e, "commit failed");
                self.set_error(Some(e.to_string()));
            }
        }
        result
    }

    pub fn status(&self, coll: &Collection) -> Status {
        let (dirty_bytes, uploads_in_flight) = coll.fs().buffered();
        Status {
            dirty: coll.is_dirty(),
            dirty_bytes,
            uploads_in_flight,
            last_commit: coll.last_pdh().map(|p| p.to_string()),
            last_version: coll.last_version().map(|v| v.version),
            last_error: self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            read_only: coll.is_read_only(),
        }
    }

    /// The bytes a read of `file` returns. `manifest` snapshots the tree, so it blocks on uploads: call it from a
    /// blocking context.
    pub fn read(&self, coll: &Collection, file: ControlFile) -> Result<Vec<u8>, CollectionError> {
        Ok(match file {
            ControlFile::Commit => Vec::new(),
            ControlFile::Dirty => {
                if coll.is_dirty() {
                    b"1\n".to_vec()
                } else {
                    b"0\n".to_vec()
                }
            }
            ControlFile::Hash => coll.last_pdh().map(|p| format!("{p}\n")).unwrap_or_default().into_bytes(),
            ControlFile::Manifest => coll.fs().snapshot()?.0.to_text().into_bytes(),
            ControlFile::Status => {
                let mut s = serde_json::to_vec_pretty(&self.status(coll)).expect("status serializes");
                s.push(b'\n');
                s
            }
            ControlFile::Arvados => {
                let fs = coll.fs();
                let manifest = fs.snapshot()?.0;
                let text = fs.signed_manifest(&manifest.to_text()).map_err(CollectionError::from)?;
                let record = serde_json::json!({
                    "manifest_text": text,
                    "portable_data_hash": manifest.pdh().to_string(),
                });
                record.to_string().into_bytes()
            }
        })
    }
}

/// Starts what a served collection needs in the background, for as long as `alive` says it is served:
/// auto-commit after `autocommit` without changes (a writable tree; zero: never), and moving a followed ref's
/// tree to each newer version, looking every `refresh` (zero: never). The server, the namespace mount's views
/// and development mode all start them here.
pub fn start_tasks(
    rt: &tokio::runtime::Handle,
    coll: &Arc<Collection>,
    control: &Arc<Control>,
    autocommit: Duration,
    refresh: Duration,
    alive: impl Fn() -> bool + Clone + Send + Sync + 'static,
) {
    if !coll.is_read_only() && !autocommit.is_zero() {
        rt.spawn(self::autocommit(coll.clone(), control.clone(), autocommit, alive.clone()));
    }
    if matches!(coll.origin(), Origin::Follow(_)) && !refresh.is_zero() {
        rt.spawn(follow(coll.clone(), refresh, alive));
    }
}

/// Commits a changed tree once it has been left alone for `idle`; stops once `alive` says the mount is gone.
async fn autocommit(coll: Arc<Collection>, control: Arc<Control>, idle: Duration, alive: impl Fn() -> bool) {
    let mut seen = coll.fs().generation();
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1).min(idle)).await;
        if !alive() {
            return;
        }
        let now = coll.fs().generation();
        if now != seen {
            (seen, since) = (now, Instant::now());
        } else if coll.is_dirty() && since.elapsed() >= idle {
            let _ = control.commit(&coll, "cafsd", "auto-commit").await;
            since = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::catalog::{Catalog, RefName, SqliteCatalog};
    use crate::collection::{OpenWith, Source};
    use crate::fs::inode::ROOT;
    use crate::store::{BlockStore, LocalDirStore};

    #[test]
    fn commit_messages_are_bounded_text() {
        assert_eq!(commit_message(b"  first results\n").unwrap(), "first results");
        assert_eq!(commit_message(&[b'a'; MAX_MESSAGE]).unwrap().len(), MAX_MESSAGE);
        let long = commit_message(&[b'a'; MAX_MESSAGE + 1]).unwrap_err();
        assert_eq!((long.clone(), long.errno()), (MessageError::TooLong(MAX_MESSAGE + 1), libc::EFBIG));
        assert_eq!(commit_message(b"caf\xff").unwrap_err().errno(), libc::EINVAL);
        assert_eq!(commit_message(b"a\0b").unwrap_err(), MessageError::Nul);
        assert_eq!(check_message("tab\tand\nnewline"), Ok(()));
    }

    #[test]
    fn control_files_report_and_commit() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let catalog: Arc<dyn Catalog> = Arc::new(SqliteCatalog::open(dir.path().join("c.sqlite")).unwrap());
        let store: Arc<dyn BlockStore> = Arc::new(LocalDirStore::open(dir.path().join("b")).unwrap());
        let name = RefName::new("r").unwrap();
        let coll = rt.block_on(Collection::open(OpenWith::new(catalog, store), Source::Scratch(name))).unwrap();
        let ctl = Control::default();
        assert_eq!(ControlFile::from_name(b"status"), Some(ControlFile::Status));
        assert_eq!(ControlFile::from_name(b"nope"), None);
        assert!(ControlFile::Commit.writable() && !ControlFile::Hash.writable());

        let ino = coll.fs().create(ROOT, b"a b", 0o644, 0, 0).unwrap().ino;
        coll.fs().write(ino, 0, b"data").unwrap();
        assert_eq!(ctl.read(&coll, ControlFile::Dirty).unwrap(), b"1\n");
        assert_eq!(ctl.read(&coll, ControlFile::Hash).unwrap(), b"");
        let manifest = String::from_utf8(ctl.read(&coll, ControlFile::Manifest).unwrap()).unwrap();
        assert_eq!(manifest, ". 8d777f385d3dfec8815d20f7496026dc+4 0:4:a\\040b\n");
        let status: serde_json::Value = serde_json::from_slice(&ctl.read(&coll, ControlFile::Status).unwrap()).unwrap();
        assert_eq!(status["dirty"], true);

        let done = rt.block_on(ctl.commit(&coll, "t", "m")).unwrap();
        assert_eq!(ctl.read(&coll, ControlFile::Dirty).unwrap(), b"0\n");
        assert_eq!(ctl.read(&coll, ControlFile::Hash).unwrap(), format!("{}\n", done.pdh).into_bytes());
        let status: serde_json::Value = serde_json::from_slice(&ctl.read(&coll, ControlFile::Status).unwrap()).unwrap();
        assert_eq!(status["last_commit"], done.pdh.to_string());
        assert_eq!(status["last_version"], 1);
        assert_eq!(status["last_error"], serde_json::Value::Null);
    }
}
