//! What a peer's node was given, what it forged, and which local
//! processes speak a kernel protocol to it: the capability model's state,
//! one per node pair, owned by the running erlmesh ([`Memories`]).

use super::atoms::{AllAtoms, AtomsState, HostAtoms, MAX_ATOMS_ALL_HOSTS};
use super::etf::{Pid, Ref, Term};
use super::machinery::{machinery_name, valid_tag, GLOBAL, NET_KERNEL, PG, REX};
use super::walk::Found;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Pids of the local node this peer node was given (in any frame the
/// local node sent it), most recently seen kept.
const MAX_GIVEN_PIDS: usize = 65_536;
/// References (aliases) of the local node it was given: replies to calls
/// come back through these, so they churn; the recent ones matter.
const MAX_GIVEN_REFS: usize = 16_384;

/// A local pid as remembered: id, serial, creation.
type PidKey = (u32, u32, u32);
/// A local reference as remembered: creation, words.
type RefKey = (u32, Vec<u32>);

/// Local pids and references the peer's node named before it was given
/// them: never reachable afterwards, whatever the local node echoes.
const MAX_FORGED: usize = 16_384;
/// Local processes that speak a kernel protocol to the peer (learnt from
/// what they send its machinery): a handful per node.
const MAX_MACHINERY_PIDS: usize = 1024;
/// Calls in flight from local processes to the peer's machinery, by their
/// tags' references.
const MAX_MACHINERY_CALLS: usize = 4096;

/// What the reply to a local call to the peer's machinery must be: the
/// caller is often a kernel process (global's locker and registrar), which
/// crashes on anything else, and global with it (`kernel_sup` allows no
/// restart: the node halts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Expect {
    /// `true` or `false` (global's `set_lock`).
    Bool,
    /// An atom (global's other calls: `yes`, `ok`, `true`; net_kernel's
    /// `is_auth`: `yes`, `no`).
    Atom,
}

/// global_group's erpc requests followed per node pair (about one per
/// nodeup or config change), apart from calls, which must not push them
/// out; and those pushed out by newer ones, whose answers are refused.
const MAX_GLOBAL_GROUP_REQUESTS: usize = 64;
const MAX_FORGOTTEN_REQUESTS: usize = 4096;

/// Whether the reason of a DOWN answering an erpc request global_group
/// made (`{Ref, return, Result}`) keeps what it sorts: a list, if one,
/// proper (`lists:sort/1` of an improper one crashes it, and the node
/// halts).
pub(super) fn global_group_result_fits(reason: &Term) -> bool {
    match reason.tuple() {
        Some([_, Term::Atom(a), r]) if &**a == "return" => {
            !matches!(r, Term::List(..) | Term::Bytes(_)) || is_proper_list(r)
        }
        _ => true,
    }
}

impl Expect {
    /// What a local call `req` to the peer's machinery `name` gets back,
    /// when a kernel process may be its caller.
    fn of(name: &str, req: &Term) -> Option<Expect> {
        match (name, req.tag()) {
            (GLOBAL, Some("set_lock")) => Some(Expect::Bool),
            (GLOBAL | NET_KERNEL, _) => Some(Expect::Atom),
            _ => None,
        }
    }

    fn fits(self, reply: &Term) -> bool {
        match (self, reply) {
            (Expect::Bool, Term::Atom(a)) => matches!(&**a, "true" | "false"),
            (Expect::Atom, Term::Atom(_)) => true,
            _ => false,
        }
    }
}

fn is_proper_list(t: &Term) -> bool {
    match t {
        Term::List(_, tail) => **tail == Term::Nil,
        _ => true,
    }
}

/// What one node pair's tunnels remember across messages: what the local
/// node gave the peer's node, what the peer forged, and which local
/// processes are the kernel's protocol servers.
///
/// The capability model: a peer's node reaches a local pid or alias only
/// if the local node gave it inside a message's content (control-message
/// sender fields give nothing), and only if the peer had not named it
/// first. A local process that sends to the peer's machinery (global, pg,
/// rex, net_kernel) is judged by that protocol's rules, by pid as by name.
pub struct Memory {
    /// The local node's full name: only its pids and references count.
    local: String,
    /// The peer's node (its full name; empty when not known, as in tests):
    /// the kernel protocols' sender fields must name it.
    remote: String,
    pids: lru::LruCache<PidKey, ()>,
    refs: lru::LruCache<RefKey, ()>,
    forged_pids: lru::LruCache<PidKey, ()>,
    forged_refs: lru::LruCache<RefKey, ()>,
    machinery: lru::LruCache<PidKey, &'static str>,
    /// Local I/O servers (group leaders): given as a spawn request's
    /// group leader, or seen answering the peer's I/O requests. They take
    /// only plain output requests.
    io_servers: lru::LruCache<PidKey, ()>,
    /// Local processes that called the peer (the `From` of a gen_server
    /// call): they may be sent only the call's reply.
    repliers: lru::LruCache<PidKey, ()>,
    /// Calls to the peer's machinery in flight, by their tags' local
    /// references: what their replies must be.
    calls: lru::LruCache<RefKey, Expect>,
    /// global_group's erpc requests to the peer in flight (their DOWN
    /// carries the result), and those pushed out by newer ones.
    gg_requests: lru::LruCache<RefKey, ()>,
    gg_forgotten: lru::LruCache<RefKey, ()>,
    /// A pid of the peer's node, the last one seen as a sender.
    pub peer_pid: Option<Pid>,
    /// The atoms the peer host brought to local nodes (all its pairs).
    pub atoms: Arc<HostAtoms>,
    /// Atoms (keyed hashes) the local node sent the peer's node: it has
    /// them, so the peer's use of them creates nothing.
    sent_atoms: super::atoms::Hashes,
    /// What each of the pair's connections holds at the local node for the
    /// peer, by connection (a pair may have two at once: a second attempt
    /// the node refuses while the first carries on must not touch the
    /// first's), and the one being judged now ([`Memory::at_connection`]).
    conns: std::collections::HashMap<u64, Conn>,
    current: u64,
    /// The pair's connections so far.
    connections: u64,
    pub(super) host: Arc<HostHeld>,
}

/// What one connection of a node pair has the local node hold for the
/// peer: its scopes' groups in the local `pg`, its processes' monitors.
#[derive(Default)]
struct Conn {
    pg: super::pg::PgMirror,
    /// Each monitor's target (a pid or a name, as the peer named it) by
    /// its reference: a reference may be used again, and a demonitor must
    /// name the monitor's own target for the node to end it.
    monitors: std::collections::HashMap<RemoteRefKey, Vec<String>>,
    monitor_count: usize,
    /// The global names the local global holds for the peer.
    global: super::names::GlobalHeld,
    /// The local pg scope's monitors of the peer's scopes, by reference:
    /// a DOWN of one of them has the local scope drop that scope.
    pg_monitors: std::collections::HashMap<RefKey, PidKey>,
}

impl Conn {
    /// Gives back to `host` what this connection held.
    fn release(self, host: &HostHeld) {
        host.global_moved(self.global.held(), (0, 0));
        give(&host.monitors, self.monitor_count);
        host.pg_moved(self.pg.held(), (0, 0));
    }
}

/// Atoms remembered per node pair as sent by the local node.
const MAX_SENT_ATOMS: usize = 16_384;

/// `max_monitors` when a policy does not set it, and the most it may be.
pub const DEFAULT_MAX_MONITORS: usize = 65_536;
pub const MAX_MONITORS: usize = 1 << 20;

/// A reference of the peer's node (a monitor's): node, creation, words.
type RemoteRefKey = (String, u32, Vec<u32>);

/// What one peer host's processes hold on local nodes now, all its node
/// pairs together, each of it memory on a local node for as long as it
/// lasts: monitors of local processes (about 200 bytes each; at most its
/// policy's `max_monitors`), and groups and members in the local `pg`
/// scope (at most [`pg::MAX_GROUPS`](super::pg::MAX_GROUPS) and
/// [`pg::MAX_MEMBERS`](super::pg::MAX_MEMBERS)).
#[derive(Debug, Default)]
pub struct HostHeld {
    monitors: AtomicUsize,
    pg_groups: AtomicUsize,
    pg_members: AtomicUsize,
    /// Fragments its tunnels' fragmented messages in progress announced
    /// (the node allocates for each at a message's first fragment).
    fragments: AtomicUsize,
    /// Global names the local node's global holds for it.
    global: AtomicUsize,
    /// Global locks the local node's global holds for its processes.
    global_locks: AtomicUsize,
}

/// One more in `c`, if fewer than `max` are held.
fn take_one(c: &AtomicUsize, max: usize) -> bool {
    c.fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1)).is_ok()
}

fn give(c: &AtomicUsize, n: usize) {
    let _ = c.fetch_update(Relaxed, Relaxed, |h| Some(h.saturating_sub(n)));
}

impl HostHeld {
    /// `n` more announced fragments, if the host stays within `max`.
    pub fn take_fragments(&self, n: usize, max: usize) -> bool {
        self.fragments
            .fetch_update(Relaxed, Relaxed, |h| h.checked_add(n).filter(|t| *t <= max))
            .is_ok()
    }

    pub fn give_fragments(&self, n: usize) {
        give(&self.fragments, n);
    }

    /// Fragments announced now.
    pub fn fragments(&self) -> usize {
        self.fragments.load(Relaxed)
    }

    /// Global names held now.
    pub fn global(&self) -> usize {
        self.global.load(Relaxed)
    }

    /// Global locks held now.
    pub fn global_locks(&self) -> usize {
        self.global_locks.load(Relaxed)
    }

    /// A connection's global names and locks went from `before` to `after`.
    fn global_moved(&self, before: (usize, usize), after: (usize, usize)) {
        self.global.fetch_add(after.0, Relaxed);
        give(&self.global, before.0);
        self.global_locks.fetch_add(after.1, Relaxed);
        give(&self.global_locks, before.1);
    }

    /// Monitors held now.
    pub fn monitors(&self) -> usize {
        self.monitors.load(Relaxed)
    }

    /// pg groups and members held now.
    pub fn pg(&self) -> (usize, usize) {
        (self.pg_groups.load(Relaxed), self.pg_members.load(Relaxed))
    }

    /// A tunnel's pg mirror went from `before` to `after`.
    fn pg_moved(&self, before: (usize, usize), after: (usize, usize)) {
        self.pg_groups.fetch_add(after.0, Relaxed);
        give(&self.pg_groups, before.0);
        self.pg_members.fetch_add(after.1, Relaxed);
        give(&self.pg_members, before.1);
    }
}

impl Memory {
    /// A memory of its own (tests, fuzzing): not kept across connections.
    pub fn shared(local_node: &str) -> Arc<Mutex<Memory>> {
        Arc::new(Mutex::new(Memory::new(local_node)))
    }

    pub fn new(local_node: &str) -> Memory {
        Memory::counting(local_node, HostAtoms::alone())
    }

    /// A pair's memory whose atoms count in its host's `atoms`.
    pub fn counting(local_node: &str, atoms: Arc<HostAtoms>) -> Memory {
        Memory {
            local: local_node.to_owned(),
            remote: String::new(),
            pids: lru::LruCache::unbounded(),
            refs: lru::LruCache::unbounded(),
            forged_pids: lru::LruCache::unbounded(),
            forged_refs: lru::LruCache::unbounded(),
            machinery: lru::LruCache::unbounded(),
            repliers: lru::LruCache::unbounded(),
            calls: lru::LruCache::unbounded(),
            gg_requests: lru::LruCache::unbounded(),
            gg_forgotten: lru::LruCache::unbounded(),
            io_servers: lru::LruCache::unbounded(),
            peer_pid: None,
            atoms,
            sent_atoms: Default::default(),
            conns: Default::default(),
            current: 0,
            connections: 0,
            host: Default::default(),
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

    fn local_ref(&self, r: &Ref) -> Option<RefKey> {
        (*r.node == *self.local).then(|| (r.creation, r.ids.clone()))
    }

    /// A pid of the peer's node (of a node other than the local one, when
    /// the peer's is not known): a kernel protocol's sender.
    pub(super) fn remote_pid(&self, t: &Term) -> bool {
        matches!(t, Term::Pid(p) if self.is_remote(&p.node))
    }

    /// `node` is the peer's node (its host part compared in the one
    /// canonical form: a tunnel this host dialled knows the peer's name
    /// with its host as configured, the node's own may differ in case).
    pub(super) fn is_remote(&self, node: &str) -> bool {
        if self.remote.is_empty() {
            return node != self.local;
        }
        if node == self.remote {
            return true;
        }
        let host = |n: &str| -> Option<(String, crate::hostname::HostName)> {
            let (name, host) = n.split_once('@')?;
            Some((name.to_owned(), crate::hostname::HostName::parse(host).ok()?))
        };
        matches!((host(node), host(&self.remote)), (Some(a), Some(b)) if a == b)
    }

    /// The local node sent the peer's node atom `text` (so it has it).
    pub fn learn_atom(&mut self, text: &str) {
        if self.sent_atoms.len() < MAX_SENT_ATOMS {
            self.sent_atoms.insert(self.atoms.hash(text));
        }
    }

    /// Whether the peer's node may make the local node create atom `text`:
    /// one the local node sent it is not new; any other counts for the
    /// peer host, within `max` ([`HostAtoms::admit`]).
    pub fn admit_atom(&self, text: &str, max: usize) -> bool {
        let h = self.atoms.hash(text);
        self.sent_atoms.contains(&h) || self.atoms.admit_hashed(h, max)
    }

    /// The local node's full name.
    pub(super) fn local_name(&self) -> &str {
        &self.local
    }

    /// A new connection of this pair, starting with nothing held: returns
    /// its number, for [`Memory::at_connection`] and
    /// [`Memory::end_connection`].
    pub fn new_connection(&mut self) -> u64 {
        self.connections += 1;
        self.conns.insert(self.connections, Conn::default());
        self.current = self.connections;
        self.connections
    }

    /// Connection `n` of this pair ended: what it held (monitors, pg
    /// groups) is gone with it, and given back to its host's count.
    pub fn end_connection(&mut self, n: u64) {
        if let Some(c) = self.conns.remove(&n) {
            c.release(&self.host);
        }
    }

    /// What follows is judged for connection `n`.
    pub fn at_connection(&mut self, n: u64) {
        self.current = n;
    }

    /// The connection being judged, and its host's count.
    fn conn(&mut self) -> (&mut Conn, &HostHeld) {
        (self.conns.entry(self.current).or_default(), &self.host)
    }

    /// Whether the local scope speaks pg's version 1 on this connection.
    pub(super) fn pg_speaks_v1(&mut self) -> bool {
        self.conn().0.pg.local_speaks_v1()
    }

    /// A pg message from the peer's scope, applied to this connection's
    /// mirror within what the peer host may hold ([`super::pg`]).
    pub(super) fn pg_apply(&mut self, m: &Term) -> Result<(), &'static str> {
        let (conn, host) = self.conn();
        let before = conn.pg.held();
        let (groups, members) = host.pg();
        let room = super::pg::Room {
            groups: super::pg::MAX_GROUPS.saturating_sub(groups),
            members: super::pg::MAX_MEMBERS.saturating_sub(members),
        };
        let r = conn.pg.apply_within(m, room);
        host.pg_moved(before, conn.pg.held());
        r
    }

    /// A message to the local global (its shape checked): what it adds
    /// to the names, and apart to the locks, held for the peer host must
    /// fit in `max` (the policy's `max_global_names`).
    pub(super) fn global_apply(&mut self, m: &Term, max: usize) -> Result<(), &'static str> {
        use super::names::{Change, TOO_MANY, TOO_MANY_LOCKS};
        let mut change = Change::of(m);
        change.sticky = !self.machinery.iter().any(|(_, n)| *n == super::machinery::GLOBAL);
        let (conn, host) = self.conn();
        let before = conn.global.held();
        let (names, locks) = conn.global.new_ones(&change);
        if names + locks > 0 && conn.global.monitors_full() {
            return Err(if names > 0 { TOO_MANY } else { TOO_MANY_LOCKS });
        }
        let fits = |c: &AtomicUsize, n: usize| {
            c.fetch_update(Relaxed, Relaxed, |h| h.checked_add(n).filter(|t| *t <= max))
                .is_ok()
        };
        if !fits(&host.global, names) {
            return Err(TOO_MANY);
        }
        if !fits(&host.global_locks, locks) {
            give(&host.global, names);
            return Err(TOO_MANY_LOCKS);
        }
        conn.global.apply(change);
        host.global_moved((before.0 + names, before.1 + locks), conn.global.held());
        Ok(())
    }

    /// Whether a message the local global sends the peer may answer one
    /// of the peer's calls to it (they are read, then: [`Self::global_answer`]).
    pub(super) fn global_awaits_answers(&mut self) -> bool {
        self.conn().0.global.awaits_answers()
    }

    /// The local global sent `m` to `to`, the peer's process or alias (a
    /// SEND_SENDER or ALIAS_SEND from its pid): an answer to a call of the
    /// peer's, maybe.
    pub(super) fn global_answer(&mut self, to: &Term, m: &Term) {
        let (conn, host) = self.conn();
        let before = conn.global.held();
        conn.global.answer(to, m);
        host.global_moved(before, conn.global.held());
    }

    /// A DOWN from the peer's process `from` to local process `to` for
    /// monitor `r` reached the node: a monitor the local global made of a
    /// holder (global drops what it stood for), or the local pg scope of a
    /// peer scope (it drops that scope's groups).
    pub fn apply_down(&mut self, from: &Pid, to: &Pid, r: &Ref) {
        match self.machinery_of(to) {
            Some(super::machinery::GLOBAL) => self.global_monitor(r, from, Some(true)),
            Some(super::machinery::PG) => self.pg_scope_ended(from, r),
            _ => {}
        }
    }

    /// The local global monitors (`down`: `None`) the peer's process `p`
    /// with `r`, took the monitor back (`Some(false)`), or got its DOWN
    /// from `p` (`Some(true)`).
    pub(super) fn global_monitor(&mut self, r: &Ref, p: &Pid, down: Option<bool>) {
        let (conn, host) = self.conn();
        let before = conn.global.held();
        match down {
            None => conn.global.monitored(r, p),
            Some(false) => conn.global.demonitored(r),
            Some(true) => conn.global.down(r, p),
        }
        host.global_moved(before, conn.global.held());
    }

    /// The local pg scope monitors (`Some(p)`) the peer's process `p`
    /// with `r`, or took the monitor back (`None`).
    pub(super) fn pg_monitor(&mut self, r: &Ref, p: Option<&Pid>) {
        let Some(k) = self.local_ref(r) else {
            return;
        };
        let conn = self.conn().0;
        match p {
            Some(p) if conn.pg_monitors.len() < MAX_MACHINERY_CALLS => {
                conn.pg_monitors.insert(k, (p.id, p.serial, p.creation));
            }
            Some(_) => {}
            None => {
                conn.pg_monitors.remove(&k);
            }
        }
    }

    /// The DOWN of the local scope's monitor `r` of the peer's process
    /// `peer` came: the local scope drops that scope's groups (the node
    /// delivers a DOWN only for a monitor that exists, and pg matches it
    /// by pid and reference), and so does the mirror.
    pub(super) fn pg_scope_ended(&mut self, peer: &Pid, r: &Ref) {
        let Some(k) = self.local_ref(r) else {
            return;
        };
        let (conn, host) = self.conn();
        if conn.pg_monitors.get(&k) != Some(&(peer.id, peer.serial, peer.creation)) {
            return;
        }
        conn.pg_monitors.remove(&k);
        let before = conn.pg.held();
        if conn.pg.scope_ended(peer) {
            host.pg_moved(before, conn.pg.held());
        }
    }

    /// The peer's process monitors local process (or name) `target` with
    /// reference `r`: whether its host may hold one more (`max` in all).
    /// Every monitor counts, a reference used again too (the node makes a
    /// monitor of each).
    pub(super) fn monitor(&mut self, r: &Ref, target: &Term, max: usize) -> bool {
        let (conn, host) = self.conn();
        if !take_one(&host.monitors, max) {
            return false;
        }
        let k = (r.node.to_string(), r.creation, r.ids.clone());
        conn.monitors.entry(k).or_default().push(format!("{target:?}"));
        conn.monitor_count += 1;
        true
    }

    /// The monitor of `target` with the peer's reference `r` ended: the
    /// peer took it back (`exact`: only a demonitor naming the monitor's
    /// own target ends it at the node), or the local node reported the
    /// process gone (naming it by pid where the monitor named it by name:
    /// any of the reference's monitors then).
    fn end_monitor(&mut self, r: &Ref, target: &Term, exact: bool) {
        let (conn, host) = self.conn();
        let k = (r.node.to_string(), r.creation, r.ids.clone());
        let Some(targets) = conn.monitors.get_mut(&k) else {
            return;
        };
        let t = format!("{target:?}");
        let at = match targets.iter().position(|x| *x == t) {
            Some(i) => i,
            None if exact => return,
            None => 0,
        };
        targets.swap_remove(at);
        if targets.is_empty() {
            conn.monitors.remove(&k);
        }
        conn.monitor_count -= 1;
        give(&host.monitors, 1);
    }

    /// DEMONITOR_P from the peer.
    pub(super) fn demonitor(&mut self, r: &Ref, target: &Term) {
        self.end_monitor(r, target, true);
    }

    /// MONITOR_P_EXIT from the local node: `target`, monitored with the
    /// peer's reference `r`, is gone.
    pub fn monitor_ended(&mut self, r: &Ref, target: &Term) {
        self.end_monitor(r, target, false);
    }

    /// Monitors the peer's processes hold, this connection.
    pub fn monitors(&mut self) -> usize {
        self.conn().0.monitor_count
    }

    /// The peer's node is `remote`.
    pub fn set_remote(&mut self, remote: &str) {
        self.remote = remote.to_owned();
    }

    /// The local node sent `p` to the peer's node in a message.
    pub fn give_pid(&mut self, p: &Pid) {
        if let Some(k) = self.local_key(p) {
            if self.forged_pids.contains(&k) || self.machinery.contains(&k) {
                return;
            }
            bounded_put(&mut self.pids, k, (), MAX_GIVEN_PIDS);
        }
    }

    /// The local node sent `r` to the peer's node in a message.
    pub fn give_ref(&mut self, r: &Ref) {
        if let Some(k) = self.local_ref(r) {
            if !self.forged_refs.contains(&k) {
                bounded_put(&mut self.refs, k, (), MAX_GIVEN_REFS);
            }
        }
    }

    /// Every pid and reference in a message the local node sent.
    pub fn give_all(&mut self, t: &Term) {
        t.visit(&mut |t| match t {
            Term::Pid(p) => self.give_pid(p),
            Term::Ref(r) => self.give_ref(r),
            _ => {}
        });
    }

    /// Local process `p` sent the peer's machinery `name` a message: it
    /// speaks that protocol, and is judged by it.
    pub fn learn_machinery(&mut self, p: &Pid, name: &'static str) {
        if let Some(k) = self.local_key(p) {
            if !self.machinery.contains(&k) {
                bounded_put(&mut self.machinery, k, name, MAX_MACHINERY_PIDS);
            }
        }
    }

    /// Local process `p` is an I/O server the peer's processes write to.
    pub fn give_io_server(&mut self, p: &Pid) {
        if let Some(k) = self.local_key(p) {
            if !self.forged_pids.contains(&k) && !self.machinery.contains(&k) {
                bounded_put(&mut self.io_servers, k, (), MAX_MACHINERY_PIDS);
            }
        }
    }

    pub(super) fn io_server(&self, p: &Pid) -> bool {
        self.local_key(p).is_some_and(|k| self.io_servers.contains(&k))
    }

    /// Local process `p` called the peer: it may get the reply (even if
    /// the peer forged its pid before: a reply must carry the call's tag,
    /// which the peer cannot forge).
    pub fn give_replier(&mut self, p: &Pid) {
        if let Some(k) = self.local_key(p) {
            bounded_put(&mut self.repliers, k, (), MAX_GIVEN_PIDS);
        }
    }

    /// Every reference in a term the local node sent (a call's tag).
    pub fn give_refs(&mut self, t: &Term) {
        t.visit(&mut |t| {
            if let Term::Ref(r) = t {
                self.give_ref(r)
            }
        });
    }

    /// A whole message the local node sends: a call gives its caller only
    /// for the reply, its tag's references and the request's content; a
    /// message to the peer's machinery gives its references only, and the
    /// sender of the machinery's own casts and probes is learnt as that
    /// protocol's server; anything else gives every pid and reference.
    pub fn give_message(&mut self, sender: Option<&Pid>, to_name: Option<&str>, m: &Term) {
        let t = m.tuple().unwrap_or(&[]);
        // global_group's messages to the peer's global_group (conf_check,
        // find_name, ...) carry b's global_group or its helpers as their
        // `From`: given, the peer could send b's global_group a forged
        // nodedown, which crashes it (under kernel_sup: the node halts), or
        // a disconnect_node or config answer naming a third node. Nothing
        // in them is given (global groups do not sync across a restricted
        // policy).
        if to_name == Some("global_group") {
            self.give_refs(m);
            return;
        }
        if let Some(name) = to_name.and_then(machinery_name) {
            let own = match (name, m.tag(), t) {
                (PG, Some("discover"), [_, Term::Pid(p)]) if sender == Some(p) => {
                    self.conn().0.pg.local_announced(p, 0);
                    true
                }
                (PG, Some("discover"), [_, Term::Pid(p), Term::Int(v)]) if sender == Some(p) => {
                    self.conn().0.pg.local_announced(p, *v);
                    true
                }
                (GLOBAL, Some("$gen_cast"), _) => true,
                (REX, _, [Term::Pid(p), Term::Atom(a)]) => &**a == "features_request" && sender == Some(p),
                _ => false,
            };
            if let (true, Some(s)) = (own, sender) {
                self.learn_machinery(s, name);
            }
            // Pids the machinery hands out in its own messages (global's
            // locker, pg's scope) are judged by its protocol, not given;
            // a call's caller (a ping's, say) is only a caller.
            // Only global's locker, where global's protocol hands it out
            // (init_connect's locker, lock_set's): any other local pid in
            // these messages (a name's holder in an exchange, say) stays
            // an ordinary pid, reachable only if given.
            let mut handed = Vec::new();
            if let (GLOBAL, [Term::Atom(g), req]) = (name, t) {
                if &**g == "$gen_cast" {
                    match req.tuple() {
                        Some([Term::Atom(a), _, _, init]) if &**a == "init_connect" => {
                            if let Some([Term::Atom(l), _, _, Term::Pid(p)]) = init.tuple() {
                                if &**l == "locker" {
                                    handed.push(p.clone());
                                }
                            }
                        }
                        Some([Term::Atom(a), Term::Pid(p), ..]) if &**a == "lock_set" => handed.push(p.clone()),
                        _ => {}
                    }
                }
            }
            for p in handed {
                if self.local_key(&p).is_some_and(|k| !self.pids.contains(&k)) {
                    self.learn_machinery(&p, name);
                }
            }
            if let [Term::Atom(g), from, req] = t {
                if &**g == "$gen_call" {
                    if let Some([Term::Pid(p), tag]) = from.tuple() {
                        self.give_replier(p);
                        if let Some(e) = Expect::of(name, req) {
                            self.expect_reply(tag, e);
                        }
                    }
                }
            }
            self.give_refs(m);
            return;
        }
        // A pg scope's own messages to a peer scope by pid (its answers to
        // a discover): they give the members they list, never the scope.
        // A scope is pg's only from its announcement by name (at nodeup):
        // one learnt from answers by pid could be another scope (any
        // scope answers a discover), whose joins would then count for
        // pg's; a hidden node's scope, which gets no announcement, has no
        // pg traffic of its own to b.
        if let (None, Some(s)) = (to_name, sender) {
            let own = match (m.tag(), t) {
                (Some("discover"), [_, Term::Pid(p)] | [_, Term::Pid(p), _]) => p == s,
                (Some("$gen_cast"), [_, req]) => match req.tuple() {
                    Some([Term::Atom(a), Term::Pid(p), _]) => &**a == "sync" && p == s,
                    Some([Term::Atom(a), Term::Pid(p), _, _]) => &**a == "local_data" && p == s,
                    _ => false,
                },
                _ => false,
            };
            if own {
                m.visit(&mut |t| match t {
                    Term::Pid(p) if p != s => self.give_pid(p),
                    Term::Ref(r) => self.give_ref(r),
                    _ => {}
                });
                return;
            }
        }
        match t {
            // An I/O server answering the peer's request.
            [Term::Atom(a), _, _] if &**a == "io_reply" => {
                if let Some(s) = sender {
                    self.give_io_server(s);
                }
                self.give_all(m);
            }
            [Term::Atom(g), from, req] if &**g == "$gen_call" => {
                match from.tuple() {
                    Some([Term::Pid(p), tag]) => {
                        self.give_replier(p);
                        self.give_refs(tag);
                    }
                    _ => self.give_all(from),
                }
                self.give_all(req);
            }
            _ => self.give_all(m),
        }
    }

    /// A local call with tag `tag` went to the peer's machinery: its reply
    /// must be what `e` says.
    fn expect_reply(&mut self, tag: &Term, e: Expect) {
        let mut keys = Vec::new();
        tag.visit(&mut |t| {
            if let Term::Ref(r) = t {
                keys.extend(self.local_ref(r));
            }
        });
        for k in keys {
            self.calls.put(k, e);
            // A call whose kind is forgotten is no call any more: its
            // tag's reference is taken back, so that no reply passes
            // unchecked (the locker waits for its reply for ever).
            if self.calls.len() > MAX_MACHINERY_CALLS {
                if let Some((old, _)) = self.calls.pop_lru() {
                    self.refs.pop(&old);
                }
            }
        }
    }

    /// The local node asked the peer to spawn `erpc:execute_call` for
    /// global_group (request id `req`): its DOWN's reason is checked. One
    /// pushed out by newer requests is remembered as forgotten: its answer
    /// is refused (global_group waits), never let through unchecked.
    pub fn expect_global_group_result(&mut self, req: &Ref) {
        if let Some(k) = self.local_ref(req) {
            self.gg_requests.put(k, ());
            if self.gg_requests.len() > MAX_GLOBAL_GROUP_REQUESTS {
                if let Some((old, _)) = self.gg_requests.pop_lru() {
                    bounded_put(&mut self.gg_forgotten, old, (), MAX_FORGOTTEN_REQUESTS);
                }
            }
        }
    }

    /// For a DOWN of monitor `r`: Some(true) when it answers an erpc
    /// request of global_group's that is followed, Some(false) when one
    /// that was forgotten, None otherwise.
    pub(super) fn global_group_request(&self, r: &Ref) -> Option<bool> {
        let k = self.local_ref(r)?;
        if self.gg_requests.contains(&k) {
            Some(true)
        } else if self.gg_forgotten.contains(&k) {
            Some(false)
        } else {
            None
        }
    }

    /// What the reply to a call whose tag names `r` must be, if the call
    /// went to the peer's machinery.
    pub(super) fn expected(&self, r: &Ref) -> Option<Expect> {
        self.local_ref(r).and_then(|k| self.calls.peek(&k).copied())
    }

    /// What the reply to a call with tag `tag` must be (any of its
    /// references will do: OTP's tags hold an alias and a monitor).
    pub(super) fn expected_for(&self, tag: &Term) -> Option<Expect> {
        let mut e = None;
        tag.visit(&mut |t| {
            if let Term::Ref(r) = t {
                e = e.or(self.expected(r));
            }
        });
        e
    }

    /// Whether `m`, a message to a local process or alias, keeps what a
    /// call to the peer's machinery expects: a message whose first element
    /// names such a call (its tag) is its reply, of the expected kind.
    pub(super) fn reply_fits(&self, m: &Term) -> bool {
        if self.calls.is_empty() {
            return true;
        }
        match m.tuple() {
            Some([tag, reply]) => self.expected_for(tag).map_or(true, |e| e.fits(reply)),
            _ => true,
        }
    }

    pub(super) fn replier(&self, p: &Pid) -> bool {
        self.local_key(p).is_some_and(|k| self.repliers.contains(&k))
    }

    /// A reply `{Tag, Reply}` to a local call: Tag of OTP's forms, its
    /// local references given.
    pub(super) fn is_reply(&self, m: &Term) -> bool {
        matches!(m.tuple(), Some([tag, _]) if self.reply_tag(tag))
    }

    /// A call's tag of OTP's forms, every reference in it one the local
    /// node made and sent the peer (a local caller's tags are; a reference
    /// of the peer's own would make anything of two elements a "reply").
    pub(super) fn reply_tag(&self, tag: &Term) -> bool {
        // OTP 25's multi_call tags each node's call {Ref, Node} with one
        // Ref: the peer may answer only for its own node.
        if let Some([_, Term::Atom(node)]) = tag.tuple() {
            if !self.is_remote(node) {
                return false;
            }
        }
        let mut ok = valid_tag(tag);
        tag.visit(&mut |t| {
            if let Term::Ref(r) = t {
                ok &= self.given_ref(r);
            }
        });
        ok
    }

    pub(super) fn machinery_of(&self, p: &Pid) -> Option<&'static str> {
        self.local_key(p).and_then(|k| self.machinery.peek(&k).copied())
    }

    pub(super) fn given_pid(&self, p: &Pid) -> bool {
        self.local_key(p).is_some_and(|k| self.pids.contains(&k))
    }

    pub(super) fn given_ref(&self, r: &Ref) -> bool {
        self.local_ref(r).is_some_and(|k| self.refs.contains(&k))
    }

    /// The peer named local pid `p` without having been given it.
    pub(super) fn forge_pid(&mut self, p: &Pid) {
        if let Some(k) = self.local_key(p) {
            if !self.pids.contains(&k) && !self.machinery.contains(&k) {
                bounded_put(&mut self.forged_pids, k, (), MAX_FORGED);
            }
        }
    }

    /// The peer named local reference `r` without having been given it.
    pub(super) fn forge_ref(&mut self, r: &Ref) {
        if let Some(k) = self.local_ref(r) {
            if !self.refs.contains(&k) {
                bounded_put(&mut self.forged_refs, k, (), MAX_FORGED);
            }
        }
    }

    /// Why a pid, reference or port a walk found in a message from the
    /// peer may not be named there: as [`Memory::names_forged`], one at a
    /// time.
    pub fn names_forged_found(&mut self, f: &Found) -> Option<&'static str> {
        match f {
            Found::Pid(p) if self.unknown_local(p) => {
                self.forge_pid(p);
                Some("a message naming a local pid this peer's node was not given")
            }
            Found::Ref(r) if !self.given_ref(r) && self.local_ref(r).is_some() => {
                self.forge_ref(r);
                Some("a message naming a local reference this peer's node was not given")
            }
            Found::Port(n) if **n == *self.local => Some("a message naming a local port"),
            _ => None,
        }
    }

    /// A local pid the peer has no business naming: not given, not the
    /// machinery's, not an I/O server it was handed (a spawn request's
    /// group leader; erpc's result names it).
    fn unknown_local(&self, p: &Pid) -> bool {
        self.local_key(p)
            .is_some_and(|k| !self.pids.contains(&k) && !self.machinery.contains(&k) && !self.io_servers.contains(&k))
    }

    /// Why a message from the peer names what it may not: a local pid or
    /// reference it was not given (remembered as forged), or a local port.
    pub(super) fn names_forged(&mut self, t: &Term) -> Option<&'static str> {
        let (mut pids, mut refs, mut port) = (Vec::new(), Vec::new(), false);
        t.visit(&mut |t| match t {
            Term::Pid(p) if self.unknown_local(p) => pids.push(p.clone()),
            Term::Ref(r) if !self.given_ref(r) && self.local_ref(r).is_some() => refs.push(r.clone()),
            Term::Port(n) if **n == *self.local => port = true,
            _ => {}
        });
        pids.iter().for_each(|p| self.forge_pid(p));
        refs.iter().for_each(|r| self.forge_ref(r));
        if !pids.is_empty() {
            Some("a message naming a local pid this peer's node was not given")
        } else if !refs.is_empty() {
            Some("a message naming a local reference this peer's node was not given")
        } else if port {
            Some("a message naming a local port")
        } else {
            None
        }
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        for (_, c) in self.conns.drain() {
            c.release(&self.host);
        }
    }
}

fn bounded_put<K: std::hash::Hash + Eq, V>(c: &mut lru::LruCache<K, V>, k: K, v: V, max: usize) {
    c.put(k, v);
    if c.len() > max {
        c.pop_lru();
    }
}

/// Node pairs of one peer host whose memory outlives their connection:
/// pids stay valid across a reconnection (only a restart, a new creation,
/// ends them). A host that makes up node names evicts only its own pairs.
pub const MAX_PAIRS_PER_HOST: usize = 64;

type Pairs = lru::LruCache<(String, String), Arc<Mutex<Memory>>>;

/// A [`Memory`] for the next process (`erlmesh upgrade`), each cache
/// from least to most recently used.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct MemoryState {
    pids: Vec<PidKey>,
    refs: Vec<RefKey>,
    forged_pids: Vec<PidKey>,
    forged_refs: Vec<RefKey>,
    machinery: Vec<(PidKey, String)>,
    io_servers: Vec<PidKey>,
    repliers: Vec<PidKey>,
    peer_pid: Option<Pid>,
    #[serde(default)]
    pg: super::pg::PgMirror,
    #[serde(default)]
    calls: Vec<(RefKey, Expect)>,
    #[serde(default)]
    sent_atoms: Vec<u64>,
    #[serde(default)]
    gg_requests: Vec<RefKey>,
    #[serde(default)]
    gg_forgotten: Vec<RefKey>,
    #[serde(default)]
    monitors: Vec<(RemoteRefKey, String)>,
    #[serde(default)]
    global: super::names::GlobalState,
    #[serde(default)]
    pg_monitors: Vec<(RefKey, PidKey)>,
}

/// A cache's keys, least recently used first.
fn oldest_first<K: Clone + std::hash::Hash + Eq, V>(c: &lru::LruCache<K, V>) -> Vec<K> {
    let mut v: Vec<K> = c.iter().map(|(k, _)| k.clone()).collect();
    v.reverse();
    v
}

impl Memory {
    /// What this pair remembers, for the next process.
    pub fn export(&mut self) -> MemoryState {
        let (pg, monitors, global, pg_monitors) = {
            let conn = self.conn().0;
            (
                conn.pg.clone(),
                conn.monitors
                    .iter()
                    .flat_map(|(k, ts)| ts.iter().map(|t| (k.clone(), t.clone())))
                    .collect(),
                conn.global.export(),
                conn.pg_monitors.iter().map(|(k, p)| (k.clone(), *p)).collect(),
            )
        };
        let mut machinery: Vec<(PidKey, String)> = self.machinery.iter().map(|(k, n)| (*k, (*n).to_owned())).collect();
        machinery.reverse();
        MemoryState {
            pids: oldest_first(&self.pids),
            refs: oldest_first(&self.refs),
            forged_pids: oldest_first(&self.forged_pids),
            forged_refs: oldest_first(&self.forged_refs),
            machinery,
            io_servers: oldest_first(&self.io_servers),
            repliers: oldest_first(&self.repliers),
            peer_pid: self.peer_pid.clone(),
            pg,
            calls: {
                let mut v: Vec<(RefKey, Expect)> = self.calls.iter().map(|(k, e)| (k.clone(), *e)).collect();
                v.reverse();
                v
            },
            sent_atoms: self.sent_atoms.iter().copied().collect(),
            gg_requests: oldest_first(&self.gg_requests),
            gg_forgotten: oldest_first(&self.gg_forgotten),
            monitors,
            global,
            pg_monitors,
        }
    }

    /// Takes what a previous process remembered (within the same bounds).
    pub fn import(&mut self, s: MemoryState) {
        for k in s.pids {
            bounded_put(&mut self.pids, k, (), MAX_GIVEN_PIDS);
        }
        for k in s.refs {
            bounded_put(&mut self.refs, k, (), MAX_GIVEN_REFS);
        }
        for k in s.forged_pids {
            bounded_put(&mut self.forged_pids, k, (), MAX_FORGED);
        }
        for k in s.forged_refs {
            bounded_put(&mut self.forged_refs, k, (), MAX_FORGED);
        }
        for (k, n) in s.machinery {
            if let Some(name) = machinery_name(&n) {
                bounded_put(&mut self.machinery, k, name, MAX_MACHINERY_PIDS);
            }
        }
        for k in s.io_servers {
            bounded_put(&mut self.io_servers, k, (), MAX_MACHINERY_PIDS);
        }
        for k in s.repliers {
            bounded_put(&mut self.repliers, k, (), MAX_GIVEN_PIDS);
        }
        if s.peer_pid.is_some() {
            self.peer_pid = s.peer_pid;
        }
        {
            let (conn, host) = self.conn();
            let before = conn.pg.held();
            conn.pg = s.pg.bounded();
            host.pg_moved(before, conn.pg.held());
        }
        for (k, e) in s.calls {
            bounded_put(&mut self.calls, k, e, MAX_MACHINERY_CALLS);
        }
        // Hashed with the atoms' key, which the upgrade hands over too.
        for h in s.sent_atoms.into_iter().take(MAX_SENT_ATOMS) {
            self.sent_atoms.insert(h);
        }
        for k in s.gg_requests {
            bounded_put(&mut self.gg_requests, k, (), MAX_GLOBAL_GROUP_REQUESTS);
        }
        for k in s.gg_forgotten {
            bounded_put(&mut self.gg_forgotten, k, (), MAX_FORGOTTEN_REQUESTS);
        }
        // The monitors of the connection handed over (the bound the policy
        // in force sets applies to those made after).
        let (conn, host) = self.conn();
        for (k, p) in s.pg_monitors.into_iter().take(MAX_MACHINERY_CALLS) {
            conn.pg_monitors.insert(k, p);
        }
        let before = conn.global.held();
        conn.global.import(s.global, super::names::MAX_GLOBAL_HELD);
        host.global_moved(before, conn.global.held());
        for (k, t) in s.monitors {
            if take_one(&host.monitors, MAX_MONITORS) {
                conn.monitors.entry(k).or_default().push(t);
                conn.monitor_count += 1;
            }
        }
    }
}

/// What the running erlmesh remembers for each node pair, by peer host:
/// one peer host's node names never evict another's pairs. Peer hosts are
/// as many as the peer table holds (`MAX_PEERS`); a host not in use for
/// longest goes first.
pub struct Memories {
    hosts: Mutex<Hosts>,
}

struct Hosts {
    by_name: lru::LruCache<String, (Pairs, Arc<HostAtoms>, Arc<HostHeld>)>,
    /// What all hosts' atom counts share (a host dropped from `by_name`
    /// and back starts a count of its own again, within the same total).
    atoms: Arc<AllAtoms>,
}

impl Default for Memories {
    fn default() -> Self {
        Memories {
            hosts: Mutex::new(Hosts {
                by_name: lru::LruCache::unbounded(),
                atoms: Arc::new(AllAtoms::default()),
            }),
        }
    }
}

impl Memories {
    /// What `local` gave `remote` (a node of peer host `host`) so far,
    /// kept across their connections.
    pub fn pair(&self, host: &str, local: &str, remote: &str) -> Arc<Mutex<Memory>> {
        let mut hosts = self.host(host);
        let (pairs, atoms, monitors) = hosts.by_name.get_mut(host).expect("just put");
        let key = (local.to_owned(), remote.to_owned());
        if let Some(m) = pairs.get(&key) {
            return m.clone();
        }
        let mut m = Memory::counting(local, atoms.clone());
        m.host = monitors.clone();
        m.set_remote(remote);
        let m = Arc::new(Mutex::new(m));
        bounded_put(pairs, key, m.clone(), MAX_PAIRS_PER_HOST);
        m
    }

    /// The atoms peer host `host` brought to local nodes so far.
    pub fn atoms(&self, host: &str) -> Arc<HostAtoms> {
        self.host(host).by_name.get(host).expect("just put").1.clone()
    }

    /// Every host's atom count, for the next process (`erlmesh upgrade`).
    pub fn export_atoms(&self) -> AtomsState {
        let hosts = self.lock();
        let mut state = hosts.atoms.export();
        state.hosts = hosts
            .by_name
            .iter()
            .map(|(host, (_, atoms, _))| (host.clone(), atoms.hashes()))
            .filter(|(_, hashes)| !hashes.is_empty())
            .collect();
        state
    }

    /// Goes on with the counts a previous process handed over, before any
    /// tunnel is judged here: its key, total and hosts' hashes (at most
    /// [`MAX_ATOMS_ALL_HOSTS`] in all, as it could count). False, and the
    /// counts left as they are, when the state is not one (a key of the
    /// wrong length) or tunnels were judged already.
    pub fn resume_atoms(&self, state: &AtomsState) -> bool {
        let mut hosts = self.lock();
        let Some(all) = AllAtoms::resumed(state, MAX_ATOMS_ALL_HOSTS) else {
            return false;
        };
        if !hosts.by_name.is_empty() {
            return false;
        }
        hosts.atoms = Arc::new(all);
        let mut left = MAX_ATOMS_ALL_HOSTS;
        for (host, hashes) in state.hosts.iter().take(crate::mesh::MAX_PEERS) {
            let atoms = Arc::new(HostAtoms::new(hosts.atoms.clone()));
            let n = hashes.len().min(left);
            atoms.resume(hashes[..n].iter().copied());
            left -= n;
            hosts
                .by_name
                .put(host.clone(), (Pairs::unbounded(), atoms, Default::default()));
        }
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Hosts> {
        self.hosts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The hosts, `host` among them.
    fn host(&self, host: &str) -> std::sync::MutexGuard<'_, Hosts> {
        let mut hosts = self.lock();
        if !hosts.by_name.contains(host) {
            let atoms = Arc::new(HostAtoms::new(hosts.atoms.clone()));
            bounded_put(
                &mut hosts.by_name,
                host.to_owned(),
                (Pairs::unbounded(), atoms, Default::default()),
                crate::mesh::MAX_PEERS,
            );
        }
        hosts
    }

    /// Node pairs remembered for `host`.
    pub fn pairs(&self, host: &str) -> usize {
        self.lock().by_name.peek(host).map_or(0, |(p, _, _)| p.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The invariant across `erlmesh upgrade`: what a restricted host
    /// brought before counts after (same texts free, new ones within what
    /// is left of its bound and of the total), whatever the next process's
    /// own random key would have been.
    #[test]
    fn atom_counts_go_on_in_the_next_process() {
        let old = Memories::default();
        let (b, c) = (old.atoms("hostb"), old.atoms("hostc"));
        assert!((0..100).all(|i| b.admit(&format!("b{i}"), 120)));
        assert!((0..7).all(|i| c.admit(&format!("c{i}"), 120)));
        let json = serde_json::to_vec(&old.export_atoms()).unwrap();
        let state: AtomsState = serde_json::from_slice(&json).unwrap();
        assert_eq!(state.total, 107);

        let new = Memories::default();
        assert!(new.resume_atoms(&state));
        let b = new.atoms("hostb");
        assert_eq!(b.len(), 100);
        assert!((0..100).all(|i| b.admit(&format!("b{i}"), 120)), "known texts pass");
        assert_eq!(b.len(), 100, "and are not counted again");
        assert!((100..120).all(|i| b.admit(&format!("b{i}"), 120)));
        assert!(!b.admit("b120", 120), "the bound holds across the upgrade");
        assert_eq!(new.atoms("hostc").len(), 7);
        assert_eq!(new.atoms("hostd").len(), 0);
        // A second hand-over of counts onto judged tunnels is refused, and
        // a malformed key too.
        assert!(!new.resume_atoms(&state));
        let mut bad = AtomsState::default();
        bad.key = vec![1, 2, 3];
        assert!(!Memories::default().resume_atoms(&bad));
    }

    #[test]
    fn the_total_over_hosts_goes_on_too() {
        let old = Memories::default();
        let b = old.atoms("hostb");
        assert!((0..50).all(|i| b.admit(&format!("b{i}"), 100)));
        let mut state = old.export_atoms();
        // Hosts the old process forgot still count in its total.
        state.total = MAX_ATOMS_ALL_HOSTS - 10;
        let new = Memories::default();
        assert!(new.resume_atoms(&state));
        let d = new.atoms("hostd");
        assert!((0..10).all(|i| d.admit(&format!("d{i}"), 100)));
        assert!(!d.admit("d10", 100), "the total is reached");
    }

    #[test]
    fn one_hosts_node_names_evict_only_its_own_pairs() {
        let all = Memories::default();
        let kept = all.pair("hosta", "b@hostb", "a@hosta");
        kept.lock().unwrap().peer_pid = None;
        for i in 0..10 * MAX_PAIRS_PER_HOST {
            all.pair("hostc", "b@hostb", &format!("n{i}@hostc"));
        }
        assert_eq!(all.pairs("hostc"), MAX_PAIRS_PER_HOST);
        assert_eq!(all.pairs("hosta"), 1);
        assert!(Arc::ptr_eq(&kept, &all.pair("hosta", "b@hostb", "a@hosta")));
    }

    /// The monitors of a tunnel handed over by `erlmesh upgrade` are still
    /// counted in the new process (or each upgrade would let a restricted
    /// host hold `max_monitors` more).
    #[test]
    fn monitors_are_handed_over_with_the_pairs_memory() {
        let old = Memories::default();
        let pair = old.pair("hostc", "b@h", "c@h");
        pair.lock().unwrap().new_connection();
        for n in 0..5 {
            let r = Ref {
                node: Arc::from("c@h"),
                creation: 1,
                ids: vec![n],
            };
            assert!(pair.lock().unwrap().monitor(&r, &Term::Atom(Arc::from("cache")), 100));
        }
        {
            let mut m = pair.lock().unwrap();
            let register = Term::Tuple(vec![
                Term::Atom(Arc::from("$gen_call")),
                Term::Tuple(vec![Term::Atom(Arc::from("x")), Term::Atom(Arc::from("t"))]),
                Term::Tuple(vec![
                    Term::Atom(Arc::from("register")),
                    Term::Atom(Arc::from("name")),
                    Term::Pid(Pid {
                        node: Arc::from("c@h"),
                        id: 3,
                        serial: 0,
                        creation: 1,
                    }),
                    Term::Atom(Arc::from("m")),
                ]),
            ]);
            m.global_apply(&register, 10).unwrap();
        }
        let state = pair.lock().unwrap().export();
        let state: MemoryState = serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        let new = Memories::default();
        let pair = new.pair("hostc", "b@h", "c@h");
        let mut m = pair.lock().unwrap();
        m.new_connection();
        m.import(state);
        assert_eq!(m.monitors(), 5);
        assert_eq!(m.host.monitors(), 5);
        assert_eq!(m.host.global(), 1, "the global name is handed over");
        let r = Ref {
            node: Arc::from("c@h"),
            creation: 1,
            ids: vec![9],
        };
        assert!(
            !m.monitor(&r, &Term::Atom(Arc::from("cache")), 5),
            "the bound counts those handed over"
        );
    }

    /// Eighth review: a restricted host's pg groups grew its nodes' memory
    /// per tunnel, and 64 node pairs multiplied the bound. Invariant: the
    /// groups and members a host's scopes hold in the local `pg`, over all
    /// its node pairs, stay within pg::MAX_GROUPS and pg::MAX_MEMBERS; a
    /// connection's end gives its share back.
    #[test]
    fn pg_groups_are_bounded_per_host() {
        use super::super::pg::MAX_GROUPS;
        let all = Memories::default();
        let pid = |node: &str, id: u32| {
            Term::Pid(Pid {
                node: Arc::from(node),
                id,
                serial: 0,
                creation: 1,
            })
        };
        let atom = |a: &str| Term::Atom(Arc::from(a));
        let join =
            |node: &str, g: usize| Term::Tuple(vec![atom("join"), pid(node, 1), Term::Int(g as i64), pid(node, 7)]);
        let pairs: Vec<_> = ["c1@h", "c2@h"]
            .iter()
            .map(|n| {
                let p = all.pair("hostc", "b@h", n);
                let mut m = p.lock().unwrap();
                m.new_connection();
                m.pg_apply(&Term::Tuple(vec![atom("discover"), pid(n, 1)])).unwrap();
                drop(m);
                p
            })
            .collect();
        for g in 0..MAX_GROUPS / 2 {
            pairs[0].lock().unwrap().pg_apply(&join("c1@h", g)).unwrap();
        }
        let mut refused = 0;
        for g in 0..MAX_GROUPS {
            refused += usize::from(pairs[1].lock().unwrap().pg_apply(&join("c2@h", g)).is_err());
        }
        assert_eq!(refused, MAX_GROUPS / 2, "the second pair had only what the first left");
        let host = pairs[0].lock().unwrap().host.clone();
        assert_eq!(host.pg().0, MAX_GROUPS);
        let n = pairs[0].lock().unwrap().connections;
        pairs[0].lock().unwrap().end_connection(n);
        assert_eq!(host.pg().0, MAX_GROUPS / 2, "the first pair's end gave its groups back");
        pairs[1]
            .lock()
            .unwrap()
            .pg_apply(&join("c2@h", MAX_GROUPS + 1))
            .unwrap();
    }

    /// The local pg scope's monitors of the peer's scopes are handed over
    /// with the connection: a scope that ends after an upgrade gives its
    /// groups back.
    #[test]
    fn pg_scope_monitors_are_handed_over() {
        let atom = |a: &str| Term::Atom(Arc::from(a));
        let scope = Pid {
            node: Arc::from("c@h"),
            id: 7,
            serial: 0,
            creation: 1,
        };
        let r = Ref {
            node: Arc::from("b@h"),
            creation: 1,
            ids: vec![1, 2, 3],
        };
        let old = Memories::default();
        let pair = old.pair("hostc", "b@h", "c@h");
        let state = {
            let mut m = pair.lock().unwrap();
            m.new_connection();
            m.pg_apply(&Term::Tuple(vec![atom("discover"), Term::Pid(scope.clone())]))
                .unwrap();
            m.pg_apply(&Term::Tuple(vec![
                atom("join"),
                Term::Pid(scope.clone()),
                atom("g"),
                Term::Pid(scope.clone()),
            ]))
            .unwrap();
            m.pg_monitor(&r, Some(&scope));
            m.export()
        };
        let new = Memories::default();
        let pair = new.pair("hostc", "b@h", "c@h");
        let mut m = pair.lock().unwrap();
        m.new_connection();
        m.import(serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap());
        assert_eq!(m.host.pg(), (1, 1));
        m.pg_scope_ended(&scope, &r);
        assert_eq!(m.host.pg(), (0, 0));
    }
}
