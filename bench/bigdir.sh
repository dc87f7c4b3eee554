#!/usr/bin/env bash
# A collection of one directory of many files (default 1,000,000): how long cafsd takes to mount it (by hash,
# and by ref with its sidecar of modes and times), `ls -f` of the directory, and a lookup + read of one file in
# it, each beside the same listing of a plain directory of as many files on the same disk. Three runs of each;
# prints the median. Needs root (mounts). Targets: mount at most 3 s, `ls -f` at most 10 s.
#   bench/bigdir.sh [FILES] [WORKDIR]   (default: 1000000, a new directory under /var/tmp)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/bigdir.sh needs root" >&2; exit 1; }
files=${1:-1000000}
cargo build --release --locked -q -p fs-server --bin cafsd
cafsd=$PWD/target/release/cafsd
work=${2:-$(mktemp -d /var/tmp/cafs-bigdir.XXXXXX)}
mnt=$work/mnt state=$work/state plain=$work/plain
mkdir -p "$mnt" "$state" "$plain"
pid=
cleanup() {
  if grep -q " $mnt " /proc/mounts; then umount -l "$mnt" || true; fi
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill "$pid"; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
now() { date +%s.%N; }
secs() { printf %.2f "$(echo "$2 - $1" | bc)"; }
median() { printf '%s\n' "$@" | sort -n | sed -n 2p; }

# The collection, made through the library (through a mount it would take minutes): the ref `big`.
pdh=$(cargo bench -q -p cafs-core --bench bigdir -- "$state" "$files" 2>"$work/make.log") || { cat "$work/make.log" >&2; exit 1; }
# Nothing of making it may still be on its way to the disk while cafsd starts (its journal syncs).
sync

declare -A mount_pdh mount_ref ls_f lookup
probe=$(printf 'file-%07d' $((files * 3 / 4)))
for run in 1 2 3; do
  for how in pdh ref; do
    if [ $how = pdh ]; then origin=(--pdh "$pdh"); else origin=(--ref big); fi
    t0=$(now)
    "$cafsd" --state-dir "$state" --socket "$work/cafsd.sock" --mount "$mnt" "${origin[@]}" --autocommit 0 \
      >>"$work/cafsd.log" 2>&1 &
    pid=$!
    # Mounted = the directory answers (the kernel's first lookup reaches the loaded tree).
    for _ in $(seq 3000); do stat "$mnt/d" >/dev/null 2>&1 && break; sleep 0.01; done
    t1=$(now)
    if [ $how = pdh ]; then mount_pdh[$run]=$(secs "$t0" "$t1"); else mount_ref[$run]=$(secs "$t0" "$t1"); fi
    if [ $how = ref ]; then
      t0=$(now); n=$(ls -f "$mnt/d" | wc -l); t1=$(now)
      [ "$n" = $((files + 2)) ] || { echo "ls -f listed $n entries, not $((files + 2))" >&2; exit 1; }
      ls_f[$run]=$(secs "$t0" "$t1")
      t0=$(now); got=$(cat "$mnt/d/$probe"); t1=$(now)
      [ "$got" = $((files * 3 / 4)) ] || { echo "read $got from $probe" >&2; exit 1; }
      lookup[$run]=$(secs "$t0" "$t1")
    fi
    kill -TERM "$pid"; wait "$pid" || true; pid=
  done
done
# The plain directory to compare `ls -f` with.
python3 - "$plain" "$files" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(os.path.join(d, "file-%07d" % i), "w") as f:
        f.write("%d\n" % i)
PY

sync; echo 3 > /proc/sys/vm/drop_caches
t0=$(now); n=$(ls -f "$plain" | wc -l); t1=$(now)
plain_ls=$(secs "$t0" "$t1")
t0=$(now); ls -f "$plain" | wc -l >/dev/null; t1=$(now)
plain_ls_warm=$(secs "$t0" "$t1")

echo "| $files files in one directory | cafs | plain directory |"
echo "|---|---|---|"
echo "| mount by hash (manifest only) | $(median "${mount_pdh[@]}") s | - |"
echo "| mount by ref (manifest + sidecar) | $(median "${mount_ref[@]}") s | - |"
echo "| \`ls -f\` | $(median "${ls_f[@]}") s | $plain_ls s cold, $plain_ls_warm s warm |"
echo "| lookup + read of one file | $(median "${lookup[@]}") s | - |"
grep -E '^(made|manifest|sidecar)' "$work/make.log" | sed 's/^/    /' >&2 || true
