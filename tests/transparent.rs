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

/// Transparent hosts for `names`, in namespaces `{tag}-{name}` at `addrs`,
/// each a peer of the others (not started yet).
fn transparent_hosts(c: &Cluster, tag: &str, names: &[&str], addrs: &[String]) -> Vec<Host> {
    let mut hs: Vec<Host> = names
        .iter()
        .enumerate()
        .map(|(i, h)| transparent_host(c, h, format!("{tag}-{h}"), &addrs[i]))
        .collect();
    mesh(&mut hs);
    hs
}

fn start_all(hs: &mut [Host]) {
    for h in hs.iter_mut() {
        h.start();
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
    let (mut tcpdump, pcap) = capture(&c, &guard.names[0], "bridge");

    let mut hs = transparent_hosts(&c, &tag, &names[..3], &addrs);
    start_all(&mut hs);
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
    std::thread::sleep(Duration::from_secs(1)); // a2's port enters the guard
    let status = hs[0].status().unwrap();
    let local_pair = status.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 2 && f[..2].contains(&"a2@hosta") && f[..2].contains(&"a@hosta")
    });
    assert!(!local_pair, "a tunnel for a local pair:\n{status}");
    assert!(status.contains("redirected by the kernel: epmd="), "{status}");
    let doctor = hs[0]
        .command(ERLMESH)
        .args(["doctor", "--config", hs[0].config_path().to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(doctor.status.success(), "doctor: {text}");
    assert!(
        text.contains("the rules are in place") && text.contains("peer hostb: its addresses are redirected"),
        "{text}"
    );
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

#[test]
fn long_names_and_ipv6_nodes_cluster_through_it() {
    if skip_unless_root("long_names_and_ipv6_nodes_cluster_through_it") {
        return;
    }
    require_erl();
    let tag = format!("tl{}", std::process::id() % 100_000);
    let net = 1 + ((std::process::id() + 90) % 250);
    let names = ["hosta.example.com", "hostb.example.com"];
    let short = ["hosta", "hostb"];
    let (guard, addrs) = lan(&tag, net, &short);
    let mut lines = Vec::new();
    for (i, h) in names.iter().enumerate() {
        lines.push(format!("{} {h}", addrs[i]));
        lines.push(format!("{} {h}", v6(net, i)));
    }
    hosts_file(&guard, &lines);
    let c = Cluster::new();
    let mut hs: Vec<Host> = names
        .iter()
        .enumerate()
        .map(|(i, h)| transparent_host(&c, h, format!("{tag}-{}", short[i]), &addrs[i]))
        .collect();
    mesh(&mut hs);
    for h in hs.iter_mut() {
        h.start();
    }
    // Long names over IPv4.
    let mut a = hs[0].node("a");
    let mut b = hs[1].node("b");
    assert_eq!(
        a.eval("net_adm:ping('b@hostb.example.com')."),
        "pong",
        "{}",
        hs[0].log()
    );
    b.eval("ets:new(cache, [named_table, public]), ets:insert(cache, {k, <<\"LONG-NAME-VALUE\">>}).");
    assert_eq!(
        a.eval("rpc:call('b@hostb.example.com', ets, lookup, [cache, k])."),
        "[{k,<<\"LONG-NAME-VALUE\">>}]"
    );
    a.eval("ets:new(cache, [named_table, public]), ets:insert(cache, {k, <<\"LONG-NAME-BACK\">>}).");
    assert_eq!(
        b.eval("rpc:call('a@hosta.example.com', ets, lookup, [cache, k])."),
        "[{k,<<\"LONG-NAME-BACK\">>}]"
    );
    // Nodes speaking IPv6 only (-proto_dist inet6_tcp): the peer's AAAA
    // address, redirected to erlmesh on ::1.
    let mut a6 = hs[0].node_with("a6", &["-proto_dist", "inet6_tcp"]);
    let mut b6 = hs[1].node_with("b6", &["-proto_dist", "inet6_tcp"]);
    assert_eq!(
        a6.eval("net_adm:ping('b6@hostb.example.com')."),
        "pong",
        "{}",
        hs[0].log()
    );
    b6.eval("ets:new(cache, [named_table, public]), ets:insert(cache, {k, <<\"IPV6-VALUE\">>}).");
    assert_eq!(
        a6.eval("rpc:call('b6@hostb.example.com', ets, lookup, [cache, k])."),
        "[{k,<<\"IPV6-VALUE\">>}]"
    );
    a6.eval("ets:new(cache, [named_table, public]), ets:insert(cache, {k, <<\"IPV6-BACK\">>}).");
    assert_eq!(
        b6.eval("rpc:call('a6@hosta.example.com', ets, lookup, [cache, k])."),
        "[{k,<<\"IPV6-BACK\">>}]"
    );
    let status = hs[0].status().unwrap();
    assert!(
        status.contains("a6@hosta.example.com") && status.contains("b6@hostb.example.com"),
        "{status}"
    );
    drop((a, b, a6, b6));
    drop(hs);
    drop(guard);
}

/// `erlmesh rules show` in a host's namespace.
fn rules_show(h: &Host) -> (bool, String) {
    let out = h
        .command(ERLMESH)
        .args(["rules", "show", "--config", h.config_path().to_str().unwrap()])
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn rules(h: &Host, verb: &str) -> String {
    let out = h
        .command(ERLMESH)
        .args(["rules", verb, "--config", h.config_path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rules {verb}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn address_named_nodes_plaintext_cut_fail_closed_and_rules_survive_restarts() {
    if skip_unless_root("address_named_nodes_plaintext_cut_fail_closed_and_rules_survive_restarts") {
        return;
    }
    require_erl();
    let tag = format!("ti{}", std::process::id() % 100_000);
    let net = 1 + ((std::process::id() + 120) % 250);
    let (guard, addrs) = lan(&tag, net, &["hosta", "hostb", "outsider"]);
    hosts_file(&guard, &[]);
    let c = Cluster::new();
    // Hosts named by their addresses (libcluster's app@10.1.2.3): each
    // certificate names its address.
    let mut hs: Vec<Host> = ["hosta", "hostb"]
        .iter()
        .enumerate()
        .map(|(i, h)| transparent_host(&c, &addrs[i], format!("{tag}-{h}"), &addrs[i]))
        .collect();
    mesh(&mut hs);
    for h in &hs {
        h.write_config();
    }
    let (na, nb) = (format!("a@{}", addrs[0]), format!("b@{}", addrs[1]));
    // The nodes start before erlmesh and connect in the clear.
    let mut a = hs[0].node_named(&na);
    let mut b = hs[1].node_named(&nb);
    assert_eq!(
        a.eval(&format!("net_adm:ping('{nb}').")),
        "pong",
        "no plaintext cluster to begin with"
    );
    a.eval(&format!("erlang:monitor_node('{nb}', true)."));
    for h in hs.iter_mut() {
        h.start();
    }
    // The rules come in step: each side's node ports are in the other's.
    let a_port = node_ports(hs[0].netns.as_ref().unwrap())[0];
    let b_port = node_ports(hs[1].netns.as_ref().unwrap())[0];
    assert!(
        wait_for(Duration::from_secs(20), || {
            rules_show(&hs[0]).1.contains(&format!("{} . {b_port}", addrs[1]))
                && rules_show(&hs[1]).1.contains(&format!("{} . {a_port}", addrs[0]))
        }),
        "the peers' node ports never entered the rules:\n{}",
        rules_show(&hs[0]).1
    );
    // From then on the plaintext connection is cut at its next packet, on
    // each side before the packet leaves, and re-forms through erlmesh.
    let (mut tcpdump, cut_pcap) = capture(&c, &guard.names[0], "cut");
    a.eval(&format!("rpc:call('{nb}', erlang, node, [])."));
    assert_eq!(
        a.eval("receive {nodedown, _} -> cut after 20000 -> still_up end."),
        "cut",
        "the plaintext connection survived the rules"
    );
    assert_eq!(
        a.eval_until(&format!("net_adm:ping('{nb}')."), "pong", Duration::from_secs(20)),
        "pong",
        "{}",
        hs[0].log()
    );
    b.eval("ets:new(cache, [named_table, public]), ets:insert(cache, {k, <<\"ADDRESS-NAMED\">>}).");
    assert_eq!(
        a.eval(&format!("rpc:call('{nb}', ets, lookup, [cache, k]).")),
        "[{k,<<\"ADDRESS-NAMED\">>}]"
    );
    let status = hs[0].status().unwrap();
    assert!(
        status.contains(&na) && status.contains(&nb),
        "no tunnel after the cut:\n{status}"
    );
    tcpdump.signal(15);
    tcpdump.wait_timeout(Duration::from_secs(5));
    drop(tcpdump);
    let plain = packets(&cut_pcap, "tcp and not port 4370");
    assert!(
        plain.is_empty(),
        "plaintext crossed after the rules:\n{}",
        plain.join("\n")
    );
    assert!(
        !packets(&cut_pcap, "tcp port 4370").is_empty(),
        "the capture saw no TLS either"
    );

    // Fail closed: with erlmesh stopped on both hosts the rules stay, and
    // nodes get pang, never a plaintext connection.
    let (ok, before) = rules_show(&hs[0]);
    assert!(ok && before.contains("table inet erlmesh"), "{before}");
    assert!(
        before.contains(&addrs[1]),
        "hostb's address is not in the rules:\n{before}"
    );
    for h in hs.iter_mut() {
        h.kill();
    }
    assert_eq!(
        a.eval_until("nodes().", "[]", Duration::from_secs(10)),
        "[]",
        "tunnels outlived erlmesh"
    );
    let (mut tcpdump, pcap) = capture(&c, &guard.names[0], "stopped");
    assert_eq!(
        a.eval(&format!("net_adm:ping('{nb}').")),
        "pang",
        "a connection without erlmesh"
    );
    assert_eq!(
        b.eval(&format!("net_adm:ping('{na}').")),
        "pang",
        "a connection without erlmesh"
    );
    let outsider = format!("{tag}-outsider");
    for p in node_ports(hs[1].netns.as_ref().unwrap()) {
        assert!(
            !connects(&outsider, &addrs[1], p),
            "a node's port opened with erlmesh stopped"
        );
    }
    assert!(!connects(&outsider, &addrs[1], 4369));
    assert!(!connects(&outsider, &v6(net, 1), 4369));
    a.eval("ets:new(cache, [named_table, public]), ets:insert(cache, {k, <<\"ADDRESS-BACK\">>}).");
    tcpdump.signal(15);
    tcpdump.wait_timeout(Duration::from_secs(5));
    drop(tcpdump);
    let between = packets(&pcap, &format!("tcp and host {} and host {}", addrs[0], addrs[1]));
    assert!(
        between.is_empty(),
        "packets between the hosts with erlmesh stopped:\n{}\nhostb's nodes: {:?}\n{}",
        between.join("\n"),
        node_ports(hs[1].netns.as_ref().unwrap()),
        rules_show(&hs[0]).1
    );
    let answered = packets(&pcap, &format!("tcp and src host {}", addrs[1]));
    assert!(
        answered.is_empty(),
        "hostb answered the outsider:\n{}",
        answered.join("\n")
    );
    assert!(
        !packets(&pcap, &format!("tcp and src host {}", addrs[2])).is_empty(),
        "the outsider's probes were not captured"
    );
    assert_eq!(rules_show(&hs[0]).1, before, "the rules changed when erlmesh stopped");
    let doctor = hs[0]
        .command(ERLMESH)
        .args(["doctor", "--config", hs[0].config_path().to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        !doctor.status.success() && text.contains("nothing takes redirected connections"),
        "{text}"
    );
    // Applying twice gives the same ruleset; removal leaves other tables.
    rules(&hs[0], "apply");
    let once = rules_show(&hs[0]).1;
    rules(&hs[0], "apply");
    assert_eq!(rules_show(&hs[0]).1, once, "applying twice changed the ruleset");
    assert_eq!(once, before, "rules apply dropped what erlmesh run had learnt");
    let other = hs[0]
        .command("nft")
        .args(["add", "table", "inet", "someone_else"])
        .status()
        .unwrap();
    assert!(other.success());
    assert!(rules(&hs[0], "remove").contains("removed"));
    assert!(!rules_show(&hs[0]).0, "the table is still there");
    let listed = hs[0].command("nft").args(["list", "tables"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("table inet someone_else"),
        "rules remove touched another table"
    );
    rules(&hs[0], "apply");
    // Restarted, erlmesh carries the cluster again, with the same rules.
    for h in hs.iter_mut() {
        h.start_with_written_config();
    }
    assert_eq!(
        a.eval_until(&format!("net_adm:ping('{nb}')."), "pong", Duration::from_secs(20)),
        "pong",
        "{}",
        hs[0].log()
    );
    assert_eq!(
        b.eval(&format!("rpc:call('{na}', ets, lookup, [cache, k]).")),
        "[{k,<<\"ADDRESS-BACK\">>}]"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(rules_show(&hs[0]).1, before, "the rules changed across a restart");
    drop((a, b));
    drop(hs);
    drop(guard);
}

/// A command run on host namespace `ns` as a tool would run there: the
/// machine's name is the host's (a UTS namespace of its own) and the
/// environment is empty but for PATH and HOME.
fn tool(ns: &str, host: &str, home: &std::path::Path, cmd: &str) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", ns, "unshare", "--uts", "sh", "-c"])
        .arg(format!(
            "hostname {host} && exec env -i PATH=/usr/local/bin:/usr/bin:/bin HOME={} sh -c \"$0\"",
            home.display()
        ))
        .arg(cmd)
        .current_dir(home)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn erl_call_remsh_and_short_lived_nodes_work_without_any_environment() {
    if skip_unless_root("erl_call_remsh_and_short_lived_nodes_work_without_any_environment") {
        return;
    }
    require_erl();
    let tag = format!("tt{}", std::process::id() % 100_000);
    let net = 1 + ((std::process::id() + 150) % 250);
    let names = ["hosta", "hostb"];
    let (guard, addrs) = lan(&tag, net, &names);
    hosts_file(&guard, &[format!("{} hosta", addrs[0]), format!("{} hostb", addrs[1])]);
    let c = Cluster::new();
    let mut hs = transparent_hosts(&c, &tag, &names, &addrs);
    start_all(&mut hs);
    let mut b = hs[1].node("b");
    b.eval("ets:new(cache, [named_table, public]), ets:insert(cache, {k, tool_value}).");
    let ns = format!("{tag}-hosta");

    // erl_call (what relx's ping, rpc and eval run), named after the machine.
    let out = Command::new("erl")
        .args([
            "-noshell",
            "-eval",
            "io:format(\"~s\", [code:lib_dir(erl_interface)]), halt().",
        ])
        .output()
        .unwrap();
    let erl_call = format!("{}/bin/erl_call", String::from_utf8_lossy(&out.stdout));
    let out = tool(
        &ns,
        "hosta",
        c.path(),
        &format!("{erl_call} -sname b@hostb -c erlmesh-test -a 'ets lookup [cache, k]'"),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "[{k, tool_value}]",
        "erl_call: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        hs[0].log()
    );
    // A short-lived named node, as scripts start them.
    let out = tool(
        &ns,
        "hosta",
        c.path(),
        "erl -sname probe -setcookie erlmesh-test -noshell -eval 'io:format(\"~p~n\", [rpc:call(b@hostb, erlang, node, [])]), halt().'",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "b@hostb",
        "{}",
        hs[0].log()
    );
    // erl -remsh, named and with no name of its own (a dynamic name under
    // the machine's), the shell on a terminal (an operator's: TERM set,
    // without which erl ignores -remsh).
    for name in ["-sname remsh1 ", ""] {
        let out = tool(
            &ns,
            "hosta",
            c.path(),
            &format!("(printf '{{on, node()}}.\\n'; sleep 3; printf '\\007'; sleep 0.3; printf 'q\\n'; sleep 1) | TERM=xterm timeout 20 script -qec 'erl {name}-remsh b@hostb -setcookie erlmesh-test' /dev/null"),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("{on,b@hostb}"),
            "{name}: no remote shell on b: {text}\n{}",
            hs[0].log()
        );
    }
    drop(b);
    drop(hs);
    drop(guard);
}

/// RabbitMQ's own environment for host `host` (its data, logs and plugins
/// under the test's directory, its cookie in HOME): RabbitMQ's
/// configuration, none of it erlmesh's.
fn rabbit_env(dir: &std::path::Path, host: &str) -> String {
    let base = dir.join(format!("rabbit-{host}"));
    std::fs::create_dir_all(base.join("home")).unwrap();
    std::fs::write(base.join("enabled_plugins"), "[].\n").unwrap();
    let cookie = base.join("home/.erlang.cookie");
    std::fs::write(&cookie, "erlmesh-test").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400)).unwrap();
    let b = base.display();
    format!(
        "HOME={b}/home RABBITMQ_NODENAME=rabbit@{host} RABBITMQ_MNESIA_BASE={b}/mnesia RABBITMQ_LOG_BASE={b}/log \
         RABBITMQ_ENABLED_PLUGINS_FILE={b}/enabled_plugins RABBITMQ_PLUGINS_EXPAND_DIR={b}/plugins \
         RABBITMQ_CONF_ENV_FILE={b}/rabbitmq-env.conf RABBITMQ_CONFIG_FILE={b}/rabbitmq"
    )
}

#[test]
fn rabbitmq_clusters_through_it_with_no_configuration_for_erlmesh() {
    if skip_unless_root("rabbitmq_clusters_through_it_with_no_configuration_for_erlmesh") {
        return;
    }
    require_erl();
    let bin = std::path::Path::new("/usr/lib/rabbitmq/bin");
    assert!(
        bin.join("rabbitmq-server").exists(),
        "Debian's rabbitmq-server is missing: the test command installs it"
    );
    let tag = format!("tr{}", std::process::id() % 100_000);
    let net = 1 + ((std::process::id() + 180) % 250);
    let names = ["hosta", "hostb"];
    let (guard, addrs) = lan(&tag, net, &names);
    hosts_file(&guard, &[format!("{} hosta", addrs[0]), format!("{} hostb", addrs[1])]);
    let c = Cluster::new();
    let mut hs = transparent_hosts(&c, &tag, &names, &addrs);
    start_all(&mut hs);
    // Each host's RabbitMQ, started by its own scripts (as root here, so
    // that it may write the test's directory), in the background.
    let mut servers = Vec::new();
    for (i, h) in names.iter().enumerate() {
        let env = rabbit_env(c.path(), h);
        let log = std::fs::File::create(c.path().join(format!("rabbit-{h}.out"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &format!("{tag}-{h}"), "unshare", "--uts", "sh", "-c"])
            .arg(format!(
                "hostname {h} && exec env -i PATH=/usr/local/bin:/usr/bin:/bin {env} {}/rabbitmq-server",
                bin.display()
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        servers.push(Proc {
            child,
            what: format!("rabbitmq-server {}", names[i]),
        });
    }
    let ctl = |h: &str, args: &str| {
        let env = rabbit_env(c.path(), h);
        let out = tool(
            &format!("{tag}-{h}"),
            h,
            c.path(),
            &format!("env {env} {}/rabbitmqctl {args}", bin.display()),
        );
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    for h in names {
        let mut last = String::new();
        let up = wait_for(Duration::from_secs(90), || {
            let (ok, out) = ctl(h, "await_startup --timeout 5");
            last = out;
            ok
        });
        let log = std::fs::read_to_string(c.path().join(format!("rabbit-{h}.out"))).unwrap_or_default();
        assert!(up, "rabbit@{h} did not start: {last}\n{log}");
    }
    // hostb joins hostb's RabbitMQ to hosta's, as the operator would.
    for step in ["stop_app", "join_cluster rabbit@hosta", "start_app"] {
        let (ok, out) = ctl("hostb", step);
        assert!(ok, "rabbitmqctl {step}: {out}\n{}", hs[1].log());
    }
    let (ok, out) = ctl("hosta", "cluster_status --formatter json");
    assert!(ok, "{out}");
    assert!(
        out.contains("\"running_nodes\":[\"rabbit@hosta\",\"rabbit@hostb\"]")
            || out.contains("\"running_nodes\":[\"rabbit@hostb\",\"rabbit@hosta\"]"),
        "not one cluster: {out}"
    );
    let status = hs[0].status().unwrap();
    assert!(
        status.contains("rabbit@hosta") && status.contains("rabbit@hostb"),
        "not through erlmesh:\n{status}"
    );
    for h in names {
        let _ = ctl(h, "shutdown");
    }
    drop(servers);
    drop(hs);
    drop(guard);
}

#[test]
fn hosts_learnt_through_seeds_enter_the_rules_when_proven_and_leave_when_forgotten() {
    if skip_unless_root("hosts_learnt_through_seeds_enter_the_rules_when_proven_and_leave_when_forgotten") {
        return;
    }
    require_erl();
    let tag = format!("ts{}", std::process::id() % 100_000);
    let net = 1 + ((std::process::id() + 210) % 250);
    let names = ["hosta", "hostb", "hostc"];
    let (guard, addrs) = lan(&tag, net, &names);
    let lines: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, h)| format!("{} {h}", addrs[i]))
        .collect();
    hosts_file(&guard, &lines);
    let c = Cluster::new();
    let mut hs: Vec<Host> = names
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let mut host = transparent_host(&c, h, format!("{tag}-{h}"), &addrs[i]);
            host.extra = format!("{TRANSPARENT}\nforget_after_secs = 3");
            if i > 0 {
                host.seeds = vec![format!("{}:4370", addrs[0])];
            }
            host
        })
        .collect();
    for h in hs.iter_mut() {
        h.start();
    }
    let in_rules = |h: &Host, addr: &str| rules_show(h).1.contains(addr);
    assert!(
        wait_for(Duration::from_secs(20), || in_rules(&hs[1], &addrs[2])),
        "hostb never put hostc's address in its rules:\n{}",
        rules_show(&hs[1]).1
    );
    let mut b = hs[1].node("b");
    let mut cn = hs[2].node("c");
    assert_eq!(b.eval("net_adm:ping(c@hostc)."), "pong", "{}", hs[1].log());
    assert_eq!(cn.eval("rpc:call(b@hostb, erlang, node, [])."), "b@hostb");
    // A local program connecting to the redirect port itself (not
    // redirected) is closed and counted; the cluster goes on.
    let probe = hs[1]
        .command("bash")
        .args([
            "-c",
            "exec 3<>/dev/tcp/127.0.0.1/4371; printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3; timeout 5 cat <&3",
        ])
        .output()
        .unwrap();
    assert!(
        probe.stdout.is_empty(),
        "the redirect port answered a direct connection"
    );
    assert!(
        hs[1].status().unwrap().contains("unknown=1"),
        "{}",
        hs[1].status().unwrap()
    );
    assert_eq!(b.eval("rpc:call(c@hostc, erlang, node, [])."), "c@hostc");
    // hostc leaves: after forget_after_secs it leaves hostb's rules, and
    // hostb's traffic to that address is no longer touched.
    drop(cn);
    hs[2].kill();
    assert!(
        wait_for(Duration::from_secs(40), || !in_rules(&hs[1], &addrs[2])),
        "hostb kept a forgotten host in its rules:\n{}",
        rules_show(&hs[1]).1
    );
    assert!(in_rules(&hs[1], &addrs[0]), "hostb dropped its seed");
    drop(b);
    drop(hs);
    drop(guard);
}

#[test]
fn a_fixed_distribution_port_range_is_guarded_and_redirected_whole() {
    if skip_unless_root("a_fixed_distribution_port_range_is_guarded_and_redirected_whole") {
        return;
    }
    require_erl();
    let tag = format!("tg{}", std::process::id() % 100_000);
    let net = 1 + ((std::process::id() + 240) % 250);
    let names = ["hosta", "hostb", "outsider"];
    let (guard, addrs) = lan(&tag, net, &names);
    hosts_file(&guard, &[format!("{} hosta", addrs[0]), format!("{} hostb", addrs[1])]);
    let c = Cluster::new();
    let mut hs = transparent_hosts(&c, &tag, &names[..2], &addrs);
    for h in hs.iter_mut() {
        h.extra = format!("{TRANSPARENT}\n[transparent]\ndist_ports = \"9100-9110\"");
    }
    start_all(&mut hs);
    // Before any node runs, the whole range is guarded and redirected.
    let (ok, rules) = rules_show(&hs[1]);
    assert!(ok && rules.contains("tcp dport 9100-9110 ct state new drop"), "{rules}");
    assert!(
        rules.contains("ip daddr @peers4 tcp dport 9100-9110 redirect to :4371"),
        "{rules}"
    );
    let range = [
        "-kernel",
        "inet_dist_listen_min",
        "9100",
        "inet_dist_listen_max",
        "9110",
    ];
    let mut a = hs[0].node_with("a", &range);
    let mut b = hs[1].node_with("b", &range);
    let ports = node_ports(hs[1].netns.as_ref().unwrap());
    assert!(ports.iter().all(|p| (9100..=9110).contains(p)), "{ports:?}");
    assert_eq!(a.eval("net_adm:ping(b@hostb)."), "pong", "{}", hs[0].log());
    b.eval("ets:new(cache, [named_table, public]), ets:insert(cache, {k, in_range}).");
    assert_eq!(a.eval("rpc:call(b@hostb, ets, lookup, [cache, k])."), "[{k,in_range}]");
    let outsider = format!("{tag}-outsider");
    for p in 9100..=9110 {
        assert!(
            !connects(&outsider, &addrs[1], p),
            "port {p} of hostb reachable from outside"
        );
    }
    drop((a, b));
    drop(hs);
    drop(guard);
}
