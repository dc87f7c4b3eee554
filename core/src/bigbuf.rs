//! Allocation of block-sized byte buffers (up to 64 MiB), which cafs fills once and hands on: write buffers and
//! blocks read from a store.
//!
//! Filling a fresh buffer costs one page fault per 4 KiB touched; for a 64 MiB block that is 16,384 faults, and
//! measured on a 2-core VM the faults of a cold sequential read cost more CPU than its MD5. Asking for
//! transparent huge pages (`MADV_HUGEPAGE`, which systems in THP `madvise` mode need) makes that 32 faults.
//! Where the kernel cannot or will not give huge pages, the advice is ignored and nothing else changes.

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
}
