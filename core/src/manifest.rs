//! The Arvados manifest codec: manifest text ⇄ collection tree, and the portable data hash (PDH).
//!
//! A [`Manifest`] is a directory tree whose files are lists of segments of immutable blocks, plus the table of
//! blocks they point into. [`Manifest::parse`] reads any valid manifest text (normalized or not, signed or not)
//! strictly: every malformed input is an error naming the line and token, never a panic or a guess.
//! [`Manifest::to_text`] always writes the **normalized** form, byte-for-byte what the Arvados Python SDK writes
//! for the same tree (depth-first streams, files sorted, each block listed once per stream in order of first use,
//! adjacent ranges merged, empty directories as `0:0:\056`), so one tree has exactly one text and one PDH.

mod escape;
pub mod parse;
mod tree;
mod write;

use std::fmt;

pub use escape::{escape_into, escape_name, unescape};
pub use parse::{MAX_DEPTH, ParseError, ParseErrorKind, Renamed};
pub use tree::{BlockId, Dir, Entry, File, Name, Segment, TreeError};

use crate::locator::{Locator, md5, parse_decimal, parse_md5_hex, write_hex};

/// A collection tree together with the blocks its files point into.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    blocks: Vec<Locator>,
    /// Interning table so that a locator appears once in `blocks`.
    index: std::collections::HashMap<Locator, BlockId>,
    root: Dir,
}

impl Manifest {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses manifest text. See [`ParseErrorKind`] for what is refused.
    pub fn parse(text: &[u8]) -> Result<Self, ParseError> {
        parse::parse(text)
    }

    /// Parses a manifest that another writer may have made, presenting the names POSIX cannot hold instead of
    /// refusing them — components `.`, `..`, empty or with NUL bytes, and a file and a directory of one name
    /// (see [`parse::present_component`]) — and returns what it renamed. Every byte of every file stays
    /// reachable. Anything else wrong is refused as [`Manifest::parse`] refuses it.
    pub fn parse_foreign(text: &[u8]) -> Result<(Self, Vec<Renamed>), ParseError> {
        parse::parse_foreign(text)
    }

    /// The normalized manifest text, locators with their hints (signatures) as parsed.
    pub fn to_text(&self) -> String {
        write::write(self, false)
    }

    /// The normalized manifest text with every locator stripped to `md5+size`: the text the PDH names.
    pub fn to_stripped_text(&self) -> String {
        write::write(self, true)
    }

    /// The portable data hash: MD5 of the stripped normalized text, `+`, its length.
    pub fn pdh(&self) -> Pdh {
        Pdh::of_text(self.to_stripped_text().as_bytes())
    }

    pub fn root(&self) -> &Dir {
        &self.root
    }

    pub fn root_mut(&mut self) -> &mut Dir {
        &mut self.root
    }

    /// The table of blocks, indexed by [`BlockId`].
    pub fn blocks(&self) -> &[Locator] {
        &self.blocks
    }

    pub fn block(&self, id: BlockId) -> &Locator {
        &self.blocks[id.index()]
    }

    /// Adds `locator` to the block table (once) and returns its id.
    pub fn add_block(&mut self, locator: Locator) -> BlockId {
        if let Some(&id) = self.index.get(&locator) {
            return id;
        }
        let id = BlockId::new(self.blocks.len());
        self.blocks.push(locator.clone());
        self.index.insert(locator, id);
        id
    }

    /// The entry at a `/`-separated path relative to the root (`""` is the root itself).
    pub fn find(&self, path: &[u8]) -> Option<EntryRef<'_>> {
        let mut dir = &self.root;
        let mut parts = path.split(|&b| b == b'/').filter(|p| !p.is_empty()).peekable();
        if parts.peek().is_none() {
            return Some(EntryRef::Dir(dir));
        }
        while let Some(part) = parts.next() {
            match dir.get(part)? {
                Entry::Dir(d) if parts.peek().is_some() => dir = d,
                Entry::Dir(d) => return Some(EntryRef::Dir(d)),
                Entry::File(f) if parts.peek().is_none() => return Some(EntryRef::File(f)),
                Entry::File(_) => return None,
            }
        }
        None
    }

    /// How deeply directories nest: 0 for a flat collection, 1 when the root has a subdirectory, and so on.
    pub fn depth(&self) -> usize {
        let mut deepest = 0;
        let mut stack: Vec<(&Dir, usize)> = vec![(&self.root, 0)];
        while let Some((dir, depth)) = stack.pop() {
            deepest = deepest.max(depth);
            for (_, entry) in dir.iter() {
                if let Entry::Dir(d) = entry {
                    stack.push((d, depth + 1));
                }
            }
        }
        deepest
    }

    /// How many files and directories the tree holds, the root not counted.
    pub fn entries(&self) -> usize {
        let mut n = 0;
        let mut stack: Vec<&Dir> = vec![&self.root];
        while let Some(dir) = stack.pop() {
            n += dir.len();
            stack.extend(dir.iter().filter_map(|(_, e)| match e {
                Entry::Dir(d) => Some(d),
                Entry::File(_) => None,
            }));
        }
        n
    }

    /// Every file with its path (`a/b/c`), depth-first in name order.
    pub fn files(&self) -> Vec<(Vec<u8>, &File)> {
        let mut out = Vec::new();
        let mut stack: Vec<(Vec<u8>, &Dir)> = vec![(Vec::new(), &self.root)];
        while let Some((prefix, dir)) = stack.pop() {
            let mut subdirs = Vec::new();
            for (name, entry) in dir.iter() {
                let mut path = prefix.clone();
                if !path.is_empty() {
                    path.push(b'/');
                }
                path.extend_from_slice(name);
                match entry {
                    Entry::File(f) => out.push((path, f)),
                    Entry::Dir(d) => subdirs.push((path, d)),
                }
            }
            stack.extend(subdirs.into_iter().rev());
        }
        out
    }
}

/// A borrowed entry found by path.
#[derive(Debug, Clone, Copy)]
pub enum EntryRef<'a> {
    File(&'a File),
    Dir(&'a Dir),
}

/// A portable data hash, `md5hex+length` of a stripped normalized manifest: the name of a collection version.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pdh {
    md5: [u8; 16],
    len: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad portable data hash {0:?}: expected <32 lowercase hex>+<length>")]
pub struct PdhError(pub String);

impl Pdh {
    /// The PDH of stripped manifest text.
    pub fn of_text(text: &[u8]) -> Self {
        Self { md5: md5(text), len: text.len() as u64 }
    }

    /// The PDH of the empty collection (`d41d8cd98f00b204e9800998ecf8427e+0`).
    pub fn empty() -> Self {
        Self::of_text(b"")
    }

    pub fn parse(s: &str) -> Result<Self, PdhError> {
        let err = || PdhError(s.chars().take(100).collect());
        let b = s.as_bytes();
        if b.len() < 34 || b[32] != b'+' {
            return Err(err());
        }
        let md5 = parse_md5_hex(&b[..32]).ok_or_else(err)?;
        let len = parse_decimal(&b[33..]).ok_or_else(err)?;
        Ok(Self { md5, len })
    }

    pub fn md5(&self) -> &[u8; 16] {
        &self.md5
    }

    /// Length of the stripped manifest text it names.
    pub fn text_len(&self) -> u64 {
        self.len
    }
}

impl fmt::Display for Pdh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::with_capacity(48);
        write_hex(&mut out, &self.md5);
        f.write_str(std::str::from_utf8(&out).expect("hex is ASCII"))?;
        write!(f, "+{}", self.len)
    }
}

impl fmt::Debug for Pdh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pdh({self})")
    }
}

impl std::str::FromStr for Pdh {
    type Err = PdhError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests;
