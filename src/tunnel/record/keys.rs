//! Keys and their derivation (RFC 8446 §7.1-§7.3): the traffic secrets
//! captured from rustls' key schedule, one direction's key, IV and sequence
//! number, and the next generation after a KeyUpdate. Secrets and key bytes
//! are held in zeroizing buffers and wiped as soon as the next generation
//! exists (§7.2: traffic_secret_N is deleted once N+1 is derived).
//!
//! A direction's whole state is (suite, traffic secret, sequence number):
//! the key and IV are derived from the secret. That triple is what a
//! hand-over between processes carries; whose AEAD code seals and opens
//! (the [`Provider`]) is the receiving process's own choice.

use super::{invalid, APPLICATION_DATA, HEADER, TAG};
use crate::tls::Suite;
use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::hkdf::{self, KeyType as _};
use rustls::ConnectionTrafficSecrets;
use std::io;
use std::ops::Range;
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

/// Whose AEAD code seals and opens records once a tunnel is open (the
/// handshake is rustls' with aws-lc-rs either way). Both run the same
/// AES-GCM and ChaCha20-Poly1305; which is faster depends on the CPU (see
/// [`Provider::auto`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    AwsLc,
    Ring,
}

impl Provider {
    /// The names `tls.record_provider` takes (besides `auto`).
    pub const NAMES: [(&'static str, Provider); 2] = [("aws-lc-rs", Provider::AwsLc), ("ring", Provider::Ring)];

    /// The provider whose AES-GCM is the faster on this CPU. On x86-64,
    /// aws-lc-rs has AES-GCM code for AVX-512 with VAES and none for VAES
    /// without AVX-512, where ring has (VAES and VPCLMULQDQ on 256-bit AVX2
    /// registers, as on AMD Zen 3): measured there, ring seals and opens
    /// 1.5 to 2.1 times as fast (README, "The cryptography, provider by provider").
    /// Elsewhere both run the same AES-NI code, or aws-lc-rs the faster.
    pub fn auto() -> Provider {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let vaes = has!("vaes") && has!("vpclmulqdq") && has!("avx2");
            let avx512 = has!("avx512f") && has!("avx512dq") && has!("avx512bw") && has!("avx512vl");
            if vaes && !avx512 {
                return Provider::Ring;
            }
        }
        Provider::AwsLc
    }

    /// Its name, as `tls.record_provider` spells it.
    pub fn name(self) -> &'static str {
        let named = Provider::NAMES.iter().find(|(_, p)| *p == self);
        named.map_or("unnamed", |(n, _)| n)
    }
}

/// What the record layer needs of a suite: its hash, key length,
/// number in a handed-over state, and each provider's algorithm.
impl Suite {
    /// Its number in a handed-over state.
    fn code(self) -> u8 {
        match self {
            Suite::Aes128Gcm => 1,
            Suite::Aes256Gcm => 2,
            Suite::Chacha20Poly1305 => 3,
            Suite::Aegis128X2 => 4,
        }
    }

    fn from_code(c: u8) -> Option<Suite> {
        Suite::ALL.into_iter().find(|s| s.code() == c)
    }

    fn hash(self) -> hkdf::Algorithm {
        match self {
            Suite::Aes256Gcm => hkdf::HKDF_SHA384,
            _ => hkdf::HKDF_SHA256,
        }
    }

    fn key_len(self) -> usize {
        match self {
            Suite::Aes128Gcm => 16,
            Suite::Aegis128X2 => crate::tls::aegis::KEY_LEN,
            _ => 32,
        }
    }

    /// Its AEAD in each provider's code (aws-lc-rs, ring); `None` for
    /// AEGIS, which has one implementation whichever provider is chosen.
    fn provider_algs(self) -> Option<(&'static aead::Algorithm, &'static ring::aead::Algorithm)> {
        match self {
            Suite::Aes128Gcm => Some((&aead::AES_128_GCM, &ring::aead::AES_128_GCM)),
            Suite::Aes256Gcm => Some((&aead::AES_256_GCM, &ring::aead::AES_256_GCM)),
            Suite::Chacha20Poly1305 => Some((&aead::CHACHA20_POLY1305, &ring::aead::CHACHA20_POLY1305)),
            Suite::Aegis128X2 => None,
        }
    }

    /// The key, sealing and opening with `provider`'s code.
    fn key(self, provider: Provider, key: &[u8]) -> io::Result<Key> {
        let bad = || invalid("bad traffic key");
        let Some((aws_lc, ring_alg)) = self.provider_algs() else {
            return crate::tls::aegis::key(key).map(Key::Aegis).ok_or_else(bad);
        };
        Ok(match provider {
            Provider::AwsLc => Key::AwsLc(LessSafeKey::new(UnboundKey::new(aws_lc, key).map_err(|_| bad())?)),
            Provider::Ring => {
                use ring::aead as r;
                let k = r::UnboundKey::new(ring_alg, key).map_err(|_| bad())?;
                Key::Ring(Box::new(r::LessSafeKey::new(k)))
            }
        })
    }
}

/// A direction's AEAD key, in its provider's type (ring's holds its key
/// schedule and GHASH table inline: boxed, so that aws-lc-rs's keys do not
/// take its size).
enum Key {
    AwsLc(LessSafeKey),
    Ring(Box<ring::aead::LessSafeKey>),
    /// AEGIS-128X2's key, wiped when dropped.
    Aegis(Zeroizing<[u8; crate::tls::aegis::KEY_LEN]>),
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
    key: Key,
    iv: [u8; 12],
    seq: u64,
    suite: Suite,
    provider: Provider,
    secret: Secret,
    /// Records sealed under one key before this side sends a KeyUpdate.
    records_per_key: u64,
}

impl Keys {
    /// Keys from a traffic secret (RFC 8446 §7.3), checked against the key
    /// and IV rustls derived from it.
    /// `suite` is the connection's (rustls hands AEGIS's key and IV out in
    /// AES-128-GCM's variant: same shapes).
    pub(super) fn new(
        seq: u64,
        suite: Suite,
        secrets: ConnectionTrafficSecrets,
        secret: Secret,
        crypto: super::Crypto,
    ) -> io::Result<Keys> {
        let (key, iv) = match (&secrets, suite) {
            (ConnectionTrafficSecrets::Aes128Gcm { key, iv }, Suite::Aes128Gcm | Suite::Aegis128X2) => (key, iv),
            (ConnectionTrafficSecrets::Aes256Gcm { key, iv }, Suite::Aes256Gcm) => (key, iv),
            (ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv }, Suite::Chacha20Poly1305) => (key, iv),
            _ => return Err(invalid("the extracted keys are not the negotiated suite's")),
        };
        let mut k = Keys::derive(suite, crypto.provider, secret, crypto.records_per_key)?;
        if expand_label(suite.hash(), &k.secret, b"key", suite.key_len()).as_slice() != key.as_ref()
            || k.iv[..] != *iv.as_ref()
        {
            return Err(invalid("captured traffic secret does not match the negotiated keys"));
        }
        k.seq = seq;
        Ok(k)
    }

    fn derive(suite: Suite, provider: Provider, secret: Secret, records_per_key: u64) -> io::Result<Keys> {
        let key = expand_label(suite.hash(), &secret, b"key", suite.key_len());
        let iv: [u8; 12] = expand_label(suite.hash(), &secret, b"iv", 12)
            .as_slice()
            .try_into()
            .map_err(|_| invalid("bad IV length"))?;
        Ok(Keys {
            key: suite.key(provider, &key)?,
            iv,
            seq: 0,
            suite,
            provider,
            secret,
            records_per_key: records_per_key.clamp(1, HARD_RECORDS_PER_KEY),
        })
    }

    /// Fixed AES-256-GCM keys from a fixed traffic secret, for tests and
    /// fuzzing only.
    #[cfg(any(test, feature = "testing"))]
    pub(super) fn fixed(records_per_key: u64) -> io::Result<Keys> {
        Keys::fixed_suite(Suite::Aes256Gcm, records_per_key)
    }

    /// Fixed keys of `suite` from a fixed traffic secret (tests, fuzzing).
    #[cfg(any(test, feature = "testing"))]
    pub(super) fn fixed_suite(suite: Suite, records_per_key: u64) -> io::Result<Keys> {
        Keys::derive(
            suite,
            Provider::auto(),
            Zeroizing::new(vec![7u8; suite.hash().len()]),
            records_per_key,
        )
    }

    /// The same keys, where they are, with `provider`'s code (tests: each
    /// provider reads what the other seals).
    #[cfg(test)]
    pub(super) fn with(self, provider: Provider) -> io::Result<Keys> {
        let mut k = Keys::derive(
            self.suite,
            provider,
            Zeroizing::new(self.secret.to_vec()),
            self.records_per_key,
        )?;
        k.seq = self.seq;
        Ok(k)
    }

    /// Whose code seals and opens with these keys.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// This direction's state for the next process (`erlmesh upgrade`).
    pub(super) fn export(&self) -> super::state::KeyState {
        super::state::KeyState {
            suite: self.suite.code(),
            secret: self.secret.to_vec(),
            seq: self.seq,
            records_per_key: self.records_per_key,
        }
    }

    /// Keys that go on where `s` left off, sealing and opening with
    /// `provider`'s code (this process's choice, whatever the last one's).
    pub(super) fn import(s: &super::state::KeyState, provider: Provider) -> io::Result<Keys> {
        let suite = Suite::from_code(s.suite).ok_or_else(|| invalid("unknown suite in handed-over state"))?;
        if s.secret.len() != suite.hash().len() || s.seq >= HARD_RECORDS_PER_KEY {
            return Err(invalid("malformed handed-over traffic secret"));
        }
        let mut k = Keys::derive(suite, provider, Zeroizing::new(s.secret.clone()), s.records_per_key)?;
        k.seq = s.seq;
        Ok(k)
    }

    /// Moves to the next traffic secret (RFC 8446 §7.2); the old secret
    /// and key are wiped as they are dropped.
    pub(super) fn update(&mut self) -> io::Result<()> {
        let hash = self.suite.hash();
        let next = expand_label(hash, &self.secret, b"traffic upd", hash.len());
        *self = Keys::derive(self.suite, self.provider, next, self.records_per_key)?;
        Ok(())
    }

    /// Whether `n` more records would pass this key's sending budget.
    pub(super) fn due(&self, n: usize) -> bool {
        self.seq + n as u64 >= self.records_per_key
    }

    fn nonce(&mut self) -> io::Result<[u8; 12]> {
        if self.seq >= HARD_RECORDS_PER_KEY {
            return Err(invalid("record limit for this key reached without a key update"));
        }
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        self.seq += 1;
        Ok(n)
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
        let (inner, tag) = rec[HEADER..HEADER + clen].split_at_mut(inner);
        let nonce = self.nonce()?;
        self.seal_contiguous(nonce, hdr, inner, tag.try_into().expect("tag length"))?;
        Ok(HEADER + clen)
    }

    /// Seals `in_out` in place, its tag going to `tag`.
    fn seal_contiguous(
        &self,
        nonce: [u8; 12],
        hdr: [u8; HEADER],
        in_out: &mut [u8],
        tag: &mut [u8; TAG],
    ) -> io::Result<()> {
        let failed = |_| invalid("seal failed");
        match &self.key {
            Key::AwsLc(k) => {
                let t = k
                    .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(hdr), in_out)
                    .map_err(failed)?;
                tag.copy_from_slice(t.as_ref());
            }
            Key::Ring(k) => {
                use ring::aead as r;
                let t = k
                    .seal_in_place_separate_tag(r::Nonce::assume_unique_for_key(nonce), r::Aad::from(hdr), in_out)
                    .map_err(|_| invalid("seal failed"))?;
                tag.copy_from_slice(t.as_ref());
            }
            Key::Aegis(k) => *tag = crate::tls::aegis::seal(k, nonce, &hdr, in_out),
        }
        Ok(())
    }

    /// Seals `buf[at]` (one record's application data, at most
    /// [`super::MAX_PLAINTEXT`] bytes) in place where it lies, the content
    /// type and tag going to `trailer`; returns the record's header. The
    /// record on the wire is `header`, `buf[at]`, `trailer`: a batch of
    /// them is written with one vectored call, so a node's bytes read in
    /// one piece are sealed without being moved apart.
    ///
    /// `buf` must hold one byte past `at` (the next record's first byte,
    /// or a spare one): ring and AEGIS seal one contiguous piece, so the content
    /// type is put there for the call, and the byte is put back after it
    /// (records are sealed in order, so the next record's byte is still
    /// its plaintext). aws-lc-rs seals the type into the trailer itself.
    pub(super) fn seal_scatter(
        &mut self,
        buf: &mut [u8],
        at: Range<usize>,
        trailer: &mut [u8; 1 + TAG],
    ) -> io::Result<[u8; HEADER]> {
        if buf.len() <= at.end {
            return Err(invalid("no room past a record's plaintext for its content type"));
        }
        let clen = at.len() + 1 + TAG;
        let hdr = [APPLICATION_DATA, 3, 3, (clen >> 8) as u8, clen as u8];
        let nonce = self.nonce()?;
        match &self.key {
            Key::AwsLc(k) => {
                k.seal_in_place_scatter(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(hdr),
                    &mut buf[at],
                    &[APPLICATION_DATA],
                    trailer,
                )
                .map_err(|_| invalid("seal failed"))?;
            }
            Key::Ring(_) | Key::Aegis(_) => {
                let spare = at.end;
                let kept = std::mem::replace(&mut buf[spare], APPLICATION_DATA);
                let (ctype, tag) = trailer.split_at_mut(1);
                let sealed = self.seal_contiguous(
                    nonce,
                    hdr,
                    &mut buf[at.start..=spare],
                    tag.try_into().expect("tag length"),
                );
                ctype[0] = std::mem::replace(&mut buf[spare], kept);
                sealed?;
            }
        }
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
        Ok(match &self.key {
            Key::AwsLc(k) => k
                .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(hdr), body)
                .ok()
                .map(|p| p.len()),
            Key::Ring(k) => {
                use ring::aead as r;
                k.open_in_place(r::Nonce::assume_unique_for_key(nonce), r::Aad::from(hdr), body)
                    .ok()
                    .map(|p| p.len())
            }
            Key::Aegis(k) => crate::tls::aegis::open(k, nonce, &hdr, body),
        })
    }
}
