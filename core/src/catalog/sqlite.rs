//! The SQLite catalog: the embedded default, one database file in the state directory.
//!
//! WAL mode with `synchronous=FULL`, so a commit that returned is on disk. A commit runs in a `BEGIN IMMEDIATE`
//! transaction (the write lock is taken before the ref is read), and `(name, version)` is the primary key of the
//! version table, so two committers — threads, or processes sharing the file — cannot both take the same version.
//! rusqlite is synchronous: every call runs on tokio's blocking pool.
//!
//! Schema 2 added the `refs` table (owner, group and mode of each ref); a schema-1 file is migrated when it is
//! opened, its refs given the owner the caller names.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{
    AccessChange, Catalog, CatalogError, CollectionRecord, Commit, Principal, RefAccess, RefName, Version,
    commit_access, from_micros, micros, parse_pdh, stored_access,
};
use crate::manifest::Pdh;

const SCHEMA_VERSION: i64 = 2;

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
CREATE TABLE IF NOT EXISTS refs (
    name  TEXT PRIMARY KEY,
    owner INTEGER NOT NULL,
    gid   INTEGER NOT NULL,
    mode  INTEGER NOT NULL
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
    /// Opens (creating if needed) the catalog database at `path`; refs of an older file are given
    /// [`RefAccess::LEGACY`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, CatalogError> {
        Self::open_migrating(path, RefAccess::LEGACY)
    }

    /// Opens (creating if needed) the catalog database at `path`; refs of a file made before refs had owners
    /// are given `legacy`.
    pub fn open_migrating(path: impl AsRef<Path>, legacy: RefAccess) -> Result<Self, CatalogError> {
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
        let mut conn = conn;
        // One transaction, taken before the version is read again: two processes opening an old file at once
        // migrate it once.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(backend)?;
        if version < SCHEMA_VERSION {
            tx.execute_batch(SCHEMA).map_err(backend)?;
            let moved = tx
                .execute(
                    "INSERT OR IGNORE INTO refs (name, owner, gid, mode) SELECT DISTINCT name, ?1, ?2, ?3 FROM versions",
                    params![legacy.owner, legacy.gid, legacy.mode],
                )
                .map_err(backend)?;
            if moved > 0 {
                tracing::info!(refs = moved, owner = %legacy, "refs made before refs had owners now have one");
            }
            tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(backend)?;
        }
        tx.commit().map_err(backend)?;
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

fn access_of(conn: &Connection, name: &str) -> Result<Option<RefAccess>, CatalogError> {
    let row: Option<(i64, i64, i64)> = conn
        .query_row("SELECT owner, gid, mode FROM refs WHERE name = ?1", params![name], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()
        .map_err(backend)?;
    row.map(|(o, g, m)| stored_access(name, o, g, m)).transpose()
}

fn insert_access(conn: &Connection, name: &str, a: &RefAccess) -> Result<(), CatalogError> {
    conn.execute(
        "INSERT OR IGNORE INTO refs (name, owner, gid, mode) VALUES (?1, ?2, ?3, ?4)",
        params![name, a.owner, a.gid, a.mode],
    )
    .map_err(backend)?;
    Ok(())
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
            // Permission first: a writer who may not write the ref learns nothing of its versions.
            let new_access = commit_access(&commit, access_of(&tx, commit.name.as_str())?)?;
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
            if let Some(new) = new_access {
                insert_access(&tx, commit.name.as_str(), &new)?;
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

    async fn access(&self, name: &RefName) -> Result<Option<RefAccess>, CatalogError> {
        let name = name.clone();
        self.run(move |conn| access_of(conn, name.as_str())).await
    }

    async fn list_access(&self) -> Result<Vec<(RefName, RefAccess)>, CatalogError> {
        self.run(|conn| {
            let mut stmt = conn.prepare("SELECT name, owner, gid, mode FROM refs ORDER BY name").map_err(backend)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .map_err(backend)?;
            rows.map(|r| {
                let (name, o, g, m) = r.map_err(backend)?;
                let access = stored_access(&name, o, g, m)?;
                Ok((RefName::new(name).map_err(|e| CatalogError::Corrupt(e.to_string()))?, access))
            })
            .collect()
        })
        .await
    }

    async fn create_ref(&self, name: &RefName, access: &RefAccess) -> Result<RefAccess, CatalogError> {
        let (name, access) = (name.clone(), *access);
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            insert_access(&tx, name.as_str(), &access)?;
            let now = access_of(&tx, name.as_str())?.ok_or_else(|| CatalogError::NoSuchRef(name.to_string()))?;
            tx.commit().map_err(backend)?;
            Ok(now)
        })
        .await
    }

    async fn change_access(
        &self,
        name: &RefName,
        change: &AccessChange,
        by: &Principal,
    ) -> Result<RefAccess, CatalogError> {
        let (name, change, by) = (name.clone(), *change, by.clone());
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let now = access_of(&tx, name.as_str())?.ok_or_else(|| CatalogError::NoSuchRef(name.to_string()))?;
            let new = now.changed(name.as_str(), &change, &by)?;
            tx.execute(
                "UPDATE refs SET owner = ?2, gid = ?3, mode = ?4 WHERE name = ?1",
                params![name.as_str(), new.owner, new.gid, new.mode],
            )
            .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(new)
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
            writer: None,
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
                writer: None,
            };
            cat.commit(&commit).await.unwrap();
        }
        let cat = SqliteCatalog::open(&path).unwrap();
        let head = cat.head(&name).await.unwrap().unwrap();
        assert_eq!(head.pdh, rec.pdh());
        assert_eq!(cat.get_sidecar(&head.sidecar).await.unwrap().unwrap(), [1, 2]);
        assert_eq!(cat.get_collection(&rec.pdh()).await.unwrap().unwrap(), rec);
    }

    /// A file made before refs had owners (schema 1: no `refs` table) gets a record for each ref it holds, with
    /// the owner the caller names, once; the next open changes nothing, and new refs get their creator.
    #[tokio::test]
    async fn an_older_file_gets_owners_for_its_refs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        let old = SqliteCatalog::open(&path).unwrap();
        for name in ["a", "b/c"] {
            let rec = crate::catalog::conformance::record(name);
            let commit = Commit {
                name: RefName::new(name).unwrap(),
                expected: None,
                record: rec,
                sidecar: vec![],
                committer: "t".into(),
                message: "m".into(),
                writer: None,
            };
            old.commit(&commit).await.unwrap();
        }
        drop(old);
        let raw = Connection::open(&path).unwrap();
        raw.execute_batch("DROP TABLE refs; PRAGMA user_version = 1;").unwrap();
        drop(raw);

        let legacy = RefAccess { owner: 1000, gid: 100, mode: 0o640 };
        let cat = SqliteCatalog::open_migrating(&path, legacy).unwrap();
        let all = cat.list_access().await.unwrap();
        let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b/c"]);
        assert!(all.iter().all(|(_, a)| *a == legacy), "{all:?}");
        let mine = crate::catalog::AccessChange { mode: Some(0o600), ..Default::default() };
        cat.change_access(&RefName::new("a").unwrap(), &mine, &crate::catalog::Principal::root()).await.unwrap();
        drop(cat);
        let again = SqliteCatalog::open_migrating(&path, RefAccess::LEGACY).unwrap();
        let a = again.access(&RefName::new("a").unwrap()).await.unwrap().unwrap();
        assert_eq!(a, RefAccess { mode: 0o600, ..legacy }, "a migrated file is not migrated again");
    }

    #[tokio::test]
    async fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
        assert!(matches!(SqliteCatalog::open(&path), Err(CatalogError::Corrupt(_))));
    }
}
