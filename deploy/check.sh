#!/usr/bin/env bash
# Syntax checks for the deploy files that cannot run here (no container
# engine, no Kubernetes): the Dockerfile through Docker's own parser (PyPI
# "dockerfile"), the Kubernetes YAML through yamllint plus a check that
# every document names apiVersion, kind and metadata.name, and the systemd
# unit through systemd-analyze when present.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${ERLMESH_CHECK_VENV:-/tmp/erlmesh-deploy-check}
# (a venv left without pip by an earlier failed attempt is made again)
[ -x "$venv/bin/pip" ] || python3 -m venv --clear "$venv"
"$venv/bin/pip" install -q dockerfile yamllint pyyaml
rendered=$(mktemp --suffix=.toml)
rendered_transparent=$(mktemp --suffix=.toml)
trap 'rm -f "$rendered" "$rendered_transparent"' EXIT
"$venv/bin/python" - "$rendered" "$rendered_transparent" <<'PY'
import dockerfile, sys, yaml, glob
cmds = dockerfile.parse_file("Dockerfile")
stages = [c for c in cmds if c.cmd == "FROM"]
assert len(stages) >= 2, "multi-stage build expected"
assert any(c.cmd == "ENTRYPOINT" for c in cmds)
print(f"Dockerfile: {len(cmds)} instructions, {len(stages)} stages: ok")
for path in sorted(glob.glob("deploy/k8s/*.yaml")):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    for d in docs:
        for k in ("apiVersion", "kind", "metadata"):
            assert k in d, f"{path}: a document lacks {k}"
        assert d["metadata"].get("name"), f"{path}: {d['kind']} without metadata.name"
    print(f"{path}: {len(docs)} documents: ok")
# The StatefulSet's erlmesh config, rendered as its init container does.
for d in yaml.safe_load_all(open("deploy/k8s/erlmesh-statefulset.yaml")):
    if d and d["kind"] == "ConfigMap" and "erlmesh.toml.in" in d.get("data", {}):
        text = d["data"]["erlmesh.toml.in"].replace("${POD}", "cache-0").replace("${NS}", "default")
        assert "[[peers]]" not in text and "seeds = " in text, "the StatefulSet should join through its Service"
        open(sys.argv[1], "w").write(text)
# The transparent variant's config, rendered as its init container does.
for d in yaml.safe_load_all(open("deploy/k8s/erlmesh-transparent.yaml")):
    if d and d["kind"] == "ConfigMap":
        text = d["data"]["erlmesh.toml.in"].replace("${POD_IP}", "10.1.2.3").replace("${NS}", "default")
        assert 'interception = "transparent"' in text and 'host = "10.1.2.3"' in text
        open(sys.argv[2], "w").write(text)
PY
bin=target/debug/erlmesh
[ -x "$bin" ] || bin=target/release/erlmesh
if [ -x "$bin" ]; then
  "$bin" env --config "$rendered" >/dev/null
  "$bin" env --config "$rendered_transparent" | grep -q "nodes need no environment"
  echo "deploy/k8s: the rendered erlmesh configs are valid"
fi
"$venv/bin/yamllint" -d '{extends: relaxed, rules: {line-length: {max: 140}}}' deploy/k8s
if command -v systemd-analyze >/dev/null; then
  systemd-analyze verify deploy/erlmesh.service 2>&1 | grep -v "Command /usr/local/bin/erlmesh is not executable\|No such file" || true
fi
echo "deploy files: ok"
# Every program the unit runs by absolute path comes with the package, with
# an Essential package, or with one the package depends on (a minimal
# Debian has no procps, whose /bin/kill ExecReload uses).
depends=$(sed -n 's/^Depends: //p' deploy/deb/build.sh | tr -d ' ' | tr ',' '\n')
for prog in $(grep -oE '^Exec[A-Za-z]*=[-@+!]*/[^ ]+' deploy/erlmesh.service | sed -E 's/^[^=]*=[-@+!]*//' | sort -u); do
  case $prog in /usr/bin/erlmesh | /usr/local/bin/erlmesh) continue ;; esac
  owner=$(dpkg -S "$prog" 2>/dev/null | head -1 | cut -d: -f1) || true
  [ -n "$owner" ] || owner=$(dpkg -S "/usr$prog" 2>/dev/null | head -1 | cut -d: -f1) || true
  [ -n "$owner" ] || { echo "deploy/erlmesh.service runs $prog, which no installed package provides" >&2; exit 1; }
  if [ "$(dpkg-query -W -f='${Essential}' "$owner")" != yes ] && ! grep -qx "$owner" <<<"$depends"; then
    echo "deploy/erlmesh.service runs $prog from $owner, which is neither Essential nor in the package's Depends" >&2
    exit 1
  fi
done
echo "deploy/erlmesh.service: every program it runs is provided"
