//! The normalized manifest writer — the same text the Arvados Python SDK's `manifest_text(normalize=True)` gives
//! for the same tree:
//! - streams depth-first: a directory's own stream (its files, in name order), then its subdirectories in name
//!   order; a directory with no files writes no stream of its own unless it is entirely empty (and not the
//!   root), which writes `./dir d41d8cd98f00b204e9800998ecf8427e+0 0:0:\056`;
//! - each stream lists every block its files use once, in order of first use, then one `pos:len:name` token per
//!   run of adjacent bytes, or `0:0:name` for an empty file.
//!
//! Blocks are deduplicated by the text that is written: with hints when writing signed text, by `md5+size` when
//! writing stripped text (so the PDH does not depend on signatures).

use std::collections::HashMap;

use super::escape::escape_into;
use super::{Dir, Entry, Manifest};

const EMPTY_BLOCK: &[u8] = b"d41d8cd98f00b204e9800998ecf8427e+0";

struct Writer<'m> {
    m: &'m Manifest,
    strip: bool,
    out: Vec<u8>,
    /// Canonical block index for each block id: ids whose written text is equal share one.
    canon: Vec<u32>,
    /// Stream offset of each canonical block in the stream being written, valid when `stamp` equals `generation`.
    offset: Vec<u64>,
    stamp: Vec<u32>,
    generation: u32,
}

pub(super) fn write(m: &Manifest, strip: bool) -> String {
    let n = m.blocks.len();
    let canon: Vec<u32> = if strip {
        let mut first: HashMap<([u8; 16], u64), u32> = HashMap::with_capacity(n);
        m.blocks.iter().enumerate().map(|(i, l)| *first.entry((*l.md5(), l.size())).or_insert(i as u32)).collect()
    } else {
        (0..n as u32).collect()
    };
    let mut w = Writer { m, strip, out: Vec::new(), canon, offset: vec![0; n], stamp: vec![0; n], generation: 0 };

    // Depth-first without recursion: directory depth is bounded by the parser, but trees built by other means
    // need not be, and a stack frame per level is a needless risk.
    let mut stack: Vec<(Vec<u8>, &Dir, bool)> = vec![(b".".to_vec(), &m.root, true)];
    while let Some((path, dir, is_root)) = stack.pop() {
        if dir.is_empty() {
            if !is_root {
                w.out.extend_from_slice(&path);
                w.out.extend_from_slice(b" d41d8cd98f00b204e9800998ecf8427e+0 0:0:\\056\n");
            }
            continue;
        }
        w.stream(&path, dir);
        let first_child = stack.len();
        for (name, entry) in dir.iter() {
            if let Entry::Dir(d) = entry {
                let mut sub = Vec::with_capacity(path.len() + 1 + name.len());
                sub.extend_from_slice(&path);
                sub.push(b'/');
                escape_into(&mut sub, name);
                stack.push((sub, d, false));
            }
        }
        stack[first_child..].reverse();
    }
    String::from_utf8(w.out).expect("names are escaped to UTF-8 and locators are ASCII")
}

impl Writer<'_> {
    /// Writes the stream line of `dir`'s files, if it has any.
    fn stream(&mut self, path: &[u8], dir: &Dir) {
        let files = || {
            dir.iter().filter_map(|(name, e)| match e {
                Entry::File(f) => Some((name, f)),
                Entry::Dir(_) => None,
            })
        };
        if files().next().is_none() {
            return;
        }
        self.generation += 1;
        let generation = self.generation;
        self.out.extend_from_slice(path);

        let mut stream_len = 0u64;
        let mut listed_any = false;
        for (_, f) in files() {
            for seg in f.segments() {
                let c = self.canon[seg.block.index()] as usize;
                if self.stamp[c] != generation {
                    self.stamp[c] = generation;
                    self.offset[c] = stream_len;
                    let loc = &self.m.blocks[c];
                    stream_len += loc.size();
                    listed_any = true;
                    self.out.push(b' ');
                    loc.write_to(&mut self.out, !self.strip);
                }
            }
        }
        // A stream of empty files still needs one locator.
        if !listed_any {
            self.out.push(b' ');
            self.out.extend_from_slice(EMPTY_BLOCK);
        }

        let mut num = itoa::Buffer::new();
        let mut escaped = Vec::new();
        for (name, f) in files() {
            escaped.clear();
            escape_into(&mut escaped, name);
            let mut span: Option<(u64, u64)> = None;
            for seg in f.segments() {
                let start = self.offset[self.canon[seg.block.index()] as usize] + seg.offset;
                match &mut span {
                    Some((_, end)) if *end == start => *end += seg.len,
                    _ => {
                        if let Some((s, e)) = span {
                            self.file_token(&mut num, s, e - s, &escaped);
                        }
                        span = Some((start, start + seg.len));
                    }
                }
            }
            let (s, e) = span.unwrap_or((0, 0));
            self.file_token(&mut num, s, e - s, &escaped);
        }
        self.out.push(b'\n');
    }

    fn file_token(&mut self, num: &mut itoa::Buffer, pos: u64, len: u64, name: &[u8]) {
        self.out.push(b' ');
        self.out.extend_from_slice(num.format(pos).as_bytes());
        self.out.push(b':');
        self.out.extend_from_slice(num.format(len).as_bytes());
        self.out.push(b':');
        self.out.extend_from_slice(name);
    }
}
