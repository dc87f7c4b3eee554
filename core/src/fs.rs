//! The filesystem core: FUSE-free and store-agnostic, so it is tested directly. The `fuser` adapter (a thin
//! layer) translates kernel requests into calls here and errors into errnos.
//!
//! - [`extents`]: a file's contents as extents of stored blocks, buffer blocks and holes;
//! - [`inode`]: the inode table and namespace operations;
//! - [`cache`]: the bounded, verified block cache;
//! - [`sidecar`]: the metadata stored beside each committed manifest;
//! - [`filesystem`]: the filesystem itself — buffers, uploads, memory budget, reads, snapshots.

pub mod cache;
pub mod extents;
mod filesystem;
pub mod inode;
pub mod sidecar;
pub mod xattr;

pub use filesystem::{Attr, Filesystem, FsOptions, Piece, SetAttr, Setup, Snapshot, UploadStats};

use std::fmt;
use std::sync::Arc;

use crate::catalog::CatalogError;
use crate::journal::JournalError;
use crate::store::StoreError;

/// An error of a backend, shared by everyone it is reported to: one failed upload reaches every writer of its
/// block and every later `fsync`, and the backends' errors cannot be cloned (they hold an `io::Error` or a
/// boxed source). Two are equal when they say the same.
#[derive(Debug)]
pub struct SharedError<E>(Arc<E>);

impl<E> SharedError<E> {
    pub fn new(e: E) -> Self {
        Self(Arc::new(e))
    }

    pub fn get(&self) -> &E {
        &self.0
    }
}

impl<E> Clone for SharedError<E> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<E: fmt::Display> PartialEq for SharedError<E> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.to_string() == other.0.to_string()
    }
}

impl<E: fmt::Display> Eq for SharedError<E> {}

impl<E: fmt::Display> fmt::Display for SharedError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a filesystem operation can fail with; [`FsError::errno`] is what the FUSE adapter answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("is a directory")]
    IsDir,
    #[error("not a directory")]
    NotDir,
    #[error("file name longer than 255 bytes")]
    NameTooLong,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    #[error("read-only file system")]
    ReadOnly,
    /// The block store failed (after retries, for writes); [`FsError::is_transient`] says whether a later try
    /// may succeed. Unstored bytes stay held.
    #[error("block store: {0}")]
    Store(SharedError<StoreError>),
    #[error("catalog: {0}")]
    Catalog(SharedError<CatalogError>),
    /// The mount's journal could not be written (a full disk is [`FsError::NoSpace`]).
    #[error("{0}")]
    Journal(SharedError<JournalError>),
    /// A file of cafsd's own state beside the journal could not be written.
    #[error("{what}: {error}")]
    State { what: &'static str, error: SharedError<std::io::Error> },
    /// Stored data that does not decode: a sidecar, a journal record, a locator.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// Writes a cafsd acknowledged but had not stored when it died (kill -9 or a crash); reported once.
    #[error(
        "writes to this file that were not yet stored were lost when cafsd stopped abruptly (kill -9 or a crash); \
         what was fsynced is intact"
    )]
    WritesLost,
    /// A background task of cafsd's own failed (a panic): a bug, not the data.
    #[error("internal error: {0}")]
    Internal(String),
    /// The state directory's disk is full (the journal could not be written).
    #[error("no space left: {0}")]
    NoSpace(String),
    /// A seek for data or a hole at or past the end of the file.
    #[error("no data or hole at or after this offset")]
    NoSuchOffset,
    /// No attribute of that name.
    #[error("no such attribute")]
    NoAttr,
    #[error("attribute value larger than 64 KiB")]
    TooBig,
    #[error("attribute name longer than 255 bytes")]
    AttrNameTooLong,
    #[error("not supported: {0}")]
    NotSupported(&'static str),
    /// A file already has as many names as one may have.
    #[error("too many links")]
    TooManyLinks,
    /// The ref's owner, group and mode do not allow the requester this use of it.
    #[error("permission denied: {0}")]
    Denied(String),
}

impl FsError {
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::IsDir => libc::EISDIR,
            FsError::NotDir => libc::ENOTDIR,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::NotPermitted(_) => libc::EPERM,
            FsError::ReadOnly => libc::EROFS,
            FsError::Store(_)
            | FsError::Catalog(_)
            | FsError::Journal(_)
            | FsError::State { .. }
            | FsError::Corrupt(_)
            | FsError::WritesLost
            | FsError::Internal(_) => libc::EIO,
            FsError::NoSpace(_) => libc::ENOSPC,
            FsError::NoSuchOffset => libc::ENXIO,
            FsError::NoAttr => libc::ENODATA,
            FsError::TooBig => libc::E2BIG,
            FsError::AttrNameTooLong => libc::ERANGE,
            FsError::NotSupported(_) => libc::EOPNOTSUPP,
            FsError::TooManyLinks => libc::EMLINK,
            FsError::Denied(_) => libc::EACCES,
        }
    }

    /// Whether the same call may succeed later: a backend that is down or timed out, as opposed to an answer
    /// that will not change.
    pub fn is_transient(&self) -> bool {
        match self {
            FsError::Store(e) => e.get().is_transient(),
            FsError::Catalog(e) => e.get().is_transient(),
            _ => false,
        }
    }

    /// For a failed background task (the `JoinError` of a task that panicked or was cancelled).
    pub fn task(what: &str, e: impl fmt::Display) -> Self {
        FsError::Internal(format!("{what} task failed: {e}"))
    }
}

impl From<StoreError> for FsError {
    fn from(e: StoreError) -> Self {
        FsError::Store(SharedError::new(e))
    }
}

impl From<CatalogError> for FsError {
    fn from(e: CatalogError) -> Self {
        FsError::Catalog(SharedError::new(e))
    }
}

/// A journal that cannot be written: `ENOSPC` keeps its own errno, so a writer sees a full disk as one.
impl From<JournalError> for FsError {
    fn from(e: JournalError) -> Self {
        match e.errno() {
            Some(libc::ENOSPC) => FsError::NoSpace(e.to_string()),
            _ => FsError::Journal(SharedError::new(e)),
        }
    }
}
