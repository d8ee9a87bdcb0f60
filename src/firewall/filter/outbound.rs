//! The local node's frames on their way to the peer: what they give the
//! peer's node, and where they end (answers go out between frames).

use super::*;

/// The local node's frames on their way to the peer: only read.
pub struct Outbound {
    /// The firewall, and the head bytes this direction holds.
    share: Share,
    phase: Phase,
    at: OutAt,
    cache: AtomCache,
    /// The walk of the frame being read, when it is a whole message (or a
    /// fragmented message's last fragment).
    current: Option<(Refs, Walker)>,
    /// The walks of fragmented messages in progress.
    seqs: HashMap<u64, (Refs, Walker)>,
}

#[derive(serde::Serialize, serde::Deserialize)]
enum OutAt {
    Len {
        got: [u8; 4],
        n: usize,
    },
    /// A handshake frame, kept whole: the node's challenge names it.
    Handshake {
        left: usize,
        frame: Vec<u8>,
    },
    /// Head bytes held until the control message decodes.
    Head {
        len: usize,
        held: Vec<u8>,
    },
    /// The rest of a frame, walked (the message, or a fragment of it).
    Walk {
        left: usize,
        seq: Option<u64>,
    },
    Skip {
        left: usize,
    },
}

/// What [`Outbound::export`] writes, borrowed.
#[derive(serde::Serialize)]
struct OutboundView<'a> {
    phase: &'a Phase,
    at: &'a OutAt,
    cache: &'a AtomCache,
    current: &'a Option<(Refs, Walker)>,
    seqs: &'a HashMap<u64, (Refs, Walker)>,
}

/// What [`Outbound::import`] reads.
#[derive(serde::Deserialize)]
struct OutboundOwned {
    phase: Phase,
    at: OutAt,
    cache: AtomCache,
    current: Option<(Refs, Walker)>,
    seqs: HashMap<u64, (Refs, Walker)>,
}

impl Outbound {
    /// Fragmented messages in progress.
    pub fn in_fragments(&self) -> usize {
        self.seqs.len()
    }

    /// This direction's state for the next process (`erlmesh upgrade`).
    pub fn export(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::to_value(OutboundView {
            phase: &self.phase,
            at: &self.at,
            cache: &self.cache,
            current: &self.current,
            seqs: &self.seqs,
        })
    }

    /// The direction a previous process exported, under `fw`.
    pub fn import(fw: Arc<Firewall>, v: serde_json::Value) -> io::Result<Outbound> {
        let o: OutboundOwned = serde_json::from_value(v).map_err(io::Error::other)?;
        let held = match &o.at {
            OutAt::Head { held, .. } => held.len(),
            _ => 0,
        };
        let mut out = Outbound {
            share: Share { fw, held: 0 },
            phase: o.phase,
            at: o.at,
            cache: o.cache,
            current: o.current,
            seqs: o.seqs,
        };
        out.share.take(held)?;
        Ok(out)
    }

    /// `node_dials`: the local node is the dialler.
    pub fn new(fw: Arc<Firewall>, node_dials: bool) -> Outbound {
        Outbound {
            share: Share { fw, held: 0 },
            phase: Phase::Handshake {
                ends_on: if node_dials { CHALLENGE_REPLY } else { CHALLENGE_ACK },
            },
            at: OutAt::Len { got: [0; 4], n: 0 },
            cache: AtomCache::default(),
            current: None,
            seqs: HashMap::new(),
        }
    }

    /// Between two frames of the connected phase: where answers may go.
    pub fn at_boundary(&self) -> bool {
        matches!(self.phase, Phase::Connected) && matches!(self.at, OutAt::Len { n: 0, .. })
    }

    /// Reads `data`; with `stop_at_boundary`, stops at the first frame
    /// boundary reached. Returns the bytes read.
    pub fn feed(&mut self, data: &[u8], stop_at_boundary: bool) -> usize {
        let mut pos = 0;
        let fw = self.share.fw.clone();
        let mut mem = fw.mem();
        while pos < data.len() {
            let avail = data.len() - pos;
            match &mut self.at {
                OutAt::Len { got, n } => {
                    let want = if matches!(self.phase, Phase::Connected) { 4 } else { 2 };
                    let k = (want - *n).min(avail);
                    got[*n..*n + k].copy_from_slice(&data[pos..pos + k]);
                    *n += k;
                    pos += k;
                    if *n < want {
                        continue;
                    }
                    let len = if want == 2 {
                        u16::from_be_bytes([got[0], got[1]]) as usize
                    } else {
                        u32::from_be_bytes(*got) as usize
                    };
                    self.at = if want == 2 {
                        OutAt::Handshake {
                            left: len,
                            frame: Vec::with_capacity(len),
                        }
                    } else if len == 0 {
                        OutAt::Len { got: [0; 4], n: 0 }
                    } else {
                        OutAt::Head { len, held: Vec::new() }
                    };
                }
                OutAt::Handshake { left, frame } => {
                    let k = (*left).min(avail);
                    frame.extend_from_slice(&data[pos..pos + k]);
                    *left -= k;
                    pos += k;
                    if *left == 0 {
                        let frame = std::mem::take(frame);
                        if let Some(name) = challenge_name(&frame) {
                            mem.set_local(name);
                        }
                        if let Phase::Handshake { ends_on } = self.phase {
                            if frame.first() == Some(&ends_on) {
                                self.phase = Phase::Connected;
                            }
                        }
                        self.at = OutAt::Len { got: [0; 4], n: 0 };
                    }
                }
                OutAt::Head { len, held } => {
                    let (len, mut h) = (*len, std::mem::take(held));
                    let before = h.len();
                    let want = len - before;
                    let k = want.min(avail);
                    // Judged where it lies when nothing is held (the usual
                    // case: no copy), else on the held bytes and these.
                    if before > 0 && self.share.take(k).is_err() {
                        // The node's own frame, beyond the budget: stop
                        // reading it rather than hold more (it gives
                        // nothing, which refuses more, never less).
                        self.share.give(before);
                        self.at = OutAt::Skip { left: want };
                        continue;
                    }
                    let tried = if before == 0 {
                        self.head(&mut mem, &data[pos..pos + k], k == want)
                    } else {
                        h.extend_from_slice(&data[pos..pos + k]);
                        self.head(&mut mem, &h, k == want)
                    };
                    if tried.1.is_none() && before == 0 {
                        if self.share.take(k).is_err() {
                            self.at = OutAt::Skip { left: want };
                            continue;
                        }
                        h.extend_from_slice(&data[pos..pos + k]);
                    }
                    match tried {
                        (u, Some(next)) => {
                            self.share.give(h.len());
                            // Bytes of this read the head took; the rest of
                            // the frame is walked or skipped.
                            let used = u.saturating_sub(before).min(k);
                            pos += used;
                            let left = want - used;
                            self.at = match next {
                                HeadDone::Walk(seq) => OutAt::Walk { left, seq },
                                HeadDone::Skip => OutAt::Skip { left },
                            };
                        }
                        (_, None) => {
                            pos += k;
                            self.at = OutAt::Head { len, held: h };
                        }
                    }
                    self.frame_end_check();
                }
                OutAt::Walk { left, seq } => {
                    let k = (*left).min(avail);
                    let chunk = &data[pos..pos + k];
                    let walk = match seq {
                        None => self.current.as_mut(),
                        Some(s) => self.seqs.get_mut(s),
                    };
                    if let Some((refs, w)) = walk {
                        w.feed(chunk, &refs.atoms, &mut |f| give(&mut mem, f));
                    }
                    *left -= k;
                    pos += k;
                    if *left == 0 {
                        if seq.is_none() {
                            self.current = None;
                        }
                        self.at = OutAt::Len { got: [0; 4], n: 0 };
                    }
                }
                OutAt::Skip { left } => {
                    let k = (*left).min(avail);
                    *left -= k;
                    pos += k;
                    if *left == 0 {
                        self.at = OutAt::Len { got: [0; 4], n: 0 };
                    }
                }
            }
            if stop_at_boundary && self.at_boundary() {
                break;
            }
        }
        pos
    }

    fn frame_end_check(&mut self) {
        match self.at {
            OutAt::Walk { left: 0, seq } => {
                if seq.is_none() {
                    self.current = None;
                }
                self.at = OutAt::Len { got: [0; 4], n: 0 };
            }
            OutAt::Skip { left: 0 } => self.at = OutAt::Len { got: [0; 4], n: 0 },
            _ => {}
        }
    }

    /// A frame's head: header and control message read, the message's walk
    /// set up. Returns the bytes of `b` used and what follows, or None
    /// when more bytes are needed.
    fn head(&mut self, mem: &mut Memory, b: &[u8], complete: bool) -> (usize, Option<HeadDone>) {
        let gave_up = (b.len(), Some(HeadDone::Skip));
        let mut updates = Vec::new();
        let (refs, start, seq, frag) = match b {
            [] | [etf::VERSION] => return (0, if complete { gave_up.1 } else { None }),
            [etf::PASS_THROUGH, ..] => (Refs::default(), 1, None, 1),
            [etf::VERSION, etf::DIST_HEADER, rest @ ..] => match self.cache.peek_header(rest) {
                Ok((r, u)) => {
                    updates = u;
                    let n = 2 + r.len;
                    (r, n, None, 1)
                }
                Err(DecodeError::Truncated) if !complete => return (0, None),
                Err(_) => return gave_up,
            },
            [etf::VERSION, etf::DIST_FRAG_HEADER, ..] | [etf::VERSION, etf::DIST_FRAG_CONT, ..]
                if b.len() < FRAG_HEADER =>
            {
                return if complete { gave_up } else { (0, None) }
            }
            [etf::VERSION, etf::DIST_FRAG_CONT, ..] => {
                let (seq, frag) = frag_ids(b);
                return (FRAG_HEADER, Some(self.continued(seq, frag)));
            }
            [etf::VERSION, etf::DIST_FRAG_HEADER, ..] => {
                let (seq, frag) = frag_ids(b);
                match self.cache.peek_header(&b[FRAG_HEADER..]) {
                    Ok((r, u)) => {
                        updates = u;
                        let n = FRAG_HEADER + r.len;
                        (r, n, Some(seq), frag)
                    }
                    Err(DecodeError::Truncated) if !complete => return (0, None),
                    Err(_) => return gave_up,
                }
            }
            _ => return gave_up,
        };
        // The local node has every atom its header writes out.
        for &i in &refs.new {
            if let Some(a) = refs.atoms.get(i) {
                mem.learn_atom(a);
            }
        }
        let versioned = b[0] == etf::PASS_THROUGH;
        let mut d = Decoder::new(&b[start..], &refs.atoms);
        let ctl = (if versioned { d.version() } else { Ok(()) }).and_then(|_| d.term());
        // The header's entries apply once the frame is read to its control
        // message (read again on more bytes, it is read against the cache
        // as it was before it, as on the way in).
        let ctl = match ctl {
            Ok(t) => t,
            Err(DecodeError::Truncated) if !complete => return (0, None),
            Err(_) => {
                self.cache.apply(updates);
                return gave_up;
            }
        };
        self.cache.apply(updates);
        // Control messages give nothing (their sender fields name the
        // machinery too), but for a spawn request's group leader, which the
        // spawned process writes to.
        let t = ctl.tuple().unwrap_or(&[]);
        let op = t.first().and_then(Term::int);
        if let (Some(29 | 30), Some(Term::Pid(gl))) = (op, t.get(3)) {
            mem.give_io_server(gl);
        }
        // MONITOR_P_EXIT {21, FromProc, ToPid, Ref, Reason} and
        // PAYLOAD_MONITOR_P_EXIT {28, ...}: a monitor of the peer's ended
        // with the local process (or was answered noproc).
        if let (Some(21 | 28), Some(Term::Ref(r)), Some(target)) = (op, t.get(3), t.get(1)) {
            mem.monitor_ended(r, target);
        }
        // The local global's monitors of the peer's processes (one for
        // each name or lock it holds for them): MONITOR_P {19, G, P, Ref},
        // DEMONITOR_P {20, G, P, Ref}.
        if let (Some(op @ (19 | 20)), Some(Term::Pid(g)), Some(to), Some(Term::Ref(r))) =
            (op, t.get(1), t.get(2), t.get(3))
        {
            match (mem.machinery_of(g), op, to) {
                (Some(super::super::machinery::GLOBAL), 19, Term::Pid(p)) => mem.global_monitor(r, p, None),
                (Some(super::super::machinery::GLOBAL), 20, Term::Pid(p)) => mem.global_monitor(r, p, Some(false)),
                // The local pg scope's monitors of the peer's scopes.
                (Some(super::super::machinery::PG), 19, Term::Pid(p)) => mem.pg_monitor(r, Some(p)),
                (Some(super::super::machinery::PG), 20, _) => mem.pg_monitor(r, None),
                _ => {}
            }
        }
        // An erpc request global_group makes (erpc:execute_call(Ref,
        // global_group, F, A) spawned on the peer): its result is checked.
        if let (Some(29 | 30), Some(Term::Ref(req)), Some(mfa)) = (op, t.get(1), t.get(4)) {
            let erpc = matches!(mfa.tuple(), Some([Term::Atom(m), Term::Atom(f), Term::Int(4)])
                if &**m == "erpc" && &**f == "execute_call");
            if erpc {
                let mut a = etf::Decoder::limited(d.rest(), d.refs(), 1024);
                let args = (if versioned { a.version() } else { Ok(()) }).and_then(|_| a.term());
                if let Ok(Term::List(args, _)) = args {
                    if matches!(args.get(1), Some(Term::Atom(m)) if &**m == "global_group") {
                        mem.expect_global_group_result(req);
                    }
                }
            }
        }
        // SEND_SENDER {22, From, To} and ALIAS_SEND {33, From, Alias} from
        // the local global: an answer to a call of the peer's, maybe
        // (`names.rs`: it tells what global processed, and whether a lock
        // was set). Answers are small: a longer or partial message is none.
        // ALTACT_SIG_SEND {37, Flags, From, To, ...} too (OTP 28 and later
        // send alias messages so).
        let (from, to) = match op {
            Some(22 | 33) => (t.get(1), t.get(2)),
            Some(37) => (t.get(2), t.get(3)),
            _ => (None, None),
        };
        if let (Some(Term::Pid(g)), Some(to)) = (from, to) {
            if complete
                && seq.is_none()
                && frag <= 1
                && mem.machinery_of(g) == Some(super::super::machinery::GLOBAL)
                && mem.global_awaits_answers()
            {
                let mut a = etf::Decoder::limited(d.rest(), d.refs(), 1024);
                if let Ok(m) = (if versioned { a.version() } else { Ok(()) }).and_then(|_| a.term()) {
                    mem.global_answer(to, &m);
                }
            }
        }
        let used = start + d.pos;
        // A whole message whose shape decides what it gives (a call, a
        // message to the peer's machinery) is decoded; any other gives
        // every pid and reference in it, found by the walk without decoding.
        let to_name = match (op, t.get(1).and_then(Term::int), t.get(3)) {
            (Some(6 | 16), _, Some(Term::Atom(a))) => Some(&**a),
            (Some(37), Some(f), Some(Term::Atom(a))) if f & 8 != 0 => Some(&**a),
            _ => None,
        };
        // pg's answers by pid (discover, a sync or local_data cast) are its
        // scope's: learnt as pg's, not given.
        let shaped = to_name.is_some_and(|n| machinery_name(n).is_some())
            || match rules::peek(&d, versioned) {
                Ok((3, Some(tag))) => matches!(&*tag, "$gen_call" | "io_reply" | "discover"),
                Ok((2, Some(tag))) if &*tag == "discover" => true,
                // Only pg's casts (any other cast is walked, not decoded).
                Ok((2, Some(tag))) if &*tag == "$gen_cast" => match rules::peek_element(&d, versioned, 1) {
                    Ok((3, Some(t))) => &*t == "sync",
                    Ok((4, Some(t))) => &*t == "local_data",
                    _ => false,
                },
                _ => false,
            };
        if shaped && complete && seq.is_none() && frag <= 1 {
            let sender = match (op, t.get(1), t.get(2)) {
                (Some(37), _, Some(Term::Pid(p))) | (Some(_), Some(Term::Pid(p)), _) => Some(p),
                _ => None,
            };
            let m = (if versioned { d.version() } else { Ok(()) }).and_then(|_| d.term());
            match m {
                Ok(m) => {
                    mem.give_message(sender, to_name, &m);
                    return (b.len(), Some(HeadDone::Skip));
                }
                Err(_) => return gave_up,
            }
        }
        let walker = Walker::new(1, versioned);
        match seq {
            Some(s) if frag > 1 => {
                if self.seqs.len() < MAX_SEQUENCES {
                    self.seqs.insert(s, (refs, walker));
                }
                (used, Some(HeadDone::Walk(Some(s))))
            }
            _ => {
                self.current = Some((refs, walker));
                (used, Some(HeadDone::Walk(None)))
            }
        }
    }

    fn continued(&mut self, seq: u64, frag: u64) -> HeadDone {
        if frag <= 1 {
            // The last fragment: walked, then forgotten.
            if let Some(v) = self.seqs.remove(&seq) {
                self.current = Some(v);
                return HeadDone::Walk(None);
            }
            return HeadDone::Skip;
        }
        if self.seqs.contains_key(&seq) {
            HeadDone::Walk(Some(seq))
        } else {
            HeadDone::Skip
        }
    }
}

/// The node name in a node's challenge (`'N'`: flags 8, challenge 4,
/// creation 4, name length 2; old `'n'`: version 2, flags 4, challenge 4,
/// then the name to the end).
fn challenge_name(f: &[u8]) -> Option<&str> {
    let name = match f.first()? {
        b'N' => {
            let n = u16::from_be_bytes([*f.get(17)?, *f.get(18)?]) as usize;
            f.get(19..19 + n)?
        }
        b'n' => f.get(11..)?,
        _ => return None,
    };
    std::str::from_utf8(name).ok()
}

enum HeadDone {
    Walk(Option<u64>),
    Skip,
}

fn give(mem: &mut Memory, f: Found) {
    match f {
        Found::Pid(p) => mem.give_pid(&p),
        Found::Ref(r) => mem.give_ref(&r),
        // A port gives nothing: no peer may name one of this node's.
        Found::Port(_) | Found::Atom(_) | Found::Export(_) => {}
    }
}
