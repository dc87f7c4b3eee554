#!/usr/bin/env bash
# Builds the Debian package: cafsd and cafs-mount in /usr/sbin, fsctl in /usr/bin, mount.fuse.cafs and
# umount.fuse.cafs (so /etc/fstab can name collections), the systemd units (naming those paths), a default
# /etc/cafs/cafsd.toml (a conffile; as shipped, the embedded default), a manual page per binary and fsctl
# subcommand, fsctl's completions for bash, zsh and fish, the docs, and maintainer scripts that make the `cafs`
# system user and enable the helper's socket and cafsd. Dependencies come from dpkg-shlibdeps: the binaries link
# the distribution's own libc and OpenSSL.
#   scripts/package.sh                      build release binaries, then the package, into target/debian/
#   scripts/package.sh --bin-dir DIR        package the binaries already in DIR (the tests use their debug build)
#   scripts/package.sh --out DIR            write the .deb into DIR instead
# Prints the package's path on the last line.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/deps.sh

bin_dir= out=target/debian
while [ $# -gt 0 ]; do
  case $1 in
    --bin-dir) bin_dir=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: $0 [--bin-dir DIR] [--out DIR]" >&2; exit 2 ;;
  esac
done

command -v dpkg-shlibdeps >/dev/null 2>&1 || cafs_apt_install dpkg-dev
if [ -z "$bin_dir" ]; then
  cafs_install_run_deps
  cafs_log "building cafsd, fsctl and cafs-mount (release)"
  "$(cafs_cargo)" build --release --locked -q -p fs-server -p mount-helper
  bin_dir=target/release
fi
for b in cafsd cafs-mount fsctl; do
  [ -x "$bin_dir/$b" ] || { echo "$bin_dir/$b: not built" >&2; exit 1; }
done

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
arch=$(dpkg --print-architecture)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Laid out as dpkg-shlibdeps expects a package being built: debian/control beside debian/PACKAGE/.
root=$work/src/debian/cafs
mkdir -p "$out"

# Files, with the modes they get on the node.
install -D -m 0755 "$bin_dir/cafsd" "$root/usr/sbin/cafsd"
install -D -m 0755 "$bin_dir/cafs-mount" "$root/usr/sbin/cafs-mount"
install -D -m 0755 "$bin_dir/fsctl" "$root/usr/bin/fsctl"
# As Debian's packages do: without debug information (symbols stay, so a backtrace still names functions).
strip --strip-debug "$root/usr/sbin/cafsd" "$root/usr/sbin/cafs-mount" "$root/usr/bin/fsctl"
install -D -m 0755 packaging/deb/mount.fuse.cafs "$root/usr/sbin/mount.fuse.cafs"
install -D -m 0755 packaging/deb/umount.fuse.cafs "$root/usr/sbin/umount.fuse.cafs"
install -D -m 0644 packaging/deb/cafsd.toml "$root/etc/cafs/cafsd.toml"
mkdir -p "$root/usr/lib/systemd/system"
for unit in systemd/*.service systemd/*.socket; do
  # The units name /usr/local/bin (where scripts and the tests put the binaries); the package's are elsewhere.
  sed -e 's#/usr/local/bin/cafsd#/usr/sbin/cafsd#g' -e 's#/usr/local/bin/cafs-mount#/usr/sbin/cafs-mount#g' \
      -e 's#/usr/local/bin/fsctl#/usr/bin/fsctl#g' "$unit" >"$root/usr/lib/systemd/system/$(basename "$unit")"
  if grep -q /usr/local/ "$root/usr/lib/systemd/system/$(basename "$unit")"; then
    echo "$unit names a path under /usr/local the package does not rewrite" >&2
    exit 1
  fi
done
mkdir -p "$root/usr/share/man/man1"
for b in cafsd cafs-mount fsctl; do
  "$bin_dir/$b" --generate-man "$root/usr/share/man/man1"
done
gzip -9n "$root"/usr/share/man/man1/*.1
install -d "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
  "$root/usr/share/fish/vendor_completions.d"
"$bin_dir/fsctl" completions bash >"$root/usr/share/bash-completion/completions/fsctl"
"$bin_dir/fsctl" completions zsh >"$root/usr/share/zsh/vendor-completions/_fsctl"
"$bin_dir/fsctl" completions fish >"$root/usr/share/fish/vendor_completions.d/fsctl.fish"
doc=$root/usr/share/doc/cafs
install -D -m 0644 README.md "$doc/README.md"
install -d "$doc/docs"
install -m 0644 docs/*.md "$doc/docs/"
{
  echo "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
  echo "Upstream-Name: cafs"
  echo
  echo "Files: *"
  echo "License: Apache-2.0"
  echo
  echo "License: Apache-2.0"
  echo " On Debian systems, the full text is in /usr/share/common-licenses/Apache-2.0."
} >"$doc/copyright"

# Dependencies of the ELF files, as Debian computes them.
printf 'Source: cafs\n\nPackage: cafs\nArchitecture: any\n' >"$work/src/debian/control"
depends=$(cd "$work/src" && dpkg-shlibdeps -O debian/cafs/usr/sbin/cafsd debian/cafs/usr/sbin/cafs-mount \
  debian/cafs/usr/bin/fsctl | sed -n 's/^shlibs:Depends=//p')
[ -n "$depends" ] || { echo "dpkg-shlibdeps found no dependencies" >&2; exit 1; }

install -d "$root/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" -e "s/@DEPENDS@/$depends/" \
  -e "s/@MAINTAINER@/${CAFS_DEB_MAINTAINER:-cafs developers <root@localhost>}/" \
  packaging/deb/control.in >"$root/DEBIAN/control"
echo /etc/cafs/cafsd.toml >"$root/DEBIAN/conffiles"
install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$root/DEBIAN/"

deb=$out/cafs_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
cafs_log "built $deb ($(du -h "$deb" | cut -f1)): Depends: $depends"
echo "$deb"
