//! The TLS 1.3 record layer for established tunnels.
//!
//! rustls does the handshake and the preface; once a tunnel is open, its
//! traffic keys are taken over (`dangerous_extract_secrets`) and records
//! are sealed and opened here, in place, in buffers this module owns:
//! outbound, a node's bytes are read in one piece and each record's worth
//! sealed where it lies, its header and trailer beside it, the batch
//! written with one `writev`; inbound, several records are read at once,
//! opened in place and their plaintext written to the node from where it
//! lies. That saves the
//! copies and re-allocations of rustls' buffered path (see the README's
//! performance section). The wire format is plain TLS 1.3 (RFC 8446 §5).
//! Until the hand-over ([`hand_over`], the one way both ends take a
//! connection over) rustls reads the socket through [`Corked`], so that no
//! byte of the peer's is left behind in rustls' buffers.
//!
//! - `keys.rs`: traffic secrets, keys and their derivation, wiped on update;
//! - `reader.rs`: the peer's records (authentication, content types,
//!   post-handshake messages, the bounds a peer is held to);
//! - `sender.rs`: records this end seals (KeyUpdates due or asked for
//!   first, alerts, closure);
//! - `splice.rs`: both directions of an open tunnel, and how it ends.
//!
//! Key updates (RFC 8446 §4.6.3): each side sends a KeyUpdate before its
//! sending key has sealed [`DEFAULT_RECORDS_PER_KEY`] records (or the
//! configured `tls.records_per_key`), and answers one that asks for an
//! update before its next application data record, on every path that
//! seals. The next key comes from the traffic secret by HKDF-Expand-Label
//! ("traffic upd"), so the traffic secrets are captured from rustls' key
//! schedule ([`SecretCapture`], a per-connection `KeyLog`), taken out of it
//! at the hand-over and checked against the keys rustls hands over.
//!
//! Anything else after the handshake follows RFC 8446 §5 and §6: a
//! change_cipher_spec record, an unknown record or content type, a record
//! or inner plaintext too long, a handshake message other than
//! NewSessionTicket (from a server) or KeyUpdate, a record of another type
//! inside a split handshake message, more than [`MAX_IDLE_RECORDS`] records
//! in a row without application data, or any alert but close_notify and
//! user_canceled is fatal: the tunnel is closed, with the alert §6 names
//! to the peer when the fault was the peer's.
//!
//! Closure (§6.1): every end of a tunnel sends close_notify (a clean end)
//! or an error alert, and never after a record written only in part. An
//! abnormal end (the peer's bare FIN, an alert, an error) resets the local
//! node's connection, so that a truncation never looks like a clean close.

mod back;
mod corked;
mod keys;
mod out;
mod reader;
mod sender;
mod splice;
pub mod state;
#[cfg(any(test, feature = "testing"))]
mod testing;
#[cfg(test)]
mod tests;

pub use corked::Corked;
pub use keys::{Keys, Provider, SecretCapture, Side, DEFAULT_RECORDS_PER_KEY};
pub use reader::{Reader, MAX_IDLE_RECORDS};
pub use sender::{send, Sender};
pub use splice::{refuse, splice, splice_from, Firewalled};
#[cfg(any(test, feature = "testing"))]
pub use testing::{fuzz_open, fuzz_seal, send_record};

use std::io;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Writes every byte of `pieces` with vectored calls.
async fn write_all_vectored<W: AsyncWrite + Unpin>(w: &mut W, mut pieces: &mut [io::IoSlice<'_>]) -> io::Result<()> {
    while !pieces.is_empty() {
        let n = w.write_vectored(pieces).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        io::IoSlice::advance_slices(&mut pieces, n);
    }
    Ok(())
}

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
/// Alert descriptions (RFC 8446 §6).
const CLOSE_NOTIFY: u8 = 0;
const UNEXPECTED_MESSAGE: u8 = 10;
const BAD_RECORD_MAC: u8 = 20;
const RECORD_OVERFLOW: u8 = 22;
const CERTIFICATE_REVOKED: u8 = 44;
const ACCESS_DENIED: u8 = 49;
const ILLEGAL_PARAMETER: u8 = 47;
const DECODE_ERROR: u8 = 50;
const INTERNAL_ERROR: u8 = 80;
const USER_CANCELED: u8 = 90;

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

/// The peer ended the tunnel with an error alert: nothing is sent back.
#[derive(Debug)]
pub struct PeerAlert(pub u8);

impl std::fmt::Display for PeerAlert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TLS alert {} from the peer", self.0)
    }
}

impl std::error::Error for PeerAlert {}

fn fatal(alert: u8, why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, Fatal { alert, why })
}

/// The error that ends a tunnel this end may no longer carry: `access_denied`
/// to the peer (RFC 8446 §6.2: access control was applied and this end does
/// not proceed), for `why`.
pub fn access_denied(why: &'static str) -> io::Error {
    fatal(ACCESS_DENIED, why)
}

fn invalid(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// The alert that ends a tunnel after `e`: the fault's own for the peer's
/// faults, none after the peer's alert, `internal_error` for any other
/// abnormal end (this side's node or socket failed).
fn alert_for(e: &io::Error) -> Option<u8> {
    let inner = e.get_ref();
    if let Some(f) = inner.and_then(|e| e.downcast_ref::<Fatal>()) {
        return Some(f.alert);
    }
    if inner.is_some_and(|e| e.is::<PeerAlert>()) {
        return None;
    }
    if e.kind() == io::ErrorKind::PermissionDenied {
        return Some(CERTIFICATE_REVOKED);
    }
    Some(INTERNAL_ERROR)
}

/// How this host's open tunnels seal and open records: with whose AEAD
/// code, and how many records go under one key before a KeyUpdate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crypto {
    pub provider: Provider,
    pub records_per_key: u64,
}

/// Takes a tunnel's connection over from rustls, for either end: proves
/// that rustls has nothing left to send, no plaintext received and unread,
/// and no part of a record in its buffers ([`Corked`]), then extracts the
/// keys. Returns the socket, the sender and the inbound reader.
pub async fn hand_over<C>(
    tls: (Corked<tokio::net::TcpStream>, C),
    capture: &SecretCapture,
    side: Side,
    crypto: Crypto,
) -> io::Result<(tokio::net::TcpStream, Sender, Reader)>
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
    let suite = crate::tls::Suite::of(&conn).ok_or_else(|| invalid("the negotiated cipher suite is not erlmesh's"))?;
    let secrets = conn.dangerous_extract_secrets().map_err(io::Error::other)?;
    let (tx, rx) = take_over(secrets, suite, capture, side, crypto)?;
    Ok((io.into_inner(), tx, rx))
}

/// The sender and the inbound reader for a tunnel whose TLS 1.3 keys were
/// taken from rustls (`dangerous_extract_secrets`), with the traffic
/// secrets `capture` saw during that connection's handshake (taken out of
/// it). `suite` is the one it negotiated, `side` this end's role in it.
pub fn take_over(
    secrets: rustls::ExtractedSecrets,
    suite: crate::tls::Suite,
    capture: &SecretCapture,
    side: Side,
    crypto: Crypto,
) -> io::Result<(Sender, Reader)> {
    let (client, server) = capture.take()?;
    let (tx_secret, rx_secret, peer) = match side {
        Side::Client => (client, server, Side::Server),
        Side::Server => (server, client, Side::Client),
    };
    let tx = Keys::new(secrets.tx.0, suite, secrets.tx.1, tx_secret, crypto)?;
    let rx = Reader::new(Keys::new(secrets.rx.0, suite, secrets.rx.1, rx_secret, crypto)?, peer);
    let tx = Sender::new(tx, &rx);
    Ok((tx, rx))
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
