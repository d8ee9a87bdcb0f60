//! AEGIS-128X2 (RFC 10032) as a TLS 1.3 cipher suite between erlmesh
//! hosts: `TLS13_AEGIS_128X2_SHA256`, code point 0xFF13 from TLS's range
//! for private use (0xFF00-0xFFFF; only erlmesh offers or accepts it).
//!
//! The suite is RFC 8446's key schedule and record protection with AEGIS
//! in place of AES-GCM: HKDF-SHA256, a 16-byte key, the 12-byte IV and
//! per-record nonce of §5.3 (IV XOR sequence number), and a 16-byte tag.
//! AEGIS-128X2 takes a 16-byte nonce: the §5.3 nonce is followed by four
//! zero bytes, so nonces stay unique per key exactly as with AES-GCM. It
//! is offered only where the CPU has AES instructions libaegis uses
//! ([`hardware`]; without them its software AES is slow and not
//! constant-time).
//!
//! Where this CPU has them, AEGIS-128X2 seals and opens several times as
//! fast as the fastest AES-GCM code (README, "The cryptography, suite by
//! suite"); its security margin is larger than AES-GCM's and it has no
//! practical limit on the data one key protects.

use aegis::aegis128x2::Aegis128X2;
use rustls::crypto::cipher::{
    make_tls13_aad, AeadKey, InboundOpaqueMessage, InboundPlainMessage, Iv, MessageDecrypter, MessageEncrypter, Nonce,
    OutboundOpaqueMessage, OutboundPlainMessage, PrefixedPayload, Tls13AeadAlgorithm, UnsupportedOperationError,
};
use rustls::crypto::CipherSuiteCommon;
use rustls::{CipherSuite, ConnectionTrafficSecrets, ContentType, Error, ProtocolVersion, Tls13CipherSuite};
use std::sync::LazyLock;
use zeroize::Zeroizing;

/// The suite's code point: TLS's private-use range.
pub const CODE: u16 = 0xFF13;
/// Key length (AEGIS-128X2's key is 128 bits).
pub const KEY_LEN: usize = 16;
/// Tag length: AEGIS's 128-bit tag, as AES-GCM's.
pub const TAG_LEN: usize = 16;

/// Whether this CPU has the AES instructions AEGIS needs to be fast and
/// constant-time, as libaegis picks its code: on x86-64, AES-NI with AVX
/// (its AES-NI code is built for AVX; VAES with AVX2 is faster still), on
/// aarch64, the AES extension; elsewhere, and on x86-64 without AVX, it
/// would run its software AES.
pub fn hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("avx")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// AEGIS's 16-byte nonce from a TLS 1.3 per-record nonce.
fn nonce(n: [u8; 12]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..12].copy_from_slice(&n);
    out
}

/// Seals `in_out` in place under `key` and the TLS 1.3 nonce `n`, with
/// `aad` (the record header); returns the tag.
pub fn seal(key: &[u8; KEY_LEN], n: [u8; 12], aad: &[u8], in_out: &mut [u8]) -> [u8; TAG_LEN] {
    Aegis128X2::<TAG_LEN>::new(key, &nonce(n)).encrypt_in_place(in_out, aad)
}

/// Opens `in_out` (ciphertext, then its tag) in place; the plaintext's
/// length, or `None` (and the ciphertext wiped) when it is too short or
/// fails authentication.
pub fn open(key: &[u8; KEY_LEN], n: [u8; 12], aad: &[u8], in_out: &mut [u8]) -> Option<usize> {
    let len = in_out.len().checked_sub(TAG_LEN)?;
    let (text, tag) = in_out.split_at_mut(len);
    let tag: &[u8; TAG_LEN] = (&*tag).try_into().ok()?;
    Aegis128X2::<TAG_LEN>::new(key, &nonce(n))
        .decrypt_in_place(text, tag, aad)
        .ok()
        .map(|_| len)
}

/// A traffic key, wiped when dropped; `None` unless it is [`KEY_LEN`] bytes.
pub fn key(bytes: &[u8]) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    if bytes.len() != KEY_LEN {
        return None;
    }
    let mut k = Zeroizing::new([0u8; KEY_LEN]);
    k.copy_from_slice(bytes);
    Some(k)
}

/// The suite, for rustls' handshake (HKDF and hash from aws-lc-rs).
pub static SUITE: LazyLock<Tls13CipherSuite> = LazyLock::new(|| {
    let base = rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .expect("a TLS 1.3 suite");
    Tls13CipherSuite {
        common: CipherSuiteCommon {
            suite: CipherSuite::Unknown(CODE),
            hash_provider: base.common.hash_provider,
            // Records per key before rustls itself would update it; erlmesh's
            // record layer updates far earlier (tunnel/record/keys.rs).
            confidentiality_limit: u64::MAX,
        },
        hkdf_provider: base.hkdf_provider,
        aead_alg: &Algorithm,
        quic: None,
    }
});

struct Algorithm;

impl Tls13AeadAlgorithm for Algorithm {
    /// rustls derives `key_len` bytes: the key always has AEGIS's length.
    fn encrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageEncrypter> {
        let key = self::key(key.as_ref()).expect("rustls derives key_len bytes");
        Box::new(Encrypter { key, iv })
    }
    fn decrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageDecrypter> {
        let key = self::key(key.as_ref()).expect("rustls derives key_len bytes");
        Box::new(Decrypter { key, iv })
    }
    fn key_len(&self) -> usize {
        KEY_LEN
    }
    /// rustls has no variant for this suite; the key and IV have AES-128-GCM's
    /// shapes and go out in its variant. The record layer takes the suite
    /// from the connection (`negotiated_cipher_suite`), not from this.
    fn extract_keys(&self, key: AeadKey, iv: Iv) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        Ok(ConnectionTrafficSecrets::Aes128Gcm { key, iv })
    }
}

struct Encrypter {
    key: Zeroizing<[u8; KEY_LEN]>,
    iv: Iv,
}

impl MessageEncrypter for Encrypter {
    fn encrypt(&mut self, msg: OutboundPlainMessage<'_>, seq: u64) -> Result<OutboundOpaqueMessage, Error> {
        let total = self.encrypted_payload_len(msg.payload.len());
        let mut payload = PrefixedPayload::with_capacity(total);
        payload.extend_from_chunks(&msg.payload);
        payload.extend_from_slice(&msg.typ.to_array());
        let tag = seal(
            &self.key,
            Nonce::new(&self.iv, seq).0,
            &make_tls13_aad(total),
            payload.as_mut(),
        );
        payload.extend_from_slice(&tag);
        Ok(OutboundOpaqueMessage::new(
            ContentType::ApplicationData,
            ProtocolVersion::TLSv1_2,
            payload,
        ))
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        payload_len + 1 + TAG_LEN
    }
}

struct Decrypter {
    key: Zeroizing<[u8; KEY_LEN]>,
    iv: Iv,
}

impl MessageDecrypter for Decrypter {
    fn decrypt<'a>(&mut self, mut msg: InboundOpaqueMessage<'a>, seq: u64) -> Result<InboundPlainMessage<'a>, Error> {
        let payload = &mut msg.payload;
        let aad = make_tls13_aad(payload.len());
        let plain_len = open(&self.key, Nonce::new(&self.iv, seq).0, &aad, payload).ok_or(Error::DecryptError)?;
        payload.truncate(plain_len);
        msg.into_tls13_unpadded_message()
    }
}
