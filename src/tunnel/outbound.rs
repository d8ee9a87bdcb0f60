//! A local node's connection to a node on another host: read its
//! send_name, check that it speaks for this host and may reach that peer,
//! dial the peer's erlmesh with the frame along, and carry the bytes
//! through the record layer until either side ends (or the peer's
//! certificate is revoked).

use crate::mesh::face::Face;
use crate::mesh::policy::short;
use crate::tunnel::dist_handshake;
use crate::tunnel::preface::TunnelStatus;
use crate::tunnel::record;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::{debug, info, warn};

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
        crate::tunnel::span::in_span(span, |q| async move {
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
            tracing::Span::current().record("from", send_name.shown().as_str());
            // A dynamic name asks to be named under a host (the machine's
            // own name, unless started as `-sname undefined@HOST`): it too
            // must be this host's, as the peer names it `X@that host`.
            let own = crate::hostname::HostName::parse(send_name.host()).is_ok_and(|h| h == *self.own_host);
            if !own {
                warn!(
                    claimed = %send_name.shown(),
                    "refused: a local node may only dial out under this host's name {:?}{}",
                    self.own_host,
                    if send_name.dynamic {
                        " (for a dynamic name, start the node with -sname undefined@THIS_HOST)"
                    } else {
                        ""
                    }
                );
                self.dialer.metrics().identity_refused(&self.dialer.host);
                return;
            }
            if !send_name.dynamic && !self.policy.allows_local(short(&send_name.node)) {
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
            let mut remote = remote;
            let local_name = if send_name.dynamic {
                // The name the peer's node assigned, checked against this
                // peer's local_nodes before the node learns it.
                match self.assigned_name(&mut remote, &mut local).await {
                    Some(n) => n,
                    None => return,
                }
            } else {
                send_name.node.clone()
            };
            let guard = self
                .dialer
                .metrics()
                .tunnel(&self.dialer.host, &local_name, &remote_node, "out");
            let (out_c, back_c) = guard.byte_counters();
            debug!(resumed = remote.resumed, suite = %remote.suite, "tunnel open");
            let firewall = self.policy.dist.clone().map(|p| record::Firewalled {
                firewall: crate::firewall::filter::Firewall::new(
                    p,
                    &self.dialer.host,
                    self.memories.pair(&self.dialer.host, &local_name, &remote_node),
                    self.dialer.metrics().clone(),
                ),
                node_dials: true,
                directions: None,
            });
            let meta = crate::upgrade::TunnelMeta {
                dir: "out".into(),
                peer: self.dialer.host.clone(),
                local_node: local_name.clone(),
                remote_node: remote_node.clone(),
                chain: std::mem::take(&mut remote.chain),
                server_name: Some(self.dialer.host.clone()),
            };
            let quiet = firewall.is_none();
            let carried = record::splice_from(
                local,
                remote.tcp,
                remote.tx,
                remote.rx,
                |o, b| {
                    out_c.inc_by(o);
                    back_c.inc_by(b);
                },
                firewall,
                remote.live.cancelled(),
                Some(meta),
                (false, false),
            );
            let result = q.carry(quiet, carried).await;
            q.in_span(|| record::log_end(&result));
        })
        .await
    }

    /// For a dynamic name: reads the peer node's `named:` answer, checks the
    /// name it assigns (this host's, and allowed by this peer's
    /// local_nodes), and hands the answer to the local node. None when the
    /// tunnel is refused.
    async fn assigned_name(&self, remote: &mut crate::tunnel::dial::Tunnel, local: &mut TcpStream) -> Option<String> {
        use tokio::io::AsyncWriteExt;
        let answer = match timeout(SEND_NAME_TIMEOUT, remote.rx.first(&mut remote.tcp)).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                info!(error = %e, "the peer closed before its node named this one");
                remote.tx.abort(&mut remote.tcp, &e).await;
                return None;
            }
            Err(_) => {
                warn!("the peer's node did not name this one within {SEND_NAME_TIMEOUT:?}");
                return None;
            }
        };
        let Some(name) = dist_handshake::named_status(&answer) else {
            // Any other status (nok, not_allowed): the node learns it as is.
            let _ = local.write_all(&answer).await;
            return None;
        };
        let ours = name
            .split_once('@')
            .and_then(|(_, h)| crate::hostname::HostName::parse(h).ok())
            .is_some_and(|h| h == *self.own_host);
        if !ours || !self.policy.allows_local(short(&name)) {
            warn!(assigned = %name, "refused: the name the peer assigned is not this host's or not allowed by the peer's config");
            self.dialer.metrics().identity_refused(&self.dialer.host);
            return None;
        }
        tracing::Span::current().record("from", name.as_str());
        local.write_all(&answer).await.ok()?;
        Some(name)
    }
}
