//! Tunnels an upgrade handed over (`erlmesh upgrade`): carried on from the
//! record where the previous process stopped, under the same checks
//! (revocation of the peer's certificate included) and counted again.

use crate::ops::metrics::Metrics;
use crate::tls::Tls;
use crate::tunnel::record;
use crate::upgrade::TunnelState;
use rustls::pki_types::CertificateDer;
use std::sync::Arc;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

/// Starts every tunnel the previous process handed over.
pub fn spawn_all(tls: &Arc<Tls>, metrics: &Arc<Metrics>, tracker: &TaskTracker) {
    let tunnels = crate::upgrade::take::tunnels();
    if !tunnels.is_empty() {
        info!(
            tunnels = tunnels.len(),
            "carrying on the tunnels the previous process handed over"
        );
    }
    for (state, local, remote) in tunnels {
        let (tls, metrics) = (tls.clone(), metrics.clone());
        tracker.spawn(resume(state, local, remote, tls, metrics));
    }
}

async fn resume(
    state: TunnelState,
    local: std::net::TcpStream,
    remote: std::net::TcpStream,
    tls: Arc<Tls>,
    metrics: Arc<Metrics>,
) {
    let m = state.meta.clone();
    let span =
        tracing::info_span!("tunnel", dir = %m.dir, peer = %m.peer, local = %m.local_node, remote = %m.remote_node);
    async move {
        let parts = record::state::import(&state.record).and_then(|(tx, rx)| {
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
        let chain: Vec<CertificateDer<'static>> = m.chain.iter().map(|c| CertificateDer::from(c.clone())).collect();
        let server_name = m.server_name.as_deref().and_then(|n| crate::tls::server_name(n).ok());
        let live = tls.register_chain(&m.peer, chain, server_name);
        let dir: &'static str = if m.dir == "out" { "out" } else { "in" };
        let guard = metrics.tunnel(&m.peer, &m.local_node, &m.remote_node, dir);
        let (out_c, back_c) = guard.byte_counters();
        let result = record::splice_from(
            local,
            remote,
            tx,
            rx,
            |o, b| {
                out_c.inc_by(o);
                back_c.inc_by(b);
            },
            None,
            live.cancelled(),
            Some(m.clone()),
            (state.out_done, state.back_done),
        )
        .await;
        record::log_end(&result);
    }
    .instrument(span)
    .await
}
