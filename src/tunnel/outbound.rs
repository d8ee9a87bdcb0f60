//! A local node's connection to a node on another host: read its
//! send_name, check that it speaks for this host and may reach that peer,
//! dial the peer's erlmesh with the frame along, and carry the bytes
//! through the record layer until either side ends (or the peer's
//! certificate is revoked).

use crate::mesh::face::Face;
use crate::mesh::policy::short;
use crate::tunnel::dist_handshake;
use crate::tunnel::preface::TunnelStatus;
use crate::tunnel::record::{self, until_revoked};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::{debug, info, warn, Instrument};

/// How long a local node may take to send its first handshake message.
pub const SEND_NAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Carries one local node's connection to remote node `node` of `face`'s
/// peer host.
pub async fn carry(face: Arc<Face>, local: TcpStream, node: String) {
    face.carry(local, node).await
}

impl Face {
    /// Carries one local node's connection to remote node `node`.
    pub async fn carry(self: Arc<Self>, mut local: TcpStream, node: String) {
        let remote_node = format!("{node}@{}", self.dialer.host);
        let span = tracing::info_span!("tunnel", dir = "out", peer = %self.dialer.host, to = %remote_node, from = tracing::field::Empty);
        async move {
            let (send_name, raw) = match timeout(SEND_NAME_TIMEOUT, dist_handshake::read_send_name(&mut local)).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    warn!(error = %e, "local connection did not start with a distribution handshake; closed");
                    return;
                }
                Err(_) => {
                    warn!("local connection sent no handshake within {SEND_NAME_TIMEOUT:?}; closed");
                    return;
                }
            };
            tracing::Span::current().record("from", send_name.node.as_str());
            let own = crate::hostname::HostName::parse(send_name.host()).is_ok_and(|h| h == *self.own_host);
            if !own {
                warn!(
                    claimed = %send_name.node,
                    "refused: a local node may only dial out under this host's name {:?}", self.own_host
                );
                self.dialer.metrics().identity_refused(&self.dialer.host);
                return;
            }
            if !self.policy.allows_local(short(&send_name.node)) {
                warn!(claimed = %send_name.node, "refused: the peer's config does not allow this local node");
                self.dialer.metrics().identity_refused(&self.dialer.host);
                return;
            }
            let (status, remote) = match self.dialer.tunnel(&node, &raw).await {
                Ok(v) => v,
                Err(e) => {
                    warn!(error = %e, "tunnel to the peer failed");
                    return;
                }
            };
            if status != TunnelStatus::Ok {
                info!(?status, "peer refused the tunnel");
                return;
            }
            let guard = self
                .dialer
                .metrics()
                .tunnel(&self.dialer.host, &send_name.node, &remote_node, "out");
            let (out_c, back_c) = guard.byte_counters();
            debug!(resumed = remote.resumed, "tunnel open");
            let carried = record::splice(local, remote.tcp, remote.tx, remote.rx, |o, b| {
                out_c.inc_by(o);
                back_c.inc_by(b);
            });
            let result = until_revoked(&remote.live, carried).await;
            record::log_end(&result);
        }
        .instrument(span)
        .await
    }
}
