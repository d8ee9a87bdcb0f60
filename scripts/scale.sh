#!/usr/bin/env bash
# Scale run: N simulated hosts on loopback (h0 .. hN-1), each with its own
# erlmesh joining through one seed (h0) and one node. Each node pings n0@h0;
# global's transitive connects do the rest. Reports the time until every
# node sees every other, and each erlmesh's memory and thread count.
# usage: scripts/scale.sh [N=16]     (ERLMESH=path picks the binary)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-16}
scripts/install-deps.sh
# ERLMESH: a binary to use instead of building the release one.
if [ -z "${ERLMESH:-}" ]; then cargo build --release --locked -q; fi
em=${ERLMESH:-$PWD/target/release/erlmesh}
w=$(mktemp -d /tmp/erlmesh-scale.XXXXXX)
. scripts/lib.sh
make_certs "$w/certs" $(seq -f 'h%g' 0 $((n - 1)))
tls=(); epmd=()
for i in $(seq 0 $((n - 1))); do tls+=("$(free_port)"); epmd+=("$(free_port)"); done
for i in $(seq 0 $((n - 1))); do
  seeds=(); [ "$i" -gt 0 ] && seeds=(--seed "127.0.0.1:${tls[0]}")
  write_conf "$w/h$i.toml" "h$i" "${tls[$i]}" "${epmd[$i]}" "$w/state-h$i" "$w/certs" "${seeds[@]}"
done
t0=$(date +%s.%N)
"$em" run --config "$w/h0.toml" 2>"$w/h0.log" & mesh+=($!)
wait_ready "$w/h0.toml" "$w/h0.log"
for i in $(seq 1 $((n - 1))); do "$em" run --config "$w/h$i.toml" 2>"$w/h$i.log" & mesh+=($!); done
for i in $(seq 0 $((n - 1))); do wait_ready "$w/h$i.toml" "$w/h$i.log"; done
t1=$(date +%s.%N)
echo "all $n erlmesh ready (joined through h0) in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s"
node() { # i: start node n$i@h$i; it prints SEEN <ms> once it sees every other node
  cd "$w"; eval "$("$em" env --config "$w/h$1.toml")"
  exec erl -noshell -sname "n$1@h$1" -setcookie scale -eval "
    T0 = erlang:monotonic_time(millisecond),
    Wait = fun W() -> case {net_adm:ping(n0@h0), length(nodes())} of
                        {pong, L} when L >= $((n - 1)) -> ok;
                        _ -> timer:sleep(200), W() end end,
    Wait(),
    io:format(\"SEEN ~p~n\", [erlang:monotonic_time(millisecond) - T0]),
    receive after infinity -> ok end."
}
t2=$(date +%s.%N)
for i in $(seq 0 $((n - 1))); do node "$i" >"$w/n$i.out" 2>&1 & pids+=($!); done
deadline=$(( $(date +%s) + 300 ))
while [ "$(cat "$w"/n*.out | grep -c SEEN || true)" -lt "$n" ]; do
  [ "$(date +%s)" -gt "$deadline" ] && { echo "timeout: $(cat "$w"/n*.out | grep -c SEEN) of $n nodes see all others"; exit 1; }
  sleep 0.2
done
t3=$(date +%s.%N)
echo "all $n nodes see every other node $(awk -v a="$t2" -v b="$t3" 'BEGIN{printf "%.1f", b-a}') s after they were started (slowest node: $(cat "$w"/n*.out | awk '/SEEN/{print $2}' | sort -n | tail -1) ms from its own start)"
rss=(); thr=()
for p in "${mesh[@]}"; do
  rss+=("$(awk '/VmRSS/{print $2}' "/proc/$p/status")"); thr+=("$(awk '/Threads/{print $2}' "/proc/$p/status")")
done
printf '%s\n' "${rss[@]}" | sort -n | awk '{a[NR]=$1} END{printf "erlmesh RSS KiB per host: min %d median %d max %d\n", a[1], a[int((NR+1)/2)], a[NR]}'
printf '%s\n' "${thr[@]}" | sort -n | awk '{a[NR]=$1} END{printf "erlmesh threads per host: min %d median %d max %d\n", a[1], a[int((NR+1)/2)], a[NR]}'
echo "SCALE n=$n ok"
