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

#[test]
fn hosts_that_know_only_a_seed_join_the_mesh_and_departures_are_dropped() {
    let c = Cluster::new();
    let mut hb = c.host("hostb");
    let mut hc = c.host("hostc");
    let mut ha = c.host("hosta");
    let mut hd = c.host("hostd");
    hb.peer(&hc);
    hc.peer(&hb);
    // A knows only B's address, D only C's; neither knows a host name.
    ha.seeds = vec![format!("127.0.0.1:{}", hb.listen_port)];
    ha.extra = "forget_after_secs = 2".into();
    hd.seeds = vec![format!("127.0.0.1:{}", hc.listen_port)];
    hb.start();
    hc.start();
    ha.start();
    hd.start();
    let hosts_a = std::fs::read_to_string(c.path().join("state-hosta/hosts")).unwrap();
    for h in ["hostb", "hostc", "hostd"] {
        assert!(
            hosts_a.contains(h),
            "A learnt {h} before it was ready:\n{hosts_a}\n{}",
            ha.log()
        );
    }
    let hosts_d = std::fs::read_to_string(c.path().join("state-hostd/hosts")).unwrap();
    for h in ["hosta", "hostb", "hostc"] {
        assert!(hosts_d.contains(h), "D learnt {h}:\n{hosts_d}\n{}", hd.log());
    }
    // B and C learnt A and D from their announcements (verified by dialling back).
    let hosts_b = std::fs::read_to_string(c.path().join("state-hostb/hosts")).unwrap();
    assert!(hosts_b.contains("hosta") && hosts_b.contains("hostd"), "{hosts_b}");

    let mut a = ha.node("a");
    let _b = hb.node("b");
    let _c = hc.node("c");
    let mut d = hd.node("d");
    assert_eq!(d.eval("net_adm:ping(c@hostc)."), "pong");
    assert_eq!(a.eval("net_adm:ping(b@hostb)."), "pong");
    assert_eq!(d.eval("net_adm:ping(a@hosta)."), "pong", "{}", hd.log());
    let all = "[a@hosta,b@hostb,c@hostc]";
    assert_eq!(d.eval_until("lists:sort(nodes()).", all, Duration::from_secs(20)), all);
    let all = "[b@hostb,c@hostc,d@hostd]";
    assert_eq!(a.eval_until("lists:sort(nodes()).", all, Duration::from_secs(20)), all);

    let status = run_ok(&["status", "--config", ha.config_path().to_str().unwrap()]);
    assert!(status.contains("hostd") && status.contains("hostc"), "{status}");

    // D leaves for good: A drops it after forget_after_secs, keeps its alias.
    let alias_d = std::fs::read_to_string(c.path().join("state-hosta/aliases")).unwrap();
    drop(d);
    hd.kill();
    assert!(
        wait_for(Duration::from_secs(20), || !std::fs::read_to_string(
            c.path().join("state-hosta/hosts")
        )
        .unwrap()
        .contains("hostd")),
        "{}",
        ha.log()
    );
    assert!(ha.log_shows("peer unreachable for too long; dropped", Duration::from_secs(10)));
    let aliases_now = std::fs::read_to_string(c.path().join("state-hosta/aliases")).unwrap();
    let line = |t: &str| t.lines().find(|l| l.starts_with("hostd ")).map(str::to_owned);
    assert_eq!(line(&aliases_now), line(&alias_d), "hostd's alias stays reserved");
    assert!(line(&aliases_now).is_some());
}

#[test]
fn sixteen_hosts_through_one_seed_form_one_cluster() {
    require_erl();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/scale.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .arg("16")
        .env("ERLMESH", ERLMESH)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    println!("{text}");
    assert!(out.status.success(), "{text}");
    assert!(text.contains("all 16 nodes see every other node"), "{text}");
    assert!(text.contains("SCALE n=16 ok"), "{text}");
}
