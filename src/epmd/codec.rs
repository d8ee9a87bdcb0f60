//! EPMD requests and replies: parse and encode, no I/O.
//!
//! Layouts (all integers big-endian) are those of OTP's `epmd` and
//! `erl_epmd`; see DESIGN.md §3. Requests carry a 2-byte length prefix that
//! does not count itself; replies carry none and end when epmd closes.

use thiserror::Error;

/// Largest request body accepted. epmd's own input buffer is 1024 bytes;
/// an ALIVE2 with a 255-byte name and a short extra fits with room to spare.
pub const MAX_REQUEST_LEN: usize = 1024;
/// Longest node name (the part before `@`), as epmd's `MAXSYMLEN`.
pub const MAX_NAME_LEN: usize = 255;
/// Longest `Extra` field kept from an ALIVE2 request.
pub const MAX_EXTRA_LEN: usize = 512;
/// Largest NAMES reply read from a system epmd (one line per node).
pub const MAX_NAMES_REPLY: usize = 256 * 1024;

pub const ALIVE2_REQ: u8 = 120;
pub const ALIVE2_X_RESP: u8 = 118;
pub const ALIVE2_RESP: u8 = 121;
pub const PORT_PLEASE2_REQ: u8 = 122;
pub const PORT2_RESP: u8 = 119;
pub const NAMES_REQ: u8 = 110;
pub const DUMP_REQ: u8 = 100;
pub const KILL_REQ: u8 = 107;
pub const STOP_REQ: u8 = 115;

/// Why bytes could not be read as an EPMD message.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CodecError {
    /// More bytes are needed; not an error once the stream has ended.
    #[error("incomplete message")]
    Incomplete,
    #[error("request length {0} exceeds the limit of {MAX_REQUEST_LEN} bytes")]
    TooLong(usize),
    #[error("empty request")]
    Empty,
    #[error("unknown request type {0}")]
    UnknownRequest(u8),
    #[error("malformed {what}: {why}")]
    Malformed { what: &'static str, why: &'static str },
    #[error("invalid node name: {0}")]
    BadName(&'static str),
}

/// What epmd knows about one registered node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeInfo {
    /// The part of the node name before `@`.
    pub name: String,
    pub port: u16,
    /// 77 ('M') for normal nodes, 72 ('H') for hidden ones.
    pub node_type: u8,
    pub protocol: u8,
    pub high: u16,
    pub low: u16,
    pub extra: Vec<u8>,
}

/// One EPMD request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Alive2(NodeInfo),
    PortPlease2 { name: String },
    Names,
    Dump,
    Kill,
    Stop { name: Vec<u8> },
}

impl Request {
    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Alive2(_) => "ALIVE2",
            Request::PortPlease2 { .. } => "PORT_PLEASE2",
            Request::Names => "NAMES",
            Request::Dump => "DUMP",
            Request::Kill => "KILL",
            Request::Stop { .. } => "STOP",
        }
    }
}

/// Checks a node name (the part before `@`) the way erlmesh needs it: it
/// travels in NAMES lines and tunnel prefaces, so no control characters.
pub fn check_name(name: &[u8]) -> Result<&str, CodecError> {
    if name.is_empty() {
        return Err(CodecError::BadName("empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(CodecError::BadName("longer than 255 bytes"));
    }
    let s = std::str::from_utf8(name).map_err(|_| CodecError::BadName("not UTF-8"))?;
    if s.chars().any(|c| c.is_control() || c == '@' || c == ' ') {
        return Err(CodecError::BadName("contains '@', a space or a control character"));
    }
    Ok(s)
}

/// The length of the request whose 2-byte prefix starts `buf`, checked
/// against [`MAX_REQUEST_LEN`].
pub fn request_len(prefix: [u8; 2]) -> Result<usize, CodecError> {
    let len = u16::from_be_bytes(prefix) as usize;
    if len == 0 {
        return Err(CodecError::Empty);
    }
    if len > MAX_REQUEST_LEN {
        return Err(CodecError::TooLong(len));
    }
    Ok(len)
}

/// Parses one request, length prefix included, from the start of `buf`.
/// Returns the request and the bytes it used.
pub fn parse_request(buf: &[u8]) -> Result<(Request, usize), CodecError> {
    if buf.len() < 2 {
        return Err(CodecError::Incomplete);
    }
    let len = request_len([buf[0], buf[1]])?;
    if buf.len() < 2 + len {
        return Err(CodecError::Incomplete);
    }
    let req = parse_body(&buf[2..2 + len])?;
    Ok((req, 2 + len))
}

/// Parses a request body (the bytes after the length prefix).
pub fn parse_body(body: &[u8]) -> Result<Request, CodecError> {
    let (&tag, rest) = body.split_first().ok_or(CodecError::Empty)?;
    match tag {
        ALIVE2_REQ => parse_alive2(rest).map(Request::Alive2),
        PORT_PLEASE2_REQ => Ok(Request::PortPlease2 {
            name: check_name(rest)?.to_owned(),
        }),
        NAMES_REQ => Ok(Request::Names),
        DUMP_REQ => Ok(Request::Dump),
        KILL_REQ => Ok(Request::Kill),
        STOP_REQ => Ok(Request::Stop { name: rest.to_vec() }),
        other => Err(CodecError::UnknownRequest(other)),
    }
}

fn malformed(what: &'static str, why: &'static str) -> CodecError {
    CodecError::Malformed { what, why }
}

/// A cursor over a complete message; running short is `Malformed`.
struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.buf.len() < n {
            return Err(malformed(self.what, "shorter than its fields say"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, CodecError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
}

fn parse_alive2(rest: &[u8]) -> Result<NodeInfo, CodecError> {
    let mut r = Reader {
        buf: rest,
        what: "ALIVE2_REQ",
    };
    let port = r.u16()?;
    let node_type = r.u8()?;
    let protocol = r.u8()?;
    let high = r.u16()?;
    let low = r.u16()?;
    let nlen = r.u16()? as usize;
    let name = check_name(r.take(nlen)?)?.to_owned();
    let elen = r.u16()? as usize;
    if elen > MAX_EXTRA_LEN {
        return Err(malformed("ALIVE2_REQ", "extra field too long"));
    }
    let extra = r.take(elen)?.to_vec();
    if !r.buf.is_empty() {
        return Err(malformed("ALIVE2_REQ", "trailing bytes"));
    }
    if port == 0 {
        return Err(malformed("ALIVE2_REQ", "port 0"));
    }
    if low > high {
        return Err(malformed("ALIVE2_REQ", "lowest version above highest"));
    }
    Ok(NodeInfo {
        name,
        port,
        node_type,
        protocol,
        high,
        low,
        extra,
    })
}

/// Encodes a request, length prefix included (for asking a system epmd).
pub fn encode_request(req: &Request) -> Vec<u8> {
    let mut body = Vec::new();
    match req {
        Request::Alive2(n) => {
            body.push(ALIVE2_REQ);
            body.extend_from_slice(&n.port.to_be_bytes());
            body.push(n.node_type);
            body.push(n.protocol);
            body.extend_from_slice(&n.high.to_be_bytes());
            body.extend_from_slice(&n.low.to_be_bytes());
            body.extend_from_slice(&(n.name.len() as u16).to_be_bytes());
            body.extend_from_slice(n.name.as_bytes());
            body.extend_from_slice(&(n.extra.len() as u16).to_be_bytes());
            body.extend_from_slice(&n.extra);
        }
        Request::PortPlease2 { name } => {
            body.push(PORT_PLEASE2_REQ);
            body.extend_from_slice(name.as_bytes());
        }
        Request::Names => body.push(NAMES_REQ),
        Request::Dump => body.push(DUMP_REQ),
        Request::Kill => body.push(KILL_REQ),
        Request::Stop { name } => {
            body.push(STOP_REQ);
            body.extend_from_slice(name);
        }
    }
    let mut out = (body.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// A refused registration, in the form the node asked in (`v6`: ALIVE2_X
/// with a 32-bit creation, else ALIVE2_RESP).
pub fn encode_alive2_refusal(v6: bool) -> Vec<u8> {
    if v6 {
        encode_alive2_x_resp(1, 0)
    } else {
        encode_alive2_resp(1, 0)
    }
}

/// ALIVE2_X_RESP (32-bit creation), for nodes announcing version 6.
pub fn encode_alive2_x_resp(result: u8, creation: u32) -> Vec<u8> {
    let mut v = vec![ALIVE2_X_RESP, result];
    v.extend_from_slice(&creation.to_be_bytes());
    v
}

/// ALIVE2_RESP (16-bit creation), for older nodes.
pub fn encode_alive2_resp(result: u8, creation: u16) -> Vec<u8> {
    let mut v = vec![ALIVE2_RESP, result];
    v.extend_from_slice(&creation.to_be_bytes());
    v
}

/// PORT2_RESP for a found node, with `port` in place of its own.
pub fn encode_port2_resp(node: &NodeInfo, port: u16) -> Vec<u8> {
    let mut v = vec![PORT2_RESP, 0];
    v.extend_from_slice(&port.to_be_bytes());
    v.push(node.node_type);
    v.push(node.protocol);
    v.extend_from_slice(&node.high.to_be_bytes());
    v.extend_from_slice(&node.low.to_be_bytes());
    v.extend_from_slice(&(node.name.len() as u16).to_be_bytes());
    v.extend_from_slice(node.name.as_bytes());
    v.extend_from_slice(&(node.extra.len() as u16).to_be_bytes());
    v.extend_from_slice(&node.extra);
    v
}

/// PORT2_RESP saying the node is not known.
pub fn encode_port2_not_found() -> Vec<u8> {
    vec![PORT2_RESP, 1]
}

/// A NAMES reply: the EPMD port, then one `name N at port P` line per node.
pub fn encode_names(epmd_port: u16, nodes: &[(String, u16)]) -> Vec<u8> {
    let mut v = (epmd_port as u32).to_be_bytes().to_vec();
    for (name, port) in nodes {
        v.extend_from_slice(format!("name {name} at port {port}\n").as_bytes());
    }
    v
}

/// Parses a whole PORT2_RESP as read until epmd closed: `None` when the
/// node is not registered.
pub fn parse_port2_resp(buf: &[u8]) -> Result<Option<NodeInfo>, CodecError> {
    if buf.len() < 2 {
        return Err(CodecError::Incomplete);
    }
    if buf[0] != PORT2_RESP {
        return Err(malformed("PORT2_RESP", "wrong tag"));
    }
    if buf[1] != 0 {
        return Ok(None);
    }
    let mut r = Reader {
        buf: &buf[2..],
        what: "PORT2_RESP",
    };
    let short = |e: CodecError| match e {
        CodecError::Malformed { .. } => CodecError::Incomplete,
        e => e,
    };
    let port = r.u16().map_err(short)?;
    let node_type = r.u8().map_err(short)?;
    let protocol = r.u8().map_err(short)?;
    let high = r.u16().map_err(short)?;
    let low = r.u16().map_err(short)?;
    let nlen = r.u16().map_err(short)? as usize;
    let name = check_name(r.take(nlen).map_err(short)?)?.to_owned();
    let elen = r.u16().map_err(short)? as usize;
    let extra = r.take(elen).map_err(short)?.to_vec();
    Ok(Some(NodeInfo {
        name,
        port,
        node_type,
        protocol,
        high,
        low,
        extra,
    }))
}

/// Parses a whole NAMES reply: the EPMD port and each (name, port) line.
/// Lines that are not `name N at port P` are skipped, as `net_adm` does.
pub fn parse_names_reply(buf: &[u8]) -> Result<(u32, Vec<(String, u16)>), CodecError> {
    if buf.len() < 4 {
        return Err(CodecError::Incomplete);
    }
    let port = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let text = String::from_utf8_lossy(&buf[4..]);
    let mut nodes = Vec::new();
    for line in text.lines() {
        let mut words = line.split(' ');
        if let (Some("name"), Some(name), Some("at"), Some("port"), Some(p), None) = (
            words.next(),
            words.next(),
            words.next(),
            words.next(),
            words.next(),
            words.next(),
        ) {
            if let (Ok(name), Ok(p)) = (check_name(name.as_bytes()), p.parse::<u16>()) {
                nodes.push((name.to_owned(), p));
            }
        }
    }
    Ok((port, nodes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ALIVE2_REQ as sent by OTP 25.2.3 for `-sname b@hostb` listening on
    /// port 45481 (captured): NodeType 77, Protocol 0, versions 6..5.
    const ALIVE2_OTP25: &[u8] = &[
        0x00, 0x0e, 0x78, 0xb1, 0xa9, 0x4d, 0x00, 0x00, 0x06, 0x00, 0x05, 0x00, 0x01, b'b', 0x00, 0x00,
    ];
    /// PORT_PLEASE2_REQ for "c", sent by `net_adm:ping(c@localhost)` (captured).
    const PORT_PLEASE_C: &[u8] = &[0x00, 0x02, 0x7a, b'c'];
    /// NAMES_REQ (captured from `net_adm:names()`).
    const NAMES: &[u8] = &[0x00, 0x01, 0x6e];

    #[test]
    fn parses_captured_alive2() {
        let (req, used) = parse_request(ALIVE2_OTP25).unwrap();
        assert_eq!(used, ALIVE2_OTP25.len());
        assert_eq!(
            req,
            Request::Alive2(NodeInfo {
                name: "b".into(),
                port: 45481,
                node_type: 77,
                protocol: 0,
                high: 6,
                low: 5,
                extra: vec![],
            })
        );
        assert_eq!(encode_request(&req), ALIVE2_OTP25);
    }

    #[test]
    fn parses_port_please_and_names() {
        assert_eq!(
            parse_request(PORT_PLEASE_C).unwrap(),
            (Request::PortPlease2 { name: "c".into() }, 4)
        );
        assert_eq!(parse_request(NAMES).unwrap(), (Request::Names, 3));
        assert_eq!(parse_request(&[0, 1, 100]).unwrap().0, Request::Dump);
        assert_eq!(parse_request(&[0, 1, 107]).unwrap().0, Request::Kill);
    }

    #[test]
    fn every_truncation_is_incomplete() {
        for msg in [ALIVE2_OTP25, PORT_PLEASE_C, NAMES] {
            for cut in 0..msg.len() {
                assert_eq!(parse_request(&msg[..cut]), Err(CodecError::Incomplete), "cut {cut}");
            }
        }
    }

    #[test]
    fn rejects_oversized_unknown_and_malformed() {
        assert_eq!(parse_request(&[0xff, 0xff]), Err(CodecError::TooLong(65535)));
        assert_eq!(parse_request(&[0, 0]), Err(CodecError::Empty));
        assert_eq!(parse_request(&[0, 1, 1]), Err(CodecError::UnknownRequest(1)));
        // ALIVE2 whose name length runs past the end of the frame.
        let mut bad = ALIVE2_OTP25.to_vec();
        bad[12] = 9;
        assert!(matches!(parse_request(&bad), Err(CodecError::Malformed { .. })));
        // PORT_PLEASE2 with an empty name, a newline in the name.
        assert!(matches!(parse_request(&[0, 1, 122]), Err(CodecError::BadName(_))));
        assert!(matches!(
            parse_request(&[0, 3, 122, b'a', b'\n']),
            Err(CodecError::BadName(_))
        ));
    }

    #[test]
    fn replies_match_epmd() {
        assert_eq!(encode_alive2_x_resp(0, 0x0102_0304), [118, 0, 1, 2, 3, 4]);
        assert_eq!(encode_alive2_resp(0, 3), [121, 0, 0, 3]);
        assert_eq!(encode_port2_not_found(), [119, 1]);
        let NodeInfo { .. } = match parse_request(ALIVE2_OTP25).unwrap().0 {
            Request::Alive2(n) => {
                let resp = encode_port2_resp(&n, 4242);
                // 119, 0, port, type, proto, high, low, nlen, name, elen
                assert_eq!(resp, [119, 0, 0x10, 0x92, 77, 0, 0, 6, 0, 5, 0, 1, b'b', 0, 0]);
                assert_eq!(parse_port2_resp(&resp).unwrap().unwrap().port, 4242);
                for cut in 2..resp.len() {
                    assert_eq!(parse_port2_resp(&resp[..cut]), Err(CodecError::Incomplete));
                }
                n
            }
            _ => unreachable!(),
        };
        assert_eq!(parse_port2_resp(&[119, 1]), Ok(None));
    }

    #[test]
    fn names_round_trip() {
        let reply = encode_names(4369, &[("a".into(), 40001), ("rabbit".into(), 25672)]);
        assert_eq!(&reply[..4], &[0, 0, 0x11, 0x11]);
        assert_eq!(&reply[4..], b"name a at port 40001\nname rabbit at port 25672\n");
        let (port, nodes) = parse_names_reply(&reply).unwrap();
        assert_eq!(port, 4369);
        assert_eq!(nodes, vec![("a".into(), 40001), ("rabbit".into(), 25672)]);
        // junk lines are skipped, not fatal
        let mut junk = reply.clone();
        junk.extend_from_slice(b"garbage line\nname x at port notaport\n");
        assert_eq!(parse_names_reply(&junk).unwrap().1.len(), 2);
    }
}
