#!/usr/bin/env bash
# erlmesh's benchmark: real nodes through direct inet_tcp_dist, a plain
# forwarder pair (the floor for any proxy per host) and its twin on tokio
# (plain-async: what an async runtime costs per wake-up), erlmesh, OTP's
# inet_tls_dist and stunnel (when installed), and erlmesh with a restrictive
# dist policy on both hosts (erlmesh-policy), alternating setups over
# ROUNDS rounds; prints each figure's median and its ratio to direct, with
# erlmesh's CPU seconds per GB carried and its memory.
# usage: bench/bench.sh [ROUNDS=3] [bulk_MiB=256] [round_trips=5000] [small_msgs=200000]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
rounds=${1:-3}; shift || true
"$here/../scripts/install-deps.sh"
(cd "$here/.." && cargo build --release --locked -q --bins --examples)
modes="direct plain plain-async erlmesh erlmesh-policy tlsdist"
command -v stunnel >/dev/null && modes="$modes stunnel"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for r in $(seq "$rounds"); do
  for m in $modes; do "$here/run.sh" "$m" "$@" | tee -a "$out" >&2; done
done
python3 - "$out" ${1:-256} $modes ${3:-200000} $((${2:-5000} + 200)) <<'PY'
import sys, statistics as st
path, bulk_mib, modes = sys.argv[1], float(sys.argv[2]), sys.argv[3:-2]
rows = {}
for line in open(path):
    kv = dict(f.split('=', 1) for f in line.split()[1:])
    rows.setdefault(kv.pop('mode'), []).append({k: float(v) for k, v in kv.items()})
keys = ['first_ping_ms', 'rtt_p50_us', 'rtt_p99_us', 'bulk_MBps', 'small_msgs_per_s', 'proxy_cpu_s', 'proxy_rss_kb']
med = {m: {k: st.median(r[k] for r in rows[m]) for k in keys} for m in modes if m in rows}
print('%-15s' % 'setup' + ''.join('%17s' % k for k in keys))
for m in med:
    print('%-15s' % m + ''.join('%17.1f' % med[m][k] for k in keys))
for m in med:
    if m == 'direct': continue
    r = {k: med[m][k] / med['direct'][k] for k in keys[:5]}
    print('RATIO %s/direct ' % m + ' '.join('%s=%.2f' % (k, v) for k, v in r.items()))
for floor in ('plain', 'plain-async'):
    if floor in med and 'erlmesh' in med:
        r = {k: med['erlmesh'][k] / med[floor][k] for k in keys[:5]}
        print('RATIO erlmesh/%s ' % floor + ' '.join('%s=%.2f' % (k, v) for k, v in r.items()))
if 'erlmesh-policy' in med and 'erlmesh' in med:
    r = {k: med['erlmesh-policy'][k] / med['erlmesh'][k] for k in keys[:5]}
    print('RATIO erlmesh-policy/erlmesh ' + ' '.join('%s=%.2f' % (k, v) for k, v in r.items()))
# Bytes carried per run: bulk MiB plus small messages and round trips (small).
gb = bulk_mib * 1024 * 1024 / 1e9
for m in ('plain', 'plain-async', 'erlmesh', 'erlmesh-policy', 'stunnel'):
    if m in med:
        carried = st.median(r['proxy_cpu_s'] - r.get('proxy_start_cpu_s', 0) for r in rows[m])
        print('CPU %s: %.2f s per GB carried (both proxies from ready to the end / bulk bytes; %.2f s with start-up)' % (m, carried / gb, med[m]['proxy_cpu_s'] / gb))
if 'plain' in med:
    for m in ('plain-async', 'erlmesh', 'erlmesh-policy'):
        if m in med:
            # Round by round against plain's run of the same round.
            rs = [(a['proxy_cpu_s'] - a.get('proxy_start_cpu_s', 0)) / (p['proxy_cpu_s'] - p.get('proxy_start_cpu_s', 0))
                  for a, p in zip(rows[m], rows['plain'])]
            bs = [a['bulk_MBps'] / p['bulk_MBps'] for a, p in zip(rows[m], rows['plain'])]
            print('PER-ROUND %s/plain: bulk %s; CPU per GB carried %s' % (m, ' '.join('%.2f' % b for b in bs), ' '.join('%.2f' % r for r in rs)))
# Each phase's own CPU (both proxies, per thread from schedstat): the bulk
# phase per GB, the small-message phase per message, the round trips per
# round trip; the whole-run figure above mixes them over the bulk bytes.
small_n, rtt_n = float(sys.argv[3 + len(modes)]), float(sys.argv[4 + len(modes)])
phase = {}
for m in ('plain', 'plain-async', 'erlmesh', 'erlmesh-policy', 'stunnel'):
    if m in rows and 'bulk_cpu_s' in rows[m][0]:
        phase[m] = (st.median(r['bulk_cpu_s'] for r in rows[m]) / gb,
                    st.median(r['small_cpu_s'] for r in rows[m]) / small_n * 1e6,
                    st.median(r['rtt_cpu_s'] for r in rows[m]) / rtt_n * 1e6)
        print('PHASE CPU %s: bulk %.2f s per GB; small messages %.2f us per message; round trips %.1f us per round trip' % ((m,) + phase[m]))
for m, floor in (('plain-async', 'plain'), ('erlmesh', 'plain'), ('erlmesh-policy', 'plain'), ('erlmesh', 'plain-async')):
    if m in phase and floor in phase:
        print('PHASE CPU RATIO %s/%s: bulk %.2f; small messages %.2f; round trips %.2f' %
              ((m, floor) + tuple(a / p for a, p in zip(phase[m], phase[floor]))))
if 'erlmesh' in rows:
    print('MEMORY erlmesh: idle RSS %.0f KiB (one process); peak RSS during the run %.0f KiB (both)' %
          (st.median(r['idle_rss_kb'] for r in rows['erlmesh']), med['erlmesh']['proxy_rss_kb']))
PY
# The machine, as figures from different ones are not comparable: the CPU,
# whether it has AES-NI, VAES and AVX-512 (which decide the record layer's
# AES-GCM code, see the README's "The cryptography, provider by provider").
flags=$(grep -m1 '^flags' /proc/cpuinfo)
has() { grep -qw "$1" <<<"$flags" && echo yes || echo no; }
echo "MACHINE cpu=\"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')\" cores=$(nproc) aes=$(has aes) vaes=$(has vaes) avx512f=$(has avx512f)"
