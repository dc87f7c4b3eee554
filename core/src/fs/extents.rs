//! A file's contents as a list of extents: runs of bytes that live in a stored block, in an in-memory buffer
//! block not yet uploaded, or nowhere (a hole of zeros from a sparse extension or truncate).
//!
//! A write patches the list at once (the Arvados note's "patch the segment list"): the written range is cut out
//! and replaced by one extent pointing at the bytes just copied into the file's buffer. Appends that continue the
//! last extent extend it, so a once-through streaming write keeps one extent per block.

use crate::locator::Locator;

/// Identifies an in-memory buffer block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufId(pub u64);

/// Where an extent's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `offset` bytes into a stored block.
    Stored { block: Locator, offset: u64 },
    /// `offset` bytes into a buffer block that is not (yet) stored.
    Buffer { id: BufId, offset: u64 },
    /// Zeros.
    Hole,
}

impl Source {
    /// The same source `by` bytes further on.
    fn advanced(&self, by: u64) -> Source {
        match self {
            Source::Stored { block, offset } => Source::Stored { block: block.clone(), offset: offset + by },
            Source::Buffer { id, offset } => Source::Buffer { id: *id, offset: offset + by },
            Source::Hole => Source::Hole,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    pub src: Source,
}

/// A piece of a read: `len` bytes from `src`.
pub type Piece = Extent;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extents {
    list: Vec<Extent>,
    size: u64,
}

impl Extents {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn iter(&self) -> impl Iterator<Item = &Extent> {
        self.list.iter()
    }

    /// Appends an extent at the end, merging it into the last one when it continues it.
    pub fn push(&mut self, len: u64, src: Source) {
        if len == 0 {
            return;
        }
        self.size += len;
        if let Some(last) = self.list.last_mut()
            && last.src.advanced(last.len) == src
        {
            last.len += len;
            return;
        }
        self.list.push(Extent { len, src });
    }

    /// Index of the extent containing byte `at`, and `at`'s offset within it; `(len, 0)` at or past the end.
    fn find(&self, at: u64) -> (usize, u64) {
        // Streaming writes and reads work at the end, so look there first.
        if let Some(last) = self.list.last() {
            let last_start = self.size - last.len;
            if at >= last_start {
                return if at < self.size { (self.list.len() - 1, at - last_start) } else { (self.list.len(), 0) };
            }
        }
        let mut start = 0;
        for (i, e) in self.list.iter().enumerate() {
            if at < start + e.len {
                return (i, at - start);
            }
            start += e.len;
        }
        (self.list.len(), 0)
    }

    /// Splits so that an extent boundary falls at `at` (≤ size); returns the index of the extent starting there.
    fn split_at(&mut self, at: u64) -> usize {
        let (i, off) = self.find(at);
        if off == 0 {
            return i;
        }
        let e = &mut self.list[i];
        let tail = Extent { len: e.len - off, src: e.src.advanced(off) };
        e.len = off;
        self.list.insert(i + 1, tail);
        i + 1
    }

    /// Makes `offset..offset+len` read from `src`, extending the file (with a hole for any gap) if needed.
    pub fn write(&mut self, offset: u64, len: u64, src: Source) {
        if len == 0 {
            return;
        }
        if offset >= self.size {
            let gap = offset - self.size;
            self.push(gap, Source::Hole);
            self.push(len, src);
            return;
        }
        let end = offset + len;
        let first = self.split_at(offset);
        let last = if end >= self.size { self.list.len() } else { self.split_at(end) };
        let removed: u64 = self.list[first..last].iter().map(|e| e.len).sum();
        self.list.splice(first..last, [Extent { len, src }]);
        self.size = self.size - removed + len;
        self.merge_around(first);
    }

    /// Merges the extent at `i` with its neighbours where they continue each other.
    fn merge_around(&mut self, i: usize) {
        if i + 1 < self.list.len() && self.list[i].src.advanced(self.list[i].len) == self.list[i + 1].src {
            self.list[i].len += self.list[i + 1].len;
            self.list.remove(i + 1);
        }
        if i > 0 && self.list[i - 1].src.advanced(self.list[i - 1].len) == self.list[i].src {
            self.list[i - 1].len += self.list[i].len;
            self.list.remove(i);
        }
    }

    /// Cuts the file to `size` bytes, or extends it with a hole.
    pub fn truncate(&mut self, size: u64) {
        if size >= self.size {
            let gap = size - self.size;
            self.push(gap, Source::Hole);
            return;
        }
        let i = self.split_at(size);
        self.list.truncate(i);
        self.size = size;
    }

    /// Where the next data (`data`) or the next hole starts at or after `at`, as `lseek`'s `SEEK_DATA` and
    /// `SEEK_HOLE` say: the end of the file counts as a hole; `None` when `at` is at or past the end (`ENXIO`).
    /// Holes are exact to the byte (no block rounding), and bytes written, even zeros, are data.
    pub fn seek(&self, at: u64, data: bool) -> Option<u64> {
        if at >= self.size {
            return None;
        }
        let (first, off) = self.find(at);
        let mut start = at - off;
        for (i, e) in self.list[first..].iter().enumerate() {
            if (e.src != Source::Hole) == data {
                return Some(if i == 0 { at } else { start });
            }
            start += e.len;
        }
        if data { None } else { Some(self.size) }
    }

    /// The pieces that make up `offset..offset+len`, clamped to the file's size.
    pub fn read_plan(&self, offset: u64, len: u64) -> Vec<Piece> {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return Vec::new();
        }
        let (mut i, mut off) = self.find(offset);
        let mut at = offset;
        let mut out = Vec::new();
        while at < end {
            let e = &self.list[i];
            let take = (e.len - off).min(end - at);
            out.push(Extent { len: take, src: e.src.advanced(off) });
            at += take;
            i += 1;
            off = 0;
        }
        out
    }

    /// Replaces every reference to buffer `id` with the stored block `block`, whose bytes from `shift` on are
    /// the buffer's (the buffer was packed into it with other small files). Returns the ranges that changed, as
    /// `(offset in the file, length, offset in the block)`.
    pub fn buffer_stored_at(&mut self, id: BufId, block: &Locator, shift: u64) -> Vec<(u64, u64, u64)> {
        let mut changed = Vec::new();
        let mut at = 0;
        for e in &mut self.list {
            if let Source::Buffer { id: b, offset } = e.src
                && b == id
            {
                e.src = Source::Stored { block: block.clone(), offset: offset + shift };
                changed.push((at, e.len, offset + shift));
            }
            at += e.len;
        }
        changed
    }

    /// The ranges of buffer `id` the file still reads, as `(offset in the buffer, length)`, sorted and merged.
    pub fn buffer_ranges(&self, id: BufId) -> Vec<(u64, u64)> {
        let mut ranges: Vec<(u64, u64)> = self
            .list
            .iter()
            .filter_map(|e| match e.src {
                Source::Buffer { id: b, offset } if b == id => Some((offset, e.len)),
                _ => None,
            })
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (off, len) in ranges {
            match merged.last_mut() {
                Some((o, l)) if off <= *o + *l => *l = (*l).max(off + len - *o),
                _ => merged.push((off, len)),
            }
        }
        merged
    }

    /// Points every reference into buffer `id` at `moved(offset)` instead (after the buffer was compacted).
    pub fn remap_buffer(&mut self, id: BufId, moved: impl Fn(u64) -> u64) {
        for e in &mut self.list {
            if let Source::Buffer { id: b, offset } = &mut e.src
                && *b == id
            {
                *offset = moved(*offset);
            }
        }
    }

    /// Whether any byte still lives only in buffer `id`.
    pub fn uses_buffer(&self, id: BufId) -> bool {
        self.list.iter().any(|e| matches!(e.src, Source::Buffer { id: b, .. } if b == id))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Reads through the plan against a model of the sources: buffer `k` holds byte `(k * 31 + i) % 251` at
    /// offset `i`; a stored block likewise, keyed by its size.
    fn materialize(x: &Extents) -> Vec<u8> {
        let mut out = Vec::new();
        for p in x.read_plan(0, u64::MAX) {
            for i in 0..p.len {
                out.push(match &p.src {
                    Source::Hole => 0,
                    Source::Buffer { id, offset } => ((id.0 * 31 + offset + i) % 251) as u8 + 1,
                    Source::Stored { block, offset } => ((block.size() * 17 + offset + i) % 251) as u8 + 1,
                });
            }
        }
        out
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write { offset: u64, len: u64, buf: u64, buf_off: u64 },
        Truncate(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..300, 1u64..100, 0u64..4, 0u64..50).prop_map(|(offset, len, buf, buf_off)| Op::Write { offset, len, buf, buf_off }),
            1 => (0u64..300).prop_map(Op::Truncate),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Any sequence of writes and truncates gives the bytes a plain byte vector gives.
        #[test]
        fn behaves_like_a_byte_vector(ops in proptest::collection::vec(op(), 1..40)) {
            let mut x = Extents::new();
            let mut model: Vec<u8> = Vec::new();
            for op in ops {
                match op {
                    Op::Write { offset, len, buf, buf_off } => {
                        x.write(offset, len, Source::Buffer { id: BufId(buf), offset: buf_off });
                        let end = (offset + len) as usize;
                        if model.len() < end {
                            model.resize(end, 0);
                        }
                        for i in 0..len {
                            model[(offset + i) as usize] = ((buf * 31 + buf_off + i) % 251) as u8 + 1;
                        }
                    }
                    Op::Truncate(size) => {
                        x.truncate(size);
                        model.resize(size as usize, 0);
                    }
                }
                prop_assert_eq!(x.size(), model.len() as u64);
                prop_assert_eq!(materialize(&x), model.clone());
                // No two neighbours continue each other (the list stays minimal).
                for w in x.list.windows(2) {
                    prop_assert_ne!(w[0].src.advanced(w[0].len), w[1].src.clone());
                }
                // Any sub-range reads as the model's slice.
                let (a, b) = (model.len() as u64 / 3, model.len() as u64 / 2 + 7);
                let part: u64 = x.read_plan(a, b).iter().map(|p| p.len).sum();
                prop_assert_eq!(part, (model.len() as u64).min(a + b).saturating_sub(a));
                // Seeks find the model's next written byte and next zero (written bytes are never zero here).
                for at in [0, a, b, model.len() as u64 - model.len().min(1) as u64, model.len() as u64] {
                    let next = |hole: bool| model.iter().skip(at as usize).position(|&v| (v == 0) == hole);
                    let at_end = at >= model.len() as u64;
                    let want_data = if at_end { None } else { next(false).map(|i| at + i as u64) };
                    let want_hole = if at_end { None } else { Some(next(true).map_or(model.len() as u64, |i| at + i as u64)) };
                    prop_assert_eq!(x.seek(at, true), want_data, "SEEK_DATA {}", at);
                    prop_assert_eq!(x.seek(at, false), want_hole, "SEEK_HOLE {}", at);
                }
            }
        }
    }

    #[test]
    fn streaming_appends_stay_one_extent() {
        let mut x = Extents::new();
        for i in 0..1000u64 {
            x.write(i * 4096, 4096, Source::Buffer { id: BufId(1), offset: i * 4096 });
        }
        assert_eq!(x.iter().count(), 1);
        assert_eq!(x.size(), 4096 * 1000);
    }

    #[test]
    fn uploaded_buffers_become_stored_blocks() {
        let mut x = Extents::new();
        x.write(0, 10, Source::Buffer { id: BufId(7), offset: 0 });
        x.write(20, 5, Source::Buffer { id: BufId(8), offset: 0 });
        assert!(x.uses_buffer(BufId(7)));
        let loc = Locator::of(&[1u8; 10]);
        assert_eq!(x.buffer_stored_at(BufId(7), &loc, 0), vec![(0, 10, 0)]);
        assert!(!x.uses_buffer(BufId(7)));
        // What changed is reported by file offset, with the shift of a pack applied.
        let pack = Locator::of(&[2u8; 40]);
        assert_eq!(x.buffer_stored_at(BufId(8), &pack, 30), vec![(20, 5, 30)]);
        assert!(!x.uses_buffer(BufId(8)));
        assert_eq!(x.read_plan(2, 3), vec![Extent { len: 3, src: Source::Stored { block: loc, offset: 2 } }]);
        assert_eq!(x.read_plan(12, 3), vec![Extent { len: 3, src: Source::Hole }]);
    }
}
