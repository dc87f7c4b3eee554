//! cafsd: the daemon that serves cafs mounts, and the library behind `cafsd` and `fsctl`.
//!
//! It stands on the core (crate `cafs-core`: formats, block stores, catalogs, the journal, the FUSE-free
//! filesystem, collections), whose modules it re-exports so that one library name, `cafs`, reaches all of it.
//! What this crate adds, from the kernel up to the operator:
//! - [`fuse`]: the `fuser` adapter that turns kernel requests into calls on the views of a mount;
//! - [`namespace`]: the mount that shows the whole catalog (`by_ref/`, `by_pdh/`, `history/`);
//! - [`control`]: the `.cafs` control files inside a mount, and the background commits and follows;
//! - [`mount`]: the kernel mount a cafsd serves, from the helper's fd or its own;
//! - [`server`]: the mounts one cafsd serves, and the socket on which the helper hands their fds over;
//! - [`socket`]: binding cafsd's own Unix sockets without taking one another process serves;
//! - [`systemd`]: readiness and the file descriptor store that keeps mounts across cafsd restarts;
//! - [`api`]: the gRPC API over those mounts, and who may drive which;
//! - [`metrics`]: what cafsd counts, served to Prometheus;
//! - [`config`]: the configuration file that selects a node's block store and catalog, and tunes the filesystem.

pub use cafs_core::{Locator, Manifest, Pdh};
pub use cafs_core::{bigbuf, catalog, collection, fs, journal, locator, manifest, policy, store, transfer};

pub mod api;
pub mod config;
pub mod control;
pub mod fuse;
pub mod metrics;
pub mod mount;
pub mod namespace;
pub mod server;
pub mod socket;
pub mod systemd;
