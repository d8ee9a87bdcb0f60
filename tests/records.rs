//! The record layer under attack from a member: a raw client holding
//! hostc's valid certificate opens tunnels to hostb's nodes through hostb's
//! erlmesh and sends, sealed with each tunnel's real keys, records that
//! OTP's nodes never make erlmesh send: KeyUpdate floods, zero-length
//! records, an over-long inner plaintext, split handshake messages, a
//! ticket from a client, a bare FIN. Each must end only that tunnel (or
//! pass, where RFC 8446 allows it) with the alert the RFC names, while
//! a@hosta keeps using b@hostb; and each suite erlmesh offers carries a
//! real cluster.

mod common;
use common::*;
use erlmesh::config::TlsFiles;
use erlmesh::tls::{Tls, TlsConfigs};
use erlmesh::tunnel::dial::{Dialer, Tunnel};
use erlmesh::tunnel::preface::TunnelStatus;
use erlmesh::tunnel::record::{send_record, MAX_IDLE_RECORDS, MAX_PLAINTEXT};
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

const APPLICATION_DATA: u8 = 23;
const HANDSHAKE: u8 = 22;
const ALERT: u8 = 21;
const KEY_UPDATE: [u8; 5] = [24, 0, 0, 1, 0];

struct Story {
    c: Cluster,
    ha: Host,
    hb: Host,
}

/// hosta, hostb and hostc's certificate (no hostc erlmesh: the attacker
/// holds its certificate).
fn story() -> Story {
    let c = Cluster::new();
    let (ha, hb) = hosts(&c, "");
    Story { c, ha, hb }
}

/// hosta and hostb, peers of each other, with `tls` in both [tls] tables;
/// hostb also lists hostc (whose certificate is issued; nothing listens
/// at its address).
fn hosts(c: &Cluster, tls: &str) -> (Host, Host) {
    let mut ha = c.host("hosta");
    let mut hb = c.host("hostb");
    let hc = c.host("hostc");
    ha.peer(&hb);
    hb.peer(&ha);
    hb.peer(&hc);
    ha.tls_extra = tls.into();
    hb.tls_extra = tls.into();
    ha.start();
    hb.start();
    (ha, hb)
}

fn attacker(s: &Story) -> Dialer {
    let files = TlsFiles::new(
        s.c.path().join("certs/ca.pem"),
        s.c.path().join("certs/hostc.pem"),
        s.c.path().join("certs/hostc.key"),
    );
    let tls = Tls::new(TlsConfigs::load(&files, "hostc").unwrap());
    Dialer::new(
        "hostb",
        &format!("127.0.0.1:{}", s.hb.listen_port),
        tls,
        erlmesh::ops::metrics::Metrics::new([]),
    )
    .unwrap()
}

/// A tunnel to hostb's node `node` as a fresh node of hostc's (b's node
/// answers one connection attempt per node name at a time), past the
/// status byte.
async fn open(d: &Dialer, node: &str) -> Tunnel {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (status, t) = d.tunnel(node, &send_name(&format!("x{n}@hostc"))).await.unwrap();
    assert_eq!(status, TunnelStatus::Ok);
    t
}

/// Reads the tunnel's records until it ends; how it ended (the error's
/// text: an alert from hostb's erlmesh, close_notify, or a truncation).
async fn ending(t: &mut Tunnel) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), t.rx.first(&mut t.tcp)).await {
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => return e.to_string(),
            Err(_) => return "still open after 10 s".into(),
        }
    }
}

/// a@hosta's rpc round trips to b@hostb: (calls that failed, median µs).
fn rtt(a: &mut Node, n: u32) -> (u32, u64) {
    let out = a.eval(&format!(
        "begin Ts = [timer:tc(rpc, call, [b@hostb, erlang, node, []]) || _ <- lists:seq(1, {n})], \
         Bad = length([x || {{_, R}} <- Ts, R =/= b@hostb]), \
         S = lists:sort([T || {{T, _}} <- Ts]), {{Bad, lists:nth({n} div 2, S)}} end."
    ));
    let (bad, p50) = out
        .trim_matches(|c| c == '{' || c == '}')
        .split_once(',')
        .unwrap_or_else(|| panic!("{out}"));
    (bad.parse().unwrap(), p50.parse().unwrap())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Invariant: a member's records cost hostb's erlmesh at most
/// MAX_IDLE_RECORDS key derivations per record of data. A burst past the
/// bound ends that tunnel with unexpected_message before its data; a flood
/// at the bound (32 KeyUpdates before each byte, as fast as one client can)
/// on four tunnels is carried, and a@hosta's calls to b never fail while
/// either runs. The round trips before and during are printed (a figure,
/// not a pass condition).
#[test]
fn key_update_floods_are_bounded_and_the_cluster_keeps_working() {
    let s = story();
    let mut a = s.ha.node("a");
    let _b = s.hb.node("b");
    assert_eq!(a.eval("net_adm:ping(b@hostb)."), "pong");
    let (bad, before) = rtt(&mut a, 300);
    assert_eq!(bad, 0);
    let d = std::sync::Arc::new(attacker(&s));

    // Bursts: 10 000 KeyUpdates in one write, then data.
    let bursts = rt().block_on(async {
        let mut out = Vec::new();
        for _ in 0..3 {
            let mut t = open(&d, "b").await;
            let mut wire = Vec::new();
            for _ in 0..10_000 {
                send_record(&mut wire, &mut t.tx, &KEY_UPDATE, HANDSHAKE, 0)
                    .await
                    .unwrap();
            }
            send_record(&mut wire, &mut t.tx, b"late", APPLICATION_DATA, 0)
                .await
                .unwrap();
            // hostb's erlmesh may cut the connection while this is written.
            let _ = t.tcp.write_all(&wire).await;
            out.push(ending(&mut t).await);
        }
        out
    });
    for e in &bursts {
        assert!(e.contains("TLS alert 10 from the peer"), "{e}");
    }
    assert!(
        s.hb.log()
            .contains("too many records in a row without application data"),
        "{}",
        s.hb.log()
    );

    // At the bound, on four tunnels, for three seconds, while a measures.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            let (d, stop) = (d.clone(), stop.clone());
            std::thread::spawn(move || {
                rt().block_on(async {
                    let mut t = open(&d, "b").await;
                    // A challenge reply's length, then a byte per round: b's
                    // node waits for the rest (its handshake timer is 7 s).
                    let mut rounds = 0u32;
                    let mut wire = Vec::new();
                    send_record(&mut wire, &mut t.tx, &[0], APPLICATION_DATA, 0)
                        .await
                        .unwrap();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) && rounds < 250 {
                        for _ in 0..MAX_IDLE_RECORDS {
                            send_record(&mut wire, &mut t.tx, &KEY_UPDATE, HANDSHAKE, 0)
                                .await
                                .unwrap();
                        }
                        send_record(&mut wire, &mut t.tx, &[255], APPLICATION_DATA, 0)
                            .await
                            .unwrap();
                        if let Err(e) = t.tcp.write_all(&wire).await {
                            return (rounds, Some(e.to_string()));
                        }
                        wire.clear();
                        rounds += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    (rounds, None)
                })
            })
        })
        .collect();
    let started = Instant::now();
    let (bad, during) = rtt(&mut a, 300);
    while started.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let ends: Vec<(u32, Option<String>)> = flooders.into_iter().map(|f| f.join().unwrap()).collect();
    assert_eq!(bad, 0, "a's calls failed during the flood");
    assert!(
        ends.iter().all(|(r, e)| *r > 10 && e.is_none()),
        "the flood at the bound was cut off: {ends:?}\n{}",
        s.hb.log()
    );
    let rounds: Vec<u32> = ends.iter().map(|(r, _)| *r).collect();
    eprintln!(
        "KeyUpdate flood: rpc round trip p50 {before} µs before, {during} µs during ({} KeyUpdates carried)",
        rounds.iter().sum::<u32>() * MAX_IDLE_RECORDS
    );
    assert_eq!(a.eval("net_adm:ping(b@hostb)."), "pong");
}

/// Zero-length application data (§5.1) and a KeyUpdate split across two
/// records pass: a challenge reply cut into pieces between them reaches
/// b@hostb whole (b rejects its digest and closes, which reaches the
/// attacker as close_notify, not as an alert).
#[test]
fn zero_length_records_and_split_key_updates_pass() {
    let s = story();
    let mut a = s.ha.node("a");
    let b = s.hb.node("b");
    let mut reply = vec![0, 21, b'r'];
    reply.extend([7u8; 20]);
    let end = rt().block_on(async {
        let d = attacker(&s);
        let mut t = open(&d, "b").await;
        let mut wire = Vec::new();
        let tx = &mut t.tx;
        send_record(&mut wire, tx, &[], APPLICATION_DATA, 0).await.unwrap();
        send_record(&mut wire, tx, &reply[..2], APPLICATION_DATA, 0)
            .await
            .unwrap();
        for _ in 0..5 {
            send_record(&mut wire, tx, &[], APPLICATION_DATA, 30).await.unwrap();
        }
        send_record(&mut wire, tx, &KEY_UPDATE[..2], HANDSHAKE, 0)
            .await
            .unwrap();
        send_record(&mut wire, tx, &KEY_UPDATE[2..], HANDSHAKE, 0)
            .await
            .unwrap();
        // The sender moves to the next key only on a whole KeyUpdate.
        let mut next = Vec::new();
        send_record(&mut next, tx, &KEY_UPDATE, HANDSHAKE, 0).await.unwrap();
        send_record(&mut wire, tx, &reply[2..10], APPLICATION_DATA, 0)
            .await
            .unwrap();
        send_record(&mut wire, tx, &[], APPLICATION_DATA, 0).await.unwrap();
        send_record(&mut wire, tx, &reply[10..], APPLICATION_DATA, 0)
            .await
            .unwrap();
        t.tcp.write_all(&wire).await.unwrap();
        ending(&mut t).await
    });
    assert!(end.contains("close_notify"), "{end}\n{}", s.hb.log());
    assert!(
        wait_for(Duration::from_secs(5), || b.logs().contains("Invalid challenge reply")),
        "b never had the whole challenge reply:\n{}",
        b.logs()
    );
    assert_eq!(a.eval("net_adm:ping(b@hostb)."), "pong");
}

/// Records RFC 8446 makes fatal, each on its own tunnel: the alert it
/// names comes back and hostb's log says why; a@hosta is untouched.
#[test]
fn fatal_records_end_only_their_tunnel_with_their_alert() {
    let s = story();
    let mut a = s.ha.node("a");
    let _b = s.hb.node("b");
    assert_eq!(a.eval("net_adm:ping(b@hostb)."), "pong");
    let mut ticket = vec![4u8, 0, 0, 40];
    ticket.extend([1u8; 40]);
    // (records: content, inner type, padding), the alert, the log's words.
    type Records = Vec<(Vec<u8>, u8, usize)>;
    let cases: Vec<(&str, Records, u8, &str)> = vec![
        (
            "over-long inner plaintext",
            vec![(vec![0; MAX_PLAINTEXT], APPLICATION_DATA, 1)],
            22,
            "inner plaintext too long",
        ),
        (
            "a split ticket from a client",
            vec![
                (ticket[..10].to_vec(), HANDSHAKE, 0),
                (ticket[10..].to_vec(), HANDSHAKE, 0),
            ],
            10,
            "NewSessionTicket from a client",
        ),
        (
            "data inside a split handshake message",
            vec![(KEY_UPDATE[..2].to_vec(), HANDSHAKE, 0), (vec![1], APPLICATION_DATA, 0)],
            10,
            "inside a split handshake message",
        ),
        (
            "an empty handshake record",
            vec![(vec![], HANDSHAKE, 0)],
            10,
            "empty handshake record",
        ),
        (
            "a bad KeyUpdate",
            vec![(vec![24, 0, 0, 1, 7], HANDSHAKE, 0)],
            47,
            "bad request value",
        ),
        (
            "an unknown inner type",
            vec![(vec![1, 2], 99, 0)],
            10,
            "unknown inner content type",
        ),
    ];
    let d = attacker(&s);
    for (what, records, alert, why) in cases {
        let end = rt().block_on(async {
            let mut t = open(&d, "b").await;
            for (content, ctype, pad) in &records {
                send_record(&mut t.tcp, &mut t.tx, content, *ctype, *pad).await.unwrap();
            }
            ending(&mut t).await
        });
        assert!(
            end.contains(&format!("TLS alert {alert} from the peer")),
            "{what}: {end}"
        );
        assert!(
            wait_for(Duration::from_secs(5), || s.hb.log().contains(why)),
            "{what}: {}",
            s.hb.log()
        );
        assert_eq!(a.eval("net_adm:ping(b@hostb)."), "pong", "{what}");
    }
}

/// A node of hostb's as its connection sees things: registered with
/// hostb's EPMD, it accepts the tunnel's connection and answers `sok`.
struct FakeNode {
    _registration: std::net::TcpStream,
    listener: std::net::TcpListener,
}

impl FakeNode {
    fn register(epmd_port: u16, name: &str) -> FakeNode {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut req = vec![120u8];
        req.extend(port.to_be_bytes());
        req.extend([77, 0, 0, 6, 0, 5]);
        req.extend((name.len() as u16).to_be_bytes());
        req.extend(name.as_bytes());
        req.extend([0, 0]);
        let mut reg = std::net::TcpStream::connect(("127.0.0.1", epmd_port)).unwrap();
        let mut frame = (req.len() as u16).to_be_bytes().to_vec();
        frame.extend(req);
        reg.write_all(&frame).unwrap();
        let mut resp = [0u8; 2];
        reg.read_exact(&mut resp).unwrap();
        assert_eq!(resp[1], 0, "registration refused");
        FakeNode {
            _registration: reg,
            listener,
        }
    }

    /// The tunnel's connection, past its send_name and the `sok` answer.
    fn accept(&self) -> std::net::TcpStream {
        let (mut s, _) = self.listener.accept().unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).unwrap();
        let mut name = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut name).unwrap();
        s.write_all(&[0, 3, b's', b'o', b'k']).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }
}

/// §6.1: a bare FIN from the peer is a truncation. The node's connection
/// is reset (it never sees a clean end of stream), and the peer gets an
/// error alert; after close_notify the node sees a clean end.
#[test]
fn a_bare_fin_resets_the_node_and_close_notify_closes_it() {
    let s = story();
    let fake = FakeNode::register(s.hb.epmd_port, "fake");
    let d = attacker(&s);
    let rt = rt();
    let fake = std::sync::Arc::new(fake);
    for clean in [false, true] {
        // erlmesh waits for the node's answer before the tunnel's status.
        let accepting = {
            let fake = fake.clone();
            std::thread::spawn(move || fake.accept())
        };
        let mut t = rt.block_on(open(&d, "fake"));
        let mut node = accepting.join().unwrap();
        rt.block_on(async {
            send_record(&mut t.tcp, &mut t.tx, b"hello", APPLICATION_DATA, 0)
                .await
                .unwrap();
            if clean {
                send_record(&mut t.tcp, &mut t.tx, &[1, 0], ALERT, 0).await.unwrap();
            }
            t.tcp.shutdown().await.unwrap();
        });
        let mut got = [0u8; 5];
        node.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        let mut rest = Vec::new();
        let end = node.read_to_end(&mut rest);
        if clean {
            assert!(
                matches!(end, Ok(0)),
                "close_notify did not reach the node as a clean end: {end:?}"
            );
            node.shutdown(std::net::Shutdown::Write).unwrap();
            assert!(rt.block_on(ending(&mut t)).contains("close_notify"));
        } else {
            let e = end.expect_err("a truncation reached the node as a clean end");
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
            let end = rt.block_on(ending(&mut t));
            assert!(end.contains("TLS alert 80 from the peer"), "{end}");
        }
    }
    assert!(
        s.hb.log_shows("without close_notify (truncation)", Duration::from_secs(10)),
        "{}",
        s.hb.log()
    );
}

/// A host that does not offer AEGIS (an older erlmesh, or one whose
/// `tls.cipher_suites` leaves it out) still connects to one that prefers
/// it, in either role: the two negotiate the next suite they share, and
/// the tunnel's log line names it on both hosts.
#[test]
fn a_host_without_aegis_negotiates_the_next_suite() {
    if !erlmesh::tls::Suite::Aegis128X2.usable() {
        eprintln!("this CPU has no AES instructions: erlmesh offers no AEGIS here");
        assert!(!erlmesh::tls::Suite::default_order().contains(&erlmesh::tls::Suite::Aegis128X2));
        return;
    }
    let c = Cluster::new();
    let mut ha = c.host("hosta");
    let mut hb = c.host("hostb");
    let mut hc = c.host("hostc");
    ha.peer(&hb);
    hb.peer(&ha);
    ha.peer(&hc);
    hc.peer(&ha);
    hb.tls_extra = "cipher_suites = [\"TLS13_AES_256_GCM_SHA384\", \"TLS13_AES_128_GCM_SHA256\"]".into();
    ha.start();
    hb.start();
    hc.start();
    let mut a = ha.node("a");
    let mut b = hb.node("b");
    let _a2 = ha.node("a2");
    // a dials b: b accepts and its order decides (AES-256-GCM); b dials a2:
    // a accepts and its order decides (its first suite b offers: AES-128-GCM).
    assert_eq!(a.eval("net_adm:ping(b@hostb)."), "pong");
    assert_eq!(b.eval("net_adm:ping(a2@hosta)."), "pong");
    for h in [&ha, &hb] {
        for suite in ["TLS13_AES_256_GCM_SHA384", "TLS13_AES_128_GCM_SHA256"] {
            let said = format!("suite={suite}");
            assert!(h.log_shows(&said, Duration::from_secs(10)), "{said}: {}", h.log());
        }
        assert!(!h.log().contains("suite=TLS13_AEGIS"), "{}", h.log());
    }
    // Between two hosts that both offer it, AEGIS is the suite.
    let _c = hc.node("c");
    assert_eq!(a.eval("net_adm:ping(c@hostc)."), "pong");
    assert!(
        hc.log_shows("suite=TLS13_AEGIS_128X2_SHA256", Duration::from_secs(10)),
        "{}",
        hc.log()
    );
}

/// Every suite erlmesh offers carries a cluster when both hosts are set to
/// it alone (`tls.cipher_suites`), and the tunnel's log line names it, with
/// the two hosts' record layers on different providers' code (aws-lc-rs on
/// one, ring on the other, then the other way: `tls.record_provider`); two
/// hosts with no suite in common never connect, and the log says why.
#[test]
fn every_suite_carries_a_cluster() {
    for (i, suite) in erlmesh::tls::Suite::ALL.into_iter().enumerate() {
        let c = Cluster::new();
        let providers = if i % 2 == 0 {
            ["aws-lc-rs", "ring"]
        } else {
            ["ring", "aws-lc-rs"]
        };
        let suites = format!("cipher_suites = [\"{}\"]", suite.name());
        let mut ha = c.host("hosta");
        let mut hb = c.host("hostb");
        ha.peer(&hb);
        hb.peer(&ha);
        ha.tls_extra = format!("{suites}\nrecord_provider = \"{}\"", providers[0]);
        hb.tls_extra = format!("{suites}\nrecord_provider = \"{}\"", providers[1]);
        ha.start();
        hb.start();
        for (h, p) in [(&ha, providers[0]), (&hb, providers[1])] {
            let said = format!("provider={p} chosen=by tls.record_provider");
            assert!(h.log_shows(&said, Duration::from_secs(10)), "{said}: {}", h.log());
        }
        let mut a = ha.node("a");
        let _b = hb.node("b");
        assert_eq!(a.eval("net_adm:ping(b@hostb)."), "pong", "{suite:?}");
        assert_eq!(
            a.eval("B = crypto:strong_rand_bytes(1000000), erlang:md5(rpc:call(b@hostb, erlang, iolist_to_binary, [B])) =:= erlang:md5(B)."),
            "true"
        );
        let named = format!("suite={}", suite.name());
        assert!(ha.log_shows(&named, Duration::from_secs(10)), "{suite:?}: {}", ha.log());
        assert!(hb.log_shows(&named, Duration::from_secs(10)), "{}", hb.log());
    }
    let c = Cluster::new();
    let mut ha = c.host("hosta");
    let mut hb = c.host("hostb");
    ha.peer(&hb);
    hb.peer(&ha);
    ha.tls_extra = "cipher_suites = [\"TLS13_AES_128_GCM_SHA256\"]".into();
    hb.tls_extra = "cipher_suites = [\"TLS13_CHACHA20_POLY1305_SHA256\"]".into();
    ha.start();
    hb.start();
    let mut a = ha.node("a");
    let _b = hb.node("b");
    assert_eq!(a.eval("net_adm:ping(b@hostb)."), "pang");
    // Each side logs the failed handshake after its alert is on the wire, so
    // the ping's answer can come before the lines: wait for them.
    let said = || (ha.log() + &hb.log()).to_lowercase().contains("cipher");
    assert!(wait_for(Duration::from_secs(10), said), "{}{}", ha.log(), hb.log());
}
