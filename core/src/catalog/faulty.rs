//! A fault-injecting catalog for tests: wraps a real catalog and, on command, is down (every call fails, as a
//! database that cannot be reached), fails the next commits before they reach it, loses the reply of the next
//! commits after they landed (a timeout: the client cannot tell whether its commit happened), or answers
//! slowly. It counts commits.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use super::CollectionRecord;
use super::{AccessChange, Catalog, CatalogError, Commit, Principal, RefAccess, RefName, Version};
use crate::manifest::Pdh;

#[derive(Debug)]
pub struct FaultyCatalog<C> {
    inner: C,
    pub down: AtomicBool,
    pub fail_next_commits: AtomicUsize,
    /// Commits that land and then report an error, counted down.
    pub lose_next_commit_replies: AtomicUsize,
    /// With a lost reply, the catalog also goes down (the connection dropped right after the write).
    pub down_after_lost_reply: AtomicBool,
    delay: Mutex<Duration>,
    pub commits: AtomicUsize,
}

fn unreachable_error(what: &str) -> CatalogError {
    CatalogError::Backend(format!("injected fault: {what}").into())
}

impl<C: Catalog> FaultyCatalog<C> {
    pub fn new(inner: C) -> Self {
        Self {
            inner,
            down: AtomicBool::new(false),
            fail_next_commits: AtomicUsize::new(0),
            lose_next_commit_replies: AtomicUsize::new(0),
            down_after_lost_reply: AtomicBool::new(false),
            delay: Mutex::new(Duration::ZERO),
            commits: AtomicUsize::new(0),
        }
    }

    pub fn inner(&self) -> &C {
        &self.inner
    }

    pub fn set_delay(&self, d: Duration) {
        *self.delay.lock().unwrap_or_else(|p| p.into_inner()) = d;
    }

    async fn enter(&self) -> Result<(), CatalogError> {
        let delay = *self.delay.lock().unwrap_or_else(|p| p.into_inner());
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if self.down.load(Ordering::SeqCst) { Err(unreachable_error("the catalog is down")) } else { Ok(()) }
    }
}

fn take_one(n: &AtomicUsize) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
}

#[async_trait]
impl<C: Catalog> Catalog for FaultyCatalog<C> {
    async fn put_collection(&self, record: &CollectionRecord) -> Result<(), CatalogError> {
        self.enter().await?;
        self.inner.put_collection(record).await
    }

    async fn get_collection(&self, pdh: &Pdh) -> Result<Option<CollectionRecord>, CatalogError> {
        self.enter().await?;
        self.inner.get_collection(pdh).await
    }

    async fn get_sidecar(&self, id: &Pdh) -> Result<Option<Vec<u8>>, CatalogError> {
        self.enter().await?;
        self.inner.get_sidecar(id).await
    }

    async fn commit(&self, commit: &Commit) -> Result<Version, CatalogError> {
        self.enter().await?;
        self.commits.fetch_add(1, Ordering::SeqCst);
        if take_one(&self.fail_next_commits) {
            return Err(unreachable_error("commit failed before it reached the catalog"));
        }
        let v = self.inner.commit(commit).await?;
        if take_one(&self.lose_next_commit_replies) {
            if self.down_after_lost_reply.load(Ordering::SeqCst) {
                self.down.store(true, Ordering::SeqCst);
            }
            return Err(unreachable_error("the commit landed, but its reply was lost"));
        }
        Ok(v)
    }

    async fn head(&self, name: &RefName) -> Result<Option<Version>, CatalogError> {
        self.enter().await?;
        self.inner.head(name).await
    }

    async fn list_refs(&self) -> Result<Vec<Version>, CatalogError> {
        self.enter().await?;
        self.inner.list_refs().await
    }

    async fn history(&self, name: &RefName) -> Result<Vec<Version>, CatalogError> {
        self.enter().await?;
        self.inner.history(name).await
    }

    async fn access(&self, name: &RefName) -> Result<Option<RefAccess>, CatalogError> {
        self.enter().await?;
        self.inner.access(name).await
    }

    async fn list_access(&self) -> Result<Vec<(RefName, RefAccess)>, CatalogError> {
        self.enter().await?;
        self.inner.list_access().await
    }

    async fn create_ref(&self, name: &RefName, access: &RefAccess) -> Result<RefAccess, CatalogError> {
        self.enter().await?;
        self.inner.create_ref(name, access).await
    }

    async fn change_access(
        &self,
        name: &RefName,
        change: &AccessChange,
        by: &Principal,
    ) -> Result<RefAccess, CatalogError> {
        self.enter().await?;
        self.inner.change_access(name, change, by).await
    }
}
