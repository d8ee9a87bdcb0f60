//! The EPMD erlmesh serves: to real nodes, to raw clients sending
//! administrative requests and garbage, and the system-epmd mode with OTP's
//! own epmd.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

fn ask(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(bytes).unwrap();
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn administrative_requests_are_answered_and_never_obeyed() {
    let c = Cluster::new();
    let mut h = c.host("hosta");
    h.start();
    let mut a = h.node("a");

    assert_eq!(ask(h.epmd_port, &[0, 1, 107]), b"NO", "KILL");
    assert_eq!(ask(h.epmd_port, &[0, 2, 115, b'a']), b"STOP_DISABLED", "STOP");
    let dump = ask(h.epmd_port, &[0, 1, 100]);
    assert_eq!(&dump[..4], &(h.epmd_port as u32).to_be_bytes());
    assert!(String::from_utf8_lossy(&dump[4..]).contains("<a> at port"), "{dump:?}");
    let names = ask(h.epmd_port, &[0, 1, 110]);
    assert!(String::from_utf8_lossy(&names[4..]).starts_with("name a at port "));
    // Still alive and a still registered after all that.
    assert_eq!(a.eval("{ok, Ns} = net_adm:names(), [N || {N, _} <- Ns]."), "[\"a\"]");
}

#[test]
fn garbage_closes_only_that_connection() {
    let c = Cluster::new();
    let mut h = c.host("hosta");
    h.start();
    let mut a = h.node("a");
    // An unknown request type, an oversized length, random bytes, a
    // truncated request followed by a close.
    assert_eq!(ask(h.epmd_port, &[0, 1, 1]), b"");
    assert_eq!(ask(h.epmd_port, &[0xff, 0xff, 0, 0]), b"");
    let noise: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let _ = ask(h.epmd_port, &noise);
    assert_eq!(ask(h.epmd_port, &[0, 14, 120, 1]), b"");
    // PORT_PLEASE2 for an unknown node: not found.
    assert_eq!(ask(h.epmd_port, b"\x00\x02zq"), [119, 1]);
    let log = h.log();
    assert!(log.contains("unknown request type 1"), "{log}");
    assert!(log.contains("exceeds the limit"), "{log}");
    assert!(!log.contains("panicked"));
    assert_eq!(a.eval("{ok, Ns} = net_adm:names(), [N || {N, _} <- Ns]."), "[\"a\"]");
    let t = h.node("t");
    drop(t);
}

#[test]
fn an_old_node_gets_a_16_bit_creation() {
    let c = Cluster::new();
    let mut h = c.host("hosta");
    h.start();
    // ALIVE2 announcing highest version 5, as OTP 22 and older do.
    let mut s = TcpStream::connect(("127.0.0.1", h.epmd_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[0, 14, 120, 0x30, 0x39, 77, 0, 0, 5, 0, 5, 0, 1, b'o', 0, 0])
        .unwrap();
    let mut resp = [0u8; 4];
    s.read_exact(&mut resp).unwrap();
    assert_eq!(&resp[..2], &[121, 0]);
    assert!((1..=3).contains(&u16::from_be_bytes([resp[2], resp[3]])));
    // Registered while the connection stays open; a second one is refused.
    let port = ask(h.epmd_port, b"\x00\x02zo");
    assert_eq!(&port[..4], &[119, 0, 0x30, 0x39]);
    let mut dup = TcpStream::connect(("127.0.0.1", h.epmd_port)).unwrap();
    dup.write_all(&[0, 14, 120, 0x30, 0x40, 77, 0, 0, 6, 0, 5, 0, 1, b'o', 0, 0])
        .unwrap();
    let mut r = [0u8; 2];
    dup.read_exact(&mut r).unwrap();
    assert_eq!(r, [118, 1]);
    drop(s);
    // Closing the registration connection frees the name.
    let mut gone = Vec::new();
    for _ in 0..50 {
        gone = ask(h.epmd_port, b"\x00\x02zo");
        if gone == [119, 1] {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(gone, [119, 1]);
}

#[test]
fn system_epmd_mode_with_otps_epmd() {
    let c = Cluster::new();
    let mut ha = c.host("hosta");
    let mut hb = c.host("hostb");
    ha.peer(&hb);
    hb.peer(&ha);
    hb.extra = "epmd = \"system\"".into();
    let child = Command::new("epmd")
        .args(["-address", "127.0.0.1", "-port", &hb.epmd_port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _epmd = Proc {
        child,
        what: "epmd".into(),
    };
    std::thread::sleep(Duration::from_millis(300));
    ha.start();
    hb.start();
    let env = hb.env();
    assert!(env.iter().any(|(k, v)| k == "ERL_EPMD_ADDRESS" && v == "127.0.0.1"));
    let mut b = hb.node("b");
    let mut a = ha.node("a");
    assert_eq!(a.eval("net_adm:ping(b@hostb)."), "pong", "{}", hb.log());
    assert_eq!(b.eval("rpc:call(a@hosta, erlang, node, [])."), "a@hosta");
    assert_eq!(
        a.eval("{ok, Ns} = net_adm:names(hostb), [N || {N, _} <- Ns]."),
        "[\"b\"]"
    );
}
