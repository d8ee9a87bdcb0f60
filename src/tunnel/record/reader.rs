//! The peer's records: read in batches, authenticated and opened in place,
//! their content types and post-handshake messages checked (RFC 8446 §4.6,
//! §5, §6), within bounds a peer cannot push.

use super::keys::{Keys, Side};
use super::USER_CANCELED;
use super::{fatal, PeerAlert, MAX_CIPHERTEXT, MAX_PLAINTEXT};
use super::{ALERT, APPLICATION_DATA, CHANGE_CIPHER_SPEC, HANDSHAKE, HEADER, KEY_UPDATE, NEW_SESSION_TICKET};
use super::{BAD_RECORD_MAC, CLOSE_NOTIFY, DECODE_ERROR, ILLEGAL_PARAMETER, RECORD_OVERFLOW, UNEXPECTED_MESSAGE};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Records read from the peer with one system call: large reads on
/// loopback cost far less per byte than 16 KiB ones (see the README's
/// performance section).
pub(super) const BATCH: usize = 4;
/// Inbound buffer: room for the largest record a peer may send; it grows to
/// a batch of them once a read fills it (bulk traffic), so that tunnels
/// carrying small messages keep small buffers.
const RX_MIN: usize = HEADER + MAX_CIPHERTEXT;
const RX_MAX: usize = BATCH * RX_MIN;
/// Records in a row that carry no application data (KeyUpdates, tickets,
/// empty records, user_canceled alerts) before the peer is cut off, as
/// rustls bounds them: each KeyUpdate costs key derivations, and a flood of
/// them would otherwise be processed a whole buffer at a time.
pub const MAX_IDLE_RECORDS: u32 = 32;
/// Largest post-handshake message reassembled across records (a
/// NewSessionTicket's ticket may be up to 64 KiB), as rustls bounds it.
const MAX_HANDSHAKE_MESSAGE: usize = 0xffff;
/// A split handshake message held at most (its header and body).
pub(super) const MAX_HANDSHAKE: usize = MAX_HANDSHAKE_MESSAGE + 4;

/// The peer's close_notify, where a record was awaited.
pub(super) fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the peer closed the tunnel (close_notify)",
    )
}

/// The peer's bare TCP close: a truncation (§6.1).
pub(super) fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the peer closed its connection without close_notify (truncation)",
    )
}

/// What one inbound record carried.
pub(super) enum Opened {
    /// Application data at this range of the buffer (never empty).
    Data(std::ops::Range<usize>),
    /// Nothing for the node (a session ticket, a KeyUpdate, an empty
    /// record, user_canceled).
    Skip,
    /// The peer's close_notify.
    Closed,
}

/// Inbound records: a buffer, the bytes in it, and the keys.
pub struct Reader {
    pub(super) buf: Vec<u8>,
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) keys: Keys,
    /// The peer asked for a KeyUpdate: the sender answers before its next
    /// application data (shared with this tunnel's [`super::Sender`]).
    pub(super) asked: Arc<AtomicBool>,
    /// The peer's role: only a server sends NewSessionTicket.
    pub(super) peer: Side,
    /// A handshake message split across records, until it is whole.
    pub(super) handshake: Vec<u8>,
    /// Records in a row without application data.
    pub(super) idle: u32,
}

impl Reader {
    /// The most bytes the buffer holds.
    pub(super) const CAPACITY: usize = RX_MAX;

    /// A reader that starts with no buffered bytes, for a peer in role `peer`.
    pub fn new(keys: Keys, peer: Side) -> Reader {
        Reader {
            buf: vec![0u8; RX_MIN],
            start: 0,
            end: 0,
            keys,
            asked: Arc::new(AtomicBool::new(false)),
            peer,
            handshake: Vec::new(),
            idle: 0,
        }
    }

    /// Opens the next complete record in the buffer, if there is one.
    pub(super) fn open_next(&mut self) -> io::Result<Option<Opened>> {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < HEADER {
            return Ok(None);
        }
        // The legacy version is ignored (RFC 8446 §5.1); the type is not.
        match avail[0] {
            APPLICATION_DATA => {}
            CHANGE_CIPHER_SPEC => {
                return Err(fatal(
                    UNEXPECTED_MESSAGE,
                    "change_cipher_spec record after the handshake",
                ))
            }
            _ => return Err(fatal(UNEXPECTED_MESSAGE, "unexpected record type")),
        }
        let len = u16::from_be_bytes([avail[3], avail[4]]) as usize;
        if len > MAX_CIPHERTEXT {
            return Err(fatal(RECORD_OVERFLOW, "record too long"));
        }
        if avail.len() < HEADER + len {
            return Ok(None);
        }
        let hdr: [u8; HEADER] = avail[..HEADER].try_into().expect("header length");
        let body = self.start + HEADER..self.start + HEADER + len;
        self.start += HEADER + len;
        let plain_len = self
            .keys
            .open(hdr, &mut self.buf[body.clone()])?
            .ok_or_else(|| fatal(BAD_RECORD_MAC, "record failed authentication"))?;
        // TLSInnerPlaintext: content, content type, zero padding; at most
        // 2^14 + 1 bytes (§5.4).
        if plain_len > MAX_PLAINTEXT + 1 {
            return Err(fatal(RECORD_OVERFLOW, "inner plaintext too long"));
        }
        let inner = &self.buf[body.start..body.start + plain_len];
        let type_at = inner
            .iter()
            .rposition(|&b| b != 0)
            .ok_or_else(|| fatal(UNEXPECTED_MESSAGE, "record without content type"))?;
        let content = body.start..body.start + type_at;
        let ctype = inner[type_at];
        if !self.handshake.is_empty() && ctype != HANDSHAKE {
            return Err(fatal(
                UNEXPECTED_MESSAGE,
                "a record of another type inside a split handshake message",
            ));
        }
        match ctype {
            // Zero-length application data is allowed (§5.1).
            APPLICATION_DATA if content.is_empty() => self.idle(),
            APPLICATION_DATA => {
                self.idle = 0;
                Ok(Some(Opened::Data(content)))
            }
            HANDSHAKE => self.post_handshake(content),
            ALERT => match self.buf[content] {
                [_, CLOSE_NOTIFY] => Ok(Some(Opened::Closed)),
                // A closure alert without the close: a close_notify follows.
                [_, USER_CANCELED] => self.idle(),
                [_, d] => Err(io::Error::new(io::ErrorKind::ConnectionAborted, PeerAlert(d))),
                _ => Err(fatal(DECODE_ERROR, "malformed alert")),
            },
            _ => Err(fatal(UNEXPECTED_MESSAGE, "unknown inner content type")),
        }
    }

    /// One more record without application data, within the bound.
    fn idle(&mut self) -> io::Result<Option<Opened>> {
        self.idle += 1;
        if self.idle > MAX_IDLE_RECORDS {
            return Err(fatal(
                UNEXPECTED_MESSAGE,
                "too many records in a row without application data (KeyUpdates, tickets, empty records)",
            ));
        }
        Ok(Some(Opened::Skip))
    }

    /// Handshake messages after the handshake: NewSessionTicket (from a
    /// server; skipped) and KeyUpdate, reassembled across records up to
    /// [`MAX_HANDSHAKE_MESSAGE`]; anything else is fatal. A KeyUpdate
    /// changes keys, so it must end its record (§5.1).
    fn post_handshake(&mut self, content: std::ops::Range<usize>) -> io::Result<Option<Opened>> {
        if content.is_empty() {
            return Err(fatal(UNEXPECTED_MESSAGE, "empty handshake record"));
        }
        self.handshake.extend_from_slice(&self.buf[content]);
        let mut at = 0;
        let mut update = None;
        while self.handshake.len() - at >= 4 {
            let msg = &self.handshake[at..];
            let len = u32::from_be_bytes([0, msg[1], msg[2], msg[3]]) as usize;
            if len > MAX_HANDSHAKE_MESSAGE {
                return Err(fatal(UNEXPECTED_MESSAGE, "post-handshake message too long"));
            }
            let Some(body) = msg.get(4..4 + len) else { break };
            match (msg[0], body) {
                (NEW_SESSION_TICKET, _) if self.peer == Side::Client => {
                    return Err(fatal(UNEXPECTED_MESSAGE, "NewSessionTicket from a client"))
                }
                (NEW_SESSION_TICKET, _) => {}
                (KEY_UPDATE, [r @ (0 | 1)]) => update = Some(*r == 1),
                (KEY_UPDATE, [_]) => return Err(fatal(ILLEGAL_PARAMETER, "KeyUpdate with a bad request value")),
                (KEY_UPDATE, _) => return Err(fatal(DECODE_ERROR, "malformed KeyUpdate")),
                _ => return Err(fatal(UNEXPECTED_MESSAGE, "handshake message after the handshake")),
            }
            at += 4 + len;
            if update.is_some() && at < self.handshake.len() {
                return Err(fatal(UNEXPECTED_MESSAGE, "KeyUpdate not at the end of its record"));
            }
        }
        self.handshake.drain(..at);
        if self.handshake.is_empty() {
            // A large ticket's buffer is not kept for the tunnel's life.
            self.handshake = Vec::new();
        }
        if let Some(requested) = update {
            self.keys.update()?;
            if requested {
                self.asked.store(true, Ordering::Relaxed);
            }
        }
        self.idle()
    }

    /// Reads more bytes from `r`, first moving a partial record to the front.
    pub(super) async fn fill<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> io::Result<usize> {
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
    /// tunnel's status byte); later records stay buffered. On an error, the
    /// caller ends the tunnel with [`super::Sender::abort`].
    pub async fn first<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> io::Result<Vec<u8>> {
        loop {
            match self.open_next()? {
                Some(Opened::Data(range)) => return Ok(self.buf[range].to_vec()),
                Some(Opened::Skip) => continue,
                Some(Opened::Closed) => return Err(closed()),
                None => {
                    if self.fill(r).await? == 0 {
                        return Err(truncated());
                    }
                }
            }
        }
    }
}
