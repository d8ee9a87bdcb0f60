//! Faults: erlmesh killed, restarted, stopped and reloaded under real
//! traffic; floods of connections. Nodes must see what a plain network
//! gives them: messages intact and in order, or a nodedown.

mod common;
use common::*;
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn a_killed_peer_gives_prompt_nodedown_and_the_cluster_heals() {
    let c = Cluster::new();
    let (ha, mut hb) = c.pair("", "");
    let mut a = ha.node("a");
    let mut b = hb.node("b");
    assert_eq!(a.eval("net_adm:ping(b@hostb)."), "pong");
    assert_eq!(a.eval("net_kernel:monitor_nodes(true)."), "ok");
    assert_eq!(b.eval("net_kernel:monitor_nodes(true)."), "ok");
    let t0 = Instant::now();
    hb.kill(); // SIGKILL
               // Both sides hear of it at once, not after net_ticktime (60 s).
    assert_eq!(
        a.eval("receive {nodedown, N} -> N after 2000 -> timeout end."),
        "b@hostb"
    );
    assert_eq!(
        b.eval("receive {nodedown, N} -> N after 2000 -> timeout end."),
        "a@hosta"
    );
    assert!(t0.elapsed() < Duration::from_secs(5));

    hb.start();
    // b re-registers with the new erlmesh by itself (OTP retries every 2 s);
    // a reconnects on its next message, without restarts.
    assert_eq!(
        a.eval_until("net_adm:ping(b@hostb).", "pong", Duration::from_secs(15)),
        "pong",
        "{}",
        hb.log()
    );
    assert_eq!(b.eval("rpc:call(a@hosta, erlang, node, [])."), "a@hosta");
}

#[test]
fn a_restarted_erlmesh_keeps_aliases_and_nodes_reregister() {
    let c = Cluster::new();
    let (mut ha, hb) = c.pair("", "");
    let mut a = ha.node("a");
    let mut b = hb.node("b");
    assert_eq!(b.eval("net_adm:ping(a@hosta)."), "pong");
    let inetrc = std::fs::read_to_string(c.path().join("state-hosta/inetrc")).unwrap();
    ha.kill();
    ha.start();
    assert_eq!(
        std::fs::read_to_string(c.path().join("state-hosta/inetrc")).unwrap(),
        inetrc
    );
    // a registers again with the new embedded EPMD.
    assert_eq!(
        a.eval_until(
            "{ok, Ns} = net_adm:names(), [N || {N, _} <- Ns].",
            "[\"a\"]",
            Duration::from_secs(15)
        ),
        "[\"a\"]"
    );
    assert_eq!(
        b.eval_until("net_adm:ping(a@hosta).", "pong", Duration::from_secs(10)),
        "pong"
    );
    assert_eq!(a.eval("rpc:call(b@hostb, erlang, node, [])."), "b@hostb");
}

#[test]
fn a_checked_stream_survives_repeated_kills() {
    let c = Cluster::new();
    let pa = c.erl_module("stream");
    let pa: Vec<&str> = pa.iter().map(|s| s.as_str()).collect();
    let (mut ha, mut hb) = c.pair("", "");
    let mut a = ha.node_with("a", &pa);
    let mut b = hb.node_with("b", &pa);
    assert_eq!(b.eval("stream:start_receiver()."), "ok");
    assert_eq!(a.eval("net_adm:ping(b@hostb)."), "pong");
    // At most 2 minutes; stopped 3 s after the last restart (however long
    // the restarts took), so that the stream's tail goes through a whole
    // path and must arrive.
    assert_eq!(a.eval("stream:start_sender(b@hostb, 120000, 2000)."), "ok");
    // Kill and restart each side's erlmesh in turn while the stream runs,
    // leaving time for the nodes to re-register (OTP retries every 2 s).
    for round in 0..4 {
        std::thread::sleep(Duration::from_millis(3000));
        let h = if round % 2 == 0 { &mut hb } else { &mut ha };
        h.kill();
        std::thread::sleep(Duration::from_millis(300));
        h.start();
    }
    std::thread::sleep(Duration::from_millis(3000));
    assert_eq!(a.eval("stream:stop_sender()."), "ok");
    let sent = a.eval("stream:sender_report().");
    let report = b.eval("stream:report().");
    println!("stream through 4 kills: sender {sent}; receiver {report}");
    let field = |k: &str| -> u64 {
        let pat = format!("{k} => ");
        let i = report
            .match_indices(&pat)
            .map(|(i, _)| i)
            .find(|&i| i == 0 || !report[..i].ends_with(|ch: char| ch.is_ascii_alphanumeric() || ch == '_'))
            .unwrap_or_else(|| panic!("{k} in {report}"));
        report[i + k.len() + 4..]
            .split(|ch: char| !ch.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let total: u64 = sent.split(',').nth(1).unwrap().trim().parse().unwrap();
    let (delivered, bad, downs) = (field("delivered"), field("bad"), field("downs"));
    println!(
        "sent {total}, delivered {delivered}, lost with a nodedown {}, corrupted or out of order {bad}",
        total - delivered
    );
    assert_eq!(bad, 0, "corrupted, duplicated or reordered messages: {report}");
    assert!(downs >= 2, "the kills were not seen: {report}");
    assert!(delivered > 100 && delivered <= total, "{report} / {sent}");
    assert!(
        report.contains("last => ") && field("last") == total,
        "the tail arrived after the last restart: {report} / {sent}"
    );
}

#[test]
fn sigterm_drains_then_exits_zero() {
    let c = Cluster::new();
    let grace = "shutdown_grace_secs = 3";
    let (mut ha, hb) = c.pair(grace, grace);
    let mut a = ha.node("a");
    let _b = hb.node("b");
    assert_eq!(a.eval("net_adm:ping(b@hostb)."), "pong");
    let p = ha.proc.as_mut().unwrap();
    p.signal(15);
    // The open tunnel still carries traffic during the grace period...
    assert_eq!(a.eval("rpc:call(b@hostb, erlang, node, [])."), "b@hostb");
    // ...and new connections are no longer accepted.
    assert!(wait_for(Duration::from_secs(2), || TcpStream::connect((
        "127.0.0.1",
        ha.listen_port
    ))
    .is_err()));
    let status = ha
        .proc
        .as_mut()
        .unwrap()
        .wait_timeout(Duration::from_secs(10))
        .expect("exit within the grace period");
    assert!(status.success(), "{status}");
    let log = ha.log();
    assert!(
        log.contains("SIGTERM received") && log.contains("grace period over"),
        "{log}"
    );
}

#[test]
fn sighup_reloads_certificates_and_refuses_a_bad_one() {
    let c = Cluster::new();
    let (ha, hb) = c.pair("", "");
    let mut a = ha.node("a");
    let _b = hb.node("b");
    assert_eq!(a.eval("net_adm:ping(b@hostb)."), "pong");
    let certs = c.path().join("certs");
    run_ok(&[
        "cert",
        "issue",
        "--dir",
        certs.to_str().unwrap(),
        "--host",
        "hosta",
        "--force",
    ]);
    ha.proc.as_ref().unwrap().signal(1);
    assert!(
        wait_for(Duration::from_secs(5), || ha.log().contains("certificates reloaded")),
        "{}",
        ha.log()
    );
    // The open tunnel was not dropped; new connections use the new certificate.
    assert_eq!(a.eval("rpc:call(b@hostb, erlang, node, [])."), "b@hostb");
    assert_eq!(a.eval("erlang:disconnect_node(b@hostb)."), "true");
    assert_eq!(
        a.eval_until("net_adm:ping(b@hostb).", "pong", Duration::from_secs(5)),
        "pong"
    );

    // A broken certificate is refused; the previous one stays in use.
    std::fs::write(certs.join("hosta.pem"), "not a certificate\n").unwrap();
    ha.proc.as_ref().unwrap().signal(1);
    assert!(
        ha.log_shows("certificate reload refused", Duration::from_secs(5)),
        "{}",
        ha.log()
    );
    assert!(ha.log_shows("hosta.pem", Duration::from_secs(10)));
    assert_eq!(a.eval("erlang:disconnect_node(b@hostb)."), "true");
    assert_eq!(
        a.eval_until("net_adm:ping(b@hostb).", "pong", Duration::from_secs(5)),
        "pong"
    );
}

#[test]
fn floods_stay_within_limits_and_tunnels_keep_working() {
    let c = Cluster::new();
    let (ha, hb) = c.pair(
        "max_connections = 64\nhandshake_timeout_secs = 2",
        "max_connections = 64\nhandshake_timeout_secs = 2",
    );
    let mut a = ha.node("a");
    let mut b = hb.node("b");
    assert_eq!(a.eval("net_adm:ping(b@hostb)."), "pong");
    // The alias listener standing for b on host A, and hostb's alias.
    let alias_port: u16 = a.eval("{ok, [{_, P}]} = net_adm:names(hostb), P.").parse().unwrap();
    let alias = a
        .eval("{ok, IP} = inet:getaddr(hostb, inet), inet:ntoa(IP).")
        .trim_matches('"')
        .to_owned();
    let mut held = Vec::new();
    for _ in 0..300 {
        if let Ok(s) = TcpStream::connect((alias.as_str(), alias_port)) {
            held.push(s);
        }
        if let Ok(s) = TcpStream::connect(("127.0.0.1", hb.listen_port)) {
            held.push(s);
        }
    }
    assert!(held.len() >= 300, "only {} connections opened", held.len());
    // hostb's erlmesh holds at most max_connections of the 300 sent to its
    // TLS port; the rest wait in the kernel's backlog.
    let fds = std::fs::read_dir(format!("/proc/{}/fd", hb.proc.as_ref().unwrap().pid()))
        .unwrap()
        .count();
    assert!(
        fds < 64 + 40,
        "hostb's erlmesh has {fds} descriptors open with max_connections = 64"
    );
    // The established tunnel is untouched by the flood.
    for i in 0..20 {
        assert_eq!(
            a.eval(&format!("rpc:call(b@hostb, erlang, abs, [-{i}]).")),
            i.to_string()
        );
    }
    assert_eq!(b.eval("rpc:call(a@hosta, erlang, node, [])."), "a@hosta");
    drop(held);
    // New connections still work once the flood has been timed out.
    assert_eq!(b.eval("erlang:disconnect_node(a@hosta)."), "true");
    assert_eq!(
        b.eval_until("net_adm:ping(a@hosta).", "pong", Duration::from_secs(10)),
        "pong"
    );
    assert!(!ha.log().contains("panicked") && !hb.log().contains("panicked"));
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn a_stalled_reader_holds_back_the_sender_not_erlmesh_memory() {
    let c = Cluster::new();
    let (ha, hb) = c.pair("", "");
    let mut a = ha.node("a");
    let mut b = hb.node("b");
    assert_eq!(
        b.eval("register(sink, spawn(fun() -> (fun S(N) -> receive {count, P} -> P ! {n, N}, S(N); _ -> S(N + 1) end end)(0) end))."),
        "true"
    );
    assert_eq!(a.eval("net_adm:ping(b@hostb)."), "pong");
    let before = rss_kib(ha.proc.as_ref().unwrap().pid()) + rss_kib(hb.proc.as_ref().unwrap().pid());
    // b stops reading (SIGSTOP); a pushes 400 MiB at it from another process.
    let b_pid = b.os_pid();
    let _ = std::process::Command::new("kill")
        .args(["-STOP", &b_pid.to_string()])
        .status();
    assert_eq!(
        a.eval(
            "B = binary:copy(<<0>>, 1048576), spawn(fun() -> [{sink, b@hostb} ! B || _ <- lists:seq(1, 400)] end), ok."
        ),
        "ok"
    );
    std::thread::sleep(Duration::from_secs(3));
    let during = rss_kib(ha.proc.as_ref().unwrap().pid()) + rss_kib(hb.proc.as_ref().unwrap().pid());
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &b_pid.to_string()])
        .status();
    println!("erlmesh RSS (both) before {before} KiB, with the reader stalled {during} KiB");
    // The bytes wait in the nodes and the kernel's socket buffers, not in
    // erlmesh: its memory grows by far less than what was pushed.
    assert!(
        during < before + 32 * 1024,
        "erlmesh grew from {before} to {during} KiB"
    );
    // Once b reads again, everything arrives and the tunnel still works.
    assert_eq!(
        a.eval_until(
            "rpc:call(b@hostb, erlang, node, [], 5000).",
            "b@hostb",
            Duration::from_secs(30)
        ),
        "b@hostb"
    );
    let count = "{sink, b@hostb} ! {count, self()}, receive {n, N} -> N after 2000 -> timeout end.";
    assert_eq!(
        a.eval_until(count, "400", Duration::from_secs(30)),
        "400",
        "every message arrived"
    );
}

#[test]
fn the_ca_is_rotated_as_the_readme_says_without_a_signal() {
    let c = Cluster::new();
    let mut ha = c.host("hosta");
    let mut hb = c.host("hostb");
    ha.peer(&hb);
    hb.peer(&ha);
    // Each host reads its CA from a file of its own (the bundle to edit).
    for h in [&mut ha, &mut hb] {
        std::fs::copy(
            c.path().join("certs/ca.pem"),
            c.path().join(format!("ca-{}.pem", h.name)),
        )
        .unwrap();
        h.ca = format!("ca-{}.pem", h.name);
    }
    ha.start();
    hb.start();
    let mut a = ha.node("a");
    let _b = hb.node("b");
    assert_eq!(a.eval("net_adm:ping(b@hostb)."), "pong");
    let reloads = |h: &Host| h.log().matches("certificates reloaded").count();
    let wait_reload = |h: &Host, before: usize| {
        assert!(wait_for(Duration::from_secs(10), || reloads(h) > before), "{}", h.log());
    };
    // 1. A new CA. 2. Every host trusts both.
    let newca = c.path().join("newca");
    run_ok(&["cert", "ca", "--dir", newca.to_str().unwrap()]);
    let bundle = format!(
        "{}{}",
        std::fs::read_to_string(c.path().join("certs/ca.pem")).unwrap(),
        std::fs::read_to_string(newca.join("ca.pem")).unwrap()
    );
    for h in [&ha, &hb] {
        let before = reloads(h);
        std::fs::write(c.path().join("bundle.tmp"), &bundle).unwrap();
        install(
            &c.path().join("bundle.tmp"),
            &c.path().join(format!("ca-{}.pem", h.name)),
        );
        wait_reload(h, before);
    }
    assert_eq!(a.eval("rpc:call(b@hostb, erlang, node, [])."), "b@hostb");
    // 3. Each host gets a certificate from the new CA.
    for h in [&ha, &hb] {
        run_ok(&["cert", "issue", "--dir", newca.to_str().unwrap(), "--host", &h.name]);
        let before = reloads(h);
        for ext in ["key", "pem"] {
            install(
                &newca.join(format!("{}.{ext}", h.name)),
                &c.path().join(format!("certs/{}.{ext}", h.name)),
            );
        }
        wait_reload(h, before);
    }
    assert_eq!(a.eval("erlang:disconnect_node(b@hostb)."), "true");
    assert_eq!(
        a.eval_until("net_adm:ping(b@hostb).", "pong", Duration::from_secs(5)),
        "pong"
    );
    // 4. The old CA leaves every bundle: the cluster runs on the new one.
    for h in [&ha, &hb] {
        let before = reloads(h);
        install(&newca.join("ca.pem"), &c.path().join(format!("ca-{}.pem", h.name)));
        wait_reload(h, before);
    }
    assert_eq!(a.eval("erlang:disconnect_node(b@hostb)."), "true");
    assert_eq!(
        a.eval_until("net_adm:ping(b@hostb).", "pong", Duration::from_secs(5)),
        "pong"
    );
    // A certificate of the old CA is refused now.
    let old = TlsFilesFor::old(&c);
    assert!(old.refused_by(&ha), "a certificate of the removed CA was accepted");
}

/// hostc's certificate from the original CA, for checking that a host no
/// longer trusts that CA.
struct TlsFilesFor(erlmesh::config::TlsFiles);

impl TlsFilesFor {
    fn old(c: &Cluster) -> TlsFilesFor {
        run_ok(&[
            "cert",
            "issue",
            "--dir",
            c.path().join("certs").to_str().unwrap(),
            "--host",
            "hostc",
        ]);
        // It trusts the new CA, so that only hosta's refusal can fail it.
        TlsFilesFor(erlmesh::config::TlsFiles::new(
            c.path().join("newca/ca.pem"),
            c.path().join("certs/hostc.pem"),
            c.path().join("certs/hostc.key"),
        ))
    }

    fn refused_by(&self, h: &Host) -> bool {
        let tls = erlmesh::tls::Tls::new(erlmesh::tls::TlsConfigs::load(&self.0, "hostc").unwrap());
        let d = erlmesh::tunnel::dial::Dialer::new(
            &h.name,
            &format!("127.0.0.1:{}", h.listen_port),
            tls,
            erlmesh::ops::metrics::Metrics::new([]),
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(d.names()).is_err()
    }
}
