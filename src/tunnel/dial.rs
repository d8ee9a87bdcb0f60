//! Dialling a peer erlmesh: TCP, mutual TLS checked against the peer's host
//! name, the preface, and the peer's answer.

use crate::epmd::NodeInfo;
use crate::hostname::HostName;
use crate::ops::metrics::{tls_reason, Metrics};
use crate::tls::{server_name, LiveGuard, Tls};
use crate::tunnel::preface::{self, Preface, PrefaceError, TunnelStatus};
use crate::tunnel::record;
use crate::tunnel::record::{Corked, SecretCapture, Side};
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// TCP connect to a peer. Short: a node waiting on us has its own 7 s
/// setup timer, and an unreachable peer should give `pang` well before it.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// TLS handshake with a peer that accepted the TCP connection.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
pub use crate::tunnel::preface::ANSWER_TIMEOUT;

/// Why a peer could not be asked or reached.
#[derive(Debug, Error)]
pub enum DialError {
    #[error("cannot resolve {address}: {source}")]
    Resolve { address: String, source: std::io::Error },
    #[error("connect to {address}: {source}")]
    Connect { address: String, source: std::io::Error },
    #[error("connect to {address}: no answer within {CONNECT_TIMEOUT:?}")]
    ConnectTimeout { address: String },
    #[error("TLS with {address}: {source}")]
    Tls { address: String, source: std::io::Error },
    #[error("TLS with {address}: no handshake within {HANDSHAKE_TIMEOUT:?}")]
    TlsTimeout { address: String },
    #[error("{address}: no answer within {ANSWER_TIMEOUT:?}")]
    AnswerTimeout { address: String },
    #[error("{address}: {source}")]
    Answer {
        address: String,
        source: preface::ReadError,
    },
    #[error("{address}: {source}")]
    Io { address: String, source: std::io::Error },
    #[error("{0}")]
    Name(String),
}

/// An open tunnel to a peer's node: the socket and the record layer taken
/// over from rustls (tunnel/record/), and its registration for revocation.
pub struct Tunnel {
    pub tcp: TcpStream,
    pub tx: record::Sender,
    pub rx: record::Reader,
    /// Whether the TLS session was resumed.
    pub resumed: bool,
    /// The TLS 1.3 suite negotiated (as rustls names it).
    pub suite: &'static str,
    pub live: LiveGuard,
    /// The peer's certificate chain (DER), for an upgrade to hand over.
    pub chain: Vec<Vec<u8>>,
}

/// Dials one peer host.
#[derive(Debug)]
pub struct Dialer {
    /// The host part of the peer's node names, checked in its certificate.
    pub host: String,
    /// Its erlmesh TLS address, resolved at each dial.
    pub address: String,
    name: ServerName<'static>,
    tls: Arc<Tls>,
    metrics: Arc<Metrics>,
    /// A seed: its host name is not known yet and is read from its
    /// certificate (fully verified otherwise).
    seed: bool,
    /// Reports to the status table (false for checks of announced hosts,
    /// which must not grow it).
    listed: bool,
}

impl Dialer {
    /// A dialer for `host` at `address`.
    pub fn new(host: &str, address: &str, tls: Arc<Tls>, metrics: Arc<Metrics>) -> Result<Dialer, DialError> {
        Ok(Dialer {
            host: host.to_owned(),
            address: address.to_owned(),
            name: server_name(host).map_err(DialError::Name)?,
            tls,
            metrics,
            seed: false,
            listed: true,
        })
    }

    /// This dialer, not reporting to the status table.
    pub fn unlisted(mut self) -> Dialer {
        self.listed = false;
        self
    }

    /// A dialer for a seed address, whose host is learnt from its certificate.
    pub fn seed(address: &str, tls: Arc<Tls>, metrics: Arc<Metrics>) -> Dialer {
        Dialer {
            host: address.to_owned(),
            address: address.to_owned(),
            name: ServerName::try_from("erlmesh-seed").expect("a valid DNS name"),
            tls,
            metrics,
            seed: true,
            listed: false,
        }
    }

    /// Opens a verified TLS connection and sends `preface` (plus `extra`
    /// bytes in the same write, to save a round trip).
    pub async fn open(&self, preface: &Preface, extra: &[u8]) -> Result<TlsStream<Corked<TcpStream>>, DialError> {
        self.open_captured(preface, extra).await.map(|(s, _)| s)
    }

    /// [`Dialer::open`], with the capture of the connection's traffic
    /// secrets (for a tunnel's record layer).
    async fn open_captured(
        &self,
        preface: &Preface,
        extra: &[u8],
    ) -> Result<(TlsStream<Corked<TcpStream>>, Arc<SecretCapture>), DialError> {
        let r = self.open_inner(preface, extra).await;
        match &r {
            Ok(_) if !self.listed => {}
            Ok((s, _)) => self.metrics.peer_connected(&self.host, s.get_ref().1),
            Err(e) => {
                if let DialError::Tls { source, .. } = e {
                    self.metrics.handshake_failed(tls_reason(source));
                }
                if self.listed {
                    self.metrics.peer_error(&self.host, e.to_string());
                }
            }
        }
        r
    }

    /// Whether this dials a seed (host learnt from its certificate).
    pub fn is_seed(&self) -> bool {
        self.seed
    }

    /// The metrics this dialer reports to.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    async fn open_inner(
        &self,
        preface: &Preface,
        extra: &[u8],
    ) -> Result<(TlsStream<Corked<TcpStream>>, Arc<SecretCapture>), DialError> {
        let address = || self.address.clone();
        let tcp = match timeout(CONNECT_TIMEOUT, self.connect_tcp()).await {
            Ok(r) => r?,
            Err(_) => return Err(DialError::ConnectTimeout { address: address() }),
        };
        let configs = self.tls.current();
        let (config, capture) = configs.client_for_connection(self.seed);
        let connector = TlsConnector::from(config);
        let mut tls = match timeout(
            HANDSHAKE_TIMEOUT,
            connector.connect(self.name.clone(), Corked::new(tcp)),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                return Err(DialError::Tls {
                    address: address(),
                    source,
                })
            }
            Err(_) => return Err(DialError::TlsTimeout { address: address() }),
        };
        // A resumed session skips the certificate check: do it here, with
        // the CRLs and the clock of now.
        if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            let chain = tls.get_ref().1.peer_certificates().unwrap_or_default();
            let name = if self.seed {
                crate::tls::peer_hosts(tls.get_ref().1)
                    .first()
                    .and_then(|n| ServerName::try_from(n.to_string()).ok())
            } else {
                Some(self.name.clone())
            };
            let checked = match name {
                Some(n) => configs.check_peer(chain, Some(&n)),
                None => Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName,
                )),
            };
            if let Err(e) = checked {
                return Err(DialError::Tls {
                    address: address(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("resumed session refused: {e}"),
                    ),
                });
            }
        }
        let mut first = preface.encode();
        first.extend_from_slice(extra);
        let send = async {
            tls.write_all(&first).await?;
            tls.flush().await
        };
        timeout(ANSWER_TIMEOUT, send)
            .await
            .map_err(|_| DialError::AnswerTimeout { address: address() })?
            .map_err(|source| DialError::Io {
                address: address(),
                source,
            })?;
        Ok((tls, capture))
    }

    async fn connect_tcp(&self) -> Result<TcpStream, DialError> {
        let addrs = tokio::net::lookup_host(&self.address)
            .await
            .map_err(|source| DialError::Resolve {
                address: self.address.clone(),
                source,
            })?;
        let mut last = None;
        for a in addrs {
            match connect_marked(a).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(DialError::Connect {
            address: self.address.clone(),
            source: last.unwrap_or_else(|| std::io::Error::other("no addresses")),
        })
    }

    /// Asks the peer where its node `name` is (without its real port).
    pub async fn port_please(&self, name: &str) -> Result<Option<NodeInfo>, DialError> {
        let mut s = self.open(&Preface::PortPlease(name.to_owned()), &[]).await?;
        self.answer(preface::read_port_answer(&mut s, name)).await
    }

    /// Asks the peer where its node `name` is, with its real port
    /// (transparent mode: local nodes dial that port).
    pub async fn port(&self, name: &str) -> Result<Option<NodeInfo>, DialError> {
        let mut s = self.open(&Preface::Port(name.to_owned()), &[]).await?;
        self.answer(preface::read_real_port_answer(&mut s, name)).await
    }

    /// Asks the peer which nodes run on its host.
    pub async fn names(&self) -> Result<Vec<String>, DialError> {
        let mut s = self.open(&Preface::Names, &[]).await?;
        self.answer(preface::read_names_answer(&mut s)).await
    }

    /// Opens a tunnel to node `name`, sending `send_name` (the node's first
    /// handshake frame) along; returns the stream once the peer says OK.
    pub async fn tunnel(&self, name: &str, send_name: &[u8]) -> Result<(TunnelStatus, Tunnel), DialError> {
        let (s, capture) = self.open_captured(&Preface::Tunnel(name.to_owned()), send_name).await?;
        let resumed = matches!(s.get_ref().1.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        let suite = suite_name(s.get_ref().1);
        let live = self.tls.register(&self.host, s.get_ref().1, Some(self.name.clone()));
        let chain: Vec<Vec<u8>> = s
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|d| d.to_vec()).collect())
            .unwrap_or_default();
        let crypto = self.tls.current().record;
        let io = |source| DialError::Io {
            address: self.address.clone(),
            source,
        };
        // Take over the record layer (tunnel/record/); the status byte is the
        // first thing read through it.
        let (mut tcp, mut tx, mut rx) = record::hand_over(s.into_inner(), &capture, Side::Client, crypto)
            .await
            .map_err(io)?;
        let first = match timeout(ANSWER_TIMEOUT, rx.first(&mut tcp)).await {
            Ok(Ok(first)) => first,
            Ok(Err(e)) => {
                // A fault in the peer's first records: the alert it calls for.
                tx.abort(&mut tcp, &e).await;
                return Err(io(e));
            }
            Err(_) => {
                return Err(DialError::AnswerTimeout {
                    address: self.address.clone(),
                })
            }
        };
        let status = first
            .first()
            .ok_or(PrefaceError::Answer("empty tunnel status"))
            .and_then(|b| TunnelStatus::from_byte(*b))
            .map_err(|e| DialError::Answer {
                address: self.address.clone(),
                source: e.into(),
            })?;
        if first.len() > 1 {
            return Err(DialError::Answer {
                address: self.address.clone(),
                source: PrefaceError::Answer("tunnel status with trailing bytes").into(),
            });
        }
        Ok((
            status,
            Tunnel {
                tcp,
                tx,
                rx,
                resumed,
                suite,
                live,
                chain,
            },
        ))
    }

    /// Announces `advertise` (this host's TLS address) and returns the
    /// peer's certificate names and the hosts it knows.
    pub async fn hello(&self, advertise: &str) -> Result<(Vec<HostName>, Vec<(String, String)>), DialError> {
        let mut s = self.open(&Preface::Hello(advertise.to_owned()), &[]).await?;
        let names = crate::tls::peer_hosts(s.get_ref().1);
        let hosts = self.answer(preface::read_hosts_answer(&mut s)).await?;
        Ok((names, hosts))
    }

    async fn answer<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, preface::ReadError>>,
    ) -> Result<T, DialError> {
        match timeout(ANSWER_TIMEOUT, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(DialError::Answer {
                address: self.address.clone(),
                source,
            }),
            Err(_) => Err(DialError::AnswerTimeout {
                address: self.address.clone(),
            }),
        }
    }
}

/// The name of a negotiated suite, for logs.
pub fn suite_name(conn: &rustls::CommonState) -> &'static str {
    crate::tls::Suite::of(conn).map_or("unknown", crate::tls::Suite::name)
}

/// Connects to `addr`; in transparent mode with erlmesh's socket mark, so
/// the kernel's rules never send erlmesh's own connections back to it.
pub async fn connect_marked(addr: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let Some(mark) = crate::transparent::socket_mark() else {
        return TcpStream::connect(addr).await;
    };
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket2::SockRef::from(&sock).set_mark(mark).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot mark erlmesh's socket (needs CAP_NET_ADMIN): {e}"),
        )
    })?;
    sock.connect(addr).await
}
