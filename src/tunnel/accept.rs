//! The accept loop every listener shares: a connection slot is taken before
//! `accept`, each connection runs as a tracked task, and the loop ends on
//! shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// Pause after an accept error (EMFILE and the like) so a full descriptor
/// table does not turn the loop into a busy spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts on `listener` until `cancel` fires, running `handle` for each
/// connection while holding one permit of `slots`. Each connection gets a
/// child token of `cancel`, so shutdown reaches it too.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    slots: Arc<Semaphore>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    what: &'static str,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    // Stops accepting while the process hands over (`erlmesh upgrade`).
    let _participant = crate::upgrade::handoff().participant();
    let mut phase = crate::upgrade::handoff().watch();
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = crate::upgrade::frozen(&mut phase) => {
                crate::upgrade::pause_listener(&listener).await;
                continue;
            }
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, addr) = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = crate::upgrade::frozen(&mut phase) => {
                crate::upgrade::pause_listener(&listener).await;
                continue;
            }
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        if let Err(e) = stream.set_nodelay(true) {
            debug!(listener = what, error = %e, "set TCP_NODELAY failed");
        }
        let fut = handle(stream, addr, cancel.child_token());
        tracker.spawn(async move {
            fut.await;
            drop(permit);
        });
    }
    debug!(listener = what, "accept loop ended");
}

/// Admission on the TLS port. A connection whose TLS handshake has not
/// completed is anonymous: it holds one of `max_unauthenticated` slots, at
/// most `max_per_source` of them per source address, and loses it at the
/// first-bytes or handshake deadline. Once the peer's certificate is
/// verified it moves to one of `max_connections` authenticated slots,
/// which anonymous connections therefore can never take.
///
/// When every anonymous slot is taken, a newcomer evicts the oldest
/// connection that has sent nothing yet (connections that have sent their
/// ClientHello are kept) and takes its slot once it is given back: a flood
/// of idle connections from many sources, each within its share, cannot
/// keep a real peer's new tunnel out. Invariant: at most one newcomer
/// waits per evicted connection, so connections held or waiting stay
/// within twice `max_unauthenticated`.
pub struct Admission {
    anonymous: Arc<Semaphore>,
    authenticated: Arc<Semaphore>,
    per_source: Mutex<HashMap<IpAddr, usize>>,
    max_per_source: usize,
    /// Anonymous connections that have sent nothing, oldest first (by
    /// admission number), each with the token that evicts it.
    silent: Mutex<std::collections::BTreeMap<u64, CancellationToken>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// How long a newcomer waits for the slot of the connection it evicted.
const EVICTION_WAIT: Duration = Duration::from_secs(2);

/// Why a connection was refused at admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every anonymous slot is taken.
    Anonymous,
    /// This source address holds its share of anonymous slots.
    PerSource,
}

impl Refused {
    pub fn label(self) -> &'static str {
        match self {
            Refused::Anonymous => "unauthenticated_slots_full",
            Refused::PerSource => "per_source_limit",
        }
    }
}

/// An anonymous slot, released when dropped.
pub struct AnonymousSlot {
    admission: Arc<Admission>,
    ip: IpAddr,
    id: u64,
    /// The pool's permit; None while waiting for an evicted connection's.
    permit: Option<OwnedSemaphorePermit>,
    /// Cancelled when a newcomer evicts this connection (it sent nothing).
    evicted: CancellationToken,
}

impl Drop for AnonymousSlot {
    fn drop(&mut self) {
        self.admission.silent.lock().expect("admission lock").remove(&self.id);
        let mut per = self.admission.per_source.lock().expect("admission lock");
        if let Some(n) = per.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.ip);
            }
        }
    }
}

impl AnonymousSlot {
    /// Waits, within [`EVICTION_WAIT`], for the pool's permit when this
    /// slot was admitted by evicting a silent connection; whether it holds
    /// one.
    pub async fn ready(&mut self) -> bool {
        if self.permit.is_some() {
            return true;
        }
        let acquire = self.admission.anonymous.clone().acquire_owned();
        match tokio::time::timeout(EVICTION_WAIT, acquire).await {
            Ok(Ok(p)) => {
                self.permit = Some(p);
                true
            }
            _ => false,
        }
    }

    /// The connection has sent its first bytes: it is no longer evictable.
    pub fn spoke(&self) {
        self.admission.silent.lock().expect("admission lock").remove(&self.id);
    }

    /// Resolves when a newcomer evicts this (silent) connection.
    pub async fn evicted(&self) {
        self.evicted.cancelled().await
    }

    /// Trades this slot for an authenticated one, if one is free.
    pub fn authenticated(self) -> Option<OwnedSemaphorePermit> {
        self.admission.authenticated.clone().try_acquire_owned().ok()
    }
}

impl Admission {
    pub fn new(max_unauthenticated: usize, max_per_source: usize, max_connections: usize) -> Arc<Admission> {
        Arc::new(Admission {
            anonymous: Arc::new(Semaphore::new(max_unauthenticated)),
            authenticated: Arc::new(Semaphore::new(max_connections)),
            per_source: Mutex::new(HashMap::new()),
            max_per_source,
            silent: Mutex::new(Default::default()),
            next_id: Default::default(),
        })
    }

    /// An anonymous slot for a connection from `ip`, if its share and the
    /// pool allow one.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<AnonymousSlot, Refused> {
        let ip = ip.to_canonical();
        let mut per = self.per_source.lock().expect("admission lock");
        let n = per.get(&ip).copied().unwrap_or(0);
        if n >= self.max_per_source {
            return Err(Refused::PerSource);
        }
        let mut silent = self.silent.lock().expect("admission lock");
        let permit = match self.anonymous.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            // Full: the oldest connection that has sent nothing makes room.
            Err(_) => match silent.pop_first() {
                Some((_, victim)) => {
                    victim.cancel();
                    None
                }
                None => return Err(Refused::Anonymous),
            },
        };
        per.insert(ip, n + 1);
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let evicted = CancellationToken::new();
        silent.insert(id, evicted.clone());
        Ok(AnonymousSlot {
            admission: self.clone(),
            ip,
            id,
            permit,
            evicted,
        })
    }
}

/// How often refusals at admission are logged (with their count since).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The TLS port's accept loop: accepts at once (so the kernel's backlog
/// never fills behind a flood), admits through `admission` or closes, and
/// runs `handle` for each admitted connection.
pub async fn accept_admitted<F, Fut>(
    listener: TcpListener,
    admission: Arc<Admission>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    refused: impl Fn(Refused),
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, AnonymousSlot, CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut last_log: Option<tokio::time::Instant> = None;
    let mut unlogged = 0u64;
    let _participant = crate::upgrade::handoff().participant();
    let mut phase = crate::upgrade::handoff().watch();
    loop {
        let (stream, addr) = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = crate::upgrade::frozen(&mut phase) => {
                crate::upgrade::pause_listener(&listener).await;
                continue;
            }
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    warn!(listener = "tls", error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let slot = match admission.admit(addr.ip()) {
            Ok(s) => s,
            Err(why) => {
                refused(why);
                unlogged += 1;
                if last_log.map_or(true, |t| t.elapsed() >= REFUSAL_LOG_INTERVAL) {
                    warn!(from = %addr, reason = why.label(), refused = unlogged, "connections refused before TLS (count since the last such line)");
                    last_log = Some(tokio::time::Instant::now());
                    unlogged = 0;
                }
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            debug!(listener = "tls", error = %e, "set TCP_NODELAY failed");
        }
        tracker.spawn(handle(stream, addr, slot, cancel.child_token()));
    }
    debug!(listener = "tls", "accept loop ended");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 3, n])
    }

    #[tokio::test]
    async fn a_full_pool_evicts_its_oldest_silent_connection_only() {
        let adm = Admission::new(2, 4, 8);
        let mut first = adm.admit(ip(1)).unwrap();
        let mut second = adm.admit(ip(2)).unwrap();
        assert!(first.ready().await && second.ready().await);
        // Full: the newcomer evicts the oldest silent one (first)...
        let mut third = adm.admit(ip(3)).unwrap();
        tokio::time::timeout(Duration::from_secs(1), first.evicted())
            .await
            .expect("the oldest silent connection is evicted");
        assert!(!second.evicted.is_cancelled());
        // ...and takes its permit once it is given back.
        drop(first);
        assert!(third.ready().await);
        // Connections that have spoken are never evicted: with none silent
        // left, a newcomer is refused.
        second.spoke();
        third.spoke();
        assert_eq!(adm.admit(ip(4)).err(), Some(Refused::Anonymous));
        // The per-source share still holds.
        let adm = Admission::new(8, 1, 8);
        let _one = adm.admit(ip(5)).unwrap();
        assert_eq!(adm.admit(ip(5)).err(), Some(Refused::PerSource));
    }

    #[tokio::test]
    async fn a_newcomer_waits_only_for_the_slot_it_freed() {
        let adm = Admission::new(1, 4, 8);
        let first = adm.admit(ip(1)).unwrap();
        let mut second = adm.admit(ip(2)).unwrap();
        assert!(first.evicted.is_cancelled());
        // The evicted connection never lets go: the newcomer gives up
        // after EVICTION_WAIT.
        assert!(!second.ready().await);
        drop(first);
    }
}
