//! Keys and their derivation (RFC 8446 §7.1-§7.3): the traffic secrets
//! captured from rustls' key schedule, one direction's key, IV and sequence
//! number, and the next generation after a KeyUpdate. Secrets and key bytes
//! are held in zeroizing buffers and wiped as soon as the next generation
//! exists (§7.2: traffic_secret_N is deleted once N+1 is derived).
//!
//! A direction's whole state is (suite, traffic secret, sequence number):
//! the key and IV are derived from the secret. That triple is what a
//! hand-over between processes carries.

use super::{invalid, APPLICATION_DATA, HEADER, TAG};
use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::hkdf::{self, KeyType as _};
use rustls::ConnectionTrafficSecrets;
use std::io;
use std::sync::Mutex;
use zeroize::Zeroizing;

/// Records sealed under one key before a KeyUpdate: well below AES-GCM's
/// limit of 2^24.5 records per key (RFC 8446 §5.5).
pub const DEFAULT_RECORDS_PER_KEY: u64 = 1 << 23;
/// Records opened or sealed under one key, beyond which the tunnel is
/// closed: the AEAD limit itself (a peer that never updates its key).
pub(super) const HARD_RECORDS_PER_KEY: u64 = 1 << 24;

/// A secret, wiped when dropped.
type Secret = Zeroizing<Vec<u8>>;

/// Captures one connection's application traffic secrets from rustls' key
/// schedule (a `KeyLog` set on that connection's config only), so that the
/// record layer can derive the keys that follow a KeyUpdate. The hand-over
/// takes them out: none stays here once the tunnel is open.
#[derive(Debug, Default)]
pub struct SecretCapture {
    secrets: Mutex<[Option<Secret>; 2]>,
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
            s[at] = Some(Zeroizing::new(secret.to_vec()));
        }
    }
}

impl SecretCapture {
    /// Takes the (client, server) secrets out, leaving nothing behind.
    pub(super) fn take(&self) -> io::Result<(Secret, Secret)> {
        let mut s = self.secrets.lock().map_err(|_| invalid("secret capture poisoned"))?;
        let missing = || invalid("the handshake's traffic secrets were not captured");
        let client = s[0].take().ok_or_else(missing)?;
        let server = s[1].take().ok_or_else(missing)?;
        Ok((client, server))
    }

    /// Whether any secret is still held (tests: the hand-over leaves none).
    pub fn is_empty(&self) -> bool {
        self.secrets
            .lock()
            .map(|s| s.iter().all(Option::is_none))
            .unwrap_or(false)
    }
}

/// Which end of the TLS connection this is: the client sends with the
/// client traffic secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// HKDF output lengths for aws-lc-rs.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-Label (RFC 8446 §7.1) with an empty context.
fn expand_label(hash: hkdf::Algorithm, secret: &[u8], label: &[u8], len: usize) -> Secret {
    let prk = hkdf::Prk::new_less_safe(hash, secret);
    let out_len = (len as u16).to_be_bytes();
    let label_len = [(6 + label.len()) as u8];
    let info: [&[u8]; 5] = [&out_len, &label_len, b"tls13 ", label, &[0]];
    let mut out = Zeroizing::new(vec![0u8; len]);
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
    secret: Secret,
    /// Records sealed under one key before this side sends a KeyUpdate.
    records_per_key: u64,
}

impl Keys {
    /// Keys from a traffic secret (RFC 8446 §7.3), checked against the key
    /// and IV rustls derived from it.
    pub(super) fn new(
        seq: u64,
        secrets: ConnectionTrafficSecrets,
        secret: Secret,
        records_per_key: u64,
    ) -> io::Result<Keys> {
        let (aead, hash, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, hkdf::HKDF_SHA256, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, hkdf::HKDF_SHA384, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, hkdf::HKDF_SHA256, key, iv)
            }
            _ => return Err(invalid("unsupported cipher suite")),
        };
        let mut k = Keys::derive(aead, hash, secret, records_per_key)?;
        if expand_label(hash, &k.secret, b"key", aead.key_len()).as_slice() != key.as_ref() || k.iv[..] != *iv.as_ref()
        {
            return Err(invalid("captured traffic secret does not match the negotiated keys"));
        }
        k.seq = seq;
        Ok(k)
    }

    pub(super) fn derive(
        aead: &'static aead::Algorithm,
        hash: hkdf::Algorithm,
        secret: Secret,
        records_per_key: u64,
    ) -> io::Result<Keys> {
        let key = expand_label(hash, &secret, b"key", aead.key_len());
        let iv: [u8; 12] = expand_label(hash, &secret, b"iv", 12)
            .as_slice()
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

    /// Fixed AES-256-GCM keys from a fixed traffic secret, for tests and
    /// fuzzing only.
    #[cfg(any(test, feature = "testing"))]
    pub(super) fn fixed(records_per_key: u64) -> io::Result<Keys> {
        Keys::derive(
            &aead::AES_256_GCM,
            hkdf::HKDF_SHA384,
            Zeroizing::new(vec![7u8; 48]),
            records_per_key,
        )
    }

    /// This direction's state for the next process (`erlmesh upgrade`).
    pub(super) fn export(&self) -> super::state::KeyState {
        let suite = if *self.aead == aead::AES_128_GCM {
            1
        } else if *self.aead == aead::AES_256_GCM {
            2
        } else {
            3
        };
        super::state::KeyState {
            suite,
            secret: self.secret.to_vec(),
            seq: self.seq,
            records_per_key: self.records_per_key,
        }
    }

    /// Keys that go on where `s` left off.
    pub(super) fn import(s: &super::state::KeyState) -> io::Result<Keys> {
        let (aead, hash) = match s.suite {
            1 => (&aead::AES_128_GCM, hkdf::HKDF_SHA256),
            2 => (&aead::AES_256_GCM, hkdf::HKDF_SHA384),
            3 => (&aead::CHACHA20_POLY1305, hkdf::HKDF_SHA256),
            _ => return Err(invalid("unknown suite in handed-over state")),
        };
        if s.secret.len() != hash.len() || s.seq >= HARD_RECORDS_PER_KEY {
            return Err(invalid("malformed handed-over traffic secret"));
        }
        let mut k = Keys::derive(aead, hash, Zeroizing::new(s.secret.clone()), s.records_per_key)?;
        k.seq = s.seq;
        Ok(k)
    }

    /// Moves to the next traffic secret (RFC 8446 §7.2); the old secret
    /// and key are wiped as they are dropped.
    pub(super) fn update(&mut self) -> io::Result<()> {
        let next = expand_label(self.hash, &self.secret, b"traffic upd", self.hash.len());
        *self = Keys::derive(self.aead, self.hash, next, self.records_per_key)?;
        Ok(())
    }

    /// Whether `n` more records would pass this key's sending budget.
    pub(super) fn due(&self, n: usize) -> bool {
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

    /// Seals `rec[HEADER..HEADER + n]` (plaintext of type `ctype`, then
    /// `pad` zero bytes) in place; returns the record's length. `rec` must
    /// have room for the type byte, the padding and the tag.
    pub(super) fn seal_padded(&mut self, rec: &mut [u8], n: usize, ctype: u8, pad: usize) -> io::Result<usize> {
        rec[HEADER + n] = ctype;
        rec[HEADER + n + 1..HEADER + n + 1 + pad].fill(0);
        let inner = n + 1 + pad;
        let clen = inner + TAG;
        rec[..HEADER].copy_from_slice(&[APPLICATION_DATA, 3, 3, (clen >> 8) as u8, clen as u8]);
        let hdr: [u8; HEADER] = rec[..HEADER].try_into().expect("header length");
        let nonce = self.nonce()?;
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(hdr), &mut rec[HEADER..HEADER + inner])
            .map_err(|_| invalid("seal failed"))?;
        rec[HEADER + inner..HEADER + clen].copy_from_slice(tag.as_ref());
        Ok(HEADER + clen)
    }

    /// Seals `plain` (one record's application data, at most
    /// [`super::MAX_PLAINTEXT`] bytes) in place where it lies, the content
    /// type and tag going to `trailer`; returns the record's header. The
    /// record on the wire is `header`, `plain`, `trailer`: a batch of them
    /// is written with one vectored call, so a node's bytes read in one
    /// piece are sealed without being moved apart.
    pub(super) fn seal_scatter(&mut self, plain: &mut [u8], trailer: &mut [u8; 1 + TAG]) -> io::Result<[u8; HEADER]> {
        let clen = plain.len() + 1 + TAG;
        let hdr = [APPLICATION_DATA, 3, 3, (clen >> 8) as u8, clen as u8];
        let nonce = self.nonce()?;
        self.key
            .seal_in_place_scatter(nonce, Aad::from(hdr), plain, &[APPLICATION_DATA], trailer)
            .map_err(|_| invalid("seal failed"))?;
        Ok(hdr)
    }

    /// [`Keys::seal_padded`] without padding.
    pub(super) fn seal(&mut self, rec: &mut [u8], n: usize, ctype: u8) -> io::Result<usize> {
        self.seal_padded(rec, n, ctype, 0)
    }

    /// Opens `body` (one record's ciphertext and tag, `hdr` its header) in
    /// place; returns the inner plaintext's length, or `None` when it fails
    /// authentication.
    pub(super) fn open(&mut self, hdr: [u8; HEADER], body: &mut [u8]) -> io::Result<Option<usize>> {
        let nonce = self.nonce()?;
        Ok(self
            .key
            .open_in_place(nonce, Aad::from(hdr), body)
            .ok()
            .map(|p| p.len()))
    }
}
