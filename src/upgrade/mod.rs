//! `erlmesh upgrade`: the running erlmesh starts the binary now installed
//! at its path and hands it everything live, so that no node sees a
//! nodedown.
//!
//! The old process (`give.rs`) binds a socket in state_dir that only its
//! own user can open, starts the new binary with `--take-over` and that
//! socket's path, and checks that the process that connects is the one it
//! started. It then freezes: every accept loop stops accepting, every open
//! tunnel stops between two records (each direction at the point where it
//! holds no bytes: waiting to read), every local node's EPMD registration
//! waits; each of these *participants* reports what it is (a listener, a
//! tunnel with its record state, a registration) with a copy of its
//! descriptors. The state (versioned, bounded, [`State`]) and the
//! descriptors go to the new process, which starts with them
//! (`take.rs`): it serves the same listeners, carries the same tunnels on
//! from the same record, keeps the same registrations, and then says it
//! is ready. The old process tells systemd the new main PID and exits 0;
//! until then it has changed nothing, so if the new process exits, refuses
//! the state or is not ready in time, it thaws and serves on as before.
//!
//! Not handed over: connections still being set up (their setup fails
//! and the node retries).

pub mod fds;
pub mod give;
pub mod take;

use crate::epmd::codec::NodeInfo;
use crate::tunnel::on_wake::OnWake;
use crate::tunnel::record::state::RecordState;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// The state format this build writes and reads.
pub const STATE_VERSION: u32 = 1;
/// The largest state accepted (JSON; a tunnel's is a few KiB).
pub const MAX_STATE_BYTES: usize = 256 << 20;
/// The most descriptors handed over at once.
pub const MAX_FDS: usize = 65_536;
/// How long every participant has to stop between records.
pub const FREEZE_WAIT: Duration = Duration::from_secs(3);
/// How long the new process has to connect to the old one.
pub const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// How long the new process has to report ready once it has the state.
pub const READY_WAIT: Duration = Duration::from_secs(30);
/// How long the old process looks for a refusal's reason after sending the
/// state failed (a new process that refused has written it already).
pub const REFUSAL_WAIT: Duration = Duration::from_secs(1);
/// How long `erlmesh upgrade` waits for the running erlmesh's answer.
pub fn command_wait() -> Duration {
    CONNECT_WAIT + FREEZE_WAIT + READY_WAIT + Duration::from_secs(5)
}

/// The socket the old process hands over on, in state_dir.
pub const SOCKET_FILE: &str = "upgrade.sock";

/// Where the process stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Participants stop and report.
    Frozen,
    /// The new process took everything: participants stay stopped until
    /// this process exits.
    Handed,
}

/// Who a tunnel is, as its task knew it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TunnelMeta {
    /// "out": a local node dialled; "in": a peer's node dialled.
    pub dir: String,
    pub peer: String,
    pub local_node: String,
    pub remote_node: String,
    /// The peer's certificate chain (DER), checked again on every reload.
    pub chain: Vec<Vec<u8>>,
    /// The name the peer's certificate was checked against (outbound).
    pub server_name: Option<String>,
}

/// A tunnel's distribution firewall, judged so far: both directions
/// (framing, atom caches, fragmented messages in progress, frames held),
/// the answers waiting for the peer, and what the node pair remembers
/// (pids and references given, forged, the machinery's).
#[derive(Serialize, Deserialize)]
pub struct FirewallState {
    /// Fragmented messages in progress (both directions), for the summary.
    pub in_fragments: usize,
    pub outbound: serde_json::Value,
    pub inbound: serde_json::Value,
    pub answers: Vec<Vec<u8>>,
    pub memory: crate::firewall::memory::MemoryState,
}

/// One tunnel in the state; its two descriptors are `local` and `remote`.
#[derive(Serialize, Deserialize)]
pub struct TunnelState {
    pub meta: TunnelMeta,
    pub record: RecordState,
    /// Under a dist policy: the firewall's state.
    pub firewall: Option<FirewallState>,
    pub out_done: bool,
    pub back_done: bool,
    pub local: usize,
    pub remote: usize,
}

/// A listener in the state, by the address it is bound to; for a face's
/// per-node listener, the peer host and node it stands for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListenerState {
    pub addr: SocketAddr,
    pub node: Option<(String, String)>,
    pub fd: usize,
}

/// A local node's registration with the embedded EPMD.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegistrationState {
    pub info: NodeInfo,
    pub creation: u32,
    pub fd: usize,
}

/// Everything handed over, but the descriptors (which follow it).
#[derive(Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub fds: usize,
    pub listeners: Vec<ListenerState>,
    pub tunnels: Vec<TunnelState>,
    pub registrations: Vec<RegistrationState>,
    /// Hosts learnt through gossip: (host, address).
    pub learnt: Vec<(String, String)>,
    /// Every counter: (name, labels, value).
    #[serde(default)]
    pub counters: Vec<crate::ops::metrics::CounterValue>,
    /// The atoms restricted peer hosts brought to local nodes (the count
    /// goes on: a node keeps its atoms across erlmesh's upgrades).
    #[serde(default)]
    pub atoms: crate::firewall::atoms::AtomsState,
}

/// What one participant reports when frozen.
pub enum Report {
    Listener {
        addr: SocketAddr,
        node: Option<(String, String)>,
        fd: OwnedFd,
    },
    Tunnel {
        meta: TunnelMeta,
        record: Box<RecordState>,
        firewall: Option<Box<FirewallState>>,
        out_done: bool,
        back_done: bool,
        local: OwnedFd,
        remote: OwnedFd,
    },
    Registration {
        info: NodeInfo,
        creation: u32,
        fd: OwnedFd,
    },
    /// It cannot be handed over (the reason).
    Refused(String),
}

/// The process-wide hand-over state.
pub struct Handoff {
    phase: watch::Sender<Phase>,
    participants: AtomicUsize,
    reports: Mutex<Vec<Report>>,
    reported: Notify,
}

static HANDOFF: LazyLock<Handoff> = LazyLock::new(|| Handoff {
    phase: watch::channel(Phase::Running).0,
    participants: AtomicUsize::new(0),
    reports: Mutex::new(Vec::new()),
    reported: Notify::new(),
});

/// The process's hand-over state.
pub fn handoff() -> &'static Handoff {
    &HANDOFF
}

/// Counts a participant for as long as it lives.
pub struct Participant(());

impl Drop for Participant {
    fn drop(&mut self) {
        HANDOFF.participants.fetch_sub(1, Ordering::SeqCst);
        HANDOFF.reported.notify_waiters();
    }
}

/// What a participant does after it reported.
pub enum Outcome {
    /// The upgrade failed: go on as before.
    Resume,
    /// The new process has it all: stop for good (this process exits).
    Handed,
}

impl Handoff {
    /// Registers a participant: something that must stop and report when
    /// the process freezes.
    pub fn participant(&self) -> Participant {
        self.participants.fetch_add(1, Ordering::SeqCst);
        Participant(())
    }

    /// Moves the process to phase `p`.
    pub(crate) fn set_phase(&self, p: Phase) {
        self.phase.send_replace(p);
    }

    /// Changes of phase, for participants to watch.
    pub fn watch(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Reports a frozen participant and waits for the outcome.
    pub async fn report(&self, r: Report) -> Outcome {
        let mut phase = self.phase.subscribe();
        self.reports.lock().expect("handoff lock").push(r);
        self.reported.notify_waiters();
        match phase.wait_for(|p| *p != Phase::Frozen).await.map(|p| *p) {
            Ok(Phase::Handed) => Outcome::Handed,
            _ => Outcome::Resume,
        }
    }
}

/// Resolves once the process freezes (at once when it is frozen).
pub async fn frozen(phase: &mut watch::Receiver<Phase>) {
    let _ = phase.wait_for(|p| *p != Phase::Running).await;
}

/// A wait for the process to freeze that a tunnel direction polls before
/// each read: the phase's watch is looked at only when it woke the task
/// (a change of phase), not at every read.
pub fn freeze(phase: &mut watch::Receiver<Phase>) -> OnWake<std::pin::Pin<Box<impl Future<Output = ()> + '_>>> {
    OnWake::new(Box::pin(frozen(phase)))
}

/// A copy of a socket's descriptor, for the new process.
pub fn dup(fd: &impl std::os::fd::AsFd) -> std::io::Result<OwnedFd> {
    fd.as_fd().try_clone_to_owned()
}

/// Face listeners standing for a peer's node: address → (host, node).
static FACE_NODES: LazyLock<Mutex<std::collections::HashMap<SocketAddr, (String, String)>>> =
    LazyLock::new(Default::default);

/// Notes that the listener at `addr` stands for `node` of peer `host`.
pub fn face_node_listener(addr: SocketAddr, host: &str, node: &str) {
    FACE_NODES
        .lock()
        .expect("face nodes lock")
        .insert(addr, (host.to_owned(), node.to_owned()));
}

/// A frozen accept loop: reports its listener and waits; returns to go on
/// accepting, or never (the new process has the listener).
pub async fn pause_listener(listener: &tokio::net::TcpListener) {
    let report = match (listener.local_addr(), dup(listener)) {
        (Ok(addr), Ok(fd)) => Report::Listener {
            addr,
            node: FACE_NODES.lock().expect("face nodes lock").get(&addr).cloned(),
            fd,
        },
        (Err(e), _) | (_, Err(e)) => Report::Refused(format!("a listener's descriptor: {e}")),
    };
    if let Outcome::Handed = handoff().report(report).await {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A phase change as [`Handoff::set_phase`] makes it, on a channel of
    /// the test's own.
    fn change(tx: &watch::Sender<Phase>, p: Phase) {
        tx.send_replace(p);
    }

    #[tokio::test]
    async fn a_freeze_wakes_an_idle_direction_even_after_one_undone_before_it_looked() {
        let (tx, rx) = watch::channel(Phase::Running);
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        // A direction waiting only on the freeze (nothing else wakes it),
        // telling of each time it is polled and whether it stopped.
        let direction = tokio::spawn(async move {
            let mut rx = rx;
            let mut f = freeze(&mut rx);
            std::future::poll_fn(|cx| {
                let r = std::pin::Pin::new(&mut f).poll(cx);
                seen_tx.send(r.is_ready()).unwrap();
                r
            })
            .await
        });
        // Registered, idle.
        assert_eq!(seen.recv().await, Some(false));
        // A freeze undone before the direction was polled (an upgrade that
        // failed at once): one wake-up, and it is still running.
        change(&tx, Phase::Frozen);
        change(&tx, Phase::Running);
        assert_eq!(seen.recv().await, Some(false));
        // Not polled again while nothing changes.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(seen.try_recv().is_err());
        // The next freeze reaches it.
        change(&tx, Phase::Frozen);
        let stopped = tokio::time::timeout(std::time::Duration::from_secs(5), seen.recv()).await;
        assert_eq!(
            stopped.ok().flatten(),
            Some(true),
            "the second freeze did not wake the direction"
        );
        direction.await.unwrap();
    }
}
