#!/usr/bin/env bash
# Builds the Debian package erlmesh_VERSION_ARCH.deb from this repository
# with dpkg-deb alone: /usr/bin/erlmesh, the systemd unit (its runtime
# directory /run/erlmesh comes from RuntimeDirectory=), the example config
# in /etc/erlmesh, the README; a postinst that creates the erlmesh system
# user, a postrm that removes it on purge.
# usage: deploy/deb/build.sh [OUT_DIR=target/deb]
#        ERLMESH_BIN=path packages that binary instead of building the release one;
#        ERLMESH_VERSION=V gives the package that version (tests build a newer one).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-target/deb}
version=${ERLMESH_VERSION:-$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)}
arch=$(dpkg --print-architecture)
if [ -z "${ERLMESH_BIN:-}" ]; then cargo build --release --locked -q; fi
bin=${ERLMESH_BIN:-target/release/erlmesh}
root=$(mktemp -d)
chmod 0755 "$root"
trap 'rm -rf "$root"' EXIT

install -D -s -m 0755 "$bin" "$root/usr/bin/erlmesh"
install -d -m 0755 "$root/lib/systemd/system"
sed 's|/usr/local/bin/erlmesh|/usr/bin/erlmesh|' deploy/erlmesh.service >"$root/lib/systemd/system/erlmesh.service"
chmod 0644 "$root/lib/systemd/system/erlmesh.service"
install -D -m 0644 deploy/erlmesh.toml.example "$root/etc/erlmesh/erlmesh.toml.example"
install -D -m 0644 README.md "$root/usr/share/doc/erlmesh/README.md"
install -D -m 0644 ARCHITECTURE.md "$root/usr/share/doc/erlmesh/ARCHITECTURE.md"

mkdir -p "$root/DEBIAN"
cat >"$root/DEBIAN/control" <<CONTROL
Package: erlmesh
Version: $version
Architecture: $arch
Maintainer: erlmesh developers <erlmesh@localhost>
Depends: adduser, procps
Section: net
Priority: optional
Homepage: https://localhost/erlmesh
Description: Erlang/OTP distribution across untrusted networks in mutual TLS
 One proxy per host next to unmodified Erlang nodes: it answers their EPMD
 questions about other hosts and carries their distribution connections to
 the peer host's erlmesh inside mutually authenticated TLS 1.3.
CONTROL
echo /etc/erlmesh/erlmesh.toml.example >"$root/DEBIAN/conffiles"
cat >"$root/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  if ! getent passwd erlmesh >/dev/null; then
    adduser --system --group --no-create-home --home /nonexistent --shell /usr/sbin/nologin erlmesh >/dev/null
  fi
  # The key files live here: readable by erlmesh, not by everyone.
  chown root:erlmesh /etc/erlmesh
  chmod 0750 /etc/erlmesh
  if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
  # An upgrade while erlmesh runs: hand its listeners and open tunnels to
  # the new binary (no nodedown); a restart only if that is refused.
  if [ -n "$2" ] && [ -f /etc/erlmesh/erlmesh.toml ] \
     && /usr/bin/erlmesh status --config /etc/erlmesh/erlmesh.toml >/dev/null 2>&1; then
    if /usr/bin/erlmesh upgrade --config /etc/erlmesh/erlmesh.toml; then
      :
    elif [ -d /run/systemd/system ]; then
      echo "erlmesh: the live upgrade was refused (above); restarting erlmesh.service" >&2
      systemctl restart erlmesh.service || true
    else
      echo "erlmesh: the live upgrade was refused (above); the running erlmesh is the old version" >&2
    fi
  fi
fi
POSTINST
cat >"$root/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ "$1" = purge ]; then
  if getent passwd erlmesh >/dev/null; then deluser --system erlmesh >/dev/null || true; fi
  if getent group erlmesh >/dev/null; then delgroup --system erlmesh >/dev/null || true; fi
fi
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
POSTRM
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/postrm"

mkdir -p "$out"
deb="$out/erlmesh_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
echo "$deb"
