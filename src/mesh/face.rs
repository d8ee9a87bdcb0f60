//! A peer's face on its loopback alias: an EPMD that answers for the peer
//! host by asking its erlmesh, and one listener per remote node whose
//! connections are tunnelled to that node.

use crate::epmd::codec::{self, Request};
use crate::epmd::embedded::{read_request, reply_and_close, ReadError};
use crate::firewall::memory::Memories;
use crate::mesh::policy::Policy;
use crate::transparent::Intercept;
use crate::tunnel::accept::accept_loop;
use crate::tunnel::dial::Dialer;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

/// Remote node names one face opens listeners for; a peer host runs a few
/// nodes, and each listener costs a socket here.
pub const MAX_NODES_PER_PEER: usize = 256;
/// Concurrent local connections to one face (EPMD questions and tunnels).
pub const MAX_FACE_CONNECTIONS: usize = 1024;

/// One peer host as local nodes see it.
pub struct Face {
    /// This host's name: local nodes dialling out must be named `*@own_host`.
    pub(crate) own_host: String,
    alias: Ipv4Addr,
    epmd_port: u16,
    pub(crate) dialer: Dialer,
    pub(crate) policy: Policy,
    /// The distribution firewall's memory, per node pair.
    pub(crate) memories: Arc<Memories>,
    /// Remote node name → port of its listener on the alias.
    nodes: Mutex<HashMap<String, u16>>,
    /// Transparent mode: nodes dial the peer's real ports, which the
    /// kernel redirects here; no alias listeners.
    intercept: Option<Arc<Intercept>>,
    slots: Arc<Semaphore>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Face {
    /// A face for the peer `dialer` reaches, on `alias`.
    #[allow(clippy::too_many_arguments)] // called once, by the peer table
    pub fn new(
        own_host: &str,
        alias: Ipv4Addr,
        epmd_port: u16,
        dialer: Dialer,
        policy: Policy,
        memories: Arc<Memories>,
        intercept: Option<Arc<Intercept>>,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) -> Arc<Face> {
        Arc::new(Face {
            own_host: own_host.to_owned(),
            alias,
            epmd_port,
            dialer,
            policy,
            memories,
            nodes: Mutex::new(HashMap::new()),
            intercept,
            slots: Arc::new(Semaphore::new(MAX_FACE_CONNECTIONS)),
            cancel,
            tracker,
        })
    }

    /// The peer host this face stands for.
    pub fn peer_host(&self) -> &str {
        &self.dialer.host
    }

    /// Binds the EPMD port on the alias. Binding happens here, before the
    /// process reports ready; serving starts with [`Face::serve`].
    pub async fn bind(&self) -> std::io::Result<TcpListener> {
        crate::app::bind_or_take(SocketAddr::from((self.alias, self.epmd_port))).await
    }

    /// Serves EPMD questions on the alias until shutdown.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let face = self.clone();
        accept_loop(
            listener,
            self.slots.clone(),
            self.cancel.clone(),
            self.tracker.clone(),
            "face-epmd",
            move |s, from, _| {
                let face = face.clone();
                async move { face.epmd(s, from).await }
            },
        )
        .await
    }

    /// Answers one EPMD question about the peer host (on the alias, or
    /// redirected by the kernel).
    pub(crate) async fn epmd(self: Arc<Self>, mut stream: TcpStream, from: SocketAddr) {
        let span = tracing::debug_span!("face", peer = %self.dialer.host, %from);
        async move {
            let req = match read_request(&mut stream).await {
                Ok(r) => r,
                Err(ReadError::Closed) => return,
                Err(e) => {
                    warn!(error = %e, "bad EPMD request on a peer alias; connection closed");
                    return;
                }
            };
            debug!(request = req.kind(), "EPMD question for the peer");
            self.dialer.metrics().epmd_request(req.kind());
            match req {
                Request::PortPlease2 { name } if !self.policy.allows_remote(&name) => {
                    info!(node = %name, "remote node not allowed by the peer's config; answered 'not found'");
                    reply_and_close(&mut stream, &codec::encode_port2_not_found()).await;
                }
                Request::PortPlease2 { name } => {
                    let asked = match self.intercept {
                        None => self.dialer.port_please(&name).await,
                        Some(_) => self.dialer.port(&name).await,
                    };
                    let reply = match asked {
                        Ok(Some(info)) => match self.node_port(&name, info.port).await {
                            Ok(port) => codec::encode_port2_resp(&info, port),
                            Err(e) => {
                                warn!(node = %name, error = %e, "cannot open a listener for the remote node");
                                codec::encode_port2_not_found()
                            }
                        },
                        Ok(None) => codec::encode_port2_not_found(),
                        Err(e) => {
                            warn!(error = %e, "peer unreachable; answering 'not found'");
                            codec::encode_port2_not_found()
                        }
                    };
                    reply_and_close(&mut stream, &reply).await;
                }
                Request::Names => match self.dialer.names().await {
                    Ok(names) => {
                        let mut lines = Vec::with_capacity(names.len());
                        // Transparent mode asks each node's real port: as many
                        // as the rules take for one peer.
                        let most = if self.intercept.is_some() {
                            MAX_NODES_PER_PEER
                        } else {
                            usize::MAX
                        };
                        for n in names.into_iter().filter(|n| self.policy.allows_remote(n)).take(most) {
                            // Transparent mode answers with the real ports.
                            let real = match &self.intercept {
                                None => 0,
                                Some(_) => match self.dialer.port(&n).await {
                                    Ok(Some(info)) => info.port,
                                    _ => continue,
                                },
                            };
                            match self.node_port(&n, real).await {
                                Ok(p) => lines.push((n, p)),
                                Err(e) => warn!(node = %n, error = %e, "cannot open a listener for the remote node"),
                            }
                        }
                        reply_and_close(&mut stream, &codec::encode_names(self.epmd_port, &lines)).await;
                    }
                    Err(e) => warn!(error = %e, "peer unreachable; NAMES not answered"),
                },
                Request::Alive2(info) => {
                    warn!(node = %info.name, "a node tried to register on a peer's alias; refused");
                    let reply = codec::encode_alive2_refusal(info.high >= 6);
                    reply_and_close(&mut stream, &reply).await;
                }
                other => warn!(
                    request = other.kind(),
                    "administrative EPMD request on a peer alias; refused"
                ),
            }
        }
        .instrument(span)
        .await
    }

    /// The port local nodes dial for remote node `name`, whose real port
    /// is `real`. In resolver mode, the port of its alias listener, opened
    /// on first use; it stays for the life of the process, so a node that
    /// restarts on the peer host keeps the same port here. In transparent
    /// mode, the real port, once the rules redirect it.
    pub async fn node_port(self: &Arc<Self>, name: &str, real: u16) -> std::io::Result<u16> {
        if let Some(i) = &self.intercept {
            i.learn(&self.dialer.host, name, real).await;
            return Ok(real);
        }
        if let Some(p) = self.nodes.lock().expect("face lock").get(name) {
            return Ok(*p);
        }
        let listener = TcpListener::bind(SocketAddr::from((self.alias, 0))).await?;
        let port = listener.local_addr()?.port();
        {
            let mut nodes = self.nodes.lock().expect("face lock");
            if let Some(p) = nodes.get(name) {
                return Ok(*p); // another question raced us; ours is dropped
            }
            if nodes.len() >= MAX_NODES_PER_PEER {
                return Err(std::io::Error::other(format!(
                    "more than {MAX_NODES_PER_PEER} remote nodes on this peer"
                )));
            }
            nodes.insert(name.to_owned(), port);
        }
        debug!(peer = %self.dialer.host, node = %name, %port, "listening for the remote node");
        self.serve_node(name, listener);
        Ok(port)
    }

    /// Serves a listener for remote node `name` an upgrade handed over.
    pub fn adopt(self: &Arc<Self>, name: &str, listener: std::net::TcpListener) {
        let Ok(listener) = TcpListener::from_std(listener) else {
            return;
        };
        let Ok(port) = listener.local_addr().map(|a| a.port()) else {
            return;
        };
        {
            let mut nodes = self.nodes.lock().expect("face lock");
            if nodes.len() >= MAX_NODES_PER_PEER || nodes.contains_key(name) {
                return;
            }
            nodes.insert(name.to_owned(), port);
        }
        debug!(peer = %self.dialer.host, node = %name, %port, "listening for the remote node (handed over)");
        self.serve_node(name, listener);
    }

    fn serve_node(self: &Arc<Self>, name: &str, listener: TcpListener) {
        if let Ok(addr) = listener.local_addr() {
            crate::upgrade::face_node_listener(addr, &self.dialer.host, name);
        }
        let face = self.clone();
        let node = name.to_owned();
        self.tracker.spawn(async move {
            let f = face.clone();
            accept_loop(
                listener,
                face.slots.clone(),
                face.cancel.clone(),
                face.tracker.clone(),
                "face-node",
                move |s, _, _| {
                    let f = f.clone();
                    let node = node.clone();
                    crate::tunnel::outbound::carry(f, s, node)
                },
            )
            .await
        });
    }
}

impl std::fmt::Debug for Face {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Face")
            .field("peer", &self.dialer.host)
            .finish_non_exhaustive()
    }
}
