#!/usr/bin/env bash
# Cold read of a committed 2 GiB file (random bytes) through a cafs mount, beside a plain file of the same disk,
# three rounds: each reads the plain file, then the cafs file checked with MD5 (the blocks' recorded CRCs removed
# first, as for blocks written before cafs recorded them), then checked with the CRCs the first read recorded.
# Page cache dropped and cafsd restarted before every read. cafsd's development mode, local store. Needs root.
#   bench/coldread.sh [WORKDIR]   (default: a new directory under /var/tmp)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/coldread.sh needs root" >&2; exit 1; }
cargo build --release --locked -q -p fs-server
cafsd=$PWD/target/release/cafsd
work=${1:-$(mktemp -d /var/tmp/cafs-coldread.XXXXXX)}
mnt=$work/mnt
mkdir -p "$mnt"
pid=
cleanup() {
  set +e
  if grep -q " $mnt " /proc/mounts; then umount -l "$mnt"; fi
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill "$pid"; wait "$pid" 2>/dev/null; fi
  rm -rf "$work"
}
trap cleanup EXIT
start() {
  "$cafsd" --state-dir "$work/state" --mount "$mnt" --ref cold --autocommit 0 >>"$work/cafsd.log" 2>&1 &
  pid=$!
  for _ in $(seq 300); do grep -q " $mnt " /proc/mounts && return; sleep 0.1; done
  echo "mount did not appear" >&2; exit 1
}
stop() { kill -TERM "$pid"; wait "$pid" || true; pid=; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
rate() { echo "2048 / ($2 - $1)" | bc -l; }
strip_crcs() {
  python3 - "$work/state/blocks" <<'PY'
import os, sys
for d, _, files in os.walk(sys.argv[1]):
    for f in files:
        try:
            os.removexattr(os.path.join(d, f), "user.cafs.crc32")
        except OSError:
            pass
PY
}
cold_cafs() { drop_caches; start; local t0; t0=$(now); cat "$mnt/rand" > /dev/null; rate "$t0" "$(now)"; stop; }

head -c $((2048 << 20)) /dev/urandom > "$work/plain"
start
dd if="$work/plain" of="$mnt/rand" bs=1M conv=fsync status=none
echo cold > "$mnt/.cafs/commit"
stop
echo "| round | plain file | cafs, MD5 | cafs, CRC | CRC / plain |"
echo "|---|---|---|---|---|"
for i in 1 2 3; do
  drop_caches
  t0=$(now); cat "$work/plain" > /dev/null; p=$(rate "$t0" "$(now)")
  strip_crcs
  m=$(cold_cafs)
  c=$(cold_cafs)
  printf '| %d | %.0f MiB/s | %.0f MiB/s | %.0f MiB/s | %.2f |\n' "$i" "$p" "$m" "$c" "$(echo "$c / $p" | bc -l)"
done
start
cmp "$work/plain" "$mnt/rand"
stop
