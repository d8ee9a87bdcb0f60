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
