//! Transparent interception, end to end: hosts in network namespaces on a
//! bridge (198.18.0.0/15 and 2001:2::/48), erlmesh running in each as
//! root with `interception = "transparent"`, and nodes started with
//! `env -i` (no ERL_* variable, no erlmesh environment), their own epmd,
//! listening on every interface as they do by default. Needs root;
//! reports itself skipped, visibly, otherwise.

mod common;
use common::netns::*;
use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

const TRANSPARENT: &str = "interception = \"transparent\"";

/// Whether a TCP connection to ADDR:PORT opens from namespace `ns`.
fn connects(ns: &str, addr: &str, port: u16) -> bool {
    let target = format!("/dev/tcp/{addr}/{port}");
    Command::new("ip")
        .args(["netns", "exec", ns, "timeout", "1", "bash", "-c"])
        .arg(format!("exec 3<>{target}"))
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A capture of every frame on the bridge, stopped (and flushed) on drop
/// of the returned process.
fn capture(c: &Cluster, sw: &str) -> (Proc, std::path::PathBuf) {
    let pcap = c.path().join("bridge.pcap");
    let err = c.path().join("tcpdump.err");
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            sw,
            "tcpdump",
            "-i",
            "any",
            "--immediate-mode",
            "-U",
            "-s",
            "0",
            "-w",
        ])
        .arg(&pcap)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("tcpdump");
    let p = Proc {
        child,
        what: "tcpdump".into(),
    };
    let started = || std::fs::read_to_string(&err).unwrap_or_default();
    assert!(
        wait_for(Duration::from_secs(20), || started().contains("listening on")),
        "tcpdump: {}",
        started()
    );
    (p, pcap)
}

/// The packets of a capture that match a tcpdump filter, one per line.
fn packets(pcap: &std::path::Path, filter: &str) -> Vec<String> {
    let out = Command::new("tcpdump")
        .arg("-nr")
        .arg(pcap)
        .arg(filter)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The distribution ports of the nodes on host namespace `ns`, as its
/// epmd lists them (`epmd -names`, with no environment: a tool that just
/// works).
fn node_ports(ns: &str) -> Vec<u16> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "env", "-i", "PATH=/usr/bin:/bin", "epmd", "-names"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

fn transparent_host(c: &Cluster, name: &str, ns: String, addr: &str) -> Host {
    let mut h = c.host(name);
    h.netns = Some(ns);
    h.listen_ip = addr.to_owned();
    h.listen_port = 4370;
    h.epmd_port = 4369;
    h.bare = true;
    h.extra = TRANSPARENT.into();
    h
}

fn mesh_all(hs: &mut [Host]) {
    for i in 0..hs.len() {
        for j in 0..hs.len() {
            if i != j {
                let other = (hs[j].name.clone(), format!("{}:{}", hs[j].listen_ip, hs[j].listen_port));
                hs[i].peers.push(other);
            }
        }
    }
}

fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("SKIPPED {test}: needs root for ip netns and nftables");
    println!("SKIPPED: not root");
    true
}

#[test]
fn nodes_that_know_nothing_of_erlmesh_cluster_through_it_and_nothing_plain_crosses() {
    if skip_unless_root("nodes_that_know_nothing_of_erlmesh_cluster_through_it_and_nothing_plain_crosses") {
        return;
    }
    require_erl();
    let tag = format!("tp{}", std::process::id() % 100_000);
    let net = 1 + ((std::process::id() + 60) % 250);
    let names = ["hosta", "hostb", "hostc", "outsider"];
    let (guard, addrs) = lan(&tag, net, &names);
    let mut lines = Vec::new();
    for (i, h) in names.iter().enumerate() {
        lines.push(format!("{} {h}", addrs[i]));
        lines.push(format!("{} {h}", v6(net, i)));
    }
    hosts_file(&guard, &lines);
    let c = Cluster::new();
    let (mut tcpdump, pcap) = capture(&c, &guard.names[0]);

    let mut hs: Vec<Host> = names[..3]
        .iter()
        .enumerate()
        .map(|(i, h)| transparent_host(&c, h, format!("{tag}-{h}"), &addrs[i]))
        .collect();
    mesh_all(&mut hs);
    for h in hs.iter_mut() {
        h.start();
    }
    let mut a = hs[0].node("a");
    let mut b = hs[1].node("b");
    let mut cn = hs[2].node("c");
    assert_eq!(
        a.eval("os:getenv(\"ERL_INETRC\")."),
        "false",
        "nodes have no erlmesh environment"
    );

    // c meets a and b; global's transitive connect joins a and b too.
    assert_eq!(cn.eval("net_adm:ping(a@hosta)."), "pong", "{}", hs[2].log());
    assert_eq!(cn.eval("net_adm:ping(b@hostb)."), "pong", "{}", hs[2].log());
    assert_eq!(
        a.eval_until("lists:sort(nodes()).", "[b@hostb,c@hostc]", Duration::from_secs(15)),
        "[b@hostb,c@hostc]"
    );
    // A value written on one host is read on another, both ways.
    assert_eq!(
        a.eval("ets:new(cache, [named_table, public]), ets:insert(cache, {k, <<\"SECRET-PAYLOAD-4711\">>})."),
        "true"
    );
    assert_eq!(
        b.eval("rpc:call(a@hosta, ets, lookup, [cache, k])."),
        "[{k,<<\"SECRET-PAYLOAD-4711\">>}]"
    );
    assert_eq!(
        b.eval("ets:new(cache, [named_table, public]), ets:insert(cache, {k, <<\"SECRET-REPLY-0815\">>})."),
        "true"
    );
    assert_eq!(
        a.eval("rpc:call(b@hostb, ets, lookup, [cache, k])."),
        "[{k,<<\"SECRET-REPLY-0815\">>}]"
    );
    assert_eq!(
        a.eval("{ok, Ns} = net_adm:names(hostc), [N || {N, _} <- Ns]."),
        "[\"c\"]"
    );

    // Two nodes on one host reach each other directly: no tunnel.
    let mut a2 = hs[0].node("a2");
    assert_eq!(a2.eval("net_adm:ping(a@hosta)."), "pong");
    let status = hs[0].status().unwrap();
    assert!(!status.contains("a2@hosta"), "a tunnel for a local pair:\n{status}");
    assert!(status.contains("redirected by the kernel: epmd="), "{status}");
    // Traffic to a peer host that is not EPMD or a node's port passes
    // untouched: a plain TCP service on hostb.
    b.eval("{ok, L} = gen_tcp:listen(8080, [binary, {active, false}, {reuseaddr, true}]), spawn(fun() -> {ok, S} = gen_tcp:accept(L), gen_tcp:send(S, <<\"PLAIN-SERVICE\">>), timer:sleep(1000) end), ok.");
    assert_eq!(
        a.eval("{ok, S} = gen_tcp:connect(\"hostb\", 8080, [binary, {active, false}]), gen_tcp:recv(S, 0, 5000)."),
        "{ok,<<\"PLAIN-SERVICE\">>}"
    );

    // From a host outside the cluster, EPMD and every node's port are
    // unreachable, on IPv4 and IPv6; the TLS port is the one open.
    let outsider = format!("{tag}-outsider");
    for (i, h) in hs.iter().enumerate() {
        let ns = h.netns.clone().unwrap();
        let ports = node_ports(&ns);
        assert!(!ports.is_empty(), "{}: epmd -names lists no node", h.name);
        assert!(
            connects(&outsider, &addrs[i], 4370),
            "{}:4370 (TLS) should be open",
            addrs[i]
        );
        for addr in [addrs[i].clone(), v6(net, i)] {
            assert!(!connects(&outsider, &addr, 4369), "{addr}:4369 reachable from outside");
            for p in &ports {
                assert!(
                    !connects(&outsider, &addr, *p),
                    "{addr}:{p} (a node) reachable from outside"
                );
            }
        }
    }

    // What crossed the bridge: TLS, the plain service, nothing readable.
    std::thread::sleep(Duration::from_millis(500));
    tcpdump.signal(15);
    tcpdump.wait_timeout(Duration::from_secs(5));
    drop(tcpdump);
    let cap = std::fs::read(&pcap).unwrap();
    let hay = String::from_utf8_lossy(&cap).to_string();
    for secret in [
        "SECRET-PAYLOAD-4711",
        "SECRET-REPLY-0815",
        "a@hosta",
        "b@hostb",
        "c@hostc",
        "erlmesh-test",
    ] {
        assert!(!hay.contains(secret), "{secret:?} crossed the network in the clear");
    }
    assert!(
        hay.contains("PLAIN-SERVICE"),
        "the plain service's bytes were not captured: is the capture working?"
    );
    assert!(
        packets(&pcap, "tcp port 4370").len() > 100,
        "too few TLS packets captured"
    );
    let stray: Vec<String> = packets(&pcap, "tcp and not port 4370 and not port 8080")
        .into_iter()
        // The outsider's probes, which were refused or went unanswered.
        .filter(|l| !l.contains(&format!("198.18.{net}.4.")) && !l.contains(&format!("{}.", v6(net, 3))))
        .collect();
    assert!(
        stray.is_empty(),
        "only TLS and the plain service expected:\n{}",
        stray.join("\n")
    );
    let outsider_answered: Vec<String> = packets(
        &pcap,
        &format!("tcp and not port 4370 and src net 198.18.{net}.0/24 and dst host 198.18.{net}.4"),
    )
    .into_iter()
    .filter(|l| !l.contains("Flags [R"))
    .collect();
    assert!(
        outsider_answered.is_empty(),
        "hosts answered the outsider beyond TLS:\n{}",
        outsider_answered.join("\n")
    );

    drop((a, a2, b, cn));
    drop(hs);
    drop(guard);
}
