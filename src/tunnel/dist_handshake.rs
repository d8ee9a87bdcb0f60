//! The one distribution handshake message erlmesh reads: the dialler's
//! `send_name`, to learn which node is calling. Pure parser plus an exact
//! reader that hands back the raw frame for forwarding unchanged.
//!
//! ```text
//! Len:2, then
//!   'N' Flags:8 Creation:4 Nlen:2 Name      (OTP 23+, version 6)
//!   'n' Version:2 Flags:4 Name              (version 5; Name fills the rest)
//! ```

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest send_name frame accepted: a 255-byte name, an `@` and a long
/// host name fit well within it.
pub const MAX_SEND_NAME_LEN: usize = 1024;

/// Why bytes are not a send_name.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("incomplete send_name")]
    Incomplete,
    #[error("send_name frame of {0} bytes exceeds {MAX_SEND_NAME_LEN}")]
    TooLong(usize),
    #[error("first handshake message has tag {0:#04x}, not send_name ('N' or 'n')")]
    NotSendName(u8),
    #[error("first answer has tag {0:#04x}, not a handshake status ('s')")]
    NotStatus(u8),
    #[error("malformed send_name: {0}")]
    Malformed(&'static str),
}

/// `DFLAG_NAME_ME` (erl_dist_protocol.md): the dialler asks the accepting
/// node for a name (OTP 23+ dynamic node names: `-sname undefined`, or
/// `-remsh` without a name); its send_name then carries only a host part.
pub const DFLAG_NAME_ME: u64 = 0x2_0000_0000;

/// A parsed send_name: the dialling node's full name (`name@host`), or for
/// a dynamic name only the host part it asks to be named under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendName {
    pub node: String,
    /// The accepting node will assign the name (`DFLAG_NAME_ME`).
    pub dynamic: bool,
}

impl SendName {
    /// The host part of the node name.
    pub fn host(&self) -> &str {
        if self.dynamic {
            return &self.node;
        }
        self.node.split_once('@').map(|(_, h)| h).unwrap_or("")
    }

    /// The name for logs: `name@host`, or `(dynamic)@host`.
    pub fn shown(&self) -> String {
        if self.dynamic {
            format!("(dynamic)@{}", self.node)
        } else {
            self.node.clone()
        }
    }
}

/// The name a `named:` status frame (length prefix included) assigns:
/// `'s' "named:" Nlen:2 Name Creation:4`; None for any other status.
pub fn named_status(frame: &[u8]) -> Option<String> {
    let rest = frame.get(2..)?.strip_prefix(b"snamed:")?;
    let nlen = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]) as usize;
    let name = rest.get(2..2 + nlen)?;
    if rest.len() != 2 + nlen + 4 {
        return None;
    }
    let name = std::str::from_utf8(name).ok()?;
    match name.split_once('@') {
        Some((n, h)) if !n.is_empty() && !h.is_empty() && !name.chars().any(|c| c.is_control()) => {
            Some(name.to_owned())
        }
        _ => None,
    }
}

/// Parses a send_name frame (length prefix included) from the start of `buf`.
pub fn parse_send_name(buf: &[u8]) -> Result<(SendName, usize), HandshakeError> {
    if buf.len() < 2 {
        return Err(HandshakeError::Incomplete);
    }
    let len = u16::from_be_bytes([buf[0], buf[1]]) as usize;
    if len > MAX_SEND_NAME_LEN {
        return Err(HandshakeError::TooLong(len));
    }
    if let Some(&tag) = buf.get(2) {
        if tag != b'N' && tag != b'n' {
            return Err(HandshakeError::NotSendName(tag));
        }
    }
    if buf.len() < 2 + len {
        return Err(HandshakeError::Incomplete);
    }
    Ok((parse_body(&buf[2..2 + len])?, 2 + len))
}

fn parse_body(body: &[u8]) -> Result<SendName, HandshakeError> {
    let (name, dynamic) = match body.first() {
        None => return Err(HandshakeError::Malformed("empty frame")),
        Some(b'N') => {
            if body.len() < 15 {
                return Err(HandshakeError::Malformed("shorter than its fixed fields"));
            }
            let flags = u64::from_be_bytes(body[1..9].try_into().expect("8 bytes"));
            let nlen = u16::from_be_bytes([body[13], body[14]]) as usize;
            if body.len() != 15 + nlen {
                return Err(HandshakeError::Malformed("name length does not match the frame"));
            }
            (&body[15..], flags & DFLAG_NAME_ME != 0)
        }
        Some(b'n') => {
            if body.len() < 7 {
                return Err(HandshakeError::Malformed("shorter than its fixed fields"));
            }
            (&body[7..], false)
        }
        Some(&t) => return Err(HandshakeError::NotSendName(t)),
    };
    let node = std::str::from_utf8(name).map_err(|_| HandshakeError::Malformed("name is not UTF-8"))?;
    if node.chars().any(|c| c.is_control()) {
        return Err(HandshakeError::Malformed("control character in name"));
    }
    if dynamic {
        // Only the host part: the accepting node assigns the name.
        if node.is_empty() || node.contains('@') {
            return Err(HandshakeError::Malformed("a dynamic name's send_name is not a host"));
        }
    } else {
        match node.split_once('@') {
            Some((n, h)) if !n.is_empty() && !h.is_empty() && !h.contains('@') => {}
            _ => return Err(HandshakeError::Malformed("name is not name@host")),
        }
    }
    Ok(SendName {
        node: node.to_owned(),
        dynamic,
    })
}

pub use crate::wire::ReadError;

/// Reads exactly one send_name frame; returns it parsed and its raw bytes.
pub async fn read_send_name<R: AsyncRead + Unpin>(r: &mut R) -> Result<(SendName, Vec<u8>), ReadError> {
    let mut head = [0u8; 3];
    r.read_exact(&mut head).await?;
    let len = u16::from_be_bytes([head[0], head[1]]) as usize;
    if len > MAX_SEND_NAME_LEN {
        return Err(HandshakeError::TooLong(len).into());
    }
    if len == 0 {
        return Err(HandshakeError::Malformed("empty frame").into());
    }
    if head[2] != b'N' && head[2] != b'n' {
        return Err(HandshakeError::NotSendName(head[2]).into());
    }
    let mut frame = vec![0u8; 2 + len];
    frame[..3].copy_from_slice(&head);
    r.read_exact(&mut frame[3..]).await?;
    let (sn, _) = parse_send_name(&frame)?;
    Ok((sn, frame))
}

/// Largest status frame accepted from a local node (`named:` carries a
/// name of at most 255 bytes and a creation).
pub const MAX_STATUS_LEN: usize = 512;

/// Reads one 2-byte-length handshake frame of at most [`MAX_STATUS_LEN`]
/// bytes; returns it with its length prefix.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Vec<u8>> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head).await?;
    let len = u16::from_be_bytes(head) as usize;
    if len == 0 || len > MAX_STATUS_LEN {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("handshake frame of {len} bytes (1 to {MAX_STATUS_LEN} expected)"),
        ));
    }
    let mut frame = vec![0u8; 2 + len];
    frame[..2].copy_from_slice(&head);
    r.read_exact(&mut frame[2..]).await?;
    Ok(frame)
}

/// Checks that a frame (length prefix included) is the status message an
/// accepting node sends after send_name: `'s'` and one of OTP's statuses.
pub fn check_status(frame: &[u8]) -> Result<(), HandshakeError> {
    let body = frame.get(2..).ok_or(HandshakeError::Incomplete)?;
    match body.split_first() {
        Some((b's', status)) => {
            let known: [&[u8]; 5] = [b"ok", b"ok_simultaneous", b"nok", b"not_allowed", b"alive"];
            if known.contains(&status) || status.starts_with(b"named:") {
                Ok(())
            } else {
                Err(HandshakeError::Malformed("unknown handshake status"))
            }
        }
        Some((t, _)) => Err(HandshakeError::NotStatus(*t)),
        None => Err(HandshakeError::Malformed("empty frame")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// send_name from `a@hosta` (OTP 25.2.3) to b@hostb, captured.
    const SEND_NAME_N_OTP25: &[u8] = include_bytes!("../../tests/data/send_name_N_otp25.bin");

    fn v5(name: &str) -> Vec<u8> {
        let mut body = vec![b'n', 0, 5, 0x00, 0x0d, 0xf7, 0xfd];
        body.extend_from_slice(name.as_bytes());
        let mut f = (body.len() as u16).to_be_bytes().to_vec();
        f.extend_from_slice(&body);
        f
    }

    #[test]
    fn parses_captured_v6() {
        let (sn, used) = parse_send_name(SEND_NAME_N_OTP25).unwrap();
        assert_eq!(sn.node, "a@hosta");
        assert_eq!(sn.host(), "hosta");
        assert_eq!(used, SEND_NAME_N_OTP25.len());
    }

    #[test]
    fn parses_v5() {
        let f = v5("rabbit@host-1.example.com");
        let (sn, used) = parse_send_name(&f).unwrap();
        assert_eq!(sn.host(), "host-1.example.com");
        assert_eq!(used, f.len());
    }

    #[test]
    fn truncated_oversized_and_foreign() {
        for cut in 0..SEND_NAME_N_OTP25.len() {
            assert_eq!(
                parse_send_name(&SEND_NAME_N_OTP25[..cut]),
                Err(HandshakeError::Incomplete),
                "cut {cut}"
            );
        }
        assert_eq!(
            parse_send_name(&[0xff, 0xff, b'N']),
            Err(HandshakeError::TooLong(65535))
        );
        assert_eq!(
            parse_send_name(&[0, 3, b'r', 0, 0]),
            Err(HandshakeError::NotSendName(b'r'))
        );
        assert!(matches!(
            parse_send_name(&v5("nohost")),
            Err(HandshakeError::Malformed(_))
        ));
        assert!(matches!(
            parse_send_name(&v5("a@b@c")),
            Err(HandshakeError::Malformed(_))
        ));
        let mut bad = SEND_NAME_N_OTP25.to_vec();
        bad[2 + 14] += 1; // Nlen one more than the name
        assert!(matches!(parse_send_name(&bad), Err(HandshakeError::Malformed(_))));
    }

    #[tokio::test]
    async fn reader_returns_the_raw_frame() {
        let mut input = SEND_NAME_N_OTP25.to_vec();
        input.extend_from_slice(b"next");
        let mut r = &input[..];
        let (sn, raw) = read_send_name(&mut r).await.unwrap();
        assert_eq!(sn.node, "a@hosta");
        assert_eq!(raw, SEND_NAME_N_OTP25);
        assert_eq!(r, b"next");
    }

    #[test]
    fn statuses() {
        assert_eq!(check_status(b"\x00\x03sok"), Ok(()));
        assert_eq!(check_status(b"\x00\x06salive"), Ok(()));
        assert!(check_status(b"\x00\x0bsnamed:\x00\x01x").is_ok());
        assert_eq!(check_status(b"\x00\x03+OK"), Err(HandshakeError::NotStatus(b'+')));
        assert!(check_status(b"\x00\x04sbad").is_err());
    }

    #[test]
    fn dynamic_names() {
        // As OTP 25 sends it for `erl -sname undefined` on a machine "vm".
        let mut f = vec![0, 17, b'N', 0, 0, 0, 0x0f, 0x07, 0xdf, 0x7f, 0xbc, 0, 0, 0, 0, 0, 2];
        f.extend_from_slice(b"vm");
        let (sn, used) = parse_send_name(&f).unwrap();
        assert!(sn.dynamic && sn.host() == "vm" && used == f.len());
        assert_eq!(sn.shown(), "(dynamic)@vm");
        // The acceptor's answer names it.
        let mut st = b"\x00\x00snamed:".to_vec();
        st.extend_from_slice(&(15u16).to_be_bytes());
        st.extend_from_slice(b"1WMFCF5U@hostb1");
        st.extend_from_slice(&[0, 0, 0, 7]);
        let len = (st.len() - 2) as u16;
        st[..2].copy_from_slice(&len.to_be_bytes());
        assert_eq!(named_status(&st).as_deref(), Some("1WMFCF5U@hostb1"));
        assert_eq!(check_status(&st), Ok(()));
        assert_eq!(named_status(b"\x00\x03sok"), None);
        assert_eq!(named_status(&st[..st.len() - 1]), None);
    }
}
