//! What erlmesh counts: Prometheus metrics, and the peer and tunnel state
//! `erlmesh status` shows.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Direction {
    /// From local nodes to the peer.
    Out,
    /// From the peer to local nodes.
    In,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    pub peer: String,
    pub direction: Direction,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DistRefusedLabels {
    pub peer: String,
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DistOpLabels {
    pub peer: String,
    pub op: String,
    pub target: String,
    pub verdict: String,
}

/// Distinct (peer, operation, target, verdict) series audit mode creates;
/// beyond this, targets are counted as `(other)`.
pub const MAX_DIST_SERIES: usize = 4096;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub request: String,
}

/// What erlmesh knows of one peer host, for `erlmesh status`.
#[derive(Debug, Clone, Default)]
pub struct PeerStatus {
    /// The last successful TLS connection with it (Unix milliseconds).
    pub last_ok: Option<i64>,
    /// The last failure to reach it (Unix milliseconds, reason).
    pub last_error: Option<(i64, String)>,
    /// When its certificate expires, as last seen (Unix seconds).
    pub cert_not_after: Option<i64>,
}

/// All counters and state, shared by every task.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub tunnels_open: Family<PeerLabels, Gauge>,
    pub bytes: Family<BytesLabels, Counter>,
    pub handshake_failures: Family<ReasonLabels, Counter>,
    pub identity_refusals: Family<PeerLabels, Counter>,
    pub epmd_requests: Family<RequestLabels, Counter>,
    /// Transparent mode: connections the kernel redirected, by kind.
    pub redirected: Family<KindLabels, Counter>,
    pub refused: Family<ReasonLabels, Counter>,
    pub dist_refused: Family<DistRefusedLabels, Counter>,
    pub dist_ops: Family<DistOpLabels, Counter>,
    dist_series: std::sync::atomic::AtomicUsize,
    /// peer -> its dist policy as status shows it.
    dist_policies: Mutex<BTreeMap<String, String>>,
    cert_expiry: Gauge,
    own_not_after: AtomicI64,
    /// Every listener bound and the join done: what `status` says first.
    ready: std::sync::atomic::AtomicBool,
    peers: Mutex<BTreeMap<String, PeerStatus>>,
    /// Announced hosts whose check failed: at most [`MAX_UNVERIFIED`],
    /// each shown for [`UNVERIFIED_TTL_SECS`]. host -> (ms, address, why).
    unverified: Mutex<BTreeMap<String, (i64, String, String)>>,
    /// (local node, remote node, direction) -> open tunnels.
    pairs: Mutex<BTreeMap<(String, String, &'static str), u64>>,
}

/// A counter as an upgrade hands it over: name, labels, value.
pub type CounterValue = (String, BTreeMap<String, String>, u64);

/// One counter line of the text encoding: `name{k="v",...} value`.
fn parse_counter(line: &str) -> Option<CounterValue> {
    if line.starts_with('#') {
        return None;
    }
    let (head, value) = line.rsplit_once(' ')?;
    let value: u64 = value.parse().ok()?;
    let (name, labels) = match head.split_once('{') {
        Some((n, rest)) => (n, rest.strip_suffix('}')?),
        None => (head, ""),
    };
    if !name.ends_with("_total") {
        return None;
    }
    let mut l = BTreeMap::new();
    for pair in labels.split("\",").filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once("=\"")?;
        l.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
    }
    Some((name.to_owned(), l, value))
}

/// Announced hosts whose failed check `erlmesh status` shows, at most.
pub const MAX_UNVERIFIED: usize = 64;
/// How long a failed check of an announced host stays in the status.
pub const UNVERIFIED_TTL_SECS: i64 = 600;

/// Seconds in a day, for certificate lifetimes shown in days.
pub const SECS_PER_DAY: i64 = 86_400;
/// A certificate closer than this to its expiry is warned about (at
/// start, on reload, and by `erlmesh doctor`).
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// Unix seconds.
pub fn now() -> i64 {
    now_ms() / 1000
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Metrics {
    /// Fresh metrics; `peers` are listed in status from the start.
    pub fn new<'a>(peers: impl IntoIterator<Item = &'a str>) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("erlmesh");
        let tunnels_open = Family::<PeerLabels, Gauge>::default();
        let bytes = Family::<BytesLabels, Counter>::default();
        let handshake_failures = Family::<ReasonLabels, Counter>::default();
        let identity_refusals = Family::<PeerLabels, Counter>::default();
        let epmd_requests = Family::<RequestLabels, Counter>::default();
        let redirected = Family::<KindLabels, Counter>::default();
        registry.register(
            "redirected_connections",
            "Transparent mode: local connections the kernel redirected to erlmesh, by kind (epmd, dist, unknown)",
            redirected.clone(),
        );
        let cert_expiry = Gauge::default();
        let refused = Family::<ReasonLabels, Counter>::default();
        let dist_refused = Family::<DistRefusedLabels, Counter>::default();
        let dist_ops = Family::<DistOpLabels, Counter>::default();
        registry.register(
            "dist_refused",
            "Distribution operations a dist policy refused, per peer host and operation",
            dist_refused.clone(),
        );
        registry.register(
            "dist_operations",
            "Distribution operations seen under an audit-mode dist policy (and refusals in enforce mode), per peer host, operation, target and verdict",
            dist_ops.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections on the TLS port closed before TLS, by reason",
            refused.clone(),
        );
        registry.register("tunnels_open", "Tunnels open, per peer host", tunnels_open.clone());
        registry.register("bytes", "Bytes carried, per peer host and direction", bytes.clone());
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed, by reason",
            handshake_failures.clone(),
        );
        registry.register(
            "identity_refusals",
            "Tunnels refused because a node spoke for a host not its own or not allowed",
            identity_refusals.clone(),
        );
        registry.register("epmd_requests", "EPMD requests served, by type", epmd_requests.clone());
        registry.register(
            "cert_expiry_seconds",
            "Seconds until this host's certificate expires",
            cert_expiry.clone(),
        );
        let peers = peers
            .into_iter()
            .map(|p| (p.to_owned(), PeerStatus::default()))
            .collect();
        Arc::new(Metrics {
            registry,
            tunnels_open,
            bytes,
            handshake_failures,
            refused,
            dist_refused,
            dist_ops,
            dist_series: std::sync::atomic::AtomicUsize::new(0),
            dist_policies: Mutex::new(BTreeMap::new()),
            identity_refusals,
            epmd_requests,
            redirected,
            cert_expiry,
            own_not_after: AtomicI64::new(0),
            ready: std::sync::atomic::AtomicBool::new(false),
            peers: Mutex::new(peers),
            unverified: Mutex::new(BTreeMap::new()),
            pairs: Mutex::new(BTreeMap::new()),
        })
    }

    /// A tunnel with `peer` runs under `policy`: status shows it.
    pub fn dist_policy_in_use(&self, peer: &str, policy: &crate::firewall::DistPolicy) {
        let shown = format!("{}({})", policy.name, policy.mode.as_str());
        self.dist_policies
            .lock()
            .expect("metrics lock")
            .insert(peer.to_owned(), shown);
    }

    /// Counts one judged operation: refusals in enforce mode, everything
    /// in audit mode (by target, within [`MAX_DIST_SERIES`]).
    pub fn dist_operation(
        &self,
        peer: &str,
        policy: &crate::firewall::DistPolicy,
        op: &str,
        target: &crate::firewall::rules::Target,
        refused: bool,
    ) {
        if policy.mode == crate::firewall::Mode::Enforce {
            self.dist_refused
                .get_or_create(&DistRefusedLabels {
                    peer: peer.to_owned(),
                    op: op.to_owned(),
                })
                .inc();
            return;
        }
        let mut labels = DistOpLabels {
            peer: peer.to_owned(),
            op: op.to_owned(),
            target: target.to_string(),
            verdict: if refused { "would_refuse" } else { "allowed" }.to_owned(),
        };
        if self.dist_ops.get(&labels).is_none() && self.dist_series.fetch_add(1, Ordering::Relaxed) >= MAX_DIST_SERIES {
            self.dist_series.fetch_sub(1, Ordering::Relaxed);
            labels.target = "(other)".to_owned();
        }
        self.dist_ops.get_or_create(&labels).inc();
    }

    /// Records when this host's certificate expires.
    pub fn set_own_not_after(&self, t: i64) {
        self.own_not_after.store(t, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        self.cert_expiry.set(self.own_not_after.load(Ordering::Relaxed) - now());
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }

    /// Every counter with its labels and value, from the text encoding:
    /// what an upgrade hands the next process.
    pub fn counters(&self) -> Vec<CounterValue> {
        self.encode().lines().filter_map(parse_counter).collect()
    }

    /// Adds counters a previous process counted (unknown ones are skipped).
    pub fn add_counters(&self, counters: &[CounterValue]) {
        for (name, l, v) in counters {
            let get = |k: &str| l.get(k).cloned().unwrap_or_default();
            match name.as_str() {
                "erlmesh_bytes_total" => {
                    let direction = if get("direction") == "Out" {
                        Direction::Out
                    } else {
                        Direction::In
                    };
                    self.bytes
                        .get_or_create(&BytesLabels {
                            peer: get("peer"),
                            direction,
                        })
                        .inc_by(*v);
                }
                "erlmesh_tls_handshake_failures_total" => {
                    self.handshake_failures
                        .get_or_create(&ReasonLabels { reason: get("reason") })
                        .inc_by(*v);
                }
                "erlmesh_connections_refused_total" => {
                    self.refused
                        .get_or_create(&ReasonLabels { reason: get("reason") })
                        .inc_by(*v);
                }
                "erlmesh_identity_refusals_total" => {
                    self.identity_refusals
                        .get_or_create(&PeerLabels { peer: get("peer") })
                        .inc_by(*v);
                }
                "erlmesh_epmd_requests_total" => {
                    self.epmd_requests
                        .get_or_create(&RequestLabels {
                            request: get("request"),
                        })
                        .inc_by(*v);
                }
                "erlmesh_redirected_connections_total" => {
                    self.redirected
                        .get_or_create(&KindLabels { kind: get("kind") })
                        .inc_by(*v);
                }
                "erlmesh_dist_refused_total" => {
                    self.dist_refused
                        .get_or_create(&DistRefusedLabels {
                            peer: get("peer"),
                            op: get("op"),
                        })
                        .inc_by(*v);
                }
                _ => {}
            }
        }
    }

    /// Counts one EPMD request.
    pub fn epmd_request(&self, kind: &str) {
        self.epmd_requests
            .get_or_create(&RequestLabels {
                request: kind.to_owned(),
            })
            .inc();
    }

    /// Counts a connection redirected by the kernel (transparent mode).
    pub fn redirect(&self, kind: &str) {
        self.redirected
            .get_or_create(&KindLabels { kind: kind.to_owned() })
            .inc();
    }

    /// Every listener is bound and the join is done.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Counts a connection refused before TLS.
    pub fn refused(&self, reason: &str) {
        self.refused
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a failed TLS handshake.
    pub fn handshake_failed(&self, reason: &str) {
        self.handshake_failures
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a tunnel refused because a node spoke for a host not its own,
    /// or for a pair the policies do not allow.
    pub fn identity_refused(&self, peer: &str) {
        self.identity_refusals
            .get_or_create(&PeerLabels { peer: peer.to_owned() })
            .inc();
    }

    /// Notes a successful TLS connection with `peer`, and when the
    /// certificate it presented there expires.
    pub fn peer_connected(&self, peer: &str, conn: &rustls::CommonState) {
        let not_after = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| crate::tls::cert_not_after(c).ok());
        self.peer_ok(peer, not_after);
    }

    /// Notes a successful connection with `peer`.
    pub fn peer_ok(&self, peer: &str, cert_not_after: Option<i64>) {
        let mut peers = self.peers.lock().expect("metrics lock");
        let p = peers.entry(peer.to_owned()).or_default();
        p.last_ok = Some(now_ms());
        if cert_not_after.is_some() {
            p.cert_not_after = cert_not_after;
        }
    }

    /// Notes a failure to reach `peer`.
    pub fn peer_error(&self, peer: &str, reason: String) {
        self.peers
            .lock()
            .expect("metrics lock")
            .entry(peer.to_owned())
            .or_default()
            .last_error = Some((now_ms(), reason));
    }

    /// Notes an announced host whose check failed (bounded, expiring).
    pub fn unverified(&self, host: &str, address: &str, reason: String) {
        let mut u = self.unverified.lock().expect("metrics lock");
        let now = now_ms();
        u.retain(|_, (t, _, _)| now - *t < UNVERIFIED_TTL_SECS * 1000);
        if u.len() >= MAX_UNVERIFIED && !u.contains_key(host) {
            // Make room by dropping the oldest entry.
            if let Some(oldest) = u.iter().min_by_key(|(_, (t, _, _))| *t).map(|(h, _)| h.clone()) {
                u.remove(&oldest);
            }
        }
        u.insert(host.to_owned(), (now, address.to_owned(), reason));
    }

    /// A host entered the peer table: no longer unverified.
    pub fn verified(&self, host: &str) {
        self.unverified.lock().expect("metrics lock").remove(host);
    }

    /// A host left the peer table: its status goes too.
    pub fn forget(&self, host: &str) {
        self.peers.lock().expect("metrics lock").remove(host);
    }

    /// Counts an open tunnel until the guard is dropped.
    pub fn tunnel(self: &Arc<Self>, peer: &str, local: &str, remote: &str, dir: &'static str) -> TunnelGuard {
        self.tunnels_open
            .get_or_create(&PeerLabels { peer: peer.to_owned() })
            .inc();
        let key = (local.to_owned(), remote.to_owned(), dir);
        *self.pairs.lock().expect("metrics lock").entry(key.clone()).or_default() += 1;
        TunnelGuard {
            metrics: self.clone(),
            peer: peer.to_owned(),
            key,
        }
    }

    /// The status report `erlmesh status` prints.
    pub fn status(&self, host: &str) -> String {
        let now = now();
        let state = if self.ready.load(Ordering::Relaxed) {
            "ready"
        } else {
            "starting"
        };
        let mut s = format!("erlmesh on {host}\nstate: {state}\n\npeers:\n");
        let open: BTreeMap<String, i64> = self
            .peers
            .lock()
            .expect("metrics lock")
            .keys()
            .map(|p| {
                (
                    p.clone(),
                    self.tunnels_open.get_or_create(&PeerLabels { peer: p.clone() }).get(),
                )
            })
            .collect();
        for (name, p) in self.peers.lock().expect("metrics lock").iter() {
            let state = match (p.last_ok, &p.last_error) {
                (Some(ok), Some((err, _))) if *err > ok => "unreachable",
                (Some(_), _) => "connected",
                (None, Some(_)) => "unreachable",
                (None, None) => "not yet contacted",
            };
            let state = if open.get(name).copied().unwrap_or(0) > 0 {
                "connected"
            } else {
                state
            };
            s.push_str(&format!(
                "  {name:<24} {state:<18} tunnels={}",
                open.get(name).copied().unwrap_or(0)
            ));
            if let Some(na) = p.cert_not_after {
                s.push_str(&format!(" cert_expires_in_days={}", (na - now) / SECS_PER_DAY));
            }
            if let Some(dp) = self.dist_policies.lock().expect("metrics lock").get(name) {
                let refused: u64 = self.dist_refused_of(name);
                s.push_str(&format!(" dist_policy={dp} dist_refused={refused}"));
            }
            if let Some((t, why)) = &p.last_error {
                s.push_str(&format!(" last_error=\"{why}\" ({}s ago)", now - t / 1000));
            }
            s.push('\n');
        }
        let mut u = self.unverified.lock().expect("metrics lock");
        u.retain(|_, (t, _, _)| now * 1000 - *t < UNVERIFIED_TTL_SECS * 1000);
        if !u.is_empty() {
            s.push_str(&format!(
                "\nannounced, not verified (last {UNVERIFIED_TTL_SECS} s, at most {MAX_UNVERIFIED}):\n"
            ));
            for (h, (t, a, why)) in u.iter() {
                s.push_str(&format!("  {h:<24} {a:<24} \"{why}\" ({}s ago)\n", now - t / 1000));
            }
        }
        drop(u);
        let redirects: Vec<String> = ["epmd", "dist", "unknown"]
            .iter()
            .filter_map(|k| {
                let n = self.redirected.get(&KindLabels { kind: (*k).to_owned() })?.get();
                Some(format!("{k}={n}"))
            })
            .collect();
        if !redirects.is_empty() {
            s.push_str(&format!("\nredirected by the kernel: {}\n", redirects.join(" ")));
        }
        s.push_str("\ntunnels (local node, remote node, direction, open):\n");
        for ((l, r, d), n) in self.pairs.lock().expect("metrics lock").iter() {
            s.push_str(&format!("  {l:<28} {r:<28} {d:<4} {n}\n"));
        }
        s
    }
}

impl Metrics {
    /// Operations refused for `peer` so far, all kinds.
    fn dist_refused_of(&self, peer: &str) -> u64 {
        crate::firewall::rules::OPS
            .iter()
            .filter_map(|op| {
                self.dist_refused.get(&DistRefusedLabels {
                    peer: peer.to_owned(),
                    op: (*op).to_owned(),
                })
            })
            .map(|c| c.get())
            .sum()
    }
}

/// Ends a tunnel's accounting when dropped.
pub struct TunnelGuard {
    metrics: Arc<Metrics>,
    peer: String,
    key: (String, String, &'static str),
}

impl TunnelGuard {
    /// Counters for the bytes of this tunnel: (local to peer, peer to local).
    pub fn byte_counters(&self) -> (Counter, Counter) {
        let get = |direction| {
            self.metrics
                .bytes
                .get_or_create(&BytesLabels {
                    peer: self.peer.clone(),
                    direction,
                })
                .clone()
        };
        (get(Direction::Out), get(Direction::In))
    }
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        self.metrics
            .tunnels_open
            .get_or_create(&PeerLabels {
                peer: self.peer.clone(),
            })
            .dec();
        let mut pairs = self.metrics.pairs.lock().expect("metrics lock");
        if let Some(n) = pairs.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                pairs.remove(&self.key);
            }
        }
    }
}

/// A short, stable reason for a TLS failure, for the metrics label.
pub fn tls_reason(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    match e.get_ref().and_then(|i| i.downcast_ref::<Error>()) {
        Some(Error::InvalidCertificate(c)) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "cert_expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => "cert_not_yet_valid",
            CertificateError::UnknownIssuer => "cert_unknown_issuer",
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => "cert_wrong_name",
            _ => "cert_invalid",
        },
        Some(Error::NoCertificatesPresented) => "no_client_cert",
        Some(Error::PeerIncompatible(_)) => "incompatible",
        Some(Error::InvalidMessage(_)) => "not_tls",
        Some(Error::AlertReceived(_)) => "alert_received",
        Some(_) => "other",
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => "disconnected",
        None => "io",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_carry_over_to_a_new_process() {
        let m = Metrics::new(["hostb"]);
        m.bytes
            .get_or_create(&BytesLabels {
                peer: "hostb".into(),
                direction: Direction::Out,
            })
            .inc_by(1234);
        m.epmd_request("PORT_PLEASE2");
        m.refused("per_source_limit");
        m.redirect("dist");
        let counters = m.counters();
        assert!(counters.len() >= 4, "{counters:?}");
        let next = Metrics::new(["hostb"]);
        next.add_counters(&counters);
        assert_eq!(next.counters(), counters);
        assert!(next
            .encode()
            .contains("erlmesh_bytes_total{peer=\"hostb\",direction=\"Out\"} 1234"));
    }
}
