//! Copies that share blocks (`copy_file_range`): the destination is pointed at the source's stored pieces, so no
//! byte is read, written or stored again, and the two files change independently afterwards (a later write to
//! either makes its own extents). Bytes of the source still in a write buffer are stored first; a range with a
//! hole is left to the kernel, which copies it by reads and writes (`EOPNOTSUPP`), since a hole cannot be
//! journaled as a range of stored bytes. And ranges made holes (`fallocate`'s punching and zeroing): the other
//! way to change a file's bytes without writing any.

use super::*;

/// The most one call copies: `copy_file_range` answers with a 32-bit count.
const MAX_COPY: u64 = (u32::MAX as u64) & !0xfff;

impl Filesystem {
    /// Makes `len` bytes of `to` from `at_out` on the same bytes as `from` from `at_in` (clamped to `from`'s
    /// size), sharing its stored blocks; returns how many. Overlapping ranges of one file are `EINVAL`.
    pub fn copy_range(&self, from: Ino, at_in: u64, to: Ino, at_out: u64, len: u64) -> Result<u64, FsError> {
        let len = len.min(MAX_COPY);
        at_out.checked_add(len).ok_or(FsError::Invalid("a copy past the largest file offset"))?;
        let mut synced = false;
        loop {
            let mut st = self.lock();
            let plan = st.table.get(from)?.body.file()?.read_plan(at_in, len);
            st.table.get(to)?.body.file()?;
            let total: u64 = plan.iter().map(|p| p.len).sum();
            if total == 0 {
                return Ok(0);
            }
            if from == to && at_in < at_out + total && at_out < at_in + total {
                return Err(FsError::Invalid("the ranges of a copy within one file overlap"));
            }
            if plan.iter().any(|p| p.src == Source::Hole) {
                return Err(FsError::NotSupported("a range with a hole is copied by reads and writes"));
            }
            if plan.iter().any(|p| matches!(p.src, Source::Buffer { .. })) {
                // Store the source's buffered bytes, once; a writer that buffers more meanwhile gets the
                // kernel's copy.
                if synced {
                    return Err(FsError::NotSupported("the source keeps changing"));
                }
                drop(st);
                self.fsync(from)?;
                synced = true;
                continue;
            }
            let mut ranges = Vec::with_capacity(plan.len());
            let mut at = at_out;
            let t = now();
            let i = st.table.get_mut(to)?;
            let x = i.body.file_mut()?;
            for p in plan {
                let Source::Stored { block, offset } = p.src else { unreachable!("only stored pieces are left") };
                ranges.push(StoredRange { at, len: p.len, locator: block.stripped_string(), offset });
                x.write(at, p.len, Source::Stored { block, offset });
                at += p.len;
            }
            i.meta.mtime = t;
            i.meta.ctime = t;
            let mtime_ns = to_ns(t);
            st.generation += 1;
            self.shared.log(&st.table, |table| Some(Record::Stored { path: table.path(to)?, ranges, mtime_ns }));
            return Ok(total);
        }
    }

    /// Makes `len` bytes of `ino` from `offset` a hole (zeros no block holds), as `fallocate`'s
    /// `FALLOC_FL_PUNCH_HOLE` (with `keep_size`: the range is clipped to the file) and `FALLOC_FL_ZERO_RANGE`
    /// (which extends the file unless `keep_size`) do.
    pub fn zero_range(&self, ino: Ino, offset: u64, len: u64, keep_size: bool) -> Result<(), FsError> {
        let end = offset.checked_add(len).ok_or(FsError::Invalid("a range past the largest file offset"))?;
        let mut st = self.lock();
        let t = now();
        let i = st.table.get_mut(ino)?;
        let x = i.body.file_mut()?;
        let end = if keep_size { end.min(x.size()) } else { end };
        if end <= offset {
            return Ok(());
        }
        x.write(offset, end - offset, Source::Hole);
        i.meta.mtime = t;
        i.meta.ctime = t;
        st.generation += 1;
        let (at, len, mtime_ns) = (offset, end - offset, to_ns(t));
        self.shared.log(&st.table, |table| Some(Record::Zeroed { path: table.path(ino)?, at, len, mtime_ns }));
        Ok(())
    }
}
