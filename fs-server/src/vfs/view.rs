//! A view: one collection shown in a mount, and how its own inode numbers become the kernel's. A mount of one
//! collection is one view whose numbers the kernel sees unchanged; a namespace mount gives each collection it
//! shows a slot, and the kernel's number is the slot above [`SLOT_SHIFT`] bits and the view's own number below.

use std::path::PathBuf;
use std::sync::Arc;

use crate::collection::{Collection, Origin};
use crate::fs::inode::{INO_LIMIT, ROOT};
use crate::vfs::control::Control;

/// A view's own inode numbers fit below this many bits (see [`INO_LIMIT`]).
pub const SLOT_SHIFT: u32 = 40;
pub(crate) const LOCAL_MASK: u64 = (1 << SLOT_SHIFT) - 1;
const _: () = assert!(INO_LIMIT < LOCAL_MASK);

/// One collection shown in a mount: the whole mount for a mount of one collection, or one directory of a
/// namespace mount.
pub struct View {
    pub coll: Arc<Collection>,
    pub control: Arc<Control>,
    /// Its number in the mount (0: the only one, numbers unchanged).
    pub(crate) slot: u64,
    /// The kernel number of the directory its root is in (its root's `..`).
    pub parent: u64,
    /// Where its root is, below the mount point (empty: the mount point itself).
    pub path: PathBuf,
}

impl View {
    /// The view that is a whole mount: the kernel sees the tree's own numbers.
    pub fn whole(coll: Arc<Collection>, control: Arc<Control>) -> Self {
        Self { coll, control, slot: 0, parent: ROOT, path: PathBuf::new() }
    }

    /// The kernel's number for the view's inode `local`.
    pub fn global(&self, local: u64) -> u64 {
        self.slot << SLOT_SHIFT | local
    }

    /// The view's own number for the kernel's `ino`, if `ino` is one of the view's.
    pub fn local(&self, ino: u64) -> Option<u64> {
        if self.slot == 0 {
            return Some(ino);
        }
        (ino >> SLOT_SHIFT == self.slot).then_some(ino & LOCAL_MASK)
    }

    /// Whether `other` shows the same place (it may be another opening of it).
    pub fn is(&self, other: &View) -> bool {
        self.slot == other.slot
    }

    /// Whether what it shows never changes (a hash names its bytes).
    pub fn immutable(&self) -> bool {
        matches!(self.coll.origin(), Origin::Pdh(_))
    }

    /// Whether what it shows changes only through this mount: it never changes, or it is writable (cafsd is its
    /// only writer, and every change is a kernel request). The kernel may then cache it for long.
    pub fn changes_only_here(&self) -> bool {
        self.immutable() || !self.coll.is_read_only()
    }
}

/// What a kernel inode number of a namespace mount names.
pub enum Node {
    /// One of the namespace's own directories.
    Dir(u64),
    /// An inode of a view, by the view's own number.
    In(Arc<View>, u64),
}
