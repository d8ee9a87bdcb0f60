//! Traffic that must survive an upgrade: a checked stream, an rpc meter,
//! nodedown watchers; and reading `erlmesh upgrade`'s answer.

use super::*;

/// The new process's pid and the pause, from `erlmesh upgrade`'s output
/// ("... to process PID; tunnels paused N ms").
pub fn parse_upgrade(out: &str) -> (u32, u64) {
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
pub fn tunnels(h: &Host) -> Vec<String> {
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
pub fn watch_nodedowns(n: &mut Node) {
    n.eval("register(watch, spawn(fun() -> net_kernel:monitor_nodes(true), W = fun L(D) -> receive {nodedown, X} -> L([X | D]); {downs, F} -> F ! {downs, D}, L(D); _ -> L(D) end end, W([]) end)).");
}

/// The nodedowns node `n` saw of `of` (probe nodes come and go).
pub fn nodedowns(n: &mut Node, of: &str) -> String {
    n.eval(&format!(
        "watch ! {{downs, self()}}, receive {{downs, D}} -> [X || X <- D, X =:= '{of}'] end."
    ))
}

/// A checked stream from `a` to `b`: numbered 1 KiB messages, each one's
/// payload derived from its number; b's sink counts what arrives out of
/// order or corrupted. And an rpc meter on `a`: the longest round trip.
pub fn start_traffic(a: &mut Node, b: &mut Node, b_name: &str) {
    start_traffic_sized(a, b, b_name, 256)
}

/// [`start_traffic`] with messages of `copies` x 4 bytes (256: 1 KiB;
/// 65536: 256 KiB, which the distribution sends in fragments).
pub fn start_traffic_sized(a: &mut Node, b: &mut Node, b_name: &str, copies: u32) {
    b.eval(&format!("register(sink, spawn(fun() -> S = fun L(E, Bad) -> receive {{seq, N, P}} -> Ok = N =:= E andalso P =:= binary:copy(<<N:32>>, {copies}), L(N + 1, case Ok of true -> Bad; false -> Bad + 1 end); {{report, F}} -> F ! {{sink, E, Bad}}, L(E, Bad) end end, S(0, 0) end))."));
    a.eval(&format!("register(src, spawn(fun() -> S = fun L(N) -> receive {{stop, F}} -> F ! {{sent, N}} after 0 -> {{sink, '{b_name}'}} ! {{seq, N, binary:copy(<<N:32>>, {copies})}}, case N rem 20 of 0 -> timer:sleep(2); _ -> ok end, L(N + 1) end end, S(0) end))."));
    a.eval(&format!("register(meter, spawn(fun() -> M = fun L(Max, Bad) -> receive {{max, F}} -> F ! {{max, Max, Bad}}, L(Max, Bad) after 5 -> T = erlang:monotonic_time(millisecond), R = rpc:call('{b_name}', erlang, node, [], 5000), D = erlang:monotonic_time(millisecond) - T, L(max(Max, D), case R of '{b_name}' -> Bad; _ -> Bad + 1 end) end end, M(0, 0) end))."));
}

/// Stops the stream and checks it: (sent, received in order, corrupted or
/// out of order, longest rpc round trip in ms, failed rpcs).
pub fn stop_traffic(a: &mut Node, b_name: &str) -> (u64, u64, u64, u64, u64) {
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

/// The bytes `h` has carried to `peer` (its metrics' counter).
pub fn bytes_out(h: &Host, peer: &str) -> u64 {
    let sock = h.dir.join(format!("state-{}", h.name)).join("erlmesh.sock");
    let m = erlmesh::ops::control::request(&sock, "/metrics").unwrap_or_default();
    m.lines()
        .find(|l| l.starts_with(&format!("erlmesh_bytes_total{{peer=\"{peer}\",direction=\"Out\"}}")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}
