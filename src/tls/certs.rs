//! `erlmesh cert`: the cluster CA and host certificates (rcgen, ECDSA P-256).

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use thiserror::Error;
use time::{Duration, OffsetDateTime};

/// Validity of a new CA unless `--days` says otherwise: ten years, since
/// rotating a CA means touching every host.
pub const DEFAULT_CA_DAYS: u32 = 3650;
/// Validity of a new host certificate unless `--days` says otherwise.
pub const DEFAULT_HOST_DAYS: u32 = 365;
/// Back-dating of not-before, so that hosts whose clocks lag a little
/// accept a certificate made a moment ago.
const CLOCK_SKEW: Duration = Duration::minutes(5);

/// Why a certificate could not be made.
#[derive(Debug, Error)]
pub enum CertError {
    #[error("{0}: already exists (pass --force to replace it)")]
    Exists(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a usable {what}: {reason}")]
    Parse {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("{0:?} is not a host name or IP address usable in a certificate")]
    BadHost(String),
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("--days must be at least 1")]
    Days,
}

/// Paths written by one command.
#[derive(Debug)]
pub struct Written {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes a new cluster CA: DIR/ca.pem and DIR/ca.key.
pub fn make_ca(dir: &Path, days: u32, force: bool) -> Result<Written, CertError> {
    let out = Written {
        cert: dir.join("ca.pem"),
        key: dir.join("ca.key"),
    };
    check_free(&out, force)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn("erlmesh cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days)?;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write_pair(dir, &out, &cert.pem(), &key.serialize_pem())?;
    Ok(out)
}

/// Issues DIR/HOST.pem and DIR/HOST.key, signed by DIR/ca.pem and
/// DIR/ca.key, naming HOST, for both TLS server and client use.
pub fn issue(dir: &Path, host: &str, days: u32, force: bool) -> Result<Written, CertError> {
    issue_naming(dir, host, &[], days, force)
}

/// [`issue`], the certificate naming `ips` too (IP address SANs: the
/// host's addresses, for node names whose host part is an address).
pub fn issue_naming(
    dir: &Path,
    host: &str,
    ips: &[std::net::IpAddr],
    days: u32,
    force: bool,
) -> Result<Written, CertError> {
    if host.is_empty() || host.contains(['/', '\\', ' ']) || host.starts_with('.') {
        return Err(CertError::BadHost(host.to_owned()));
    }
    let out = Written {
        cert: dir.join(format!("{host}.pem")),
        key: dir.join(format!("{host}.key")),
    };
    check_free(&out, force)?;
    let issuer = ca_issuer(dir)?;
    let mut params = CertificateParams::new(vec![host.to_owned()]).map_err(|_| CertError::BadHost(host.into()))?;
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| rcgen::SanType::IpAddress(*ip)));
    params.distinguished_name = dn(host);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write_pair(dir, &out, &cert.pem(), &key.serialize_pem())?;
    Ok(out)
}

/// The CRL `erlmesh cert revoke` keeps in the CA directory.
pub const CRL_FILE: &str = "crl.pem";
/// The CRL's nextUpdate, from its thisUpdate. erlmesh does not refuse a
/// CRL past it (a stale list still revokes), but other tools may.
pub const CRL_DAYS: i64 = 365;

/// What `erlmesh cert revoke` did.
#[derive(Debug)]
pub struct Revoked {
    pub crl: PathBuf,
    /// The revoked certificate's serial number (hex).
    pub serial: String,
    /// Certificates the CRL now lists.
    pub listed: usize,
    /// The certificate was listed already: the CRL was left as it was.
    pub already: bool,
}

/// Adds DIR/HOST.pem's certificate to DIR/crl.pem (created when missing),
/// signed by DIR/ca.pem and DIR/ca.key; earlier entries are kept and the
/// CRL number goes up by one.
pub fn revoke(dir: &Path, host: &str) -> Result<Revoked, CertError> {
    if host.is_empty() || host.contains(['/', '\\', ' ']) || host.starts_with('.') {
        return Err(CertError::BadHost(host.to_owned()));
    }
    let cert_path = dir.join(format!("{host}.pem"));
    let chain = crate::tls::load_certs(&cert_path).map_err(|e| CertError::Parse {
        path: cert_path.clone(),
        what: "certificate",
        reason: e.to_string(),
    })?;
    let (_, cert) = x509_parser::parse_x509_certificate(&chain[0]).map_err(|e| CertError::Parse {
        path: cert_path.clone(),
        what: "certificate",
        reason: e.to_string(),
    })?;
    update_crl(dir, Some((cert.raw_serial().to_vec(), cert.raw_serial_as_string())))
}

/// Writes DIR/crl.pem anew, signed by the CA, keeping its entries (none
/// when it is new) with a fresh thisUpdate: the first CRL of a cluster, to
/// put in `tls.crl` before anything is revoked.
pub fn refresh_crl(dir: &Path) -> Result<Revoked, CertError> {
    update_crl(dir, None)
}

/// Rewrites DIR/crl.pem with its entries plus `add` (serial, hex).
fn update_crl(dir: &Path, add: Option<(Vec<u8>, String)>) -> Result<Revoked, CertError> {
    let crl_path = dir.join(CRL_FILE);
    let issuer = ca_issuer(dir)?;
    let (serial, serial_hex) = add.unwrap_or_default();

    // The entries and number of the CRL there is, if any.
    let mut revoked = Vec::new();
    let mut number = 0u64;
    if crl_path.exists() {
        let bad = |reason: String| CertError::Parse {
            path: crl_path.clone(),
            what: "CRL",
            reason,
        };
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateRevocationListDer::from_pem_file(&crl_path)
            .map_err(|e| bad(format!("{e:?}")))?;
        let (_, crl) = x509_parser::parse_x509_crl(&der).map_err(|e| bad(e.to_string()))?;
        number = crl
            .crl_number()
            .and_then(|n| u64::try_from(n.clone()).ok())
            .unwrap_or(0);
        for r in crl.iter_revoked_certificates() {
            let when =
                OffsetDateTime::from_unix_timestamp(r.revocation_date.timestamp()).map_err(|e| bad(e.to_string()))?;
            revoked.push(rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(r.raw_serial()),
                revocation_time: when,
                reason_code: None,
                invalidity_date: None,
            });
        }
        if crl
            .iter_revoked_certificates()
            .any(|r| r.raw_serial() == serial.as_slice())
        {
            return Ok(Revoked {
                crl: crl_path,
                serial: serial_hex,
                listed: revoked.len(),
                already: true,
            });
        }
    }
    let now = OffsetDateTime::now_utc();
    if !serial.is_empty() {
        revoked.push(rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from_slice(&serial),
            revocation_time: now,
            reason_code: None,
            invalidity_date: None,
        });
    }
    let listed = revoked.len();
    let params = rcgen::CertificateRevocationListParams {
        this_update: now - CLOCK_SKEW,
        next_update: now + Duration::days(CRL_DAYS),
        crl_number: rcgen::SerialNumber::from(number + 1),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let pem = params.signed_by(&issuer)?.pem()?;
    // Replaced in one rename: an erlmesh watching the file never reads
    // half of it.
    crate::mesh::resolver::write_atomically(&crl_path, pem.as_bytes()).map_err(|source| CertError::Io {
        path: crl_path.clone(),
        source,
    })?;
    Ok(Revoked {
        crl: crl_path,
        serial: serial_hex,
        listed,
        already: false,
    })
}

/// The cluster CA in `dir` (ca.pem, ca.key), ready to sign.
fn ca_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, CertError> {
    let ca_pem_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca.key");
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| CertError::Io {
            path: p.to_owned(),
            source,
        })
    };
    let ca_pem = read(&ca_pem_path)?;
    let ca_key = KeyPair::from_pem(&read(&ca_key_path)?).map_err(|e| CertError::Parse {
        path: ca_key_path.clone(),
        what: "CA key",
        reason: e.to_string(),
    })?;
    Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| CertError::Parse {
        path: ca_pem_path.clone(),
        what: "CA certificate",
        reason: e.to_string(),
    })
}

/// What `erlmesh cert show` found: the report, and whether the certificate
/// is usable (in its validity period and, when a CA was given, chaining to it).
#[derive(Debug)]
pub struct Shown {
    pub report: String,
    pub ok: bool,
}

/// Describes the first certificate in `file`: subject, names, validity,
/// key type, SHA-256 fingerprint and, given a CA file, whether it chains to it.
pub fn show(file: &Path, ca: Option<&Path>) -> Result<Shown, CertError> {
    use rustls::pki_types::UnixTime;
    use x509_parser::public_key::PublicKey;
    let chain = crate::tls::load_certs(file).map_err(|e| CertError::Parse {
        path: file.to_owned(),
        what: "certificate",
        reason: e.to_string(),
    })?;
    let der = &chain[0];
    let parse_err = |reason: String| CertError::Parse {
        path: file.to_owned(),
        what: "certificate",
        reason,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| parse_err(e.to_string()))?;
    let names = crate::tls::cert_dns_names(der).map_err(parse_err)?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let (nb, na) = (
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    );
    let mut ok = nb <= now && now <= na;
    let status = if now < nb {
        "NOT YET VALID".to_owned()
    } else if now > na {
        format!("EXPIRED {} days ago", (now - na) / crate::ops::metrics::SECS_PER_DAY)
    } else {
        format!("{} days left", (na - now) / crate::ops::metrics::SECS_PER_DAY)
    };
    let key = match cert.public_key().parsed() {
        Ok(PublicKey::EC(ec)) => format!("ECDSA {}-bit", ec.key_size()),
        Ok(PublicKey::RSA(rsa)) => format!("RSA {}-bit", rsa.key_size()),
        Ok(_) => format!("{}", cert.public_key().algorithm.algorithm),
        Err(_) => "unknown".into(),
    };
    let fp = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.as_ref());
    let fp: Vec<String> = fp.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    let mut r = String::new();
    r.push_str(&format!("file:        {}\n", file.display()));
    r.push_str(&format!("subject:     {}\n", cert.subject()));
    r.push_str(&format!("issuer:      {}\n", cert.issuer()));
    r.push_str(&format!("names:       {}\n", names.join(", ")));
    r.push_str(&format!("not before:  {}\n", cert.validity().not_before));
    r.push_str(&format!("not after:   {} ({status})\n", cert.validity().not_after));
    r.push_str(&format!("key:         {key}\n"));
    r.push_str(&format!("is a CA:     {}\n", if cert.is_ca() { "yes" } else { "no" }));
    r.push_str(&format!("sha256:      {}\n", fp.join(":")));
    if let Some(ca) = ca {
        let verdict = chains_to(der, &chain[1..], ca, UnixTime::now());
        match verdict {
            Ok(()) => r.push_str(&format!("chains to {}: yes\n", ca.display())),
            Err(why) => {
                ok = false;
                r.push_str(&format!("chains to {}: NO ({why})\n", ca.display()));
            }
        }
    }
    Ok(Shown { report: r, ok })
}

/// Whether `der` (with `intermediates`) chains to the CA in `ca`, as a
/// peer erlmesh would check it.
pub fn chains_to(
    der: &rustls::pki_types::CertificateDer<'static>,
    intermediates: &[rustls::pki_types::CertificateDer<'static>],
    ca: &Path,
    now: rustls::pki_types::UnixTime,
) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in crate::tls::load_certs(ca).map_err(|e| e.to_string())? {
        roots.add(c).map_err(|e| e.to_string())?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let v = rustls::server::WebPkiClientVerifier::builder_with_provider(std::sync::Arc::new(roots), provider)
        .build()
        .map_err(|e| e.to_string())?;
    v.verify_client_cert(der, intermediates, now)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn validity(params: &mut CertificateParams, days: u32) -> Result<(), CertError> {
    if days == 0 {
        return Err(CertError::Days);
    }
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + Duration::days(days as i64);
    Ok(())
}

fn check_free(out: &Written, force: bool) -> Result<(), CertError> {
    if !force {
        for p in [&out.cert, &out.key] {
            if p.exists() {
                return Err(CertError::Exists(p.clone()));
            }
        }
    }
    Ok(())
}

/// Writes the certificate (0644) and the key (0600, never readable by
/// others, even for a moment: the mode is set when the file is created).
fn write_pair(dir: &Path, out: &Written, cert_pem: &str, key_pem: &str) -> Result<(), CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_owned(),
        source,
    })?;
    write_file(&out.key, key_pem, 0o600)?;
    write_file(&out.cert, cert_pem, 0o644)
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    // An existing file (with --force) keeps its old mode through open().
    f.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn ca_and_host_certificates() {
        let dir = tempfile::tempdir().unwrap();
        make_ca(dir.path(), 30, false).unwrap();
        let w = issue(dir.path(), "hosta", 10, false).unwrap();
        let mode = std::fs::metadata(&w.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let chain = crate::tls::load_certs(&w.cert).unwrap();
        assert_eq!(crate::tls::cert_dns_names(&chain[0]).unwrap(), vec!["hosta"]);
        assert!(matches!(
            issue(dir.path(), "hosta", 10, false),
            Err(CertError::Exists(_))
        ));
        assert!(matches!(make_ca(dir.path(), 10, false), Err(CertError::Exists(_))));
        issue(dir.path(), "hosta", 10, true).unwrap();
        // The configs build from what was written.
        let files = crate::config::TlsFiles::new(dir.path().join("ca.pem"), w.cert, w.key);
        crate::tls::TlsConfigs::load(&files, "hosta").unwrap();
        let e = crate::tls::TlsConfigs::load(&files, "hostb").unwrap_err().to_string();
        assert!(e.contains("hosta.pem") && e.contains("not this host \"hostb\""), "{e}");
    }

    #[test]
    fn show_reports_and_checks_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        make_ca(dir.path(), 30, false).unwrap();
        let w = issue(dir.path(), "hostb", 10, false).unwrap();
        let s = show(&w.cert, Some(&dir.path().join("ca.pem"))).unwrap();
        assert!(s.ok, "{}", s.report);
        for want in [
            "subject:     CN=hostb",
            "names:       hostb",
            "ECDSA 256-bit",
            "days left",
            "chains to",
            ": yes",
        ] {
            assert!(s.report.contains(want), "{want} in {}", s.report);
        }
        let other = tempfile::tempdir().unwrap();
        make_ca(other.path(), 30, false).unwrap();
        let s = show(&w.cert, Some(&other.path().join("ca.pem"))).unwrap();
        assert!(!s.ok && s.report.contains("NO ("), "{}", s.report);
    }

    #[test]
    fn a_host_certificate_can_name_its_addresses() {
        let dir = tempfile::tempdir().unwrap();
        make_ca(dir.path(), 30, false).unwrap();
        let ips: Vec<std::net::IpAddr> = vec!["198.18.0.1".parse().unwrap(), "2001:2::1".parse().unwrap()];
        let w = issue_naming(dir.path(), "hosta", &ips, 10, false).unwrap();
        let chain = crate::tls::load_certs(&w.cert).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(chain[0].as_ref()).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        use x509_parser::extensions::GeneralName;
        let names = &san.value.general_names;
        assert!(
            names.iter().any(|n| matches!(n, GeneralName::DNSName("hosta"))),
            "{names:?}"
        );
        for ip in &ips {
            let octets = match ip {
                std::net::IpAddr::V4(v) => v.octets().to_vec(),
                std::net::IpAddr::V6(v) => v.octets().to_vec(),
            };
            assert!(
                names
                    .iter()
                    .any(|n| matches!(n, GeneralName::IPAddress(b) if *b == octets.as_slice())),
                "{ip} in {names:?}"
            );
        }
    }

    #[test]
    fn issue_without_ca_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = issue(dir.path(), "hosta", 10, false).unwrap_err().to_string();
        assert!(e.contains("ca.pem"), "{e}");
    }
}
