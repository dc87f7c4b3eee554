#!/usr/bin/env bash
# Stop what scripts/up.sh started: unmount every mount through cafsd (each changed tree is committed first),
# then stop cafsd and the helper. (SIGTERM alone would leave the mounts to a next cafsd, held by the helper; this
# script stops for good.) Processes are found by their PID files and stopped only if they still run the
# binaries up.sh started.
set -euo pipefail
cd "$(dirname "$0")/.."
run=/run/cafs
helper_run=/run/cafs-mount
bin=$PWD/target/release

stop() { # DIR NAME BINARY
  local pidfile=$1/$2.pid pid
  shift
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  # A binary rebuilt since it started shows as "PATH (deleted)": still the process up.sh started.
  local exe
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
  if [ "${exe% (deleted)}" = "$2" ]; then
    kill -TERM "$pid"
    for _ in $(seq 1200); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "$1 (pid $pid) did not stop within 120 s" >&2
      return 1
    fi
    echo "==> stopped $1 (pid $pid)" >&2
  fi
  rm -f "$pidfile"
}
if [ -S "$run/cafsd.sock" ] && [ -x "$bin/fsctl" ]; then
  "$bin/fsctl" --server "$run/cafsd.sock" ls 2>/dev/null | cut -f1 | while IFS= read -r m; do
    "$bin/fsctl" --server "$run/cafsd.sock" umount "$m" && echo "==> unmounted $m" >&2 ||
      echo "could not unmount $m" >&2
  done
fi
stop "$run" cafsd "$bin/cafsd"
stop "$helper_run" cafs-mount "$bin/cafs-mount"
