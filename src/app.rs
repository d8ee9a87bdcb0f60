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
use anyhow::{bail, Context as _};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// Concurrent connections to the embedded EPMD: one per registered node
/// plus short questions.
pub const MAX_LOCAL_EPMD_CONNECTIONS: usize = 1024;

/// Runs the proxy until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let (files, host) = (config.tls.clone(), config.host.clone());
    let tls = Tls::new(tokio::task::spawn_blocking(move || TlsConfigs::load(&files, &host)).await??);
    warn_if_expiring(&config, tls.current().not_after);
    let metrics = Metrics::new(config.peers.iter().map(|p| p.host.as_str()));
    metrics.set_own_not_after(tls.current().not_after);

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();

    // An epmd reachable from the network undoes what erlmesh is for.
    let port = config.epmd_port;
    let exposed = tokio::task::spawn_blocking(move || crate::ops::exposure::exposed_listeners(port)).await?;
    if !exposed.is_empty() {
        bail!(
            "the EPMD port {} is open to the network on {:?}: stop that epmd (systemctl disable --now epmd.socket epmd.service) \
             or restart it with ERL_EPMD_ADDRESS=127.0.0.1, then start erlmesh again",
            config.epmd_port,
            exposed
        );
    }

    // Bind everything first: a port that is taken stops the start, with
    // nothing half-running.
    let local = match config.epmd {
        EpmdMode::Embedded => {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, config.epmd_port));
            let l = TcpListener::bind(addr).await.map_err(|e| {
                anyhow::anyhow!(
                    "cannot bind the EPMD port {addr}: {e} (is a system epmd running? stop it, or set epmd = \"system\" in {})",
                    config.file.display()
                )
            })?;
            let registry = Registry::new();
            let slots = Arc::new(Semaphore::new(MAX_LOCAL_EPMD_CONNECTIONS));
            let (reg, port, m) = (registry.clone(), config.epmd_port, metrics.clone());
            let exposure = crate::ops::exposure::ExposureChecker::start(&tracker, cancel.clone());
            tracker.spawn(accept_loop(
                l,
                slots,
                cancel.clone(),
                tracker.clone(),
                "epmd",
                move |s, from, c| epmd::embedded::handle(s, from, reg.clone(), port, m.clone(), exposure.clone(), c),
            ));
            LocalEpmd::Embedded(registry)
        }
        EpmdMode::System => LocalEpmd::System { port: config.epmd_port },
    };

    let tls_listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("{}: listen: cannot bind {}", config.file.display(), config.listen))?;
    let listen_addr = tls_listener.local_addr()?;

    let mesh = Mesh::new(&config, tls.clone(), metrics.clone(), cancel.clone(), tracker.clone());
    mesh.start_static().await?;
    let inetrc = config.inetrc_path();

    let ctx = Context {
        tls: tls.clone(),
        local,
        handshake_timeout: config.handshake_timeout,
        first_bytes_timeout: config.first_bytes_timeout,
        metrics: metrics.clone(),
        host: config.host.clone(),
        mesh: mesh.clone(),
    };
    let admission = Admission::new(
        config.max_unauthenticated,
        config.max_unauthenticated_per_source,
        config.max_connections,
    );
    let m = metrics.clone();
    tracker.spawn(accept_admitted(
        tls_listener,
        admission,
        cancel.clone(),
        tracker.clone(),
        move |why| m.refused(why.label()),
        move |s, from, slot, c| inbound::handle(s, from, slot, ctx.clone(), c),
    ));

    tracker.spawn(reload_tls(config.clone(), tls.clone(), metrics.clone(), cancel.clone()));

    // The control endpoint: always on a unix socket in state_dir (for
    // `erlmesh status`), and on a loopback TCP port when configured.
    let sock = config.state_dir.join(crate::ops::control::SOCKET_FILE);
    let _ = std::fs::remove_file(&sock);
    let unix = tokio::net::UnixListener::bind(&sock)
        .with_context(|| format!("{}: cannot bind the control socket", sock.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
    }
    let (m, h, c, t) = (
        metrics.clone(),
        config.host.to_string(),
        cancel.clone(),
        tracker.clone(),
    );
    tracker.spawn(async move {
        loop {
            let s = tokio::select! {
                _ = c.cancelled() => break,
                r = unix.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        warn!(error = %e, "control socket accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            t.spawn(crate::ops::control::serve_one(s, m.clone(), h.clone()));
        }
    });
    if let Some(addr) = config.metrics {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("{}: metrics: cannot bind {addr}", config.file.display()))?;
        let (m, h) = (metrics.clone(), config.host.to_string());
        tracker.spawn(accept_loop(
            l,
            Arc::new(Semaphore::new(16)),
            cancel.clone(),
            tracker.clone(),
            "metrics",
            move |s, _, _| crate::ops::control::serve_one(s, m.clone(), h.clone()),
        ));
    }

    // Joining through seeds comes last: every listener and handler is in
    // place while the other hosts dial back to verify this one.
    tracker.spawn(mesh.clone().learner());
    mesh.join().await;
    tracker.spawn(mesh.clone().gossip_forever());

    info!(
        host = %config.host,
        listen = %listen_addr,
        epmd = %format!("127.0.0.1:{} ({:?})", config.epmd_port, config.epmd).to_lowercase(),
        peers = config.peers.len(),
        resolver = %inetrc.display(),
        "erlmesh ready"
    );
    // Every listener is bound: tell systemd (Type=notify), if it asked.
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        warn!(error = %e, "cannot notify systemd of readiness");
    }

    shutdown.await;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    info!(
        "shutting down: no new connections; open tunnels drain for up to {:?}",
        config.shutdown_grace
    );
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(config.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        warn!("grace period over; closing the remaining tunnels");
    }
    Ok(())
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
pub async fn shutdown_signal() -> anyhow::Result<()> {
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
pub fn raise_descriptor_limit(config: &Config) -> anyhow::Result<u64> {
    let need = config.descriptors_needed();
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    let soft = rlimit::increase_nofile_limit(hard)?;
    if soft < need {
        bail!(
            "the open-file limit is {soft} (hard limit {hard}), but max_connections = {}, max_unauthenticated = {} and \
             the local EPMD ({MAX_LOCAL_EPMD_CONNECTIONS}) need up to {need}: raise it (LimitNOFILE={need} in the \
             systemd unit, or `ulimit -n {need}`) or lower those caps in {}",
            config.max_connections,
            config.max_unauthenticated,
            config.file.display()
        );
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
