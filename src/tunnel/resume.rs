//! Tunnels an upgrade handed over (`erlmesh upgrade`): carried on from the
//! record where the previous process stopped, under the same checks
//! (revocation of the peer's certificate included) and counted again.

use crate::firewall::filter::{Firewall, Inbound, Outbound};
use crate::mesh::Mesh;
use crate::ops::metrics::Metrics;
use crate::tls::Tls;
use crate::tunnel::record;
use crate::upgrade::TunnelState;
use rustls::pki_types::CertificateDer;
use std::sync::Arc;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// Starts every tunnel the previous process handed over.
pub fn spawn_all(tls: &Arc<Tls>, metrics: &Arc<Metrics>, mesh: &Arc<Mesh>, tracker: &TaskTracker) {
    let tunnels = crate::upgrade::take::tunnels();
    if !tunnels.is_empty() {
        info!(
            tunnels = tunnels.len(),
            "carrying on the tunnels the previous process handed over"
        );
    }
    for (state, local, remote) in tunnels {
        let (tls, metrics, mesh) = (tls.clone(), metrics.clone(), mesh.clone());
        tracker.spawn(resume(state, local, remote, tls, metrics, mesh));
    }
}

async fn resume(
    state: TunnelState,
    local: std::net::TcpStream,
    remote: std::net::TcpStream,
    tls: Arc<Tls>,
    metrics: Arc<Metrics>,
    mesh: Arc<Mesh>,
) {
    let m = state.meta.clone();
    let span =
        tracing::info_span!("tunnel", dir = %m.dir, peer = %m.peer, local = %m.local_node, remote = %m.remote_node);
    crate::tunnel::span::in_span(span, |q| async move {
        let judging = match judging(&state, &m, &metrics, &mesh) {
            Ok(j) => j,
            Err(e) => {
                warn!(error = %e, "a handed-over tunnel's firewall state could not be taken; closed");
                return;
            }
        };
        let parts = record::state::import(&state.record, tls.current().record.provider).and_then(|(tx, rx)| {
            Ok((
                tokio::net::TcpStream::from_std(local)?,
                tokio::net::TcpStream::from_std(remote)?,
                tx,
                rx,
            ))
        });
        let (local, remote, tx, rx) = match parts {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "a handed-over tunnel could not be carried on; closed");
                return;
            }
        };
        let firewall = match judging {
            Judging::Unjudged => None,
            Judging::Judged(f) => Some(*f),
            Judging::Refused => {
                let e = record::access_denied(
                    "the config now holds the peer to a dist policy this tunnel was opened without",
                );
                warn!(
                    error = %e,
                    "a handed-over tunnel cannot be judged from the middle of its stream: closed (the node's connection reset), so that its nodes reconnect under the policy"
                );
                record::refuse(local, remote, tx, &e).await;
                return;
            }
        };
        let chain: Vec<CertificateDer<'static>> = m.chain.iter().map(|c| CertificateDer::from(c.clone())).collect();
        let server_name = m.server_name.as_deref().and_then(|n| crate::tls::server_name(n).ok());
        let live = tls.register_chain(&m.peer, chain, server_name);
        let dir: &'static str = if m.dir == "out" { "out" } else { "in" };
        let guard = metrics.tunnel(&m.peer, &m.local_node, &m.remote_node, dir);
        let (out_c, back_c) = guard.byte_counters();
        let quiet = firewall.is_none();
        let carried = record::splice_from(
            local,
            remote,
            tx,
            rx,
            |o, b| {
                out_c.inc_by(o);
                back_c.inc_by(b);
            },
            firewall,
            live.cancelled(),
            Some(m.clone()),
            (state.out_done, state.back_done),
        );
        let result = q.carry(quiet, carried).await;
        q.in_span(|| record::log_end(&result));
    })
    .await
}

/// How a handed-over tunnel goes on under this process's config.
enum Judging {
    /// No dist policy for the peer (or no longer: a policy removed).
    Unjudged,
    /// Judged as before, by the peer's dist policy as this config has it.
    Judged(Box<record::Firewalled>),
    /// The config now holds the peer to a dist policy this tunnel was
    /// opened without: the firewall cannot start judging in the middle of
    /// a stream (the nodes' handshake and atom caches are behind it), and
    /// a tightened policy is not left unapplied: the tunnel is closed.
    Refused,
}

/// The firewall of a handed-over tunnel: its judged state under the
/// peer's dist policy as this process's config has it.
fn judging(
    state: &TunnelState,
    m: &crate::upgrade::TunnelMeta,
    metrics: &Arc<Metrics>,
    mesh: &Arc<Mesh>,
) -> std::io::Result<Judging> {
    let policy = crate::hostname::HostName::parse(&m.peer)
        .ok()
        .and_then(|h| mesh.policy_for(&h).dist);
    match (&state.firewall, policy) {
        (None, None) => Ok(Judging::Unjudged),
        (Some(_), None) => {
            warn!("the peer's dist policy is gone from the config: this tunnel is carried unjudged from now on");
            Ok(Judging::Unjudged)
        }
        (None, Some(_)) => Ok(Judging::Refused),
        (Some(fs), Some(policy)) => {
            let pair = mesh.memories().pair(&m.peer, &m.local_node, &m.remote_node);
            let fw = Firewall::new(policy, &m.peer, pair, metrics.clone());
            fw.import(fs.answers.clone(), fs.memory.clone());
            let out = Outbound::import(fw.clone(), fs.outbound.clone())?;
            let inb = Inbound::import(fw.clone(), fs.inbound.clone())?;
            Ok(Judging::Judged(Box::new(record::Firewalled {
                firewall: fw,
                node_dials: m.dir == "out",
                directions: Some((out, inb)),
            })))
        }
    }
}
