//! What every exact-length reader of a peer's or a local client's bytes
//! shares: one error type, and a read that tells a closed connection from
//! a failed one. The codecs themselves stay pure (epmd/codec.rs,
//! tunnel/preface.rs, tunnel/dist_handshake.rs).

use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why a message could not be read.
#[derive(Debug, Error)]
pub enum ReadError {
    #[error("connection closed before a complete message")]
    Closed,
    #[error("no complete message within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(std::io::Error),
    #[error("{0}")]
    Epmd(#[from] crate::epmd::codec::CodecError),
    #[error("{0}")]
    Preface(#[from] crate::tunnel::preface::PrefaceError),
    #[error("{0}")]
    Handshake(#[from] crate::tunnel::dist_handshake::HandshakeError),
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ReadError::Closed
        } else {
            ReadError::Io(e)
        }
    }
}

/// Fills `buf` exactly, or says why not ([`ReadError::Closed`] when the
/// connection ended first).
pub async fn read_exact<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<(), ReadError> {
    r.read_exact(buf).await?;
    Ok(())
}
