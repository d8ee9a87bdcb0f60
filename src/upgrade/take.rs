//! The new process (`erlmesh run --take-over SOCKET`): receives the state
//! and the descriptors before anything starts, then uses them where it
//! would bind, register or dial; says `ready` when it serves.

use super::{fds, State, MAX_FDS, MAX_STATE_BYTES, STATE_VERSION};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

/// What the old process handed over and this one has not used yet.
struct Taken {
    sock: UnixStream,
    listeners: HashMap<SocketAddr, std::net::TcpListener>,
    face_nodes: HashMap<String, Vec<(String, std::net::TcpListener)>>,
    registrations: Vec<(crate::epmd::codec::NodeInfo, u32, std::net::TcpStream)>,
    tunnels: Vec<(super::TunnelState, std::net::TcpStream, std::net::TcpStream)>,
    learnt: Vec<(String, String)>,
    counters: Vec<crate::ops::metrics::CounterValue>,
    atoms: crate::firewall::atoms::AtomsState,
}

static TAKEN: Mutex<Option<Taken>> = Mutex::new(None);

/// The state format this build reads (a test may pretend otherwise, to
/// play a build that cannot read it).
fn readable_version() -> u32 {
    std::env::var("ERLMESH_TEST_STATE_VERSION")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(STATE_VERSION)
}

/// Connects to the old process at `path` and receives everything; blocking
/// (called before the runtime starts). On an error the old process is told
/// why, and serves on.
pub fn receive(path: &std::path::Path) -> Result<(), String> {
    let mut sock = UnixStream::connect(path).map_err(|e| format!("{}: {e}", path.display()))?;
    match read_state(&mut sock) {
        Ok(t) => {
            *TAKEN.lock().expect("taken lock") = Some(t);
            Ok(())
        }
        Err(why) => {
            let _ = writeln!(sock, "refused: {why}");
            Err(why)
        }
    }
}

fn read_state(sock: &mut UnixStream) -> Result<Taken, String> {
    let mut len = [0u8; 8];
    sock.read_exact(&mut len)
        .map_err(|e| format!("reading the state: {e}"))?;
    let len = u64::from_be_bytes(len) as usize;
    if len > MAX_STATE_BYTES {
        return Err(format!(
            "a state of {len} bytes is over the {MAX_STATE_BYTES} this build takes"
        ));
    }
    let mut json = vec![0u8; len];
    sock.read_exact(&mut json)
        .map_err(|e| format!("reading the state: {e}"))?;
    let version = serde_json::from_slice::<serde_json::Value>(&json)
        .ok()
        .and_then(|v| v.get("version").and_then(|v| v.as_u64()));
    let readable = readable_version();
    if version != Some(readable as u64) {
        zeroize::Zeroize::zeroize(&mut json);
        return Err(format!(
            "state format version {} (this build reads version {readable})",
            version.map_or("unknown".into(), |v| v.to_string())
        ));
    }
    let parsed = serde_json::from_slice::<State>(&json);
    zeroize::Zeroize::zeroize(&mut json);
    let mut state = parsed.map_err(|e| format!("malformed state: {e}"))?;
    if state.fds > MAX_FDS {
        return Err(format!(
            "{} descriptors is over the {MAX_FDS} this build takes",
            state.fds
        ));
    }
    let got = fds::recv(sock, state.fds).map_err(|e| format!("receiving descriptors: {e}"))?;
    let mut slots: Vec<Option<OwnedFd>> = got.into_iter().map(Some).collect();
    let mut fd = |i: usize| {
        slots
            .get_mut(i)
            .and_then(Option::take)
            .ok_or_else(|| format!("descriptor {i} missing or used twice"))
    };
    let mut t = Taken {
        sock: sock.try_clone().map_err(|e| e.to_string())?,
        listeners: HashMap::new(),
        face_nodes: HashMap::new(),
        registrations: Vec::new(),
        tunnels: Vec::new(),
        learnt: state.learnt.clone(),
        counters: state.counters.clone(),
        atoms: std::mem::take(&mut state.atoms),
    };
    for l in &state.listeners {
        let listener = std::net::TcpListener::from(fd(l.fd)?);
        match &l.node {
            None => {
                t.listeners.insert(l.addr, listener);
            }
            Some((host, node)) => t
                .face_nodes
                .entry(host.clone())
                .or_default()
                .push((node.clone(), listener)),
        }
    }
    for r in &state.registrations {
        t.registrations
            .push((r.info.clone(), r.creation, std::net::TcpStream::from(fd(r.fd)?)));
    }
    for tun in state.tunnels {
        let local = std::net::TcpStream::from(fd(tun.local)?);
        let remote = std::net::TcpStream::from(fd(tun.remote)?);
        t.tunnels.push((tun, local, remote));
    }
    Ok(t)
}

/// Whether this process is taking over from another.
pub fn taking_over() -> bool {
    TAKEN.lock().expect("taken lock").is_some()
}

/// The handed-over listener bound to `addr`, if any (nonblocking).
pub fn listener(addr: SocketAddr) -> Option<std::net::TcpListener> {
    let l = TAKEN.lock().expect("taken lock").as_mut()?.listeners.remove(&addr)?;
    l.set_nonblocking(true).ok()?;
    Some(l)
}

/// The handed-over listeners standing for `host`'s nodes: (node, listener).
pub fn face_nodes(host: &str) -> Vec<(String, std::net::TcpListener)> {
    let mut v = TAKEN
        .lock()
        .expect("taken lock")
        .as_mut()
        .and_then(|t| t.face_nodes.remove(host))
        .unwrap_or_default();
    v.retain(|(_, l)| l.set_nonblocking(true).is_ok());
    v
}

/// The handed-over EPMD registrations: (node, creation, its connection).
pub fn registrations() -> Vec<(crate::epmd::codec::NodeInfo, u32, std::net::TcpStream)> {
    let mut v = TAKEN
        .lock()
        .expect("taken lock")
        .as_mut()
        .map(|t| std::mem::take(&mut t.registrations))
        .unwrap_or_default();
    v.retain(|(_, _, s)| s.set_nonblocking(true).is_ok());
    v
}

/// The handed-over tunnels: (state, the node's socket, the peer's socket).
pub fn tunnels() -> Vec<(super::TunnelState, std::net::TcpStream, std::net::TcpStream)> {
    let mut v = TAKEN
        .lock()
        .expect("taken lock")
        .as_mut()
        .map(|t| std::mem::take(&mut t.tunnels))
        .unwrap_or_default();
    v.retain(|(_, l, r)| l.set_nonblocking(true).is_ok() && r.set_nonblocking(true).is_ok());
    v
}

/// The hosts the old process had learnt: (host, address).
pub fn learnt() -> Vec<(String, String)> {
    TAKEN
        .lock()
        .expect("taken lock")
        .as_mut()
        .map(|t| std::mem::take(&mut t.learnt))
        .unwrap_or_default()
}

/// The counters the old process had counted.
pub fn counters() -> Vec<crate::ops::metrics::CounterValue> {
    TAKEN
        .lock()
        .expect("taken lock")
        .as_mut()
        .map(|t| std::mem::take(&mut t.counters))
        .unwrap_or_default()
}

/// The atom counts the old process handed over (empty when none).
pub fn atoms() -> crate::firewall::atoms::AtomsState {
    TAKEN
        .lock()
        .expect("taken lock")
        .as_mut()
        .map(|t| std::mem::take(&mut t.atoms))
        .unwrap_or_default()
}

/// Tells the old process this one serves; what it did not use is closed.
pub fn ready() {
    if let Some(mut t) = TAKEN.lock().expect("taken lock").take() {
        if !t.listeners.is_empty() || !t.face_nodes.is_empty() {
            tracing::info!(
                unused = t.listeners.len() + t.face_nodes.len(),
                "handed-over listeners this config no longer binds are closed"
            );
        }
        if let Err(e) = writeln!(t.sock, "ready") {
            tracing::warn!(error = %e, "cannot tell the old process this one is ready");
        }
    }
}

/// Tells the old process why this one gives up (it then serves on).
pub fn refuse(why: &str) {
    if let Some(mut t) = TAKEN.lock().expect("taken lock").take() {
        let _ = writeln!(t.sock, "refused: {}", why.replace('\n', " "));
    }
}
