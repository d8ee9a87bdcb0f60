//! The TOML config file → a validated [`Config`]. Every error names the
//! file and the key.

use crate::firewall::{DistPolicy, Mode};
use crate::hostname::HostName;
use crate::mesh::policy::{Pattern, Policy};
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// The TLS port erlmesh listens on when `listen` gives none.
pub const DEFAULT_TLS_PORT: u16 = 4370;
/// The EPMD port local nodes use unless the config says otherwise.
pub const DEFAULT_EPMD_PORT: u16 = 4369;
/// Where the resolver file lives unless `state_dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/run/erlmesh";
/// Concurrent connections on the TLS port; a host carries a few tunnels per
/// node pair, so this leaves ample room while bounding a flood.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Connections on the TLS port still in their TLS handshake, in all.
pub const DEFAULT_MAX_UNAUTHENTICATED: usize = 256;
/// Of those, from one source address.
pub const DEFAULT_MAX_UNAUTHENTICATED_PER_SOURCE: usize = 16;
/// From connect to the first byte of the TLS handshake: a client that
/// connects and says nothing loses its slot after this.
pub const DEFAULT_FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(2);
/// Upper bound for `threads`.
pub const MAX_THREADS: usize = 256;
/// How long a client of the TLS port may take from connect to preface; a
/// slow or silent client loses its slot after this.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a host learnt through gossip may stay unreachable before it is
/// dropped from the peer table.
pub const DEFAULT_FORGET_AFTER: Duration = Duration::from_secs(3600);
/// How long open tunnels may drain after SIGTERM before erlmesh exits.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A config that could not be loaded.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read { file: PathBuf, source: std::io::Error },
    #[error("{file}: {message}")]
    Parse { file: PathBuf, message: String },
    #[error("{file}: {key}: {message}")]
    Invalid {
        file: PathBuf,
        key: String,
        message: String,
    },
}

/// The port erlmesh listens on, on loopback, for connections the kernel
/// redirects to it in transparent mode.
pub const DEFAULT_REDIRECT_PORT: u16 = 4371;
/// The socket mark on erlmesh's own connections in transparent mode, which
/// the rules let through unredirected ("ME" in ASCII).
pub const DEFAULT_SOCKET_MARK: u32 = 0x4d45;

/// How local nodes reach other hosts through erlmesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Interception {
    /// Nodes read erlmesh's resolver file (`erlmesh env`): each peer host
    /// is a loopback alias where erlmesh answers.
    #[default]
    Resolver,
    /// Nodes start as on a trusted network; nftables rules send their
    /// connections to peer hosts' EPMD and distribution ports to erlmesh.
    Transparent,
}

/// The `[transparent]` table, for `interception = "transparent"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transparent {
    /// Where redirected connections arrive (127.0.0.1 and ::1).
    pub redirect_port: u16,
    /// The mark on erlmesh's own sockets, which the rules never redirect.
    pub socket_mark: u32,
    /// A fixed distribution port range (the nodes' `inet_dist_listen_min`
    /// and `max`): redirected and guarded whole, before any node registers.
    pub dist_ports: Option<(u16, u16)>,
}

impl Default for Transparent {
    fn default() -> Self {
        Transparent {
            redirect_port: DEFAULT_REDIRECT_PORT,
            socket_mark: DEFAULT_SOCKET_MARK,
            dist_ports: None,
        }
    }
}

/// Which EPMD this host's nodes register with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EpmdMode {
    /// erlmesh serves EPMD on 127.0.0.1:epmd_port itself.
    #[default]
    Embedded,
    /// An epmd already listens on 127.0.0.1:epmd_port.
    System,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    host: String,
    listen: Option<String>,
    epmd_port: Option<u16>,
    state_dir: Option<PathBuf>,
    epmd: Option<EpmdMode>,
    #[serde(default)]
    interception: Interception,
    transparent: Option<RawTransparent>,
    max_connections: Option<usize>,
    max_unauthenticated: Option<usize>,
    max_unauthenticated_per_source: Option<usize>,
    first_bytes_timeout_secs: Option<u64>,
    threads: Option<usize>,
    shutdown_grace_secs: Option<u64>,
    handshake_timeout_secs: Option<u64>,
    metrics: Option<String>,
    #[serde(default)]
    seeds: Vec<String>,
    advertise: Option<String>,
    forget_after_secs: Option<u64>,
    tls: RawTls,
    #[serde(default)]
    peers: Vec<RawPeer>,
    default_policy: Option<RawPolicy>,
    #[serde(default)]
    dist_policies: std::collections::BTreeMap<String, RawDistPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransparent {
    redirect_port: Option<u16>,
    socket_mark: Option<u32>,
    dist_ports: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    nodes: Option<Vec<String>>,
    local_nodes: Option<Vec<String>>,
    dist_policy: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDistPolicy {
    mode: Option<String>,
    spawn: Option<bool>,
    registered: Option<Vec<String>>,
    exit_signals: Option<bool>,
    max_atoms: Option<u64>,
    max_monitors: Option<u64>,
    max_global_names: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// Gone (TLS 1.3 only): read so that old configs get a clear error.
    min_version: Option<String>,
    #[serde(default)]
    crl: Vec<PathBuf>,
    records_per_key: Option<u64>,
    cipher_suites: Option<Vec<String>>,
    record_provider: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    host: String,
    address: String,
    alias: Option<String>,
    nodes: Option<Vec<String>>,
    local_nodes: Option<Vec<String>>,
    dist_policy: Option<String>,
}

/// Paths to the cluster CA and this host's certificate and key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Certificate revocation lists (PEM), checked on both sides.
    pub crl: Vec<PathBuf>,
    /// Records sealed under one key before a TLS 1.3 KeyUpdate.
    pub records_per_key: u64,
    /// The TLS 1.3 suites offered and accepted, most preferred first.
    pub cipher_suites: Vec<crate::tls::Suite>,
    /// Whose AEAD code seals and opens records once a tunnel is open;
    /// `None`: the faster on this CPU ([`crate::tunnel::record::Provider::auto`]).
    pub record_provider: Option<crate::tunnel::record::Provider>,
}

impl TlsFiles {
    /// The CA, certificate and key with every other setting at its default.
    pub fn new(ca: PathBuf, cert: PathBuf, key: PathBuf) -> TlsFiles {
        TlsFiles {
            ca,
            cert,
            key,
            crl: Vec::new(),
            records_per_key: crate::tunnel::record::DEFAULT_RECORDS_PER_KEY,
            cipher_suites: crate::tls::Suite::default_order(),
            record_provider: None,
        }
    }

    /// Every file whose change on disk means a reload.
    pub fn watched(&self) -> Vec<PathBuf> {
        let mut v = vec![self.ca.clone(), self.cert.clone(), self.key.clone()];
        v.extend(self.crl.iter().cloned());
        v
    }
}

/// Another host of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The host part of that host's node names; its certificate names it.
    pub host: HostName,
    /// Its erlmesh TLS port, `name:port` or `ip:port`, resolved at dial time.
    pub address: String,
    /// The loopback address standing for it here, when the config fixes one.
    pub alias: Option<Ipv4Addr>,
    /// Which of its nodes may talk to which local nodes.
    pub policy: Policy,
}

/// A config as a tool writes one, before it is validated: the one writer
/// of config files (`erlmesh config init`, which the scripts use, and the
/// integration tests' harness).
#[derive(Debug, Clone, Default)]
pub struct Sketch {
    pub host: String,
    pub listen: String,
    pub epmd_port: u16,
    pub state_dir: String,
    pub ca: String,
    pub cert: String,
    pub key: String,
    pub seeds: Vec<String>,
    pub peers: Vec<SketchPeer>,
    /// More top-level lines, tables such as `[dist_policies.NAME]` included.
    pub extra: String,
    /// More lines in `[tls]`.
    pub tls_extra: String,
}

/// One `[[peers]]` entry of a [`Sketch`].
#[derive(Debug, Clone, Default)]
pub struct SketchPeer {
    pub host: String,
    pub address: String,
    pub nodes: Option<Vec<String>>,
    pub local_nodes: Option<Vec<String>>,
    pub dist_policy: Option<String>,
}

impl Sketch {
    /// The TOML text.
    pub fn render(&self) -> String {
        let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
        let list = |v: &[String]| v.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ");
        let mut c = format!(
            "host = {}\nlisten = {}\nepmd_port = {}\nstate_dir = {}\n",
            q(&self.host),
            q(&self.listen),
            self.epmd_port,
            q(&self.state_dir)
        );
        if !self.seeds.is_empty() {
            c.push_str(&format!("seeds = [{}]\n", list(&self.seeds)));
        }
        c.push_str(&format!(
            "{}\n[tls]\nca = {}\ncert = {}\nkey = {}\n{}\n",
            self.extra,
            q(&self.ca),
            q(&self.cert),
            q(&self.key),
            self.tls_extra
        ));
        for p in &self.peers {
            c.push_str(&format!(
                "\n[[peers]]\nhost = {}\naddress = {}\n",
                q(&p.host),
                q(&p.address)
            ));
            if let Some(n) = &p.nodes {
                c.push_str(&format!("nodes = [{}]\n", list(n)));
            }
            if let Some(n) = &p.local_nodes {
                c.push_str(&format!("local_nodes = [{}]\n", list(n)));
            }
            if let Some(d) = &p.dist_policy {
                c.push_str(&format!("dist_policy = {}\n", q(d)));
            }
        }
        c
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, for messages.
    pub file: PathBuf,
    /// This host's name, in canonical form.
    pub host: HostName,
    pub listen: SocketAddr,
    pub epmd_port: u16,
    pub epmd: EpmdMode,
    /// How local nodes' connections to other hosts reach erlmesh.
    pub interception: Interception,
    /// Settings of transparent interception (defaults in resolver mode).
    pub transparent: Transparent,
    pub state_dir: PathBuf,
    /// Authenticated connections on the TLS port.
    pub max_connections: usize,
    /// Connections on the TLS port whose TLS handshake has not completed.
    pub max_unauthenticated: usize,
    /// Of those, from one source address.
    pub max_unauthenticated_per_source: usize,
    /// From connect to the first byte of the TLS handshake.
    pub first_bytes_timeout: Duration,
    /// Runtime threads: 1 (one thread, the default), N, or 0 for one per CPU.
    pub threads: usize,
    pub shutdown_grace: Duration,
    pub handshake_timeout: Duration,
    /// Where to serve /metrics and /status over HTTP (loopback only).
    pub metrics: Option<SocketAddr>,
    /// TLS addresses of peers to join through; other hosts are learnt.
    pub seeds: Vec<String>,
    /// The TLS address other hosts dial to reach this one.
    pub advertise: String,
    /// How long a learnt host may stay unreachable before it is dropped.
    pub forget_after: Duration,
    pub tls: TlsFiles,
    pub peers: Vec<Peer>,
    /// What hosts not listed in `peers` may do: those learnt through seeds,
    /// and any other certificate of the cluster that connects.
    pub default_policy: Policy,
}

impl Config {
    /// Reads and validates `file`. Relative paths in it are taken relative
    /// to the file's own directory.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        Config::parse(file, &text)
    }

    /// Validates config text as if read from `file`.
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: file.to_owned(),
            key: key.to_owned(),
            message,
        };
        let base = file.parent().unwrap_or(Path::new("."));
        let rel = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };

        let host = HostName::parse(&raw.host).map_err(|e| invalid("host", e.to_string()))?;
        let listen = match raw.listen.as_deref() {
            None => SocketAddr::from((Ipv4Addr::UNSPECIFIED, DEFAULT_TLS_PORT)),
            Some(s) => parse_listen(s).map_err(|m| invalid("listen", m))?,
        };
        let epmd_port = raw.epmd_port.unwrap_or(DEFAULT_EPMD_PORT);
        if epmd_port == 0 {
            return Err(invalid("epmd_port", "must not be 0".into()));
        }
        // A count or a number of seconds that must be at least 1.
        let positive = |v: Option<u64>, default: u64, key: &str| match v.unwrap_or(default) {
            0 => Err(invalid(key, "must be at least 1".into())),
            n => Ok(n),
        };
        let count = |v: Option<usize>, default: usize, key: &str| {
            positive(v.map(|n| n as u64), default as u64, key).map(|n| n as usize)
        };
        let secs =
            |v: Option<u64>, default: Duration, key: &str| positive(v, default.as_secs(), key).map(Duration::from_secs);
        let max_connections = count(raw.max_connections, DEFAULT_MAX_CONNECTIONS, "max_connections")?;
        let max_unauthenticated = count(
            raw.max_unauthenticated,
            DEFAULT_MAX_UNAUTHENTICATED,
            "max_unauthenticated",
        )?;
        let max_unauthenticated_per_source = count(
            raw.max_unauthenticated_per_source,
            DEFAULT_MAX_UNAUTHENTICATED_PER_SOURCE,
            "max_unauthenticated_per_source",
        )?;
        let first_bytes_timeout = secs(
            raw.first_bytes_timeout_secs,
            DEFAULT_FIRST_BYTES_TIMEOUT,
            "first_bytes_timeout_secs",
        )?;
        let threads = raw.threads.unwrap_or(1);
        if threads > MAX_THREADS {
            return Err(invalid(
                "threads",
                format!("must be at most {MAX_THREADS} (0 = one per CPU)"),
            ));
        }
        let dist = parse_dist_policies(raw.dist_policies, &invalid)?;
        let peers = parse_peers(raw.peers, &host, &dist, &invalid)?;
        let default_policy = match raw.default_policy {
            None => Policy::default(),
            Some(p) => Policy {
                nodes: patterns(p.nodes).map_err(|m| invalid("default_policy.nodes", m))?,
                local_nodes: patterns(p.local_nodes).map_err(|m| invalid("default_policy.local_nodes", m))?,
                dist: dist_ref(p.dist_policy, &dist).map_err(|m| invalid("default_policy.dist_policy", m))?,
            },
        };
        let tls = parse_tls(raw.tls, &rel, &invalid)?;
        let handshake_timeout = secs(
            raw.handshake_timeout_secs,
            DEFAULT_HANDSHAKE_TIMEOUT,
            "handshake_timeout_secs",
        )?;
        let metrics = raw
            .metrics
            .as_deref()
            .map(parse_metrics)
            .transpose()
            .map_err(|m| invalid("metrics", m))?;
        for (i, sd) in raw.seeds.iter().enumerate() {
            check_address(sd).map_err(|m| invalid(&format!("seeds[{i}]"), m))?;
        }
        let advertise = match raw.advertise {
            Some(a) => {
                check_address(&a).map_err(|m| invalid("advertise", m))?;
                a
            }
            None if listen.ip().is_unspecified() => format!("{}:{}", host, listen.port()),
            None => listen.to_string(),
        };
        let (epmd, transparent) = parse_interception(raw.interception, raw.epmd, raw.transparent, epmd_port, &invalid)?;
        let forget_after = Duration::from_secs(raw.forget_after_secs.unwrap_or(DEFAULT_FORGET_AFTER.as_secs()));
        Ok(Config {
            metrics,
            seeds: raw.seeds,
            advertise,
            forget_after,
            file: file.to_owned(),
            host,
            listen,
            epmd_port,
            epmd,
            interception: raw.interception,
            transparent,
            state_dir: rel(raw.state_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))),
            max_connections,
            max_unauthenticated,
            max_unauthenticated_per_source,
            first_bytes_timeout,
            threads,
            shutdown_grace: raw
                .shutdown_grace_secs
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_SHUTDOWN_GRACE),
            handshake_timeout,
            default_policy,
            tls,
            peers,
        })
    }

    /// File descriptors the configured caps can take at once: two per
    /// authenticated connection (the TLS socket and the node's), one per
    /// anonymous one, one per local EPMD connection, and a reserve for
    /// listeners, faces, files and outbound dials.
    pub fn descriptors_needed(&self) -> u64 {
        (2 * self.max_connections
            + self.max_unauthenticated
            + crate::app::MAX_LOCAL_EPMD_CONNECTIONS
            + DESCRIPTOR_RESERVE) as u64
    }

    /// The resolver file local nodes read through `ERL_INETRC`.
    pub fn inetrc_path(&self) -> PathBuf {
        self.state_dir.join("inetrc")
    }
}

/// The EPMD mode and the `[transparent]` table: transparent interception
/// asks the epmd the nodes run themselves (`epmd = "system"`, implied).
fn parse_interception(
    interception: Interception,
    epmd: Option<EpmdMode>,
    raw: Option<RawTransparent>,
    epmd_port: u16,
    invalid: &impl Fn(&str, String) -> ConfigError,
) -> Result<(EpmdMode, Transparent), ConfigError> {
    if interception == Interception::Resolver {
        if raw.is_some() {
            return Err(invalid(
                "transparent",
                "only read with interception = \"transparent\"".into(),
            ));
        }
        return Ok((epmd.unwrap_or_default(), Transparent::default()));
    }
    if epmd == Some(EpmdMode::Embedded) {
        return Err(invalid(
            "epmd",
            "with interception = \"transparent\" nodes run their own epmd: remove this key or set it to \"system\""
                .into(),
        ));
    }
    let raw = raw.unwrap_or(RawTransparent {
        redirect_port: None,
        socket_mark: None,
        dist_ports: None,
    });
    let redirect_port = raw.redirect_port.unwrap_or(DEFAULT_REDIRECT_PORT);
    if redirect_port == 0 || redirect_port == epmd_port {
        return Err(invalid(
            "transparent.redirect_port",
            format!("must be a port of its own (not 0, not the EPMD port {epmd_port})"),
        ));
    }
    let socket_mark = raw.socket_mark.unwrap_or(DEFAULT_SOCKET_MARK);
    if socket_mark == 0 {
        return Err(invalid("transparent.socket_mark", "must not be 0".into()));
    }
    let dist_ports = match raw.dist_ports {
        None => None,
        Some(s) => Some(parse_port_range(&s).map_err(|m| invalid("transparent.dist_ports", m))?),
    };
    if let Some((lo, hi)) = dist_ports {
        if (lo..=hi).contains(&epmd_port) || (lo..=hi).contains(&redirect_port) {
            return Err(invalid(
                "transparent.dist_ports",
                format!("{lo}-{hi} holds the EPMD port or the redirect port"),
            ));
        }
    }
    Ok((
        EpmdMode::System,
        Transparent {
            redirect_port,
            socket_mark,
            dist_ports,
        },
    ))
}

/// "MIN-MAX", as the nodes' `inet_dist_listen_min` and `inet_dist_listen_max`.
fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{s:?} is not a port range such as \"9100-9155\"");
    let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

/// A host part of node names or of an address.
fn check_host(h: &str) -> Result<(), String> {
    HostName::parse(h).map(|_| ()).map_err(|e| e.to_string())
}

/// The `[tls]` table: files relative to the config's directory, the
/// record limit, and the refusal of the removed `min_version`.
fn parse_tls(
    raw: RawTls,
    rel: &impl Fn(PathBuf) -> PathBuf,
    invalid: &impl Fn(&str, String) -> ConfigError,
) -> Result<TlsFiles, ConfigError> {
    use crate::tunnel::record::DEFAULT_RECORDS_PER_KEY;
    if let Some(v) = raw.min_version {
        return Err(invalid(
            "tls.min_version",
            format!("{v:?}: erlmesh speaks TLS 1.3 only since 0.2; remove this key"),
        ));
    }
    let records_per_key = raw.records_per_key.unwrap_or(DEFAULT_RECORDS_PER_KEY);
    if !(1..=DEFAULT_RECORDS_PER_KEY).contains(&records_per_key) {
        return Err(invalid(
            "tls.records_per_key",
            format!("must be 1 to {DEFAULT_RECORDS_PER_KEY}"),
        ));
    }
    let cipher_suites = match raw.cipher_suites {
        None => crate::tls::Suite::default_order(),
        Some(names) => crate::tls::Suite::parse_list(&names).map_err(|e| invalid("tls.cipher_suites", e))?,
    };
    let record_provider = match raw.record_provider.as_deref() {
        None | Some("auto") => None,
        Some(name) => Some(
            crate::tunnel::record::Provider::NAMES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, p)| *p)
                .ok_or_else(|| {
                    invalid(
                        "tls.record_provider",
                        format!("{name:?}: expected \"auto\", \"aws-lc-rs\" or \"ring\""),
                    )
                })?,
        ),
    };
    Ok(TlsFiles {
        ca: rel(raw.ca),
        cert: rel(raw.cert),
        key: rel(raw.key),
        crl: raw.crl.into_iter().map(rel).collect(),
        records_per_key,
        cipher_suites,
        record_provider,
    })
}

/// The metrics address: loopback only, since the endpoint is unauthenticated.
fn parse_metrics(m: &str) -> Result<SocketAddr, String> {
    let a: SocketAddr = m
        .parse()
        .map_err(|_| format!("{m:?} is not an address such as \"127.0.0.1:9370\""))?;
    if !a.ip().is_loopback() {
        return Err(format!(
            "{a} is not a loopback address: the endpoint is unauthenticated"
        ));
    }
    Ok(a)
}

/// The `[[peers]]` entries, each checked (canonical host, not this host,
/// not listed twice, address, alias, patterns).
fn parse_peers(
    raw: Vec<RawPeer>,
    host: &HostName,
    dist: &DistPolicies,
    invalid: &impl Fn(&str, String) -> ConfigError,
) -> Result<Vec<Peer>, ConfigError> {
    let mut peers: Vec<Peer> = Vec::new();
    for (i, p) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("peers[{i}].{k}");
        // Compared in canonical form: "Hostb." is hostb.
        let peer_host = HostName::parse(&p.host).map_err(|e| invalid(&key("host"), e.to_string()))?;
        if peer_host == *host {
            return Err(invalid(&key("host"), format!("{:?} is this host itself", p.host)));
        }
        if peers.iter().any(|q| q.host == peer_host) {
            return Err(invalid(&key("host"), format!("{:?} is listed twice", p.host)));
        }
        check_address(&p.address).map_err(|m| invalid(&key("address"), m))?;
        let alias = match p.alias {
            None => None,
            Some(a) => {
                let ip = check_alias(&a).map_err(|m| invalid(&key("alias"), m))?;
                if peers.iter().any(|q| q.alias == Some(ip)) {
                    return Err(invalid(&key("alias"), format!("{ip} is already another peer's alias")));
                }
                Some(ip)
            }
        };
        let patterns = |v: Option<Vec<String>>, k: &str| patterns(v).map_err(|m| invalid(&key(k), m));
        let policy = Policy {
            nodes: patterns(p.nodes, "nodes")?,
            local_nodes: patterns(p.local_nodes, "local_nodes")?,
            dist: dist_ref(p.dist_policy, dist).map_err(|m| invalid(&key("dist_policy"), m))?,
        };
        peers.push(Peer {
            host: peer_host,
            address: p.address,
            alias,
            policy,
        });
    }
    Ok(peers)
}

type DistPolicies = std::collections::BTreeMap<String, std::sync::Arc<DistPolicy>>;

/// The `[dist_policies.NAME]` tables.
fn parse_dist_policies(
    raw: std::collections::BTreeMap<String, RawDistPolicy>,
    invalid: &impl Fn(&str, String) -> ConfigError,
) -> Result<DistPolicies, ConfigError> {
    let mut out = DistPolicies::new();
    for (name, p) in raw {
        let key = |k: &str| format!("dist_policies.{name}.{k}");
        let mode = match p.mode.as_deref() {
            None | Some("enforce") => Mode::Enforce,
            Some("audit") => Mode::Audit,
            Some(other) => {
                return Err(invalid(
                    &key("mode"),
                    format!("{other:?} is not a mode: \"enforce\" or \"audit\""),
                ))
            }
        };
        let mut registered = Vec::new();
        for (i, r) in p.registered.unwrap_or_default().into_iter().enumerate() {
            if r.is_empty() || r.chars().count() > 255 {
                return Err(invalid(
                    &format!("dist_policies.{name}.registered[{i}]"),
                    "a registered name has 1 to 255 characters".into(),
                ));
            }
            registered.push(Pattern::new(&r));
        }
        // A bound: its default when absent, within 1..=max, else an error
        // naming the key (and `why`, after the range).
        let bound = |v: Option<u64>, k: &str, default: usize, max: usize, why: &str| match v {
            None => Ok(default),
            Some(n) if (1..=max as u64).contains(&n) => Ok(n as usize),
            Some(n) => Err(invalid(&key(k), format!("{n} is out of range: 1 to {max}{why}"))),
        };
        let max_atoms = bound(
            p.max_atoms,
            "max_atoms",
            crate::firewall::atoms::DEFAULT_MAX_ATOMS,
            crate::firewall::atoms::MAX_ATOMS_ALL_HOSTS,
            " (all restricted hosts together bring at most that many)",
        )?;
        let max_monitors = bound(
            p.max_monitors,
            "max_monitors",
            crate::firewall::memory::DEFAULT_MAX_MONITORS,
            crate::firewall::memory::MAX_MONITORS,
            "",
        )?;
        let max_global_names = bound(
            p.max_global_names,
            "max_global_names",
            crate::firewall::names::MAX_GLOBAL_HELD,
            crate::firewall::names::MAX_GLOBAL_HELD,
            "",
        )?;
        let policy = DistPolicy {
            name: name.clone(),
            mode,
            spawn: p.spawn.unwrap_or(false),
            registered,
            exit_signals: p.exit_signals.unwrap_or(false),
            max_atoms,
            max_monitors,
            max_global_names,
        };
        out.insert(name, std::sync::Arc::new(policy));
    }
    Ok(out)
}

/// A `dist_policy = "NAME"` reference.
fn dist_ref(name: Option<String>, dist: &DistPolicies) -> Result<Option<std::sync::Arc<DistPolicy>>, String> {
    match name {
        None => Ok(None),
        Some(n) => dist.get(&n).cloned().map(Some).ok_or_else(|| {
            let known: Vec<&str> = dist.keys().map(String::as_str).collect();
            format!("no [dist_policies.{n}] table (defined: {known:?})")
        }),
    }
}

/// Descriptors kept for what the caps do not count (see
/// [`Config::descriptors_needed`]).
const DESCRIPTOR_RESERVE: usize = 256;

/// Node-name patterns; absent means every node.
fn patterns(v: Option<Vec<String>>) -> Result<Vec<Pattern>, String> {
    match v {
        None => Ok(vec![Pattern::new("*")]),
        Some(v) if v.iter().any(|s| s.is_empty()) => Err("empty pattern".into()),
        Some(v) => Ok(v.iter().map(|s| Pattern::new(s)).collect()),
    }
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_TLS_PORT));
    }
    Err(format!(
        "{s:?} is not an address such as \"0.0.0.0:{DEFAULT_TLS_PORT}\""
    ))
}

fn check_address(s: &str) -> Result<(), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} has no port (expected \"host:port\")"))?;
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{s:?}: {port:?} is not a port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    check_host(host)
}

fn check_alias(s: &str) -> Result<Ipv4Addr, String> {
    let ip: Ipv4Addr = s.parse().map_err(|_| format!("{s:?} is not an IPv4 address"))?;
    if !ip.is_loopback() {
        return Err(format!("{ip} is not a loopback address (127.0.0.0/8)"));
    }
    if ip == Ipv4Addr::LOCALHOST {
        return Err("127.0.0.1 stands for this host; pick another loopback address".into());
    }
    Ok(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
host = "hosta"
state_dir = "state"
[tls]
ca = "certs/ca.pem"
cert = "/etc/erlmesh/hosta.pem"
key = "certs/hosta.key"
[[peers]]
host = "hostb"
address = "192.0.2.7:4370"
alias = "127.77.0.2"
[[peers]]
host = "hostc.example.com"
address = "hostc.example.com:4370"
"#;

    fn err(text: &str) -> String {
        Config::parse(Path::new("/etc/erlmesh/erlmesh.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn loads_with_defaults_and_relative_paths() {
        let c = Config::parse(Path::new("/etc/erlmesh/erlmesh.toml"), GOOD).unwrap();
        assert_eq!(c.listen, "0.0.0.0:4370".parse().unwrap());
        assert_eq!(c.epmd_port, 4369);
        assert_eq!(c.epmd, EpmdMode::Embedded);
        assert_eq!(c.tls.ca, Path::new("/etc/erlmesh/certs/ca.pem"));
        assert_eq!(c.tls.cert, Path::new("/etc/erlmesh/hosta.pem"));
        assert_eq!(c.inetrc_path(), Path::new("/etc/erlmesh/state/inetrc"));
        assert_eq!(c.peers[0].alias, Some(Ipv4Addr::new(127, 77, 0, 2)));
        assert_eq!(c.peers[1].alias, None);
    }

    #[test]
    fn the_deploy_example_is_valid() {
        let text = include_str!("../deploy/erlmesh.toml.example");
        let c = Config::parse(Path::new("/etc/erlmesh/erlmesh.toml"), text).unwrap();
        assert_eq!(c.peers.len(), 2);
        assert!(c.peers[1].policy.allows_remote("rabbit") && !c.peers[1].policy.allows_remote("x"));
        assert_eq!(c.advertise, "hosta:4370");
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = err(&GOOD.replace("alias = \"127.77.0.2\"", "alias = \"10.0.0.1\""));
        assert!(e.starts_with("/etc/erlmesh/erlmesh.toml: peers[0].alias: "), "{e}");
        let e = err(&GOOD.replace("192.0.2.7:4370", "192.0.2.7"));
        assert!(e.contains("peers[0].address"), "{e}");
        let e = err(&GOOD.replace("host = \"hosta\"", "host = \"hosta\"\nlisten_port = 1"));
        assert!(e.contains("erlmesh.toml") && e.contains("listen_port"), "{e}");
        let e = err(&GOOD.replace("host = \"hostb\"", "host = \"hosta\""));
        assert!(e.contains("peers[0].host") && e.contains("this host itself"), "{e}");
        let e = err(&GOOD.replace("[tls]\nca = \"certs/ca.pem\"\n", "[tls]\n"));
        assert!(e.contains("ca"), "{e}");
        let e = err(&GOOD
            .replace("epmd_port", "x")
            .replace("host = \"hosta\"", "host = \"hosta\"\nepmd_port = \"x\""));
        assert!(e.contains("epmd_port"), "{e}");
        let e = err(&GOOD.replace("host = \"hosta\"", "host = \"hosta\"\nthreads = 100000"));
        assert!(e.contains("erlmesh.toml: threads: must be at most 256"), "{e}");
    }

    #[test]
    fn host_names_are_canonical() {
        let text = GOOD
            .replace("host = \"hosta\"", "host = \"HostA.\"")
            .replace("host = \"hostb\"", "host = \"HOSTB\"");
        let c = Config::parse(Path::new("/x.toml"), &text).unwrap();
        assert_eq!(c.host, "hosta");
        assert_eq!(c.peers[0].host, "hostb");
        // Two spellings of one host, or this host under another spelling.
        let e = err(&format!(
            "{GOOD}\n[[peers]]\nhost = \"HostB.\"\naddress = \"192.0.2.8:4370\"\n"
        ));
        assert!(e.contains("peers[2].host") && e.contains("listed twice"), "{e}");
        let e = err(&GOOD.replace("host = \"hostb\"", "host = \"HOSTA\""));
        assert!(e.contains("this host itself"), "{e}");
        let e = err(&GOOD.replace("host = \"hostb\"", "host = \"host b\""));
        assert!(e.contains("peers[0].host") && e.contains("not a host name"), "{e}");
    }

    #[test]
    fn default_policy_and_admission_keys() {
        let text = GOOD.replace(
            "state_dir = \"state\"",
            "state_dir = \"state\"\nmax_unauthenticated = 10\nmax_unauthenticated_per_source = 2\nfirst_bytes_timeout_secs = 1\n[default_policy]\nnodes = [\"web*\"]\nlocal_nodes = [\"api\"]",
        );
        let c = Config::parse(Path::new("/x.toml"), &text).unwrap();
        assert!(c.default_policy.allows_remote("web1") && !c.default_policy.allows_remote("db"));
        assert!(c.default_policy.allows_local("api") && !c.default_policy.allows_local("db"));
        assert_eq!((c.max_unauthenticated, c.max_unauthenticated_per_source), (10, 2));
        assert_eq!(c.first_bytes_timeout, Duration::from_secs(1));
        let e = err(&text.replace("nodes = [\"web*\"]", "nodes = [\"\"]"));
        assert!(e.contains("default_policy.nodes: empty pattern"), "{e}");
        let e = err(&GOOD.replace("[tls]", "[tls]\nrecords_per_key = 0"));
        assert!(e.contains("tls.records_per_key"), "{e}");
        for (suites, says) in [
            ("[]", "at least one"),
            ("[\"TLS13_AES_128_GCM\"]", "TLS13_AES_128_GCM_SHA256"),
            ("[\"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\"]", "unknown"),
            ("[\"TLS13_AES_128_GCM_SHA256\", \"TLS13_AES_128_GCM_SHA256\"]", "twice"),
        ] {
            let e = err(&GOOD.replace("[tls]", &format!("[tls]\ncipher_suites = {suites}")));
            assert!(e.contains("tls.cipher_suites") && e.contains(says), "{suites}: {e}");
        }
        let c = Config::parse(
            Path::new("/etc/erlmesh/erlmesh.toml"),
            &GOOD.replace("[tls]", "[tls]\ncipher_suites = [\"TLS13_CHACHA20_POLY1305_SHA256\"]"),
        )
        .unwrap();
        assert_eq!(c.tls.cipher_suites, vec![crate::tls::Suite::Chacha20Poly1305]);
        // AEGIS comes first by default, and may be named, only where the CPU
        // has AES instructions.
        use crate::tls::Suite;
        let aegis = GOOD.replace("[tls]", "[tls]\ncipher_suites = [\"TLS13_AEGIS_128X2_SHA256\"]");
        let c = Config::parse(Path::new("/etc/erlmesh/erlmesh.toml"), GOOD).unwrap();
        if Suite::Aegis128X2.usable() {
            assert_eq!(c.tls.cipher_suites, Suite::ALL.to_vec());
            let c = Config::parse(Path::new("/etc/erlmesh/erlmesh.toml"), &aegis).unwrap();
            assert_eq!(c.tls.cipher_suites, vec![Suite::Aegis128X2]);
        } else {
            assert_eq!(c.tls.cipher_suites, Suite::ALL[1..].to_vec());
            assert!(err(&aegis).contains("no AES instructions"));
        }
        use crate::tunnel::record::Provider;
        for (v, p) in [
            ("auto", None),
            ("aws-lc-rs", Some(Provider::AwsLc)),
            ("ring", Some(Provider::Ring)),
        ] {
            let text = GOOD.replace("[tls]", &format!("[tls]\nrecord_provider = {v:?}"));
            assert_eq!(
                Config::parse(Path::new("/x.toml"), &text).unwrap().tls.record_provider,
                p
            );
        }
        let e = err(&GOOD.replace("[tls]", "[tls]\nrecord_provider = \"openssl\""));
        assert!(e.contains("tls.record_provider") && e.contains("\"openssl\""), "{e}");
    }

    #[test]
    fn dist_policies_for_peers_and_for_learnt_hosts() {
        let text = GOOD
            .replace(
                "[tls]",
                "[default_policy]\ndist_policy = \"strict\"\n[dist_policies.edge]\nmode = \"audit\"\nregistered = [\"cache\", \"web_*\"]\nexit_signals = true\n[dist_policies.strict]\n[tls]",
            )
            .replace("alias = \"127.77.0.2\"", "alias = \"127.77.0.2\"\ndist_policy = \"edge\"");
        let c = Config::parse(Path::new("/x.toml"), &text).unwrap();
        let edge = c.peers[0].policy.dist.as_ref().unwrap();
        assert_eq!(
            (edge.name.as_str(), edge.mode, edge.spawn, edge.exit_signals),
            ("edge", Mode::Audit, false, true)
        );
        assert!(edge.lists("cache") && edge.lists("web_1") && !edge.lists("rex"));
        // No dist_policy: nothing parsed on that peer's tunnels.
        assert!(c.peers[1].policy.dist.is_none());
        // Learnt hosts: the default's, restrictive by default.
        let strict = c.default_policy.dist.as_ref().unwrap();
        assert_eq!(
            (strict.mode, strict.spawn, strict.exit_signals),
            (Mode::Enforce, false, false)
        );
        assert!(strict.registered.is_empty());
        let e = err(&text.replace("dist_policy = \"edge\"", "dist_policy = \"egde\""));
        assert!(
            e.contains("peers[0].dist_policy") && e.contains("no [dist_policies.egde]"),
            "{e}"
        );
        let e = err(&text.replace("mode = \"audit\"", "mode = \"log\""));
        assert!(e.contains("dist_policies.edge.mode"), "{e}");
        let e = err(&text.replace("\"cache\", ", "\"\", "));
        assert!(e.contains("dist_policies.edge.registered[0]"), "{e}");
        let e = err(&text.replace("exit_signals = true", "exit_signal = true"));
        assert!(e.contains("exit_signal"), "{e}");
        assert_eq!(strict.max_atoms, crate::firewall::atoms::DEFAULT_MAX_ATOMS);
        assert_eq!(strict.max_monitors, crate::firewall::memory::DEFAULT_MAX_MONITORS);
        // The bounds: a value in range is taken, one out of it named.
        type Read = fn(&DistPolicy) -> usize;
        let bounds: [(&str, usize, &[&str], Read); 3] = [
            ("max_atoms", 5000, &["0", "300000"], |p| p.max_atoms),
            ("max_monitors", 500, &["0", "2000000"], |p| p.max_monitors),
            ("max_global_names", 300, &["0", "70000"], |p| p.max_global_names),
        ];
        for (key, good, bads, read) in bounds {
            let with = |v: &str| text.replace("exit_signals = true", &format!("exit_signals = true\n{key} = {v}"));
            let c = Config::parse(Path::new("/x.toml"), &with(&good.to_string())).unwrap();
            assert_eq!(read(c.peers[0].policy.dist.as_ref().unwrap()), good);
            for bad in bads {
                let e = err(&with(bad));
                assert!(e.contains(&format!("dist_policies.edge.{key}")), "{bad}: {e}");
            }
        }
    }

    #[test]
    fn a_sketch_renders_a_config_that_loads() {
        let s = Sketch {
            host: "hosta".into(),
            listen: "127.0.0.1:4370".into(),
            epmd_port: 4369,
            state_dir: "state \"a\"".into(),
            ca: "certs/ca.pem".into(),
            cert: "certs/hosta.pem".into(),
            key: "certs/hosta.key".into(),
            seeds: vec!["hostb:4370".into()],
            peers: vec![SketchPeer {
                host: "hostb".into(),
                address: "127.0.0.1:4371".into(),
                nodes: Some(vec!["web*".into()]),
                local_nodes: None,
                dist_policy: Some("edge".into()),
            }],
            extra: "[dist_policies.edge]\nspawn = false".into(),
            tls_extra: String::new(),
        };
        let c = Config::parse(Path::new("/x/erlmesh.toml"), &s.render()).unwrap();
        assert_eq!(c.state_dir, Path::new("/x/state \"a\""));
        assert_eq!(c.seeds, ["hostb:4370"]);
        assert!(c.peers[0].policy.allows_remote("web1") && !c.peers[0].policy.allows_remote("db"));
        assert_eq!(c.peers[0].policy.dist.as_ref().unwrap().name, "edge");
    }

    #[test]
    fn tls_min_version_is_gone() {
        let e = err(&GOOD.replace("[tls]", "[tls]\nmin_version = \"1.2\""));
        assert!(e.contains("tls.min_version") && e.contains("TLS 1.3 only"), "{e}");
    }

    #[test]
    fn threads_default_to_one() {
        let c = Config::parse(Path::new("/etc/erlmesh/erlmesh.toml"), GOOD).unwrap();
        assert_eq!(c.threads, 1);
        let text = GOOD.replace("host = \"hosta\"", "host = \"hosta\"\nthreads = 0");
        assert_eq!(Config::parse(Path::new("/x.toml"), &text).unwrap().threads, 0);
    }

    #[test]
    fn transparent_interception_and_its_table() {
        let c = Config::parse(Path::new("/x.toml"), GOOD).unwrap();
        assert_eq!(c.interception, Interception::Resolver);
        let t = GOOD.replace("host = \"hosta\"", "host = \"hosta\"\ninterception = \"transparent\"");
        let c = Config::parse(Path::new("/x.toml"), &t).unwrap();
        assert_eq!(c.interception, Interception::Transparent);
        assert_eq!(c.epmd, EpmdMode::System, "the nodes' own epmd is asked");
        assert_eq!(c.transparent, Transparent::default());
        let with = |extra: &str| t.replace("[tls]", &format!("[transparent]\n{extra}\n[tls]"));
        let c = Config::parse(
            Path::new("/x.toml"),
            &with("dist_ports = \"9100-9155\"\nredirect_port = 4400"),
        )
        .unwrap();
        assert_eq!(c.transparent.dist_ports, Some((9100, 9155)));
        assert_eq!(c.transparent.redirect_port, 4400);
        for (extra, key) in [
            ("dist_ports = \"9155-9100\"", "transparent.dist_ports"),
            ("dist_ports = \"4300-4400\"", "transparent.dist_ports"),
            ("redirect_port = 4369", "transparent.redirect_port"),
            ("socket_mark = 0", "transparent.socket_mark"),
            ("colour = 1", "colour"),
        ] {
            let e = err(&with(extra));
            assert!(e.contains(key), "{extra}: {e}");
        }
        let e = err(&t.replace("interception", "epmd = \"embedded\"\ninterception"));
        assert!(e.contains(": epmd: "), "{e}");
        let e = err(&GOOD.replace("[tls]", "[transparent]\n[tls]"));
        assert!(e.contains(": transparent: "), "{e}");
    }
}
