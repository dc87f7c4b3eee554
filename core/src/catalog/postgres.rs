//! The PostgreSQL catalog: one database shared by every worker node of a cluster.
//!
//! The same tables as the SQLite catalog (collections by PDH, sidecars by hash, the version history of every
//! ref). A ref moves by inserting its next version: `(name, version)` is the primary key, so of two nodes that
//! both found the ref at version N and both insert N+1, exactly one succeeds and the other gets a
//! unique-violation, reported as [`CatalogError::Conflict`] with nothing changed (its transaction rolls back).
//! That holds across any number of nodes without locks held between statements. Commits are durable when
//! PostgreSQL acknowledges them (`synchronous_commit` as the server is configured; on by default).
//!
//! Connections come from a small pool (`deadpool-postgres`); TLS (OpenSSL) is used as the connection string's
//! `sslmode` asks. The schema is created on first use under an advisory lock, so two nodes starting at once do
//! not race, and a database made by a newer cafs is refused rather than misread. Schema 2 added the `refs`
//! table (owner, group and mode of each ref); a schema-1 database is migrated under the same lock, its refs
//! given the owner the first node to start names. A commit and a chown or chmod of one ref lock its `refs` row,
//! so the permission a commit is checked against is the one it lands under, on every node.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;

use super::{
    AccessChange, Catalog, CatalogError, CollectionRecord, Commit, Principal, RefAccess, RefName, Version,
    commit_access, from_micros, micros, parse_pdh, stored_access,
};
use crate::manifest::Pdh;

const SCHEMA_VERSION: i32 = 2;
/// The advisory lock key schema changes are made under (any constant; "cafs" in ASCII).
const SCHEMA_LOCK: i64 = 0x6361_6673;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS cafs_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS collections (
    pdh        TEXT PRIMARY KEY,
    manifest   TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS sidecars (
    id   TEXT PRIMARY KEY,
    data BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    name         TEXT COLLATE "C" NOT NULL,
    version      BIGINT NOT NULL CHECK (version >= 1),
    pdh          TEXT NOT NULL REFERENCES collections(pdh),
    sidecar      TEXT NOT NULL REFERENCES sidecars(id),
    parent       TEXT REFERENCES collections(pdh),
    committed_at BIGINT NOT NULL,
    committer    TEXT NOT NULL,
    message      TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS refs (
    name  TEXT COLLATE "C" PRIMARY KEY,
    owner BIGINT NOT NULL,
    gid   BIGINT NOT NULL,
    mode  BIGINT NOT NULL
);
"#;

const VERSION_COLUMNS: &str = "name, version, pdh, sidecar, parent, committed_at, committer, message";

#[derive(Clone)]
pub struct PostgresCatalog {
    pool: Pool,
    /// Where it is, without the password, for logs.
    describe: String,
}

impl std::fmt::Debug for PostgresCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PostgresCatalog({})", self.describe)
    }
}

fn backend(e: impl std::error::Error + Send + Sync + 'static) -> CatalogError {
    CatalogError::Backend(Box::new(e))
}

/// A PostgreSQL error with what the server said (tokio-postgres shows only "db error" by itself).
fn pg(e: tokio_postgres::Error) -> CatalogError {
    let detail = match (e.as_db_error(), std::error::Error::source(&e)) {
        (Some(db), _) => format!(": {}", db.message()),
        (None, Some(src)) => format!(": {src}"),
        (None, None) => String::new(),
    };
    CatalogError::Backend(format!("PostgreSQL: {e}{detail}").into())
}

fn to_version(r: &tokio_postgres::Row) -> Result<Version, CatalogError> {
    let get = |e: tokio_postgres::Error| CatalogError::Corrupt(format!("a version row: {e}"));
    let name: String = r.try_get(0).map_err(get)?;
    let version: i64 = r.try_get(1).map_err(get)?;
    let pdh: String = r.try_get(2).map_err(get)?;
    let sidecar: String = r.try_get(3).map_err(get)?;
    let parent: Option<String> = r.try_get(4).map_err(get)?;
    let at: i64 = r.try_get(5).map_err(get)?;
    Ok(Version {
        name: RefName::new(name).map_err(|e| CatalogError::Corrupt(e.to_string()))?,
        version: u64::try_from(version).map_err(|_| CatalogError::Corrupt(format!("negative version {version}")))?,
        pdh: parse_pdh(&pdh)?,
        sidecar: parse_pdh(&sidecar)?,
        parent: parent.as_deref().map(parse_pdh).transpose()?,
        committed_at: from_micros(at),
        committer: r.try_get(6).map_err(get)?,
        message: r.try_get(7).map_err(get)?,
    })
}

impl PostgresCatalog {
    /// Connects with `url` (`postgresql://user:password@host:port/db?sslmode=...`, or `key=value` form) and
    /// creates the schema if the database has none. Fails if the server cannot be reached.
    pub async fn connect(url: &str, max_connections: usize) -> Result<Self, CatalogError> {
        Self::connect_url_migrating(url, max_connections, RefAccess::LEGACY).await
    }

    /// [`PostgresCatalog::connect`], giving the refs of a database made before refs had owners `legacy`.
    pub async fn connect_url_migrating(
        url: &str,
        max_connections: usize,
        legacy: RefAccess,
    ) -> Result<Self, CatalogError> {
        let config: tokio_postgres::Config =
            url.parse().map_err(|e| CatalogError::Backend(format!("PostgreSQL connection string: {e}").into()))?;
        Self::connect_migrating(config, max_connections, legacy).await
    }

    /// [`PostgresCatalog::connect`] with the settings parsed (a password added from a file, say). The refs
    /// of a database made before refs had owners are given [`RefAccess::LEGACY`].
    pub async fn connect_with(config: tokio_postgres::Config, max_connections: usize) -> Result<Self, CatalogError> {
        Self::connect_migrating(config, max_connections, RefAccess::LEGACY).await
    }

    /// [`PostgresCatalog::connect_with`], giving the refs of a database made before refs had owners `legacy`.
    pub async fn connect_migrating(
        config: tokio_postgres::Config,
        max_connections: usize,
        legacy: RefAccess,
    ) -> Result<Self, CatalogError> {
        let describe = format!(
            "{}@{:?}/{}",
            config.get_user().unwrap_or("?"),
            config.get_hosts().first(),
            config.get_dbname().unwrap_or("?")
        );
        let tls = {
            let builder = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).map_err(backend)?;
            postgres_openssl::MakeTlsConnector::new(builder.build())
        };
        let manager = Manager::from_config(config, tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(1))
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(10)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(backend)?;
        let catalog = Self { pool, describe };
        catalog.migrate(legacy).await?;
        Ok(catalog)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, CatalogError> {
        use deadpool_postgres::PoolError;
        self.pool.get().await.map_err(|e| {
            let why = match e {
                PoolError::Backend(e) => pg(e).to_string(),
                other => other.to_string(),
            };
            CatalogError::Backend(format!("PostgreSQL {}: {why}", self.describe).into())
        })
    }

    async fn migrate(&self, legacy: RefAccess) -> Result<(), CatalogError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK]).await.map_err(pg)?;
        tx.batch_execute(SCHEMA).await.map_err(pg)?;
        let row = tx.query_opt("SELECT version FROM cafs_schema", &[]).await.map_err(pg)?;
        match row.map(|r| r.get::<_, i32>(0)) {
            None => {
                tx.execute("INSERT INTO cafs_schema (version) VALUES ($1)", &[&SCHEMA_VERSION]).await.map_err(pg)?;
            }
            Some(v) if v > SCHEMA_VERSION => {
                return Err(CatalogError::Corrupt(format!(
                    "the database has schema version {v}, newer than this cafs understands ({SCHEMA_VERSION})"
                )));
            }
            Some(v) if v < SCHEMA_VERSION => {
                let moved = tx
                    .execute(
                        "INSERT INTO refs (name, owner, gid, mode) SELECT DISTINCT name, $1::BIGINT, $2::BIGINT, \
                         $3::BIGINT FROM versions ON CONFLICT (name) DO NOTHING",
                        &[&i64::from(legacy.owner), &i64::from(legacy.gid), &i64::from(legacy.mode)],
                    )
                    .await
                    .map_err(pg)?;
                tx.execute("UPDATE cafs_schema SET version = $1", &[&SCHEMA_VERSION]).await.map_err(pg)?;
                tracing::info!(from = v, refs = moved, owner = %legacy, "catalog schema migrated; refs have owners");
            }
            Some(_) => {}
        }
        tx.commit().await.map_err(pg)
    }

    /// The ref's record, its row locked until `c`'s transaction ends when `lock`.
    async fn access_of(
        c: &impl deadpool_postgres::GenericClient,
        name: &str,
        lock: bool,
    ) -> Result<Option<RefAccess>, CatalogError> {
        let sql = if lock {
            "SELECT owner, gid, mode FROM refs WHERE name = $1 FOR UPDATE"
        } else {
            "SELECT owner, gid, mode FROM refs WHERE name = $1"
        };
        let row = c.query_opt(sql, &[&name]).await.map_err(pg)?;
        row.map(|r| stored_access(name, r.get(0), r.get(1), r.get(2))).transpose()
    }

    /// Inserts the ref's record unless it has one, and returns (and locks) the record it has then.
    async fn insert_access(
        c: &impl deadpool_postgres::GenericClient,
        name: &str,
        a: &RefAccess,
    ) -> Result<RefAccess, CatalogError> {
        c.execute(
            "INSERT INTO refs (name, owner, gid, mode) VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
            &[&name, &i64::from(a.owner), &i64::from(a.gid), &i64::from(a.mode)],
        )
        .await
        .map_err(pg)?;
        Self::access_of(c, name, true).await?.ok_or_else(|| CatalogError::NoSuchRef(name.to_string()))
    }

    /// Where this catalog is, for logs (no password).
    pub fn describe(&self) -> &str {
        &self.describe
    }

    async fn head_of(c: &impl deadpool_postgres::GenericClient, name: &str) -> Result<Option<Version>, CatalogError> {
        let row = c
            .query_opt(
                &format!("SELECT {VERSION_COLUMNS} FROM versions WHERE name = $1 ORDER BY version DESC LIMIT 1"),
                &[&name],
            )
            .await
            .map_err(pg)?;
        row.as_ref().map(to_version).transpose()
    }
}

async fn insert_collection(
    c: &impl deadpool_postgres::GenericClient,
    r: &CollectionRecord,
) -> Result<(), CatalogError> {
    c.execute(
        "INSERT INTO collections (pdh, manifest, created_at) VALUES ($1, $2, $3) ON CONFLICT (pdh) DO NOTHING",
        &[&r.pdh().to_string(), &r.manifest_text(), &micros(SystemTime::now())],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

#[async_trait]
impl Catalog for PostgresCatalog {
    async fn put_collection(&self, record: &CollectionRecord) -> Result<(), CatalogError> {
        insert_collection(&self.client().await?, record).await
    }

    async fn get_collection(&self, pdh: &Pdh) -> Result<Option<CollectionRecord>, CatalogError> {
        let c = self.client().await?;
        let row =
            c.query_opt("SELECT manifest FROM collections WHERE pdh = $1", &[&pdh.to_string()]).await.map_err(pg)?;
        row.map(|r| CollectionRecord::from_stored(*pdh, r.get(0))).transpose()
    }

    async fn get_sidecar(&self, id: &Pdh) -> Result<Option<Vec<u8>>, CatalogError> {
        let c = self.client().await?;
        let row = c.query_opt("SELECT data FROM sidecars WHERE id = $1", &[&id.to_string()]).await.map_err(pg)?;
        match row.map(|r| r.get::<_, Vec<u8>>(0)) {
            Some(d) if Pdh::of_text(&d) != *id => {
                Err(CatalogError::Corrupt(format!("sidecar {id}: stored bytes hash to {}", Pdh::of_text(&d))))
            }
            other => Ok(other),
        }
    }

    async fn commit(&self, commit: &Commit) -> Result<Version, CatalogError> {
        let mut c = self.client().await?;
        let name = commit.name.as_str();
        let conflict = |current| CatalogError::Conflict { name: name.to_string(), expected: commit.expected, current };
        let tx = c.transaction().await.map_err(pg)?;
        // The ref's row first, locked: a chmod on another node waits for this commit, or this commit for it.
        let access = Self::access_of(&tx, name, true).await?;
        // Permission first: a writer who may not write the ref learns nothing of its versions.
        let new_access = commit_access(commit, access)?;
        let head = Self::head_of(&tx, name).await?;
        let current = head.as_ref().map(|h| h.version);
        if current != commit.expected {
            return Err(conflict(current));
        }
        if let Some(new) = new_access {
            Self::insert_access(&tx, name, &new).await?;
        }
        insert_collection(&tx, &commit.record).await?;
        let sidecar = Pdh::of_text(&commit.sidecar);
        tx.execute(
            "INSERT INTO sidecars (id, data) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
            &[&sidecar.to_string(), &commit.sidecar],
        )
        .await
        .map_err(pg)?;
        let version = Version {
            name: commit.name.clone(),
            version: current.unwrap_or(0) + 1,
            pdh: commit.record.pdh(),
            sidecar,
            parent: head.map(|h| h.pdh),
            committed_at: from_micros(micros(SystemTime::now())),
            committer: commit.committer.clone(),
            message: commit.message.clone(),
        };
        let inserted = tx
            .execute(
                &format!("INSERT INTO versions ({VERSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"),
                &[
                    &name,
                    &i64::try_from(version.version).map_err(backend)?,
                    &version.pdh.to_string(),
                    &version.sidecar.to_string(),
                    &version.parent.map(|p| p.to_string()),
                    &micros(version.committed_at),
                    &version.committer,
                    &version.message,
                ],
            )
            .await;
        match inserted {
            Ok(_) => {}
            // Another node inserted this version between our read and our insert: it won.
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                drop(tx);
                let now = Self::head_of(&c, name).await?.map(|h| h.version);
                return Err(conflict(now));
            }
            Err(e) => return Err(backend(e)),
        }
        tx.commit().await.map_err(pg)?;
        Ok(version)
    }

    async fn head(&self, name: &RefName) -> Result<Option<Version>, CatalogError> {
        Self::head_of(&self.client().await?, name.as_str()).await
    }

    async fn list_refs(&self) -> Result<Vec<Version>, CatalogError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!("SELECT DISTINCT ON (name) {VERSION_COLUMNS} FROM versions ORDER BY name, version DESC"),
                &[],
            )
            .await
            .map_err(pg)?;
        rows.iter().map(to_version).collect()
    }

    async fn history(&self, name: &RefName) -> Result<Vec<Version>, CatalogError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!("SELECT {VERSION_COLUMNS} FROM versions WHERE name = $1 ORDER BY version"),
                &[&name.as_str()],
            )
            .await
            .map_err(pg)?;
        rows.iter().map(to_version).collect()
    }

    async fn access(&self, name: &RefName) -> Result<Option<RefAccess>, CatalogError> {
        Self::access_of(&self.client().await?, name.as_str(), false).await
    }

    async fn list_access(&self) -> Result<Vec<(RefName, RefAccess)>, CatalogError> {
        let c = self.client().await?;
        let rows = c.query("SELECT name, owner, gid, mode FROM refs ORDER BY name", &[]).await.map_err(pg)?;
        rows.iter()
            .map(|r| {
                let name: String = r.get(0);
                let access = stored_access(&name, r.get(1), r.get(2), r.get(3))?;
                Ok((RefName::new(name).map_err(|e| CatalogError::Corrupt(e.to_string()))?, access))
            })
            .collect()
    }

    async fn create_ref(&self, name: &RefName, access: &RefAccess) -> Result<RefAccess, CatalogError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        let now = Self::insert_access(&tx, name.as_str(), access).await?;
        tx.commit().await.map_err(pg)?;
        Ok(now)
    }

    async fn change_access(
        &self,
        name: &RefName,
        change: &AccessChange,
        by: &Principal,
    ) -> Result<RefAccess, CatalogError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        let now = Self::access_of(&tx, name.as_str(), true)
            .await?
            .ok_or_else(|| CatalogError::NoSuchRef(name.to_string()))?;
        let new = now.changed(name.as_str(), change, by)?;
        tx.execute(
            "UPDATE refs SET owner = $2, gid = $3, mode = $4 WHERE name = $1",
            &[&name.as_str(), &i64::from(new.owner), &i64::from(new.gid), &i64::from(new.mode)],
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(new)
    }
}
