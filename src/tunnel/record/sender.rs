//! Records this end seals: every path that sends application data first
//! sends the KeyUpdate that is due or that the peer asked for (§4.6.3);
//! every write of records goes through one place that knows whether a
//! record was left half written, so that an alert never follows a partial
//! record; and a tunnel ends once, with close_notify or an error alert.

use super::keys::Keys;
use super::reader::Reader;
use super::{alert_for, invalid, ALERT, APPLICATION_DATA, CLOSE_NOTIFY, HANDSHAKE, HEADER, KEY_UPDATE, TAG};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// How long the alert that ends a tunnel may take to leave.
const ALERT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The sending direction: keys, the peer's pending request for a
/// KeyUpdate, and whether the stream of records can still take one more.
pub struct Sender {
    pub(super) keys: Keys,
    /// Set by this tunnel's [`Reader`] when the peer asks for a KeyUpdate.
    asked: Arc<AtomicBool>,
    /// A write of records began and did not finish (an error, or the write
    /// was abandoned): nothing may follow it on the wire.
    pub(super) torn: bool,
    /// close_notify or an error alert went out: nothing follows it.
    pub(super) ended: bool,
}

impl Sender {
    /// A sender whose KeyUpdates answer `rx`'s peer's requests.
    pub fn new(keys: Keys, rx: &Reader) -> Sender {
        Sender {
            keys,
            asked: rx.asked.clone(),
            torn: false,
            ended: false,
        }
    }

    /// Answers the requests `rx` reads from now on (the splice's reader).
    pub(super) fn follow(&mut self, rx: &Reader) {
        if !Arc::ptr_eq(&self.asked, &rx.asked) {
            if self.asked.load(Ordering::Relaxed) {
                rx.asked.store(true, Ordering::Relaxed);
            }
            self.asked = rx.asked.clone();
        }
    }

    /// Writes sealed records.
    pub(super) async fn put<W: AsyncWrite + Unpin>(&mut self, w: &mut W, records: &[u8]) -> io::Result<()> {
        self.put_vectored(w, &mut [io::IoSlice::new(records)]).await
    }

    /// Writes sealed records given in pieces (headers, sealed plaintexts
    /// where they lie, trailers); the one way records reach the wire.
    pub(super) async fn put_vectored<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        pieces: &mut [io::IoSlice<'_>],
    ) -> io::Result<()> {
        if self.torn || self.ended {
            return Err(invalid("a record after the tunnel's end or after a partial record"));
        }
        self.torn = true;
        super::write_all_vectored(w, pieces).await?;
        self.torn = false;
        Ok(())
    }

    /// Before `records` records of application data: the KeyUpdate the
    /// peer asked for, or the one this key's budget calls for.
    pub(super) async fn before_data<W: AsyncWrite + Unpin>(&mut self, w: &mut W, records: usize) -> io::Result<()> {
        if self.asked.swap(false, Ordering::Relaxed) || self.keys.due(records) {
            // update_not_requested: the peer updates its own key when due.
            self.record(w, &[KEY_UPDATE, 0, 0, 1, 0], HANDSHAKE).await?;
            self.keys.update()?;
        }
        Ok(())
    }

    /// Seals `data` (at most one record's worth) as one record of `ctype`.
    pub(super) async fn record<W: AsyncWrite + Unpin>(&mut self, w: &mut W, data: &[u8], ctype: u8) -> io::Result<()> {
        let mut rec = vec![0u8; HEADER + data.len() + 1 + TAG];
        rec[HEADER..HEADER + data.len()].copy_from_slice(data);
        let len = self.keys.seal(&mut rec, data.len(), ctype)?;
        self.put(w, &rec[..len]).await
    }

    /// The clean end of this direction: close_notify, then the TCP
    /// write side is shut.
    pub(super) async fn close<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> io::Result<()> {
        self.record(w, &[1, CLOSE_NOTIFY], ALERT).await?;
        self.ended = true;
        w.shutdown().await
    }

    /// Ends the tunnel after `e`: the alert it calls for (none after the
    /// peer's own alert), unless this side already ended or a record was
    /// left half written; bounded by [`ALERT_TIMEOUT`].
    pub async fn abort<W: AsyncWrite + Unpin>(&mut self, w: &mut W, e: &io::Error) {
        if self.torn || self.ended {
            return;
        }
        if let Some(alert) = alert_for(e) {
            let _ = tokio::time::timeout(ALERT_TIMEOUT, self.record(w, &[2, alert], ALERT)).await;
        }
        self.ended = true;
    }
}

/// Sends application data as one record (the tunnel's status byte, the
/// node's answer), after the KeyUpdate that is due or asked for.
pub async fn send<W: AsyncWrite + Unpin>(w: &mut W, tx: &mut Sender, data: &[u8]) -> io::Result<()> {
    tx.before_data(w, 1).await?;
    tx.record(w, data, APPLICATION_DATA).await
}
