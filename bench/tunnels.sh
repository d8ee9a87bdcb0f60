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
pids=(); mesh=()
cleanup() { exec 2>/dev/null; for p in "${pids[@]}" "${mesh[@]}"; do kill -9 "$p" || true; done; wait || true; rm -rf "$w"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
"$em" cert ca --dir "$c" >/dev/null
for h in hosta hostb; do "$em" cert issue --dir "$c" --host $h >/dev/null; done
ta=$(free_port); tb=$(free_port); ea=$(free_port); eb=$(free_port)
conf() { printf 'host = "%s"\nlisten = "127.0.0.1:%s"\nepmd_port = %s\nstate_dir = "%s"\n[tls]\nca = "%s/ca.pem"\ncert = "%s/%s.pem"\nkey = "%s/%s.key"\n[[peers]]\nhost = "%s"\naddress = "127.0.0.1:%s"\n' \
  "$1" "$2" "$3" "$w/state-$1" "$c" "$c" "$1" "$c" "$1" "$4" "$5" >"$w/$1.toml"; }
conf hosta "$ta" "$ea" hostb "$tb"; conf hostb "$tb" "$eb" hosta "$ta"
for h in hosta hostb; do RUST_LOG=erlmesh=debug "$em" run --config "$w/$h.toml" 2>"$w/$h.log" & mesh+=($!); done
for h in hosta hostb; do for _ in $(seq 100); do grep -q "erlmesh ready" "$w/$h.log" && break; sleep 0.05; done; done
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
