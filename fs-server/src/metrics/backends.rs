//! The block store and the catalog, counted: wrappers that time every call and count it by kind and result
//! before passing the answer on unchanged.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Direction, Outcome, metrics, timed};
use crate::catalog::{
    AccessChange, Catalog, CatalogError, CollectionRecord, Commit, Principal, RefAccess, RefName, Version,
};
use crate::locator::Locator;
use crate::manifest::Pdh;
use crate::store::{Block, BlockStore, StoreError};

/// A block store whose calls are counted (`cafs_store_*`).
#[derive(Debug)]
pub struct MeteredStore(pub Arc<dyn BlockStore>);

fn store_result<T>(r: &Result<T, StoreError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(StoreError::NotFound(_)) => "not_found",
        Err(StoreError::Corrupt { .. }) => "corrupt",
        Err(_) => "error",
    }
}

impl MeteredStore {
    fn fetched(&self, r: &Result<Bytes, StoreError>) {
        if let Ok(b) = r {
            metrics().store_bytes.get_or_create(&Direction { direction: "fetched" }).inc_by(b.len() as u64);
        }
    }
}

#[async_trait]
impl BlockStore for MeteredStore {
    async fn put(&self, block: &Block) -> Result<(), StoreError> {
        let m = metrics();
        let r = timed(&m.store_requests, &m.store_latency, "put", store_result, self.0.put(block)).await;
        if r.is_ok() {
            m.store_bytes.get_or_create(&Direction { direction: "uploaded" }).inc_by(block.data().len() as u64);
        }
        r
    }

    async fn get(&self, locator: &Locator) -> Result<Bytes, StoreError> {
        let m = metrics();
        let r = timed(&m.store_requests, &m.store_latency, "get", store_result, self.0.get(locator)).await;
        self.fetched(&r);
        r
    }

    async fn get_range(&self, locator: &Locator, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        let m = metrics();
        let call = self.0.get_range(locator, offset, len);
        let r = timed(&m.store_requests, &m.store_latency, "get_range", store_result, call).await;
        self.fetched(&r);
        r
    }

    async fn exists(&self, locator: &Locator) -> Result<bool, StoreError> {
        let m = metrics();
        timed(&m.store_requests, &m.store_latency, "exists", store_result, self.0.exists(locator)).await
    }

    async fn sign_manifest(&self, text: &str) -> Result<String, StoreError> {
        self.0.sign_manifest(text).await
    }
}

/// A catalog whose calls are counted (`cafs_catalog_*`), and its commits by result (`cafs_commits_total`).
#[derive(Debug)]
pub struct MeteredCatalog(pub Arc<dyn Catalog>);

fn catalog_result<T>(r: &Result<T, CatalogError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(CatalogError::Conflict { .. }) => "conflict",
        Err(CatalogError::Denied(_)) => "refused",
        Err(CatalogError::NoSuchRef(_)) => "not_found",
        Err(_) => "error",
    }
}

macro_rules! counted {
    ($op:literal, $call:expr) => {{
        let m = metrics();
        timed(&m.catalog_requests, &m.catalog_latency, $op, catalog_result, $call).await
    }};
}

#[async_trait]
impl Catalog for MeteredCatalog {
    async fn put_collection(&self, record: &CollectionRecord) -> Result<(), CatalogError> {
        counted!("put_collection", self.0.put_collection(record))
    }

    async fn get_collection(&self, pdh: &Pdh) -> Result<Option<CollectionRecord>, CatalogError> {
        counted!("get_collection", self.0.get_collection(pdh))
    }

    async fn get_sidecar(&self, id: &Pdh) -> Result<Option<Vec<u8>>, CatalogError> {
        counted!("get_sidecar", self.0.get_sidecar(id))
    }

    async fn commit(&self, commit: &Commit) -> Result<Version, CatalogError> {
        let r = counted!("commit", self.0.commit(commit));
        metrics().commits.get_or_create(&Outcome { result: catalog_result(&r) }).inc();
        r
    }

    async fn head(&self, name: &RefName) -> Result<Option<Version>, CatalogError> {
        counted!("head", self.0.head(name))
    }

    async fn list_refs(&self) -> Result<Vec<Version>, CatalogError> {
        counted!("list_refs", self.0.list_refs())
    }

    async fn history(&self, name: &RefName) -> Result<Vec<Version>, CatalogError> {
        counted!("history", self.0.history(name))
    }

    async fn access(&self, name: &RefName) -> Result<Option<RefAccess>, CatalogError> {
        counted!("access", self.0.access(name))
    }

    async fn list_access(&self) -> Result<Vec<(RefName, RefAccess)>, CatalogError> {
        counted!("list_access", self.0.list_access())
    }

    async fn create_ref(&self, name: &RefName, access: &RefAccess) -> Result<RefAccess, CatalogError> {
        counted!("create_ref", self.0.create_ref(name, access))
    }

    async fn change_access(
        &self,
        name: &RefName,
        change: &AccessChange,
        by: &Principal,
    ) -> Result<RefAccess, CatalogError> {
        counted!("change_access", self.0.change_access(name, change, by))
    }
}
