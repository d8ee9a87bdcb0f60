#!/usr/bin/env bash
# Installs what erlmesh's demo and tests need from Debian's packages, only
# when it is missing: Erlang/OTP (erlang-base, erlang-ssl, erlang-mnesia),
# openssl, a C compiler (for aws-lc-rs), nftables (transparent mode), and for the tests Elixir, iproute2, tcpdump
# and RabbitMQ.
set -euo pipefail
need=()
command -v erl >/dev/null 2>&1 || need+=(erlang-base erlang-ssl erlang-mnesia)
command -v erl >/dev/null 2>&1 && ! erl -noshell -eval 'halt(case code:lib_dir(ssl) of {error,_} -> 1; _ -> 0 end).' && need+=(erlang-ssl)
command -v erl >/dev/null 2>&1 && ! erl -noshell -eval 'halt(case code:lib_dir(mnesia) of {error,_} -> 1; _ -> 0 end).' && need+=(erlang-mnesia)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# aws-lc-rs (the crypto provider) builds AWS-LC's C code with the system's
# C compiler.
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
# The Elixir interop test; bsdutils' script(1) gives erl -remsh a terminal.
[ "${ERLMESH_TEST_DEPS:-0}" = 1 ] && ! command -v elixir >/dev/null 2>&1 && need+=(elixir)
# The release tooling test (tests/releases.rs).
[ "${ERLMESH_TEST_DEPS:-0}" = 1 ] && ! command -v rebar3 >/dev/null 2>&1 && need+=(rebar3)
command -v script >/dev/null 2>&1 || need+=(bsdutils)
# Transparent interception applies its rules with nft.
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || need+=(nftables)
if [ "${ERLMESH_TEST_DEPS:-0}" = 1 ]; then
  command -v ip >/dev/null 2>&1 || need+=(iproute2)
  command -v tcpdump >/dev/null 2>&1 || need+=(tcpdump)
  # Newer OTP releases for tests/otp.rs, in chroots (scripts/otp-root.sh).
  command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
  # The package test (tests/package.rs): its postinst's adduser, and the
  # unit check.
  command -v adduser >/dev/null 2>&1 || need+=(adduser)
  # The package depends on procps (the unit's ExecReload runs /bin/kill).
  dpkg -s procps >/dev/null 2>&1 || need+=(procps)
  command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
  # deploy/check.sh lints the deploy files from a Python venv.
  python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3 python3-venv)
  # RabbitMQ clustering through transparent mode (tests/transparent.rs).
  [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need+=(rabbitmq-server)
fi
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing from Debian's packages: ${need[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
