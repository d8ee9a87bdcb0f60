//! The TLS port: verifies the peer, reads what the connection is for, and
//! answers EPMD questions or connects a tunnel to a local node.

use crate::epmd::LocalEpmd;
use crate::firewall::filter::Firewall;
use crate::hostname::HostName;
use crate::mesh::policy::short;
use crate::mesh::{Mesh, Source};
use crate::ops::metrics::{tls_reason, Metrics};
use crate::tls::{peer_hosts, Tls};
use crate::tunnel::accept::AnonymousSlot;
use crate::tunnel::dist_handshake;
use crate::tunnel::preface::{self, answer_and_close, Preface, TunnelStatus};
use crate::tunnel::record;
use crate::tunnel::record::Corked;
use crate::tunnel::record::{SecretCapture, Side};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Connecting to a local node's distribution port on loopback.
pub const LOCAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a local node may take to answer a forwarded send_name: less
/// than the dialler's wait for the tunnel status.
pub const NODE_ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

/// What every connection on the TLS port needs.
#[derive(Clone)]
pub struct Context {
    pub tls: Arc<Tls>,
    pub local: LocalEpmd,
    /// From connect to the end of the preface (and a tunnel's send_name):
    /// a slow or silent client loses its slot after this.
    pub handshake_timeout: Duration,
    /// From connect to the first byte of the TLS handshake.
    pub first_bytes_timeout: Duration,
    pub metrics: Arc<Metrics>,
    /// This host's name, for the local end of tunnels in status.
    pub host: HostName,
    /// The peer table, for HELLO and the per-peer policies.
    pub mesh: Arc<Mesh>,
}

impl Context {
    /// Whether every host the certificate names may reach local node
    /// `name` (a certificate naming several hosts gets the narrowest).
    fn allows_local(&self, hosts: &[HostName], name: &str) -> bool {
        hosts.iter().all(|h| self.mesh.policy_for(h).allows_local(name))
    }
}

/// A connection on the TLS port once its peer is verified.
type Verified = TlsStream<Corked<TcpStream>>;

/// Serves one connection on the TLS port: first bytes, TLS, the preface,
/// then the question's answer or the tunnel.
pub async fn handle(
    tcp: TcpStream,
    from: SocketAddr,
    mut slot: AnonymousSlot,
    ctx: Context,
    _cancel: CancellationToken,
) {
    let deadline = tokio::time::Instant::now() + ctx.handshake_timeout;
    if !slot.ready().await {
        debug!(%from, "the evicted connection's slot was not given back in time; closed");
        ctx.metrics.refused("unauthenticated_slots_full");
        return;
    }
    let spoke = tokio::select! {
        s = first_bytes(&tcp, from, &ctx) => s,
        _ = slot.evicted() => {
            debug!(%from, "silent while every anonymous slot was taken: evicted for a newcomer");
            ctx.metrics.handshake_failed("evicted_silent");
            false
        }
    };
    if !spoke {
        return;
    }
    slot.spoke();
    let Some((mut tls, capture)) = accept_tls(tcp, from, deadline, &ctx).await else {
        return;
    };
    // Verified: from here on the connection holds an authenticated slot.
    let Some(_slot) = slot.authenticated() else {
        warn!(%from, "every authenticated slot (max_connections) is taken; closed");
        ctx.metrics.refused("max_connections");
        return;
    };
    let hosts = peer_hosts(tls.get_ref().1);
    let Some(peer) = hosts.first().cloned() else {
        warn!(%from, "the peer's certificate names no host; closed");
        ctx.metrics.handshake_failed("no_host_name");
        return;
    };
    if !resumed_still_valid(&tls, from, &peer, &ctx) {
        return;
    }
    ctx.metrics.peer_connected(&peer, tls.get_ref().1);
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
    match preface {
        Preface::Tunnel(name) => {
            let span = tracing::info_span!("tunnel", dir = "in", %peer, to = %name, from = tracing::field::Empty);
            crate::tunnel::span::in_span(span, |q| tunnel_in(tls, capture, hosts, name, deadline, ctx, q)).await
        }
        question => answer(&mut tls, question, &hosts, &ctx).await,
    }
}

/// Waits for the first byte of the TLS handshake: a client that connects
/// and says nothing gives its anonymous slot back long before the
/// handshake deadline. Whether the connection goes on.
async fn first_bytes(tcp: &TcpStream, from: SocketAddr, ctx: &Context) -> bool {
    match timeout(ctx.first_bytes_timeout, tcp.peek(&mut [0u8; 1])).await {
        Ok(Ok(n)) => n > 0,
        Ok(Err(_)) => false,
        Err(_) => {
            debug!(%from, "no TLS bytes within {:?}; closed", ctx.first_bytes_timeout);
            ctx.metrics.handshake_failed("no_first_bytes");
            false
        }
    }
}

/// The TLS handshake (the peer's certificate verified), with a capture of
/// the connection's traffic secrets for a tunnel's record layer.
async fn accept_tls(
    tcp: TcpStream,
    from: SocketAddr,
    deadline: tokio::time::Instant,
    ctx: &Context,
) -> Option<(Verified, Arc<SecretCapture>)> {
    let (server_config, capture) = ctx.tls.current().server_for_connection();
    let acceptor = TlsAcceptor::from(server_config);
    match tokio::time::timeout_at(deadline, acceptor.accept(Corked::new(tcp))).await {
        Ok(Ok(s)) => Some((s, capture)),
        Ok(Err(e)) => {
            warn!(%from, error = %e, "TLS handshake failed");
            ctx.metrics.handshake_failed(tls_reason(&e));
            None
        }
        Err(_) => {
            warn!(%from, "TLS handshake not completed within {:?}; closed", ctx.handshake_timeout);
            ctx.metrics.handshake_failed("timeout");
            None
        }
    }
}

/// A resumed session carries the certificate of the handshake it resumes,
/// unchecked since: checks it now, with today's CRLs and clock.
fn resumed_still_valid(tls: &Verified, from: SocketAddr, peer: &HostName, ctx: &Context) -> bool {
    let conn = tls.get_ref().1;
    if conn.handshake_kind() != Some(rustls::HandshakeKind::Resumed) {
        return true;
    }
    let chain = conn.peer_certificates().unwrap_or_default();
    match ctx.tls.current().check_peer(chain, None) {
        Ok(()) => true,
        Err(e) => {
            warn!(%from, %peer, error = %e, "resumed TLS session refused: the peer's certificate is no longer accepted");
            ctx.metrics.handshake_failed("resumed_certificate_refused");
            false
        }
    }
}

/// Answers a question (PORT_PLEASE, NAMES, HELLO) and closes.
async fn answer(tls: &mut Verified, question: Preface, hosts: &[HostName], ctx: &Context) {
    let peer = &hosts[0];
    let real = matches!(question, Preface::Port(_));
    match question {
        Preface::PortPlease(name) | Preface::Port(name) if !ctx.allows_local(hosts, &name) => {
            info!(%peer, node = %name, "PORT_PLEASE for a local node this peer may not reach; answered 'not found'");
            answer_and_close(tls, &preface::encode_port_answer(None)).await;
        }
        Preface::PortPlease(name) | Preface::Port(name) => {
            let encode = |n: Option<&crate::epmd::NodeInfo>| match real {
                true => preface::encode_real_port_answer(n),
                false => preface::encode_port_answer(n),
            };
            let answer = match ctx.local.lookup(&name).await {
                Ok(n) => encode(n.as_ref()),
                Err(e) => {
                    warn!(%peer, node = %name, error = %e, "local EPMD lookup failed");
                    encode(None)
                }
            };
            debug!(%peer, node = %name, found = answer[0] == 0, "answered PORT_PLEASE");
            answer_and_close(tls, &answer).await;
        }
        Preface::Names => {
            let names = match ctx.local.names().await {
                Ok(n) => n
                    .into_iter()
                    .map(|(n, _)| n)
                    .filter(|n| ctx.allows_local(hosts, n))
                    .collect::<Vec<_>>(),
                Err(e) => {
                    warn!(%peer, error = %e, "local EPMD NAMES failed");
                    Vec::new()
                }
            };
            answer_and_close(tls, &preface::encode_names_answer(&names)).await;
        }
        Preface::Hello(address) => {
            answer_and_close(tls, &preface::encode_hosts_answer(&ctx.mesh.known())).await;
            // The certificate proved the name; the address is verified by
            // dialling it before the host enters the table.
            ctx.mesh.learn(peer, &address, Source::Itself);
        }
        // Tunnels are served by tunnel_in, never passed here.
        Preface::Tunnel(_) => {}
    }
}

/// Connects a peer's tunnel to local node `name`: the dialling node must
/// speak for a host the certificate names and be allowed this pair, the
/// local end must answer like a node, and then the record layer carries it.
async fn tunnel_in(
    mut tls: Verified,
    capture: Arc<SecretCapture>,
    hosts: Vec<HostName>,
    name: String,
    deadline: tokio::time::Instant,
    ctx: Context,
    q: crate::tunnel::span::Quiet,
) {
    let Some((send_name, raw, claimed)) = read_claim(&mut tls, &hosts, &name, deadline, &ctx).await else {
        return;
    };
    let (local, answer) = match connect_node(&name, &raw, &ctx).await {
        Ok(v) => v,
        Err(status) => {
            answer_and_close(&mut tls, &[status as u8]).await;
            return;
        }
    };
    let remote_name = if send_name.dynamic {
        match dynamic_name(&answer, &claimed, &ctx) {
            Some(n) => n,
            None => {
                answer_and_close(&mut tls, &[TunnelStatus::NotAllowed as u8]).await;
                return;
            }
        }
    } else {
        send_name.node.clone()
    };
    let live = ctx.tls.register(&claimed, tls.get_ref().1, None);
    let chain: Vec<Vec<u8>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|d| d.to_vec()).collect())
        .unwrap_or_default();
    let suite = crate::tunnel::dial::suite_name(tls.get_ref().1);
    let guard = ctx
        .metrics
        .tunnel(&claimed, &format!("{name}@{}", ctx.host), &remote_name, "in");
    let (to_peer, from_peer) = guard.byte_counters();
    let crypto = ctx.tls.current().record;
    // Take over the record layer (tunnel/record/) once rustls has nothing
    // left to send; the status and the node's answer are its first records.
    let opened = async {
        tls.flush().await?;
        let (mut tcp, mut tx, rx) = record::hand_over(tls.into_inner(), &capture, Side::Server, crypto).await?;
        record::send(&mut tcp, &mut tx, &[TunnelStatus::Ok as u8]).await?;
        record::send(&mut tcp, &mut tx, &answer).await?;
        Ok::<_, std::io::Error>((tcp, tx, rx))
    };
    let result = match opened.await {
        Ok((tcp, tx, rx)) => {
            debug!(suite = %suite, "tunnel open");
            let local_node = format!("{name}@{}", ctx.host);
            let firewall = ctx.mesh.policy_for(&claimed).dist.map(|p| record::Firewalled {
                firewall: Firewall::new(
                    p,
                    &claimed,
                    ctx.mesh.memories().pair(&claimed, &local_node, &remote_name),
                    ctx.metrics.clone(),
                ),
                node_dials: false,
                directions: None,
            });
            let meta = crate::upgrade::TunnelMeta {
                dir: "in".into(),
                peer: claimed.to_string(),
                local_node: local_node.clone(),
                remote_node: remote_name.clone(),
                chain,
                server_name: None,
            };
            let quiet = firewall.is_none();
            let carried = record::splice_from(
                local,
                tcp,
                tx,
                rx,
                |o, b| {
                    to_peer.inc_by(o);
                    from_peer.inc_by(b);
                },
                firewall,
                live.cancelled(),
                Some(meta),
                (false, false),
            );
            q.carry(quiet, carried).await
        }
        Err(e) => Err(e),
    };
    q.in_span(|| record::log_end(&result));
}

/// Reads the dialling node's send_name and checks who it claims to be:
/// named for a host the certificate names (compared in canonical form;
/// that host's policy then applies, however it is spelt) and allowed to
/// reach local node `name`. Refusals are answered here.
async fn read_claim(
    tls: &mut Verified,
    hosts: &[HostName],
    name: &str,
    deadline: tokio::time::Instant,
    ctx: &Context,
) -> Option<(dist_handshake::SendName, Vec<u8>, HostName)> {
    let (send_name, raw) = match tokio::time::timeout_at(deadline, dist_handshake::read_send_name(tls)).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            warn!(error = %e, "tunnel did not carry a distribution handshake; closed");
            return None;
        }
        Err(_) => {
            warn!("tunnel sent no handshake within {:?}; closed", ctx.handshake_timeout);
            return None;
        }
    };
    tracing::Span::current().record("from", send_name.shown().as_str());
    let claimed = HostName::parse(send_name.host()).ok().filter(|h| hosts.contains(h));
    let Some(claimed) = claimed else {
        warn!(
            claimed = %send_name.node,
            certificate_names = ?hosts.iter().map(|h| h.as_str()).collect::<Vec<_>>(),
            "refused: the peer's certificate does not name the host of the node it speaks for"
        );
        ctx.metrics.identity_refused(&hosts[0]);
        answer_and_close(tls, &[TunnelStatus::NotAllowed as u8]).await;
        return None;
    };
    let policy = ctx.mesh.policy_for(&claimed);
    // A dynamic name is checked once the local node has assigned it.
    let remote_ok = send_name.dynamic || policy.allows_remote(short(&send_name.node));
    if !remote_ok || !ctx.allows_local(hosts, name) {
        warn!(claimed = %send_name.node, "refused: the peer's config does not allow this node pair");
        ctx.metrics.identity_refused(&claimed);
        answer_and_close(tls, &[TunnelStatus::NotAllowed as u8]).await;
        return None;
    }
    // The node makes an atom of the dialler's name (or of the one it assigns
    // a dynamic dialler): under a dist policy, names count among the atoms
    // the host brings (firewall::atoms).
    if let Some(dist) = &policy.dist {
        let atoms = ctx.mesh.memories().atoms(&claimed);
        let room = match send_name.dynamic {
            true => atoms.has_room(dist.max_atoms),
            false => atoms.admit(&send_name.node, dist.max_atoms),
        };
        if !room && dist.mode == crate::firewall::Mode::Enforce {
            warn!(
                claimed = %send_name.node,
                max_atoms = dist.max_atoms,
                "refused: this host's nodes brought as many new atoms as its dist policy allows (max_atoms); a new node name would be one more"
            );
            ctx.metrics.identity_refused(&claimed);
            answer_and_close(tls, &[TunnelStatus::NotAllowed as u8]).await;
            return None;
        }
    }
    Some((send_name, raw, claimed))
}

/// The name a local node assigned a dynamic dialler (its `named:`
/// answer): it must be under the claimed host and allowed by that host's
/// policy (`peers[].nodes` or `default_policy.nodes`). None refuses.
fn dynamic_name(answer: &[u8], claimed: &HostName, ctx: &Context) -> Option<String> {
    let Some(name) = dist_handshake::named_status(answer) else {
        // Refused by the node itself (nok, not_allowed): passed on as is.
        return Some(format!("(dynamic)@{claimed}"));
    };
    let host_ok = name
        .split_once('@')
        .and_then(|(_, h)| HostName::parse(h).ok())
        .is_some_and(|h| h == *claimed);
    let policy = ctx.mesh.policy_for(claimed);
    if host_ok && policy.allows_remote(short(&name)) {
        if let Some(dist) = &policy.dist {
            ctx.mesh.memories().atoms(claimed).admit(&name, dist.max_atoms);
        }
        tracing::Span::current().record("from", name.as_str());
        Some(name)
    } else {
        warn!(assigned = %name, "refused: the dynamic name assigned is not allowed by the peer's config");
        ctx.metrics.identity_refused(claimed);
        None
    }
}

/// Connects to local node `name` and has it answer the dialler's
/// send_name (`raw`): only a distribution node may be reached, so the
/// local end must answer with a status message before anything of the
/// peer's passes further (a loopback-only database registered under a
/// node name gets nothing but this handshake frame). Returns the socket
/// and the answer to forward, or the status to refuse with.
async fn connect_node(name: &str, raw: &[u8], ctx: &Context) -> Result<(TcpStream, Vec<u8>), TunnelStatus> {
    let node = match ctx.local.lookup(name).await {
        Ok(Some(n)) => n,
        Ok(None) => {
            info!("no such local node");
            return Err(TunnelStatus::NoSuchNode);
        }
        Err(e) => {
            warn!(error = %e, "local EPMD lookup failed");
            return Err(TunnelStatus::NoSuchNode);
        }
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, node.port));
    let mut local = match timeout(LOCAL_CONNECT_TIMEOUT, connect_local(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            warn!(%addr, error = %e, "local node unreachable");
            return Err(TunnelStatus::Unreachable);
        }
        Err(_) => {
            warn!(%addr, "local node did not accept within {LOCAL_CONNECT_TIMEOUT:?}");
            return Err(TunnelStatus::Unreachable);
        }
    };
    let _ = local.set_nodelay(true);
    match timeout(NODE_ANSWER_TIMEOUT, node_answer(&mut local, raw)).await {
        Ok(Ok(answer)) => Ok((local, answer)),
        Ok(Err(e)) => {
            warn!(%addr, error = %e, "refused: the local endpoint did not answer like an Erlang node; closed");
            Err(TunnelStatus::Unreachable)
        }
        Err(_) => {
            warn!(%addr, "refused: the local endpoint did not answer the distribution handshake within {NODE_ANSWER_TIMEOUT:?}; closed");
            Err(TunnelStatus::Unreachable)
        }
    }
}

/// Connects to a local node's port on 127.0.0.1, or on ::1 when it
/// listens for IPv6 only (`-proto_dist inet6_tcp`).
async fn connect_local(v4: SocketAddr) -> std::io::Result<TcpStream> {
    match TcpStream::connect(v4).await {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, v4.port()));
            TcpStream::connect(v6).await.map_err(|_| e)
        }
        r => r,
    }
}

/// Forwards the dialler's send_name to the local endpoint and reads its
/// answer, which must be a distribution status message (`'s'`, OTP's
/// recv_status); returns that frame, length prefix included, to forward.
async fn node_answer(local: &mut TcpStream, send_name: &[u8]) -> std::io::Result<Vec<u8>> {
    local.write_all(send_name).await?;
    let frame = dist_handshake::read_frame(local).await?;
    dist_handshake::check_status(&frame).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    Ok(frame)
}
