#!/usr/bin/env bash
# Bring cafs up on the embedded default: a local block directory and a SQLite catalog in the state directory.
# Builds the binaries, then runs cafsd in the foreground (Ctrl-C stops it).
#   CAFS_STATE_DIR  state directory [default: $XDG_DATA_HOME/cafs, or ~/.local/share/cafs]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/deps.sh
cafs_install_deps

state=${CAFS_STATE_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/cafs}
cafs_log "building cafsd, fsctl and cafs-mount (release)"
cargo build --release --locked -q -p fs-server -p mount-helper
target/release/cafsd --state-dir "$state" --check
cat >&2 <<MSG
==> starting cafsd (state: $state); Ctrl-C stops it.
    Writable FUSE mounts arrive with the mount issue; until then cafsd opens and checks the embedded state
    (blocks in $state/blocks, the catalog in $state/catalog.sqlite) and waits.
MSG
exec target/release/cafsd --state-dir "$state"
