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
mod gossip;
pub mod policy;
pub mod resolver;
mod table;

use crate::config::{Config, Peer};
use crate::firewall::memory::Memories;
use crate::hostname::HostName;
use crate::mesh::policy::Policy;
use crate::ops::metrics::Metrics;
use crate::tls::Tls;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

/// How often hosts are exchanged with seeds and peers.
pub const GOSSIP_INTERVAL: Duration = Duration::from_secs(3);
/// Peers picked at random for each round (besides the seeds): news spreads
/// in a few rounds while each host makes a constant number of handshakes
/// per round, not one per host in the cluster.
pub const GOSSIP_FANOUT: usize = 3;
/// How long a joining erlmesh waits after announcing itself: longer than
/// OTP's 5 s hosts-file re-read window.
pub const JOIN_SETTLE: Duration = Duration::from_secs(6);
/// While settling after a join, how often the seeds are asked again.
pub const JOIN_SETTLE_ROUND: Duration = Duration::from_secs(1);
/// Longest a join through seeds keeps gossiping before it settles.
pub const JOIN_MAX: Duration = Duration::from_secs(30);
/// Addresses taken from one seed's name (a headless Service resolves to
/// one per pod).
pub const MAX_SEED_ADDRESSES: usize = 64;
/// How long resolving a seed's name may take.
pub const SEED_RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
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

/// Messages waiting for the table task; beyond this a sender waits.
pub const MAX_TABLE_QUEUE: usize = 1024;
/// Announced hosts queued for verification; beyond this they are dropped
/// and learnt again from the next gossip round.
const MAX_LEARN_QUEUE: usize = 1024;

/// Why the peer table could not take a host.
#[derive(Debug, Error)]
pub enum MeshError {
    #[error("{dir}: cannot keep the alias table: {source}")]
    Aliases { dir: PathBuf, source: std::io::Error },
    #[error("{path}: cannot write the resolver file: {source}")]
    Resolver { path: PathBuf, source: std::io::Error },
    #[error("cannot bind {addr} for peer {host}: {source}{hint}")]
    Bind {
        addr: std::net::SocketAddr,
        host: HostName,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("peer {host}: {source}")]
    Dial {
        host: HostName,
        source: crate::tunnel::dial::DialError,
    },
    #[error("a blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// What readers see of a host in the table (a snapshot the table task
/// publishes after every change).
#[derive(Debug, Clone)]
pub struct PeerView {
    pub address: String,
    /// From the config: never dropped or moved.
    pub fixed: bool,
    /// How local nodes reach it.
    pub face: Arc<face::Face>,
}

/// The peer table's handle: what it needs to open faces, the channel to
/// the task that owns the table, and the table's latest snapshot.
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
    /// What the distribution firewall remembers per node pair, by host.
    memories: Arc<Memories>,
    /// Transparent mode's rules and redirect (none in resolver mode).
    intercept: Option<Arc<crate::transparent::Intercept>>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    /// To the task that owns the table (table.rs).
    table_tx: mpsc::Sender<table::Msg>,
    table_rx: Mutex<Option<mpsc::Receiver<table::Msg>>>,
    /// The table as it was after its last change.
    snapshot: watch::Receiver<Arc<BTreeMap<HostName, PeerView>>>,
    snapshot_tx: watch::Sender<Arc<BTreeMap<HostName, PeerView>>>,
    /// Hosts being verified now, so that gossip does not dial them twice.
    pending: Mutex<BTreeSet<HostName>>,
    /// Addresses whose check failed, with their backoff.
    failed: Mutex<HashMap<String, gossip::Failed>>,
    checks: Arc<tokio::sync::Semaphore>,
    /// Announced hosts waiting to be looked at by the learner task.
    learn_tx: mpsc::Sender<(HostName, String, Source)>,
    learn_rx: Mutex<Option<mpsc::Receiver<(HostName, String, Source)>>>,
    /// Announcements, checks and face bindings not finished yet; `idle` is
    /// notified when this drops to zero (what a join waits for).
    in_flight: AtomicUsize,
    idle: Notify,
}

impl Mesh {
    /// An empty table for `config`.
    pub fn new(
        config: &Config,
        tls: Arc<Tls>,
        metrics: Arc<Metrics>,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) -> Arc<Mesh> {
        let (learn_tx, learn_rx) = mpsc::channel(MAX_LEARN_QUEUE);
        let (table_tx, table_rx) = mpsc::channel(MAX_TABLE_QUEUE);
        let (snapshot_tx, snapshot) = watch::channel(Arc::new(BTreeMap::new()));
        Arc::new(Mesh {
            learn_tx,
            learn_rx: Mutex::new(Some(learn_rx)),
            table_tx,
            table_rx: Mutex::new(Some(table_rx)),
            snapshot,
            snapshot_tx,
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
            metrics: metrics.clone(),
            memories: Arc::default(),
            intercept: (config.interception == crate::config::Interception::Transparent)
                .then(|| crate::transparent::Intercept::new(config, metrics.clone())),
            cancel,
            tracker,
            pending: Mutex::new(BTreeSet::new()),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
        })
    }

    /// The hosts to tell others about: this one first, then the table.
    pub fn known(&self) -> Vec<(String, String)> {
        let mut v = vec![(self.host.to_string(), self.advertise.clone())];
        v.extend(
            self.snapshot
                .borrow()
                .iter()
                .map(|(h, e)| (h.to_string(), e.address.clone())),
        );
        v
    }

    /// The hosts learnt through gossip, (host, address): what an upgrade
    /// hands the next process.
    pub fn learnt(&self) -> Vec<(String, String)> {
        self.snapshot
            .borrow()
            .iter()
            .filter(|(_, v)| !v.fixed)
            .map(|(h, v)| (h.to_string(), v.address.clone()))
            .collect()
    }

    /// Transparent mode's interception, if configured.
    pub fn intercept(&self) -> Option<&Arc<crate::transparent::Intercept>> {
        self.intercept.as_ref()
    }

    /// Every host in the table with its face.
    pub fn faces(&self) -> Vec<(HostName, Arc<face::Face>)> {
        self.snapshot
            .borrow()
            .iter()
            .map(|(h, v)| (h.clone(), v.face.clone()))
            .collect()
    }

    /// Changes to the table.
    pub fn subscribe(&self) -> watch::Receiver<Arc<BTreeMap<HostName, PeerView>>> {
        self.snapshot.clone()
    }

    /// What the distribution firewall remembers per node pair.
    pub fn memories(&self) -> &Arc<Memories> {
        &self.memories
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

    /// One more piece of work a join waits for.
    fn work_started(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    /// One piece of work done; wakes a join when none is left.
    fn work_done(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Waits until no announcement, check or face binding is in flight, or
    /// `until` passes.
    async fn settled(&self, until: tokio::time::Instant) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(until) => return,
                _ = self.cancel.cancelled() => return,
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
        let end = tokio::time::Instant::now() + JOIN_MAX;
        loop {
            let before = self.snapshot.borrow().len();
            self.gossip_round().await;
            self.settled(end).await;
            if self.snapshot.borrow().len() == before || tokio::time::Instant::now() >= end {
                break;
            }
        }
        info!(
            peers = self.snapshot.borrow().len(),
            "joined through seeds; settling {:?} so every host's resolver sees this one", JOIN_SETTLE
        );
        // Hosts that joined at the same moment learn of each other from the
        // seeds meanwhile: keep exchanging while settling.
        let settled = tokio::time::Instant::now() + JOIN_SETTLE;
        while tokio::time::Instant::now() < settled {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(JOIN_SETTLE_ROUND) => {}
            }
            let _ = tokio::time::timeout_at(settled, self.gossip_round()).await;
        }
    }
}
