#!/usr/bin/env bash
# Loopback demo: two simulated hosts, each with its own erlmesh, one Erlang
# node on each. A key is written into an ETS table on hosta and read from
# hostb through mutually authenticated TLS. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --locked -q
em=$PWD/target/release/erlmesh
w=$(mktemp -d /tmp/erlmesh-demo.XXXXXX)
pids=()
cleanup() {
  exec 2>/dev/null
  for p in "${pids[@]}"; do kill -9 "$p" || true; done
  wait || true
  rm -rf "$w"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo $((30000 + RANDOM % 20000)); }

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
step "certificates: one cluster CA, one certificate per host (erlmesh cert)"
"$em" cert ca --dir "$w/certs"
"$em" cert issue --dir "$w/certs" --host hosta
"$em" cert issue --dir "$w/certs" --host hostb

tls_a=$(free_port); tls_b=$(free_port); epmd_a=$(free_port); epmd_b=$(free_port)
conf() { # host tls_port epmd_port peer peer_tls_port
  cat >"$w/$1.toml" <<EOC
host = "$1"
listen = "127.0.0.1:$2"
epmd_port = $3
state_dir = "state-$1"

[tls]
ca = "certs/ca.pem"
cert = "certs/$1.pem"
key = "certs/$1.key"

[[peers]]
host = "$4"
address = "127.0.0.1:$5"
EOC
}
conf hosta "$tls_a" "$epmd_a" hostb "$tls_b"
conf hostb "$tls_b" "$epmd_b" hosta "$tls_a"
step "two erlmesh proxies: hosta on TLS port $tls_a, hostb on $tls_b"
for h in hosta hostb; do
  RUST_LOG=erlmesh=debug "$em" run --config "$w/$h.toml" 2>"$w/$h.log" & pids+=($!)
done
for h in hosta hostb; do
  for _ in $(seq 100); do grep -q "erlmesh ready" "$w/$h.log" && break; sleep 0.1; done
  grep "erlmesh ready" "$w/$h.log" || { cat "$w/$h.log"; exit 1; }
done

step "node a@hosta writes a key into its ETS table"
(
  eval "$("$em" env --config "$w/hosta.toml")"
  exec erl -noshell -sname a@hosta -setcookie demo -eval '
    ets:new(cache, [named_table, public, set]),
    ets:insert(cache, {greeting, <<"written on hosta">>}),
    io:format("a@hosta: inserted ~p~n", [ets:lookup(cache, greeting)]),
    receive after infinity -> ok end.'
) & pids+=($!)
sleep 2

step "node b@hostb reads it through erlmesh"
(
  eval "$("$em" env --config "$w/hostb.toml")"
  echo "hostb's nodes resolve hosta through $ERL_INETRC:"; sed 's/^/    /' "$ERL_INETRC"
  timeout 30 erl -noshell -sname b@hostb -setcookie demo -eval '
    io:format("b@hostb: net_adm:ping(a@hosta) -> ~p~n", [net_adm:ping(a@hosta)]),
    V = rpc:call(a@hosta, ets, lookup, [cache, greeting]),
    io:format("b@hostb: rpc:call(a@hosta, ets, lookup, [cache, greeting]) -> ~p~n", [V]),
    halt(case V of [{greeting, _}] -> 0; _ -> 1 end).'
)
step "what erlmesh logged (tunnels are opened per node pair)"
grep -h "tunnel open\|registered" "$w"/host*.log | sed 's/^.*Z //; s/^/    /' | tail -8
step "done: every process started here is stopped on exit"
