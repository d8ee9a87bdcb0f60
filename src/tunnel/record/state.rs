//! A tunnel's record layer as one value, for `erlmesh upgrade` to hand to
//! the next process: per direction the suite, the traffic secret (wiped
//! when the value is dropped) and the sequence number (the key and IV are
//! derived again), and the reader's bytes in flight: a partial record, a
//! split handshake message, the count of records without data, whether
//! the peer asked for a KeyUpdate; and whether close_notify went out.
//! A sender that stopped inside a record (torn) has no state to give.

use super::invalid;
use super::keys::{Keys, Side};
use super::reader::Reader;
use super::sender::Sender;
use serde::{Deserialize, Serialize};
use std::io;
use zeroize::Zeroize;

/// One direction's keys.
#[derive(Serialize, Deserialize)]
pub struct KeyState {
    /// 1 AES-128-GCM, 2 AES-256-GCM, 3 ChaCha20-Poly1305.
    pub suite: u8,
    pub secret: Vec<u8>,
    pub seq: u64,
    pub records_per_key: u64,
}

impl Drop for KeyState {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

/// Both directions of one tunnel's record layer.
#[derive(Serialize, Deserialize)]
pub struct RecordState {
    pub tx: KeyState,
    pub rx: KeyState,
    /// The peer is the TLS client (this end accepted the tunnel).
    pub peer_is_client: bool,
    /// Received bytes not yet opened (at most a partial record and what
    /// followed it in one read).
    pub buffered: Vec<u8>,
    /// A handshake message split across records, so far.
    pub handshake: Vec<u8>,
    pub idle: u32,
    /// The peer asked for a KeyUpdate not yet sent.
    pub asked: bool,
    /// close_notify (or an alert) went out: nothing more is sealed.
    pub ended: bool,
}

impl Drop for RecordState {
    fn drop(&mut self) {
        self.buffered.zeroize();
        self.handshake.zeroize();
    }
}

/// The state of a tunnel's sender and reader, taken between records.
pub fn export(tx: &Sender, rx: &Reader) -> io::Result<RecordState> {
    if tx.torn {
        return Err(invalid("a record was written in part: nothing can follow it"));
    }
    Ok(RecordState {
        tx: tx.keys.export(),
        rx: rx.keys.export(),
        peer_is_client: rx.peer == Side::Client,
        buffered: rx.buf[rx.start..rx.end].to_vec(),
        handshake: rx.handshake.clone(),
        idle: rx.idle,
        asked: rx.asked.load(std::sync::atomic::Ordering::Relaxed),
        ended: tx.ended,
    })
}

/// A sender and reader that go on where `s` left off, sealing and opening
/// with `provider`'s code.
pub fn import(s: &RecordState, provider: super::Provider) -> io::Result<(Sender, Reader)> {
    if s.buffered.len() > Reader::CAPACITY || s.handshake.len() > super::reader::MAX_HANDSHAKE {
        return Err(invalid("handed-over record state larger than the reader holds"));
    }
    let peer = if s.peer_is_client { Side::Client } else { Side::Server };
    let mut rx = Reader::new(Keys::import(&s.rx, provider)?, peer);
    if rx.buf.len() < s.buffered.len() {
        rx.buf.resize(Reader::CAPACITY, 0);
    }
    rx.buf[..s.buffered.len()].copy_from_slice(&s.buffered);
    rx.end = s.buffered.len();
    rx.handshake = s.handshake.clone();
    rx.idle = s.idle;
    rx.asked.store(s.asked, std::sync::atomic::Ordering::Relaxed);
    let mut tx = Sender::new(Keys::import(&s.tx, provider)?, &rx);
    tx.ended = s.ended;
    Ok((tx, rx))
}
