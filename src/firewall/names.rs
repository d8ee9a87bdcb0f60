//! The global names a restricted peer has the local node's
//! `global_name_server` hold, per connection, so that their number is
//! bounded as their size is ([`machinery`](super::machinery)). (Locks are
//! not counted: unregistering takes one, and a peer at its bound must be
//! able to make room.)
//!
//! b's global keeps every name a peer registers (its tables, its state, a
//! monitor of the holder): about 840 bytes for a 79-byte registration.
//! What a peer's messages add (registrations, the names of a sync, the
//! inserts of its name operations) is counted by name, once each, in its
//! host's count; what they remove (unregistrations, the deletes of name
//! operations), and what b's global drops when a holder ends (the DOWN of
//! a monitor b's global made of it, seen going out and coming back), is
//! given back; a connection's end gives back all of it (b's global drops
//! a node's names at its nodedown). A name b's global drops otherwise (a
//! clash, a registration it would not keep, a third node's process that
//! ended) is given back only then: an overcount, never an undercount.
//! A registration refused at the bound is answered `no`, so that the
//! peer's caller (its registrar, under global's lock) does not wait.

use super::etf::{Pid, Ref, Term};

/// Why a message adding names past the bound is refused.
pub const TOO_MANY: &str = "more global names than the policy's max_global_names lets this host have the node hold";
use std::collections::HashMap;

/// Names a peer host's connections may have held, together (the most
/// `max_global_names` may be, and its default).
pub const MAX_GLOBAL_HELD: usize = 65_536;

/// A process, by node and numbers.
type PidKey = (String, u32, u32, u32);
/// A local reference (b's global's monitor), by its words.
type RefKey = (u32, Vec<u32>);

fn pid_key(p: &Pid) -> PidKey {
    (p.node.to_string(), p.id, p.serial, p.creation)
}

/// A name or lock as a key (a 128-bit hash of its term's text: names are
/// at most 1 KiB, checked before).
fn key(kind: &str, t: &Term) -> u128 {
    super::etf::key128(&[kind.as_bytes(), format!("{t:?}").as_bytes()])
}

/// What one connection's peer has b's global hold.
#[derive(Default)]
pub struct GlobalHeld {
    /// Each name or lock, by key, and its holder.
    held: HashMap<u128, PidKey>,
    by_holder: HashMap<PidKey, Vec<u128>>,
    /// b's global's monitors of the peer's processes (one for each name
    /// and lock it holds for them), and each holder's: once a holder has
    /// none left (their DOWNs came, or global took them back), b's global
    /// holds none of its names.
    monitors: HashMap<RefKey, PidKey>,
    holder_monitors: HashMap<PidKey, usize>,
}

/// What a message to b's global adds and removes.
#[derive(Default)]
pub struct Change {
    add: Vec<(u128, PidKey)>,
    remove: Vec<u128>,
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
        let req = match t {
            [Term::Atom(g), _, req] if &**g == "$gen_call" => req,
            [Term::Atom(g), req] if &**g == "$gen_cast" => req,
            _ => return c,
        };
        let r = req.tuple().unwrap_or(&[]);
        let name = |c: &mut Change, e: &Term| {
            if let Some([n, Term::Pid(p), _]) = e.tuple() {
                c.add.push((key("name", n), pid_key(p)));
            }
        };
        let ops = |c: &mut Change, ops: &Term| {
            for op in list(ops) {
                match op.tuple() {
                    Some([Term::Atom(a), e]) if &**a == "insert" => name(c, e),
                    Some([Term::Atom(a), n]) if &**a == "delete" => c.remove.push(key("name", n)),
                    _ => {}
                }
            }
        };
        match (req.tag().unwrap_or(""), r) {
            ("register", [_, n, Term::Pid(p), _]) | ("register_ext", [_, n, Term::Pid(p), _, _]) => {
                c.add.push((key("name", n), pid_key(p)))
            }
            ("unregister", [_, n]) => c.remove.push(key("name", n)),
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

/// What [`GlobalHeld`] hands over (`erlmesh upgrade`): names as hex keys
/// with their holders, and b's global's monitors.
#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct GlobalState {
    names: Vec<(String, PidKey)>,
    monitors: Vec<(RefKey, PidKey)>,
}

impl GlobalHeld {
    pub fn export(&self) -> GlobalState {
        GlobalState {
            names: self
                .held
                .iter()
                .map(|(k, p)| (format!("{k:032x}"), p.clone()))
                .collect(),
            monitors: self.monitors.iter().map(|(r, p)| (r.clone(), p.clone())).collect(),
        }
    }

    /// Takes what a previous process held (at most `max` names): how many
    /// names were taken.
    pub fn import(&mut self, s: GlobalState, max: usize) -> usize {
        let names: Vec<(u128, PidKey)> = s
            .names
            .into_iter()
            .filter_map(|(k, p)| Some((u128::from_str_radix(&k, 16).ok()?, p)))
            .take(max)
            .collect();
        let (added, _) = self.apply(Change {
            add: names,
            remove: Vec::new(),
        });
        for (r, p) in s.monitors.into_iter().take(2 * MAX_GLOBAL_HELD) {
            if self.monitors.insert(r, p.clone()).is_none() {
                *self.holder_monitors.entry(p).or_default() += 1;
            }
        }
        added
    }

    /// Names held now.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The names `c` would add that are not held yet.
    pub fn new_ones(&self, c: &Change) -> usize {
        let mut seen = std::collections::HashSet::new();
        c.add
            .iter()
            .filter(|(k, _)| !self.held.contains_key(k) && seen.insert(*k))
            .count()
    }

    /// Applies `c`: returns how many were added and how many removed.
    pub fn apply(&mut self, c: Change) -> (usize, usize) {
        let mut removed = 0;
        for k in c.remove {
            removed += usize::from(self.drop_key(k));
        }
        let mut added = 0;
        for (k, holder) in c.add {
            if let Some(old) = self.held.get(&k) {
                if *old == holder {
                    continue;
                }
                // The same name for another holder: moved, not added.
                self.drop_key(k);
                removed += 1;
            }
            self.held.insert(k, holder.clone());
            self.by_holder.entry(holder).or_default().push(k);
            added += 1;
        }
        (added, removed)
    }

    fn drop_key(&mut self, k: u128) -> bool {
        let Some(holder) = self.held.remove(&k) else {
            return false;
        };
        if let Some(ks) = self.by_holder.get_mut(&holder) {
            ks.retain(|x| *x != k);
            if ks.is_empty() {
                self.by_holder.remove(&holder);
            }
        }
        true
    }

    /// Whether b's global's monitors of the peer's processes are as many
    /// as erlmesh follows: then no name is added (a name whose monitor
    /// went unseen could be given back while b keeps it).
    pub fn monitors_full(&self) -> bool {
        self.monitors.len() >= 2 * MAX_GLOBAL_HELD
    }

    /// b's global monitors the peer's process `p` with reference `r`.
    pub fn monitored(&mut self, r: &Ref, p: &Pid) {
        if !self.monitors_full() && self.monitors.insert((r.creation, r.ids.clone()), pid_key(p)).is_none() {
            *self.holder_monitors.entry(pid_key(p)).or_default() += 1;
        }
    }

    /// b's global took its monitor `r` back (it dropped a name or a lock
    /// of the holder): how many names were given back.
    pub fn demonitored(&mut self, r: &Ref) -> usize {
        match self.monitors.remove(&(r.creation, r.ids.clone())) {
            Some(holder) => self.monitor_gone(holder),
            None => 0,
        }
    }

    /// One of `holder`'s monitors is gone: with none left, b's global holds
    /// none of its names, and all are given back.
    fn monitor_gone(&mut self, holder: PidKey) -> usize {
        let left = self.holder_monitors.get_mut(&holder).map(|n| {
            *n -= 1;
            *n
        });
        if left != Some(0) {
            return 0;
        }
        self.holder_monitors.remove(&holder);
        let keys = self.by_holder.remove(&holder).unwrap_or_default();
        keys.iter().filter(|k| self.held.remove(k).is_some()).count()
    }

    /// The DOWN of b's global's monitor `r` of `from` came (b's node
    /// delivers it only for a monitor that exists, from the monitored
    /// process): b's global drops what that monitor stood for, a name or a
    /// lock, it is not known which; once the holder has no monitor left,
    /// all its names are given back (a forged DOWN gives nothing back
    /// while another monitor of the holder stands). How many were.
    pub fn down(&mut self, r: &Ref, from: &Pid) -> usize {
        let k = (r.creation, r.ids.clone());
        if self.monitors.get(&k) != Some(&pid_key(from)) {
            return 0;
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

    fn call(req: Vec<Term>) -> Term {
        let from = Term::Tuple(vec![Term::Pid(pid(1)), atom("tag")]);
        Term::Tuple(vec![atom("$gen_call"), from, Term::Tuple(req)])
    }

    /// Invariant: what is counted is what b's global holds for the peer,
    /// or more (never less): a name once however often registered, given
    /// back by its unregistration or the DOWN of b's monitor of its holder
    /// (only of a monitor b's global made).
    #[test]
    fn names_are_counted_once_and_given_back_as_b_drops_them() {
        let mut g = GlobalHeld::default();
        let register = |n: &str, p: u32| call(vec![atom("register"), atom(n), Term::Pid(pid(p)), atom("m")]);
        for _ in 0..3 {
            let c = Change::of(&register("a", 5));
            g.apply(c);
        }
        assert_eq!(g.len(), 1);
        assert_eq!(g.new_ones(&Change::of(&register("a", 5))), 0);
        assert_eq!(g.new_ones(&Change::of(&register("b", 5))), 1);
        g.apply(Change::of(&register("b", 5)));
        g.apply(Change::of(&register("c", 5)));
        assert_eq!(g.len(), 3);
        let r = |n: u32| Ref {
            node: Arc::from("b@h"),
            creation: 1,
            ids: vec![n],
        };
        // A DOWN of a monitor b's global never made gives nothing back.
        assert_eq!(g.down(&r(9), &pid(5)), 0);
        g.monitored(&r(1), &pid(5));
        g.monitored(&r(2), &pid(5));
        g.monitored(&r(3), &pid(5));
        // From another process than the monitored one: nothing.
        assert_eq!(g.down(&r(1), &pid(6)), 0);
        // One DOWN (a lock's, say) while other monitors stand: nothing.
        assert_eq!(g.down(&r(1), &pid(5)), 0);
        assert_eq!(g.len(), 3);
        // The holder's last monitors gone (a DOWN, global taking one
        // back): all its names.
        assert_eq!(g.demonitored(&r(2)), 0);
        assert_eq!(g.down(&r(2), &pid(5)), 0, "taken back already");
        assert_eq!(g.down(&r(3), &pid(5)), 3);
        assert_eq!(g.len(), 0);
        for n in ["a", "b", "c"] {
            g.apply(Change::of(&register(n, 5)));
        }
        assert_eq!(g.len(), 3);
        // Which of the holder's names went is not known, only how many.
        g.apply(Change::of(&call(vec![atom("unregister"), atom("a")])));
        g.apply(Change::of(&call(vec![atom("unregister"), atom("b")])));
        g.apply(Change::of(&call(vec![atom("unregister"), atom("c")])));
        assert_eq!(g.len(), 0);
        // async_del_name: global ignores it (OTP 25 to 29), so does the
        // count.
        g.apply(Change::of(&register("d", 5)));
        let del = Term::Tuple(vec![
            atom("$gen_cast"),
            Term::Tuple(vec![atom("async_del_name"), atom("d"), Term::Pid(pid(5))]),
        ]);
        g.apply(Change::of(&del));
        assert_eq!(g.len(), 1);
        g.apply(Change::of(&call(vec![atom("unregister"), atom("d")])));
        // A sync's names and name operations.
        let entry = |n: &str| Term::Tuple(vec![atom(n), Term::Pid(pid(7)), atom("m")]);
        let names = Term::List(vec![entry("x"), entry("y")], Box::new(Term::Nil));
        let exchange = Term::Tuple(vec![
            atom("$gen_cast"),
            Term::Tuple(vec![atom("exchange"), atom("c@h"), names, Term::Nil, Term::Int(1)]),
        ]);
        g.apply(Change::of(&exchange));
        assert_eq!(g.len(), 2);
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
        assert_eq!(g.len(), 2);
    }
}
