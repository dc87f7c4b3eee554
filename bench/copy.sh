#!/usr/bin/env bash
# A committed file copied with `cp` (coreutils 9: copy_file_range) inside a cafs mount (local store, development
# mode) and inside a plain directory of the same disk: the copy's time, the blocks the copy and the next commit
# stored, and whether the copy reads back the same. Needs root.
#   bench/copy.sh [GIB] [WORKDIR]   (default: 2 GiB, a new directory under /var/tmp)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
gib=${1:-2}
bench_init copy "${2:-}"
blocks() { find "$work/state/blocks" -type f | wc -l; }
secs() { echo "$2 - $1" | bc; }

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
rm -rf "$work/state"   # room for the plain copy
sync; echo 3 > /proc/sys/vm/drop_caches
t2=$(now); cp "$work/plain.bin" "$work/plain.copy"; sync "$work/plain.copy"; t3=$(now)
echo "| ${gib} GiB file, cp | time | blocks stored by the copy and its commit | identical |"
echo "|---|---|---|---|"
echo "| cafs (local store) | $(secs "$t0" "$t1") s | $((after - before)) | $same |"
echo "| plain directory (ext4, + sync) | $(secs "$t2" "$t3") s | - | - |"
