//! One block in one file, as the local store and the disk cache keep them: written to a temporary file (with the
//! CRC-32 of its bytes in an extended attribute) before it is renamed into place, and read back checked.
//!
//! The CRC (`user.cafs.crc32`) is recorded when the block's MD5 is already known to match, so checking a read
//! against it runs at memory speed where MD5 holds one core to about 700 MiB/s. It guards against the disk's
//! errors, not against an attacker: whoever can rewrite a block file and its attribute can rewrite cafs's state
//! directory anyway. A file without a CRC (written before, or on a filesystem without user attributes) is checked
//! with MD5, as is one whose CRC does not match, so that a damaged attribute alone never costs a good block.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use bytes::Bytes;

use crate::locator::{Locator, Md5};

/// A block file is read and checked this many bytes at a time.
const READ_CHUNK: usize = 4 << 20;

/// Why a block file's bytes cannot be served.
#[derive(Debug)]
pub(super) enum BadFile {
    /// Reading failed.
    Io(io::Error),
    /// The bytes are not the block's: the reason.
    Corrupt(String),
}

/// Writes `data` to the new file `tmp` with its CRC recorded, and makes it durable first when `sync`.
pub(super) fn write_tmp(tmp: &Path, data: &[u8], sync: bool) -> io::Result<()> {
    let mut f = fs::OpenOptions::new().write(true).create_new(true).open(tmp)?;
    f.write_all(data)?;
    // Without it (a filesystem without user attributes), reads of the block are checked with MD5.
    if let Err(e) = set_crc(&f, crc32fast::hash(data)) {
        tracing::debug!(path = %tmp.display(), error = %e, "no CRC recorded for a block; its reads use MD5");
    }
    if sync {
        f.sync_all()?;
    }
    Ok(())
}

/// Reads the block `locator` from `file`, checked against the CRC recorded on the file, or against the locator's
/// MD5. Good bytes under a missing or wrong CRC get the right one recorded for the next read.
pub(super) fn read_checked(mut file: fs::File, locator: &Locator) -> Result<Bytes, BadFile> {
    // Checking each chunk as it arrives overlaps the check with the kernel's read-ahead of the rest, where
    // reading the whole file first and then checking it would do one after the other.
    let size = locator.size() as usize;
    // Read-ahead grows from a small window at the start of each file, so a block file read with the default
    // advice came back at 0.6–0.8 of one large file's speed from this VM's disk; sequential advice doubles the
    // window from the first read, and the block files then read as fast as the large file (bench/coldread.sh).
    if let Err(e) = nix::fcntl::posix_fadvise(&file, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL) {
        tracing::debug!(error = %e, "no read-ahead advice for a block file");
    }
    let mut data = crate::bigbuf::reused(size);
    let recorded = recorded_crc(&file);
    let (mut md5, mut crc) = (Md5::new(), crc32fast::Hasher::new());
    loop {
        let start = data.len();
        // One byte past the expected size is asked for, so that a longer file shows.
        let want = READ_CHUNK.min(size + 1 - start) as u64;
        let n = (&mut file).take(want).read_to_end(&mut data).map_err(BadFile::Io)?;
        match recorded {
            Some(_) => crc.update(&data[start..]),
            None => md5.update(&data[start..]),
        }
        if n == 0 || data.len() > size {
            break;
        }
    }
    if data.len() != size {
        return Err(BadFile::Corrupt(format!("{} bytes where the locator says {size}", data.len())));
    }
    if recorded.is_none_or(|r| r != crc.finalize()) {
        if recorded.is_some() {
            md5.update(&data);
        }
        if md5.finish() != *locator.md5() {
            return Err(BadFile::Corrupt("MD5 does not match".to_string()));
        }
        if recorded.is_some() {
            tracing::warn!(%locator, "a block's recorded CRC was wrong and its MD5 matches; CRC rewritten");
        }
        let _ = set_crc(&file, crc32fast::hash(&data));
    }
    Ok(crate::bigbuf::into_bytes(data))
}

/// The extended attribute that holds a block file's CRC-32 (little-endian).
const CRC_ATTR: &std::ffi::CStr = c"user.cafs.crc32";

/// Records `crc` on `file`.
pub(super) fn set_crc(file: &fs::File, crc: u32) -> io::Result<()> {
    let value = crc.to_le_bytes();
    // SAFETY: the fd is open for the whole call, the name is a NUL-terminated string, and `value` is 4 readable
    // bytes whose length is passed with them.
    let r = unsafe { libc::fsetxattr(file.as_raw_fd(), CRC_ATTR.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// The CRC-32 recorded on `file`, if there is one.
pub(super) fn recorded_crc(file: &fs::File) -> Option<u32> {
    let mut value = [0u8; 4];
    // SAFETY: the fd is open for the whole call, the name is a NUL-terminated string, and `value` is 4 writable
    // bytes whose length is passed with them; the kernel writes at most that many.
    let n = unsafe { libc::fgetxattr(file.as_raw_fd(), CRC_ATTR.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
    (n == 4).then(|| u32::from_le_bytes(value))
}
