#!/usr/bin/env bash
# The cafs test suite — exactly what CI runs (.ci/run calls this). Installs what a fresh machine lacks, then:
# formatting, clippy with warnings as errors, and every test in the workspace (unit, property, SDK oracle,
# binaries). Nothing is skipped: a test that cannot get what it needs fails.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/deps.sh
cafs_install_deps

cafs_log "cargo fmt --check"
cargo fmt --all -- --check
cafs_log "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
cafs_log "cargo test"
# Bounded: a hung test fails the run instead of eating CI's 90 minutes.
timeout --kill-after=30s 40m cargo test --workspace --locked
