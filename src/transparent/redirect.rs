//! The redirect listener: connections the kernel sent here, on 127.0.0.1
//! and ::1, each handed to the face of the peer host it was going to.

use super::Intercept;
use crate::mesh::face::MAX_FACE_CONNECTIONS;
use crate::tunnel::accept::accept_loop;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn, Instrument};

/// Binds the redirect port on 127.0.0.1 and, when the host has IPv6, ::1.
pub async fn bind(port: u16) -> std::io::Result<Vec<TcpListener>> {
    let mut v = vec![crate::app::bind_or_take(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?];
    match crate::app::bind_or_take(SocketAddr::from((Ipv6Addr::LOCALHOST, port))).await {
        Ok(l) => v.push(l),
        // No IPv6 on this host: nothing can be redirected to ::1 either.
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
            debug!("no ::1 here; IPv6 connections are not intercepted")
        }
        Err(e) => return Err(e),
    }
    Ok(v)
}

impl Intercept {
    /// Serves the redirect listeners until shutdown.
    pub fn serve(self: &Arc<Self>, listeners: Vec<TcpListener>, cancel: CancellationToken, tracker: &TaskTracker) {
        let slots = Arc::new(Semaphore::new(MAX_FACE_CONNECTIONS));
        for l in listeners {
            let me = self.clone();
            tracker.spawn(accept_loop(
                l,
                slots.clone(),
                cancel.clone(),
                tracker.clone(),
                "redirect",
                move |s, from, _| {
                    let me = me.clone();
                    async move { me.redirected(s, from).await }
                },
            ));
        }
    }

    /// One redirected connection: where it was going decides what it is.
    async fn redirected(self: Arc<Self>, stream: TcpStream, from: SocketAddr) {
        let to = match original_destination(&stream, from) {
            Ok(a) => a,
            Err(e) => {
                warn!(%from, error = %e, "a connection on the redirect port that the kernel did not redirect; closed");
                self.metrics.redirect("unknown");
                return;
            }
        };
        let span = tracing::debug_span!("redirected", %from, %to);
        async move {
            let Some((face, node)) = self.lookup(to.ip(), to.port()) else {
                warn!("redirected to an address no peer host stands for (the rules are out of step?); closed");
                self.metrics.redirect("unknown");
                return;
            };
            if to.port() == self.epmd_port {
                self.metrics.redirect("epmd");
                return face.epmd(stream, from).await;
            }
            let node = match node {
                Some(n) => n,
                None => match self.find_node(&face, to.port()).await {
                    Some(n) => n,
                    None => {
                        warn!("no node of the peer host listens at that port; closed");
                        self.metrics.redirect("unknown");
                        return;
                    }
                },
            };
            self.metrics.redirect("dist");
            face.carry(stream, node).await
        }
        .instrument(span)
        .await
    }
}

/// Where a redirected connection was going (SO_ORIGINAL_DST, or
/// IP6T_SO_ORIGINAL_DST for IPv6).
fn original_destination(stream: &TcpStream, from: SocketAddr) -> std::io::Result<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let addr = match from.ip() {
        IpAddr::V4(_) => sock.original_dst_v4()?,
        IpAddr::V6(_) => sock.original_dst_v6()?,
    };
    let addr = addr
        .as_socket()
        .ok_or_else(|| std::io::Error::other("not an internet address"))?;
    let local = stream.local_addr()?;
    if addr == local {
        // Connected to the redirect port itself: not redirected.
        return Err(std::io::Error::other("not redirected"));
    }
    Ok(addr)
}
