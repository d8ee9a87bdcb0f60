//! The peer table: the hosts this erlmesh stands in for, static ones from
//! the config and those learnt from seeds and peers, each with a face on
//! its alias; and the gossip that keeps it current.
//!
//! A host enters the table only after a TLS connection to the address it
//! was announced with has proved its name (its certificate, from the
//! cluster CA, names it). Learnt hosts that stay unreachable for
//! `forget_after` are dropped; their aliases stay reserved (`alias.rs`).
//!
//! What gossip may do is narrow. Every name is canonical ([`HostName`]).
//! A host announced by a third party can only be *added*: this host, a
//! static peer and a host already in the table are never replaced or
//! re-addressed by gossip (a relay at another address would pass the
//! certificate check while sitting in the path). Only the host itself,
//! speaking with its own certificate (its HELLO, or a seed's handshake),
//! moves its learnt entry to a new address. Checking announced hosts is
//! bounded: at most [`MAX_HOSTS_PER_HELLO`] hosts are taken from one
//! answer, [`MAX_CHECKS_PER_ROUND`] checks start per gossip interval,
//! [`MAX_CONCURRENT_CHECKS`] run at once, and an address that failed is
//! not dialled again before its backoff ([`FAILED_BACKOFF_MIN`] doubling
//! to [`FAILED_BACKOFF_MAX`]; at most [`MAX_FAILED_ADDRESSES`] remembered).
//!
//! Local nodes resolve hosts through the resolver file: static entries,
//! plus a `hosts_file` that OTP re-reads on a lookup at least 5 s after its
//! last check. So that no node looks up a newly announced host before its
//! entry can be seen, an erlmesh that joins through seeds announces itself
//! to every host it learns, then waits [`JOIN_SETTLE`] before it reports
//! ready; its own nodes start after that, and by then every other host's
//! file has carried the new entry for longer than the 5 s re-read window.

pub mod alias;
pub mod face;
pub mod policy;
pub mod resolver;

use crate::config::{Config, Peer};
use crate::hostname::HostName;
use crate::mesh::face::Face;
use crate::mesh::policy::Policy;
use crate::ops::metrics::Metrics;
use crate::tls::Tls;
use crate::tunnel::dial::Dialer;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// How often hosts are exchanged with seeds and peers.
pub const GOSSIP_INTERVAL: Duration = Duration::from_secs(3);
/// Peers picked at random for each round (besides the seeds): news spreads
/// in a few rounds while each host makes a constant number of handshakes
/// per round, not one per host in the cluster.
pub const GOSSIP_FANOUT: usize = 3;
/// How long a joining erlmesh waits after announcing itself: longer than
/// OTP's 5 s hosts-file re-read window.
pub const JOIN_SETTLE: Duration = Duration::from_secs(6);
/// Longest a join through seeds keeps gossiping before it settles.
pub const JOIN_MAX: Duration = Duration::from_secs(30);
/// Most hosts in the table; bounds what a peer's gossip can make us open.
pub const MAX_PEERS: usize = 1024;
/// Hosts taken from one HELLO answer; the rest are ignored.
pub const MAX_HOSTS_PER_HELLO: usize = 64;
/// Announced hosts whose check may start per [`GOSSIP_INTERVAL`]; others
/// are dropped and come back with a later round's gossip.
pub const MAX_CHECKS_PER_ROUND: usize = 32;
/// Checks of announced hosts running at once.
pub const MAX_CONCURRENT_CHECKS: usize = 4;
/// Checks admitted and not finished (running or waiting to run).
pub const MAX_PENDING_CHECKS: usize = 64;
/// Backoff after a failed check of an address, doubling per failure.
pub const FAILED_BACKOFF_MIN: Duration = Duration::from_secs(30);
pub const FAILED_BACKOFF_MAX: Duration = Duration::from_secs(30 * 60);
/// Addresses remembered as failed; beyond this, no new check starts until
/// some backoff ends.
pub const MAX_FAILED_ADDRESSES: usize = 1024;

/// Who announced a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The host itself, proven by its certificate in this connection.
    Itself,
    /// Another host's list.
    Gossip,
}

/// An address whose check failed, and when it may be dialled again.
struct Failed {
    failures: u32,
    retry_at: Instant,
}

struct Entry {
    address: String,
    alias: Ipv4Addr,
    face_cancel: CancellationToken,
    /// From the config: never dropped.
    fixed: bool,
    last_ok: Instant,
}

/// The peer table and what it needs to open faces.
pub struct Mesh {
    host: HostName,
    advertise: String,
    epmd_port: u16,
    state_dir: PathBuf,
    seeds: Vec<String>,
    forget_after: Duration,
    static_peers: Vec<Peer>,
    /// What hosts not listed in `peers` may do (learnt ones, and any
    /// other certificate of the cluster that connects).
    default_policy: Policy,
    tls: Arc<Tls>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    peers: tokio::sync::Mutex<BTreeMap<HostName, Entry>>,
    /// Hosts being verified now, so that gossip does not dial them twice.
    pending: Mutex<BTreeSet<HostName>>,
    /// Addresses whose check failed, with their backoff.
    failed: Mutex<HashMap<String, Failed>>,
    checks: Arc<tokio::sync::Semaphore>,
    /// Announced hosts waiting to be looked at by the learner task.
    learn_tx: tokio::sync::mpsc::Sender<(HostName, String, Source)>,
    learn_rx: Mutex<Option<tokio::sync::mpsc::Receiver<(HostName, String, Source)>>>,
}

/// Announced hosts queued for verification; beyond this they are dropped
/// and learnt again from the next gossip round.
const MAX_LEARN_QUEUE: usize = 1024;

impl Mesh {
    /// An empty table for `config`.
    pub fn new(
        config: &Config,
        tls: Arc<Tls>,
        metrics: Arc<Metrics>,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) -> Arc<Mesh> {
        let (learn_tx, learn_rx) = tokio::sync::mpsc::channel(MAX_LEARN_QUEUE);
        Arc::new(Mesh {
            learn_tx,
            learn_rx: Mutex::new(Some(learn_rx)),
            host: config.host.clone(),
            advertise: config.advertise.clone(),
            epmd_port: config.epmd_port,
            state_dir: config.state_dir.clone(),
            seeds: config.seeds.clone(),
            forget_after: config.forget_after,
            static_peers: config.peers.clone(),
            default_policy: config.default_policy.clone(),
            failed: Mutex::new(HashMap::new()),
            checks: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_CHECKS)),
            tls,
            metrics,
            cancel,
            tracker,
            peers: tokio::sync::Mutex::new(BTreeMap::new()),
            pending: Mutex::new(BTreeSet::new()),
        })
    }

    /// Opens faces for the static peers (binding errors stop the start)
    /// and writes the resolver file.
    pub async fn start_static(self: &Arc<Self>) -> anyhow::Result<()> {
        let mut peers = self.peers.lock().await;
        let aliases = self.assign(&peers, &[]).await?;
        for p in &self.static_peers {
            let alias = aliases[&p.host];
            let face_cancel = self.open_face(&p.host, &p.address, alias, p.policy.clone()).await?;
            peers.insert(
                p.host.clone(),
                Entry {
                    address: p.address.clone(),
                    alias,
                    face_cancel,
                    fixed: true,
                    last_ok: Instant::now(),
                },
            );
        }
        self.write_resolver(&peers).await?;
        Ok(())
    }

    /// Allocates aliases for every host in the table plus `extra` (the
    /// alias file is read and written on a blocking thread).
    async fn assign(
        &self,
        peers: &BTreeMap<HostName, Entry>,
        extra: &[&HostName],
    ) -> anyhow::Result<BTreeMap<HostName, Ipv4Addr>> {
        let mut list: Vec<Peer> = self.static_peers.clone();
        for (h, e) in peers {
            if !list.iter().any(|p| &p.host == h) {
                list.push(Peer {
                    host: h.clone(),
                    address: e.address.clone(),
                    alias: Some(e.alias),
                    policy: Policy::default(),
                });
            }
        }
        for h in extra {
            list.push(Peer {
                host: (*h).clone(),
                address: String::new(),
                alias: None,
                policy: Policy::default(),
            });
        }
        let hosts: Vec<HostName> = list.iter().map(|p| p.host.clone()).collect();
        let dir = self.state_dir.clone();
        let ips = tokio::task::spawn_blocking(move || alias::assign(&list, &dir))
            .await?
            .map_err(|e| anyhow::anyhow!("{}: cannot keep the alias table: {e}", self.state_dir.display()))?;
        Ok(hosts.into_iter().zip(ips).collect())
    }

    async fn open_face(
        &self,
        host: &str,
        address: &str,
        alias: Ipv4Addr,
        policy: Policy,
    ) -> anyhow::Result<CancellationToken> {
        let dialer = Dialer::new(host, address, self.tls.clone(), self.metrics.clone())?;
        let face_cancel = self.cancel.child_token();
        let face = Face::new(
            &self.host,
            alias,
            self.epmd_port,
            dialer,
            policy,
            face_cancel.clone(),
            self.tracker.clone(),
        );
        // A face being replaced may not have released the port yet.
        let mut bound = face.bind().await;
        for _ in 0..40 {
            match &bound {
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && self.cancel.is_cancelled() => break,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    bound = face.bind().await;
                }
                _ => break,
            }
        }
        let l: TcpListener = bound.map_err(|e| {
            anyhow::anyhow!(
                "cannot bind {alias}:{} for peer {host}: {e}{}",
                self.epmd_port,
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    " (something listens on 0.0.0.0 at that port, such as an epmd started without ERL_EPMD_ADDRESS=127.0.0.1)"
                } else {
                    ""
                }
            )
        })?;
        self.tracker.spawn(face.serve(l));
        Ok(face_cancel)
    }

    /// Writes the resolver files from the table (one canonical name per
    /// host), on a blocking thread.
    async fn write_resolver(&self, peers: &BTreeMap<HostName, Entry>) -> anyhow::Result<()> {
        let table: Vec<(String, Ipv4Addr)> = peers.iter().map(|(h, e)| (h.to_string(), e.alias)).collect();
        let hosts = self.state_dir.join(resolver::HOSTS_FILE);
        let inetrc = self.state_dir.join(resolver::INETRC_FILE);
        let hosts_text = resolver::render_hosts(&self.host, &table);
        let inetrc_text = resolver::render(&self.host, &table, &hosts);
        tokio::task::spawn_blocking(move || {
            resolver::write_atomically(&hosts, hosts_text.as_bytes())
                .map_err(|e| anyhow::anyhow!("{}: cannot write the hosts file: {e}", hosts.display()))?;
            resolver::write_atomically(&inetrc, inetrc_text.as_bytes())
                .map_err(|e| anyhow::anyhow!("{}: cannot write the resolver file: {e}", inetrc.display()))
        })
        .await?
    }

    /// The hosts to tell others about: this one first, then the table.
    pub async fn known(&self) -> Vec<(String, String)> {
        let mut v = vec![(self.host.to_string(), self.advertise.clone())];
        v.extend(
            self.peers
                .lock()
                .await
                .iter()
                .map(|(h, e)| (h.to_string(), e.address.clone())),
        );
        v
    }

    /// What `host`'s nodes may do here: its `peers` entry's policy, else
    /// the default policy.
    pub fn policy_for(&self, host: &HostName) -> Policy {
        self.static_peers
            .iter()
            .find(|p| &p.host == host)
            .map(|p| p.policy.clone())
            .unwrap_or_else(|| self.default_policy.clone())
    }

    /// Takes note of `host` at `address`, announced by `source`; the
    /// learner task checks it (see [`Mesh::learner`]). A name that is not
    /// a host name is dropped here.
    pub fn learn(&self, host: &str, address: &str, source: Source) {
        let Ok(host) = HostName::parse(host) else {
            debug!(host = %host.escape_debug(), "announced name is not a host name; ignored");
            return;
        };
        if host != self.host {
            let _ = self.learn_tx.try_send((host, address.to_owned(), source));
        }
    }

    /// Takes note of the hosts in one HELLO answer (at most
    /// [`MAX_HOSTS_PER_HELLO`] of them).
    fn learn_list(&self, from: &str, hosts: Vec<(String, String)>) {
        if hosts.len() > MAX_HOSTS_PER_HELLO {
            warn!(%from, hosts = hosts.len(), "HELLO answer lists more than {MAX_HOSTS_PER_HELLO} hosts; the rest are ignored");
        }
        for (h, a) in hosts.into_iter().take(MAX_HOSTS_PER_HELLO) {
            self.learn(&h, &a, Source::Gossip);
        }
    }

    /// Whether `address` is in its failure backoff.
    fn backing_off(&self, address: &str) -> bool {
        let failed = self.failed.lock().expect("failed lock");
        failed.get(address).is_some_and(|f| f.retry_at > Instant::now())
            || (failed.len() >= MAX_FAILED_ADDRESSES && !failed.contains_key(address))
    }

    /// Remembers a failed check of `address`, doubling its backoff.
    fn note_failure(&self, address: &str) {
        let mut failed = self.failed.lock().expect("failed lock");
        if failed.len() >= MAX_FAILED_ADDRESSES {
            let now = Instant::now();
            failed.retain(|_, f| f.retry_at > now);
        }
        if failed.len() >= MAX_FAILED_ADDRESSES && !failed.contains_key(address) {
            return;
        }
        let f = failed.entry(address.to_owned()).or_insert(Failed {
            failures: 0,
            retry_at: Instant::now(),
        });
        f.failures = f.failures.saturating_add(1);
        let backoff = FAILED_BACKOFF_MIN
            .saturating_mul(1u32 << (f.failures - 1).min(16))
            .min(FAILED_BACKOFF_MAX);
        f.retry_at = Instant::now() + backoff;
    }

    /// Why an announcement is not checked, if it is not.
    async fn skip_reason(&self, host: &HostName, address: &str, source: Source) -> Option<&'static str> {
        if self.static_peers.iter().any(|p| &p.host == host) {
            return Some("a configured peer keeps its configured address");
        }
        {
            let peers = self.peers.lock().await;
            match peers.get(host) {
                Some(e) if e.address == address => return Some("known at that address"),
                Some(_) if source == Source::Gossip => return Some("a verified host is re-addressed only by itself"),
                None if peers.len() >= MAX_PEERS => return Some("peer table full"),
                _ => {}
            }
        }
        if self.backing_off(address) {
            return Some("that address failed recently");
        }
        None
    }

    /// Looks at announced hosts and checks, within the bounds above, those
    /// that could enter the table (or move, when announced by themselves).
    pub async fn learner(self: Arc<Self>) {
        let Some(mut rx) = self.learn_rx.lock().expect("learn lock").take() else {
            return;
        };
        let mut budget = MAX_CHECKS_PER_ROUND;
        let mut refill = Instant::now() + GOSSIP_INTERVAL;
        loop {
            let (host, address, source) = tokio::select! {
                _ = self.cancel.cancelled() => return,
                m = rx.recv() => match m { Some(m) => m, None => return },
            };
            if let Some(why) = self.skip_reason(&host, &address, source).await {
                debug!(%host, %address, ?source, why, "announced host not checked");
                continue;
            }
            if Instant::now() >= refill {
                budget = MAX_CHECKS_PER_ROUND;
                refill = Instant::now() + GOSSIP_INTERVAL;
            }
            if budget == 0 {
                debug!(%host, %address, "check budget of this round spent; the host comes back with later gossip");
                continue;
            }
            {
                let mut pending = self.pending.lock().expect("pending lock");
                if pending.len() >= MAX_PENDING_CHECKS || !pending.insert(host.clone()) {
                    continue;
                }
            }
            budget -= 1;
            let mesh = self.clone();
            self.tracker.spawn(async move {
                if let Ok(_permit) = mesh.checks.clone().acquire_owned().await {
                    // Another check of that address may have failed while
                    // this one waited: hosts announced at one address share
                    // its backoff.
                    if !mesh.backing_off(&address) {
                        mesh.verify(&host, &address).await;
                    }
                }
                mesh.pending.lock().expect("pending lock").remove(&host);
            });
        }
    }

    /// Dials `host` at `address` checking that its certificate names it;
    /// on success the host enters the table (or moves there) and what it
    /// knows is learnt.
    async fn verify(&self, host: &HostName, address: &str) {
        let dialer = match Dialer::new(host, address, self.tls.clone(), self.metrics.clone()) {
            Ok(d) => d.unlisted(),
            Err(e) => {
                warn!(%host, %address, error = %e, "announced host not usable");
                return;
            }
        };
        match dialer.hello(&self.advertise).await {
            Ok((_, hosts)) => {
                if let Err(e) = self.add(host, address).await {
                    warn!(%host, error = %e, "cannot add the peer");
                    return;
                }
                self.learn_list(host, hosts);
            }
            Err(e) => {
                debug!(%host, %address, error = %e, "announced host not verified");
                self.note_failure(address);
                self.metrics.unverified(host, address, e.to_string());
            }
        }
    }

    /// Puts a host whose name a handshake with `address` just proved in the
    /// table, or notes that it is alive. A configured peer keeps its
    /// configured address and policy.
    async fn add(&self, host: &HostName, address: &str) -> anyhow::Result<()> {
        if host == &self.host {
            return Ok(());
        }
        let mut peers = self.peers.lock().await;
        if let Some(e) = peers.get_mut(host) {
            e.last_ok = Instant::now();
            if e.address != address && !e.fixed {
                info!(%host, old = %e.address, new = %address, "peer moved");
                e.address = address.to_owned();
                // The face dials the address it was made with: renew it.
                e.face_cancel.cancel();
                e.face_cancel = self
                    .open_face(host, address, e.alias, self.default_policy.clone())
                    .await?;
            }
            return Ok(());
        }
        if self.static_peers.iter().any(|p| &p.host == host) {
            return Ok(());
        }
        let aliases = self.assign(&peers, &[host]).await?;
        let alias = aliases[host];
        let face_cancel = self
            .open_face(host, address, alias, self.default_policy.clone())
            .await?;
        peers.insert(
            host.clone(),
            Entry {
                address: address.to_owned(),
                alias,
                face_cancel,
                fixed: false,
                last_ok: Instant::now(),
            },
        );
        self.write_resolver(&peers).await?;
        self.metrics.verified(host);
        info!(%host, %address, %alias, "peer learnt and verified");
        Ok(())
    }

    /// One exchange with every seed and [`GOSSIP_FANOUT`] random peers.
    pub async fn gossip_round(self: &Arc<Self>) {
        let mut targets: Vec<Dialer> = self
            .seeds
            .iter()
            .map(|s| Dialer::seed(s, self.tls.clone(), self.metrics.clone()))
            .collect();
        let mut known: Vec<(HostName, String)> = self
            .peers
            .lock()
            .await
            .iter()
            .map(|(h, e)| (h.clone(), e.address.clone()))
            .collect();
        for _ in 0..GOSSIP_FANOUT.min(known.len()) {
            let (h, a) = known.swap_remove(random_below(known.len()));
            if let Ok(d) = Dialer::new(&h, &a, self.tls.clone(), self.metrics.clone()) {
                targets.push(d);
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for d in targets {
            let mesh = self.clone();
            tasks.spawn(async move {
                let r = d.hello(&mesh.advertise).await;
                (d, r)
            });
        }
        while let Some(Ok((d, r))) = tasks.join_next().await {
            match r {
                Ok((names, hosts)) => {
                    let host = if d.is_seed() {
                        names.first().cloned()
                    } else {
                        HostName::parse(&d.host).ok()
                    };
                    if let Some(host) = host {
                        // The handshake just proved the name: no second
                        // dial. A seed speaks for itself.
                        if let Err(e) = self.add(&host, &d.address).await {
                            warn!(%host, error = %e, "cannot add the peer");
                        }
                    }
                    self.learn_list(&d.address, hosts);
                }
                Err(e) => {
                    debug!(peer = %d.host, error = %e, "gossip failed");
                    if !d.is_seed() {
                        self.forget_if_gone(&d.host).await;
                    }
                }
            }
        }
    }

    /// Drops `host` if it is a learnt one unreachable for `forget_after`.
    async fn forget_if_gone(&self, host: &str) {
        let Ok(host) = HostName::parse(host) else { return };
        let host = &host;
        let mut peers = self.peers.lock().await;
        let gone = peers
            .get(host)
            .is_some_and(|e| !e.fixed && e.last_ok.elapsed() > self.forget_after);
        if gone {
            if let Some(e) = peers.remove(host) {
                e.face_cancel.cancel();
                warn!(%host, after = ?self.forget_after, "peer unreachable for too long; dropped (its alias stays reserved)");
                self.metrics.forget(host);
                if let Err(e) = self.write_resolver(&peers).await {
                    warn!(error = %e, "cannot rewrite the resolver file");
                }
            }
        }
    }

    /// Joins through the seeds (when any): learns and verifies the hosts
    /// they know, announces this host to each, then waits [`JOIN_SETTLE`].
    pub async fn join(self: &Arc<Self>) {
        if self.seeds.is_empty() {
            return;
        }
        // Rounds until one learns nothing new: the checks of one round are
        // bounded (MAX_CHECKS_PER_ROUND), so a large cluster takes several.
        let end = Instant::now() + JOIN_MAX;
        loop {
            let before = self.peers.lock().await.len();
            self.gossip_round().await;
            // Let the checks started by that round finish.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while (!self.pending.lock().expect("pending lock").is_empty() || self.learn_tx.capacity() < MAX_LEARN_QUEUE)
                && Instant::now() < end
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if self.peers.lock().await.len() == before || Instant::now() >= end {
                break;
            }
        }
        info!(
            peers = self.peers.lock().await.len(),
            "joined through seeds; settling {:?} so every host's resolver sees this one", JOIN_SETTLE
        );
        tokio::select! {
            _ = self.cancel.cancelled() => {}
            _ = tokio::time::sleep(JOIN_SETTLE) => {}
        }
    }

    /// Gossips every [`GOSSIP_INTERVAL`] until shutdown.
    pub async fn gossip_forever(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(GOSSIP_INTERVAL) => {}
            }
            self.gossip_round().await;
        }
    }
}

/// A random index below `n` (n > 0), from the standard library's per-process
/// random hasher keys: good enough to spread gossip, not for secrets.
fn random_below(n: usize) -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() % n as u64) as usize
}
