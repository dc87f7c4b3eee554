//! cafsd: the daemon that serves cafs mounts, and the library behind `cafsd` and `fsctl`.
//!
//! It stands on the core (crate `cafs-core`: formats, block stores, catalogs, the journal, the FUSE-free
//! filesystem, collections), whose modules it re-exports so that one library name, `cafs`, reaches all of it.
//! What this crate adds, from the kernel up to the operator:
//! - [`vfs`]: what a mount shows and what each kernel request does there, FUSE-free: the views of one
//!   collection or of the whole catalog (the namespace: `by_ref/`, `by_pdh/`, `history/`), the `.cafs`
//!   control files, listings, resent requests and the requester's permissions;
//! - [`fuse`]: the `fuser` adapter that translates kernel requests into calls on the vfs, and its errors into
//!   errnos;
//! - [`daemon`]: the mounts one cafsd serves (single collections and namespaces), the socket on which the
//!   helper hands their fds over, the kernel mounts themselves, and systemd's readiness and fd store that keep
//!   mounts across cafsd restarts;
//! - [`api`]: the gRPC API over those mounts, and who may drive which;
//! - [`metrics`]: what cafsd counts, served to Prometheus;
//! - [`socket`]: binding cafsd's own Unix sockets (the fd socket, the API, metrics) without taking a live one;
//! - [`config`]: the configuration file that selects a node's block store and catalog, and tunes the filesystem.

pub use cafs_core::{Locator, Manifest, Pdh};
pub use cafs_core::{arvados, bigbuf, catalog, collection, fs, journal, locator, manifest, policy, store, transfer};

pub mod api;
pub mod config;
pub mod daemon;
pub mod fuse;
pub mod metrics;
pub mod socket;
pub mod vfs;
