//! A tunnel's distribution traffic under a dist policy, both ways.
//!
//! [`Inbound`] reads the peer's bytes as the node would: the handshake's
//! 2-byte frames until the peer's last handshake message, then 4-byte
//! frames (ticks, distribution headers with the atom cache, fragments,
//! pass-through frames). Each frame is held until [`rules::judge`] can
//! decide on it (usually its first bytes), then passed on as it lies in the
//! record buffer, or dropped. A refused frame that set atom cache entries
//! is replaced by a no-op with the same header, so that the node's cache
//! and this one never part ways. A fragmented message is decided when
//! enough of it has arrived; its fragments are held until then (frames of
//! other processes pass meanwhile: OTP sends one process's messages in
//! order, and a process finishes a fragmented message before its next).
//!
//! [`Outbound`] reads the local node's bytes for the pids and references it
//! gives the peer's node (and the links it makes), and knows where frames
//! end, so that answers to refused requests go out between frames.

use super::etf::{self, AtomCache, DecodeError, Decoder, Refs, Term};
use super::rules::{self, Judgement, Memory, Unjudged};
use super::walk::{Found, Walker};
use super::{DistPolicy, Mode};
use crate::ops::metrics::Metrics;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// Bytes held for decisions at once, per tunnel: a message to the
/// machinery is judged whole, and larger ones are refused.
const MAX_HELD: usize = 8 << 20;
/// Answers to refused requests waiting for a frame boundary of the local
/// node's stream; beyond this (a peer flooding refused spawns faster than
/// it reads), further refusals go unanswered.
const MAX_ANSWERS: usize = 1024;
/// Bytes of a frame held before it is judged again after a first try
/// fell short; then each try waits for twice the bytes of the last.
const MIN_RETRY: usize = 512;
/// Fragmented messages in progress at once, per tunnel and direction.
const MAX_SEQUENCES: usize = 4096;
/// Distinct (operation, target, verdict) lines logged per tunnel; counts
/// go on in the metrics.
const MAX_LOGGED: usize = 64;
/// Bytes of a fragment's header before its data: tag, sequence, fragment.
const FRAG_HEADER: usize = 2 + 8 + 8;
/// The handshake's last message: the dialler's challenge reply, the
/// acceptor's challenge ack. After it, frames have 4-byte lengths.
const CHALLENGE_REPLY: u8 = b'r';
const CHALLENGE_ACK: u8 = b'a';

fn malformed(why: &'static str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed distribution frame from the peer: {why}"),
    )
}

/// What a tunnel's two directions share: the policy, what the local node
/// gave the peer, answers waiting for a frame boundary, and accounting.
pub struct Firewall {
    policy: Arc<DistPolicy>,
    peer: String,
    metrics: Arc<Metrics>,
    shared: Mutex<Shared>,
    /// What the local node gave the peer's node (shared by their
    /// successive connections).
    mem: Arc<Mutex<Memory>>,
    /// Wakes the outbound direction when an answer is queued.
    pub wake: tokio::sync::Notify,
}

struct Shared {
    answers: Vec<Vec<u8>>,
    logged: HashSet<(&'static str, String, Option<&'static str>)>,
}

impl Firewall {
    /// The firewall of a tunnel between `local_node` and `remote_node` of
    /// host `peer`.
    pub fn new(
        policy: Arc<DistPolicy>,
        peer: &str,
        local_node: &str,
        remote_node: &str,
        metrics: Arc<Metrics>,
    ) -> Arc<Firewall> {
        metrics.dist_policy_in_use(peer, &policy);
        Arc::new(Firewall {
            policy,
            peer: peer.to_owned(),
            metrics,
            mem: rules::memory_for(local_node, remote_node),
            shared: Mutex::new(Shared {
                answers: Vec::new(),
                logged: HashSet::new(),
            }),
            wake: tokio::sync::Notify::new(),
        })
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mem(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.mem.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers to send to the peer's node, taken.
    pub fn take_answers(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.shared().answers)
    }

    pub fn has_answers(&self) -> bool {
        !self.shared().answers.is_empty()
    }

    /// Counts and logs a judgement; says whether to pass the frame.
    fn apply(&self, sh: &mut Shared, j: Judgement) -> bool {
        let refused = j.refused.is_some();
        let enforce = self.policy.mode == Mode::Enforce;
        if enforce && !refused {
            return true;
        }
        self.metrics
            .dist_operation(&self.peer, &self.policy, j.op, &j.target, refused);
        if sh.logged.len() < MAX_LOGGED && sh.logged.insert((j.op, j.target.to_string(), j.refused)) {
            let why = j.refused.unwrap_or("allowed");
            match (enforce, refused) {
                (true, _) => tracing::warn!(
                    peer = %self.peer, policy = %self.policy.name, op = j.op, target = %j.target,
                    "dist policy refused an operation: {why} (further ones of this kind are counted, not logged)"
                ),
                (false, true) => tracing::info!(
                    peer = %self.peer, policy = %self.policy.name, op = j.op, target = %j.target,
                    "dist policy audit: would refuse: {why}"
                ),
                (false, false) => tracing::info!(
                    peer = %self.peer, policy = %self.policy.name, op = j.op, target = %j.target,
                    "dist policy audit: seen"
                ),
            }
        }
        if !enforce || !refused {
            return true;
        }
        if let Some(a) = j.answer {
            if sh.answers.len() < MAX_ANSWERS {
                sh.answers.push(a);
                self.wake.notify_one();
            } else if sh.logged.insert(("answer", String::new(), Some("answers full"))) {
                tracing::warn!(peer = %self.peer, "dist policy: {MAX_ANSWERS} answers to refused requests wait for the peer; further refusals go unanswered");
            }
        }
        false
    }
}

/// A piece of what goes to the node: bytes of the record buffer as they
/// lie, or bytes of erlmesh's own (held frames, length prefixes).
#[derive(Debug, PartialEq)]
pub enum Seg {
    Buf(Range<usize>),
    Own(Vec<u8>),
    /// A frame's length prefix.
    Len([u8; 4]),
}

fn push_buf(out: &mut Vec<Seg>, r: Range<usize>) {
    if r.is_empty() {
        return;
    }
    if let Some(Seg::Buf(last)) = out.last_mut() {
        if last.end == r.start {
            last.end = r.end;
            return;
        }
    }
    out.push(Seg::Buf(r));
}

enum Phase {
    /// 2-byte frames until the frame tagged `ends_on`.
    Handshake {
        ends_on: u8,
    },
    Connected,
}

/// Where the reader is in the frame stream.
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
    },
    Drop {
        left: usize,
    },
}

/// A fragmented message from the peer.
enum Seq {
    /// Judged: pass or drop its remaining fragments.
    Decided(bool),
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
enum Held {
    /// A frame of that message, as received (length included).
    Frame(u64, Vec<u8>),
    /// Bytes for the node, judged already.
    Out(Vec<u8>),
}

/// What to do with one frame.
enum Decision {
    Need,
    Pass,
    Drop(Option<Vec<u8>>),
    /// A frame of a message held until more of it comes (the last one).
    Held(u64, bool),
}

/// The peer's frames on their way to the node.
pub struct Inbound {
    fw: Arc<Firewall>,
    phase: Phase,
    at: At,
    cache: AtomCache,
    seqs: HashMap<u64, Seq>,
    /// Non-empty while a fragmented message waits for a decision: every
    /// later frame waits behind it, so that the node sees the frames (and
    /// their atom cache updates) in the order they came.
    hold: VecDeque<Held>,
    /// Bytes held, in frame heads, sequences and `hold`.
    held: usize,
}

impl Inbound {
    /// `peer_dials`: the peer's node is the dialler (its handshake ends
    /// with its challenge reply), else the acceptor (challenge ack).
    pub fn new(fw: Arc<Firewall>, peer_dials: bool) -> Inbound {
        Inbound {
            fw,
            phase: Phase::Handshake {
                ends_on: if peer_dials { CHALLENGE_REPLY } else { CHALLENGE_ACK },
            },
            at: At::Len { got: [0; 4], n: 0 },
            cache: AtomCache::default(),
            seqs: HashMap::new(),
            hold: VecDeque::new(),
            held: 0,
        }
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
        self.held += bytes.len();
        if self.held > MAX_HELD {
            return Err(too_large());
        }
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
                At::Pass { mut left } => {
                    let k = left.min(avail);
                    self.emit(out, buf, Seg::Buf(pos..pos + k))?;
                    left -= k;
                    pos += k;
                    if left > 0 {
                        self.at = At::Pass { left };
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
                        held.extend_from_slice(&buf[pos..pos + k]);
                        self.held += k;
                        if held.len() < retry && !complete {
                            if self.held > MAX_HELD {
                                return Err(too_large());
                            }
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
                        self.held -= held.len();
                    }
                    match decision {
                        Decision::Need => {
                            if complete {
                                return Err(malformed("a frame that ends before its control message"));
                            }
                            if !was_held {
                                held.extend_from_slice(&buf[pos..pos + k]);
                                self.held += k;
                            }
                            if self.held > MAX_HELD {
                                return Err(too_large());
                            }
                            let retry = (2 * held.len()).max(MIN_RETRY);
                            self.at = At::Head { len, held, retry };
                        }
                        Decision::Pass => {
                            self.emit(out, buf, Seg::Len((len as u32).to_be_bytes()))?;
                            if was_held {
                                self.emit(out, buf, Seg::Own(held))?;
                            } else {
                                self.emit(out, buf, Seg::Buf(pos..pos + k))?;
                            }
                            if left > 0 {
                                self.at = At::Pass { left };
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
                        Decision::Held(seq, last) => {
                            let mut frame = (len as u32).to_be_bytes().to_vec();
                            frame.extend_from_slice(if was_held { &held } else { &buf[pos..pos + k] });
                            self.held += frame.len();
                            self.hold.push_back(Held::Frame(seq, frame));
                            self.rejudge(seq, last, out)?;
                        }
                    }
                    pos += k;
                }
            }
        }
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
            DecodeError::Malformed(w) => Err(malformed(w)),
        };
        match b {
            [] | [etf::VERSION] => Ok(Decision::Need),
            [etf::PASS_THROUGH, body @ ..] => match self.judge(&[], body, true) {
                Ok(j) => self.verdict(j, None),
                Err(e) => need(e),
            },
            [etf::VERSION, etf::DIST_HEADER, rest @ ..] => {
                let refs = match self.cache.header(rest) {
                    Ok(r) => r,
                    Err(e) => return hdr(e),
                };
                match self.judge(&refs.atoms, &rest[refs.len..], false) {
                    Ok(j) => self.verdict(j, refs.sets_cache.then_some(&rest[..refs.len])),
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
                let refs = match self.cache.header(rest) {
                    Ok(r) => r,
                    Err(e) => return hdr(e),
                };
                let header = &rest[..refs.len];
                let data = &rest[refs.len..];
                match self.judge(&refs.atoms, data, false) {
                    Ok(j) => {
                        let d = self.verdict(j, refs.sets_cache.then_some(header))?;
                        if frag > 1 {
                            self.new_seq(seq)?;
                            self.seqs.insert(seq, Seq::Decided(matches!(d, Decision::Pass)));
                        }
                        Ok(d)
                    }
                    Err(Unjudged::Need) if complete && frag > 1 => {
                        self.new_seq(seq)?;
                        self.held += data.len();
                        self.seqs.insert(
                            seq,
                            Seq::Held {
                                body: data.to_vec(),
                                refs: refs.clone(),
                                header: header.to_vec(),
                                retry: 2 * data.len(),
                            },
                        );
                        Ok(Decision::Held(seq, false))
                    }
                    Err(e) => need(e),
                }
            }
            [etf::VERSION, etf::DIST_FRAG_CONT, ..] => {
                let (seq, frag) = frag_ids(b);
                let last = frag == 1;
                match self.seqs.get_mut(&seq) {
                    None => Err(malformed("a fragment of no message in progress")),
                    Some(Seq::Decided(pass)) => {
                        let pass = *pass;
                        if last {
                            self.seqs.remove(&seq);
                        }
                        Ok(if pass { Decision::Pass } else { Decision::Drop(None) })
                    }
                    Some(Seq::Held { .. }) if !complete => Ok(Decision::Need),
                    Some(Seq::Held { body, .. }) => {
                        body.extend_from_slice(&b[FRAG_HEADER..]);
                        self.held += b.len() - FRAG_HEADER;
                        Ok(Decision::Held(seq, last))
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
        let Some(Seq::Held {
            body,
            refs,
            header,
            retry,
        }) = self.seqs.get_mut(&seq)
        else {
            return Ok(());
        };
        if body.len() < *retry && !last {
            return Ok(());
        }
        *retry = 2 * body.len();
        let body = body.clone();
        let (refs, header) = (refs.clone(), header.clone());
        let pass = match self.judge(&refs.atoms, &body, false) {
            Err(Unjudged::Need) if !last => return Ok(()),
            Err(Unjudged::Need) => return Err(malformed("a fragmented message that ends before its control message")),
            Err(Unjudged::Malformed(w)) => return Err(malformed(w)),
            Ok(j) => matches!(self.verdict(j, None)?, Decision::Pass),
        };
        self.held = self.held.saturating_sub(body.len());
        if last {
            self.seqs.remove(&seq);
        } else {
            self.seqs.insert(seq, Seq::Decided(pass));
        }
        let mut standin_due = !pass && refs.sets_cache;
        for h in self.hold.iter_mut() {
            if let Held::Frame(s, f) = h {
                if *s == seq {
                    let f = std::mem::take(f);
                    *h = Held::Out(if pass {
                        f
                    } else {
                        self.held = self.held.saturating_sub(f.len());
                        if std::mem::take(&mut standin_due) {
                            let s = standin_for(&header, &self.fw.mem())?;
                            self.held += s.len();
                            s
                        } else {
                            Vec::new()
                        }
                    });
                }
            }
        }
        while let Some(Held::Out(_)) = self.hold.front() {
            if let Some(Held::Out(v)) = self.hold.pop_front() {
                self.held = self.held.saturating_sub(v.len());
                if !v.is_empty() {
                    out.push(Seg::Own(v));
                }
            }
        }
        Ok(())
    }

    fn new_seq(&self, seq: u64) -> io::Result<()> {
        if self.seqs.len() >= MAX_SEQUENCES && !self.seqs.contains_key(&seq) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the peer has more than {MAX_SEQUENCES} fragmented messages in progress"),
            ));
        }
        Ok(())
    }

    /// Judges a control message (and message) in `body`: terms after a
    /// distribution header, or with their version byte in a pass-through
    /// frame (`versioned`), as the node reads each.
    fn judge(&self, refs: &[etf::Atom], body: &[u8], versioned: bool) -> Result<Judgement, Unjudged> {
        let mut mem = self.fw.mem();
        rules::judge(&self.fw.policy, &mut mem, refs, body, versioned)
    }

    /// Pass, or drop (with a stand-in carrying `header` when it set atom
    /// cache entries the node must see).
    fn verdict(&self, j: Judgement, header: Option<&[u8]>) -> io::Result<Decision> {
        let fw = &self.fw;
        let mut sh = fw.shared();
        if fw.apply(&mut sh, j) {
            return Ok(Decision::Pass);
        }
        match header {
            None => Ok(Decision::Drop(None)),
            Some(h) => Ok(Decision::Drop(Some(standin_for(h, &fw.mem())?))),
        }
    }
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

fn too_large() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the peer's messages to check are larger than {MAX_HELD} bytes"),
    )
}

fn frag_ids(b: &[u8]) -> (u64, u64) {
    let seq = u64::from_be_bytes(b[2..10].try_into().expect("8 bytes"));
    let frag = u64::from_be_bytes(b[10..18].try_into().expect("8 bytes"));
    (seq, frag)
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

/// The local node's frames on their way to the peer: only read.
pub struct Outbound {
    fw: Arc<Firewall>,
    phase: Phase,
    at: OutAt,
    cache: AtomCache,
    /// The walk of the frame being read, when it is a whole message (or a
    /// fragmented message's last fragment).
    current: Option<(Refs, Walker)>,
    /// The walks of fragmented messages in progress.
    seqs: HashMap<u64, (Refs, Walker)>,
}

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

impl Outbound {
    /// `node_dials`: the local node is the dialler.
    pub fn new(fw: Arc<Firewall>, node_dials: bool) -> Outbound {
        Outbound {
            fw,
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
        let fw = self.fw.clone();
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
                    let tried = if before == 0 {
                        self.head(&mut mem, &data[pos..pos + k], k == want)
                    } else {
                        h.extend_from_slice(&data[pos..pos + k]);
                        self.head(&mut mem, &h, k == want)
                    };
                    if tried.1.is_none() && before == 0 {
                        h.extend_from_slice(&data[pos..pos + k]);
                    }
                    match tried {
                        (u, Some(next)) => {
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
                            self.at = if h.len() > MAX_HELD {
                                // The node's own frame: stop reading it
                                // rather than hold more.
                                OutAt::Skip { left: len - h.len() }
                            } else {
                                OutAt::Head { len, held: h }
                            };
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
        let (refs, start, seq, frag) = match b {
            [] | [etf::VERSION] => return (0, if complete { gave_up.1 } else { None }),
            [etf::PASS_THROUGH, ..] => (Refs::default(), 1, None, 1),
            [etf::VERSION, etf::DIST_HEADER, rest @ ..] => match self.cache.header(rest) {
                Ok(r) => {
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
                match self.cache.header(&b[FRAG_HEADER..]) {
                    Ok(r) => {
                        let n = FRAG_HEADER + r.len;
                        (r, n, Some(seq), frag)
                    }
                    Err(DecodeError::Truncated) if !complete => return (0, None),
                    Err(_) => return gave_up,
                }
            }
            _ => return gave_up,
        };
        let versioned = b[0] == etf::PASS_THROUGH;
        let mut d = Decoder::new(&b[start..], &refs.atoms);
        let ctl = (if versioned { d.version() } else { Ok(()) }).and_then(|_| d.term());
        let ctl = match ctl {
            Ok(t) => t,
            Err(DecodeError::Truncated) if !complete => return (0, None),
            Err(_) => return gave_up,
        };
        // Control messages give nothing (their sender fields name the
        // machinery too), but for a spawn request's group leader, which the
        // spawned process writes to.
        let t = ctl.tuple().unwrap_or(&[]);
        let op = t.first().and_then(Term::int);
        if let (Some(29 | 30), Some(Term::Pid(gl))) = (op, t.get(3)) {
            mem.give_pid(gl);
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
        let shaped = to_name.is_some_and(|n| rules::machinery_name(n).is_some())
            || matches!(rules::peek(&d, versioned), Ok((3, Some(tag))) if &*tag == "$gen_call");
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
    }
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
    });
    let fw = Firewall::new(policy, "fuzz", "b@fuzz", "c@fuzz", Metrics::new([]));
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

#[cfg(test)]
mod tests {
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
        let fw = Firewall::new(policy(), "hostc", local, "c@hostc", Metrics::new([]));
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
            let fw = Firewall::new(
                policy(),
                "hostc",
                "b@given",
                &format!("c{step}@hostc"),
                Metrics::new([]),
            );
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
            let fw = Firewall::new(policy(), "hostc", "b@ticks", "c@hostc", Metrics::new([]));
            let mut inb = Inbound::new(fw, true);
            assert_eq!(run(&mut inb, &input, step).unwrap(), input);
        }
    }
}

#[cfg(test)]
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
        let fw = Firewall::new(p, "hosta", "b@hostb", "a@hosta", Metrics::new([]));
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
