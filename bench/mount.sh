#!/usr/bin/env bash
# Benchmarks of a writable cafs mount (cafsd's root development mode, local block store + SQLite), each workload
# beside the same workload on a plain directory of the same disk, in the same run. Needs root (mount, drop
# caches). Prints a Markdown table; figures vary run to run on these machines, so compare within a run.
#   bench/mount.sh [WORKDIR]   (default: a new directory under /var/tmp)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/mount.sh needs root" >&2; exit 1; }
cargo build --release --locked -q -p fs-server
cafsd=$PWD/target/release/cafsd
work=${1:-$(mktemp -d /var/tmp/cafs-bench.XXXXXX)}
mnt=$work/mnt plain=$work/plain state=$work/state
mkdir -p "$mnt" "$plain"
pid=
cleanup() {
  if grep -q " $mnt " /proc/mounts; then umount -l "$mnt" || true; fi
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill "$pid"; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

start() {
  "$cafsd" --state-dir "$state" --mount "$mnt" --ref bench --autocommit 0 >>"$work/cafsd.log" 2>&1 &
  pid=$!
  for _ in $(seq 300); do grep -q " $mnt " /proc/mounts && return; sleep 0.1; done
  echo "mount did not appear" >&2; exit 1
}
stop() { kill -TERM "$pid"; wait "$pid" || true; pid=; }
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }
mibs() { echo "scale=0; $1 / $2" | bc; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

rand=/dev/shm/cafs-bench-rand.$$
head -c $((2048 << 20)) /dev/urandom > "$rand"
trap 'rm -f "$rand"; cleanup' EXIT
core=$(rustc --print sysroot)/share/doc/rust/html/core
tarball=/dev/shm/cafs-bench-core.$$.tar
tar cf "$tarball" -C "$(dirname "$core")" core
trap 'rm -f "$rand" "$tarball"; cleanup' EXIT
nfiles=$(tar tf "$tarball" | grep -vc '/$')

start
echo "| workload | plain directory | cafs | cafs / plain |"
echo "|---|---|---|---|"
row() { printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4"; }

# 1. Streaming write, 2 GiB, fsync at the end: zeros (the issue's command) and random bytes.
for src in zero rand; do
  input=/dev/zero; [ $src = rand ] && input=$rand
  t0=$(now); dd if=$input of="$plain/$src" bs=1M count=2048 conv=fsync status=none; t1=$(now)
  dd if=$input of="$mnt/$src" bs=1M count=2048 conv=fsync status=none; t2=$(now)
  p=$(secs "$t0" "$t1"); c=$(secs "$t1" "$t2")
  row "write 2 GiB ($src), dd bs=1M conv=fsync" "$(mibs 2048 "$p") MiB/s" "$(mibs 2048 "$c") MiB/s" "$(echo "scale=2; $p / $c" | bc)"
done

# 2. Cold read of a committed 2 GiB file (random bytes), page cache dropped, cafsd restarted.
echo bench > "$mnt/.cafs/commit"
stop; drop_caches; start
t0=$(now); cat "$plain/rand" > /dev/null; t1=$(now)
drop_caches
t2=$(now); cat "$mnt/rand" > /dev/null; t3=$(now)
p=$(secs "$t0" "$t1"); c=$(secs "$t2" "$t3")
row "cold read 2 GiB, cat" "$(mibs 2048 "$p") MiB/s" "$(mibs 2048 "$c") MiB/s" "$(echo "scale=2; $p / $c" | bc)"
cmp "$rand" "$mnt/rand"

# 3. Untar the Rust core docs (small files) and commit (plain: untar and sync).
t0=$(now); tar xf "$tarball" -C "$plain"; sync; t1=$(now)
tar xf "$tarball" -C "$mnt"; tm=$(now); echo untar > "$mnt/.cafs/commit"; t2=$(now)
p=$(secs "$t0" "$t1"); c=$(secs "$t1" "$t2")
split="$(printf %.2f "$(secs "$t1" "$tm")") + $(printf %.2f "$(secs "$tm" "$t2")")"
row "tar xf $nfiles files (Rust core docs) + commit" "$(printf %.2f "$p") s" "$(printf %.2f "$c") s ($split)" "$(echo "scale=2; $p / $c" | bc)"

# 4. One metadata request's round trip through the kernel (fchmod of an open file, 20,000 times): the floor
#    under every small-file workload, which costs ~10 such requests per file through FUSE.
rtt() {
  python3 - "$1" <<'PY'
import os, sys, time
path = os.path.join(sys.argv[1], "rtt")
fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
n = 20000
t = time.perf_counter()
for _ in range(n):
    os.fchmod(fd, 0o644)
print(f"{(time.perf_counter() - t) / n * 1e6:.1f}")
os.close(fd)
os.unlink(path)
PY
}
p=$(rtt "$plain"); c=$(rtt "$mnt")
row "one metadata round trip (fchmod)" "$p µs" "$c µs" "$(echo "scale=2; $p / $c" | bc)"

# 5. Commit of 100,000 new small files (the commit alone is timed).
python3 - "$mnt/many" <<'PY'
import os, sys
root = sys.argv[1]
os.mkdir(root)
for d in range(100):
    os.mkdir(f"{root}/d{d:02}")
    for i in range(1000):
        with open(f"{root}/d{d:02}/f{i:03}", "w") as f:
            f.write(f"file {d} {i}\n")
PY
t0=$(now); echo many > "$mnt/.cafs/commit"; t1=$(now)
row "commit of 100,000 new small files" "-" "$(printf %.2f "$(secs "$t0" "$t1")") s" "-"
stop
