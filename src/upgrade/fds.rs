//! Descriptors between processes over a Unix socket (SCM_RIGHTS), in
//! messages of at most [`FDS_PER_MESSAGE`]; and who is at the other end.

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags,
};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// Descriptors in one message (the kernel takes at most 253).
pub const FDS_PER_MESSAGE: usize = 200;

/// Sends `fds`, in order.
pub fn send(sock: &UnixStream, fds: &[OwnedFd]) -> std::io::Result<()> {
    for chunk in fds.chunks(FDS_PER_MESSAGE) {
        let borrowed: Vec<BorrowedFd<'_>> = chunk.iter().map(|f| f.as_fd()).collect();
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
            return Err(std::io::Error::other("descriptor message too large"));
        }
        sendmsg(sock, &[IoSlice::new(b"F")], &mut control, SendFlags::empty())?;
    }
    Ok(())
}

/// Receives exactly `n` descriptors, in order (close-on-exec).
pub fn recv(sock: &UnixStream, n: usize) -> std::io::Result<Vec<OwnedFd>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut byte = [0u8; 1];
        let got = recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut byte)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        if got.bytes == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the old process closed after {} of {n} descriptors", out.len()),
            ));
        }
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = msg {
                out.extend(fds);
            }
        }
        if out.len() > n {
            return Err(std::io::Error::other("more descriptors than announced"));
        }
    }
    Ok(out)
}

/// The process id at the other end of `sock`.
pub fn peer_pid(sock: &UnixStream) -> std::io::Result<u32> {
    let cred = rustix::net::sockopt::socket_peercred(sock)?;
    Ok(cred.pid.as_raw_nonzero().get() as u32)
}
