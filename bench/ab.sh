#!/usr/bin/env bash
# Interleaved A/B runs of bench/run.sh: the plain forwarder pair, then each
# erlmesh variant, ROUNDS times over; prints each variant's median and range
# of bulk, round trip p50, small messages and CPU per GB, and its ratio to
# plain in the same rounds. A variant is LABEL=BINARY, with @SUITE[,SUITE]
# (tls.cipher_suites for both hosts) and %PROVIDER (tls.record_provider)
# after it if wanted: LABEL=BINARY[@SUITES][%PROVIDER].
# usage: bench/ab.sh ROUNDS BULK_MiB RTTS SMALL LABEL=BINARY[@SUITES][%PROVIDER]...
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
rounds=$1 bulk=$2 rtts=$3 small=$4; shift 4
out=$(mktemp); trap 'rm -f "$out"' EXIT
for r in $(seq "$rounds"); do
  "$here/run.sh" plain "$bulk" "$rtts" "$small" | sed 's/^RESULT /RESULT label=plain /' | tee -a "$out" >&2
  for v in "$@"; do
    label=${v%%=*} spec=${v#*=} provider=""
    [ "${spec%%%*}" != "$spec" ] && provider=${spec#*%} && spec=${spec%%%*}
    bin=${spec%%@*} suites=""
    [ "$spec" != "$bin" ] && suites=${spec#*@}
    ERLMESH=$bin ERLMESH_SUITES=$suites ERLMESH_RECORD_PROVIDER=$provider "$here/run.sh" erlmesh "$bulk" "$rtts" "$small" \
      | sed "s/^RESULT /RESULT label=$label /" | tee -a "$out" >&2
  done
done
python3 - "$out" "$bulk" "$rtts" "$small" <<'PY'
import sys, statistics as st
path, bulk, rtts, small = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
rows, order = {}, []
for line in open(path):
    if not line.startswith('RESULT'): continue
    kv = dict(f.split('=', 1) for f in line.split()[1:])
    label = kv.pop('label'); kv.pop('mode')
    if label not in rows: order.append(label)
    r = {k: float(v) for k, v in kv.items()}
    # From ready to the end: start-up carries nothing.
    r['cpu_s_per_GB'] = (r['proxy_cpu_s'] - r.get('proxy_start_cpu_s', 0)) / (bulk * 1048576 / 1e9)
    # Each phase's own CPU: per GB of bulk, per small message, per round trip.
    r['bulk_cpu_s_per_GB'] = r['bulk_cpu_s'] / (bulk * 1048576 / 1e9)
    r['small_cpu_us_per_msg'] = r['small_cpu_s'] / small * 1e6
    r['rtt_cpu_us_per_rt'] = r['rtt_cpu_s'] / (rtts + 200) * 1e6
    rows.setdefault(label, []).append(r)
keys = ['bulk_MBps', 'rtt_p50_us', 'small_msgs_per_s', 'cpu_s_per_GB', 'bulk_cpu_s_per_GB', 'small_cpu_us_per_msg', 'rtt_cpu_us_per_rt']
print('%-12s' % 'variant' + ''.join('%28s' % k for k in keys))
for l in order:
    cells = []
    for k in keys:
        v = [r[k] for r in rows[l]]
        cells.append('%8.2f (%7.2f-%7.2f)' % (st.median(v), min(v), max(v)))
    print('%-12s' % l + ''.join('%28s' % c for c in cells))
for l in order:
    if l == 'plain': continue
    # Ratios to plain round by round, then their median and range.
    rs = {k: [a[k] / p[k] for a, p in zip(rows[l], rows['plain'])] for k in keys}
    print('RATIO %s/plain ' % l + ' '.join('%s=%.2f (%.2f-%.2f)' % (k, st.median(v), min(v), max(v)) for k, v in rs.items()))
PY
