//! The TLS 1.3 record layer for established tunnels.
//!
//! rustls does the handshake and the preface; once a tunnel is open, its
//! traffic secrets are taken over (`dangerous_extract_secrets`) and records
//! are sealed and opened here, in place, in buffers this module owns:
//! outbound, a node's bytes are read straight into a record and sealed
//! there; inbound, several records are read at once, opened in place and
//! their plaintext written to the node from where it lies. That saves the
//! copies and re-allocations of rustls' buffered path (see the README's
//! performance section). The wire format is plain TLS 1.3 (RFC 8446 §5),
//! so either end may use rustls' own path instead.
//!
//! Key updates are not supported: a peer that sends one has its tunnel
//! closed (rustls only asks for one after 2^24 records per key for AES-GCM,
//! about 270 GB on one tunnel). Post-handshake NewSessionTicket messages
//! are skipped.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::ConnectionTrafficSecrets;
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest plaintext in one record (RFC 8446 §5.1).
pub const MAX_PLAINTEXT: usize = 16 * 1024;
/// Largest ciphertext a peer may send: plaintext, content type, padding, tag.
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
const HEADER: usize = 5;
const TAG: usize = 16;
const APPLICATION_DATA: u8 = 23;
const HANDSHAKE: u8 = 22;
const ALERT: u8 = 21;
const CHANGE_CIPHER_SPEC: u8 = 20;
/// Records read from a node or from the peer with one system call: large
/// writes on loopback cost far less per byte than 16 KiB ones (see the
/// README's performance section).
const BATCH: usize = 4;
/// Records opened before their plaintexts go to the node in one `writev`.
const MAX_RANGES: usize = 2 * BATCH;
/// A full outbound record: header, plaintext, content type, tag.
const FULL_RECORD: usize = HEADER + MAX_PLAINTEXT + 1 + TAG;
/// Inbound buffer: room for the largest record a peer may send; it grows to
/// a batch of them once a read fills it (bulk traffic), so that tunnels
/// carrying small messages keep small buffers.
const RX_MIN: usize = HEADER + MAX_CIPHERTEXT;
const RX_MAX: usize = BATCH * RX_MIN;
/// Records sealed or opened under one key before the tunnel is closed (and
/// the node reconnects with fresh keys): below AES-GCM's limit of 2^24.5
/// records per key (RFC 8446 §5.5), since key updates are not implemented.
const MAX_RECORDS_PER_KEY: u64 = 1 << 24;

fn invalid(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// One direction's key, IV and sequence number.
pub struct Keys {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Keys {
    /// Keys from rustls' extracted secrets for one direction.
    pub fn new(seq: u64, secrets: ConnectionTrafficSecrets) -> io::Result<Keys> {
        let (alg, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&aead::CHACHA20_POLY1305, key, iv),
            _ => return Err(invalid("unsupported cipher suite")),
        };
        let key = UnboundKey::new(alg, key.as_ref()).map_err(|_| invalid("bad traffic key"))?;
        let iv: [u8; 12] = iv.as_ref().try_into().map_err(|_| invalid("bad IV length"))?;
        Ok(Keys {
            key: LessSafeKey::new(key),
            iv,
            seq,
        })
    }

    fn nonce(&mut self) -> io::Result<Nonce> {
        if self.seq >= MAX_RECORDS_PER_KEY {
            return Err(invalid(
                "record limit for this key reached; the tunnel closes and reconnects",
            ));
        }
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        self.seq += 1;
        Ok(Nonce::assume_unique_for_key(n))
    }

    /// Seals `rec[HEADER..HEADER + n]` (plaintext of type `ctype`) in place;
    /// returns the record's length. `rec` must have room for the type byte
    /// and the tag after the plaintext.
    fn seal(&mut self, rec: &mut [u8], n: usize, ctype: u8) -> io::Result<usize> {
        rec[HEADER + n] = ctype;
        let clen = n + 1 + TAG;
        rec[..HEADER].copy_from_slice(&[APPLICATION_DATA, 3, 3, (clen >> 8) as u8, clen as u8]);
        let hdr: [u8; HEADER] = rec[..HEADER].try_into().expect("header length");
        let nonce = self.nonce()?;
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(hdr), &mut rec[HEADER..HEADER + n + 1])
            .map_err(|_| invalid("seal failed"))?;
        rec[HEADER + n + 1..HEADER + clen].copy_from_slice(tag.as_ref());
        Ok(HEADER + clen)
    }
}

/// The sending keys and the inbound reader for a tunnel whose TLS 1.3
/// secrets were taken from rustls (`dangerous_extract_secrets`).
pub fn take_over(secrets: rustls::ExtractedSecrets) -> io::Result<(Keys, Reader)> {
    let tx = Keys::new(secrets.tx.0, secrets.tx.1)?;
    let rx = Reader::new(Keys::new(secrets.rx.0, secrets.rx.1)?);
    Ok((tx, rx))
}

/// Writes one record carrying `data` (at most [`MAX_PLAINTEXT`]).
async fn write_record<W: AsyncWrite + Unpin>(w: &mut W, keys: &mut Keys, data: &[u8], ctype: u8) -> io::Result<()> {
    let mut rec = vec![0u8; HEADER + data.len() + 1 + TAG];
    rec[HEADER..HEADER + data.len()].copy_from_slice(data);
    let len = keys.seal(&mut rec, data.len(), ctype)?;
    w.write_all(&rec[..len]).await
}

/// Sends application data as one record (for the tunnel's status byte).
pub async fn send<W: AsyncWrite + Unpin>(w: &mut W, keys: &mut Keys, data: &[u8]) -> io::Result<()> {
    write_record(w, keys, data, APPLICATION_DATA).await
}

/// What one inbound record carried.
enum Opened {
    /// Application data at this range of the buffer.
    Data(std::ops::Range<usize>),
    /// Nothing for the node (a session ticket, a compatibility record).
    Skip,
    /// The peer's close_notify.
    Closed,
}

/// Inbound records: a buffer, the bytes in it, and the keys.
pub struct Reader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    keys: Keys,
}

impl Reader {
    /// A reader that starts with no buffered bytes.
    pub fn new(keys: Keys) -> Reader {
        Reader {
            buf: vec![0u8; RX_MIN],
            start: 0,
            end: 0,
            keys,
        }
    }

    /// Opens the next complete record in the buffer, if there is one.
    fn open_next(&mut self) -> io::Result<Option<Opened>> {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < HEADER {
            return Ok(None);
        }
        let len = u16::from_be_bytes([avail[3], avail[4]]) as usize;
        if len > MAX_CIPHERTEXT {
            return Err(invalid("record too long"));
        }
        if avail.len() < HEADER + len {
            return Ok(None);
        }
        let hdr: [u8; HEADER] = avail[..HEADER].try_into().expect("header length");
        let body = self.start + HEADER..self.start + HEADER + len;
        self.start += HEADER + len;
        match hdr[0] {
            APPLICATION_DATA => {}
            CHANGE_CIPHER_SPEC => return Ok(Some(Opened::Skip)),
            _ => return Err(invalid("unexpected record type")),
        }
        let nonce = self.keys.nonce()?;
        let plain_len = self
            .keys
            .key
            .open_in_place(nonce, Aad::from(hdr), &mut self.buf[body.clone()])
            .map_err(|_| invalid("record failed authentication"))?
            .len();
        // TLSInnerPlaintext: content, content type, zero padding.
        let inner = &self.buf[body.start..body.start + plain_len];
        let type_at = inner
            .iter()
            .rposition(|&b| b != 0)
            .ok_or_else(|| invalid("record without content type"))?;
        let content = body.start..body.start + type_at;
        match inner[type_at] {
            APPLICATION_DATA => Ok(Some(Opened::Data(content))),
            HANDSHAKE => {
                // Only NewSessionTicket (4) is expected after the handshake.
                if self.buf.get(content.start) == Some(&4) {
                    Ok(Some(Opened::Skip))
                } else {
                    Err(invalid(
                        "post-handshake message other than a session ticket (key update?)",
                    ))
                }
            }
            ALERT if self.buf[content.clone()] == [1, 0] => Ok(Some(Opened::Closed)),
            ALERT => Err(invalid("TLS alert from the peer")),
            _ => Err(invalid("unknown inner content type")),
        }
    }

    /// Reads more bytes from `r`, first moving a partial record to the front.
    async fn fill<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> io::Result<usize> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let room = self.buf.len() - self.end;
        let n = r.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        if n == room && self.buf.len() < RX_MAX {
            self.buf.resize(RX_MAX, 0);
        }
        Ok(n)
    }

    /// Reads until the first application data and returns it (for the
    /// tunnel's status byte); later records stay buffered.
    pub async fn first<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> io::Result<Vec<u8>> {
        loop {
            match self.open_next()? {
                Some(Opened::Data(range)) => return Ok(self.buf[range].to_vec()),
                Some(Opened::Skip) => continue,
                Some(Opened::Closed) => return Err(io::ErrorKind::UnexpectedEof.into()),
                None => {
                    if self.fill(r).await? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
            }
        }
    }
}

/// Moves bytes both ways until both directions end: `local` is the node's
/// socket, `remote` the peer's TCP stream under TLS. Returns the bytes
/// carried (local to peer, peer to local); `counted` is told of each chunk.
pub async fn splice(
    local: tokio::net::TcpStream,
    remote: tokio::net::TcpStream,
    mut tx: Keys,
    mut rx: Reader,
    counted: impl Fn(u64, u64),
) -> io::Result<crate::splice::Carried> {
    let (mut lr, mut lw) = local.into_split();
    let (mut rr, mut rw) = remote.into_split();
    let counted = &counted;
    let out = async {
        // Record slots, back to back: a read fills them in order, so every
        // sealed record but the last is full and they lie contiguous. One
        // slot at first, BATCH once a read fills it (bulk traffic).
        let mut recs = vec![0u8; FULL_RECORD];
        let mut total = 0u64;
        loop {
            let n = read_slots(&mut lr, &mut recs).await?;
            if n == 0 {
                write_record(&mut rw, &mut tx, &[1, 0], ALERT).await?;
                rw.shutdown().await?;
                return Ok::<_, io::Error>(total);
            }
            let (mut left, mut end) = (n, 0);
            for slot in recs.chunks_mut(FULL_RECORD) {
                let k = left.min(MAX_PLAINTEXT);
                end += tx.seal(slot, k, APPLICATION_DATA)?;
                left -= k;
                if left == 0 {
                    break;
                }
            }
            rw.write_all(&recs[..end]).await?;
            total += n as u64;
            counted(n as u64, 0);
        }
    };
    let back = async {
        let mut total = 0u64;
        let mut ranges = Vec::with_capacity(MAX_RANGES);
        let mut closed = false;
        loop {
            // Open every complete record in the buffer, then hand all their
            // plaintext to the node with one vectored write.
            while !closed && ranges.len() < MAX_RANGES {
                match rx.open_next()? {
                    Some(Opened::Data(range)) => ranges.push(range),
                    Some(Opened::Skip) => {}
                    Some(Opened::Closed) => {
                        closed = true;
                        break;
                    }
                    None => break,
                }
            }
            if !ranges.is_empty() {
                let n = write_ranges(&mut lw, &rx.buf, &ranges).await?;
                total += n;
                counted(0, n);
                ranges.clear();
                continue;
            }
            if closed {
                lw.shutdown().await?;
                return Ok::<_, io::Error>(total);
            }
            if rx.fill(&mut rr).await? == 0 {
                // TCP closed without close_notify: a truncation.
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    };
    tokio::pin!(out, back);
    let (mut o, mut b) = (None, None);
    while o.is_none() || b.is_none() {
        tokio::select! {
            r = &mut out, if o.is_none() => o = Some(r?),
            r = &mut back, if b.is_none() => b = Some(r?),
        }
    }
    Ok(crate::splice::Carried {
        out: o.unwrap_or(0),
        back: b.unwrap_or(0),
    })
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

/// Writes the parts of `buf` at `ranges` (at most [`MAX_RANGES`]) in order
/// (vectored); returns the bytes written.
async fn write_ranges<W: AsyncWrite + Unpin>(
    w: &mut W,
    buf: &[u8],
    ranges: &[std::ops::Range<usize>],
) -> io::Result<u64> {
    let mut slices = [io::IoSlice::new(&[]); MAX_RANGES];
    for (slice, r) in slices.iter_mut().zip(ranges) {
        *slice = io::IoSlice::new(&buf[r.clone()]);
    }
    let total: usize = ranges.iter().map(|r| r.len()).sum();
    let mut bufs = &mut slices[..ranges.len()];
    while !bufs.is_empty() {
        let n = w.write_vectored(bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        io::IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(total as u64)
}

/// Opens records from `bytes` with fixed test keys until an error or the
/// end; for fuzzing the record parser. Returns the records' contents.
#[doc(hidden)]
pub fn fuzz_open(bytes: &[u8]) -> Vec<Vec<u8>> {
    let secrets = ConnectionTrafficSecrets::Aes256Gcm {
        key: rustls::crypto::cipher::AeadKey::from([7u8; 32]),
        iv: rustls::crypto::cipher::Iv::new([9u8; 12]),
    };
    let Ok(keys) = Keys::new(0, secrets) else {
        return Vec::new();
    };
    let mut rx = Reader::new(keys);
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
#[doc(hidden)]
pub fn fuzz_seal(data: &[&[u8]]) -> Vec<u8> {
    let secrets = ConnectionTrafficSecrets::Aes256Gcm {
        key: rustls::crypto::cipher::AeadKey::from([7u8; 32]),
        iv: rustls::crypto::cipher::Iv::new([9u8; 12]),
    };
    let mut keys = Keys::new(0, secrets).expect("test keys");
    let mut out = Vec::new();
    for d in data {
        let mut rec = vec![0u8; HEADER + d.len() + 1 + TAG];
        rec[HEADER..HEADER + d.len()].copy_from_slice(d);
        let len = keys.seal(&mut rec, d.len(), APPLICATION_DATA).expect("seal");
        out.extend_from_slice(&rec[..len]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (Keys, Keys) {
        let k = || ConnectionTrafficSecrets::Aes256Gcm {
            key: rustls::crypto::cipher::AeadKey::from([7u8; 32]),
            iv: rustls::crypto::cipher::Iv::new([9u8; 12]),
        };
        (Keys::new(0, k()).unwrap(), Keys::new(0, k()).unwrap())
    }

    #[tokio::test]
    async fn records_round_trip_and_are_checked() {
        let (mut tx, rxk) = keys();
        let mut wire = Vec::new();
        send(&mut wire, &mut tx, b"status").await.unwrap();
        write_record(&mut wire, &mut tx, &[4, 0, 0, 0], HANDSHAKE)
            .await
            .unwrap();
        send(&mut wire, &mut tx, &vec![0xab; MAX_PLAINTEXT]).await.unwrap();
        let mut rx = Reader::new(rxk);
        let mut r = &wire[..];
        assert_eq!(rx.first(&mut r).await.unwrap(), b"status");
        assert_eq!(rx.first(&mut r).await.unwrap(), vec![0xab; MAX_PLAINTEXT]);

        // A flipped bit anywhere fails authentication.
        let (mut tx, rxk) = keys();
        let mut wire = Vec::new();
        send(&mut wire, &mut tx, b"hello").await.unwrap();
        wire[7] ^= 1;
        assert!(Reader::new(rxk).first(&mut &wire[..]).await.is_err());
    }

    /// A connected pair of loopback TCP sockets.
    async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = tokio::net::TcpStream::connect(l.local_addr().unwrap());
        let (c, a) = tokio::join!(c, l.accept());
        (c.unwrap(), a.unwrap().0)
    }

    #[tokio::test]
    async fn splices_batches_both_ways_and_closes() {
        // node_a <-> splice A <-records-> splice B <-> node_b
        let (mut node_a, local_a) = pair().await;
        let (mut node_b, local_b) = pair().await;
        let (wire_a, wire_b) = pair().await;
        let ((tx_a, rx_b), (tx_b, rx_a)) = (keys(), keys());
        let a = tokio::spawn(splice(local_a, wire_a, tx_a, Reader::new(rx_a), |_, _| {}));
        let b = tokio::spawn(splice(local_b, wire_b, tx_b, Reader::new(rx_b), |_, _| {}));

        // Sizes around a record, a batch of records, and beyond.
        let sizes = [
            1,
            MAX_PLAINTEXT - 1,
            MAX_PLAINTEXT,
            MAX_PLAINTEXT + 1,
            BATCH * MAX_PLAINTEXT + 7,
            1 << 20,
        ];
        let data: Vec<u8> = (0..sizes.iter().sum::<usize>()).map(|i| (i * 31 % 251) as u8).collect();
        let send = {
            let data = data.clone();
            async move {
                let mut at = 0;
                for n in sizes {
                    node_a.write_all(&data[at..at + n]).await.unwrap();
                    at += n;
                }
                node_a.shutdown().await.unwrap();
                // The other way: a reply, then the end.
                let mut back = Vec::new();
                node_a.read_to_end(&mut back).await.unwrap();
                back
            }
        };
        let recv = async move {
            let mut got = Vec::new();
            node_b.read_to_end(&mut got).await.unwrap();
            node_b.write_all(b"reply").await.unwrap();
            node_b.shutdown().await.unwrap();
            got
        };
        let (back, got) = tokio::join!(send, recv);
        assert_eq!(got.len(), data.len());
        assert!(got == data, "bytes changed on the way");
        assert_eq!(back, b"reply");
        let (ca, cb) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
        assert_eq!((ca.out, ca.back), (data.len() as u64, 5));
        assert_eq!((cb.out, cb.back), (5, data.len() as u64));
    }
}
