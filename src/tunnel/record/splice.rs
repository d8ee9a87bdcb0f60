//! An open tunnel: both directions at once ([`super::out`] seals the node's
//! bytes, [`super::back`] opens the peer's records), until both end
//! cleanly, one fails, or the peer's certificate is no longer accepted.

use super::back::open_to_node;
use super::out::seal_from_node;
use super::reader::Reader;
use super::sender::Sender;
use super::Carried;
use crate::firewall::filter::{Firewall, Inbound, Outbound};
use std::future::Future;
use std::io;
use std::sync::Arc;

/// A tunnel under a dist policy: its firewall, and which end dialled.
pub struct Firewalled {
    pub firewall: Arc<Firewall>,
    /// The local node dialled the peer's (an outbound tunnel).
    pub node_dials: bool,
}

/// Moves bytes both ways until both directions end: `local` is the node's
/// socket, `remote` the peer's TCP stream under TLS. Returns the bytes
/// carried (local to peer, peer to local); `counted` is told of each chunk.
/// `revoked` resolves when the peer's certificate is no longer accepted
/// (revoked or expired): the tunnel then ends with certificate_revoked.
///
/// A clean end is the node's close (close_notify to the peer) and the
/// peer's close_notify (the node's write side shut). Any other end sends
/// the peer the alert it calls for (none after the peer's own alert) and
/// resets the node's connection, so that a truncation never reaches the
/// node as a clean close.
pub async fn splice(
    local: tokio::net::TcpStream,
    remote: tokio::net::TcpStream,
    mut tx: Sender,
    mut rx: Reader,
    counted: impl Fn(u64, u64),
    firewall: Option<Firewalled>,
    revoked: impl Future<Output = ()>,
) -> io::Result<Carried> {
    let (mut lr, mut lw) = local.into_split();
    let (mut rr, mut rw) = remote.into_split();
    tx.follow(&rx);
    let result = {
        // Without a dist policy the bytes are not looked at; with one, the
        // same loops with the firewall between the records and the node.
        let out = async {
            match &firewall {
                None => seal_from_node(&mut lr, &mut rw, &mut tx, &counted, None).await,
                Some(f) => {
                    let mut reader = Outbound::new(f.firewall.clone(), f.node_dials);
                    let filter = Some((&*f.firewall, &mut reader));
                    seal_from_node(&mut lr, &mut rw, &mut tx, &counted, filter).await
                }
            }
        };
        let back = async {
            match &firewall {
                None => open_to_node(&mut rr, &mut lw, &mut rx, &counted, None).await,
                Some(f) => {
                    let mut filter = Inbound::new(f.firewall.clone(), !f.node_dials);
                    open_to_node(&mut rr, &mut lw, &mut rx, &counted, Some(&mut filter)).await
                }
            }
        };
        tokio::pin!(out, back, revoked);
        let (mut o, mut b) = (None, None);
        loop {
            if let (Some(out), Some(back)) = (o, b) {
                break Ok(Carried { out, back });
            }
            tokio::select! {
                r = &mut out, if o.is_none() => match r {
                    Ok(v) => o = Some(v),
                    Err(e) => break Err(e),
                },
                r = &mut back, if b.is_none() => match r {
                    Ok(v) => b = Some(v),
                    Err(e) => break Err(e),
                },
                _ = &mut revoked => break Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "the peer's certificate is no longer accepted (revoked or expired); tunnel closed",
                )),
            }
        }
    };
    if let Err(e) = &result {
        tx.abort(&mut rw, e).await;
        // Whole again, the node's socket is closed without a FIN first.
        if let Ok(local) = lr.reunite(lw) {
            reset(&local);
        }
    }
    result
}

/// Makes the node's connection end with a reset when it is dropped.
fn reset(local: &tokio::net::TcpStream) {
    let s = socket2::SockRef::from(local);
    if let Err(e) = s.set_linger(Some(std::time::Duration::ZERO)) {
        tracing::debug!(error = %e, "could not set the node's connection to reset");
    }
}
