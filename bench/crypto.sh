#!/usr/bin/env bash
# The cryptography's cost per provider and TLS 1.3 suite
# (examples/cryptobench.rs): instructions per GB sealed and opened (16 KiB
# records, in place, as the record layer does), per 100-byte record sealed
# and opened (a small message's fixed cost) and per mutual-TLS handshake,
# counted by callgrind (repeatable on a noisy machine; valgrind shows the
# code an AVX2 CPU without AVX-512 runs); then the same timed natively,
# and a small record's time after a pause (cold caches, as between a
# round trip's messages).
# usage: bench/crypto.sh [MiB=32] [handshakes=20]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mib=${1:-32}; hs=${2:-20}
"$here/../scripts/install-deps.sh"
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
(cd "$here/.." && cargo build --release --locked -q --example cryptobench)
bin=$here/../target/release/examples/cryptobench
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT
ir() { # instructions of one run
  valgrind --tool=callgrind --callgrind-out-file="$w/out" "$bin" "$@" >/dev/null 2>"$w/err" || { cat "$w/err" >&2; exit 1; }
  awk '/^summary:/{print $2}' "$w/out"
}
printf '%-10s %-31s %18s %22s %18s\n' provider suite Minstr_per_GB instr_per_small_record kinstr_per_handshake
for p in ring aws-lc-rs; do
  for s in TLS13_AEGIS_128X2_SHA256 TLS13_AES_128_GCM_SHA256 TLS13_AES_256_GCM_SHA384 TLS13_CHACHA20_POLY1305_SHA256; do
    # AEGIS has one implementation (erlmesh's, with aws-lc-rs's handshake): one row.
    [ "$s" = TLS13_AEGIS_128X2_SHA256 ] && [ "$p" != ring ] && continue
    r1=$(ir records "$p" "$s" "$mib"); r0=$(ir records "$p" "$s" 0)
    s1=$(ir small "$p" "$s" 20000); s0=$(ir small "$p" "$s" 0)
    h1=$(ir handshakes "$p" "$s" "$hs"); h0=$(ir handshakes "$p" "$s" 0)
    awk -v p="$p" -v s="$s" -v r1="$r1" -v r0="$r0" -v s1="$s1" -v s0="$s0" -v h1="$h1" -v h0="$h0" -v mib="$mib" -v hs="$hs" \
      'BEGIN{printf "%-10s %-31s %18.0f %22.0f %18.0f\n", p, s, (r1-r0)/(mib*1048576)*1e9/1e6, (s1-s0)/20000, (h1-h0)/hs/1e3}'
  done
done
echo "natively (best of 5; sealed and opened MB/s, one handshake):"
"$bin" native
"$bin" cold
