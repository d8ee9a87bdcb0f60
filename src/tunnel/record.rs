//! The TLS 1.3 record layer for established tunnels.
//!
//! rustls does the handshake and the preface; once a tunnel is open, its
//! traffic keys are taken over (`dangerous_extract_secrets`) and records
//! are sealed and opened here, in place, in buffers this module owns:
//! outbound, a node's bytes are read straight into a record and sealed
//! there; inbound, several records are read at once, opened in place and
//! their plaintext written to the node from where it lies. That saves the
//! copies and re-allocations of rustls' buffered path (see the README's
//! performance section). The wire format is plain TLS 1.3 (RFC 8446 §5).
//! Until the hand-over ([`hand_over`], the one way both ends take a
//! connection over) rustls reads the socket through [`Corked`], so that no
//! byte of the peer's is left behind in rustls' buffers.
//!
//! Key updates (RFC 8446 §4.6.3): each side sends a KeyUpdate before its
//! sending key has sealed [`DEFAULT_RECORDS_PER_KEY`] records (or the
//! configured `tls.records_per_key`), and accepts the peer's, answering one
//! that asks for an update before its next record. The next key comes from
//! the traffic secret by HKDF-Expand-Label ("traffic upd"), so the traffic
//! secrets are captured from rustls' key schedule ([`SecretCapture`], a
//! per-connection `KeyLog`) and checked against the keys rustls hands over.
//! rustls' own `kernel` API computes the same, but only for its unbuffered
//! connections, and the handshakes here use tokio-rustls' buffered ones.
//!
//! Anything else after the handshake follows RFC 8446 §5 and §6: a
//! change_cipher_spec record, an unknown record or content type, a record
//! too long, a handshake message other than NewSessionTicket or KeyUpdate,
//! or any alert but close_notify is fatal: the tunnel is closed, with an
//! alert to the peer when the fault was the peer's.

use crate::firewall::filter::{Firewall, Inbound, Outbound, Seg};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf::{self, KeyType as _};
use rustls::ConnectionTrafficSecrets;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
/// Handshake message types that may follow the handshake.
const NEW_SESSION_TICKET: u8 = 4;
const KEY_UPDATE: u8 = 24;
/// Alert descriptions this layer sends (RFC 8446 §6).
const CLOSE_NOTIFY: u8 = 0;
const UNEXPECTED_MESSAGE: u8 = 10;
const BAD_RECORD_MAC: u8 = 20;
const RECORD_OVERFLOW: u8 = 22;
const ILLEGAL_PARAMETER: u8 = 47;
const DECODE_ERROR: u8 = 50;
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
/// Records sealed under one key before a KeyUpdate: well below AES-GCM's
/// limit of 2^24.5 records per key (RFC 8446 §5.5).
pub const DEFAULT_RECORDS_PER_KEY: u64 = 1 << 23;
/// Records opened or sealed under one key, beyond which the tunnel is
/// closed: the AEAD limit itself (a peer that never updates its key).
const HARD_RECORDS_PER_KEY: u64 = 1 << 24;

/// A fault that ends the tunnel with a TLS alert to the peer.
#[derive(Debug)]
pub struct Fatal {
    /// The alert description sent to the peer.
    pub alert: u8,
    pub why: &'static str,
}

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (alert {} sent)", self.why, self.alert)
    }
}

impl std::error::Error for Fatal {}

fn fatal(alert: u8, why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, Fatal { alert, why })
}

fn invalid(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// Captures one connection's application traffic secrets from rustls' key
/// schedule (a `KeyLog` set on that connection's config only), so that the
/// record layer can derive the keys that follow a KeyUpdate.
#[derive(Debug, Default)]
pub struct SecretCapture {
    secrets: Mutex<[Option<Vec<u8>>; 2]>,
}

impl rustls::KeyLog for SecretCapture {
    fn will_log(&self, label: &str) -> bool {
        matches!(label, "CLIENT_TRAFFIC_SECRET_0" | "SERVER_TRAFFIC_SECRET_0")
    }
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        let at = match label {
            "CLIENT_TRAFFIC_SECRET_0" => 0,
            "SERVER_TRAFFIC_SECRET_0" => 1,
            _ => return,
        };
        if let Ok(mut s) = self.secrets.lock() {
            s[at] = Some(secret.to_vec());
        }
    }
}

/// Which end of the TLS connection this is: the client sends with the
/// client traffic secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// HKDF output lengths for ring.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-Label (RFC 8446 §7.1) with an empty context.
fn expand_label(hash: hkdf::Algorithm, secret: &[u8], label: &[u8], len: usize) -> Vec<u8> {
    let prk = hkdf::Prk::new_less_safe(hash, secret);
    let out_len = (len as u16).to_be_bytes();
    let label_len = [(6 + label.len()) as u8];
    let info: [&[u8]; 5] = [&out_len, &label_len, b"tls13 ", label, &[0]];
    let mut out = vec![0u8; len];
    prk.expand(&info, Len(len))
        .and_then(|okm| okm.fill(&mut out))
        .expect("HKDF output length within bounds");
    out
}

/// One direction's traffic secret, key, IV and sequence number.
pub struct Keys {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
    aead: &'static aead::Algorithm,
    hash: hkdf::Algorithm,
    secret: Vec<u8>,
    /// Records sealed under one key before this side sends a KeyUpdate.
    records_per_key: u64,
}

impl Keys {
    /// Keys from a traffic secret (RFC 8446 §7.3), checked against the key
    /// and IV rustls derived from it.
    fn new(seq: u64, secrets: ConnectionTrafficSecrets, secret: Vec<u8>, records_per_key: u64) -> io::Result<Keys> {
        let (aead, hash, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, hkdf::HKDF_SHA256, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, hkdf::HKDF_SHA384, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, hkdf::HKDF_SHA256, key, iv)
            }
            _ => return Err(invalid("unsupported cipher suite")),
        };
        let mut k = Keys::derive(aead, hash, secret, records_per_key)?;
        if expand_label(hash, &k.secret, b"key", aead.key_len()) != key.as_ref() || k.iv[..] != *iv.as_ref() {
            return Err(invalid("captured traffic secret does not match the negotiated keys"));
        }
        k.seq = seq;
        Ok(k)
    }

    fn derive(
        aead: &'static aead::Algorithm,
        hash: hkdf::Algorithm,
        secret: Vec<u8>,
        records_per_key: u64,
    ) -> io::Result<Keys> {
        let key = expand_label(hash, &secret, b"key", aead.key_len());
        let iv: [u8; 12] = expand_label(hash, &secret, b"iv", 12)
            .try_into()
            .map_err(|_| invalid("bad IV length"))?;
        let key = UnboundKey::new(aead, &key).map_err(|_| invalid("bad traffic key"))?;
        Ok(Keys {
            key: LessSafeKey::new(key),
            iv,
            seq: 0,
            aead,
            hash,
            secret,
            records_per_key: records_per_key.clamp(1, HARD_RECORDS_PER_KEY),
        })
    }

    /// Moves to the next traffic secret (RFC 8446 §7.2).
    fn update(&mut self) -> io::Result<()> {
        let len = self.hash.len();
        let next = expand_label(self.hash, &self.secret, b"traffic upd", len);
        *self = Keys::derive(self.aead, self.hash, next, self.records_per_key)?;
        Ok(())
    }

    /// Whether `n` more records would pass this key's sending budget.
    fn due(&self, n: usize) -> bool {
        self.seq + n as u64 >= self.records_per_key
    }

    fn nonce(&mut self) -> io::Result<Nonce> {
        if self.seq >= HARD_RECORDS_PER_KEY {
            return Err(invalid("record limit for this key reached without a key update"));
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

/// Takes a tunnel's connection over from rustls, for either end: proves
/// that rustls has nothing left to send, no plaintext received and unread,
/// and no part of a record in its buffers ([`Corked`]), then extracts the
/// keys. Returns the socket, the sending keys and the inbound reader.
pub async fn hand_over<C>(
    tls: (Corked<tokio::net::TcpStream>, C),
    capture: &SecretCapture,
    side: Side,
    records_per_key: u64,
) -> io::Result<(tokio::net::TcpStream, Keys, Reader)>
where
    C: Into<rustls::Connection>,
{
    let (io, conn) = tls;
    let mut conn: rustls::Connection = conn.into();
    if conn.wants_write() {
        return Err(invalid("rustls still has TLS data to send at the hand-over"));
    }
    let state = conn.process_new_packets().map_err(io::Error::other)?;
    if state.plaintext_bytes_to_read() > 0 {
        return Err(invalid("data received before the hand-over was left unread"));
    }
    if !io.at_record_boundary() {
        return Err(invalid("part of a record was read before the hand-over"));
    }
    let secrets = conn.dangerous_extract_secrets().map_err(io::Error::other)?;
    let (tx, rx) = take_over(secrets, capture, side, records_per_key)?;
    Ok((io.into_inner(), tx, rx))
}

/// The sending keys and the inbound reader for a tunnel whose TLS 1.3 keys
/// were taken from rustls (`dangerous_extract_secrets`), with the traffic
/// secrets `capture` saw during that connection's handshake. `side` is this
/// end's role in the TLS connection.
pub fn take_over(
    secrets: rustls::ExtractedSecrets,
    capture: &SecretCapture,
    side: Side,
    records_per_key: u64,
) -> io::Result<(Keys, Reader)> {
    let [client, server] = capture
        .secrets
        .lock()
        .map_err(|_| invalid("secret capture poisoned"))?
        .clone();
    let missing = || invalid("the handshake's traffic secrets were not captured");
    let (client, server) = (client.ok_or_else(missing)?, server.ok_or_else(missing)?);
    let (tx_secret, rx_secret) = match side {
        Side::Client => (client, server),
        Side::Server => (server, client),
    };
    let tx = Keys::new(secrets.tx.0, secrets.tx.1, tx_secret, records_per_key)?;
    let rx = Reader::new(Keys::new(secrets.rx.0, secrets.rx.1, rx_secret, records_per_key)?);
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

/// Sends a KeyUpdate under the current key, then moves to the next one.
async fn send_key_update<W: AsyncWrite + Unpin>(w: &mut W, keys: &mut Keys) -> io::Result<()> {
    // update_not_requested: the peer updates its own key when it is due.
    write_record(w, keys, &[KEY_UPDATE, 0, 0, 1, 0], HANDSHAKE).await?;
    keys.update()
}

/// What one inbound record carried.
enum Opened {
    /// Application data at this range of the buffer.
    Data(std::ops::Range<usize>),
    /// Nothing for the node (a session ticket, a KeyUpdate).
    Skip,
    /// A KeyUpdate asking this side to update its sending key too.
    UpdateRequested,
    /// The peer's close_notify.
    Closed,
}

/// Inbound records: a buffer, the bytes in it, and the keys.
pub struct Reader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    keys: Keys,
    /// The peer asked for a KeyUpdate before the splice started.
    update_asked: bool,
}

impl Reader {
    /// A reader that starts with no buffered bytes.
    pub fn new(keys: Keys) -> Reader {
        Reader {
            buf: vec![0u8; RX_MIN],
            start: 0,
            end: 0,
            keys,
            update_asked: false,
        }
    }

    /// Opens the next complete record in the buffer, if there is one.
    fn open_next(&mut self) -> io::Result<Option<Opened>> {
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
        let nonce = self.keys.nonce()?;
        let plain_len = self
            .keys
            .key
            .open_in_place(nonce, Aad::from(hdr), &mut self.buf[body.clone()])
            .map_err(|_| fatal(BAD_RECORD_MAC, "record failed authentication"))?
            .len();
        // TLSInnerPlaintext: content, content type, zero padding.
        let inner = &self.buf[body.start..body.start + plain_len];
        let type_at = inner
            .iter()
            .rposition(|&b| b != 0)
            .ok_or_else(|| fatal(UNEXPECTED_MESSAGE, "record without content type"))?;
        if type_at > MAX_PLAINTEXT {
            return Err(fatal(RECORD_OVERFLOW, "plaintext too long"));
        }
        let content = body.start..body.start + type_at;
        match inner[type_at] {
            APPLICATION_DATA => Ok(Some(Opened::Data(content))),
            HANDSHAKE => self.post_handshake(content),
            ALERT => match self.buf[content] {
                [_, CLOSE_NOTIFY] => Ok(Some(Opened::Closed)),
                [_, d] => Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    format!("TLS alert {d} from the peer"),
                )),
                _ => Err(fatal(DECODE_ERROR, "malformed alert")),
            },
            _ => Err(fatal(UNEXPECTED_MESSAGE, "unknown inner content type")),
        }
    }

    /// Handshake messages after the handshake: NewSessionTicket (skipped)
    /// and KeyUpdate, each whole within the record; anything else is fatal.
    fn post_handshake(&mut self, content: std::ops::Range<usize>) -> io::Result<Option<Opened>> {
        let mut msgs = &self.buf[content];
        if msgs.is_empty() {
            return Err(fatal(UNEXPECTED_MESSAGE, "empty handshake record"));
        }
        let mut update = None;
        while !msgs.is_empty() {
            if update.is_some() {
                return Err(fatal(UNEXPECTED_MESSAGE, "KeyUpdate not at the end of its record"));
            }
            if msgs.len() < 4 {
                return Err(fatal(UNEXPECTED_MESSAGE, "handshake message split across records"));
            }
            let len = u32::from_be_bytes([0, msgs[1], msgs[2], msgs[3]]) as usize;
            let Some(body) = msgs.get(4..4 + len) else {
                return Err(fatal(UNEXPECTED_MESSAGE, "handshake message split across records"));
            };
            match (msgs[0], body) {
                (NEW_SESSION_TICKET, _) => {}
                (KEY_UPDATE, [r @ (0 | 1)]) => update = Some(*r == 1),
                (KEY_UPDATE, [_]) => return Err(fatal(ILLEGAL_PARAMETER, "KeyUpdate with a bad request value")),
                (KEY_UPDATE, _) => return Err(fatal(DECODE_ERROR, "malformed KeyUpdate")),
                _ => return Err(fatal(UNEXPECTED_MESSAGE, "handshake message after the handshake")),
            }
            msgs = &msgs[4 + len..];
        }
        match update {
            None => Ok(Some(Opened::Skip)),
            Some(requested) => {
                self.keys.update()?;
                Ok(Some(if requested {
                    Opened::UpdateRequested
                } else {
                    Opened::Skip
                }))
            }
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
                Some(Opened::UpdateRequested) => self.update_asked = true,
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

/// Bytes a tunnel carried, local-to-peer and peer-to-local.
#[derive(Debug, Clone, Copy, Default)]
pub struct Carried {
    pub out: u64,
    pub back: u64,
}

/// Whether an error ending a tunnel is an ordinary disconnect (logged at
/// debug) rather than something an operator should see.
pub fn is_disconnect(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | NotConnected
    )
}

/// Logs how a tunnel ended: ordinary ends and disconnects at debug,
/// anything else once at info.
pub fn log_end(result: &io::Result<Carried>) {
    match result {
        Ok(c) => tracing::debug!(bytes_out = c.out, bytes_back = c.back, "tunnel closed"),
        Err(e) if is_disconnect(e) => tracing::debug!(error = %e, "tunnel closed by a disconnect"),
        Err(e) => tracing::info!(error = %e, "tunnel ended with an error"),
    }
}

/// Runs a tunnel's splice until it ends or `live` says its peer's
/// certificate is no longer accepted (then the tunnel is dropped, closing
/// both sockets: the node sees the connection end).
pub async fn until_revoked(
    live: &crate::tls::LiveGuard,
    splice: impl std::future::Future<Output = io::Result<Carried>>,
) -> io::Result<Carried> {
    tokio::select! {
        r = splice => r,
        _ = live.cancelled() => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the peer's certificate is no longer accepted (revoked or expired); tunnel closed",
        )),
    }
}

/// How long the alert that ends a tunnel may take to leave.
const ALERT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Moves bytes both ways until both directions end: `local` is the node's
/// socket, `remote` the peer's TCP stream under TLS. Returns the bytes
/// carried (local to peer, peer to local); `counted` is told of each chunk.
/// A fault of the peer's ends the tunnel with an alert to it.
pub async fn splice(
    local: tokio::net::TcpStream,
    remote: tokio::net::TcpStream,
    mut tx: Keys,
    mut rx: Reader,
    counted: impl Fn(u64, u64),
    firewall: Option<Firewalled>,
) -> io::Result<Carried> {
    let (mut lr, mut lw) = local.into_split();
    let (mut rr, mut rw) = remote.into_split();
    // Set by the inbound side when the peer asks for a KeyUpdate; the
    // outbound side sends one before its next record.
    let update_asked = AtomicBool::new(rx.update_asked);
    let result = {
        // Without a dist policy the bytes are not looked at; with one, the
        // same loops with the firewall between the records and the node.
        let out = async {
            match &firewall {
                None => seal_from_node(&mut lr, &mut rw, &mut tx, &update_asked, &counted, None).await,
                Some(f) => {
                    let mut reader = Outbound::new(f.firewall.clone(), f.node_dials);
                    let filter = Some((&*f.firewall, &mut reader));
                    seal_from_node(&mut lr, &mut rw, &mut tx, &update_asked, &counted, filter).await
                }
            }
        };
        let back = async {
            match &firewall {
                None => open_to_node(&mut rr, &mut lw, &mut rx, &update_asked, &counted, None).await,
                Some(f) => {
                    let mut filter = Inbound::new(f.firewall.clone(), !f.node_dials);
                    open_to_node(&mut rr, &mut lw, &mut rx, &update_asked, &counted, Some(&mut filter)).await
                }
            }
        };
        tokio::pin!(out, back);
        let (mut o, mut b) = (None, None);
        loop {
            if let (Some(out), Some(back)) = (o, b) {
                break Ok(Carried { out, back });
            }
            tokio::select! {
                r = &mut out, if o.is_none() => match r {
                    Ok(v) => o = Some(v),
                    Err(e) => break Err(e),
                },
                r = &mut back, if b.is_none() => match r {
                    Ok(v) => b = Some(v),
                    Err(e) => break Err(e),
                },
            }
        }
    };
    if let Err(e) = &result {
        if let Some(f) = e.get_ref().and_then(|e| e.downcast_ref::<Fatal>()) {
            let alert = [2, f.alert];
            let _ = tokio::time::timeout(ALERT_TIMEOUT, write_record(&mut rw, &mut tx, &alert, ALERT)).await;
        }
    }
    result
}

/// The node's bytes to the peer: read straight into record slots, sealed
/// in place, written with one call; a KeyUpdate first when the key is due
/// or the peer asked; close_notify at the node's end. Under a dist policy
/// the node's frames are read too (for the pids it gives the peer), and
/// answers to refused requests go out between two of its frames. Returns
/// the bytes.
async fn seal_from_node(
    lr: &mut tokio::net::tcp::OwnedReadHalf,
    rw: &mut tokio::net::tcp::OwnedWriteHalf,
    tx: &mut Keys,
    update_asked: &AtomicBool,
    counted: &impl Fn(u64, u64),
    mut filter: Option<(&Firewall, &mut Outbound)>,
) -> io::Result<u64> {
    // Record slots, back to back: a read fills them in order, so every
    // sealed record but the last is full and they lie contiguous. One slot
    // at first, BATCH once a read fills it.
    let mut recs = vec![0u8; FULL_RECORD];
    // Answers, and the rare read split to let them in, are sealed here.
    let mut spare = Vec::new();
    let mut total = 0u64;
    loop {
        let n = match filter.as_mut() {
            None => read_slots(lr, &mut recs).await?,
            Some((fw, reader)) => tokio::select! {
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
            write_record(rw, tx, &[1, CLOSE_NOTIFY], ALERT).await?;
            rw.shutdown().await?;
            return Ok(total);
        }
        if update_asked.swap(false, Ordering::Relaxed) || tx.due(n.div_ceil(MAX_PLAINTEXT)) {
            send_key_update(rw, tx).await?;
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
                total += n as u64;
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

/// The peer's records to the node: every complete record in the buffer
/// opened in place, their plaintexts written with one vectored call; the
/// peer's close_notify ends the direction, a bare TCP close is a
/// truncation. Under a dist policy the plaintext goes through `filter`,
/// which passes frames where they lie, holds, or drops them. Returns the
/// bytes written to the node.
async fn open_to_node(
    rr: &mut tokio::net::tcp::OwnedReadHalf,
    lw: &mut tokio::net::tcp::OwnedWriteHalf,
    rx: &mut Reader,
    update_asked: &AtomicBool,
    counted: &impl Fn(u64, u64),
    mut filter: Option<&mut Inbound>,
) -> io::Result<u64> {
    let mut total = 0u64;
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
                Some(Opened::UpdateRequested) => update_asked.store(true, Ordering::Relaxed),
                Some(Opened::Closed) => {
                    closed = true;
                    break;
                }
                None => break,
            }
        }
        if !segs.is_empty() {
            let n = write_segs(lw, &rx.buf, &segs).await?;
            total += n;
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
            return Ok(total);
        }
        if rx.fill(rr).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// A tunnel under a dist policy: its firewall, and which end dialled.
pub struct Firewalled {
    pub firewall: Arc<Firewall>,
    /// The local node dialled the peer's (an outbound tunnel).
    pub node_dials: bool,
}

/// Pieces written to a node with one vectored call.
const MAX_SLICES: usize = 64;

/// Seals `data` into as many records as it takes, written with one call.
async fn seal_all(
    rw: &mut tokio::net::tcp::OwnedWriteHalf,
    tx: &mut Keys,
    data: &[u8],
    recs: &mut Vec<u8>,
) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    if tx.due(data.len().div_ceil(MAX_PLAINTEXT)) {
        send_key_update(rw, tx).await?;
    }
    recs.clear();
    for chunk in data.chunks(MAX_PLAINTEXT) {
        let start = recs.len();
        recs.resize(start + HEADER + chunk.len() + 1 + TAG, 0);
        recs[start + HEADER..start + HEADER + chunk.len()].copy_from_slice(chunk);
        let len = tx.seal(&mut recs[start..], chunk.len(), APPLICATION_DATA)?;
        recs.truncate(start + len);
    }
    rw.write_all(recs).await
}

/// Sends the firewall's answers to the peer's node (between two frames).
async fn send_answers(
    rw: &mut tokio::net::tcp::OwnedWriteHalf,
    tx: &mut Keys,
    fw: &Firewall,
    recs: &mut Vec<u8>,
) -> io::Result<()> {
    for a in fw.take_answers() {
        seal_all(rw, tx, &a, recs).await?;
    }
    Ok(())
}

/// Writes what goes to the node (record plaintext where it lies, and the
/// firewall's own bytes), in order, vectored; returns the bytes.
async fn write_segs<W: AsyncWrite + Unpin>(w: &mut W, buf: &[u8], segs: &[Seg]) -> io::Result<u64> {
    let mut total = 0u64;
    for group in segs.chunks(MAX_SLICES) {
        let mut slices = [io::IoSlice::new(&[]); MAX_SLICES];
        for (slice, s) in slices.iter_mut().zip(group) {
            *slice = io::IoSlice::new(match s {
                Seg::Buf(r) => &buf[r.clone()],
                Seg::Own(v) => v,
                Seg::Len(l) => l,
            });
        }
        let mut bufs = &mut slices[..group.len()];
        total += bufs.iter().map(|b| b.len() as u64).sum::<u64>();
        while !bufs.is_empty() {
            let n = w.write_vectored(bufs).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            io::IoSlice::advance_slices(&mut bufs, n);
        }
    }
    Ok(total)
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

/// Fixed AES-256-GCM keys from a fixed traffic secret, for tests and fuzzing.
fn test_keys(records_per_key: u64) -> io::Result<Keys> {
    Keys::derive(&aead::AES_256_GCM, hkdf::HKDF_SHA384, vec![7u8; 48], records_per_key)
}

/// Opens records from `bytes` with fixed test keys until an error or the
/// end; for fuzzing the record parser. Returns the records' contents.
#[doc(hidden)]
pub fn fuzz_open(bytes: &[u8]) -> Vec<Vec<u8>> {
    let Ok(keys) = test_keys(DEFAULT_RECORDS_PER_KEY) else {
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
            Opened::Skip | Opened::UpdateRequested => {}
            Opened::Closed => break,
        }
    }
    out
}

/// Seals `data` as records with the same fixed test keys (see [`fuzz_open`]).
#[doc(hidden)]
pub fn fuzz_seal(data: &[&[u8]]) -> Vec<u8> {
    let mut keys = test_keys(DEFAULT_RECORDS_PER_KEY).expect("test keys");
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
        keys_updating_after(DEFAULT_RECORDS_PER_KEY)
    }

    fn keys_updating_after(n: u64) -> (Keys, Keys) {
        (test_keys(n).unwrap(), test_keys(n).unwrap())
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
        splice_round_trip(DEFAULT_RECORDS_PER_KEY).await;
    }

    #[tokio::test]
    async fn key_updates_every_few_records_keep_the_stream_intact() {
        // A KeyUpdate every 3 records: hundreds of them each way.
        splice_round_trip(3).await;
    }

    async fn splice_round_trip(records_per_key: u64) {
        // node_a <-> splice A <-records-> splice B <-> node_b
        let (mut node_a, local_a) = pair().await;
        let (mut node_b, local_b) = pair().await;
        let (wire_a, wire_b) = pair().await;
        let ((tx_a, rx_b), (tx_b, rx_a)) = (
            keys_updating_after(records_per_key),
            keys_updating_after(records_per_key),
        );
        let a = tokio::spawn(splice(local_a, wire_a, tx_a, Reader::new(rx_a), |_, _| {}, None));
        let b = tokio::spawn(splice(local_b, wire_b, tx_b, Reader::new(rx_b), |_, _| {}, None));

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

    #[tokio::test]
    async fn change_cipher_spec_and_unknown_records_are_fatal() {
        for (record, alert) in [
            (vec![CHANGE_CIPHER_SPEC, 3, 3, 0, 1, 1], UNEXPECTED_MESSAGE),
            (vec![HANDSHAKE, 3, 3, 0, 1, 1], UNEXPECTED_MESSAGE),
            (vec![APPLICATION_DATA, 3, 3, 0xff, 0xff], RECORD_OVERFLOW),
            (
                vec![
                    APPLICATION_DATA,
                    3,
                    3,
                    0,
                    17,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                ],
                BAD_RECORD_MAC,
            ),
        ] {
            let (_, rxk) = keys();
            let err = Reader::new(rxk).first(&mut &record[..]).await.unwrap_err();
            let f = err
                .get_ref()
                .and_then(|e| e.downcast_ref::<Fatal>())
                .expect("a fatal error");
            assert_eq!(f.alert, alert, "{record:?}: {err}");
        }
        // A handshake message other than a ticket or a KeyUpdate.
        let (mut tx, rxk) = keys();
        let mut wire = Vec::new();
        write_record(&mut wire, &mut tx, &[1, 0, 0, 0], HANDSHAKE)
            .await
            .unwrap();
        let err = Reader::new(rxk).first(&mut &wire[..]).await.unwrap_err();
        assert!(
            err.to_string().contains("handshake message after the handshake"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_spliced_tunnel_answers_a_fatal_record_with_an_alert() {
        let (_node, local) = pair().await;
        let (wire, mut attacker) = pair().await;
        let (tx, rxk) = keys();
        let task = tokio::spawn(splice(local, wire, tx, Reader::new(rxk), |_, _| {}, None));
        attacker.write_all(&[CHANGE_CIPHER_SPEC, 3, 3, 0, 1, 1]).await.unwrap();
        let err = task.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("change_cipher_spec"), "{err}");
        // What came back is one sealed alert record: unexpected_message.
        let mut back = Vec::new();
        attacker.read_to_end(&mut back).await.unwrap();
        let mut rx = Reader::new(test_keys(DEFAULT_RECORDS_PER_KEY).unwrap());
        rx.buf[..back.len()].copy_from_slice(&back);
        rx.end = back.len();
        let err = rx.open_next().err().expect("an alert");
        assert!(err.to_string().contains("TLS alert 10"), "{err}");
    }

    /// rustls itself reads what this layer sends after a KeyUpdate: the key
    /// schedule here matches the RFC's, not only itself.
    #[test]
    fn rustls_follows_our_key_updates() {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        use std::sync::Arc;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["hosta".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = CertificateDer::from(cert.der().to_vec());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let capture = Arc::new(SecretCapture::default());
        let mut server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der], PrivateKeyDer::try_from(key.serialize_der()).unwrap())
            .unwrap();
        server_config.enable_secret_extraction = true;
        server_config.send_tls13_tickets = 0;
        server_config.key_log = capture.clone();
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut client =
            rustls::ClientConnection::new(Arc::new(client_config), ServerName::try_from("hosta").unwrap()).unwrap();
        let mut server = rustls::ServerConnection::new(Arc::new(server_config)).unwrap();
        while client.is_handshaking() || server.is_handshaking() || server.wants_write() {
            let mut b = Vec::new();
            client.write_tls(&mut b).unwrap();
            server.read_tls(&mut &b[..]).unwrap();
            server.process_new_packets().unwrap();
            let mut b = Vec::new();
            server.write_tls(&mut b).unwrap();
            client.read_tls(&mut &b[..]).unwrap();
            client.process_new_packets().unwrap();
        }
        let (mut tx, mut rx) =
            take_over(server.dangerous_extract_secrets().unwrap(), &capture, Side::Server, 2).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let wire = rt.block_on(async {
            let mut wire = Vec::new();
            for i in 0..5u8 {
                if tx.due(1) {
                    send_key_update(&mut wire, &mut tx).await.unwrap();
                }
                send(&mut wire, &mut tx, &[b'a' + i; 3]).await.unwrap();
            }
            wire
        });
        client.read_tls(&mut &wire[..]).unwrap();
        client.process_new_packets().unwrap();
        let mut got = Vec::new();
        let _ = std::io::Read::read_to_end(&mut client.reader(), &mut got);
        assert_eq!(got, b"aaabbbcccdddeee");

        // The other way: records rustls seals, before and after a key
        // update of its own, are opened here.
        std::io::Write::write_all(&mut client.writer(), b"from rustls").unwrap();
        client.refresh_traffic_keys().unwrap();
        std::io::Write::write_all(&mut client.writer(), b"after its update").unwrap();
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        let mut r = &wire[..];
        let (one, two) = rt.block_on(async { (rx.first(&mut r).await.unwrap(), rx.first(&mut r).await.unwrap()) });
        assert_eq!(
            (one.as_slice(), two.as_slice()),
            (&b"from rustls"[..], &b"after its update"[..])
        );
    }

    #[tokio::test]
    async fn corked_reads_stop_at_record_boundaries() {
        // Two records (bodies of 3 and 0 bytes) and a third's first bytes.
        let wire = [23, 3, 3, 0, 3, 1, 2, 3, 23, 3, 3, 0, 0, 23, 3];
        let mut c = Corked::new(&wire[..]);
        let mut buf = [0u8; 64];
        let mut reads = Vec::new();
        loop {
            let n = c.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            reads.push(buf[..n].to_vec());
            if reads.len() == 2 {
                assert!(c.at_record_boundary(), "after the first record");
            }
        }
        assert_eq!(
            reads,
            vec![vec![23, 3, 3, 0, 3], vec![1, 2, 3], vec![23, 3, 3, 0, 0], vec![23, 3]]
        );
        assert!(!c.at_record_boundary(), "a record was left half read");
    }
}
