//! The atom bound ([`crate::firewall::atoms`]) at the filter: what the node
//! gets from a restricted peer never makes it create more than the
//! policy's `max_atoms` atoms, whatever the frames and cuts.

use super::tests::{atom, d_frame, enc, peer_pid, run_until_error, seed};
use super::*;
use crate::firewall::atoms::HostAtoms;
use crate::firewall::etf::Pid;
use crate::mesh::policy::Pattern;

const MAX: usize = 30;

fn firewall(mem: &Arc<Mutex<Memory>>) -> Arc<Firewall> {
    let policy = Arc::new(DistPolicy {
        name: "edge".into(),
        mode: Mode::Enforce,
        spawn: false,
        registered: vec![Pattern::new("cache")],
        exit_signals: false,
        max_atoms: MAX,
        max_monitors: crate::firewall::memory::DEFAULT_MAX_MONITORS,
        max_global_names: crate::firewall::names::MAX_GLOBAL_HELD,
    });
    Firewall::new(policy, "hostc", mem.clone(), Metrics::new([]))
}

/// The atom cache part of a distribution header: entries in segment 0,
/// each a slot and, when it sets the slot, the atom's text.
fn header(entries: &[(u8, Option<String>)]) -> Vec<u8> {
    let n = entries.len();
    if n == 0 {
        return vec![0];
    }
    let mut flags = vec![0u8; n / 2 + 1];
    for (i, (_, new)) in entries.iter().enumerate() {
        if new.is_some() {
            flags[i / 2] |= if i % 2 == 0 { 0x08 } else { 0x80 };
        }
    }
    let mut h = vec![n as u8];
    h.extend(flags);
    for (slot, new) in entries {
        h.push(*slot);
        if let Some(t) = new {
            h.push(t.len() as u8);
            h.extend(t.as_bytes());
        }
    }
    h
}

/// A fragment frame of message `seq`: the first carries `header`.
fn fragment(seq: u64, left: u64, header: Option<&[u8]>, part: &[u8]) -> Vec<u8> {
    let tag = if header.is_some() {
        etf::DIST_FRAG_HEADER
    } else {
        etf::DIST_FRAG_CONT
    };
    let mut body = vec![etf::VERSION, tag];
    body.extend(seq.to_be_bytes());
    body.extend(left.to_be_bytes());
    body.extend(header.unwrap_or_default());
    body.extend_from_slice(part);
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend(body);
    f
}

/// Every atom text a node creates from the complete frames in `out` (after
/// the handshake's `hs` bytes): the header's new entries, and every atom
/// in the terms of messages it has whole.
fn atoms_at_node(out: &[u8], hs: usize, seen: &mut HashSet<String>) {
    let mut cache = AtomCache::default();
    let mut partial: HashMap<u64, (Refs, Vec<u8>)> = HashMap::new();
    let collect = |refs: &Refs, data: &[u8], seen: &mut HashSet<String>| {
        let mut d = Decoder::new(data, &refs.atoms);
        while !d.rest().is_empty() {
            let t = d.term().expect("the node gets terms");
            t.visit(&mut |t| match t {
                Term::Atom(a) | Term::Port(a) => {
                    seen.insert(a.to_string());
                }
                Term::Pid(p) => {
                    seen.insert(p.node.to_string());
                }
                Term::Ref(r) => {
                    seen.insert(r.node.to_string());
                }
                _ => {}
            });
        }
    };
    let mut at = hs;
    while at + 4 <= out.len() {
        let len = u32::from_be_bytes(out[at..at + 4].try_into().unwrap()) as usize;
        let Some(body) = out.get(at + 4..at + 4 + len) else {
            break; // cut by the tunnel's end: never taken by the node
        };
        at += 4 + len;
        if body.is_empty() {
            continue;
        }
        let fragment_ids = |b: &[u8]| {
            let seq = u64::from_be_bytes(b[2..10].try_into().unwrap());
            (seq, u64::from_be_bytes(b[10..18].try_into().unwrap()))
        };
        match body[1] {
            etf::DIST_HEADER => {
                let refs = cache.header(&body[2..]).unwrap();
                refs.new.iter().for_each(|&i| {
                    seen.insert(refs.atoms[i].to_string());
                });
                collect(&refs, &body[2 + refs.len..], seen);
            }
            etf::DIST_FRAG_HEADER => {
                let (seq, left) = fragment_ids(body);
                let refs = cache.header(&body[18..]).unwrap();
                refs.new.iter().for_each(|&i| {
                    seen.insert(refs.atoms[i].to_string());
                });
                let data = body[18 + refs.len..].to_vec();
                if left == 1 {
                    collect(&refs, &data, seen);
                } else {
                    partial.insert(seq, (refs, data));
                }
            }
            etf::DIST_FRAG_CONT => {
                let (seq, left) = fragment_ids(body);
                let (_, data) = partial.get_mut(&seq).expect("a fragment of a message begun");
                data.extend_from_slice(&body[18..]);
                if left == 1 {
                    let (refs, data) = partial.remove(&seq).unwrap();
                    collect(&refs, &data, seen);
                }
            }
            t => panic!("the node got a frame of kind {t}"),
        }
    }
}

/// An element of a generated message.
enum Item {
    /// The header's entry `i`, by atom cache reference.
    Cached(u8),
    /// An atom written out.
    Inline(String),
    /// A pid whose node's name is written out.
    PidOf(String),
}

/// The invariant of [`HostAtoms`]: a restricted peer's frames make the
/// node create at most `max_atoms` atoms, counting new atom cache entries
/// (refused messages' headers too, which reach the node in a stand-in)
/// and atoms written out in messages that pass: in the control message,
/// in the message, as node names of pids, whole or fragmented. Attacked
/// with seeded sessions (each a new connection, with a cache of its own,
/// the host's count kept) of such frames cut anywhere; past the bound a
/// tunnel ends, and a message of atoms the node already has still passes.
#[test]
fn a_restricted_peer_never_makes_the_node_create_more_than_max_atoms() {
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    let atoms = HostAtoms::alone();
    let mem = Arc::new(Mutex::new(Memory::counting("b@atoms", atoms.clone())));
    // The dialler's name, counted when its tunnel was admitted.
    assert!(atoms.admit("c@hostc", MAX));
    let mut at_node: HashSet<String> = HashSet::from(["c@hostc".to_owned()]);
    let mut texts: Vec<String> = Vec::new();
    let mut fresh = 0;
    let mut pick = |rng: &mut fastrand::Rng, node: bool| {
        if !texts.is_empty() && rng.u8(0..3) == 0 {
            return texts[rng.usize(..texts.len())].clone();
        }
        fresh += 1;
        let t = if node {
            format!("n{fresh}@x")
        } else {
            format!("f{fresh}")
        };
        texts.push(t.clone());
        t
    };
    let mut ended = 0;
    for session in 0..60 {
        let fw = firewall(&mem);
        let mut inb = Inbound::new(fw.clone(), true);
        let hs = vec![0, 5, b'r', 1, 2, 3, 4];
        let mut input = hs.clone();
        let mut slots: HashMap<u8, String> = HashMap::new();
        for n in 0..rng.usize(1..12) {
            let mut entries: Vec<(u8, Option<String>)> = Vec::new();
            for _ in 0..rng.usize(0..4) {
                let slot = rng.u8(0..16);
                if entries.iter().any(|(s, _)| *s == slot) {
                    continue;
                }
                if slots.contains_key(&slot) && rng.bool() {
                    entries.push((slot, None));
                } else {
                    let t = pick(&mut rng, false);
                    slots.insert(slot, t.clone());
                    entries.push((slot, Some(t)));
                }
            }
            let items: Vec<Item> = (0..rng.usize(0..6))
                .map(|_| match rng.u8(0..3) {
                    0 if !entries.is_empty() => Item::Cached(rng.u8(..entries.len() as u8)),
                    1 => Item::PidOf(pick(&mut rng, true)),
                    _ => Item::Inline(pick(&mut rng, false)),
                })
                .collect();
            let to = if rng.u8(0..5) == 0 { "nobody" } else { "cache" };
            let mut data = enc(&Term::Tuple(vec![Term::Int(6), peer_pid(), atom(""), atom(to)]));
            data.extend([104, items.len() as u8]);
            for it in &items {
                match it {
                    Item::Cached(i) => data.extend([82, *i]),
                    Item::Inline(t) => data.extend(enc(&atom(t))),
                    Item::PidOf(t) => data.extend(enc(&Term::Pid(Pid {
                        node: Arc::from(t.as_str()),
                        id: 1,
                        serial: 0,
                        creation: 1,
                    }))),
                }
            }
            let h = header(&entries);
            if rng.u8(0..3) == 0 {
                let parts: Vec<&[u8]> = data.chunks(data.len().div_ceil(rng.usize(2..4))).collect();
                for (i, part) in parts.iter().enumerate() {
                    let left = (parts.len() - i) as u64;
                    input.extend(fragment(n as u64 + 1, left, (i == 0).then_some(&h[..]), part));
                }
            } else {
                input.extend(d_frame(&h, &data));
            }
        }
        let step = [1, 5, 64, 1 << 20][rng.usize(..4)];
        let (out, r) = run_until_error(&mut inb, &input, step);
        if let Err(e) = r {
            assert!(
                e.to_string().contains("max_atoms"),
                "seed {seed} session {session}: only the bound ends a tunnel here: {e}"
            );
            ended += 1;
        }
        atoms_at_node(&out, hs.len(), &mut at_node);
        // The stand-in's own name (one atom, erlmesh's, not the peer's).
        at_node.remove("$erlmesh_refused");
        assert!(
            at_node.len() <= MAX,
            "seed {seed} session {session}: the node got {} atoms: {at_node:?}",
            at_node.len()
        );
    }
    assert!(ended > 0, "seed {seed}: the bound was reached");
    // Past the bound, what the node already has still passes: atoms this
    // host brought, and atoms the local node sent it.
    mem.lock().unwrap().learn_atom("sent_by_b");
    let mut known: Vec<String> = at_node.iter().filter(|t| !t.contains('@')).cloned().collect();
    known.push("sent_by_b".into());
    let fw = firewall(&mem);
    let mut inb = Inbound::new(fw, true);
    let mut input = vec![0, 5, b'r', 1, 2, 3, 4];
    let mut data = enc(&Term::Tuple(vec![Term::Int(6), peer_pid(), atom(""), atom("cache")]));
    data.extend(enc(&Term::Tuple(known.iter().map(|t| atom(t)).collect())));
    input.extend(d_frame(&[0], &data));
    let (out, r) = run_until_error(&mut inb, &input, 7);
    if at_node.contains("cache") && at_node.contains("") {
        r.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(out, input, "seed {seed}: known atoms pass");
    }
}

/// Exports count as atoms do: a node makes an export entry of every
/// `fun M:F/A` it decodes and never frees one (its table full halts it),
/// so 40 exports of one module and function, arities 0 to 39, pass the
/// bound of 30 though they bring three atoms.
#[test]
fn exports_count_as_atoms_do() {
    let atoms = HostAtoms::alone();
    let mem = Arc::new(Mutex::new(Memory::counting("b@exports", atoms.clone())));
    assert!(atoms.admit("c@hostc", MAX));
    let mut inb = Inbound::new(firewall(&mem), true);
    let mut input = vec![0, 5, b'r', 1, 2, 3, 4];
    let mut data = enc(&Term::Tuple(vec![Term::Int(6), peer_pid(), atom(""), atom("cache")]));
    data.extend([108, 0, 0, 0, 40]);
    for a in 0..40u8 {
        data.push(113);
        data.extend(enc(&atom("m")));
        data.extend(enc(&atom("f")));
        data.extend([97, a]);
    }
    data.push(106);
    input.extend(d_frame(&[0], &data));
    let (out, r) = run_until_error(&mut inb, &input, 9);
    let e = r.expect_err("past the bound");
    assert!(e.to_string().contains("m:f:"), "{e}");
    assert!(out.len() < input.len(), "the message never reaches the node whole");
    // Fewer pass.
    let mut inb = Inbound::new(firewall(&mem), true);
    let mut input = vec![0, 5, b'r', 1, 2, 3, 4];
    let mut data = enc(&Term::Tuple(vec![Term::Int(6), peer_pid(), atom(""), atom("cache")]));
    data.extend([104, 2, 113]);
    data.extend(enc(&atom("m")));
    data.extend(enc(&atom("f")));
    data.extend([97, 0]);
    data.extend(enc(&atom("m")));
    input.extend(d_frame(&[0], &data));
    let (out, r) = run_until_error(&mut inb, &input, 9);
    r.unwrap();
    assert_eq!(out, input, "an export already counted passes");
}

/// A refused frame's stand-in names the peer's node only: a sender of a
/// made-up node (never counted, its frame refused unwalked) must not
/// become the stand-in's pid, or each such frame brings the node an atom.
#[test]
fn a_stand_in_never_names_a_made_up_node() {
    let atoms = HostAtoms::alone();
    let mut m = Memory::counting("b@standin", atoms.clone());
    m.set_remote("c@hostc");
    let mem = Arc::new(Mutex::new(m));
    let mut inb = Inbound::new(firewall(&mem), true);
    let hs = vec![0, 5, b'r', 1, 2, 3, 4];
    let mut input = hs.clone();
    // A frame of the peer's own (its pid learnt), then refused LINKs from
    // made-up nodes, each re-setting a cache entry.
    let mut ok = enc(&Term::Tuple(vec![Term::Int(6), peer_pid(), atom(""), atom("cache")]));
    ok.extend(enc(&atom("x")));
    input.extend(d_frame(&[0], &ok));
    for i in 0..5 {
        let fake = Term::Pid(Pid {
            node: Arc::from(format!("fresh{i}@evil").as_str()),
            id: 7,
            serial: 0,
            creation: 1,
        });
        let local = Term::Pid(Pid {
            node: Arc::from("b@standin"),
            id: 40,
            serial: 0,
            creation: 1,
        });
        let link = enc(&Term::Tuple(vec![Term::Int(1), fake, local]));
        input.extend(d_frame(&header(&[(0, Some("foo".into()))]), &link));
    }
    let (out, r) = run_until_error(&mut inb, &input, 11);
    r.unwrap();
    let mut seen = HashSet::new();
    atoms_at_node(&out, hs.len(), &mut seen);
    assert!(!seen.iter().any(|a| a.contains("evil")), "{seen:?}");
    assert!(seen.contains("c@hostc"), "the stand-ins name the peer's node: {seen:?}");
}
