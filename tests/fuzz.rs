//! Property-based fuzzing of every parser that reads bytes from outside:
//! the EPMD codec, the tunnel preface (HELLO and its answer included), the
//! handshake reader, the record layer, and the distribution firewall (the
//! term decoder, the walk for pids, the frame filter). Random and
//! mutated input must give a value or an error, never a panic, and what
//! the encoders write must parse back to the same value.
//! PROPTEST_CASES raises the case count for a longer run.

use erlmesh::epmd::codec::{self, NodeInfo, Request};
use erlmesh::firewall::etf::{self, Term};
use erlmesh::firewall::walk::{Found, Walker};
use erlmesh::tunnel::dist_handshake;
use erlmesh::tunnel::preface::{self, Preface};
use proptest::prelude::*;

fn cases() -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    // Failures are kept in tests/fuzz.proptest-regressions and replayed
    // first on every run.
    ProptestConfig {
        cases: n,
        ..ProptestConfig::default()
    }
}

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_.-]{1,40}"
}

fn node_info() -> impl Strategy<Value = NodeInfo> {
    (
        name(),
        1u16..,
        any::<u8>(),
        any::<u8>(),
        5u16..7,
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(name, port, node_type, protocol, high, extra)| NodeInfo {
            name,
            port,
            node_type,
            protocol,
            high,
            low: 5,
            extra,
        })
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        node_info().prop_map(Request::Alive2),
        name().prop_map(|name| Request::PortPlease2 { name }),
        Just(Request::Names),
        Just(Request::Dump),
        Just(Request::Kill),
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(|name| Request::Stop { name }),
    ]
}

/// A valid encoding with some bytes flipped, cut or extended.
fn mutated(valid: Vec<u8>, flips: Vec<(usize, u8)>, cut: usize, tail: Vec<u8>) -> Vec<u8> {
    let mut v = valid;
    for (i, b) in flips {
        if !v.is_empty() {
            let n = v.len();
            v[i % n] ^= b;
        }
    }
    v.truncate(cut.min(v.len()));
    v.extend(tail);
    v
}

/// Terms of the kinds the distribution carries, nested.
fn term() -> impl Strategy<Value = Term> {
    let leaf = prop_oneof![
        any::<i32>().prop_map(|i| Term::Int(i as i64)),
        "[a-z_]{0,12}".prop_map(|a| Term::Atom(a.into())),
        (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(id, serial, creation)| Term::Pid(etf::Pid {
            node: "b@hostb".into(),
            id,
            serial,
            creation
        })),
        (any::<u32>(), proptest::collection::vec(any::<u32>(), 1..6)).prop_map(|(creation, ids)| Term::Ref(etf::Ref {
            node: "b@hostb".into(),
            creation,
            ids
        })),
        Just(Term::Nil),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        proptest::collection::vec(inner, 0..8).prop_map(Term::Tuple)
    })
}

/// Distribution frames as a peer's node sends them: a normal header that
/// sets atom cache entries, a control message naming an entry (REG_SEND,
/// or an operation no OTP release defines), a message.
fn frames() -> impl Strategy<Value = Vec<u8>> {
    let op = prop::sample::select(vec![6u8, 6, 6, 0, 9, 10, 11, 14, 15, 17, 38, 39, 40, 200]);
    proptest::collection::vec((op, "[a-z]{1,8}", term(), any::<bool>()), 1..6).prop_map(|v| {
        let mut out = Vec::new();
        for (i, (op, name, msg, tick)) in v.into_iter().enumerate() {
            // The first names a process of the peer's node (a refused frame
            // that sets cache entries is replaced by one sent in its name).
            let op = if i == 0 { 6 } else { op };
            if tick {
                out.extend([0, 0, 0, 0]);
            }
            let mut body = vec![131, 68, 1, 0x08, 3, name.len() as u8];
            body.extend(name.as_bytes());
            body.extend([104, 4, 97, op]);
            etf::encode(
                &Term::Pid(etf::Pid {
                    node: "c@hostc".into(),
                    id: 1,
                    serial: 0,
                    creation: 1,
                }),
                &mut body,
            );
            body.extend([106, 82, 0]);
            etf::encode(&msg, &mut body);
            out.extend((body.len() as u32).to_be_bytes());
            out.extend(body);
        }
        out
    })
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn epmd_requests_round_trip(req in request()) {
        let bytes = codec::encode_request(&req);
        prop_assert_eq!(codec::parse_request(&bytes), Ok((req, bytes.len())));
    }

    #[test]
    fn epmd_codec_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
        if let Ok((_, used)) = codec::parse_request(&bytes) {
            prop_assert!(used <= bytes.len());
        }
        let _ = codec::parse_port2_resp(&bytes);
        let _ = codec::parse_names_reply(&bytes);
        let _ = block_on(erlmesh::epmd::embedded::read_request(&mut &bytes[..]));
    }

    #[test]
    fn epmd_codec_survives_mutation(req in request(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
                                    cut in any::<usize>(), tail in proptest::collection::vec(any::<u8>(), 0..8)) {
        let bytes = mutated(codec::encode_request(&req), flips, cut, tail);
        let _ = codec::parse_request(&bytes);
        let resp = codec::encode_port2_resp(&NodeInfo { name: "b".into(), port: 1, node_type: 77, protocol: 0, high: 6, low: 5, extra: vec![] }, 2);
        let _ = codec::parse_port2_resp(&mutated(resp, vec![(cut, 1)], cut, vec![]));
    }

    #[test]
    fn preface_round_trips(kind in 0u8..5, n in name()) {
        let p = match kind {
            0 => Preface::PortPlease(n),
            1 => Preface::Names,
            2 => Preface::Hello(format!("{n}:4370")),
            3 => Preface::Port(n),
            _ => Preface::Tunnel(n),
        };
        let bytes = p.encode();
        prop_assert_eq!(Preface::decode(&bytes), Ok((p.clone(), bytes.len())));
        prop_assert_eq!(block_on(preface::read_preface(&mut &bytes[..])).unwrap(), p);
    }

    #[test]
    fn preface_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3), cut in any::<usize>()) {
        let _ = Preface::decode(&bytes);
        let _ = block_on(preface::read_preface(&mut &bytes[..]));
        let _ = block_on(preface::read_port_answer(&mut &bytes[..], "x"));
        let _ = block_on(preface::read_real_port_answer(&mut &bytes[..], "x"));
        let _ = block_on(preface::read_names_answer(&mut &bytes[..]));
        let _ = block_on(preface::read_hosts_answer(&mut &bytes[..]));
        let valid = Preface::Tunnel("node".into()).encode();
        let m = mutated(valid, flips.clone(), cut, vec![]);
        let _ = Preface::decode(&m);
        let hello = Preface::Hello("hostb:4370".into()).encode();
        let _ = Preface::decode(&mutated(hello, flips, cut, vec![]));
    }

    /// HELLO answers: what the encoder writes reads back (host names of
    /// any spelling, which the mesh canonicalises later), and mutated
    /// answers give a value or an error, never a panic.
    #[test]
    fn hello_answers_round_trip_and_survive_mutation(
        hosts in proptest::collection::vec((name(), name()), 0..20),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        cut in any::<usize>(),
    ) {
        let hosts: Vec<(String, String)> = hosts.into_iter().map(|(h, a)| (h, format!("{a}:4370"))).collect();
        let bytes = preface::encode_hosts_answer(&hosts);
        prop_assert_eq!(block_on(preface::read_hosts_answer(&mut &bytes[..])).unwrap(), hosts);
        let _ = block_on(preface::read_hosts_answer(&mut &mutated(bytes, flips, cut, vec![])[..]));
    }

    #[test]
    fn send_name_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
        if let Ok((_, used)) = dist_handshake::parse_send_name(&bytes) {
            prop_assert!(used <= bytes.len());
        }
        if let Ok((sn, raw)) = block_on(dist_handshake::read_send_name(&mut &bytes[..])) {
            prop_assert!(bytes.starts_with(&raw));
            prop_assert!(sn.node.contains('@'));
        }
    }

    #[test]
    fn send_name_survives_mutation(n in name(), h in name(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4), cut in any::<usize>()) {
        let node = format!("{n}@{h}");
        let mut body = vec![b'N', 0, 0, 0, 0x0d, 0x07, 0xdf, 0x7f, 0xbd, 0, 0, 0, 1];
        body.extend_from_slice(&(node.len() as u16).to_be_bytes());
        body.extend_from_slice(node.as_bytes());
        let mut frame = (body.len() as u16).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        let (sn, used) = dist_handshake::parse_send_name(&frame).unwrap();
        prop_assert_eq!(sn.node, node);
        prop_assert_eq!(used, frame.len());
        let _ = dist_handshake::parse_send_name(&mutated(frame, flips, cut, vec![]));
    }

    #[test]
    fn record_layer_opens_what_it_seals_and_rejects_anything_else(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 1..6),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3),
        noise in proptest::collection::vec(any::<u8>(), 0..2000),
    ) {
        let refs: Vec<&[u8]> = chunks.iter().map(|c| c.as_slice()).collect();
        let sealed = erlmesh::tunnel::record::fuzz_seal(&refs);
        // Zero-length records are allowed and carry nothing (RFC 8446 §5.1).
        let data: Vec<Vec<u8>> = chunks.iter().filter(|c| !c.is_empty()).cloned().collect();
        prop_assert_eq!(erlmesh::tunnel::record::fuzz_open(&sealed), data.clone());
        // Mutated: only an intact prefix of the records may come out.
        let m = mutated(sealed, flips, usize::MAX, vec![]);
        let got = erlmesh::tunnel::record::fuzz_open(&m);
        prop_assert!(got.len() <= data.len() && got.iter().zip(&data).all(|(g, c)| g == c));
        let _ = erlmesh::tunnel::record::fuzz_open(&noise);
    }

    #[test]
    fn term_decoder_reads_what_the_encoder_writes_and_survives_anything(
        t in term(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        cut in any::<usize>(),
        noise in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let mut b = Vec::new();
        etf::encode(&t, &mut b);
        let mut d = etf::Decoder::new(&b, &[]);
        prop_assert_eq!(d.term().unwrap(), t);
        let _ = etf::Decoder::new(&mutated(b, flips, cut, vec![]), &[]).term();
        let _ = etf::Decoder::new(&noise, &[]).term();
        let _ = etf::AtomCache::default().header(&noise);
    }

    #[test]
    fn the_walk_finds_every_pid_and_reference_at_any_cut(t in term(), step in 1usize..64) {
        let mut b = Vec::new();
        etf::encode(&t, &mut b);
        let mut want = Vec::new();
        t.visit(&mut |x| match x {
            Term::Pid(p) => want.push(Found::Pid(p.clone())),
            Term::Ref(r) => want.push(Found::Ref(r.clone())),
            _ => {}
        });
        let mut w = Walker::new(1, false);
        let mut got = Vec::new();
        for c in b.chunks(step) {
            w.feed(c, &[], &mut |f| got.push(f));
        }
        prop_assert!(w.done());
        prop_assert_eq!(got, want);
    }

    #[test]
    fn the_dist_filter_takes_or_refuses_anything_without_panicking(
        valid in frames(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        cut in any::<usize>(),
        noise in proptest::collection::vec(any::<u8>(), 0..1500),
        step in 1usize..5000,
    ) {
        prop_assert!(erlmesh::firewall::filter::fuzz_inbound(&valid, step), "valid frames refused as malformed");
        erlmesh::firewall::filter::fuzz_inbound(&mutated(valid, flips, cut, vec![]), step);
        erlmesh::firewall::filter::fuzz_inbound(&noise, step);
    }
}
