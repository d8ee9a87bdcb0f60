//! Gossip: exchanging the hosts each erlmesh knows, and checking announced
//! hosts before the table takes them, within the bounds in `mesh/mod.rs`.

use super::{
    Mesh, Source, FAILED_BACKOFF_MAX, FAILED_BACKOFF_MIN, GOSSIP_FANOUT, GOSSIP_INTERVAL, MAX_CHECKS_PER_ROUND,
    MAX_FAILED_ADDRESSES, MAX_HOSTS_PER_HELLO, MAX_PEERS, MAX_PENDING_CHECKS, MAX_SEED_ADDRESSES, SEED_RESOLVE_TIMEOUT,
};
use crate::hostname::HostName;
use crate::tunnel::dial::Dialer;
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, warn};

/// An address whose check failed, and when it may be dialled again.
pub(super) struct Failed {
    failures: u32,
    retry_at: Instant,
}

impl Mesh {
    /// Takes note of `host` at `address`, announced by `source`; the
    /// learner task checks it (see [`Mesh::learner`]). A name that is not
    /// a host name is dropped here.
    pub fn learn(&self, host: &str, address: &str, source: Source) {
        let Ok(host) = HostName::parse(host) else {
            debug!(host = %host.escape_debug(), "announced name is not a host name; ignored");
            return;
        };
        if host == self.host {
            return;
        }
        self.work_started();
        if self.learn_tx.try_send((host, address.to_owned(), source)).is_err() {
            self.work_done();
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
    fn skip_reason(&self, host: &HostName, address: &str, source: Source) -> Option<&'static str> {
        if self.static_peers.iter().any(|p| &p.host == host) {
            return Some("a configured peer keeps its configured address");
        }
        {
            let table = self.snapshot.borrow();
            match table.get(host) {
                Some(e) if e.address == address => return Some("known at that address"),
                Some(_) if source == Source::Gossip => return Some("a verified host is re-addressed only by itself"),
                None if table.len() >= MAX_PEERS => return Some("peer table full"),
                _ => {}
            }
        }
        if self.backing_off(address) {
            return Some("that address failed recently");
        }
        None
    }

    /// Looks at announced hosts and checks, within the bounds, those that
    /// could enter the table (or move, when announced by themselves).
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
            if Instant::now() >= refill {
                budget = MAX_CHECKS_PER_ROUND;
                refill = Instant::now() + GOSSIP_INTERVAL;
            }
            let skip = self.skip_reason(&host, &address, source).or(if budget == 0 {
                Some("check budget of this round spent; the host comes back with later gossip")
            } else {
                None
            });
            if let Some(why) = skip {
                debug!(%host, %address, ?source, why, "announced host not checked");
                self.work_done();
                continue;
            }
            {
                let mut pending = self.pending.lock().expect("pending lock");
                if pending.len() >= MAX_PENDING_CHECKS || !pending.insert(host.clone()) {
                    drop(pending);
                    self.work_done();
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
                mesh.work_done();
            });
        }
    }

    /// Dials `host` at `address` checking that its certificate names it;
    /// on success the table is told and what the host knows is learnt.
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
                self.proven(host.clone(), address.to_owned()).await;
                self.learn_list(host, hosts);
            }
            Err(e) => {
                debug!(%host, %address, error = %e, "announced host not verified");
                self.note_failure(address);
                self.metrics.unverified(host, address, e.to_string());
            }
        }
    }

    /// Every address the seeds resolve to (a headless Service's name gives
    /// one per pod), at most [`MAX_SEED_ADDRESSES`] per seed.
    async fn seed_addresses(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for seed in &self.seeds {
            match tokio::time::timeout(SEED_RESOLVE_TIMEOUT, tokio::net::lookup_host(seed.as_str())).await {
                Ok(Ok(addrs)) => {
                    for a in addrs.take(MAX_SEED_ADDRESSES) {
                        let a = a.to_string();
                        if !out.contains(&a) {
                            out.push(a);
                        }
                    }
                }
                Ok(Err(e)) => debug!(%seed, error = %e, "cannot resolve the seed"),
                Err(_) => debug!(%seed, "the seed did not resolve within {SEED_RESOLVE_TIMEOUT:?}"),
            }
        }
        out
    }

    /// One exchange with every seed address and [`GOSSIP_FANOUT`] random
    /// peers.
    pub async fn gossip_round(self: &Arc<Self>) {
        let mut targets: Vec<Dialer> = self
            .seed_addresses()
            .await
            .iter()
            .map(|s| Dialer::seed(s, self.tls.clone(), self.metrics.clone()))
            .collect();
        let mut known: Vec<(HostName, String)> = self
            .snapshot
            .borrow()
            .iter()
            .map(|(h, e)| (h.clone(), e.address.clone()))
            .collect();
        for _ in 0..GOSSIP_FANOUT.min(known.len()) {
            let (h, a) = known.swap_remove(fastrand::usize(..known.len()));
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
                Ok((names, hosts)) if d.is_seed() => {
                    // The handshake proved the seed's name; its own entry
                    // comes first in its answer, with the address it
                    // advertises (a pod's own name, where the seed address
                    // is a Service's): that address is checked like any
                    // announcement the host makes of itself.
                    // A seed whose answer does not lead with itself is
                    // taken at the address its handshake just proved.
                    if let Some(name) = names.first() {
                        match hosts.first() {
                            Some((h, a)) if HostName::parse(h).as_ref() == Ok(name) && *a != d.address => {
                                self.learn(h, a, Source::Itself)
                            }
                            _ => self.proven(name.clone(), d.address.clone()).await,
                        }
                    }
                    self.learn_list(&d.address, hosts);
                }
                Ok((_, hosts)) => {
                    if let Ok(host) = HostName::parse(&d.host) {
                        // The handshake just proved the name at the address
                        // the table has: no second dial.
                        self.proven(host, d.address.clone()).await;
                    }
                    self.learn_list(&d.address, hosts);
                }
                Err(e) => {
                    debug!(peer = %d.host, error = %e, "gossip failed");
                    if let (false, Ok(host)) = (d.is_seed(), HostName::parse(&d.host)) {
                        self.unreachable(host).await;
                    }
                }
            }
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
