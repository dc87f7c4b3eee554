//! The block store conformance suite: what every [`BlockStore`] must do, whatever keeps the bytes.
//!
//! [`run_all`] takes a fresh, empty store and a way to overwrite what the store keeps for a block with other
//! bytes (as a disk or a bucket could corrupt it), and panics with a message naming what broke.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

use super::{Block, BlockStore, StoreError};
use crate::locator::Locator;

/// Runs every check on `store`. `tamper(locator, bytes)` must make the store hold `bytes` for `locator`.
pub async fn run_all<S, T, F>(store: Arc<S>, tamper: T)
where
    S: BlockStore + 'static,
    T: Fn(Locator, Bytes) -> F,
    F: Future<Output = ()>,
{
    run_undamaged(store.clone()).await;
    corruption_is_an_error_and_a_put_repairs_it(&*store, &tamper).await;
}

/// The checks that need no damaged block: for a store whose damage is found and repaired by the service behind
/// it rather than by the store (Keep: its own tests say what a damaged copy does there).
pub async fn run_undamaged<S: BlockStore + 'static>(store: Arc<S>) {
    round_trip(&*store).await;
    missing_blocks(&*store).await;
    ranges(&*store).await;
    puts_are_idempotent_and_concurrent(store.clone()).await;
}

fn block(seed: u8, len: usize) -> Block {
    Block::new((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect::<Vec<u8>>()).unwrap()
}

async fn round_trip(s: &dyn BlockStore) {
    for (seed, len) in [(1u8, 0usize), (2, 1), (3, 4096), (4, 3 << 20)] {
        let b = block(seed, len);
        assert!(!s.exists(b.locator()).await.unwrap(), "{} exists before its put", b.locator());
        s.put(&b).await.unwrap();
        assert!(s.exists(b.locator()).await.unwrap(), "{} missing after its put", b.locator());
        assert_eq!(s.get(b.locator()).await.unwrap(), b.data(), "{} read back", b.locator());
    }
    // Hints never change where a block lives.
    let b = block(5, 100);
    s.put(&b).await.unwrap();
    let hinted = Locator::parse(&format!("{}+Kzzzzz+A{}@5f5e1000", b.locator(), "0".repeat(40))).unwrap();
    assert_eq!(s.get(&hinted).await.unwrap(), b.data());
    assert!(s.exists(&hinted).await.unwrap());
}

async fn missing_blocks(s: &dyn BlockStore) {
    let b = block(9, 1000);
    assert!(matches!(s.get(b.locator()).await, Err(StoreError::NotFound(_))), "a missing block is NotFound");
    assert!(!s.exists(b.locator()).await.unwrap());
}

async fn ranges(s: &dyn BlockStore) {
    let b = block(11, 100_000);
    s.put(&b).await.unwrap();
    let l = b.locator();
    assert_eq!(s.get_range(l, 0, 10).await.unwrap(), b.data().slice(0..10));
    assert_eq!(s.get_range(l, 99_990, 10).await.unwrap(), b.data().slice(99_990..));
    assert_eq!(s.get_range(l, 5_000, 0).await.unwrap().len(), 0);
    assert!(matches!(s.get_range(l, 99_995, 10).await, Err(StoreError::BadRange { .. })));
    assert!(matches!(s.get_range(l, u64::MAX, 2).await, Err(StoreError::BadRange { .. })));
}

async fn puts_are_idempotent_and_concurrent(s: Arc<dyn BlockStore>) {
    let b = block(13, 1 << 20);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (s, b) = (s.clone(), b.clone());
        tasks.spawn(async move { s.put(&b).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    s.put(&b).await.unwrap();
    assert_eq!(s.get(b.locator()).await.unwrap(), b.data());
}

async fn corruption_is_an_error_and_a_put_repairs_it<T, F>(s: &dyn BlockStore, tamper: &T)
where
    T: Fn(Locator, Bytes) -> F,
    F: Future<Output = ()>,
{
    for (what, bad) in [("a flipped byte", None), ("a truncated copy", Some(1000usize))] {
        let b = block(17, 200_000);
        s.put(&b).await.unwrap();
        let mut bytes = b.data().to_vec();
        match bad {
            None => bytes[150_000] ^= 0x40,
            Some(n) => bytes.truncate(n),
        }
        tamper(b.locator().clone(), Bytes::from(bytes)).await;
        let e = s.get(b.locator()).await.unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{what}: {e}");
        // Found bad, it no longer counts as stored, and the next put writes it whole again.
        assert!(!s.exists(b.locator()).await.unwrap(), "{what}: a corrupt block still counts as stored");
        s.put(&b).await.unwrap();
        assert_eq!(s.get(b.locator()).await.unwrap(), b.data(), "{what}: repaired by the next put");
    }
}
