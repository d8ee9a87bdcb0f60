#!/usr/bin/env bash
# Prints the directory of a Debian root holding a newer Erlang/OTP, built
# once per machine with debootstrap and cached outside the clone:
#   trixie -> OTP 27, sid -> OTP 29.
# usage: scripts/otp-root.sh SUITE   (ERLMESH_OTP_CACHE sets the cache, default
#        /var/cache/erlmesh-otp). Needs root and debootstrap (scripts/install-deps.sh).
set -euo pipefail
suite=$1
cache=${ERLMESH_OTP_CACHE:-/var/cache/erlmesh-otp}
dir="$cache/$suite"
if [ -x "$dir/usr/bin/erl" ]; then echo "$dir"; exit 0; fi
mkdir -p "$cache"
# One builder at a time per suite (tests run in parallel).
exec 9>"$cache/$suite.lock"
flock 9
if [ -x "$dir/usr/bin/erl" ]; then echo "$dir"; exit 0; fi
# The mirror apt already uses: deb822 .sources files, or sources.list (a
# machine without .sources must not end the script here: pipefail).
mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -1 || true)
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian
rm -rf "$dir.tmp"
debootstrap --variant=minbase --include=erlang-base,erlang-mnesia "$suite" "$dir.tmp" "$mirror" >"$cache/$suite.log" 2>&1 || {
  tail -20 "$cache/$suite.log" >&2
  exit 1
}
mv "$dir.tmp" "$dir"
echo "$dir"
