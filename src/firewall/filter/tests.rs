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
        max_atoms: crate::firewall::atoms::DEFAULT_MAX_ATOMS,
        max_monitors: crate::firewall::memory::DEFAULT_MAX_MONITORS,
        max_global_names: crate::firewall::names::MAX_GLOBAL_HELD,
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

pub(super) fn peer_pid() -> Term {
    Term::Pid(Pid {
        node: Arc::from("c@hostc"),
        id: 77,
        serial: 0,
        creation: 9,
    })
}

/// A reference of the peer's node.
fn peer_ref() -> Term {
    Term::Ref(etf::Ref {
        node: Arc::from("c@hostc"),
        creation: 9,
        ids: vec![1, 2, 3],
    })
}

/// A D frame: `header` (atom cache part), then `terms` already encoded.
pub(super) fn d_frame(header: &[u8], terms: &[u8]) -> Vec<u8> {
    let mut body = vec![etf::VERSION, etf::DIST_HEADER];
    body.extend_from_slice(header);
    body.extend_from_slice(terms);
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend(body);
    f
}

pub(super) fn enc(t: &Term) -> Vec<u8> {
    let mut v = Vec::new();
    encode(t, &mut v);
    v
}

pub(super) fn atom(a: &str) -> Term {
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

/// A seed for a generative test: `ERLMESH_SEED` replays one, printed.
pub(super) fn seed() -> u64 {
    let seed = std::env::var("ERLMESH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("seed {seed} (replay with ERLMESH_SEED={seed})");
    seed
}

/// Feeds `input` in pieces of `step` bytes; returns what the node gets.
fn run(inb: &mut Inbound, input: &[u8], step: usize) -> io::Result<Vec<u8>> {
    let (out, r) = run_until_error(inb, input, step);
    r.map(|()| out)
}

/// [`run`], keeping what the node got before an error.
pub(super) fn run_until_error(inb: &mut Inbound, input: &[u8], step: usize) -> (Vec<u8>, io::Result<()>) {
    let mut out = Vec::new();
    let mut at = 0;
    while at < input.len() {
        let end = (at + step).min(input.len());
        let mut segs = Vec::new();
        if let Err(e) = inb.feed(input, at..end, &mut segs) {
            return (out, Err(e));
        }
        for s in segs {
            match s {
                Seg::Buf(r) => out.extend_from_slice(&input[r]),
                Seg::Own(v) => out.extend(v),
                Seg::Len(l) => out.extend(l),
            }
        }
        at = end;
    }
    (out, Ok(()))
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
    let r = peer_ref();
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
            max_atoms: crate::firewall::atoms::DEFAULT_MAX_ATOMS,
            max_monitors: crate::firewall::memory::DEFAULT_MAX_MONITORS,
            max_global_names: crate::firewall::names::MAX_GLOBAL_HELD,
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
        println!(
            "atoms written out: outbound {:?}/frame, inbound {:?}/frame",
            to / n,
            ti / n
        );
        // As OTP sends them: atoms through the cache (set by the first
        // frame of each direction, referred to by the others).
        let cached = |set: bool, from: u32, to: u32, from_node: u8, to_node: u8| {
            let mut body = vec![131, 68];
            if set {
                body.extend([3, 0x88, 0x08, 0, 7, b'a', b'@', b'h', b'o', b's', b't', b'a']);
                body.extend([
                    1, 7, b'b', b'@', b'h', b'o', b's', b't', b'b', 2, 4, b'p', b'i', b'n', b'g',
                ]);
            } else {
                body.extend([3, 0x00, 0x00, 0, 1, 2]);
            }
            let pid = |node: u8, id: u32, b: &mut Vec<u8>| {
                b.extend([88, 82, node]);
                b.extend(id.to_be_bytes());
                b.extend([0, 0, 0, 0, 0, 0, 0, 3]);
            };
            body.extend([104, 3, 97, 22]);
            pid(from_node, from, &mut body);
            pid(to_node, to, &mut body);
            body.extend([104, 2]);
            pid(from_node, from, &mut body);
            body.extend([82, 2]);
            let mut f = (body.len() as u32).to_be_bytes().to_vec();
            f.extend(body);
            f
        };
        o.feed(&cached(true, 5, 9, 1, 0), false);
        segs.clear();
        i.feed(&cached(true, 9, 5, 0, 1), 0..cached(true, 9, 5, 0, 1).len(), &mut segs)
            .unwrap();
        let (out_c, in_c) = (cached(false, 5, 9, 1, 0), cached(false, 9, 5, 0, 1));
        let t = std::time::Instant::now();
        for _ in 0..n {
            o.feed(&out_c, false);
        }
        let to = t.elapsed();
        let t = std::time::Instant::now();
        for _ in 0..n {
            segs.clear();
            i.feed(&in_c, 0..in_c.len(), &mut segs).unwrap();
            assert_eq!(segs.len(), 2);
        }
        let ti = t.elapsed();
        println!(
            "atoms through the cache: outbound {:?}/frame, inbound {:?}/frame",
            to / n,
            ti / n
        );
    }
}

/// A fragmented message: `data` (control message and message, encoded)
/// cut into `n` fragments of sequence `seq`, the first with an empty
/// atom cache header.
fn fragments(seq: u64, data: &[u8], n: usize) -> Vec<Vec<u8>> {
    let size = data.len().div_ceil(n).max(1);
    let parts: Vec<&[u8]> = data.chunks(size).collect();
    let count = parts.len() as u64;
    parts
        .iter()
        .enumerate()
        .map(|(i, part)| {
            let first = i == 0;
            let mut body = vec![
                etf::VERSION,
                if first {
                    etf::DIST_FRAG_HEADER
                } else {
                    etf::DIST_FRAG_CONT
                },
            ];
            body.extend(seq.to_be_bytes());
            body.extend((count - i as u64).to_be_bytes());
            if first {
                body.push(0);
            }
            body.extend_from_slice(part);
            let mut f = (body.len() as u32).to_be_bytes().to_vec();
            f.extend(body);
            f
        })
        .collect()
}

/// A binary of `n` bytes, encoded (BINARY_EXT).
fn binary(n: usize) -> Vec<u8> {
    let mut b = vec![109];
    b.extend((n as u32).to_be_bytes());
    b.resize(b.len() + n, 7);
    b
}

/// REG_SEND {6, PeerPid, '', name} and `msg`, encoded.
fn reg_send_data(name: &str, msg: &Term) -> Vec<u8> {
    let mut d = enc(&Term::Tuple(vec![Term::Int(6), peer_pid(), atom(""), atom(name)]));
    d.extend(enc(msg));
    d
}

/// ping as a peer's node sends it: `{'$gen_call', {Pid, Ref}, {is_auth, Node}}`.
fn is_auth(n: u32) -> Term {
    let tag = Term::Ref(etf::Ref {
        node: Arc::from("c@hostc"),
        creation: 9,
        ids: vec![n, 1, 2],
    });
    Term::Tuple(vec![
        atom("$gen_call"),
        Term::Tuple(vec![peer_pid(), tag]),
        Term::Tuple(vec![atom("is_auth"), atom("c@hostc")]),
    ])
}

/// The invariant of the budget: what a direction holds (frame heads,
/// bodies of held messages, frames queued behind them) is always its
/// share, every held byte counted once (`Inbound::feed` checks it after
/// every read in debug builds), and nothing is held once every message is
/// decided. Attacked with seeded streams of interleaved fragmented
/// messages (some judged at their first fragment, some only whole),
/// complete messages and ticks, cut anywhere; every frame passes, so the
/// node must get exactly the input, in order.
#[test]
fn held_bytes_are_one_budget_whatever_the_interleaving_and_cuts() {
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    for round in 0..200 {
        let (fw, mut inb, hs) = inbound(&format!("b{round}@budget"));
        let mut input = hs.clone();
        let mut open: Vec<std::collections::VecDeque<Vec<u8>>> = Vec::new();
        let mut seq = 1u64;
        for n in 0..rng.usize(1..40) {
            match rng.u8(0..4) {
                0 => input.extend(reg_send_cached(
                    &[1, 0x08, 9, 5, b'c', b'a', b'c', b'h', b'e'],
                    &Term::Int(n as i64),
                )),
                1 => input.extend([0, 0, 0, 0]),
                2 => {
                    // Judged only whole (the machinery), or from its top.
                    let data = if rng.bool() {
                        reg_send_data("net_kernel", &is_auth(n as u32))
                    } else {
                        let mut d = reg_send_data("cache", &Term::Nil);
                        d.pop();
                        d.extend([104, 2]);
                        d.extend(enc(&atom("put")));
                        d.extend(binary(rng.usize(0..3000)));
                        d
                    };
                    open.push(fragments(seq, &data, rng.usize(2..6)).into());
                    seq += 1;
                }
                _ => {}
            }
            if !open.is_empty() && rng.bool() {
                let i = rng.usize(..open.len());
                input.extend(open[i].pop_front().expect("not empty"));
                if open[i].is_empty() {
                    open.swap_remove(i);
                }
            }
        }
        for mut rest in open.drain(..) {
            rest.drain(..).for_each(|f| input.extend(f));
        }
        let step = [1, 3, 17, 512, 1 << 20][rng.usize(..5)];
        let out = run(&mut inb, &input, step).unwrap_or_else(|e| panic!("seed {seed} round {round}: {e}"));
        assert_eq!(out, input, "seed {seed} round {round}: every frame passes, in order");
        assert_eq!(inb.held(), 0, "seed {seed} round {round}: nothing held at the end");
        assert_eq!(fw.held(), 0, "seed {seed} round {round}");
    }
}

/// A peer that streams fragments of a message that never completes (to
/// net_kernel, judged only whole), with complete messages queued behind
/// it, loses its tunnel once what is held passes the budget: never
/// before its bytes are counted once (the data of a held fragment is held
/// once), never after the budget is passed.
#[test]
fn fragments_that_never_complete_with_messages_behind_end_the_tunnel_at_the_budget() {
    let (fw, mut inb, hs) = inbound("b@never-completes");
    run(&mut inb, &hs, 4096).unwrap();
    // {'$gen_call', [<<...>>, <<...>>, ...: a list of 10,000 binaries
    // of 1,000 bytes (few terms, so decoded whole), longer than the budget.
    let mut start = reg_send_data("net_kernel", &atom("x"));
    start.truncate(start.len() - enc(&atom("x")).len());
    start.extend([104, 3]);
    start.extend(enc(&atom("$gen_call")));
    start.extend([108]);
    start.extend(10_000u32.to_be_bytes());
    let frag = |tag: u8, fragid: u64, cache: bool, data: &[u8]| {
        let mut body = vec![etf::VERSION, tag];
        body.extend(1u64.to_be_bytes());
        body.extend(fragid.to_be_bytes());
        if cache {
            body.push(0);
        }
        body.extend_from_slice(data);
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend(body);
        f
    };
    let fed = std::cell::Cell::new(0usize);
    let feed = |inb: &mut Inbound, bytes: &[u8]| {
        fed.set(fed.get() + bytes.len());
        let r = run(inb, bytes, 65536);
        assert!(fw.held() <= MAX_HELD, "held {} past the budget", fw.held());
        r
    };
    feed(&mut inb, &frag(etf::DIST_FRAG_HEADER, MAX_FRAGMENTS, true, &start)).unwrap();
    let ones: Vec<u8> = binary(1000).repeat(60);
    let mut behind = reg_send_cached(&[1, 0x08, 9, 5, b'c', b'a', b'c', b'h', b'e'], &Term::Nil);
    behind.pop();
    behind.extend(binary(60 << 10));
    let len = behind.len() as u32 - 4;
    behind[..4].copy_from_slice(&len.to_be_bytes());
    let mut n = MAX_FRAGMENTS - 1;
    let err = loop {
        let r = feed(&mut inb, &frag(etf::DIST_FRAG_CONT, n, false, &ones))
            .and_then(|out| feed(&mut inb, &behind).map(|o| (out, o)));
        match r {
            Ok((a, b)) => assert!(a.is_empty() && b.is_empty(), "nothing passes the held message"),
            Err(e) => break e,
        }
        n -= 1;
        assert!(fed.get() < 4 * MAX_HELD, "the budget never ran out");
    };
    assert!(
        err.to_string().contains(&format!("larger than {MAX_HELD} bytes")),
        "{err}"
    );
    let fed = fed.get();
    assert!(
        fed > MAX_HELD - (256 << 10),
        "ended after {fed} bytes: held bytes counted twice?"
    );
}

/// `{put, [1, 1, ..., Pid, 1, ...]}` to `cache`: `ones` small integers
/// (more terms than a judgement decodes) with `pid` at `at`.
fn large_put(ones: usize, at: usize, pid: &Term) -> Vec<u8> {
    let mut d = reg_send_data("cache", &Term::Nil);
    d.pop();
    d.extend([104, 2]);
    d.extend(enc(&atom("put")));
    d.push(108);
    d.extend((ones as u32 + 1).to_be_bytes());
    for i in 0..ones {
        if i == at {
            d.extend(enc(pid));
        }
        d.extend([97, 1]);
    }
    d.push(106);
    d
}

fn local_pid(node: &str, id: u32) -> Term {
    Term::Pid(Pid {
        node: Arc::from(node),
        id,
        serial: 0,
        creation: 3,
    })
}

/// The invariant: a message that passes on its top alone (too large to
/// decode, or not all there) is walked to its end as it passes, and a
/// local pid the peer was not given anywhere in it ends the tunnel before
/// the node has the whole message (so it is never delivered); a given pid
/// passes. Attacked with the pid at seeded places, whole frames and
/// fragments, cut anywhere.
#[test]
fn a_forged_pid_deep_in_a_large_message_never_reaches_the_node() {
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    let ones = 3 * rules::MAX_JUDGED_TERMS;
    for round in 0..24 {
        let node = format!("b{round}@walk");
        let (fw, mut inb, hs) = inbound(&node);
        let given = rng.bool();
        let pid = local_pid(&node, 40 + round);
        if let Term::Pid(p) = &pid {
            if given {
                fw.mem().give_pid(p);
            }
        }
        let data = large_put(ones, rng.usize(..ones), &pid);
        let frames: Vec<u8> = if rng.bool() {
            let mut f = vec![etf::VERSION, etf::DIST_HEADER, 0];
            f.extend(&data);
            let mut framed = (f.len() as u32).to_be_bytes().to_vec();
            framed.extend(f);
            framed
        } else {
            fragments(9, &data, rng.usize(2..9)).concat()
        };
        let step = [7, 1000, 65536, 1 << 20][rng.usize(..4)];
        let mut input = hs.clone();
        input.extend(&frames);
        let (got, r) = run_until_error(&mut inb, &input, step);
        if given {
            r.unwrap_or_else(|e| panic!("seed {seed} round {round}: {e}"));
            assert_eq!(got, input, "seed {seed} round {round}: a given pid passes");
        } else {
            let e = r.expect_err("a forged pid ends the tunnel");
            assert!(e.to_string().contains("local pid"), "seed {seed} round {round}: {e}");
            assert!(
                got.len() < input.len(),
                "seed {seed} round {round}: the message never arrives whole"
            );
        }
    }
}

/// Deeply nested and many-term messages to a listed name are judged by
/// their top and walked, not refused as malformed (the tunnel stays).
#[test]
fn messages_too_large_to_decode_still_pass_when_they_name_nothing_forged() {
    let (_fw, mut inb, hs) = inbound("b@deep");
    let mut deep = reg_send_data("cache", &Term::Nil);
    deep.pop();
    deep.extend([104, 2]);
    deep.extend(enc(&atom("put")));
    for _ in 0..500 {
        deep.extend([104, 1]);
    }
    deep.push(106);
    let mut input = hs.clone();
    for data in [deep, large_put(3 * rules::MAX_JUDGED_TERMS, 0, &peer_pid())] {
        let mut f = vec![etf::VERSION, etf::DIST_HEADER, 0];
        f.extend(&data);
        input.extend((f.len() as u32).to_be_bytes());
        input.extend(f);
    }
    assert_eq!(run(&mut inb, &input, 999).unwrap(), input);
}

/// The local node's DOWN for a peer's monitor (MONITOR_P_EXIT, and
/// PAYLOAD_MONITOR_P_EXIT with its reason after the control message) ends
/// it in the host's count, at any cut; the tunnel's end ends the rest.
#[test]
fn the_local_nodes_downs_and_the_tunnels_end_release_the_peers_monitors() {
    let peer_ref = |n: u32| {
        Term::Ref(etf::Ref {
            node: Arc::from("c@hostc"),
            creation: 9,
            ids: vec![n, 0, 0],
        })
    };
    let local = Term::Pid(Pid {
        node: Arc::from("b@mon"),
        id: 5,
        serial: 0,
        creation: 5,
    });
    let mut out_stream = vec![0, 1, b'a'];
    let down = Term::Tuple(vec![
        Term::Int(21),
        local.clone(),
        peer_pid(),
        peer_ref(1),
        atom("normal"),
    ]);
    out_stream.extend(d_frame(&[0], &enc(&down)));
    let mut t = enc(&Term::Tuple(vec![Term::Int(28), local, peer_pid(), peer_ref(2)]));
    t.extend(enc(&atom("killed")));
    out_stream.extend(d_frame(&[0], &t));
    for step in [1, 3, 1000] {
        let mem = Memory::shared("b@mon");
        let fw = Firewall::new(policy(), "hostc", mem.clone(), Metrics::new([]));
        let mut inb = Inbound::new(fw.clone(), true);
        let mut input = vec![0, 1, b'r'];
        for n in 1..=3 {
            let monitor = Term::Tuple(vec![Term::Int(19), peer_pid(), atom("cache"), peer_ref(n)]);
            input.extend(d_frame(&[0], &enc(&monitor)));
        }
        run(&mut inb, &input, 4096).unwrap();
        assert_eq!(mem.lock().unwrap().monitors(), 3);
        let mut o = Outbound::new(fw.clone(), false);
        for c in out_stream.chunks(step) {
            assert_eq!(o.feed(c, false), c.len());
        }
        assert_eq!(mem.lock().unwrap().monitors(), 1, "step {step}");
        let host = mem.lock().unwrap().host.clone();
        assert_eq!(host.monitors(), 1);
        drop((inb, o, fw));
        assert_eq!(host.monitors(), 0, "the tunnel's end ends its monitors");
    }
}

/// Eighth review, finding 1: a node allocates room for every fragment a
/// message's first fragment announces (40 bytes each, unchecked), so one
/// frame announcing 2^35 fragments of a send to a listed name halted b.
/// Invariant: the fragments the peer's messages in progress announce stay
/// within MAX_FRAGMENTS all together, and each message's fragments come
/// numbered down by one to 1, as the node counts them (one skipped or
/// repeated would leave the node holding a message erlmesh thinks done);
/// otherwise the tunnel ends before the node has the frame. At any cut.
#[test]
fn fragment_counts_are_bounded_and_in_order() {
    let data = reg_send_data("cache", &Term::Bytes(vec![1; 3000]));
    let with_count = |_seq: u64, first_count: u64, frames: &[Vec<u8>]| -> Vec<Vec<u8>> {
        let mut f = frames.to_vec();
        f[0][4 + 2 + 8..4 + 2 + 16].copy_from_slice(&first_count.to_be_bytes());
        f
    };
    for step in [1, 7, 4096] {
        // A message of 3 fragments passes whole.
        let (_fw, mut inb, mut input) = inbound(&format!("s{step}@frags"));
        let frames = fragments(1, &data, 3);
        let expected: Vec<u8> = frames.concat();
        input.extend(frames.concat());
        assert_eq!(run(&mut inb, &input, step).unwrap()[7..], expected[..], "step {step}");
        // One announcing 2^35: refused before any of it reaches the node.
        let (_fw, mut inb, mut input) = inbound(&format!("t{step}@frags"));
        input.extend(with_count(2, 1 << 35, &fragments(2, &data, 3)).concat());
        let (out, r) = run_until_error(&mut inb, &input, step);
        let e = r.unwrap_err();
        assert!(e.to_string().contains("announce more than"), "{e}");
        assert!(out.len() <= 7, "step {step}: the node got part of it");
        // Many within the per-message reach, over the bound together.
        let (_fw, mut inb, mut input) = inbound(&format!("u{step}@frags"));
        for seq in 0..5 {
            input.extend(with_count(seq, MAX_FRAGMENTS / 4, &fragments(seq, &data, 3))[0].clone());
        }
        let e = run(&mut inb, &input, step).unwrap_err();
        assert!(e.to_string().contains("announce more than"), "{e}");
        // Out of order: a fragment skipped, repeated, or numbered up.
        for order in [[3u64, 1, 0], [3, 3, 2], [3, 4, 2], [3, 2, 2]] {
            let (_fw, mut inb, mut input) = inbound(&format!("v{step}{order:?}@frags"));
            let mut frames = fragments(9, &data, 3);
            for (i, f) in frames.iter_mut().enumerate() {
                f[4 + 2 + 8..4 + 2 + 16].copy_from_slice(&order[i].to_be_bytes());
            }
            frames.truncate(if order[2] == 0 { 2 } else { 3 });
            input.extend(frames.concat());
            let e = run(&mut inb, &input, step).unwrap_err();
            assert!(e.to_string().contains("out of order"), "{order:?}: {e}");
        }
    }
    // Finished messages make room again: one left unfinished near the
    // bound, then two of two fragments one after the other.
    let (_fw, mut inb, mut input) = inbound("w@frags");
    input.extend(with_count(0, MAX_FRAGMENTS - 2, &fragments(0, &data, 2))[0].clone());
    for seq in 1..=2 {
        input.extend(fragments(seq, &data, 2).concat());
    }
    run(&mut inb, &input, 4096).unwrap();
}

/// Ninth review, finding 2: the bound on announced fragments was per
/// tunnel, and a host may open many (200 tunnels, each one frame: b grew
/// by 2 GiB). Invariant: the fragments all of a peer host's tunnels'
/// messages in progress announce stay within MAX_HOST_FRAGMENTS; a
/// tunnel's end gives its share back.
#[test]
fn announced_fragments_are_bounded_per_host() {
    let all = crate::firewall::memory::Memories::default();
    let data = reg_send_data("cache", &Term::Bytes(vec![1; 300]));
    let mut first = fragments(1, &data, 2)[0].clone();
    first[4 + 2 + 8..4 + 2 + 16].copy_from_slice(&MAX_FRAGMENTS.to_be_bytes());
    let open = |i: usize| {
        let mem = all.pair("hostc", "b@frags", &format!("f{i}@hostc"));
        let fw = Firewall::new(policy(), "hostc", mem, Metrics::new([]));
        let mut inb = Inbound::new(fw.clone(), true);
        let mut input = vec![0, 1, b'r'];
        input.extend_from_slice(&first);
        let r = run(&mut inb, &input, 4096).map(|_| ());
        (fw, inb, r)
    };
    let per_host = MAX_HOST_FRAGMENTS / MAX_FRAGMENTS as usize;
    let mut open_ones: Vec<_> = (0..per_host).map(open).collect();
    assert!(open_ones.iter().all(|(_, _, r)| r.is_ok()));
    let (_fw, _inb, r) = open(per_host);
    let e = r.unwrap_err();
    assert!(e.to_string().contains("over its tunnels"), "{e}");
    let host = open_ones[0].0.host.clone();
    assert_eq!(host.fragments(), MAX_HOST_FRAGMENTS);
    open_ones.pop();
    assert_eq!(host.fragments(), MAX_HOST_FRAGMENTS - MAX_FRAGMENTS as usize);
    let (_fw, _inb, r) = open(per_host + 1);
    r.unwrap();
}

/// The names b's global holds for the peer are given back when b's global
/// gets the DOWN of its monitor of their holder (seen going out, then
/// coming back), at any cut.
#[test]
fn b_globals_downs_give_back_the_peers_names() {
    let local = |id| {
        Term::Pid(Pid {
            node: Arc::from("b@gn"),
            id,
            serial: 0,
            creation: 5,
        })
    };
    let b_ref = Term::Ref(etf::Ref {
        node: Arc::from("b@gn"),
        creation: 5,
        ids: vec![77, 1, 2],
    });
    let holder = peer_pid();
    let mem = Memory::shared("b@gn");
    let fw = Firewall::new(policy(), "hostc", mem.clone(), Metrics::new([]));
    // b's global (pid 3) casts to c's global: learnt as global.
    let mut out = vec![0, 1, b'a'];
    let mut cast = enc(&Term::Tuple(vec![
        Term::Int(6),
        local(3),
        atom(""),
        atom("global_name_server"),
    ]));
    cast.extend(enc(&Term::Tuple(vec![
        atom("$gen_cast"),
        Term::Tuple(vec![atom("in_sync"), atom("b@gn"), atom("true")]),
    ])));
    out.extend(d_frame(&[0], &cast));
    let mut o = Outbound::new(fw.clone(), false);
    assert_eq!(o.feed(&out, false), out.len());
    // c registers a name for its process; b's global monitors it.
    let mut inb = Inbound::new(fw.clone(), true);
    let tag = Term::Ref(etf::Ref {
        node: Arc::from("c@hostc"),
        creation: 9,
        ids: vec![1, 2, 3],
    });
    let from = Term::Tuple(vec![peer_pid(), tag.clone()]);
    let register = Term::Tuple(vec![
        atom("$gen_call"),
        from,
        Term::Tuple(vec![atom("register"), atom("n"), holder.clone(), atom("m")]),
    ]);
    let mut input = vec![0, 1, b'r'];
    input.extend(d_frame(&[0], &{
        let mut d = enc(&Term::Tuple(vec![
            Term::Int(6),
            peer_pid(),
            atom(""),
            atom("global_name_server"),
        ]));
        d.extend(enc(&register));
        d
    }));
    run(&mut inb, &input, 4096).unwrap();
    let host = mem.lock().unwrap().host.clone();
    assert_eq!(host.global(), 1);
    let monitor = d_frame(
        &[0],
        &enc(&Term::Tuple(vec![
            Term::Int(19),
            local(3),
            holder.clone(),
            b_ref.clone(),
        ])),
    );
    assert_eq!(o.feed(&monitor, false), monitor.len());
    // The holder ends: c's node sends the DOWN, here in three fragments
    // (PAYLOAD_MONITOR_P_EXIT, a reason of 60 000 integers: too many terms
    // to decode, judged on its top and walked). b has it at the last:
    // nothing is given back before (seventeenth review: frames judged
    // between reach b first; eighteenth: then it is given back).
    let mut payload = enc(&Term::Tuple(vec![Term::Int(28), holder, local(3), b_ref]));
    payload.extend([108]);
    payload.extend(60_000u32.to_be_bytes());
    for i in 0..60_000u32 {
        payload.extend([97, i as u8]);
    }
    payload.push(106);
    let cut = fragments(41, &payload, 3);
    for f in &cut[..2] {
        run(&mut inb, f, 4096).unwrap();
        assert_eq!(host.global(), 1, "given back before the DOWN's last fragment");
    }
    run(&mut inb, &cut[2], 4096).unwrap();
    // b's global has not answered the registration yet (as far as the
    // filter saw): it may not have processed it, so the name waits.
    assert_eq!(
        host.global(),
        1,
        "given back before b's global answered the registration"
    );
    // {Tag, yes} to the caller (SEND_SENDER {22, From, To}): from another
    // process of b's, nothing; from b's global, the name goes.
    let answer = |from: Term| {
        let mut d = enc(&Term::Tuple(vec![Term::Int(22), from, peer_pid()]));
        d.extend(enc(&Term::Tuple(vec![tag.clone(), atom("yes")])));
        d_frame(&[0], &d)
    };
    let other = answer(local(4));
    assert_eq!(o.feed(&other, false), other.len());
    assert_eq!(
        host.global(),
        1,
        "an answer from another process than b's global counted"
    );
    let answer = answer(local(3));
    assert_eq!(o.feed(&answer, false), answer.len());
    assert_eq!(host.global(), 0, "the DOWN gave the name back");
}

/// Eighteenth review: a frame whose terms end before its end (declared
/// longer, the rest never sent) ends the tunnel: judged on its first
/// bytes, it would have given back counts while the node waited for it.
#[test]
fn a_frame_whose_terms_end_before_its_end_ends_the_tunnel() {
    let r = peer_ref();
    let demonitor = enc(&Term::Tuple(vec![Term::Int(20), peer_pid(), atom("cache"), r]));
    let mut frame = d_frame(&[0], &demonitor);
    let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) + 10;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    let (_fw, mut inb, mut input) = inbound("b@trailing");
    input.extend(&frame);
    let e = run(&mut inb, &input, 4096).unwrap_err();
    assert!(e.to_string().contains("terms end before its end"), "{e}");
    // The same as a message of one fragment (nineteenth review).
    let mut one = fragments(3, &demonitor, 1).remove(0);
    let len = u32::from_be_bytes(one[..4].try_into().unwrap()) + 10;
    one[..4].copy_from_slice(&len.to_be_bytes());
    let (_fw, mut inb, mut input) = inbound("b@trailing1");
    input.extend(&one);
    let e = run(&mut inb, &input, 4096).unwrap_err();
    assert!(e.to_string().contains("terms end before its end"), "{e}");
}

/// Seventeenth review, finding 2: a fragmented message whose terms are
/// all in its first fragment (or in the fragments held so far) ends the
/// tunnel, before the node has any of it; one whose terms end with its
/// last fragment passes, at any cut.
#[test]
fn a_fragmented_message_whose_terms_end_early_ends_the_tunnel() {
    let monitor = enc(&Term::Tuple(vec![
        Term::Int(19),
        peer_pid(),
        atom("cache"),
        Term::Ref(etf::Ref {
            node: Arc::from("c@hostc"),
            creation: 9,
            ids: vec![1, 2, 3],
        }),
    ]));
    let mut early = fragments(5, &monitor, 1);
    // Announce two fragments, the second empty.
    early[0][4 + 2 + 8 + 7] = 2;
    early.extend(fragments(5, &[], 1).into_iter().map(|mut f| {
        f[4 + 1] = etf::DIST_FRAG_CONT;
        f.truncate(4 + 2 + 16);
        let len = (f.len() - 4) as u32;
        f[..4].copy_from_slice(&len.to_be_bytes());
        f
    }));
    let (_fw, mut inb, mut input) = inbound("b@early");
    input.extend(early.concat());
    let e = run(&mut inb, &input, 4096).unwrap_err();
    assert!(e.to_string().contains("before its last fragment"), "{e}");
    // The same message to the cache, its bytes cut where they end: passes.
    let msg = reg_send_data("cache", &Term::Tuple(vec![atom("put"), atom("k"), Term::Int(1)]));
    for n in [2, 3] {
        let (_fw, mut inb, mut input) = inbound(&format!("b@ok{n}"));
        input.extend(fragments(7, &msg, n).concat());
        let out = run(&mut inb, &input, 4096).unwrap();
        assert!(out.len() > msg.len(), "{n} fragments did not pass");
    }
}

/// Thirteenth review: a frame judged again on more bytes parsed its
/// header again against a cache its first parse had changed: a header
/// that refers to slot 0 (rex) and then sets slot 0 (cache) was judged,
/// on its second try, as a send to the listed cache, and the node ran
/// rex's call. Invariant: a header's references resolve against the cache
/// as it was before the frame (and the header's own earlier entries), on
/// every try, at any cut, as the node reads them.
#[test]
fn a_frame_judged_again_reads_its_header_as_the_node_does() {
    // Frame 1 sets slot 0 := rex (a send to the cache, written out).
    let mut t1 = enc(&Term::Tuple(vec![Term::Int(6), peer_pid(), atom(""), atom("cache")]));
    t1.extend(enc(&atom("hello")));
    let frame1 = d_frame(&[1, 0x08, 0, 3, b'r', b'e', b'x'], &t1);
    // Frame 2: refs [slot 0 as it was (rex), slot 0 := cache]; a REG_SEND
    // to ref 0 with a 60 kB binary in its unused field, then an rpc call.
    let mut t2 = vec![104, 4, 97, 6];
    t2.extend(enc(&peer_pid()));
    t2.extend([109]);
    t2.extend(60_000u32.to_be_bytes());
    t2.extend(std::iter::repeat(0).take(60_000));
    t2.extend([82, 0]);
    t2.extend(enc(&Term::Tuple(vec![
        atom("$gen_call"),
        Term::Tuple(vec![
            peer_pid(),
            Term::Ref(etf::Ref {
                node: Arc::from("c@hostc"),
                creation: 9,
                ids: vec![5, 6, 7],
            }),
        ]),
        Term::Tuple(vec![atom("call"), atom("os"), atom("cmd"), Term::Nil, atom("user")]),
    ])));
    let frame2 = d_frame(&[2, 0x80, 0x00, 0, 0, 5, b'c', b'a', b'c', b'h', b'e'], &t2);
    for step in [1000, 7000, 70_000] {
        let (_fw, mut inb, mut input) = inbound(&format!("h{step}@retry"));
        input.extend_from_slice(&frame1);
        input.extend_from_slice(&frame2);
        let out = run(&mut inb, &input, step).unwrap();
        assert!(
            out.len() < 7 + frame1.len() + 1000,
            "step {step}: the send to rex reached the node ({} bytes out)",
            out.len()
        );
    }
}

/// Twenty-third review: a global sync erlmesh cuts (an entry naming a
/// third node's process) whose atoms are all cached already: its header
/// refers to slots and sets none. It went out with an empty header and
/// the peer's bytes still referring to slot 0, which the node cannot
/// read (it drops the connection: a legitimate peer's second `new_nodes`
/// on a connection is such a frame). The header now goes with the cut
/// message whole. The same sync in fragments (dropped whole before, so
/// that global's sync waited) goes in one frame of its own in place of
/// its fragments, which the node never had.
#[test]
fn a_cut_global_sync_keeps_the_atom_cache_header_it_refers_to() {
    let mem = Memory::shared("b@rx");
    mem.lock().unwrap().set_remote("c@hostc");
    let fw = Firewall::new(policy(), "hostc", mem.clone(), Metrics::new([]));
    let mut inb = Inbound::new(fw.clone(), true);
    let third = Term::Pid(Pid {
        node: Arc::from("a@hosta"),
        id: 3,
        serial: 0,
        creation: 4,
    });
    let ctl = enc(&Term::Tuple(vec![
        Term::Int(6),
        peer_pid(),
        atom(""),
        atom("global_name_server"),
    ]));
    // Frame 1 sets slot 5 to `exchange` (an in_sync cast).
    let mut f1 = ctl.clone();
    f1.extend(enc(&Term::Tuple(vec![
        atom("$gen_cast"),
        Term::Tuple(vec![atom("in_sync"), atom("c@hostc"), atom("true")]),
    ])));
    let f1 = d_frame(&[1, 0x08, 5, 8, b'e', b'x', b'c', b'h', b'a', b'n', b'g', b'e'], &f1);
    // Frame 2 refers to slot 5 (set already): `exchange` as [82, 0].
    let entry = |n: &str, p: Term| Term::Tuple(vec![atom(n), p, atom("m")]);
    let mut msg = vec![104, 2];
    msg.extend(enc(&atom("$gen_cast")));
    msg.extend([104, 5, 82, 0]);
    msg.extend(enc(&atom("c@hostc")));
    msg.extend(enc(&Term::List(
        vec![entry("mine", peer_pid()), entry("third", third.clone())],
        Box::new(Term::Nil),
    )));
    msg.extend(enc(&Term::Nil));
    msg.extend(enc(&atom("tag")));
    let mut f2 = ctl.clone();
    f2.extend(&msg);
    let f2 = d_frame(&[1, 0x00, 5], &f2);
    let mut input = vec![0, 5, b'r', 1, 2, 3, 4];
    let hs = input.len();
    input.extend(&f1);
    input.extend(&f2);
    let out = run(&mut inb, &input, 4096).unwrap();
    let after = &out[hs + f1.len()..];
    assert_eq!(&after[4..9], &[131, 68, 1, 0x00, 5], "the header, whole");
    assert!(
        after.windows(2).any(|w| w == [82, 0]),
        "the cut message still refers to slot 0"
    );
    assert!(
        !after.windows(5).any(|w| w == b"third"),
        "the third node's entry is cut"
    );
    assert!(after.windows(4).any(|w| w == b"mine"));
    // In fragments: nothing of it reaches the node.
    let mem = Memory::shared("b@rx2");
    mem.lock().unwrap().set_remote("c@hostc");
    let fw = Firewall::new(policy(), "hostc", mem.clone(), Metrics::new([]));
    let mut inb = Inbound::new(fw.clone(), true);
    let mut data = ctl.clone();
    data.extend(enc(&Term::Tuple(vec![
        atom("$gen_cast"),
        Term::Tuple(vec![
            atom("exchange"),
            atom("c@hostc"),
            Term::List(
                vec![entry("mine", peer_pid()), entry("third", third)],
                Box::new(Term::Nil),
            ),
            Term::Nil,
            atom("tag"),
        ]),
    ])));
    let mut input = vec![0, 5, b'r', 1, 2, 3, 4];
    for f in fragments(7, &data, 3) {
        input.extend(f);
    }
    let out = run(&mut inb, &input, 4096).unwrap();
    let after = &out[hs..];
    let len = u32::from_be_bytes(after[..4].try_into().unwrap()) as usize;
    assert_eq!(after.len(), 4 + len, "one frame in place of the three fragments");
    assert_eq!(
        &after[4..7],
        &[131, 68, 0],
        "a frame of its own (the first fragment's header), not a fragment"
    );
    let mut d = etf::Decoder::new(&after[7..], &[]);
    let ctl = d.term().unwrap();
    assert!(matches!(ctl.tuple(), Some([Term::Int(6), ..])), "{ctl:?}");
    let m = d.term().unwrap();
    assert!(d.rest().is_empty());
    let req = &m.tuple().unwrap()[1];
    assert_eq!(
        req.tuple().unwrap()[2],
        Term::List(vec![entry("mine", peer_pid())], Box::new(Term::Nil))
    );
    assert!(
        !after.windows(5).any(|w| w == b"third"),
        "the third node's entry is cut"
    );
    assert!(after.windows(4).any(|w| w == b"mine"));
    assert_eq!(mem.lock().unwrap().host.global(), 1, "the peer's own name counted");
}
