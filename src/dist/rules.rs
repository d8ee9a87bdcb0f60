//! One distribution message from a peer's node against a dist policy.
//!
//! The routes by which a remote node can run code or reach a process, and
//! what a restricted policy does with each:
//!
//! | route | control message | restricted policy |
//! |---|---|---|
//! | spawn, spawn_link, spawn_opt, erpc, rpc (OTP 23+) | SPAWN_REQUEST(_TT) | refused unless `spawn`, answered with a spawn reply `notsup` |
//! | rpc through `rex`, old spawn through `net_kernel` | REG_SEND | `rex` unlisted; `net_kernel` takes only `is_auth` (ping) |
//! | a registered name (`init`, `code_server`, `application_controller`, `erl_prim_loader`, `user`, ...) | REG_SEND(_TT), MONITOR_P by name | unlisted names dropped; a monitor answered `noproc`, as for a name nobody holds |
//! | `net_kernel`'s relay `{From, registered_send, To, Msg}` | REG_SEND to net_kernel | dropped: net_kernel is judged by what it is asked |
//! | `global_name_server` (`registrar` funs, methods) | REG_SEND | only global's own protocol; funs only of module `global` |
//! | a pid (group leaders, any process) | SEND, SEND_SENDER(_TT), ALIAS_SEND(_TT), MONITOR_P | only pids and aliases the local node gave this peer node |
//! | I/O requests that apply a fun (`put_chars` with M:F:A, `get_until`) | a send | dropped |
//! | `sys` messages (`replace_state`, code change), a fake parent's `'EXIT'` | a send | dropped (`'EXIT'` when exit signals are refused) |
//! | exit/2 | EXIT2(_TT), PAYLOAD_EXIT2(_TT) | dropped unless `exit_signals` |
//! | a link from the peer's process (its exit, or the connection dropped, kills the local one) | LINK | refused unless `exit_signals` |
//! | group_leader/2 on a local process | GROUP_LEADER | refused unless `spawn` |
//! | anything else | an unknown operation | dropped (fail closed) |

use super::etf::{self, Atom, DecodeError, Decoder, Pid, Ref, Term};
use super::DistPolicy;
use std::sync::Arc;

/// Pids of the local node this peer node was given (in any frame the
/// local node sent it), most recently seen kept.
const MAX_GIVEN_PIDS: usize = 65_536;
/// References (aliases) of the local node it was given: replies to calls
/// come back through these, so they churn; the recent ones matter.
const MAX_GIVEN_REFS: usize = 16_384;

/// The machinery a restricted policy keeps working, judged by content.
const NET_KERNEL: &str = "net_kernel";
const GLOBAL: &str = "global_name_server";
const PG: &str = "pg";
/// rpc's server: asked only which features it has (OTP's rpc.erl asks every
/// node that comes up).
const REX: &str = "rex";
/// What one global name server asks another (OTP's global.erl): casts,
/// calls made under global's locks, and plain messages.
const GLOBAL_CASTS: &[&str] = &[
    "init_connect",
    "lock_is_set",
    "exchange",
    "exchange_ops",
    "resolved",
    "new_nodes",
    "in_sync",
    "async_del_name",
    "async_del_lock",
    "lock_set",
];
const GLOBAL_CALLS: &[&str] = &["register", "unregister", "register_ext", "set_lock", "del_lock"];
const GLOBAL_INFOS: &[&str] = &[
    "init_connect_ack",
    "cancel_connect",
    "lost_connection",
    "remove_connection",
    "whereis",
];
/// What pg scopes tell each other (OTP's pg.erl).
const PG_MESSAGES: &[&str] = &["discover", "join", "leave", "sync"];

/// A local pid as remembered: id, serial, creation.
type PidKey = (u32, u32, u32);

/// What one tunnel remembers across messages: what its local node gave
/// the peer's node, and the links the peer made.
pub struct Memory {
    /// The local node's full name: only its pids and references count.
    local: String,
    pids: lru::LruCache<PidKey, ()>,
    refs: lru::LruCache<(u32, Vec<u32>), ()>,
    /// A pid of the peer's node, the last one seen as a sender.
    pub peer_pid: Option<Pid>,
}

impl Memory {
    pub fn new(local_node: &str) -> Memory {
        Memory {
            local: local_node.to_owned(),
            pids: lru::LruCache::unbounded(),
            refs: lru::LruCache::unbounded(),
            peer_pid: None,
        }
    }

    /// The local node's name as it names itself (its challenge).
    pub fn set_local(&mut self, name: &str) {
        if name != self.local {
            self.local = name.to_owned();
        }
    }

    fn local_key(&self, p: &Pid) -> Option<PidKey> {
        (*p.node == *self.local).then_some((p.id, p.serial, p.creation))
    }

    /// The local node sent `p` to the peer's node.
    pub fn give_pid(&mut self, p: &Pid) {
        if let Some(k) = self.local_key(p) {
            self.pids.put(k, ());
            if self.pids.len() > MAX_GIVEN_PIDS {
                self.pids.pop_lru();
            }
        }
    }

    /// The local node sent `r` to the peer's node.
    pub fn give_ref(&mut self, r: &Ref) {
        if *r.node == *self.local {
            self.refs.put((r.creation, r.ids.clone()), ());
            if self.refs.len() > MAX_GIVEN_REFS {
                self.refs.pop_lru();
            }
        }
    }

    /// Every pid and reference in a term the local node sent.
    pub fn give_all(&mut self, t: &Term) {
        t.visit(&mut |t| match t {
            Term::Pid(p) => self.give_pid(p),
            Term::Ref(r) => self.give_ref(r),
            _ => {}
        });
    }

    fn given_pid(&self, p: &Pid) -> bool {
        self.local_key(p).is_some_and(|k| self.pids.contains(&k))
    }

    fn given_ref(&self, r: &Ref) -> bool {
        *r.node == *self.local && self.refs.contains(&(r.creation, r.ids.clone()))
    }
}

/// Every operation name a judgement carries.
pub const OPS: &[&str] = &[
    "link",
    "send",
    "link_exit",
    "unlink",
    "node_link",
    "reg_send",
    "group_leader",
    "exit2",
    "monitor",
    "demonitor",
    "monitor_exit",
    "spawn",
    "spawn_reply",
    "alias_send",
    "unknown",
];

/// Node pairs whose memory outlives their connection: pids stay valid
/// across a reconnection (only a restart, a new creation, ends them).
const MAX_REMEMBERED_PAIRS: usize = 1024;

type Memories = lru::LruCache<(String, String), Arc<std::sync::Mutex<Memory>>>;
static MEMORIES: std::sync::OnceLock<std::sync::Mutex<Memories>> = std::sync::OnceLock::new();

/// What `local` gave `remote` so far, kept across their connections.
pub fn memory_for(local: &str, remote: &str) -> Arc<std::sync::Mutex<Memory>> {
    let all = MEMORIES.get_or_init(|| std::sync::Mutex::new(lru::LruCache::unbounded()));
    let mut all = all.lock().unwrap_or_else(|e| e.into_inner());
    let key = (local.to_owned(), remote.to_owned());
    if let Some(m) = all.get(&key) {
        return m.clone();
    }
    let m = Arc::new(std::sync::Mutex::new(Memory::new(local)));
    all.put(key, m.clone());
    if all.len() > MAX_REMEMBERED_PAIRS {
        all.pop_lru();
    }
    m
}

/// What a message reaches, for counts and logs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    None,
    Name(Atom),
    Pid,
    Alias,
    Mfa(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::None => f.write_str("-"),
            Target::Name(n) => f.write_str(n),
            Target::Pid => f.write_str("pid"),
            Target::Alias => f.write_str("alias"),
            Target::Mfa(m) => f.write_str(m),
        }
    }
}

/// The verdict on one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// The operation (`reg_send`, `spawn`, `exit2`, ...).
    pub op: &'static str,
    pub target: Target,
    /// Why it is refused; None when allowed.
    pub refused: Option<&'static str>,
    /// The frame that answers the peer's node when refused (a spawn reply,
    /// a monitor's noproc), so that its caller does not wait.
    pub answer: Option<Vec<u8>>,
}

impl Judgement {
    fn allow(op: &'static str, target: Target) -> Judgement {
        Judgement {
            op,
            target,
            refused: None,
            answer: None,
        }
    }

    fn refuse(op: &'static str, target: Target, why: &'static str) -> Judgement {
        Judgement {
            op,
            target,
            refused: Some(why),
            answer: None,
        }
    }
}

/// Why a message could not be judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unjudged {
    /// More of the message is needed.
    Need,
    /// Not a distribution message (the cause).
    Malformed(&'static str),
}

impl From<DecodeError> for Unjudged {
    fn from(e: DecodeError) -> Unjudged {
        match e {
            DecodeError::Truncated => Unjudged::Need,
            DecodeError::Malformed(w) => Unjudged::Malformed(w),
        }
    }
}

/// Judges the control message (and, where a rule needs it, the message) in
/// `body`: the bytes after the distribution header, terms with their
/// version byte when `versioned` (a pass-through frame). A LINK the peer
/// makes is remembered in `mem` when it is allowed.
pub fn judge(
    p: &DistPolicy,
    mem: &mut Memory,
    refs: &[Atom],
    body: &[u8],
    versioned: bool,
) -> Result<Judgement, Unjudged> {
    let mut d = Decoder::new(body, refs);
    if versioned {
        d.version()?;
    }
    let ctl = d.term()?;
    let t = ctl
        .tuple()
        .ok_or(Unjudged::Malformed("control message is not a tuple"))?;
    let op = t
        .first()
        .and_then(Term::int)
        .ok_or(Unjudged::Malformed("control message without an operation"))?;
    // The sender (a pid of the peer's node) of the operations that name one.
    let sender = match op {
        1 | 3 | 4 | 6 | 7 | 8 | 13 | 16 | 18 | 19 | 20 | 22..=28 | 33 | 34 => t.get(1),
        29 | 30 | 35 | 36 => t.get(2),
        _ => None,
    };
    if let Some(Term::Pid(p)) = sender {
        if *p.node != *mem.local {
            mem.peer_pid = Some(p.clone());
        }
    }
    let el = |i: usize| t.get(i).ok_or(Unjudged::Malformed("control message too short"));
    let pid = |i: usize| match el(i)? {
        Term::Pid(p) => Ok(p),
        _ => Err(Unjudged::Malformed("control message: expected a pid")),
    };
    Ok(match op {
        // LINK {1, From, To}: a link the peer's process makes would let it
        // kill the local one, by exiting or by dropping the connection
        // (the node then sends the link's exit itself, `noconnection`).
        1 if p.exit_signals => Judgement::allow("link", Target::Pid),
        1 => Judgement::refuse(
            "link",
            Target::Pid,
            "a link to a local process (its exit would be an exit signal)",
        ),
        // SEND {2, _, To}, SEND_TT {12, _, To, Token}, SEND_SENDER {22, From, To}, _TT {23, ...}
        2 | 12 | 22 | 23 => {
            let to = pid(2)?;
            if !mem.given_pid(to) {
                return Ok(Judgement::refuse(
                    "send",
                    Target::Pid,
                    "a pid this peer's node was not given",
                ));
            }
            content(p, &mut d, versioned, "send", Target::Pid)?
        }
        // Link exits: EXIT {3, ...}, EXIT_TT {13, ...}, PAYLOAD_EXIT {24, ...},
        // PAYLOAD_EXIT_TT {25, ...}. Under a restricted policy the only links
        // are those local processes made; the node ignores exits of others.
        3 | 13 | 24 | 25 => Judgement::allow("link_exit", Target::Pid),
        // UNLINK {4, ...}, UNLINK_ID {35, ...}, UNLINK_ID_ACK {36, ...}
        4 | 35 | 36 => Judgement::allow("unlink", Target::Pid),
        // NODE_LINK {5}: never sent, a no-op on receipt.
        5 => Judgement::allow("node_link", Target::None),
        // REG_SEND {6, From, _, Name}, REG_SEND_TT {16, From, _, Name, Token}
        6 | 16 => {
            let name = el(3)?.atom().ok_or(Unjudged::Malformed("reg_send to a non-atom"))?;
            let target = Target::Name(Arc::from(name));
            if p.lists(name) {
                content(p, &mut d, versioned, "reg_send", target)?
            } else if [NET_KERNEL, GLOBAL, PG, REX].contains(&name) {
                let m = message(&mut d, versioned)?;
                match machinery(name, &m) {
                    Ok(()) => Judgement::allow("reg_send", target),
                    Err(why) => Judgement::refuse("reg_send", target, why),
                }
            } else {
                Judgement::refuse("reg_send", target, "a registered name the policy does not list")
            }
        }
        // GROUP_LEADER {7, From, To}
        7 if p.spawn => Judgement::allow("group_leader", Target::Pid),
        7 => Judgement::refuse("group_leader", Target::Pid, "group_leader/2 on a local process"),
        // EXIT2 {8, From, To, Reason}, EXIT2_TT {18, ...}, PAYLOAD_EXIT2 {26, ...}, _TT {27, ...}
        8 | 18 | 26 | 27 if p.exit_signals => Judgement::allow("exit2", Target::Pid),
        8 | 18 | 26 | 27 => Judgement::refuse("exit2", Target::Pid, "an exit signal (exit/2)"),
        // MONITOR_P {19, From, ToProc, Ref}
        19 => {
            let (from, to, r) = (pid(1)?, el(2)?, el(3)?);
            let (target, ok) = match to {
                Term::Atom(n) => (
                    Target::Name(n.clone()),
                    p.lists(n) || [NET_KERNEL, GLOBAL, PG].contains(&&**n),
                ),
                Term::Pid(q) => (Target::Pid, mem.given_pid(q)),
                _ => return Err(Unjudged::Malformed("monitor of neither a pid nor a name")),
            };
            if ok {
                Judgement::allow("monitor", target)
            } else {
                // What a node answers for a name nobody holds or a process
                // that is gone: MONITOR_P_EXIT {21, ToProc, From, Ref, noproc}.
                let answer = etf::frame(
                    &Term::Tuple(vec![
                        Term::Int(21),
                        to.clone(),
                        Term::Pid(from.clone()),
                        r.clone(),
                        Term::Atom(Arc::from("noproc")),
                    ]),
                    None,
                );
                Judgement {
                    answer: Some(answer),
                    ..Judgement::refuse("monitor", target, "a process this peer's node may not reach")
                }
            }
        }
        // DEMONITOR_P {20, ...}, MONITOR_P_EXIT {21, ...}, PAYLOAD_MONITOR_P_EXIT {28, ...}
        20 => Judgement::allow("demonitor", Target::None),
        21 | 28 => Judgement::allow("monitor_exit", Target::None),
        // SPAWN_REQUEST {29, ReqId, From, GroupLeader, {M, F, A}, Opts}, _TT {30, ...}
        29 | 30 => {
            let mfa = el(4)?.tuple().unwrap_or(&[]);
            let target = match mfa {
                [Term::Atom(m), Term::Atom(f), Term::Int(a)] => Target::Mfa(format!("{m}:{f}/{a}")),
                _ => return Err(Unjudged::Malformed("spawn request without {M, F, A}")),
            };
            if p.spawn {
                Judgement::allow("spawn", target)
            } else {
                // SPAWN_REPLY {31, ReqId, To, Flags, Result}: an atom is
                // the error the caller sees.
                let answer = etf::frame(
                    &Term::Tuple(vec![
                        Term::Int(31),
                        el(1)?.clone(),
                        Term::Pid(pid(2)?.clone()),
                        Term::Int(0),
                        Term::Atom(Arc::from("notsup")),
                    ]),
                    None,
                );
                Judgement {
                    answer: Some(answer),
                    ..Judgement::refuse("spawn", target, "a spawn request (rpc, erpc, spawn)")
                }
            }
        }
        // SPAWN_REPLY {31, ...}, _TT {32, ...}: answers to the local node's requests.
        31 | 32 => Judgement::allow("spawn_reply", Target::None),
        // ALIAS_SEND {33, From, Alias}, _TT {34, ...}
        33 | 34 => match el(2)? {
            Term::Ref(r) if mem.given_ref(r) => content(p, &mut d, versioned, "alias_send", Target::Alias)?,
            Term::Ref(_) => Judgement::refuse("alias_send", Target::Alias, "an alias this peer's node was not given"),
            _ => return Err(Unjudged::Malformed("alias_send to a non-reference")),
        },
        _ => Judgement::refuse("unknown", Target::None, "an unknown control message"),
    })
}

/// The message of a send whose target is allowed: refused when it asks
/// the process for what no peer should get by a message (a sys request, a
/// fun applied by an I/O server, a fake parent's exit).
fn content(
    p: &DistPolicy,
    d: &mut Decoder,
    versioned: bool,
    op: &'static str,
    target: Target,
) -> Result<Judgement, Unjudged> {
    let (arity, tag) = peek(d, versioned)?;
    let why = match (arity, tag.as_deref()) {
        (3, Some("system")) => Some("a sys message (state replacement, code change)"),
        (3, Some("EXIT")) if !p.exit_signals => Some("an 'EXIT' message (as from a parent)"),
        (4, Some("io_request")) => {
            let m = message(d, versioned)?;
            (!m.tuple().and_then(|t| t.get(3)).is_some_and(io_ok)).then_some("an I/O request that applies a function")
        }
        _ => None,
    };
    Ok(match why {
        Some(why) => Judgement::refuse(op, target, why),
        None => Judgement::allow(op, target),
    })
}

/// The message's top: its arity if a tuple (0 otherwise) and its first
/// element if an atom. Reads no further than that.
fn peek(d: &Decoder, versioned: bool) -> Result<(usize, Option<Atom>), Unjudged> {
    let mut d = Decoder::new(d.rest(), d.refs());
    if versioned {
        d.version()?;
    }
    let rest = d.rest();
    let (arity, skip) = match rest.first().ok_or(Unjudged::Need)? {
        104 => (*rest.get(1).ok_or(Unjudged::Need)? as usize, 2),
        105 => {
            let b = rest.get(1..5).ok_or(Unjudged::Need)?;
            (u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize, 5)
        }
        _ => return Ok((0, None)),
    };
    if arity == 0 {
        return Ok((0, None));
    }
    let mut first = Decoder::new(&rest[skip..], d.refs());
    let tag = match rest.get(skip) {
        Some(82 | 100 | 115 | 118 | 119) => first.term()?.atom().map(Arc::from),
        Some(_) => None,
        None => return Err(Unjudged::Need),
    };
    Ok((arity, tag))
}

/// The whole message.
fn message(d: &mut Decoder, versioned: bool) -> Result<Term, Unjudged> {
    if versioned {
        d.version()?;
    }
    Ok(d.term()?)
}

/// An I/O request an I/O server may take from a peer: no `M, F, A` to
/// apply (`put_chars/4,5`, `get_until`), recursively through `requests`.
fn io_ok(req: &Term) -> bool {
    let Some(t) = req.tuple() else {
        return true;
    };
    match (req.tag(), t.len()) {
        (Some("put_chars"), n) => n <= 3,
        (Some("get_until"), _) => false,
        (Some("requests"), 2) => match &t[1] {
            Term::List(v, tail) => **tail == Term::Nil && v.iter().all(io_ok),
            Term::Nil => true,
            _ => false,
        },
        _ => true,
    }
}

/// What the machinery may be asked.
fn machinery(name: &str, m: &Term) -> Result<(), &'static str> {
    let t = m.tuple().unwrap_or(&[]);
    match name {
        REX => match t {
            [Term::Pid(_), Term::Atom(a)] if &**a == "features_request" => Ok(()),
            _ => Err("rex (rpc) is asked only which features it has"),
        },
        NET_KERNEL => match (m.tag(), t.get(2).map(|r| r.tag())) {
            (Some("$gen_call"), Some(Some("is_auth"))) if t.len() == 3 => Ok(()),
            _ => Err("net_kernel is asked only is_auth (ping)"),
        },
        GLOBAL => {
            let inner = match (m.tag(), t.len()) {
                (Some("$gen_cast"), 2) => t[1].tag().filter(|g| GLOBAL_CASTS.contains(g)),
                (Some("$gen_call"), 3) => t[2].tag().filter(|g| GLOBAL_CALLS.contains(g)),
                (Some(tag), _) => Some(tag).filter(|g| GLOBAL_INFOS.contains(g)),
                _ => None,
            };
            inner.ok_or("a request global's own protocol does not make")?;
            // Name-clash methods travel with registrations: only global's.
            let mut foreign_fun = false;
            m.visit(&mut |t| {
                if let Term::Fun(f) = t {
                    foreign_fun |= &*f.module != "global";
                }
            });
            if foreign_fun {
                return Err("a fun of a module other than global");
            }
            Ok(())
        }
        _ => {
            let tag = match (m.tag(), t.len()) {
                (Some("$gen_cast"), 2) => t[1].tag(),
                (tag, _) => tag,
            };
            let mut any_fun = false;
            m.visit(&mut |t| any_fun |= matches!(t, Term::Fun(_)));
            match tag {
                Some(g) if PG_MESSAGES.contains(&g) && !any_fun => Ok(()),
                _ => Err("a request pg's own protocol does not make"),
            }
        }
    }
}
