//! Release tooling end to end: a mix release (Debian's elixir) whose
//! `rel/env.sh.eex` is deploy/erlang/mix/env.sh.eex, and a rebar3 release
//! (Debian's rebar3) whose `config/vm.args.src` is
//! deploy/erlang/rebar3/vm.args.src; projects with no dependencies build
//! offline. Each is started with its own scripts on two hosts wired by
//! `erlmesh env`; `rpc`, `eval`, the remote console and clustering between
//! the two hosts all go through erlmesh.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs a build tool `args` in `cwd` with `envs`, asserting success.
fn build_step(args: &[&str], cwd: &Path, envs: &[(&str, &Path)]) {
    let mut c = Command::new(args[0]);
    c.args(&args[1..]).current_dir(cwd);
    for (k, v) in envs {
        c.env(k, v);
    }
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e} (scripts/test.sh installs it)"));
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds the release once in `dir`; returns its bin/cache script.
fn build_mix_release(dir: &Path) -> PathBuf {
    let mix_home = dir.join("mix-home");
    let envs = [
        ("MIX_HOME", mix_home.as_path()),
        ("HEX_OFFLINE", Path::new("1")),
        ("MIX_ENV", Path::new("prod")),
    ];
    let run = |args: &[&str], cwd: &Path| build_step(args, cwd, &envs);
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
    let mut c = release(bin, host);
    c.args(["rpc", expr]);
    output(c)
}

/// Runs `c`: (success, stdout and stderr).
fn output(mut c: Command) -> (bool, String) {
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Starts a release on each host with `command` (its script's start
/// command), output in `LOG-HOST.log`; killed when dropped.
fn start_on(hosts: [&Host; 2], log: &str, name: &str, mut command: impl FnMut(&Host) -> Command) -> Vec<Proc> {
    hosts
        .iter()
        .map(|h| {
            let f = std::fs::File::create(h.dir.join(format!("{log}-{}.log", h.name))).unwrap();
            let child = command(h)
                .stdin(Stdio::null())
                .stdout(f.try_clone().unwrap())
                .stderr(f)
                .spawn()
                .unwrap();
            Proc {
                child,
                what: format!("{name}@{}", h.name),
            }
        })
        .collect()
}

#[test]
fn a_mix_release_on_two_hosts_clusters_and_answers_rpc_eval_and_remote() {
    let c = Cluster::new();
    let bin = build_mix_release(c.path());
    let (ha, hb) = c.pair("", "");
    let nodes = start_on([&ha, &hb], "release", "cache", |h| {
        let mut c = release(&bin, h);
        c.arg("start");
        c
    });
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

/// Builds a rebar3 release in `dir`; returns its bin/cachex script.
fn build_rebar3_release(dir: &Path) -> PathBuf {
    let run = |args: &[&str], cwd: &Path| build_step(args, cwd, &[("HOME", dir)]);
    run(&["rebar3", "new", "release", "cachex"], dir);
    let project = dir.join("cachex");
    std::fs::remove_file(project.join("config/vm.args")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/erlang/rebar3/vm.args.src"),
        project.join("config/vm.args.src"),
    )
    .unwrap();
    // rebar.config names the file: the .src form has its ${VARS} replaced
    // from the environment at start.
    let cfg = std::fs::read_to_string(project.join("rebar.config")).unwrap().replace(
        "{vm_args, \"./config/vm.args\"}",
        "{vm_args_src, \"./config/vm.args.src\"}",
    );
    std::fs::write(project.join("rebar.config"), cfg).unwrap();
    run(&["rebar3", "release"], &project);
    project.join("_build/default/rel/cachex/bin/cachex")
}

/// The relx script for `host`, with the environment `erlmesh env` gives
/// its nodes (as a systemd drop-in or a wrapper would set it). relx's
/// ping, eval and rpc use erl_call, a C program that resolves the node's
/// host through the system resolver, not ERL_INETRC: on a real host that
/// is the machine's own name; here each command gets a mount namespace of
/// its own whose /etc/hosts names the simulated hosts on loopback.
fn relx(bin: &Path, host: &Host) -> Command {
    let hosts = host.dir.join("relx-etc-hosts");
    if !hosts.exists() {
        std::fs::write(&hosts, "127.0.0.1 localhost hosta hostb\n").unwrap();
    }
    let mut c = Command::new("unshare");
    c.args(["--mount", "sh", "-c"])
        .arg(format!(
            "mount --bind {} /etc/hosts && exec \"$0\" \"$@\"",
            hosts.display()
        ))
        .arg(bin);
    for (k, v) in host.env() {
        c.env(k, v);
    }
    c.env("NODE_NAME", format!("cachex@{}", host.name))
        .env("COOKIE", "erlmesh-test")
        .env("RELX_OUT_FILE_PATH", host.dir.join(format!("relx-{}", host.name)));
    std::fs::create_dir_all(host.dir.join(format!("relx-{}", host.name))).unwrap();
    c
}

#[test]
fn a_rebar3_release_on_two_hosts_clusters_and_answers_rpc_eval_and_remote_console() {
    let c = Cluster::new();
    let bin = build_rebar3_release(c.path());
    let (ha, hb) = c.pair("", "");
    let nodes = start_on([&ha, &hb], "relx", "cachex", |h| {
        let mut c = relx(&bin, h);
        c.arg("foreground");
        c
    });
    for h in [&ha, &hb] {
        assert!(
            wait_for(Duration::from_secs(30), || {
                // relx's script rewrites vm.args in RELX_OUT_FILE_PATH at
                // every command: the pings write theirs elsewhere, so that
                // the starting release never reads one half written.
                let mut p = relx(&bin, h);
                let out = h.dir.join(format!("relx-{}-ping", h.name));
                std::fs::create_dir_all(&out).unwrap();
                p.env("RELX_OUT_FILE_PATH", out).arg("ping");
                output(p).1.contains("pong")
            }),
            "release on {} did not come up: {}",
            h.name,
            std::fs::read_to_string(h.dir.join(format!("relx-{}.log", h.name))).unwrap_or_default()
        );
    }
    let mut e = relx(&bin, &ha);
    e.args(["eval", "net_kernel:connect_node(cachex@hostb)."]);
    let (ok, out) = output(e);
    assert!(ok && out.contains("true"), "{out}\n{}", ha.log());
    let mut r = relx(&bin, &hb);
    r.args(["rpc", "erlang", "nodes"]);
    let (ok, out) = output(r);
    assert!(ok && out.contains("cachex@hosta"), "{out}");
    // The remote console: a dynamic name under the release's host part.
    let mut cmd = Command::new("timeout");
    let hosts = ha.dir.join("relx-etc-hosts");
    cmd.args([
        "10",
        "unshare",
        "--mount",
        "sh",
        "-c",
        &format!(
            "mount --bind {} /etc/hosts && exec script -qec '{} remote_console' /dev/null",
            hosts.display(),
            bin.display()
        ),
    ]);
    for (k, v) in relx(&bin, &ha).get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("(cachex@hosta)"),
        "no remote console prompt: {text}\n{}",
        ha.log()
    );
    drop(nodes);
}
