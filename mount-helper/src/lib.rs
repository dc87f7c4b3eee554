//! The privileged helper's library: everything `cafs-mount` decides before it touches the system, kept apart
//! from the binary so that each check is tested directly.
//!
//! - [`target`]: whether a peer may mount at a path, decided on a directory fd opened without following
//!   symlinks, so that the checked directory is the one mounted on.

pub mod target;
