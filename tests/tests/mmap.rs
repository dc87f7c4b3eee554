//! Memory-mapped files on real mounts: shared read-only maps of committed files, and shared writable maps of
//! files in a writable mount, whose stores reach the collection through `msync` and a commit.

use std::fs;
use std::num::NonZeroUsize;
use std::os::fd::AsFd;

use cafs_tests::mount::MountedCafsd;
use nix::sys::mman::{MapFlags, MsFlags, ProtFlags, mmap, msync, munmap};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8).collect()
}

/// A shared mapping of `len` bytes of `file`, unmapped on drop.
struct Map {
    ptr: std::ptr::NonNull<std::ffi::c_void>,
    len: usize,
}

impl Map {
    fn new(file: &fs::File, len: usize, writable: bool) -> Self {
        let prot = if writable { ProtFlags::PROT_READ | ProtFlags::PROT_WRITE } else { ProtFlags::PROT_READ };
        // SAFETY: a fresh shared mapping of an open file, at an address the kernel picks; nothing else in this
        // process maps or truncates the file while the mapping lives (the tests only read and store through it).
        let ptr = unsafe { mmap(None, NonZeroUsize::new(len).unwrap(), prot, MapFlags::MAP_SHARED, file.as_fd(), 0) }
            .expect("mmap");
        Self { ptr, len }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<u8>(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: a writable mapping of `len` bytes, borrowed mutably through `self` alone.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().cast::<u8>(), self.len) }
    }

    fn sync(&self) {
        // SAFETY: the range is exactly this live mapping.
        unsafe { msync(self.ptr, self.len, MsFlags::MS_SYNC) }.expect("msync");
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value made; no slice of it outlives `self`.
        let _ = unsafe { munmap(self.ptr, self.len) };
    }
}

#[test]
fn committed_files_map_shared_read_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, mnt) = (tmp.path().join("state"), tmp.path().join("mnt"));
    let data = pattern(5 << 20 | 123, 7);
    let w = MountedCafsd::start(&state, &mnt, &["--ref", "m", "--autocommit", "0"]);
    fs::write(mnt.join("data.bin"), &data).unwrap();
    let (status, out) = w.stop();
    assert!(status.success());
    let pdh = out.trim().to_string();
    let ro = MountedCafsd::start(&state, &mnt, &["--pdh", &pdh]);
    let f = fs::File::open(mnt.join("data.bin")).unwrap();
    let map = Map::new(&f, data.len(), false);
    assert!(map.bytes() == &data[..], "the mapped bytes are the committed bytes");
    // A writable shared map of a read-only mount is refused, not silently private.
    let rw = fs::OpenOptions::new().read(true).write(true).open(mnt.join("data.bin"));
    assert_eq!(rw.unwrap_err().raw_os_error(), Some(libc::EROFS));
    drop(map);
    drop(f);
    ro.stop();
}

#[test]
fn shared_writable_maps_reach_the_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, mnt) = (tmp.path().join("state"), tmp.path().join("mnt"));
    let len = 3 << 20;
    let w = MountedCafsd::start(&state, &mnt, &["--ref", "m", "--autocommit", "0"]);
    // A file written through a map only: made at its size, filled by stores, synced.
    let f = fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(mnt.join("m.bin")).unwrap();
    f.set_len(len as u64).unwrap();
    let mut map = Map::new(&f, len, true);
    let want = pattern(len, 42);
    map.bytes_mut().copy_from_slice(&want);
    map.sync();
    // Another file: written with write(2), then patched in the middle through a map.
    let mut other = pattern(1 << 20, 1);
    fs::write(mnt.join("patched.bin"), &other).unwrap();
    let g = fs::OpenOptions::new().read(true).write(true).open(mnt.join("patched.bin")).unwrap();
    let mut gm = Map::new(&g, other.len(), true);
    gm.bytes_mut()[300_000..300_010].copy_from_slice(b"0123456789");
    other[300_000..300_010].copy_from_slice(b"0123456789");
    gm.sync();
    // read(2) sees the stores.
    assert!(fs::read(mnt.join("m.bin")).unwrap() == want);
    assert!(fs::read(mnt.join("patched.bin")).unwrap() == other);
    drop((map, gm, f, g));
    fs::write(mnt.join(".cafs/commit"), b"mapped").unwrap();
    let pdh = fs::read_to_string(mnt.join(".cafs/hash")).unwrap().trim().to_string();
    let (status, _) = w.stop();
    assert!(status.success());
    // What was committed, read back from a fresh read-only mount.
    let ro = MountedCafsd::start(&state, &mnt, &["--pdh", &pdh]);
    assert!(fs::read(mnt.join("m.bin")).unwrap() == want, "the mapped stores were committed");
    assert!(fs::read(mnt.join("patched.bin")).unwrap() == other, "the patch through the map was committed");
    ro.stop();
}
