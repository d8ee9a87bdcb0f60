//! The cryptography a tunnel pays, provider by provider and suite by suite:
//! the record layer (16 KiB records sealed and opened in place, as
//! `tunnel/record` does) and a full mutual-TLS 1.3 handshake (ECDSA P-256
//! certificates, as `erlmesh cert` issues). `bench/crypto.sh` runs it under
//! callgrind (instructions, repeatable on a noisy machine) and natively
//! (time, best of several).
//!
//! usage: cryptobench records PROVIDER SUITE MIB
//!        cryptobench small PROVIDER SUITE COUNT (100-byte records)
//!        cryptobench handshakes PROVIDER SUITE N
//!        cryptobench native
//!        cryptobench cold (a 100-byte record's time, after a pause as between
//!        a round trip's messages)
//! PROVIDER: ring | aws-lc-rs; SUITE: TLS13_AES_128_GCM_SHA256 |
//! TLS13_AES_256_GCM_SHA384 | TLS13_CHACHA20_POLY1305_SHA256 |
//! TLS13_AEGIS_128X2_SHA256 (erlmesh's own AEGIS code whatever the
//! provider; its handshake is aws-lc-rs's)
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::sync::Arc;
use std::time::Instant;

const RECORD: usize = 16 * 1024;
/// A small message's record (a round trip's request or answer).
const SMALL: usize = 100;
const TAG: usize = 16;
const PROVIDERS: [&str; 2] = ["ring", "aws-lc-rs"];
const AEGIS: &str = "TLS13_AEGIS_128X2_SHA256";

/// Seals and opens with AEGIS-128X2 as the record layer does.
fn aegis_records(size: usize, count: usize, gap: std::time::Duration) -> (u64, f64) {
    use erlmesh::tls::aegis;
    let key = [7u8; aegis::KEY_LEN];
    let mut rec = vec![0x5au8; size + 1 + TAG];
    let (mut sum, mut spent) = (0u64, std::time::Duration::ZERO);
    for seq in 0..count as u64 {
        if !gap.is_zero() {
            std::thread::sleep(gap);
        }
        let t = Instant::now();
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&seq.to_be_bytes());
        let len = (size + 1 + TAG) as u16;
        let hdr = [23, 3, 3, (len >> 8) as u8, len as u8];
        let tag = aegis::seal(&key, n, &hdr, &mut rec[..size + 1]);
        rec[size + 1..].copy_from_slice(&tag);
        assert_eq!(aegis::open(&key, n, &hdr, &mut rec), Some(size + 1));
        sum = sum.wrapping_add(rec[0] as u64);
        spent += t.elapsed();
    }
    (sum, spent.as_nanos() as f64 / count as f64)
}
const SUITES: [&str; 4] = [
    AEGIS,
    "TLS13_AES_128_GCM_SHA256",
    "TLS13_AES_256_GCM_SHA384",
    "TLS13_CHACHA20_POLY1305_SHA256",
];

/// Seals `count` records of `size` bytes under one key and opens them
/// under the other end's, in place, with the provider's AEAD as the record
/// layer calls it. Returns a checksum so that nothing is optimised away.
macro_rules! records_with {
    ($aead:path, $alg:expr, $size:expr, $count:expr) => {{
        use $aead as aead;
        let key = [7u8; 32];
        let alg = $alg;
        let seal = aead::LessSafeKey::new(aead::UnboundKey::new(alg, &key[..alg.key_len()]).unwrap());
        let open = aead::LessSafeKey::new(aead::UnboundKey::new(alg, &key[..alg.key_len()]).unwrap());
        let size: usize = $size;
        let mut rec = vec![0x5au8; size + 1 + TAG];
        let mut sum = 0u64;
        for seq in 0..($count as u64) {
            let mut n = [0u8; 12];
            n[4..].copy_from_slice(&seq.to_be_bytes());
            let len = (size + 1 + TAG) as u16;
            let hdr = [23, 3, 3, (len >> 8) as u8, len as u8];
            let tag = seal
                .seal_in_place_separate_tag(
                    aead::Nonce::assume_unique_for_key(n),
                    aead::Aad::from(hdr),
                    &mut rec[..size + 1],
                )
                .unwrap();
            rec[size + 1..].copy_from_slice(tag.as_ref());
            let plain = open
                .open_in_place(aead::Nonce::assume_unique_for_key(n), aead::Aad::from(hdr), &mut rec)
                .unwrap();
            sum = sum.wrapping_add(plain[0] as u64);
        }
        sum
    }};
}

/// Nanoseconds to seal and open one record of `size` bytes, `count` times,
/// with a pause of `gap` before each (caches and predictors cool down as
/// they do between a round trip's messages); only the cryptography is
/// timed.
macro_rules! cold_with {
    ($aead:path, $alg:expr, $size:expr, $count:expr, $gap:expr) => {{
        use $aead as aead;
        let key = [7u8; 16];
        let alg = $alg;
        let seal = aead::LessSafeKey::new(aead::UnboundKey::new(alg, &key).unwrap());
        let open = aead::LessSafeKey::new(aead::UnboundKey::new(alg, &key).unwrap());
        let mut rec = vec![0x5au8; $size + 1 + TAG];
        let mut spent = std::time::Duration::ZERO;
        for seq in 0..($count as u64) {
            if !$gap.is_zero() {
                std::thread::sleep($gap);
            }
            let t = Instant::now();
            let mut n = [0u8; 12];
            n[4..].copy_from_slice(&seq.to_be_bytes());
            let hdr = [23, 3, 3, 0, ($size + 1 + TAG) as u8];
            let tag = seal
                .seal_in_place_separate_tag(
                    aead::Nonce::assume_unique_for_key(n),
                    aead::Aad::from(hdr),
                    &mut rec[..$size + 1],
                )
                .unwrap();
            rec[$size + 1..].copy_from_slice(tag.as_ref());
            let plain = open
                .open_in_place(aead::Nonce::assume_unique_for_key(n), aead::Aad::from(hdr), &mut rec)
                .unwrap();
            std::hint::black_box(plain[0]);
            spent += t.elapsed();
        }
        spent.as_nanos() as f64 / $count as f64
    }};
}

/// A small record sealed and opened at AES-128-GCM, in a tight loop and
/// after pauses, per provider (medians of 3 runs).
fn cold() {
    println!("100-byte record sealed and opened, AES-128-GCM (and AEGIS-128X2), ns (median of 3):");
    println!(
        "{:<10} {:>12} {:>16} {:>17}",
        "provider", "tight loop", "after 30 us", "after 200 us"
    );
    for p in PROVIDERS.into_iter().chain(["aegis-128x2"]) {
        let mut cells = Vec::new();
        for (gap, count) in [(0u64, 200_000), (30, 5_000), (200, 3_000)] {
            let gap = std::time::Duration::from_micros(gap);
            let mut runs: Vec<f64> = (0..3)
                .map(|_| match p {
                    "aegis-128x2" => aegis_records(SMALL, count, gap).1,
                    "ring" => cold_with!(ring::aead, &ring::aead::AES_128_GCM, SMALL, count, gap),
                    _ => cold_with!(aws_lc_rs::aead, &aws_lc_rs::aead::AES_128_GCM, SMALL, count, gap),
                })
                .collect();
            runs.sort_by(f64::total_cmp);
            cells.push(runs[1]);
        }
        println!("{p:<10} {:>12.0} {:>16.0} {:>17.0}", cells[0], cells[1], cells[2]);
    }
}

fn records(provider: &str, suite: &str, mib: usize) -> u64 {
    sealed_and_opened(provider, suite, RECORD, mib * 1024 * 1024 / RECORD)
}

fn sealed_and_opened(provider: &str, suite: &str, size: usize, count: usize) -> u64 {
    match (provider, suite) {
        (_, AEGIS) => aegis_records(size, count, std::time::Duration::ZERO).0,
        ("ring", "TLS13_AES_128_GCM_SHA256") => records_with!(ring::aead, &ring::aead::AES_128_GCM, size, count),
        ("ring", "TLS13_AES_256_GCM_SHA384") => records_with!(ring::aead, &ring::aead::AES_256_GCM, size, count),
        ("ring", "TLS13_CHACHA20_POLY1305_SHA256") => {
            records_with!(ring::aead, &ring::aead::CHACHA20_POLY1305, size, count)
        }
        ("aws-lc-rs", "TLS13_AES_128_GCM_SHA256") => {
            records_with!(aws_lc_rs::aead, &aws_lc_rs::aead::AES_128_GCM, size, count)
        }
        ("aws-lc-rs", "TLS13_AES_256_GCM_SHA384") => {
            records_with!(aws_lc_rs::aead, &aws_lc_rs::aead::AES_256_GCM, size, count)
        }
        ("aws-lc-rs", "TLS13_CHACHA20_POLY1305_SHA256") => {
            records_with!(aws_lc_rs::aead, &aws_lc_rs::aead::CHACHA20_POLY1305, size, count)
        }
        _ => usage(),
    }
}

fn provider(name: &str, suite: &str) -> Arc<rustls::crypto::CryptoProvider> {
    if suite == AEGIS {
        return erlmesh::tls::provider(&[erlmesh::tls::Suite::Aegis128X2]);
    }
    let mut p = match name {
        "ring" => rustls::crypto::ring::default_provider(),
        "aws-lc-rs" => rustls::crypto::aws_lc_rs::default_provider(),
        _ => usage(),
    };
    p.cipher_suites.retain(|s| s.suite().as_str() == Some(suite));
    if p.cipher_suites.is_empty() {
        usage();
    }
    Arc::new(p)
}

/// Configs for a mutual-TLS 1.3 pair under one provider and suite.
fn configs(p: Arc<rustls::crypto::CryptoProvider>) -> (Arc<rustls::ClientConfig>, Arc<rustls::ServerConfig>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let leaf = |host: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![host.to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca.der().to_vec())).unwrap();
    let roots = Arc::new(roots);
    let (scert, skey) = leaf("hosta");
    let (ccert, ckey) = leaf("hostb");
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), p.clone())
        .build()
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(scert, skey)
        .unwrap();
    let client = rustls::ClientConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(ccert, ckey)
        .unwrap();
    (Arc::new(client), Arc::new(server))
}

fn handshake(client: &Arc<rustls::ClientConfig>, server: &Arc<rustls::ServerConfig>) {
    let mut c = rustls::ClientConnection::new(client.clone(), ServerName::try_from("hosta").unwrap()).unwrap();
    let mut s = rustls::ServerConnection::new(server.clone()).unwrap();
    while c.is_handshaking() || s.is_handshaking() {
        let mut b = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut b).unwrap();
        }
        s.read_tls(&mut &b[..]).unwrap();
        s.process_new_packets().unwrap();
        let mut b = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut b).unwrap();
        }
        c.read_tls(&mut &b[..]).unwrap();
        c.process_new_packets().unwrap();
    }
}

fn handshakes(provider_name: &str, suite: &str, n: usize) {
    let (client, server) = configs(provider(provider_name, suite));
    for i in 0..n {
        let t = Instant::now();
        handshake(&client, &server);
        if std::env::var_os("CRYPTOBENCH_EACH").is_some() {
            eprintln!("handshake {i}: {:?}", t.elapsed());
        }
    }
}

fn usage() -> ! {
    eprintln!("usage: cryptobench records|handshakes PROVIDER SUITE COUNT, or cryptobench native");
    std::process::exit(2)
}

/// Times every combination natively: the best of five runs each.
fn native() {
    println!(
        "{:<10} {:<31} {:>14} {:>14}",
        "provider", "suite", "records_MBps", "handshake_us"
    );
    for p in PROVIDERS {
        for s in SUITES {
            let mib = 256;
            let best = (0..5)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(records(p, s, mib));
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::MAX, f64::min);
            let (client, server) = configs(provider(p, s));
            let n = 200;
            let hs = (0..5)
                .map(|_| {
                    let t = Instant::now();
                    for _ in 0..n {
                        handshake(&client, &server);
                    }
                    t.elapsed().as_secs_f64() / n as f64
                })
                .fold(f64::MAX, f64::min);
            // Each byte is sealed once and opened once.
            let mbps = (mib * 1024 * 1024) as f64 / best / 1e6;
            println!("{p:<10} {s:<31} {mbps:>14.0} {:>14.0}", hs * 1e6);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["records", p, s, n] => {
            std::hint::black_box(records(p, s, n.parse().unwrap_or_else(|_| usage())));
        }
        ["small", p, s, n] => {
            std::hint::black_box(sealed_and_opened(p, s, SMALL, n.parse().unwrap_or_else(|_| usage())));
        }
        ["handshakes", p, s, n] => handshakes(p, s, n.parse().unwrap_or_else(|_| usage())),
        ["native"] => native(),
        ["cold"] => cold(),
        _ => usage(),
    }
}
