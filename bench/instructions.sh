#!/usr/bin/env bash
# User-space instructions per round trip (or per MiB of bulk) of a proxy
# pair, counted by callgrind: repeatable where CPU time on this machine is
# not (about 20 % between runs), so that a change to the per-message path
# can be judged. Two runs of bench/run.sh MODE with both proxies under
# callgrind, instrumented from ready to the end of node a's run: N and 3N
# round trips (1 MiB bulk, 10 small messages), N and 3N MiB of bulk (10
# round trips), or N and 3N small messages (1 MiB, 10 round trips); the
# difference over 2N, in all and by where the code comes
# from (aws-lc, tokio, Rust's std, libc, each of erlmesh's files). User
# space only: the kernel's share of a wake-up, most of a round trip's CPU
# on this machine, is not in it; and valgrind runs the code an AVX2 CPU
# without AVX-512 runs.
# INSTR_KEEP=DIR keeps the callgrind dumps there (for callgrind_annotate).
# usage: bench/instructions.sh [MODE=erlmesh] [N=2000] [rtt|bulk|small]  (MODE:
# erlmesh, erlmesh-policy, plain, plain-async; for bulk, N in MiB)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mode=${1:-erlmesh}; n=${2:-2000}; what=${3:-rtt}
"$here/../scripts/install-deps.sh"
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
(cd "$here/.." && cargo build --release --locked -q --bins --examples)
w=$(mktemp -d); trap '[ -n "${INSTR_KEEP:-}" ] && cp -r "$w" "$INSTR_KEEP"; rm -rf "$w"' EXIT

# Each proxy: instrumented once ready; its counts dumped when node a is done
# (the run then ends the proxies with SIGKILL, so nothing later is counted).
cat >"$w/ready" <<'EOF'
#!/bin/sh
for p in "$@"; do callgrind_control -i on "$p" >/dev/null; done
EOF
cat >"$w/done" <<'EOF'
#!/bin/sh
for p in "$@"; do callgrind_control -d "$p" >/dev/null; done
EOF
chmod +x "$w/ready" "$w/done"
count() { # round trips (or MiB) -> directory of dumps
  local load=(1 "$1" 10)
  [ "$what" = bulk ] && load=("$1" 10 10)
  [ "$what" = small ] && load=(1 10 "$1")
  mkdir -p "$w/$1"
  BENCH_WRAP="valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$w/$1/cg.%p" \
    BENCH_ON_READY="$w/ready" BENCH_ON_DONE="$w/done" \
    "$here/run.sh" "$mode" "${load[@]}" >"$w/$1.result" 2>"$w/$1.err" || { cat "$w/$1.err" >&2; exit 1; }
  ls "$w/$1"/cg.*.* >/dev/null 2>&1 || { echo "no callgrind dump for $1 round trips" >&2; exit 1; }
}
count "$n"
count $((3 * n))
python3 - "$w/$n" "$w/$((3 * n))" $((2 * n)) "$mode" "$(cd "$here/.." && pwd)/src/" "$what" <<'PY'
import collections, glob, re, sys

def by_file(d):
    """Exclusive instructions by source file (inlined code under its own
    file) over the dumps in directory d."""
    cost = collections.Counter()
    for path in glob.glob(d + '/cg.*.*'):
        names, fl, fi, skip = {}, None, None, False
        for line in open(path):
            c = line[:1]
            if c.isdigit() or c in '+-*':
                if skip:
                    skip = False
                    continue
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit():
                    cost[fi or fl] += int(parts[1])
                continue
            k, _, v = line.rstrip('\n').partition('=')
            m = re.match(r'\((\d+)\)\s*(.*)', v)
            if k in ('fl', 'fi', 'fe', 'cfl', 'cfi') and m:
                if m.group(2):
                    names[m.group(1)] = m.group(2)
                v = names.get(m.group(1), '?')
            if k == 'fl':
                fl, fi = v, None
            elif k in ('fi', 'fe'):
                fi = v
            elif k == 'fn':
                fi = None
            elif k == 'calls':
                skip = True
    return cost

def group(f):
    f = f or '?'
    if f.startswith(root):
        return 'erlmesh ' + f[len(root):]
    f = re.sub(r'^.*/registry/src/[^/]+/', '', f)
    if f.startswith('/rustc/'):
        return 'Rust std'
    if f.startswith('/aws-lc/'):
        if re.search(r'gcm|aes|ghash|aead', f):
            return 'aws-lc: AES-GCM (records)'
        return 'aws-lc: other (mostly handshakes, which go with time: gossip rounds)'
    if f.startswith('./'):
        return 'libc'
    return f.split('/')[0]

root, unit = sys.argv[5], {'rtt': 'round_trip', 'bulk': 'MiB', 'small': 'small_message'}[sys.argv[6]]
lo, hi, rts, mode = by_file(sys.argv[1]), by_file(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
diff, files = collections.Counter(), collections.Counter()
for f in set(lo) | set(hi):
    diff[group(f)] += hi[f] - lo[f]
    files[re.sub(r'^.*/(registry/src/[^/]+|rustc/[0-9a-f]+)/', '', f or '?')] += hi[f] - lo[f]
total = sum(diff.values())
print('INSTRUCTIONS mode=%s per_%s=%.0f (both proxies, user space)' % (mode, unit, total / rts))
for g, v in diff.most_common():
    if abs(v) / rts >= 50:
        print('  %8.0f  %s' % (v / rts, g))
print('by file:')
for f, v in files.most_common(30):
    print('  %8.0f  %s' % (v / rts, f))
PY
