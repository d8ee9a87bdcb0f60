#!/usr/bin/env bash
# One benchmark run on loopback: node a@hosta drives b@hostb through one
# setup and one RESULT line is printed.
#
#   direct   plain inet_tcp_dist, no encryption: the floor to compare against
#   erlmesh  one erlmesh per simulated host (target/release/erlmesh)
#   erlmesh-policy  the same, each host restricting the other with a dist
#            policy (no spawn, one registered name, no exit signals) that
#            lets the benchmark's own traffic through
#   tlsdist  OTP's inet_tls_dist with mutual TLS
#   stunnel  a stunnel4 pair per host with mutual TLS (when installed)
#   plain    the stunnel layout with a plain TCP forwarder per host and no
#            encryption (examples/plainfwd.rs): the floor for any design
#            with a proxy per host
#
# usage: bench/run.sh MODE [bulk_MiB] [round_trips] [small_msgs]
# (ERLMESH=path runs another erlmesh binary; ERLMESH_SUITES sets its
# tls.cipher_suites, comma-separated; ERLMESH_RECORD_PROVIDER its
# tls.record_provider)
# RESULT fields: first_ping_ms rtt_p50_us rtt_p99_us bulk_MBps small_msgs_per_s
#   proxy_cpu_s (both proxies, the whole run) proxy_start_cpu_s (theirs
#   before the first node started) proxy_rss_kb (peak, both) and, for erlmesh,
#   idle_rss_kb (one erlmesh before any node) and tunnel_rss_kb (one erlmesh
#   holding one tunnel, after the run); rtt_cpu_s bulk_cpu_s small_cpu_s:
#   both proxies' CPU during each phase (per thread, from schedstat).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mode=$1; big=${2:-256}; rtts=${3:-5000}; small=${4:-200000}
w=$(mktemp -d /tmp/erlmesh-bench.XXXXXX); c=$w/certs
em=${ERLMESH:-$here/../target/release/erlmesh}
. "$here/../scripts/lib.sh"
proxies=()
cp "$here/distbench.erl" "$w/" && cd "$w" && erlc distbench.erl
opts="#{big_mb => $big, rtts => $rtts, small => $small}"
erl_common=(-noshell -pa "$w" -setcookie bench -kernel inet_dist_use_interface '{127,0,0,1}' +sbwt none +sbwtdcpu none +sbwtdio none)
extra=""

rss() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
# CPU clock ticks the proxies have used so far (user and system).
proxy_ticks() {
  local t=0 u s
  for p in "${proxies[@]}"; do
    read -r u s < <(awk '{print $14, $15}' "/proc/$p/stat")
    t=$((t + u + s))
  done
  echo "$t"
}
ticks_ready=0
# BENCH_WRAP: a command the proxies are started under (bench/instructions.sh
# runs them under callgrind); BENCH_ON_READY / BENCH_ON_DONE: commands run
# once the proxies are ready and once node a is done, with the proxies'
# pids as arguments.
wrap=${BENCH_WRAP:-}
on_ready() { [ -z "${BENCH_ON_READY:-}" ] || $BENCH_ON_READY "${proxies[@]}"; }
on_done() { [ -z "${BENCH_ON_DONE:-}" ] || $BENCH_ON_DONE "${proxies[@]}"; }
start_b() { "$@" -eval 'distbench:serve()' >"$w/b.log" 2>&1 & pids+=($!); }
wait_names() { # epmd_port name: until the node is registered
  for _ in $(seq 100); do
    ERL_EPMD_PORT=$1 epmd -port "$1" -names 2>/dev/null | grep -q "name $2 " && return 0; sleep 0.05
  done
}
run_a() {
  local out line cpu=0 hwm=0 tck
  out=$(BENCH_PROXY_PIDS="${proxies[*]}" timeout 600 "$@" -eval "distbench:run(b@hostb, $opts), halt()." 2>&1) || true
  line=$(grep '^RESULT' <<<"$out" || true)
  on_done
  if [ -z "$line" ]; then echo "$out" | tail -20 >&2; cat "$w/b.log" >&2; echo "run failed" >&2; exit 1; fi
  for p in "${proxies[@]}"; do
    read -r u s < <(awk '{print $14, $15}' "/proc/$p/stat")
    cpu=$((cpu + u + s)); hwm=$((hwm + $(awk '/VmHWM/{print $2}' "/proc/$p/status")))
  done
  tck=$(getconf CLK_TCK)
  echo "${line/RESULT/RESULT mode=$mode} proxy_cpu_s=$(awk -v c=$cpu -v t=$tck 'BEGIN{printf "%.2f", c/t}') proxy_start_cpu_s=$(awk -v c=$ticks_ready -v t=$tck 'BEGIN{printf "%.2f", c/t}') proxy_rss_kb=$hwm$extra"
}

# The proxy-pair layout (stunnel, plain): an epmd per host, b's dist port
# fixed at $db, and a@hosta resolving hostb to 127.0.1.2, where host A's
# proxy listens on the EPMD port ($ea) and b's dist port. Host A's proxy
# goes to host B's on $s1 (EPMD) and $s2 (dist).
proxy_pair_ports() {
  ea=$(free_port); eb=$(free_port); db=$(free_port); s1=$(free_port); s2=$(free_port)
  printf '{host, {127,0,1,2}, ["hostb"]}.\n{lookup, [file, native]}.\n' >"$w/inetrc_a"
  epmd -address 127.0.0.1 -port "$ea" & pids+=($!)
  epmd -address 127.0.0.1 -port "$eb" & pids+=($!)
}
proxy_pair_run() { # once the proxies are started
  sleep 0.5
  ticks_ready=$(proxy_ticks); on_ready
  start_b env ERL_EPMD_PORT=$eb erl "${erl_common[@]}" -sname b@hostb -kernel inet_dist_listen_min "$db" -kernel inet_dist_listen_max "$db"
  wait_names "$eb" b
  run_a env ERL_EPMD_PORT=$ea ERL_INETRC=$w/inetrc_a erl "${erl_common[@]}" -sname a@hosta
}

case $mode in
direct|tlsdist)
  printf '{host, {127,0,0,1}, ["hosta","hostb"]}.\n{lookup, [file, native]}.\n' >"$w/inetrc"
  tls_a=(); tls_b=()
  if [ "$mode" = tlsdist ]; then
    make_certs "$c" hosta hostb
    for h in hosta hostb; do
      cat >"$w/$h.conf" <<EOC
[{server, [{certfile, "$c/$h.pem"}, {keyfile, "$c/$h.key"}, {cacertfile, "$c/ca.pem"}, {verify, verify_peer}, {fail_if_no_peer_cert, true}]},
 {client, [{certfile, "$c/$h.pem"}, {keyfile, "$c/$h.key"}, {cacertfile, "$c/ca.pem"}, {verify, verify_peer}]}].
EOC
    done
    tls_a=(-proto_dist inet_tls -ssl_dist_optfile "$w/hosta.conf")
    tls_b=(-proto_dist inet_tls -ssl_dist_optfile "$w/hostb.conf")
  fi
  ep=$(free_port)
  epmd -address 127.0.0.1 -port "$ep" & pids+=($!); sleep 0.3
  start_b env ERL_EPMD_PORT=$ep ERL_INETRC=$w/inetrc erl "${erl_common[@]}" -sname b@hostb "${tls_b[@]}"
  wait_names "$ep" b
  run_a env ERL_EPMD_PORT=$ep ERL_INETRC=$w/inetrc erl "${erl_common[@]}" -sname a@hosta "${tls_a[@]}"
  ;;
stunnel)
  command -v stunnel >/dev/null || { echo "stunnel not installed" >&2; exit 3; }
  make_certs "$c" hosta hostb
  proxy_pair_ports
  tls_opts() { printf 'cert = %s/%s.pem\nkey = %s/%s.key\nCAfile = %s/ca.pem\nverifyChain = yes\n' "$c" "$1" "$c" "$1" "$c"; }
  { echo "foreground = yes"; echo "pid ="
    for pair in "epmd $ea $s1" "dist $db $s2"; do set -- $pair
      printf '[%s-b]\nclient = yes\naccept = 127.0.1.2:%s\nconnect = 127.0.0.1:%s\ncheckHost = hostb\n' "$1" "$2" "$3"; tls_opts hosta; done
  } >"$w/stunnel_a.conf"
  { echo "foreground = yes"; echo "pid ="
    for pair in "epmd $s1 $eb" "dist $s2 $db"; do set -- $pair
      printf '[%s-in]\naccept = 127.0.0.1:%s\nconnect = 127.0.0.1:%s\n' "$1" "$2" "$3"; tls_opts hostb; done
  } >"$w/stunnel_b.conf"
  stunnel "$w/stunnel_a.conf" >"$w/sa.log" 2>&1 & pids+=($!); proxies+=($!)
  stunnel "$w/stunnel_b.conf" >"$w/sb.log" 2>&1 & pids+=($!); proxies+=($!)
  proxy_pair_run
  ;;
erlmesh|erlmesh-policy)
  [ -x "$em" ] || { echo "no erlmesh binary at $em (cargo build --release, or set ERLMESH)" >&2; exit 1; }
  make_certs "$c" hosta hostb
  ta=$(free_port); tb=$(free_port); ea=$(free_port); eb=$(free_port)
  policy=()
  [ "$mode" = erlmesh-policy ] && policy=(--dist-policy bench --extra $'[dist_policies.bench]\nmode = "enforce"\nspawn = false\nregistered = ["bench"]\nexit_signals = false')
  write_conf "$w/hosta.toml" hosta "$ta" "$ea" "$w/state-hosta" "$c" --peer "hostb=127.0.0.1:$tb" "${policy[@]}"
  write_conf "$w/hostb.toml" hostb "$tb" "$eb" "$w/state-hostb" "$c" --peer "hosta=127.0.0.1:$ta" "${policy[@]}"
  # ERLMESH_SUITES="TLS13_...[,TLS13_...]": both hosts' tls.cipher_suites
  # (to compare suites; unset, erlmesh's default order).
  if [ -n "${ERLMESH_SUITES:-}" ]; then
    list=$(sed 's/[^,][^,]*/"&"/g; s/,/, /g' <<<"$ERLMESH_SUITES")
    sed -i "/^key = /a cipher_suites = [$list]" "$w/hosta.toml" "$w/hostb.toml"
  fi
  if [ -n "${ERLMESH_RECORD_PROVIDER:-}" ]; then
    sed -i "/^key = /a record_provider = \"$ERLMESH_RECORD_PROVIDER\"" "$w/hosta.toml" "$w/hostb.toml"
  fi
  for h in hosta hostb; do
    $wrap "$em" run --config "$w/$h.toml" 2>"$w/$h.mesh.log" & pids+=($!); proxies+=($!)
  done
  for h in hosta hostb; do wait_ready "$w/$h.toml" "$w/$h.mesh.log"; done
  idle=$(rss "${proxies[0]}")
  ticks_ready=$(proxy_ticks); on_ready
  ( eval "$("$em" env --config "$w/hostb.toml")"; exec erl "${erl_common[@]}" -sname b@hostb -eval 'distbench:serve()' ) >"$w/b.log" 2>&1 &
  pids+=($!)
  wait_names "$eb" b
  ( eval "$("$em" env --config "$w/hosta.toml")"; run_a erl "${erl_common[@]}" -sname a@hosta ) >"$w/a.result" || { tail -n 20 "$w"/*.mesh.log >&2; exit 1; }
  sed "s/\$/ idle_rss_kb=$idle/" "$w/a.result"
  ;;
plain|plain-async)
  # The floor for any design with a proxy per host: the stunnel layout with
  # a plain TCP forwarder per host (examples/plainfwd.rs: no encryption);
  # plain-async: the same on tokio's current-thread runtime
  # (examples/asyncfwd.rs), the floor for an async proxy.
  fwd=$here/../target/release/examples/plainfwd
  [ "$mode" = plain-async ] && fwd=$here/../target/release/examples/asyncfwd
  [ -x "$fwd" ] || { echo "no plainfwd at $fwd (cargo build --release --examples)" >&2; exit 1; }
  proxy_pair_ports
  $wrap "$fwd" "127.0.1.2:$ea=127.0.0.1:$s1" "127.0.1.2:$db=127.0.0.1:$s2" & pids+=($!); proxies+=($!)
  $wrap "$fwd" "127.0.0.1:$s1=127.0.0.1:$eb" "127.0.0.1:$s2=127.0.0.1:$db" & pids+=($!); proxies+=($!)
  proxy_pair_run
  ;;
*) echo "unknown mode $mode (direct|erlmesh|erlmesh-policy|tlsdist|stunnel|plain|plain-async)" >&2; exit 2 ;;
esac
