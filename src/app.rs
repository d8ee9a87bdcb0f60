//! `erlmesh run`: load everything, bind every listener, serve until the
//! shutdown future resolves, then drain within the grace period.

use crate::config::{Config, EpmdMode};
use crate::epmd;
use crate::epmd::registry::Registry;
use crate::epmd::LocalEpmd;
use crate::mesh::Mesh;
use crate::ops::metrics::Metrics;
use crate::tls::{Tls, TlsConfigs};
use crate::tunnel::accept::{accept_admitted, accept_loop, Admission};
use crate::tunnel::inbound::{self, Context};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// Concurrent connections to the embedded EPMD: one per registered node
/// plus short questions.
pub const MAX_LOCAL_EPMD_CONNECTIONS: usize = 1024;
/// Concurrent connections to the metrics port.
pub const MAX_METRICS_CONNECTIONS: usize = 16;
/// Pause after a failed accept on the control socket.
const CONTROL_ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Why `erlmesh run` could not start (or stopped).
#[derive(Debug, Error)]
pub enum AppError {
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(
        "the EPMD port {port} is open to the network on {exposed:?}: stop that epmd (systemctl disable --now \
         epmd.socket epmd.service) or restart it with ERL_EPMD_ADDRESS=127.0.0.1, then start erlmesh again"
    )]
    EpmdExposed { port: u16, exposed: Vec<SocketAddr> },
    #[error("{what}: cannot bind {addr}: {source}{hint}")]
    Bind {
        what: String,
        addr: String,
        source: std::io::Error,
        hint: String,
    },
    #[error(transparent)]
    Mesh(#[from] crate::mesh::MeshError),
    #[error(
        "the open-file limit is {soft} (hard limit {hard}), but max_connections = {max_connections}, \
         max_unauthenticated = {max_unauthenticated} and the local EPMD ({MAX_LOCAL_EPMD_CONNECTIONS}) need up to \
         {need}: raise it (LimitNOFILE={need} in the systemd unit, or `ulimit -n {need}`) or lower those caps in {file}"
    )]
    DescriptorLimit {
        soft: u64,
        hard: u64,
        need: u64,
        max_connections: usize,
        max_unauthenticated: usize,
        file: PathBuf,
    },
    #[error("transparent interception: {0}")]
    Rules(#[from] crate::transparent::nft::NftError),
    #[error("{what}: {source}")]
    Io { what: &'static str, source: std::io::Error },
    #[error("a blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// What every part started by [`run`] shares.
struct Running {
    config: Config,
    tls: Arc<Tls>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

/// The binary and arguments this process was started with, for
/// `erlmesh upgrade` (read at start: the package may replace the file).
#[derive(Debug, Clone)]
pub struct Started {
    pub exe: PathBuf,
    pub args: Vec<std::ffi::OsString>,
}

/// Runs the proxy until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("erlmesh"));
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).take_while(|a| a != "--take-over").collect();
    run_started(config, shutdown, Started { exe, args }).await
}

/// [`run`], with how this process was started.
pub async fn run_started(config: Config, shutdown: impl Future<Output = ()>, started: Started) -> Result<(), AppError> {
    let (upgrade_exe, upgrade_args) = (started.exe, started.args);
    let tls = load_tls(&config).await?;
    let metrics = Metrics::new(config.peers.iter().map(|p| p.host.as_str()));
    for p in &config.peers {
        if let Some(d) = &p.policy.dist {
            metrics.dist_policy_in_use(&p.host, d);
        }
    }
    metrics.set_own_not_after(tls.current().not_after);
    let r = Running {
        config,
        tls,
        metrics,
        cancel: CancellationToken::new(),
        tracker: TaskTracker::new(),
    };
    let transparent = r.config.interception == crate::config::Interception::Transparent;
    if !transparent {
        // In transparent mode the rules guard the nodes' own epmd.
        refuse_exposed_epmd(r.config.epmd_port).await?;
    }
    // Bind everything first: a port that is taken stops the start, with
    // nothing half-running.
    let local = r.serve_local_epmd().await?;
    let redirect = match transparent {
        false => Vec::new(),
        true => {
            let port = r.config.transparent.redirect_port;
            crate::transparent::bind_redirect(port)
                .await
                .map_err(|source| AppError::Bind {
                    what: format!("{}: transparent.redirect_port", r.config.file.display()),
                    addr: format!("127.0.0.1:{port}"),
                    source,
                    hint: String::new(),
                })?
        }
    };
    let tls_listener = bind(&r.config.listen.to_string(), r.config.listen, &r.config, "listen", "").await?;
    let listen_addr = tls_listener.local_addr().map_err(|source| AppError::Io {
        what: "the TLS port",
        source,
    })?;
    let mesh = Mesh::new(
        &r.config,
        r.tls.clone(),
        r.metrics.clone(),
        r.cancel.clone(),
        r.tracker.clone(),
    );
    // The atom counts of restricted peers go on from the old process's,
    // before any tunnel is judged.
    let atoms = crate::upgrade::take::atoms();
    if !atoms.key.is_empty() && !mesh.memories().resume_atoms(&atoms) {
        warn!("the handed-over atom counts could not be taken: restricted peers' counts start again");
    }
    mesh.start_static().await?;
    // What an upgrade handed over: counters, the hosts learnt, then the
    // tunnels.
    let taking_over = crate::upgrade::take::taking_over();
    r.metrics.add_counters(&crate::upgrade::take::counters());
    for (host, address) in crate::upgrade::take::learnt() {
        if let Ok(host) = crate::hostname::HostName::parse(&host) {
            mesh.proven(host, address).await;
        }
    }
    crate::tunnel::resume::spawn_all(&r.tls, &r.metrics, &mesh, &r.tracker);
    if let Some(i) = mesh.intercept() {
        i.start(mesh.faces(), &local).await?;
        i.serve(redirect, r.cancel.clone(), &r.tracker);
        i.keep(mesh.clone(), local.clone(), r.cancel.clone(), &r.tracker);
    }
    r.serve_tls_port(tls_listener, local, mesh.clone());
    r.tracker.spawn(reload_tls(
        r.config.clone(),
        r.tls.clone(),
        r.metrics.clone(),
        r.cancel.clone(),
    ));
    r.serve_control().await?;

    // Joining through seeds comes last: every listener and handler is in
    // place while the other hosts dial back to verify this one.
    r.tracker.spawn(mesh.clone().learner());
    if !taking_over {
        // (The process an upgrade replaces had joined already.)
        mesh.join().await;
    }
    r.tracker.spawn(mesh.clone().gossip_forever());
    r.ready(listen_addr);
    crate::upgrade::give::set_context(crate::upgrade::give::Context {
        exe: upgrade_exe.clone(),
        args: upgrade_args.clone(),
        state_dir: r.config.state_dir.clone(),
        mesh: mesh.clone(),
        metrics: r.metrics.clone(),
    });
    if taking_over {
        crate::upgrade::take::ready();
    }

    shutdown.await;
    r.drain().await;
    Ok(())
}

/// Loads the CA, certificate, key and CRLs, off the runtime threads.
async fn load_tls(config: &Config) -> Result<Arc<Tls>, AppError> {
    let (files, host) = (config.tls.clone(), config.host.clone());
    let configs = tokio::task::spawn_blocking(move || TlsConfigs::load(&files, &host)).await??;
    warn_if_expiring(config, configs.not_after);
    info!(
        provider = %configs.record.provider.name(),
        chosen = %if config.tls.record_provider.is_some() { "by tls.record_provider" } else { "the faster on this CPU" },
        suites = %config.tls.cipher_suites.iter().map(|s| s.name()).collect::<Vec<_>>().join(","),
        "records sealed and opened with this AES-GCM and ChaCha20-Poly1305 code (AEGIS has its own); suites offered, most preferred first"
    );
    Ok(Tls::new(configs))
}

/// An epmd reachable from the network undoes what erlmesh is for.
async fn refuse_exposed_epmd(port: u16) -> Result<(), AppError> {
    let exposed = tokio::task::spawn_blocking(move || crate::ops::exposure::exposed_listeners(port)).await?;
    if exposed.is_empty() {
        Ok(())
    } else {
        Err(AppError::EpmdExposed { port, exposed })
    }
}

/// Binds `addr` for `key` of the config, with `hint` on failure (or takes
/// the listener an upgrade handed over).
async fn bind(shown: &str, addr: SocketAddr, config: &Config, key: &str, hint: &str) -> Result<TcpListener, AppError> {
    bind_or_take(addr).await.map_err(|source| AppError::Bind {
        what: format!("{}: {key}", config.file.display()),
        addr: shown.to_owned(),
        source,
        hint: hint.to_owned(),
    })
}

/// The listener an upgrade handed over for `addr`, or a new one.
pub async fn bind_or_take(addr: SocketAddr) -> std::io::Result<TcpListener> {
    match crate::upgrade::take::listener(addr) {
        Some(l) => TcpListener::from_std(l),
        None => TcpListener::bind(addr).await,
    }
}

impl Running {
    /// Binds and serves the embedded EPMD (or notes the system one).
    async fn serve_local_epmd(&self) -> Result<LocalEpmd, AppError> {
        let port = self.config.epmd_port;
        if self.config.epmd == EpmdMode::System {
            return Ok(LocalEpmd::System { port });
        }
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let hint = " (is a system epmd running? stop it, or set epmd = \"system\")";
        let l = bind(&addr.to_string(), addr, &self.config, "epmd_port", hint).await?;
        let registry = Registry::new();
        // Registrations an upgrade handed over: the nodes stay registered.
        for (info, creation, stream) in crate::upgrade::take::registrations() {
            let name = info.name.clone();
            match (
                registry.register_as(info, creation),
                tokio::net::TcpStream::from_std(stream),
            ) {
                (Some(reg), Ok(stream)) => {
                    let cancel = self.cancel.child_token();
                    self.tracker
                        .spawn(async move { epmd::embedded::hold(stream, reg, &cancel).await });
                }
                _ => warn!(node = %name, "a handed-over registration could not be kept"),
            }
        }
        let (reg, m) = (registry.clone(), self.metrics.clone());
        let exposure = crate::ops::exposure::ExposureChecker::start(&self.tracker, self.cancel.clone());
        self.tracker.spawn(accept_loop(
            l,
            Arc::new(Semaphore::new(MAX_LOCAL_EPMD_CONNECTIONS)),
            self.cancel.clone(),
            self.tracker.clone(),
            "epmd",
            move |s, from, c| epmd::embedded::handle(s, from, reg.clone(), port, m.clone(), exposure.clone(), c),
        ));
        Ok(LocalEpmd::Embedded(registry))
    }

    /// Serves the TLS port: admission, then each connection's handler.
    fn serve_tls_port(&self, listener: TcpListener, local: LocalEpmd, mesh: Arc<Mesh>) {
        let c = &self.config;
        let ctx = Context {
            tls: self.tls.clone(),
            local,
            handshake_timeout: c.handshake_timeout,
            first_bytes_timeout: c.first_bytes_timeout,
            metrics: self.metrics.clone(),
            host: c.host.clone(),
            mesh,
        };
        let admission = Admission::new(
            c.max_unauthenticated,
            c.max_unauthenticated_per_source,
            c.max_connections,
        );
        let m = self.metrics.clone();
        self.tracker.spawn(accept_admitted(
            listener,
            admission,
            self.cancel.clone(),
            self.tracker.clone(),
            move |why| m.refused(why.label()),
            move |s, from, slot, c| inbound::handle(s, from, slot, ctx.clone(), c),
        ));
    }

    /// The control endpoint: always on a unix socket in state_dir (for
    /// `erlmesh status`), and on a loopback TCP port when configured.
    async fn serve_control(&self) -> Result<(), AppError> {
        let sock = self.config.state_dir.join(crate::ops::control::SOCKET_FILE);
        let unix = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::remove_file(&sock);
            let l = std::os::unix::net::UnixListener::bind(&sock)?;
            std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
            l.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(l)
        })
        .await?
        .and_then(tokio::net::UnixListener::from_std)
        .map_err(|source| AppError::Io {
            what: "cannot bind the control socket in state_dir",
            source,
        })?;
        let (m, h, c, t) = (
            self.metrics.clone(),
            self.config.host.to_string(),
            self.cancel.clone(),
            self.tracker.clone(),
        );
        self.tracker.spawn(async move {
            loop {
                let s = tokio::select! {
                    _ = c.cancelled() => break,
                    r = unix.accept() => match r {
                        Ok((s, _)) => s,
                        Err(e) => {
                            warn!(error = %e, "control socket accept failed");
                            tokio::time::sleep(CONTROL_ACCEPT_BACKOFF).await;
                            continue;
                        }
                    },
                };
                t.spawn(crate::ops::control::serve_one(s, m.clone(), h.clone(), true));
            }
        });
        if let Some(addr) = self.config.metrics {
            let l = bind(&addr.to_string(), addr, &self.config, "metrics", "").await?;
            let (m, h) = (self.metrics.clone(), self.config.host.to_string());
            self.tracker.spawn(accept_loop(
                l,
                Arc::new(Semaphore::new(MAX_METRICS_CONNECTIONS)),
                self.cancel.clone(),
                self.tracker.clone(),
                "metrics",
                move |s, _, _| crate::ops::control::serve_one(s, m.clone(), h.clone(), false),
            ));
        }
        Ok(())
    }

    /// Says so in the log and to systemd (Type=notify), if it asked.
    fn ready(&self, listen_addr: SocketAddr) {
        let c = &self.config;
        info!(
            host = %c.host,
            listen = %listen_addr,
            epmd = %format!("127.0.0.1:{} ({:?})", c.epmd_port, c.epmd).to_lowercase(),
            peers = c.peers.len(),
            resolver = %c.inetrc_path().display(),
            "erlmesh ready"
        );
        self.metrics.set_ready();
        if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
            warn!(error = %e, "cannot notify systemd of readiness");
        }
    }

    /// Stops accepting and lets open tunnels drain for the grace period.
    async fn drain(self) {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        info!(
            "shutting down: no new connections; open tunnels drain for up to {:?}",
            self.config.shutdown_grace
        );
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(self.config.shutdown_grace, self.tracker.wait())
            .await
            .is_err()
        {
            warn!("grace period over; closing the remaining tunnels");
        }
    }
}

/// How often the CA, certificate, key and CRL files are looked at for
/// changes: tools such as cert-manager's CSI driver replace them (a rename,
/// or a `..data` symlink swap) and send no signal.
pub const TLS_FILES_POLL: Duration = Duration::from_secs(2);

/// The contents of the TLS files (None where unreadable), to see changes
/// through renames and symlink swaps alike. Blocking: off the runtime.
fn tls_files_snapshot(files: &crate::config::TlsFiles) -> Vec<Option<Vec<u8>>> {
    files.watched().iter().map(|p| std::fs::read(p).ok()).collect()
}

/// Reloads the CA, certificate, key and CRLs when their files change on
/// disk (looked at every [`TLS_FILES_POLL`]) or on SIGHUP. New connections
/// use the new set; open tunnels keep theirs, except those whose peer the
/// new set refuses (a CRL that revokes it), which are closed. A broken set
/// is refused with an error and the previous one stays in use.
async fn reload_tls(config: Config, tls: Arc<Tls>, metrics: Arc<Metrics>, cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "cannot watch SIGHUP; certificate files are still watched");
            None
        }
    };
    let files = config.tls.clone();
    let snapshot = || {
        let f = files.clone();
        tokio::task::spawn_blocking(move || tls_files_snapshot(&f))
    };
    let Ok(mut seen) = snapshot().await else { return };
    let mut tick = tokio::time::interval(TLS_FILES_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let why = tokio::select! {
            _ = cancel.cancelled() => return,
            r = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                if r.is_none() { hup = None; continue; }
                "SIGHUP"
            }
            _ = tick.tick() => {
                let Ok(now) = snapshot().await else { return };
                if now == seen { continue; }
                seen = now;
                "files changed"
            }
        };
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
        let (f, host) = (files.clone(), config.host.clone());
        let loaded = tokio::task::spawn_blocking(move || TlsConfigs::load(&f, &host)).await;
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        match loaded {
            Ok(Ok(c)) => {
                warn_if_expiring(&config, c.not_after);
                metrics.set_own_not_after(c.not_after);
                let closed = tls.replace(c);
                info!(
                    reason = why,
                    cert = %config.tls.cert.display(),
                    ca = %config.tls.ca.display(),
                    crls = config.tls.crl.len(),
                    tunnels_closed = closed.len(),
                    "certificates reloaded"
                );
            }
            Ok(Err(e)) => {
                tracing::error!(reason = why, error = %e, "certificate reload refused; the previous certificates stay in use")
            }
            Err(e) => tracing::error!(error = %e, "certificate reload failed"),
        }
    }
}

/// Warns when this host's certificate expires within
/// [`EXPIRY_WARNING_DAYS`](crate::ops::metrics::EXPIRY_WARNING_DAYS).
fn warn_if_expiring(config: &Config, not_after: i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = (not_after - now) / crate::ops::metrics::SECS_PER_DAY;
    if days < crate::ops::metrics::EXPIRY_WARNING_DAYS {
        warn!(cert = %config.tls.cert.display(), days_left = days, "this host's certificate expires soon; issue a new one");
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
    Ok(())
}

/// Raises the soft open-file limit to the hard one, and refuses to start
/// when even that cannot hold what the configured caps may open.
pub fn raise_descriptor_limit(config: &Config) -> Result<u64, AppError> {
    let need = config.descriptors_needed();
    let io = |source| AppError::Io {
        what: "the open-file limit",
        source,
    };
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).map_err(io)?;
    let soft = rlimit::increase_nofile_limit(hard).map_err(io)?;
    if soft < need {
        return Err(AppError::DescriptorLimit {
            soft,
            hard,
            need,
            max_connections: config.max_connections,
            max_unauthenticated: config.max_unauthenticated,
            file: config.file.clone(),
        });
    }
    Ok(soft)
}

/// Warns about settings that are valid but probably not what was meant.
pub fn precheck(config: &Config) {
    if config.peers.is_empty() && config.seeds.is_empty() {
        warn!(file = %config.file.display(), "no peers or seeds configured: local nodes will reach only each other");
    }
    if config.listen.ip().is_loopback() && !config.peers.is_empty() {
        info!(listen = %config.listen, "the TLS port listens on loopback only");
    }
}
