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
use super::machinery::machinery_name;
use super::memory::Memory;
use super::rules::{self, Judgement, Unjudged};
use super::walk::{Found, Walker};
use super::{DistPolicy, Mode};
use crate::ops::metrics::Metrics;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Bytes held for decisions at once, per tunnel, both directions together
/// ([`Budget`]): frames not judged yet, fragments of a message not decided
/// yet and the frames queued behind it. A peer that needs more (fragments
/// that never complete, a flood queued behind them) loses its tunnel.
pub const MAX_HELD: usize = 8 << 20;
/// Answers to refused requests waiting for a frame boundary of the local
/// node's stream; beyond this (a peer flooding refused spawns faster than
/// it reads), further refusals go unanswered.
const MAX_ANSWERS: usize = 1024;
/// Bytes of a frame held before it is judged again after a first try
/// fell short; then each try waits for twice the bytes of the last.
const MIN_RETRY: usize = 512;
/// Fragmented messages in progress at once, per tunnel and direction.
const MAX_SEQUENCES: usize = 4096;
/// Fragments the peer's fragmented messages in progress may announce, all
/// together, per tunnel. A node allocates room for every fragment a
/// message announces when its first arrives (40 bytes each, unchecked: one
/// frame announcing 2^35 fragments halts it), so this bounds that to
/// 2.5 MiB per tunnel; OTP's senders cut messages at 64 KiB, so it is
/// 4 GiB of messages in flight.
const MAX_FRAGMENTS: u64 = 1 << 16;
/// The same over all of a peer host's tunnels: 10 MiB at its nodes.
const MAX_HOST_FRAGMENTS: usize = 1 << 18;
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
    /// Bytes held for judging, by both directions.
    budget: Budget,
    /// Which of the pair's connections this is ([`Memory::end_connection`]).
    connection: u64,
    /// What the peer host holds at local nodes, over all its tunnels.
    host: Arc<super::memory::HostHeld>,
}

/// The one count of bytes held for judging on a tunnel: every path that
/// holds bytes takes them here first (and fails, holding nothing, beyond
/// [`MAX_HELD`]), and gives them back when it lets them go. Each direction
/// also keeps its own share, checked against what it really holds (in
/// debug builds, after every read) and given back when it ends.
#[derive(Default)]
pub struct Budget {
    used: AtomicUsize,
}

impl Budget {
    /// Takes `n` bytes; false (nothing taken) if that would pass
    /// [`MAX_HELD`].
    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                u.checked_add(n).filter(|t| *t <= MAX_HELD)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        let was = self.used.fetch_sub(n, Ordering::Relaxed);
        debug_assert!(was >= n, "gave back more held bytes than were taken");
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// One direction's share of the [`Budget`].
struct Share {
    fw: Arc<Firewall>,
    held: usize,
}

impl Share {
    fn take(&mut self, n: usize) -> io::Result<()> {
        if !self.fw.budget.take(n) {
            return Err(too_large());
        }
        self.held += n;
        Ok(())
    }

    fn give(&mut self, n: usize) {
        debug_assert!(n <= self.held, "a direction gave back more than it held");
        let n = n.min(self.held);
        self.held -= n;
        self.fw.budget.give(n);
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        // The connection's monitors end with it.
        self.mem().end_connection(self.connection);
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.fw.budget.give(self.held);
    }
}

struct Shared {
    answers: Vec<Vec<u8>>,
    logged: HashSet<(&'static str, String, Option<&'static str>)>,
}

impl Firewall {
    /// The firewall of a tunnel to host `peer`, with `mem` what the local
    /// node and the peer's node remember of each other
    /// ([`Memories::pair`](super::memory::Memories::pair)).
    pub fn new(policy: Arc<DistPolicy>, peer: &str, mem: Arc<Mutex<Memory>>, metrics: Arc<Metrics>) -> Arc<Firewall> {
        metrics.dist_policy_in_use(peer, &policy);
        // A new connection: the local pg scope knows none of the peer's
        // scopes on it, and its processes monitor none of the local node's
        // (another connection of the pair keeps what it has).
        let (connection, host) = {
            let mut m = mem.lock().unwrap_or_else(|e| e.into_inner());
            (m.new_connection(), m.host.clone())
        };
        Arc::new(Firewall {
            connection,
            host,
            policy,
            peer: peer.to_owned(),
            metrics,
            mem,
            shared: Mutex::new(Shared {
                answers: Vec::new(),
                logged: HashSet::new(),
            }),
            wake: tokio::sync::Notify::new(),
            budget: Budget::default(),
        })
    }

    /// Bytes held for judging on this tunnel now.
    pub fn held(&self) -> usize {
        self.budget.used()
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pair's memory, at this tunnel's connection.
    fn mem(&self) -> std::sync::MutexGuard<'_, Memory> {
        let mut m = self.mem.lock().unwrap_or_else(|e| e.into_inner());
        m.at_connection(self.connection);
        m
    }

    /// What this firewall holds beyond its two directions, for the next
    /// process (`erlmesh upgrade`): answers waiting, the pair's memory.
    pub fn export(&self) -> (Vec<Vec<u8>>, super::memory::MemoryState) {
        (self.shared().answers.clone(), self.mem().export())
    }

    /// Takes what a previous process's firewall held.
    pub fn import(&self, answers: Vec<Vec<u8>>, memory: super::memory::MemoryState) {
        self.mem().import(memory);
        let mut sh = self.shared();
        sh.answers = answers.into_iter().take(MAX_ANSWERS).collect();
        if !sh.answers.is_empty() {
            self.wake.notify_one();
        }
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

fn too_large() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the peer's messages to check are larger than {MAX_HELD} bytes"),
    )
}

#[derive(serde::Serialize, serde::Deserialize)]
enum Phase {
    /// 2-byte frames until the frame tagged `ends_on`.
    Handshake {
        ends_on: u8,
    },
    Connected,
}

fn frag_ids(b: &[u8]) -> (u64, u64) {
    let seq = u64::from_be_bytes(b[2..10].try_into().expect("8 bytes"));
    let frag = u64::from_be_bytes(b[10..18].try_into().expect("8 bytes"));
    (seq, frag)
}

#[cfg(test)]
mod atom_tests;
mod inbound;
mod outbound;
#[cfg(test)]
mod tests;

pub use inbound::{fuzz_inbound, Inbound};
pub use outbound::Outbound;
