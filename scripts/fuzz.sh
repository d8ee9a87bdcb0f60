#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser that reads bytes from outside:
# the term decoder against the walk (etf), the distribution firewall in
# both directions (firewall), the tunnel preface and its answers
# (preface), the EPMD codec (epmd), the handshake's first frames
# (handshake) and the record layer (record). Each target runs SECONDS
# (default 60) under libFuzzer, from seed corpora of OTP's own encodings
# (fuzz/seeds.erl) and what earlier runs kept (fuzz/corpus). Needs the
# nightly toolchain; installs cargo-fuzz and Erlang when missing. Not in
# CI. Prints each target's executions; a crash leaves its input under
# fuzz/artifacts/TARGET/ and fails the run.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(etf firewall preface epmd handshake record)
scripts/install-deps.sh
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
rustup run nightly true 2>/dev/null || { echo "fuzz.sh: the nightly toolchain is needed (rustup toolchain install nightly)" >&2; exit 1; }
seeds=$(mktemp -d)
trap 'rm -rf "$seeds"' EXIT
erlc -o "$seeds" fuzz/seeds.erl
erl -noshell -pa "$seeds" -run seeds run "$seeds/corpus" -s init stop
cd fuzz
cargo +nightly fuzz build -O --debug-assertions
failed=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  log="$seeds/$t.log"
  if cargo +nightly fuzz run -O --debug-assertions "$t" "corpus/$t" "$seeds/corpus/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -max_len=262144 -print_final_stats=1 >"$log" 2>&1; then
    status=ok
  else
    status=CRASH
    failed=1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo '?')
  printf '%-10s %-6s %10s executions  coverage %s  corpus %s\n' "$t" "$status" "$execs" "$cov" "$(ls "corpus/$t" | wc -l)"
  [ $status = ok ] || tail -30 "$log"
done
exit $failed
