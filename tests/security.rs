//! Attacks on a running cluster: certificates that must be refused, a peer
//! that claims another host's node, garbage and silence on the TLS port.
//! Real nodes show that the legitimate cluster keeps working meanwhile.

mod common;
use common::*;
use erlmesh::config::TlsFiles;
use erlmesh::ops::metrics::Metrics;
use erlmesh::tls::{Tls, TlsConfigs};
use erlmesh::tunnel::dial::Dialer;
use erlmesh::tunnel::preface::TunnelStatus;
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A certificate for `host` made in the test: signed by the cluster CA in
/// `dir` unless `self_signed`, valid from `from_days` to `to_days` from now.
fn make_cert(dir: &Path, tag: &str, host: &str, from_days: i64, to_days: i64, self_signed: bool) -> TlsFiles {
    let mut p = CertificateParams::new(vec![host.to_owned()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now + time::Duration::days(from_days);
    p.not_after = now + time::Duration::days(to_days);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = if self_signed {
        p.self_signed(&key).unwrap()
    } else {
        let ca_key = KeyPair::from_pem(&std::fs::read_to_string(dir.join("certs/ca.key")).unwrap()).unwrap();
        let ca = std::fs::read_to_string(dir.join("certs/ca.pem")).unwrap();
        let issuer = Issuer::from_ca_cert_pem(&ca, ca_key).unwrap();
        p.signed_by(&key, &issuer).unwrap()
    };
    let cert_path = dir.join(format!("{tag}.pem"));
    let key_path = dir.join(format!("{tag}.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    TlsFiles::new(dir.join("certs/ca.pem"), cert_path, key_path)
}

/// rustls configs as a given host would build them, without the check that
/// the certificate names that host (the attacker skips it).
fn configs(files: &TlsFiles, claimed_host: &str) -> std::sync::Arc<Tls> {
    Tls::new(TlsConfigs::load(files, claimed_host).expect("attacker configs"))
}

#[test]
fn a_valid_certificate_for_hostc_cannot_speak_for_hostb() {
    let c = Cluster::new();
    let (ha, hb) = c.pair("", "");
    let mut a = ha.node("a");
    let mut b = hb.node("b");
    let hostc = c.host("hostc"); // a real, valid cluster certificate for hostc
    let files = TlsFiles::new(
        c.path().join("certs/ca.pem"),
        c.path().join("certs/hostc.pem"),
        c.path().join("certs/hostc.key"),
    );
    let tls = configs(&files, &hostc.name);
    let dialer = Dialer::new("hosta", &format!("127.0.0.1:{}", ha.listen_port), tls, Metrics::new([])).unwrap();
    let rt = rt();
    // hostc claims to be b@hostb: refused before a byte reaches node a.
    let (status, _) = rt.block_on(dialer.tunnel("a", &send_name("b@hostb"))).unwrap();
    assert_eq!(status, TunnelStatus::NotAllowed);
    let log = ha.log();
    assert!(
        log.contains("refused: the peer's certificate does not name the host")
            && log.contains("claimed=b@hostb")
            && log.contains("peer=hostc"),
        "{log}"
    );
    // The 'n' (version 5) form is read and refused the same way.
    let mut v5 = vec![b'n', 0, 5, 0, 0x0d, 0xf7, 0xfd];
    v5.extend_from_slice(b"x@hostb");
    let mut frame = (v5.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(&v5);
    let (status, _) = rt.block_on(dialer.tunnel("a", &frame)).unwrap();
    assert_eq!(status, TunnelStatus::NotAllowed);
    // Garbage instead of a handshake: closed, no status.
    assert!(rt.block_on(dialer.tunnel("a", b"\x00\x05hello")).is_err());
    // hostc speaking for its own name reaches a (the cookie is then the lock).
    let (status, _) = rt.block_on(dialer.tunnel("a", &send_name("c@hostc"))).unwrap();
    assert_eq!(status, TunnelStatus::Ok);

    // The legitimate cluster kept working.
    assert_eq!(b.eval("net_adm:ping(a@hosta)."), "pong");
    assert_eq!(a.eval("rpc:call(b@hostb, erlang, node, [])."), "b@hostb");
}

#[test]
fn a_local_node_named_for_another_host_cannot_dial_out() {
    let c = Cluster::new();
    let (ha, hb) = c.pair("", "");
    let _b = hb.node("b");
    // A node on host A calling itself x@hostb: it would pass for a hostb node.
    let mut x = ha.node_named("x@hostb");
    assert_eq!(x.eval("net_adm:ping(b@hostb)."), "pang");
    let log = ha.log();
    assert!(
        log.contains("refused: a local node may only dial out under this host's name"),
        "{log}"
    );
    assert!(log.contains("claimed=x@hostb"), "{log}");
}

#[test]
fn per_peer_policy_hidden_nodes_and_remsh() {
    let c = Cluster::new();
    let mut ha = c.host("hosta");
    let mut hb = c.host("hostb");
    ha.peer(&hb);
    hb.peer(&ha);
    // Host A lets hostb's nodes b, h and remsh* reach its node a only.
    ha.policies.push((
        "hostb".into(),
        vec!["b".into(), "h".into(), "remsh*".into()],
        vec!["a".into()],
    ));
    ha.start();
    hb.start();
    let _a = ha.node("a");
    let _s = ha.node("secret");
    let mut b = hb.node("b");
    let mut evil = hb.node("evil");
    assert_eq!(b.eval("net_adm:ping(a@hosta)."), "pong");
    assert_eq!(
        b.eval("net_adm:ping(secret@hosta)."),
        "pang",
        "a local node outside local_nodes"
    );
    assert_eq!(evil.eval("net_adm:ping(a@hosta)."), "pang", "a peer node outside nodes");
    assert_eq!(
        b.eval("{ok, Ns} = net_adm:names(hosta), [N || {N, _} <- Ns]."),
        "[\"a\"]"
    );
    assert!(ha
        .log()
        .contains("refused: the peer's config does not allow this node pair"));

    // A hidden node.
    let mut h = hb.node_with("h", &["-hidden"]);
    assert_eq!(h.eval("net_adm:ping(a@hosta)."), "pong");
    assert_eq!(h.eval("nodes(hidden)."), "[a@hosta]");

    // erl -remsh from host B into a@hosta; the shell wants a terminal, so
    // script(1) gives it one. ^G then q leaves the shell (q() would stop a).
    let mut cmd = Command::new("timeout");
    cmd.args(["30", "sh", "-c"]);
    cmd.arg("(printf '{on, node()}.\\n'; sleep 2; printf '\\007'; sleep 0.3; printf 'q\\n'; sleep 1) | script -qec 'erl -sname remsh1@hostb -setcookie erlmesh-test -remsh a@hosta' /dev/null");
    for (k, v) in hb.env() {
        cmd.env(k, v);
    }
    let out = cmd.stderr(Stdio::null()).output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("{on,a@hosta}"), "{out}");
    assert_eq!(
        b.eval("net_adm:ping(a@hosta)."),
        "pong",
        "a still runs after the remote shell left"
    );
}

#[test]
fn bad_client_certificates_are_refused() {
    let c = Cluster::new();
    let (ha, hb) = c.pair("", "");
    let mut a = ha.node("a");
    let mut b = hb.node("b");
    let other = Cluster::new();
    let cases: Vec<(&str, TlsFiles)> = vec![
        ("expired", make_cert(c.path(), "expired", "hostb", -30, -1, false)),
        ("not yet valid", make_cert(c.path(), "future", "hostb", 2, 30, false)),
        ("self-signed", make_cert(c.path(), "selfsigned", "hostb", -1, 30, true)),
        ("other CA", {
            let mut f = make_cert(other.path(), "othercert", "hostb", -1, 30, false);
            f.ca = c.path().join("certs/ca.pem"); // trusts our CA, presents theirs
            f
        }),
    ];
    let rt = rt();
    for (what, files) in cases {
        let before = ha.log().matches("TLS handshake failed").count();
        let dialer = Dialer::new(
            "hosta",
            &format!("127.0.0.1:{}", ha.listen_port),
            configs(&files, "hostb"),
            Metrics::new([]),
        )
        .unwrap();
        let r = rt.block_on(dialer.names());
        assert!(r.is_err(), "{what}: got an answer {r:?}");
        // The server logs the refusal with the reason.
        let mut ok = false;
        for _ in 0..50 {
            if ha.log().matches("TLS handshake failed").count() > before {
                ok = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(ok, "{what}: no refusal logged\n{}", ha.log());
    }
    let log = ha.log();
    assert!(log.contains("Expired") || log.contains("expired"), "{log}");
    assert!(log.contains("UnknownIssuer") || log.contains("unknown issuer"), "{log}");
    assert_eq!(a.eval("net_adm:ping(b@hostb)."), "pong");
    assert_eq!(b.eval("rpc:call(a@hosta, erlang, node, [])."), "a@hosta");
}

/// A TLS server presenting `files` on `port`: stands in for a peer host.
fn fake_peer(rt: &tokio::runtime::Runtime, files: &TlsFiles, host: &str, port: u16) {
    let cfg = TlsConfigs::load(files, host).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg.server);
    let l = rt.block_on(tokio::net::TcpListener::bind(("127.0.0.1", port))).unwrap();
    rt.spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let acc = acceptor.clone();
            tokio::spawn(async move {
                let _ = acc.accept(s).await;
            });
        }
    });
}

#[test]
fn the_dialler_checks_the_servers_certificate() {
    let c = Cluster::new();
    let mut ha = c.host("hosta");
    let mut hb = c.host("hostb");
    let _hc = c.host("hostc");
    ha.peer(&hb);
    hb.peer(&ha);
    ha.start();
    let mut a = ha.node("a");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // Where hostb should be, a server with hostc's valid certificate.
    let hostc = TlsFiles::new(
        c.path().join("certs/ca.pem"),
        c.path().join("certs/hostc.pem"),
        c.path().join("certs/hostc.key"),
    );
    fake_peer(&rt, &hostc, "hostc", hb.listen_port);
    assert_eq!(a.eval("net_adm:ping(b@hostb)."), "pang");
    let log = ha.log();
    assert!(
        log.contains("peer unreachable") && log.contains("not valid for name \"hostb\""),
        "{log}"
    );
    drop(rt);

    // An expired certificate for hostb itself, on a real erlmesh.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let expired = make_cert(c.path(), "hostb-expired", "hostb", -30, -1, false);
    fake_peer(&rt, &expired, "hostb", hb.listen_port);
    assert_eq!(a.eval("net_adm:ping(b@hostb)."), "pang");
    assert!(ha.log().to_lowercase().contains("expired"), "{}", ha.log());
    drop(rt);

    // The real hostb: the cluster forms.
    hb.start();
    let _b = hb.node("b");
    assert_eq!(
        a.eval_until("net_adm:ping(b@hostb).", "pong", Duration::from_secs(10)),
        "pong"
    );
}

#[test]
fn garbage_and_silence_on_the_tls_port() {
    let c = Cluster::new();
    let (ha, hb) = c.pair("handshake_timeout_secs = 1", "");
    let mut a = ha.node("a");
    let mut b = hb.node("b");
    let port = ha.listen_port;
    let send = |bytes: &[u8]| -> Vec<u8> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    };
    // Plaintext EPMD and HTTP: an alert at most, never a name.
    for probe in [&b"\x00\x01n"[..], b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00\x02zb"] {
        let out = send(probe);
        assert!(
            !String::from_utf8_lossy(&out).contains("hosta") && out.len() < 16,
            "{out:?}"
        );
    }
    // A truncated ClientHello, then random bytes.
    let _ = send(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc]);
    let noise: Vec<u8> = (0..20000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let _ = send(&noise);
    // Silent clients lose their slot at the first-bytes deadline.
    let silent: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 16];
        assert!(matches!(s.read(&mut buf), Ok(0)), "a silent client was not closed");
    }
    assert!(
        ha.log_shows("no TLS bytes within 2s", Duration::from_secs(10)),
        "{}",
        ha.log()
    );
    assert!(!ha.log().contains("panicked"));
    // The cluster carried on.
    assert_eq!(a.eval("net_adm:ping(b@hostb)."), "pong");
    assert_eq!(b.eval("rpc:call(a@hosta, erlang, node, [])."), "a@hosta");
}

#[test]
fn openssl_without_a_client_certificate_gets_nothing() {
    let c = Cluster::new();
    let (ha, _hb) = c.pair("", "");
    let _a = ha.node("a");
    let run = |args: &[&str], input: &[u8]| -> String {
        let mut child = Command::new("openssl")
            .arg("s_client")
            .args([
                "-connect",
                &format!("127.0.0.1:{}", ha.listen_port),
                "-servername",
                "hosta",
            ])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
    };
    let ca = c.path().join("certs/ca.pem");
    // TLS 1.3 without a client certificate, asking NAMES through a preface.
    let out = run(
        &["-tls1_3", "-ign_eof", "-CAfile", ca.to_str().unwrap()],
        b"EMSH\x01\x02\x00",
    );
    assert!(out.contains("certificate required"), "{out}");
    assert!(!out.contains("name a at") && !out.contains("\x01a"), "{out}");
    // TLS 1.2 is not offered unless configured.
    let out = run(&["-tls1_2", "-ign_eof"], b"");
    assert!(
        out.contains("alert protocol version") || out.contains("no protocols available"),
        "{out}"
    );
    // With a valid client certificate the same request is answered.
    let cert: PathBuf = c.path().join("certs/hostb.pem");
    let key: PathBuf = c.path().join("certs/hostb.key");
    let out = run(
        &[
            "-tls1_3",
            "-CAfile",
            ca.to_str().unwrap(),
            "-cert",
            cert.to_str().unwrap(),
            "-key",
            key.to_str().unwrap(),
            "-ign_eof",
        ],
        b"EMSH\x01\x02\x00",
    );
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(
        out.contains("\x00\x01\x01a"),
        "NAMES answer with node a expected: {out}"
    );
}

#[test]
fn an_exposed_epmd_port_stops_the_start_and_an_exposed_node_is_warned_about() {
    let c = Cluster::new();
    let mut ha = c.host("hosta");
    // Something (an epmd started without ERL_EPMD_ADDRESS) on 0.0.0.0.
    let exposed = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    ha.epmd_port = exposed.local_addr().unwrap().port();
    ha.write_config();
    let out = Command::new(ERLMESH)
        .args(["run", "--config", ha.config_path().to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("is open to the network") && err.contains("ERL_EPMD_ADDRESS=127.0.0.1"),
        "{err}"
    );
    drop(exposed);

    // A node started without inet_dist_use_interface listens on 0.0.0.0.
    ha.epmd_port = free_port();
    ha.start();
    ha.skip_env = vec!["ERL_ZFLAGS".into()];
    let _n = ha.node_with("n", &["-start_epmd", "false"]);
    assert!(
        ha.log_shows("distribution port is open to the network", Duration::from_secs(5)),
        "{}",
        ha.log()
    );
}

#[test]
fn a_certificate_close_to_expiry_is_warned_about() {
    let c = Cluster::new();
    let mut ha = c.host("hosta");
    run_ok(&[
        "cert",
        "issue",
        "--dir",
        c.path().join("certs").to_str().unwrap(),
        "--host",
        "hosta",
        "--days",
        "10",
        "--force",
    ]);
    ha.start();
    assert!(
        ha.log_shows("certificate expires soon", Duration::from_secs(10)) && ha.log().contains("days_left="),
        "{}",
        ha.log()
    );
    let shown = Command::new(ERLMESH)
        .args([
            "cert",
            "show",
            c.path().join("certs/hosta.pem").to_str().unwrap(),
            "--ca",
        ])
        .arg(c.path().join("certs/ca.pem"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.status.success(), "{text}");
    assert!(
        text.contains("names:       hosta") && text.contains(" days left)") && text.contains(": yes"),
        "{text}"
    );
}

#[test]
fn tls13_only_an_old_min_version_key_is_refused_and_tls12_gets_nothing() {
    let c = Cluster::new();
    let mut ha = c.host("hosta");
    ha.tls_extra = "min_version = \"1.2\"".into();
    ha.write_config();
    let out = Command::new(ERLMESH)
        .args(["run", "--config", ha.config_path().to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("tls.min_version") && err.contains("TLS 1.3 only"), "{err}");
    ha.tls_extra = String::new();
    ha.start();
    let certs = c.path().join("certs");
    let _hb = c.host("hostb");
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-tls1_2",
            "-ign_eof",
            "-connect",
            &format!("127.0.0.1:{}", ha.listen_port),
        ])
        .arg("-CAfile")
        .arg(certs.join("ca.pem"))
        .arg("-cert")
        .arg(certs.join("hostb.pem"))
        .arg("-key")
        .arg(certs.join("hostb.key"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            ch.stdin.take().unwrap().write_all(b"EMSH\x01\x02\x00")?;
            ch.wait_with_output()
        })
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!text.contains("\x00\x01\x01"), "{text}");
    assert!(!out.status.success() || text.contains("Cipher is (NONE)"), "{text}");
}
