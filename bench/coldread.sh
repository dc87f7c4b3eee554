#!/usr/bin/env bash
# Cold read of a committed 2 GiB file (random bytes) through a cafs mount, beside a plain file of the same disk,
# three rounds: each reads the plain file, then the cafs file checked with MD5 (the blocks' recorded CRCs removed
# first, as for blocks written before cafs recorded them), then checked with the CRCs the first read recorded.
# Page cache dropped and cafsd restarted before every read. cafsd's development mode, local store. Needs root.
#   bench/coldread.sh [WORKDIR]   (default: a new directory under /var/tmp)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
bench_init coldread "${1:-}"
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
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
cold_cafs() { drop_caches; cafsd_start cold; local t0; t0=$(now); cat "$mnt/rand" > /dev/null; rate "$t0" "$(now)"; cafsd_stop; }

head -c $((2048 << 20)) /dev/urandom > "$work/plain"
cafsd_start cold
dd if="$work/plain" of="$mnt/rand" bs=1M conv=fsync status=none
echo cold > "$mnt/.cafs/commit"
cafsd_stop
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
cafsd_start cold
cmp "$work/plain" "$mnt/rand"
cafsd_stop
