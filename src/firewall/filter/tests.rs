use super::*;
use crate::firewall::etf::{encode, Pid};
use crate::mesh::policy::Pattern;

fn policy() -> Arc<DistPolicy> {
    Arc::new(DistPolicy {
        name: "edge".into(),
        mode: Mode::Enforce,
        spawn: false,
        registered: vec![Pattern::new("cache")],
        exit_signals: false,
    })
}

/// A filter for a tunnel whose peer dialled, past the handshake (its
/// challenge reply), under the `edge` policy. `local` names the node
/// pair's memory (tests run in parallel).
fn inbound(local: &str) -> (Arc<Firewall>, Inbound, Vec<u8>) {
    let fw = Firewall::new(policy(), "hostc", Memory::shared(local), Metrics::new([]));
    let inb = Inbound::new(fw.clone(), true);
    (fw, inb, vec![0, 5, b'r', 1, 2, 3, 4])
}

fn peer_pid() -> Term {
    Term::Pid(Pid {
        node: Arc::from("c@hostc"),
        id: 77,
        serial: 0,
        creation: 9,
    })
}

/// A D frame: `header` (atom cache part), then `terms` already encoded.
fn d_frame(header: &[u8], terms: &[u8]) -> Vec<u8> {
    let mut body = vec![etf::VERSION, etf::DIST_HEADER];
    body.extend_from_slice(header);
    body.extend_from_slice(terms);
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend(body);
    f
}

fn enc(t: &Term) -> Vec<u8> {
    let mut v = Vec::new();
    encode(t, &mut v);
    v
}

fn atom(a: &str) -> Term {
    Term::Atom(Arc::from(a))
}

/// REG_SEND {6, PeerPid, '', Name} with Name as atom cache reference 0.
fn reg_send_cached(header: &[u8], msg: &Term) -> Vec<u8> {
    let mut t = vec![104, 4, 97, 6];
    t.extend(enc(&peer_pid()));
    t.extend(enc(&atom("")));
    t.extend([82, 0]);
    t.extend(enc(msg));
    d_frame(header, &t)
}

/// Feeds `input` in pieces of `step` bytes; returns what the node gets.
fn run(inb: &mut Inbound, input: &[u8], step: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < input.len() {
        let end = (at + step).min(input.len());
        let mut segs = Vec::new();
        inb.feed(input, at..end, &mut segs)?;
        for s in segs {
            match s {
                Seg::Buf(r) => out.extend_from_slice(&input[r]),
                Seg::Own(v) => out.extend(v),
                Seg::Len(l) => out.extend(l),
            }
        }
        at = end;
    }
    Ok(out)
}

#[test]
fn a_refused_frame_still_brings_its_atom_cache_entries_to_the_node() {
    // 1: sets slot (0, 5) = rex, sends there: refused, yet the node must
    // learn the entry. 2: reuses slot (0, 5): refused too. 3: sets the
    // slot to cache: allowed, passed as it came.
    let new_rex = [1, 0x08, 5, 3, b'r', b'e', b'x'];
    let cached = [1, 0x00, 5];
    let new_cache = [1, 0x08, 5, 5, b'c', b'a', b'c', b'h', b'e'];
    let msg = Term::Tuple(vec![atom("put"), atom("k"), atom("v")]);
    let (f1, f2, f3) = (
        reg_send_cached(&new_rex, &msg),
        reg_send_cached(&cached, &msg),
        reg_send_cached(&new_cache, &msg),
    );
    for step in [1, 3, 7, 64, 4096] {
        let (_fw, mut inb, mut input) = inbound(&format!("b{step}@refused-cache"));
        let hs = input.len();
        for f in [&f1, &f2, &f3] {
            input.extend_from_slice(f);
        }
        let out = run(&mut inb, &input, step).unwrap();
        assert_eq!(&out[..hs], &input[..hs], "the handshake passes");
        // The stand-in: same header, a DEMONITOR_P of nothing.
        let standin_len = u32::from_be_bytes(out[hs..hs + 4].try_into().unwrap()) as usize;
        let standin = &out[hs + 4..hs + 4 + standin_len];
        assert_eq!(&standin[..2 + new_rex.len()], &[&[131, 68][..], &new_rex].concat()[..]);
        let ctl = Decoder::new(&standin[2 + new_rex.len()..], &[]).term().unwrap();
        assert_eq!(ctl.tuple().unwrap()[0], Term::Int(20));
        assert_eq!(&out[hs + 4 + standin_len..], &f3[..], "step {step}");
    }
}

#[test]
fn a_spawn_whose_control_message_spans_fragments_is_refused_whole_and_answered() {
    // SPAWN_REQUEST {29, Ref, PeerPid, PeerPid, {os, cmd, 1}, []}, then
    // its arguments, cut inside the control message.
    let r = Term::Ref(etf::Ref {
        node: Arc::from("c@hostc"),
        creation: 9,
        ids: vec![1, 2, 3],
    });
    let ctl = Term::Tuple(vec![
        Term::Int(29),
        r,
        peer_pid(),
        peer_pid(),
        Term::Tuple(vec![atom("os"), atom("cmd"), Term::Int(1)]),
        Term::Nil,
    ]);
    let mut data = enc(&ctl);
    data.extend([108, 0, 0, 0, 1, 107, 0, 2, b'i', b'd', 106]);
    let cut = 20;
    let frag = |tag: u8, n: u64, header: &[u8], part: &[u8]| {
        let mut body = vec![etf::VERSION, tag];
        body.extend(7u64.to_be_bytes());
        body.extend(n.to_be_bytes());
        body.extend_from_slice(header);
        body.extend_from_slice(part);
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend(body);
        f
    };
    let first = frag(etf::DIST_FRAG_HEADER, 2, &[0], &data[..cut]);
    let last = frag(etf::DIST_FRAG_CONT, 1, &[], &data[cut..]);
    // Another process's message between the two: it waits behind.
    let between = reg_send_cached(&[1, 0x08, 9, 5, b'c', b'a', b'c', b'h', b'e'], &atom("hello"));
    for step in [1, 5, 4096] {
        let (fw, mut inb, mut input) = inbound(&format!("b{step}@split-spawn"));
        let hs = input.len();
        input.extend_from_slice(&first);
        input.extend_from_slice(&between);
        let before = run(&mut inb, &input, step).unwrap();
        assert_eq!(before.len(), hs, "nothing passes before the spawn is judged");
        let out = run(&mut inb, &last, step).unwrap();
        assert_eq!(out, between, "only the other message passes, after");
        let answers = fw.take_answers();
        assert_eq!(answers.len(), 1);
        let reply = Decoder::new(&answers[0][7..], &[]).term().unwrap();
        assert_eq!(reply.tuple().unwrap()[0], Term::Int(31));
        assert_eq!(reply.tuple().unwrap()[4], atom("notsup"));
    }
}

#[test]
fn malformed_frames_end_the_tunnel_with_their_cause() {
    let cases: [(&[u8], &str); 4] = [
        (&[0, 0, 0, 2, 131, 99], "unknown distribution header"),
        (&[0, 0, 0, 2, 7, 7], "neither a distribution header"),
        (
            &[0, 0, 0, 18, 131, 70, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1],
            "no message in progress",
        ),
        (&[0, 0, 0, 5, 131, 68, 0, 97, 1], "not a tuple"),
    ];
    for (i, (frame, why)) in cases.iter().enumerate() {
        let (_fw, mut inb, mut input) = inbound(&format!("b{i}@malformed"));
        input.extend_from_slice(frame);
        let e = run(&mut inb, &input, 4096).unwrap_err();
        assert!(e.to_string().contains(why), "{e} (wanted {why})");
    }
}

#[test]
fn a_pid_the_node_sends_is_reachable_after_whatever_the_cuts() {
    let local = |id| {
        Term::Pid(Pid {
            node: Arc::from("b@given"),
            id,
            serial: 0,
            creation: 5,
        })
    };
    // The node: challenge ack ends its handshake; then a REG_SEND from
    // pid 1 carrying pid 2 deep in a 100 kB message.
    let mut out_stream = vec![0, 1, b'a'];
    let msg = Term::Tuple(vec![atom("hello"), Term::Tuple(vec![local(2), Term::Nil])]);
    let mut t = vec![104, 4, 97, 6];
    t.extend(enc(&local(1)));
    t.extend(enc(&atom("")));
    t.extend(enc(&atom("inbox")));
    t.extend([104, 2, 109, 0, 1, 0x86, 0xa0]);
    t.extend(std::iter::repeat(0).take(100_000));
    t.extend(enc(&msg));
    out_stream.extend(d_frame(&[0], &t));
    // The peer: a send to pid 2 and one to pid 3.
    let send_to = |id| {
        let mut t = vec![104, 3, 97, 22];
        t.extend(enc(&peer_pid()));
        t.extend(enc(&local(id)));
        t.extend(enc(&atom("hi")));
        d_frame(&[0], &t)
    };
    for step in [1, 2, 5, 100, 70_000] {
        let fw = Firewall::new(policy(), "hostc", Memory::shared("b@given"), Metrics::new([]));
        let mut o = Outbound::new(fw.clone(), false);
        for c in out_stream.chunks(step) {
            assert_eq!(o.feed(c, false), c.len());
        }
        assert!(o.at_boundary());
        let mut inb = Inbound::new(fw, true);
        let mut input = vec![0, 1, b'r'];
        let (two, three) = (send_to(2), send_to(3));
        input.extend_from_slice(&two);
        input.extend_from_slice(&three);
        assert_eq!(run(&mut inb, &input, 4096).unwrap()[3..], two[..], "step {step}");
    }
}

#[test]
fn pass_through_frames_and_unknown_operations_are_judged_too() {
    // 'p' frames carry terms with their version byte and no header.
    let p_frame = |name: &str| {
        let mut body = vec![etf::PASS_THROUGH, etf::VERSION];
        body.extend(enc(&Term::Tuple(vec![Term::Int(6), peer_pid(), atom(""), atom(name)])));
        body.push(etf::VERSION);
        body.extend(enc(&atom("hello")));
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend(body);
        f
    };
    let unknown = d_frame(&[0], &enc(&Term::Tuple(vec![Term::Int(99), peer_pid()])));
    let (fw, mut inb, mut input) = inbound("b@pass-through");
    let hs = input.len();
    let (to_secret, to_cache) = (p_frame("secret"), p_frame("cache"));
    for f in [&to_secret, &unknown, &to_cache] {
        input.extend_from_slice(f);
    }
    let out = run(&mut inb, &input, 4096).unwrap();
    assert_eq!(&out[hs..], &to_cache[..], "only the frame to the listed name passes");
    assert!(fw.take_answers().is_empty(), "a dropped send is not answered");
}

#[test]
fn ticks_and_handshake_pass_untouched_at_any_cut() {
    let mut input = vec![0, 3, b's', b'o', b'k', 0, 5, b'r', 1, 2, 3, 4];
    input.extend([0, 0, 0, 0, 0, 0, 0, 0]);
    for step in 1..input.len() {
        let fw = Firewall::new(policy(), "hostc", Memory::shared("b@ticks"), Metrics::new([]));
        let mut inb = Inbound::new(fw, true);
        assert_eq!(run(&mut inb, &input, step).unwrap(), input);
    }
}

mod timing {
    use super::*;
    use crate::firewall::etf::{encode, Pid};

    #[test]
    #[ignore]
    fn per_frame_cost() {
        let p = Arc::new(DistPolicy {
            name: "t".into(),
            mode: Mode::Enforce,
            spawn: false,
            registered: vec![],
            exit_signals: false,
        });
        let pid = |node: &str, id| {
            Term::Pid(Pid {
                node: Arc::from(node),
                id,
                serial: 0,
                creation: 3,
            })
        };
        let fw = Firewall::new(p, "hosta", Memory::shared("b@hostb"), Metrics::new([]));
        // b gives a pid 5 (outbound), then a sends to it (inbound), n times.
        let frame = |from: Term, to: Term, msg: Term| {
            let mut body = vec![131, 68, 0, 104, 3, 97, 22];
            encode(&from, &mut body);
            encode(&to, &mut body);
            encode(&msg, &mut body);
            let mut f = (body.len() as u32).to_be_bytes().to_vec();
            f.extend(body);
            f
        };
        let out_f = frame(
            pid("b@hostb", 5),
            pid("a@hosta", 9),
            Term::Tuple(vec![pid("b@hostb", 5), Term::Atom(Arc::from("ping"))]),
        );
        let in_f = frame(
            pid("a@hosta", 9),
            pid("b@hostb", 5),
            Term::Tuple(vec![pid("a@hosta", 9), Term::Atom(Arc::from("ping"))]),
        );
        let mut o = Outbound::new(fw.clone(), false);
        o.feed(&[0, 1, b'a'], false);
        let mut i = Inbound::new(fw, true);
        let hs = [0u8, 1, b'r'];
        let mut segs = Vec::new();
        i.feed(&hs, 0..3, &mut segs).unwrap();
        let n = 200_000;
        let t = std::time::Instant::now();
        for _ in 0..n {
            o.feed(&out_f, false);
        }
        let to = t.elapsed();
        let t = std::time::Instant::now();
        for _ in 0..n {
            segs.clear();
            i.feed(&in_f, 0..in_f.len(), &mut segs).unwrap();
            assert_eq!(segs.len(), 2);
        }
        let ti = t.elapsed();
        println!("outbound {:?}/frame, inbound {:?}/frame", to / n, ti / n);
    }
}
