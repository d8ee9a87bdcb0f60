# Shared by the demo, soak, scale and benchmark scripts (sourced, not run):
# every process they start is recorded and killed on exit, ports come from
# the kernel, and certificates and configs are written the same way.
# The caller sets em (the erlmesh binary) and w (a fresh work directory).

pids=()   # every process started, killed on exit
mesh=()   # the erlmesh processes among them
cleanup() {
  exec 2>/dev/null
  for p in "${pids[@]}" "${mesh[@]}"; do kill -9 "$p" || true; done
  wait || true
  rm -rf "$w"
}
trap cleanup EXIT

# A port the kernel hands out, released for the caller to bind.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# make_certs DIR HOST...: a cluster CA and one certificate per host.
make_certs() {
  local dir=$1; shift
  "$em" cert ca --dir "$dir" >/dev/null
  for h in "$@"; do "$em" cert issue --dir "$dir" --host "$h" >/dev/null; done
}

# write_conf FILE HOST TLS_PORT EPMD_PORT STATE_DIR CERT_DIR [EXTRA]: a
# loopback host's config; add peers with add_peer.
write_conf() {
  printf 'host = "%s"\nlisten = "127.0.0.1:%s"\nepmd_port = %s\nstate_dir = "%s"\n%s\n[tls]\nca = "%s/ca.pem"\ncert = "%s/%s.pem"\nkey = "%s/%s.key"\n' \
    "$2" "$3" "$4" "$5" "${7:-}" "$6" "$6" "$2" "$6" "$2" >"$1"
}

# add_peer FILE HOST ADDRESS
add_peer() { printf '\n[[peers]]\nhost = "%s"\naddress = "%s"\n' "$2" "$3" >>"$1"; }

# wait_ready LOG [N]: until LOG holds N "erlmesh ready" lines (default 1).
wait_ready() {
  for _ in $(seq 600); do
    [ "$(grep -c 'erlmesh ready' "$1" 2>/dev/null || true)" -ge "${2:-1}" ] && return 0
    sleep 0.05
  done
  echo "erlmesh not ready: $1" >&2; tail -5 "$1" >&2; return 1
}
