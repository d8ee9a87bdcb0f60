//! For tests and fuzzing only (`cfg(test)` or the `testing` feature, never
//! in a release build): the record parser with fixed keys, and a sender
//! that writes any record a misbehaving peer could.

use super::keys::{Keys, Side};
use super::reader::{Opened, Reader};
use super::sender::Sender;
use super::{DEFAULT_RECORDS_PER_KEY, HANDSHAKE, HEADER, KEY_UPDATE, TAG};
use std::io;
use tokio::io::AsyncWrite;

/// Opens records from `bytes` with fixed test keys until an error or the
/// end; for fuzzing the record parser. Returns the records' contents.
pub fn fuzz_open(bytes: &[u8]) -> Vec<Vec<u8>> {
    let Ok(keys) = Keys::fixed(DEFAULT_RECORDS_PER_KEY) else {
        return Vec::new();
    };
    let mut rx = Reader::new(keys, Side::Server);
    let n = bytes.len().min(rx.buf.len());
    rx.buf[..n].copy_from_slice(&bytes[..n]);
    rx.end = n;
    let mut out = Vec::new();
    while let Ok(Some(o)) = rx.open_next() {
        match o {
            Opened::Data(r) => out.push(rx.buf[r].to_vec()),
            Opened::Skip => {}
            Opened::Closed => break,
        }
    }
    out
}

/// Seals `data` as records with the same fixed test keys (see [`fuzz_open`]).
pub fn fuzz_seal(data: &[&[u8]]) -> Vec<u8> {
    let mut keys = Keys::fixed(DEFAULT_RECORDS_PER_KEY).expect("test keys");
    let mut out = Vec::new();
    for d in data {
        let mut rec = vec![0u8; HEADER + d.len() + 1 + TAG];
        rec[HEADER..HEADER + d.len()].copy_from_slice(d);
        let len = keys.seal(&mut rec, d.len(), super::APPLICATION_DATA).expect("seal");
        out.extend_from_slice(&rec[..len]);
    }
    out
}

/// Writes one record of any kind a peer could send, sealed with the
/// tunnel's real keys: `content` of inner type `ctype`, then `pad` zero
/// bytes. A KeyUpdate moves the keys on, as a peer's own would; nothing
/// else is checked (that is the receiver's job).
pub async fn send_record<W: AsyncWrite + Unpin>(
    w: &mut W,
    tx: &mut Sender,
    content: &[u8],
    ctype: u8,
    pad: usize,
) -> io::Result<()> {
    let mut rec = vec![0u8; HEADER + content.len() + 1 + pad + TAG];
    rec[HEADER..HEADER + content.len()].copy_from_slice(content);
    let len = tx.keys.seal_padded(&mut rec, content.len(), ctype, pad)?;
    tx.put(w, &rec[..len]).await?;
    if ctype == HANDSHAKE && content.first() == Some(&KEY_UPDATE) && content.len() == 5 {
        tx.keys.update()?;
    }
    Ok(())
}
