//! Moving bytes both ways between a local socket and a TLS stream.
//!
//! `copy_bidirectional` carries the half-close semantics distribution needs:
//! EOF on one side becomes a shutdown (TLS close_notify, TCP FIN) on the
//! other at once, and an error on either side ends both. Back-pressure is
//! natural: each direction holds at most one buffer and reads again only
//! after writing it out, so a slow reader slows the sender.

use tokio::io::{AsyncRead, AsyncWrite};

/// Per-direction buffer. Measured (bench/tunnels.sh, bench/run.sh): 64 KiB
/// cost about 300 KiB of RSS per tunnel per process and gave ~15 % more
/// bulk throughput than 32 KiB; 16 KiB cost ~20 % of bulk for little less
/// memory than 32 KiB. 32 KiB keeps a tunnel near 50 KiB per process (two
/// such buffers plus rustls' record buffers) and fills two TLS records per read.
pub const SPLICE_BUF: usize = 32 * 1024;

/// Bytes carried, local-to-peer and peer-to-local.
#[derive(Debug, Clone, Copy, Default)]
pub struct Carried {
    pub out: u64,
    pub back: u64,
}

/// Splices `local` and `remote` until both directions have ended.
pub async fn splice<L, R>(local: &mut L, remote: &mut R) -> std::io::Result<Carried>
where
    L: AsyncRead + AsyncWrite + Unpin + ?Sized,
    R: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (out, back) = tokio::io::copy_bidirectional_with_sizes(local, remote, SPLICE_BUF, SPLICE_BUF).await?;
    Ok(Carried { out, back })
}

/// Whether an error ending a splice is an ordinary disconnect (logged at
/// debug) rather than something an operator should see.
pub fn is_disconnect(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | NotConnected
    )
}

/// Runs a tunnel's splice until it ends or `live` says its peer's
/// certificate is no longer accepted (then the tunnel is dropped, closing
/// both sockets: the node sees the connection end).
pub async fn until_revoked(
    live: &crate::tls::LiveGuard,
    splice: impl std::future::Future<Output = std::io::Result<Carried>>,
) -> std::io::Result<Carried> {
    tokio::select! {
        r = splice => r,
        _ = live.cancelled() => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "the peer's certificate is no longer accepted (revoked or expired); tunnel closed",
        )),
    }
}
