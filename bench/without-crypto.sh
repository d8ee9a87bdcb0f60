#!/usr/bin/env bash
# What erlmesh costs apart from its cryptography: builds erlmesh with the
# record layer's AEAD (AEGIS, AES-GCM or ChaCha20) taken out (bench/null-aead.patch: records keep
# their framing, sequence numbers and checks; a sealed record's tag is
# zeros and such a record is not authenticated) from a scratch copy of
# this tree, and runs it beside the real build and the plain forwarder
# pair in interleaved rounds (bench/ab.sh). The difference between the two
# builds is what the AEAD costs; what is left over plain is everything
# else erlmesh does. The patched binary encrypts nothing: it lives in a
# temporary directory for the run and is deleted with it.
# usage: bench/without-crypto.sh [ROUNDS=8] [bulk_MiB=256] [round_trips=5000] [small_msgs=200000]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
rounds=${1:-8} bulk=${2:-256} rtts=${3:-5000} small=${4:-200000}
"$root/scripts/install-deps.sh"
(cd "$root" && cargo build --release --locked -q --bins --examples)
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT
mkdir "$w/tree"
tar -C "$root" --exclude=./target --exclude=./fuzz --exclude=./.git -cf - . | tar -C "$w/tree" -xf -
(cd "$w/tree" && git apply "$here/null-aead.patch") || {
  echo "bench/null-aead.patch no longer applies to src/tunnel/record/keys.rs: update it" >&2
  exit 1
}
# Its own target directory beside the real one, so that later runs build
# incrementally; the binary itself is moved out of it.
(cd "$w/tree" && CARGO_TARGET_DIR="$root/target/without-crypto" cargo build --release --locked -q --bin erlmesh)
mv "$root/target/without-crypto/release/erlmesh" "$w/erlmesh-without-crypto"
"$here/ab.sh" "$rounds" "$bulk" "$rtts" "$small" erlmesh="$root/target/release/erlmesh" \
  without-crypto="$w/erlmesh-without-crypto"
