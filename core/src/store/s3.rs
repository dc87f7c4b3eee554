//! The S3 block store: blocks as objects in any S3-compatible service (tested against Garage), for many worker
//! nodes sharing one store.
//!
//! A block is one object, keyed `PREFIX/<md5>+<size>` (the stripped locator) in the configured bucket. S3 writes
//! are atomic — an object appears whole or not at all — so a put needs no temporary name; a put first asks for
//! the object's size (`HEAD`) and skips the upload when a block of the right size is there, since blocks are
//! immutable and uploads of up to 64 MiB are worth a round trip to avoid. Nothing depends on conditional writes
//! (Garage 2.x ignores `If-None-Match` on PUT): two nodes putting one block write the same bytes.
//!
//! Every whole-block read is verified against its locator; an object that fails is deleted, so that it no longer
//! counts as stored and the next put of that block writes it again (as the local store quarantines). Ranged
//! reads are real ranged GETs and come back as stored, as [`BlockStore::get_range`] allows.
//!
//! The client is `object_store`'s (Apache Arrow): HTTP requests with retries and jittered exponential backoff for
//! 5xx answers, timeouts and dropped connections; on top, this store bounds how many requests run at once.
//! Chosen over `aws-sdk-s3` for build weight on these 2-core machines (it shares hyper and tokio with tonic,
//! and with the `ring` feature needs no C toolchain beyond what OpenSSL already needs) and because its API is
//! exactly the object operations a block store needs.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStoreExt, PutPayload, RetryConfig};
use tokio::sync::Semaphore;

use super::{Block, BlockStore, StoreError, check_range};
use crate::locator::{Locator, Md5};

/// Where and how to reach the bucket. Credentials are never logged (see the `Debug` impl).
#[derive(Clone)]
pub struct S3Config {
    /// `http://host:port` or `https://host:port` of the service.
    pub endpoint: String,
    pub bucket: String,
    /// Keys start with this (`""` for none); a trailing `/` is implied.
    pub prefix: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Requests in flight at once, at most.
    pub max_concurrency: usize,
    /// One request's limit (a 64 MiB PUT included).
    pub request_timeout: Duration,
    /// Retries of one request for transient failures, before the error reaches the caller (which may retry
    /// again: uploads do, with their own backoff).
    pub max_retries: usize,
    /// Sign each request's payload (SHA-256 of the body, computed here and checked by the service). Off by
    /// default: it costs two passes of SHA-256 over every byte on hosts that are CPU-bound already, and what a
    /// block holds is checked anyway — its MD5 names it, and every read verifies it. TLS protects it in flight.
    pub sign_payload: bool,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            bucket: String::new(),
            prefix: "blocks".into(),
            region: "garage".into(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            max_concurrency: 16,
            request_timeout: Duration::from_secs(120),
            max_retries: 5,
            sign_payload: false,
        }
    }
}

#[derive(Clone)]
pub struct S3Store {
    client: Arc<AmazonS3>,
    prefix: String,
    describe: String,
    limit: Arc<Semaphore>,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Store({})", self.describe)
    }
}

/// What an `object_store` error means for a caller: missing, refused for good, or worth another try.
fn store_error(op: &str, locator: &Locator, e: object_store::Error) -> StoreError {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => StoreError::NotFound(locator.clone()),
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
            StoreError::Refused(format!("{op} {locator}: the store refused: {e}"))
        }
        E::NotSupported { .. } | E::InvalidPath { .. } | E::NotImplemented { .. } => {
            StoreError::Refused(format!("{op} {locator}: {e}"))
        }
        other => StoreError::Unavailable(format!("{op} {locator}: {other}")),
    }
}

impl S3Store {
    pub fn new(cfg: &S3Config) -> Result<Self, StoreError> {
        let bad = |why: String| StoreError::Refused(format!("S3 configuration: {why}"));
        if cfg.bucket.is_empty() {
            return Err(bad("no bucket".into()));
        }
        let allow_http = match cfg.endpoint.split_once("://") {
            Some(("http", _)) => true,
            Some(("https", _)) => false,
            _ => return Err(bad(format!("endpoint {:?} must start with http:// or https://", cfg.endpoint))),
        };
        let client = AmazonS3Builder::new()
            .with_endpoint(&cfg.endpoint)
            // Path-style requests (`endpoint/bucket/key`): what every S3-compatible service answers.
            .with_virtual_hosted_style_request(false)
            .with_unsigned_payload(!cfg.sign_payload)
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_access_key_id(&cfg.access_key_id)
            .with_secret_access_key(&cfg.secret_access_key)
            .with_retry(RetryConfig {
                max_retries: cfg.max_retries,
                retry_timeout: cfg.request_timeout * 2,
                ..RetryConfig::default()
            })
            // (The client options carry `allow_http` too: set here, or they would reset it.)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(allow_http)
                    .with_timeout(cfg.request_timeout)
                    .with_connect_timeout(Duration::from_secs(10)),
            )
            .build()
            .map_err(|e| bad(e.to_string()))?;
        let prefix = cfg.prefix.trim_matches('/').to_string();
        Ok(Self {
            client: Arc::new(client),
            describe: format!("{}/{}/{}", cfg.endpoint, cfg.bucket, prefix),
            prefix,
            limit: Arc::new(Semaphore::new(cfg.max_concurrency.max(1))),
        })
    }

    /// The object key of a block: the prefix, then the locator without hints.
    pub fn key(&self, locator: &Locator) -> ObjectPath {
        let name = locator.stripped_string();
        if self.prefix.is_empty() {
            ObjectPath::from(name)
        } else {
            ObjectPath::from(format!("{}/{name}", self.prefix))
        }
    }

    /// Stores `data` under `locator`'s key as it is, unchecked: for tests that tamper with a stored block.
    pub async fn put_raw(&self, locator: &Locator, data: Bytes) -> Result<(), StoreError> {
        self.client
            .put(&self.key(locator), PutPayload::from_bytes(data))
            .await
            .map(|_| ())
            .map_err(|e| store_error("put", locator, e))
    }

    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, StoreError> {
        self.limit.acquire().await.map_err(|_| StoreError::Unavailable("store closed".into()))
    }

    /// The stored object's size, if there is one.
    async fn stored_size(&self, locator: &Locator) -> Result<Option<u64>, StoreError> {
        match self.client.head(&self.key(locator)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error("head", locator, e)),
        }
    }
}

#[async_trait]
impl BlockStore for S3Store {
    async fn put(&self, block: &Block) -> Result<(), StoreError> {
        let _permit = self.permit().await?;
        let loc = block.locator();
        if self.stored_size(loc).await? == Some(loc.size()) {
            return Ok(());
        }
        // PutPayload shares the bytes: no copy of the block.
        self.client
            .put(&self.key(loc), PutPayload::from_bytes(block.data().clone()))
            .await
            .map(|_| ())
            .map_err(|e| store_error("put", loc, e))
    }

    async fn get(&self, locator: &Locator) -> Result<Bytes, StoreError> {
        use tokio_stream::StreamExt;
        let _permit = self.permit().await?;
        let got = self.client.get(&self.key(locator)).await.map_err(|e| store_error("get", locator, e))?;
        // Hashed as it arrives, so the MD5 overlaps the transfer instead of following it; one byte more than the
        // locator's size is already a mismatch, so a longer object is never read whole.
        let size = locator.size() as usize;
        let mut data = crate::bigbuf::reused(size);
        let mut md5 = Md5::new();
        let mut body = got.into_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| store_error("get", locator, e))?;
            md5.update(&chunk);
            data.extend_from_slice(&chunk);
            if data.len() > size {
                break;
            }
        }
        let hash = if data.len() != size {
            Err(StoreError::Corrupt {
                locator: locator.clone(),
                reason: format!("{} bytes where the locator says {size}", data.len()),
            })
        } else if md5.finish() != *locator.md5() {
            Err(StoreError::Corrupt { locator: locator.clone(), reason: "MD5 does not match".into() })
        } else {
            Ok(())
        };
        let data = crate::bigbuf::into_bytes(data);
        if let Err(e) = hash {
            tracing::warn!(%locator, error = %e, "stored object failed verification; deleting it so a put writes it again");
            if let Err(d) = self.client.delete(&self.key(locator)).await {
                tracing::error!(%locator, error = %d, "could not delete a corrupt object");
            }
            return Err(e);
        }
        Ok(data)
    }

    async fn get_range(&self, locator: &Locator, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        check_range(locator, offset, len)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let _permit = self.permit().await?;
        let data = self
            .client
            .get_range(&self.key(locator), offset..offset + len)
            .await
            .map_err(|e| store_error("get range", locator, e))?;
        if data.len() as u64 != len {
            return Err(StoreError::Corrupt {
                locator: locator.clone(),
                reason: format!("asked for {len} bytes at {offset}, got {}", data.len()),
            });
        }
        Ok(data)
    }

    async fn exists(&self, locator: &Locator) -> Result<bool, StoreError> {
        let _permit = self.permit().await?;
        Ok(self.stored_size(locator).await? == Some(locator.size()))
    }
}
