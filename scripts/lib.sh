# Shared by the demo, soak, scale and benchmark scripts (sourced, not run):
# every process they start is recorded and killed on exit, ports come from
# a range of their own, and certificates and configs are written the same
# way.
# The caller sets em (the erlmesh binary) and w (a fresh work directory).

pids=()   # every process started, killed on exit
mesh=()   # the erlmesh processes among them
cleanup() {
  exec 2>/dev/null
  for p in "${pids[@]}" "${mesh[@]}"; do kill -9 "$p" || true; done
  wait || true
  [ -n "${KEEP_W:-}" ] && cp -a "$w" "$KEEP_W"; rm -rf "$w"
}
trap cleanup EXIT

# A free port for the caller to bind, from 10000..19999: below the kernel's
# ephemeral range (a port it handed out could be taken by some outgoing
# connection before the caller binds it) and apart from the Rust tests'
# 20000..31999. Each script (by $$, the same in $(...)) probes its own
# slice of 1000 and records what it handed out in $w/.ports.
free_port() {
  python3 - "$w/.ports" "$$" <<'PY'
import os, socket, sys
path, pid = sys.argv[1], int(sys.argv[2])
used = set(open(path).read().split()) if os.path.exists(path) else set()
base = 10000 + (pid % 10) * 1000
for i in range(1000):
    port = base + (len(used) + i) % 1000
    if str(port) in used:
        continue
    try:
        for addr in ("127.0.0.1", "0.0.0.0"):
            with socket.socket() as s:
                s.bind((addr, port))
    except OSError:
        continue
    with open(path, "a") as f:
        f.write(f"{port}\n")
    print(port)
    break
else:
    sys.exit(f"no free port in {base}..{base + 999}")
PY
}

# make_certs DIR HOST...: a cluster CA and one certificate per host.
make_certs() {
  local dir=$1; shift
  "$em" cert ca --dir "$dir" >/dev/null
  for h in "$@"; do "$em" cert issue --dir "$dir" --host "$h" >/dev/null; done
}

# write_conf FILE HOST TLS_PORT EPMD_PORT STATE_DIR CERT_DIR [OPTION...]: a
# loopback host's config, written by `erlmesh config init` (the one config
# writer, which the Rust tests' harness uses too) and checked as `erlmesh
# run` checks it. OPTIONs are config init's: --peer HOST=ADDRESS, --seed
# ADDRESS, --extra TOML, --dist-policy NAME.
write_conf() {
  local file=$1 host=$2 tls=$3 epmd=$4 state=$5 certs=$6
  shift 6
  "$em" config init --force --output "$file" --host "$host" --listen "127.0.0.1:$tls" \
    --epmd-port "$epmd" --state-dir "$state" --certs "$certs" "$@"
}

# wait_ready CONF LOG: until the erlmesh running with CONF says it is ready
# on its control socket (`erlmesh status`: every listener bound, the join
# done); on timeout, LOG's last lines.
wait_ready() {
  for _ in $(seq 600); do
    "$em" status --config "$1" 2>/dev/null | grep -q '^state: ready' && return 0
    sleep 0.05
  done
  echo "erlmesh not ready: $1" >&2; tail -5 "$2" >&2; return 1
}
