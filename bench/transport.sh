#!/usr/bin/env bash
# The FUSE transport, measured with the io_uring prototype: cafs served over /dev/fuse (a read and a write per
# request, as shipped) and over FUSE-over-io_uring queues (one per CPU, pinned, 8 entries each), side by side in
# one run with a plain directory: a bare round trip (getxattr of an absent name on an open file), a metadata
# round trip (fchmod of an open file) and an untar of the Rust core docs (small files) + sync.
# The prototype is not part of cafs: bench/io-uring-prototype.patch (a transport in the vendored fuser, switched
# on by CAFS_PROTO_IO_URING_DEPTH) is applied to a temporary worktree of HEAD and built there
# (target/io-uring-prototype). The kernel's fuse.enable_uring is switched on for the run and set back after.
# Usage: sudo bench/transport.sh [ROUNDS]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
bench_init transport
rounds=${1:-3}
param=/sys/module/fuse/parameters/enable_uring
[ -e "$param" ] || { echo "this kernel has no FUSE over io_uring" >&2; exit 1; }
was=$(cat "$param") tarball= tree=$work/tree
bench_extra_cleanup() {
  echo "$was" >"$param"
  rm -f "$tarball"
  git worktree remove --force "$tree" 2>/dev/null || true
}

git worktree add --detach -q "$tree" HEAD
git -C "$tree" apply "$PWD/bench/io-uring-prototype.patch"
CARGO_TARGET_DIR=$PWD/target/io-uring-prototype cargo build --release --locked -q -p fs-server \
  --manifest-path "$tree/Cargo.toml"
cafsd=$PWD/target/io-uring-prototype/release/cafsd
echo Y >"$param"

core=$(rustc --print sysroot)/share/doc/rust/html/core
[ -d "$core" ] || { echo "no Rust docs at $core (rustup component add rust-docs)" >&2; exit 1; }
tarball=/dev/shm/cafs-transport-core.$$.tar
tar cf "$tarball" -C "$(dirname "$core")" core
nfiles=$(tar tf "$tarball" | grep -vc '/$')

# Prints "getxattr-µs fchmod-µs" for 100,000 calls each on file $1.
round_trips() {
  python3 - "$1" <<'PY'
import os, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o644)
n = 100000
t = time.perf_counter()
for _ in range(n):
    try:
        os.getxattr(fd, "user.absent")
    except OSError:
        pass
getxattr = (time.perf_counter() - t) / n * 1e6
t = time.perf_counter()
for i in range(n):
    os.fchmod(fd, 0o600 | (i & 1) << 2)
fchmod = (time.perf_counter() - t) / n * 1e6
print(f"{getxattr:.1f} | {fchmod:.1f}")
os.close(fd)
PY
}

untar() {
  local t0
  t0=$(now); tar xf "$tarball" -C "$1"; sync
  printf '%.2f' "$(echo "$(now) - $t0" | bc)"
}

# cafsd's CPU time (user + system, seconds) so far.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$pid/stat"; }

printf '| round | served by | getxattr round trip (µs) | fchmod round trip (µs) | untar of %s files + sync (s) | cafsd CPU (s) |\n' "$nfiles"
echo '|---|---|---|---|---|---|'
for round in $(seq "$rounds"); do
  plain=$work/plain.$round; mkdir -p "$plain"
  printf '| %s | plain directory | %s | %s | |\n' "$round" "$(round_trips "$plain/f")" "$(untar "$plain")"
  rm -rf "$plain"; sync
  for transport in /dev/fuse io_uring; do
    if [ "$transport" = io_uring ]; then export CAFS_PROTO_IO_URING_DEPTH=8; else unset CAFS_PROTO_IO_URING_DEPTH; fi
    cafsd_start "bench-$round-${transport##*/}"
    printf '| %s | cafs, %s | %s | %s | %s |\n' "$round" "$transport" "$(round_trips "$mnt/f")" "$(untar "$mnt")" "$(cpu)"
    cafsd_stop
  done
done
