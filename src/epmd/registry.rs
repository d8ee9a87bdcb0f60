//! Where this host's nodes are registered: the embedded registry, or a
//! system epmd asked over loopback.

use super::codec::{self, NodeInfo, Request};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// How long a question to a system epmd may take, connect to close.
pub const SYSTEM_EPMD_TIMEOUT: Duration = Duration::from_secs(3);

/// The nodes registered with the embedded EPMD.
#[derive(Debug)]
pub struct Registry {
    nodes: Mutex<HashMap<String, Registered>>,
    next_creation: AtomicU32,
    next_id: AtomicU32,
}

#[derive(Debug, Clone)]
struct Registered {
    info: NodeInfo,
    /// Identifies the registration connection, so a stale one cannot
    /// unregister a newer node of the same name.
    id: u32,
}

/// A registration that ends (the name is freed) when dropped.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<Registry>,
    name: String,
    id: u32,
    /// The creation handed to the node.
    pub creation: u32,
}

impl Registration {
    /// The registered node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the node registered.
    pub fn info(&self) -> NodeInfo {
        self.registry.lookup(&self.name).unwrap_or_else(|| NodeInfo {
            name: self.name.clone(),
            port: 0,
            node_type: 0,
            protocol: 0,
            high: 0,
            low: 0,
            extra: Vec::new(),
        })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut nodes = self.registry.nodes.lock().expect("registry lock");
        if nodes.get(&self.name).is_some_and(|r| r.id == self.id) {
            nodes.remove(&self.name);
        }
    }
}

impl Registry {
    /// An empty registry. Creations start from the clock so that a node
    /// registering after an erlmesh restart gets a new one, as with epmd.
    pub fn new() -> Arc<Self> {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
            .unwrap_or(1);
        Arc::new(Registry {
            nodes: Mutex::new(HashMap::new()),
            next_creation: AtomicU32::new(seed.max(4)),
            next_id: AtomicU32::new(1),
        })
    }

    /// Registers a node; `None` when the name is taken by a live node.
    pub fn register(self: &Arc<Self>, info: NodeInfo) -> Option<Registration> {
        // Creation 0 means "unknown" to OTP and 1..3 are what old nodes
        // get; keep 32-bit creations above them.
        let creation = self.next_creation.fetch_add(1, Ordering::Relaxed).max(4);
        self.register_as(info, creation)
    }

    /// Registers a node under the creation a previous erlmesh gave it (an
    /// upgrade hands registrations over).
    pub fn register_as(self: &Arc<Self>, info: NodeInfo, creation: u32) -> Option<Registration> {
        let mut nodes = self.nodes.lock().expect("registry lock");
        if nodes.contains_key(&info.name) {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let name = info.name.clone();
        nodes.insert(name.clone(), Registered { info, id });
        Some(Registration {
            registry: self.clone(),
            name,
            id,
            creation,
        })
    }

    /// The node registered under `name`.
    pub fn lookup(&self, name: &str) -> Option<NodeInfo> {
        self.nodes
            .lock()
            .expect("registry lock")
            .get(name)
            .map(|r| r.info.clone())
    }

    /// All registered nodes, sorted by name.
    pub fn names(&self) -> Vec<(String, u16)> {
        let nodes = self.nodes.lock().expect("registry lock");
        let mut v: Vec<_> = nodes.values().map(|r| (r.info.name.clone(), r.info.port)).collect();
        v.sort();
        v
    }
}

/// Why the local EPMD could not be asked.
#[derive(Debug, Error)]
pub enum LocalEpmdError {
    #[error("system epmd at {addr}: {source}")]
    Io { addr: SocketAddr, source: std::io::Error },
    #[error("system epmd at {addr} did not answer within {SYSTEM_EPMD_TIMEOUT:?}")]
    Timeout { addr: SocketAddr },
    #[error("system epmd at {addr}: {source}")]
    Codec {
        addr: SocketAddr,
        source: codec::CodecError,
    },
}

/// This host's EPMD, as erlmesh asks it about local nodes.
#[derive(Debug, Clone)]
pub enum LocalEpmd {
    Embedded(Arc<Registry>),
    /// An epmd already listening on 127.0.0.1 at this port.
    System {
        port: u16,
    },
}

impl LocalEpmd {
    /// The node registered under `name`, with its real port.
    pub async fn lookup(&self, name: &str) -> Result<Option<NodeInfo>, LocalEpmdError> {
        match self {
            LocalEpmd::Embedded(r) => Ok(r.lookup(name)),
            LocalEpmd::System { port } => {
                let req = Request::PortPlease2 { name: name.to_owned() };
                let reply = ask_system(*port, &req, 1024).await?;
                codec::parse_port2_resp(&reply).map_err(|source| LocalEpmdError::Codec {
                    addr: system_addr(*port),
                    source,
                })
            }
        }
    }

    /// Every registered node and its real port.
    pub async fn names(&self) -> Result<Vec<(String, u16)>, LocalEpmdError> {
        match self {
            LocalEpmd::Embedded(r) => Ok(r.names()),
            LocalEpmd::System { port } => {
                let reply = ask_system(*port, &Request::Names, codec::MAX_NAMES_REPLY).await?;
                codec::parse_names_reply(&reply)
                    .map(|(_, nodes)| nodes)
                    .map_err(|source| LocalEpmdError::Codec {
                        addr: system_addr(*port),
                        source,
                    })
            }
        }
    }
}

fn system_addr(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Sends one request to the system epmd and reads its reply until it closes.
async fn ask_system(port: u16, req: &Request, max: usize) -> Result<Vec<u8>, LocalEpmdError> {
    let addr = system_addr(port);
    let work = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(&codec::encode_request(req)).await?;
        let mut buf = Vec::new();
        (&mut s).take(max as u64).read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    match timeout(SYSTEM_EPMD_TIMEOUT, work).await {
        Ok(Ok(buf)) => Ok(buf),
        Ok(Err(source)) => Err(LocalEpmdError::Io { addr, source }),
        Err(_) => Err(LocalEpmdError::Timeout { addr }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, port: u16) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            port,
            node_type: 77,
            protocol: 0,
            high: 6,
            low: 5,
            extra: vec![],
        }
    }

    #[test]
    fn a_name_is_freed_only_by_its_own_registration() {
        let r = Registry::new();
        let first = r.register(node("a", 1000)).unwrap();
        assert!(r.register(node("a", 1001)).is_none(), "duplicate name refused");
        drop(first);
        let second = r.register(node("a", 1002)).unwrap();
        assert_eq!(r.lookup("a").unwrap().port, 1002);
        assert!(second.creation >= 4);
        assert_eq!(r.names(), vec![("a".into(), 1002)]);
        drop(second);
        assert!(r.lookup("a").is_none());
    }
}
