//! The node's bytes to the peer: read in one piece, sealed where they lie
//! (one record per [`MAX_PLAINTEXT`] bytes, each record's header and
//! trailer beside it), written with one vectored call.

use super::reader::BATCH;
use super::sender::Sender;
use super::splice::{Dir, Pause};
use super::{HEADER, MAX_PLAINTEXT, TAG};
use crate::firewall::filter::{Firewall, Outbound};
use std::io;
use tokio::io::{AsyncReadExt, AsyncWrite};

/// The most of a node's bytes read with one call: a batch of full records.
const READ_MAX: usize = BATCH * MAX_PLAINTEXT;

/// The node's bytes to the peer, a KeyUpdate first when the key is due or
/// the peer asked; close_notify at the node's end. Under a dist policy the
/// node's frames are read too (for the pids it gives the peer), and
/// answers to refused requests go out between two of its frames. Returns
/// the bytes.
pub(super) async fn seal_from_node(
    lr: &mut tokio::net::tcp::OwnedReadHalf,
    rw: &mut tokio::net::tcp::OwnedWriteHalf,
    tx: &mut Sender,
    counted: &impl Fn(u64, u64),
    mut filter: Option<(&Firewall, &mut Outbound)>,
    pause: Option<&mut Pause>,
    total: &mut u64,
) -> io::Result<Dir> {
    // One wait for a freeze for the direction's life, looked at only when
    // a change of phase woke the task.
    let mut freeze = pause.map(crate::upgrade::freeze);
    // The node's bytes: one record's worth at first, a batch once a read
    // fills it (bulk traffic), so that tunnels carrying small messages
    // keep small buffers; and one spare byte past them (`seal_all`).
    let mut plain = vec![0u8; MAX_PLAINTEXT + 1];
    loop {
        let n = match filter.as_mut() {
            // Between records, waiting on the node: where an upgrade stops it.
            None => match freeze.as_mut() {
                None => read_batch(lr, &mut plain).await?,
                Some(f) => tokio::select! {
                    biased;
                    _ = &mut *f => return Ok(Dir::Paused),
                    r = read_batch(lr, &mut plain) => r?,
                },
            },
            Some((fw, reader)) => tokio::select! {
                biased;
                // Answers still waiting go over with the firewall's state.
                _ = async {
                    match freeze.as_mut() {
                        Some(f) => f.await,
                        None => std::future::pending().await,
                    }
                } => return Ok(Dir::Paused),
                r = read_batch(lr, &mut plain) => r?,
                _ = fw.wake.notified() => {
                    if reader.at_boundary() {
                        send_answers(rw, tx, fw).await?;
                    }
                    continue;
                }
            },
        };
        if n == 0 {
            tx.close(rw).await?;
            return Ok(Dir::Done);
        }
        match filter.as_mut() {
            // Answers wait for a frame boundary: split the read there.
            Some((fw, reader)) if fw.has_answers() => {
                let mut off = 0;
                while off < n {
                    let used = reader.feed(&plain[off..n], true);
                    seal_all(rw, tx, &mut plain[off..], used).await?;
                    off += used;
                    if reader.at_boundary() {
                        send_answers(rw, tx, fw).await?;
                    }
                }
            }
            Some((_, reader)) => {
                reader.feed(&plain[..n], false);
                seal_all(rw, tx, &mut plain, n).await?;
            }
            None => seal_all(rw, tx, &mut plain, n).await?,
        }
        *total += n as u64;
        counted(n as u64, 0);
    }
}

/// Reads a node's bytes into `buf`, all but its last (spare) byte; a read
/// that fills it grows it to [`READ_MAX`] and a spare byte. tokio's read
/// marks the socket drained after a short read: no extra system call for
/// a small message.
async fn read_batch(r: &mut tokio::net::tcp::OwnedReadHalf, buf: &mut Vec<u8>) -> io::Result<usize> {
    let room = buf.len() - 1;
    let n = r.read(&mut buf[..room]).await?;
    if n == room && room < READ_MAX {
        buf.resize(READ_MAX + 1, 0);
    }
    Ok(n)
}

/// Seals `buf[..n]` in place into as many records as it takes, after the
/// KeyUpdate that is due or asked for, and writes them, a batch of records
/// per vectored call: each record is its header, its sealed plaintext
/// where it lies, and its trailer (content type and tag). `buf` holds at
/// least one byte past `n`, left as it was ([`super::Keys::seal_scatter`]).
pub(super) async fn seal_all<W: AsyncWrite + Unpin>(
    rw: &mut W,
    tx: &mut Sender,
    buf: &mut [u8],
    n: usize,
) -> io::Result<()> {
    if n == 0 {
        return Ok(());
    }
    tx.before_data(rw, n.div_ceil(MAX_PLAINTEXT)).await?;
    for start in (0..n).step_by(READ_MAX) {
        let end = n.min(start + READ_MAX);
        let mut heads = [[0u8; HEADER]; BATCH];
        let mut tails = [[0u8; 1 + TAG]; BATCH];
        let records = (end - start).div_ceil(MAX_PLAINTEXT);
        let at = |i: usize| start + i * MAX_PLAINTEXT..end.min(start + (i + 1) * MAX_PLAINTEXT);
        for (i, (head, tail)) in heads.iter_mut().zip(&mut tails).take(records).enumerate() {
            *head = tx.keys.seal_scatter(buf, at(i), tail)?;
        }
        let mut pieces = [io::IoSlice::new(&[]); 3 * BATCH];
        for i in 0..records {
            pieces[3 * i] = io::IoSlice::new(&heads[i]);
            pieces[3 * i + 1] = io::IoSlice::new(&buf[at(i)]);
            pieces[3 * i + 2] = io::IoSlice::new(&tails[i]);
        }
        tx.put_vectored(rw, &mut pieces[..3 * records]).await?;
    }
    Ok(())
}

/// Sends the firewall's answers to the peer's node (between two frames).
async fn send_answers(rw: &mut tokio::net::tcp::OwnedWriteHalf, tx: &mut Sender, fw: &Firewall) -> io::Result<()> {
    for mut a in fw.take_answers() {
        let n = a.len();
        a.push(0);
        seal_all(rw, tx, &mut a, n).await?;
    }
    Ok(())
}
