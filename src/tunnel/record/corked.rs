//! The socket under rustls until the hand-over: reads stop at TLS record
//! boundaries, so no byte of the peer's stays behind in rustls' buffers.

use super::HEADER;
use std::io;
use tokio::io::{AsyncRead, AsyncWrite};

/// A socket as rustls sees it until a tunnel takes the connection over:
/// reads never go past the end of the TLS record being read, so that once
/// the handshake (and the preface) are done, every byte read from the
/// socket is in a record rustls has processed. Bytes of the next record
/// left in rustls' buffers would be lost to the record layer (the ktls
/// crate's `CorkStream` guards against the same).
pub struct Corked<S> {
    inner: S,
    header: [u8; HEADER],
    header_have: usize,
    body_left: usize,
}

impl<S> Corked<S> {
    pub fn new(inner: S) -> Corked<S> {
        Corked {
            inner,
            header: [0; HEADER],
            header_have: 0,
            body_left: 0,
        }
    }

    /// Whether everything read so far ends on a record boundary.
    pub fn at_record_boundary(&self) -> bool {
        self.header_have == 0 && self.body_left == 0
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Corked<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let this = self.get_mut();
        let want = if this.body_left > 0 {
            this.body_left
        } else {
            HEADER - this.header_have
        };
        let n = want.min(buf.remaining());
        let dst = buf.initialize_unfilled_to(n);
        let mut limited = tokio::io::ReadBuf::new(dst);
        std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_read(cx, &mut limited))?;
        let got = limited.filled().len();
        if this.body_left > 0 {
            this.body_left -= got;
        } else {
            this.header[this.header_have..this.header_have + got].copy_from_slice(limited.filled());
            this.header_have += got;
            if this.header_have == HEADER {
                this.body_left = u16::from_be_bytes([this.header[3], this.header[4]]) as usize;
                this.header_have = 0;
            }
        }
        buf.advance(got);
        std::task::Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Corked<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
