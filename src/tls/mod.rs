//! rustls server and client configs for the mesh, and the peer's host as
//! its certificate names it.
//!
//! Both sides present certificates from the cluster CA; TLS 1.3 only. The
//! dialler verifies that the server certificate names the host it dialled
//! (webpki name check); the listener accepts any certificate chaining to
//! the CA and takes the peer's identity from its DNS names.

pub mod aegis;
pub mod certs;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::config::TlsFiles;
use crate::hostname::HostName;
use crate::tunnel::record::SecretCapture;

/// A TLS file or setting that could not be used.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("{path}: cannot read {what}: {reason}")]
    Read {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("{path}: no {what} found in the file")]
    Empty { path: PathBuf, what: &'static str },
    #[error("{path}: not a usable certificate: {reason}")]
    BadCert { path: PathBuf, reason: String },
    #[error("{path}: the certificate names {names:?}, not this host {host:?} (issue one with `erlmesh cert issue --host {host}`)")]
    NotNamed {
        path: PathBuf,
        host: String,
        names: Vec<String>,
    },
    #[error("{path} and {key}: {reason}")]
    Mismatch {
        path: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("{path}: {reason}")]
    Ca { path: PathBuf, reason: String },
}

/// A TLS 1.3 cipher suite erlmesh offers (`tls.cipher_suites`, names as
/// rustls spells them, and erlmesh's own `TLS13_AEGIS_128X2_SHA256`).
/// Every one is sound; the default order is the measured one (README,
/// "Cipher suites"): AEGIS-128X2 first where the CPU has AES
/// instructions (between erlmesh hosts only: [`aegis`]), then AES-128-GCM,
/// the cheapest of RFC 8446's on such CPUs, AES-256-GCM next,
/// ChaCha20-Poly1305 last (the fastest where AES has no hardware support).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    Aegis128X2,
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Suite {
    pub const ALL: [Suite; 4] = [
        Suite::Aegis128X2,
        Suite::Aes128Gcm,
        Suite::Aes256Gcm,
        Suite::Chacha20Poly1305,
    ];

    /// The order erlmesh prefers when `tls.cipher_suites` is not set:
    /// every suite this CPU runs well ([`Suite::usable`]).
    pub fn default_order() -> Vec<Suite> {
        Suite::ALL.into_iter().filter(|s| s.usable()).collect()
    }

    /// Whether this process offers the suite: AEGIS only on CPUs with AES
    /// instructions.
    pub fn usable(self) -> bool {
        self != Suite::Aegis128X2 || aegis::hardware()
    }

    pub fn name(self) -> &'static str {
        match self {
            Suite::Aegis128X2 => "TLS13_AEGIS_128X2_SHA256",
            Suite::Aes128Gcm => "TLS13_AES_128_GCM_SHA256",
            Suite::Aes256Gcm => "TLS13_AES_256_GCM_SHA384",
            Suite::Chacha20Poly1305 => "TLS13_CHACHA20_POLY1305_SHA256",
        }
    }

    fn rustls(self) -> rustls::SupportedCipherSuite {
        use rustls::crypto::aws_lc_rs::cipher_suite as cs;
        match self {
            Suite::Aegis128X2 => rustls::SupportedCipherSuite::Tls13(&aegis::SUITE),
            Suite::Aes128Gcm => cs::TLS13_AES_128_GCM_SHA256,
            Suite::Aes256Gcm => cs::TLS13_AES_256_GCM_SHA384,
            Suite::Chacha20Poly1305 => cs::TLS13_CHACHA20_POLY1305_SHA256,
        }
    }

    /// The suite a connection negotiated.
    pub fn of(conn: &rustls::CommonState) -> Option<Suite> {
        let code = conn.negotiated_cipher_suite()?.suite();
        Suite::ALL.into_iter().find(|s| s.rustls().suite() == code)
    }

    /// `tls.cipher_suites`: known names, none twice, at least one; AEGIS
    /// only where this CPU has AES instructions.
    pub fn parse_list(names: &[String]) -> Result<Vec<Suite>, String> {
        if names.is_empty() {
            return Err("name at least one suite".into());
        }
        let known = || Suite::ALL.map(Suite::name).join(", ");
        let mut out = Vec::new();
        for n in names {
            let s = Suite::ALL
                .into_iter()
                .find(|s| s.name() == n)
                .ok_or_else(|| format!("{n:?}: unknown TLS 1.3 suite (erlmesh knows {})", known()))?;
            if out.contains(&s) {
                return Err(format!("{n:?} is named twice"));
            }
            if !s.usable() {
                return Err(format!(
                    "{n:?}: this CPU has no AES instructions AEGIS can use (x86-64: AES-NI with \
                     AVX; aarch64: AES), without which it is slow and not constant-time; erlmesh \
                     does not offer it here"
                ));
            }
            out.push(s);
        }
        Ok(out)
    }
}

/// The crypto provider for the mesh: aws-lc-rs with `suites`, in that order.
pub fn provider(suites: &[Suite]) -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites = suites.iter().map(|s| s.rustls()).collect();
    Arc::new(p)
}

/// Seeds aws-lc's random generator now. AWS-LC seeds it, once per
/// process, from CPU jitter entropy on first use, which takes 30-45 ms of
/// CPU here; done before `erlmesh run` is ready, the first handshake (a
/// node's first ping) does not wait for it.
pub fn warm_rng() {
    let started = std::time::Instant::now();
    let mut seed = [0u8; 32];
    if let Err(e) = aws_lc_rs::rand::fill(&mut seed) {
        tracing::warn!(error = ?e, "the random generator could not be seeded at start");
    }
    tracing::debug!(took = ?started.elapsed(), "random generator seeded");
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    read_pem_all(path, "certificates", "certificate")
}

/// Reads every item of type `T` in a PEM file; none is an error naming
/// `one` (what an item is), unreadable ones name `what` (the items).
fn read_pem_all<T: PemObject>(path: &Path, what: &'static str, one: &'static str) -> Result<Vec<T>, TlsError> {
    let read_err = |e| TlsError::Read {
        path: path.to_owned(),
        what,
        reason: pem_reason(e),
    };
    let items = T::pem_file_iter(path)
        .map_err(read_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err)?;
    if items.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_owned(),
            what: one,
        });
    }
    Ok(items)
}

/// Reads the private key in a PEM file (PKCS#8, SEC1 or PKCS#1).
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            path: path.to_owned(),
            what: "private key",
        },
        e => TlsError::Read {
            path: path.to_owned(),
            what: "private key",
            reason: pem_reason(e),
        },
    })
}

fn pem_reason(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        e => format!("{e:?}"),
    }
}

/// The DNS names (subject alternative names) a certificate carries.
pub fn cert_dns_names(der: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_ascii_lowercase()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        names.push(std::net::Ipv4Addr::from(a).to_string());
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        names.push(std::net::Ipv6Addr::from(a).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Ok(names)
}

/// Seconds from the Unix epoch at which a certificate expires.
pub fn cert_not_after(der: &CertificateDer<'_>) -> Result<i64, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    Ok(cert.validity().not_after.timestamp())
}

/// Verifies a server whose host name is not known yet (a seed): the full
/// webpki check (chain to the CA, validity, usage), with the name taken
/// from the certificate itself. The caller then treats that name as the
/// peer's identity, proven by this handshake.
#[derive(Debug)]
struct SeedVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl rustls::client::danger::ServerCertVerifier for SeedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let names = cert_dns_names(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
        let own = names.first().and_then(|n| ServerName::try_from(n.clone()).ok()).ok_or(
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName),
        )?;
        self.inner
            .verify_server_cert(end_entity, intermediates, &own, ocsp, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The server and client configs built from one set of files.
#[derive(Debug)]
pub struct TlsConfigs {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
    /// For dialling a seed whose host name is learnt from its certificate.
    pub seed_client: Arc<ClientConfig>,
    /// When this host's certificate expires (Unix seconds).
    pub not_after: i64,
    /// How open tunnels seal and open records (tunnel/record/): whose
    /// code, and records per key before a KeyUpdate.
    pub record: crate::tunnel::record::Crypto,
    client_verifier: Arc<dyn ClientCertVerifier>,
    server_verifier: Arc<rustls::client::WebPkiServerVerifier>,
}

/// The cluster CA (a bundle of several while rotating) as trust roots.
fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path)? {
        roots.add(c).map_err(|e| TlsError::Ca {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// Checks that this host's certificate names `host`; returns when it
/// expires (Unix seconds).
fn check_own_certificate(path: &Path, cert: &CertificateDer<'_>, host: &str) -> Result<i64, TlsError> {
    let bad = |reason| TlsError::BadCert {
        path: path.to_owned(),
        reason,
    };
    let names = cert_dns_names(cert).map_err(bad)?;
    if !names.iter().any(|n| n.eq_ignore_ascii_case(host)) {
        return Err(TlsError::NotNamed {
            path: path.to_owned(),
            host: host.to_owned(),
            names,
        });
    }
    cert_not_after(cert).map_err(bad)
}

/// Reads every CRL in the PEM files `paths`.
fn load_crls(paths: &[PathBuf]) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let mut out = Vec::new();
    for path in paths {
        let crls: Vec<CertificateRevocationListDer<'static>> = read_pem_all(path, "CRLs", "X509 CRL")?;
        // Checked here, so that a broken file is refused at load, not at
        // the first handshake.
        for crl in &crls {
            webpki::OwnedCertRevocationList::from_der(crl.as_ref()).map_err(|e| TlsError::Ca {
                path: path.clone(),
                reason: format!("not a usable CRL: {e:?}"),
            })?;
        }
        out.extend(crls);
    }
    Ok(out)
}

impl TlsConfigs {
    /// Loads the CA, this host's certificate and key and the CRLs, checks
    /// that the certificate names `host`, and builds both configs. Reads
    /// files: call it off the async threads.
    pub fn load(files: &TlsFiles, host: &str) -> Result<TlsConfigs, TlsError> {
        let roots = Arc::new(load_roots(&files.ca)?);
        let crls = load_crls(&files.crl)?;
        let chain = load_certs(&files.cert)?;
        let key = load_private_key(&files.key)?;
        let not_after = check_own_certificate(&files.cert, &chain[0], host)?;
        let provider = provider(&files.cipher_suites);
        let mismatch = |e: rustls::Error| TlsError::Mismatch {
            path: files.cert.clone(),
            key: files.key.clone(),
            reason: e.to_string(),
        };
        let ca_err = |e: rustls::server::VerifierBuilderError| TlsError::Ca {
            path: files.ca.clone(),
            reason: e.to_string(),
        };

        // Revocation: the end-entity certificate is looked up in the CRLs
        // of its issuer; a CA without a CRL here leaves its certificates'
        // status unknown, which is allowed (a CRL is optional per CA).
        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .with_crls(crls.clone())
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status()
            .build()
            .map_err(ca_err)?;
        let server_verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .with_crls(crls)
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status()
            .build()
            .map_err(ca_err)?;
        // TLS 1.3 only: tunnels take its record layer over (tunnel/record/).
        let versions: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(mismatch)?
            .with_client_cert_verifier(client_verifier.clone())
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(mismatch)?;
        // Tunnels take over the record layer once open (tunnel/record/).
        server.enable_secret_extraction = true;
        // The accepting host's order of `tls.cipher_suites` decides.
        server.ignore_client_order = true;
        let mut client = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(mismatch)?
            .dangerous()
            .with_custom_certificate_verifier(server_verifier.clone())
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(mismatch)?;
        client.enable_secret_extraction = true;
        let mut seed_client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(mismatch)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SeedVerifier {
                inner: server_verifier.clone(),
            }))
            .with_client_auth_cert(chain, key)
            .map_err(mismatch)?;
        seed_client.enable_secret_extraction = true;
        Ok(TlsConfigs {
            server: Arc::new(server),
            client: Arc::new(client),
            seed_client: Arc::new(seed_client),
            not_after,
            record: crate::tunnel::record::Crypto {
                provider: files
                    .record_provider
                    .unwrap_or_else(crate::tunnel::record::Provider::auto),
                records_per_key: files.records_per_key,
            },
            client_verifier,
            server_verifier,
        })
    }

    /// The server config for one connection, with a capture of its traffic
    /// secrets for the record layer's key updates.
    pub fn server_for_connection(&self) -> (Arc<ServerConfig>, Arc<SecretCapture>) {
        let capture = Arc::new(SecretCapture::default());
        let mut c = (*self.server).clone();
        c.key_log = capture.clone();
        (Arc::new(c), capture)
    }

    /// The client config (for a seed, when `seed`) for one connection, with
    /// a capture of its traffic secrets.
    pub fn client_for_connection(&self, seed: bool) -> (Arc<ClientConfig>, Arc<SecretCapture>) {
        let capture = Arc::new(SecretCapture::default());
        let mut c = ClientConfig::clone(if seed { &self.seed_client } else { &self.client });
        c.key_log = capture.clone();
        (Arc::new(c), capture)
    }

    /// Checks a peer's certificate chain now, as a fresh handshake would:
    /// the chain to the CA, validity at this moment, and the CRLs. A
    /// resumed session carries the chain of the handshake it resumes, which
    /// rustls does not verify again; `server_name` is the dialled host for
    /// a server's chain, `None` for a client's.
    pub fn check_peer(
        &self,
        chain: &[CertificateDer<'static>],
        server_name: Option<&ServerName<'_>>,
    ) -> Result<(), rustls::Error> {
        let (end_entity, intermediates) = chain.split_first().ok_or(rustls::Error::NoCertificatesPresented)?;
        let now = rustls::pki_types::UnixTime::now();
        match server_name {
            None => self
                .client_verifier
                .verify_client_cert(end_entity, intermediates, now)
                .map(|_| ()),
            Some(name) => {
                use rustls::client::danger::ServerCertVerifier;
                self.server_verifier
                    .verify_server_cert(end_entity, intermediates, name, &[], now)
                    .map(|_| ())
            }
        }
    }
}

/// The configs in use; replaced whole on reload, so that connections
/// already open keep the config they started with. Open tunnels are
/// registered with the peer's certificate chain, and those whose peer
/// no longer passes the check after a reload (a new CRL) are closed.
#[derive(Debug)]
pub struct Tls {
    current: arc_swap::ArcSwap<TlsConfigs>,
    live: Mutex<LiveTunnels>,
}

#[derive(Debug, Default)]
struct LiveTunnels {
    next: u64,
    open: HashMap<u64, LiveTunnel>,
}

#[derive(Debug)]
struct LiveTunnel {
    peer: String,
    chain: Vec<CertificateDer<'static>>,
    /// The dialled host, for outbound tunnels (the peer is the server).
    server_name: Option<ServerName<'static>>,
    cancel: CancellationToken,
}

/// An open tunnel's registration; `cancelled` fires when its peer's
/// certificate is revoked. Dropping it unregisters the tunnel.
pub struct LiveGuard {
    tls: Arc<Tls>,
    id: u64,
    cancel: CancellationToken,
}

impl LiveGuard {
    /// Resolves when the tunnel must close (its peer's certificate failed
    /// the check after a reload).
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if let Ok(mut live) = self.tls.live.lock() {
            live.open.remove(&self.id);
        }
    }
}

impl Tls {
    /// Wraps loaded configs.
    pub fn new(c: TlsConfigs) -> Arc<Tls> {
        Arc::new(Tls {
            current: arc_swap::ArcSwap::from_pointee(c),
            live: Mutex::new(LiveTunnels::default()),
        })
    }
    /// The configs new connections use.
    pub fn current(&self) -> Arc<TlsConfigs> {
        self.current.load_full()
    }
    /// Puts new configs in place for new connections, and closes the open
    /// tunnels whose peer certificate they no longer accept (revoked, or
    /// expired meanwhile); returns those tunnels' peers. A still-valid
    /// peer keeps its tunnels, whatever else changed.
    pub fn replace(&self, c: TlsConfigs) -> Vec<String> {
        let c = Arc::new(c);
        self.current.store(c.clone());
        let live = self.live.lock().expect("live tunnels lock");
        let mut closed = Vec::new();
        for t in live.open.values() {
            if let Err(e) = c.check_peer(&t.chain, t.server_name.as_ref()) {
                tracing::warn!(peer = %t.peer, error = %e, "the peer's certificate is no longer accepted; closing its tunnel");
                t.cancel.cancel();
                closed.push(t.peer.clone());
            }
        }
        closed
    }
    /// Registers an open tunnel to or from `peer`, whose certificate chain
    /// the TLS connection `conn` saw.
    pub fn register(
        self: &Arc<Self>,
        peer: &str,
        conn: &rustls::CommonState,
        server_name: Option<ServerName<'static>>,
    ) -> LiveGuard {
        let chain = conn.peer_certificates().map(|c| c.to_vec()).unwrap_or_default();
        self.register_chain(peer, chain, server_name)
    }

    /// Registers an open tunnel whose peer presented `chain` (a tunnel an
    /// upgrade handed over).
    pub fn register_chain(
        self: &Arc<Self>,
        peer: &str,
        chain: Vec<CertificateDer<'static>>,
        server_name: Option<ServerName<'static>>,
    ) -> LiveGuard {
        let cancel = CancellationToken::new();
        let mut live = self.live.lock().expect("live tunnels lock");
        live.next += 1;
        let id = live.next;
        live.open.insert(
            id,
            LiveTunnel {
                peer: peer.to_owned(),
                chain,
                server_name,
                cancel: cancel.clone(),
            },
        );
        LiveGuard {
            tls: self.clone(),
            id,
            cancel,
        }
    }
}

/// The server name the dialler expects the peer's certificate to carry.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_owned()).map_err(|e| format!("{host:?} cannot be checked as a TLS name: {e}"))
}

/// The hosts a verified peer may speak for: the names of its certificate,
/// in canonical form (a name that is not a host name is left out).
pub fn peer_hosts(conn: &rustls::CommonState) -> Vec<HostName> {
    conn.peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| cert_dns_names(c).ok())
        .unwrap_or_default()
        .iter()
        .filter_map(|n| HostName::parse(n).ok())
        .collect()
}
