#!/usr/bin/env bash
# Checks cafs against a real Arvados cluster, end to end: Keep services found, a block written and read back, a
# mount on a new ref, files written, committed as a collection of PROJECT whose PDH Arvados computes as cafs does,
# read back byte for byte by arv-get, committed again as a second version, the versions listed.
#
#   scripts/arvados-smoke.sh PROJECT_UUID [--keep]
#
# Reads ARVADOS_API_HOST, ARVADOS_API_TOKEN (and ARVADOS_API_HOST_INSECURE) as the Arvados tools do. Needs root
# (it mounts with cafsd's development mode), cafsd on PATH or built in target/release, and the Arvados Python
# SDK (python3 with `arvados`, and arv-get) on PATH. The collection it makes is trashed at the end unless --keep.
set -euo pipefail

project=${1:?usage: scripts/arvados-smoke.sh PROJECT_UUID [--keep]}
keep=${2:-}
: "${ARVADOS_API_HOST:?set ARVADOS_API_HOST}" "${ARVADOS_API_TOKEN:?set ARVADOS_API_TOKEN}"
[ "$(id -u)" = 0 ] || { echo "arvados-smoke.sh needs root (it mounts a FUSE filesystem)" >&2; exit 1; }
cafsd=$(command -v cafsd || echo "$(dirname "$0")/../target/release/cafsd")
[ -x "$cafsd" ] || { echo "no cafsd on PATH nor in target/release" >&2; exit 1; }
command -v arv-get >/dev/null || { echo "no arv-get on PATH (pip install arvados-python-client)" >&2; exit 1; }
python3 -c 'import arvados' || { echo "python3 cannot import arvados" >&2; exit 1; }

work=$(mktemp -d /var/tmp/cafs-arvados-smoke.XXXXXX)
mnt=$work/mnt
ref="cafs-smoke-$(date +%Y%m%d-%H%M%S)-$$"
pid=
cleanup() {
  set +e
  if grep -q " $mnt " /proc/mounts; then umount -l "$mnt"; fi
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill "$pid"; wait "$pid" 2>/dev/null; fi
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$mnt" "$work/state"
umask 077
printf '%s\n' "$ARVADOS_API_TOKEN" > "$work/token"
insecure=false
case "${ARVADOS_API_HOST_INSECURE:-}" in 1|true|yes|on) insecure=true ;; esac
cat > "$work/cafsd.toml" <<EOF
[store]
kind = "keep"
api_host = "$ARVADOS_API_HOST"
token_file = "$work/token"
insecure = $insecure
[catalog]
kind = "arvados"
project = "$project"
EOF

step() { printf '== %s\n' "$*"; }
api() { python3 - "$@"; }

step "cafsd --check-config: Keep services, a probe block written and read back, the catalog listed"
"$cafsd" --config "$work/cafsd.toml" --state-dir "$work/state" --check-config

step "mounting ref $ref"
"$cafsd" --config "$work/cafsd.toml" --state-dir "$work/state" --mount "$mnt" --ref "$ref" --autocommit 0 \
  >>"$work/cafsd.log" 2>&1 &
pid=$!
for _ in $(seq 300); do grep -q " $mnt " /proc/mounts && break; sleep 0.1; done
grep -q " $mnt " /proc/mounts || { cat "$work/cafsd.log" >&2; echo "the mount did not appear" >&2; exit 1; }

step "writing 70 MB and 100 small files, committing"
head -c 70000000 /dev/urandom > "$mnt/big.bin"
mkdir -p "$mnt/sub dir"
for i in $(seq 100); do echo "file $i" > "$mnt/sub dir/f$i.txt"; done
echo "first" > "$mnt/.cafs/commit"
pdh=$(cat "$mnt/.cafs/hash")
(cd "$mnt" && find . -path ./.cafs -prune -o -type f -print0 | sort -z | xargs -0 md5sum) > "$work/want.md5"

step "the collection in Arvados"
uuid=$(api "$project" "$ref" <<'PY'
import sys, arvados
api = arvados.api("v1")
items = api.collections().list(filters=[["owner_uuid", "=", sys.argv[1]], ["properties.cafs:ref", "=", sys.argv[2]]]).execute()["items"]
assert len(items) == 1, f"expected one collection for the ref, found {len(items)}"
print(items[0]["uuid"], items[0]["portable_data_hash"])
PY
)
read -r uuid arv_pdh <<<"$uuid"
echo "collection $uuid, PDH $arv_pdh (cafs: $pdh)"
[ "$arv_pdh" = "$pdh" ] || { echo "PDH MISMATCH: Arvados $arv_pdh, cafs $pdh" >&2; exit 1; }

step "arv-get reads it back from Keep"
mkdir "$work/back"
arv-get "$uuid/" "$work/back/"
(cd "$work/back" && find . -type f -print0 | sort -z | xargs -0 md5sum) > "$work/got.md5"
diff "$work/want.md5" "$work/got.md5" || { echo "arv-get read other bytes" >&2; exit 1; }
echo "identical: $(wc -l < "$work/got.md5") files"

step "a second commit is a second version"
echo "changed" > "$mnt/sub dir/f1.txt"
echo "second" > "$mnt/.cafs/commit"
api "$uuid" <<'PY'
import sys, arvados
api = arvados.api("v1")
versions = api.collections().list(filters=[["current_version_uuid", "=", sys.argv[1]]], include_old_versions=True).execute()["items"]
for v in sorted(versions, key=lambda v: v["version"]):
    p = v.get("properties", {})
    print(f"  Arvados version {v['version']}: {v['portable_data_hash']} cafs version {p.get('cafs:version')} {p.get('cafs:message', '')!r}")
assert sum(1 for v in versions if (v.get("properties") or {}).get("cafs:version")) >= 2, "two cafs versions expected"
PY

umount "$mnt"
kill "$pid"; wait "$pid" || true; pid=
if [ "$keep" = --keep ]; then
  echo "kept collection $uuid"
else
  api "$uuid" <<'PY'
import sys, arvados
arvados.api("v1").collections().delete(uuid=sys.argv[1]).execute()
PY
  echo "trashed collection $uuid"
fi
step "all checks passed"
