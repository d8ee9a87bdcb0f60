//! Three real hosts in network namespaces on one bridge (198.18.0.0/15),
//! an erlmesh and a node on each: they form one cluster; each host exposes
//! only its TLS port; a capture of every bridge port shows nothing in the
//! clear (on the bridge device itself only flooded frames would be seen).
//! Needs root; reports itself skipped, visibly, otherwise.

mod common;
use common::netns::*;
use common::*;

use std::time::Duration;

/// Writes each namespace's /etc/hosts (what `ip netns exec` shows it):
/// `name` resolves to every address in `to`, as a headless Service's name
/// does. Written in place, so that running processes see the change.
fn resolve_everywhere(guard: &Netns, name: &str, to: &[&String]) {
    let mut text = String::from("127.0.0.1 localhost\n");
    for a in to {
        text.push_str(&format!("{a} {name}\n"));
    }
    for ns in &guard.names[1..] {
        std::fs::create_dir_all(format!("/etc/netns/{ns}")).unwrap();
        std::fs::write(format!("/etc/netns/{ns}/hosts"), &text).unwrap();
    }
}

fn learnt(c: &Cluster, host: &str, other: &str) -> bool {
    std::fs::read_to_string(c.path().join(format!("state-{host}/hosts")))
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(other))
}

#[test]
fn a_headless_service_seed_joins_every_address_and_hosts_come_and_go() {
    if !is_root() {
        eprintln!("SKIPPED a_headless_service_seed_joins_every_address_and_hosts_come_and_go: needs root for ip netns");
        println!("SKIPPED: not root");
        return;
    }
    require_erl();
    let tag = format!("es{}", std::process::id() % 100_000);
    let net = 1 + ((std::process::id() + 125) % 250);
    let names = ["hosta", "hostb", "hostc", "hostd"];
    let (guard, addrs) = lan(&tag, net, &names);
    // The Service lists the three running hosts.
    resolve_everywhere(&guard, "erlmesh-svc", &addrs[..3].iter().collect::<Vec<_>>());
    let c = Cluster::new();
    let mut hs: Vec<Host> = names
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let mut host = c.host(h);
            host.netns = Some(format!("{tag}-{h}"));
            host.listen_ip = addrs[i].clone();
            host.listen_port = 4370;
            host.epmd_port = 4369;
            host.seeds = vec!["erlmesh-svc:4370".into()];
            host.extra = "forget_after_secs = 3".into();
            host
        })
        .collect();
    for h in hs.iter_mut().take(3) {
        h.start();
    }
    let (a, b, cc) = (&names[0], &names[1], &names[2]);
    for (x, y) in [(a, b), (a, cc), (b, a), (b, cc), (cc, a), (cc, b)] {
        assert!(
            wait_for(Duration::from_secs(20), || learnt(&c, x, y)),
            "{x} did not learn {y}:\n{}",
            hs[0].log()
        );
    }
    // A fourth pod: the Service now lists it too; nobody's config changes.
    resolve_everywhere(&guard, "erlmesh-svc", &addrs.iter().collect::<Vec<_>>());
    hs[3].start();
    for x in [a, b, cc] {
        assert!(
            wait_for(Duration::from_secs(20), || learnt(&c, x, "hostd")),
            "{x} did not learn hostd"
        );
    }
    let mut na = hs[0].node("a");
    let mut nd = hs[3].node("d");
    assert_eq!(nd.eval("net_adm:ping(a@hosta)."), "pong", "{}", hs[3].log());
    assert_eq!(na.eval("rpc:call(d@hostd, erlang, node, [])."), "d@hostd");
    // It leaves: gone from the Service, its erlmesh stopped; the others
    // drop it after forget_after_secs.
    drop(nd);
    resolve_everywhere(&guard, "erlmesh-svc", &addrs[..3].iter().collect::<Vec<_>>());
    hs[3].kill();
    for x in [a, b, cc] {
        assert!(
            wait_for(Duration::from_secs(30), || !learnt(&c, x, "hostd")),
            "{x} kept hostd"
        );
    }
    drop(na);
    drop(hs);
    drop(guard);
}

#[test]
fn three_hosts_in_namespaces_expose_only_tls_and_leak_nothing() {
    if !is_root() {
        eprintln!("SKIPPED three_hosts_in_namespaces_expose_only_tls_and_leak_nothing: needs root for ip netns");
        println!("SKIPPED: not root");
        return;
    }
    require_erl();
    let tag = format!("em{}", std::process::id() % 100_000);
    // A third octet of our own, so parallel runs do not share a subnet.
    let net = 1 + (std::process::id() % 250);
    let hosts = ["hosta", "hostb", "hostc"];
    let (guard, addrs) = lan(&tag, net, &hosts);
    let sw = guard.names[0].clone();

    let c = Cluster::new();
    // Nothing starts before the capture does.
    let (mut tcpdump, pcap) = capture(&c, &sw, "bridge");
    let started = || std::fs::read_to_string(c.path().join("bridge.err")).unwrap_or_default();

    let mut hs: Vec<Host> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let mut host = c.host(h);
            host.netns = Some(format!("{tag}-{h}"));
            host.listen_ip = addrs[i].clone();
            host.listen_port = 4370;
            host.epmd_port = 4369; // each namespace has its own 4369
            host
        })
        .collect();
    mesh(&mut hs);
    for h in hs.iter_mut() {
        h.start();
    }
    let mut a = hs[0].node("a");
    let mut b = hs[1].node("b");
    let mut cn = hs[2].node("c");
    std::thread::sleep(Duration::from_millis(300));

    // c meets a and b; global's transitive connect joins a and b too.
    assert_eq!(cn.eval("net_adm:ping(a@hosta)."), "pong", "{}", hs[2].log());
    assert_eq!(cn.eval("net_adm:ping(b@hostb)."), "pong");
    assert_eq!(
        a.eval_until("lists:sort(nodes()).", "[b@hostb,c@hostc]", Duration::from_secs(15)),
        "[b@hostb,c@hostc]"
    );
    assert_eq!(
        a.eval("ets:new(cache, [named_table, public]), ets:insert(cache, {k, <<\"SECRET-PAYLOAD-4711\">>})."),
        "true"
    );
    assert_eq!(
        b.eval("rpc:call(a@hosta, ets, lookup, [cache, k])."),
        "[{k,<<\"SECRET-PAYLOAD-4711\">>}]"
    );
    assert_eq!(
        cn.eval("rpc:call(a@hosta, ets, lookup, [cache, k])."),
        "[{k,<<\"SECRET-PAYLOAD-4711\">>}]"
    );
    assert_eq!(
        b.eval("{ok, Ns} = net_adm:names(hostc), [N || {N, _} <- Ns]."),
        "[\"c\"]"
    );

    // Each host listens beyond loopback on its TLS port only.
    for h in &hs {
        let out = h.command("ss").args(["-H", "-ltn"]).output().expect("ss from iproute2");
        let text = String::from_utf8_lossy(&out.stdout);
        let exposed: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3))
            .filter(|a| !a.starts_with("127.") && !a.starts_with("[::1]"))
            .collect();
        assert_eq!(exposed, vec![format!("{}:4370", h.listen_ip)], "{}: {text}", h.name);
    }

    // What crossed the bridge: TLS, and nothing readable.
    std::thread::sleep(Duration::from_millis(500));
    tcpdump.signal(15); // lets it flush and close the file
    tcpdump.wait_timeout(Duration::from_secs(5));
    drop(tcpdump);
    let cap = std::fs::read(&pcap).unwrap();
    assert!(
        cap.len() > 10_000,
        "capture too small ({} bytes): was traffic seen? tcpdump: {}",
        cap.len(),
        started()
    );
    let hay = String::from_utf8_lossy(&cap).to_string();
    for secret in [
        "SECRET-PAYLOAD-4711",
        "a@hosta",
        "b@hostb",
        "c@hostc",
        "erlmesh-test",
        "name a at port",
        "EMSH",
    ] {
        assert!(!hay.contains(secret), "{secret:?} crossed the network in the clear");
    }
    // A positive control: the capture does hold the TLS conversation.
    let tls_packets = packets(&pcap, "tcp port 4370").len();
    assert!(
        tls_packets > 100,
        "only {tls_packets} TLS packets captured; tcpdump: {}",
        started()
    );
    // The EPMD port is never reached over the network.
    assert_eq!(packets(&pcap, "tcp port 4369").len(), 0);
    assert_eq!(
        packets(&pcap, "tcp and not port 4370").join("\n"),
        "",
        "only TLS-port traffic expected"
    );
    drop((a, b, cn));
    drop(hs);
    drop(guard);
}
