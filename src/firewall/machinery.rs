//! The kernel's protocol servers a restricted peer keeps reaching
//! (net_kernel, global_name_server, rex, pg scopes), and the exact shapes
//! of what OTP 25, 27 and 29's own nodes send them; the I/O a group leader
//! may take from a peer; gen_server's `From` and tags.

use super::etf::Term;
use super::memory::Memory;

/// The machinery a restricted policy keeps working, judged by content.
pub(super) const NET_KERNEL: &str = "net_kernel";
pub(super) const GLOBAL: &str = "global_name_server";
pub(super) const PG: &str = "pg";
/// rpc's server: asked only which features it has (OTP's rpc.erl asks every
/// node that comes up).
pub(super) const REX: &str = "rex";

/// Every name whose messages are judged by a kernel protocol.
const MACHINERY: &[&str] = &[NET_KERNEL, GLOBAL, PG, REX];

/// The kernel protocol a registered name speaks, if any.
pub fn machinery_name(name: &str) -> Option<&'static str> {
    MACHINERY.iter().copied().find(|m| *m == name)
}

/// What a driver or port sends the process reading it (a group leader, a
/// port owner): from a peer, it would be input typed on this host.
pub(super) fn driver_input(t: &Term) -> bool {
    match t {
        Term::Atom(a) => matches!(&**a, "eof" | "closed" | "connected"),
        Term::Tuple(v) => matches!(
            v.first().and_then(Term::atom),
            Some("data" | "error" | "exit_status" | "reply" | "open_editor" | "editor_data")
        ),
        _ => false,
    }
}

/// `From` of a gen_server call as OTP's own nodes send it: `{Pid, Tag}`
/// with Pid a process of the peer, Tag `Ref`, `[alias | Ref]`,
/// `[[alias | Alias] | Mon]` (OTP 26+ multi_call) or `{Ref, Node}` (OTP 25
/// multi_call).
pub(super) fn valid_from(mem: &Memory, from: &Term) -> bool {
    let Some([pid, tag]) = from.tuple() else {
        return false;
    };
    mem.remote_pid(pid) && valid_tag(tag)
}

pub(super) fn valid_tag(tag: &Term) -> bool {
    let alias = |t: &Term| match t {
        Term::List(v, tail) => matches!(&v[..], [Term::Atom(a)] if &**a == "alias") && matches!(**tail, Term::Ref(_)),
        _ => false,
    };
    match tag {
        Term::Ref(_) => true,
        // OTP 25's multi_call: {Ref, Node}, one Ref for all the nodes
        // called; the peer answers only for itself (see `Memory::reply_tag`).
        Term::Tuple(v) => matches!(&v[..], [Term::Ref(_), Term::Atom(_)]),
        Term::List(v, tail) => alias(tag) || (matches!(&v[..], [a] if alias(a)) && matches!(**tail, Term::Ref(_))),
        _ => false,
    }
}

/// An I/O request a group leader may take from a peer, in the exact
/// shapes OTP's `io` module sends (an I/O server of OTP 26 and later
/// crashes on others): plain output (`put_chars` of characters in an
/// encoding, or of io_lib's own formatting, as `io:format` sends it), the
/// terminal's geometry and options read, recursively through `requests`.
/// Input requests (`get_line`, `get_until`, ...), `setopts` (an
/// `expand_fun`) and any other `M, F, A` are refused.
pub(super) fn io_ok(req: &Term) -> bool {
    let t = req.tuple().unwrap_or(&[]);
    let enc = |e: &Term| matches!(e, Term::Atom(a) if matches!(&**a, "unicode" | "latin1"));
    let chars = |c: &Term| matches!(c, Term::List(..) | Term::Nil | Term::Bytes(_) | Term::Binary(..)) && no_fun(c);
    match (req, req.tag(), t.len()) {
        (Term::Atom(a), _, _) => &**a == "getopts",
        (_, Some("put_chars"), 2) => chars(&t[1]),
        (_, Some("put_chars"), 3) => enc(&t[1]) && chars(&t[2]),
        (_, Some("put_chars"), 5) => {
            enc(&t[1])
                && matches!((&t[2], &t[3]), (Term::Atom(m), Term::Atom(f)) if &**m == "io_lib" && matches!(&**f, "format" | "fwrite" | "write"))
                && matches!(t[4], Term::List(..) | Term::Nil)
                && no_fun(&t[4])
        }
        (_, Some("get_geometry"), 2) => matches!(&t[1], Term::Atom(a) if matches!(&**a, "columns" | "rows")),
        (_, Some("requests"), 2) => match &t[1] {
            Term::List(v, tail) => **tail == Term::Nil && v.iter().all(io_ok),
            Term::Nil => true,
            _ => false,
        },
        _ => false,
    }
}

/// `{io_request, From, ReplyAs, Request}` as OTP's `io` sends it: From a
/// process of the peer, the request plain output ([`io_ok`]).
pub(super) fn io_request_ok(mem: &Memory, m: &Term) -> bool {
    matches!(m.tuple(), Some([Term::Atom(a), from, _, req]) if &**a == "io_request" && mem.remote_pid(from) && io_ok(req))
}

fn no_fun(t: &Term) -> bool {
    let mut any = false;
    t.visit(&mut |t| any |= matches!(t, Term::Fun(_)));
    !any
}

fn is_atom(t: &Term) -> bool {
    matches!(t, Term::Atom(_))
}

fn is_list(t: &Term) -> bool {
    matches!(t, Term::List(_, tail) if **tail == Term::Nil) || *t == Term::Nil
}

fn list(t: &Term) -> &[Term] {
    match t {
        Term::List(v, _) => v,
        _ => &[],
    }
}

fn is_int(t: &Term) -> bool {
    matches!(t, Term::Int(_) | Term::Big)
}

fn is_bool(t: &Term) -> bool {
    matches!(t, Term::Atom(a) if matches!(&**a, "true" | "false"))
}

/// A pid, or a proper list of pids, of the peer.
fn remote_pids(mem: &Memory, t: &Term) -> bool {
    mem.remote_pid(t) || (is_list(t) && list(t).iter().all(|p| mem.remote_pid(p)))
}

/// What the node gets in place of a message erlmesh changed.
#[derive(Debug, Clone, PartialEq)]
pub enum Msg {
    /// A term erlmesh encodes.
    Term(Term),
    /// The message's own bytes, some of them left out (no version byte).
    Bytes(Vec<u8>),
}

/// A message's bytes as the frame carries them (with its version byte
/// when `versioned`), and the atom cache they refer to.
#[derive(Clone, Copy)]
pub struct Raw<'a> {
    pub bytes: &'a [u8],
    pub refs: &'a [super::etf::Atom],
    pub versioned: bool,
}

/// What the machinery may be asked, in the exact shapes OTP 25, 27 and
/// 29's own nodes send (`net_kernel.erl`, `global.erl`, `rpc.erl`,
/// `pg.erl`): every element whose type the receiver relies on is checked,
/// since a kernel process that crashes can take the node down.
/// Whether a message to the machinery may pass: `Ok(Some(m))` when the
/// node must get `m` in its place.
pub(super) fn machinery(
    p: &super::DistPolicy,
    mem: &mut Memory,
    name: &str,
    m: &Term,
    raw: Raw,
) -> Result<Option<Msg>, &'static str> {
    let t = m.tuple().unwrap_or(&[]);
    match name {
        // rpc's nodes observer asks every new node's rex which features it
        // has, and gets the answer at its own pid.
        REX => match t {
            [from, Term::Atom(a)] if &**a == "features_request" && mem.remote_pid(from) => Ok(None),
            [Term::Atom(a), Term::Atom(n), l] if &**a == "features_reply" && mem.is_remote(n) && is_list(l) => Ok(None),
            _ => Err("rex (rpc) is asked only which features it has"),
        },
        // ping.
        NET_KERNEL => match t {
            [Term::Atom(g), from, req] if &**g == "$gen_call" && valid_from(mem, from) => match req.tuple() {
                Some([Term::Atom(a), n]) if &**a == "is_auth" && is_atom(n) => Ok(None),
                _ => Err("net_kernel is asked only is_auth (ping)"),
            },
            _ => Err("net_kernel is asked only is_auth (ping)"),
        },
        GLOBAL => {
            let ok = match t {
                [Term::Atom(g), req] if &**g == "$gen_cast" => global_cast(mem, req),
                [Term::Atom(g), from, req] if &**g == "$gen_call" => valid_from(mem, from) && global_call(mem, req),
                _ => global_info(mem, m),
            };
            if !ok {
                return Err("a request global's own protocol does not make, or not in its shape");
            }
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
            // A sync speaks for the peer's own processes only: its names
            // for others' are left out. For a local process, b's global
            // would take the name on the peer's word, or resolve a clash
            // between two of its own processes with the name's method,
            // which kills one (the twenty-second review: b's locker, and b
            // halted); for a third node's, the same clash kills that
            // node's process, and a name kept for it outlives the
            // connection, uncounted. For the names b holds itself, b's
            // global does nothing with them; a third node's, b has from
            // that node.
            if let [Term::Atom(g), req] = t {
                if &**g == "$gen_cast" && names_foreign(mem, req) {
                    let bytes = without_foreign_names(mem, raw).ok_or("a global sync erlmesh cannot rewrite")?;
                    let mut d = super::etf::Decoder::new(&bytes, raw.refs);
                    let m = d.term().map_err(|_| "a global sync erlmesh cannot rewrite")?;
                    mem.global_apply(&m, p.max_global_names)?;
                    return Ok(Some(Msg::Bytes(bytes)));
                }
            }
            mem.global_apply(m, p.max_global_names).map(|()| None)
        }
        _ => {
            // Version 1's shapes (OTP 29) only to a local scope that
            // announced version 1 (`pg.rs`): OTP 25 and 27 crash on them.
            let v1 = mem.pg_speaks_v1();
            // Members: a proper, non-empty list of the peer node's pids (pg
            // never sends a group without members; OTP 25 and 27's pg keeps
            // one from a join or sync, and a later sync of it crashes once
            // the group's table row is gone).
            let pid_list =
                |ps: &Term| is_list(ps) && !list(ps).is_empty() && list(ps).iter().all(|p| mem.remote_pid(p));
            let members = |ps: &Term| mem.remote_pid(ps) || pid_list(ps);
            // An update's Add or Remove may be empty (version 1 keeps no
            // group without members).
            let pid_or_none = |ps: &Term| *ps == Term::Nil || pid_list(ps);
            let ok = match t {
                [Term::Atom(a), peer] if &**a == "discover" => mem.remote_pid(peer),
                [Term::Atom(a), peer, Term::Int(v)] if &**a == "discover" => *v >= 0 && mem.remote_pid(peer),
                [Term::Atom(g), req] if &**g == "$gen_cast" => match req.tuple() {
                    Some([Term::Atom(a), peer, groups]) if &**a == "sync" => {
                        mem.remote_pid(peer)
                            && is_list(groups)
                            && list(groups)
                                .iter()
                                .all(|g| matches!(g.tuple(), Some([_, ps]) if pid_list(ps)))
                    }
                    Some([Term::Atom(a), peer, Term::Int(v), Term::Map(groups)]) if &**a == "local_data" => {
                        v1 && *v >= 0 && mem.remote_pid(peer) && groups.iter().all(|(_, ps)| pid_list(ps))
                    }
                    _ => false,
                },
                [Term::Atom(a), peer, _group, pids] if &**a == "join" => mem.remote_pid(peer) && members(pids),
                [Term::Atom(a), peer, pids, groups] if &**a == "leave" => {
                    mem.remote_pid(peer) && remote_pids(mem, pids) && is_list(groups)
                }
                [Term::Atom(a), peer, entries] if &**a == "update" => {
                    v1 && mem.remote_pid(peer)
                        && is_list(entries)
                        && list(entries).iter().all(
                            |e| matches!(e.tuple(), Some([_, add, remove]) if pid_or_none(add) && pid_or_none(remove)),
                        )
                }
                _ => false,
            };
            if ok && no_fun(m) {
                mem.pg_apply(m)?;
                // OTP 29's discover to a scope that did not announce version
                // 1: OTP 25's pg crashes on it, 27's takes it as the
                // version 0 one, which both take (a release erlmesh cannot
                // tell apart by the connection).
                Ok(match t {
                    [Term::Atom(a), peer, Term::Int(_)] if &**a == "discover" && !v1 => {
                        Some(Msg::Term(Term::Tuple(vec![Term::Atom(a.clone()), peer.clone()])))
                    }
                    _ => None,
                })
            } else {
                Err("a request pg's own protocol does not make, or not in its shape")
            }
        }
    }
}

/// The lists of a global sync (`exchange`, `resolved`, `new_nodes`) that
/// name holders, by their place in the request, and whether each element
/// is a name operation (`{insert, Entry}`, `{delete, Name}`) or an entry
/// (`{Name, Pid, Method}`, `{Name, Pid, RegNode}`).
fn sync_lists(tag: &str) -> &'static [(usize, bool)] {
    match tag {
        "exchange" => &[(2, false), (3, false)],
        "resolved" => &[(2, true), (5, false)],
        "new_nodes" => &[(2, true), (3, false)],
        _ => &[],
    }
}

/// Whether `e`, an element of a sync list, names as a name's holder a
/// process of another node than the peer's own: a local process, or a
/// third node's.
fn foreign_holder(mem: &Memory, e: &Term, op: bool) -> bool {
    let entry = match (op, e.tuple()) {
        (true, Some([Term::Atom(a), entry])) if &**a == "insert" => entry,
        (true, _) => return false,
        (false, _) => e,
    };
    matches!(entry.tuple(), Some([_, p @ Term::Pid(_), _]) if !mem.remote_pid(p))
}

/// Whether a global sync request names a process of another node than
/// the peer's as a name's holder.
fn names_foreign(mem: &Memory, req: &Term) -> bool {
    let t = req.tuple().unwrap_or(&[]);
    sync_lists(req.tag().unwrap_or("")).iter().any(|&(i, op)| {
        t.get(i)
            .is_some_and(|l| list(l).iter().any(|e| foreign_holder(mem, e, op)))
    })
}

/// The bytes of `{'$gen_cast', Request}`, a global sync already checked
/// for its shape, with the elements of its lists that name another
/// node's process as a holder left out, everything else as the peer sent it (a
/// name's method may be a closure erlmesh does not keep whole: the
/// message is cut, never encoded again). Without the version byte. None
/// when it is not in the plain form OTP writes (tuples of their small
/// form, lists as LIST_EXT or NIL).
fn without_foreign_names(mem: &Memory, raw: Raw) -> Option<Vec<u8>> {
    use super::etf::Decoder;
    let b = raw.bytes;
    let mut d = Decoder::new(b, raw.refs);
    if raw.versioned {
        d.version().ok()?;
    }
    let mut out = Vec::with_capacity(b.len());
    // {'$gen_cast', {Tag, ...}}: tuples in their small form (SMALL_TUPLE_EXT
    // and its arity), copied; their arity.
    let tuple = |d: &mut Decoder, out: &mut Vec<u8>| -> Option<usize> {
        let head = b.get(d.pos..d.pos + 2).filter(|h| h[0] == 104)?;
        out.extend_from_slice(head);
        d.pos += 2;
        Some(usize::from(head[1]))
    };
    (tuple(&mut d, &mut out)? == 2).then_some(())?;
    let copy = |d: &mut Decoder, out: &mut Vec<u8>| -> Option<Term> {
        let at = d.pos;
        let t = d.term().ok()?;
        out.extend_from_slice(&b[at..d.pos]);
        Some(t)
    };
    copy(&mut d, &mut out)?;
    let arity = tuple(&mut d, &mut out)?;
    let tag = copy(&mut d, &mut out)?;
    let lists = sync_lists(tag.atom()?);
    for i in 1..arity {
        let Some(&(_, op)) = lists.iter().find(|(at, _)| *at == i) else {
            copy(&mut d, &mut out)?;
            continue;
        };
        match *b.get(d.pos)? {
            106 => copy(&mut d, &mut out).map(|_| ())?,
            108 => {
                let n = u32::from_be_bytes(b.get(d.pos + 1..d.pos + 5)?.try_into().ok()?);
                d.pos += 5;
                let mut kept = Vec::new();
                let mut count = 0u32;
                for _ in 0..n {
                    let at = d.pos;
                    let e = d.term().ok()?;
                    if !foreign_holder(mem, &e, op) {
                        kept.extend_from_slice(&b[at..d.pos]);
                        count += 1;
                    }
                }
                let at = d.pos;
                let tail = d.term().ok()?;
                if count == 0 && tail == Term::Nil {
                    out.push(106);
                } else {
                    out.push(108);
                    out.extend(count.to_be_bytes());
                    out.extend(kept);
                    out.extend_from_slice(&b[at..d.pos]);
                }
            }
            _ => return None,
        }
    }
    (d.pos == b.len()).then_some(out)
}

/// global's casts between name servers (protocol versions 7 and 8), in
/// the shapes `global.erl` (OTP 25 to 29) sends them: the node they name
/// is the sender's, and every element global's code relies on has its
/// type, inside lists too (a `global_name_server` that crashes takes the
/// node down: `kernel_sup` allows no restart).
fn global_cast(mem: &Memory, req: &Term) -> bool {
    let t = req.tuple().unwrap_or(&[]);
    let tag = req.tag().unwrap_or("");
    let sender = |n: &Term| matches!(n, Term::Atom(a) if mem.is_remote(a));
    match (tag, t.len()) {
        ("init_connect", 4) => {
            // {Vsn, Tag}: the locker takes only versions above 4.
            let vsn_ok = matches!(t[1].tuple(), Some([Term::Int(v), _, ..]) if *v > 4);
            let msg_ok =
                matches!(t[3].tuple(), Some([Term::Atom(l), _, _, p]) if &**l == "locker" && mem.remote_pid(p));
            vsn_ok && sender(&t[2]) && msg_ok
        }
        ("lock_set", 4 | 5) => mem.remote_pid(&t[1]),
        ("exchange", 5) => sender(&t[1]) && name_entries(&t[2]) && names_ext(&t[3]),
        // The resolver's answer to its own name server: never a peer's.
        ("exchange_ops", 5) => false,
        ("resolved", 7) => sender(&t[1]) && ops(&t[2]) && known(&t[3]) && names_ext(&t[5]),
        ("new_nodes", 6) => sender(&t[1]) && ops(&t[2]) && names_ext(&t[3]) && known(&t[4]) && extra_info(&t[5]),
        ("in_sync", 3) => sender(&t[1]) && is_bool(&t[2]),
        ("async_del_name", 3) | ("async_del_lock", 3) => mem.remote_pid(&t[2]),
        _ => false,
    }
}

/// A global name or lock's resource: small (b's global keeps each name
/// in its tables and state, a string at 16 bytes a character: 48 times
/// the bytes sent).
pub const MAX_GLOBAL_NAME_WEIGHT: usize = 1024;

/// Small, and a key erlmesh can count by ([`Term::keyable`]): a name
/// holding a float, a bignum, a large binary, a fun, a port, a record or
/// a reference with trailing zero words is refused.
fn small(t: &Term) -> bool {
    t.keyable() && t.weight() <= MAX_GLOBAL_NAME_WEIGHT
}

/// `{Name, Pid, _}` with a small name.
fn name_entry(e: &Term) -> bool {
    matches!(e.tuple(), Some([name, Term::Pid(_), _]) if small(name))
}

/// `[{Name, Pid, Method}]` as global's exchange sends its names.
fn name_entries(t: &Term) -> bool {
    is_list(t) && list(t).iter().all(name_entry)
}

/// Name operations (`do_ops/5`): `{insert, {Name, Pid, Method}}` and
/// `{delete, Name}`.
fn ops(t: &Term) -> bool {
    is_list(t)
        && list(t).iter().all(|op| match op.tuple() {
            Some([Term::Atom(a), e]) if &**a == "insert" => name_entry(e),
            Some([Term::Atom(a), name]) => &**a == "delete" && small(name),
            _ => false,
        })
}

/// Names registered by a node for another (`global_names_ext`):
/// `{Name, Pid, RegNode}`.
fn names_ext(t: &Term) -> bool {
    is_list(t)
        && list(t)
            .iter()
            .all(|e| matches!(e.tuple(), Some([name, Term::Pid(_), Term::Atom(_)]) if small(name)))
}

/// Known nodes (`add_to_known/2`, `make_node_vsn_list/2`): `Node` or
/// `{Node, Vsn}`.
fn known(t: &Term) -> bool {
    is_list(t)
        && list(t).iter().all(|n| match n {
            Term::Atom(_) => true,
            Term::Tuple(v) => matches!(&v[..], [Term::Atom(_), Term::Int(_)]),
            _ => false,
        })
}

/// `[{vsn, Vsn}, {lock, {global, LockId}}]`: `lock_still_set/3` matches
/// the lock as `{global, _}` while a global lock is held.
fn extra_info(t: &Term) -> bool {
    // `lists:keyfind(lock, 1, ExtraInfo)`: the first lock is the one read.
    let lock = list(t).iter().find_map(|e| match e.tuple() {
        Some([Term::Atom(k), l]) if &**k == "lock" => Some(l),
        _ => None,
    });
    is_list(t)
        && list(t).iter().all(|e| matches!(e.tuple(), Some([Term::Atom(_), _])))
        && lock.is_some_and(|l| matches!(l.tuple(), Some([Term::Atom(g), _]) if &**g == "global"))
}

/// global's calls between name servers, made under its locks: a name is
/// registered only for a process of the peer's node (a name for another
/// node's process would let a clash's resolution act on it).
fn global_call(mem: &Memory, req: &Term) -> bool {
    let t = req.tuple().unwrap_or(&[]);
    let lock_id = |l: &Term| matches!(l.tuple(), Some([_, _])) && small(l);
    match (req.tag().unwrap_or(""), t.len()) {
        ("set_lock" | "del_lock", 2) => lock_id(&t[1]),
        ("register", 4) => small(&t[1]) && mem.remote_pid(&t[2]) && matches!(t[3], Term::Fun(_) | Term::Atom(_)),
        ("register_ext", 5) => {
            small(&t[1]) && mem.remote_pid(&t[2]) && matches!(t[3], Term::Fun(_) | Term::Atom(_)) && is_atom(&t[4])
        }
        ("unregister", 2) => small(&t[1]),
        _ => false,
    }
}

/// global's plain messages between name servers (protocol 7 and 8).
fn global_info(mem: &Memory, m: &Term) -> bool {
    let t = m.tuple().unwrap_or(&[]);
    match (m.tag().unwrap_or(""), t.len()) {
        ("init_connect_ack", 4) | ("cancel_connect", 3) => matches!(&t[1], Term::Atom(a) if mem.is_remote(a)),
        // Partition reports would have this host drop its connection to
        // the node they name, and relay them: from a restricted peer, only
        // about itself (that it lost this node, which drops the peer).
        ("lost_connection", 5) => {
            matches!(&t[1], Term::Atom(a) if mem.is_remote(a))
                && is_int(&t[2])
                && is_int(&t[3])
                && matches!(&t[4], Term::Atom(b) if **b == *mem.local_name())
        }
        ("remove_connection", 2) => matches!(&t[1], Term::Atom(a) if mem.is_remote(a)),
        _ => false,
    }
}
