//! Clusters of more than two hosts: global's transitive connects through
//! erlmesh, and a mnesia table replicated on three hosts.

mod common;
use common::*;
use std::time::Duration;

/// `names` hosts, each listing every other as a peer, all started.
fn full_mesh(c: &Cluster, names: &[&str]) -> Vec<Host> {
    let mut hs: Vec<Host> = names.iter().map(|n| c.host(n)).collect();
    for i in 0..hs.len() {
        for j in 0..hs.len() {
            if i != j {
                let addr = format!("{}:{}", hs[j].listen_ip, hs[j].listen_port);
                let name = hs[j].name.clone();
                hs[i].peers.push((name, addr));
            }
        }
    }
    for h in hs.iter_mut() {
        h.start();
    }
    hs
}

#[test]
fn three_hosts_transitive_connect_and_a_replicated_mnesia_cache() {
    let c = Cluster::new();
    let hs = full_mesh(&c, &["hosta", "hostb", "hostc"]);
    let mut a = hs[0].node("a");
    let mut b = hs[1].node("b");
    let mut cn = hs[2].node("c");
    // c meets b, a meets b: global connects a and c by itself.
    assert_eq!(cn.eval("net_adm:ping(b@hostb)."), "pong");
    assert_eq!(a.eval("net_adm:ping(b@hostb)."), "pong");
    assert_eq!(
        a.eval_until("lists:sort(nodes()).", "[b@hostb,c@hostc]", Duration::from_secs(15)),
        "[b@hostb,c@hostc]"
    );
    assert_eq!(
        cn.eval_until("lists:sort(nodes()).", "[a@hosta,b@hostb]", Duration::from_secs(15)),
        "[a@hosta,b@hostb]"
    );

    // A mnesia cache (RAM schema) replicated on the three nodes.
    let all = "[a@hosta, b@hostb, c@hostc]";
    assert_eq!(a.eval("mnesia:start()."), "ok");
    for n in [&mut b, &mut cn] {
        assert_eq!(n.eval("mnesia:start()."), "ok");
        assert_eq!(
            n.eval("{ok, Ns} = mnesia:change_config(extra_db_nodes, [a@hosta]), lists:member(a@hosta, Ns)."),
            "true"
        );
    }
    assert_eq!(
        a.eval(&format!(
            "mnesia:create_table(cache, [{{ram_copies, {all}}}, {{attributes, [key, value]}}])."
        )),
        "{atomic,ok}"
    );
    for n in [&mut a, &mut b, &mut cn] {
        assert_eq!(n.eval("mnesia:wait_for_tables([cache], 20000)."), "ok");
    }
    assert_eq!(
        a.eval("mnesia:transaction(fun() -> mnesia:write({cache, k1, <<\"from a\">>}) end)."),
        "{atomic,ok}"
    );
    // A transaction returns once every replica has voted; the commit is
    // applied on the others a moment later, so reads elsewhere may retry.
    let soon = Duration::from_secs(5);
    let written = "[{cache,k1,<<\"from a\">>}]";
    assert_eq!(cn.eval_until("mnesia:dirty_read(cache, k1).", written, soon), written);
    assert_eq!(
        b.eval("mnesia:transaction(fun() -> mnesia:delete({cache, k1}) end)."),
        "{atomic,ok}"
    );
    assert_eq!(a.eval_until("mnesia:dirty_read(cache, k1).", "[]", soon), "[]");
    assert_eq!(cn.eval_until("mnesia:dirty_read(cache, k1).", "[]", soon), "[]");
}
