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
. scripts/lib.sh

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
step "certificates: one cluster CA, one certificate per host (erlmesh cert)"
"$em" cert ca --dir "$w/certs"
"$em" cert issue --dir "$w/certs" --host hosta
"$em" cert issue --dir "$w/certs" --host hostb

tls_a=$(free_port); tls_b=$(free_port); epmd_a=$(free_port); epmd_b=$(free_port)
write_conf "$w/hosta.toml" hosta "$tls_a" "$epmd_a" "$w/state-hosta" "$w/certs" --peer "hostb=127.0.0.1:$tls_b"
write_conf "$w/hostb.toml" hostb "$tls_b" "$epmd_b" "$w/state-hostb" "$w/certs" --peer "hosta=127.0.0.1:$tls_a"
echo "hosta's config:"; sed 's/^/    /' "$w/hosta.toml"
step "two erlmesh proxies: hosta on TLS port $tls_a, hostb on $tls_b"
for h in hosta hostb; do
  RUST_LOG=erlmesh=debug "$em" run --config "$w/$h.toml" 2>"$w/$h.log" & mesh+=($!)
done
for h in hosta hostb; do wait_ready "$w/$h.toml" "$w/$h.log"; grep "erlmesh ready" "$w/$h.log"; done

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
