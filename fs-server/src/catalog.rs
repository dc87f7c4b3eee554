//! The catalog: committed collections (manifest text + sidecar metadata, by PDH), and named **refs** with their
//! full version history.
//!
//! A ref moves only by [`Catalog::commit`], a compare-and-swap on the ref's version number: the committer says
//! which version its tree was based on, and if another commit got there first it gets
//! [`CatalogError::Conflict`] and nothing changes — two writers never lose a commit silently. Versions are numbers
//! rather than hashes so that A→B→A histories cannot fool the check.
//!
//! [`SqliteCatalog`] is the embedded default. [`conformance`] is the backend-independent test suite every
//! implementation must pass.

#[cfg(any(test, feature = "test-suite"))]
pub mod conformance;
mod sqlite;

use std::fmt;
use std::time::SystemTime;

use async_trait::async_trait;

pub use sqlite::SqliteCatalog;

use crate::manifest::{Manifest, ParseError, Pdh};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("invalid ref name {name:?}: {why}")]
    InvalidRef { name: String, why: &'static str },
    #[error("commit conflict on ref {name:?}: expected {}, but the ref is at {}", show_version(*.expected), show_version(*.current))]
    Conflict {
        name: String,
        expected: Option<u64>,
        current: Option<u64>,
    },
    #[error("invalid manifest: {0}")]
    BadManifest(#[from] ParseError),
    #[error("catalog data is corrupt: {0}")]
    Corrupt(String),
    #[error("catalog backend: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
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
        } else if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
        {
            Some("only letters, digits, '.', '_', '-' and '/' are allowed")
        } else if name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
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

/// A committed collection: stripped normalized manifest text, its PDH, and the sidecar metadata (modes, mtimes,
/// symlinks, properties) that the manifest cannot carry. The constructors guarantee that the PDH names the text.
#[derive(Clone, PartialEq, Eq)]
pub struct CollectionRecord {
    pdh: Pdh,
    manifest: String,
    sidecar: Vec<u8>,
}

impl CollectionRecord {
    pub fn new(manifest: &Manifest, sidecar: Vec<u8>) -> Self {
        let text = manifest.to_stripped_text();
        Self {
            pdh: Pdh::of_text(text.as_bytes()),
            manifest: text,
            sidecar,
        }
    }

    /// Parses (strictly), normalizes and strips `text`.
    pub fn from_text(text: &str, sidecar: Vec<u8>) -> Result<Self, CatalogError> {
        Ok(Self::new(&Manifest::parse(text.as_bytes())?, sidecar))
    }

    /// Rebuilds a record read back from storage, checking that the text still hashes to its PDH.
    pub fn from_stored(pdh: Pdh, manifest: String, sidecar: Vec<u8>) -> Result<Self, CatalogError> {
        let actual = Pdh::of_text(manifest.as_bytes());
        if actual != pdh {
            return Err(CatalogError::Corrupt(format!(
                "collection {pdh}: stored manifest text hashes to {actual}"
            )));
        }
        Ok(Self {
            pdh,
            manifest,
            sidecar,
        })
    }

    pub fn pdh(&self) -> Pdh {
        self.pdh
    }

    pub fn manifest_text(&self) -> &str {
        &self.manifest
    }

    pub fn sidecar(&self) -> &[u8] {
        &self.sidecar
    }

    pub fn manifest(&self) -> Result<Manifest, CatalogError> {
        Ok(Manifest::parse(self.manifest.as_bytes())?)
    }
}

impl fmt::Debug for CollectionRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CollectionRecord({}, {} bytes of sidecar)",
            self.pdh,
            self.sidecar.len()
        )
    }
}

/// A request to move a ref to a new collection.
#[derive(Debug, Clone)]
pub struct Commit {
    pub name: RefName,
    /// The version the new tree was based on; `None` when the ref must not exist yet.
    pub expected: Option<u64>,
    pub record: CollectionRecord,
    pub committer: String,
    pub message: String,
}

/// One version of a ref.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub name: RefName,
    /// 1 for the first commit, then +1 per commit.
    pub version: u64,
    pub pdh: Pdh,
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

    /// Atomically stores the collection and moves the ref to it, if the ref is still at `commit.expected`.
    /// Durable when it returns `Ok`.
    async fn commit(&self, commit: &Commit) -> Result<Version, CatalogError>;

    /// The current version of a ref.
    async fn head(&self, name: &RefName) -> Result<Option<Version>, CatalogError>;

    /// The current version of every ref, by name.
    async fn list_refs(&self) -> Result<Vec<Version>, CatalogError>;

    /// Every version of a ref, oldest first.
    async fn history(&self, name: &RefName) -> Result<Vec<Version>, CatalogError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_names() {
        for ok in ["a", "job-42", "proj/run_1.out", &"x".repeat(255)] {
            assert!(RefName::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "a/./b",
            "..",
            "a b",
            "a:b",
            "é",
            &"x".repeat(256),
        ] {
            assert!(
                matches!(RefName::new(bad), Err(CatalogError::InvalidRef { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn records_are_stripped_and_checked() {
        let r = CollectionRecord::from_text(
            ". acbd18db4cc2f85cedef654fccc4a4d8+3+A0123456789abcdef0123456789abcdef01234567@5f5e1000 0:3:foo\n",
            b"{}".to_vec(),
        )
        .unwrap();
        assert_eq!(
            r.manifest_text(),
            ". acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:foo\n"
        );
        assert_eq!(r.pdh(), Pdh::of_text(r.manifest_text().as_bytes()));
        assert!(CollectionRecord::from_stored(r.pdh(), r.manifest_text().into(), vec![]).is_ok());
        assert!(matches!(
            CollectionRecord::from_stored(
                r.pdh(),
                ". acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:fox\n".into(),
                vec![]
            ),
            Err(CatalogError::Corrupt(_))
        ));
        assert!(matches!(
            CollectionRecord::from_text(". x 0:1:a\n", vec![]),
            Err(CatalogError::BadManifest(_))
        ));
    }
}
