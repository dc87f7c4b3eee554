#!/usr/bin/env bash
# The FUSE requests the kernel sends cafsd for an untar of the Rust core docs (small files), by kind and per
# file, counted with the fuse:fuse_request_send tracepoint; and the untar's time beside a plain directory of the
# same disk, in the same run. Writable mount of a ref (cafsd's root development mode, local store + SQLite).
# Needs root. Prints Markdown tables.
#   bench/requests.sh [WORKDIR]   (default: a new directory under /var/tmp)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
bench_init requests "${1:-}"
plain=$work/plain
mkdir -p "$plain"
tracing=/sys/kernel/tracing
event=$tracing/events/fuse/fuse_request_send
reader= mounted_tracefs= buffer= tarball=
bench_extra_cleanup() {
  if [ -n "$reader" ]; then kill "$reader" 2>/dev/null; fi
  if [ -e "$event/enable" ]; then echo 0 > "$event/enable"; echo 0 > "$event/filter"; fi
  if [ -n "$buffer" ]; then echo "$buffer" > "$tracing/buffer_size_kb"; fi
  if [ -n "$mounted_tracefs" ]; then umount "$tracing"; fi
  rm -f "$tarball"
}
if [ ! -e "$event" ]; then
  mount -t tracefs nodev "$tracing"
  mounted_tracefs=1
fi
buffer=$(grep -o '^[0-9]*' "$tracing/buffer_size_kb")

core=$(rustc --print sysroot)/share/doc/rust/html/core
tarball=/dev/shm/cafs-requests-core.$$.tar
tar cf "$tarball" -C "$(dirname "$core")" core
nfiles=$(tar tf "$tarball" | grep -vc '/$')

cafsd_start

t0=$(now); tar xf "$tarball" -C "$plain"; sync; t1=$(now)

# Only this mount's connection: the kernel's dev_t of the mount (major << 20 | minor).
read -r major minor < <(stat -c '%Hd %Ld' "$mnt")
echo "connection == $(( major << 20 | minor ))" > "$event/filter"
echo 65536 > "$tracing/buffer_size_kb"
echo > "$tracing/trace"
cat "$tracing/trace_pipe" > "$work/trace" &
reader=$!
echo 1 > "$event/enable"
t2=$(now); tar xf "$tarball" -C "$mnt"; sync; t3=$(now)
echo 0 > "$event/enable"
sleep 1
kill "$reader"; wait "$reader" 2>/dev/null || true; reader=
lost=$(grep -h overrun "$tracing"/per_cpu/cpu*/stats | awk '{s += $2} END {print s + 0}')
[ "$lost" = 0 ] || echo "warning: the trace buffer lost $lost events; the counts are low" >&2

p=$(echo "$t1 - $t0" | bc) c=$(echo "$t3 - $t2" | bc)
echo "| untar of $nfiles files + sync | plain directory | cafs | cafs / plain |"
echo "|---|---|---|---|"
printf '| time | %.2f s | %.2f s | %.1f× |\n\n' "$p" "$c" "$(echo "scale=2; $c / $p" | bc)"
echo "| request | count | per file |"
echo "|---|---|---|"
grep -o 'opcode [0-9]* (FUSE_[A-Z_0-9]*)' "$work/trace" | awk '{gsub(/[()]/, "", $3); print $3}' | sort | uniq -c |
  sort -rn | awk -v n="$nfiles" '{t += $1; printf "| %s | %d | %.2f |\n", $2, $1, $1 / n} END {printf "| all | %d | %.2f |\n", t, t / n}'
