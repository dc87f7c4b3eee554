//! The in-memory collection tree: directories of named entries, files as segment lists over blocks.
//!
//! Names are raw bytes (what POSIX and FUSE hand us), ordered bytewise — for UTF-8 names that is the code-point
//! order the Arvados SDK sorts by, so the normalized text needs no second sort.

use std::collections::BTreeMap;
use std::collections::btree_map;

/// A file or directory name: raw bytes, never empty, never `.`/`..`, never containing `/` or NUL.
pub type Name = Box<[u8]>;

/// Index of a block in its manifest's block table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(u32);

impl BlockId {
    pub(crate) fn new(index: usize) -> Self {
        Self(u32::try_from(index).expect("a manifest holds fewer than 2^32 blocks"))
    }

    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// `len` bytes of block `block` starting at `offset` within that block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub block: BlockId,
    pub offset: u64,
    pub len: u64,
}

/// A file: its bytes are its segments' bytes, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct File {
    segments: Vec<Segment>,
}

impl File {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    pub fn size(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// Appends a segment, merging it into the last one when it continues it in the same block; empty segments
    /// carry no bytes and are dropped.
    pub fn push(&mut self, seg: Segment) {
        if seg.len == 0 {
            return;
        }
        if let Some(last) = self.segments.last_mut()
            && last.block == seg.block
            && last.offset + last.len == seg.offset
        {
            last.len += seg.len;
            return;
        }
        self.segments.push(seg);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    File(File),
    Dir(Dir),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    #[error("invalid name {0:?}: empty, '.', '..', or containing '/' or NUL")]
    InvalidName(String),
    #[error("{0:?} is a file, not a directory")]
    NotADirectory(String),
    #[error("{0:?} is a directory, not a file")]
    IsADirectory(String),
}

/// Whether `name` can name an entry: non-empty, not `.` or `..`, no `/` and no NUL.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.iter().any(|&b| b == b'/' || b == 0)
}

fn show(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

/// A directory: entries by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dir {
    entries: BTreeMap<Name, Entry>,
}

impl Dir {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn get(&self, name: &[u8]) -> Option<&Entry> {
        self.entries.get(name)
    }

    pub fn get_mut(&mut self, name: &[u8]) -> Option<&mut Entry> {
        self.entries.get_mut(name)
    }

    /// Entries in name order.
    pub fn iter(&self) -> btree_map::Iter<'_, Name, Entry> {
        self.entries.iter()
    }

    /// Removes and returns the entry called `name`.
    pub fn remove(&mut self, name: &[u8]) -> Option<Entry> {
        self.entries.remove(name)
    }

    /// The subdirectory `name`, created if absent.
    pub fn subdir(&mut self, name: &[u8]) -> Result<&mut Dir, TreeError> {
        if !valid_name(name) {
            return Err(TreeError::InvalidName(show(name)));
        }
        let entry = match self.entries.entry(name.into()) {
            btree_map::Entry::Occupied(o) => o.into_mut(),
            btree_map::Entry::Vacant(v) => v.insert(Entry::Dir(Dir::new())),
        };
        match entry {
            Entry::Dir(d) => Ok(d),
            Entry::File(_) => Err(TreeError::NotADirectory(show(name))),
        }
    }

    /// The file `name`, created empty if absent.
    pub fn file(&mut self, name: &[u8]) -> Result<&mut File, TreeError> {
        if !valid_name(name) {
            return Err(TreeError::InvalidName(show(name)));
        }
        // The common cases, a name past every other (normalized text lists names in order) and the last file
        // again, cost one comparison with the last key instead of tree searches; neither allocates a key.
        let past_last = match self.entries.last_key_value() {
            None => true,
            Some((last, _)) => &last[..] < name,
        };
        let entry = if past_last {
            self.entries.entry(name.into()).or_insert_with(|| Entry::File(File::new()))
        } else if self.entries.contains_key(name) {
            self.entries.get_mut(name).expect("checked above")
        } else {
            self.entries.entry(name.into()).or_insert_with(|| Entry::File(File::new()))
        };
        match entry {
            Entry::File(f) => Ok(f),
            Entry::Dir(_) => Err(TreeError::IsADirectory(show(name))),
        }
    }

    /// Fills an empty directory with files given in strictly increasing name order, each name valid (the
    /// parser's fast path), in one pass. Into a directory that has entries, they are added one by one.
    pub(crate) fn fill_sorted(&mut self, files: Vec<(Name, File)>) -> Result<(), TreeError> {
        let sorted = files.windows(2).all(|w| w[0].0 < w[1].0);
        if self.entries.is_empty() && sorted && files.iter().all(|(n, _)| valid_name(n)) {
            self.entries = files.into_iter().map(|(n, f)| (n, Entry::File(f))).collect();
            return Ok(());
        }
        for (name, f) in files {
            let into = self.file(&name)?;
            for seg in f.segments {
                into.push(seg);
            }
        }
        Ok(())
    }

    /// Inserts `entry` as `name`, replacing what was there; returns the old entry.
    pub fn insert(&mut self, name: &[u8], entry: Entry) -> Result<Option<Entry>, TreeError> {
        if !valid_name(name) {
            return Err(TreeError::InvalidName(show(name)));
        }
        Ok(self.entries.insert(name.into(), entry))
    }
}
