//! A host part of node names in its one canonical form.
//!
//! Certificates (RFC 6125), DNS and OTP's resolver compare host names
//! without regard to case or a trailing dot, so erlmesh does too, by
//! building every host name it keeps through [`HostName::parse`]: config
//! entries, certificate names, HELLO announcements, send_name host parts,
//! policy keys, the resolver file and metric labels. Two spellings of one
//! host are then one key everywhere, and none can shadow another.

use std::fmt;
use std::net::IpAddr;

/// A validated host name: lowercase ASCII labels of letters, digits, `-`
/// and `_`, no trailing dot, 1 to 253 characters; or an IP literal in its
/// canonical text form.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostName(String);

/// Why a string is not a host name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a host name (1 to 253 characters: letters, digits, '-', '_' and dots, or an IP address)")]
pub struct BadHostName(pub String);

impl HostName {
    /// The canonical form of `s`, if it is a host name.
    pub fn parse(s: &str) -> Result<HostName, BadHostName> {
        let bad = || BadHostName(s.chars().take(300).collect());
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(HostName(ip.to_string()));
        }
        let t = s.strip_suffix('.').unwrap_or(s);
        if t.is_empty() || t.len() > 253 {
            return Err(bad());
        }
        let ok = t.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
                && !l.starts_with('-')
        });
        if !ok {
            return Err(bad());
        }
        Ok(HostName(t.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for HostName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for HostName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for HostName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for HostName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for HostName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_form_per_host() {
        for s in ["hostb", "Hostb", "HOSTB.", "hostb."] {
            assert_eq!(HostName::parse(s).unwrap().as_str(), "hostb", "{s}");
        }
        assert_eq!(HostName::parse("Web-1.Example.COM.").unwrap(), "web-1.example.com");
        assert_eq!(HostName::parse("::FFFF:1.2.3.4").unwrap(), "::ffff:1.2.3.4");
        assert_eq!(HostName::parse("198.18.0.1").unwrap(), "198.18.0.1");
        for bad in [
            "",
            ".",
            "hostb..",
            "a..b",
            "-a",
            "a b",
            "a/b",
            "hosté",
            "a@b",
            &"a".repeat(254),
        ] {
            assert!(HostName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
