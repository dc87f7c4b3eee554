//! The catalog: committed collections (manifest text, by PDH), sidecar metadata (by its own hash), and named
//! **refs** with their full version history.
//!
//! The PDH names the manifest only, so two versions can share a collection and differ in their sidecar (a chmod,
//! a touch): a sidecar belongs to a version, not to a collection, and each version records which one it has.
//!
//! A ref moves only by [`Catalog::commit`], a compare-and-swap on the ref's version number: the committer says
//! which version its tree was based on, and if another commit got there first it gets
//! [`CatalogError::Conflict`] and nothing changes — two writers never lose a commit silently. Versions are numbers
//! rather than hashes so that A→B→A histories cannot fool the check.
//!
//! Each ref has an owner, a group and a mode ([`access`]), kept with it: a commit by a [`Writer`] is checked
//! in the same transaction that moves the ref, so a chmod landing meanwhile cannot be slipped past, and the
//! commit that creates a ref records its writer as the owner.
//!
//! [`SqliteCatalog`] is the embedded default; [`PostgresCatalog`] is shared by a cluster's nodes; [`ArvadosCatalog`]
//! keeps refs as an Arvados cluster's collections. [`conformance`] is
//! the backend-independent test suite every implementation must pass.

pub mod access;
mod arvados;
#[cfg(any(test, feature = "test-suite"))]
pub mod conformance;
pub mod faulty;
mod postgres;
mod sqlite;

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

pub use access::{AccessChange, AccessDenied, Need, Principal, RefAccess, Writer};
pub use arvados::ArvadosCatalog;
pub use postgres::PostgresCatalog;
pub use sqlite::SqliteCatalog;

use crate::manifest::{MAX_DEPTH, Manifest, ParseError, Pdh};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("invalid ref name {name:?}: {why}")]
    InvalidRef { name: String, why: &'static str },
    #[error("commit conflict on ref {name:?}: expected {}, but the ref is at {}", show_version(*.expected), show_version(*.current))]
    Conflict { name: String, expected: Option<u64>, current: Option<u64> },
    #[error("invalid manifest: {0}")]
    BadManifest(#[from] ParseError),
    #[error("tree cannot be committed: {0}")]
    Unrepresentable(String),
    #[error(transparent)]
    Denied(#[from] AccessDenied),
    #[error("ref {0:?} does not exist")]
    NoSuchRef(String),
    #[error("catalog data is corrupt: {0}")]
    Corrupt(String),
    #[error("catalog backend: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The backend answered, and will answer the same again: a refused token, a name it will not take.
    #[error("catalog refused: {0}")]
    Refused(String),
}

impl CatalogError {
    /// Whether the same call may succeed later: the backend could not be reached or failed on its side. Every
    /// other variant is the catalog's answer, which a retry would repeat.
    pub fn is_transient(&self) -> bool {
        matches!(self, CatalogError::Backend(_))
    }
}

/// Commit times as the backends store them: microseconds since the epoch.
fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn from_micros(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

/// A hash read back from a backend: one that does not parse is corruption, not bad input.
fn parse_pdh(s: &str) -> Result<Pdh, CatalogError> {
    Pdh::parse(s).map_err(|e| CatalogError::Corrupt(e.to_string()))
}

fn show_version(v: Option<u64>) -> String {
    v.map_or_else(|| "no version (absent)".into(), |v| format!("version {v}"))
}

/// A ref name: 1 to 255 bytes of `[A-Za-z0-9._-]` in `/`-separated components, none empty, `.` or `..`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RefName(String);

impl RefName {
    pub fn new(name: impl Into<String>) -> Result<Self, CatalogError> {
        let name = name.into();
        let why = if name.is_empty() {
            Some("empty")
        } else if name.len() > 255 {
            Some("longer than 255 bytes")
        } else if !name.bytes().all(Self::is_name_byte) {
            Some("only letters, digits, '.', '_', '-' and '/' are allowed")
        } else if name.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            Some("empty, '.' or '..' path component")
        } else {
            None
        };
        match why {
            Some(why) => Err(CatalogError::InvalidRef { name, why }),
            None => Ok(Self(name)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a ref name may hold this byte: letters, digits, `.`, `_`, `-` and `/`.
    pub fn is_name_byte(b: u8) -> bool {
        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/')
    }
}

impl fmt::Display for RefName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RefName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RefName({:?})", self.0)
    }
}

/// A committed collection: stripped normalized manifest text and its PDH. The constructors guarantee that the
/// PDH names the text, and that the text parses back (so a committed collection can always be read).
#[derive(Clone, PartialEq, Eq)]
pub struct CollectionRecord {
    pdh: Pdh,
    manifest: String,
}

impl CollectionRecord {
    /// Refuses trees the parser would refuse to read back (nested deeper than [`MAX_DEPTH`]).
    pub fn new(manifest: &Manifest) -> Result<Self, CatalogError> {
        let depth = manifest.depth();
        if depth > MAX_DEPTH {
            return Err(CatalogError::Unrepresentable(format!(
                "directories nest {depth} deep, more than the {MAX_DEPTH} a manifest may hold"
            )));
        }
        let text = manifest.to_stripped_text();
        Ok(Self { pdh: Pdh::of_text(text.as_bytes()), manifest: text })
    }

    /// Parses (strictly), normalizes and strips `text`.
    pub fn from_text(text: &str) -> Result<Self, CatalogError> {
        Self::new(&Manifest::parse(text.as_bytes())?)
    }

    /// Rebuilds a record read back from storage, checking that the text still hashes to its PDH.
    pub fn from_stored(pdh: Pdh, manifest: String) -> Result<Self, CatalogError> {
        let actual = Pdh::of_text(manifest.as_bytes());
        if actual != pdh {
            return Err(CatalogError::Corrupt(format!("collection {pdh}: stored manifest text hashes to {actual}")));
        }
        Ok(Self { pdh, manifest })
    }

    pub fn pdh(&self) -> Pdh {
        self.pdh
    }

    pub fn manifest_text(&self) -> &str {
        &self.manifest
    }

    pub fn manifest(&self) -> Result<Manifest, CatalogError> {
        Ok(Manifest::parse(self.manifest.as_bytes())?)
    }

    /// The tree to show for this record: as [`CollectionRecord::manifest`] reads it, except that a manifest
    /// another writer put in the catalog may hold names POSIX cannot (see [`Manifest::parse_foreign`]); those
    /// are presented under other names, each with a warning in the log, instead of refusing to mount.
    pub fn presented_manifest(&self) -> Result<Manifest, CatalogError> {
        let (m, renamed) = Manifest::parse_foreign(self.manifest.as_bytes())?;
        for r in &renamed {
            tracing::warn!(
                collection = %self.pdh,
                original = %String::from_utf8_lossy(&r.original),
                shown_as = %String::from_utf8_lossy(&r.presented),
                why = r.why,
                "a name of this collection is shown differently"
            );
        }
        Ok(m)
    }
}

impl fmt::Debug for CollectionRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CollectionRecord({})", self.pdh)
    }
}

/// A request to move a ref to a new collection.
#[derive(Debug, Clone)]
pub struct Commit {
    pub name: RefName,
    /// The version the new tree was based on; `None` when the ref must not exist yet.
    pub expected: Option<u64>,
    pub record: CollectionRecord,
    /// What the manifest cannot say (modes, mtimes, symlinks, properties), opaque to the catalog.
    pub sidecar: Vec<u8>,
    pub committer: String,
    pub message: String,
    /// Who commits: the catalog checks that it may write the ref, in the commit's own transaction, and a ref
    /// the commit creates gets its [`Writer::new_ref`]. `None`: unchecked (the library used directly), and a
    /// ref created gets [`RefAccess::LEGACY`].
    pub writer: Option<Writer>,
}

/// One version of a ref.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub name: RefName,
    /// 1 for the first commit, then +1 per commit.
    pub version: u64,
    pub pdh: Pdh,
    /// The hash of this version's sidecar (`md5+length` of its bytes, formed like a PDH); see
    /// [`Catalog::get_sidecar`].
    pub sidecar: Pdh,
    /// The PDH of the previous version, if any.
    pub parent: Option<Pdh>,
    /// Set by the catalog when the commit lands.
    pub committed_at: SystemTime,
    pub committer: String,
    pub message: String,
}

#[async_trait]
pub trait Catalog: Send + Sync + fmt::Debug {
    /// Stores a collection (a no-op when it is already stored).
    async fn put_collection(&self, record: &CollectionRecord) -> Result<(), CatalogError>;

    async fn get_collection(&self, pdh: &Pdh) -> Result<Option<CollectionRecord>, CatalogError>;

    /// A sidecar by its hash ([`Version::sidecar`]), checked against it.
    async fn get_sidecar(&self, id: &Pdh) -> Result<Option<Vec<u8>>, CatalogError>;

    /// Atomically stores the collection and the sidecar and moves the ref to them, if the ref is still at
    /// `commit.expected`.
    /// Durable when it returns `Ok`.
    async fn commit(&self, commit: &Commit) -> Result<Version, CatalogError>;

    /// The current version of a ref.
    async fn head(&self, name: &RefName) -> Result<Option<Version>, CatalogError>;

    /// The current version of every ref, by name.
    async fn list_refs(&self) -> Result<Vec<Version>, CatalogError>;

    /// Every version of a ref, oldest first.
    async fn history(&self, name: &RefName) -> Result<Vec<Version>, CatalogError>;

    /// A ref's owner, group and mode; `None` for a ref that does not exist (never committed nor created).
    async fn access(&self, name: &RefName) -> Result<Option<RefAccess>, CatalogError>;

    /// The owner, group and mode of every ref that has them (every ref committed or created), by name.
    async fn list_access(&self) -> Result<Vec<(RefName, RefAccess)>, CatalogError>;

    /// Creates the ref (with no version yet) owned as `access` says, unless it exists; returns what the ref
    /// has then: `access`, or the record of whoever created it first.
    async fn create_ref(&self, name: &RefName, access: &RefAccess) -> Result<RefAccess, CatalogError>;

    /// Changes a ref's owner, group or mode as `by`, checked ([`RefAccess::changed`]) and applied in one
    /// transaction. [`CatalogError::NoSuchRef`] for a ref that does not exist.
    async fn change_access(
        &self,
        name: &RefName,
        change: &AccessChange,
        by: &Principal,
    ) -> Result<RefAccess, CatalogError>;
}

/// What a commit does with a ref's record as it is (`current`, none for a new ref): the record to insert for a
/// new ref, once the writer is checked. Shared by the backends so that they decide alike.
fn commit_access(commit: &Commit, current: Option<RefAccess>) -> Result<Option<RefAccess>, CatalogError> {
    match (current, &commit.writer) {
        (Some(a), Some(w)) => {
            access::check(commit.name.as_str(), &a, &w.principal, Need::Write)?;
            Ok(None)
        }
        (Some(_), None) => Ok(None),
        (None, Some(w)) => Ok(Some(w.new_ref)),
        (None, None) => Ok(Some(RefAccess::LEGACY)),
    }
}

/// A record read back from a backend; numbers out of range are corruption.
fn stored_access(name: &str, owner: i64, gid: i64, mode: i64) -> Result<RefAccess, CatalogError> {
    let bad = || CatalogError::Corrupt(format!("ref {name:?}: owner {owner}, group {gid}, mode {mode:o}"));
    let access = RefAccess {
        owner: u32::try_from(owner).map_err(|_| bad())?,
        gid: u32::try_from(gid).map_err(|_| bad())?,
        mode: u32::try_from(mode).map_err(|_| bad())?,
    };
    access::check_mode(access.mode).map_err(|_| bad())?;
    Ok(access)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_names() {
        for ok in ["a", "job-42", "proj/run_1.out", &"x".repeat(255)] {
            assert!(RefName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/a", "a/", "a//b", "a/./b", "..", "a b", "a:b", "é", &"x".repeat(256)] {
            assert!(matches!(RefName::new(bad), Err(CatalogError::InvalidRef { .. })), "{bad}");
        }
    }

    #[test]
    fn records_are_stripped_and_checked() {
        let r = CollectionRecord::from_text(
            ". acbd18db4cc2f85cedef654fccc4a4d8+3+A0123456789abcdef0123456789abcdef01234567@5f5e1000 0:3:foo\n",
        )
        .unwrap();
        assert_eq!(r.manifest_text(), ". acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:foo\n");
        assert_eq!(r.pdh(), Pdh::of_text(r.manifest_text().as_bytes()));
        assert!(CollectionRecord::from_stored(r.pdh(), r.manifest_text().into()).is_ok());
        assert!(matches!(
            CollectionRecord::from_stored(r.pdh(), ". acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:fox\n".into()),
            Err(CatalogError::Corrupt(_))
        ));
        assert!(matches!(CollectionRecord::from_text(". x 0:1:a\n"), Err(CatalogError::BadManifest(_))));
    }

    #[test]
    fn trees_too_deep_to_read_back_are_refused() {
        fn build(depth: usize) -> Manifest {
            let mut m = Manifest::new();
            let mut d = m.root_mut();
            for _ in 0..depth {
                d = d.subdir(b"d").unwrap();
            }
            d.file(b"f").unwrap();
            m
        }
        let ok = CollectionRecord::new(&build(MAX_DEPTH)).unwrap();
        assert!(ok.manifest().is_ok(), "what is accepted reads back");
        let e = CollectionRecord::new(&build(MAX_DEPTH + 1)).unwrap_err();
        assert!(matches!(e, CatalogError::Unrepresentable(_)), "{e}");
    }
}
