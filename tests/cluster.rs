//! Two simulated hosts on loopback, each with its own erlmesh, joined into
//! one Erlang cluster through mutually authenticated TLS.

mod common;
use common::*;
use std::time::{Duration, Instant};

#[test]
fn ping_rpc_ets_and_names_across_two_hosts() {
    let c = Cluster::new();
    // The default single-threaded runtime is used everywhere else; here
    // both multi-threaded layouts.
    let (ha, hb) = c.pair_named("hosta", "hostb", "threads = 2", "threads = 0");
    let mut a = ha.node("a");
    let mut b = hb.node("b");

    assert_eq!(
        a.eval("net_adm:ping(b@hostb)."),
        "pong",
        "a->b\n{}\n{}",
        ha.log(),
        hb.log()
    );
    assert_eq!(b.eval("net_adm:ping(a@hosta)."), "pong");
    assert_eq!(b.eval("lists:sort(nodes())."), "[a@hosta]");

    // A key written on host A, read on host B, and the reverse.
    assert_eq!(a.eval("ets:new(cache, [named_table, public, set])."), "cache");
    assert_eq!(a.eval("ets:insert(cache, {k1, <<\"written on a\">>})."), "true");
    assert_eq!(
        b.eval("rpc:call(a@hosta, ets, lookup, [cache, k1])."),
        "[{k1,<<\"written on a\">>}]"
    );
    assert_eq!(b.eval("ets:new(cache_b, [named_table, public, set])."), "cache_b");
    assert_eq!(b.eval("ets:insert(cache_b, {k2, 42})."), "true");
    assert_eq!(a.eval("rpc:call(b@hostb, ets, lookup, [cache_b, k2])."), "[{k2,42}]");

    // A larger message crosses intact in both directions.
    assert_eq!(
        a.eval("B = crypto:strong_rand_bytes(3000000), erlang:md5(rpc:call(b@hostb, erlang, iolist_to_binary, [B])) =:= erlang:md5(B)."),
        "true"
    );

    // NAMES for the peer host, answered through its erlmesh: b is listed,
    // at a port on its alias here (not its real port on host B).
    let names = a.eval("{ok, Ns} = net_adm:names(hostb), [N || {N, _} <- Ns].");
    assert_eq!(names, "[\"b\"]");
    let alias_port = a.eval("{ok, [{_, P}]} = net_adm:names(hostb), P.");
    let real_port = b.eval("{ok, Ns} = net_adm:names(), proplists:get_value(\"b\", Ns).");
    assert_ne!(alias_port, real_port, "the real port must not leak to the other host");
    // A second connection resumes the TLS session instead of a full handshake.
    assert_eq!(a.eval("erlang:disconnect_node(b@hostb)."), "true");
    assert_eq!(a.eval("net_adm:ping(b@hostb)."), "pong");
    assert!(ha.log_shows("resumed=true", Duration::from_secs(10)), "{}", ha.log());
    // Tunnels run on erlmesh's own record layer once open (the only path).
    assert!(
        ha.log_shows("tunnel open resumed=true", Duration::from_secs(10)),
        "{}",
        ha.log()
    );
    assert!(hb.log_shows("tunnel open", Duration::from_secs(10)), "{}", hb.log());
    // Local names through the embedded EPMD.
    assert_eq!(a.eval("{ok, Ns} = net_adm:names(), [N || {N, _} <- Ns]."), "[\"a\"]");
}

#[test]
fn local_nodes_reach_each_other_by_host_name() {
    let c = Cluster::new();
    let (ha, _hb) = c.pair_named("hosta", "hostb", "", "");
    let mut a = ha.node("a");
    let mut t = ha.node("t");
    assert_eq!(t.eval("net_adm:ping(a@hosta)."), "pong");
    assert_eq!(t.eval("rpc:call(a@hosta, erlang, node, [])."), "a@hosta");
    assert_eq!(
        a.eval("{ok, Ns} = net_adm:names(), lists:sort([N || {N, _} <- Ns])."),
        "[\"a\",\"t\"]"
    );
}

#[test]
fn restarted_node_is_reached_again() {
    let c = Cluster::new();
    let (ha, hb) = c.pair_named("hosta", "hostb", "", "");
    let mut a = ha.node("a");
    let mut b = hb.node("b");
    assert_eq!(a.eval("net_adm:ping(b@hostb)."), "pong");
    let first_port = b.eval("{ok, Ns} = net_adm:names(), proplists:get_value(\"b\", Ns).");
    let first_pid = a.eval("rpc:call(b@hostb, os, getpid, []).");
    drop(b);

    let mut b2 = hb.node("b");
    let second_port = b2.eval("{ok, Ns} = net_adm:names(), proplists:get_value(\"b\", Ns).");
    assert_ne!(first_port, second_port, "the restarted node listens on a new port");
    assert_eq!(
        a.eval_until("net_adm:ping(b@hostb).", "pong", Duration::from_secs(15)),
        "pong",
        "{}",
        hb.log()
    );
    let second_pid = a.eval("rpc:call(b@hostb, os, getpid, []).");
    assert_ne!(first_pid, second_pid);
    assert_eq!(b2.eval("rpc:call(a@hosta, erlang, node, [])."), "a@hosta");
}

#[test]
fn long_names() {
    let c = Cluster::new();
    let (ha, hb) = c.pair_named("hosta.example.com", "hostb.example.com", "", "");
    let mut a = ha.node("a");
    let mut b = hb.node("b");
    assert_eq!(
        a.eval("net_adm:ping('b@hostb.example.com')."),
        "pong",
        "{}\n{}",
        ha.log(),
        hb.log()
    );
    assert_eq!(
        b.eval("rpc:call('a@hosta.example.com', erlang, node, [])."),
        "'a@hosta.example.com'"
    );
    assert_eq!(
        a.eval("rpc:call('b@hostb.example.com', erlang, node, [])."),
        "'b@hostb.example.com'"
    );
}

#[test]
fn peer_down_gives_prompt_pang_then_the_cluster_forms() {
    let c = Cluster::new();
    let mut ha = c.host("hosta");
    let mut hb = c.host("hostb");
    ha.peer(&hb);
    hb.peer(&ha);
    ha.start();
    let mut a = ha.node("a");

    // Not a timed performance check: "prompt" here means well before the
    // node's own 10 s setup timer would have had to expire.
    let t0 = Instant::now();
    assert_eq!(a.eval("net_adm:ping(b@hostb)."), "pang");
    assert!(t0.elapsed() < Duration::from_secs(8), "pang took {:?}", t0.elapsed());
    let log = ha.log();
    assert!(
        log.contains("peer unreachable") && log.contains(&format!("127.0.0.1:{}", hb.listen_port)),
        "{log}"
    );

    hb.start();
    let mut b = hb.node("b");
    assert_eq!(
        a.eval_until("net_adm:ping(b@hostb).", "pong", Duration::from_secs(10)),
        "pong"
    );
    assert_eq!(b.eval("rpc:call(a@hosta, erlang, node, [])."), "a@hosta");
}
