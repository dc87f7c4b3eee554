//! cafsd's configuration file: which block store and which catalog a node uses.
//!
//! One TOML file selects the backends. With no file (or empty sections) a node runs on the embedded default: a
//! local block directory and a SQLite catalog in the state directory. A cluster's nodes share an S3 bucket and
//! a PostgreSQL database:
//!
//! ```toml
//! [store]
//! kind = "s3"
//! endpoint = "http://10.0.0.5:3900"
//! bucket = "cafs"
//! prefix = "blocks"            # optional
//! region = "garage"            # optional
//! credentials_file = "/etc/cafs/s3.toml"   # access_key_id = "...", secret_access_key = "..."
//!
//! [catalog]
//! kind = "postgres"
//! url = "postgresql://cafs@10.0.0.6:5432/cafs?sslmode=prefer"
//! password_file = "/etc/cafs/pg.password"
//! ```
//!
//! `[refs]` (see [`refs`]) names the operators who pass every ref permission check, the mode of new refs, and
//! the owner of refs already in a catalog made before refs had owners. `[metrics]` (see [`MetricsConfig`])
//! serves cafsd's metrics to Prometheus. `[fs]` (see [`FsConfig`]) sizes every mount's memory budget, upload
//! parallelism, block cache and read-ahead. `[cache]` (see [`CacheConfig`]) bounds the node's disk cache of blocks
//! from a remote store.
//!
//! A node of an Arvados cluster keeps its blocks in the cluster's Keep (see [`keep`]):
//!
//! ```toml
//! [store]
//! kind = "keep"
//! api_host = "zzzzz.example.org"        # or ARVADOS_API_HOST
//! token_file = "/etc/cafs/arvados.token" # or ARVADOS_API_TOKEN
//! ```
//!
//! Secrets never sit in this file and are never logged: the S3 keys come from `credentials_file` or from
//! `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, the database password from `password_file` or `PGPASSWORD`
//! (or the URL, discouraged). A secret file must not be readable by group or others. Unknown keys are errors, so
//! a typo does not silently select the default.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

pub mod cache;
pub mod fs;
pub mod keep;
pub mod refs;

use crate::arvados::{Api, ApiConfig};
use crate::catalog::{ArvadosCatalog, Catalog, CatalogError, PostgresCatalog, RefName, SqliteCatalog};
use crate::metrics::MeteredStore;
use crate::store::{
    BlockStore, CachedStore, DiskCache, KeepStore, LocalDirStore, S3Config, S3Store, Signatures, StoreError,
};
pub use cache::CacheConfig;
pub use fs::FsConfig;
pub use keep::KeepSettings;
pub use refs::{RefsConfig, RefsSettings};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("block store: {0}")]
    Store(#[from] StoreError),
    #[error("catalog: {0}")]
    Catalog(#[from] CatalogError),
}

/// The block store a node reads and writes, and its disk cache if it has one.
#[derive(Debug)]
pub struct OpenedStore {
    pub store: Arc<dyn BlockStore>,
    pub disk_cache: Option<Arc<DiskCache>>,
    /// The Keep store itself, with `[store] kind = "keep"` (the Arvados catalog signs manifests with it).
    pub keep: Option<Arc<KeepStore>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub catalog: CatalogConfig,
    /// How often a read-only mount of a ref looks for a newer version (seconds; 0: never).
    #[serde(default = "default_refresh")]
    pub ref_refresh_seconds: u64,
    #[serde(default)]
    pub namespace: NamespaceConfig,
    #[serde(default)]
    pub refs: RefsConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub fs: FsConfig,
    #[serde(default)]
    pub cache: CacheConfig,
}

/// Where cafsd serves its metrics to Prometheus (off unless `listen` is given):
///
/// ```toml
/// [metrics]
/// listen = "127.0.0.1:9464"        # a loopback IP:PORT, or an absolute path: a Unix socket
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub listen: Option<String>,
}

impl MetricsConfig {
    /// The checked `listen`, if any.
    pub fn listen(&self) -> Result<Option<crate::metrics::Listen>, ConfigError> {
        self.listen.as_deref().map(crate::metrics::parse_listen).transpose().map_err(ConfigError::Invalid)
    }
}

/// What a namespace mount (`cafs-mount DIR --namespace`) shows writable:
///
/// ```toml
/// [namespace]
/// writable = ["scratch/*", "results"]   # exact ref names, or prefixes ending in `*`
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    #[serde(default)]
    pub writable: Vec<String>,
}

fn default_refresh() -> u64 {
    5
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoreConfig {
    /// Blocks as files under `path` (default `STATE/blocks`).
    Local {
        #[serde(default)]
        path: Option<PathBuf>,
    },
    S3 {
        endpoint: String,
        bucket: String,
        #[serde(default)]
        prefix: Option<String>,
        #[serde(default)]
        region: Option<String>,
        #[serde(default)]
        credentials_file: Option<PathBuf>,
        #[serde(default)]
        max_concurrency: Option<usize>,
        #[serde(default)]
        request_timeout_seconds: Option<u64>,
        /// Sign request payloads (see [`S3Config::sign_payload`]).
        #[serde(default)]
        sign_payload: bool,
    },
    /// An Arvados cluster's Keep.
    Keep(KeepSettings),
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig::Local { path: None }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum CatalogConfig {
    /// A SQLite file (default `STATE/catalog.sqlite`).
    Sqlite {
        #[serde(default)]
        path: Option<PathBuf>,
    },
    Postgres {
        url: String,
        #[serde(default)]
        password_file: Option<PathBuf>,
        #[serde(default)]
        max_connections: Option<usize>,
    },
    /// Refs as collections of the Arvados cluster whose Keep `[store]` is, in `project`.
    Arvados { project: String },
}

impl Default for CatalogConfig {
    fn default() -> Self {
        CatalogConfig::Sqlite { path: None }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct S3Credentials {
    access_key_id: String,
    secret_access_key: String,
}

/// Reads a secret file, refusing one that group or others can read.
fn read_secret(path: &Path) -> Result<String, ConfigError> {
    let err = |source| ConfigError::Read { path: path.to_path_buf(), source };
    let meta = std::fs::metadata(path).map_err(err)?;
    if meta.mode() & 0o077 != 0 {
        return Err(ConfigError::Invalid(format!(
            "{}: a secret file must not be readable by group or others (chmod 600)",
            path.display()
        )));
    }
    std::fs::read_to_string(path).map_err(err)
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(&text).map_err(|message| ConfigError::Syntax { path: path.into(), message })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Self = toml::from_str(text).map_err(|e| e.to_string())?;
        for p in &config.namespace.writable {
            // A pattern is a ref name, or a ref name's beginning and `*`: `*`, `scratch/*`, `run-*`.
            let name = match p.strip_suffix('*') {
                Some("") => continue,
                Some(prefix) => format!("{prefix}x"),
                None => p.clone(),
            };
            if let Err(e) = RefName::new(name) {
                return Err(format!("namespace.writable: {p:?} is neither a ref name nor one ending in '*': {e}"));
            }
        }
        config.refs.resolve()?;
        config.metrics.listen().map_err(|e| e.to_string())?;
        config.fs.options()?;
        config.cache.check()?;
        Ok(config)
    }

    /// What the node runs on, in a line for logs (no secrets).
    pub fn describe(&self) -> String {
        let store = match &self.store {
            StoreConfig::Local { path } => {
                format!("local blocks ({})", path.as_deref().map_or("STATE/blocks".into(), |p| p.display().to_string()))
            }
            StoreConfig::S3 { endpoint, bucket, .. } => format!("S3 {endpoint} bucket {bucket}"),
            StoreConfig::Keep(k) => k.describe(),
        };
        let catalog = match &self.catalog {
            CatalogConfig::Sqlite { path } => format!(
                "SQLite ({})",
                path.as_deref().map_or("STATE/catalog.sqlite".into(), |p| p.display().to_string())
            ),
            CatalogConfig::Postgres { .. } => "PostgreSQL".to_string(),
            CatalogConfig::Arvados { project } => format!("Arvados collections in {project}"),
        };
        format!("{store} + {catalog}")
    }

    /// The S3 settings with credentials resolved (file, else environment).
    pub fn s3(&self) -> Result<Option<S3Config>, ConfigError> {
        let StoreConfig::S3 {
            endpoint,
            bucket,
            prefix,
            region,
            credentials_file,
            max_concurrency,
            request_timeout_seconds,
            sign_payload,
        } = &self.store
        else {
            return Ok(None);
        };
        let (access_key_id, secret_access_key) = match credentials_file {
            Some(f) => {
                let c: S3Credentials = toml::from_str(&read_secret(f)?)
                    .map_err(|e| ConfigError::Syntax { path: f.clone(), message: e.to_string() })?;
                (c.access_key_id, c.secret_access_key)
            }
            None => match (std::env::var("AWS_ACCESS_KEY_ID"), std::env::var("AWS_SECRET_ACCESS_KEY")) {
                (Ok(id), Ok(secret)) => (id, secret),
                _ => {
                    return Err(ConfigError::Invalid(
                        "[store] kind = \"s3\" needs credentials: credentials_file, or AWS_ACCESS_KEY_ID and \
                         AWS_SECRET_ACCESS_KEY in the environment"
                            .into(),
                    ));
                }
            },
        };
        let d = S3Config::default();
        Ok(Some(S3Config {
            endpoint: endpoint.clone(),
            bucket: bucket.clone(),
            prefix: prefix.clone().unwrap_or(d.prefix),
            region: region.clone().unwrap_or(d.region),
            access_key_id,
            secret_access_key,
            max_concurrency: max_concurrency.unwrap_or(d.max_concurrency),
            request_timeout: request_timeout_seconds.map_or(d.request_timeout, Duration::from_secs),
            max_retries: d.max_retries,
            sign_payload: *sign_payload,
        }))
    }

    /// Opens the block store (its calls counted in the metrics), with the node's disk cache in front of a remote
    /// one (see [`CacheConfig`]). Blocking: it makes and syncs directories.
    pub fn open_store(&self, state: &Path) -> Result<OpenedStore, ConfigError> {
        match &self.store {
            StoreConfig::Local { path } => {
                let root = path.clone().unwrap_or_else(|| state.join("blocks"));
                let store = LocalDirStore::open(&root).map_err(ConfigError::Store)?;
                Ok(OpenedStore { store: Arc::new(MeteredStore(Arc::new(store))), disk_cache: None, keep: None })
            }
            StoreConfig::S3 { .. } => {
                let cfg = self.s3()?.expect("an S3 store has S3 settings");
                self.remote(state, Arc::new(S3Store::new(&cfg)?))
            }
            StoreConfig::Keep(k) => {
                let cfg = k.resolve()?;
                // Keep's permission signatures for the blocks this node writes: credentials, kept in the state
                // directory (see `Signatures`).
                let file = state.join("keep-signatures");
                let signatures = Signatures::open(&file).map_err(|source| ConfigError::Read { path: file, source })?;
                let keep = Arc::new(KeepStore::new(cfg, Arc::new(signatures))?);
                Ok(OpenedStore { keep: Some(keep.clone()), ..self.remote(state, keep)? })
            }
        }
    }

    /// A remote store, counted in the metrics, behind the node's disk cache if it has one.
    fn remote(&self, state: &Path, store: Arc<dyn BlockStore>) -> Result<OpenedStore, ConfigError> {
        // Counted below the cache: the metrics' store calls are the ones that reach the store.
        let store: Arc<dyn BlockStore> = Arc::new(MeteredStore(store));
        let Some(opts) = self.cache.options(state).map_err(ConfigError::Invalid)? else {
            return Ok(OpenedStore { store, disk_cache: None, keep: None });
        };
        let cache = Arc::new(DiskCache::open(opts).map_err(ConfigError::Store)?);
        let store = Arc::new(CachedStore::new(store, cache.clone()));
        Ok(OpenedStore { store, disk_cache: Some(cache), keep: None })
    }

    /// What every mount's filesystem core gets: `[fs]` over the defaults (checked by [`Config::parse`] already).
    pub fn fs_options(&self) -> Result<crate::fs::FsOptions, ConfigError> {
        self.fs.options().map_err(ConfigError::Invalid)
    }

    /// The `[refs]` section with names resolved (checked by [`Config::parse`] already).
    pub fn refs(&self) -> Result<RefsSettings, ConfigError> {
        self.refs.resolve().map_err(ConfigError::Invalid)
    }

    /// Opens (connects to) the catalog. `opened` is the store: the Arvados catalog needs it to be Keep's.
    pub async fn open_catalog(&self, state: &Path, opened: &OpenedStore) -> Result<Arc<dyn Catalog>, ConfigError> {
        let legacy = self.refs()?.migration;
        match &self.catalog {
            CatalogConfig::Sqlite { path } => {
                let file = path.clone().unwrap_or_else(|| state.join("catalog.sqlite"));
                let catalog = tokio::task::spawn_blocking(move || SqliteCatalog::open_migrating(file, legacy))
                    .await
                    .map_err(|e| ConfigError::Invalid(format!("opening the catalog: {e}")))??;
                Ok(Arc::new(catalog))
            }
            CatalogConfig::Postgres { url, password_file, max_connections } => {
                let mut config: tokio_postgres::Config =
                    url.parse().map_err(|e| ConfigError::Invalid(format!("[catalog] url: {e}")))?;
                if let Some(f) = password_file {
                    config.password(read_secret(f)?.trim_end_matches(['\n', '\r']));
                } else if config.get_password().is_none()
                    && let Ok(p) = std::env::var("PGPASSWORD")
                {
                    config.password(p);
                }
                let catalog = PostgresCatalog::connect_migrating(config, max_connections.unwrap_or(8), legacy).await?;
                Ok(Arc::new(catalog))
            }
            CatalogConfig::Arvados { project } => {
                let (Some(keep), StoreConfig::Keep(settings)) = (&opened.keep, &self.store) else {
                    return Err(ConfigError::Invalid(
                        "[catalog] kind = \"arvados\" needs [store] kind = \"keep\": a collection names blocks in \
                         the cluster's Keep"
                            .into(),
                    ));
                };
                let k = settings.resolve()?;
                if k.api_host.is_empty() {
                    return Err(ConfigError::Invalid(
                        "[catalog] kind = \"arvados\" needs the API host ([store] api_host or ARVADOS_API_HOST)".into(),
                    ));
                }
                let api = Api::new(ApiConfig {
                    host: k.api_host,
                    token: k.api_token,
                    insecure: k.insecure,
                    timeout: Duration::from_secs(300),
                })
                .map_err(ConfigError::Invalid)?;
                Ok(Arc::new(ArvadosCatalog::new(api, project.clone(), keep.clone())?))
            }
        }
    }
}

#[cfg(test)]
mod tests;
