#!/usr/bin/env bash
# Bring cafs up on the embedded default (local block directory + SQLite catalog) and mount a writable
# collection. Builds the binaries, then runs cafsd in the foreground; Ctrl-C unmounts (committing a changed
# tree) and stops it. Mounting here is cafsd's development mode, which needs root; the unprivileged split
# (cafs-mount + cafsd) comes with the privilege-split issue.
#   CAFS_STATE_DIR  state directory      [default: $XDG_DATA_HOME/cafs, or ~/.local/share/cafs]
#   CAFS_MOUNT      mount point          [default: /tmp/cafs]
#   CAFS_REF        collection (ref) name [default: scratch]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/deps.sh
cafs_install_deps

state=${CAFS_STATE_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/cafs}
mnt=${CAFS_MOUNT:-/tmp/cafs}
ref=${CAFS_REF:-scratch}
if [ "$(id -u)" != 0 ]; then
  echo "scripts/up.sh mounts with cafsd's development mode, which needs root (try: sudo $0)" >&2
  exit 1
fi
cafs_log "building cafsd, fsctl and cafs-mount (release)"
cargo build --release --locked -q -p fs-server -p mount-helper
target/release/cafsd --state-dir "$state" --check
mkdir -p "$mnt"
cat >&2 <<MSG
==> mounting collection '$ref' at $mnt (state: $state). In another shell:
      cd $mnt && echo hello > hello.txt           # ordinary file I/O; bytes stream to $state/blocks
      echo "my message" > $mnt/.cafs/commit       # commit now (returns when durable)
      cat $mnt/.cafs/hash $mnt/.cafs/status       # the collection's hash, and what is pending
    It also commits after 60 s without changes. Ctrl-C here unmounts (committing a changed tree) and stops.
MSG
exec target/release/cafsd --state-dir "$state" --mount "$mnt" --ref "$ref"
