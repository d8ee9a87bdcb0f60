#!/usr/bin/env bash
# The test command: installs Erlang when missing, then checks formatting,
# lints, and runs every unit and integration test (real erl nodes, real
# erlmesh processes, real TLS on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
ERLMESH_TEST_DEPS=1 scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked "$@"
deploy/check.sh
