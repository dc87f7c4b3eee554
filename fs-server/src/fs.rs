//! The filesystem core: FUSE-free and store-agnostic, so it is tested directly. The `fuser` adapter (a thin
//! layer) translates kernel requests into calls here and errors into errnos.
//!
//! - [`extents`]: a file's contents as extents of stored blocks, buffer blocks and holes.

pub mod extents;
