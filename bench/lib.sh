# Sourced by the benchmark scripts that mount cafs: a root check, a release build, a work directory that is
# removed on exit with everything in it unmounted and stopped, and cafsd's development mode started and stopped on
# one mount point.
#   bench_init NAME [WORKDIR]   sets cafsd, work (default: a new directory under /var/tmp), mnt; cds to the repo
#   bench_extra_cleanup         redefine to undo more on exit (it runs first)
#   cafsd_start [REF]           cafsd on $mnt (state in $work/state, ref REF or "bench", no auto-commit)
#   cafsd_stop                  SIGTERM, and wait

bench_init() {
  cd "$(dirname "${BASH_SOURCE[0]}")/.."
  [ "$(id -u)" = 0 ] || { echo "bench/$1.sh needs root" >&2; exit 1; }
  cargo build --release --locked -q -p fs-server
  cafsd=$PWD/target/release/cafsd
  work=${2:-$(mktemp -d "/var/tmp/cafs-$1.XXXXXX")}
  mnt=$work/mnt
  mkdir -p "$mnt"
  pid=
  trap bench_cleanup EXIT
}

bench_extra_cleanup() { :; }

bench_cleanup() {
  set +e
  bench_extra_cleanup
  if grep -q " $mnt " /proc/mounts; then umount -l "$mnt"; fi
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill "$pid"; wait "$pid" 2>/dev/null; fi
  rm -rf "$work"
}

cafsd_start() {
  "$cafsd" --state-dir "$work/state" --mount "$mnt" --ref "${1:-bench}" --autocommit 0 >>"$work/cafsd.log" 2>&1 &
  pid=$!
  for _ in $(seq 300); do grep -q " $mnt " /proc/mounts && return; sleep 0.1; done
  echo "mount did not appear" >&2
  exit 1
}

cafsd_stop() {
  kill -TERM "$pid"
  wait "$pid" || true
  pid=
}

now() { date +%s.%N; }
