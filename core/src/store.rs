//! Block stores: where immutable, content-addressed blocks live.
//!
//! [`BlockStore`] is shaped for a remote object store — async, ranged reads, errors that say whether a retry can
//! help — so that the filesystem core never knows which backend it has and tests can wrap one in a fault
//! injector. A [`Block`] can only be made by hashing its bytes or by checking them against a locator, so a store
//! is never asked to keep bytes under the wrong name. Every byte a store returns from [`BlockStore::get`] has been
//! checked against its locator.

mod blockfile;
#[cfg(any(test, feature = "test-suite"))]
pub mod conformance;
mod diskcache;
#[cfg(any(test, feature = "test-suite"))]
pub mod faulty;
mod keep;
mod local;
mod s3;

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;

pub use diskcache::{CachedStore, DiskCache, DiskCacheOptions, DiskCacheStats, free_bytes};
pub use keep::{KeepConfig, KeepStore, Permit, Signature, Signatures};
pub use local::{LocalDirStore, LocalDirStoreOptions};
pub use s3::{S3Config, S3Store};

use crate::locator::{Locator, MAX_BLOCK_SIZE};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("block {0} not found")]
    NotFound(Locator),
    #[error("block {locator} failed verification: {reason}")]
    Corrupt { locator: Locator, reason: String },
    #[error("block of {0} bytes exceeds the 64 MiB limit")]
    TooLarge(u64),
    #[error("range {offset}+{len} lies beyond block {locator}")]
    BadRange { locator: Locator, offset: u64, len: u64 },
    #[error("{op} {what}: {source}")]
    Io {
        op: &'static str,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("block store unavailable: {0}")]
    Unavailable(String),
    /// The store answered, and will answer the same again: bad credentials, no such bucket, a refused request.
    #[error("block store: {0}")]
    Refused(String),
}

impl StoreError {
    /// Whether retrying the same request may succeed (a store that is down, a timeout), as opposed to an answer
    /// that will not change (missing, corrupt, refused).
    pub fn is_transient(&self) -> bool {
        use std::io::ErrorKind as K;
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Io { source, .. } => matches!(
                source.kind(),
                K::Interrupted | K::TimedOut | K::WouldBlock | K::ConnectionReset | K::ConnectionAborted
            ),
            _ => false,
        }
    }

    /// An equal error (same variant, same I/O error kind and message), for handing one failure to several
    /// waiters: `std::io::Error` is not `Clone`.
    pub fn duplicate(&self) -> Self {
        match self {
            StoreError::NotFound(l) => StoreError::NotFound(l.clone()),
            StoreError::Corrupt { locator, reason } => {
                StoreError::Corrupt { locator: locator.clone(), reason: reason.clone() }
            }
            StoreError::TooLarge(n) => StoreError::TooLarge(*n),
            StoreError::BadRange { locator, offset, len } => {
                StoreError::BadRange { locator: locator.clone(), offset: *offset, len: *len }
            }
            StoreError::Io { op, what, source } => StoreError::Io {
                op,
                what: what.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            StoreError::Unavailable(s) => StoreError::Unavailable(s.clone()),
            StoreError::Refused(s) => StoreError::Refused(s.clone()),
        }
    }

    pub(crate) fn io(op: &'static str, what: impl fmt::Display, source: std::io::Error) -> Self {
        StoreError::Io { op, what: what.to_string(), source }
    }
}

/// Bytes together with the locator that names them. The constructors guarantee that they agree.
#[derive(Clone, PartialEq, Eq)]
pub struct Block {
    locator: Locator,
    data: Bytes,
}

impl Block {
    /// Hashes `data` and names it. Refuses more than 64 MiB.
    pub fn new(data: impl Into<Bytes>) -> Result<Self, StoreError> {
        let data = data.into();
        if data.len() as u64 > MAX_BLOCK_SIZE {
            return Err(StoreError::TooLarge(data.len() as u64));
        }
        Ok(Self { locator: Locator::of(&data), data })
    }

    /// Checks `data` against `locator` (size and MD5); hints are kept.
    pub fn verified(locator: Locator, data: impl Into<Bytes>) -> Result<Self, StoreError> {
        let data = data.into();
        verify(&locator, &data)?;
        Ok(Self { locator, data })
    }

    pub fn locator(&self) -> &Locator {
        &self.locator
    }

    pub fn data(&self) -> &Bytes {
        &self.data
    }
}

impl fmt::Debug for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Block({})", self.locator)
    }
}

/// Checks that `data` is the block `locator` names.
pub fn verify(locator: &Locator, data: &[u8]) -> Result<(), StoreError> {
    if data.len() as u64 != locator.size() {
        return Err(StoreError::Corrupt {
            locator: locator.clone(),
            reason: format!("{} bytes where the locator says {}", data.len(), locator.size()),
        });
    }
    if !locator.matches(data) {
        return Err(StoreError::Corrupt { locator: locator.clone(), reason: "MD5 does not match".into() });
    }
    Ok(())
}

/// Checks that `offset..offset+len` lies inside the block `locator` names.
pub fn check_range(locator: &Locator, offset: u64, len: u64) -> Result<(), StoreError> {
    match offset.checked_add(len) {
        Some(end) if end <= locator.size() => Ok(()),
        _ => Err(StoreError::BadRange { locator: locator.clone(), offset, len }),
    }
}

/// A content-addressed block store.
///
/// Blocks are immutable: a put of a block that is already stored is a no-op, and concurrent puts of the same
/// block are safe. Implementations must be usable from many tasks at once and bound their own concurrency.
#[async_trait]
pub trait BlockStore: Send + Sync + fmt::Debug {
    /// Stores `block` durably: when this returns `Ok`, the block survives a crash of this process and of the node.
    async fn put(&self, block: &Block) -> Result<(), StoreError>;

    /// The whole block, verified against `locator` (hints are ignored).
    async fn get(&self, locator: &Locator) -> Result<Bytes, StoreError>;

    /// `len` bytes at `offset` within the block. Stores that can verify the range (the local store reads and
    /// checks the whole block) do; a remote store returns the range as stored, and the caller checks it against
    /// the per-range checksums cafs recorded at upload, or uses [`BlockStore::get`] when it has none.
    async fn get_range(&self, locator: &Locator, offset: u64, len: u64) -> Result<Bytes, StoreError>;

    /// Whether the block is stored (with the right size).
    async fn exists(&self, locator: &Locator) -> Result<bool, StoreError>;

    /// A manifest's text (stripped) as a reader outside cafs must be given it to read the blocks from this
    /// store: Keep's readers need each block's permission signature; every other store names blocks by their
    /// bare locators.
    async fn sign_manifest(&self, text: &str) -> Result<String, StoreError> {
        Ok(text.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_named_by_their_bytes() {
        let b = Block::new(&b"foo"[..]).unwrap();
        assert_eq!(b.locator().to_string(), "acbd18db4cc2f85cedef654fccc4a4d8+3");
        assert!(Block::verified(b.locator().clone(), &b"foo"[..]).is_ok());
        assert!(matches!(Block::verified(b.locator().clone(), &b"fox"[..]), Err(StoreError::Corrupt { .. })));
        assert!(matches!(Block::verified(b.locator().clone(), &b"fo"[..]), Err(StoreError::Corrupt { .. })));
        let big = vec![0u8; (MAX_BLOCK_SIZE + 1) as usize];
        assert!(matches!(Block::new(big), Err(StoreError::TooLarge(n)) if n == MAX_BLOCK_SIZE + 1));
    }

    #[test]
    fn ranges_are_checked() {
        let l = Locator::of(b"hello");
        assert!(check_range(&l, 0, 5).is_ok());
        assert!(check_range(&l, 5, 0).is_ok());
        assert!(check_range(&l, 4, 2).is_err());
        assert!(check_range(&l, u64::MAX, 2).is_err());
    }
}
