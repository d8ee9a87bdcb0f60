#!/usr/bin/env bash
# Memory per open tunnel: two erlmesh on loopback, b@hostb on host B, then
# N nodes on host A that each connect to b (one tunnel each). Prints both
# erlmesh processes' RSS idle, with one tunnel, with N, and the increase
# per tunnel.  usage: bench/tunnels.sh [N=16]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
n=${1:-16}
em=${ERLMESH:-$here/../target/release/erlmesh}
w=$(mktemp -d /tmp/erlmesh-tunnels.XXXXXX); c=$w/certs
. "$here/../scripts/lib.sh"
make_certs "$c" hosta hostb
ta=$(free_port); tb=$(free_port); ea=$(free_port); eb=$(free_port)
write_conf "$w/hosta.toml" hosta "$ta" "$ea" "$w/state-hosta" "$c" --peer "hostb=127.0.0.1:$tb"
write_conf "$w/hostb.toml" hostb "$tb" "$eb" "$w/state-hostb" "$c" --peer "hosta=127.0.0.1:$ta"
for h in hosta hostb; do RUST_LOG=erlmesh=debug "$em" run --config "$w/$h.toml" 2>"$w/$h.log" & mesh+=($!); done
for h in hosta hostb; do wait_ready "$w/$h.toml" "$w/$h.log"; done
rss() { local t=0; for p in "${mesh[@]}"; do t=$((t + $(awk '/VmRSS/{print $2}' "/proc/$p/status"))); done; echo $t; }
node() { ( eval "$("$em" env --config "$w/$1.toml")"; exec erl -noshell -sname "$2@$1" -setcookie t -eval "$3" ) >>"$w/nodes.log" 2>&1 & pids+=($!); }
idle=$(rss)
node hostb b 'receive after infinity -> ok end.'
sleep 1.5
node hosta a0 'pong = net_adm:ping(b@hostb), receive after infinity -> ok end.'
sleep 2; one=$(rss)
for i in $(seq 1 "$n"); do node hosta "a$i" 'pong = net_adm:ping(b@hostb), receive after infinity -> ok end.'; done
for _ in $(seq 200); do
  k=$(grep -c "tunnel open" "$w/hosta.log" || true)
  [ "$k" -ge $((n + 1)) ] && break; sleep 0.1
done
sleep 1; many=$(rss)
echo "TUNNELS n=$n both_erlmesh_rss_kb idle=$idle one_tunnel=$one with_n_more=$many per_tunnel_kb=$(( (many - one) / n ))"
