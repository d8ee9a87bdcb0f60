//! What on this host listens on a port beyond loopback, read from
//! /proc/net/tcp and /proc/net/tcp6 (this network namespace's sockets).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Registrations whose check waits; beyond this a check is skipped.
pub const MAX_QUEUED_CHECKS: usize = 256;
/// /proc/net/tcp is read at most once per this interval, for every
/// registration queued meanwhile: a local process that registers names in
/// a loop costs one read a second, on a blocking thread.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Checks, off the runtime threads and at most once per [`CHECK_INTERVAL`],
/// whether newly registered nodes listen beyond loopback, and warns.
#[derive(Clone)]
pub struct ExposureChecker {
    tx: mpsc::Sender<(String, u16)>,
}

impl ExposureChecker {
    /// Starts the checking task; it ends with `cancel`.
    pub fn start(tracker: &tokio_util::task::TaskTracker, cancel: CancellationToken) -> ExposureChecker {
        let (tx, rx) = mpsc::channel(MAX_QUEUED_CHECKS);
        tracker.spawn(run(rx, cancel));
        ExposureChecker { tx }
    }

    /// Queues a check of node `name`'s distribution port.
    pub fn check(&self, name: &str, port: u16) {
        if self.tx.try_send((name.to_owned(), port)).is_err() {
            debug!(node = %name, "exposure check queue full; this registration is not checked");
        }
    }
}

async fn run(mut rx: mpsc::Receiver<(String, u16)>, cancel: CancellationToken) {
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => return,
            m = rx.recv() => match m { Some(m) => m, None => return },
        };
        let mut batch = vec![first];
        while let Ok(m) = rx.try_recv() {
            batch.push(m);
        }
        let Ok(listening) = tokio::task::spawn_blocking(listening_sockets).await else {
            return;
        };
        for (name, port) in batch {
            let exposed: Vec<_> = listening
                .iter()
                .filter(|a| a.port() == port && !a.ip().is_loopback())
                .collect();
            if !exposed.is_empty() {
                warn!(
                    node = %name,
                    ?exposed,
                    "this node's distribution port is open to the network, outside erlmesh's TLS: \
                     start it with -kernel inet_dist_use_interface {{127,0,0,1}} (erlmesh env sets it)"
                );
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(CHECK_INTERVAL) => {}
        }
    }
}

/// Listening sockets on `port` whose address is not loopback (0.0.0.0, ::
/// or a real interface's address): reachable from the network. Reads
/// /proc: blocking.
pub fn exposed_listeners(port: u16) -> Vec<SocketAddr> {
    listening_sockets()
        .into_iter()
        .filter(|a| a.port() == port && !a.ip().is_loopback())
        .collect()
}

/// Every listening TCP socket of this network namespace. Reads /proc:
/// blocking.
pub fn listening_sockets() -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for (path, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        if let Ok(text) = std::fs::read_to_string(path) {
            out.extend(parse(&text, v6));
        }
    }
    out
}

/// The listening sockets in one /proc/net/tcp{,6} table.
fn parse(text: &str, v6: bool) -> Vec<SocketAddr> {
    const LISTEN: &str = "0A";
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let local = f.nth(1)?;
            let state = f.nth(1)?;
            if state != LISTEN {
                return None;
            }
            let (ip, port) = local.split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let ip = if v6 {
                parse_v6(ip)?
            } else {
                IpAddr::V4(Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.swap_bytes()))
            };
            // An IPv4-mapped address is the IPv4 address for our purpose.
            let ip = match ip {
                IpAddr::V6(v) => v.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v)),
                v4 => v4,
            };
            Some(SocketAddr::new(ip, port))
        })
        .collect()
}

/// /proc prints an IPv6 address as four 32-bit words in host byte order.
fn parse_v6(hex: &str) -> Option<IpAddr> {
    if hex.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for w in 0..4 {
        let word = u32::from_str_radix(&hex[w * 8..w * 8 + 8], 16).ok()?;
        bytes[w * 4..w * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    Some(IpAddr::V6(Ipv6Addr::from(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines from a real /proc/net/tcp: epmd on 0.0.0.0:4369 (listening),
    /// a node on 127.0.0.1:40027 (listening), an established connection.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1111 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:9C5B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 0100007F:9C5B 0100007F:D1E4 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:1111 00000000000000000000000000000000:0000 0A 0
   1: 00000000000000000000000001000000:1112 00000000000000000000000000000000:0000 0A 0
";

    #[test]
    fn finds_listeners() {
        let v4 = parse(TCP, false);
        assert_eq!(
            v4,
            vec!["0.0.0.0:4369".parse().unwrap(), "127.0.0.1:40027".parse().unwrap()]
        );
        let v6 = parse(TCP6, true);
        assert_eq!(v6, vec!["[::]:4369".parse().unwrap(), "[::1]:4370".parse().unwrap()]);
    }

    #[test]
    fn a_real_exposed_listener_is_seen() {
        let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(exposed_listeners(port), vec![SocketAddr::from(([0, 0, 0, 0], port))]);
        let lo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(exposed_listeners(lo.local_addr().unwrap().port()).is_empty());
    }
}
