#!/usr/bin/env bash
# Soak (manual; not in CI): writers, readers and commits through one mount for a long time (an hour by default),
# on the real stack (the helper as root, cafsd as nobody, in a temporary directory), with cafsd restarted now
# and then (SIGTERM and kill -9 in turn: the mount must not notice). Every 10 s it samples cafsd's resident
# memory; the run fails if it ever exceeds the bound, if any reader finds bytes that differ from what was
# written, if any system call of the workload fails, or if a commit fails. Run as root, from the repository.
#   CAFS_SOAK_SECONDS   how long                                  [default: 3600]
#   CAFS_SOAK_RSS_MIB   bound on cafsd's resident memory, MiB     [default: 1024]
#   CAFS_SOAK_RESTART   seconds between cafsd restarts (0: never) [default: 300]
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/soak.sh needs root (it starts the mount helper)" >&2; exit 1; }
secs=${CAFS_SOAK_SECONDS:-3600}
rss_bound=${CAFS_SOAK_RSS_MIB:-1024}
restart_every=${CAFS_SOAK_RESTART:-300}
cargo build --release --locked -q -p fs-server -p mount-helper
bin=$PWD/target/release
# The system's Python: a per-user one (pyenv under /root) is out of the workers' reach.
py=/usr/bin/python3
[ -x "$py" ] || py=$(command -v python3)
base=$(mktemp -d /tmp/cafs-soak.XXXXXX)
chmod 755 "$base"
mkdir -p "$base/state" "$base/run" "$base/helper" "$base/jobs/mnt" "$base/work"
chown nobody: "$base/state" "$base/run"
chmod 1777 "$base/jobs"
mnt=$base/jobs/mnt
# The mount belongs to its directory's owner: the workers' user.
chown nobody: "$mnt"
chmod 777 "$base/work"
pids=()
cleanup() {
  set +e
  touch "$base/work/stop"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  [ -n "${cafsd:-}" ] && "$bin/fsctl" --server "$base/run/cafsd.sock" umount "$mnt" >/dev/null 2>&1
  grep -q " $mnt fuse" /proc/mounts && umount -l "$mnt"
  [ -n "${cafsd:-}" ] && kill "$cafsd" 2>/dev/null
  [ -n "${helper:-}" ] && kill "$helper" 2>/dev/null
  wait 2>/dev/null
}
trap cleanup EXIT

"$bin/cafs-mount" serve --listen "$base/helper/mount.sock" --server "$base/run/cafsd.sock" --allow-root "$base/jobs" \
  </dev/null >>"$base/helper.log" 2>&1 &
helper=$!
start_cafsd() {
  setpriv --reuid=nobody --regid=nogroup --clear-groups "$bin/cafsd" --state-dir "$base/state" \
    --socket "$base/run/cafsd.sock" --helper "$base/helper/mount.sock" --autocommit 0 </dev/null >>"$base/cafsd.log" 2>&1 &
  cafsd=$!
  for _ in $(seq 300); do [ -S "$base/run/cafsd.sock" ] && return 0; sleep 0.1; done
  echo "cafsd did not start; see $base/cafsd.log" >&2
  exit 1
}
for _ in $(seq 100); do [ -S "$base/helper/mount.sock" ] && break; sleep 0.1; done
start_cafsd
"$bin/fsctl" --server "$base/run/cafsd.sock" mount soak "$mnt"

# Workers: each writes files named by their MD5 (random sizes up to 8 MiB, every third fsynced), reads random
# files back and checks them, and removes old ones so the tree stays near a few thousand files. Failed calls
# and wrong bytes are counted in the worker's report file.
worker='
import hashlib, os, random, sys, time
d, me, stop, report = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
rnd = random.Random(me)
sub = os.path.join(d, f"w{me}")
os.makedirs(sub, exist_ok=True)
errors = wrong = written = reads = 0
mine = []
while not os.path.exists(stop):
    try:
        data = rnd.randbytes(rnd.choice([0, 1, 512, 65536, rnd.randrange(1, 8 << 20)]))
        p = os.path.join(sub, hashlib.md5(data).hexdigest() + f"-{len(mine)}")
        with open(p, "wb") as f:
            f.write(data)
            if len(mine) % 3 == 0:
                f.flush(); os.fsync(f.fileno())
        mine.append(p); written += len(data)
        q = rnd.choice(mine)
        with open(q, "rb") as f:
            got = f.read()
        reads += 1
        if hashlib.md5(got).hexdigest() != os.path.basename(q).split("-")[0]:
            wrong += 1
        if len(mine) > 1500:
            os.unlink(mine.pop(0))
    except OSError as e:
        errors += 1
        print(f"worker {me}: {e!r}", file=sys.stderr, flush=True)
    with open(report, "w") as r:
        r.write(f"{written} {reads} {errors} {wrong}\n")
'
for w in 1 2 3; do
  setpriv --reuid=nobody --regid=nogroup --clear-groups "$py" -c "$worker" "$mnt" "$w" "$base/work/stop" \
    "$base/work/report$w" 2>>"$base/work/errors.log" &
  pids+=($!)
done

start=$(date +%s) max_rss=0 commits=0 failed_commits=0 restarts=0 last_restart=$start
printf '%8s %10s %8s %8s\n' seconds rss_mib commits restarts
while [ $(( $(date +%s) - start )) -lt "$secs" ]; do
  sleep 10
  now=$(date +%s)
  if "$bin/fsctl" --server "$base/run/cafsd.sock" commit "$mnt" -m soak >/dev/null 2>>"$base/work/errors.log"; then
    commits=$((commits + 1))
  else
    failed_commits=$((failed_commits + 1))
  fi
  rss=$(awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$cafsd/status" 2>/dev/null || echo 0)
  [ "$rss" -gt "$max_rss" ] && max_rss=$rss
  printf '%8d %10d %8d %8d\n' $((now - start)) "$rss" "$commits" "$restarts"
  if [ "$rss" -gt "$rss_bound" ]; then
    echo "FAIL: cafsd's resident memory ${rss} MiB is over the ${rss_bound} MiB bound" >&2
    exit 1
  fi
  if [ "$restart_every" -gt 0 ] && [ $((now - last_restart)) -ge "$restart_every" ]; then
    if [ $((restarts % 2)) = 0 ]; then kill -TERM "$cafsd"; else kill -KILL "$cafsd"; fi
    while kill -0 "$cafsd" 2>/dev/null; do sleep 0.1; done
    start_cafsd
    restarts=$((restarts + 1)) last_restart=$now
  fi
done
touch "$base/work/stop"
for p in "${pids[@]}"; do wait "$p" || true; done
pids=()
read -r written reads errors wrong < <(cat "$base"/work/report* 2>/dev/null |
  awk '{w+=$1; r+=$2; e+=$3; x+=$4; n++} END {if (n == 3) printf "%d %d %d %d\n", w, r, e, x; else print 0, 0, "no-report", 0}')
echo "soak: $secs s, $((written >> 20)) MiB written, $reads reads checked, $commits commits ($failed_commits failed)," \
  "$restarts cafsd restarts, max cafsd RSS $max_rss MiB; failed calls: $errors, wrong bytes: $wrong"
echo "logs: $base" >&2
[ "$errors" = 0 ] && [ "$wrong" = 0 ] && [ "$failed_commits" = 0 ] && [ "$written" -gt 0 ]
