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
