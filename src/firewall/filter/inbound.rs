//! The peer's frames on their way to the node: framing, the atom cache,
//! fragments held until judged, stand-ins for refused frames.

use super::*;

/// Where the reader is in the frame stream.
#[derive(serde::Serialize, serde::Deserialize)]
enum At {
    /// Reading a length prefix (2 or 4 bytes by phase).
    Len {
        got: [u8; 4],
        n: usize,
    },
    /// A handshake frame: passed, its first byte looked at.
    Handshake {
        left: usize,
        first: bool,
    },
    /// A frame's bytes held until it is judged; judged again once `held`
    /// reaches `retry` bytes or the frame is complete, so that a large
    /// frame is parsed a bounded number of times.
    Head {
        len: usize,
        held: Vec<u8>,
        retry: usize,
    },
    Pass {
        left: usize,
        walk: Walk,
    },
    Drop {
        left: usize,
    },
}

/// A message that passed on its top alone, walked as it goes by for what
/// it names ([`Judgement::walk`]).
#[derive(serde::Serialize, serde::Deserialize)]
struct Walking {
    atoms: Vec<etf::Atom>,
    walker: Walker,
    /// A DOWN in fragments: given back once its last fragment has passed.
    #[serde(default)]
    down: Option<Down>,
}

/// A DOWN of a monitor the local global or pg scope made ([`Judgement::down`]):
/// from, to, the monitor's reference.
type Down = (etf::Pid, etf::Pid, etf::Ref);

/// Open compound terms a walk of the peer's message follows: a message
/// nested deeper ends the tunnel. Bounds a walk's memory to 8 KiB.
const MAX_WALK_DEPTH: usize = 1024;

/// What walks the bytes of a frame that passes.
#[derive(serde::Serialize, serde::Deserialize)]
enum Walk {
    None,
    /// A whole message in this frame.
    Frame(Box<Walking>),
    /// A fragment of message `seq` (the last one: `true`), walked by its
    /// [`Seq::Walking`].
    Seq(u64, bool),
}

/// A fragmented message from the peer.
#[derive(serde::Serialize, serde::Deserialize)]
enum Seq {
    /// Judged: pass or drop its remaining fragments.
    Decided(bool),
    /// Passing on its top alone: its fragments are walked.
    Walking(Box<Walking>),
    /// Held until enough of it is there: its data so far, its header's
    /// atoms and atom-cache bytes. Its frames wait in [`Inbound::hold`].
    Held {
        body: Vec<u8>,
        refs: Refs,
        header: Vec<u8>,
        /// Judged again once `body` is this long, or at the last fragment.
        retry: usize,
    },
}

/// What waits behind a held fragmented message, in arrival order.
#[derive(serde::Serialize, serde::Deserialize)]
enum Held {
    /// A frame of message `seq`: its bytes up to its data (length prefix,
    /// fragment header, atom cache header), its data being `data` of the
    /// message's body (held once, in [`Seq::Held`]).
    Frame {
        seq: u64,
        head: Vec<u8>,
        data: Range<usize>,
    },
    /// Bytes for the node, judged already.
    Out(Vec<u8>),
}

/// What to do with one frame.
enum Decision {
    Need,
    Pass(Walk),
    Drop(Option<Vec<u8>>),
    /// A frame of message `seq` held until more of it comes (`last`: the
    /// last one), its data now `data` of the message's body.
    Held {
        seq: u64,
        last: bool,
        data: Range<usize>,
    },
}

/// The peer's frames on their way to the node.
pub struct Inbound {
    /// The firewall, and the bytes this direction holds: frame heads,
    /// bodies of held messages and what waits in `hold`.
    share: Share,
    phase: Phase,
    at: At,
    cache: AtomCache,
    seqs: HashMap<u64, Seq>,
    /// Non-empty while a fragmented message waits for a decision: every
    /// later frame waits behind it, so that the node sees the frames (and
    /// their atom cache updates) in the order they came.
    hold: VecDeque<Held>,
    /// The fragment each fragmented message in progress must send next
    /// (each one less than the last, down to 1), with what its first
    /// announced, as the node keeps them: their sum is `announced`.
    frags: HashMap<u64, Frags>,
    announced: u64,
    /// The atom cache entries the frame being judged sets: applied once
    /// it is decided (a frame judged again on more bytes reads its header
    /// against the cache as it was before it, as the node does).
    pending: Vec<(usize, etf::Atom)>,
    /// The DOWN the frame passing now carries: given back once its last
    /// byte has gone to the node (a frame that never ends gives nothing
    /// back while the node waits for it).
    frame_down: Option<Down>,
}

/// A fragmented message in progress: what its first fragment announced
/// (the node's allocation for it) and the number the next must carry.
#[derive(Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Frags {
    announced: u64,
    next: u64,
}

/// What [`Inbound::export`] writes, borrowed.
#[derive(serde::Serialize)]
struct InboundView<'a> {
    phase: &'a Phase,
    at: &'a At,
    cache: &'a AtomCache,
    seqs: &'a HashMap<u64, Seq>,
    hold: &'a VecDeque<Held>,
    frags: &'a HashMap<u64, Frags>,
    frame_down: &'a Option<Down>,
}

/// What [`Inbound::import`] reads.
#[derive(serde::Deserialize)]
struct InboundOwned {
    phase: Phase,
    at: At,
    cache: AtomCache,
    seqs: HashMap<u64, Seq>,
    hold: VecDeque<Held>,
    #[serde(default)]
    frags: HashMap<u64, Frags>,
    #[serde(default)]
    frame_down: Option<Down>,
}

impl Drop for Inbound {
    /// The tunnel's messages in progress end with it, at the node too.
    fn drop(&mut self) {
        self.fw().host.give_fragments(self.announced as usize);
    }
}

impl Inbound {
    /// Fragmented messages in progress.
    pub fn in_fragments(&self) -> usize {
        self.seqs.len()
    }

    /// This direction's state for the next process (`erlmesh upgrade`):
    /// framing, atom cache, messages in progress and frames held.
    pub fn export(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::to_value(InboundView {
            phase: &self.phase,
            at: &self.at,
            cache: &self.cache,
            seqs: &self.seqs,
            hold: &self.hold,
            frags: &self.frags,
            frame_down: &self.frame_down,
        })
    }

    /// The direction a previous process exported, under `fw` (what it
    /// holds is counted in `fw`'s budget again).
    pub fn import(fw: Arc<Firewall>, v: serde_json::Value) -> io::Result<Inbound> {
        let o: InboundOwned = serde_json::from_value(v).map_err(io::Error::other)?;
        let mut inbound = Inbound {
            share: Share { fw, held: 0 },
            phase: o.phase,
            at: o.at,
            cache: o.cache,
            seqs: o.seqs,
            hold: o.hold,
            announced: 0,
            frags: HashMap::new(),
            pending: Vec::new(),
            frame_down: o.frame_down,
        };
        for (seq, f) in o.frags {
            inbound.announce(seq, f.announced)?;
            if let Some(mine) = inbound.frags.get_mut(&seq) {
                mine.next = f.next.min(f.announced);
            }
        }
        let held = inbound.counted();
        inbound.share.take(held)?;
        Ok(inbound)
    }

    /// `peer_dials`: the peer's node is the dialler (its handshake ends
    /// with its challenge reply), else the acceptor (challenge ack).
    pub fn new(fw: Arc<Firewall>, peer_dials: bool) -> Inbound {
        Inbound {
            share: Share { fw, held: 0 },
            phase: Phase::Handshake {
                ends_on: if peer_dials { CHALLENGE_REPLY } else { CHALLENGE_ACK },
            },
            at: At::Len { got: [0; 4], n: 0 },
            cache: AtomCache::default(),
            seqs: HashMap::new(),
            hold: VecDeque::new(),
            frags: HashMap::new(),
            announced: 0,
            pending: Vec::new(),
            frame_down: None,
        }
    }

    /// The frame's header, read against the cache as it was before the
    /// frame; its entries wait in `pending` until the frame is decided.
    fn peek_header(&mut self, rest: &[u8]) -> Result<Refs, DecodeError> {
        let (refs, updates) = self.cache.peek_header(rest)?;
        self.pending = updates;
        Ok(refs)
    }

    fn fw(&self) -> &Arc<Firewall> {
        &self.share.fw
    }

    /// Bytes this direction holds, counted from what it holds: always
    /// its share of the budget.
    fn counted(&self) -> usize {
        let head = match &self.at {
            At::Head { held, .. } => held.len(),
            _ => 0,
        };
        let bodies: usize = self
            .seqs
            .values()
            .map(|s| match s {
                Seq::Held { body, .. } => body.len(),
                Seq::Decided(_) | Seq::Walking(_) => 0,
            })
            .sum();
        let waiting: usize = self
            .hold
            .iter()
            .map(|h| match h {
                Held::Frame { head, .. } => head.len(),
                Held::Out(v) => v.len(),
            })
            .sum();
        head + bodies + waiting
    }

    /// Bytes this direction holds for judging.
    pub fn held(&self) -> usize {
        self.share.held
    }

    fn prefix(&self) -> usize {
        match self.phase {
            Phase::Handshake { .. } => 2,
            Phase::Connected => 4,
        }
    }

    /// Sends bytes on to the node, or behind a held message.
    fn emit(&mut self, out: &mut Vec<Seg>, buf: &[u8], seg: Seg) -> io::Result<()> {
        if self.hold.is_empty() {
            match seg {
                Seg::Buf(r) => push_buf(out, r),
                other => out.push(other),
            }
            return Ok(());
        }
        let bytes: Vec<u8> = match seg {
            Seg::Buf(r) => buf[r].to_vec(),
            Seg::Own(v) => v,
            Seg::Len(n) => n.to_vec(),
        };
        self.share.take(bytes.len())?;
        match self.hold.back_mut() {
            Some(Held::Out(v)) => v.extend_from_slice(&bytes),
            _ => self.hold.push_back(Held::Out(bytes)),
        }
        Ok(())
    }

    /// Reads `buf[range]` (plaintext from the peer) and appends what the
    /// node gets to `out`. An error ends the tunnel.
    pub fn feed(&mut self, buf: &[u8], range: Range<usize>, out: &mut Vec<Seg>) -> io::Result<()> {
        let mut pos = range.start;
        let end = range.end;
        while pos < end {
            let avail = end - pos;
            let next_len = At::Len { got: [0; 4], n: 0 };
            match std::mem::replace(&mut self.at, At::Len { got: [0; 4], n: 0 }) {
                At::Len { mut got, mut n } => {
                    let want = self.prefix();
                    let k = (want - n).min(avail);
                    got[n..n + k].copy_from_slice(&buf[pos..pos + k]);
                    n += k;
                    pos += k;
                    if n < want {
                        self.at = At::Len { got, n };
                        continue;
                    }
                    if want == 2 {
                        let len = u16::from_be_bytes([got[0], got[1]]) as usize;
                        self.emit(out, buf, Seg::Own(got[..2].to_vec()))?;
                        self.at = At::Handshake { left: len, first: true };
                        continue;
                    }
                    let len = u32::from_be_bytes(got) as usize;
                    if len == 0 {
                        self.emit(out, buf, Seg::Len([0; 4]))?;
                    } else {
                        self.at = At::Head {
                            len,
                            held: Vec::new(),
                            retry: 0,
                        };
                    }
                }
                At::Handshake { mut left, first } => {
                    let k = left.min(avail);
                    if first && k > 0 {
                        if let Phase::Handshake { ends_on } = self.phase {
                            if buf[pos] == ends_on {
                                self.phase = Phase::Connected;
                            }
                        }
                    }
                    self.emit(out, buf, Seg::Buf(pos..pos + k))?;
                    left -= k;
                    pos += k;
                    self.at = if left == 0 {
                        next_len
                    } else {
                        At::Handshake { left, first: false }
                    };
                }
                At::Pass { mut left, mut walk } => {
                    let k = left.min(avail);
                    self.walk(&mut walk, &buf[pos..pos + k])?;
                    self.emit(out, buf, Seg::Buf(pos..pos + k))?;
                    left -= k;
                    pos += k;
                    if left > 0 {
                        self.at = At::Pass { left, walk };
                    } else {
                        self.walked(walk);
                    }
                }
                At::Drop { mut left } => {
                    let k = left.min(avail);
                    left -= k;
                    pos += k;
                    if left > 0 {
                        self.at = At::Drop { left };
                    }
                }
                At::Head { len, mut held, retry } => {
                    let want = len - held.len();
                    let k = want.min(avail);
                    let complete = k == want;
                    let was_held = !held.is_empty();
                    if was_held {
                        self.share.take(k)?;
                        held.extend_from_slice(&buf[pos..pos + k]);
                        if held.len() < retry && !complete {
                            pos += k;
                            self.at = At::Head { len, held, retry };
                            continue;
                        }
                    }
                    let decision = if was_held {
                        self.decide(&held, complete)?
                    } else {
                        self.decide(&buf[pos..pos + k], complete)?
                    };
                    let left = want - k;
                    if !matches!(decision, Decision::Need) {
                        self.share.give(held.len());
                        let updates = std::mem::take(&mut self.pending);
                        self.cache.apply(updates);
                    }
                    match decision {
                        Decision::Need => {
                            if complete {
                                return Err(malformed("a frame that ends before its control message"));
                            }
                            if !was_held {
                                self.share.take(k)?;
                                held.extend_from_slice(&buf[pos..pos + k]);
                            }
                            let retry = (2 * held.len()).max(MIN_RETRY);
                            self.at = At::Head { len, held, retry };
                        }
                        Decision::Pass(walk) => {
                            self.emit(out, buf, Seg::Len((len as u32).to_be_bytes()))?;
                            if was_held {
                                self.emit(out, buf, Seg::Own(held))?;
                            } else {
                                self.emit(out, buf, Seg::Buf(pos..pos + k))?;
                            }
                            if left > 0 {
                                self.at = At::Pass { left, walk };
                            } else {
                                self.walked(walk);
                            }
                        }
                        Decision::Drop(standin) => {
                            if let Some(s) = standin {
                                self.emit(out, buf, Seg::Own(s))?;
                            }
                            if left > 0 {
                                self.at = At::Drop { left };
                            }
                        }
                        Decision::Held { seq, last, data } => {
                            // The frame's data is in the message's body
                            // now; what waits here is what comes before it.
                            let frame = if was_held { &held[..] } else { &buf[pos..pos + k] };
                            let mut head = (len as u32).to_be_bytes().to_vec();
                            head.extend_from_slice(&frame[..frame.len() - data.len()]);
                            self.share.take(head.len())?;
                            self.hold.push_back(Held::Frame { seq, head, data });
                            self.rejudge(seq, last, out)?;
                        }
                    }
                    pos += k;
                }
            }
        }
        debug_assert_eq!(self.counted(), self.share.held, "held bytes and the budget part ways");
        Ok(())
    }

    /// Judges a frame from its first bytes `b` (all of it
    /// when `complete`).
    fn decide(&mut self, b: &[u8], complete: bool) -> io::Result<Decision> {
        let need = |e: Unjudged| match e {
            Unjudged::Need => Ok(Decision::Need),
            Unjudged::Malformed(w) => Err(malformed(w)),
        };
        let hdr = |e: DecodeError| match e {
            DecodeError::Truncated => Ok(Decision::Need),
            DecodeError::Malformed(w) | DecodeError::TooLarge(w) => Err(malformed(w)),
        };
        match b {
            [] | [etf::VERSION] => Ok(Decision::Need),
            [etf::PASS_THROUGH, body @ ..] => match self.judge(&[], body, true) {
                Ok(_) if !complete && ends_early(&[], body, true) => Err(malformed(FRAME_ENDS_EARLY)),
                Ok(j) => {
                    let down = j.down.clone();
                    let d = self.verdict(j, None, &[], body, true, complete)?;
                    Ok(self.downed(down, d))
                }
                Err(e) => need(e),
            },
            [etf::VERSION, etf::DIST_HEADER, rest @ ..] => {
                let refs = match self.peek_header(rest) {
                    Ok(r) => r,
                    Err(e) => return hdr(e),
                };
                self.header_atoms(&refs)?;
                match self.judge(&refs.atoms, &rest[refs.len..], false) {
                    Ok(_) if !complete && ends_early(&refs.atoms, &rest[refs.len..], false) => {
                        Err(malformed(FRAME_ENDS_EARLY))
                    }
                    Ok(j) => {
                        let down = j.down.clone();
                        let keep = refs.sets_cache || cut(&j);
                        let d = self.verdict(
                            j,
                            keep.then_some(&rest[..refs.len]),
                            &refs.atoms,
                            &rest[refs.len..],
                            false,
                            complete,
                        )?;
                        Ok(self.downed(down, d))
                    }
                    Err(e) => need(e),
                }
            }
            [etf::VERSION, etf::DIST_FRAG_HEADER, ..] | [etf::VERSION, etf::DIST_FRAG_CONT, ..]
                if b.len() < FRAG_HEADER =>
            {
                Ok(Decision::Need)
            }
            [etf::VERSION, etf::DIST_FRAG_HEADER, ..] => {
                let (seq, frag) = frag_ids(b);
                if frag == 0 {
                    return Err(malformed("fragment number 0"));
                }
                if self.seqs.contains_key(&seq) {
                    return Err(malformed("a fragmented message started twice"));
                }
                let rest = &b[FRAG_HEADER..];
                let refs = match self.peek_header(rest) {
                    Ok(r) => r,
                    Err(e) => return hdr(e),
                };
                self.header_atoms(&refs)?;
                let header = &rest[..refs.len];
                let data = &rest[refs.len..];
                match self.judge(&refs.atoms, data, false) {
                    Ok(j) => {
                        if (frag > 1 || !complete) && ends_early(&refs.atoms, data, false) {
                            return Err(malformed(if frag > 1 { ENDS_EARLY } else { FRAME_ENDS_EARLY }));
                        }
                        let whole = complete && frag == 1;
                        let down = j.down.clone();
                        let keep = refs.sets_cache || cut(&j);
                        let d = self.verdict(j, keep.then_some(header), &refs.atoms, data, false, whole)?;
                        if frag == 1 {
                            return Ok(self.downed(down, d));
                        }
                        self.new_seq(seq, frag)?;
                        Ok(match d {
                            Decision::Pass(Walk::Frame(mut w)) => {
                                w.down = down;
                                self.seqs.insert(seq, Seq::Walking(w));
                                Decision::Pass(Walk::Seq(seq, false))
                            }
                            d => {
                                self.seqs.insert(seq, Seq::Decided(matches!(d, Decision::Pass(_))));
                                d
                            }
                        })
                    }
                    Err(Unjudged::Need) if complete && frag > 1 => {
                        self.new_seq(seq, frag)?;
                        self.share.take(data.len())?;
                        self.seqs.insert(
                            seq,
                            Seq::Held {
                                body: data.to_vec(),
                                refs: refs.clone(),
                                header: header.to_vec(),
                                retry: 2 * data.len(),
                            },
                        );
                        Ok(Decision::Held {
                            seq,
                            last: false,
                            data: 0..data.len(),
                        })
                    }
                    Err(e) => need(e),
                }
            }
            [etf::VERSION, etf::DIST_FRAG_CONT, ..] => {
                let (seq, frag) = frag_ids(b);
                let last = frag == 1;
                self.in_order(seq, frag)?;
                match self.seqs.get_mut(&seq) {
                    None => Err(malformed("a fragment of no message in progress")),
                    Some(Seq::Decided(pass)) => {
                        let pass = *pass;
                        if last {
                            self.seqs.remove(&seq);
                        }
                        self.took_fragment(seq, frag);
                        Ok(if pass {
                            Decision::Pass(Walk::None)
                        } else {
                            Decision::Drop(None)
                        })
                    }
                    Some(Seq::Walking(_)) => {
                        let mut walk = Walk::Seq(seq, last);
                        self.walk(&mut walk, &b[FRAG_HEADER..])?;
                        self.took_fragment(seq, frag);
                        Ok(Decision::Pass(walk))
                    }
                    Some(Seq::Held { .. }) if !complete => Ok(Decision::Need),
                    Some(Seq::Held { .. }) => {
                        let data = &b[FRAG_HEADER..];
                        self.share.take(data.len())?;
                        self.took_fragment(seq, frag);
                        let Some(Seq::Held { body, .. }) = self.seqs.get_mut(&seq) else {
                            unreachable!("matched above");
                        };
                        let at = body.len();
                        body.extend_from_slice(data);
                        Ok(Decision::Held {
                            seq,
                            last,
                            data: at..body.len(),
                        })
                    }
                }
            }
            [etf::VERSION, ..] => Err(malformed("unknown distribution header")),
            _ => Err(malformed(
                "a frame that is neither a distribution header nor pass-through",
            )),
        }
    }

    /// A held message got a frame: judge it again; once decided, its frames
    /// pass or go (a stand-in keeping its atom cache updates), and what
    /// waited behind it moves on.
    fn rejudge(&mut self, seq: u64, last: bool, out: &mut Vec<Seg>) -> io::Result<()> {
        match self.seqs.get(&seq) {
            Some(Seq::Held { body, retry, .. }) if body.len() >= *retry || last => {}
            _ => return Ok(()),
        }
        let Some(Seq::Held { body, refs, header, .. }) = self.seqs.remove(&seq) else {
            unreachable!("matched above");
        };
        let decision = match self.judge(&refs.atoms, &body, false) {
            Err(Unjudged::Need) if !last => {
                let retry = 2 * body.len();
                self.seqs.insert(
                    seq,
                    Seq::Held {
                        body,
                        refs,
                        header,
                        retry,
                    },
                );
                return Ok(());
            }
            Err(Unjudged::Need) => {
                self.share.give(body.len());
                return Err(malformed("a fragmented message that ends before its control message"));
            }
            Err(Unjudged::Malformed(w)) => {
                self.share.give(body.len());
                return Err(malformed(w));
            }
            Ok(_) if !last && ends_early(&refs.atoms, &body, false) => {
                self.share.give(body.len());
                return Err(malformed(ENDS_EARLY));
            }
            Ok(j) => {
                let down = j.down.clone();
                // A cut message goes in one frame of its own in place of
                // all its fragments (the node has none of them yet), with
                // the first fragment's atom cache header.
                let cut = cut(&j) && last;
                let d = self.verdict(j, cut.then_some(&header[..]), &refs.atoms, &body, false, last)?;
                (d, down, cut)
            }
        };
        let (decision, down, cut) = decision;
        let mut instead = match decision {
            Decision::Drop(Some(ref v)) if cut => Some(v.clone()),
            _ => None,
        };
        let pass = matches!(decision, Decision::Pass(_));
        if !last {
            let decided = match decision {
                Decision::Pass(Walk::Frame(mut w)) => {
                    w.down = down;
                    Seq::Walking(w)
                }
                _ => Seq::Decided(pass),
            };
            self.seqs.insert(seq, decided);
        } else if pass {
            // Its frames go out below, all of them.
            self.give_down(down);
        }
        // The body and the frames' heads are let go; what goes on to the
        // node (the frames, or one stand-in) is taken again.
        let (mut freed, mut taken) = (body.len(), 0);
        let mut standin_due = !pass && refs.sets_cache && instead.is_none();
        for h in self.hold.iter_mut() {
            let Held::Frame { seq: s, head, data } = h else {
                continue;
            };
            if *s != seq {
                continue;
            }
            freed += head.len();
            let bytes = if pass {
                let mut f = std::mem::take(head);
                f.extend_from_slice(&body[data.clone()]);
                f
            } else if let Some(v) = instead.take() {
                v
            } else if std::mem::take(&mut standin_due) {
                standin_for(&header, &self.share.fw.mem())?
            } else {
                Vec::new()
            };
            taken += bytes.len();
            *h = Held::Out(bytes);
        }
        drop(body);
        self.share.give(freed);
        self.share.take(taken)?;
        while let Some(Held::Out(_)) = self.hold.front() {
            if let Some(Held::Out(v)) = self.hold.pop_front() {
                self.share.give(v.len());
                if !v.is_empty() {
                    out.push(Seg::Own(v));
                }
            }
        }
        Ok(())
    }

    /// A DOWN that passes: what it drops is given back once the node has
    /// all of it ([`Judgement::down`]): at the end of its frame, or of its
    /// last fragment.
    fn downed(&mut self, down: Option<Down>, d: Decision) -> Decision {
        let Some(down) = down else {
            return d;
        };
        match &d {
            Decision::Pass(Walk::Seq(s, _)) => {
                if let Some(Seq::Walking(w)) = self.seqs.get_mut(s) {
                    w.down = Some(down);
                }
            }
            Decision::Pass(_) => self.frame_down = Some(down),
            _ => {}
        }
        d
    }

    fn give_down(&self, down: Option<Down>) {
        if let Some((from, to, r)) = down {
            self.share.fw.mem().apply_down(&from, &to, &r);
        }
    }

    fn new_seq(&mut self, seq: u64, frags: u64) -> io::Result<()> {
        if self.seqs.len() >= MAX_SEQUENCES && !self.seqs.contains_key(&seq) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the peer has more than {MAX_SEQUENCES} fragmented messages in progress"),
            ));
        }
        self.announce(seq, frags)
    }

    /// Message `seq`'s first fragment announced `frags` fragments: within
    /// [`MAX_FRAGMENTS`] over all messages in progress, or the tunnel ends
    /// before the node allocates for them.
    fn announce(&mut self, seq: u64, frags: u64) -> io::Result<()> {
        if self.frags.contains_key(&seq) {
            return Err(malformed("a fragmented message started twice"));
        }
        if frags > MAX_FRAGMENTS - self.announced {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the peer's fragmented messages in progress announce more than {MAX_FRAGMENTS} fragments on this tunnel (this one {frags}; the node allocates for each at its first)"
                ),
            ));
        }
        if !self.fw().host.take_fragments(frags as usize, MAX_HOST_FRAGMENTS) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the peer host's fragmented messages in progress announce more than {MAX_HOST_FRAGMENTS} fragments over its tunnels (this one {frags}; the node allocates for each at its first)"
                ),
            ));
        }
        self.announced += frags;
        self.frags.insert(
            seq,
            Frags {
                announced: frags,
                next: frags - 1,
            },
        );
        Ok(())
    }

    /// Whether fragment `frag` is the one message `seq` must send next.
    fn in_order(&self, seq: u64, frag: u64) -> io::Result<()> {
        match self.frags.get(&seq) {
            None => Err(malformed("a fragment of no message in progress")),
            Some(f) if f.next != frag => Err(malformed(
                "a fragment out of order (each must be numbered one less than the last)",
            )),
            Some(_) => Ok(()),
        }
    }

    /// Fragment `frag` of message `seq` is taken (passed, dropped or held).
    fn took_fragment(&mut self, seq: u64, frag: u64) {
        if frag <= 1 {
            if let Some(f) = self.frags.remove(&seq) {
                self.announced -= f.announced;
                self.fw().host.give_fragments(f.announced as usize);
            }
        } else if let Some(f) = self.frags.get_mut(&seq) {
            f.next = frag - 1;
        }
    }

    /// Walks bytes of a message that passes (see [`walk_chunk`]); what it
    /// must not carry ends the tunnel before the message is whole at the
    /// node (audit mode: reported, and the message goes on unwalked).
    fn walk(&mut self, walk: &mut Walk, chunk: &[u8]) -> io::Result<()> {
        let w: &mut Walking = match walk {
            Walk::None => return Ok(()),
            Walk::Frame(w) => w,
            Walk::Seq(s, _) => match self.seqs.get_mut(s) {
                Some(Seq::Walking(w)) => w,
                _ => return Ok(()),
            },
        };
        let Some(why) = walk_chunk(&self.share.fw, &mut w.walker, chunk, &w.atoms) else {
            return Ok(());
        };
        refuse_walked(&self.share.fw, why)?;
        match walk {
            Walk::Seq(s, _) => {
                self.seqs.insert(*s, Seq::Decided(true));
            }
            w => *w = Walk::None,
        }
        Ok(())
    }

    /// Counts the atoms a distribution header writes out (new cache
    /// entries): the node creates them even when the message is refused.
    fn header_atoms(&self, refs: &Refs) -> io::Result<()> {
        if refs.new.is_empty() {
            return Ok(());
        }
        let fw = self.fw();
        let over = {
            let mem = fw.mem();
            refs.new
                .iter()
                .filter_map(|&i| refs.atoms.get(i))
                .find(|a| !mem.admit_atom(a, fw.policy.max_atoms))
                .cloned()
        };
        if let Some(a) = over {
            refuse_walked(fw, Refusal::atom(&a))?;
        }
        Ok(())
    }

    /// A frame that passed is over: a walked message's last fragment ends
    /// its walk.
    fn walked(&mut self, walk: Walk) {
        match walk {
            Walk::Seq(s, true) => {
                if let Some(Seq::Walking(w)) = self.seqs.remove(&s) {
                    self.give_down(w.down);
                }
            }
            Walk::Seq(..) => {}
            Walk::None | Walk::Frame(_) => {
                let down = self.frame_down.take();
                self.give_down(down);
            }
        }
    }

    /// Judges a control message (and message) in `body`: terms after a
    /// distribution header, or with their version byte in a pass-through
    /// frame (`versioned`), as the node reads each.
    fn judge(&self, refs: &[etf::Atom], body: &[u8], versioned: bool) -> Result<Judgement, Unjudged> {
        let mut mem = self.fw().mem();
        rules::judge(&self.fw().policy, &mut mem, refs, body, versioned)
    }

    /// Pass, or drop (with a stand-in carrying `header` when it set atom
    /// cache entries the node must see). A message that passes is walked
    /// from its first byte (`body`, with the header's `atoms`) for the atoms
    /// written out in it, and, when it passed on its top alone, for what it
    /// names past that top; unless it is `whole` here, the walk goes on
    /// through its next bytes.
    fn verdict(
        &mut self,
        j: Judgement,
        header: Option<&[u8]>,
        atoms: &[etf::Atom],
        body: &[u8],
        versioned: bool,
        whole: bool,
    ) -> io::Result<Decision> {
        let top = j.walk;
        let replace = j.replace.clone();
        let passes = {
            let fw = self.fw();
            let mut sh = fw.shared();
            fw.apply(&mut sh, j)
        };
        if let (true, Some((ctl, m))) = (passes, replace) {
            // In place of the frame: the frame's atom cache header when it
            // set entries (the node's cache must follow) or the message is
            // the peer's own bytes cut (which may refer to it), then the
            // control message erlmesh built (atoms written out: none the
            // peer chose, the sender's node and the target are checked)
            // and the message.
            if !whole {
                return Ok(Decision::Drop(match header {
                    Some(h) => Some(standin_for(h, &self.fw().mem())?),
                    None => None,
                }));
            }
            // The atoms the peer wrote out count as if the frame passed (a
            // pid's node name in another case is another atom).
            let mut walker = Walker::bounded(u64::MAX, versioned, MAX_WALK_DEPTH).atoms_and_from(u64::MAX);
            if let Some(why) = walk_chunk(&self.share.fw, &mut walker, body, atoms) {
                refuse_walked(&self.share.fw, why)?;
            }
            let mut v = vec![0, 0, 0, 0];
            if versioned && header.is_none() {
                v.push(etf::PASS_THROUGH);
                v.push(etf::VERSION);
                etf::encode(&ctl, &mut v);
                v.push(etf::VERSION);
                put(&m, &mut v);
            } else {
                v.extend([etf::VERSION, etf::DIST_HEADER]);
                v.extend_from_slice(header.unwrap_or(&[0]));
                etf::encode(&ctl, &mut v);
                put(&m, &mut v);
            }
            let len = (v.len() - 4) as u32;
            v[..4].copy_from_slice(&len.to_be_bytes());
            return Ok(Decision::Drop(Some(v)));
        }
        if passes {
            let from = top.map_or(u64::MAX, |n| body.len().saturating_sub(n) as u64);
            let mut walker = Walker::bounded(u64::MAX, versioned, MAX_WALK_DEPTH).atoms_and_from(from);
            if let Some(why) = walk_chunk(&self.share.fw, &mut walker, body, atoms) {
                refuse_walked(&self.share.fw, why)?;
                return Ok(Decision::Pass(Walk::None));
            }
            if whole {
                return Ok(Decision::Pass(Walk::None));
            }
            return Ok(Decision::Pass(Walk::Frame(Box::new(Walking {
                atoms: atoms.to_vec(),
                walker,
                down: None,
            }))));
        }
        match header {
            None => Ok(Decision::Drop(None)),
            Some(h) => Ok(Decision::Drop(Some(standin_for(h, &self.fw().mem())?))),
        }
    }
}

/// Whether the node gets the peer's message cut (its own bytes, which may
/// refer to the atom cache): the frame's header then goes with it whole,
/// whether or not it sets entries (without it, a reference to a cached
/// atom would be one the node cannot read, and it would drop the
/// connection: the twenty-third review).
fn cut(j: &Judgement) -> bool {
    matches!(j.replace, Some((_, rules::Msg::Bytes(_))))
}

/// A message erlmesh put in place of the peer's, as the node reads it.
fn put(m: &rules::Msg, v: &mut Vec<u8>) {
    match m {
        rules::Msg::Term(t) => etf::encode(t, v),
        rules::Msg::Bytes(b) => v.extend_from_slice(b),
    }
}

/// Why a tunnel ends on a fragmented message whose terms all came before
/// its last fragment.
const ENDS_EARLY: &str = "a fragmented message whose terms end before its last fragment (the node has a message at its last fragment: judged at its first, it would change erlmesh's count before the node's, behind frames sent between)";

/// Why a tunnel ends on a frame whose terms all came before its end (a
/// frame the node would have only at its end, which may never come, while
/// erlmesh counted it: OTP writes a frame's terms to its end).
const FRAME_ENDS_EARLY: &str = "a frame whose terms end before its end";

/// Whether `body` (a message's first bytes, after its atom cache header;
/// terms with their version byte when `versioned`) holds all the
/// message's terms: its control message, and
/// the message for the operations that carry one. OTP cuts a message into
/// fragments where its bytes end, so its terms end with its last fragment.
fn ends_early(atoms: &[etf::Atom], body: &[u8], versioned: bool) -> bool {
    let mut d = Decoder::new(body, atoms);
    if versioned && d.version().is_err() {
        return false;
    }
    let Ok(ctl) = d.term() else {
        return false;
    };
    let op = ctl.tuple().and_then(|t| t.first()).and_then(Term::int);
    // SEND, REG_SEND, their _TT and _SENDER forms, the PAYLOAD_ exits and
    // DOWN, SPAWN_REQUEST, ALIAS_SEND, ALTACT_SIG_SEND: a control message
    // and a message.
    // An unknown operation is refused (dropped), whatever follows it.
    let terms = match op {
        Some(2 | 6 | 12 | 16 | 22 | 23 | 24..=30 | 33 | 34 | 37) => 2,
        Some(1 | 3..=5 | 7 | 8 | 13 | 18..=21 | 31 | 32 | 35 | 36) => 1,
        _ => return false,
    };
    let mut w = Walker::new(terms, versioned);
    w.feed(body, atoms, &mut |_| {});
    w.done() && !w.failed()
}

/// Why a message from the peer may not pass: it brings the node more new
/// atoms than the policy allows its host.
const TOO_MANY_ATOMS: &str =
    "more new atoms and exports than the policy's max_atoms allows this host (a node whose atom or export table fills halts)";

/// Walks `chunk` of a message that passes: why it must not reach the node,
/// if it must not. Every atom written out in it counts for the peer host
/// ([`HostAtoms`](crate::firewall::atoms::HostAtoms)); a local pid or
/// reference the peer was not given, or a local port, named past its
/// walker's start, is refused (and the pid or reference remembered as
/// forged); a message the walk cannot follow is refused.
fn walk_chunk(fw: &Firewall, walker: &mut Walker, chunk: &[u8], refs: &[etf::Atom]) -> Option<Refusal> {
    let mut why = None;
    {
        let mut mem = fw.mem();
        let max = fw.policy.max_atoms;
        walker.feed(chunk, refs, &mut |f| {
            if why.is_none() {
                why = match &f {
                    Found::Atom(a) => (!mem.admit_atom(a, max)).then(|| Refusal::atom(a)),
                    // An export entry counts as an atom does.
                    Found::Export(k) => {
                        let key = format!("\u{0}export\u{0}{k}");
                        (!mem.admit_atom(&key, max)).then(|| Refusal::atom(&k.replace('\u{0}', ":")))
                    }
                    f => mem.names_forged_found(f).map(Refusal::from),
                };
            }
        });
    }
    if walker.failed() {
        why = why.or(Some(Refusal::from(
            "a message nested too deeply to walk, or not a term",
        )));
    }
    why
}

/// Why a passing message may not reach the node, and the atom it would
/// have brought (named in the log, never in a metric's labels).
struct Refusal {
    why: &'static str,
    atom: Option<String>,
}

impl From<&'static str> for Refusal {
    fn from(why: &'static str) -> Refusal {
        Refusal { why, atom: None }
    }
}

impl Refusal {
    fn atom(a: &str) -> Refusal {
        Refusal {
            why: TOO_MANY_ATOMS,
            atom: Some(a.chars().take(64).collect()),
        }
    }
}

/// A message that passes carries what it may not: the tunnel ends before
/// the node has it whole (audit mode: reported once).
fn refuse_walked(fw: &Firewall, r: Refusal) -> io::Result<()> {
    let (op, target) = if r.why == TOO_MANY_ATOMS {
        ("new_atom", rules::Target::None)
    } else {
        ("send", rules::Target::Pid)
    };
    let j = Judgement {
        op,
        target,
        refused: Some(r.why),
        answer: None,
        walk: None,
        replace: None,
        down: None,
    };
    if fw.apply(&mut fw.shared(), j) {
        return Ok(());
    }
    let atom = r.atom.map(|a| format!(" (the atom {a:?})")).unwrap_or_default();
    Err(io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "dist policy: {}{atom}; the tunnel is ended before the message is whole at the node",
            r.why
        ),
    ))
}

fn standin_for(header: &[u8], mem: &Memory) -> io::Result<Vec<u8>> {
    match &mem.peer_pid {
        Some(p) => Ok(standin(header, p)),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a refused frame set atom cache entries before the peer's node named any of its processes",
        )),
    }
}

/// A frame the node takes and ignores, with a refused frame's atom cache
/// header, so that the node's cache follows: the demonitor of a monitor
/// that does not exist (DEMONITOR_P {20, PeerPid, Name, Ref}; OTP checks
/// that the sender is a pid of the peer's node, and finds no such monitor).
fn standin(header: &[u8], peer_pid: &etf::Pid) -> Vec<u8> {
    let r = etf::Ref {
        node: peer_pid.node.clone(),
        creation: peer_pid.creation,
        ids: vec![0, 0, 0],
    };
    let control = Term::Tuple(vec![
        Term::Int(20),
        Term::Pid(peer_pid.clone()),
        Term::Atom(Arc::from("$erlmesh_refused")),
        Term::Ref(r),
    ]);
    let mut v = vec![0, 0, 0, 0, etf::VERSION, etf::DIST_HEADER];
    v.extend_from_slice(header);
    etf::encode(&control, &mut v);
    let len = (v.len() - 4) as u32;
    v[..4].copy_from_slice(&len.to_be_bytes());
    v
}

/// The firewall's inbound filter on arbitrary bytes, for the fuzz tests:
/// the bytes after a handshake, fed in pieces of `step`. Returns whether
/// they were taken (an error ends a tunnel; a panic would be the bug).
pub fn fuzz_inbound(bytes: &[u8], step: usize) -> bool {
    let policy = Arc::new(DistPolicy {
        name: "fuzz".into(),
        mode: Mode::Enforce,
        spawn: false,
        registered: vec![crate::mesh::policy::Pattern::new("cache")],
        exit_signals: false,
        max_atoms: crate::firewall::atoms::DEFAULT_MAX_ATOMS,
        max_monitors: crate::firewall::memory::DEFAULT_MAX_MONITORS,
        max_global_names: crate::firewall::names::MAX_GLOBAL_HELD,
    });
    let fw = Firewall::new(policy, "fuzz", Memory::shared("b@fuzz"), Metrics::new([]));
    let mut inb = Inbound::new(fw.clone(), true);
    let mut input = vec![0, 1, b'r'];
    input.extend_from_slice(bytes);
    let mut at = 0;
    let step = step.max(1);
    while at < input.len() {
        let end = (at + step).min(input.len());
        let mut segs = Vec::new();
        if inb.feed(&input, at..end, &mut segs).is_err() {
            return false;
        }
        at = end;
    }
    let mut out = Outbound::new(fw, false);
    let mut plain = vec![0, 1, b'a'];
    plain.extend_from_slice(bytes);
    let mut off = 0;
    while off < plain.len() {
        let end = (off + step).min(plain.len());
        off += out.feed(&plain[off..end], false).max(end - off);
    }
    true
}
