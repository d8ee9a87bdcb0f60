//! `erlmesh upgrade`: the running erlmesh hands its listeners, open tunnels
//! (sockets and TLS record state), local nodes' EPMD registrations and
//! learnt hosts to the binary installed at its path, and exits; nodes on
//! both sides see no nodedown, and a checked stream and rpc traffic go on
//! through it. When the installed binary cannot take over, the old process
//! serves on as before and the command says why.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Installs erlmesh at `to` as a package would: a new file renamed over
/// the old one (the running process keeps the old inode).
fn install_binary(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// Installs a shell script at `to` in place of the binary.
fn install_script(to: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = to.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// A host running its own copy of erlmesh (so that it can be replaced).
fn host_with_own_binary(c: &Cluster, name: &str) -> Host {
    let mut h = c.host(name);
    let exe = c.path().join(format!("bin-{name}/erlmesh"));
    std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
    install_binary(Path::new(ERLMESH), &exe);
    h.exe = Some(exe);
    h
}

/// Runs `erlmesh upgrade` for `h`: (exit status ok, stdout + stderr).
fn upgrade(h: &Host) -> (bool, String) {
    let out = std::process::Command::new(ERLMESH)
        .args(["upgrade", "--config", h.config_path().to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The new process's pid and the pause, from `erlmesh upgrade`'s output
/// ("... to process PID; tunnels paused N ms").
fn parse_upgrade(out: &str) -> (u32, u64) {
    let pid = out
        .split("to process ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no new pid in {out:?}"));
    let pause = out
        .split("tunnels paused ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pause in {out:?}"));
    (pid, pause)
}

/// The tunnel lines of `erlmesh status` (local node, remote node, direction).
fn tunnels(h: &Host) -> Vec<String> {
    let s = h.status().unwrap_or_default();
    let mut v: Vec<String> = s
        .split("tunnels (local node, remote node, direction, open):")
        .nth(1)
        .unwrap_or("")
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    v
}

/// Starts, on node `n`, a process that records every nodedown it sees.
fn watch_nodedowns(n: &mut Node) {
    n.eval("register(watch, spawn(fun() -> net_kernel:monitor_nodes(true), W = fun L(D) -> receive {nodedown, X} -> L([X | D]); {downs, F} -> F ! {downs, D}, L(D); _ -> L(D) end end, W([]) end)).");
}

/// The nodedowns node `n` saw of `of` (probe nodes come and go).
fn nodedowns(n: &mut Node, of: &str) -> String {
    n.eval(&format!(
        "watch ! {{downs, self()}}, receive {{downs, D}} -> [X || X <- D, X =:= '{of}'] end."
    ))
}

/// A checked stream from `a` to `b`: numbered 1 KiB messages, each one's
/// payload derived from its number; b's sink counts what arrives out of
/// order or corrupted. And an rpc meter on `a`: the longest round trip.
fn start_traffic(a: &mut Node, b: &mut Node, b_name: &str) {
    b.eval("register(sink, spawn(fun() -> S = fun L(E, Bad) -> receive {seq, N, P} -> Ok = N =:= E andalso P =:= binary:copy(<<N:32>>, 256), L(N + 1, case Ok of true -> Bad; false -> Bad + 1 end); {report, F} -> F ! {sink, E, Bad}, L(E, Bad) end end, S(0, 0) end)).");
    a.eval(&format!("register(src, spawn(fun() -> S = fun L(N) -> receive {{stop, F}} -> F ! {{sent, N}} after 0 -> {{sink, '{b_name}'}} ! {{seq, N, binary:copy(<<N:32>>, 256)}}, case N rem 20 of 0 -> timer:sleep(2); _ -> ok end, L(N + 1) end end, S(0) end))."));
    a.eval(&format!("register(meter, spawn(fun() -> M = fun L(Max, Bad) -> receive {{max, F}} -> F ! {{max, Max, Bad}}, L(Max, Bad) after 5 -> T = erlang:monotonic_time(millisecond), R = rpc:call('{b_name}', erlang, node, [], 5000), D = erlang:monotonic_time(millisecond) - T, L(max(Max, D), case R of '{b_name}' -> Bad; _ -> Bad + 1 end) end end, M(0, 0) end))."));
}

/// Stops the stream and checks it: (sent, received in order, corrupted or
/// out of order, longest rpc round trip in ms, failed rpcs).
fn stop_traffic(a: &mut Node, b_name: &str) -> (u64, u64, u64, u64, u64) {
    let sent: u64 = a
        .eval("src ! {stop, self()}, receive {sent, N} -> N end.")
        .parse()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let sink = a.eval(&format!(
        "{{sink, '{b_name}'}} ! {{report, self()}}, receive {{sink, E, Bad}} -> {{E, Bad}} after 10000 -> timeout end."
    ));
    let (got, bad) = sink
        .trim_matches(|c| c == '{' || c == '}')
        .split_once(',')
        .map(|(x, y)| (x.parse().unwrap(), y.parse().unwrap()))
        .unwrap_or_else(|| panic!("sink: {sink}"));
    let meter = a.eval("meter ! {max, self()}, receive {max, M, B} -> {M, B} end.");
    let (max, failed) = meter
        .trim_matches(|c| c == '{' || c == '}')
        .split_once(',')
        .map(|(x, y)| (x.parse().unwrap(), y.parse().unwrap()))
        .unwrap();
    (sent, got, bad, max, failed)
}

#[test]
fn ten_upgrades_under_traffic_with_no_nodedown() {
    let c = Cluster::new();
    let mut ha = host_with_own_binary(&c, "hosta");
    let mut hb = host_with_own_binary(&c, "hostb");
    ha.peer(&hb);
    hb.peer(&ha);
    // KeyUpdates every 16 records: many fall during the hand-overs.
    ha.tls_extra = "records_per_key = 16".into();
    hb.tls_extra = "records_per_key = 16".into();
    ha.start();
    hb.start();
    let mut a = ha.node("a");
    let mut b = hb.node("b");
    assert_eq!(a.eval("net_adm:ping(b@hostb)."), "pong");
    watch_nodedowns(&mut a);
    watch_nodedowns(&mut b);
    start_traffic(&mut a, &mut b, "b@hostb");
    std::thread::sleep(Duration::from_millis(300));
    let before = (tunnels(&ha), tunnels(&hb));
    let mut pauses = Vec::new();
    for i in 0..10 {
        let h = if i % 2 == 0 { &mut ha } else { &mut hb };
        let exe = h.exe.clone().unwrap();
        install_binary(Path::new(ERLMESH), &exe);
        let t = Instant::now();
        let (ok, out) = upgrade(h);
        assert!(ok, "upgrade {i} of {} failed: {out}\n{}", h.name, h.log());
        let (pid, pause) = parse_upgrade(&out);
        h.successors.push(PidGuard(pid));
        pauses.push(pause);
        assert!(out.contains("1 tunnel(s)") || out.contains("2 tunnel(s)"), "{out}");
        // The old process exits; the new one answers on the control socket.
        assert!(
            wait_for(Duration::from_secs(10), || h
                .status()
                .is_some_and(|s| s.contains("state: ready"))
                && std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok()),
            "no new erlmesh after upgrade {i}:\n{}",
            h.log()
        );
        assert_eq!(
            (tunnels(&ha), tunnels(&hb)),
            before,
            "tunnels changed across upgrade {i}"
        );
        // A new tunnel opens through the new process.
        let mut p = hb.node(&format!("p{i}"));
        assert_eq!(p.eval("net_adm:ping(a@hosta)."), "pong", "upgrade {i}: {}", ha.log());
        drop(p);
        eprintln!(
            "upgrade {i}: {} ms in all, tunnels paused {pause} ms",
            t.elapsed().as_millis()
        );
    }
    let (sent, got, bad, max_rtt, failed) = stop_traffic(&mut a, "b@hostb");
    assert_eq!(nodedowns(&mut a, "b@hostb"), "[]", "a saw a nodedown");
    assert_eq!(nodedowns(&mut b, "a@hosta"), "[]", "b saw a nodedown");
    assert_eq!(bad, 0, "messages corrupted or out of order");
    assert_eq!(got, sent, "messages lost or duplicated");
    assert_eq!(failed, 0, "rpc calls failed");
    assert!(sent > 10_000, "only {sent} messages streamed");
    let longest = pauses.iter().max().unwrap();
    eprintln!("ten upgrades: {sent} messages, longest rpc round trip {max_rtt} ms, pauses {pauses:?} ms");
    assert!(max_rtt < 1000, "an rpc took {max_rtt} ms across the upgrades");
    assert!(*longest < 1000, "tunnels paused {longest} ms");
}

#[test]
fn an_installed_binary_that_cannot_take_over_leaves_the_old_process_serving() {
    let c = Cluster::new();
    let mut ha = host_with_own_binary(&c, "hosta");
    let mut hb = c.host("hostb");
    ha.peer(&hb);
    hb.peer(&ha);
    ha.start();
    hb.start();
    let mut a = ha.node("a");
    let mut b = hb.node("b");
    assert_eq!(a.eval("net_adm:ping(b@hostb)."), "pong");
    watch_nodedowns(&mut a);
    watch_nodedowns(&mut b);
    start_traffic(&mut a, &mut b, "b@hostb");
    let before = tunnels(&ha);
    let exe = ha.exe.clone().unwrap();
    let real: PathBuf = c.path().join("real-erlmesh");
    install_binary(Path::new(ERLMESH), &real);
    let cases = [
        ("#!/bin/sh\nexit 3\n", "exited before taking over"),
        ("#!/bin/sh\nexec sleep 600\n", "did not connect within"),
        (
            &*format!(
                "#!/bin/sh\nERLMESH_TEST_STATE_VERSION=99 exec {} \"$@\"\n",
                real.display()
            ),
            "state format version 1 (this build reads version 99)",
        ),
    ];
    for (script, why) in cases {
        install_script(&exe, script);
        let t = Instant::now();
        let (ok, out) = upgrade(&ha);
        assert!(!ok, "an upgrade to {script:?} succeeded: {out}");
        assert!(out.contains(why), "{script:?}: the reason should say {why:?}: {out}");
        eprintln!("{why}: refused in {} ms", t.elapsed().as_millis());
        // The old process serves on: the same tunnels, traffic flowing, a
        // new tunnel opens.
        assert_eq!(tunnels(&ha), before);
        assert_eq!(a.eval("rpc:call(b@hostb, erlang, node, [])."), "b@hostb");
        let mut p = hb.node("p");
        assert_eq!(p.eval("net_adm:ping(a@hosta)."), "pong");
        drop(p);
    }
    let (sent, got, bad, _, failed) = stop_traffic(&mut a, "b@hostb");
    assert_eq!((got, bad, failed), (sent, 0, 0));
    assert_eq!(nodedowns(&mut a, "b@hostb"), "[]");
    assert_eq!(nodedowns(&mut b, "a@hosta"), "[]");
    assert!(
        ha.proc.as_mut().unwrap().child.try_wait().unwrap().is_none(),
        "the old process exited"
    );
}
