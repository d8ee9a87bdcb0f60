use super::keys::{Keys, Side};
use super::reader::Opened;
use super::testing::send_record;
use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn reader(peer: Side) -> Reader {
    Reader::new(Keys::fixed(DEFAULT_RECORDS_PER_KEY).unwrap(), peer)
}

/// A sender with the fixed keys, answering `rx`'s requests.
fn sender_for(rx: &Reader, records_per_key: u64) -> Sender {
    Sender::new(Keys::fixed(records_per_key).unwrap(), rx)
}

/// A sender whose records a [`reader`] opens (the same fixed keys).
fn sender() -> Sender {
    sender_for(&reader(Side::Client), DEFAULT_RECORDS_PER_KEY)
}

fn fatal_alert(err: &io::Error) -> u8 {
    err.get_ref()
        .and_then(|e| e.downcast_ref::<Fatal>())
        .unwrap_or_else(|| panic!("not a fatal error: {err}"))
        .alert
}

/// Opens every record of `wire`; the contents of its data records, or the
/// first error.
fn open_all(rx: &mut Reader, wire: &[u8]) -> io::Result<Vec<Vec<u8>>> {
    if rx.buf.len() < wire.len() {
        rx.buf.resize(wire.len(), 0);
    }
    rx.buf[..wire.len()].copy_from_slice(wire);
    (rx.start, rx.end) = (0, wire.len());
    let mut out = Vec::new();
    while let Some(o) = rx.open_next()? {
        match o {
            Opened::Data(r) => out.push(rx.buf[r].to_vec()),
            Opened::Skip => {}
            Opened::Closed => break,
        }
    }
    Ok(out)
}

const KEY_UPDATE_NOT_REQUESTED: [u8; 5] = [KEY_UPDATE, 0, 0, 1, 0];
const KEY_UPDATE_REQUESTED: [u8; 5] = [KEY_UPDATE, 0, 0, 1, 1];

#[tokio::test]
async fn records_round_trip_and_are_checked() {
    let mut tx = sender();
    let mut wire = Vec::new();
    send(&mut wire, &mut tx, b"status").await.unwrap();
    send_record(&mut wire, &mut tx, &[NEW_SESSION_TICKET, 0, 0, 0], HANDSHAKE, 0)
        .await
        .unwrap();
    send(&mut wire, &mut tx, &vec![0xab; MAX_PLAINTEXT]).await.unwrap();
    let mut rx = reader(Side::Server);
    let mut r = &wire[..];
    assert_eq!(rx.first(&mut r).await.unwrap(), b"status");
    assert_eq!(rx.first(&mut r).await.unwrap(), vec![0xab; MAX_PLAINTEXT]);

    // A flipped bit anywhere fails authentication.
    let mut wire = Vec::new();
    send(&mut wire, &mut sender(), b"hello").await.unwrap();
    wire[7] ^= 1;
    let err = reader(Side::Server).first(&mut &wire[..]).await.unwrap_err();
    assert_eq!(fatal_alert(&err), BAD_RECORD_MAC);
}

#[tokio::test]
async fn change_cipher_spec_and_unknown_records_are_fatal() {
    let mut bad_mac = vec![APPLICATION_DATA, 3, 3, 0, 17];
    bad_mac.extend([0u8; 17]);
    for (record, alert) in [
        (vec![CHANGE_CIPHER_SPEC, 3, 3, 0, 1, 1], UNEXPECTED_MESSAGE),
        (vec![HANDSHAKE, 3, 3, 0, 1, 1], UNEXPECTED_MESSAGE),
        (vec![APPLICATION_DATA, 3, 3, 0xff, 0xff], RECORD_OVERFLOW),
        (bad_mac, BAD_RECORD_MAC),
    ] {
        let err = reader(Side::Server).first(&mut &record[..]).await.unwrap_err();
        assert_eq!(fatal_alert(&err), alert, "{record:?}: {err}");
    }
    // A handshake message other than a ticket or a KeyUpdate.
    let mut wire = Vec::new();
    send_record(&mut wire, &mut sender(), &[1, 0, 0, 0], HANDSHAKE, 0)
        .await
        .unwrap();
    let err = reader(Side::Server).first(&mut &wire[..]).await.unwrap_err();
    assert!(
        err.to_string().contains("handshake message after the handshake"),
        "{err}"
    );
}

#[tokio::test]
async fn consecutive_records_without_data_are_bounded() {
    // Up to the bound, KeyUpdates (and the other kinds of records without
    // data) pass, and data after them resets the count: a peer that
    // updates its key before every record is not cut off.
    let mut tx = sender();
    let mut wire = Vec::new();
    for round in 0..3u8 {
        for i in 0..MAX_IDLE_RECORDS {
            match i % 4 {
                0 => send_record(&mut wire, &mut tx, &[], APPLICATION_DATA, 0).await,
                1 => send_record(&mut wire, &mut tx, &[1, USER_CANCELED], ALERT, 0).await,
                2 => send_record(&mut wire, &mut tx, &[NEW_SESSION_TICKET, 0, 0, 0], HANDSHAKE, 0).await,
                _ => send_record(&mut wire, &mut tx, &KEY_UPDATE_NOT_REQUESTED, HANDSHAKE, 0).await,
            }
            .unwrap();
        }
        send(&mut wire, &mut tx, &[round]).await.unwrap();
    }
    let got = open_all(&mut reader(Side::Server), &wire).unwrap();
    assert_eq!(got, vec![vec![0], vec![1], vec![2]]);

    // One more in a row is a flood: unexpected_message, before the data.
    let mut tx = sender();
    let mut wire = Vec::new();
    for _ in 0..=MAX_IDLE_RECORDS {
        send_record(&mut wire, &mut tx, &KEY_UPDATE_NOT_REQUESTED, HANDSHAKE, 0)
            .await
            .unwrap();
    }
    send(&mut wire, &mut tx, b"late").await.unwrap();
    let err = open_all(&mut reader(Side::Server), &wire).unwrap_err();
    assert_eq!(fatal_alert(&err), UNEXPECTED_MESSAGE);
    assert!(err.to_string().contains("in a row without application data"), "{err}");
}

#[tokio::test]
async fn inner_plaintext_is_bounded_and_empty_records_pass() {
    // 2^14 bytes of content and its type byte: the largest inner plaintext.
    let mut tx = sender();
    let mut wire = Vec::new();
    send_record(&mut wire, &mut tx, &vec![1; MAX_PLAINTEXT], APPLICATION_DATA, 0)
        .await
        .unwrap();
    send_record(&mut wire, &mut tx, &[], APPLICATION_DATA, 0).await.unwrap();
    send_record(&mut wire, &mut tx, &[2; 10], APPLICATION_DATA, 100)
        .await
        .unwrap();
    let got = open_all(&mut reader(Side::Server), &wire).unwrap();
    assert_eq!(got, vec![vec![1; MAX_PLAINTEXT], vec![2; 10]]);
    // Padding past 2^14 + 1 (the ciphertext itself within its limit).
    for (content, pad) in [(MAX_PLAINTEXT, 1), (MAX_PLAINTEXT - 10, 11), (0, MAX_PLAINTEXT + 200)] {
        let mut wire = Vec::new();
        send_record(&mut wire, &mut sender(), &vec![3; content], APPLICATION_DATA, pad)
            .await
            .unwrap();
        let err = open_all(&mut reader(Side::Server), &wire).unwrap_err();
        assert_eq!(fatal_alert(&err), RECORD_OVERFLOW, "content {content}, padding {pad}");
    }
}

#[tokio::test]
async fn split_handshake_messages_are_reassembled_within_a_bound() {
    // A 3000-byte NewSessionTicket across three records, then data.
    let mut ticket = vec![NEW_SESSION_TICKET, 0, 0x0b, 0xb8];
    ticket.extend(vec![9u8; 3000]);
    let mut tx = sender();
    let mut wire = Vec::new();
    for part in [&ticket[..2], &ticket[2..1500], &ticket[1500..]] {
        send_record(&mut wire, &mut tx, part, HANDSHAKE, 0).await.unwrap();
    }
    // A KeyUpdate split too: its two records change keys only at its end.
    send_record(&mut wire, &mut tx, &KEY_UPDATE_NOT_REQUESTED[..3], HANDSHAKE, 0)
        .await
        .unwrap();
    send_record(&mut wire, &mut tx, &KEY_UPDATE_NOT_REQUESTED[3..], HANDSHAKE, 0)
        .await
        .unwrap();
    tx.keys.update().unwrap();
    send(&mut wire, &mut tx, b"after").await.unwrap();
    let mut rx = reader(Side::Server);
    assert_eq!(open_all(&mut rx, &wire).unwrap(), vec![b"after".to_vec()]);
    assert!(rx.handshake.capacity() == 0, "the reassembly buffer is not kept");

    // From a client, a ticket is unexpected.
    let mut wire = Vec::new();
    send_record(&mut wire, &mut sender(), &ticket, HANDSHAKE, 0)
        .await
        .unwrap();
    let err = open_all(&mut reader(Side::Client), &wire).unwrap_err();
    assert!(err.to_string().contains("NewSessionTicket from a client"), "{err}");

    // Data inside a split message; a message over the bound.
    let mut tx = sender();
    let mut wire = Vec::new();
    send_record(&mut wire, &mut tx, &ticket[..100], HANDSHAKE, 0)
        .await
        .unwrap();
    send(&mut wire, &mut tx, b"inside").await.unwrap();
    let err = open_all(&mut reader(Side::Server), &wire).unwrap_err();
    assert_eq!(fatal_alert(&err), UNEXPECTED_MESSAGE);
    let mut wire = Vec::new();
    send_record(&mut wire, &mut sender(), &[NEW_SESSION_TICKET, 1, 0, 0], HANDSHAKE, 0)
        .await
        .unwrap();
    let err = open_all(&mut reader(Side::Server), &wire).unwrap_err();
    assert!(err.to_string().contains("too long"), "{err}");
    // Bytes after a KeyUpdate in its record.
    let mut wire = Vec::new();
    let mut two = KEY_UPDATE_NOT_REQUESTED.to_vec();
    two.extend([NEW_SESSION_TICKET, 0, 0, 0]);
    send_record(&mut wire, &mut sender(), &two, HANDSHAKE, 0).await.unwrap();
    let err = open_all(&mut reader(Side::Server), &wire).unwrap_err();
    assert!(err.to_string().contains("KeyUpdate not at the end"), "{err}");
}

/// Both providers seal the same records byte for byte, sealed in one piece
/// or where they lie in a batch (ring's content type borrowed from the
/// byte past each record's plaintext and put back), and each opens what
/// the other sealed. Random batches of random lengths, seeded (replay one
/// with `ERLMESH_SEED=N`).
#[tokio::test]
async fn both_providers_seal_the_same_records_and_open_each_others() {
    let seed = std::env::var("ERLMESH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_207u64);
    let mut rng = fastrand::Rng::with_seed(seed);
    // AEGIS has one implementation whichever provider is chosen: its
    // records go through the same checks (in place against whole, the
    // spare byte put back, tampering caught).
    for suite in [crate::tls::Suite::Aes256Gcm, crate::tls::Suite::Aegis128X2] {
        let keys = |p: Provider| {
            Keys::fixed_suite(suite, DEFAULT_RECORDS_PER_KEY)
                .unwrap()
                .with(p)
                .unwrap()
        };
        records_of_both_providers(seed, &mut rng, &keys).await;
    }
}

async fn records_of_both_providers(seed: u64, rng: &mut fastrand::Rng, keys: &dyn Fn(Provider) -> Keys) {
    for round in 0..200 {
        let n = match rng.u8(..3) {
            0 => rng.usize(1..64),
            1 => rng.usize(1..=MAX_PLAINTEXT),
            _ => rng.usize(1..=6 * MAX_PLAINTEXT),
        };
        let data: Vec<u8> = std::iter::repeat_with(|| rng.u8(..)).take(n).collect();
        let spare = rng.u8(..);
        let mut wires = Vec::new();
        for p in [Provider::AwsLc, Provider::Ring] {
            let mut tx = Sender::new(keys(p), &reader(Side::Client));
            let mut buf = data.clone();
            buf.push(spare);
            let mut wire = Vec::new();
            super::out::seal_all(&mut wire, &mut tx, &mut buf, n).await.unwrap();
            assert_eq!(
                buf[n], spare,
                "seed {seed} round {round}: the spare byte was not put back"
            );
            // In one piece, record by record: the same bytes.
            let mut one = Sender::new(keys(p), &reader(Side::Client));
            let mut whole = Vec::new();
            for chunk in data.chunks(MAX_PLAINTEXT) {
                send(&mut whole, &mut one, chunk).await.unwrap();
            }
            assert!(
                wire == whole,
                "seed {seed} round {round} {p:?}: sealed in place differs from sealed whole"
            );
            wires.push(wire);
        }
        assert!(
            wires[0] == wires[1],
            "seed {seed} round {round}: the providers sealed different records"
        );
        for (wire, p) in wires.iter().zip([Provider::Ring, Provider::AwsLc]) {
            let mut rx = Reader::new(keys(p), Side::Client);
            let opened = open_all(&mut rx, wire).unwrap();
            assert!(
                opened.concat() == data,
                "seed {seed} round {round}: {p:?} did not open the other's records"
            );
        }
        // A record tampered with (its body, content type or tag) fails
        // authentication with either.
        let mut bad = wires[0].clone();
        let first = HEADER + u16::from_be_bytes([bad[3], bad[4]]) as usize;
        let at = rng.usize(HEADER..first);
        bad[at] ^= 1 << rng.u8(..8);
        for p in [Provider::AwsLc, Provider::Ring] {
            let mut rx = Reader::new(keys(p), Side::Client);
            assert!(
                open_all(&mut rx, &bad).is_err(),
                "seed {seed} round {round}: {p:?} opened a tampered record"
            );
        }
    }
}

/// Whether `wire` starts with a record whose inner type is a handshake
/// (a KeyUpdate, under the fixed keys).
fn starts_with_key_update(wire: &[u8]) -> bool {
    let mut k = Keys::fixed(DEFAULT_RECORDS_PER_KEY).unwrap();
    let len = u16::from_be_bytes([wire[3], wire[4]]) as usize;
    let hdr: [u8; 5] = wire[..5].try_into().unwrap();
    let mut body = wire[5..5 + len].to_vec();
    let n = k.open(hdr, &mut body).unwrap().unwrap();
    body[..n] == [KEY_UPDATE, 0, 0, 1, 0, HANDSHAKE]
}

#[tokio::test]
async fn a_requested_key_update_comes_before_the_next_data() {
    // The status path: a request read by first() is answered by send().
    let mut peer = sender();
    let mut wire = Vec::new();
    send_record(&mut wire, &mut peer, &KEY_UPDATE_REQUESTED, HANDSHAKE, 0)
        .await
        .unwrap();
    send(&mut wire, &mut peer, b"x").await.unwrap();
    let mut rx = reader(Side::Server);
    assert_eq!(rx.first(&mut &wire[..]).await.unwrap(), b"x");
    let mut tx = sender_for(&rx, DEFAULT_RECORDS_PER_KEY);
    let mut out = Vec::new();
    send(&mut out, &mut tx, b"y").await.unwrap();
    assert!(starts_with_key_update(&out), "no KeyUpdate before the data");
    // Asked once, answered once.
    let mut out = Vec::new();
    send(&mut out, &mut tx, b"z").await.unwrap();
    assert_eq!(out.len(), HEADER + 1 + 1 + TAG, "one data record, no second KeyUpdate");

    // The splice: a request arrives, then the node sends.
    let (mut node, local) = pair().await;
    let (wire_end, mut peer_end) = pair().await;
    let rx = reader(Side::Client);
    let tx = sender_for(&rx, DEFAULT_RECORDS_PER_KEY);
    let task = tokio::spawn(splice(local, wire_end, tx, rx, |_, _| {}, None, std::future::pending()));
    let mut peer = sender();
    let mut req = Vec::new();
    send_record(&mut req, &mut peer, &KEY_UPDATE_REQUESTED, HANDSHAKE, 0)
        .await
        .unwrap();
    send(&mut req, &mut peer, b"ping").await.unwrap();
    peer_end.write_all(&req).await.unwrap();
    let mut got = [0u8; 4];
    node.read_exact(&mut got).await.unwrap();
    node.write_all(b"pong").await.unwrap();
    let mut first = vec![0u8; 5 + 6 + 16];
    peer_end.read_exact(&mut first).await.unwrap();
    assert!(
        starts_with_key_update(&first),
        "the splice sent data before its KeyUpdate"
    );
    task.abort();
}

/// A connected pair of loopback TCP sockets.
async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = tokio::net::TcpStream::connect(l.local_addr().unwrap());
    let (c, a) = tokio::join!(c, l.accept());
    (c.unwrap(), a.unwrap().0)
}

#[tokio::test]
async fn splices_batches_both_ways_and_closes() {
    splice_round_trip(DEFAULT_RECORDS_PER_KEY).await;
}

#[tokio::test]
async fn key_updates_every_few_records_keep_the_stream_intact() {
    // A KeyUpdate every 3 records: hundreds of them each way.
    splice_round_trip(3).await;
}

async fn splice_round_trip(records_per_key: u64) {
    // node_a <-> splice A <-records-> splice B <-> node_b
    let (mut node_a, local_a) = pair().await;
    let (mut node_b, local_b) = pair().await;
    let (wire_a, wire_b) = pair().await;
    let (rx_a, rx_b) = (reader(Side::Server), reader(Side::Client));
    let (tx_a, tx_b) = (sender_for(&rx_a, records_per_key), sender_for(&rx_b, records_per_key));
    let a = tokio::spawn(splice(
        local_a,
        wire_a,
        tx_a,
        rx_a,
        |_, _| {},
        None,
        std::future::pending(),
    ));
    let b = tokio::spawn(splice(
        local_b,
        wire_b,
        tx_b,
        rx_b,
        |_, _| {},
        None,
        std::future::pending(),
    ));

    // Sizes around a record, a batch of records, and beyond.
    let sizes = [
        1,
        MAX_PLAINTEXT - 1,
        MAX_PLAINTEXT,
        MAX_PLAINTEXT + 1,
        reader::BATCH * MAX_PLAINTEXT + 7,
        1 << 20,
    ];
    let data: Vec<u8> = (0..sizes.iter().sum::<usize>()).map(|i| (i * 31 % 251) as u8).collect();
    let send = {
        let data = data.clone();
        async move {
            let mut at = 0;
            for n in sizes {
                node_a.write_all(&data[at..at + n]).await.unwrap();
                at += n;
            }
            node_a.shutdown().await.unwrap();
            // The other way: a reply, then the end.
            let mut back = Vec::new();
            node_a.read_to_end(&mut back).await.unwrap();
            back
        }
    };
    let recv = async move {
        let mut got = Vec::new();
        node_b.read_to_end(&mut got).await.unwrap();
        node_b.write_all(b"reply").await.unwrap();
        node_b.shutdown().await.unwrap();
        got
    };
    let (back, got) = tokio::join!(send, recv);
    assert_eq!(got.len(), data.len());
    assert!(got == data, "bytes changed on the way");
    assert_eq!(back, b"reply");
    let (ca, cb) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
    assert_eq!((ca.out, ca.back), (data.len() as u64, 5));
    assert_eq!((cb.out, cb.back), (5, data.len() as u64));
}

/// A splice between a node socket and an attacker's raw socket, with the
/// fixed keys both ways.
async fn attacked_splice() -> (
    tokio::net::TcpStream,
    tokio::net::TcpStream,
    tokio::task::JoinHandle<io::Result<Carried>>,
) {
    let (node, local) = pair().await;
    let (wire, attacker) = pair().await;
    let rx = reader(Side::Client);
    let tx = sender_for(&rx, DEFAULT_RECORDS_PER_KEY);
    let task = tokio::spawn(splice(local, wire, tx, rx, |_, _| {}, None, std::future::pending()));
    (node, attacker, task)
}

/// The alert in the records `back` (sealed with the fixed keys).
fn alert_in(back: &[u8]) -> String {
    let mut rx = reader(Side::Server);
    match open_all(&mut rx, back) {
        Ok(data) => format!("no alert, data {data:?}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_spliced_tunnel_answers_a_fatal_record_with_an_alert_and_resets_the_node() {
    let (mut node, mut attacker, task) = attacked_splice().await;
    attacker.write_all(&[CHANGE_CIPHER_SPEC, 3, 3, 0, 1, 1]).await.unwrap();
    let err = task.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("change_cipher_spec"), "{err}");
    // What came back is one sealed alert record: unexpected_message.
    let mut back = Vec::new();
    attacker.read_to_end(&mut back).await.unwrap();
    assert!(alert_in(&back).contains("TLS alert 10"), "{}", alert_in(&back));
    // The node's connection was reset, not closed.
    let mut sink = Vec::new();
    let e = node.read_to_end(&mut sink).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn a_bare_fin_is_a_truncation_the_node_sees_as_a_reset() {
    let (mut node, mut attacker, task) = attacked_splice().await;
    let mut wire = Vec::new();
    send(&mut wire, &mut sender(), b"partial").await.unwrap();
    attacker.write_all(&wire).await.unwrap();
    attacker.shutdown().await.unwrap();
    let mut got = [0u8; 7];
    node.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"partial");
    let err = task.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("without close_notify"), "{err}");
    let mut sink = Vec::new();
    let e = node.read_to_end(&mut sink).await.unwrap_err();
    assert_eq!(
        e.kind(),
        io::ErrorKind::ConnectionReset,
        "a truncation shown as a clean close"
    );
    // The peer is told with an error alert (internal_error), not close_notify.
    let mut back = Vec::new();
    attacker.read_to_end(&mut back).await.unwrap();
    assert!(alert_in(&back).contains("TLS alert 80"), "{}", alert_in(&back));
}

#[tokio::test]
async fn a_clean_end_is_close_notify_both_ways() {
    let (mut node, mut attacker, task) = attacked_splice().await;
    let mut peer = sender();
    let mut wire = Vec::new();
    send(&mut wire, &mut peer, b"bye").await.unwrap();
    peer.close(&mut wire).await.unwrap();
    attacker.write_all(&wire).await.unwrap();
    let mut got = Vec::new();
    node.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"bye");
    node.shutdown().await.unwrap();
    task.await.unwrap().unwrap();
    let mut back = Vec::new();
    attacker.read_to_end(&mut back).await.unwrap();
    let mut rx = reader(Side::Server);
    rx.buf[..back.len()].copy_from_slice(&back);
    rx.end = back.len();
    assert!(matches!(rx.open_next().unwrap(), Some(Opened::Closed)));
}

#[tokio::test]
async fn revocation_ends_with_certificate_revoked_and_a_reset() {
    let (mut node, local) = pair().await;
    let (wire, mut attacker) = pair().await;
    let rx = reader(Side::Client);
    let tx = sender_for(&rx, DEFAULT_RECORDS_PER_KEY);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(splice(local, wire, tx, rx, |_, _| {}, None, async {
        let _ = stopped.await;
    }));
    stop.send(()).unwrap();
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
    let mut back = Vec::new();
    attacker.read_to_end(&mut back).await.unwrap();
    assert!(alert_in(&back).contains("TLS alert 44"), "{}", alert_in(&back));
    let e = node.read_to_end(&mut Vec::new()).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn no_alert_follows_a_partial_record() {
    let mut tx = sender();
    let mut w = Trickle::breaking_after(10);
    assert!(send(&mut w, &mut tx, b"more than ten bytes").await.is_err());
    w.room = 1000;
    tx.abort(&mut w, &fatal(DECODE_ERROR, "test")).await;
    assert_eq!(w.got.len(), 10, "an alert was written after a partial record");
    // A whole record, then the alert.
    let mut tx = sender();
    let mut w = Trickle::breaking_after(1000);
    send(&mut w, &mut tx, b"whole").await.unwrap();
    let sent = w.got.len();
    tx.abort(&mut w, &fatal(DECODE_ERROR, "test")).await;
    assert!(w.got.len() > sent);
    assert!(alert_in(&w.got).contains("TLS alert 50"), "{}", alert_in(&w.got));
}

/// rustls itself reads what this layer sends after a KeyUpdate, and this
/// layer reads rustls' records before and after its own update, for every
/// suite erlmesh offers: the key schedule here matches the RFC's.
#[test]
fn rustls_and_this_layer_read_each_other_for_every_suite() {
    for suite in crate::tls::Suite::ALL {
        for provider in [Provider::AwsLc, Provider::Ring] {
            interop(suite, provider);
        }
    }
}

fn interop(suite: crate::tls::Suite, record_provider: Provider) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::sync::Arc;
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["hosta".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der = CertificateDer::from(cert.der().to_vec());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.clone()).unwrap();
    let provider = crate::tls::provider(&[suite]);
    let capture = Arc::new(SecretCapture::default());
    let mut server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der], PrivateKeyDer::try_from(key.serialize_der()).unwrap())
        .unwrap();
    server_config.enable_secret_extraction = true;
    server_config.send_tls13_tickets = 0;
    server_config.key_log = capture.clone();
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut client =
        rustls::ClientConnection::new(Arc::new(client_config), ServerName::try_from("hosta").unwrap()).unwrap();
    let mut server = rustls::ServerConnection::new(Arc::new(server_config)).unwrap();
    while client.is_handshaking() || server.is_handshaking() || server.wants_write() {
        let mut b = Vec::new();
        client.write_tls(&mut b).unwrap();
        server.read_tls(&mut &b[..]).unwrap();
        server.process_new_packets().unwrap();
        let mut b = Vec::new();
        server.write_tls(&mut b).unwrap();
        client.read_tls(&mut &b[..]).unwrap();
        client.process_new_packets().unwrap();
    }
    assert_eq!(crate::tls::Suite::of(&client), Some(suite));
    // The hybrid post-quantum key exchange is the one chosen.
    assert_eq!(
        client.negotiated_key_exchange_group().map(|g| g.name()),
        Some(rustls::NamedGroup::X25519MLKEM768)
    );
    let crypto = Crypto {
        provider: record_provider,
        records_per_key: 2,
    };
    let (mut tx, mut rx) = take_over(
        server.dangerous_extract_secrets().unwrap(),
        suite,
        &capture,
        Side::Server,
        crypto,
    )
    .unwrap();
    assert!(capture.is_empty(), "the traffic secrets stayed in the capture");
    assert_eq!(
        (tx.keys.provider(), rx.keys.provider()),
        (record_provider, record_provider)
    );
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let wire = rt.block_on(async {
        let mut wire = Vec::new();
        for i in 0..5u8 {
            // Every second record is due a KeyUpdate (records_per_key 2).
            send(&mut wire, &mut tx, &[b'a' + i; 3]).await.unwrap();
        }
        wire
    });
    client.read_tls(&mut &wire[..]).unwrap();
    client.process_new_packets().unwrap();
    let mut got = Vec::new();
    let _ = std::io::Read::read_to_end(&mut client.reader(), &mut got);
    assert_eq!(got, b"aaabbbcccdddeee", "{suite:?}");

    // A node's bytes as the splice seals them: read in one piece, sealed
    // where they lie into full records and a short last one (header and
    // trailer beside each), written vectored after the KeyUpdate due
    // before them. rustls reads every byte.
    let node_bytes: Vec<u8> = (0..3 * MAX_PLAINTEXT + 1000).map(|i| (i * 7 % 251) as u8).collect();
    let mut buf = node_bytes.clone();
    buf.push(0xA5);
    let wire = rt.block_on(async {
        let mut wire = Vec::new();
        super::out::seal_all(&mut wire, &mut tx, &mut buf, node_bytes.len())
            .await
            .unwrap();
        wire
    });
    assert_eq!(
        buf.last(),
        Some(&0xA5),
        "the spare byte past the plaintext was not put back"
    );
    let mut got = Vec::new();
    let mut r = &wire[..];
    while !r.is_empty() {
        client.read_tls(&mut r).unwrap();
        client.process_new_packets().unwrap();
        let _ = std::io::Read::read_to_end(&mut client.reader(), &mut got);
    }
    assert_eq!(got, node_bytes, "{suite:?} {record_provider:?}");

    // The other way: records rustls seals, before and after a key update
    // it asks this side to answer, are opened here; the answer is sent
    // before this side's next data, and rustls reads it.
    std::io::Write::write_all(&mut client.writer(), b"from rustls").unwrap();
    client.refresh_traffic_keys().unwrap();
    std::io::Write::write_all(&mut client.writer(), b"after its update").unwrap();
    let mut wire = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut wire).unwrap();
    }
    let mut r = &wire[..];
    let (one, two, reply) = rt.block_on(async {
        let one = rx.first(&mut r).await.unwrap();
        let two = rx.first(&mut r).await.unwrap();
        let mut reply = Vec::new();
        send(&mut reply, &mut tx, b"answered").await.unwrap();
        (one, two, reply)
    });
    assert_eq!(
        (one.as_slice(), two.as_slice()),
        (&b"from rustls"[..], &b"after its update"[..])
    );
    client.read_tls(&mut &reply[..]).unwrap();
    client.process_new_packets().unwrap();
    let mut got = Vec::new();
    let _ = std::io::Read::read_to_end(&mut client.reader(), &mut got);
    assert_eq!(got, b"answered", "{suite:?}");
}

#[tokio::test]
async fn corked_reads_stop_at_record_boundaries() {
    // Two records (bodies of 3 and 0 bytes) and a third's first bytes.
    let wire = [23, 3, 3, 0, 3, 1, 2, 3, 23, 3, 3, 0, 0, 23, 3];
    let mut c = Corked::new(&wire[..]);
    let mut buf = [0u8; 64];
    let mut reads = Vec::new();
    loop {
        let n = c.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        reads.push(buf[..n].to_vec());
        if reads.len() == 2 {
            assert!(c.at_record_boundary(), "after the first record");
        }
    }
    assert_eq!(
        reads,
        vec![vec![23, 3, 3, 0, 3], vec![1, 2, 3], vec![23, 3, 3, 0, 0], vec![23, 3]]
    );
    assert!(!c.at_record_boundary(), "a record was left half read");
}

/// The state an upgrade hands over: a reader stopped inside a record, with
/// a KeyUpdate behind it and a split handshake message and a request for a
/// KeyUpdate pending, goes on in a new reader and sender exactly where the
/// old ones stopped (same keys, same sequence numbers, same bytes).
#[tokio::test]
async fn record_state_carries_a_tunnel_on_mid_record() {
    let mut rx = reader(Side::Client);
    let mut tx = sender_for(&rx, 3); // a KeyUpdate every 3 records
    let mut peer = sender_for(&reader(Side::Server), 2);
    let mut wire = Vec::new();
    for i in 0..5u8 {
        send(&mut wire, &mut peer, &[i; 100]).await.unwrap();
    }
    // Half of a KeyUpdate request in one record, the rest later.
    send_record(&mut wire, &mut peer, &KEY_UPDATE_REQUESTED[..2], HANDSHAKE, 0)
        .await
        .unwrap();
    let cut = wire.len();
    send_record(&mut wire, &mut peer, &KEY_UPDATE_REQUESTED[2..], HANDSHAKE, 0)
        .await
        .unwrap();
    peer.keys.update().unwrap(); // the peer's next records are under its next key
    send(&mut wire, &mut peer, b"after").await.unwrap();
    // The old reader opens the first records, then stops 7 bytes into the
    // next one.
    let first = open_all(&mut rx, &wire[..cut + 7]).unwrap();
    assert_eq!(first.len(), 5);
    assert!(!rx.handshake.is_empty(), "the split KeyUpdate is pending");
    let mut sealed_before = Vec::new();
    send(&mut sealed_before, &mut tx, b"x").await.unwrap();
    send(&mut sealed_before, &mut tx, b"y").await.unwrap();

    let state = super::state::export(&tx, &rx).unwrap();
    assert_eq!(state.buffered, wire[cut..cut + 7]);
    let json = serde_json::to_vec(&state).unwrap();
    let back: super::state::RecordState = serde_json::from_slice(&json).unwrap();
    // The next process may seal and open with the other provider's code.
    let other = match Provider::auto() {
        Provider::AwsLc => Provider::Ring,
        Provider::Ring => Provider::AwsLc,
    };
    let (mut tx2, mut rx2) = super::state::import(&back, other).unwrap();
    assert_eq!((tx2.keys.provider(), rx2.keys.provider()), (other, other));

    // The rest of the wire, after what the old reader held.
    let mut rest = back.buffered.clone();
    rest.extend_from_slice(&wire[cut + 7..]);
    let opened = open_all(&mut rx2, &rest).unwrap();
    assert_eq!(opened, vec![b"after".to_vec()]);
    assert!(
        rx2.asked.load(std::sync::atomic::Ordering::Relaxed),
        "the peer's request survived"
    );
    // The new sender goes on with the old one's key and sequence: the peer
    // opens what both sealed, in order, with the KeyUpdates between.
    let mut sealed_after = Vec::new();
    send(&mut sealed_after, &mut tx2, b"z").await.unwrap();
    let mut peer_rx = reader(Side::Server);
    let mut all = sealed_before.clone();
    all.extend_from_slice(&sealed_after);
    assert_eq!(
        open_all(&mut peer_rx, &all).unwrap(),
        vec![b"x".to_vec(), b"y".to_vec(), b"z".to_vec()]
    );
    // A torn sender has nothing to hand over.
    tx2.torn = true;
    assert!(super::state::export(&tx2, &rx2).is_err());
    // A state of another suite or a bad secret is refused.
    let mut bad: super::state::RecordState = serde_json::from_slice(&json).unwrap();
    bad.tx.secret.truncate(5);
    assert!(super::state::import(&bad, other).is_err());
}

/// A socket for the tests: takes at most `step` bytes per write, and
/// `room` bytes in all (then every write fails: a broken pipe); when
/// `alternate`, is not ready every other time.
struct Trickle {
    got: Vec<u8>,
    room: usize,
    step: usize,
    alternate: bool,
    ready: bool,
}

impl Trickle {
    /// Takes `room` bytes, then fails every write.
    fn breaking_after(room: usize) -> Trickle {
        Trickle {
            got: Vec::new(),
            room,
            step: usize::MAX,
            alternate: false,
            ready: false,
        }
    }
}

impl tokio::io::AsyncWrite for Trickle {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        if self.alternate {
            self.ready = !self.ready;
            if !self.ready {
                cx.waker().wake_by_ref();
                return std::task::Poll::Pending;
            }
        }
        let n = buf.len().min(self.step).min(self.room);
        if n == 0 {
            return std::task::Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        self.room -= n;
        self.got.extend_from_slice(&buf[..n]);
        std::task::Poll::Ready(Ok(n))
    }
    fn poll_flush(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// However the socket takes a batch of pieces (a few bytes at a time, not
/// ready in between), every byte arrives once and in order. Seeded: a
/// failure names the case to replay.
#[tokio::test]
async fn pieces_arrive_whole_through_partial_and_pending_writes() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |bound: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % bound as u64) as usize
    };
    for case in 0..400 {
        let pieces: Vec<Vec<u8>> = (0..1 + next(6))
            .map(|p| {
                (0..next(if case % 4 == 0 { 5000 } else { 700 }))
                    .map(|i| (i * 7 + p) as u8)
                    .collect()
            })
            .collect();
        let want: Vec<u8> = pieces.concat();
        let step = 1 + next(3000);
        let mut w = Trickle {
            step,
            alternate: true,
            ..Trickle::breaking_after(usize::MAX)
        };
        let mut slices: Vec<io::IoSlice<'_>> = pieces.iter().map(|p| io::IoSlice::new(p)).collect();
        super::write_all_vectored(&mut w, &mut slices).await.unwrap();
        assert!(
            w.got == want,
            "case {case}: pieces {:?}, step {step}",
            pieces.iter().map(Vec::len).collect::<Vec<_>>()
        );
    }
}

/// An AEGIS tunnel's state crosses a hand-over (its suite's own number,
/// secrets and sequence numbers) and the next process goes on sealing and
/// opening where the last one stopped; a state naming a suite this
/// release does not know is refused, as an older release refuses AEGIS's.
#[tokio::test]
async fn an_aegis_tunnel_state_crosses_a_hand_over() {
    let keys = || Keys::fixed_suite(crate::tls::Suite::Aegis128X2, DEFAULT_RECORDS_PER_KEY).unwrap();
    let rx = Reader::new(keys(), Side::Server);
    let mut tx = Sender::new(keys(), &rx);
    let mut wire = Vec::new();
    send(&mut wire, &mut tx, b"before").await.unwrap();
    let state = super::state::export(&tx, &rx).unwrap();
    assert_eq!((state.tx.suite, state.tx.seq), (4, 1));
    let json = serde_json::to_vec(&state).unwrap();
    let back: super::state::RecordState = serde_json::from_slice(&json).unwrap();
    let (mut tx2, mut rx2) = super::state::import(&back, Provider::auto()).unwrap();
    send(&mut wire, &mut tx2, b"after").await.unwrap();
    let mut peer = Reader::new(keys(), Side::Client);
    assert_eq!(
        open_all(&mut peer, &wire).unwrap(),
        vec![b"before".to_vec(), b"after".to_vec()]
    );
    // What the peer seals, the new reader opens.
    let mut peer_tx = Sender::new(keys(), &peer);
    let mut back_wire = Vec::new();
    send(&mut back_wire, &mut peer_tx, b"reply").await.unwrap();
    assert_eq!(open_all(&mut rx2, &back_wire).unwrap(), vec![b"reply".to_vec()]);
    let mut unknown: super::state::RecordState = serde_json::from_slice(&json).unwrap();
    unknown.tx.suite = 99;
    let err = super::state::import(&unknown, Provider::auto()).err().unwrap();
    assert!(err.to_string().contains("unknown suite"), "{err}");
}
