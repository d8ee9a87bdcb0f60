//! The global names and locks a restricted peer has the local node's
//! `global_name_server` hold, per connection, so that their number is
//! bounded as their size is ([`machinery`](super::machinery)). Names and
//! locks are counted apart, each within the policy's `max_global_names`
//! (unregistering takes a lock: a peer at its names' bound can make room).
//!
//! b's global keeps every name a peer registers (its tables, its state, a
//! monitor of the holder): about 840 bytes for a 79-byte registration;
//! and every lock a peer's process sets (a table row, two index rows, a
//! monitor of the process). What a peer's messages add (registrations,
//! the names of a sync, the inserts of its name operations, set_lock) is
//! counted by name or lock, once each, in its host's count; what they
//! remove (unregistrations, del_lock), a
//! set_lock b's global answers `false`, and what b's global drops when a
//! holder ends (the DOWN of a monitor b's global made of it, seen going
//! out and coming back), is given back; a connection's end gives back all
//! of it (b's global drops a node's names and locks at its nodedown). A
//! name b's global drops otherwise (a clash, a registration it would not
//! keep, a third node's process that ended) is given back only then: an
//! overcount, never an undercount.
//!
//! A holder's last monitor gone tells that b's global holds nothing of
//! what it had processed for it, not of what it has not processed yet: a
//! registration judged after the unregistration that took the last
//! monitor back may still be on its way. So a holder's names and locks are
//! given back only once b's global has answered a call judged after the
//! last of them was (global answers in order: seen going out, an answer
//! comes after every monitor b's global made before it); until then they
//! wait, counted.
//!
//! A registration or set_lock refused at the bound is answered (`no`,
//! `false`), so that the peer's caller (its registrar, under global's
//! lock) does not wait.

use super::etf::{Pid, Ref, Term};
use std::collections::{HashMap, HashSet, VecDeque};

/// Why a message adding names past the bound is refused.
pub const TOO_MANY: &str = "more global names than the policy's max_global_names lets this host have the node hold";
/// Why a set_lock past the bound is refused.
pub const TOO_MANY_LOCKS: &str =
    "more global locks than the policy's max_global_names lets this host have the node hold";

/// Names (and, apart, locks) a peer host's connections may have held,
/// together (the most `max_global_names` may be, and its default).
pub const MAX_GLOBAL_HELD: usize = 65_536;

/// The peer's calls to b's global whose answers are awaited, per
/// connection: past it the oldest is forgotten (its answer then tells
/// nothing: an overcount, never an undercount).
const MAX_CALLS: usize = 4096;

/// A process, by node and numbers.
type PidKey = (String, u32, u32, u32);
/// A local reference (b's global's monitor), by its words.
type RefKey = (u32, Vec<u32>);

fn pid_key(p: &Pid) -> PidKey {
    (p.node.to_string(), p.id, p.serial, p.creation)
}

/// A name or lock as a key (a 128-bit hash of its canonical term's text:
/// names are at most 1 KiB, checked before).
fn key(kind: &str, t: &Term) -> u128 {
    super::etf::key128(&[kind.as_bytes(), format!("{:?}", t.canonical()).as_bytes()])
}

/// A lock as b's global holds it: its id (`{ResourceId, LockRequesterId}`)
/// for one process (a del_lock must name the lock's requester, and comes
/// from the process).
fn lock_key(id: &Term, p: &Pid) -> u128 {
    key("lock", &Term::Tuple(vec![id.clone(), Term::Pid(p.clone())]))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Name,
    Lock,
}

/// Most holders followed for one name: past it the name stays counted
/// until it is unregistered or the connection ends.
const MAX_HOLDERS: usize = 8;

/// A name or lock counted.
struct Held {
    /// The processes it was added for (a lock: its process). A name
    /// another message adds for another holder keeps its holders: b's
    /// global may ignore that message (a sync's `exchange` of another
    /// tag) or keep its own holder in a clash, so the name is given back
    /// only once none of them is left (the twenty-first review: moved to
    /// the new holder, a name was given back at that holder's end while b
    /// kept it for the old one).
    holders: Vec<PidKey>,
    kind: Kind,
    /// set_locks of it judged whose answers have not been seen.
    pending: u32,
    /// Known held by b's global at some point: a name, or a lock once a
    /// set_lock of it was answered `true` (or its answer went unseen).
    sure: bool,
    /// Added before erlmesh knew b's global's pid: b's global's monitor
    /// for it went unseen, so a holder's last monitor seen going says
    /// nothing of it. Given back only by its removal or the connection's
    /// end.
    sticky: bool,
}

/// A call to b's global judged: its tag, its place in the order of the
/// messages judged, and the lock it asks for.
struct Call {
    tag: u128,
    seq: u64,
    lock: Option<u128>,
}

/// What one connection's peer has b's global hold.
#[derive(Default)]
pub struct GlobalHeld {
    /// Each name or lock, by key.
    held: HashMap<u128, Held>,
    /// Each holder's keys, and the place of the last message judged that
    /// added one.
    by_holder: HashMap<PidKey, (Vec<u128>, u64)>,
    names: usize,
    locks: usize,
    /// b's global's monitors of the peer's processes (one for each name
    /// and lock it holds for them), and each holder's: once a holder has
    /// none left (their DOWNs came, or global took them back), b's global
    /// holds none of what it processed for it.
    monitors: HashMap<RefKey, PidKey>,
    holder_monitors: HashMap<PidKey, usize>,
    /// Messages to b's global judged on this connection; the place of the
    /// last of them b's global is known to have processed (it answered a
    /// call judged there or later).
    judged: u64,
    answered: u64,
    calls: VecDeque<Call>,
    /// Holders with no monitor left whose last addition b's global may not
    /// have processed yet: given back once it has.
    waiting: HashSet<PidKey>,
}

/// What a message to b's global adds and removes.
#[derive(Default)]
pub struct Change {
    add: Vec<(u128, PidKey, Kind)>,
    remove: Vec<u128>,
    /// A call's tag (its answer is `{Tag, Reply}`).
    call: Option<u128>,
    /// Judged before erlmesh knew b's global's pid (see [`Held::sticky`]).
    pub sticky: bool,
}

/// Where an answer to a call from `caller` tagged `tag` goes: the alias
/// of a tag `[alias | Alias]` (gen's since OTP 24), else the caller.
fn reply_to(caller: &Pid, tag: &Term) -> Term {
    let alias = |t: &Term| match t {
        Term::List(v, tail) if matches!(&v[..], [Term::Atom(a)] if &**a == "alias") => Some((**tail).clone()),
        _ => None,
    };
    match tag {
        // gen:reply/2's clauses: `[alias | Alias]` (gen:call), and
        // `[[alias | Alias] | _]` (OTP 26's gen_server:multi_call).
        Term::List(v, _) if v.len() == 1 && alias(&v[0]).is_some() => alias(&v[0]).expect("just matched"),
        t => alias(t).unwrap_or_else(|| Term::Pid(caller.clone())),
    }
}

/// An answer's key: its destination and tag. Only a tag holding a
/// reference is followed (gen's always do): a message b's global sends a
/// process for another reason (`{global_name_conflict, Name}`) is then
/// never taken for an answer.
fn answer_key(to: &Term, tag: &Term) -> Option<u128> {
    let mut has_ref = false;
    tag.visit(&mut |t| has_ref |= matches!(t, Term::Ref(_)));
    has_ref.then(|| key("answer", &Term::Tuple(vec![to.clone(), tag.clone()])))
}

fn list(t: &Term) -> &[Term] {
    match t {
        Term::List(v, _) => v,
        _ => &[],
    }
}

impl Change {
    /// What message `m` to b's global (already checked for its shape)
    /// adds and removes.
    pub fn of(m: &Term) -> Change {
        let mut c = Change::default();
        let t = m.tuple().unwrap_or(&[]);
        let (req, caller) = match t {
            [Term::Atom(g), from, req] if &**g == "$gen_call" => match from.tuple() {
                Some([Term::Pid(p), tag]) => {
                    c.call = answer_key(&reply_to(p, tag), tag);
                    (req, Some(p))
                }
                _ => (req, None),
            },
            [Term::Atom(g), req] if &**g == "$gen_cast" => (req, None),
            _ => return c,
        };
        let r = req.tuple().unwrap_or(&[]);
        let name = |c: &mut Change, e: &Term| {
            if let Some([n, Term::Pid(p), _]) = e.tuple() {
                c.add.push((key("name", n), pid_key(p), Kind::Name));
            }
        };
        // A sync's deletes give nothing back: b's global applies them only
        // within its own sync with the peer (a `resolved` with another
        // tag is ignored, its names kept); what it does delete comes back
        // as the demonitor of the holder, seen going out.
        let ops = |c: &mut Change, ops: &Term| {
            for op in list(ops) {
                if let Some([Term::Atom(a), e]) = op.tuple() {
                    if &**a == "insert" {
                        name(c, e);
                    }
                }
            }
        };
        match (req.tag().unwrap_or(""), r) {
            ("register", [_, n, Term::Pid(p), _]) | ("register_ext", [_, n, Term::Pid(p), _, _]) => {
                c.add.push((key("name", n), pid_key(p), Kind::Name))
            }
            ("unregister", [_, n]) => c.remove.push(key("name", n)),
            // A lock is set for, and deleted by, the calling process.
            ("set_lock", [_, id]) => {
                if let Some(p) = caller {
                    c.add.push((lock_key(id, p), pid_key(p), Kind::Lock));
                }
            }
            ("del_lock", [_, id]) => {
                if let Some(p) = caller {
                    c.remove.push(lock_key(id, p));
                }
            }
            // async_del_name is not one: OTP 25 to 29's global ignores it.
            ("exchange", [_, _, names, names_ext, _]) => {
                list(names).iter().for_each(|e| name(&mut c, e));
                list(names_ext).iter().for_each(|e| name(&mut c, e));
            }
            ("resolved", [_, _, his_ops, _, _, names_ext, _]) => {
                ops(&mut c, his_ops);
                list(names_ext).iter().for_each(|e| name(&mut c, e));
            }
            ("new_nodes", [_, _, his_ops, names_ext, _, _]) => {
                ops(&mut c, his_ops);
                list(names_ext).iter().for_each(|e| name(&mut c, e));
            }
            _ => {}
        }
        c
    }
}

/// What [`GlobalHeld`] hands over (`erlmesh upgrade`): names and locks as
/// hex keys with their holders, and b's global's monitors.
#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct GlobalState {
    names: Vec<(String, PidKey)>,
    monitors: Vec<(RefKey, PidKey)>,
    #[serde(default)]
    locks: Vec<(String, PidKey)>,
}

impl GlobalHeld {
    pub fn export(&self) -> GlobalState {
        let of = |kind: Kind| {
            self.held
                .iter()
                .filter(|(_, h)| h.kind == kind)
                .flat_map(|(k, h)| h.holders.iter().map(move |p| (format!("{k:032x}"), p.clone())))
                .collect()
        };
        GlobalState {
            names: of(Kind::Name),
            locks: of(Kind::Lock),
            monitors: self.monitors.iter().map(|(r, p)| (r.clone(), p.clone())).collect(),
        }
    }

    /// Takes what a previous process held (at most `max` names and `max`
    /// locks). What it held counts as processed by b's global only once
    /// b's global answers a call made to it from now on.
    pub fn import(&mut self, s: GlobalState, max: usize) {
        let keys = |v: Vec<(String, PidKey)>, kind: Kind| -> Vec<(u128, PidKey, Kind)> {
            v.into_iter()
                .filter_map(|(k, p)| Some((u128::from_str_radix(&k, 16).ok()?, p, kind)))
                .take(max.saturating_mul(MAX_HOLDERS))
                .collect()
        };
        let mut add = keys(s.names, Kind::Name);
        add.extend(keys(s.locks, Kind::Lock));
        self.apply(Change {
            add,
            remove: Vec::new(),
            call: None,
            sticky: false,
        });
        for h in self.held.values_mut() {
            h.sure = true;
            h.pending = 0;
        }
        for (r, p) in s.monitors.into_iter().take(2 * MAX_GLOBAL_HELD) {
            if self.monitors.insert(r, p.clone()).is_none() {
                *self.holder_monitors.entry(p).or_default() += 1;
            }
        }
    }

    /// Names and locks held now.
    pub fn held(&self) -> (usize, usize) {
        (self.names, self.locks)
    }

    /// The names and the locks `c` would add that are not held yet.
    pub fn new_ones(&self, c: &Change) -> (usize, usize) {
        let mut seen = HashSet::new();
        let mut new = |kind| {
            c.add
                .iter()
                .filter(|(k, _, x)| *x == kind && !self.held.contains_key(k))
                .filter(|(k, _, _)| seen.insert(*k))
                .count()
        };
        let names = new(Kind::Name);
        (names, new(Kind::Lock))
    }

    /// Whether answers to the peer's calls are awaited.
    pub fn awaits_answers(&self) -> bool {
        !self.calls.is_empty()
    }

    /// Applies `c`, a message judged to pass.
    pub fn apply(&mut self, c: Change) {
        self.judged += 1;
        let seq = self.judged;
        for k in c.remove {
            self.drop_key(k);
        }
        let mut lock = None;
        for (k, holder, kind) in c.add {
            if let Some(old) = self.held.get_mut(&k) {
                old.sticky |= c.sticky;
                if kind == Kind::Lock {
                    old.pending += 1;
                    lock = Some(k);
                }
                let e = self.by_holder.entry(holder.clone()).or_default();
                e.1 = seq;
                if !old.holders.contains(&holder) {
                    // The same name for another holder: one more holder
                    // (see [`Held::holders`]); past the most followed, the
                    // name stays until unregistered.
                    if old.holders.len() < MAX_HOLDERS {
                        old.holders.push(holder);
                        e.0.push(k);
                    } else {
                        old.sticky = true;
                    }
                }
                continue;
            }
            let h = Held {
                holders: vec![holder.clone()],
                kind,
                pending: u32::from(kind == Kind::Lock),
                sure: kind == Kind::Name,
                sticky: c.sticky,
            };
            if kind == Kind::Lock {
                lock = Some(k);
            }
            self.held.insert(k, h);
            match kind {
                Kind::Name => self.names += 1,
                Kind::Lock => self.locks += 1,
            }
            let e = self.by_holder.entry(holder).or_default();
            e.0.push(k);
            e.1 = seq;
        }
        if let Some(tag) = c.call {
            if self.calls.len() >= MAX_CALLS {
                if let Some(old) = self.calls.pop_front() {
                    self.forget(old);
                }
            }
            self.calls.push_back(Call { tag, seq, lock });
        }
    }

    /// A call whose answer will not be read: its lock counts as held.
    fn forget(&mut self, c: Call) {
        if let Some(h) = c.lock.and_then(|k| self.held.get_mut(&k)) {
            h.pending = h.pending.saturating_sub(1);
            h.sure = true;
        }
    }

    /// b's global sent `m` to `to` (a process or an alias of the peer's):
    /// an answer `{Tag, Reply}` to a call judged tells that b's global
    /// processed every message judged up to it, and, to a set_lock,
    /// whether the lock is set.
    pub fn answer(&mut self, to: &Term, m: &Term) {
        let Some([tag, reply]) = m.tuple() else {
            return;
        };
        let Some(tag) = answer_key(to, tag) else {
            return;
        };
        let Some(i) = self.calls.iter().position(|c| c.tag == tag) else {
            return;
        };
        // Global answers in order: calls before it went unanswered here.
        for c in self.calls.drain(..i).collect::<Vec<_>>() {
            self.forget(c);
        }
        let Some(c) = self.calls.pop_front() else {
            return;
        };
        self.answered = self.answered.max(c.seq);
        if let Some(k) = c.lock {
            let set = matches!(reply, Term::Atom(a) if &**a == "true");
            if let Some(h) = self.held.get_mut(&k) {
                h.pending = h.pending.saturating_sub(1);
                h.sure |= set;
                if !h.sure && h.pending == 0 {
                    self.drop_key(k);
                }
            }
        }
        let ready: Vec<PidKey> = self
            .waiting
            .iter()
            .filter(|p| self.by_holder.get(*p).map_or(true, |(_, last)| *last <= self.answered))
            .cloned()
            .collect();
        for p in ready {
            self.waiting.remove(&p);
            self.give_back(&p);
        }
    }

    fn drop_key(&mut self, k: u128) -> bool {
        let Some(h) = self.held.remove(&k) else {
            return false;
        };
        match h.kind {
            Kind::Name => self.names -= 1,
            Kind::Lock => self.locks -= 1,
        }
        for p in &h.holders {
            if let Some((ks, _)) = self.by_holder.get_mut(p) {
                ks.retain(|x| *x != k);
                if ks.is_empty() {
                    self.by_holder.remove(p);
                }
            }
        }
        true
    }

    /// Whether b's global's monitors of the peer's processes are as many
    /// as erlmesh follows: then nothing is added (a name whose monitor
    /// went unseen could be given back while b keeps it).
    pub fn monitors_full(&self) -> bool {
        self.monitors.len() >= 2 * MAX_GLOBAL_HELD
    }

    /// b's global monitors the peer's process `p` with reference `r`.
    pub fn monitored(&mut self, r: &Ref, p: &Pid) {
        if !self.monitors_full() && self.monitors.insert((r.creation, r.ids.clone()), pid_key(p)).is_none() {
            *self.holder_monitors.entry(pid_key(p)).or_default() += 1;
            self.waiting.remove(&pid_key(p));
        }
    }

    /// b's global took its monitor `r` back (it dropped a name or a lock
    /// of the holder).
    pub fn demonitored(&mut self, r: &Ref) {
        if let Some(holder) = self.monitors.remove(&(r.creation, r.ids.clone())) {
            self.monitor_gone(holder);
        }
    }

    /// One of `holder`'s monitors is gone: with none left, b's global holds
    /// nothing it processed for it; what it may not have processed yet
    /// waits for an answer judged after it.
    fn monitor_gone(&mut self, holder: PidKey) {
        let left = self.holder_monitors.get_mut(&holder).map(|n| {
            *n -= 1;
            *n
        });
        if left != Some(0) {
            return;
        }
        self.holder_monitors.remove(&holder);
        match self.by_holder.get(&holder) {
            Some((_, last)) if *last > self.answered => {
                self.waiting.insert(holder);
            }
            _ => self.give_back(&holder),
        }
    }

    fn give_back(&mut self, holder: &PidKey) {
        let Some((keys, last)) = self.by_holder.remove(holder) else {
            return;
        };
        let mut kept = Vec::new();
        for k in keys {
            match self.held.get_mut(&k) {
                Some(h) if h.sticky => kept.push(k),
                // Another holder keeps it.
                Some(h) if h.holders.len() > 1 => h.holders.retain(|p| p != holder),
                Some(h) => {
                    match h.kind {
                        Kind::Name => self.names -= 1,
                        Kind::Lock => self.locks -= 1,
                    }
                    self.held.remove(&k);
                }
                None => {}
            }
        }
        if !kept.is_empty() {
            self.by_holder.insert(holder.clone(), (kept, last));
        }
    }

    /// The DOWN of b's global's monitor `r` of `from` came (b's node
    /// delivers it only for a monitor that exists, from the monitored
    /// process): b's global drops what that monitor stood for, a name or a
    /// lock, it is not known which; once the holder has no monitor left,
    /// all it held is given back (a forged DOWN gives nothing back while
    /// another monitor of the holder stands).
    pub fn down(&mut self, r: &Ref, from: &Pid) {
        let k = (r.creation, r.ids.clone());
        if self.monitors.get(&k) != Some(&pid_key(from)) {
            return;
        }
        self.monitors.remove(&k);
        self.monitor_gone(pid_key(from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn atom(a: &str) -> Term {
        Term::Atom(Arc::from(a))
    }

    fn pid(id: u32) -> Pid {
        Pid {
            node: Arc::from("c@h"),
            id,
            serial: 0,
            creation: 1,
        }
    }

    fn r(n: u32) -> Ref {
        Ref {
            node: Arc::from("b@h"),
            creation: 1,
            ids: vec![n],
        }
    }

    /// A call from process 1, tagged `tag`.
    fn call_tagged(tag: u32, req: Vec<Term>) -> Term {
        call_from(1, tag, req)
    }

    fn call_from(from: u32, tag: u32, req: Vec<Term>) -> Term {
        let from = Term::Tuple(vec![Term::Pid(pid(from)), tag_ref(tag)]);
        Term::Tuple(vec![atom("$gen_call"), from, Term::Tuple(req)])
    }

    fn tag_ref(n: u32) -> Term {
        Term::Ref(Ref {
            node: Arc::from("c@h"),
            creation: 1,
            ids: vec![n],
        })
    }

    fn call(req: Vec<Term>) -> Term {
        call_tagged(0, req)
    }

    fn answer(tag: u32, reply: &str) -> Term {
        Term::Tuple(vec![tag_ref(tag), atom(reply)])
    }

    /// To the caller, process 1.
    fn to1() -> Term {
        Term::Pid(pid(1))
    }

    fn register(n: &str, p: u32) -> Term {
        call(vec![atom("register"), atom(n), Term::Pid(pid(p)), atom("m")])
    }

    fn lock(res: &str) -> Term {
        Term::Tuple(vec![atom(res), atom("req")])
    }

    /// Invariant: what is counted is what b's global holds for the peer,
    /// or more (never less): a name once however often registered, given
    /// back by its unregistration or the DOWN of b's monitor of its holder
    /// (only of a monitor b's global made).
    #[test]
    fn names_are_counted_once_and_given_back_as_b_drops_them() {
        let mut g = GlobalHeld::default();
        for _ in 0..3 {
            g.apply(Change::of(&register("a", 5)));
        }
        assert_eq!(g.held(), (1, 0));
        assert_eq!(g.new_ones(&Change::of(&register("a", 5))), (0, 0));
        assert_eq!(g.new_ones(&Change::of(&register("b", 5))), (1, 0));
        g.apply(Change::of(&register("b", 5)));
        g.apply(Change::of(&register("c", 5)));
        assert_eq!(g.held(), (3, 0));
        // b's global has processed all of them (their answers came).
        for _ in 0..5 {
            g.answer(&to1(), &answer(0, "yes"));
        }
        // A DOWN of a monitor b's global never made gives nothing back.
        g.down(&r(9), &pid(5));
        g.monitored(&r(1), &pid(5));
        g.monitored(&r(2), &pid(5));
        g.monitored(&r(3), &pid(5));
        // From another process than the monitored one: nothing.
        g.down(&r(1), &pid(6));
        // One DOWN (a lock's, say) while other monitors stand: nothing.
        g.down(&r(1), &pid(5));
        assert_eq!(g.held(), (3, 0));
        // The holder's last monitors gone (a DOWN, global taking one
        // back): all its names.
        g.demonitored(&r(2));
        g.down(&r(2), &pid(5));
        assert_eq!(g.held(), (3, 0), "taken back already");
        g.down(&r(3), &pid(5));
        assert_eq!(g.held(), (0, 0));
        for n in ["a", "b", "c"] {
            g.apply(Change::of(&register(n, 5)));
        }
        assert_eq!(g.held(), (3, 0));
        // Which of the holder's names went is not known, only how many.
        g.apply(Change::of(&call(vec![atom("unregister"), atom("a")])));
        g.apply(Change::of(&call(vec![atom("unregister"), atom("b")])));
        g.apply(Change::of(&call(vec![atom("unregister"), atom("c")])));
        assert_eq!(g.held(), (0, 0));
        // async_del_name: global ignores it (OTP 25 to 29), so does the
        // count.
        g.apply(Change::of(&register("d", 5)));
        let del = Term::Tuple(vec![
            atom("$gen_cast"),
            Term::Tuple(vec![atom("async_del_name"), atom("d"), Term::Pid(pid(5))]),
        ]);
        g.apply(Change::of(&del));
        assert_eq!(g.held(), (1, 0));
        g.apply(Change::of(&call(vec![atom("unregister"), atom("d")])));
        // A sync's names and name operations.
        let entry = |n: &str| Term::Tuple(vec![atom(n), Term::Pid(pid(7)), atom("m")]);
        let names = Term::List(vec![entry("x"), entry("y")], Box::new(Term::Nil));
        let exchange = Term::Tuple(vec![
            atom("$gen_cast"),
            Term::Tuple(vec![atom("exchange"), atom("c@h"), names, Term::Nil, Term::Int(1)]),
        ]);
        g.apply(Change::of(&exchange));
        assert_eq!(g.held(), (2, 0));
        let ops = Term::List(
            vec![
                Term::Tuple(vec![atom("insert"), entry("z")]),
                Term::Tuple(vec![atom("delete"), atom("x")]),
            ],
            Box::new(Term::Nil),
        );
        let new_nodes = Term::Tuple(vec![
            atom("$gen_cast"),
            Term::Tuple(vec![
                atom("new_nodes"),
                atom("c@h"),
                ops,
                Term::Nil,
                Term::Nil,
                Term::Nil,
            ]),
        ]);
        g.apply(Change::of(&new_nodes));
        // The delete gives nothing back (nineteenth review: b's global
        // applies a sync's deletes only within its own sync, and a
        // `resolved` of another tag is ignored): x goes when b's global
        // demonitors its holder.
        assert_eq!(g.held(), (3, 0));
    }

    /// Invariant: a holder's last monitor gone gives back only what b's
    /// global processed for it. Registrations judged after the
    /// unregistration that takes the last monitor back (sent together,
    /// before b's global processed the first) stay counted until b's
    /// global answers a call judged after them; then they are b's, with
    /// their monitors. (The old count gave them all back at the
    /// demonitor: a peer could have b hold a bound's worth more each
    /// round.)
    /// Twenty-first review: a name b's global holds for process 6, named
    /// for process 5 by an `exchange` b's global ignores (another tag),
    /// was moved to 5 in the count and given back when 5's last monitor
    /// went, while b kept it for 6: a name a round past any bound. A name
    /// now keeps every holder it was added for, and goes at the last one's
    /// end (or its unregistration).
    #[test]
    fn a_name_named_for_another_holder_stays_until_every_holder_is_gone() {
        let mut g = GlobalHeld::default();
        g.apply(Change::of(&register("anchor", 5)));
        g.apply(Change::of(&register("n", 6)));
        // An exchange naming `n` for process `p`, with `tag`.
        let exchange = |p: u32, tag: i64| {
            let entry = Term::Tuple(vec![atom("n"), Term::Pid(pid(p)), atom("m")]);
            Term::Tuple(vec![
                atom("$gen_cast"),
                Term::Tuple(vec![
                    atom("exchange"),
                    atom("c@h"),
                    Term::List(vec![entry], Box::new(Term::Nil)),
                    Term::Nil,
                    Term::Int(tag),
                ]),
            ])
        };
        g.apply(Change::of(&exchange(5, 12345)));
        assert_eq!(g.held(), (2, 0));
        for _ in 0..2 {
            g.answer(&to1(), &answer(0, "yes"));
        }
        g.monitored(&r(1), &pid(5));
        g.monitored(&r(2), &pid(6));
        // 5's only real name unregistered: b's global takes its monitor back.
        g.apply(Change::of(&call(vec![atom("unregister"), atom("anchor")])));
        g.apply(Change::of(&call_tagged(
            3,
            vec![atom("register"), atom("other"), Term::Pid(pid(7)), atom("m")],
        )));
        g.answer(&to1(), &answer(3, "yes"));
        g.demonitored(&r(1));
        assert_eq!(
            g.held(),
            (2, 0),
            "n stays, held for 6 as far as erlmesh knows ('other' is 7's)"
        );
        g.demonitored(&r(2));
        assert_eq!(g.held(), (1, 0), "n goes with its last holder");
        // Handed over with both holders, and bounded.
        let mut g = GlobalHeld::default();
        g.apply(Change::of(&register("n", 6)));
        for p in 10..30 {
            g.apply(Change::of(&exchange(p, 1)));
        }
        assert_eq!(g.export().names.len(), MAX_HOLDERS);
        let mut back = GlobalHeld::default();
        back.import(g.export(), 300);
        assert_eq!(back.held(), (1, 0));
        back.answer(&to1(), &answer(0, "yes"));
        back.monitored(&r(4), &pid(6));
        back.demonitored(&r(4));
        assert_eq!(back.held(), (1, 0), "other holders keep it");
        // Past MAX_HOLDERS the name stays until it is unregistered.
        for p in 10..30 {
            g.monitored(&r(100 + p), &pid(p));
            g.demonitored(&r(100 + p));
        }
        g.monitored(&r(99), &pid(6));
        g.demonitored(&r(99));
        assert_eq!(g.held(), (1, 0), "sticky past the most holders followed");
        g.apply(Change::of(&call(vec![atom("unregister"), atom("n")])));
        assert_eq!(g.held(), (0, 0));
    }

    #[test]
    fn names_b_has_not_processed_yet_stay_counted_when_the_last_monitor_goes() {
        let mut g = GlobalHeld::default();
        g.apply(Change::of(&call_tagged(
            1,
            vec![atom("register"), atom("n0"), Term::Pid(pid(5)), atom("m")],
        )));
        g.monitored(&r(1), &pid(5));
        g.answer(&to1(), &answer(1, "yes"));
        // Together: unregister n0, then register x1 to x3 for the same
        // holder.
        g.apply(Change::of(&call_tagged(2, vec![atom("unregister"), atom("n0")])));
        for (i, n) in ["x1", "x2", "x3"].into_iter().enumerate() {
            g.apply(Change::of(&call_tagged(
                3 + i as u32,
                vec![atom("register"), atom(n), Term::Pid(pid(5)), atom("m")],
            )));
        }
        assert_eq!(g.held(), (3, 0));
        // b's global processes the unregistration: its monitor goes.
        g.demonitored(&r(1));
        assert_eq!(g.held(), (3, 0), "registrations on their way were given back");
        g.answer(&to1(), &answer(2, "true"));
        assert_eq!(g.held(), (3, 0));
        // Then the registrations (a monitor each), and their answers.
        for i in 0..3 {
            g.monitored(&r(10 + i), &pid(5));
        }
        for t in 3..6 {
            g.answer(&to1(), &answer(t, "yes"));
        }
        assert_eq!(g.held(), (3, 0));
        // Had b's global not kept them (no monitor came), the answer
        // after them gives them back.
        let mut g = GlobalHeld::default();
        g.apply(Change::of(&call_tagged(
            1,
            vec![atom("register"), atom("n0"), Term::Pid(pid(5)), atom("m")],
        )));
        g.monitored(&r(1), &pid(5));
        g.apply(Change::of(&call_tagged(2, vec![atom("unregister"), atom("n0")])));
        g.apply(Change::of(&call_tagged(
            3,
            vec![atom("register"), atom("x"), Term::Pid(pid(5)), atom("m")],
        )));
        g.demonitored(&r(1));
        assert_eq!(g.held(), (1, 0));
        g.answer(&to1(), &answer(1, "yes"));
        g.answer(&to1(), &answer(2, "true"));
        assert_eq!(g.held(), (1, 0), "the answer came before the last registration");
        g.answer(&to1(), &answer(3, "yes"));
        assert_eq!(g.held(), (0, 0));
    }

    /// Invariant: a lock counts from its set_lock until b's global answers
    /// `false`, its del_lock (naming the lock's requester, from the same
    /// process), or the holder's last monitor gone; two set_locks of one
    /// lock in flight give it back only when neither set it.
    #[test]
    fn locks_are_counted_apart_and_given_back_as_b_drops_them() {
        let mut g = GlobalHeld::default();
        let set = |tag, res| call_tagged(tag, vec![atom("set_lock"), lock(res)]);
        g.apply(Change::of(&set(1, "r1")));
        g.apply(Change::of(&set(2, "r2")));
        assert_eq!(g.held(), (0, 2));
        assert_eq!(g.new_ones(&Change::of(&set(9, "r1"))), (0, 0));
        // Another process's set_lock of the same lock is another entry.
        assert_eq!(
            g.new_ones(&Change::of(&call_from(2, 9, vec![atom("set_lock"), lock("r1")]))),
            (0, 1)
        );
        g.monitored(&r(1), &pid(1));
        g.answer(&to1(), &answer(1, "true"));
        g.answer(&to1(), &answer(2, "false"));
        assert_eq!(g.held(), (0, 1), "the lock b did not set is given back");
        // A del_lock naming another requester deletes nothing at b.
        let other = Term::Tuple(vec![atom("r1"), atom("other")]);
        g.apply(Change::of(&call_tagged(3, vec![atom("del_lock"), other])));
        assert_eq!(g.held(), (0, 1));
        g.apply(Change::of(&call_tagged(4, vec![atom("del_lock"), lock("r1")])));
        assert_eq!(g.held(), (0, 0));
        // Twice in flight: the first answered false, the second true.
        g.apply(Change::of(&set(5, "r3")));
        g.apply(Change::of(&set(6, "r3")));
        g.answer(&to1(), &answer(5, "false"));
        assert_eq!(g.held(), (0, 1), "given back while another set_lock was on its way");
        g.answer(&to1(), &answer(6, "true"));
        assert_eq!(g.held(), (0, 1));
        // The holder's end: b's global's monitors' DOWNs.
        g.monitored(&r(2), &pid(1));
        g.down(&r(1), &pid(1));
        assert_eq!(g.held(), (0, 1));
        g.down(&r(2), &pid(1));
        assert_eq!(g.held(), (0, 0));
        // An answer from another process than b's global is not read
        // (the filter reads only b's global's), and an unknown tag or an
        // answer seen twice changes nothing.
        g.apply(Change::of(&set(7, "r4")));
        g.answer(&to1(), &answer(99, "false"));
        g.answer(&to1(), &answer(7, "true"));
        g.answer(&to1(), &answer(7, "false"));
        assert_eq!(g.held(), (0, 1));
        // Answers not seen (the calls' queue overflows): counted as set.
        let mut g = GlobalHeld::default();
        for t in 0..(MAX_CALLS as u32 + 10) {
            g.apply(Change::of(&call_tagged(
                t,
                vec![atom("set_lock"), lock(&format!("r{t}"))],
            )));
        }
        for t in 0..(MAX_CALLS as u32 + 10) {
            g.answer(&to1(), &answer(t, "false"));
        }
        assert_eq!(g.held(), (0, 10));
        // An answer is read only at its call's destination (the caller, or
        // the alias of a tag `[alias | Alias]`), and only for a tag holding
        // a reference.
        let mut g = GlobalHeld::default();
        let alias = Term::List(vec![atom("alias")], Box::new(tag_ref(7)));
        let from = Term::Tuple(vec![Term::Pid(pid(1)), alias.clone()]);
        let set = Term::Tuple(vec![
            atom("$gen_call"),
            from,
            Term::Tuple(vec![atom("set_lock"), lock("a")]),
        ]);
        g.apply(Change::of(&set));
        let no = Term::Tuple(vec![alias.clone(), atom("false")]);
        g.answer(&to1(), &no);
        assert_eq!(g.held(), (0, 1), "an alias tag's answer read at the caller");
        g.answer(&tag_ref(7), &no);
        assert_eq!(g.held(), (0, 0));
        g.apply(Change::of(&call_tagged(1, vec![atom("set_lock"), lock("b")])));
        g.answer(&Term::Pid(pid(2)), &answer(1, "false"));
        assert_eq!(g.held(), (0, 1), "an answer to another process read");
        let from = Term::Tuple(vec![Term::Pid(pid(1)), atom("global_name_conflict")]);
        let set = Term::Tuple(vec![
            atom("$gen_call"),
            from,
            Term::Tuple(vec![atom("set_lock"), lock("c")]),
        ]);
        g.apply(Change::of(&set));
        g.answer(&to1(), &Term::Tuple(vec![atom("global_name_conflict"), atom("false")]));
        assert_eq!(g.held(), (0, 2), "a tag without a reference followed");
        // OTP 26's gen_server:multi_call tags `[[alias | Alias] | Mon]`,
        // answered at Alias (nineteenth review: the answers never matched).
        let multi = Term::List(
            vec![Term::List(vec![atom("alias")], Box::new(tag_ref(8)))],
            Box::new(tag_ref(9)),
        );
        let from = Term::Tuple(vec![Term::Pid(pid(1)), multi.clone()]);
        let set = Term::Tuple(vec![
            atom("$gen_call"),
            from,
            Term::Tuple(vec![atom("set_lock"), lock("d")]),
        ]);
        g.apply(Change::of(&set));
        assert_eq!(g.held(), (0, 3));
        g.answer(&tag_ref(8), &Term::Tuple(vec![multi, atom("false")]));
        assert_eq!(g.held(), (0, 2), "a multi_call's answer at its alias was not read");
    }

    /// Invariant: what was added before erlmesh knew b's global's pid (its
    /// monitors went unseen) is not given back by the holder's last
    /// monitor seen going, only by its removal (seventeenth review).
    #[test]
    fn names_added_before_globals_pid_was_known_stay_counted() {
        let mut g = GlobalHeld::default();
        let mut early = Change::of(&call_tagged(
            1,
            vec![atom("register"), atom("early"), Term::Pid(pid(5)), atom("m")],
        ));
        early.sticky = true;
        g.apply(early);
        g.apply(Change::of(&call_tagged(
            2,
            vec![atom("register"), atom("late"), Term::Pid(pid(5)), atom("m")],
        )));
        g.monitored(&r(1), &pid(5));
        g.answer(&to1(), &answer(1, "yes"));
        g.answer(&to1(), &answer(2, "yes"));
        g.down(&r(1), &pid(5));
        assert_eq!(g.held(), (1, 0), "the early name was given back");
        g.apply(Change::of(&call(vec![atom("unregister"), atom("early")])));
        assert_eq!(g.held(), (0, 0));
    }

    /// Invariant: a hand-over keeps every name and lock, and what the new
    /// process is handed waits for an answer before a holder's last
    /// monitor gives it back.
    #[test]
    fn names_and_locks_are_handed_over() {
        let mut g = GlobalHeld::default();
        g.apply(Change::of(&register("a", 5)));
        g.apply(Change::of(&call_tagged(1, vec![atom("set_lock"), lock("r")])));
        g.monitored(&r(1), &pid(5));
        let s: GlobalState = serde_json::from_value(serde_json::to_value(g.export()).unwrap()).unwrap();
        let mut h = GlobalHeld::default();
        h.import(s, MAX_GLOBAL_HELD);
        assert_eq!(h.held(), (1, 1));
        h.demonitored(&r(1));
        assert_eq!(h.held(), (1, 1));
        h.apply(Change::of(&call_tagged(2, vec![atom("del_lock"), lock("r")])));
        h.answer(&to1(), &answer(2, "true"));
        assert_eq!(h.held(), (0, 0));
        // A state from before locks were handed over.
        let old: GlobalState = serde_json::from_str(r#"{"names": [], "monitors": []}"#).unwrap();
        h.import(old, MAX_GLOBAL_HELD);
    }
}
