//! Transparent interception (`interception = "transparent"`): nodes start
//! as on a trusted network, with their own epmd, and the kernel sends
//! their connections to peer hosts' EPMD and distribution ports to
//! erlmesh (`ruleset.rs`, applied by `nft.rs`), which reads where each was
//! going and carries it through the peer's face as in resolver mode.
//!
//! [`Intercept`] keeps what the rules are made from and keeps the kernel's
//! table in step with it: the peer hosts' addresses (resolved as nodes
//! resolve them; an address claimed by two hosts stays with the first),
//! the distribution ports their EPMD answers gave (in the rules before the
//! node reads the answer), and the ports this host's nodes registered with
//! the local epmd (guarded from the network). A node name whose host part
//! is an address is that address, and its host is the certificate that
//! names it.

pub mod nft;
mod redirect;
pub mod ruleset;

use crate::config::{Config, Transparent};
use crate::epmd::LocalEpmd;
use crate::hostname::HostName;
use crate::mesh::face::{Face, MAX_NODES_PER_PEER};
use crate::ops::metrics::Metrics;
use ruleset::RuleSet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

pub use redirect::bind as bind_redirect;

/// Addresses taken from one peer host's name (A and AAAA records).
pub const MAX_ADDRESSES_PER_HOST: usize = 16;
/// How long resolving a peer host's name may take.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often peer hosts' names are resolved again (their addresses may move).
pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(30);
/// How often the local epmd is asked for this host's nodes' ports: a node
/// that just registered is reachable from the network for at most this
/// long (a fixed `transparent.dist_ports` range closes that window).
pub const LOCAL_POLL: Duration = Duration::from_millis(500);
/// How often each peer host is asked for its nodes and their ports.
pub const SURVEY_INTERVAL: Duration = Duration::from_secs(30);
/// How soon a peer host that could not be asked is asked again.
pub const SURVEY_RETRY: Duration = Duration::from_secs(2);
/// Longest a node's EPMD answer waits for its port to enter the rules.
pub const APPLY_WAIT: Duration = Duration::from_secs(3);
/// Local nodes whose ports are guarded; the local epmd's NAMES reply is
/// bounded too (`codec::MAX_NAMES_REPLY`).
pub const MAX_LOCAL_NODES: usize = 4096;
/// Learnt (address, port) entries kept from a previous run's table.
pub const MAX_ADOPTED: usize = 4096;

/// The mark on erlmesh's own sockets (0: none, outside transparent mode).
static SOCKET_MARK: AtomicU32 = AtomicU32::new(0);

/// The mark erlmesh's outbound sockets carry, if any.
pub fn socket_mark() -> Option<u32> {
    match SOCKET_MARK.load(Ordering::Relaxed) {
        0 => None,
        m => Some(m),
    }
}

/// One peer host as the rules see it.
struct PeerHost {
    face: Arc<Face>,
    /// Its addresses this host resolved, first claim kept.
    addrs: Vec<IpAddr>,
    /// Node name → the distribution port its EPMD answered with.
    ports: BTreeMap<String, u16>,
}

#[derive(Default)]
struct State {
    hosts: BTreeMap<HostName, PeerHost>,
    /// Which host an address stands for (the first to claim it).
    owner: BTreeMap<IpAddr, HostName>,
    local_ports: BTreeSet<u16>,
    /// Learnt entries found in the kernel's table at start.
    adopted: BTreeSet<(IpAddr, u16)>,
}

/// Transparent interception's state and the keeper of the kernel's rules.
pub struct Intercept {
    settings: Transparent,
    epmd_port: u16,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    /// Changes made (counted) and changes in the kernel's table.
    wanted: AtomicU64,
    applied: watch::Sender<u64>,
    wake: Notify,
}

impl Intercept {
    /// The interception `config` asks for; marks erlmesh's own sockets.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Arc<Intercept> {
        SOCKET_MARK.store(config.transparent.socket_mark, Ordering::Relaxed);
        Arc::new(Intercept {
            settings: config.transparent.clone(),
            epmd_port: config.epmd_port,
            metrics,
            state: Mutex::new(State::default()),
            wanted: AtomicU64::new(0),
            applied: watch::channel(0).0,
            wake: Notify::new(),
        })
    }

    /// The rules as they stand.
    pub fn rules(&self) -> RuleSet {
        let st = self.state.lock().expect("intercept lock");
        let mut r = base(&self.settings, self.epmd_port);
        r.peers = st.owner.keys().copied().collect();
        for h in st.hosts.values() {
            for a in h.addrs.iter().filter(|a| st.owner.contains_key(a)) {
                for p in h.ports.values() {
                    r.dist.insert((*a, *p));
                }
            }
        }
        r.dist
            .extend(st.adopted.iter().filter(|(a, _)| st.owner.contains_key(a)).copied());
        r.local_dist = st.local_ports.clone();
        r
    }

    /// Replaces the peer hosts (the peer table's faces, each with the
    /// addresses its name resolves to). Returns whether the rules change.
    fn set_peers(&self, peers: Vec<(HostName, Arc<Face>, Vec<IpAddr>)>) -> bool {
        let before = self.rules();
        {
            let mut st = self.state.lock().expect("intercept lock");
            let keep: BTreeSet<HostName> = peers.iter().map(|(h, _, _)| h.clone()).collect();
            st.hosts.retain(|h, _| keep.contains(h));
            st.owner.retain(|_, h| keep.contains(h));
            for (host, face, addrs) in peers {
                let mine = claim(&mut st.owner, &host, addrs);
                let e = st.hosts.entry(host).or_insert_with(|| PeerHost {
                    face: face.clone(),
                    addrs: Vec::new(),
                    ports: BTreeMap::new(),
                });
                e.face = face;
                e.addrs = mine;
            }
        }
        self.rules() != before
    }

    /// Notes that `host`'s node `name` listens on `port` (from its EPMD
    /// answer) and waits until the rules redirect that port.
    pub async fn learn(&self, host: &str, name: &str, port: u16) {
        if self.note(host, name, port) {
            self.changed().await;
        }
    }

    /// Notes a node's port; whether the rules change.
    fn note(&self, host: &str, name: &str, port: u16) -> bool {
        let mut st = self.state.lock().expect("intercept lock");
        let Some(h) = st.hosts.get_mut(host) else {
            return false;
        };
        if h.ports.get(name) == Some(&port) {
            false
        } else if h.ports.len() >= MAX_NODES_PER_PEER && !h.ports.contains_key(name) {
            warn!(%host, node = %name, "more than {MAX_NODES_PER_PEER} nodes learnt on this peer; not redirected");
            false
        } else {
            debug!(%host, node = %name, %port, "distribution port learnt");
            h.ports.insert(name.to_owned(), port);
            true
        }
    }

    /// Asks one peer for its nodes and their ports, which replace what was
    /// known of it; whether the rules change (None: the host is not in the
    /// rules yet). The rules then hold every
    /// peer node's port before a local node dials it, so a connection older
    /// than the rules (where the local node is the client) is reset here
    /// before it sends another byte.
    async fn survey(&self, face: &Face) -> Result<Option<bool>, crate::tunnel::dial::DialError> {
        let names = face.dialer.names().await?;
        let mut ports = BTreeMap::new();
        for n in names
            .into_iter()
            .filter(|n| face.policy.allows_remote(n))
            .take(MAX_NODES_PER_PEER)
        {
            if let Ok(Some(info)) = face.dialer.port(&n).await {
                ports.insert(n, info.port);
            }
        }
        let mut st = self.state.lock().expect("intercept lock");
        let Some(h) = st.hosts.get_mut(face.peer_host()) else {
            return Ok(None); // not in the rules yet: asked again soon
        };
        let mut changed = h.ports != ports;
        h.ports = ports;
        // What the peer says now replaces what a previous run had learnt
        // of its addresses (a node gone since then leaves the rules).
        let addrs = h.addrs.clone();
        let before = st.adopted.len();
        st.adopted.retain(|(a, _)| !addrs.contains(a));
        changed |= st.adopted.len() != before;
        Ok(Some(changed))
    }

    /// Surveys every peer host: each as soon as it is in the table (again
    /// every [`SURVEY_RETRY`] until it answers), then every
    /// [`SURVEY_INTERVAL`].
    async fn survey_peers(self: Arc<Self>, mesh: Arc<crate::mesh::Mesh>, cancel: CancellationToken) {
        let mut last: BTreeMap<HostName, tokio::time::Instant> = BTreeMap::new();
        loop {
            let faces = mesh.faces();
            last.retain(|h, _| faces.iter().any(|(f, _)| f == h));
            let mut changed = false;
            for (host, face) in faces {
                if last.get(&host).is_some_and(|t| t.elapsed() < SURVEY_INTERVAL) {
                    continue;
                }
                match self.survey(&face).await {
                    Ok(Some(c)) => {
                        changed |= c;
                        last.insert(host, tokio::time::Instant::now());
                    }
                    Ok(None) => {}
                    Err(e) => debug!(%host, error = %e, "cannot survey the peer's nodes yet"),
                }
            }
            if changed {
                debug!("peer nodes' ports changed; rules updated");
                self.changed().await;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(SURVEY_RETRY) => {}
            }
        }
    }

    /// The peer host an address stands for, and the node it knows at `port`.
    fn lookup(&self, ip: IpAddr, port: u16) -> Option<(Arc<Face>, Option<String>)> {
        let st = self.state.lock().expect("intercept lock");
        let host = st.owner.get(&ip)?;
        let h = st.hosts.get(host)?;
        let name = h.ports.iter().find(|(_, p)| **p == port).map(|(n, _)| n.clone());
        Some((h.face.clone(), name))
    }

    /// Asks for the kernel's table to be brought in step, and waits (at
    /// most [`APPLY_WAIT`]) until it is.
    async fn changed(&self) {
        let generation = self.wanted.fetch_add(1, Ordering::SeqCst) + 1;
        let mut applied = self.applied.subscribe();
        self.wake.notify_one();
        if tokio::time::timeout(APPLY_WAIT, applied.wait_for(|a| *a >= generation))
            .await
            .is_err()
        {
            warn!("the kernel's rules were not updated within {APPLY_WAIT:?}");
        }
    }

    /// First rules at start: the static peers resolved, the running local
    /// nodes' ports, the learnt ports of a previous run kept; an error
    /// stops the start.
    pub async fn start(
        self: &Arc<Self>,
        faces: Vec<(HostName, Arc<Face>)>,
        local: &LocalEpmd,
    ) -> Result<(), nft::NftError> {
        // The nodes already running are guarded from the first rules on.
        if let Ok(names) = local.names().await {
            self.state.lock().expect("intercept lock").local_ports =
                names.into_iter().map(|(_, p)| p).take(MAX_LOCAL_NODES).collect();
        }
        let adopted = tokio::task::spawn_blocking(nft::learnt)
            .await
            .unwrap_or_else(|e| Err(nft::NftError::Spawn(std::io::Error::other(e))))
            .unwrap_or_else(|e| {
                warn!(error = %e, "cannot read the learnt ports of the previous rules; starting without them");
                Vec::new()
            });
        self.state.lock().expect("intercept lock").adopted = adopted.into_iter().take(MAX_ADOPTED).collect();
        let peers = resolve_all(faces).await;
        self.set_peers(peers);
        let rules = self.rules();
        let n = rules.peers.len();
        tokio::task::spawn_blocking(move || nft::apply(&rules))
            .await
            .map_err(|e| nft::NftError::Spawn(std::io::Error::other(e)))??;
        info!(
            peer_addresses = n,
            "transparent interception: rules applied (nft table inet erlmesh)"
        );
        Ok(())
    }

    /// Keeps the rules in step until shutdown: the table's writer, the
    /// peer table's hosts and their addresses, their nodes' ports, and the
    /// local nodes' ports.
    pub fn keep(
        self: &Arc<Self>,
        mesh: Arc<crate::mesh::Mesh>,
        local: LocalEpmd,
        cancel: CancellationToken,
        tracker: &TaskTracker,
    ) {
        tracker.spawn(self.clone().writer(cancel.clone()));
        let mesh_for_survey = mesh.clone();
        tracker.spawn(self.clone().follow_peers(mesh, cancel.clone()));
        tracker.spawn(self.clone().follow_local(local, cancel.clone()));
        tracker.spawn(self.clone().survey_peers(mesh_for_survey, cancel));
    }

    /// Writes the kernel's table whenever a change is asked for; many
    /// changes made meanwhile go in one transaction.
    async fn writer(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.wake.notified() => {}
            }
            let generation = self.wanted.load(Ordering::SeqCst);
            let rules = self.rules();
            match tokio::task::spawn_blocking(move || nft::apply(&rules)).await {
                Ok(Ok(())) => debug!(generation, "rules updated"),
                Ok(Err(e)) => warn!(error = %e, "cannot update the kernel's rules; the previous ones stay"),
                Err(e) => warn!(error = %e, "cannot update the kernel's rules"),
            }
            // Waiters go on either way: a port that is not redirected is
            // guarded on its host, so a node gets pang, never plaintext.
            self.applied.send_replace(generation);
        }
    }

    /// Follows the peer table: hosts that enter or leave it, and their
    /// addresses, resolved again every [`RESOLVE_INTERVAL`].
    async fn follow_peers(self: Arc<Self>, mesh: Arc<crate::mesh::Mesh>, cancel: CancellationToken) {
        let mut table = mesh.subscribe();
        loop {
            let faces = mesh.faces();
            let peers = resolve_all(faces).await;
            if self.set_peers(peers) {
                info!("peer addresses changed; rules updated");
                self.changed().await;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = table.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(RESOLVE_INTERVAL) => {}
            }
        }
    }

    /// Follows the local epmd's registrations: their ports are guarded.
    async fn follow_local(self: Arc<Self>, local: LocalEpmd, cancel: CancellationToken) {
        loop {
            match local.names().await {
                Ok(names) => {
                    let ports: BTreeSet<u16> = names.into_iter().map(|(_, p)| p).take(MAX_LOCAL_NODES).collect();
                    let changed = {
                        let mut st = self.state.lock().expect("intercept lock");
                        let c = st.local_ports != ports;
                        st.local_ports = ports;
                        c
                    };
                    if changed {
                        debug!("local nodes' ports changed; rules updated");
                        self.changed().await;
                    }
                }
                // No epmd yet (no node started): nothing to guard beyond
                // what was seen before.
                Err(e) => debug!(error = %e, "local epmd not answering"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(LOCAL_POLL) => {}
            }
        }
    }

    /// The node of `face`'s host listening on `port`, asked of the peer
    /// (for a connection to a port learnt by an earlier run, or one a node
    /// dials without asking EPMD).
    async fn find_node(&self, face: &Face, port: u16) -> Option<String> {
        let names = face.dialer.names().await.ok()?;
        for n in names.into_iter().take(MAX_NODES_PER_PEER) {
            if let Ok(Some(info)) = face.dialer.port(&n).await {
                if info.port == port {
                    self.learn(face.peer_host(), &n, port).await;
                    return Some(n);
                }
            }
        }
        None
    }
}

/// Gives `host` the addresses of `addrs` that no other host holds (an
/// address stays with the host that claimed it first, so a name that
/// starts resolving to another peer's address cannot take its traffic),
/// at most [`MAX_ADDRESSES_PER_HOST`]; frees those it no longer resolves
/// to. Returns the addresses it now holds.
fn claim(owner: &mut BTreeMap<IpAddr, HostName>, host: &HostName, addrs: Vec<IpAddr>) -> Vec<IpAddr> {
    let mine: Vec<IpAddr> = addrs
        .into_iter()
        .filter(|a| match owner.get(a) {
            Some(h) if h != host => {
                warn!(%host, address = %a, owner = %h, "address already stands for another peer host; left with it");
                false
            }
            _ => true,
        })
        .take(MAX_ADDRESSES_PER_HOST)
        .collect();
    owner.retain(|a, h| h != host || mine.contains(a));
    for a in &mine {
        owner.insert(*a, host.clone());
    }
    mine
}

/// The ruleset's fixed part.
pub fn base(settings: &Transparent, epmd_port: u16) -> RuleSet {
    RuleSet {
        epmd_port,
        redirect_port: settings.redirect_port,
        mark: settings.socket_mark,
        dist_ports: settings.dist_ports,
        ..RuleSet::default()
    }
}

/// The rules `erlmesh rules apply` writes for `config`: its static peers'
/// addresses (resolved here), the ports of the nodes registered with the
/// local epmd, and the learnt ports already in the table.
pub async fn static_rules(config: &Config) -> RuleSet {
    let mut r = base(&config.transparent, config.epmd_port);
    for p in &config.peers {
        r.peers.extend(resolve(&p.host).await);
    }
    let local = LocalEpmd::System { port: config.epmd_port };
    if let Ok(names) = local.names().await {
        r.local_dist = names.into_iter().map(|(_, p)| p).take(MAX_LOCAL_NODES).collect();
    }
    if let Ok(Ok(learnt)) = tokio::task::spawn_blocking(nft::learnt).await {
        r.dist.extend(
            learnt
                .into_iter()
                .filter(|(a, _)| r.peers.contains(a))
                .take(MAX_ADOPTED),
        );
    }
    r
}

async fn resolve_all(faces: Vec<(HostName, Arc<Face>)>) -> Vec<(HostName, Arc<Face>, Vec<IpAddr>)> {
    let mut v = Vec::with_capacity(faces.len());
    for (h, f) in faces {
        let addrs = resolve(&h).await;
        v.push((h, f, addrs));
    }
    v
}

/// A host's addresses as its nodes' names lead to them: an IP literal is
/// itself, a name what the system resolver gives (A and AAAA).
pub async fn resolve(host: &HostName) -> Vec<IpAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return vec![ip];
    }
    let lookup = tokio::net::lookup_host((host.as_str(), 0));
    match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
        Ok(Ok(addrs)) => {
            let mut v: Vec<IpAddr> = Vec::new();
            for a in addrs {
                let ip = a.ip();
                if !ip.is_loopback() && !ip.is_unspecified() && !v.contains(&ip) {
                    v.push(ip);
                }
                if v.len() >= MAX_ADDRESSES_PER_HOST {
                    break;
                }
            }
            v
        }
        Ok(Err(e)) => {
            debug!(%host, error = %e, "peer host name does not resolve here; its nodes cannot be dialled by name");
            Vec::new()
        }
        Err(_) => {
            warn!(%host, "resolving the peer host's name took over {RESOLVE_TIMEOUT:?}");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn an_address_stays_with_the_first_host_that_claims_it() {
        let mut owner = BTreeMap::new();
        let (b, c) = (HostName::parse("hostb").unwrap(), HostName::parse("hostc").unwrap());
        assert_eq!(
            claim(&mut owner, &b, ips(&["198.18.0.2", "2001:2::2"])),
            ips(&["198.18.0.2", "2001:2::2"])
        );
        // hostc's name now resolves to hostb's address too: it gets only its own.
        assert_eq!(
            claim(&mut owner, &c, ips(&["198.18.0.2", "198.18.0.3"])),
            ips(&["198.18.0.3"])
        );
        assert_eq!(owner[&"198.18.0.2".parse::<IpAddr>().unwrap()], b);
        // hostb moves: the old address is freed, and then hostc may take it.
        assert_eq!(claim(&mut owner, &b, ips(&["198.18.0.9"])), ips(&["198.18.0.9"]));
        assert_eq!(owner.len(), 2, "{owner:?}");
        assert!(!owner.contains_key(&"198.18.0.2".parse::<IpAddr>().unwrap()));
        assert_eq!(
            claim(&mut owner, &c, ips(&["198.18.0.2", "198.18.0.3"])),
            ips(&["198.18.0.2", "198.18.0.3"])
        );
        assert_eq!(owner.len(), 3);
    }

    #[test]
    fn a_host_holds_a_bounded_number_of_addresses() {
        let mut owner = BTreeMap::new();
        let b = HostName::parse("hostb").unwrap();
        let many: Vec<IpAddr> = (1..=200u8).map(|i| IpAddr::from([198, 18, 1, i])).collect();
        assert_eq!(claim(&mut owner, &b, many).len(), MAX_ADDRESSES_PER_HOST);
        assert_eq!(owner.len(), MAX_ADDRESSES_PER_HOST);
    }
}
