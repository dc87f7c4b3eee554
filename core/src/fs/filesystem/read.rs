//! The read path: bytes still in a write buffer are copied under the lock; stored bytes come through the block
//! cache without holding it. Also the rewriting of files whose blocks are mostly garbage.

use super::*;

impl Filesystem {
    /// Reads up to `len` bytes at `offset`. A read that continues the file's previous one also starts fetches
    /// of the blocks within `readahead` past it, so that a sequential reader finds them fetched (and verified).
    /// A read within one stored block is a view of the cached block, not a copy.
    pub fn read(&self, ino: Ino, offset: u64, len: u64) -> Result<Bytes, FsError> {
        enum Piece {
            Zeros(usize),
            Copied(Bytes),
            Stored(Locator, usize, usize),
        }
        let mut pieces = Vec::new();
        let mut total = 0u64;
        let mut ahead: Vec<Locator> = Vec::new();
        {
            let mut st = self.lock();
            let State { table, buffers, read_ends, .. } = &mut *st;
            let x = table.get(ino)?.body.file()?;
            for piece in x.read_plan(offset, len) {
                total += piece.len;
                pieces.push(match piece.src {
                    Source::Hole => Piece::Zeros(piece.len as usize),
                    Source::Buffer { id, offset } => {
                        let buf = buffers
                            .get(&id)
                            .ok_or_else(|| FsError::Internal("a buffer a read plan named is gone".into()))?;
                        Piece::Copied(Bytes::copy_from_slice(buf.bytes(offset, piece.len)))
                    }
                    Source::Stored { block, offset } => Piece::Stored(block, offset as usize, piece.len as usize),
                });
            }
            let end = offset + total;
            // Several kernel threads read ahead at once, so a sequential stream arrives slightly out of order.
            let previous = read_ends.insert(ino, end);
            let sequential = offset == 0 || previous.is_some_and(|p| p.abs_diff(offset) <= READ_ORDER_SLACK);
            if sequential && self.shared.opts.readahead > 0 && total > 0 {
                for piece in x.read_plan(end, self.shared.opts.readahead) {
                    if let Source::Stored { block, .. } = piece.src
                        && !ahead.contains(&block)
                        && !pieces.iter().any(|p| matches!(p, Piece::Stored(b, ..) if *b == block))
                    {
                        ahead.push(block);
                    }
                }
            }
        }
        for block in ahead {
            if self.shared.cache.has(&block) {
                continue;
            }
            let shared = self.shared.clone();
            self.shared.rt.spawn(async move {
                // A failure here is reported by the read that needs the block (which fetches it again).
                if let Err(e) = shared.cache.get(shared.store.as_ref(), &block).await {
                    tracing::debug!(error = %e, %block, "read-ahead failed");
                }
            });
        }
        // Stored pieces are fetched without the lock.
        let fetch = |block: &Locator| {
            self.shared.rt.block_on(self.shared.cache.get(self.shared.store.as_ref(), block)).map_err(FsError::from)
        };
        if let [Piece::Stored(block, off, n)] = pieces.as_slice() {
            return Ok(fetch(block)?.slice(*off..off + n));
        }
        let mut out = Vec::with_capacity(total as usize);
        for piece in pieces {
            match piece {
                Piece::Zeros(n) => out.resize(out.len() + n, 0),
                Piece::Copied(b) => out.extend_from_slice(&b),
                Piece::Stored(block, off, n) => out.extend_from_slice(&fetch(&block)?[off..off + n]),
            }
        }
        Ok(Bytes::from(out))
    }

    /// `lseek`'s `SEEK_DATA` (`data`) or `SEEK_HOLE` from `offset` (see [`Extents::seek`]): where the next data
    /// or hole starts; [`FsError::NoSuchOffset`] at or past the end.
    pub fn seek(&self, ino: Ino, offset: u64, data: bool) -> Result<u64, FsError> {
        let st = self.lock();
        st.table.get(ino)?.body.file()?.seek(offset, data).ok_or(FsError::NoSuchOffset)
    }

    /// Rewrites stored pieces into new buffers (which the next flush packs into new blocks), so that a commit
    /// no longer refers to blocks that are mostly garbage. A piece the tree changed meanwhile is left alone.
    /// Contents and times stay as they are.
    pub(super) fn repack(&self, pieces: Vec<LivePiece>) -> Result<(), FsError> {
        let mut by_block: HashMap<Locator, Vec<(Ino, u64, u64, u64)>> = HashMap::new();
        for (ino, at, block, offset, len) in pieces {
            by_block.entry(block).or_default().push((ino, at, offset, len));
        }
        tracing::info!(blocks = by_block.len(), "repacking blocks that are mostly garbage");
        for (block, pieces) in by_block {
            let data = self
                .shared
                .rt
                .block_on(self.shared.cache.get(self.shared.store.as_ref(), &block))
                .map_err(FsError::from)?;
            for (ino, at, offset, len) in pieces {
                let mut st = self.lock();
                let unchanged = match st.table.get(ino).map(|i| &i.body) {
                    Ok(Body::File(x)) => {
                        let plan = x.read_plan(at, len);
                        plan.len() == 1
                            && plan[0].len == len
                            && plan[0].src == Source::Stored { block: block.clone(), offset }
                    }
                    _ => false,
                };
                if unchanged {
                    self.buffer_bytes(&mut st, ino, at, &data[offset as usize..(offset + len) as usize])?;
                    drop(self.within_budget(st));
                }
            }
        }
        Ok(())
    }
}
