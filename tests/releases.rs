//! Release tooling end to end: a mix release (Debian's elixir; a project
//! with no dependencies builds offline) whose `rel/env.sh.eex` is
//! deploy/erlang/mix/env.sh.eex, started with its own scripts on two hosts
//! wired by `erlmesh env`; `rpc`, `eval`, `remote` and clustering between
//! the two hosts all go through erlmesh.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Builds the release once in `dir`; returns its bin/cache script.
fn build_mix_release(dir: &Path) -> PathBuf {
    let run = |args: &[&str], cwd: &Path| {
        let out = Command::new(args[0])
            .args(&args[1..])
            .current_dir(cwd)
            .env("MIX_HOME", dir.join("mix-home"))
            .env("HEX_OFFLINE", "1")
            .env("MIX_ENV", "prod")
            .output()
            .unwrap_or_else(|e| panic!("{args:?}: {e} (scripts/test.sh installs elixir)"));
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["mix", "new", "cache", "--sup"], dir);
    let project = dir.join("cache");
    std::fs::create_dir_all(project.join("rel")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/erlang/mix/env.sh.eex"),
        project.join("rel/env.sh.eex"),
    )
    .unwrap();
    run(&["mix", "release", "--overwrite"], &project);
    project.join("_build/prod/rel/cache/bin/cache")
}

/// The release script for `host`: its node name, cookie, temp directory,
/// erlmesh on PATH and the host's erlmesh config.
fn release(bin: &Path, host: &Host) -> Command {
    let mut c = Command::new(bin);
    let erlmesh_dir = Path::new(ERLMESH).parent().unwrap();
    c.env(
        "PATH",
        format!(
            "{}:{}",
            erlmesh_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    )
    .env("ERLMESH_CONFIG", host.config_path())
    .env("RELEASE_NODE", format!("cache@{}", host.name))
    .env("RELEASE_COOKIE", "erlmesh-test")
    .env("RELEASE_TMP", host.dir.join(format!("rel-tmp-{}", host.name)));
    c
}

fn rpc(bin: &Path, host: &Host, expr: &str) -> (bool, String) {
    let out = release(bin, host).args(["rpc", expr]).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn a_mix_release_on_two_hosts_clusters_and_answers_rpc_eval_and_remote() {
    let c = Cluster::new();
    let bin = build_mix_release(c.path());
    let (ha, hb) = c.pair("", "");
    let mut nodes = Vec::new();
    for h in [&ha, &hb] {
        let log = std::fs::File::create(h.dir.join(format!("release-{}.log", h.name))).unwrap();
        let child = release(&bin, h)
            .arg("start")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        nodes.push(Proc {
            child,
            what: format!("cache@{}", h.name),
        });
    }
    for h in [&ha, &hb] {
        assert!(
            wait_for(Duration::from_secs(30), || rpc(&bin, h, "IO.puts(node())")
                .1
                .contains(&format!("cache@{}", h.name))),
            "release on {} did not come up: {}\n{}",
            h.name,
            std::fs::read_to_string(h.dir.join(format!("release-{}.log", h.name))).unwrap_or_default(),
            h.log()
        );
    }
    // Clustering between the hosts, through erlmesh.
    let (ok, out) = rpc(&bin, &ha, "IO.puts(Node.connect(:\"cache@hostb\"))");
    assert!(ok && out.trim_end().ends_with("true"), "{out}\n{}", ha.log());
    let (ok, out) = rpc(&bin, &hb, "IO.inspect(Node.list())");
    assert!(ok && out.contains(":cache@hosta"), "{out}");
    let (ok, out) = rpc(&bin, &hb, "IO.inspect(:rpc.call(:cache@hosta, :erlang, :node, []))");
    assert!(ok && out.contains(":cache@hosta"), "{out}");
    // eval: a VM of its own, with the same environment script.
    let out = release(&bin, &ha)
        .args(["eval", "IO.puts(:evaluated)"])
        .output()
        .unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("evaluated"));
    // remote: an IEx shell on the running node, through a terminal.
    let mut cmd = release(&bin, &ha);
    let shown = format!("{:?}", cmd.get_program());
    let script_cmd = format!("{} remote", shown.trim_matches('"'));
    cmd = Command::new("timeout");
    cmd.args(["10", "script", "-qec", &script_cmd, "/dev/null"]);
    for (k, v) in release(&bin, &ha).get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("iex(cache@hosta)"), "no remote shell prompt: {text}");
    drop(nodes);
}
