//! An open tunnel: both directions at once ([`super::out`] seals the node's
//! bytes, [`super::back`] opens the peer's records), until both end
//! cleanly, one fails, or the peer's certificate is no longer accepted.

use super::back::open_to_node;
use super::out::seal_from_node;
use super::reader::Reader;
use super::sender::Sender;
use super::state;
use super::Carried;
use crate::firewall::filter::{Firewall, Inbound, Outbound};
use crate::tunnel::on_wake::OnWake;
use std::future::Future;
use std::io;
use std::sync::Arc;

/// A tunnel under a dist policy: its firewall, and which end dialled.
pub struct Firewalled {
    pub firewall: Arc<Firewall>,
    /// The local node dialled the peer's (an outbound tunnel).
    pub node_dials: bool,
    /// Both directions' state, when taken over from a previous process
    /// (`erlmesh upgrade`); fresh ones otherwise.
    pub directions: Option<(Outbound, Inbound)>,
}

/// A direction's end: done (its close went through), or stopped between
/// records because the process is handing over (`erlmesh upgrade`).
pub(super) enum Dir {
    Done,
    Paused,
}

/// What a direction watches to stop for a hand-over.
pub(super) type Pause = tokio::sync::watch::Receiver<crate::upgrade::Phase>;

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
    tx: Sender,
    rx: Reader,
    counted: impl Fn(u64, u64),
    firewall: Option<Firewalled>,
    revoked: impl Future<Output = ()>,
) -> io::Result<Carried> {
    splice_from(local, remote, tx, rx, counted, firewall, revoked, None, (false, false)).await
}

/// [`splice`] for a tunnel an upgrade may hand over: `meta` says who it is,
/// `done` which directions (out, back) already ended (a tunnel taken over
/// from the previous process). Without a dist policy it stops between
/// records when the process freezes, reports its state, and then goes on
/// (the upgrade failed) or stops for good (the new process carries it).
#[allow(clippy::too_many_arguments)] // the tunnel and who it is
pub async fn splice_from(
    local: tokio::net::TcpStream,
    remote: tokio::net::TcpStream,
    mut tx: Sender,
    mut rx: Reader,
    counted: impl Fn(u64, u64),
    mut firewall: Option<Firewalled>,
    revoked: impl Future<Output = ()>,
    meta: Option<crate::upgrade::TunnelMeta>,
    done: (bool, bool),
) -> io::Result<Carried> {
    let (mut lr, mut lw) = local.into_split();
    let (mut rr, mut rw) = remote.into_split();
    tx.follow(&rx);
    let handoff = crate::upgrade::handoff();
    let pausable = meta.is_some();
    let _participant = pausable.then(|| handoff.participant());
    // Under a dist policy both directions are read, their state kept
    // across pauses (and handed over with the tunnel).
    let mut filters: Option<(Outbound, Inbound)> = firewall.as_mut().map(|f| {
        f.directions.take().unwrap_or_else(|| {
            (
                Outbound::new(f.firewall.clone(), f.node_dials),
                Inbound::new(f.firewall.clone(), !f.node_dials),
            )
        })
    });
    let (mut pause_out, mut pause_back) = (handoff.watch(), handoff.watch());
    let mut carried = Carried::default();
    let (mut o, mut b) = done;
    tokio::pin!(revoked);
    // Polled only when the certificate's end wakes it, not at each message.
    let mut revoked = OnWake::new(revoked);
    let result = loop {
        let step = {
            // Without a dist policy the bytes are not looked at; with one, the
            // same loops with the firewall between the records and the node.
            let (po, pb) = match pausable {
                true => (Some(&mut pause_out), Some(&mut pause_back)),
                false => (None, None),
            };
            let (fo, fi) = match (&firewall, filters.as_mut()) {
                (Some(f), Some((o, i))) => (Some((&*f.firewall, o)), Some(i)),
                _ => (None, None),
            };
            let out = seal_from_node(&mut lr, &mut rw, &mut tx, &counted, fo, po, &mut carried.out);
            let back = open_to_node(&mut rr, &mut lw, &mut rx, &counted, fi, pb, &mut carried.back);
            tokio::pin!(out, back);
            // Each direction polled when its own socket (or freeze) woke
            // the task, not at every message the other carries.
            let (mut out, mut back) = (OnWake::new(out), OnWake::new(back));
            let (mut out_paused, mut back_paused) = (false, false);
            loop {
                if (o || out_paused) && (b || back_paused) {
                    break if out_paused || back_paused {
                        Ok(Dir::Paused)
                    } else {
                        Ok(Dir::Done)
                    };
                }
                // Biased: a branch completes only when its direction (or
                // the tunnel) ends, so there is no fairness to draw for.
                tokio::select! {
                    biased;
                    r = &mut out, if !o && !out_paused => match r {
                        Ok(Dir::Done) => o = true,
                        Ok(Dir::Paused) => out_paused = true,
                        Err(e) => break Err(e),
                    },
                    r = &mut back, if !b && !back_paused => match r {
                        Ok(Dir::Done) => b = true,
                        Ok(Dir::Paused) => back_paused = true,
                        Err(e) => break Err(e),
                    },
                    _ = &mut revoked => break Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "the peer's certificate is no longer accepted (revoked or expired); tunnel closed",
                    )),
                }
            }
        };
        match step {
            Ok(Dir::Done) => break Ok(carried),
            Err(e) => break Err(e),
            Ok(Dir::Paused) => {
                let meta = meta.clone().expect("only a tunnel with its meta pauses");
                let fw = match (&firewall, &filters) {
                    (Some(f), Some((o, i))) => export_firewall(&f.firewall, o, i).map(Some),
                    _ => Ok(None),
                };
                let report = match (state::export(&tx, &rx), dup2(&lr, &rr), fw) {
                    (Ok(record), Ok((local, remote)), Ok(firewall)) => crate::upgrade::Report::Tunnel {
                        meta,
                        record: Box::new(record),
                        firewall: firewall.map(Box::new),
                        out_done: o,
                        back_done: b,
                        local,
                        remote,
                    },
                    (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                        crate::upgrade::Report::Refused(format!("a tunnel: {e}"))
                    }
                };
                match handoff.report(report).await {
                    crate::upgrade::Outcome::Resume => continue,
                    // The next process carries it from here; this one exits.
                    crate::upgrade::Outcome::Handed => std::future::pending::<()>().await,
                }
            }
        }
    };
    if let Err(e) = &result {
        // Whole again (the halves are each socket's own), both sockets end
        // as a refused tunnel does: the alert, then the node's reset.
        if let (Ok(local), Ok(remote)) = (lr.reunite(lw), rr.reunite(rw)) {
            refuse(local, remote, tx, e).await;
        }
    }
    result
}

/// Ends a tunnel without carrying a byte more: the alert `e` calls for to
/// the peer, and the node's connection reset (an abnormal end, §6.1).
pub async fn refuse(local: tokio::net::TcpStream, mut remote: tokio::net::TcpStream, mut tx: Sender, e: &io::Error) {
    tx.abort(&mut remote, e).await;
    reset(&local);
}

/// A firewalled tunnel's judged state: both directions, the answers
/// waiting, what the node pair remembers.
fn export_firewall(fw: &Firewall, out: &Outbound, inb: &Inbound) -> io::Result<crate::upgrade::FirewallState> {
    let (answers, memory) = fw.export();
    Ok(crate::upgrade::FirewallState {
        in_fragments: out.in_fragments() + inb.in_fragments(),
        outbound: out.export().map_err(io::Error::other)?,
        inbound: inb.export().map_err(io::Error::other)?,
        answers,
        memory,
    })
}

/// Copies of the node's and the peer's socket descriptors.
fn dup2(
    lr: &tokio::net::tcp::OwnedReadHalf,
    rr: &tokio::net::tcp::OwnedReadHalf,
) -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    let local: &tokio::net::TcpStream = lr.as_ref();
    let remote: &tokio::net::TcpStream = rr.as_ref();
    Ok((crate::upgrade::dup(local)?, crate::upgrade::dup(remote)?))
}

/// Makes the node's connection end with a reset when it is dropped.
fn reset(local: &tokio::net::TcpStream) {
    let s = socket2::SockRef::from(local);
    if let Err(e) = s.set_linger(Some(std::time::Duration::ZERO)) {
        tracing::debug!(error = %e, "could not set the node's connection to reset");
    }
}
