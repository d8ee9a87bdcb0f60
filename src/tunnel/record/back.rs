//! The peer's records to the node: every complete record in the buffer
//! opened in place, their plaintexts written with one vectored call.

use super::reader::{Opened, Reader, BATCH};
use super::splice::{Dir, Pause};
use crate::firewall::filter::{Inbound, Seg};
use std::io;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Records opened before their plaintexts go to the node in one `writev`.
const MAX_RANGES: usize = 2 * BATCH;
/// Pieces written to a node with one vectored call.
const MAX_SLICES: usize = 64;

/// The peer's records to the node; the peer's close_notify ends the
/// direction (the node's write side is shut), a bare TCP close is a
/// truncation (an error). Under a dist policy the plaintext goes through
/// `filter`, which passes frames where they lie, holds, or drops them.
/// Returns the bytes written to the node.
pub(super) async fn open_to_node(
    rr: &mut tokio::net::tcp::OwnedReadHalf,
    lw: &mut tokio::net::tcp::OwnedWriteHalf,
    rx: &mut Reader,
    counted: &impl Fn(u64, u64),
    mut filter: Option<&mut Inbound>,
    pause: Option<&mut Pause>,
    total: &mut u64,
) -> io::Result<Dir> {
    // One wait for a freeze for the direction's life, looked at only when
    // a change of phase woke the task.
    let mut freeze = pause.map(crate::upgrade::freeze);
    let mut segs = Vec::with_capacity(MAX_RANGES);
    let mut closed = false;
    loop {
        let mut records = 0;
        while !closed && records < MAX_RANGES {
            match rx.open_next()? {
                Some(Opened::Data(range)) => {
                    records += 1;
                    match filter.as_deref_mut() {
                        None => segs.push(Seg::Buf(range)),
                        Some(f) => f.feed(&rx.buf, range, &mut segs)?,
                    }
                }
                Some(Opened::Skip) => {}
                Some(Opened::Closed) => {
                    closed = true;
                    break;
                }
                None => break,
            }
        }
        if !segs.is_empty() {
            let n = write_segs(lw, &rx.buf, &segs).await?;
            *total += n;
            counted(0, n);
            segs.clear();
            continue;
        }
        // Records whose every frame was dropped or held: read on.
        if records > 0 {
            continue;
        }
        if closed {
            lw.shutdown().await?;
            return Ok(Dir::Done);
        }
        // Every whole record went to the node: where an upgrade stops it.
        let n = match freeze.as_mut() {
            None => rx.fill(rr).await?,
            Some(f) => tokio::select! {
                biased;
                _ = &mut *f => return Ok(Dir::Paused),
                r = rx.fill(rr) => r?,
            },
        };
        if n == 0 {
            return Err(super::reader::truncated());
        }
    }
}

/// Writes what goes to the node (record plaintext where it lies, and the
/// firewall's own bytes), in order, vectored; returns the bytes.
async fn write_segs<W: AsyncWrite + Unpin>(w: &mut W, buf: &[u8], segs: &[Seg]) -> io::Result<u64> {
    let mut total = 0u64;
    for group in segs.chunks(MAX_SLICES) {
        // A message or two (most wake-ups) fill a few slices: those are
        // all there is to set up.
        total += match group.len() {
            ..=FEW_SLICES => write_group::<FEW_SLICES, W>(w, buf, group).await?,
            _ => write_group::<MAX_SLICES, W>(w, buf, group).await?,
        };
    }
    Ok(total)
}

/// Pieces of a small write to a node.
const FEW_SLICES: usize = 4;

/// [`write_segs`] for at most `N` segments.
async fn write_group<const N: usize, W: AsyncWrite + Unpin>(w: &mut W, buf: &[u8], group: &[Seg]) -> io::Result<u64> {
    let mut slices = [io::IoSlice::new(&[]); N];
    for (slice, s) in slices.iter_mut().zip(group) {
        *slice = io::IoSlice::new(match s {
            Seg::Buf(r) => &buf[r.clone()],
            Seg::Own(v) => v,
            Seg::Len(l) => l,
        });
    }
    let bufs = &mut slices[..group.len()];
    let n = bufs.iter().map(|b| b.len() as u64).sum::<u64>();
    // Nothing to write is not a write of zero bytes (a closed socket).
    if n > 0 {
        super::write_all_vectored(w, bufs).await?;
    }
    Ok(n)
}
