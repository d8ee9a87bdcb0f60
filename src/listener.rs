//! The TLS port: verifies the peer, reads what the connection is for, and
//! answers EPMD questions or connects a tunnel to a local node.

use crate::epmd::LocalEpmd;
use crate::handshake;
use crate::mesh::Mesh;
use crate::metrics::{tls_reason, Counted, Metrics, PeerLabels};
use crate::policy::{short, Policy};
use crate::preface::{self, Preface, TunnelStatus};
use crate::record;
use crate::splice::{is_disconnect, splice};
use crate::tls::cert_not_after;
use crate::tls::{peer_hosts, Tls};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

/// Connecting to a local node's distribution port on loopback.
pub const LOCAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Writing an answer and closing.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// What every connection on the TLS port needs.
#[derive(Clone)]
pub struct Context {
    pub tls: Arc<Tls>,
    pub local: LocalEpmd,
    /// Per peer host, what its nodes may do; hosts not listed get the default.
    pub policies: Arc<HashMap<String, Policy>>,
    /// From connect to the end of the preface (and a tunnel's send_name):
    /// a slow or silent client loses its slot after this.
    pub handshake_timeout: Duration,
    pub metrics: Arc<Metrics>,
    /// This host's name, for the local end of tunnels in status.
    pub host: String,
    /// The peer table, for HELLO.
    pub mesh: Arc<Mesh>,
}

impl Context {
    fn policy(&self, hosts: &[String]) -> Policy {
        hosts
            .iter()
            .find_map(|h| self.policies.get(h))
            .cloned()
            .unwrap_or_default()
    }
}

/// Serves one connection on the TLS port.
pub async fn handle(tcp: TcpStream, from: SocketAddr, ctx: Context, _cancel: CancellationToken) {
    let deadline = tokio::time::Instant::now() + ctx.handshake_timeout;
    let acceptor = TlsAcceptor::from(ctx.tls.current().server.clone());
    let mut tls = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            warn!(%from, error = %e, "TLS handshake failed");
            ctx.metrics.handshake_failed(tls_reason(&e));
            return;
        }
        Err(_) => {
            warn!(%from, "TLS handshake not completed within {:?}; closed", ctx.handshake_timeout);
            ctx.metrics.handshake_failed("timeout");
            return;
        }
    };
    let hosts = peer_hosts(tls.get_ref().1);
    let peer = hosts.first().cloned().unwrap_or_default();
    let na = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| cert_not_after(c).ok());
    ctx.metrics.peer_ok(&peer, na);
    let preface = match tokio::time::timeout_at(deadline, preface::read_preface(&mut tls)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            warn!(%from, %peer, error = %e, "bad preface; closed");
            return;
        }
        Err(_) => {
            warn!(%from, %peer, "no preface within {:?}; closed", ctx.handshake_timeout);
            return;
        }
    };
    let policy = ctx.policy(&hosts);
    match preface {
        Preface::PortPlease(name) if !policy.allows_local(&name) => {
            info!(%peer, node = %name, "PORT_PLEASE for a local node this peer may not reach; answered 'not found'");
            answer_and_close(&mut tls, &preface::encode_port_answer(None)).await;
        }
        Preface::PortPlease(name) => {
            let answer = match ctx.local.lookup(&name).await {
                Ok(n) => preface::encode_port_answer(n.as_ref()),
                Err(e) => {
                    warn!(%peer, node = %name, error = %e, "local EPMD lookup failed");
                    preface::encode_port_answer(None)
                }
            };
            debug!(%peer, node = %name, found = answer[0] == 0, "answered PORT_PLEASE");
            answer_and_close(&mut tls, &answer).await;
        }
        Preface::Names => {
            let names = match ctx.local.names().await {
                Ok(n) => n
                    .into_iter()
                    .map(|(n, _)| n)
                    .filter(|n| policy.allows_local(n))
                    .collect::<Vec<_>>(),
                Err(e) => {
                    warn!(%peer, error = %e, "local EPMD NAMES failed");
                    Vec::new()
                }
            };
            answer_and_close(&mut tls, &preface::encode_names_answer(&names)).await;
        }
        Preface::Hello(address) => {
            answer_and_close(&mut tls, &preface::encode_hosts_answer(&ctx.mesh.known().await)).await;
            // The certificate proved the name; the address is verified by
            // dialling it before the host enters the table.
            if !peer.is_empty() {
                ctx.mesh.learn(&peer, &address);
            }
        }
        Preface::Tunnel(name) => {
            let span = tracing::info_span!("tunnel", dir = "in", %peer, to = %name, from = tracing::field::Empty);
            tunnel_in(tls, hosts, policy, name, deadline, ctx)
                .instrument(span)
                .await
        }
    }
}

fn count_refusal(ctx: &Context, hosts: &[String]) {
    let peer = hosts.first().cloned().unwrap_or_default();
    ctx.metrics.identity_refusals.get_or_create(&PeerLabels { peer }).inc();
}

async fn answer_and_close<S: AsyncWrite + Unpin>(s: &mut S, answer: &[u8]) {
    let work = async {
        s.write_all(answer).await?;
        s.shutdown().await
    };
    match timeout(ANSWER_TIMEOUT, work).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "peer left before the answer"),
        Err(_) => debug!("peer did not take the answer in time"),
    }
}

/// Connects a peer's tunnel to local node `name`, after checking that the
/// dialling node is named for the peer's certificated host.
async fn tunnel_in(
    mut tls: TlsStream<TcpStream>,
    hosts: Vec<String>,
    policy: Policy,
    name: String,
    deadline: tokio::time::Instant,
    ctx: Context,
) {
    let (send_name, raw) = match tokio::time::timeout_at(deadline, handshake::read_send_name(&mut tls)).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            warn!(error = %e, "tunnel did not carry a distribution handshake; closed");
            return;
        }
        Err(_) => {
            warn!("tunnel sent no handshake within {:?}; closed", ctx.handshake_timeout);
            return;
        }
    };
    tracing::Span::current().record("from", send_name.node.as_str());
    if !hosts.iter().any(|h| h.eq_ignore_ascii_case(send_name.host())) {
        warn!(
            claimed = %send_name.node,
            certificate_names = ?hosts,
            "refused: the peer's certificate does not name the host of the node it speaks for"
        );
        count_refusal(&ctx, &hosts);
        answer_and_close(&mut tls, &[TunnelStatus::NotAllowed as u8]).await;
        return;
    }
    if !policy.allows_remote(short(&send_name.node)) || !policy.allows_local(&name) {
        warn!(claimed = %send_name.node, "refused: the peer's config does not allow this node pair");
        count_refusal(&ctx, &hosts);
        answer_and_close(&mut tls, &[TunnelStatus::NotAllowed as u8]).await;
        return;
    }
    let node = match ctx.local.lookup(&name).await {
        Ok(Some(n)) => n,
        Ok(None) => {
            info!("no such local node");
            answer_and_close(&mut tls, &[TunnelStatus::NoSuchNode as u8]).await;
            return;
        }
        Err(e) => {
            warn!(error = %e, "local EPMD lookup failed");
            answer_and_close(&mut tls, &[TunnelStatus::NoSuchNode as u8]).await;
            return;
        }
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, node.port));
    let mut local = match timeout(LOCAL_CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            warn!(%addr, error = %e, "local node unreachable");
            answer_and_close(&mut tls, &[TunnelStatus::Unreachable as u8]).await;
            return;
        }
        Err(_) => {
            warn!(%addr, "local node did not accept within {LOCAL_CONNECT_TIMEOUT:?}");
            answer_and_close(&mut tls, &[TunnelStatus::Unreachable as u8]).await;
            return;
        }
    };
    let _ = local.set_nodelay(true);
    let peer = hosts.first().cloned().unwrap_or_default();
    let guard = ctx
        .metrics
        .tunnel(&peer, &format!("{name}@{}", ctx.host), &send_name.node, "in");
    let (to_peer, from_peer) = guard.byte_counters();
    let result = if tls.get_ref().1.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
        // Take over the record layer (record.rs) once rustls has nothing
        // left to send.
        let opened = async {
            tls.flush().await?;
            let (mut tcp, conn) = tls.into_inner();
            let secrets = conn.dangerous_extract_secrets().map_err(std::io::Error::other)?;
            let (mut tx, rx) = record::take_over(secrets)?;
            record::send(&mut tcp, &mut tx, &[TunnelStatus::Ok as u8]).await?;
            local.write_all(&raw).await?;
            Ok::<_, std::io::Error>((tcp, tx, rx))
        };
        match opened.await {
            Ok((tcp, tx, rx)) => {
                debug!(record_layer = "erlmesh", "tunnel open");
                record::splice(local, tcp, tx, rx, |o, b| {
                    to_peer.inc_by(o);
                    from_peer.inc_by(b);
                })
                .await
            }
            Err(e) => Err(e),
        }
    } else {
        let start = async {
            tls.write_all(&[TunnelStatus::Ok as u8]).await?;
            tls.flush().await?;
            local.write_all(&raw).await
        };
        match start.await {
            Ok(()) => {
                debug!(record_layer = "rustls", "tunnel open");
                let mut local = Counted::new(local, (to_peer, from_peer));
                splice(&mut local, &mut tls).await
            }
            Err(e) => Err(e),
        }
    };
    match result {
        Ok(c) => debug!(bytes_in = c.out, bytes_back = c.back, "tunnel closed"),
        Err(e) if is_disconnect(&e) => debug!(error = %e, "tunnel closed by a disconnect"),
        Err(e) => info!(error = %e, "tunnel ended with an error"),
    }
}
