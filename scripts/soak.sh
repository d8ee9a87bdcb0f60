#!/usr/bin/env bash
# Soak: two hosts on loopback, a checked message stream (sequence numbers,
# MD5 per message) plus rpc traffic for DURATION seconds (default 600),
# with one erlmesh killed (SIGKILL) and restarted every KILL_EVERY seconds
# (default 20), alternating hosts. Prints messages delivered, lost with a
# nodedown, corrupted or out of order (must be 0), and erlmesh's peak RSS.
# Not part of CI.  usage: scripts/soak.sh [DURATION] [KILL_EVERY]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-600}; every=${2:-20}
scripts/install-deps.sh
cargo build --release --locked -q
em=$PWD/target/release/erlmesh
w=$(mktemp -d /tmp/erlmesh-soak.XXXXXX)
. scripts/lib.sh
make_certs "$w/certs" hosta hostb
declare -A tls epmd
for h in hosta hostb; do tls[$h]=$(free_port); epmd[$h]=$(free_port); done
for h in hosta hostb; do
  p=hostb; [ $h = hostb ] && p=hosta
  write_conf "$w/$h.toml" $h "${tls[$h]}" "${epmd[$h]}" "$w/state-$h" "$w/certs" --peer "$p=127.0.0.1:${tls[$p]}"
done
peak=0
start_mesh() { # index host
  "$em" run --config "$w/$2.toml" 2>>"$w/$2.log" & mesh[$1]=$!
  wait_ready "$w/$2.toml" "$w/$2.log"
}
note_peak() {
  for p in "${mesh[@]}"; do
    r=$(awk "/VmHWM/{print \$2}" "/proc/$p/status" 2>/dev/null || echo 0)
    if [ "${r:-0}" -gt "$peak" ]; then peak=$r; fi
  done
}
starts=(1 1); start_mesh 0 hosta; start_mesh 1 hostb
erlc -o "$w" tests/erl/stream.erl
node() { # host name eval; always run in the background, where exec
  # replaces the subshell so that $! is the node itself
  cd "$w"; eval "$("$em" env --config "$w/$1.toml")"; exec erl -noshell -pa "$w" -sname "$2@$1" -setcookie soak -eval "$3"; }
node hostb b 'stream:start_receiver(), receive after infinity -> ok end.' >"$w/b.out" 2>&1 & pids+=($!)
sleep 2
node hosta a "
  pong = net_adm:ping(b@hostb),
  stream:start_sender(b@hostb, ${duration}000, 2000),
  spawn(fun Rpc() -> catch rpc:call(b@hostb, erlang, md5, [crypto:strong_rand_bytes(100000)], 2000), timer:sleep(50), Rpc() end),
  {sent, Sent, _} = stream:sender_report(),
  R = rpc:call(b@hostb, stream, report, []),
  io:format(\"RESULT sent=~p delivered=~p lost_with_nodedown=~p corrupted_or_out_of_order=~p nodedowns=~p~n\",
            [Sent, maps:get(delivered, R), Sent - maps:get(delivered, R), maps:get(bad, R), maps:get(downs, R)]),
  halt()." >"$w/a.out" 2>&1 & sender=$!; pids+=($sender)
t0=$(date +%s); kills=0; i=0
while kill -0 $sender 2>/dev/null; do
  sleep 1; note_peak
  if [ $(( $(date +%s) - t0 )) -lt "$duration" ] && [ $(( ($(date +%s) - t0) % every )) -eq 0 ]; then
    h=hosta; [ $((i % 2)) = 1 ] && h=hostb
    kill -9 "${mesh[$((i % 2))]}"; wait "${mesh[$((i % 2))]}" 2>/dev/null || true
    starts[$((i % 2))]=$(( starts[$((i % 2))] + 1 )); start_mesh $((i % 2)) $h
    kills=$((kills + 1)); i=$((i + 1)); sleep 1
  fi
done
grep RESULT "$w/a.out" || { cat "$w/a.out"; exit 1; }
echo "duration=${duration}s erlmesh_kills=$kills erlmesh_peak_rss_kb=$peak"
