//! Allocation of block-sized byte buffers (up to 64 MiB), which cafs fills once and hands on: write buffers and
//! blocks read from a store.
//!
//! Filling a fresh buffer costs one page fault per 4 KiB touched; for a 64 MiB block that is 16,384 faults, and
//! measured on a 2-core VM the faults of a cold sequential read cost more CPU than its MD5. Asking for
//! transparent huge pages (`MADV_HUGEPAGE`, which systems in THP `madvise` mode need) makes that 32 faults.
//! Where the kernel cannot or will not give huge pages, the advice is ignored and nothing else changes.
//!
//! Even huge pages are zeroed by the kernel before first use: a cold read of 64 MiB blocks spent 15 % of cafsd's
//! CPU clearing pages. So a block read from a store is handed on as [`Bytes`] that give their buffer back when the
//! last reference goes (the block cache let it go), and the next read of a block fills that buffer again, its
//! pages already mapped. At most [`KEEP`] such buffers wait, so the memory this holds is bounded by `KEEP`
//! blocks (128 MiB).

use std::sync::Mutex;

use bytes::Bytes;

/// Buffers smaller than this are not worth advising.
const HUGE_PAGE: usize = 2 << 20;

/// An empty vector with room for `capacity` bytes, backed by huge pages where the kernel allows.
pub fn with_capacity(capacity: usize) -> Vec<u8> {
    let v: Vec<u8> = Vec::with_capacity(capacity);
    if capacity >= 2 * HUGE_PAGE {
        let start = v.as_ptr() as usize;
        let first = start.next_multiple_of(HUGE_PAGE);
        let last = (start + capacity) / HUGE_PAGE * HUGE_PAGE;
        if last > first {
            // SAFETY: `first..last` lies inside the allocation `v` owns (aligned inwards to whole huge pages);
            // MADV_HUGEPAGE only changes how the kernel backs those pages, never their contents or validity.
            let rc = unsafe { libc::madvise(first as *mut libc::c_void, last - first, libc::MADV_HUGEPAGE) };
            if rc != 0 {
                tracing::trace!(error = %std::io::Error::last_os_error(), "MADV_HUGEPAGE refused");
            }
        }
    }
    v
}

/// How many buffers that came back wait for the next read: two, as read-ahead fetches two blocks at once.
pub const KEEP: usize = 2;

static SPARE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// An empty buffer with room for `capacity` bytes: one that came back (see [`into_bytes`]) if one is big enough,
/// else a new one from [`with_capacity`].
pub fn reused(capacity: usize) -> Vec<u8> {
    if capacity >= 2 * HUGE_PAGE {
        let mut spare = SPARE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = spare.iter().position(|v| v.capacity() >= capacity) {
            let mut v = spare.swap_remove(i);
            v.clear();
            return v;
        }
    }
    with_capacity(capacity)
}

/// `data` as shared bytes; a block-sized buffer goes back for [`reused`] once the last reference is dropped.
pub fn into_bytes(data: Vec<u8>) -> Bytes {
    if data.capacity() < 2 * HUGE_PAGE {
        return Bytes::from(data);
    }
    Bytes::from_owner(Returned(data))
}

/// A buffer that returns to [`SPARE`] when dropped (if fewer than [`KEEP`] wait there).
struct Returned(Vec<u8>);

impl AsRef<[u8]> for Returned {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Returned {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        let mut spare = SPARE.lock().unwrap_or_else(|p| p.into_inner());
        if spare.len() < KEEP {
            spare.push(v);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn buffers_have_the_asked_capacity_and_work() {
        for cap in [0, 1, 4 << 20, (64 << 20) + 3] {
            let mut v = super::with_capacity(cap);
            assert!(v.capacity() >= cap);
            v.resize(cap, 7);
            assert!(v.iter().all(|&b| b == 7));
        }
    }

    #[test]
    fn a_block_buffer_comes_back_for_the_next_read_and_at_most_keep_wait() {
        let size = 8 << 20;
        let mut v = super::reused(size);
        v.resize(size, 1);
        let first = v.as_ptr() as usize;
        let b = super::into_bytes(v);
        let clone = b.slice(10..20);
        drop(b);
        assert_eq!(&clone[..], &[1u8; 10], "alive while any reference is");
        drop(clone);
        // Other tests may run in between, so the buffer is found among those waiting, not necessarily first.
        let waiting: Vec<usize> = super::SPARE.lock().unwrap().iter().map(|v| v.as_ptr() as usize).collect();
        assert!(waiting.contains(&first) || waiting.len() == super::KEEP);
        for _ in 0..super::KEEP + 2 {
            drop(super::into_bytes(super::with_capacity(size)));
        }
        assert!(super::SPARE.lock().unwrap().len() <= super::KEEP);
        let r = super::reused(size);
        assert!(r.is_empty() && r.capacity() >= size);
        // Small buffers are plain bytes, never kept.
        assert_eq!(&super::into_bytes(vec![1, 2, 3])[..], &[1, 2, 3]);
    }
}
