//! The privileged helper's library: everything `cafs-mount` decides before it touches the system, kept apart
//! from the binary so that each check is tested directly.
//!
//! - [`target`]: whether a peer may mount at a path, decided on a directory fd opened without following
//!   symlinks, so that the checked directory is the one mounted on.
//! - [`helper`]: the operations for a peer (mount and hand over; unmount its own cafs mount) and the daemon loop;
//! - [`mount`]: opening `/dev/fuse` and `mount(2)` with the one fixed set of options (cafsd's root development
//!   mode uses it too, so there is one place that mounts);
//! - [`wire`]: the messages on the helper's socket and on cafsd's fd socket (length-prefixed JSON, an fd
//!   passed with `SCM_RIGHTS`, the peer known by `SO_PEERCRED`), shared by both ends so that they cannot drift.

pub mod helper;
pub mod mount;
pub mod target;
pub mod wire;
