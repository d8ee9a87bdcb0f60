//! Which loopback address stands for which peer host, kept stable across
//! restarts in `state_dir/aliases`.
//!
//! A node caches what a host name resolved to and may redial that address
//! long after; so once given, an alias stays with its host. Aliases left
//! unset in the config are derived from a hash of the host name in
//! 127.77.0.0/16, probed past collisions, and remembered in the file.

use crate::config::Peer;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

/// The file, under state_dir, that remembers allocated aliases.
pub const ALIASES_FILE: &str = "aliases";

/// Returns an alias for each peer, in the peers' order: the configured one,
/// else the remembered one, else a new one; and writes the file back.
pub fn assign(peers: &[Peer], state_dir: &Path) -> std::io::Result<Vec<Ipv4Addr>> {
    let path = state_dir.join(ALIASES_FILE);
    let mut known: BTreeMap<String, Ipv4Addr> = match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(e),
    };
    let fixed: Vec<Ipv4Addr> = peers.iter().filter_map(|p| p.alias).collect();
    let mut out = Vec::with_capacity(peers.len());
    for p in peers {
        let ip = match p.alias {
            Some(ip) => ip,
            None => match known.get(p.host.as_str()) {
                // A remembered alias now taken by a fixed one must move.
                Some(ip) if !fixed.contains(ip) => *ip,
                _ => {
                    let taken = |ip: &Ipv4Addr| fixed.contains(ip) || known.values().any(|k| k == ip);
                    derive(&p.host, taken)
                }
            },
        };
        known.insert(p.host.to_string(), ip);
        out.push(ip);
    }
    let text: String = known.iter().map(|(h, ip)| format!("{h} {ip}\n")).collect();
    crate::mesh::resolver::write_atomically(&path, text.as_bytes())?;
    Ok(out)
}

fn parse(text: &str) -> BTreeMap<String, Ipv4Addr> {
    text.lines()
        .filter_map(|l| {
            let (h, ip) = l.split_once(' ')?;
            // Older files may hold other spellings: keep the canonical one.
            let h = crate::hostname::HostName::parse(h).ok()?;
            Some((h.to_string(), ip.trim().parse().ok()?))
        })
        .collect()
}

/// FNV-1a of the host name picks a start in 127.77.0.0/16; addresses ending
/// in .0 or .255 are skipped so that no alias looks like a network or
/// broadcast address to a reader.
fn derive(host: &str, taken: impl Fn(&Ipv4Addr) -> bool) -> Ipv4Addr {
    let mut h: u32 = 0x811c_9dc5;
    for b in host.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    let mut i = h as u16;
    loop {
        let ip = Ipv4Addr::new(127, 77, (i >> 8) as u8, i as u8);
        if (i as u8) != 0 && (i as u8) != 255 && !taken(&ip) {
            return ip;
        }
        i = i.wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(host: &str, alias: Option<Ipv4Addr>) -> Peer {
        Peer {
            host: crate::hostname::HostName::parse(host).unwrap(),
            address: "x:1".into(),
            alias,
            policy: Default::default(),
        }
    }

    #[test]
    fn stable_across_restarts_and_reordering() {
        let dir = tempfile::tempdir().unwrap();
        let peers = vec![
            peer("hostb", None),
            peer("hostc", None),
            peer("hostd", Some(Ipv4Addr::new(127, 77, 9, 9))),
        ];
        let first = assign(&peers, dir.path()).unwrap();
        assert_eq!(first[2], Ipv4Addr::new(127, 77, 9, 9));
        assert_ne!(first[0], first[1]);
        let reordered = vec![peers[1].clone(), peers[0].clone()];
        let again = assign(&reordered, dir.path()).unwrap();
        assert_eq!(again, vec![first[1], first[0]]);
        // A host that left keeps its alias reserved in the file.
        let text = std::fs::read_to_string(dir.path().join(ALIASES_FILE)).unwrap();
        assert!(text.contains("hostd 127.77.9.9"), "{text}");
    }

    #[test]
    fn collisions_are_probed_past() {
        let a = derive("hostb", |_| false);
        let b = derive("hostb", |ip| *ip == a);
        assert_ne!(a, b);
    }
}
