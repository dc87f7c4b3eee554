//! A fault-injecting block store for tests: wraps a real store and, on command, fails puts or gets (as a store
//! that is down would: transient errors), delays puts or gets (a slow store; past the upload timeout, a store
//! that hangs), tears puts (a part of the block lands where the block belongs, and the put fails, as when a
//! connection drops mid-upload to a store without atomic writes), or serves corrupted bytes; it counts calls.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Block, BlockStore, StoreError, verify};
use crate::locator::Locator;

pub struct FaultyStore<S> {
    inner: S,
    pub fail_puts: AtomicBool,
    /// Fail this many puts (counted down), then work again: a store that was briefly down.
    pub fail_next_puts: AtomicUsize,
    pub fail_gets: AtomicBool,
    /// Flip a byte of what the inner store returns, then check it as a store must.
    pub corrupt_gets: AtomicBool,
    put_delay: Mutex<Duration>,
    get_delay: Mutex<Duration>,
    /// Tear this many puts (counted down): `tear` is given the first half of the block, and the put fails.
    pub tear_next_puts: AtomicUsize,
    tear: Mutex<Option<Tear>>,
    pub puts: AtomicUsize,
    pub gets: AtomicUsize,
}

impl<S: BlockStore> FaultyStore<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            fail_puts: AtomicBool::new(false),
            fail_next_puts: AtomicUsize::new(0),
            fail_gets: AtomicBool::new(false),
            corrupt_gets: AtomicBool::new(false),
            put_delay: Mutex::new(Duration::ZERO),
            get_delay: Mutex::new(Duration::ZERO),
            tear_next_puts: AtomicUsize::new(0),
            tear: Mutex::new(None),
            puts: AtomicUsize::new(0),
            gets: AtomicUsize::new(0),
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub fn set_put_delay(&self, d: Duration) {
        *self.put_delay.lock().unwrap_or_else(|p| p.into_inner()) = d;
    }

    pub fn set_get_delay(&self, d: Duration) {
        *self.get_delay.lock().unwrap_or_else(|p| p.into_inner()) = d;
    }

    /// How a torn put leaves its part behind in the inner store (which has no way to take a partial block):
    /// `tear(locator, first half of the bytes)`, written by the test where the inner store keeps blocks.
    pub fn on_tear(&self, tear: impl Fn(&Locator, &[u8]) + Send + Sync + 'static) {
        *self.tear.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(tear));
    }
}

type Tear = Box<dyn Fn(&Locator, &[u8]) + Send + Sync>;

impl<S> fmt::Debug for FaultyStore<S>
where
    S: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyStore").field("inner", &self.inner).finish_non_exhaustive()
    }
}

#[async_trait]
impl<S: BlockStore> BlockStore for FaultyStore<S> {
    async fn put(&self, block: &Block) -> Result<(), StoreError> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        let delay = *self.put_delay.lock().unwrap_or_else(|p| p.into_inner());
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let blip = self.fail_next_puts.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if blip || self.fail_puts.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("injected: store down".into()));
        }
        if self.tear_next_puts.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            if let Some(tear) = &*self.tear.lock().unwrap_or_else(|p| p.into_inner()) {
                let data = block.data();
                tear(block.locator(), &data[..data.len() / 2]);
            }
            return Err(StoreError::Unavailable("injected: connection lost mid-put".into()));
        }
        self.inner.put(block).await
    }

    async fn get(&self, locator: &Locator) -> Result<Bytes, StoreError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let delay = *self.get_delay.lock().unwrap_or_else(|p| p.into_inner());
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if self.fail_gets.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("injected: store down".into()));
        }
        let data = self.inner.get(locator).await?;
        if self.corrupt_gets.load(Ordering::SeqCst) && !data.is_empty() {
            let mut bad = data.to_vec();
            bad[0] ^= 0xff;
            verify(locator, &bad)?;
            return Ok(Bytes::from(bad));
        }
        Ok(data)
    }

    async fn get_range(&self, locator: &Locator, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        let data = self.get(locator).await?;
        super::check_range(locator, offset, len)?;
        Ok(data.slice(offset as usize..(offset + len) as usize))
    }

    async fn exists(&self, locator: &Locator) -> Result<bool, StoreError> {
        self.inner.exists(locator).await
    }

    async fn sign_manifest(&self, text: &str) -> Result<String, StoreError> {
        self.inner.sign_manifest(text).await
    }
}
