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

pub use filesystem::{Attr, Filesystem, FsOptions, Piece, SetAttr, Snapshot, UploadStats};

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
    #[error("I/O error: {0}")]
    Io(String),
    /// The state directory's disk is full (the journal could not be written).
    #[error("no space left: {0}")]
    NoSpace(String),
    /// No attribute of that name.
    #[error("no such attribute")]
    NoAttr,
    #[error("attribute value larger than 64 KiB")]
    TooBig,
    #[error("attribute name longer than 255 bytes")]
    AttrNameTooLong,
    #[error("not supported: {0}")]
    NotSupported(&'static str),
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
            FsError::Io(_) => libc::EIO,
            FsError::NoSpace(_) => libc::ENOSPC,
            FsError::NoAttr => libc::ENODATA,
            FsError::TooBig => libc::E2BIG,
            FsError::AttrNameTooLong => libc::ERANGE,
            FsError::NotSupported(_) => libc::EOPNOTSUPP,
            FsError::Denied(_) => libc::EACCES,
        }
    }
}
