//! Shared harness for the end-to-end tests.
//!
//! [`sdk`] runs the Arvados Python SDK (a pinned `arvados-python-client` in a virtualenv that the harness makes
//! on first use) as an independent oracle. Nothing here skips: when the SDK cannot be installed, the tests that
//! need it fail and say why.

pub mod sdk;

use std::path::PathBuf;

/// The workspace's `target/` directory, where the harness keeps what it installs.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}
