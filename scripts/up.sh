#!/usr/bin/env bash
# Bring cafs up the way a worker node runs it, on the embedded default (local block directory + SQLite catalog):
# install only what building and running need (the test suite's tools are scripts/test.sh's), build, start the privileged helper (cafs-mount serve) as root and cafsd as an unprivileged user, mount a
# writable collection through cafsd with fsctl, and say what to do next. scripts/down.sh stops it all (every
# mount is committed and unmounted first). Run as root; running it again restarts the stack.
#   CAFS_MOUNT      mount point                       [default: /tmp/cafs]
#   CAFS_REF        collection (ref) name             [default: scratch]
#   CAFS_OWNER      user the mount is for             [default: $SUDO_USER, else root]
#   CAFS_USER       unprivileged user cafsd runs as   [default: cafs, created as a system user when missing]
#   CAFS_STATE_DIR  cafsd's state directory           [default: /var/lib/cafs]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/deps.sh
if [ "$(id -u)" != 0 ]; then
  echo "scripts/up.sh starts the mount helper, which needs root (try: sudo $0)" >&2
  exit 1
fi
cafs_install_run_deps
cargo=$(cafs_cargo)

mnt=${CAFS_MOUNT:-/tmp/cafs}
ref=${CAFS_REF:-scratch}
owner=${CAFS_OWNER:-${SUDO_USER:-root}}
user=${CAFS_USER:-cafs}
state=${CAFS_STATE_DIR:-/var/lib/cafs}
run=/run/cafs
# The helper's socket lives in a directory of its own that only root can write: cafsd's user owns $run, and
# could otherwise put its own socket in the helper's place.
helper_run=/run/cafs-mount
bin=$PWD/target/release

# Under sudo the build runs as the user who asked (with their toolchain), so target/ stays theirs.
build_as=()
if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ] && [ "$(stat -c %U .)" = "$SUDO_USER" ]; then
  build_as=(setpriv --reuid="$SUDO_USER" --regid="$(id -g "$SUDO_USER")" --init-groups
    env HOME="$(getent passwd "$SUDO_USER" | cut -d: -f6)" USER="$SUDO_USER")
fi
cafs_log "building cafsd, fsctl and cafs-mount (release)"
"${build_as[@]}" "$cargo" build --release --locked -q -p fs-server -p mount-helper
scripts/down.sh >/dev/null 2>&1 || true

if ! id -u "$user" >/dev/null 2>&1; then
  cafs_log "creating the system user $user for cafsd"
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$user"
fi
install -d -o "$user" -g "$(id -gn "$user")" -m 0755 "$run"
install -d -o root -g root -m 0755 "$helper_run"
install -d -o "$user" -g "$(id -gn "$user")" -m 0750 "$state"

# The helper: root, allowed to mount below /home /mnt /scratch /tmp /var/tmp for the owner of the directory.
setsid "$bin/cafs-mount" serve --listen "$helper_run/mount.sock" --server "$run/cafsd.sock" \
  </dev/null >>"$helper_run/cafs-mount.log" 2>&1 &
echo $! >"$helper_run/cafs-mount.pid"
# cafsd: unprivileged; gRPC on cafsd.sock, mounts handed over on cafsd.fd.sock.
setsid setpriv --reuid="$user" --regid="$(id -g "$user")" --init-groups \
  "$bin/cafsd" --state-dir "$state" --socket "$run/cafsd.sock" --helper "$helper_run/mount.sock" \
  </dev/null >>"$run/cafsd.log" 2>&1 &
echo $! >"$run/cafsd.pid"
for _ in $(seq 300); do
  [ -S "$run/cafsd.sock" ] && [ -S "$helper_run/mount.sock" ] && break
  sleep 0.1
done
if ! [ -S "$run/cafsd.sock" ] || ! [ -S "$helper_run/mount.sock" ]; then
  echo "cafs did not come up; see $run/cafsd.log and $helper_run/cafs-mount.log" >&2
  exit 1
fi

mkdir -p "$mnt"
chown "$owner:" "$mnt"
"$bin/fsctl" --server "$run/cafsd.sock" mount "$ref" "$mnt"
cat >&2 <<MSG
==> cafsd runs as $user (pid $(cat "$run/cafsd.pid")), the helper as root (pid $(cat "$helper_run/cafs-mount.pid"));
    logs in $run/cafsd.log and $helper_run/cafs-mount.log, state in $state. The mount at $mnt is for $owner. Next, as $owner:
      export PATH=$bin:\$PATH
      sh -c 'echo hello > $mnt/hello.txt'   # ordinary file I/O: bytes stream into the block store
      fsctl status                  # what is held, uploading, committed
      fsctl commit $mnt -m first    # commit now: prints the collection's hash
      fsctl umount $mnt             # commit a changed tree and unmount
      scripts/down.sh                    # stop cafs (commits and unmounts every mount first)
    A tree left unchanged for 60 s is committed automatically.
MSG
