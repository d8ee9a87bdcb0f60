//! What operators and their tooling see: systemd readiness, JSON logs.

mod common;
use common::*;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

#[test]
fn systemd_readiness_and_json_logs() {
    let c = Cluster::new();
    let sock_path = c.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut ha = c.host("hosta");
    let mut hb = c.host("hostb");
    ha.peer(&hb);
    hb.peer(&ha);
    ha.run_env
        .push(("NOTIFY_SOCKET".into(), sock_path.to_str().unwrap().into()));
    ha.run_args = vec!["--log-format".into(), "json".into()];
    ha.start();
    hb.start();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    // SIGHUP: RELOADING=1 then READY=1.
    ha.proc.as_ref().unwrap().signal(1);
    let n = sock.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("RELOADING=1"));

    let mut a = ha.node("a");
    let _b = hb.node("b");
    assert_eq!(a.eval("net_adm:ping(b@hostb)."), "pong");
    ha.proc.as_ref().unwrap().signal(15);
    ha.proc.as_mut().unwrap().wait_timeout(Duration::from_secs(10)).unwrap();
    let mut states = String::new();
    while let Ok(n) = sock.recv(&mut buf) {
        states.push_str(&String::from_utf8_lossy(&buf[..n]));
        if states.contains("STOPPING=1") {
            break;
        }
    }
    assert!(states.contains("STOPPING=1"), "{states}");

    // Every line of the log is a JSON object; the tunnel span carries the
    // peer host, the node names and the direction.
    let log = ha.log();
    let mut tunnel = None;
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{line}");
        if v["fields"]["message"] == "tunnel open" {
            tunnel = Some(v);
        }
    }
    let t = tunnel.expect("a tunnel open line");
    assert_eq!(t["span"]["peer"], "hostb", "{t}");
    assert_eq!(t["span"]["dir"], "out", "{t}");
    assert_eq!(t["span"]["from"], "a@hosta", "{t}");
    assert_eq!(t["span"]["to"], "b@hostb", "{t}");
}

fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.0 200"), "{out}");
    out
}

/// The value of the first sample line starting with `prefix`.
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn metrics_and_status_move_with_traffic() {
    let c = Cluster::new();
    let mport = free_port();
    let mut ha = c.host("hosta");
    let mut hb = c.host("hostb");
    ha.peer(&hb);
    hb.peer(&ha);
    ha.extra = format!("metrics = \"127.0.0.1:{mport}\"");
    ha.start();
    hb.start();
    let m0 = scrape(mport);
    assert!(sample(&m0, "erlmesh_cert_expiry_seconds") > 300.0 * 86400.0, "{m0}");
    let mut a = ha.node("a");
    let _b = hb.node("b");
    assert_eq!(a.eval("net_adm:ping(b@hostb)."), "pong");
    assert_eq!(
        a.eval("byte_size(rpc:call(b@hostb, erlang, list_to_binary, [lists:duplicate(3000000, $x)]))."),
        "3000000"
    );
    let m1 = scrape(mport);
    assert_eq!(sample(&m1, "erlmesh_tunnels_open{peer=\"hostb\"}"), 1.0, "{m1}");
    assert!(
        sample(&m1, "erlmesh_bytes_total{peer=\"hostb\",direction=\"In\"}") > 3_000_000.0,
        "{m1}"
    );
    let out1 = sample(&m1, "erlmesh_bytes_total{peer=\"hostb\",direction=\"Out\"}");
    assert!(out1 > 0.0, "{m1}");
    assert!(
        sample(&m1, "erlmesh_epmd_requests_total{request=\"PORT_PLEASE2\"}") >= 1.0,
        "{m1}"
    );
    assert!(
        sample(&m1, "erlmesh_epmd_requests_total{request=\"ALIVE2\"}") >= 1.0,
        "{m1}"
    );
    // More traffic, larger counters.
    assert_eq!(
        a.eval("byte_size(rpc:call(b@hostb, erlang, iolist_to_binary, [lists:duplicate(1000000, $y)]))."),
        "1000000"
    );
    let m2 = scrape(mport);
    assert!(
        sample(&m2, "erlmesh_bytes_total{peer=\"hostb\",direction=\"Out\"}") > out1 + 1_000_000.0,
        "{m2}"
    );

    // Plaintext on the TLS port, and a node speaking for another host.
    use std::io::Write;
    let mut junk = std::net::TcpStream::connect(("127.0.0.1", ha.listen_port)).unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    drop(junk);
    let mut x = ha.node_named("x@hostb");
    assert_eq!(x.eval("net_adm:ping(b@hostb)."), "pang");
    assert!(wait_for(Duration::from_secs(5), || {
        let m = scrape(mport);
        sample(&m, "erlmesh_tls_handshake_failures_total{reason=\"not_tls\"}") >= 1.0
            && sample(&m, "erlmesh_identity_refusals_total{peer=\"hostb\"}") >= 1.0
    }));

    let status = run_ok(&["status", "--config", ha.config_path().to_str().unwrap()]);
    assert!(
        status.contains("hostb") && status.contains("connected") && status.contains("cert_expires_in_days="),
        "{status}"
    );
    assert!(
        status.contains("a@hosta") && status.contains("b@hostb") && status.contains("out"),
        "{status}"
    );
    let mut hb2 = hb;
    hb2.kill();
    // The next dial fails; status says so (nodedown may come first).
    let mut status = String::new();
    let seen = wait_for(Duration::from_secs(10), || {
        assert_eq!(a.eval("net_adm:ping(b@hostb)."), "pang");
        status = run_ok(&["status", "--config", ha.config_path().to_str().unwrap()]);
        status.contains("unreachable") && status.contains("last_error=")
    });
    assert!(seen, "{status}");
}

fn doctor(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(ERLMESH)
        .arg("doctor")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn doctor_explains_healthy_and_broken_setups() {
    let c = Cluster::new();
    let (ha, hb) = c.pair("", "");
    let _a = ha.node("a");
    let _b = hb.node("b");
    let conf = ha.config_path();
    let conf = conf.to_str().unwrap();

    let (ok, out) = doctor(&["--config", conf, "--node", "a", "--cookie", "erlmesh-test"]);
    assert!(ok, "{out}");
    for want in [
        "[ok]   certificate",
        "chains to the CA",
        "more days",
        "peer hostb at 127.0.0.1:",
        "authenticates",
        "its nodes: b",
        "is not open beyond loopback",
        "node a@hosta listens on loopback only",
        "maps this host and every peer",
        "a@hosta resolves hostb to its alias 127.77.",
        "0 failed",
    ] {
        assert!(out.contains(want), "{want:?} in\n{out}");
    }

    // A node started without erlmesh's resolver file.
    let mut ha2 = c.host("hosta-bare");
    ha2.name = "hosta".into();
    ha2.epmd_port = ha.epmd_port;
    ha2.skip_env = vec!["ERL_INETRC".into()]; // same config file as hosta
    let _n = ha2.node("n");
    let (ok, out) = doctor(&["--config", conf, "--node", "n", "--cookie", "erlmesh-test"]);
    assert!(!ok);
    assert!(
        out.contains("[FAIL] n@hosta does not resolve hostb") && out.contains("fix: restart the node"),
        "{out}"
    );

    // The certificate of another host.
    let text = std::fs::read_to_string(ha.config_path()).unwrap();
    let wrong = c.path().join("wrong.toml");
    std::fs::write(&wrong, text.replace("certs/hosta.pem", "certs/hostb.pem")).unwrap();
    let (ok, out) = doctor(&["--config", wrong.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        out.contains("[FAIL] certificate:") && out.contains("not this host \"hosta\""),
        "{out}"
    );

    // An exposed epmd, no EPMD at all, no resolver file.
    let exposed = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = exposed.local_addr().unwrap().port();
    let other = c.path().join("other.toml");
    let text2 = text
        .replace(&format!("epmd_port = {}", ha.epmd_port), &format!("epmd_port = {port}"))
        .replace("state-hosta", "state-nowhere");
    std::fs::write(&other, text2).unwrap();
    let (ok, out) = doctor(&["--config", other.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        out.contains(&format!("[FAIL] EPMD port {port} is open to the network")),
        "{out}"
    );
    assert!(
        out.contains("[FAIL] resolver file") && out.contains("fix: start erlmesh"),
        "{out}"
    );

    // The peer is down.
    let mut hb = hb;
    hb.kill();
    let (ok, out) = doctor(&["--config", conf]);
    assert!(!ok);
    assert!(
        out.contains("[FAIL] peer hostb at 127.0.0.1:") && out.contains("Connection refused"),
        "{out}"
    );
}

#[test]
fn an_elixir_node_joins_an_erlang_cluster() {
    let c = Cluster::new();
    let (ha, hb) = c.pair("", "");
    let mut a = ha.node("a");
    assert_eq!(
        a.eval("ets:new(cache, [named_table, public]), ets:insert(cache, {k, <<\"from erlang\">>})."),
        "true"
    );
    let script = r#"
        true = Node.connect(:"a@hosta")
        IO.inspect(:rpc.call(:"a@hosta", :ets, :lookup, [:cache, :k]), label: "lookup")
        :ok = :rpc.call(:"a@hosta", :persistent_term, :put, [:from_elixir, String.upcase("hello")])
        IO.inspect(Node.list(), label: "nodes")
    "#;
    let mut cmd = hb.command("elixir");
    cmd.current_dir(c.path())
        .args(["--sname", "e@hostb", "--cookie", "erlmesh-test", "-e", script]);
    for (k, v) in hb.env() {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .expect("elixir (Debian's elixir package; scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("lookup: [k: \"from erlang\"]"), "{text}");
    assert!(text.contains("nodes: [:a@hosta]"), "{text}");
    assert_eq!(a.eval("persistent_term:get(from_elixir)."), "<<\"HELLO\">>");
}
