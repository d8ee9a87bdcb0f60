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
//! | monitors (memory on the node while they last) | MONITOR_P | at most `max_monitors` held at once per peer host; past it answered `noproc` |
//! | new atoms (a node never frees one; a full atom table halts it) | any frame: header cache entries, atoms written out | counted per peer host; past `max_atoms` the tunnel ends |
//! | anything else | an unknown operation | dropped (fail closed) |

use super::etf::{self, Atom, DecodeError, Decoder, Pid, Ref, Term};
pub use super::machinery::Msg;
use super::machinery::{
    driver_input, io_request_ok, machinery, machinery_name, valid_from, Raw, GLOBAL, NET_KERNEL, PG,
};
use super::memory::{global_group_result_fits, Memory};
use super::DistPolicy;
use std::sync::Arc;

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
    "new_atom",
    "unknown",
];

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
    /// Allowed on the message's top alone (it was too large to decode, or
    /// not all there): the message is the body's last `walk` bytes, to be
    /// walked, with the rest of it as it passes, for local pids,
    /// references and ports this peer's node was not given.
    pub walk: Option<usize>,
    /// Allowed, but the node gets this frame's terms in its place: a
    /// control message erlmesh builds from what it checked (the peer's
    /// sender, the local target: nothing else of the peer's control
    /// message) and the message. OTP 29's pg `{discover, Pid, 1}` as the
    /// `{discover, Pid}` every release takes, for a local scope that did
    /// not announce version 1; a global sync without the entries that name
    /// local processes.
    pub replace: Option<(Term, Msg)>,
    /// What the local node drops once it has this frame (a DOWN of a
    /// monitor its global or pg scope made): applied to the memory only
    /// when the frame passes whole ([`Memory::apply_down`]); a DOWN
    /// refused, or in fragments (the node has it at its last, and frames
    /// judged meanwhile reach it first), gives nothing back.
    pub down: Option<(Pid, Pid, Ref)>,
}

impl Judgement {
    fn allow(op: &'static str, target: Target) -> Judgement {
        Judgement {
            op,
            target,
            refused: None,
            answer: None,
            walk: None,
            replace: None,
            down: None,
        }
    }

    fn refuse(op: &'static str, target: Target, why: &'static str) -> Judgement {
        Judgement {
            op,
            target,
            refused: Some(why),
            answer: None,
            walk: None,
            replace: None,
            down: None,
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
            DecodeError::Malformed(w) | DecodeError::TooLarge(w) => Unjudged::Malformed(w),
        }
    }
}

/// Judges the control message (and, where a rule needs it, the message) in
/// `body`: the bytes after the distribution header, terms with their
/// version byte when `versioned` (a pass-through frame).
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
        29 | 30 | 35 | 36 | 37 => t.get(2),
        _ => None,
    };
    // Only a pid of the peer's own node: the stand-in for a refused frame
    // names it, and a made-up node's name would be an atom never counted.
    if let Some(Term::Pid(p)) = sender {
        if mem.is_remote(&p.node) {
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
        2 | 12 | 22 | 23 => to_pid(p, mem, &mut d, versioned, "send", pid(2)?)?,
        // Link exits: EXIT {3, ...}, EXIT_TT {13, ...}, PAYLOAD_EXIT {24, ...},
        // PAYLOAD_EXIT_TT {25, ...}. Under a restricted policy the only links
        // are those local processes made; the node ignores exits of others.
        // A local pid or reference the peer was not given, named in a
        // reason, is remembered as forged (echoed back by a local process
        // it would otherwise become given); the signal passes (a monitor's
        // DOWN carries erpc's result): in the control message (3, 13), or
        // in the payload (24, 25; one too large to decode is walked).
        3 | 13 => signal_reason(mem, "link_exit", Target::Pid, el(3)?),
        24 | 25 => payload_reason(mem, &d, versioned, "link_exit", Target::Pid)?,
        // UNLINK {4, ...}, UNLINK_ID {35, ...}, UNLINK_ID_ACK {36, ...}
        4 | 35 | 36 => Judgement::allow("unlink", Target::Pid),
        // NODE_LINK {5}: never sent, a no-op on receipt.
        5 => Judgement::allow("node_link", Target::None),
        // REG_SEND {6, From, _, Name}, REG_SEND_TT {16, From, _, Name, Token}
        6 | 16 => {
            let name = el(3)?.atom().ok_or(Unjudged::Malformed("reg_send to a non-atom"))?;
            to_name(p, mem, &mut d, versioned, "reg_send", name)?
        }
        // GROUP_LEADER {7, From, To}
        7 if p.spawn => Judgement::allow("group_leader", Target::Pid),
        7 => Judgement::refuse("group_leader", Target::Pid, "group_leader/2 on a local process"),
        // EXIT2 {8, From, To, Reason}, EXIT2_TT {18, ...}, PAYLOAD_EXIT2 {26, ...}, _TT {27, ...}
        8 | 18 | 26 | 27 => exit2(p),
        // MONITOR_P {19, From, ToProc, Ref}
        19 => {
            let (from, to, r) = (pid(1)?, el(2)?, el(3)?);
            let (target, ok) = match to {
                Term::Atom(n) => (
                    Target::Name(n.clone()),
                    p.lists(n) || [NET_KERNEL, GLOBAL, PG].contains(&&**n),
                ),
                Term::Pid(q) => {
                    // A caller too: the server it calls may watch it (global
                    // monitors whoever asks for a lock).
                    let ok = mem.given_pid(q) || mem.machinery_of(q).is_some() || mem.replier(q) || mem.io_server(q);
                    if !ok {
                        mem.forge_pid(q);
                    }
                    (Target::Pid, ok)
                }
                _ => return Err(Unjudged::Malformed("monitor of neither a pid nor a name")),
            };
            let r = match r {
                Term::Ref(r) => r,
                _ => return Err(Unjudged::Malformed("monitor without a reference")),
            };
            // Each monitor is memory on the node while it lasts: a
            // restricted host's processes hold at most `max_monitors`.
            let (ok, why) = match ok {
                false => (false, "a process this peer's node may not reach"),
                true if !mem.monitor(r, to, p.max_monitors) => (false, TOO_MANY_MONITORS),
                true => (true, ""),
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
                        Term::Ref(r.clone()),
                        Term::Atom(Arc::from("noproc")),
                    ]),
                    None,
                );
                Judgement {
                    answer: Some(answer),
                    ..Judgement::refuse("monitor", target, why)
                }
            }
        }
        // DEMONITOR_P {20, ...}, MONITOR_P_EXIT {21, ...}, PAYLOAD_MONITOR_P_EXIT {28, ...}
        20 => {
            if let Term::Ref(r) = el(3)? {
                mem.demonitor(r, el(2)?);
            }
            Judgement::allow("demonitor", Target::None)
        }
        21 | 28 => {
            // The DOWN of a monitor the local global made of the peer's
            // process (global drops one of its names), or of one the local
            // pg scope made of a peer scope (it drops the scope's groups):
            // given back once the frame passes whole.
            let down = match (el(1)?, el(2)?, el(3)?) {
                (Term::Pid(from), Term::Pid(to), Term::Ref(r)) => Some((from.clone(), to.clone(), r.clone())),
                _ => None,
            };
            let judged = |j: Judgement| Judgement { down, ..j };
            let request = match el(3)? {
                Term::Ref(r) => mem.global_group_request(r),
                _ => None,
            };
            let reason = match request {
                Some(_) if op == 21 => Some(el(4)?.clone()),
                Some(_) => whole(&d, versioned)?,
                None => None,
            };
            match (request, reason) {
                (Some(false), _) => Judgement::refuse(
                    "monitor_exit",
                    Target::None,
                    "an erpc result to global_group whose request erlmesh no longer follows",
                ),
                (Some(true), Some(reason)) if !global_group_result_fits(&reason) => Judgement::refuse(
                    "monitor_exit",
                    Target::None,
                    "an erpc result global_group's request never gets (an improper list: it crashes, and the node halts)",
                ),
                (Some(true), None) => Judgement::refuse(
                    "monitor_exit",
                    Target::None,
                    "an erpc result to global_group too large to check",
                ),
                _ if op == 21 => judged(signal_reason(mem, "monitor_exit", Target::None, el(4)?)),
                _ => judged(payload_reason(mem, &d, versioned, "monitor_exit", Target::None)?),
            }
        }
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
        // The result: an error (an atom) or a process of the peer's node.
        31 | 32 => match el(4)? {
            Term::Atom(_) => Judgement::allow("spawn_reply", Target::None),
            q if mem.remote_pid(q) => Judgement::allow("spawn_reply", Target::None),
            r => {
                let _ = mem.names_forged(r);
                Judgement::refuse(
                    "spawn_reply",
                    Target::None,
                    "a spawn reply whose result is not a process of the peer's node",
                )
            }
        },
        // ALIAS_SEND {33, From, Alias}, _TT {34, ...}
        33 | 34 => match el(2)? {
            Term::Ref(r) => to_alias(p, mem, &mut d, versioned, r)?,
            _ => return Err(Unjudged::Malformed("alias_send to a non-reference")),
        },
        // ALTACT_SIG_SEND {37, Flags, From, To} and {37, Flags, From, To,
        // Token} (OTP 28+): a send (priority or not) to a pid, an alias or a
        // name, or an exit signal (EXIT flag), judged as what it stands for.
        37 => {
            let flags = el(1)?
                .int()
                .ok_or(Unjudged::Malformed("altact signal flags not a small integer"))?;
            let to = el(3)?;
            if flags & ALTACT_EXIT != 0 {
                exit2(p)
            } else if flags & ALTACT_NAME != 0 {
                let name = to
                    .atom()
                    .ok_or(Unjudged::Malformed("altact send to a name that is no atom"))?;
                to_name(p, mem, &mut d, versioned, "reg_send", name)?
            } else if flags & ALTACT_ALIAS != 0 {
                match to {
                    Term::Ref(r) => to_alias(p, mem, &mut d, versioned, r)?,
                    _ => return Err(Unjudged::Malformed("altact send to an alias that is no reference")),
                }
            } else {
                match to {
                    Term::Pid(q) => to_pid(p, mem, &mut d, versioned, "send", q)?,
                    _ => return Err(Unjudged::Malformed("altact send to a pid that is no pid")),
                }
            }
        }
        _ => Judgement::refuse("unknown", Target::None, "an unknown control message"),
    })
}

/// ALTACT_SIG_SEND's flags (`erts/emulator/beam/dist.h`).
const ALTACT_ALIAS: i64 = 4;
const ALTACT_NAME: i64 = 8;
const ALTACT_EXIT: i64 = 16;

fn exit2(p: &DistPolicy) -> Judgement {
    if p.exit_signals {
        Judgement::allow("exit2", Target::Pid)
    } else {
        Judgement::refuse("exit2", Target::Pid, "an exit signal (exit/2)")
    }
}

/// A send to a local pid: a kernel protocol server by its protocol, a
/// given pid by its content, anything else refused (and remembered as
/// forged).
fn to_pid(
    p: &DistPolicy,
    mem: &mut Memory,
    d: &mut Decoder,
    versioned: bool,
    op: &'static str,
    to: &Pid,
) -> Result<Judgement, Unjudged> {
    if let Some(name) = mem.machinery_of(to) {
        let target = Target::Name(Arc::from(name));
        let raw = d.rest();
        let Some(m) = whole(d, versioned)? else {
            return Ok(Judgement::refuse(op, target, TOO_LARGE_FOR_MACHINERY));
        };
        // A reply only to a machinery process that called the peer (pg's
        // scope never does: a "reply" would reach its handle_info).
        if mem.replier(to) && mem.is_reply(&m) {
            return Ok(reply(mem, op, target, &m));
        }
        if let Some(why) = mem.names_forged(&m) {
            return Ok(Judgement::refuse(op, target, why));
        }
        return Ok(
            match machinery(
                p,
                mem,
                name,
                &m,
                Raw {
                    bytes: raw,
                    refs: d.refs(),
                    versioned,
                },
            ) {
                // SEND {2, '', To}.
                Ok(Some(m)) => Judgement {
                    replace: Some((
                        Term::Tuple(vec![Term::Int(2), Term::Atom(Arc::from("")), Term::Pid(to.clone())]),
                        m,
                    )),
                    ..Judgement::allow(op, target)
                },
                Ok(None) => Judgement::allow(op, target),
                Err(why) => refused_call(op, target, why, &m),
            },
        );
    }
    if mem.io_server(to) {
        let Some(m) = whole(d, versioned)? else {
            return Ok(Judgement::refuse(
                op,
                Target::Pid,
                "a message to an I/O server too large to check",
            ));
        };
        if mem.names_forged(&m).is_none() && io_request_ok(mem, &m) {
            return Ok(Judgement::allow(op, Target::Pid));
        }
        return Ok(Judgement::refuse(
            op,
            Target::Pid,
            "an I/O server (a group leader) takes only plain output requests from a peer",
        ));
    }
    if !mem.given_pid(to) && mem.replier(to) {
        let Some(m) = whole(d, versioned)? else {
            // A large reply: its tag checked, the rest walked.
            let tag = element(d, versioned, 0)?;
            let shape = peek(d, versioned)?.0 == 2;
            if shape && tag.is_some_and(|t| mem.reply_tag(&t) && mem.expected_for(&t).is_none()) {
                return Ok(Judgement {
                    walk: Some(d.rest().len()),
                    ..Judgement::allow(op, Target::Pid)
                });
            }
            return Ok(Judgement::refuse(
                op,
                Target::Pid,
                "a caller's pid is sent only its call's reply",
            ));
        };
        if mem.is_reply(&m) {
            return Ok(reply(mem, op, Target::Pid, &m));
        }
        return Ok(Judgement::refuse(
            op,
            Target::Pid,
            "a caller's pid is sent only its call's reply",
        ));
    }
    if !mem.given_pid(to) {
        mem.forge_pid(to);
        return Ok(Judgement::refuse(
            op,
            Target::Pid,
            "a pid this peer's node was not given",
        ));
    }
    content(p, mem, d, versioned, op, Target::Pid)
}

/// An exit or monitor signal: what its reason names that the peer was not
/// given is remembered as forged; the signal passes.
fn signal_reason(mem: &mut Memory, op: &'static str, target: Target, reason: &Term) -> Judgement {
    let _ = mem.names_forged(reason);
    Judgement::allow(op, target)
}

/// [`signal_reason`] of a reason sent as the payload; one too large to
/// decode is walked.
fn payload_reason(
    mem: &mut Memory,
    d: &Decoder,
    versioned: bool,
    op: &'static str,
    target: Target,
) -> Result<Judgement, Unjudged> {
    Ok(match whole(d, versioned)? {
        Some(reason) => signal_reason(mem, op, target, &reason),
        None => Judgement {
            walk: Some(d.rest().len()),
            ..Judgement::allow(op, target)
        },
    })
}

/// The reply to a local call, refused only if it names what the peer
/// was not given.
fn reply(mem: &mut Memory, op: &'static str, target: Target, m: &Term) -> Judgement {
    if !mem.reply_fits(m) {
        return Judgement::refuse(op, target, NOT_THE_EXPECTED_REPLY);
    }
    match mem.names_forged(m) {
        Some(why) => Judgement::refuse(op, target, why),
        None => Judgement::allow(op, target),
    }
}

/// A refused message to the machinery; a refused registration (past the
/// bound on global names, or a name erlmesh does not take) is answered
/// `no` (`{Tag, no}` to the caller): the peer's registrar calls under
/// global's lock, and would hold it, waiting, for as long as the caller
/// lives. A refused set_lock is answered `false` (the lock is busy: the
/// caller tries again or gives up, as global's own answer would have it);
/// a refused unregister `ok` and del_lock `true`, as b's global answers
/// for a name or lock it does not hold.
fn refused_call(op: &'static str, target: Target, why: &'static str, m: &Term) -> Judgement {
    let mut j = Judgement::refuse(op, target, why);
    if let Some([Term::Atom(g), from, req]) = m.tuple() {
        let no = match req.tag() {
            Some("register" | "register_ext") => Some("no"),
            Some("set_lock") => Some("false"),
            // What b's global answers for a name or lock it does not hold
            // (a refused one is not held): the caller goes on.
            Some("unregister") => Some("ok"),
            Some("del_lock") => Some("true"),
            _ => None,
        };
        if let Some(no) = no {
            if let (true, Some([Term::Pid(caller), tag])) = (&**g == "$gen_call", from.tuple()) {
                let send = Term::Tuple(vec![Term::Int(2), Term::Atom(Arc::from("")), Term::Pid(caller.clone())]);
                let reply = Term::Tuple(vec![tag.clone(), Term::Atom(Arc::from(no))]);
                j.answer = Some(etf::frame(&send, Some(&reply)));
            }
        }
    }
    j
}

const TOO_MANY_MONITORS: &str =
    "more monitors of local processes than the policy's max_monitors allows this host (each is memory on the node)";

const NOT_THE_EXPECTED_REPLY: &str =
    "a reply to a call to the peer's kernel machinery that its protocol never gives (its caller, global's locker say, crashes on it)";

/// A send to a registered name: a listed one by its content, the
/// machinery by its protocol, the rest refused.
fn to_name(
    p: &DistPolicy,
    mem: &mut Memory,
    d: &mut Decoder,
    versioned: bool,
    op: &'static str,
    name: &str,
) -> Result<Judgement, Unjudged> {
    let target = Target::Name(Arc::from(name));
    if let Some(m_name) = machinery_name(name) {
        let raw = d.rest();
        let Some(m) = whole(d, versioned)? else {
            return Ok(Judgement::refuse(op, target, TOO_LARGE_FOR_MACHINERY));
        };
        if let Some(why) = mem.names_forged(&m) {
            return Ok(Judgement::refuse(op, target, why));
        }
        return Ok(
            match machinery(
                p,
                mem,
                m_name,
                &m,
                Raw {
                    bytes: raw,
                    refs: d.refs(),
                    versioned,
                },
            ) {
                // REG_SEND {6, PeerPid, '', Name}, the peer's own pid as sender.
                Ok(Some(m)) => match mem.peer_pid.clone() {
                    Some(from) => Judgement {
                        replace: Some((
                            Term::Tuple(vec![
                                Term::Int(6),
                                Term::Pid(from),
                                Term::Atom(Arc::from("")),
                                Term::Atom(Arc::from(name)),
                            ]),
                            m,
                        )),
                        ..Judgement::allow(op, target)
                    },
                    None => Judgement::refuse(op, target, "a message to the machinery from no process of the peer's"),
                },
                Ok(None) => Judgement::allow(op, target),
                Err(why) => refused_call(op, target, why, &m),
            },
        );
    }
    if p.lists(name) {
        return content(p, mem, d, versioned, op, target);
    }
    Ok(Judgement::refuse(
        op,
        target,
        "a registered name the policy does not list",
    ))
}

/// A send to a local alias the peer was given.
fn to_alias(
    p: &DistPolicy,
    mem: &mut Memory,
    d: &mut Decoder,
    versioned: bool,
    r: &Ref,
) -> Result<Judgement, Unjudged> {
    if mem.expected(r).is_some() {
        // The alias of a call to the peer's machinery: only its reply.
        return Ok(match whole(d, versioned)? {
            Some(m) if mem.is_reply(&m) => reply(mem, "alias_send", Target::Alias, &m),
            _ => Judgement::refuse("alias_send", Target::Alias, NOT_THE_EXPECTED_REPLY),
        });
    }
    if mem.given_ref(r) {
        return content(p, mem, d, versioned, "alias_send", Target::Alias);
    }
    mem.forge_ref(r);
    Ok(Judgement::refuse(
        "alias_send",
        Target::Alias,
        "an alias this peer's node was not given",
    ))
}

/// The message of a send whose target is allowed: refused when it names
/// local pids, references or ports the peer was not given, asks the
/// process for what no peer should get by a message (a sys request, an I/O
/// request other than plain output, input as from a local driver, a fake
/// parent's exit), or is a gen_server call whose `From` is not a process
/// of the peer. A message not all in hand, or too large to decode
/// ([`MAX_JUDGED_TERMS`]), is judged by its top (arity, tag, a call's
/// `From`, the tag of a 2-tuple's second element) and walked for what it
/// names ([`Judgement::walk`]); the work per message stays linear in its
/// bytes, the memory bounded.
fn content(
    p: &DistPolicy,
    mem: &mut Memory,
    d: &mut Decoder,
    versioned: bool,
    op: &'static str,
    target: Target,
) -> Result<Judgement, Unjudged> {
    let m = match whole(d, versioned) {
        Ok(m) => m,
        Err(Unjudged::Need) => None,
        Err(e) => return Err(e),
    };
    let (arity, tag) = match &m {
        Some(m) => (m.tuple().map_or(0, |t| t.len()), m.tag().map(Arc::from)),
        None => peek(d, versioned)?,
    };
    let mut why = match (arity, tag.as_deref()) {
        (3, Some("system")) => Some("a sys message (state replacement, code change)"),
        (3, Some("EXIT")) if !p.exit_signals => Some("an 'EXIT' message (as from a parent)"),
        (4, Some("io_request")) => {
            let plain = |m: &Term| io_request_ok(mem, m);
            let ok = match &m {
                Some(m) => plain(m),
                // An I/O request is judged whole: wait for it, and refuse
                // one too large to decode.
                None => message(d, versioned).is_ok_and(|m| plain(&m)),
            };
            (!ok).then_some("an I/O request other than plain output")
        }
        // global_group's name search (`global_group:send/whereis_name`
        // for a node): b's global_group sends the caller's message to the
        // answer, and crashes on an atom (under kernel_sup: the node halts).
        (2, Some("find_name_res")) => {
            let ok = matches!(m.as_ref().and_then(Term::tuple), Some([_, Term::Pid(_)]))
                || matches!(m.as_ref().and_then(Term::tuple), Some([_, Term::Atom(a)]) if &**a == "undefined");
            (!ok).then_some("a name search's answer that is neither undefined nor a pid (global_group crashes on it)")
        }
        (2 | 3, Some("$gen_call" | "$gen_cast")) if supervisor_request(d, versioned, &m)? => {
            Some("a supervisor's child management (start, restart, terminate, delete)")
        }
        _ => None,
    };
    let Some(m) = m else {
        why = why.or(match (arity, tag.as_deref()) {
            (3, Some("$gen_call")) => {
                let from = element(d, versioned, 1)?;
                (!from.is_some_and(|f| valid_from(mem, &f)))
                    .then_some("a gen_server call whose From is not {a process of the peer, a tag}")
            }
            (2, _) => {
                let first = element(d, versioned, 0)?;
                let input = match (first, at_element(d, versioned, 1)?) {
                    (Some(Term::Pid(_) | Term::Port(_)), Some(e)) => {
                        let (_, tag) = peek(&e, false)?;
                        tag.is_some_and(|t| driver_input(&Term::Tuple(vec![Term::Atom(t)])))
                    }
                    _ => false,
                };
                input.then_some("input as a local driver or port sends it")
            }
            _ => None,
        });
        return Ok(match why {
            Some(why) => Judgement::refuse(op, target, why),
            None => Judgement {
                walk: Some(d.rest().len()),
                ..Judgement::allow(op, target)
            },
        });
    };
    if why.is_none() && !mem.reply_fits(&m) {
        why = Some(NOT_THE_EXPECTED_REPLY);
    }
    if why.is_none() {
        why = mem.names_forged(&m).or_else(|| {
            let t = m.tuple().unwrap_or(&[]);
            match (m.tag(), t) {
                (Some("$gen_call"), [_, from, _]) if !valid_from(mem, from) => {
                    Some("a gen_server call whose From is not {a process of the peer, a tag}")
                }
                (_, [Term::Pid(_) | Term::Port(_), input]) if driver_input(input) => {
                    Some("input as a local driver or port sends it")
                }
                _ => None,
            }
        });
    }
    Ok(match why {
        Some(why) => Judgement::refuse(op, target, why),
        None => Judgement::allow(op, target),
    })
}

/// Why a message to the machinery is refused when too large to decode.
const TOO_LARGE_FOR_MACHINERY: &str = "a message to the kernel's machinery too large to check";

/// Terms decoded to judge one message's content: beyond, it is judged by
/// its top and walked (about 640 KiB of decoded terms at most).
pub const MAX_JUDGED_TERMS: usize = 1 << 14;

/// The whole message if in hand and small enough to decode
/// ([`MAX_JUDGED_TERMS`]); None if too large; [`Unjudged::Need`] if not
/// all there.
fn whole(d: &Decoder, versioned: bool) -> Result<Option<Term>, Unjudged> {
    let mut w = Decoder::limited(d.rest(), d.refs(), MAX_JUDGED_TERMS);
    if versioned {
        w.version()?;
    }
    whole_term(&mut w)
}

/// One term: None if too large to decode, [`Unjudged::Need`] if not all
/// there.
fn whole_term(d: &mut Decoder) -> Result<Option<Term>, Unjudged> {
    match d.term() {
        Ok(t) => Ok(Some(t)),
        Err(DecodeError::TooLarge(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A decoder at element `i` of the message's top tuple, the elements
/// before it decoded (each within [`MAX_JUDGED_TERMS`]); None if the
/// message is no tuple that long, or an element before is too large.
fn at_element<'a>(d: &Decoder<'a>, versioned: bool, i: usize) -> Result<Option<Decoder<'a>>, Unjudged> {
    let mut e = Decoder::limited(d.rest(), d.refs(), MAX_JUDGED_TERMS);
    if versioned {
        e.version()?;
    }
    let rest = e.rest();
    let Some((arity, skip)) = tuple_header(rest)? else {
        return Ok(None);
    };
    if i >= arity {
        return Ok(None);
    }
    let mut e = Decoder::limited(&rest[skip..], d.refs(), MAX_JUDGED_TERMS);
    for _ in 0..i {
        if whole_term(&mut e)?.is_none() {
            return Ok(None);
        }
    }
    Ok(Some(Decoder::limited(e.rest(), d.refs(), MAX_JUDGED_TERMS)))
}

/// Element `i` of the message's top tuple, decoded (None: no such
/// element, or too large to decode).
fn element(d: &Decoder, versioned: bool, i: usize) -> Result<Option<Term>, Unjudged> {
    match at_element(d, versioned, i)? {
        Some(mut e) => whole_term(&mut e),
        None => Ok(None),
    }
}

/// [`peek`] at element `i` of the message's top tuple (a cast's request),
/// the elements before it decoded, the rest not.
pub fn peek_element(d: &Decoder, versioned: bool, i: usize) -> Result<(usize, Option<Atom>), Unjudged> {
    match at_element(d, versioned, i)? {
        Some(e) => peek(&e, false),
        None => Ok((0, None)),
    }
}

/// A tuple's arity and header length, if `rest` starts with a tuple.
fn tuple_header(rest: &[u8]) -> Result<Option<(usize, usize)>, Unjudged> {
    Ok(match rest.first().ok_or(Unjudged::Need)? {
        104 => Some((*rest.get(1).ok_or(Unjudged::Need)? as usize, 2)),
        105 => {
            let b = rest.get(1..5).ok_or(Unjudged::Need)?;
            Some((u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize, 5))
        }
        _ => None,
    })
}

/// A supervisor's child management, by call or cast: `which_children`
/// and `count_children` are reads, the rest change what runs.
fn supervisor_request(d: &Decoder, versioned: bool, m: &Option<Term>) -> Result<bool, Unjudged> {
    let req = match m {
        Some(m) => m.tuple().and_then(|t| t.last()).cloned(),
        None => {
            let last = peek(d, versioned)?.0.saturating_sub(1);
            match at_element(d, versioned, last)? {
                Some(e) => peek(&e, false)?.1.map(|t| Term::Tuple(vec![Term::Atom(t)])),
                None => None,
            }
        }
    };
    Ok(matches!(
        req.as_ref().and_then(Term::tag),
        Some("start_child" | "restart_child" | "terminate_child" | "delete_child" | "try_again_restart")
    ))
}

/// The message's top: its arity if a tuple (0 otherwise) and its first
/// element if an atom. Reads no further than that.
pub fn peek(d: &Decoder, versioned: bool) -> Result<(usize, Option<Atom>), Unjudged> {
    let mut d = Decoder::new(d.rest(), d.refs());
    if versioned {
        d.version()?;
    }
    let rest = d.rest();
    let Some((arity, skip)) = tuple_header(rest)? else {
        return Ok((0, None));
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

#[cfg(test)]
mod tests;
