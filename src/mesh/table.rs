//! The peer table's owner: one task holds the table and takes messages, so
//! that no lock is held while a face is bound (which may wait for a port a
//! replaced face still holds) or a file is written; readers see the
//! snapshot the task publishes after each change.

use super::{Mesh, MeshError, PeerView, MAX_PEERS};
use crate::config::Peer;
use crate::hostname::HostName;
use crate::mesh::face::Face;
use crate::mesh::policy::Policy;
use crate::mesh::{alias, resolver};
use crate::tunnel::dial::Dialer;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long a new face waits for the port of the face it replaces.
const REBIND_WAIT: Duration = Duration::from_secs(2);
const REBIND_STEP: Duration = Duration::from_millis(50);

/// What the table task is told.
pub(super) enum Msg {
    /// A handshake with `address` just proved `host`'s name; `done` is
    /// answered once the table has it (its face bound) or has refused it.
    Proven {
        host: HostName,
        address: String,
        done: oneshot::Sender<()>,
    },
    /// A gossip exchange with `host` failed.
    Unreachable { host: HostName },
    /// The face for `host` at `address` was bound, or could not be.
    FaceBound {
        host: HostName,
        address: String,
        alias: Ipv4Addr,
        face: Result<(CancellationToken, Arc<Face>), MeshError>,
        done: oneshot::Sender<()>,
    },
}

/// One host in the table.
struct Entry {
    address: String,
    alias: Ipv4Addr,
    face_cancel: CancellationToken,
    face: Arc<Face>,
    /// From the config: never dropped or moved.
    fixed: bool,
    last_ok: Instant,
}

type Table = BTreeMap<HostName, Entry>;

impl Mesh {
    /// Opens faces for the static peers (a binding error stops the start),
    /// writes the resolver file, and starts the task that owns the table
    /// from then on.
    pub async fn start_static(self: &Arc<Self>) -> Result<(), MeshError> {
        let mut table = Table::new();
        let aliases = self.assign(&table, &[]).await?;
        for p in &self.static_peers {
            let alias = aliases[&p.host];
            let (face_cancel, face) = self.open_face(&p.host, &p.address, alias, p.policy.clone()).await?;
            table.insert(
                p.host.clone(),
                Entry {
                    address: p.address.clone(),
                    alias,
                    face_cancel,
                    face,
                    fixed: true,
                    last_ok: Instant::now(),
                },
            );
        }
        self.write_resolver(&table).await?;
        self.publish(&table);
        if let Some(rx) = self.table_rx.lock().expect("table lock").take() {
            self.tracker.spawn(self.clone().own_table(table, rx));
        }
        Ok(())
    }

    /// Tells the table that a handshake with `address` proved `host`, and
    /// waits until the table has taken it (or refused it): what that host
    /// then announces is judged against a table that includes it.
    pub(crate) async fn proven(&self, host: HostName, address: String) {
        self.work_started();
        let (done, taken) = oneshot::channel();
        if self.table_tx.send(Msg::Proven { host, address, done }).await.is_err() {
            self.work_done();
            return;
        }
        let _ = taken.await;
    }

    /// Tells the table that a gossip exchange with `host` failed.
    pub(super) async fn unreachable(&self, host: HostName) {
        let _ = self.table_tx.send(Msg::Unreachable { host }).await;
    }

    async fn own_table(self: Arc<Self>, mut table: Table, mut rx: mpsc::Receiver<Msg>) {
        // Hosts whose face is being bound, by a task of its own.
        let mut binding = BTreeSet::new();
        loop {
            let msg = tokio::select! {
                _ = self.cancel.cancelled() => return,
                m = rx.recv() => match m { Some(m) => m, None => return },
            };
            match msg {
                Msg::Proven { host, address, done } => {
                    if let Some(done) = self.on_proven(&mut table, &mut binding, host, address, done).await {
                        let _ = done.send(());
                        self.work_done();
                    }
                }
                Msg::Unreachable { host } => self.on_unreachable(&mut table, &host).await,
                Msg::FaceBound {
                    host,
                    address,
                    alias,
                    face,
                    done,
                } => {
                    binding.remove(&host);
                    self.on_face_bound(&mut table, host, address, alias, face).await;
                    let _ = done.send(());
                    self.work_done();
                }
            }
        }
    }

    /// Notes a proven host. A face to bind is bound by a task of its own
    /// (the work goes on until [`Msg::FaceBound`], which answers `done`);
    /// otherwise `done` is handed back to be answered now.
    async fn on_proven(
        self: &Arc<Self>,
        table: &mut Table,
        binding: &mut BTreeSet<HostName>,
        host: HostName,
        address: String,
        done: oneshot::Sender<()>,
    ) -> Option<oneshot::Sender<()>> {
        if host == self.host || binding.contains(&host) {
            return Some(done);
        }
        if let Some(e) = table.get_mut(&host) {
            e.last_ok = Instant::now();
            if e.fixed || e.address == address {
                return Some(done);
            }
            // Moved (said by the host itself, see gossip.rs): the face
            // dials the address it was made with, so it is made again.
            e.face_cancel.cancel();
            binding.insert(host.clone());
            self.bind_face(host, address, e.alias, done);
            return None;
        }
        if table.len() + binding.len() >= MAX_PEERS {
            warn!(%host, "peer table full ({MAX_PEERS}); not adding more hosts");
            return Some(done);
        }
        match self.assign(table, &[&host]).await {
            Ok(aliases) => {
                let alias = aliases[&host];
                binding.insert(host.clone());
                self.bind_face(host, address, alias, done);
                None
            }
            Err(e) => {
                warn!(%host, error = %e, "cannot add the peer");
                Some(done)
            }
        }
    }

    /// Binds a face in a task of its own, which reports back.
    fn bind_face(self: &Arc<Self>, host: HostName, address: String, alias: Ipv4Addr, done: oneshot::Sender<()>) {
        let mesh = self.clone();
        self.tracker.spawn(async move {
            let face = mesh
                .open_face(&host, &address, alias, mesh.default_policy.clone())
                .await;
            let _ = mesh
                .table_tx
                .send(Msg::FaceBound {
                    host,
                    address,
                    alias,
                    face,
                    done,
                })
                .await;
        });
    }

    async fn on_face_bound(
        &self,
        table: &mut Table,
        host: HostName,
        address: String,
        alias: Ipv4Addr,
        face: Result<(CancellationToken, Arc<Face>), MeshError>,
    ) {
        let (face_cancel, face) = match face {
            Ok(c) => c,
            Err(e) => {
                warn!(%host, error = %e, "cannot add the peer");
                table.remove(&host);
                return;
            }
        };
        match table.get_mut(&host) {
            Some(e) => {
                info!(%host, old = %e.address, new = %address, "peer moved");
                e.address = address;
                e.face_cancel = face_cancel;
                e.face = face;
                e.last_ok = Instant::now();
            }
            None => {
                info!(%host, %address, %alias, "peer learnt and verified");
                table.insert(
                    host.clone(),
                    Entry {
                        address,
                        alias,
                        face_cancel,
                        face,
                        fixed: false,
                        last_ok: Instant::now(),
                    },
                );
                self.metrics.verified(&host);
            }
        }
        if let Err(e) = self.write_resolver(table).await {
            warn!(error = %e, "cannot rewrite the resolver file");
        }
        self.publish(table);
    }

    /// Drops `host` if it is a learnt one unreachable for `forget_after`.
    async fn on_unreachable(&self, table: &mut Table, host: &HostName) {
        let gone = table
            .get(host)
            .is_some_and(|e| !e.fixed && e.last_ok.elapsed() > self.forget_after);
        if !gone {
            return;
        }
        if let Some(e) = table.remove(host) {
            e.face_cancel.cancel();
            warn!(%host, after = ?self.forget_after, "peer unreachable for too long; dropped (its alias stays reserved)");
            self.metrics.forget(host);
            if let Err(e) = self.write_resolver(table).await {
                warn!(error = %e, "cannot rewrite the resolver file");
            }
            self.publish(table);
        }
    }

    fn publish(&self, table: &Table) {
        let view = table
            .iter()
            .map(|(h, e)| {
                (
                    h.clone(),
                    PeerView {
                        address: e.address.clone(),
                        fixed: e.fixed,
                        face: e.face.clone(),
                    },
                )
            })
            .collect();
        self.snapshot_tx.send_replace(Arc::new(view));
    }

    /// Allocates aliases for every host in the table plus `extra` (the
    /// alias file is read and written on a blocking thread).
    async fn assign(&self, table: &Table, extra: &[&HostName]) -> Result<BTreeMap<HostName, Ipv4Addr>, MeshError> {
        let mut list: Vec<Peer> = self.static_peers.clone();
        for (h, e) in table {
            if !list.iter().any(|p| &p.host == h) {
                list.push(Peer {
                    host: h.clone(),
                    address: e.address.clone(),
                    alias: Some(e.alias),
                    policy: Policy::default(),
                });
            }
        }
        for h in extra {
            list.push(Peer {
                host: (*h).clone(),
                address: String::new(),
                alias: None,
                policy: Policy::default(),
            });
        }
        let hosts: Vec<HostName> = list.iter().map(|p| p.host.clone()).collect();
        let dir = self.state_dir.clone();
        let ips = tokio::task::spawn_blocking(move || alias::assign(&list, &dir))
            .await?
            .map_err(|source| MeshError::Aliases {
                dir: self.state_dir.clone(),
                source,
            })?;
        Ok(hosts.into_iter().zip(ips).collect())
    }

    /// Binds a face for `host` on `alias` and starts serving it; returns
    /// the token that stops it.
    async fn open_face(
        &self,
        host: &HostName,
        address: &str,
        alias: Ipv4Addr,
        policy: Policy,
    ) -> Result<(CancellationToken, Arc<Face>), MeshError> {
        let dialer =
            Dialer::new(host, address, self.tls.clone(), self.metrics.clone()).map_err(|source| MeshError::Dial {
                host: host.clone(),
                source,
            })?;
        let face_cancel = self.cancel.child_token();
        let face = Face::new(
            &self.host,
            alias,
            self.epmd_port,
            dialer,
            policy,
            self.memories.clone(),
            self.intercept.clone(),
            face_cancel.clone(),
            self.tracker.clone(),
        );
        if self.intercept.is_some() {
            // Transparent mode: the kernel brings connections, no alias.
            return Ok((face_cancel, face));
        }
        // A face being replaced may not have released the port yet.
        let end = Instant::now() + REBIND_WAIT;
        let listener = loop {
            match face.bind().await {
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse
                        && Instant::now() < end
                        && !self.cancel.is_cancelled() =>
                {
                    tokio::time::sleep(REBIND_STEP).await
                }
                Err(source) => {
                    let hint = if source.kind() == std::io::ErrorKind::AddrInUse {
                        " (something listens on 0.0.0.0 at that port, such as an epmd started without ERL_EPMD_ADDRESS=127.0.0.1)"
                    } else {
                        ""
                    };
                    return Err(MeshError::Bind {
                        addr: SocketAddr::from((alias, self.epmd_port)),
                        host: host.clone(),
                        source,
                        hint,
                    });
                }
                Ok(l) => break l,
            }
        };
        self.tracker.spawn(face.clone().serve(listener));
        // Listeners for the peer's nodes an upgrade handed over.
        for (node, l) in crate::upgrade::take::face_nodes(host) {
            face.adopt(&node, l);
        }
        Ok((face_cancel, face))
    }

    /// Writes the resolver files from the table (one canonical name per
    /// host), on a blocking thread.
    async fn write_resolver(&self, table: &Table) -> Result<(), MeshError> {
        if self.intercept.is_some() {
            return Ok(()); // nodes resolve hosts as they always do
        }
        let entries: Vec<(String, Ipv4Addr)> = table.iter().map(|(h, e)| (h.to_string(), e.alias)).collect();
        let hosts = self.state_dir.join(resolver::HOSTS_FILE);
        let inetrc = self.state_dir.join(resolver::INETRC_FILE);
        let hosts_text = resolver::render_hosts(&self.host, &entries);
        let inetrc_text = resolver::render(&self.host, &entries, &hosts);
        tokio::task::spawn_blocking(move || {
            resolver::write_atomically(&hosts, hosts_text.as_bytes())
                .map_err(|source| MeshError::Resolver { path: hosts, source })?;
            resolver::write_atomically(&inetrc, inetrc_text.as_bytes())
                .map_err(|source| MeshError::Resolver { path: inetrc, source })
        })
        .await?
    }
}
