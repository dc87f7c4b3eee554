# Sourced by the scripts: installs what a fresh machine of this kind lacks (Debian packages, Rust components).
# Everything is skipped when already present. Needs root (or sudo) only when something is missing.

cafs_log() { printf '==> %s\n' "$*" >&2; }

cafs_apt_install() {
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo -n)
  cafs_log "installing Debian packages: $*"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@"
}

# What building and running cafs need, and nothing more: a C toolchain, pkg-config and OpenSSL (its assembly MD5
# names blocks), setpriv (scripts/up.sh switches users with it), and cargo itself.
cafs_install_run_deps() {
  local pkgs=()
  command -v cc >/dev/null 2>&1 || pkgs+=(build-essential)
  command -v pkg-config >/dev/null 2>&1 || pkgs+=(pkg-config)
  pkg-config --exists openssl 2>/dev/null || pkgs+=(libssl-dev)
  command -v setpriv >/dev/null 2>&1 || pkgs+=(util-linux)
  if [ ${#pkgs[@]} -gt 0 ]; then cafs_apt_install "${pkgs[@]}"; fi
  if ! cafs_cargo >/dev/null; then
    echo "cargo not found: this project needs the machine's Rust toolchain (rustup)" >&2
    return 1
  fi
}

# cargo, also under sudo (whose PATH lacks the invoking user's ~/.cargo/bin): prints its path.
cafs_cargo() {
  local home
  if command -v cargo 2>/dev/null; then return 0; fi
  for home in "${CARGO_HOME:-}" "$HOME/.cargo" ${SUDO_USER:+"$(getent passwd "$SUDO_USER" | cut -d: -f6)/.cargo"}; do
    if [ -n "$home" ] && [ -x "$home/bin/cargo" ]; then
      echo "$home/bin/cargo"
      return 0
    fi
  done
  return 1
}

# Everything the test suite needs on top: the SDK oracle's virtualenv, openssl for the TLS test, systemd-analyze,
# PostgreSQL, Prometheus's Python client, attr, dpkg-dev, git and rsync, rustfmt and clippy, the POSIX suites
# and Garage.
cafs_install_deps() {
  cafs_install_run_deps
  local pkgs=()
  # The Arvados SDK oracle runs in a virtualenv.
  command -v python3 >/dev/null 2>&1 || pkgs+=(python3)
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || pkgs+=(python3-venv)
  # The TLS test makes its certificate with the openssl command.
  command -v openssl >/dev/null 2>&1 || pkgs+=(openssl)
  # The unit files are checked with systemd-analyze verify.
  command -v systemd-analyze >/dev/null 2>&1 || pkgs+=(systemd)
  # The PostgreSQL catalog is tested against a real server (started by the tests) and psql.
  compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || pkgs+=(postgresql)
  command -v psql >/dev/null 2>&1 || pkgs+=(postgresql-client)
  # The metrics endpoint's output is parsed by the Prometheus project's Python client, the distribution's.
  /usr/bin/python3 -c 'import prometheus_client' >/dev/null 2>&1 || pkgs+=(python3-prometheus-client)
  # Extended attributes are tested with the tools users have: getfattr/setfattr and attr.
  command -v setfattr >/dev/null 2>&1 || pkgs+=(attr)
  # The Debian package is built (scripts/package.sh: dpkg-shlibdeps) and installed in a test.
  command -v dpkg-shlibdeps >/dev/null 2>&1 || pkgs+=(dpkg-dev)
  # Hard links on a mount are tested with the tools that make them in jobs: git clone, cp -al, rsync -aH.
  command -v git >/dev/null 2>&1 || pkgs+=(git)
  command -v rsync >/dev/null 2>&1 || pkgs+=(rsync)
  if [ ${#pkgs[@]} -gt 0 ]; then cafs_apt_install "${pkgs[@]}"; fi
  cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
  cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
  # POSIX test suites that the end-to-end tests run on real mounts.
  local tool
  for tool in pjdfstest@0.2.2 fsx@0.3.2; do
    if ! command -v "${tool%@*}" >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/${tool%@*}" ]; then
      cafs_log "cargo install $tool"
      cargo install --locked --quiet "$tool"
    fi
  done
  cafs_install_garage
}

# Garage (the S3 store the tests run against), built once into a cache outside the repository and reused:
# about 12 minutes on 2 cores. Only the features the tests use (SQLite metadata, no metrics or K2V).
CAFS_TOOLS=${CAFS_TOOLS:-/opt/cafs-tools}
CAFS_GARAGE_VERSION=2.5.0
cafs_install_garage() {
  local bin=$CAFS_TOOLS/bin/garage
  if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "cargo:$CAFS_GARAGE_VERSION"; then
    return 0
  fi
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo -n)
  "${sudo[@]}" mkdir -p "$CAFS_TOOLS"
  cafs_log "cargo install garage@$CAFS_GARAGE_VERSION into $CAFS_TOOLS (once; about 12 minutes)"
  CARGO_TARGET_DIR="$CAFS_TOOLS/build" "${sudo[@]}" "$(command -v cargo)" install --locked --quiet \
    --root "$CAFS_TOOLS" --no-default-features --features bundled-libs,sqlite "garage@$CAFS_GARAGE_VERSION"
  "${sudo[@]}" rm -rf "$CAFS_TOOLS/build"
}
