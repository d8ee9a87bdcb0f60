//! The node's bytes to the peer: read straight into record slots, sealed in
//! place, written with one call.

use super::reader::BATCH;
use super::sender::Sender;
use super::splice::{Dir, Pause};
use super::{APPLICATION_DATA, HEADER, MAX_PLAINTEXT, TAG};
use crate::firewall::filter::{Firewall, Outbound};
use std::io;
use tokio::io::AsyncReadExt;

/// A full outbound record: header, plaintext, content type, tag.
const FULL_RECORD: usize = HEADER + MAX_PLAINTEXT + 1 + TAG;

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
    // One wait for a freeze for the direction's life: polled each read,
    // registered once.
    let mut freeze = pause.map(|p| Box::pin(crate::upgrade::frozen(p)));
    // Record slots, back to back: a read fills them in order, so every
    // sealed record but the last is full and they lie contiguous. One slot
    // at first, BATCH once a read fills it.
    let mut recs = vec![0u8; FULL_RECORD];
    // Answers, and the rare read split to let them in, are sealed here.
    let mut spare = Vec::new();
    loop {
        let n = match filter.as_mut() {
            // Between records, waiting on the node: where an upgrade stops it.
            None => match freeze.as_mut() {
                None => read_slots(lr, &mut recs).await?,
                Some(f) => tokio::select! {
                    biased;
                    _ = f.as_mut() => return Ok(Dir::Paused),
                    r = read_slots(lr, &mut recs) => r?,
                },
            },
            Some((fw, reader)) => tokio::select! {
                biased;
                // Answers still waiting go over with the firewall's state.
                _ = async {
                    match freeze.as_mut() {
                        Some(f) => f.as_mut().await,
                        None => std::future::pending().await,
                    }
                } => return Ok(Dir::Paused),
                r = read_slots(lr, &mut recs) => r?,
                _ = fw.wake.notified() => {
                    if reader.at_boundary() {
                        send_answers(rw, tx, fw, &mut spare).await?;
                    }
                    continue;
                }
            },
        };
        if n == 0 {
            tx.close(rw).await?;
            return Ok(Dir::Done);
        }
        if let Some((fw, reader)) = filter.as_mut() {
            if fw.has_answers() {
                // Answers wait for a frame boundary: split the read there.
                let plain = plaintext_of(&recs, n);
                let mut off = 0;
                while off < n {
                    let used = reader.feed(&plain[off..], true);
                    seal_all(rw, tx, &plain[off..off + used], &mut spare).await?;
                    off += used;
                    if reader.at_boundary() {
                        send_answers(rw, tx, fw, &mut spare).await?;
                    }
                }
                *total += n as u64;
                counted(n as u64, 0);
                continue;
            }
            let mut left = n;
            for slot in recs.chunks(FULL_RECORD) {
                let k = left.min(MAX_PLAINTEXT);
                reader.feed(&slot[HEADER..HEADER + k], false);
                left -= k;
                if left == 0 {
                    break;
                }
            }
        }
        tx.before_data(rw, n.div_ceil(MAX_PLAINTEXT)).await?;
        let (mut left, mut end) = (n, 0);
        for slot in recs.chunks_mut(FULL_RECORD) {
            let k = left.min(MAX_PLAINTEXT);
            end += tx.keys.seal(slot, k, APPLICATION_DATA)?;
            left -= k;
            if left == 0 {
                break;
            }
        }
        tx.put(rw, &recs[..end]).await?;
        *total += n as u64;
        counted(n as u64, 0);
    }
}

/// The plaintext of the first `n` bytes read into record slots.
fn plaintext_of(recs: &[u8], n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n);
    for slot in recs.chunks(FULL_RECORD) {
        let k = (n - v.len()).min(MAX_PLAINTEXT);
        v.extend_from_slice(&slot[HEADER..HEADER + k]);
        if v.len() == n {
            break;
        }
    }
    v
}

/// Seals `data` into as many records as it takes, written with one call,
/// after the KeyUpdate that is due or asked for.
async fn seal_all(
    rw: &mut tokio::net::tcp::OwnedWriteHalf,
    tx: &mut Sender,
    data: &[u8],
    recs: &mut Vec<u8>,
) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    tx.before_data(rw, data.len().div_ceil(MAX_PLAINTEXT)).await?;
    recs.clear();
    for chunk in data.chunks(MAX_PLAINTEXT) {
        let start = recs.len();
        recs.resize(start + HEADER + chunk.len() + 1 + TAG, 0);
        recs[start + HEADER..start + HEADER + chunk.len()].copy_from_slice(chunk);
        let len = tx.keys.seal(&mut recs[start..], chunk.len(), APPLICATION_DATA)?;
        recs.truncate(start + len);
    }
    tx.put(rw, recs).await
}

/// Sends the firewall's answers to the peer's node (between two frames).
async fn send_answers(
    rw: &mut tokio::net::tcp::OwnedWriteHalf,
    tx: &mut Sender,
    fw: &Firewall,
    recs: &mut Vec<u8>,
) -> io::Result<()> {
    for a in fw.take_answers() {
        seal_all(rw, tx, &a, recs).await?;
    }
    Ok(())
}

/// Reads a node's bytes straight into the plaintext parts of the record
/// slots in `recs`; returns how many were read. The first slot is read with
/// tokio's own read, which marks the socket drained after a short read (no
/// extra system call for a small message); only a full first slot is
/// followed by one `readv` into the others.
async fn read_slots(r: &mut tokio::net::tcp::OwnedReadHalf, recs: &mut Vec<u8>) -> io::Result<usize> {
    let n = r.read(&mut recs[HEADER..HEADER + MAX_PLAINTEXT]).await?;
    if n < MAX_PLAINTEXT {
        return Ok(n);
    }
    recs.resize(BATCH * FULL_RECORD, 0);
    let mut slots = recs[FULL_RECORD..].chunks_mut(FULL_RECORD);
    let mut bufs: [io::IoSliceMut; BATCH - 1] = std::array::from_fn(|_| {
        io::IoSliceMut::new(&mut slots.next().expect("BATCH slots")[HEADER..HEADER + MAX_PLAINTEXT])
    });
    match r.try_read_vectored(&mut bufs) {
        Ok(more) => Ok(n + more),
        // The rest (an error or the end) shows on the next read.
        Err(_) => Ok(n),
    }
}
