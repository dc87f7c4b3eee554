//! The SQLite catalog: the embedded default, one database file in the state directory.
//!
//! WAL mode with `synchronous=FULL`, so a commit that returned is on disk. A commit runs in a `BEGIN IMMEDIATE`
//! transaction (the write lock is taken before the ref is read), and `(name, version)` is the primary key of the
//! version table, so two committers — threads, or processes sharing the file — cannot both take the same version.
//! rusqlite is synchronous: every call runs on tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{Catalog, CatalogError, CollectionRecord, Commit, RefName, Version, from_micros, micros, parse_pdh};
use crate::manifest::Pdh;

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS collections (
    pdh        TEXT PRIMARY KEY,
    manifest   TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sidecars (
    id   TEXT PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    name         TEXT NOT NULL,
    version      INTEGER NOT NULL CHECK (version >= 1),
    pdh          TEXT NOT NULL REFERENCES collections(pdh),
    sidecar      TEXT NOT NULL REFERENCES sidecars(id),
    parent       TEXT REFERENCES collections(pdh),
    committed_at INTEGER NOT NULL,
    committer    TEXT NOT NULL,
    message      TEXT NOT NULL,
    PRIMARY KEY (name, version)
) WITHOUT ROWID;
";

#[derive(Debug, Clone)]
pub struct SqliteCatalog {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

fn backend(e: impl std::error::Error + Send + Sync + 'static) -> CatalogError {
    CatalogError::Backend(Box::new(e))
}

impl SqliteCatalog {
    /// Opens (creating if needed) the catalog database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, CatalogError> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(backend)?;
        }
        let conn = Connection::open(&path).map_err(backend)?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(backend)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(backend)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(backend)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(backend)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(backend)?;
        if version > SCHEMA_VERSION {
            return Err(CatalogError::Corrupt(format!(
                "{} has schema version {version}, newer than this cafs understands ({SCHEMA_VERSION})",
                path.display()
            )));
        }
        conn.execute_batch(SCHEMA).map_err(backend)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(backend)?;
        Ok(Self { conn: Arc::new(Mutex::new(conn)), path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, CatalogError> + Send + 'static,
    ) -> Result<T, CatalogError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock leaves SQLite itself consistent (its transaction rolls back), so a
            // poisoned lock is safe to keep using.
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(backend)?
    }
}

const VERSION_COLUMNS: &str = "name, version, pdh, sidecar, parent, committed_at, committer, message";

/// A version row as SQLite returns it, before validation.
type RawVersion = (String, i64, String, String, Option<String>, i64, String, String);

fn row_to_version(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawVersion> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
}

fn to_version(raw: RawVersion) -> Result<Version, CatalogError> {
    let (name, version, pdh, sidecar, parent, at, committer, message) = raw;
    Ok(Version {
        name: RefName::new(name).map_err(|e| CatalogError::Corrupt(e.to_string()))?,
        version: u64::try_from(version).map_err(|_| CatalogError::Corrupt(format!("negative version {version}")))?,
        pdh: parse_pdh(&pdh)?,
        sidecar: parse_pdh(&sidecar)?,
        parent: parent.as_deref().map(parse_pdh).transpose()?,
        committed_at: from_micros(at),
        committer,
        message,
    })
}

fn head_of(conn: &Connection, name: &str) -> Result<Option<Version>, CatalogError> {
    conn.query_row(
        &format!("SELECT {VERSION_COLUMNS} FROM versions WHERE name = ?1 ORDER BY version DESC LIMIT 1"),
        params![name],
        row_to_version,
    )
    .optional()
    .map_err(backend)?
    .map(to_version)
    .transpose()
}

fn insert_collection(conn: &Connection, record: &CollectionRecord) -> Result<(), CatalogError> {
    conn.execute(
        "INSERT OR IGNORE INTO collections (pdh, manifest, created_at) VALUES (?1, ?2, ?3)",
        params![record.pdh().to_string(), record.manifest_text(), micros(SystemTime::now())],
    )
    .map_err(backend)?;
    Ok(())
}

/// Stores a sidecar under its hash (once) and returns the hash.
fn insert_sidecar(conn: &Connection, data: &[u8]) -> Result<Pdh, CatalogError> {
    let id = Pdh::of_text(data);
    conn.execute("INSERT OR IGNORE INTO sidecars (id, data) VALUES (?1, ?2)", params![id.to_string(), data])
        .map_err(backend)?;
    Ok(id)
}

#[async_trait]
impl Catalog for SqliteCatalog {
    async fn put_collection(&self, record: &CollectionRecord) -> Result<(), CatalogError> {
        let record = record.clone();
        self.run(move |conn| insert_collection(conn, &record)).await
    }

    async fn get_collection(&self, pdh: &Pdh) -> Result<Option<CollectionRecord>, CatalogError> {
        let pdh = *pdh;
        self.run(move |conn| {
            let text: Option<String> = conn
                .query_row("SELECT manifest FROM collections WHERE pdh = ?1", params![pdh.to_string()], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            text.map(|text| CollectionRecord::from_stored(pdh, text)).transpose()
        })
        .await
    }

    async fn get_sidecar(&self, id: &Pdh) -> Result<Option<Vec<u8>>, CatalogError> {
        let id = *id;
        self.run(move |conn| {
            let data: Option<Vec<u8>> = conn
                .query_row("SELECT data FROM sidecars WHERE id = ?1", params![id.to_string()], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            match data {
                Some(d) if Pdh::of_text(&d) != id => {
                    Err(CatalogError::Corrupt(format!("sidecar {id}: stored bytes hash to {}", Pdh::of_text(&d))))
                }
                other => Ok(other),
            }
        })
        .await
    }

    async fn commit(&self, commit: &Commit) -> Result<Version, CatalogError> {
        let commit = commit.clone();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let head = head_of(&tx, commit.name.as_str())?;
            let current = head.as_ref().map(|h| h.version);
            if current != commit.expected {
                // Dropping the transaction rolls it back: a refused commit changes nothing.
                return Err(CatalogError::Conflict {
                    name: commit.name.to_string(),
                    expected: commit.expected,
                    current,
                });
            }
            insert_collection(&tx, &commit.record)?;
            let sidecar = insert_sidecar(&tx, &commit.sidecar)?;
            let version = Version {
                name: commit.name.clone(),
                version: current.unwrap_or(0) + 1,
                pdh: commit.record.pdh(),
                sidecar,
                parent: head.map(|h| h.pdh),
                committed_at: SystemTime::now(),
                committer: commit.committer.clone(),
                message: commit.message.clone(),
            };
            tx.execute(
                &format!("INSERT INTO versions ({VERSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
                params![
                    version.name.as_str(),
                    i64::try_from(version.version).map_err(backend)?,
                    version.pdh.to_string(),
                    version.sidecar.to_string(),
                    version.parent.map(|p| p.to_string()),
                    micros(version.committed_at),
                    version.committer,
                    version.message,
                ],
            )
            .map_err(backend)?;
            tx.commit().map_err(backend)?;
            // Report the time as stored (microsecond precision), so that head() returns an equal Version.
            Ok(Version { committed_at: from_micros(micros(version.committed_at)), ..version })
        })
        .await
    }

    async fn head(&self, name: &RefName) -> Result<Option<Version>, CatalogError> {
        let name = name.clone();
        self.run(move |conn| head_of(conn, name.as_str())).await
    }

    async fn list_refs(&self) -> Result<Vec<Version>, CatalogError> {
        self.run(|conn| {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {VERSION_COLUMNS} FROM versions v \
                     WHERE version = (SELECT MAX(version) FROM versions w WHERE w.name = v.name) ORDER BY name"
                ))
                .map_err(backend)?;
            let rows = stmt.query_map([], row_to_version).map_err(backend)?;
            rows.map(|r| to_version(r.map_err(backend)?)).collect()
        })
        .await
    }

    async fn history(&self, name: &RefName) -> Result<Vec<Version>, CatalogError> {
        let name = name.clone();
        self.run(move |conn| {
            let mut stmt = conn
                .prepare(&format!("SELECT {VERSION_COLUMNS} FROM versions WHERE name = ?1 ORDER BY version"))
                .map_err(backend)?;
            let rows = stmt.query_map(params![name.as_str()], row_to_version).map_err(backend)?;
            rows.map(|r| to_version(r.map_err(backend)?)).collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::catalog::conformance;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let mut n = 0;
        conformance::run_all(|| {
            n += 1;
            let path = dir.path().join(format!("catalog-{n}.sqlite"));
            // Two connections to one file, as two processes on one node would have.
            let a: Arc<dyn Catalog> = Arc::new(SqliteCatalog::open(&path).unwrap());
            let b: Arc<dyn Catalog> = Arc::new(SqliteCatalog::open(&path).unwrap());
            async move { (a, b) }
        })
        .await;
    }

    #[tokio::test]
    async fn tampered_manifest_text_is_reported_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let cat = SqliteCatalog::open(dir.path().join("c.sqlite")).unwrap();
        let rec = CollectionRecord::from_text(". acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:foo\n").unwrap();
        let commit = Commit {
            name: RefName::new("r").unwrap(),
            expected: None,
            record: rec.clone(),
            sidecar: b"{\"mode\":420}".to_vec(),
            committer: "t".into(),
            message: "m".into(),
        };
        let v = cat.commit(&commit).await.unwrap();
        let raw = Connection::open(dir.path().join("c.sqlite")).unwrap();
        raw.execute("UPDATE collections SET manifest = replace(manifest, 'foo', 'bar')", []).unwrap();
        raw.execute("UPDATE sidecars SET data = CAST('{\"mode\":421}' AS BLOB)", []).unwrap();
        let e = cat.get_collection(&rec.pdh()).await.unwrap_err();
        assert!(matches!(e, CatalogError::Corrupt(_)), "{e}");
        let e = cat.get_sidecar(&v.sidecar).await.unwrap_err();
        assert!(matches!(e, CatalogError::Corrupt(_)), "{e}");
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/c.sqlite");
        let rec = CollectionRecord::from_text(". acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:foo\n").unwrap();
        let name = RefName::new("r").unwrap();
        {
            let cat = SqliteCatalog::open(&path).unwrap();
            let commit = Commit {
                name: name.clone(),
                expected: None,
                record: rec.clone(),
                sidecar: vec![1, 2],
                committer: "t".into(),
                message: "m".into(),
            };
            cat.commit(&commit).await.unwrap();
        }
        let cat = SqliteCatalog::open(&path).unwrap();
        let head = cat.head(&name).await.unwrap().unwrap();
        assert_eq!(head.pdh, rec.pdh());
        assert_eq!(cat.get_sidecar(&head.sidecar).await.unwrap().unwrap(), [1, 2]);
        assert_eq!(cat.get_collection(&rec.pdh()).await.unwrap().unwrap(), rec);
    }

    #[tokio::test]
    async fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
        assert!(matches!(SqliteCatalog::open(&path), Err(CatalogError::Corrupt(_))));
    }
}
