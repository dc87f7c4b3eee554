//! The cafs core: everything below the daemon, with no FUSE, gRPC or command line in it.
//!
//! Read top to bottom, the modules are the layers the daemon (crate `fs-server`) stands on:
//! - formats: [`locator`] (Keep-compatible block names `md5hex+size[+hints]` and the MD5 behind them) and
//!   [`manifest`] (the Arvados manifest codec: parse, normalize, portable data hash);
//! - backends: [`store`] (the block store trait; a local directory, S3, an Arvados cluster's Keep) and [`catalog`]
//!   (named, versioned collections in SQLite or PostgreSQL, with their owners), plus [`arvados`] (the Arvados
//!   API client they share) and [`bigbuf`] (block-sized buffers on huge pages);
//! - the filesystem core: [`fs`] (inodes, buffers, uploads, reads; FUSE-free and store-agnostic) and
//!   [`journal`] (the per-mount log of uncommitted changes that a restarted cafsd rebuilds a tree from);
//! - collections: [`collection`] (a tree bound to its ref or hash: open, commit, follow), [`policy`] (who may
//!   use which ref) and [`transfer`] (a directory tree on disk into a collection and back).
//!
//! The daemon re-exports these modules under its own library name, so `cafs::fs` and `cafs_core::fs` are one
//! module.

pub mod arvados;
pub mod bigbuf;
pub mod catalog;
pub mod collection;
pub mod fs;
pub mod journal;
pub mod locator;
pub mod manifest;
pub mod policy;
pub mod store;
pub mod transfer;

pub use locator::Locator;
pub use manifest::{Manifest, Pdh};
