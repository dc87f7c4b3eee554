//! cafs: a writable filesystem over a content-addressed block store.
//!
//! This crate is the library behind `cafsd` and `fsctl`. It owns the formats and the storage backends that
//! everything else stands on:
//! - [`locator`]: Keep-compatible block names (`md5hex+size[+hints]`) and the MD5 hashing behind them;
//! - [`manifest`]: the Arvados manifest codec (parse, normalize, portable data hash);
//! - [`store`]: the block store trait and its implementations (a local directory, S3);
//! - [`catalog`]: named, versioned collections (refs and history) in SQLite or PostgreSQL;
//! - [`bigbuf`]: block-sized buffers backed by huge pages;
//! - [`config`]: the configuration file that selects a node's block store and catalog;
//! - [`fs`]: the filesystem core (FUSE-free, store-agnostic);
//! - [`collection`]: a tree bound to its ref or hash, and the commit logic;
//! - [`journal`]: the per-mount log of uncommitted changes that a restarted cafsd rebuilds a tree from;
//! - [`namespace`]: the mount that shows the whole catalog (`by_ref/`, `by_pdh/`, `history/`);
//! - [`policy`]: who may use which ref: operators, groups, what new refs record, the checks;
//! - [`server`]: the mounts one cafsd serves, and the socket on which the helper hands their fds over;
//! - [`socket`]: binding cafsd's own Unix sockets without taking one another process serves;
//! - [`systemd`]: readiness and the file descriptor store that keeps mounts across cafsd restarts;
//! - [`api`]: the gRPC API over those mounts, and who may drive which;
//! - [`metrics`]: what cafsd counts, served to Prometheus;
//! - [`transfer`]: moving a directory tree on disk into a collection and back.

pub mod api;
pub mod bigbuf;
pub mod catalog;
pub mod collection;
pub mod config;
pub mod control;
pub mod fs;
pub mod fuse;
pub mod journal;
pub mod locator;
pub mod manifest;
pub mod metrics;
pub mod mount;
pub mod namespace;
pub mod policy;
pub mod server;
pub mod socket;
pub mod store;
pub mod systemd;
pub mod transfer;

pub use locator::Locator;
pub use manifest::{Manifest, Pdh};
