//! What a tunnel connection is for: the first bytes after the TLS handshake,
//! and the peer's answer. Pure codec plus exact-length readers.
//!
//! Version 1, all integers big-endian:
//!
//! ```text
//! request (dialler -> listener)
//!   "EMSH"  Version:1 (=1)  Kind:1  Nlen:1  Name:Nlen
//!   Kind 1 PORT_PLEASE  Name = node name before '@'
//!   Kind 2 NAMES        Nlen = 0
//!   Kind 3 TUNNEL       Name = node to connect to; raw distribution bytes
//!                       follow once the answer says OK
//!   Kind 4 HELLO        Name = the dialler's TLS address ("host:port"),
//!                       announced to the peer (the host is its certificate's)
//!   Kind 5 PORT         Name = node name before '@': PORT_PLEASE with the
//!                       node's real port in the answer (transparent mode,
//!                       where local nodes dial the peer host's real ports)
//! answers (listener -> dialler)
//!   PORT_PLEASE  Status:1 (0 found, 1 not found)
//!                found: NodeType:1 Protocol:1 High:2 Low:2 Elen:2 Extra:Elen
//!   PORT         Status:1 (0 found, 1 not found)
//!                found: Port:2, then as PORT_PLEASE
//!   NAMES        Count:2, then Count x (Nlen:1 Name:Nlen)
//!   TUNNEL       Status:1 (see TunnelStatus), then raw bytes both ways
//!   HELLO        Count:2, then Count x (Hlen:1 Host:Hlen Alen:1 Address:Alen),
//!                the hosts the listener knows, itself first
//! ```
//!
//! A listener that sees another magic or version closes the connection
//! without answering, so a newer dialler can fall back.

use crate::epmd::codec::{check_name, CodecError, NodeInfo, MAX_EXTRA_LEN};
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

/// The first bytes of every request.
pub const MAGIC: &[u8; 4] = b"EMSH";
/// The version this build speaks.
pub const VERSION: u8 = 1;
/// Most names in one NAMES answer; a peer host runs a handful of nodes,
/// and each name costs the dialler a listener.
pub const MAX_NAMES: usize = 1024;

const KIND_PORT_PLEASE: u8 = 1;
const KIND_NAMES: u8 = 2;
const KIND_TUNNEL: u8 = 3;
const KIND_HELLO: u8 = 4;
const KIND_PORT: u8 = 5;
const HEADER_LEN: usize = 7;

/// What a connection is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preface {
    /// Where is node `name`? (an EPMD PORT_PLEASE2 by proxy)
    PortPlease(String),
    /// Which nodes run on your host? (an EPMD NAMES by proxy)
    Names,
    /// Connect me to node `name`'s distribution port.
    Tunnel(String),
    /// I can be reached at this address; which hosts do you know?
    Hello(String),
    /// Where is node `name`, at which port of your host? (transparent mode)
    Port(String),
}

/// Why preface bytes could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PrefaceError {
    #[error("incomplete preface")]
    Incomplete,
    #[error("not an erlmesh preface (bad magic)")]
    BadMagic,
    #[error("unsupported preface version {0} (this build speaks {VERSION})")]
    Version(u8),
    #[error("unknown preface kind {0}")]
    Kind(u8),
    #[error("malformed answer: {0}")]
    Answer(&'static str),
    #[error("{0}")]
    Name(#[from] CodecError),
}

impl Preface {
    /// Encodes the request.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, name) = match self {
            Preface::PortPlease(n) => (KIND_PORT_PLEASE, n.as_str()),
            Preface::Names => (KIND_NAMES, ""),
            Preface::Tunnel(n) => (KIND_TUNNEL, n.as_str()),
            Preface::Hello(a) => (KIND_HELLO, a.as_str()),
            Preface::Port(n) => (KIND_PORT, n.as_str()),
        };
        let mut v = Vec::with_capacity(HEADER_LEN + name.len());
        v.extend_from_slice(MAGIC);
        v.push(VERSION);
        v.push(kind);
        v.push(name.len() as u8);
        v.extend_from_slice(name.as_bytes());
        v
    }

    /// Parses a request from the start of `buf`; returns it and the bytes used.
    pub fn decode(buf: &[u8]) -> Result<(Preface, usize), PrefaceError> {
        let (kind, nlen) = decode_header(buf)?;
        let total = HEADER_LEN + nlen;
        if buf.len() < total {
            return Err(PrefaceError::Incomplete);
        }
        Ok((build(kind, &buf[HEADER_LEN..total])?, total))
    }
}

/// Checks the fixed header, reporting as soon as bytes are known bad.
fn decode_header(buf: &[u8]) -> Result<(u8, usize), PrefaceError> {
    let seen = buf.len().min(MAGIC.len());
    if buf[..seen] != MAGIC[..seen] {
        return Err(PrefaceError::BadMagic);
    }
    if buf.len() < HEADER_LEN {
        return Err(PrefaceError::Incomplete);
    }
    if buf[4] != VERSION {
        return Err(PrefaceError::Version(buf[4]));
    }
    if !(KIND_PORT_PLEASE..=KIND_PORT).contains(&buf[5]) {
        return Err(PrefaceError::Kind(buf[5]));
    }
    Ok((buf[5], buf[6] as usize))
}

fn build(kind: u8, name: &[u8]) -> Result<Preface, PrefaceError> {
    Ok(match kind {
        KIND_NAMES if name.is_empty() => Preface::Names,
        KIND_NAMES => return Err(PrefaceError::Answer("NAMES carries no name")),
        KIND_PORT_PLEASE => Preface::PortPlease(check_name(name)?.to_owned()),
        KIND_HELLO => Preface::Hello(check_name(name)?.to_owned()),
        KIND_PORT => Preface::Port(check_name(name)?.to_owned()),
        _ => Preface::Tunnel(check_name(name)?.to_owned()),
    })
}

/// Reads one request, exactly its bytes and no more.
pub async fn read_preface<R: AsyncRead + Unpin>(r: &mut R) -> Result<Preface, ReadError> {
    let mut header = [0u8; HEADER_LEN];
    r.read_exact(&mut header).await?;
    let (kind, nlen) = decode_header(&header)?;
    let mut name = vec![0u8; nlen];
    r.read_exact(&mut name).await?;
    Ok(build(kind, &name)?)
}

pub use crate::wire::ReadError;

/// The answer to a TUNNEL request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelStatus {
    /// Connected to the node; raw bytes follow.
    Ok = 0,
    /// No node of that name is registered.
    NoSuchNode = 1,
    /// The node is registered but its port refused the connection.
    Unreachable = 2,
    /// This peer may not reach that node.
    NotAllowed = 3,
}

impl TunnelStatus {
    /// Decodes the status byte.
    pub fn from_byte(b: u8) -> Result<Self, PrefaceError> {
        Ok(match b {
            0 => TunnelStatus::Ok,
            1 => TunnelStatus::NoSuchNode,
            2 => TunnelStatus::Unreachable,
            3 => TunnelStatus::NotAllowed,
            _ => return Err(PrefaceError::Answer("unknown tunnel status")),
        })
    }
}

/// Encodes the answer to PORT_PLEASE. The real port stays on its host.
pub fn encode_port_answer(node: Option<&NodeInfo>) -> Vec<u8> {
    let Some(n) = node else { return vec![1] };
    let mut v = vec![0, n.node_type, n.protocol];
    v.extend_from_slice(&n.high.to_be_bytes());
    v.extend_from_slice(&n.low.to_be_bytes());
    v.extend_from_slice(&(n.extra.len() as u16).to_be_bytes());
    v.extend_from_slice(&n.extra);
    v
}

/// The answer to PORT: PORT_PLEASE's, with the node's real port.
pub fn encode_real_port_answer(node: Option<&NodeInfo>) -> Vec<u8> {
    let Some(n) = node else { return vec![1] };
    let mut v = vec![0];
    v.extend_from_slice(&n.port.to_be_bytes());
    v.extend_from_slice(&encode_port_answer(Some(n))[1..]);
    v
}

/// Reads the answer to PORT for node `name`, its real port included.
pub async fn read_real_port_answer<R: AsyncRead + Unpin>(r: &mut R, name: &str) -> Result<Option<NodeInfo>, ReadError> {
    if !found(r).await? {
        return Ok(None);
    }
    let mut port = [0u8; 2];
    r.read_exact(&mut port).await?;
    let mut info = read_found(r, name).await?;
    info.port = u16::from_be_bytes(port);
    Ok(Some(info))
}

/// Reads the answer to PORT_PLEASE for node `name`; the port is left 0,
/// for the dialler to fill in with its own listener's.
pub async fn read_port_answer<R: AsyncRead + Unpin>(r: &mut R, name: &str) -> Result<Option<NodeInfo>, ReadError> {
    if !found(r).await? {
        return Ok(None);
    }
    Ok(Some(read_found(r, name).await?))
}

/// The status byte of a PORT_PLEASE or PORT answer.
async fn found<R: AsyncRead + Unpin>(r: &mut R) -> Result<bool, ReadError> {
    let mut status = [0u8; 1];
    r.read_exact(&mut status).await?;
    match status[0] {
        1 => Ok(false),
        0 => Ok(true),
        _ => Err(PrefaceError::Answer("unknown PORT_PLEASE status").into()),
    }
}

/// A found node's fields after the status (and port), port left 0.
async fn read_found<R: AsyncRead + Unpin>(r: &mut R, name: &str) -> Result<NodeInfo, ReadError> {
    let mut fixed = [0u8; 8];
    r.read_exact(&mut fixed).await?;
    let elen = u16::from_be_bytes([fixed[6], fixed[7]]) as usize;
    if elen > MAX_EXTRA_LEN {
        return Err(PrefaceError::Answer("extra field too long").into());
    }
    let mut extra = vec![0u8; elen];
    r.read_exact(&mut extra).await?;
    Ok(NodeInfo {
        name: name.to_owned(),
        port: 0,
        node_type: fixed[0],
        protocol: fixed[1],
        high: u16::from_be_bytes([fixed[2], fixed[3]]),
        low: u16::from_be_bytes([fixed[4], fixed[5]]),
        extra,
    })
}

/// Encodes the answer to NAMES (at most [`MAX_NAMES`] are sent).
pub fn encode_names_answer(names: &[String]) -> Vec<u8> {
    let names = &names[..names.len().min(MAX_NAMES)];
    let mut v = (names.len() as u16).to_be_bytes().to_vec();
    for n in names {
        v.push(n.len() as u8);
        v.extend_from_slice(n.as_bytes());
    }
    v
}

/// Reads an answer's 2-byte count, refusing more than `max`.
async fn read_count<R: AsyncRead + Unpin>(r: &mut R, max: usize, why: &'static str) -> Result<usize, ReadError> {
    let mut count = [0u8; 2];
    r.read_exact(&mut count).await?;
    let count = u16::from_be_bytes(count) as usize;
    if count > max {
        return Err(PrefaceError::Answer(why).into());
    }
    Ok(count)
}

/// Reads one `Len:1 Bytes:Len` string, checked like a node name.
async fn read_short<R: AsyncRead + Unpin>(r: &mut R) -> Result<String, ReadError> {
    let mut len = [0u8; 1];
    r.read_exact(&mut len).await?;
    let mut b = vec![0u8; len[0] as usize];
    r.read_exact(&mut b).await?;
    Ok(check_name(&b).map_err(PrefaceError::from)?.to_owned())
}

/// Reads the answer to NAMES.
pub async fn read_names_answer<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<String>, ReadError> {
    let count = read_count(r, MAX_NAMES, "too many names").await?;
    let mut names = Vec::with_capacity(count);
    for _ in 0..count {
        names.push(read_short(r).await?);
    }
    Ok(names)
}

/// How long an answer may take: the peer's to a question or a tunnel
/// request, or the writing of ours and the close after it.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Writes `answer`, closes the write side and forgets the connection: the
/// end of every question erlmesh answers (on the TLS port, an alias's
/// EPMD, the embedded EPMD). A client that does not take it within
/// [`ANSWER_TIMEOUT`] is dropped.
pub async fn answer_and_close<S: AsyncWrite + Unpin>(s: &mut S, answer: &[u8]) {
    use tokio::io::AsyncWriteExt;
    let work = async {
        s.write_all(answer).await?;
        s.shutdown().await
    };
    match tokio::time::timeout(ANSWER_TIMEOUT, work).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "the client left before the answer"),
        Err(_) => tracing::debug!("the client did not take the answer in time"),
    }
}

/// Most hosts in one HELLO answer: the mesh is meant for dozens of hosts.
pub const MAX_HOSTS: usize = 1024;

/// Encodes the answer to HELLO: (host, TLS address) pairs.
pub fn encode_hosts_answer(hosts: &[(String, String)]) -> Vec<u8> {
    let hosts: Vec<_> = hosts
        .iter()
        .filter(|(h, a)| h.len() < 256 && a.len() < 256)
        .take(MAX_HOSTS)
        .collect();
    let mut v = (hosts.len() as u16).to_be_bytes().to_vec();
    for (h, a) in hosts {
        v.push(h.len() as u8);
        v.extend_from_slice(h.as_bytes());
        v.push(a.len() as u8);
        v.extend_from_slice(a.as_bytes());
    }
    v
}

/// Reads the answer to HELLO.
pub async fn read_hosts_answer<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<(String, String)>, ReadError> {
    let count = read_count(r, MAX_HOSTS, "too many hosts").await?;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let host = read_short(r).await?;
        out.push((host, read_short(r).await?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TUNNEL request for node "b", as this build sends it.
    const TUNNEL_B: &[u8] = b"EMSH\x01\x03\x01b";

    #[test]
    fn round_trips() {
        for p in [
            Preface::PortPlease("rabbit".into()),
            Preface::Names,
            Preface::Tunnel("b".into()),
        ] {
            let bytes = p.encode();
            assert_eq!(Preface::decode(&bytes), Ok((p, bytes.len())));
        }
        assert_eq!(Preface::Tunnel("b".into()).encode(), TUNNEL_B);
    }

    #[test]
    fn truncations_are_incomplete_and_trailing_bytes_are_left() {
        for cut in 0..TUNNEL_B.len() {
            assert_eq!(
                Preface::decode(&TUNNEL_B[..cut]),
                Err(PrefaceError::Incomplete),
                "cut {cut}"
            );
        }
        let mut more = TUNNEL_B.to_vec();
        more.extend_from_slice(b"\x00\x10N");
        assert_eq!(Preface::decode(&more).unwrap().1, TUNNEL_B.len());
    }

    #[test]
    fn rejects_garbage_early() {
        // An HTTP request, a TLS ClientHello sent in the clear: bad from byte 0.
        assert_eq!(Preface::decode(b"GET / HTTP/1.1\r\n"), Err(PrefaceError::BadMagic));
        assert_eq!(Preface::decode(&[0x16, 0x03, 0x01]), Err(PrefaceError::BadMagic));
        assert_eq!(Preface::decode(b"EMSH\x02\x03\x01b"), Err(PrefaceError::Version(2)));
        assert_eq!(Preface::decode(b"EMSH\x01\x09\x00"), Err(PrefaceError::Kind(9)));
        assert_eq!(Preface::decode(b"EMSH\x01\x06\x00"), Err(PrefaceError::Kind(6)));
        assert!(matches!(
            Preface::decode(b"EMSH\x01\x03\x00"),
            Err(PrefaceError::Name(_))
        ));
        assert!(matches!(
            Preface::decode(b"EMSH\x01\x02\x01x"),
            Err(PrefaceError::Answer(_))
        ));
    }

    #[tokio::test]
    async fn answers_round_trip_through_readers() {
        let node = NodeInfo {
            name: "b".into(),
            port: 1,
            node_type: 72,
            protocol: 0,
            high: 6,
            low: 5,
            extra: b"x".to_vec(),
        };
        let bytes = encode_port_answer(Some(&node));
        let got = read_port_answer(&mut &bytes[..], "b").await.unwrap().unwrap();
        assert_eq!(
            (got.node_type, got.high, got.low, got.extra, got.port),
            (72, 6, 5, b"x".to_vec(), 0)
        );
        assert_eq!(read_port_answer(&mut &[1u8][..], "b").await.unwrap(), None);
        let real = encode_real_port_answer(Some(&node));
        let got = read_real_port_answer(&mut &real[..], "b").await.unwrap().unwrap();
        assert_eq!((got.port, got.extra), (node.port, b"x".to_vec()));
        assert_eq!(read_real_port_answer(&mut &[1u8][..], "b").await.unwrap(), None);
        assert!(read_real_port_answer(&mut &real[..3], "b").await.is_err());
        assert!(read_port_answer(&mut &bytes[..4], "b").await.is_err());

        let names = vec!["a".to_string(), "rabbit".to_string()];
        let bytes = encode_names_answer(&names);
        assert_eq!(read_names_answer(&mut &bytes[..]).await.unwrap(), names);
        let hosts = vec![("hostb".to_string(), "198.18.0.2:4370".to_string())];
        let bytes = encode_hosts_answer(&hosts);
        assert_eq!(read_hosts_answer(&mut &bytes[..]).await.unwrap(), hosts);
        assert!(read_hosts_answer(&mut &bytes[..bytes.len() - 1]).await.is_err());
        assert!(read_names_answer(&mut &[0xff, 0xff][..]).await.is_err());

        let mut r = TUNNEL_B;
        assert_eq!(read_preface(&mut r).await.unwrap(), Preface::Tunnel("b".into()));
    }
}
